//! Helpers for the integration tests: run the real `etl` binary in a temp dir, and get a fresh
//! database on the test PostgreSQL that `scripts/services.sh` started.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A temp working folder with a copy of the shipped config.
pub struct Workdir {
    pub dir: tempfile::TempDir,
}

impl Workdir {
    pub fn new() -> Workdir {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("config");
        std::fs::create_dir_all(&config).unwrap();
        for file in ["schemas.yaml", "matomo_schemas.yaml"] {
            std::fs::copy(repo().join("config").join(file), config.join(file)).unwrap();
        }
        Workdir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, rel: &str, text: &str) {
        let path = self.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }

    /// `etl extract --source dump --dump DUMP [extra...]` then `etl transform`, both required
    /// to succeed.
    pub fn extract_transform_dump(&self, dump: &Path, extra: &[&str], env: &[(&str, &str)]) {
        let dump = dump.to_str().expect("UTF-8 path");
        let mut extract = vec!["extract", "--source", "dump", "--dump", dump];
        extract.extend_from_slice(extra);
        for args in [extract, vec!["transform"]] {
            let out = self.etl(&args, env);
            assert!(
                out.status.success(),
                "etl {args:?}:\n{}\n{}",
                stdout(&out),
                stderr(&out)
            );
        }
    }

    /// `etl ARGS` in this folder, with the given extra environment.
    pub fn etl(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_etl"));
        cmd.current_dir(self.path())
            .args(args)
            .env("ETL_LOG", "info");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run etl");
        assert_no_secret(&format!("stdout of etl {args:?}"), &out.stdout);
        assert_no_secret(&format!("stderr of etl {args:?}"), &out.stderr);
        out
    }
}

/// Every file etl left in the folder (staged runs, manifests, rejects, reports, bundles) is
/// searched for the services' secrets before the folder goes.
impl Drop for Workdir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            return;
        }
        scan_files(self.dir.path());
    }
}

fn scan_files(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => scan_files(&path),
            Ok(t) if t.is_file() => {
                if let Ok(bytes) = std::fs::read(&path) {
                    assert_no_secret(&path.display().to_string(), &bytes);
                }
            }
            _ => {}
        }
    }
}

/// The secrets the test services and settings use (passwords holding `/`, `@`, `:` and `%`),
/// as written and as a URL carries them.
pub fn secrets() -> Vec<String> {
    let mut out = Vec::new();
    for var in [
        "POSTGRES_PASSWORD",
        "MATOMO_PASSWORD",
        "MATOMO_KEY",
        "REMOTE_SERVER_PASSWORD",
        "AWS_SECRET_ACCESS_KEY",
    ] {
        if let Ok(v) = std::env::var(var) {
            if v.len() >= 6 {
                let encoded = url_encoded(&v);
                out.push(encoded.to_lowercase());
                out.push(encoded);
                out.push(v);
            }
        }
    }
    out
}

fn url_encoded(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Fails the test when `bytes` holds one of the [`secrets`].
pub fn assert_no_secret(what: &str, bytes: &[u8]) {
    for secret in secrets() {
        assert!(
            !contains(bytes, secret.as_bytes()),
            "a secret of the test services appears in {what}"
        );
    }
}

/// Whether `needle` occurs in `hay` (a scan for its first byte, then a comparison).
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    let Some(&first) = needle.first() else {
        return true;
    };
    let mut from = 0;
    while let Some(at) = hay[from..].iter().position(|&b| b == first) {
        if hay[from + at..].starts_with(needle) {
            return true;
        }
        from += at + 1;
    }
    false
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// What the test PostgreSQL sets (`scripts/services.sh` writes it to `env.sh`).
pub const POSTGRES_VARS: &[&str] = &["ETL_TEST_POSTGRES_URL"];
/// What the test MariaDB sets (the Matomo source's own settings, pointing at it).
pub const MARIADB_VARS: &[&str] = &[
    "ETL_TEST_MARIADB_URL",
    "MATOMO_HOST",
    "MATOMO_PORT",
    "MATOMO_USER",
];

/// Fails the test with one message when the test services' variables are missing. These
/// tests need the real servers: a missing server is a failure, never a skip (CI must not
/// pass without them).
#[track_caller]
pub fn require_services(vars: &[&str]) {
    let missing: Vec<&str> = vars
        .iter()
        .copied()
        .filter(|v| std::env::var_os(v).is_none_or(|value| value.is_empty()))
        .collect();
    assert!(missing.is_empty(), "{}", services_missing(&missing));
}

/// The message for missing test services: which variables, and how to start the servers.
pub fn services_missing(missing: &[&str]) -> String {
    format!(
        "the test services are missing ({} not set): this test needs the test PostgreSQL and \
         MariaDB. Run `make test`, or start them and run the tests through \
         `scripts/with-services.sh cargo test ...` (it sources /tmp/etl-services/env.sh).",
        missing.join(", ")
    )
}

/// The value of a variable `require_services` checked.
#[track_caller]
pub fn service_var(name: &str) -> String {
    require_services(&[name]);
    std::env::var(name).unwrap_or_default()
}

/// The test PostgreSQL's URL. Tests need the real server: a missing one is a failure.
#[track_caller]
pub fn postgres_url() -> String {
    service_var("ETL_TEST_POSTGRES_URL")
}

static DB_COUNTER: AtomicUsize = AtomicUsize::new(0);

static CLEANED: std::sync::Once = std::sync::Once::new();

/// Test databases are named `<prefix>_<pid>_<n>`: those of test processes that have ended
/// are dropped once per process, so repeated runs do not fill the disk.
fn drop_databases_of_ended_processes(base: &str) {
    let names = psql(
        base,
        "SELECT datname FROM pg_database WHERE NOT datistemplate AND datname ~ '_[0-9]+_[0-9]+$'",
    );
    for name in names.lines() {
        let mut parts = name.rsplit('_');
        let (Some(_), Some(pid)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
        if !alive {
            // Another process may be dropping it too: ignore the outcome.
            let _ = psql_stdin(
                base,
                &format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
            );
        }
    }
}

/// A new empty database on the test server; returns its URL.
pub fn fresh_database(prefix: &str) -> String {
    let base = postgres_url();
    CLEANED.call_once(|| drop_databases_of_ended_processes(&base));
    let name = format!(
        "{prefix}_{}_{}",
        std::process::id(),
        DB_COUNTER.fetch_add(1, Ordering::SeqCst)
    );
    psql(
        &base,
        &format!("DROP DATABASE IF EXISTS {name}; CREATE DATABASE {name};"),
    );
    let (server, _) = base.rsplit_once('/').expect("URL with a database");
    format!("{server}/{name}")
}

/// Runs SQL with psql (stops at the first error) and returns its stdout; panics on failure.
pub fn psql(url: &str, sql: &str) -> String {
    let out = psql_stdin(url, sql);
    assert!(
        out.status.success(),
        "psql failed: {}\n{}",
        stderr(&out),
        sql
    );
    stdout(&out)
}

/// The rows of a rejects file: (document id, reason, raw value; "" when NULL), sorted.
pub fn reject_rows(path: &Path) -> Vec<(String, String, String)> {
    use arrow::array::{Array, AsArray};
    let (_, batches) = etl::staging::read_batches(path).unwrap();
    let mut out = Vec::new();
    for b in batches {
        let col = |name: &str| b.column_by_name(name).unwrap().as_string::<i32>().clone();
        let (ids, reasons, raws) = (col("document_id"), col("reason"), col("raw_value"));
        for i in 0..b.num_rows() {
            let raw = if raws.is_null(i) { "" } else { raws.value(i) };
            out.push((
                ids.value(i).to_string(),
                reasons.value(i).to_string(),
                raw.to_string(),
            ));
        }
    }
    out.sort();
    out
}

/// Applies the SQL bundle in `dir` the way its README says (`psql -1 -f load.sql` from the
/// folder: its data files are named relative to it).
pub fn apply_bundle(dir: &Path, url: &str) -> Output {
    Command::new("psql")
        .current_dir(dir)
        .args([
            url,
            "-X",
            "-q",
            "-1",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            "load.sql",
        ])
        .output()
        .unwrap()
}

/// A MariaDB database named `<name>_<pid>` holding the Matomo fixture (schema and rows).
pub fn matomo_database(name: &str) -> String {
    let db = format!("{name}_{}", std::process::id());
    mariadb(
        "",
        &format!("DROP DATABASE IF EXISTS {db}; CREATE DATABASE {db} CHARACTER SET utf8mb4;"),
    );
    let fixtures = repo().join("tests/fixtures/matomo");
    let sql = std::fs::read_to_string(fixtures.join("schema.sql")).unwrap()
        + &std::fs::read_to_string(fixtures.join("rows.sql")).unwrap();
    mariadb(&db, &sql);
    db
}

/// Runs `sql` with the mariadb client in `db` (none when empty); returns its output.
pub fn mariadb(db: &str, sql: &str) -> String {
    use std::io::Write;
    require_services(MARIADB_VARS);
    let mut child = Command::new("mariadb")
        .args([
            "-h",
            &service_var("MATOMO_HOST"),
            "-P",
            &service_var("MATOMO_PORT"),
            "-u",
            &service_var("MATOMO_USER"),
            "-N",
            "-B",
        ])
        // The client reads the password from the environment: not on a command line `ps` shows.
        .env(
            "MYSQL_PWD",
            std::env::var("MATOMO_PASSWORD").unwrap_or_default(),
        )
        .args(if db.is_empty() {
            vec![]
        } else {
            vec![db.to_string()]
        })
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mariadb client on PATH");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(sql.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "mariadb: {}", stderr(&out));
    stdout(&out)
}

pub fn psql_stdin(url: &str, input: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new("psql")
        .args([url, "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql on PATH");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

pub mod smartdiet;

/// `md5` of a table's rows in a stable order: equal digests mean equal contents.
pub fn table_digest(url: &str, table: &str) -> String {
    psql(url, &format!("SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '') FROM {table} t"))
        .trim()
        .to_string()
}

pub fn count(url: &str, sql: &str) -> i64 {
    psql(url, sql)
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a count: {sql}"))
}

/// Every table of the shipped config with its MongoDB collection, in load order.
pub const SMARTDIET_TABLES: &[&str] = &[
    "ingredients",
    "appointment_types",
    "companies",
    "offers",
    "categories",
    "targets",
    "recipes",
    "quizzs",
    "quizzs_questions",
    "contents",
    "events",
    "users",
    "menus",
    "quizzs_links_questions",
    "user_events",
    "users_targets",
    "messages",
    "coachings",
    "users_logbook",
    "menu_recipes",
    "users_quizzs",
    "users_quizzs_questions",
    "users_contents_reads",
    "appointments",
    "periods",
    "items",
    "users_quizzs_links_questions",
    "days",
    "days_contents_links",
    "days_logbooks_links",
];

/// Runs tests/fixtures/check_staged.py (pyarrow) on a run folder; panics with its message.
pub fn check_with_pyarrow(run_dir: &Path, expectations: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(repo().join("tests/fixtures/check_staged.py"))
        .arg(run_dir)
        .args(expectations)
        .output()
        .expect("python3 on PATH");
    let err = stderr(&out);
    assert!(
        !err.contains("No module named 'pyarrow'"),
        "pyarrow is missing: pip install pyarrow (.ci/run does)"
    );
    assert!(
        out.status.success(),
        "pyarrow check failed: {err}{}",
        stdout(&out)
    );
    stdout(&out)
}
