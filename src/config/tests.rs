//! Config validation: the shipped configs load, and each kind of bad config is refused with a
//! message naming file, table and key.

use super::*;

fn load_yaml(mongo: &str) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(MONGO_FILE), mongo).unwrap();
    Config::load(dir.path())
}

/// Asserts the config is refused with a problem on `table` and `key` whose message has `needle`.
fn assert_refused(yaml: &str, table: &str, key: &str, needle: &str) {
    let err = load_yaml(yaml).expect_err("config should be refused");
    let text = err.to_string();
    let hit = err.problems.iter().any(|p| {
        p.table.as_deref() == Some(table)
            && p.key.as_deref().is_some_and(|k| k.contains(key))
            && p.message.contains(needle)
            && p.file.ends_with(MONGO_FILE)
    });
    assert!(
        hit,
        "expected a problem on table `{table}` key `{key}` with `{needle}`, got:\n{text}"
    );
    assert!(
        text.contains(MONGO_FILE) && text.contains(table) && text.contains(key),
        "{text}"
    );
}

const OK_BASE: &str = "
users:
  include_base: true
  additional_columns:
    - { name: firstname, sql_type: VARCHAR(255), nullable: false }
";

#[test]
fn shipped_configs_load_with_all_tables_in_reference_order() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let config = Config::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    let mongo: Vec<&str> = config
        .tables
        .iter()
        .filter(|t| matches!(t.source, Source::Mongo { .. }))
        .map(|t| t.name.as_str())
        .collect();
    assert_eq!(mongo.len(), 30, "{mongo:?}");
    // Every table comes after the tables it references.
    for (i, t) in config.tables.iter().enumerate() {
        for dep in t.depends_on() {
            let j = config.tables.iter().position(|o| o.name == dep).unwrap();
            assert!(j < i, "{} loads before its dependency {dep}", t.name);
        }
    }
    // The reference's groups keep their order: periods (4) < days (5) < days links (6).
    let pos = |n: &str| config.tables.iter().position(|t| t.name == n).unwrap();
    assert!(pos("periods") < pos("days") && pos("days") < pos("days_contents_links"));
    let targets = config.table("users_targets").unwrap();
    let explode = targets.explode.as_ref().unwrap();
    assert_eq!(explode.arrays.len(), 3);
    assert_eq!(explode.children, Children::Replace);
    assert_eq!(targets.conflict_key, ["user_id", "target_id", "type"]);
    let logbook = config.table("users_logbook").unwrap();
    assert_eq!(logbook.conflict_key, ["user_id", "day"]);
    assert_eq!(
        logbook.dedupe.as_ref().unwrap().rule("created_at"),
        Keep::Min
    );
    assert_eq!(logbook.filter_exists, ["user"]);
    let days = config.table("days").unwrap();
    assert_eq!(
        days.column("completed").unwrap().source,
        ColumnSource::Field("is_success".into())
    );
    let visit = config.table("matomo_log_visit").unwrap();
    assert_eq!(
        visit.watermark,
        Watermark::Column("visit_last_action_time".into())
    );
    assert_eq!(config.fingerprint.len(), 64);
}

#[test]
fn annotated_reference_config_loads() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/reference");
    let config = Config::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    assert!(config.table("users_targets").is_some());
    let users = config.table("users").unwrap();
    for (column, expression) in [("sex", true), ("birth_year", true), ("settings", true)] {
        assert_eq!(
            users.column(column).unwrap().expression.is_some(),
            expression,
            "{column}"
        );
    }
    assert_eq!(
        users.column("origin").unwrap().source,
        ColumnSource::Computed(Computed::Const("mongodb".into()))
    );
}

#[test]
fn unknown_key_is_refused() {
    assert_refused(
        "users:\n  include_base: true\n  colums: []\n",
        "users",
        "colums",
        "unknown field",
    );
}

#[test]
fn unknown_key_inside_a_column_names_its_position() {
    assert_refused(
        "users:\n  include_base: true\n  additional_columns:\n    - { name: a, sql_type: TEXT, nulable: true }\n",
        "users",
        "additional_columns[0]",
        "nulable",
    );
}

#[test]
fn unknown_sql_type_is_refused() {
    assert_refused(
        "users:\n  include_base: true\n  additional_columns:\n    - { name: a, sql_type: STRING }\n",
        "users",
        "additional_columns[0].sql_type",
        "unknown SQL type `STRING`",
    );
}

#[test]
fn foreign_key_to_missing_table_is_refused() {
    let yaml = format!(
        "{OK_BASE}    - {{ name: company_id, sql_type: VARCHAR, foreign_key: companies(id) }}\n"
    );
    assert_refused(
        &yaml,
        "users",
        "company_id.foreign_key",
        "table `companies`",
    );
}

#[test]
fn foreign_key_to_missing_column_is_refused() {
    let yaml = format!(
        "{OK_BASE}    - {{ name: company_id, sql_type: VARCHAR, foreign_key: users(uuid) }}\n"
    );
    assert_refused(&yaml, "users", "company_id.foreign_key", "no such column");
}

#[test]
fn malformed_foreign_key_is_refused() {
    let yaml =
        format!("{OK_BASE}    - {{ name: c, sql_type: VARCHAR, foreign_key: companies.id }}\n");
    assert_refused(
        &yaml,
        "users",
        "additional_columns[1].foreign_key",
        "table(column)",
    );
}

#[test]
fn dependency_cycle_is_refused_with_its_path() {
    let yaml = "
a:
  include_base: true
  additional_columns: [{ name: b_id, sql_type: VARCHAR, foreign_key: b(id) }]
b:
  include_base: true
  additional_columns: [{ name: a_id, sql_type: VARCHAR, foreign_key: a(id) }]
";
    assert_refused(
        yaml,
        "a",
        "foreign_key",
        "cycle between tables: a -> b -> a",
    );
}

#[test]
fn self_reference_is_not_a_cycle() {
    let yaml = "
categories:
  include_base: true
  additional_columns: [{ name: parent_id, sql_type: VARCHAR, foreign_key: categories(id) }]
";
    let config = load_yaml(yaml).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.tables.len(), 1);
}

#[test]
fn duplicate_column_is_refused() {
    let yaml =
        "users:\n  include_base: true\n  additional_columns:\n    - { name: id, sql_type: TEXT }\n";
    assert_refused(
        yaml,
        "users",
        "additional_columns[0].name",
        "duplicate column `id`",
    );
}

#[test]
fn link_table_without_parent_column_is_refused() {
    let yaml = "
user_events:
  mongo_collection: users
  columns:
    - { name: user_id, sql_type: VARCHAR }
    - { name: event_id, sql_type: VARCHAR, source: element }
  unique: [user_id, event_id]
  explode: { arrays: [{ field: registered_events }] }
";
    assert_refused(yaml, "user_events", "explode.parent_column", "parent");
}

#[test]
fn bad_time_zone_is_refused() {
    let yaml = format!("{OK_BASE}  time_zone: Europe/Pariss\n");
    assert_refused(
        &yaml,
        "users",
        "time_zone",
        "unknown time zone `Europe/Pariss`",
    );
}

#[test]
fn table_without_key_is_refused() {
    let yaml = "logs:\n  columns:\n    - { name: line, sql_type: TEXT }\n";
    assert_refused(yaml, "logs", "primary_key", "no key to upsert on");
}

#[test]
fn python_strategy_without_declaration_is_explained() {
    let yaml = format!("{OK_BASE}  import_strategy: users_targets\n");
    assert_refused(&yaml, "users", "import_strategy", "explode");
    let yaml = format!("{OK_BASE}  import_strategy: magic\n");
    assert_refused(&yaml, "users", "import_strategy", "not a strategy");
}

#[test]
fn dedupe_rule_and_column_are_checked() {
    let yaml = "
users_logbook:
  columns:
    - { name: id, sql_type: SERIAL }
    - { name: user_id, sql_type: VARCHAR }
    - { name: day, sql_type: DATE }
  primary_key: [id]
  unique: [user_id, day]
  dedupe: { key: [user_id, day], keep: { day: newest, missing: min } }
";
    assert_refused(
        yaml,
        "users_logbook",
        "dedupe.keep.day",
        "unknown rule `newest`",
    );
    assert_refused(
        yaml,
        "users_logbook",
        "dedupe.keep.missing",
        "no such column",
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let yaml = "
a:
  include_base: true
  additional_columns: [{ name: x, sql_type: NOPE }]
b:
  include_base: true
  time_zone: Mars/Olympus
";
    let err = load_yaml(yaml).unwrap_err();
    assert_eq!(err.problems.len(), 2, "{err}");
}

#[test]
fn yaml_syntax_error_names_the_file() {
    let err = load_yaml("users: [unclosed").unwrap_err();
    assert!(err.to_string().contains(MONGO_FILE), "{err}");
}

#[test]
fn multi_array_table_needs_types() {
    let yaml = "
t:
  mongo_collection: users
  columns:
    - { name: user_id, sql_type: VARCHAR }
    - { name: target_id, sql_type: VARCHAR, source: element }
  unique: [user_id, target_id]
  explode: { parent_column: user_id, arrays: [{ field: a }, { field: b }] }
";
    assert_refused(yaml, "t", "explode.arrays", "`type` each");
}

#[test]
fn keep_source_adds_the_whole_document_as_a_last_jsonb_column() {
    let config = load_yaml(&format!("{OK_BASE}  keep_source: true\n")).unwrap();
    let users = config.table("users").unwrap();
    assert!(users.keep_source);
    let last = users.columns.last().unwrap();
    assert_eq!(last.name, KEEP_SOURCE_COLUMN);
    assert_eq!(last.sql_type, SqlType::Jsonb);
    assert_eq!(last.source, ColumnSource::Document);
    assert!(last.nullable);
    assert!(ddl::create_table(users).contains("source_data JSONB"));
}

#[test]
fn keep_source_is_refused_where_a_row_is_not_one_document() {
    assert_refused(
        "
users_targets:
  mongo_collection: users
  keep_source: true
  columns:
    - { name: user_id, sql_type: VARCHAR, nullable: false }
    - { name: target_id, sql_type: VARCHAR, nullable: false, source: element }
  unique: [user_id, target_id]
  explode: { parent_column: user_id, arrays: [{ field: targets }] }
",
        "users_targets",
        "keep_source",
        "one row per document",
    );
    assert_refused(
        &format!("{OK_BASE}    - {{ name: source_data, sql_type: TEXT }}\n  keep_source: true\n"),
        "users",
        "keep_source",
        "already declares",
    );
}

const PARTITIONED: &str = "
events_log:
  columns:
    - { name: action_id, sql_type: TEXT, nullable: false }
    - { name: action_timestamp, sql_type: TIMESTAMPTZ, nullable: false }
  primary_key: [action_id, action_timestamp]
  partition: { column: action_timestamp, every: week }
";

#[test]
fn a_partitioned_table_is_created_by_range_and_its_key_holds_the_column() {
    let config = load_yaml(PARTITIONED).unwrap_or_else(|e| panic!("{e}"));
    let t = config.table("events_log").unwrap();
    assert_eq!(
        t.partition,
        Some(PartitionSpec {
            column: "action_timestamp".into(),
            every: PartitionEvery::Week
        })
    );
    let ddl = ddl::create_table(t);
    assert!(
        ddl.ends_with(") PARTITION BY RANGE (action_timestamp);\n"),
        "{ddl}"
    );
    assert_refused(
        &PARTITIONED.replace("[action_id, action_timestamp]", "[action_id]"),
        "events_log",
        "primary_key",
        "must include the partition column `action_timestamp`",
    );
    assert_refused(
        &PARTITIONED.replace("every: week", "every: fortnight"),
        "events_log",
        "partition.every",
        "unknown period `fortnight`",
    );
    assert_refused(
        &PARTITIONED.replace("column: action_timestamp,", "column: action_id,"),
        "events_log",
        "partition.column",
        "is TEXT; a partition column is TIMESTAMPTZ",
    );
    assert_refused(
        &PARTITIONED.replace("column: action_timestamp,", "column: nowhere,"),
        "events_log",
        "partition.column",
        "names column `nowhere`",
    );
}

fn load_api_yaml(yaml: &str) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(MATOMO_API_FILE), yaml).unwrap();
    Config::load(dir.path())
}

#[test]
fn the_shipped_matomo_api_table_is_one_row_per_action_keyed_by_visit_and_position() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let config = Config::load(&dir).unwrap_or_else(|e| panic!("{e}"));
    let t = config.table("matomo").unwrap();
    assert_eq!(
        t.source,
        Source::MatomoApi {
            method: "Live.getLastVisitsDetails".into()
        }
    );
    assert_eq!(t.columns.len(), 43);
    assert_eq!(
        t.column("action_id").unwrap().source,
        ColumnSource::Computed(Computed::Template(vec![
            Piece::Value(Operand::Field("idVisit".into())),
            Piece::Text("_".into()),
            Piece::Value(Operand::ElementIndex),
        ]))
    );
    assert_eq!(
        t.column("action_url").unwrap().source,
        ColumnSource::ElementField("url".into())
    );
    assert_eq!(
        t.column("dimension3").unwrap().source,
        ColumnSource::Computed(Computed::Coalesce(vec![
            Operand::ElementField("dimension3".into()),
            Operand::Field("dimension3".into()),
        ]))
    );
    let explode = t.explode.as_ref().unwrap();
    assert_eq!(explode.children, Children::Upsert);
    assert_eq!(explode.arrays[0].field, "actionDetails");
    assert_eq!(t.conflict_key, ["action_id"]);
    assert_eq!(t.watermark, Watermark::Column("action_timestamp".into()));
    assert_eq!(t.lag_days, 2);
}

#[test]
fn matomo_api_keys_are_checked_naming_file_table_and_key() {
    let ok = "matomo:\n  columns:\n    - { name: action_id, sql_type: TEXT, nullable: false, template: \"{idVisit}_{element_index}\" }\n    - { name: url, sql_type: TEXT, source: element.url }\n  primary_key: [action_id]\n  explode: { parent_column: action_id, arrays: [{ field: actionDetails }] }\n";
    load_api_yaml(ok).unwrap_or_else(|e| panic!("{e}"));
    for (yaml, key, needle) in [
        (
            ok.replace("{idVisit}_", "{idVisit_"),
            "columns[0].template",
            "a `{` is not closed",
        ),
        (
            ok.replace("{idVisit}", "{$where}"),
            "columns[0].template",
            "is not a field path",
        ),
        (
            ok.replace("\"{idVisit}_{element_index}\"", "\"{idVisit\""),
            "columns[0].template",
            "a `{` is not closed",
        ),
        (
            ok.replace("\"{idVisit}_{element_index}\"", "\"plain\""),
            "columns[0].template",
            "names no source",
        ),
        (
            ok.replace("element.url", "element"),
            "columns[1].source",
            "API tables take `element.<key>`",
        ),
        (
            ok.replace("field: actionDetails", "field: goals"),
            "explode.arrays",
            "one array, `actionDetails`",
        ),
        (
            ok.replace("arrays: [", "children: replace, arrays: [")
                .replace(
                    "  explode: { parent_column: action_id, children: replace,",
                    "  children: replace\n  explode: { parent_column: action_id,",
                ),
            "children",
            "API tables upsert",
        ),
        (
            format!("{ok}  matomo_api: events\n"),
            "matomo_api",
            "unknown API method `events`",
        ),
        (
            format!("{ok}  include_base: true\n"),
            "include_base",
            "is not a key of Matomo API tables",
        ),
        (
            ok.replace(
                ", source: element.url",
                ", source: element.url, coalesce: [url]",
            ),
            "columns[1].source",
            "a column takes `source` or one of",
        ),
    ] {
        let err = load_api_yaml(&yaml).expect_err(&yaml);
        let hit = err.problems.iter().any(|p| {
            p.table.as_deref() == Some("matomo")
                && p.key.as_deref().is_some_and(|k| k.contains(key))
                && p.message.contains(needle)
                && p.file.ends_with(MATOMO_API_FILE)
        });
        assert!(
            hit,
            "expected `{key}`: `{needle}`, got:\n{err}\nfor:\n{yaml}"
        );
    }
    // The API's keys are refused elsewhere.
    assert_refused(
        "events_log:\n  columns:\n    - { name: id, sql_type: TEXT, coalesce: [a, b] }\n  primary_key: [id]\n",
        "events_log",
        "coalesce",
        "is for Matomo API tables",
    );
    assert_refused(
        &format!("{OK_BASE}  lag_days: 3\n"),
        "users",
        "lag_days",
        "is for Matomo API tables",
    );
}

const EXPR_OK: &str = "
people:
  include_base: true
  additional_columns:
    - { name: sex, sql_type: VARCHAR(6), value_map: { 1: male, \"2\": female, x: null }, unmapped: null }
    - { name: kind, sql_type: TEXT, const: coach }
    - { name: prompt, sql_type: TEXT, template: \"prompt_{name}_{address.city}\" }
    - { name: year, sql_type: SMALLINT, source: intro, regex: '(\\d{4})', no_match: reject }
    - { name: meta, sql_type: JSONB, source: meta_text, json: parse }
    - { name: level, sql_type: INTEGER, source: level, value_map: { low: 1 }, default: 0 }
";

#[test]
fn column_expressions_load_as_declared() {
    let config = load_yaml(EXPR_OK).unwrap_or_else(|e| panic!("{e}"));
    let t = config.table("people").unwrap();
    let sex = t.column("sex").unwrap();
    let Some(Expression::ValueMap(map)) = &sex.expression else {
        panic!("{sex:?}")
    };
    assert_eq!(map.entries.get("1"), Some(&Some("male".to_string())));
    assert_eq!(map.entries.get("2"), Some(&Some("female".to_string())));
    assert_eq!(map.entries.get("x"), Some(&None));
    assert_eq!(map.unmapped, Unmapped::Null);
    assert_eq!(
        t.column("kind").unwrap().source,
        ColumnSource::Computed(Computed::Const("coach".into()))
    );
    let prompt = t.column("prompt").unwrap();
    assert_eq!(prompt.text_sources(), ["name", "address.city"]);
    assert!(matches!(
        t.column("year").unwrap().expression,
        Some(Expression::Regex {
            no_match: NoMatch::Reject,
            ..
        })
    ));
    let level = t.column("level").unwrap();
    let Some(Expression::ValueMap(map)) = &level.expression else {
        panic!("{level:?}")
    };
    assert_eq!(map.unmapped, Unmapped::Default("0".into()));
    // Expression sources are staged as text; the template's fields are staged too.
    let fields = crate::staging::fields::fields_for_collection(&config, "people", false);
    for path in ["sex", "intro", "meta_text", "name", "address.city"] {
        let f = fields.iter().find(|f| f.path == path).unwrap();
        assert_eq!(f.kind, crate::staging::fields::FieldKind::Text, "{path}");
    }
    assert!(!fields
        .iter()
        .any(|f| f.path == "kind" || f.path == "prompt"));
    // `default: null` is NULL, not "no default".
    let config = load_yaml(&EXPR_OK.replace("default: 0", "default: null")).unwrap();
    let level = config.table("people").unwrap().column("level").unwrap();
    let Some(Expression::ValueMap(map)) = &level.expression else {
        panic!("{level:?}")
    };
    assert_eq!(map.unmapped, Unmapped::Null);
}

/// Each kind of bad expression is refused naming table, column position and key.
#[test]
fn bad_column_expressions_are_refused_naming_the_key() {
    let sex = "{ name: sex, sql_type: VARCHAR(6), value_map: { 1: male, \"2\": female, x: null }, unmapped: null }";
    let year =
        "{ name: year, sql_type: SMALLINT, source: intro, regex: '(\\d{4})', no_match: reject }";
    let meta = "{ name: meta, sql_type: JSONB, source: meta_text, json: parse }";
    let kind = "{ name: kind, sql_type: TEXT, const: coach }";
    let prompt = "{ name: prompt, sql_type: TEXT, template: \"prompt_{name}_{address.city}\" }";
    let level =
        "{ name: level, sql_type: INTEGER, source: level, value_map: { low: 1 }, default: 0 }";
    for (from, to, key, needle) in [
        (
            year,
            year.replace("(\\d{4})", "([0-9]"),
            "[3].regex",
            "not a valid regular expression",
        ),
        (
            year,
            year.replace("(\\d{4})", "\\d{4}"),
            "[3].regex",
            "has no capture group",
        ),
        (
            year,
            year.replace("reject", "skip"),
            "[3].no_match",
            "`null` or `reject`",
        ),
        (
            meta,
            meta.replace("JSONB", "TEXT"),
            "[4].json",
            "is for JSONB columns",
        ),
        (
            meta,
            meta.replace("parse", "eval"),
            "[4].json",
            "`wrap` or `parse`",
        ),
        (
            kind,
            kind.replace("TEXT", "INTEGER"),
            "[1].const",
            "does not fit INTEGER",
        ),
        (
            kind,
            kind.replace("coach", "[a, b]"),
            "[1].const",
            "is not a text, number or boolean",
        ),
        (
            kind,
            kind.replace("const: coach", "const: coach, source: x"),
            "[1].const",
            "takes no `source`",
        ),
        (
            kind,
            kind.replace("const: coach", "const: coach, regex: '(a)'"),
            "[1].const",
            "one expression, found const, regex",
        ),
        (
            prompt,
            prompt.replace("prompt_{name}_{address.city}", "prompt"),
            "[2].template",
            "names no source",
        ),
        (
            prompt,
            prompt.replace("{name}", "{}"),
            "[2].template",
            "not a field path",
        ),
        (
            kind,
            kind.replace("coach", "null"),
            "[1].const",
            "is not a text, number or boolean",
        ),
        (
            kind,
            kind.replace("TEXT, const: coach", "\"NUMERIC(3,1)\", const: 99.99"),
            "[1].const",
            "`99.99` does not fit NUMERIC(3,1)",
        ),
        (
            kind,
            kind.replace("TEXT, const: coach", "JSONB, const: { a: .inf, b: [.nan] }"),
            "[1].const",
            "holds NaN or infinity",
        ),
        (
            prompt,
            prompt.replace("{name}_", "{name_"),
            "[2].template",
            "not closed",
        ),
        (
            sex,
            sex.replace("male,", "toolongvalue,"),
            "[0].value_map",
            "`1` -> `toolongvalue` does not fit VARCHAR(6)",
        ),
        (
            sex,
            sex.replace("\"2\"", "\"1\""),
            "[0].value_map",
            "listed twice",
        ),
        (
            sex,
            sex.replace("\"2\"", "[2]"),
            "[0].value_map",
            "is not a text, number or boolean",
        ),
        (
            sex,
            sex.replace("unmapped: null", "unmapped: keep"),
            "[0].unmapped",
            "`reject` or `null`",
        ),
        (
            sex,
            sex.replace("unmapped: null", "unmapped: null, default: x"),
            "[0].unmapped",
            "not both",
        ),
        (
            sex,
            sex.replace("value_map: { 1: male, \"2\": female, x: null }, ", ""),
            "[0].unmapped",
            "goes with `value_map`",
        ),
        (
            year,
            year.replace("regex: '(\\d{4})', ", ""),
            "[3].no_match",
            "goes with `regex`",
        ),
        (
            level,
            level.replace("default: 0", "default: zero"),
            "[5].default",
            "does not fit INTEGER",
        ),
        (
            level,
            level.replace("{ low: 1 }", "{ low: one }"),
            "[5].value_map",
            "`low` -> `one` does not fit INTEGER",
        ),
        (
            level,
            level.replace("{ low: 1 }", "{}"),
            "[5].value_map",
            "at least one value",
        ),
    ] {
        assert!(EXPR_OK.contains(from), "{from}");
        let yaml = EXPR_OK.replace(from, &to);
        assert_refused(&yaml, "people", &format!("additional_columns{key}"), needle);
        // Said once: a cast that already names the value and type is not wrapped again.
        for p in load_yaml(&yaml).expect_err("refused").problems {
            assert!(
                p.message.matches("does not fit").count() <= 1,
                "{}",
                p.message
            );
        }
    }
}

#[test]
fn every_expression_problem_of_a_config_is_listed_at_once() {
    let yaml = EXPR_OK
        .replace("(\\d{4})", "\\d")
        .replace("JSONB, source: meta_text", "TEXT, source: meta_text")
        .replace("const: coach", "const: coach, value_map: {a: b}");
    let err = load_yaml(&yaml).expect_err("refused");
    assert_eq!(err.problems.len(), 3, "{err}");
    // Each names its column, beside its position and key.
    for (column, key) in [
        ("kind", "additional_columns[1].const"),
        ("year", "additional_columns[3].regex"),
        ("meta", "additional_columns[4].json"),
    ] {
        assert!(
            err.problems.iter().any(|p| p.key.as_deref() == Some(key)
                && p.message.starts_with(&format!("column `{column}`: "))),
            "{err}"
        );
    }
}

#[test]
fn an_expression_on_a_serial_column_or_a_watermark_is_refused() {
    assert_refused(
        "t:\n  columns:\n    - { name: id, sql_type: SERIAL, const: 1 }\n  primary_key: [id]\n",
        "t",
        "columns[0].const",
        "PostgreSQL generates it",
    );
    assert_refused(
        "t:\n  columns:\n    - { name: id, sql_type: TEXT }\n    - { name: n, sql_type: INTEGER, value_map: {a: 1} }\n  primary_key: [id]\n  watermark: n\n",
        "t",
        "watermark",
        "computed by an expression",
    );
}

#[test]
fn a_field_read_as_text_and_as_plain_jsonb_in_one_collection_is_refused() {
    let yaml = "a:\n  columns:\n    - { name: id, sql_type: TEXT, source: _id }\n    - { name: m, sql_type: JSONB, source: meta }\n  primary_key: [id]\n  mongo_collection: docs\nb:\n  columns:\n    - { name: id, sql_type: TEXT, source: _id }\n    - { name: m, sql_type: TEXT, source: meta, regex: '(.)' }\n  primary_key: [id]\n  mongo_collection: docs\n";
    assert_refused(yaml, "b", "m", "reads `meta` as text");
    // The same in another collection is fine.
    load_yaml(&yaml.replacen("mongo_collection: docs", "mongo_collection: other", 1))
        .unwrap_or_else(|e| panic!("{e}"));
}

fn load_postgres_yaml(yaml: &str) -> Result<Config, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(POSTGRES_FILE), yaml).unwrap();
    Config::load(dir.path())
}

/// Asserts a `postgres_schemas.yaml` is refused with a problem on `table` and `key`.
fn assert_postgres_refused(yaml: &str, table: &str, key: &str, needle: &str) {
    let err = load_postgres_yaml(yaml).expect_err("config should be refused");
    let hit = err.problems.iter().any(|p| {
        p.table.as_deref() == Some(table)
            && p.key.as_deref().is_some_and(|k| k.contains(key))
            && p.message.contains(needle)
            && p.file.ends_with(POSTGRES_FILE)
    });
    assert!(hit, "expected `{table}` `{key}` `{needle}`, got:\n{err}");
}

#[test]
fn totalis_example_config_loads_with_its_three_tables_and_four_sources() {
    let config = Config::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples/totalis"),
    )
    .unwrap();
    let names: Vec<&str> = config.tables.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["coaches", "categories", "app_config"]);
    let coaches = config.table("coaches").unwrap();
    assert_eq!(
        coaches.source,
        Source::Postgres {
            table: "tls_coach".into()
        }
    );
    assert_eq!(coaches.watermark, Watermark::Column("created_at".into()));
    let app = config.table("app_config").unwrap();
    let sources: Vec<String> = app
        .part_specs()
        .iter()
        .map(|t| t.source.name().to_string())
        .collect();
    assert_eq!(
        sources,
        ["tls_prompt", "tls_variable", "tls_system", "tls_coach"]
    );
    assert_eq!(app.watermark, Watermark::None);
    let daniel = app.part_specs().pop().unwrap();
    assert_eq!(
        daniel.filter_equals,
        [("name".to_string(), "Daniel".to_string())]
    );
    assert_eq!(
        daniel.column("key").unwrap().source,
        ColumnSource::Computed(Computed::Const("default_coach".into()))
    );
}

#[test]
fn postgres_tables_refuse_keys_of_other_sources_and_bad_table_names() {
    assert_postgres_refused(
        "t:\n  mongo_collection: x\n  columns: [{ name: id, sql_type: INTEGER }]\n",
        "t",
        "mongo_collection",
        POSTGRES_FILE,
    );
    assert_postgres_refused(
        "t:\n  postgres_table: \"a.b.c\"\n  columns: [{ name: id, sql_type: INTEGER }]\n",
        "t",
        "postgres_table",
        "schema.table",
    );
    let err = load_yaml("t:\n  postgres_table: x\n  columns: [{ name: id, sql_type: INTEGER }]\n")
        .unwrap_err();
    assert!(err.to_string().contains("postgres_table"), "{err}");
}

#[test]
fn sources_are_checked_against_the_table_columns() {
    let base =
        "t:\n  primary_key: [k]\n  columns:\n    - { name: k, sql_type: TEXT, nullable: false }\n";
    assert_postgres_refused(
        &format!("{base}  sources:\n    - postgres_table: a\n      columns: [{{ name: nope, source: x }}]\n"),
        "t",
        "sources[0].columns[0].name",
        "no column `nope`",
    );
    assert_postgres_refused(
        &format!("{base}  sources:\n    - postgres_table: a\n      columns: [{{ name: k, sql_type: INTEGER }}]\n"),
        "t",
        "sources[0].columns[0]",
        "are the table's",
    );
    assert_postgres_refused(
        &format!("{base}  watermark: k\n  sources:\n    - postgres_table: a\n"),
        "t",
        "watermark",
        "several sources",
    );
    // An expression is checked against the table column's type.
    assert_postgres_refused(
        &format!("{base}  sources:\n    - postgres_table: a\n      columns: [{{ name: k, source: x, json: wrap }}]\n"),
        "t",
        "sources[0].columns.k.json",
        "JSONB",
    );
}
