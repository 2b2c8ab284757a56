//! Crash suite: `etl` killed with SIGKILL at 24 seeded moments spread over extract, transform
//! and load of an incremental run. A killed load leaves the target as it was (or, killed after
//! its COMMIT, with the whole run in); after the rerun of what was interrupted, every table
//! equals a clean run's, table by table.

mod util;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::*;

const USERS: usize = 2_500;
const KILLS: usize = 24;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Stage {
    Extract,
    Transform,
    Load,
}

const STAGES: [Stage; 3] = [Stage::Extract, Stage::Transform, Stage::Load];

fn args(stage: Stage, dump: &Path) -> Vec<String> {
    match stage {
        Stage::Extract => vec![
            "extract".into(),
            "--source".into(),
            "dump".into(),
            "--dump".into(),
            dump.to_str().unwrap().into(),
            "--full".into(),
        ],
        Stage::Transform => vec!["transform".into()],
        Stage::Load => vec!["load".into()],
    }
}

fn etl(work: &Workdir, stage: Stage, dump: &Path, url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_etl"));
    cmd.current_dir(work.path())
        .args(["--quiet"])
        .args(args(stage, dump))
        .env("DATABASE_URL", url)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Runs a stage to the end; returns how long it took.
fn run(work: &Workdir, stage: Stage, dump: &Path, url: &str) -> Duration {
    let started = Instant::now();
    let out = etl(work, stage, dump, url).output().unwrap();
    assert!(
        out.status.success(),
        "{stage:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}

/// A copy of `template` (PostgreSQL copies the files: fast, and identical to the byte).
fn clone_database(template: &str, name: &str) -> String {
    let base = postgres_url();
    psql(
        &base,
        &format!(
            "DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name} TEMPLATE {}",
            template.rsplit('/').next().unwrap()
        ),
    );
    let (server, _) = base.rsplit_once('/').unwrap();
    format!("{server}/{name}")
}

/// Every table's rows, in one query (users_logbook without its generated id: a killed load
/// still advanced the sequence).
fn state(url: &str) -> Vec<String> {
    let parts: Vec<String> = SMARTDIET_TABLES
        .iter()
        .map(|t| {
            let rows = if *t == "users_logbook" {
                "user_id || day || created_at || updated_at".to_string()
            } else {
                "t::text".to_string()
            };
            format!(
                "SELECT '{t}' || ':' || count(*) || ':' || coalesce(md5(string_agg({rows}, '|' ORDER BY {rows})), '') FROM {t} t"
            )
        })
        .collect();
    psql(url, &parts.join(" UNION ALL "))
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits until PostgreSQL has ended the killed client's session.
fn wait_for_sessions(url: &str) {
    let db = url.rsplit('/').next().unwrap();
    let sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{db}' AND pid <> pg_backend_pid()"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&postgres_url(), &sql) > 0 {
        assert!(Instant::now() < deadline, "a killed session did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigkill_at_seeded_moments_never_breaks_the_target_and_the_rerun_completes_it() {
    let work = Workdir::new();
    let first = util::smartdiet::write_dump(&work.path().join("first"), USERS);
    let second = util::smartdiet::write_dump_changed(&work.path().join("second"), USERS + 300, 500);
    let tag = std::process::id();

    // The state before the run under test, and the state a clean run of it leaves.
    let base = fresh_database("crash_base");
    for stage in STAGES {
        run(&work, stage, &first, &base);
    }
    wait_for_sessions(&base);
    let clean = clone_database(&base, &format!("crash_clean_{tag}"));
    let durations: Vec<Duration> = STAGES
        .iter()
        .map(|s| run(&work, *s, &second, &clean))
        .collect();
    eprintln!("clean run: extract, transform, load took {durations:?}");
    let expected = state(&clean);
    assert_ne!(expected, state(&base), "the second run changes the target");

    let mut seed: u64 = 0x5eed_1234;
    let mut landed = 0;
    let mut attempts = 0;
    for i in 0..KILLS {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let stage = STAGES[i % 3];
        // A moment between 2% and 98% of the stage's clean duration; when the stage ends
        // before it (the machine is faster now), again at half that moment.
        let mut fraction = 0.02 + 0.96 * ((seed >> 33) as f64 / (1u64 << 31) as f64);
        for _ in 0..5 {
            attempts += 1;
            let delay = durations[i % 3].mul_f64(fraction);
            if kill_and_rerun(
                &work,
                &second,
                &base,
                &expected,
                stage,
                delay,
                &format!("crash_{tag}_{attempts}"),
            ) {
                landed += 1;
                break;
            }
            fraction /= 2.0;
        }
    }
    eprintln!("{landed} kills landed while etl was running, in {attempts} attempts");
    assert_eq!(
        landed, KILLS,
        "some kills never landed while etl was running"
    );
}

/// One kill of `stage` after `delay` in a copy of `base`, then the rerun; returns whether
/// the kill landed while etl was running. Panics when the target ends anywhere but
/// `expected`, or when a killed load changed it.
fn kill_and_rerun(
    work: &Workdir,
    dump: &Path,
    base: &str,
    expected: &[String],
    stage: Stage,
    delay: Duration,
    name: &str,
) -> bool {
    let url = clone_database(base, name);
    // The stages before the one killed run to the end.
    for s in STAGES.iter().take_while(|s| **s != stage) {
        run(work, *s, dump, &url);
    }
    let before = state(&url);
    let mut child = etl(work, stage, dump, &url).spawn().unwrap();
    std::thread::sleep(delay);
    let landed = child.try_wait().unwrap().is_none();
    if landed {
        child.kill().unwrap(); // SIGKILL
    }
    let status = child.wait().unwrap();
    assert_ne!(status.code(), Some(101), "{name} ({stage:?}): etl panicked");
    wait_for_sessions(&url);
    if stage == Stage::Load && landed {
        assert_eq!(
            state(&url),
            before,
            "{name}: a killed load changed the target"
        );
    }
    // Rerun what was interrupted, and what follows it.
    for s in STAGES.iter().skip_while(|s| **s != stage) {
        run(work, *s, dump, &url);
    }
    assert_eq!(
        state(&url),
        expected,
        "{name} ({stage:?} killed after {delay:?}): the rerun differs from a clean run"
    );
    psql(&postgres_url(), &format!("DROP DATABASE {name}"));
    landed
}
