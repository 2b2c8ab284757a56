//! Secrets never leak: the real `etl` runs with passwords of every troublesome shape in
//! `DATABASE_URL`, `POSTGRES_PASSWORD`, `MATOMO_PASSWORD` and `MONGODB_URL`, pointed at ports
//! where nothing listens (or at the test MariaDB with a wrong password), with the most verbose
//! logging; no piece of any password may appear in stdout, stderr or any file written under
//! the work folder, and no run may panic.
//!
//! Every piece of every password (between its `/ @ : % # ?` and spaces) holds the marker
//! `xyzzy`, so a message that shows any fragment of one is caught.

mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use util::*;

const MARKER: &str = "xyzzy";

const PASSWORDS: &[&str] = &[
    "xyzzySl/ashxyzzy",
    "xyzzy@at@xyzzy",
    "xyzzy:colon:xyzzy",
    "xyzzy%zz%xyzzy",
    // `%a` before a multibyte character panicked the old percent-decoder (exit 101).
    "xyzzy%aéxyzzy",
    "xyzzy%41xyzzy",
    "xyzzy#hash#xyzzy",
    "xyzzy?query?xyzzy",
    "xyzzy space xyzzy",
    "xyzzyé中🎉xyzzy",
    "xyzzy/xyzzy@xyzzy:xyzzy#xyzzy?xyzzy xyzzy%xyzzy",
    "xyzzy://xyzzy",
];

/// Nothing listens there: connections are refused at once.
const DEAD_PORT: &str = "1";

/// `etl ARGS` in `work` with exactly `env` (and PATH, HOME) in its environment, logging
/// everything.
fn etl(work: &Workdir, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_etl"));
    cmd.current_dir(work.path())
        .args(args)
        .env_clear()
        .env("ETL_LOG", "trace");
    for key in ["PATH", "HOME"] {
        if let Some(value) = std::env::var_os(key) {
            cmd.env(key, value);
        }
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run etl")
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Where a piece of a password shows: the output of a run, or a file under the work folder.
fn leaks(work: &Workdir, runs: &[(String, Output)]) -> Vec<String> {
    let mut found = Vec::new();
    for (what, out) in runs {
        for (stream, bytes) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
            if contains(bytes, MARKER) {
                found.push(format!(
                    "{stream} of `etl {what}`:\n{}",
                    String::from_utf8_lossy(bytes)
                ));
            }
        }
    }
    for file in files_under(work.path()) {
        if contains(&std::fs::read(&file).unwrap(), MARKER) {
            found.push(format!("file {}", file.display()));
        }
    }
    found
}

/// One run that must fail (exit 1 or 2, never a panic's 101) with an error on stderr.
fn failing(work: &Workdir, runs: &mut Vec<(String, Output)>, args: &[&str], env: &[(&str, &str)]) {
    let out = etl(work, args, env);
    let what = format!(
        "{args:?} with {:?}",
        env.iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
    let code = out.status.code();
    assert!(
        matches!(code, Some(1 | 2)),
        "{what}: expected a failure, got {code:?}\n{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("error"), "{what}: {}", stderr(&out));
    runs.push((what, out));
}

#[test]
fn passwords_of_every_shape_appear_in_no_output_and_no_file() {
    let work = Workdir::new();
    let dump = smartdiet::write_dump(&work.path().join("dump"), 3);
    let dump = dump.to_str().expect("UTF-8 path");
    require_services(MARIADB_VARS);
    let (matomo_host, matomo_port) = (service_var("MATOMO_HOST"), service_var("MATOMO_PORT"));
    let mut runs = Vec::new();
    for password in PASSWORDS {
        let database_url = format!("postgres://etl:{password}@127.0.0.1:{DEAD_PORT}/etl");
        // The extract looks up the target's watermarks (and fails to reach it), then reads the
        // dump; transform needs no server.
        let out = etl(
            &work,
            &["extract", "--source", "dump", "--dump", dump],
            &[("DATABASE_URL", &database_url)],
        );
        assert!(out.status.success(), "{}", stderr(&out));
        assert!(
            stderr(&out).contains("PostgreSQL not reachable"),
            "the extract did try the target: {}",
            stderr(&out)
        );
        runs.push((format!("extract with DATABASE_URL {password:?}"), out));
        let out = etl(&work, &["transform"], &[]);
        assert!(out.status.success(), "{}", stderr(&out));

        failing(
            &work,
            &mut runs,
            &["load"],
            &[("DATABASE_URL", &database_url)],
        );
        // Not a URL (no `://`), and a URL with a port that is not one: never echoed.
        let no_scheme = format!("postgres//etl:{password}@127.0.0.1:{DEAD_PORT}/etl");
        failing(&work, &mut runs, &["load"], &[("DATABASE_URL", &no_scheme)]);
        let bad_port = format!("postgres://etl:{password}@127.0.0.1:54x32/etl");
        failing(&work, &mut runs, &["load"], &[("DATABASE_URL", &bad_port)]);
        failing(
            &work,
            &mut runs,
            &["load"],
            &[
                ("POSTGRES_HOST", "127.0.0.1"),
                ("POSTGRES_PORT", DEAD_PORT),
                ("POSTGRES_USER", "etl"),
                ("POSTGRES_PASSWORD", password),
            ],
        );
        failing(
            &work,
            &mut runs,
            &["extract", "--source", "matomo"],
            &[
                ("MATOMO_HOST", "127.0.0.1"),
                ("MATOMO_PORT", DEAD_PORT),
                ("MATOMO_USER", "etl"),
                ("MATOMO_PASSWORD", password),
            ],
        );
        // The test MariaDB with a wrong password: the server's refusal is shown, not the
        // password.
        failing(
            &work,
            &mut runs,
            &["extract", "--source", "matomo"],
            &[
                ("MATOMO_HOST", &matomo_host),
                ("MATOMO_PORT", &matomo_port),
                ("MATOMO_USER", "etl"),
                ("MATOMO_PASSWORD", password),
            ],
        );
        let mongodb_url = format!(
            "mongodb://etl:{password}@127.0.0.1:{DEAD_PORT}/?serverSelectionTimeoutMS=200&connectTimeoutMS=200"
        );
        failing(
            &work,
            &mut runs,
            &["extract", "--source", "mongo"],
            &[("MONGODB_URL", &mongodb_url)],
        );
        let no_scheme = format!("etl:{password}@127.0.0.1:{DEAD_PORT}");
        failing(
            &work,
            &mut runs,
            &["extract", "--source", "mongo"],
            &[("MONGODB_URL", &no_scheme)],
        );
    }
    let found = leaks(&work, &runs);
    assert!(found.is_empty(), "a password leaked:\n{}", found.join("\n"));
    // The scan looks where it should: the staged run is there and the runs said something.
    assert!(files_under(&work.path().join("staging")).len() > 10);
    assert!(runs.iter().all(|(_, out)| !out.stderr.is_empty()));
}

/// The scan itself finds a password where one is: a log line that prints it is caught.
#[test]
fn the_scan_finds_a_password_that_is_there() {
    let work = Workdir::new();
    work.write("staging/notes.txt", "connecting with xyzzy%aé");
    let out = etl(&work, &["--help"], &[]);
    assert!(leaks(&work, &[("help".into(), out)]).len() == 1);
}

/// The whole suite runs against services whose passwords hold every character URLs treat
/// specially, and `util` searches every output of etl and every file it leaves for them.
#[test]
fn the_suite_runs_with_passwords_that_urls_treat_specially() {
    for var in ["POSTGRES_PASSWORD", "MATOMO_PASSWORD"] {
        let value = std::env::var(var)
            .unwrap_or_else(|_| panic!("{var} is not set: run the tests with `make test`"));
        for c in ['/', '@', ':', '%'] {
            assert!(value.contains(c), "{var} has no `{c}`");
        }
    }
    let url = postgres_url();
    assert!(
        url.contains("%2F") && url.contains("%40"),
        "the test URL carries the password"
    );
    // The scan finds what it looks for.
    let found = std::panic::catch_unwind(|| {
        assert_no_secret("a probe", format!("x {} y", secrets()[0]).as_bytes())
    });
    assert!(
        found.is_err(),
        "the secret scan found nothing in a text holding a secret"
    );
}
