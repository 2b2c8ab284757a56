//! `--source postgres` through the real `etl` binary: a second database on the test
//! PostgreSQL holds the legacy `tls_*` tables of the Totalis reference with awkward data
//! (unknown sex values, intros with and without a year, a category cycle, an orphan parent,
//! bytea, NULLs everywhere, types of every supported kind), migrated with the shipped
//! `config/examples/totalis` and with focused configs. Every target row, the rejects with
//! their reasons, the counts, the watermark increment and the idempotent rerun are asserted.

mod util;

use etl::staging::Stage;
use util::*;

const TOTALIS_SOURCE: &str = r#"
CREATE TABLE tls_image (id INTEGER PRIMARY KEY, data BYTEA, mime TEXT, time_create TIMESTAMP);
CREATE TABLE tls_coach (id INTEGER PRIMARY KEY, name TEXT, description TEXT,
    image_id INTEGER REFERENCES tls_image(id), image30_id INTEGER REFERENCES tls_image(id),
    image45_id INTEGER REFERENCES tls_image(id), image60_id INTEGER REFERENCES tls_image(id),
    sex TEXT, intro TEXT, prompt TEXT, time_create TIMESTAMP);
CREATE TABLE tls_category (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES tls_category(id),
    name TEXT, name_short TEXT, description TEXT,
    icon_id INTEGER REFERENCES tls_image(id), icon_id_secondary INTEGER REFERENCES tls_image(id),
    sort_order INTEGER, primary_color TEXT, secondary_color TEXT,
    show_checkin_history BOOLEAN, checkin_enabled BOOLEAN, followup_chat_enabled BOOLEAN,
    followup_timer INTEGER, prompt_checkin TEXT, prompt_checkin_2 TEXT,
    guidelines_file_text TEXT, max_questions INTEGER, scope TEXT, time_create TIMESTAMP);
CREATE TABLE tls_prompt (id INTEGER PRIMARY KEY, name TEXT, prompt TEXT, time_create TIMESTAMP);
CREATE TABLE tls_variable (id INTEGER PRIMARY KEY, name TEXT, value TEXT, "user" BOOLEAN,
    time_create TIMESTAMP);
CREATE TABLE tls_system (id INTEGER PRIMARY KEY, name TEXT, value TEXT, time_create TIMESTAMP);

INSERT INTO tls_image VALUES (1, '\x89504e470d0a1a0a00ff'::bytea, 'image/png', '2024-01-01 00:00:00'),
    (2, NULL, NULL, NULL);
INSERT INTO tls_coach VALUES
 (1, 'Daniel', E'Tab\there, newline\nthere, back\\slash', 1, NULL, NULL, NULL, 'M',
     'Born in 1975, coach since 2001', E'Say "hi"', '2024-01-01 10:00:00'),
 (2, 'Eva', NULL, NULL, NULL, NULL, NULL, 'f', '42 years old', NULL, '2024-01-02 10:00:00'),
 (3, 'Sam', NULL, NULL, NULL, NULL, NULL, 'NB', NULL, NULL, '2024-01-03 10:00:00'),
 (4, 'Kim', NULL, NULL, NULL, NULL, NULL, 'robot', 'year 2150, born 1988 or 19999', NULL, NULL),
 (5, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '2024-01-04 10:00:00'),
 (6, 'Zoë', 'ünïcödé ✓', NULL, NULL, NULL, NULL, '', 'née en 2003', NULL, '2024-01-05 10:00:00');
-- 1 root; 2, 3 under 1; 4 under 3; 5 -> 6 -> 7 -> 5 a cycle; 8 under the cycle; 9 points to
-- a category that does not exist (the source has no FK check left: it was dropped).
ALTER TABLE tls_category DROP CONSTRAINT tls_category_parent_id_fkey;
INSERT INTO tls_category (id, parent_id, name, sort_order, show_checkin_history, time_create) VALUES
 (1, NULL, 'Root', 1, true, '2024-02-01 00:00:00'),
 (2, 1, 'Child A', 1, false, '2024-02-01 00:00:00'),
 (3, 1, 'Child B', 2, NULL, '2024-02-01 00:00:00'),
 (4, 3, 'Grandchild', 1, NULL, '2024-02-01 00:00:00'),
 (5, 7, 'Loop 5', NULL, NULL, '2024-02-01 00:00:00'),
 (6, 5, 'Loop 6', NULL, NULL, '2024-02-01 00:00:00'),
 (7, 6, 'Loop 7', NULL, NULL, '2024-02-01 00:00:00'),
 (8, 6, 'Under the loop', NULL, NULL, '2024-02-01 00:00:00'),
 (9, 99, 'Orphan', NULL, NULL, '2024-02-01 00:00:00');
-- `shared` is a name in all three tables (prefixed keys: no conflict); two prompts share
-- `greeting` (a conflict); NULLs where the target wants a value.
INSERT INTO tls_prompt VALUES (1, 'greeting', E'Hello "you"\n', '2024-03-01 00:00:00'),
 (2, 'greeting', 'Hi again', '2024-03-02 00:00:00'), (3, 'farewell', NULL, NULL),
 (4, 'shared', 'P', '2024-03-03 00:00:00');
INSERT INTO tls_variable VALUES (1, 'shared', '42', true, '2024-03-04 00:00:00'),
 (2, 'theme', 'dark', NULL, NULL), (3, NULL, 'x', false, NULL);
INSERT INTO tls_system VALUES (1, 'shared', 'on', NULL);
"#;

/// Runs etl in `work` against `source` and `target`; the run must succeed.
fn etl_ok(work: &Workdir, args: &[&str], source: &str, target: &str) -> String {
    let out = work.etl(
        args,
        &[("SOURCE_DATABASE_URL", source), ("DATABASE_URL", target)],
    );
    assert!(
        out.status.success(),
        "etl {args:?}:\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn example_config() -> String {
    repo()
        .join("config/examples/totalis")
        .to_str()
        .unwrap()
        .to_string()
}

fn latest_run(work: &Workdir) -> etl::staging::RunDir {
    etl::staging::latest_run(&work.path().join("staging"), Stage::Transform)
        .unwrap()
        .unwrap()
}

#[test]
fn totalis_example_migrates_coaches_and_the_category_tree_and_reruns_change_nothing() {
    let work = Workdir::new();
    let source = fresh_database("pgsrc_totalis_src");
    let target = fresh_database("pgsrc_totalis_dst");
    psql(&source, TOTALIS_SOURCE);
    let config = example_config();

    etl_ok(
        &work,
        &["--config", &config, "run", "--source", "postgres"],
        &source,
        &target,
    );

    assert_eq!(
        psql(
            &target,
            "SELECT id, name, description, intro, prompt, sex, year_of_birth, is_active, \
             created_at FROM coaches ORDER BY id"
        )
        .lines()
        .collect::<Vec<_>>(),
        [
            "1|Daniel|Tab\there, newline",
            "there, back\\slash|Born in 1975, coach since 2001|Say \"hi\"|male|1975|t|2024-01-01 10:00:00",
            "2|Eva||42 years old||female||t|2024-01-02 10:00:00",
            "3|Sam||||non_binary||t|2024-01-03 10:00:00",
            "4|Kim||year 2150, born 1988 or 19999||other|1988|t|",
            "5|||||||t|2024-01-04 10:00:00",
            "6|Zoë|ünïcödé ✓|née en 2003|||2003|t|2024-01-05 10:00:00",
        ]
    );

    // The tree: the cycle's three rows are rejected with its path, the row under the cycle
    // and the row whose parent does not exist as orphans.
    assert_eq!(
        psql(&target, "SELECT id, parent_id, name, sort_order, show_checkin_history, is_active FROM categories ORDER BY id")
            .lines()
            .collect::<Vec<_>>(),
        [
            "1||Root|1|t|t",
            "2|1|Child A|1|f|t",
            "3|1|Child B|2||t",
            "4|3|Grandchild|1||t",
        ]
    );
    let run = latest_run(&work).root;
    let orphans = reject_rows(&run.join("rejects/categories.orphans.parquet"));
    let reasons: Vec<(&str, &str)> = orphans
        .iter()
        .map(|(id, reason, _)| (id.as_str(), reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            (
                "5",
                "parent_id: parent cycle 5 -> 7 -> 6 -> 5 (categories(id))"
            ),
            (
                "6",
                "parent_id: parent cycle 6 -> 5 -> 7 -> 6 (categories(id))"
            ),
            (
                "7",
                "parent_id: parent cycle 7 -> 6 -> 5 -> 7 (categories(id))"
            ),
            (
                "8",
                "parent_id: foreign key `6` not found in categories(id)"
            ),
            (
                "9",
                "parent_id: foreign key `99` not found in categories(id)"
            ),
        ]
    );

    // app_config: three sources and the default coach; the conflicting key's two rows and
    // the rows missing a NOT NULL value are rejects.
    assert_eq!(
        psql(
            &target,
            "SELECT key, value, is_public, description, created_at FROM app_config ORDER BY key"
        )
        .lines()
        .collect::<Vec<_>>(),
        [
            "default_coach|1|f|Default coach: Daniel|2024-01-01 10:00:00",
            "prompt_shared|\"P\"|f|Prompt: shared|2024-03-03 00:00:00",
            "system_shared|\"on\"|f|System: shared|",
            "var_shared|\"42\"|t|Variable: shared|2024-03-04 00:00:00",
        ]
    );
    let config_rejects = reject_rows(&run.join("rejects/app_config.parquet"));
    let mut reasons: Vec<&str> = config_rejects.iter().map(|(_, r, _)| r.as_str()).collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "is_public: NULL in NOT NULL column",
            "key: key conflict: 2 rows give key `prompt_greeting` (from tls_prompt, tls_prompt); none is loaded",
            "key: key conflict: 2 rows give key `prompt_greeting` (from tls_prompt, tls_prompt); none is loaded",
            "key: template gave NULL: NULL in NOT NULL column",
            "value: json: wrap gave NULL: NULL in NOT NULL column",
        ],
        "{config_rejects:#?}"
    );
    assert!(
        config_rejects
            .iter()
            .any(|(_, _, raw)| raw.contains("Hi again")),
        "the conflicting rows' values are in the rejects: {config_rejects:#?}"
    );
    let transformed = latest_run(&work).manifest(Stage::Transform).unwrap();
    let app = transformed
        .entries
        .iter()
        .find(|e| e.name == "app_config")
        .unwrap();
    // 4 prompts + 3 variables + 1 system + 6 coaches read; 5 coaches filtered (not Daniel).
    assert_eq!(
        (
            app.counts.extracted,
            app.counts.transformed,
            app.counts.rejected,
            app.counts.filtered
        ),
        (14, 4, 5, 5)
    );

    // The staged extract is typed Parquet with the manifest's counts and watermarks.
    let manifest = latest_run(&work).manifest(Stage::Extract).unwrap();
    let coach = manifest
        .entries
        .iter()
        .find(|e| e.name == "tls_coach")
        .unwrap();
    assert_eq!(coach.rows, 6);
    assert!(
        coach
            .schema
            .iter()
            .any(|(c, t)| c == "time_create" && t.starts_with("Timestamp")),
        "{:?}",
        coach.schema
    );
    assert_eq!(
        coach
            .watermarks
            .get("coaches")
            .map(ToString::to_string)
            .as_deref(),
        Some("2024-01-05 10:00:00")
    );

    // A rerun changes nothing. `tls_coach` is read whole: `app_config` reads it too, without
    // a watermark (see `watermark_increment_reads_only_rows_from_the_target_watermark`).
    let before = (
        table_digest(&target, "coaches"),
        table_digest(&target, "categories"),
        table_digest(&target, "app_config"),
    );
    etl_ok(
        &work,
        &["--config", &config, "run", "--source", "postgres"],
        &source,
        &target,
    );
    let after = (
        table_digest(&target, "coaches"),
        table_digest(&target, "categories"),
        table_digest(&target, "app_config"),
    );
    assert_eq!(before, after);
    let manifest = latest_run(&work).manifest(Stage::Transform).unwrap();
    let coaches = manifest
        .entries
        .iter()
        .find(|e| e.name == "coaches")
        .unwrap();
    assert_eq!(coaches.counts.transformed, 6);
}

const COACHES_ONLY: &str = r#"
coaches:
  postgres_table: tls_coach
  primary_key: [id]
  watermark: created_at
  columns:
    - { name: id, sql_type: INTEGER, nullable: false }
    - { name: sex, sql_type: TEXT }
    - { name: created_at, sql_type: TIMESTAMP, source: time_create }
"#;

#[test]
fn watermark_increment_reads_only_rows_from_the_target_watermark() {
    let work = Workdir::new();
    let source = fresh_database("pgsrc_wm_src");
    let target = fresh_database("pgsrc_wm_dst");
    psql(&source, TOTALIS_SOURCE);
    work.write("pgconf/postgres_schemas.yaml", COACHES_ONLY);
    let run = |work: &Workdir| {
        etl_ok(
            work,
            &["--config", "pgconf", "run", "--source", "postgres"],
            &source,
            &target,
        );
        let manifest = latest_run(work).manifest(Stage::Extract).unwrap();
        manifest
            .entries
            .into_iter()
            .find(|e| e.name == "tls_coach")
            .unwrap()
    };
    let first = run(&work);
    assert_eq!((first.rows, first.window_since.is_none()), (6, true));
    assert_eq!(
        first
            .watermarks
            .get("coaches")
            .map(ToString::to_string)
            .as_deref(),
        Some("2024-01-05 10:00:00")
    );
    // The rerun reads from the target's MAX(created_at), inclusive: the coach at it.
    let digest = table_digest(&target, "coaches");
    let second = run(&work);
    assert_eq!(second.rows, 1);
    assert_eq!(table_digest(&target, "coaches"), digest);

    // A new and an updated row after the watermark: they and the one at it are read.
    psql(
        &source,
        "INSERT INTO tls_coach (id, name, sex, time_create) VALUES (7, 'New', 'female', '2024-02-01 00:00:00'); \
         UPDATE tls_coach SET sex = 'F', time_create = '2024-02-02 00:00:00' WHERE id = 4;",
    );
    let third = run(&work);
    assert_eq!(third.rows, 3);
    assert_eq!(
        psql(
            &target,
            "SELECT id, sex, created_at FROM coaches WHERE id IN (4, 7) ORDER BY id"
        )
        .lines()
        .collect::<Vec<_>>(),
        ["4|F|2024-02-02 00:00:00", "7|female|2024-02-01 00:00:00"]
    );
    assert_eq!(count(&target, "SELECT count(*) FROM coaches"), 7);
}

const TYPES_SOURCE: &str = r#"
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE DOMAIN short_text AS VARCHAR(10);
CREATE TABLE kinds (
    id BIGINT PRIMARY KEY, small SMALLINT, big BIGINT, exact NUMERIC(10,2), loose NUMERIC,
    r REAL, d DOUBLE PRECISION, t TEXT, v VARCHAR(5), b BOOLEAN, ts TIMESTAMP,
    tz TIMESTAMPTZ, day DATE, at TIME, raw BYTEA, j JSON, jb JSONB, tags TEXT[], nums INT[],
    m mood, s short_text, u UUID);
INSERT INTO kinds VALUES
 (1, -32768, 9223372036854775807, 12345678.91, 1.000000000000000000000000000000000000000001,
  1.5, 0.1, E'a\tb\\c\nd', 'abc', true, '2024-03-01 12:34:56.123456',
  '2024-03-01 12:00:00+02', '2024-02-29', '23:59:59.5', '\x00ff0a5c'::bytea,
  '{"a": [1, "x"]}', '{"b": null}', ARRAY['x', 'y,z', NULL], ARRAY[1, 2], 'happy', 'dom',
  'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'),
 (2, NULL, NULL, NULL, 'NaN', 'Infinity', '-Infinity', NULL, NULL, false, 'infinity',
  NULL, '0044-03-15 BC', NULL, ''::bytea, NULL, NULL, '{}', NULL, NULL, NULL, NULL),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL);
"#;

const TYPES_CONFIG: &str = r#"
kinds:
  primary_key: [id]
  columns:
    - { name: id, sql_type: BIGINT, nullable: false }
    - { name: small, sql_type: SMALLINT }
    - { name: big, sql_type: BIGINT }
    - { name: exact, sql_type: "NUMERIC(10,2)" }
    - { name: loose, sql_type: NUMERIC }
    - { name: r, sql_type: REAL }
    - { name: d, sql_type: DOUBLE PRECISION }
    - { name: t, sql_type: TEXT }
    - { name: v, sql_type: VARCHAR(5) }
    - { name: b, sql_type: BOOLEAN }
    - { name: ts, sql_type: TIMESTAMP }
    - { name: tz, sql_type: TIMESTAMPTZ }
    - { name: day, sql_type: DATE }
    - { name: at, sql_type: TIME }
    - { name: raw, sql_type: BYTEA }
    - { name: j, sql_type: JSONB }
    - { name: jb, sql_type: JSONB }
    - { name: tags, sql_type: JSONB }
    - { name: nums, sql_type: JSONB }
    - { name: m, sql_type: TEXT }
    - { name: s, sql_type: TEXT }
    - { name: u, sql_type: TEXT }
"#;

#[test]
fn every_supported_type_round_trips_and_values_arrow_cannot_hold_are_rejects() {
    let work = Workdir::new();
    let source = fresh_database("pgsrc_types_src");
    let target = fresh_database("pgsrc_types_dst");
    psql(&source, TYPES_SOURCE);
    work.write("pgconf/postgres_schemas.yaml", TYPES_CONFIG);

    etl_ok(
        &work,
        &["--config", "pgconf", "run", "--source", "postgres"],
        &source,
        &target,
    );
    assert_eq!(
        psql(&target, "SELECT * FROM kinds ORDER BY id")
            .lines()
            .collect::<Vec<_>>(),
        [
            "1|-32768|9223372036854775807|12345678.91|1.000000000000000000000000000000000000000001|1.5|0.1|a\tb\\c",
            "d|abc|t|2024-03-01 12:34:56.123456|2024-03-01 10:00:00+00|2024-02-29|23:59:59.5|\\x00ff0a5c|{\"a\": [1, \"x\"]}|{\"b\": null}|[\"x\", \"y,z\", null]|[1, 2]|happy|dom|a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "3|||||||||||||||||||||",
        ]
    );
    // Row 2: `infinity` and a BC date do not fit Arrow's staged types: the row is a reject
    // naming the column and the value, never a NULL.
    let run = latest_run(&work).root;
    let found = reject_rows(&run.join("rejects/kinds.parquet"));
    assert_eq!(found.len(), 1, "{found:#?}");
    assert_eq!(found[0].0, "2");
    assert!(
        found[0].1.contains("ts") || found[0].1.contains("day"),
        "{found:#?}"
    );
    let transformed = latest_run(&work).manifest(Stage::Transform).unwrap();
    let kinds = transformed
        .entries
        .iter()
        .find(|e| e.name == "kinds")
        .unwrap();
    assert_eq!(
        (
            kinds.counts.extracted,
            kinds.counts.transformed,
            kinds.counts.rejected
        ),
        (3, 2, 1)
    );
}

#[test]
fn unsupported_types_and_missing_columns_are_errors_naming_table_and_column() {
    let work = Workdir::new();
    let source = fresh_database("pgsrc_bad_src");
    let target = fresh_database("pgsrc_bad_dst");
    psql(
        &source,
        "CREATE TABLE shapes (id INT PRIMARY KEY, spot POINT, span INTERVAL);",
    );
    work.write(
        "pgconf/postgres_schemas.yaml",
        "shapes:\n  primary_key: [id]\n  columns:\n    - { name: id, sql_type: INTEGER }\n    - { name: spot, sql_type: TEXT }\n",
    );
    let out = work.etl(
        &["--config", "pgconf", "extract", "--source", "postgres"],
        &[("SOURCE_DATABASE_URL", &source), ("DATABASE_URL", &target)],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("`shapes`") && err.contains("`spot`") && err.contains("point"),
        "{err}"
    );

    work.write(
        "pgconf/postgres_schemas.yaml",
        "shapes:\n  primary_key: [id]\n  columns:\n    - { name: id, sql_type: INTEGER }\n    - { name: gone, sql_type: TEXT }\n",
    );
    let out = work.etl(
        &["--config", "pgconf", "extract", "--source", "postgres"],
        &[("SOURCE_DATABASE_URL", &source), ("DATABASE_URL", &target)],
    );
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("`shapes`") && err.contains("gone"), "{err}");

    work.write(
        "pgconf/postgres_schemas.yaml",
        "nowhere:\n  primary_key: [id]\n  columns:\n    - { name: id, sql_type: INTEGER }\n",
    );
    let out = work.etl(
        &["--config", "pgconf", "extract", "--source", "postgres"],
        &[("SOURCE_DATABASE_URL", &source), ("DATABASE_URL", &target)],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("`nowhere` does not exist"),
        "{}",
        stderr(&out)
    );
}

/// Two sources mapped onto one key without prefixes: `shared` comes from both tables.
const CONFLICT_CONFIG: &str = r#"
settings:
  primary_key: [name]
  columns:
    - { name: name, sql_type: TEXT, nullable: false }
    - { name: value, sql_type: TEXT }
    - { name: origin, sql_type: TEXT, nullable: false }
  sources:
    - postgres_table: tls_variable
      columns:
        - { name: origin, const: variable }
    - postgres_table: tls_system
      columns:
        - { name: origin, template: "system #{id}" }
"#;

#[test]
fn a_key_given_by_two_sources_is_a_conflict_with_both_rows_rejected() {
    let work = Workdir::new();
    let source = fresh_database("pgsrc_conflict_src");
    let target = fresh_database("pgsrc_conflict_dst");
    psql(&source, TOTALIS_SOURCE);
    work.write("pgconf/postgres_schemas.yaml", CONFLICT_CONFIG);
    etl_ok(
        &work,
        &["--config", "pgconf", "run", "--source", "postgres"],
        &source,
        &target,
    );
    // `theme` only in tls_variable; the NULL name is a reject; `shared` in both: neither row
    // is loaded over the other.
    assert_eq!(
        psql(
            &target,
            "SELECT name, value, origin FROM settings ORDER BY name"
        )
        .lines()
        .collect::<Vec<_>>(),
        ["theme|dark|variable"]
    );
    let found = reject_rows(&latest_run(&work).root.join("rejects/settings.parquet"));
    let conflicts: Vec<&(String, String, String)> = found
        .iter()
        .filter(|(_, reason, _)| reason.contains("key conflict"))
        .collect();
    assert_eq!(conflicts.len(), 2, "{found:#?}");
    let ids: Vec<&str> = conflicts.iter().map(|(id, _, _)| id.as_str()).collect();
    assert_eq!(ids, ["tls_system: shared", "tls_variable: shared"]);
    for (_, reason, _) in &conflicts {
        assert_eq!(
            reason,
            "name: key conflict: 2 rows give key `shared` (from tls_variable, tls_system); none is loaded"
        );
    }
    // The raw value holds the row's values (as JSON text under the key column's name).
    assert!(
        conflicts[0].2.contains("system #1") && conflicts[1].2.contains("42"),
        "{conflicts:#?}"
    );
    let transformed = latest_run(&work).manifest(Stage::Transform).unwrap();
    let settings = transformed
        .entries
        .iter()
        .find(|e| e.name == "settings")
        .unwrap();
    assert_eq!(
        (
            settings.counts.extracted,
            settings.counts.transformed,
            settings.counts.rejected
        ),
        (4, 1, 3)
    );
    // A rerun changes nothing.
    let digest = table_digest(&target, "settings");
    etl_ok(
        &work,
        &["--config", "pgconf", "run", "--source", "postgres"],
        &source,
        &target,
    );
    assert_eq!(table_digest(&target, "settings"), digest);
}

#[test]
fn a_sql_bundle_rejects_the_parent_cycle_like_the_live_load() {
    let work = Workdir::new();
    let source = fresh_database("pgsrc_bundle_src");
    let target = fresh_database("pgsrc_bundle_dst");
    psql(&source, TOTALIS_SOURCE);
    let config = example_config();
    etl_ok(
        &work,
        &[
            "--config", &config, "run", "--source", "postgres", "--to", "sql", "--out", "bundle",
        ],
        &source,
        &target,
    );
    let bundle = std::fs::read_dir(work.path().join("bundle"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let out = std::process::Command::new("psql")
        .args([
            target.as_str(),
            "-X",
            "-q",
            "-1",
            "-v",
            "ON_ERROR_STOP=1",
            "-f",
            "load.sql",
        ])
        .current_dir(&bundle)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        psql(&target, "SELECT document_key, reason FROM etl_load_rejects WHERE table_name = 'categories' ORDER BY 1")
            .lines()
            .collect::<Vec<_>>(),
        [
            "5|parent cycle 5 -> 7 -> 6 -> 5 (categories(id))",
            "6|parent cycle 6 -> 5 -> 7 -> 6 (categories(id))",
            "7|parent cycle 7 -> 6 -> 5 -> 7 (categories(id))",
            "8|foreign key not found in categories(id)",
            "9|foreign key not found in categories(id)",
        ]
    );
    assert_eq!(count(&target, "SELECT count(*) FROM categories"), 4);
}

/// Columns named like the aliases the load, rollback and verify statements use (`t`, `s`,
/// `h`, `r`, `p`, `d`, `k`): the history of an update once failed on "column reference `t` is
/// ambiguous" (`to_jsonb(t)` named the column, not the row), rolling the whole load back. And
/// a numeric with 200 decimals, which once failed the whole load.
#[test]
fn columns_named_like_the_statements_aliases_update_roll_back_and_verify() {
    let work = Workdir::new();
    let source = fresh_database("pgsrc_alias_src");
    let target = fresh_database("pgsrc_alias_dst");
    psql(
        &source,
        "CREATE TABLE letters (id int PRIMARY KEY, t text, s text, h int, r int, p int, d int, k int,
         n numeric);
         INSERT INTO letters VALUES (1, 'a', 'b', 1, 2, 3, 4, 5, 1.5),
         (2, 'c', NULL, NULL, 0, 0, 0, 0, 1e-200);",
    );
    let columns: Vec<String> = ["t", "s"]
        .iter()
        .map(|c| format!("    - {{ name: {c}, sql_type: TEXT }}"))
        .chain(
            ["h", "r", "p", "d", "k"]
                .iter()
                .map(|c| format!("    - {{ name: {c}, sql_type: INTEGER }}")),
        )
        .chain(["    - { name: n, sql_type: NUMERIC }".to_string()])
        .collect();
    work.write(
        "alias/postgres_schemas.yaml",
        &format!(
            "letters:\n  postgres_table: letters\n  primary_key: [id]\n  columns:\n    \
             - {{ name: id, sql_type: INTEGER, nullable: false }}\n{}\n",
            columns.join("\n")
        ),
    );
    let run = ["--config", "alias", "run", "--source", "postgres", "--full"];
    etl_ok(&work, &run, &source, &target);
    let first = table_digest(&target, "letters");
    // 200 digits after the point (the binary COPY once held the scale in an i8).
    assert_eq!(
        psql(&target, "SELECT n = 1e-200 FROM letters WHERE id = 2").trim(),
        "t"
    );
    psql(&source, "UPDATE letters SET t = 'z', k = 9 WHERE id = 1");
    etl_ok(&work, &run, &source, &target);
    assert_eq!(
        psql(&target, "SELECT t, k FROM letters WHERE id = 1").trim(),
        "z|9"
    );
    etl_ok(
        &work,
        &["--config", "alias", "verify", "--source", "postgres"],
        &source,
        &target,
    );
    etl_ok(&work, &["--config", "alias", "rollback"], &source, &target);
    assert_eq!(table_digest(&target, "letters"), first);
}
