//! Matomo tables from the real test MariaDB through extract, transform and load into the real
//! test PostgreSQL: types without loss, rejects, and the inclusive incremental window.

mod util;

use util::*;

/// A fresh MariaDB database holding the fixture tables and rows; returns its name.
fn run_matomo(work: &Workdir, db: &str, url: &str) -> String {
    let mut text = String::new();
    for args in [
        vec!["extract", "--source", "matomo"],
        vec!["transform"],
        vec!["load"],
    ] {
        let out = work.etl(&args, &[("MATOMO_DATABASE", db), ("DATABASE_URL", url)]);
        assert!(
            out.status.success(),
            "etl {args:?}:\n{}\n{}",
            stdout(&out),
            stderr(&out)
        );
        assert!(
            !stderr(&out).contains("etl:etl@") && !stdout(&out).contains("-petl"),
            "password in output"
        );
        text.push_str(&stdout(&out));
    }
    text
}

#[test]
fn matomo_rows_reach_postgres_without_loss() {
    let db = matomo_database("matomo_e2e");
    let work = Workdir::new();
    let url = fresh_database("matomo_e2e");
    let text = run_matomo(&work, &db, &url);

    // Visit 2 has a zero visit_first_action_time: NULL, refused by the NOT NULL column.
    assert_eq!(
        psql(
            &url,
            "SELECT string_agg(idvisit::text, ',' ORDER BY idvisit) FROM matomo_log_visit"
        )
        .trim(),
        "1,18446744073709551615"
    );
    assert!(text.contains("matomo_log_visit"), "{text}");
    let rejects = std::fs::read_dir(work.path().join("staging"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path()
        .join("rejects/matomo_log_visit.parquet");
    let (_, batches) = etl::staging::read_batches(&rejects).unwrap();
    let shown = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    assert!(
        shown.contains("visit_first_action_time: NULL in NOT NULL column")
            && shown.contains("| 2 "),
        "{shown}"
    );

    // Binary ids, unsigned maxima, unicode, decimals, times.
    assert_eq!(psql(&url, "SELECT encode(idvisitor, 'hex') || ' ' || encode(location_ip, 'hex') FROM matomo_log_visit WHERE idvisit = 1").trim(), "0123456789abcdef c0a80001");
    assert_eq!(
        psql(&url, "SELECT idsite || ' ' || last_idlink_va || ' ' || user_id || ' ' || location_latitude || ' ' || visitor_localtime FROM matomo_log_visit WHERE idvisit = 18446744073709551615").trim(),
        "4294967295 18446744073709551615 北京用户 中文 -33.868820 23:59:59"
    );
    assert_eq!(psql(&url, "SELECT user_id || '|' || referer_keyword || '|' || visit_last_action_time FROM matomo_log_visit WHERE idvisit = 1").trim(), "rené@example.com|régime méditerranéen|2024-03-01 12:00:00");
    assert_eq!(psql(&url, "SELECT custom_dimension_1 || '|' || time_dom_completion || '|' || custom_float || '|' || time_spent FROM matomo_log_link_visit_action WHERE idlink_va = 2").trim(), "café ☕|16777215|12.5|4294967295");
    assert_eq!(count(&url, "SELECT count(*) FROM matomo_log_action"), 7);
    assert_eq!(
        count(&url, "SELECT max(length(name)) FROM matomo_log_action"),
        1227
    );
    assert_eq!(
        count(
            &url,
            "SELECT hash FROM matomo_log_action WHERE idaction = 5"
        ),
        4294967295
    );
}

#[test]
fn matomo_incremental_window_is_inclusive_and_reruns_are_safe() {
    let db = matomo_database("matomo_incr");
    let work = Workdir::new();
    let url = fresh_database("matomo_incr");
    run_matomo(&work, &db, &url);
    // A new action later than everything, and visit 1 moves forward (it is still active).
    mariadb(&db, "INSERT INTO matomo_log_link_visit_action (idlink_va, idsite, idvisitor, idvisit, server_time) VALUES (3, 1, UNHEX('0123456789ABCDEF'), 1, '2024-03-02 08:00:00');
                  UPDATE matomo_log_visit SET visit_last_action_time = '2024-03-02 08:00:00', visit_total_actions = 3 WHERE idvisit = 1;");
    let text = run_matomo(&work, &db, &url);
    let extracted = |table: &str| -> String {
        text.lines()
            .find(|l| l.starts_with(&format!("{table} ")))
            .unwrap_or_default()
            .split_whitespace()
            .nth(2)
            .unwrap_or_default()
            .to_string()
    };
    // Window from the target's MAX(server_time) = 2024-03-01 12:00:00, inclusive: action 2 and 3.
    assert_eq!(extracted("matomo_log_link_visit_action"), "2", "{text}");
    // visit_last_action_time >= 2024-03-01 12:00:01 (the max loaded): visits 1 (moved) and 3.
    assert_eq!(extracted("matomo_log_visit"), "2", "{text}");
    assert_eq!(
        count(&url, "SELECT count(*) FROM matomo_log_link_visit_action"),
        3
    );
    assert_eq!(
        count(
            &url,
            "SELECT visit_total_actions FROM matomo_log_visit WHERE idvisit = 1"
        ),
        3
    );
    // log_action has an integer watermark: only ids >= the highest loaded come again.
    assert_eq!(extracted("matomo_log_action"), "1", "{text}");
}

/// The transform summary's row for `table`: extracted, transformed, rejected, filtered.
fn transform_counts(text: &str, table: &str) -> Vec<u64> {
    let section = text
        .split("transform: run")
        .nth(1)
        .and_then(|t| t.split("load: run").next())
        .unwrap_or_default();
    section
        .lines()
        .find(|l| l.split_whitespace().next() == Some(table))
        .unwrap_or_else(|| panic!("no transform row for {table}: {text}"))
        .split_whitespace()
        .skip(1)
        .take(4)
        .map(|n| n.parse().unwrap_or_else(|_| panic!("not a count: {n}")))
        .collect()
}

/// The rejects of `table` in the newest run, pretty-printed.
fn rejects(work: &Workdir, table: &str) -> String {
    let mut runs: Vec<_> = std::fs::read_dir(work.path().join("staging"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    runs.sort();
    let path = runs
        .last()
        .unwrap()
        .join(format!("rejects/{table}.parquet"));
    let (_, batches) = etl::staging::read_batches(&path).unwrap();
    arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string()
}

/// A Matomo date that names no day (`2024-02-30` under `ALLOW_INVALID_DATES`) stopped the
/// whole extract. Now the extract goes on, transform rejects that row with the reason and the
/// raw date, the other rows load, and the counts add up.
#[test]
fn an_invalid_matomo_date_rejects_its_row_with_the_raw_value() {
    let db = matomo_database("matomo_baddate");
    mariadb(
        &db,
        "SET SESSION sql_mode = 'ALLOW_INVALID_DATES';
         UPDATE matomo_log_visit SET visit_first_action_time = '2024-02-30 10:00:00'
           WHERE idvisit = 18446744073709551615;
         UPDATE matomo_log_link_visit_action SET server_time = '2024-02-31 08:00:00'
           WHERE idlink_va = 2;",
    );
    let work = Workdir::new();
    let url = fresh_database("matomo_baddate");
    let text = run_matomo(&work, &db, &url);

    // Visit 1 loads; visit 2 (zero date in a NOT NULL column) and the max visit (invalid date)
    // are rejected: 3 extracted = 1 transformed + 2 rejected.
    assert_eq!(
        psql(
            &url,
            "SELECT string_agg(idvisit::text, ',' ORDER BY idvisit) FROM matomo_log_visit"
        )
        .trim(),
        "1"
    );
    assert_eq!(transform_counts(&text, "matomo_log_visit"), [3, 1, 2, 0]);
    let shown = rejects(&work, "matomo_log_visit");
    assert!(
        shown.contains("18446744073709551615")
            && shown.contains("visit_first_action_time: ")
            && shown.contains(r#"{"visit_first_action_time":"2024-02-30 10:00:00"}"#),
        "{shown}"
    );
    assert_eq!(
        transform_counts(&text, "matomo_log_link_visit_action"),
        [2, 1, 1, 0]
    );
    let shown = rejects(&work, "matomo_log_link_visit_action");
    assert!(
        shown.contains(r#"{"server_time":"2024-02-31 08:00:00"}"#),
        "{shown}"
    );
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM matomo_log_link_visit_action WHERE idlink_va = 2"
        ),
        0
    );
}

/// Column expressions work on Matomo columns too: a `value_map` on a tinyint (with a reject
/// for an unlisted value and a `default`), a `template` over two columns, a `regex` and a
/// `const`.
#[test]
fn matomo_columns_take_expressions() {
    let db = matomo_database("matomo_expr");
    let work = Workdir::new();
    work.write(
        "config/matomo_schemas.yaml",
        r#"
matomo_log_visit:
  primary_key: [idvisit]
  columns:
    - { name: idvisit, sql_type: "NUMERIC(20,0)", nullable: false }
    - { name: referer, sql_type: TEXT, source: referer_type, value_map: { 1: direct, 2: search, 3: website } }
    - { name: visitor_kind, sql_type: TEXT, source: visitor_returning, value_map: { 0: new, 1: returning }, default: other }
    - { name: label, sql_type: TEXT, template: "visit {idvisit} on site {idsite}" }
    - { name: lang, sql_type: TEXT, source: location_browser_lang, regex: '^([a-z]{2})' }
    - { name: origin, sql_type: TEXT, nullable: false, const: matomo }
"#,
    );
    let url = fresh_database("matomo_expr");
    let text = run_matomo(&work, &db, &url);
    assert_eq!(
        psql(
            &url,
            "SELECT idvisit, referer, visitor_kind, label, lang, origin FROM matomo_log_visit \
             ORDER BY idvisit"
        )
        .lines()
        .collect::<Vec<_>>(),
        [
            "1|search|returning|visit 1 on site 1|fr|matomo",
            "2|||visit 2 on site 1||matomo",
        ]
    );
    assert_eq!(transform_counts(&text, "matomo_log_visit"), [3, 2, 1, 0]);
    let shown = rejects(&work, "matomo_log_visit");
    assert!(
        shown.contains("18446744073709551615")
            && shown.contains("referer: value_map: value not in the map")
            && shown.contains(r#"{"referer":"255"}"#),
        "{shown}"
    );
}
