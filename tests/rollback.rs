//! `etl rollback` against the real PostgreSQL: a second load that inserts, updates, deletes
//! and replaces link sets is undone table by table; a row changed by someone else since the
//! load makes it refuse (naming the row) unless `--force`; runs roll back newest first; a
//! rollback killed midway changes nothing.

mod util;

use std::process::Output;

use util::*;

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

/// Two loads into a fresh database: the first of `users` users, the second where the first
/// `changed` users were edited (a target removed, events emptied) and `added` users are new.
/// Returns the target's URL and its digests after the first load.
fn two_loads(
    work: &Workdir,
    users: usize,
    changed: usize,
    added: usize,
) -> (String, Vec<(String, String)>) {
    let url = fresh_database("rollback");
    let env = [("DATABASE_URL", url.as_str())];
    let first = util::smartdiet::write_dump(&work.path().join("first"), users);
    work.extract_transform_dump(&first, &[], &env);
    ok(work.etl(&["load"], &env));
    let after_first = digests(&url);
    let second =
        util::smartdiet::write_dump_changed(&work.path().join("second"), users + added, changed);
    work.extract_transform_dump(&second, &["--full"], &env);
    let out = ok(work.etl(&["load"], &env));
    assert!(
        digests(&url) != after_first,
        "the second load changed nothing:\n{out}"
    );
    (url, after_first)
}

fn changed_tables(a: &[(String, String)], b: &[(String, String)]) -> Vec<String> {
    a.iter()
        .zip(b)
        .filter(|(x, y)| x != y)
        .map(|(x, _)| x.0.clone())
        .collect()
}

#[test]
fn rollback_returns_every_table_to_its_state_after_the_previous_load() {
    let work = Workdir::new();
    let (url, after_first) = two_loads(&work, 300, 40, 30);
    let env = [("DATABASE_URL", url.as_str())];
    let after_second = digests(&url);
    let touched = changed_tables(&after_first, &after_second);
    for t in ["users", "users_targets", "user_events"] {
        assert!(
            touched.contains(&t.to_string()),
            "{t} unchanged: {touched:?}"
        );
    }
    assert!(
        count(&url, "SELECT count(*) FROM etl.history WHERE op = 'd'") > 0
            && count(&url, "SELECT count(*) FROM etl.history WHERE op = 'b'") > 0
            && count(&url, "SELECT count(*) FROM etl.history WHERE op = 'i'") > 0,
        "the second load deleted, updated and inserted rows"
    );

    // A dry run changes nothing and says what it would do.
    let dry = ok(work.etl(&["rollback", "--dry-run"], &env));
    assert!(dry.contains("dry run"), "{dry}");
    assert_eq!(digests(&url), after_second);

    let out = ok(work.etl(&["rollback"], &env));
    let now = digests(&url);
    assert_eq!(
        changed_tables(&after_first, &now),
        Vec::<String>::new(),
        "tables differ from their state after the first load:\n{out}"
    );
    assert_eq!(
        psql(
            &url,
            "SELECT string_agg(status, ',' ORDER BY seq) FROM etl.runs"
        )
        .trim(),
        "loaded,rolled_back"
    );

    // The first load put rows into empty tables: rolling it back empties them.
    ok(work.etl(&["rollback"], &env));
    for t in SMARTDIET_TABLES {
        assert_eq!(count(&url, &format!("SELECT count(*) FROM {t}")), 0, "{t}");
    }
    let out = work.etl(&["rollback"], &env);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("no loaded run"), "{}", stderr(&out));
}

#[test]
fn rollback_refuses_rows_changed_after_the_load_unless_forced() {
    let work = Workdir::new();
    let (url, after_first) = two_loads(&work, 200, 20, 10);
    let env = [("DATABASE_URL", url.as_str())];
    // Someone edits a user the second load updated.
    let edited = psql(
        &url,
        "SELECT t.key->>'id' FROM etl.history t WHERE t.table_name = 'users' AND t.op = 'b' ORDER BY 1 LIMIT 1",
    );
    let edited = edited.trim();
    assert!(!edited.is_empty());
    psql(
        &url,
        &format!("UPDATE users SET firstname = 'edited by hand' WHERE id = '{edited}'"),
    );
    let before = digests(&url);
    let out = work.etl(&["rollback"], &env);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(
        err.contains("table `users`") && err.contains(edited) && err.contains("changed after"),
        "the refusal names the table and the row: {err}"
    );
    assert_eq!(
        digests(&url),
        before,
        "a refused rollback changed something"
    );

    // Older runs only after the newer ones.
    let first_run = psql(&url, "SELECT run_id FROM etl.runs ORDER BY seq LIMIT 1");
    let out = work.etl(&["rollback", "--run", first_run.trim()], &env);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("first"), "{}", stderr(&out));

    ok(work.etl(&["rollback", "--force"], &env));
    assert_eq!(
        changed_tables(&after_first, &digests(&url)),
        Vec::<String>::new()
    );
}

#[test]
fn a_rollback_killed_midway_changes_nothing() {
    let work = Workdir::new();
    let (url, after_first) = two_loads(&work, 300, 40, 30);
    let after_second = digests(&url);
    // Another session holds the load's ledger row: the rollback undoes every table, then
    // waits to mark the run rolled back, and is killed there.
    let seq = psql(&url, "SELECT max(seq) FROM etl.runs");
    let blocker_sql = format!(
        "BEGIN; SELECT 1 FROM etl.runs WHERE seq = {} FOR UPDATE; SELECT pg_sleep(30);",
        seq.trim()
    );
    let mut blocker = std::process::Command::new("psql")
        .args([url.as_str(), "-X", "-q", "-c", &blocker_sql])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let db = url.rsplit('/').next().unwrap().to_string();
    let sleeping = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND query LIKE '%pg_sleep(30)%' AND state = 'active'"
    );
    let waiting = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND wait_event_type = 'Lock' \
         AND query LIKE 'UPDATE etl.runs%'"
    );
    let start = std::time::Instant::now();
    while count(&postgres_url(), &sleeping) == 0 {
        assert!(
            start.elapsed().as_secs() < 20,
            "the blocker never took its lock"
        );
    }
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_etl"))
        .current_dir(work.path())
        .args(["--quiet", "rollback"])
        .env("DATABASE_URL", &url)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while count(&postgres_url(), &waiting) == 0 {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the rollback did not wait"
        );
        assert!(
            start.elapsed().as_secs() < 25,
            "the rollback never reached its last step"
        );
    }
    child.kill().unwrap(); // SIGKILL, with deletes done inside the rollback's transaction
    child.wait().unwrap();
    blocker.kill().unwrap();
    blocker.wait().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let active = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND state <> 'idle' AND pid <> pg_backend_pid()"
    );
    while count(&postgres_url(), &active) > 0 {
        assert!(std::time::Instant::now() < deadline, "sessions did not end");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        digests(&url),
        after_second,
        "a killed rollback changed the target"
    );
    ok(work.etl(&["rollback"], &[("DATABASE_URL", url.as_str())]));
    assert_eq!(
        changed_tables(&after_first, &digests(&url)),
        Vec::<String>::new()
    );
}

#[test]
fn history_is_kept_for_the_last_etl_history_runs_loads_only() {
    let work = Workdir::new();
    let url = fresh_database("rollback_keep");
    let env = [("DATABASE_URL", url.as_str()), ("ETL_HISTORY_RUNS", "1")];
    let first = util::smartdiet::write_dump(&work.path().join("first"), 50);
    work.extract_transform_dump(&first, &[], &env);
    ok(work.etl(&["load"], &env));
    let second = util::smartdiet::write_dump_changed(&work.path().join("second"), 60, 5);
    work.extract_transform_dump(&second, &["--full"], &env);
    ok(work.etl(&["load"], &env));
    assert_eq!(
        psql(
            &url,
            "SELECT string_agg(history::text, ',' ORDER BY seq) FROM etl.runs"
        )
        .trim(),
        "false,true"
    );
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM etl.history WHERE load_seq = (SELECT min(seq) FROM etl.runs)"
        ),
        0
    );
    ok(work.etl(&["rollback"], &env));
    let out = work.etl(&["rollback"], &env);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot be rolled back"),
        "{}",
        stderr(&out)
    );
    let bad = work.etl(
        &["load"],
        &[
            ("DATABASE_URL", url.as_str()),
            ("ETL_HISTORY_RUNS", "three"),
        ],
    );
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
}

#[test]
fn etl_history_runs_0_records_no_history_and_the_load_cannot_be_rolled_back() {
    let work = Workdir::new();
    let url = fresh_database("rollback_none");
    let env = [("DATABASE_URL", url.as_str()), ("ETL_HISTORY_RUNS", "0")];
    let first = util::smartdiet::write_dump(&work.path().join("first"), 30);
    work.extract_transform_dump(&first, &[], &env);
    ok(work.etl(&["load"], &env));
    let second = util::smartdiet::write_dump_changed(&work.path().join("second"), 40, 5);
    work.extract_transform_dump(&second, &["--full"], &env);
    ok(work.etl(&["load"], &env));
    assert_eq!(count(&url, "SELECT count(*) FROM etl.history"), 0);
    assert_eq!(count(&url, "SELECT count(*) FROM users"), 40);
    let out = work.etl(&["rollback"], &env);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cannot be rolled back"),
        "{}",
        stderr(&out)
    );
}
