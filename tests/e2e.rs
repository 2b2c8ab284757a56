//! A mongodump through extract, transform and load into the real test PostgreSQL, and the
//! incremental, idempotence and crash behaviours users rely on.

mod util;

use std::collections::{BTreeMap, BTreeSet};

use bson::{Bson, Document};
use util::smartdiet::{self, at, oid, Lcg, Sizes};
use util::*;

const USERS: usize = 60;

/// A work dir with a dump of `USERS` users and a fresh target database.
struct Case {
    work: Workdir,
    db_dir: std::path::PathBuf,
    url: String,
}

impl Case {
    fn new(name: &str) -> Case {
        let work = Workdir::new();
        let db_dir = smartdiet::write_dump(&work.path().join("dump"), USERS);
        let url = fresh_database(name);
        Case { work, db_dir, url }
    }

    fn etl(&self, args: &[&str]) -> std::process::Output {
        self.etl_env(args, &[])
    }

    fn etl_env(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        let mut all = vec![("DATABASE_URL", self.url.as_str())];
        all.extend_from_slice(env);
        let out = self.work.etl(args, &all);
        assert!(
            out.status.success(),
            "etl {args:?} failed:\n{}\n{}",
            stdout(&out),
            stderr(&out)
        );
        out
    }

    fn run_dump(&self) -> std::process::Output {
        let dump = self.db_dir.to_str().unwrap().to_string();
        self.etl(&["run", "--source", "dump", "--dump", &dump])
    }

    fn users(&self) -> Vec<Document> {
        read_bson(&self.db_dir.join("users.bson"))
    }

    fn rewrite_users(&self, docs: &[Document]) {
        smartdiet::write_collection(&self.db_dir, "users", docs.iter());
    }
}

fn read_bson(path: &std::path::Path) -> Vec<Document> {
    let bytes = std::fs::read(path).unwrap();
    let mut docs = Vec::new();
    let mut rest = &bytes[..];
    while !rest.is_empty() {
        let len = i32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        docs.push(bson::from_slice(&rest[..len]).unwrap());
        rest = &rest[len..];
    }
    docs
}

/// (user_id, target_id, type) rows expected from user documents, computed by hand from the
/// three arrays (duplicates within one array count once).
fn expected_users_targets(users: &[Document]) -> BTreeSet<(String, String, String)> {
    let mut rows = BTreeSet::new();
    for u in users {
        let id = u.get_object_id("_id").unwrap().to_hex();
        for (field, kind) in [
            ("targets", "basic"),
            ("specificity_targets", "specificity"),
            ("health_targets", "health"),
        ] {
            if let Ok(array) = u.get_array(field) {
                for t in array {
                    if let Bson::ObjectId(t) = t {
                        rows.insert((id.clone(), t.to_hex(), kind.to_string()));
                    }
                }
            }
        }
    }
    rows
}

fn pg_users_targets(url: &str) -> BTreeSet<(String, String, String)> {
    psql(
        url,
        "SELECT user_id || ',' || target_id || ',' || type FROM users_targets",
    )
    .lines()
    .map(|l| {
        let p: Vec<&str> = l.split(',').collect();
        (p[0].to_string(), p[1].to_string(), p[2].to_string())
    })
    .collect()
}

#[test]
fn first_load_puts_every_document_in_its_tables() {
    let case = Case::new("e2e_first");
    let out = case.run_dump();
    let summary = stdout(&out);
    assert!(summary.contains("users_targets"), "{summary}");

    let users = case.users();
    assert_eq!(count(&case.url, "SELECT count(*) FROM users"), USERS as i64);
    assert_eq!(pg_users_targets(&case.url), expected_users_targets(&users));
    let events: usize = users
        .iter()
        .map(|u| {
            u.get_array("registered_events")
                .unwrap()
                .iter()
                .map(|b| b.to_string())
                .collect::<BTreeSet<_>>()
                .len()
        })
        .sum();
    assert_eq!(
        count(&case.url, "SELECT count(*) FROM user_events"),
        events as i64
    );

    // Logbook: one row per (user, day) among documents that have a user; earliest created_at.
    let s = Sizes::for_users(USERS);
    let logbooks = smartdiet::other_collections(&s)
        .into_iter()
        .find(|(n, _)| *n == "coachinglogbooks")
        .unwrap()
        .1;
    let mut expected: BTreeMap<(String, String), (i64, i64)> = BTreeMap::new();
    for d in logbooks.iter().filter(|d| d.contains_key("user")) {
        let day = d
            .get_datetime("day")
            .unwrap()
            .to_chrono()
            .date_naive()
            .to_string();
        let key = (d.get_object_id("user").unwrap().to_hex(), day);
        let (c, u) = (
            d.get_datetime("creation_date").unwrap().timestamp_millis(),
            d.get_datetime("update_date").unwrap().timestamp_millis(),
        );
        let e = expected.entry(key).or_insert((c, u));
        *e = (e.0.min(c), e.1.max(u));
    }
    let rows = psql(
        &case.url,
        "SELECT user_id || ',' || day || ',' || (extract(epoch from created_at) * 1000)::bigint || ',' || (extract(epoch from updated_at) * 1000)::bigint FROM users_logbook ORDER BY 1",
    );
    let got: BTreeMap<(String, String), (i64, i64)> = rows
        .lines()
        .map(|l| {
            let p: Vec<&str> = l.split(',').collect();
            (
                (p[0].to_string(), p[1].to_string()),
                (p[2].parse().unwrap(), p[3].parse().unwrap()),
            )
        })
        .collect();
    assert_eq!(got, expected);

    // Renamed fields and the quoted `order` column.
    let day = oid(14, 3).to_hex();
    assert_eq!(
        psql(
            &case.url,
            &format!("SELECT completed, day FROM days WHERE id = '{day}'")
        )
        .trim(),
        "f|2024-03-04"
    );
    assert_eq!(
        count(
            &case.url,
            "SELECT count(*) FROM periods WHERE \"order\" BETWEEN 1 AND 4"
        ),
        6
    );

    // Every table got rows, and counts add up in the transform manifest.
    for table in SMARTDIET_TABLES {
        assert!(
            count(&case.url, &format!("SELECT count(*) FROM {table}")) > 0,
            "{table} is empty"
        );
    }
}

#[test]
fn incremental_run_applies_updates_removals_and_emptied_arrays() {
    let case = Case::new("e2e_incr");
    case.run_dump();
    let original = case.users();
    let mut users = original.clone();
    let later = at(100_000);
    // User 0: one target removed; user 1: registered_events emptied; user 2: health_targets removed;
    // a new user 999 appears. Their update_date moves past the watermark.
    let removed = users[0].get_array("targets").unwrap()[0].clone();
    users[0].get_array_mut("targets").unwrap().remove(0);
    users[0].insert("update_date", later);
    users[1].insert("registered_events", Vec::<Bson>::new());
    users[1].insert("update_date", later);
    users[2].remove("health_targets");
    users[2].insert("update_date", later);
    users[3].insert("firstname", "Renamed");
    users[3].insert("update_date", later);
    let mut new_user = smartdiet::user(999, &Sizes::for_users(USERS), &mut Lcg::new(1));
    new_user.insert("creation_date", later);
    new_user.insert("update_date", later);
    users.push(new_user);
    case.rewrite_users(&users);

    let out = case.run_dump();
    let text = stdout(&out);
    // The window holds the five changed documents and those exactly at the watermark
    // (inclusive, as in the Python tool).
    let expected = at_watermark(&case.users(), &original).len();
    assert!((5..USERS).contains(&expected), "{expected}");
    let users_line = text
        .lines()
        .find(|l| l.starts_with("users "))
        .unwrap_or_default();
    let extracted: usize = users_line
        .split_whitespace()
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(extracted, expected, "{text}");

    assert_eq!(pg_users_targets(&case.url), expected_users_targets(&users));
    let u1 = users[1].get_object_id("_id").unwrap().to_hex();
    assert_eq!(
        count(
            &case.url,
            &format!("SELECT count(*) FROM user_events WHERE user_id = '{u1}'")
        ),
        0
    );
    let u0 = users[0].get_object_id("_id").unwrap().to_hex();
    let removed = match removed {
        Bson::ObjectId(o) => o.to_hex(),
        other => panic!("{other}"),
    };
    assert_eq!(
        count(&case.url, &format!("SELECT count(*) FROM users_targets WHERE user_id = '{u0}' AND target_id = '{removed}' AND type = 'basic'")),
        0
    );
    assert_eq!(
        count(&case.url, "SELECT count(*) FROM users"),
        USERS as i64 + 1
    );
    let u3 = users[3].get_object_id("_id").unwrap().to_hex();
    assert_eq!(
        psql(
            &case.url,
            &format!("SELECT firstname FROM users WHERE id = '{u3}'")
        )
        .trim(),
        "Renamed"
    );
}

#[test]
fn loading_the_same_run_twice_changes_nothing() {
    let case = Case::new("e2e_twice");
    case.run_dump();
    let before: Vec<String> = SMARTDIET_TABLES
        .iter()
        .map(|t| table_digest(&case.url, t))
        .collect();
    let xmin_before = psql(
        &case.url,
        "SELECT string_agg(xmin::text, ',' ORDER BY id) FROM users",
    );
    let out = case.etl(&["load"]);
    let text = stdout(&out);
    for line in text.lines().skip(3) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            &cells[2..5],
            &["0", "0", "0"],
            "second load wrote something: {line}"
        );
    }
    let after: Vec<String> = SMARTDIET_TABLES
        .iter()
        .map(|t| table_digest(&case.url, t))
        .collect();
    assert_eq!(before, after);
    // No row was rewritten (same tuple versions).
    assert_eq!(
        xmin_before,
        psql(
            &case.url,
            "SELECT string_agg(xmin::text, ',' ORDER BY id) FROM users"
        )
    );
}

#[test]
fn orphans_are_rejected_with_their_reason_and_the_load_goes_on() {
    let case = Case::new("e2e_orphans");
    let mut users = case.users();
    users[5].insert("company", oid(1, 77_777));
    case.rewrite_users(&users);
    let out = case.run_dump();
    assert!(stdout(&out).contains("users"), "{}", stdout(&out));
    let orphan = users[5].get_object_id("_id").unwrap().to_hex();
    assert_eq!(
        count(
            &case.url,
            &format!("SELECT count(*) FROM users WHERE id = '{orphan}'")
        ),
        0
    );
    assert_eq!(
        count(&case.url, "SELECT count(*) FROM users"),
        USERS as i64 - 1
    );
    // Its link rows are orphans too (their user is not in the target).
    assert_eq!(
        count(
            &case.url,
            &format!("SELECT count(*) FROM users_targets WHERE user_id = '{orphan}'")
        ),
        0
    );
    let rejects = find_file(case.work.path(), "users.orphans.parquet").expect("orphans file");
    let text = parquet_text(&rejects);
    assert!(
        text.contains(&orphan)
            && text.contains("company_id")
            && text.contains("not found in companies(id)"),
        "{text}"
    );
}

#[test]
fn sql_export_loads_with_psql_to_the_same_rows() {
    let case = Case::new("e2e_sql_live");
    case.run_dump();
    let out_dir = case.work.path().join("exports");
    case.etl(&["load", "--to", "sql", "--out", out_dir.to_str().unwrap()]);
    let file = find_file(&out_dir, "load.sql").expect("load.sql");
    let other = fresh_database("e2e_sql_file");
    let out = apply_bundle(file.parent().unwrap(), &other);
    assert!(out.status.success(), "{}", stderr(&out));
    for table in SMARTDIET_TABLES.iter().filter(|t| **t != "users_logbook") {
        assert_eq!(
            table_digest(&case.url, table),
            table_digest(&other, table),
            "{table}"
        );
    }
    // users_logbook ids are generated: compare without them.
    let q = "SELECT md5(string_agg(user_id || day || created_at || updated_at, '|' ORDER BY user_id, day)) FROM users_logbook";
    assert_eq!(psql(&case.url, q), psql(&other, q));
}

#[test]
fn force_reimport_with_truncate_removes_rows_gone_from_the_source() {
    let case = Case::new("e2e_force");
    case.run_dump();
    // A row that exists only in the target.
    psql(&case.url, "INSERT INTO targets (id, created_at, updated_at, name) VALUES ('stale', now(), now(), 'old')");
    let config = case.work.path().join("config/schemas.yaml");
    let yaml = std::fs::read_to_string(&config).unwrap();
    let forced = yaml.replacen(
        "targets:\n  include_base: true\n",
        "targets:\n  include_base: true\n  force_reimport: true\n",
        1,
    );
    std::fs::write(&config, &forced).unwrap();
    case.run_dump();
    assert_eq!(
        count(&case.url, "SELECT count(*) FROM targets WHERE id = 'stale'"),
        1,
        "force_reimport alone upserts"
    );
    std::fs::write(
        &config,
        forced.replacen(
            "force_reimport: true\n",
            "force_reimport: true\n  truncate_before_import: true\n",
            1,
        ),
    )
    .unwrap();
    case.run_dump();
    assert_eq!(
        count(&case.url, "SELECT count(*) FROM targets WHERE id = 'stale'"),
        0
    );
    assert_eq!(
        count(&case.url, "SELECT count(*) FROM targets"),
        Sizes::for_users(USERS).small as i64
    );
    // TRUNCATE ... CASCADE also empties the tables referencing `targets` (as documented for
    // the Python tool); their own windows were incremental, so only the users at the
    // watermark (inclusive window) were reloaded.
    let users = case.users();
    let boundary = at_watermark(&users, &users);
    let reloaded: Vec<Document> = users
        .iter()
        .filter(|u| boundary.contains(&u.get_object_id("_id").unwrap().to_hex()))
        .cloned()
        .collect();
    assert_eq!(
        pg_users_targets(&case.url),
        expected_users_targets(&reloaded)
    );
}

/// Ids of the `docs` whose creation or update date is at or after the highest
/// GREATEST(creation_date, update_date) of `loaded`: what an inclusive window re-extracts.
fn at_watermark(docs: &[Document], loaded: &[Document]) -> BTreeSet<String> {
    let ts = |d: &Document, k: &str| {
        d.get_datetime(k)
            .map(|t| t.timestamp_millis())
            .unwrap_or(i64::MIN)
    };
    let max = loaded
        .iter()
        .map(|d| ts(d, "creation_date").max(ts(d, "update_date")))
        .max()
        .unwrap();
    docs.iter()
        .filter(|d| ts(d, "creation_date") >= max || ts(d, "update_date") >= max)
        .map(|d| d.get_object_id("_id").unwrap().to_hex())
        .collect()
}

/// Finds a file by name under `dir`.
fn find_file(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()? {
        let path = entry.ok()?.path();
        if path.is_dir() {
            if let Some(found) = find_file(&path, name) {
                return Some(found);
            }
        } else if path.file_name().and_then(|n| n.to_str()) == Some(name) {
            return Some(path);
        }
    }
    None
}

fn parquet_text(path: &std::path::Path) -> String {
    let (_, batches) = etl::staging::read_batches(path).unwrap();
    arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string()
}

#[test]
fn a_load_killed_mid_way_changes_nothing_and_the_rerun_completes_it() {
    // Big enough that the load takes a moment; the kill waits until PostgreSQL is busy with it.
    let work = Workdir::new();
    let db_dir = smartdiet::write_dump(&work.path().join("dump"), 30_000);
    let dump = db_dir.to_str().unwrap().to_string();
    let killed = fresh_database("e2e_killed");
    let clean = fresh_database("e2e_clean");
    let ok = |out: std::process::Output| {
        assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out))
    };

    // First run loaded into both targets; then the users change and a second run is staged.
    ok(work.etl(&["extract", "--source", "dump", "--dump", &dump], &[]));
    ok(work.etl(&["transform"], &[]));
    ok(work.etl(&["load"], &[("DATABASE_URL", &killed)]));
    ok(work.etl(&["load"], &[("DATABASE_URL", &clean)]));
    smartdiet::write_dump_changed(&work.path().join("dump"), 30_000, 2_000);
    ok(work.etl(
        &["extract", "--source", "dump", "--dump", &dump, "--full"],
        &[],
    ));
    ok(work.etl(&["transform"], &[]));
    let before: Vec<String> = SMARTDIET_TABLES
        .iter()
        .map(|t| table_digest(&killed, t))
        .collect();

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_etl"))
        .current_dir(work.path())
        .args(["--quiet", "load"])
        .env("DATABASE_URL", &killed)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let db_name = killed.rsplit('/').next().unwrap().to_string();
    let busy = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db_name}' AND state = 'active' \
         AND (query LIKE 'COPY%' OR query LIKE 'WITH written%' OR query LIKE 'DELETE%')"
    );
    let started = std::time::Instant::now();
    while count(&postgres_url(), &busy) == 0 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the load finished before it could be killed"
        );
        assert!(started.elapsed().as_secs() < 60, "the load never got busy");
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // PostgreSQL rolls the transaction back once it notices the connection is gone.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while count(&postgres_url(), &format!("SELECT count(*) FROM pg_stat_activity WHERE datname = '{db_name}' AND state <> 'idle' AND pid <> pg_backend_pid()")) > 0 {
        assert!(std::time::Instant::now() < deadline, "the killed load's session did not end");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let after: Vec<String> = SMARTDIET_TABLES
        .iter()
        .map(|t| table_digest(&killed, t))
        .collect();
    assert_eq!(before, after, "a killed load changed the target");

    ok(work.etl(&["load"], &[("DATABASE_URL", &killed)]));
    ok(work.etl(&["load"], &[("DATABASE_URL", &clean)]));
    for table in SMARTDIET_TABLES.iter().filter(|t| **t != "users_logbook") {
        assert_eq!(
            table_digest(&killed, table),
            table_digest(&clean, table),
            "{table} differs after the rerun"
        );
    }
    // Big link tables had their foreign keys rebuilt during the load: all are back.
    let fks = "SELECT count(*) FROM pg_constraint WHERE contype = 'f'";
    assert_eq!(count(&killed, fks), count(&clean, fks));
    assert_eq!(
        count(&killed, fks),
        32,
        "the SmartDiet schema declares 32 foreign keys"
    );
    // users_logbook ids come from a sequence the rolled-back load advanced: compare the rest.
    let q = "SELECT md5(string_agg(user_id || day || created_at || updated_at, '|' ORDER BY user_id, day)) FROM users_logbook";
    assert_eq!(psql(&killed, q), psql(&clean, q));
}

#[test]
fn global_date_threshold_moves_the_window_back_and_a_malformed_one_is_ignored() {
    let case = Case::new("e2e_threshold");
    case.run_dump();
    let dump = case.db_dir.to_str().unwrap().to_string();
    let users_extracted = |env: &[(&str, &str)]| -> usize {
        let out = case.etl_env(&["extract", "--source", "dump", "--dump", &dump], env);
        let text = stdout(&out);
        let line = text
            .lines()
            .find(|l| l.starts_with("users "))
            .unwrap_or_default()
            .to_string();
        line.split_whitespace().nth(2).unwrap().parse().unwrap()
    };
    let incremental = users_extracted(&[]);
    assert!(incremental < USERS, "{incremental}");
    // Every generated document is on or after 2024-03-01.
    assert_eq!(
        users_extracted(&[("GLOBAL_DATE_THRESHOLD", "2024-03-01")]),
        USERS
    );
    // A later threshold does not narrow the window; a malformed one is ignored with a warning.
    assert_eq!(
        users_extracted(&[("GLOBAL_DATE_THRESHOLD", "2030-01-01")]),
        incremental
    );
    let out = case.etl_env(
        &["extract", "--source", "dump", "--dump", &dump],
        &[("GLOBAL_DATE_THRESHOLD", "2024/03/01")],
    );
    assert!(
        stderr(&out).contains("GLOBAL_DATE_THRESHOLD is not YYYY-MM-DD"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        users_extracted(&[("GLOBAL_DATE_THRESHOLD", "01-03-2024")]),
        incremental
    );
}

#[test]
fn a_killed_extract_leaves_the_previous_run_usable() {
    let work = Workdir::new();
    let small = smartdiet::write_dump(&work.path().join("small"), 20);
    let out = work.etl(
        &[
            "extract",
            "--source",
            "dump",
            "--dump",
            small.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let first =
        etl::staging::latest_run(&work.path().join("staging"), etl::staging::Stage::Extract)
            .unwrap()
            .unwrap();

    let big = smartdiet::write_dump(&work.path().join("big"), 300_000);
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_etl"))
        .current_dir(work.path())
        .args([
            "--quiet",
            "extract",
            "--source",
            "dump",
            "--dump",
            big.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill once the new run has started writing users.
    let started = std::time::Instant::now();
    let users_dir = loop {
        let runs = etl::staging::list_runs(&work.path().join("staging")).unwrap();
        let dir = runs.last().unwrap().root.join("extract/dump/users");
        if runs.len() == 2 && dir.is_dir() {
            break dir;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "extract finished before it could be killed"
        );
        assert!(started.elapsed().as_secs() < 60);
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(users_dir.is_dir());

    // The killed run has no manifest: it is not a finished extract, and transform takes the first.
    let latest =
        etl::staging::latest_run(&work.path().join("staging"), etl::staging::Stage::Extract)
            .unwrap()
            .unwrap();
    assert_eq!(latest.id, first.id);
    let out = work.etl(&["transform"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains(&format!("transform: run {}", first.id)),
        "{}",
        stdout(&out)
    );
    // Naming the killed run explicitly is refused with a message.
    let killed = etl::staging::list_runs(&work.path().join("staging"))
        .unwrap()
        .into_iter()
        .find(|r| r.id != first.id)
        .unwrap();
    let out = work.etl(&["transform", "--run", &killed.id], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("did not finish"), "{}", stderr(&out));
}

#[test]
fn load_over_tls_as_sslmode_asks() {
    let work = Workdir::new();
    let db_dir = smartdiet::write_dump(&work.path().join("dump"), 20);
    let out = work.etl(
        &[
            "extract",
            "--source",
            "dump",
            "--dump",
            db_dir.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(work.etl(&["transform"], &[]).status.success());
    // The test server admits `etl_tls` over TLS only (scripts/services.sh).
    let tls_url = std::env::var("ETL_TEST_POSTGRES_TLS_URL")
        .expect("ETL_TEST_POSTGRES_TLS_URL: run with make test");
    let ca = std::env::var("ETL_TEST_POSTGRES_CA").unwrap();
    let db = fresh_database("e2e_tls");
    let name = db.rsplit('/').next().unwrap();
    let url = |mode: &str| {
        format!(
            "{}/{name}?sslmode={mode}",
            tls_url.rsplit_once('/').unwrap().0
        )
    };

    let plain = work.etl(&["load"], &[("DATABASE_URL", &url("disable"))]);
    assert_eq!(plain.status.code(), Some(1));
    assert!(
        stderr(&plain).contains("no encryption"),
        "{}",
        stderr(&plain)
    );

    let unverified = work.etl(&["load"], &[("DATABASE_URL", &url("verify-full"))]);
    assert_eq!(
        unverified.status.code(),
        Some(1),
        "a self-signed certificate must not pass verify-full without its CA"
    );

    let required = work.etl(&["load"], &[("DATABASE_URL", &url("require"))]);
    assert!(required.status.success(), "{}", stderr(&required));
    let verified = work.etl(
        &["load"],
        &[
            ("DATABASE_URL", &url("verify-full")),
            ("POSTGRES_SSLROOTCERT", &ca),
        ],
    );
    assert!(verified.status.success(), "{}", stderr(&verified));
    assert_eq!(count(&db, "SELECT count(*) FROM users"), 20);
}

#[test]
fn staged_files_are_typed_parquet_that_pyarrow_reads() {
    let case = Case::new("e2e_pyarrow");
    case.run_dump();
    let run = etl::staging::latest_run(
        &case.work.path().join("staging"),
        etl::staging::Stage::Transform,
    )
    .unwrap()
    .unwrap();
    let text = check_with_pyarrow(
        &run.root,
        &[
            "extract:users._id=string",
            "extract:users.creation_date=timestamp[ms, tz=UTC]",
            "extract:users.firstname=string",
            "extract:users.firstname__raw=string",
            "extract:users.registered_events=list<item: struct<id: string, raw: string>>",
            "extract:offers.price=string",
            "transform:users_targets.created_at=timestamp[us]",
            "transform:users_targets.type=string",
            "transform:periods.days_numbers=int16",
            "transform:days.day=date32[day]",
            "transform:days.completed=bool",
            "transform:offers.price=decimal128(10, 2)",
        ],
    );
    assert!(text.contains("users.registered_events"), "{text}");
}
