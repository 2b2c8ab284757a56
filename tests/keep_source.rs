//! `keep_source: true` keeps the whole source document in `source_data JSONB`, as relaxed
//! Extended JSON, through the real `etl` (mongodump and live MongoDB over the wire) into the
//! test PostgreSQL; `etl extract --keep-documents` stages it for every collection.
//!
//! pymongo cannot be installed on these machines (no network to PyPI), so the expected
//! documents are written by hand from MongoDB's Extended JSON specification (its conversion
//! table's relaxed column, and its footnotes: dates with three-digit milliseconds only when
//! not zero, regular expression options sorted, binary subtypes as two hex digits). They are
//! compared inside PostgreSQL as `jsonb`, so key order and number spelling do not matter,
//! every key, type wrapper and value does.

#![recursion_limit = "256"]

mod util;
#[path = "util/wire.rs"]
mod wire;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::str::FromStr;

use bson::oid::ObjectId;
use bson::spec::BinarySubtype;
use bson::{doc, Binary, Bson, Document};
use etl::staging::{read_batches, Stage};
use util::*;

const CONFIG: &str = r#"
things:
  include_base: true
  additional_columns:
    - { name: label, sql_type: TEXT }
  keep_source: true

notes:
  include_base: true
  additional_columns:
    - { name: text, sql_type: TEXT }
"#;

fn oid(hex: &str) -> ObjectId {
    ObjectId::parse_str(hex).unwrap()
}

/// 2024-03-01T00:00:00Z plus `ms`.
fn at(ms: i64) -> bson::DateTime {
    bson::DateTime::from_millis(1_709_251_200_000 + ms)
}

/// A document holding every BSON type a driver can write (DBPointer is appended as bytes).
fn every_type() -> Document {
    doc! {
        "_id": oid("65e8aa000000000000000001"),
        "creation_date": at(0),
        "update_date": at(1_500),
        "label": "all types",
        "string": "quote \" backslash \\ tab \t newline \n é 🎉",
        "int32": 42_i32,
        "int64": 9_007_199_254_740_993_i64,
        "negative": -7_i64,
        "double": 1.5_f64,
        "integral_double": 2.0_f64,
        "huge_double": 1e300_f64,
        "nan": f64::NAN,
        "inf": f64::INFINITY,
        "ninf": f64::NEG_INFINITY,
        "decimal": bson::Decimal128::from_str("12.50").unwrap(),
        "binary": Binary { subtype: BinarySubtype::Generic, bytes: b"hello".to_vec() },
        "uuid": Binary {
            subtype: BinarySubtype::Uuid,
            bytes: vec![0xc8, 0xed, 0xab, 0xc3, 0xf7, 0x38, 0x4c, 0xa3,
                        0xb6, 0x8d, 0xab, 0x92, 0xa9, 0x14, 0x78, 0xa3],
        },
        "user_binary": Binary { subtype: BinarySubtype::UserDefined(0x80), bytes: vec![1, 2, 3, 4, 5] },
        "epoch": bson::DateTime::from_millis(0),
        "with_ms": bson::DateTime::from_millis(1_356_351_330_501),
        "before_1970": bson::DateTime::from_millis(-284_643_869_501),
        "after_9999": bson::DateTime::from_millis(253_402_300_800_000),
        "regex": bson::Regex { pattern: "^ab+c$".into(), options: "xmi".into() },
        "code": Bson::JavaScriptCode("function() {}".into()),
        "code_scope": Bson::JavaScriptCodeWithScope(bson::JavaScriptCodeWithScope {
            code: "function() { return x; }".into(),
            scope: doc! { "x": 1_i32 },
        }),
        "timestamp": bson::Timestamp { time: 42, increment: 1 },
        "symbol": Bson::Symbol("sym".into()),
        "yes": true,
        "no": false,
        "nothing": Bson::Null,
        "undefined": Bson::Undefined,
        "min": Bson::MinKey,
        "max": Bson::MaxKey,
        "ref": { "$ref": "collection", "$id": oid("57fd71e96e32ab4225b723fb"), "$db": "database" },
        "nested": { "a": [1_i32, "two", { "three": [3.25_f64] }, []], "b": {} },
    }
}

/// `every_type()` as relaxed Extended JSON, written from the specification's table.
const EVERY_TYPE_JSON: &str = r#"{
  "_id": {"$oid": "65e8aa000000000000000001"},
  "creation_date": {"$date": "2024-03-01T00:00:00Z"},
  "update_date": {"$date": "2024-03-01T00:00:01.500Z"},
  "label": "all types",
  "string": "quote \" backslash \\ tab \t newline \n é 🎉",
  "int32": 42,
  "int64": 9007199254740993,
  "negative": -7,
  "double": 1.5,
  "integral_double": 2.0,
  "huge_double": 1e300,
  "nan": {"$numberDouble": "NaN"},
  "inf": {"$numberDouble": "Infinity"},
  "ninf": {"$numberDouble": "-Infinity"},
  "decimal": {"$numberDecimal": "12.50"},
  "binary": {"$binary": {"base64": "aGVsbG8=", "subType": "00"}},
  "uuid": {"$binary": {"base64": "yO2rw/c4TKO2jauSqRR4ow==", "subType": "04"}},
  "user_binary": {"$binary": {"base64": "AQIDBAU=", "subType": "80"}},
  "epoch": {"$date": "1970-01-01T00:00:00Z"},
  "with_ms": {"$date": "2012-12-24T12:15:30.501Z"},
  "before_1970": {"$date": {"$numberLong": "-284643869501"}},
  "after_9999": {"$date": {"$numberLong": "253402300800000"}},
  "regex": {"$regularExpression": {"pattern": "^ab+c$", "options": "imx"}},
  "code": {"$code": "function() {}"},
  "code_scope": {"$code": "function() { return x; }", "$scope": {"x": 1}},
  "timestamp": {"$timestamp": {"t": 42, "i": 1}},
  "symbol": {"$symbol": "sym"},
  "yes": true,
  "no": false,
  "nothing": null,
  "undefined": {"$undefined": true},
  "min": {"$minKey": 1},
  "max": {"$maxKey": 1},
  "ref": {"$ref": "collection", "$id": {"$oid": "57fd71e96e32ab4225b723fb"}, "$db": "database"},
  "nested": {"a": [1, "two", {"three": [3.25]}, []], "b": {}},
  "pointer": {"$dbPointer": {"$ref": "db.coll", "$id": {"$oid": "57e193d7a9cc81b4027498b5"}}}
}"#;

/// `doc`'s BSON with a DBPointer field appended (the bson crate cannot build one).
fn with_db_pointer(doc: &Document) -> Vec<u8> {
    let mut bytes = bson::to_vec(doc).unwrap();
    bytes.pop(); // the document's terminating NUL
    bytes.push(0x0C);
    bytes.extend_from_slice(b"pointer\0");
    bytes.extend_from_slice(&8_i32.to_le_bytes());
    bytes.extend_from_slice(b"db.coll\0");
    bytes.extend_from_slice(&oid("57e193d7a9cc81b4027498b5").bytes());
    bytes.push(0);
    let len = i32::try_from(bytes.len()).unwrap().to_le_bytes();
    bytes[..4].copy_from_slice(&len);
    bytes
}

struct Case {
    work: Workdir,
    url: String,
}

impl Case {
    fn new(name: &str) -> Case {
        let work = Workdir::new();
        work.write("config/schemas.yaml", CONFIG);
        std::fs::create_dir_all(work.path().join("dump/app")).unwrap();
        Case {
            work,
            url: fresh_database(name),
        }
    }

    fn dump(&self) -> PathBuf {
        self.work.path().join("dump/app")
    }

    fn write(&self, collection: &str, bytes: &[u8]) {
        std::fs::write(self.dump().join(format!("{collection}.bson")), bytes).unwrap();
    }

    fn etl(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut all = vec![("DATABASE_URL", self.url.as_str())];
        all.extend_from_slice(env);
        let out = self.work.etl(args, &all);
        assert!(
            out.status.success(),
            "etl {args:?}:\n{}\n{}",
            stdout(&out),
            stderr(&out)
        );
        out
    }

    fn run_dump(&self, extra: &[&str]) -> Output {
        let dump = self.dump().to_str().unwrap().to_string();
        let mut args = vec!["run", "--source", "dump", "--dump", &dump];
        args.extend_from_slice(extra);
        self.etl(&args, &[])
    }

    fn run_dir(&self) -> PathBuf {
        etl::staging::latest_run(&self.work.path().join("staging"), Stage::Extract)
            .unwrap()
            .unwrap()
            .root
    }
}

/// The keys whose values differ between `source_data` of row `id` and `expected`.
fn differing_keys(url: &str, id: &str, expected: &str) -> String {
    psql(
        url,
        &format!(
            "SELECT coalesce(string_agg(coalesce(s.key, e.key) || ': ' || coalesce(s.value::text, 'missing') \
             || ' <> ' || coalesce(e.value::text, 'missing'), E'\\n'), '') FROM \
             (SELECT * FROM jsonb_each((SELECT source_data FROM things WHERE id = '{id}'))) s \
             FULL JOIN jsonb_each('{}'::jsonb) e ON s.key = e.key WHERE s.value IS DISTINCT FROM e.value",
            expected.replace('\'', "''")
        ),
    )
    .trim()
    .to_string()
}

fn assert_source_data(url: &str, id: &str, expected: &str) {
    let same = psql(
        url,
        &format!(
            "SELECT source_data = '{}'::jsonb FROM things WHERE id = '{id}'",
            expected.replace('\'', "''")
        ),
    );
    assert_eq!(
        same.trim(),
        "t",
        "source_data of {id} differs from the specification's relaxed Extended JSON:\n{}",
        differing_keys(url, id, expected)
    );
}

/// Rejected rows of a table: (document id, reason).
fn rejects(run: &Path, table: &str) -> Vec<(String, String)> {
    let (_, batches) = read_batches(&run.join(format!("rejects/{table}.parquet"))).unwrap();
    let mut out = Vec::new();
    for b in batches {
        let col = |name: &str| {
            b.column_by_name(name)
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::StringArray>()
                .unwrap()
                .clone()
        };
        let (ids, reasons) = (col("document_id"), col("reason"));
        for i in 0..b.num_rows() {
            out.push((ids.value(i).to_string(), reasons.value(i).to_string()));
        }
    }
    out
}

#[test]
fn keep_source_round_trips_every_bson_type_into_jsonb() {
    let case = Case::new("keep_source");
    let mut bytes = with_db_pointer(&every_type());
    let small = doc! { "_id": "plain", "creation_date": at(0), "update_date": at(0), "label": "small", "extra": { "k": [1_i32, 2_i32] } };
    bytes.extend(bson::to_vec(&small).unwrap());
    // A NUL character in a field no column maps: jsonb cannot store it.
    let nul = doc! { "_id": "nul", "creation_date": at(0), "update_date": at(0), "label": "fine", "note": "a\u{0}b" };
    bytes.extend(bson::to_vec(&nul).unwrap());
    // Invalid UTF-8 in a field no column maps: the document has no JSON.
    let mut broken = bson::to_vec(&doc! { "_id": "broken", "creation_date": at(0), "update_date": at(0), "label": "ok", "note": "Xyz" }).unwrap();
    let x = broken.windows(3).position(|w| w == b"Xyz").unwrap();
    broken[x] = 0xff;
    bytes.extend(broken);
    case.write("things", &bytes);
    case.write(
        "notes",
        &bson::to_vec(
            &doc! { "_id": "n1", "creation_date": at(0), "update_date": at(0), "text": "hi" },
        )
        .unwrap(),
    );
    case.run_dump(&[]);

    assert_source_data(&case.url, "65e8aa000000000000000001", EVERY_TYPE_JSON);
    assert_source_data(
        &case.url,
        "plain",
        r#"{"_id": "plain", "creation_date": {"$date": "2024-03-01T00:00:00Z"}, "update_date": {"$date": "2024-03-01T00:00:00Z"}, "label": "small", "extra": {"k": [1, 2]}}"#,
    );
    // The mapped columns load as without keep_source.
    assert_eq!(
        psql(
            &case.url,
            "SELECT label FROM things WHERE id = '65e8aa000000000000000001'"
        )
        .trim(),
        "all types"
    );
    // Key order is the document's in the staged text (jsonb then orders keys its own way).
    let (_, staged) = read_batches(
        &case
            .run_dir()
            .join("extract/dump/things/part-00000.parquet"),
    )
    .unwrap();
    let docs = staged[0]
        .column_by_name("__document")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .unwrap()
        .clone();
    assert!(
        docs.value(1).starts_with(r#"{"_id":"plain","creation_date":{"$date":"2024-03-01T00:00:00Z"},"update_date":{"$date":"2024-03-01T00:00:00Z"},"label":"small""#),
        "{}",
        docs.value(1)
    );

    let rejected = rejects(&case.run_dir(), "things");
    let reason = |id: &str| {
        rejected
            .iter()
            .find(|(d, _)| d == id)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("{id} not rejected: {rejected:?}"))
    };
    assert!(
        reason("nul").contains("source_data") && reason("nul").contains("NUL"),
        "{}",
        reason("nul")
    );
    assert!(
        reason("broken").contains("cannot be kept as JSON") && reason("broken").contains("`note`"),
        "{}",
        reason("broken")
    );
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert_eq!(count(&case.url, "SELECT count(*) FROM things"), 2);
    // A table without keep_source has no such column, and its collection no staged document.
    assert_eq!(
        count(&case.url, "SELECT count(*) FROM information_schema.columns WHERE table_name = 'notes' AND column_name = 'source_data'"),
        0
    );
    let (schema, _) =
        read_batches(&case.run_dir().join("extract/dump/notes/part-00000.parquet")).unwrap();
    assert!(schema.field_with_name("__document").is_err());
}

#[test]
fn keep_documents_stages_every_collection_whole_without_changing_its_rows() {
    let case = Case::new("keep_documents");
    case.write(
        "things",
        &bson::to_vec(
            &doc! { "_id": "t1", "creation_date": at(0), "update_date": at(0), "label": "x" },
        )
        .unwrap(),
    );
    case.write(
        "notes",
        &bson::to_vec(&doc! { "_id": "n1", "creation_date": at(0), "update_date": at(0), "text": "hi", "unmapped": { "deep": true } }).unwrap(),
    );
    case.run_dump(&["--keep-documents"]);
    let (_, staged) =
        read_batches(&case.run_dir().join("extract/dump/notes/part-00000.parquet")).unwrap();
    let docs = staged[0]
        .column_by_name("__document")
        .expect("--keep-documents stages the document")
        .as_any()
        .downcast_ref::<arrow::array::StringArray>()
        .unwrap()
        .clone();
    assert_eq!(
        docs.value(0),
        r#"{"_id":"n1","creation_date":{"$date":"2024-03-01T00:00:00Z"},"update_date":{"$date":"2024-03-01T00:00:00Z"},"text":"hi","unmapped":{"deep":true}}"#
    );
    assert_eq!(
        psql(&case.url, "SELECT id || ':' || text FROM notes").trim(),
        "n1:hi"
    );
    // pyarrow (what users read staged files with) sees a plain text column.
    check_with_pyarrow(&case.run_dir(), &["extract:notes.__document=string"]);
}

#[test]
fn keep_source_reads_whole_documents_from_a_live_server() {
    let server = wire::FakeMongo::start();
    let tap = wire::Tap::start(server.addr(), None);
    let docs = vec![
        every_type(),
        doc! { "_id": "plain", "creation_date": at(0), "update_date": at(0), "label": "small", "extra": { "k": [1_i32, 2_i32] } },
    ];
    server.insert("app", "things", &docs);
    server.insert("app", "notes", &[doc! { "_id": "n1", "creation_date": at(0), "update_date": at(0), "text": "hi", "big": "x" }]);
    let case = Case::new("keep_source_live");
    let url = format!("mongodb://{}/?directConnection=true", tap.addr());
    let env = [("MONGODB_URL", url.as_str()), ("MONGODB_DATABASE", "app")];
    case.etl(&["run", "--source", "mongo"], &env);
    // Without the DBPointer, which the bson crate cannot build.
    let mut expected: serde_json::Value = serde_json::from_str(EVERY_TYPE_JSON).unwrap();
    expected.as_object_mut().unwrap().remove("pointer");
    assert_source_data(&case.url, "65e8aa000000000000000001", &expected.to_string());
    // The whole document is fetched for `things`; `notes` keeps its projection.
    let finds = tap.commands_named("find");
    let projection = |coll: &str| {
        finds
            .iter()
            .find(|c| c.get_str("find") == Ok(coll))
            .unwrap_or_else(|| panic!("no find on {coll}: {finds:?}"))
            .get_document("projection")
            .ok()
            .cloned()
    };
    assert_eq!(projection("things"), None);
    assert!(projection("notes").is_some_and(|p| !p.contains_key("big")));
    assert_eq!(server.unknown_commands(), Vec::<String>::new());
}
