//! `etl reconcile` against the real PostgreSQL: rows deleted from the target by hand come
//! back (through a normal run folder and a normal load), rows only in the target are
//! reported and left alone, `--dry-run` changes nothing, and a second reconcile with nothing
//! missing reads keys only and creates no run. Against a mongodump, and against live MongoDB
//! over the wire (the OP_MSG test server of `tests/util/wire.rs`, through a tap that records
//! what the driver sends).

mod util;
#[path = "util/wire.rs"]
mod wire;

use std::path::Path;
use std::process::Output;

use bson::Document;
use util::smartdiet::{self, oid, Sizes};
use util::*;

const USERS: usize = 200;
const TAG_USER: u8 = 4;
/// Ingredients are tagged `TAG_OTHER` (15) by the generator.
const TAG_OTHER: u8 = 15;

fn ok(out: Output) -> String {
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    stdout(&out)
}

fn digests(url: &str) -> Vec<(String, String)> {
    SMARTDIET_TABLES
        .iter()
        .map(|t| (t.to_string(), table_digest(url, t)))
        .collect()
}

fn user_id(i: usize) -> String {
    oid(TAG_USER, i).to_hex()
}

/// Deletes by hand (children first, as the foreign keys want) users 150 and 151 with their
/// link rows, and ingredient 3; inserts a user no source has.
fn tamper(url: &str) {
    let users = format!("'{}', '{}'", user_id(150), user_id(151));
    psql(
        url,
        &format!(
            "DELETE FROM users_targets WHERE user_id IN ({users}); \
             DELETE FROM user_events WHERE user_id IN ({users}); \
             DELETE FROM users WHERE id IN ({users}); \
             DELETE FROM ingredients WHERE id = '{}'; \
             INSERT INTO users (id, created_at, updated_at, firstname, lastname, email) \
             VALUES ('only-in-target', now(), now(), 'Hand', 'Made', 'hand@example.org');",
            oid(TAG_OTHER, 3).to_hex()
        ),
    );
}

/// After reconcile, every table is as the first load left it, but the hand-made user.
fn assert_restored(url: &str, before: &[(String, String)]) {
    psql(url, "DELETE FROM users WHERE id = 'only-in-target'");
    assert_eq!(digests(url), before);
}

fn runs(work: &Workdir) -> usize {
    std::fs::read_dir(work.path().join("staging"))
        .map(|d| {
            d.filter(|e| e.as_ref().is_ok_and(|e| e.path().is_dir()))
                .count()
        })
        .unwrap_or(0)
}

/// The summary's line for a table: `table source source_keys target_keys missing extra ...`.
fn summary_line<'a>(out: &'a str, table: &str) -> Vec<&'a str> {
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(table))
        .unwrap_or_else(|| panic!("no line for {table}:\n{out}"))
        .split_whitespace()
        .collect()
}

#[test]
fn reconcile_loads_rows_deleted_from_the_target_and_reports_extra_rows_from_a_dump() {
    let work = Workdir::new();
    let url = fresh_database("reconcile_dump");
    let env = [("DATABASE_URL", url.as_str())];
    let dump = smartdiet::write_dump(&work.path().join("dump"), USERS);
    work.extract_transform_dump(&dump, &[], &env);
    ok(work.etl(&["load"], &env));
    let before = digests(&url);
    tamper(&url);
    let dump_arg = dump.to_str().unwrap();
    let reconcile = ["reconcile", "--source", "dump", "--dump", dump_arg];

    // A dry run says what it found and changes nothing.
    let runs_before = runs(&work);
    let tampered = digests(&url);
    let mut dry = reconcile.to_vec();
    dry.push("--dry-run");
    let out = ok(work.etl(&dry, &env));
    assert_eq!(
        summary_line(&out, "users")[1..6],
        ["users", "200", "199", "2", "1"],
        "{out}"
    );
    assert_eq!(summary_line(&out, "ingredients")[4], "1", "{out}");
    assert!(
        out.contains(&format!(
            "users: 2 missing in the target: {} {}",
            user_id(150),
            user_id(151)
        )),
        "{out}"
    );
    assert!(
        out.contains("users: 1 only in the target: only-in-target"),
        "{out}"
    );
    assert!(out.contains("with user_events, users_targets"), "{out}");
    assert!(
        out.contains("dry run: 3 missing key(s) would be extracted and loaded"),
        "{out}"
    );
    assert_eq!(digests(&url), tampered);
    assert_eq!(runs(&work), runs_before, "a dry run writes no run folder");

    // The real one loads them through a run folder and a load recorded in the ledger.
    let out = ok(work.etl(&reconcile, &env));
    assert!(
        out.contains("3 missing key(s) extracted and loaded by run"),
        "{out}"
    );
    assert_eq!(runs(&work), runs_before + 1);
    let run = etl::staging::latest_run(&work.path().join("staging"), etl::staging::Stage::Load)
        .unwrap()
        .unwrap();
    let extract = run.manifest(etl::staging::Stage::Extract).unwrap();
    let users = extract.entry("users").unwrap();
    assert!(users.by_key && users.window_since.is_none() && users.watermarks.is_empty());
    assert_eq!(users.rows, 2);
    assert_eq!(extract.entry("ingredients").unwrap().rows, 1);
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM etl.runs WHERE status = 'loaded'"
        ),
        2
    );
    // A reconcile run is not the whole source: --prune refuses it.
    let prune = work.etl(&["load", "--prune"], &env);
    assert_eq!(prune.status.code(), Some(1));
    assert!(
        stderr(&prune).contains("extracted by key"),
        "{}",
        stderr(&prune)
    );
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM users WHERE id = 'only-in-target'"
        ),
        1,
        "rows only in the target are reported, not deleted"
    );

    // Nothing missing any more: keys only, no run, no load.
    let out = ok(work.etl(&reconcile, &env));
    assert!(out.contains("nothing missing in the target"), "{out}");
    assert!(out.contains("users: 1 only in the target"), "{out}");
    assert_eq!(runs(&work), runs_before + 1);
    assert_eq!(count(&url, "SELECT count(*) FROM etl.runs"), 2);
    assert_restored(&url, &before);
}

/// The SmartDiet sample as the wire server's collections.
fn seed(server: &wire::FakeMongo) {
    let s = Sizes::for_users(USERS);
    for (name, docs) in smartdiet::other_collections(&s) {
        server.insert("smartdiet", name, &docs);
    }
    let mut rng = smartdiet::Lcg::new(42);
    let users: Vec<Document> = (0..USERS)
        .map(|i| smartdiet::user(i, &s, &mut rng))
        .collect();
    server.insert("smartdiet", "users", &users);
}

#[test]
fn reconcile_reads_only_keys_from_a_live_server_and_fetches_missing_documents_by_id() {
    let server = wire::FakeMongo::start();
    seed(&server);
    let tap = wire::Tap::start(server.addr(), None);
    let work = Workdir::new();
    let url = fresh_database("reconcile_live");
    let mongo = format!("mongodb://{}/?directConnection=true", tap.addr());
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("MONGODB_URL", mongo.as_str()),
        ("MONGODB_DATABASE", "smartdiet"),
    ];
    ok(work.etl(&["run", "--source", "mongo"], &env));
    let before = digests(&url);
    tamper(&url);
    let finds_before = tap.commands_named("find").len();

    let out = ok(work.etl(&["reconcile", "--source", "mongo"], &env));
    assert!(
        out.contains("3 missing key(s) extracted and loaded"),
        "{out}"
    );
    let finds: Vec<Document> = tap.commands_named("find").split_off(finds_before);
    // Keys: a projection on `_id` alone, one per compared collection.
    let key_scans = finds
        .iter()
        .filter(|c| {
            c.get_document("projection")
                .is_ok_and(|p| p == &bson::doc! { "_id": 1 })
        })
        .count();
    assert!(key_scans >= 20, "{finds:#?}");
    // Documents: only the missing ones, by `$in`.
    let by_id: Vec<&Document> = finds
        .iter()
        .filter(|c| {
            c.get_document("filter")
                .is_ok_and(|f| f.contains_key("_id"))
        })
        .collect();
    assert_eq!(by_id.len(), 2, "users and ingredients: {by_id:#?}");
    let users = by_id
        .iter()
        .find(|c| c.get_str("find") == Ok("users"))
        .expect("users fetched by id");
    let wanted = users
        .get_document("filter")
        .unwrap()
        .get_document("_id")
        .unwrap()
        .get_array("$in")
        .unwrap();
    assert_eq!(wanted.len(), 2);
    assert_restored(&url, &before);

    // Nothing missing: no document is fetched, only keys.
    let finds_before = tap.commands_named("find").len();
    let out = ok(work.etl(&["reconcile", "--source", "mongo"], &env));
    assert!(out.contains("nothing missing in the target"), "{out}");
    let finds = tap.commands_named("find").split_off(finds_before);
    assert!(
        finds.iter().all(|c| c
            .get_document("projection")
            .is_ok_and(|p| p == &bson::doc! { "_id": 1 })),
        "{finds:#?}"
    );
    assert_eq!(server.unknown_commands(), Vec::<String>::new());
}

#[test]
fn a_source_without_a_table_keyed_by_the_document_is_reported_not_compared() {
    let work = Workdir::new();
    let url = fresh_database("reconcile_unkeyed");
    let env = [("DATABASE_URL", url.as_str())];
    let dump = smartdiet::write_dump(&work.path().join("dump"), 20);
    let out = ok(work.etl(
        &[
            "reconcile",
            "--source",
            "dump",
            "--dump",
            dump.to_str().unwrap(),
            "--tables",
            "users_logbook,users_targets",
            "--dry-run",
        ],
        &env,
    ));
    for table in ["users_logbook", "users_targets"] {
        let line = summary_line(&out, table).join(" ");
        assert!(line.contains("not compared"), "{out}");
    }
    assert!(!Path::new(&work.path().join("staging")).exists() || runs(&work) == 0);
}

/// A fresh MariaDB database holding the Matomo fixture tables and rows; returns its name.
#[test]
fn reconcile_compares_matomo_keys_and_loads_missing_rows_by_key() {
    let db = matomo_database("reconcile_matomo");
    let work = Workdir::new();
    let url = fresh_database("reconcile_matomo");
    let env = [
        ("DATABASE_URL", url.as_str()),
        ("MATOMO_DATABASE", db.as_str()),
    ];
    for args in [
        vec!["extract", "--source", "matomo"],
        vec!["transform"],
        vec!["load"],
    ] {
        ok(work.etl(&args, &env));
    }
    let tables = [
        "matomo_log_visit",
        "matomo_log_link_visit_action",
        "matomo_log_action",
    ];
    let digest =
        |url: &str| -> Vec<String> { tables.iter().map(|t| table_digest(url, t)).collect() };
    let before = digest(&url);
    let gone: Vec<String> = psql(
        &url,
        "SELECT idvisit FROM matomo_log_visit ORDER BY idvisit LIMIT 2",
    )
    .lines()
    .map(str::to_string)
    .collect();
    assert_eq!(gone.len(), 2);
    psql(
        &url,
        &format!(
            "DELETE FROM matomo_log_visit WHERE idvisit IN ({})",
            gone.join(", ")
        ),
    );
    psql(&url, "UPDATE matomo_log_action SET idaction = idaction + 1000000 WHERE idaction = (SELECT min(idaction) FROM matomo_log_action)");

    let out = ok(work.etl(&["reconcile", "--source", "matomo"], &env));
    let visits = out
        .lines()
        .find(|l| l.starts_with("matomo_log_visit: ") && l.contains("missing in the target"))
        .unwrap_or_else(|| panic!("{out}"));
    for id in &gone {
        assert!(visits.contains(id.as_str()), "{id}: {out}");
    }
    assert!(
        out.contains("matomo_log_action: 1 only in the target"),
        "{out}"
    );
    // The visits are back as they were; the hand-edited action is reported, not deleted.
    assert_eq!(digest(&url)[0], before[0], "{out}");
    assert_eq!(digest(&url)[1], before[1], "{out}");
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM matomo_log_action WHERE idaction > 1000000"
        ),
        1
    );
}
