//! SQL bundles (`etl load --to sql`) applied by psql on another database: adversarial values
//! round-trip exactly, a corrupted file is refused before anything changes (by `etl bundle
//! check` and by the apply itself), bundles apply in order and once, compressed bundles apply,
//! and consecutive bundles give the same tables as live loads of the same runs.

mod util;

use std::path::{Path, PathBuf};
use std::process::Output;

use bson::{doc, Bson, Document};
use util::*;

const CONFIG: &str = r#"
oddities:
  include_base: true
  additional_columns:
    - { name: label, sql_type: TEXT }
    - { name: short, sql_type: VARCHAR(20) }
    - { name: payload, sql_type: BYTEA }
    - { name: seen_at, sql_type: TIMESTAMP }
    - { name: born, sql_type: DATE }
    - { name: ratio, sql_type: "NUMERIC(12,4)" }
    - { name: flag, sql_type: BOOLEAN }
"#;

/// Values that could end a COPY row, end the data, be read as SQL or lose precision.
fn oddities() -> Vec<Document> {
    let labels: [Option<&str>; 12] = [
        Some("it's \"quoted\""),
        Some("back\\slash \\N \\\\"),
        Some("tab\there"),
        Some("line\nbreak\r\nand CR\r"),
        Some("\\."),
        Some("first line\n\\.\nafter the end marker"),
        Some("unicode: é ü 漢字 🎉"),
        Some(""),
        None,
        Some("'); DROP TABLE oddities; --"),
        Some("$$ $etl$ \\copy x FROM 'y'"),
        Some(";\n\\q"),
    ];
    let at = |ms: i64| Bson::DateTime(bson::DateTime::from_millis(ms));
    labels
        .iter()
        .enumerate()
        .map(|(i, label)| {
            let mut d = doc! {
                "_id": util::smartdiet::oid(20, i),
                "creation_date": at(1_700_000_000_000),
                "update_date": at(1_700_000_000_000),
                "short": if i % 2 == 0 { Bson::String(String::new()) } else { Bson::Null },
                "payload": Bson::Binary(bson::Binary {
                    subtype: bson::spec::BinarySubtype::Generic,
                    bytes: vec![0, 92, 9, 10, 13, 39, 255, u8::try_from(i).unwrap()],
                }),
                // Milliseconds, before and after 1970.
                "seen_at": at(-86_400_123 * (i as i64 + 1) + 7),
                "born": at(-2_208_988_800_000 + (i as i64) * 86_400_000),
                "ratio": Bson::Double(i as f64 * 1000.0 + 0.1235),
                "flag": i % 3 == 0,
            };
            if let Some(label) = label {
                d.insert("label", *label);
            }
            d
        })
        .collect()
}

struct Case {
    work: Workdir,
}

impl Case {
    fn new() -> Case {
        let work = Workdir::new();
        work.write("config/schemas.yaml", CONFIG);
        std::fs::remove_file(work.path().join("config/matomo_schemas.yaml")).unwrap();
        Case { work }
    }

    /// A dump of `docs` as the `oddities` collection, extracted and transformed as a new run.
    fn stage(&self, name: &str, docs: &[Document]) {
        let db = self.work.path().join(name).join("db");
        std::fs::create_dir_all(&db).unwrap();
        util::smartdiet::write_collection(&db, "oddities", docs.iter());
        self.work.extract_transform_dump(&db, &["--full"], &[]);
    }

    fn bundle(&self, extra: &[&str]) -> PathBuf {
        let mut args = vec!["load", "--to", "sql", "--out", "bundles"];
        args.extend_from_slice(extra);
        let out = self.work.etl(&args, &[]);
        assert!(out.status.success(), "{}", stderr(&out));
        let mut runs: Vec<PathBuf> = std::fs::read_dir(self.work.path().join("bundles"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| !p.file_name().unwrap().to_string_lossy().starts_with('.'))
            .collect();
        runs.sort();
        runs.pop().unwrap()
    }

    fn live(&self, url: &str) {
        let out = self.work.etl(&["load"], &[("DATABASE_URL", url)]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
}

fn applied(dir: &Path, url: &str) -> String {
    let out = apply_bundle(dir, url);
    assert!(
        out.status.success(),
        "psql: {}\n{}",
        stderr(&out),
        stdout(&out)
    );
    stdout(&out)
}

fn check(case: &Case, dir: &Path, url: Option<&str>) -> Output {
    let env: Vec<(&str, &str)> = url.map(|u| ("DATABASE_URL", u)).into_iter().collect();
    case.work
        .etl(&["bundle", "check", dir.to_str().unwrap()], &env)
}

#[test]
fn adversarial_values_round_trip_through_a_bundle_exactly_as_through_a_live_load() {
    let case = Case::new();
    case.stage("one", &oddities());
    let bundle = case.bundle(&[]);
    for name in [
        "load.sql",
        "manifest.json",
        "SHA256SUMS",
        "README.txt",
        "data/oddities.copy",
    ] {
        assert!(
            bundle.join(name).is_file(),
            "{name} missing from the bundle"
        );
    }
    let readme = std::fs::read_to_string(bundle.join("README.txt")).unwrap();
    assert!(
        readme.contains("sha256sum -c SHA256SUMS") && readme.contains("psql -1"),
        "{readme}"
    );
    let sums = std::process::Command::new("sha256sum")
        .current_dir(&bundle)
        .args(["-c", "SHA256SUMS"])
        .output()
        .unwrap();
    assert!(sums.status.success(), "{}", stdout(&sums));

    let live = fresh_database("bundle_live");
    let other = fresh_database("bundle_other");
    case.live(&live);
    applied(&bundle, &other);
    assert_eq!(
        table_digest(&live, "oddities"),
        table_digest(&other, "oddities")
    );
    assert_eq!(count(&other, "SELECT count(*) FROM oddities"), 12);
    // NULL and the empty string stay apart; the end-of-data marker and SQL are plain values.
    assert_eq!(
        count(&other, "SELECT count(*) FROM oddities WHERE label IS NULL"),
        1
    );
    assert_eq!(
        count(&other, "SELECT count(*) FROM oddities WHERE label = ''"),
        1
    );
    assert_eq!(
        count(&other, "SELECT count(*) FROM oddities WHERE short = ''"),
        6
    );
    assert_eq!(
        count(
            &other,
            "SELECT count(*) FROM oddities WHERE label = E'\\\\.'"
        ),
        1
    );
    assert_eq!(
        psql(
            &other,
            "SELECT label FROM oddities WHERE label LIKE 'unicode%'"
        )
        .trim(),
        "unicode: é ü 漢字 🎉"
    );
    assert_eq!(
        psql(
            &other,
            "SELECT encode(payload, 'hex') FROM oddities ORDER BY id LIMIT 1"
        )
        .trim(),
        "005c090a0d27ff00"
    );
    assert_eq!(
        psql(
            &other,
            "SELECT seen_at, born FROM oddities ORDER BY id LIMIT 1"
        )
        .trim(),
        "1969-12-30 23:59:59.884|1900-01-01"
    );
    // Applying the same bundle again changes nothing, and says so.
    let xmin = psql(
        &other,
        "SELECT string_agg(xmin::text, ',' ORDER BY id) FROM oddities",
    );
    let again = applied(&bundle, &other);
    assert!(again.contains("already applied"), "{again}");
    assert_eq!(
        psql(
            &other,
            "SELECT string_agg(xmin::text, ',' ORDER BY id) FROM oddities"
        ),
        xmin
    );
    let out = check(&case, &bundle, Some(&other));
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(stdout(&out).contains("already applied"), "{}", stdout(&out));
}

#[test]
fn a_corrupted_bundle_is_refused_before_anything_changes() {
    let case = Case::new();
    case.stage("one", &oddities());
    let bundle = case.bundle(&[]);
    let fresh = fresh_database("bundle_clean");
    let out = check(&case, &bundle, Some(&fresh));
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("ready to apply"), "{}", stdout(&out));

    // One byte of the data changes.
    let data = bundle.join("data/oddities.copy");
    let mut bytes = std::fs::read(&data).unwrap();
    let i = bytes.iter().position(|b| *b == b'i').unwrap();
    bytes[i] = b'j';
    std::fs::write(&data, bytes).unwrap();
    let out = check(&case, &bundle, None);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("data/oddities.copy: does not match its SHA-256"),
        "{}",
        stdout(&out)
    );
    let target = fresh_database("bundle_corrupt");
    let out = apply_bundle(&bundle, &target);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("does not match SHA256SUMS"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        count(&target, "SELECT count(*) FROM information_schema.tables WHERE table_schema NOT IN ('pg_catalog', 'information_schema')"),
        0,
        "nothing was created"
    );
}

#[test]
fn bundles_apply_in_order_and_once_and_give_the_live_loads_tables() {
    let case = Case::new();
    let live = fresh_database("bundle_seq_live");
    let other = fresh_database("bundle_seq_other");
    let mut docs = oddities();
    case.stage("one", &docs);
    let first = case.bundle(&["--compress"]);
    case.live(&live);
    // Second run: one row changed, one new.
    docs[0].insert("label", "changed");
    docs.push(doc! { "_id": util::smartdiet::oid(20, 99), "creation_date": bson::DateTime::from_millis(0), "update_date": bson::DateTime::from_millis(0), "label": "new" });
    case.stage("two", &docs);
    let second = case.bundle(&["--compress"]);
    assert!(second.join("data/oddities.copy.gz").is_file());
    case.live(&live);

    // Out of order: refused, naming the run to apply first; nothing changed.
    let first_run = first.file_name().unwrap().to_str().unwrap();
    let out = check(&case, &second, Some(&other));
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains(first_run), "{}", stdout(&out));
    let out = apply_bundle(&second, &other);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("apply run {first_run} first")),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        count(
            &other,
            "SELECT count(*) FROM information_schema.tables WHERE table_name = 'oddities'"
        ),
        0
    );
    applied(&first, &other);
    applied(&second, &other);
    assert_eq!(
        table_digest(&live, "oddities"),
        table_digest(&other, "oddities")
    );
    assert_eq!(
        psql(
            &other,
            "SELECT string_agg(run_id || ':' || via, ',' ORDER BY seq) FROM etl.runs"
        )
        .trim(),
        format!(
            "{first_run}:psql,{}:psql",
            second.file_name().unwrap().to_str().unwrap()
        )
    );
}
