//! One load plan, three executors: the live load runs it, `etl load --to sql` writes it as a
//! bundle, `etl load --dry-run` prints it. They must hold the same statements in the same
//! order: the live load's statements (recorded in its load manifest) are exactly one arm of
//! each table's branch in the bundle, the empty-target arm on a first load and the other arm
//! on the next one; the dry run prints the bundle's script; and the bundle, applied with psql,
//! leaves the same tables as the live load.

mod util;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use util::*;

/// One table's section of a psql script.
#[derive(Debug, Default, PartialEq)]
struct Section {
    /// Statements before the branch, the branch's check included.
    before: Vec<String>,
    then: Vec<String>,
    otherwise: Vec<String>,
}

/// The statements of a script, per table (`-- <table>: N rows` opens a table's section), as
/// PostgreSQL receives them: `\copy X FROM 'file'` is `COPY X FROM STDIN`, the branch's
/// `\gset` check is the plain SELECT.
fn sections(script: &str) -> BTreeMap<String, Section> {
    let mut out: BTreeMap<String, Section> = BTreeMap::new();
    let mut table: Option<String> = None;
    let mut arm = 0; // 0 before the branch, 1 then, 2 otherwise
    let mut pending = String::new();
    for line in script.lines() {
        if line == "-- after every table" {
            table = None;
            continue;
        }
        if let Some(rest) = line.strip_prefix("-- ") {
            if let Some((name, rows)) = rest.split_once(": ") {
                if rows.ends_with(" rows") && !name.contains(' ') {
                    table = Some(name.to_string());
                    arm = 0;
                }
            }
            continue;
        }
        let Some(name) = table.clone() else { continue };
        if line.is_empty() && pending.is_empty() {
            continue;
        }
        let section = out.entry(name).or_default();
        let mut push = |statement: String| match arm {
            0 => section.before.push(statement),
            1 => section.then.push(statement),
            _ => section.otherwise.push(statement),
        };
        if let Some(copy) = line.strip_prefix("\\copy ") {
            let (into, _file) = copy.split_once(" FROM '").expect("\\copy ... FROM 'file'");
            push(format!("COPY {into} FROM STDIN"));
        } else if let Some(check) = line.strip_suffix(" AS etl_empty \\gset") {
            push(check.to_string());
        } else if line.starts_with("\\if") {
            arm = 1;
        } else if line == "\\else" {
            arm = 2;
        } else if line == "\\endif" {
            arm = 0;
        } else {
            pending.push_str(line);
            if let Some(statement) = pending.strip_suffix(';') {
                push(statement.to_string());
                pending.clear();
            } else {
                pending.push('\n');
            }
        }
    }
    out
}

/// The live load's statements per table, from the newest run's load manifest.
fn live_statements(work: &Workdir) -> BTreeMap<String, Vec<String>> {
    let manifest = newest_run(work).join("load/manifest.json");
    eprintln!("reading {}", manifest.display());
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    json["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let statements = e["statements"]
                .as_array()
                .unwrap_or_else(|| panic!("no statements recorded for {e}"))
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect();
            (e["name"].as_str().unwrap().to_string(), statements)
        })
        .collect()
}

fn newest_run(work: &Workdir) -> PathBuf {
    let mut runs: Vec<PathBuf> = std::fs::read_dir(work.path().join("staging"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    runs.sort();
    runs.pop().expect("a staged run")
}

/// The bundle writes orphans into `etl_load_rejects` around the same DELETE the live load
/// runs (in a loop for a self reference, as the live load repeats it), and its COPY data is
/// text where the live load sends binary; every other statement is the same text.
fn same_statement(bundle: &str, live: &str) -> bool {
    let live = live.strip_suffix(" (FORMAT binary)").unwrap_or(live);
    bundle == live
        || (live.starts_with("DELETE FROM etl_stage_")
            && bundle.contains(&format!(
                "WITH gone(k, v) AS ({live}) INSERT INTO etl_load_rejects"
            )))
}

fn assert_arm(table: &str, section: &Section, empty: bool, live: &[String]) {
    let arm = if empty {
        &section.then
    } else {
        &section.otherwise
    };
    let expected: Vec<&String> = section.before.iter().chain(arm).collect();
    assert_eq!(
        expected.len(),
        live.len(),
        "{table} (empty target: {empty}): bundle {expected:#?}\nlive {live:#?}"
    );
    for (b, l) in expected.iter().zip(live) {
        assert!(
            same_statement(b, l),
            "{table} (empty target: {empty}):\nbundle: {b}\nlive:   {l}"
        );
    }
}

fn etl_ok(work: &Workdir, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = work.etl(args, env);
    assert!(
        out.status.success(),
        "etl {args:?}:\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

/// Writes the newest run's bundle and applies it with psql from its folder.
fn bundle_and_apply(work: &Workdir, url: &str) -> String {
    let out = work.path().join("bundles");
    etl_ok(
        work,
        &["load", "--to", "sql", "--out", out.to_str().unwrap()],
        &[],
    );
    let run = newest_run(work);
    let dir = out.join(run.file_name().unwrap());
    apply(&dir, url);
    std::fs::read_to_string(dir.join("load.sql")).unwrap()
}

fn apply(dir: &Path, url: &str) {
    let out = apply_bundle(dir, url);
    assert!(out.status.success(), "psql: {}", stderr(&out));
}

fn assert_same_tables(live: &str, bundle: &str) {
    for table in SMARTDIET_TABLES.iter().filter(|t| **t != "users_logbook") {
        assert_eq!(
            table_digest(live, table),
            table_digest(bundle, table),
            "{table}"
        );
    }
    // users_logbook ids are generated: compare without them.
    let q = "SELECT md5(string_agg(user_id || day || created_at || updated_at, '|' ORDER BY user_id, day)) FROM users_logbook";
    assert_eq!(psql(live, q), psql(bundle, q));
}

#[test]
fn live_load_bundle_and_dry_run_run_the_same_statements() {
    let work = Workdir::new();
    // 15,000 users give users_targets more rows than the foreign-key rebuild threshold
    // (50,000), so that path is covered too.
    let dump = util::smartdiet::write_dump(&work.path().join("first"), 15_000);
    work.extract_transform_dump(&dump, &[], &[]);
    let live = fresh_database("plan_live");
    let bundled = fresh_database("plan_bundle");
    let env = [("DATABASE_URL", live.as_str())];

    let dry = sections(&etl_ok(&work, &["load", "--dry-run"], &env));
    let script = bundle_and_apply(&work, &bundled);
    let bundle = sections(&script);
    assert_eq!(dry, bundle, "--dry-run prints the bundle's statements");
    assert_eq!(bundle.len(), SMARTDIET_TABLES.len());
    assert!(
        bundle["users_targets"]
            .then
            .iter()
            .any(|s| s.contains("DROP CONSTRAINT")),
        "users_targets is big enough for the foreign-key rebuild: {:#?}",
        bundle["users_targets"]
    );

    // First live load: every target is empty.
    etl_ok(&work, &["load"], &env);
    let first = live_statements(&work);
    assert_eq!(first.len(), bundle.len());
    for (table, statements) in &first {
        assert_arm(table, &bundle[table], true, statements);
    }
    assert_same_tables(&live, &bundled);
    let fkeys = "SELECT count(*) FROM pg_constraint WHERE conrelid = 'users_targets'::regclass AND contype = 'f'";
    assert_eq!(count(&live, fkeys), 2, "foreign keys re-added");
    assert_eq!(count(&bundled, fkeys), 2, "foreign keys re-added");

    // Second run: 500 users changed (a target removed, events emptied); the targets have rows.
    let changed = util::smartdiet::write_dump_changed(&work.path().join("second"), 15_000, 500);
    work.extract_transform_dump(&changed, &["--full"], &[]);
    let script = bundle_and_apply(&work, &bundled);
    let bundle = sections(&script);
    let empty: BTreeMap<&str, bool> = SMARTDIET_TABLES
        .iter()
        .map(|t| (*t, count(&live, &format!("SELECT count(*) FROM {t}")) == 0))
        .collect();
    assert!(
        empty.values().filter(|e| !**e).count() > 20,
        "most tables have rows: {empty:?}"
    );
    etl_ok(&work, &["load"], &env);
    for (table, statements) in &live_statements(&work) {
        assert_arm(table, &bundle[table], empty[table.as_str()], statements);
    }
    assert_same_tables(&live, &bundled);
    assert_eq!(
        count(&live, "SELECT count(*) FROM user_events"),
        count(&bundled, "SELECT count(*) FROM user_events")
    );
}
