//! `etl load --prune` against the real PostgreSQL, on the SmartDiet dump: after a `--full`
//! extract it deletes exactly the rows of the documents removed from the source and their
//! link rows, keeps what a row that stays still references, keeps rows of documents the
//! transform rejects, refuses after a windowed extract and above the allowed share (unless
//! `--force`), shows counts and keys with `--dry-run`, writes the same statements into a SQL
//! bundle, and `etl rollback` restores what it deleted.

mod util;

use std::path::{Path, PathBuf};
use std::process::Output;

use bson::Document;
use util::smartdiet::{self, oid};
use util::*;

const USERS: usize = 200;
/// `smartdiet::oid`'s tag of users.
const TAG_USER: u8 = 4;

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

fn changed_tables(a: &[(String, String)], b: &[(String, String)]) -> Vec<String> {
    a.iter()
        .zip(b)
        .filter(|(x, y)| x != y)
        .map(|(x, _)| x.0.clone())
        .collect()
}

fn user_id(i: usize) -> String {
    oid(TAG_USER, i).to_hex()
}

/// The documents of `<db>/<collection>.bson`.
fn read_collection(db: &Path, collection: &str) -> Vec<Document> {
    let bytes = std::fs::read(db.join(format!("{collection}.bson"))).unwrap();
    let mut reader = &bytes[..];
    let mut docs = Vec::new();
    while !reader.is_empty() {
        docs.push(Document::from_reader(&mut reader).unwrap());
    }
    docs
}

/// Rewrites `<db>/users.bson` through `edit`.
fn edit_users(db: &Path, edit: impl Fn(Vec<Document>) -> Vec<Document>) {
    let users = edit(read_collection(db, "users"));
    smartdiet::write_collection(db, "users", users.iter());
}

/// The dump without the users of these indexes.
fn without_users(db: &Path, removed: &[usize]) {
    let ids: Vec<String> = removed.iter().map(|i| user_id(*i)).collect();
    edit_users(db, |users| {
        users
            .into_iter()
            .filter(|u| !ids.contains(&u.get_object_id("_id").unwrap().to_hex()))
            .collect()
    });
}

struct Case {
    work: Workdir,
    url: String,
}

impl Case {
    /// A first full load of the SmartDiet dump into a fresh database.
    fn loaded(name: &str) -> Case {
        let work = Workdir::new();
        let url = fresh_database(name);
        let case = Case { work, url };
        let first = smartdiet::write_dump(&case.work.path().join("first"), USERS);
        case.work.extract_transform_dump(&first, &[], &case.env());
        ok(case.etl(&["load"], &[]));
        case
    }

    fn env(&self) -> [(&str, &str); 1] {
        [("DATABASE_URL", self.url.as_str())]
    }

    fn etl(&self, args: &[&str], extra: &[(&str, &str)]) -> Output {
        let mut env = self.env().to_vec();
        env.extend_from_slice(extra);
        let out = self.work.etl(args, &env);
        assert_ne!(
            out.status.code(),
            Some(101),
            "etl {args:?} panicked:\n{}",
            stderr(&out)
        );
        out
    }

    /// A fresh copy of the SmartDiet dump under `name`, to edit.
    fn second_dump(&self, name: &str) -> PathBuf {
        smartdiet::write_dump(&self.work.path().join(name), USERS)
    }

    /// `etl extract` of `dump` (with `extra` flags) and `etl transform`.
    fn stage(&self, dump: &Path, extra: &[&str]) {
        self.work.extract_transform_dump(dump, extra, &self.env());
    }

    fn loads(&self) -> i64 {
        count(&self.url, "SELECT count(*) FROM etl.runs")
    }
}

#[test]
fn prune_deletes_exactly_the_removed_documents_rows_and_their_links_and_rollback_restores_them() {
    let case = Case::loaded("prune_exact");
    let before = digests(&case.url);
    let removed = [150, 151, 152];
    let links_of_removed = count(
        &case.url,
        &format!(
            "SELECT (SELECT count(*) FROM users_targets WHERE user_id IN ('{0}','{1}','{2}','{3}')) \
             + (SELECT count(*) FROM user_events WHERE user_id IN ('{0}','{1}','{2}','{3}'))",
            user_id(150),
            user_id(151),
            user_id(152),
            user_id(5)
        ),
    );
    assert!(links_of_removed > 0, "the removed users have link rows");
    // User 5 is gone too, but coachings and messages (whose documents remain) reference it:
    // its row stays, its link rows (which came from its document) go.
    let second = case.second_dump("second");
    without_users(&second, &[150, 151, 152, 5]);
    case.stage(&second, &["--full"]);
    let out = ok(case.etl(&["load", "--prune"], &[]));

    assert_eq!(
        count(&case.url, "SELECT count(*) FROM users"),
        i64::try_from(USERS - removed.len()).unwrap()
    );
    for i in removed.into_iter().chain([5]) {
        for (table, column) in [
            ("users", "id"),
            ("users_targets", "user_id"),
            ("user_events", "user_id"),
        ] {
            if i == 5 && table == "users" {
                continue;
            }
            assert_eq!(
                count(
                    &case.url,
                    &format!(
                        "SELECT count(*) FROM {table} WHERE {column} = '{}'",
                        user_id(i)
                    )
                ),
                0,
                "{table} still has rows of removed user {i}:\n{out}"
            );
        }
    }
    // Still referenced: kept, and said so.
    assert_eq!(
        count(
            &case.url,
            &format!("SELECT count(*) FROM users WHERE id = '{}'", user_id(5))
        ),
        1
    );
    assert!(out.contains("kept (still referenced"), "{out}");
    assert!(out.contains("users: 3 deleted"), "{out}");
    // Only the users' tables changed, and only by the removed rows.
    let after = digests(&case.url);
    assert_eq!(
        changed_tables(&before, &after),
        ["users", "user_events", "users_targets"],
        "{out}"
    );
    let deleted_links = count(
        &case.url,
        "SELECT count(*) FROM etl.history WHERE op = 'd' AND table_name IN ('users_targets', 'user_events')",
    );
    assert_eq!(deleted_links, links_of_removed);
    let manifest =
        etl::staging::latest_run(&case.work.path().join("staging"), etl::staging::Stage::Load)
            .unwrap()
            .unwrap()
            .manifest(etl::staging::Stage::Load)
            .unwrap();
    assert_eq!(manifest.entry("users").unwrap().counts.pruned, 3);

    // A second prune of the same run deletes nothing more, and still says what it keeps.
    let again = ok(case.etl(&["load", "--prune"], &[]));
    assert!(again.contains("users: 0 deleted, 1 kept"), "{again}");
    assert!(!again.contains("users_targets:"), "{again}");
    assert_eq!(digests(&case.url), after);

    // Pruned rows go to the history like any deleted row: rollback brings them back.
    ok(case.etl(&["rollback"], &[])); // the second, empty prune
    ok(case.etl(&["rollback"], &[]));
    assert_eq!(
        changed_tables(&before, &digests(&case.url)),
        Vec::<String>::new()
    );
}

#[test]
fn prune_keeps_the_rows_of_documents_the_transform_rejects() {
    let case = Case::loaded("prune_rejected");
    let second = case.second_dump("second");
    // User 160's document is still in the source, but no longer fits its table.
    let id = user_id(160);
    edit_users(&second, |mut users| {
        for u in users
            .iter_mut()
            .filter(|u| u.get_object_id("_id").unwrap().to_hex() == id)
        {
            u.insert("firstname", bson::doc! { "not": "text" });
        }
        users
    });
    case.stage(&second, &["--full"]);
    let out = ok(case.etl(&["load", "--prune"], &[]));
    assert!(out.contains("nothing deleted"), "{out}");
    assert_eq!(
        count(
            &case.url,
            &format!("SELECT count(*) FROM users WHERE id = '{id}'")
        ),
        1
    );
    assert!(
        count(
            &case.url,
            &format!("SELECT count(*) FROM users_targets WHERE user_id = '{id}'")
        ) > 0
    );
}

#[test]
fn prune_is_refused_after_a_windowed_extract_naming_the_tables() {
    let case = Case::loaded("prune_window");
    let before = digests(&case.url);
    let loads = case.loads();
    let second = case.second_dump("second");
    without_users(&second, &[150]);
    // No --full: the window starts at the target's watermark.
    case.stage(&second, &[]);
    let out = case.etl(&["load", "--prune"], &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let err = stderr(&out);
    for needle in [
        "--prune refused",
        "table `users`",
        "table `users_targets`",
        "window",
        "--full",
    ] {
        assert!(err.contains(needle), "{needle}: {err}");
    }
    assert_eq!(digests(&case.url), before, "nothing was loaded");
    assert_eq!(case.loads(), loads);
    // The dry run refuses the same way, before printing anything.
    let dry = case.etl(&["load", "--prune", "--dry-run"], &[]);
    assert_eq!(dry.status.code(), Some(1));
    assert!(stderr(&dry).contains("table `users`"), "{}", stderr(&dry));
}

#[test]
fn prune_is_refused_above_the_share_unless_forced_and_dry_run_shows_counts_and_keys() {
    let case = Case::loaded("prune_share");
    let before = digests(&case.url);
    let loads = case.loads();
    // 30 of 200 users (15%) gone: more than the default 10%.
    let second = case.second_dump("second");
    let removed: Vec<usize> = (170..200).collect();
    without_users(&second, &removed);
    case.stage(&second, &["--full"]);

    let dry = ok(case.etl(&["load", "--prune", "--dry-run"], &[]));
    assert!(
        dry.contains("-- prune: target rows whose key is no longer in the source"),
        "{dry}"
    );
    assert!(
        dry.contains("users: 30 of 200 rows would be deleted (over the allowed share"),
        "{dry}"
    );
    assert!(
        dry.contains(&format!("{{\"id\": \"{}\"}}", user_id(170))),
        "sample keys: {dry}"
    );
    assert_eq!(digests(&case.url), before, "a dry run changes nothing");

    let out = case.etl(&["load", "--prune"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("more than 10%") && err.contains("users (30 of 200 rows)"),
        "{err}"
    );
    assert!(
        err.contains("nothing was changed") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(digests(&case.url), before, "a refused prune loads nothing");
    assert_eq!(case.loads(), loads);

    // A larger allowed share, or --force, lets it through.
    let out = case.etl(&["load", "--prune"], &[("ETL_PRUNE_MAX_SHARE", "20%")]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(count(&case.url, "SELECT count(*) FROM users"), 170);
    let bad = case.etl(&["load", "--prune"], &[("ETL_PRUNE_MAX_SHARE", "ten")]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
}

#[test]
fn an_empty_collection_never_wipes_the_table_without_force() {
    let case = Case::loaded("prune_empty");
    let before = digests(&case.url);
    let second = case.second_dump("second");
    edit_users(&second, |_| Vec::new());
    case.stage(&second, &["--full"]);
    let out = case.etl(&["load", "--prune"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("users (200 of 200 rows)"),
        "{}",
        stderr(&out)
    );
    assert_eq!(digests(&case.url), before);
    // A collection missing from the dump: its keys are unknown, --force does not help.
    std::fs::remove_file(second.join("users.bson")).unwrap();
    case.stage(&second, &["--full"]);
    let out = case.etl(&["load", "--prune", "--force"], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("was not in the source"),
        "{}",
        stderr(&out)
    );
    assert_eq!(digests(&case.url), before);
}

#[test]
fn a_prune_bundle_runs_the_live_statements_and_leaves_the_same_tables() {
    // Two targets holding the same first run; one pruned live, the other by the bundle of the
    // same second run.
    let live = Case::loaded("prune_live");
    let first =
        etl::staging::latest_run(&live.work.path().join("staging"), etl::staging::Stage::Load)
            .unwrap()
            .unwrap()
            .id;
    let bundle_url = fresh_database("prune_bundle");
    ok(live.etl(
        &["load", "--run", &first],
        &[("DATABASE_URL", bundle_url.as_str())],
    ));
    let second = live.second_dump("second");
    without_users(&second, &[150, 151]);
    live.stage(&second, &["--full"]);
    let out_dir = live.work.path().join("bundles");
    ok(live.etl(
        &[
            "load",
            "--prune",
            "--to",
            "sql",
            "--out",
            out_dir.to_str().unwrap(),
        ],
        &[],
    ));
    let dry = ok(live.etl(&["load", "--prune", "--dry-run"], &[]));
    ok(live.etl(&["load", "--prune"], &[]));

    let run = std::fs::read_dir(&out_dir)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let script = std::fs::read_to_string(run.join("load.sql")).unwrap();
    // The dry run prints the bundle's script (then its preview of the counts).
    let body = |s: &str| {
        s.lines()
            .skip_while(|l| l.starts_with("--"))
            .take_while(|l| !l.starts_with("-- prune preview"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(body(&dry).trim(), body(&script).trim());
    assert!(
        dry.contains("users: 2 of 200 rows would be deleted"),
        "{dry}"
    );
    // The live load ran the bundle's prune statements.
    let manifest =
        etl::staging::latest_run(&live.work.path().join("staging"), etl::staging::Stage::Load)
            .unwrap()
            .unwrap()
            .manifest(etl::staging::Stage::Load)
            .unwrap();
    let pruning: Vec<&String> = manifest
        .entries
        .iter()
        .flat_map(|e| &e.statements)
        .filter(|s| s.contains("etl_prune"))
        .collect();
    assert!(pruning.len() >= 3 * 5, "{pruning:#?}");
    for s in pruning {
        let found = match s.strip_prefix("COPY ") {
            Some(copy) => {
                let into = copy.split(" FROM STDIN").next().unwrap_or_default();
                script.contains(&format!("\\copy {into} FROM"))
            }
            None => script.contains(s.as_str()),
        };
        assert!(found, "not in the bundle: {s}");
    }
    let applied = apply_bundle(&run, &bundle_url);
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );
    assert_eq!(digests(&bundle_url), digests(&live.url));
    assert_eq!(count(&bundle_url, "SELECT count(*) FROM users"), 198);
}
