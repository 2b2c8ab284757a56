//! End-to-end tests of the `etl` binary against the real test servers.

mod util;

use util::smartdiet;
use util::*;

#[test]
fn schema_creates_every_table_and_applying_it_twice_is_harmless() {
    let work = Workdir::new();
    let out = work.etl(&["schema"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let ddl = stdout(&out);
    assert!(
        ddl.contains("\"order\" SMALLINT NOT NULL"),
        "`order` must be quoted:\n{ddl}"
    );

    let url = fresh_database("schema");
    psql(&url, &ddl);
    psql(&url, &ddl);
    let count = psql(
        &url,
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
    );
    assert_eq!(count.trim(), "33", "30 SmartDiet tables + 3 Matomo tables");
    let fks = psql(
        &url,
        "SELECT count(*) FROM information_schema.table_constraints WHERE constraint_type = 'FOREIGN KEY'",
    );
    assert!(
        fks.trim().parse::<u32>().unwrap() >= 30,
        "foreign keys: {fks}"
    );
    let unique = psql(
        &url,
        "SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM information_schema.key_column_usage k
         JOIN information_schema.table_constraints c USING (constraint_name)
         WHERE c.table_name = 'users_targets' AND c.constraint_type = 'UNIQUE'",
    );
    assert_eq!(unique.trim(), "user_id,target_id,type");
}

#[test]
fn bad_config_exits_2_naming_table_and_key_before_any_connection() {
    let work = Workdir::new();
    work.write(
        "config/schemas.yaml",
        "users:\n  include_base: true\n  additional_columns:\n    - { name: a, sql_type: STRNG }\n",
    );
    // An unreachable database: the config error must come first.
    let out = work.etl(
        &["load"],
        &[("POSTGRES_HOST", "127.0.0.1"), ("POSTGRES_PORT", "1")],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("schemas.yaml") && err.contains("`users`") && err.contains("sql_type"),
        "{err}"
    );
    assert!(stdout(&out).is_empty());
}

#[test]
fn help_lists_every_command() {
    let work = Workdir::new();
    let out = work.etl(&["--help"], &[]);
    let help = stdout(&out);
    for cmd in [
        "extract",
        "transform",
        "load",
        "run",
        "status",
        "verify",
        "schema",
    ] {
        assert!(help.contains(cmd), "{cmd} missing from --help:\n{help}");
    }
}

#[test]
fn load_refuses_a_run_transformed_with_other_columns() {
    let work = Workdir::new();
    let dump = smartdiet::write_dump(&work.path().join("dump"), 10);
    work.extract_transform_dump(&dump, &[], &[]);
    let path = work.path().join("config/schemas.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        yaml.replacen("    - { name: unit, sql_type: VARCHAR(50) }\n", "", 1),
    )
    .unwrap();
    // Refused before any connection (the port is closed).
    let out = work.etl(
        &["load"],
        &[("POSTGRES_HOST", "127.0.0.1"), ("POSTGRES_PORT", "1")],
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("table `ingredients`") && err.contains("run `etl transform` again"),
        "{err}"
    );
}

#[test]
fn exit_codes_say_usage_error_2_and_failed_stage_1() {
    let work = Workdir::new();
    let dump = work.path().join("dump");
    let dump = dump.to_str().unwrap();
    for args in [
        &[
            "extract",
            "--source",
            "dump",
            "--dump",
            dump,
            "--tables",
            "users,bogus",
        ][..],
        &["transform", "--tables", "bogus"],
        &["load", "--tables", "bogus"],
        &[
            "run", "--source", "dump", "--dump", dump, "--tables", "bogus",
        ],
    ] {
        let out = work.etl(args, &[]);
        assert_eq!(out.status.code(), Some(2), "etl {args:?}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("unknown table(s) in --tables: bogus") && err.contains("users"),
            "etl {args:?}: the message names the unknown table and the known ones: {err}"
        );
    }
    assert!(
        !work.path().join("staging").exists(),
        "a usage error stops before anything is written"
    );
    let usage = [
        &["extract", "--source", "dump"][..],
        &["frobnicate"],
        &["load", "--to", "nowhere"],
    ];
    for args in usage {
        let out = work.etl(args, &[]);
        assert_eq!(out.status.code(), Some(2), "etl {args:?}: {}", stderr(&out));
    }
    // Nothing to load: the stage fails.
    let out = work.etl(&["load"], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("run `etl transform` first"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn strict_turns_a_collection_missing_from_the_dump_into_exit_1() {
    let work = Workdir::new();
    let db = work.path().join("dump/smartdiet");
    std::fs::create_dir_all(&db).unwrap();
    let user = bson::doc! { "_id": bson::oid::ObjectId::new(), "email": "a@b.c" };
    smartdiet::write_collection(&db, "users", [&user].into_iter());
    let dump = db.to_str().unwrap();
    let args = [
        "extract",
        "--source",
        "dump",
        "--dump",
        dump,
        "--tables",
        "users,companies",
    ];
    let out = work.etl(&args, &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let summary = stdout(&out);
    assert!(
        summary
            .lines()
            .any(|l| l.starts_with("companies") && l.contains("missing from the source")),
        "the summary shows the missing collection:\n{summary}"
    );
    let mut strict = vec!["--strict"];
    strict.extend(args);
    let out = work.etl(&strict, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("companies"), "{}", stderr(&out));
}

/// Regression: the load summary showed 0 rejected for a table whose every row the transform
/// rejected (it counted orphans only).
#[test]
fn load_summary_counts_transform_rejects_and_orphans() {
    let work = Workdir::new();
    let db = work.path().join("dump/smartdiet");
    std::fs::create_dir_all(&db).unwrap();
    let at = smartdiet::at(0);
    // `name` is NOT NULL: both companies are rejected by transform.
    let companies: Vec<bson::Document> = (0..2)
        .map(|i| bson::doc! { "_id": smartdiet::oid(1, i), "creation_date": at, "update_date": at })
        .collect();
    // One user points to a company that will not exist: an orphan at load.
    let user = bson::doc! {
        "_id": smartdiet::oid(4, 0), "creation_date": at, "update_date": at,
        "firstname": "Ada", "company": smartdiet::oid(1, 0),
    };
    smartdiet::write_collection(&db, "companies", companies.iter());
    smartdiet::write_collection(&db, "users", [&user].into_iter());
    work.extract_transform_dump(&db, &["--tables", "companies,users"], &[]);
    let url = fresh_database("load_rejects");
    let out = work.etl(&["load"], &[("DATABASE_URL", url.as_str())]);
    assert!(out.status.success(), "{}", stderr(&out));
    let summary = stdout(&out);
    let row = |table: &str| -> Vec<String> {
        summary
            .lines()
            .find(|l| l.split_whitespace().next() == Some(table))
            .unwrap_or_else(|| panic!("no {table} row:\n{summary}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    // table rows inserted updated deleted rejected seconds
    assert_eq!(row("companies")[5], "2", "{summary}");
    assert_eq!(row("users")[5], "1", "{summary}");
    assert_eq!(row("users")[2], "0", "{summary}");
}

/// Regression: `println!` into a closed stdout (`etl schema | head -1`) panicked.
#[test]
fn results_into_a_closed_pipe_never_panic() {
    let work = Workdir::new();
    for args in [&["schema"][..], &["status"]] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_etl"))
            .current_dir(work.path())
            .args(args)
            .stdout(writer)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "etl {args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{}", stderr(&out));
    }
}
