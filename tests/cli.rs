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
