//! Column expressions (`value_map`, `const`, `template`, `regex`, `json`) through the real
//! `etl` binary: a mongodump with awkward values (a number where text is expected, a string
//! where a number is, missing fields, unicode), loaded into the test PostgreSQL; every target
//! row and every reject's reason is asserted.

mod util;

use std::path::Path;

use bson::{doc, Bson, Document};
use etl::staging::Stage;
use util::*;

const CONFIG: &str = r#"
people:
  include_base: true
  additional_columns:
    # A plain column on the same field: it is staged as an integer, the map reads its digits.
    - { name: sex_code, sql_type: INTEGER, source: sex }
    - { name: sex, sql_type: VARCHAR(6), value_map: { 1: male, "2": female } }
    - { name: kind, sql_type: TEXT, nullable: false, const: coach }
    - { name: started, sql_type: DATE, const: "2024-03-01" }
    - { name: active, sql_type: BOOLEAN, const: true }
    - { name: prompt, sql_type: TEXT, template: "prompt_{name}_{{x}}" }
    - { name: city, sql_type: TEXT, template: "{address.city}/{name}" }
    - { name: year, sql_type: SMALLINT, source: intro, regex: '(\d{4,})' }
    - { name: meta, sql_type: JSONB, source: meta_text, json: parse }
    - { name: meta_wrap, sql_type: JSONB, source: meta_text, json: wrap }
    - { name: level, sql_type: INTEGER, source: level, value_map: { low: 1, high: 3 }, default: 0 }

# A link table: expressions on the parent's fields are computed per document and repeated on
# every element's row.
people_tags:
  mongo_collection: people
  columns:
    - { name: person_id, sql_type: VARCHAR, nullable: false, foreign_key: people(id) }
    - { name: tag, sql_type: VARCHAR, nullable: false, source: element }
    - { name: person_sex, sql_type: TEXT, source: sex, value_map: { 1: m, "2": f }, unmapped: null }
    - { name: label, sql_type: TEXT, template: "{name}#" }
    - { name: via, sql_type: TEXT, const: tags }
  unique: [person_id, tag]
  explode: { parent_column: person_id, arrays: [{ field: tags }] }
"#;

fn person(id: &str, fields: Document) -> Document {
    let at = bson::DateTime::from_millis(1_709_251_200_000);
    let mut d = doc! { "_id": id, "creation_date": at, "update_date": at };
    d.extend(fields);
    d
}

fn documents() -> Vec<Document> {
    vec![
        person(
            "a1",
            doc! { "sex": 1_i32, "name": "Ann", "address": { "city": "Paris" },
            "intro": "born in 1984", "meta_text": "{\"a\": [1, 2]}", "level": "low",
            "tags": ["x", "y"] },
        ),
        person(
            "a2",
            doc! { "sex": "2", "name": "Bob", "intro": "no year", "meta_text": "\"quoted\"",
            "level": "high" },
        ),
        // No sex, a number where the regex expects text, an unmapped number for `level`.
        person(
            "a3",
            doc! { "name": "Zoë", "address": { "city": "Köln" }, "intro": 1990_i32,
            "meta_text": Bson::Null, "level": 7_i32, "tags": ["z"] },
        ),
        person("r1", doc! { "sex": 3_i32, "name": "Cy" }),
        person(
            "r2",
            doc! { "sex": 1_i32, "name": "Di", "intro": "year 99999" },
        ),
        person(
            "r3",
            doc! { "sex": 2_i64, "name": "Ed", "meta_text": "{bad" },
        ),
    ]
}

/// Rejected rows of a table: (document id, reason, raw value).
fn rejects(run: &Path, table: &str) -> Vec<(String, String, String)> {
    reject_rows(&run.join(format!("rejects/{table}.parquet")))
}

#[test]
fn every_expression_loads_from_a_mongodump_and_refusals_are_rejects_with_reasons() {
    let work = Workdir::new();
    work.write("config/schemas.yaml", CONFIG);
    std::fs::remove_file(work.path().join("config/matomo_schemas.yaml")).unwrap();
    let dump = work.path().join("dump/app");
    std::fs::create_dir_all(&dump).unwrap();
    let mut bytes = Vec::new();
    for d in documents() {
        bytes.extend(bson::to_vec(&d).unwrap());
    }
    std::fs::write(dump.join("people.bson"), bytes).unwrap();
    let url = fresh_database("expressions");

    let out = work.etl(
        &["run", "--source", "dump", "--dump", dump.to_str().unwrap()],
        &[("DATABASE_URL", url.as_str())],
    );
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));

    let rows = psql(
        &url,
        "SELECT id, sex_code, sex, kind, started, active, prompt, city, year, meta, meta_wrap, \
         level FROM people ORDER BY id",
    );
    assert_eq!(
        rows.lines().collect::<Vec<_>>(),
        [
            r#"a1|1|male|coach|2024-03-01|t|prompt_Ann_{x}|Paris/Ann|1984|{"a": [1, 2]}|"{\"a\": [1, 2]}"|1"#,
            r#"a2|2|female|coach|2024-03-01|t|prompt_Bob_{x}|||"quoted"|"\"quoted\""|3"#,
            r#"a3|||coach|2024-03-01|t|prompt_Zoë_{x}|Köln/Zoë|1990|||0"#,
        ]
    );

    assert_eq!(
        psql(
            &url,
            "SELECT person_id, tag, person_sex, label, via FROM people_tags ORDER BY 1, 2"
        )
        .lines()
        .collect::<Vec<_>>(),
        ["a1|x|m|Ann#|tags", "a1|y|m|Ann#|tags", "a3|z||Zoë#|tags"]
    );

    let latest = etl::staging::latest_run(&work.path().join("staging"), Stage::Transform)
        .unwrap()
        .unwrap();
    let manifest = latest.manifest(Stage::Transform).unwrap();
    let people = manifest
        .entries
        .iter()
        .find(|e| e.name == "people")
        .unwrap();
    let counts = people.counts;
    assert_eq!(
        (
            counts.extracted,
            counts.transformed,
            counts.rejected,
            counts.filtered
        ),
        (6, 3, 3, 0)
    );
    let run = latest.root;
    let found = rejects(&run, "people");
    assert_eq!(found.len(), 3, "{found:#?}");
    assert_eq!(
        (
            found[0].0.as_str(),
            found[0].1.as_str(),
            found[0].2.as_str()
        ),
        (
            "r1",
            "sex: value_map: value not in the map (`unmapped: reject`)",
            r#"{"sex":"3"}"#
        )
    );
    assert_eq!(found[1].0, "r2");
    assert!(
        found[1]
            .1
            .starts_with(r"year: regex `(\d{4,})` gave `99999`: ")
            && found[1].1.contains("SMALLINT"),
        "{found:#?}"
    );
    assert_eq!(found[1].2, r#"{"year":"year 99999"}"#);
    assert_eq!(found[2].0, "r3");
    assert!(
        found[2].1.starts_with("meta: json: parse: not JSON"),
        "{found:#?}"
    );
    assert_eq!(found[2].2, r#"{"meta":"{bad"}"#);
}
