//! A fresh machine and an installed `etl`: `etl init` and `etl completions` outside the
//! repository, `etl sample` feeding a whole run, and the default output (warnings only, no
//! colour codes where nobody sees colours).

mod util;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use util::*;

/// `etl ARGS` in `dir` as a user runs it: no ETL_LOG (the tests' helper sets one).
fn etl_in(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_etl"));
    cmd.current_dir(dir)
        .args(args)
        .env_remove("ETL_LOG")
        .env_remove("NO_COLOR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run etl")
}

fn empty_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

const STARTER_FILES: &[(&str, &str)] = &[
    ("config/schemas.yaml", "config/schemas.yaml"),
    ("config/matomo_schemas.yaml", "config/matomo_schemas.yaml"),
    ("config/matomo_api.yaml", "config/matomo_api.yaml"),
    (
        "config/reference/schemas.yaml",
        "config/reference/schemas.yaml",
    ),
    (".env.example", ".env.example"),
];

#[test]
fn init_writes_the_shipped_config_and_etl_schema_works_there() {
    let dir = empty_dir();
    let out = etl_in(dir.path(), &["init"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    for (written, shipped) in STARTER_FILES {
        let got = std::fs::read_to_string(dir.path().join(written))
            .unwrap_or_else(|e| panic!("{written} not written: {e}"));
        let want = std::fs::read_to_string(repo().join(shipped)).unwrap();
        assert_eq!(got, want, "{written} differs from the shipped {shipped}");
        assert!(stdout(&out).contains(written), "{}", stdout(&out));
    }

    let schema = etl_in(dir.path(), &["schema"], &[]);
    assert!(schema.status.success(), "{}", stderr(&schema));
    let shipped = etl_in(
        dir.path(),
        &[
            "--config",
            repo().join("config").to_str().unwrap(),
            "schema",
        ],
        &[],
    );
    assert_eq!(stdout(&schema), stdout(&shipped));
    assert!(stdout(&schema).contains("CREATE TABLE IF NOT EXISTS users_targets"));
    assert!(stdout(&schema).contains("matomo_log_visit"));
}

#[test]
fn second_init_refuses_and_changes_nothing_until_force() {
    let dir = empty_dir();
    assert!(etl_in(dir.path(), &["init"], &[]).status.success());
    let mine = dir.path().join("config/schemas.yaml");
    std::fs::write(&mine, "# my own tables\n").unwrap();
    std::fs::remove_file(dir.path().join(".env.example")).unwrap();

    let again = etl_in(dir.path(), &["init"], &[]);
    assert_eq!(again.status.code(), Some(2), "{}", stderr(&again));
    let err = stderr(&again);
    assert!(
        err.contains("config/schemas.yaml") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&mine).unwrap(), "# my own tables\n");
    assert!(
        !dir.path().join(".env.example").exists(),
        "a refused init writes nothing, not even the missing files"
    );

    let forced = etl_in(dir.path(), &["init", "--force"], &[]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert_eq!(
        std::fs::read_to_string(&mine).unwrap(),
        std::fs::read_to_string(repo().join("config/schemas.yaml")).unwrap()
    );
    assert!(dir.path().join(".env.example").exists());
}

#[test]
fn init_honours_the_config_flag() {
    let dir = empty_dir();
    let out = etl_in(dir.path(), &["--config", "conf", "init"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.path().join("conf/schemas.yaml").exists());
    assert!(!dir.path().join("config").exists());
    let schema = etl_in(dir.path(), &["--config", "conf", "schema"], &[]);
    assert!(schema.status.success(), "{}", stderr(&schema));
}

/// Runs `shell -n` (parse only) on a script; `None` when the shell is not installed.
fn parses(shell: &str, flag: &str, script: &Path) -> Option<Output> {
    Command::new(shell)
        .arg(flag)
        .arg(script)
        .stdin(Stdio::null())
        .output()
        .ok()
}

#[test]
fn completions_are_scripts_the_shells_accept() {
    let dir = empty_dir();
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef etl"),
        ("fish", "complete -c etl"),
    ] {
        let out = etl_in(dir.path(), &["completions", shell], &[]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        assert!(script.contains(marker), "{shell}:\n{script}");
        for cmd in ["sample", "init", "extract", "verify"] {
            assert!(script.contains(cmd), "{shell}: no `{cmd}`");
        }
        let path = dir.path().join(format!("etl.{shell}"));
        std::fs::write(&path, &script).unwrap();
        let flag = if shell == "fish" {
            "--no-execute"
        } else {
            "-n"
        };
        match parses(shell, flag, &path) {
            Some(check) => assert!(
                check.status.success(),
                "{shell} {flag} rejects the completions: {}",
                stderr(&check)
            ),
            // bash is always there (the test scripts need it); zsh and fish may not be.
            None => assert_ne!(shell, "bash", "bash not found"),
        }
    }
    let bad = etl_in(dir.path(), &["completions", "tcsh"], &[]);
    assert_eq!(bad.status.code(), Some(2));
}

/// `etl completions zsh | head -2` panicked: clap_complete's own writer expects success.
#[test]
fn completions_into_a_closed_pipe_end_quietly() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(env!("CARGO_BIN_EXE_etl"))
        .args(["completions", "zsh"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stderr(&out), "");
}

#[test]
fn by_default_only_warnings_and_with_v_info_lines_without_colour_codes() {
    let dir = empty_dir();
    assert!(etl_in(dir.path(), &["init"], &[]).status.success());
    assert!(etl_in(dir.path(), &["sample", "--users", "10"], &[])
        .status
        .success());
    let extract = ["extract", "--source", "dump", "--dump", "sample/smartdiet"];
    let quiet = etl_in(dir.path(), &extract, &[]);
    assert!(quiet.status.success(), "{}", stderr(&quiet));
    assert!(
        stdout(&quiet).contains("extract: run"),
        "the summary stays on stdout"
    );
    assert_eq!(stderr(&quiet), "", "no INFO lines by default");

    let mut verbose_args = vec!["-v"];
    verbose_args.extend_from_slice(&extract);
    let verbose = etl_in(dir.path(), &verbose_args, &[]);
    let err = stderr(&verbose);
    assert!(err.contains("INFO") && err.contains("extracted"), "{err}");
    assert!(
        !err.contains('\u{1b}'),
        "escape codes in a piped log: {err:?}"
    );

    // ETL_LOG still wins, for the tests and for debugging.
    let with_filter = etl_in(dir.path(), &extract, &[("ETL_LOG", "info")]);
    assert!(stderr(&with_filter).contains("INFO"));
}

/// On a terminal (a pty from util-linux `script`), colours unless NO_COLOR is set.
#[test]
fn colours_on_a_terminal_and_none_with_no_color() {
    let dir = empty_dir();
    assert!(etl_in(dir.path(), &["init"], &[]).status.success());
    assert!(etl_in(dir.path(), &["sample", "--users", "10"], &[])
        .status
        .success());
    let etl = env!("CARGO_BIN_EXE_etl");
    let line = format!("'{etl}' -v extract --source dump --dump sample/smartdiet");
    let on_tty = |no_color: Option<&str>| -> String {
        let mut cmd = Command::new("script");
        cmd.current_dir(dir.path())
            .args(["-q", "-e", "-c", &line, "/dev/null"])
            .env_remove("ETL_LOG")
            .env_remove("NO_COLOR")
            .stdin(Stdio::null());
        if let Some(v) = no_color {
            cmd.env("NO_COLOR", v);
        }
        let out = cmd.output().expect("`script` (util-linux) on PATH");
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    let coloured = on_tty(None);
    assert!(
        coloured.contains("INFO") && coloured.contains('\u{1b}'),
        "{coloured:?}"
    );
    let plain = on_tty(Some("1"));
    assert!(plain.contains("INFO"), "{plain:?}");
    // The progress bars may still move the cursor; the log lines carry no SGR colour codes.
    assert!(
        !plain.contains("\u{1b}[2m") && !plain.contains("\u{1b}[32m"),
        "{plain:?}"
    );
}

fn mariadb_file(db: &str, sql_file: &Path) {
    let var = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set: `make test`"));
    let out = Command::new("mariadb")
        .args(["-h", &var("MATOMO_HOST"), "-P", &var("MATOMO_PORT")])
        .args(["-u", &var("MATOMO_USER")])
        .arg(format!("-p{}", var("MATOMO_PASSWORD")))
        .args(if db.is_empty() { None } else { Some(db) })
        .stdin(std::fs::File::open(sql_file).unwrap())
        .output()
        .expect("mariadb client on PATH");
    assert!(out.status.success(), "mariadb: {}", stderr(&out));
}

#[test]
fn sample_feeds_a_whole_run_from_mongodump_and_matomo() {
    let work = Workdir::new();
    let out = work.etl(&["sample", "--users", "20", "--out", "sample"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("30 visits"), "{}", stdout(&out));
    // Byte for byte the generator the other tests use.
    let reference = work.path().join("reference");
    smartdiet::write_dump(&reference, 20);
    for entry in std::fs::read_dir(reference.join("smartdiet")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            std::fs::read(work.path().join("sample/smartdiet").join(name)).unwrap(),
            "{name:?}"
        );
    }

    let db = format!("sample_{}", std::process::id());
    let create = work.path().join("create.sql");
    std::fs::write(
        &create,
        format!("DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db} CHARACTER SET utf8mb4;"),
    )
    .unwrap();
    mariadb_file("", &create);
    mariadb_file(&db, &work.path().join("sample/matomo.sql"));
    let url = fresh_database("sample");
    let run = work.etl(
        &["run", "--source", "all", "--dump", "sample/smartdiet"],
        &[("MATOMO_DATABASE", &db), ("DATABASE_URL", &url)],
    );
    assert!(run.status.success(), "{}\n{}", stdout(&run), stderr(&run));
    assert_eq!(count(&url, "SELECT count(*) FROM users"), 20);
    assert_eq!(count(&url, "SELECT count(*) FROM matomo_log_visit"), 30);
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM matomo_log_visit v JOIN users u ON u.id = v.user_id"
        ),
        count(
            &url,
            "SELECT count(*) FROM matomo_log_visit WHERE user_id IS NOT NULL"
        ),
        "every named visitor is a sample user"
    );
    assert_eq!(
        count(
            &url,
            "SELECT sum(visit_total_actions) FROM matomo_log_visit"
        ),
        count(&url, "SELECT count(*) FROM matomo_log_link_visit_action")
    );
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM matomo_log_link_visit_action a
             LEFT JOIN matomo_log_action n ON n.idaction = a.idaction_name WHERE n.idaction IS NULL"
        ),
        0,
        "every page view's title is in matomo_log_action"
    );
    let drop = work.path().join("drop.sql");
    std::fs::write(&drop, format!("DROP DATABASE {db};")).unwrap();
    mariadb_file("", &drop);
}
