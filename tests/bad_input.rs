//! Bad input never blocks a run, never panics and never changes data silently (issue 9).
//!
//! Each case writes a mongodump with the `bson` crate (valid documents, and bytes no driver
//! would write), runs the real `etl` on it into a fresh database of the test PostgreSQL, and
//! asserts the outcome: loaded (and how it reads back), rejected with its reason and raw value,
//! filtered by a stated rule, or refused with an error naming the file, collection and
//! document. Every case also checks that no `etl` run panicked (exit code 101) and that per
//! table extracted = transformed + rejected + filtered.

mod util;

use std::path::PathBuf;
use std::process::Output;

use bson::{doc, Bson, Document};
use etl::staging::{read_batches, Manifest, Stage};
use util::*;

/// The config of the suite: one table with a column of every type, a parent it references,
/// and a link table exploding an array of references.
const CONFIG: &str = r#"
owners:
  include_base: true
  additional_columns:
    - { name: name, sql_type: TEXT }
  export_order: 1

tags:
  include_base: true
  additional_columns:
    - { name: name, sql_type: TEXT }
  export_order: 1

things:
  include_base: true
  additional_columns:
    - { name: label, sql_type: VARCHAR(50) }
    - { name: qty, sql_type: INTEGER }
    - { name: small, sql_type: SMALLINT }
    - { name: big, sql_type: BIGINT }
    - { name: flag, sql_type: BOOLEAN }
    - { name: price, sql_type: "NUMERIC(10,2)" }
    - { name: amount, sql_type: NUMERIC }
    - { name: ratio, sql_type: DOUBLE PRECISION }
    - { name: at, sql_type: TIMESTAMP }
    - { name: at_tz, sql_type: TIMESTAMPTZ, source: at }
    - { name: day, sql_type: DATE, source: at }
    - { name: blob, sql_type: BYTEA }
    - { name: extra, sql_type: JSONB }
    - { name: owner_id, sql_type: VARCHAR, foreign_key: owners(id), source: owner }
  export_order: 2

things_tags:
  mongo_collection: things
  columns:
    - { name: thing_id, sql_type: VARCHAR, nullable: false, foreign_key: things(id) }
    - { name: tag_id, sql_type: VARCHAR, nullable: false, foreign_key: tags(id), source: element }
  unique: [thing_id, tag_id]
  explode: { parent_column: thing_id, arrays: [{ field: tags }] }
  export_order: 3
"#;

/// 2024-03-01T00:00:00Z plus `minutes`.
fn at(minutes: i64) -> bson::DateTime {
    bson::DateTime::from_millis(1_709_251_200_000 + minutes * 60_000)
}

/// A `things` document: `_id`, both dates, then `fields`.
fn thing(id: impl Into<Bson>, fields: Document) -> Document {
    let mut d = doc! { "_id": id.into(), "creation_date": at(0), "update_date": at(1) };
    d.extend(fields);
    d
}

/// A work dir with the suite's config, a dump folder and a fresh target database.
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

    fn dump_dir(&self) -> PathBuf {
        self.work.path().join("dump/app")
    }

    /// Writes `<collection>.bson` from documents.
    fn dump(&self, collection: &str, docs: &[Document]) {
        let bytes: Vec<u8> = docs.iter().flat_map(|d| bson::to_vec(d).unwrap()).collect();
        self.dump_bytes(&format!("{collection}.bson"), &bytes);
    }

    /// Writes a dump file as given (broken documents included).
    fn dump_bytes(&self, file: &str, bytes: &[u8]) {
        std::fs::write(self.dump_dir().join(file), bytes).unwrap();
    }

    /// `etl ARGS` against the case's database; never a panic.
    fn etl(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut all = vec![("DATABASE_URL", self.url.as_str())];
        all.extend_from_slice(env);
        let out = self.work.etl(args, &all);
        assert_ne!(
            out.status.code(),
            Some(101),
            "etl {args:?} panicked:\n{}",
            stderr(&out)
        );
        out
    }

    /// `etl run` on the dump; must succeed. Checks the counts add up.
    fn run(&self) -> Output {
        self.run_env(&[])
    }

    fn run_env(&self, env: &[(&str, &str)]) -> Output {
        let dump = self.dump_dir().to_str().unwrap().to_string();
        let out = self.etl(&["run", "--source", "dump", "--dump", &dump], env);
        assert!(
            out.status.success(),
            "etl run failed:\n{}\n{}",
            stdout(&out),
            stderr(&out)
        );
        self.counts_add_up();
        out
    }

    fn manifest(&self, stage: Stage) -> Manifest {
        etl::staging::latest_run(&self.work.path().join("staging"), stage)
            .unwrap()
            .unwrap()
            .manifest(stage)
            .unwrap()
    }

    fn counts_add_up(&self) {
        for e in &self.manifest(Stage::Transform).entries {
            let c = e.counts;
            assert_eq!(
                c.extracted,
                c.transformed + c.rejected + c.filtered,
                "counts of {} do not add up: {c:?}",
                e.name
            );
        }
    }

    fn counts(&self, table: &str) -> etl::staging::Counts {
        self.manifest(Stage::Transform)
            .entry(table)
            .unwrap_or_else(|| panic!("{table} not transformed"))
            .counts
    }

    /// (document_id, column, reason, raw_value) of a table's transform rejects.
    fn rejects(&self, table: &str) -> Vec<(String, String, String, String)> {
        let run = etl::staging::latest_run(&self.work.path().join("staging"), Stage::Transform)
            .unwrap()
            .unwrap();
        let path = run.rejects_dir().join(format!("{table}.parquet"));
        if !path.exists() {
            return Vec::new();
        }
        let (_, batches) = read_batches(&path).unwrap();
        let mut rows = Vec::new();
        for b in batches {
            let col = |name: &str| {
                let c = b.column_by_name(name).unwrap();
                arrow::array::AsArray::as_string::<i32>(c).clone()
            };
            let (id, column, reason, raw) = (
                col("document_id"),
                col("column"),
                col("reason"),
                col("raw_value"),
            );
            for i in 0..b.num_rows() {
                rows.push((
                    id.value(i).to_string(),
                    column.value(i).to_string(),
                    reason.value(i).to_string(),
                    raw.value(i).to_string(),
                ));
            }
        }
        rows
    }

    /// One value per line, from PostgreSQL in UTC.
    fn query(&self, sql: &str) -> Vec<String> {
        psql(&self.url, &format!("SET TIME ZONE 'UTC'; {sql}"))
            .lines()
            .map(str::to_string)
            .collect()
    }
}

fn ms(year: i32, month: u32, day: u32, hour: u32) -> i64 {
    chrono::NaiveDate::from_ymd_opt(year, month, day)
        .unwrap()
        .and_hms_opt(hour, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_millis()
}

/// Issue 9.2: years past 9999 and before 1 AD passed transform, then COPY failed on chrono's
/// `+20240-06-15` / `-0100-06-15` and nothing loaded. Now they load and read back as written;
/// a year beyond what TIMESTAMP holds is a reject.
#[test]
fn years_past_9999_and_bc_dates_load_and_read_back() {
    let case = Case::new("bad_years");
    let dates = [
        ("y20240", ms(20_240, 6, 15, 10)),
        ("bc101", ms(-100, 6, 15, 10)),
        ("bc1", ms(0, 12, 31, 23)),
        ("first", ms(-4713, 11, 24, 0)),
        ("y9999", ms(9_999, 12, 31, 23)),
    ];
    let mut docs: Vec<Document> = dates
        .iter()
        .map(|(id, ms)| thing(*id, doc! { "at": bson::DateTime::from_millis(*ms) }))
        .collect();
    docs.push(thing(
        "y300000",
        doc! { "at": bson::DateTime::from_millis(9_404_918_380_800_000) },
    ));
    docs.push(thing(
        "max",
        doc! { "at": bson::DateTime::from_millis(i64::MAX) },
    ));
    case.dump("things", &docs);
    case.run();
    assert_eq!(
        case.query("SELECT id || '|' || at || '|' || at_tz || '|' || day FROM things ORDER BY at"),
        [
            "first|4714-11-24 00:00:00 BC|4714-11-24 00:00:00+00 BC|4714-11-24 BC",
            "bc101|0101-06-15 10:00:00 BC|0101-06-15 10:00:00+00 BC|0101-06-15 BC",
            "bc1|0001-12-31 23:00:00 BC|0001-12-31 23:00:00+00 BC|0001-12-31 BC",
            "y9999|9999-12-31 23:00:00|9999-12-31 23:00:00+00|9999-12-31",
            "y20240|20240-06-15 10:00:00|20240-06-15 10:00:00+00|20240-06-15",
        ]
    );
    let rejects = case.rejects("things");
    assert_eq!(rejects.len(), 2, "{rejects:?}");
    let (id, column, reason, raw) = &rejects[0];
    assert_eq!((id.as_str(), column.as_str()), ("y300000", "at, at_tz"));
    assert!(
        reason.contains("at: date out of range for TIMESTAMP: year 300000"),
        "{reason}"
    );
    assert!(raw.contains("9404918380800000"), "{raw}");
    assert_eq!(rejects[1].0, "max");
    assert_eq!(case.counts("things").rejected, 2);
}

/// Issue 9.5: the same `_id` twice failed the first load on the primary key, and a load into
/// a loaded database with "ON CONFLICT DO UPDATE command cannot affect row a second time".
#[test]
fn a_repeated_id_loads_once_with_the_latest_copy() {
    let case = Case::new("bad_repeated_id");
    let tag = |i: u8| bson::oid::ObjectId::from_bytes([7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, i]);
    let tags: Vec<Document> = (1..=3)
        .map(|i| thing(tag(i), doc! { "name": format!("t{i}") }))
        .collect();
    case.dump("tags", &tags);
    let a = bson::oid::ObjectId::from_bytes([1; 12]);
    let copy = |id: Bson, label: &str, updated: i64, tags: Vec<Bson>| {
        let mut d = thing(id, doc! { "label": label, "tags": tags });
        d.insert("update_date", at(updated));
        d
    };
    case.dump(
        "things",
        &[
            copy(
                Bson::ObjectId(a),
                "old",
                5,
                vec![tag(1).into(), tag(2).into()],
            ),
            copy(Bson::String(a.to_hex()), "new", 9, vec![tag(3).into()]),
        ],
    );
    let out = case.run();
    assert!(stdout(&out).contains("duplicates"), "{}", stdout(&out));
    assert_eq!(
        case.query("SELECT id || '|' || label FROM things"),
        [format!("{}|new", a.to_hex())]
    );
    assert_eq!(
        case.query("SELECT tag_id FROM things_tags"),
        [tag(3).to_hex()],
        "the link rows of the kept copy only"
    );
    let c = case.counts("things");
    assert_eq!((c.transformed, c.filtered, c.duplicates), (1, 1, 1));

    // Into the loaded database, a newer dump still holding two copies.
    case.dump(
        "things",
        &[
            copy(Bson::ObjectId(a), "newest", 20, vec![tag(1).into()]),
            copy(Bson::ObjectId(a), "older", 15, vec![tag(2).into()]),
        ],
    );
    case.run();
    assert_eq!(case.query("SELECT label FROM things"), ["newest"]);
    assert_eq!(
        case.query("SELECT tag_id FROM things_tags"),
        [tag(1).to_hex()]
    );
}

/// The bytes of documents, with the first occurrence of `marker` given an invalid UTF-8 byte.
fn with_invalid_utf8(docs: &[Document], marker: &str) -> Vec<u8> {
    let mut bytes: Vec<u8> = docs.iter().flat_map(|d| bson::to_vec(d).unwrap()).collect();
    let at = bytes
        .windows(marker.len())
        .position(|w| w == marker.as_bytes())
        .unwrap_or_else(|| panic!("no {marker}"));
    bytes[at] = 0xff;
    bytes
}

/// Issue 9.6: one invalid UTF-8 string stopped the whole extract.
#[test]
fn invalid_utf8_rejects_its_document_with_its_bytes_and_the_rest_loads() {
    let case = Case::new("bad_utf8");
    let docs = [
        thing("ok1", doc! { "label": "fine" }),
        thing("bad", doc! { "label": "Xbroken" }),
        thing("ok2", doc! { "label": "fine too" }),
    ];
    case.dump_bytes("things.bson", &with_invalid_utf8(&docs, "Xbroken"));
    case.run();
    assert_eq!(
        case.query("SELECT id FROM things ORDER BY id"),
        ["ok1", "ok2"]
    );
    let rejects = case.rejects("things");
    assert_eq!(rejects.len(), 1, "{rejects:?}");
    let (id, column, reason, raw) = &rejects[0];
    assert_eq!((id.as_str(), column.as_str()), ("bad", "(document)"));
    assert!(
        reason.contains("malformed BSON at field `label`"),
        "{reason}"
    );
    let bytes = hex::encode(with_invalid_utf8(&docs[1..2], "Xbroken"));
    assert!(raw.contains(&bytes), "{raw}");
    let c = case.counts("things");
    assert_eq!((c.extracted, c.transformed, c.rejected), (3, 2, 1));
    assert_eq!(
        case.counts("things_tags").rejected,
        1,
        "counted in the link table too"
    );
}

/// Issue 9.7: values the reference tool loaded through PostgreSQL's input rules were
/// rejected, and a rejected parent orphaned its whole subtree. Each coerced value loads as
/// PostgreSQL would have read it, and is counted per column; what does not fit is still
/// rejected with its reason and raw value.
#[test]
fn postgresql_input_coercions_load_and_are_counted() {
    let case = Case::new("bad_coercions");
    case.dump("owners", &[thing("o42", doc! { "name": 42_i32 })]);
    case.dump(
        "things",
        &[
            thing(
                "a",
                doc! {
                    "label": 42_i32, "qty": "120", "small": " +7 ", "big": "9000000000",
                    "flag": "true", "price": 37.123456, "amount": " 1e3 ", "ratio": "1.5",
                    "owner": "o42",
                },
            ),
            thing(
                "b",
                doc! { "label": 1e20, "flag": 1_i32, "price": "1.005", "amount": "NaN" },
            ),
            thing("c", doc! { "label": 1.5, "flag": "OFF", "price": -0.125 }),
            // Still refused: letters into an integer, out of range, NaN into NUMERIC(10,2),
            // an integer part too large, a boolean 2, a non-integer into an integer.
            thing("r1", doc! { "qty": "12a" }),
            thing("r2", doc! { "small": "70000" }),
            thing("r3", doc! { "price": "NaN" }),
            thing("r4", doc! { "price": "123456789" }),
            thing("r5", doc! { "flag": 2_i32 }),
            thing("r6", doc! { "qty": 42.5 }),
        ],
    );
    let out = case.run();
    assert_eq!(
        case.query(
            "SELECT array_to_string(ARRAY[id, label, qty::text, small::text, big::text, \
             flag::text, price::text, amount::text, ratio::text, owner_id], '|', '-') \
             FROM things ORDER BY id"
        ),
        [
            "a|42|120|7|9000000000|true|37.12|1000|1.5|o42",
            "b|1e+20|-|-|-|true|1.01|NaN|-|-",
            "c|1.5|-|-|-|false|-0.13|-|-|-",
        ]
    );
    assert_eq!(case.query("SELECT name FROM owners"), ["42"]);
    let rejects = case.rejects("things");
    let got: Vec<(&str, &str, &str)> = rejects
        .iter()
        .map(|(id, _, reason, raw)| (id.as_str(), reason.as_str(), raw.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "r1",
                "qty: invalid input syntax for INTEGER",
                r#"{"qty":"\"12a\""}"#
            ),
            (
                "r2",
                "small: out of range for SMALLINT",
                r#"{"small":"\"70000\""}"#
            ),
            (
                "r3",
                "price: NaN does not fit NUMERIC(10,2)",
                r#"{"price":"\"NaN\""}"#
            ),
            (
                "r4",
                "price: `123456789` does not fit NUMERIC(10,2)",
                r#"{"price":"\"123456789\""}"#
            ),
            (
                "r5",
                "flag: only the integers 0 and 1 are BOOLEAN values",
                r#"{"flag":"2"}"#
            ),
            (
                "r6",
                "qty: non-integer value for INTEGER",
                r#"{"qty":"42.5"}"#
            ),
        ]
    );
    let entry = case.manifest(Stage::Transform);
    let things = entry.entry("things").unwrap();
    let coerced: Vec<(&str, u64)> = things
        .coerced
        .iter()
        .map(|(c, n)| (c.as_str(), *n))
        .collect();
    assert_eq!(
        coerced,
        [
            ("amount", 2),
            ("big", 1),
            ("flag", 3),
            ("label", 3),
            ("price", 1),
            ("qty", 1),
            ("ratio", 1),
            ("small", 1),
        ]
    );
    let rounded: Vec<(&str, u64)> = things
        .rounded
        .iter()
        .map(|(c, n)| (c.as_str(), *n))
        .collect();
    assert_eq!(rounded, [("price", 3)]);
    let summary = stdout(&out);
    let line = summary
        .lines()
        .skip_while(|l| !l.starts_with("transform:"))
        .find(|l| l.trim_start().starts_with("things "))
        .unwrap_or_else(|| panic!("{summary}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        &fields[6..9],
        ["0", "13", "3"],
        "duplicates, coerced, rounded: {line}"
    );
}

/// Issue 9.8: a UUID `_id` loaded as its extended JSON and an integer one as `12345`, while a
/// reference holding the same UUID or integer was refused: relationships to such documents
/// never loaded.
#[test]
fn uuid_and_integer_ids_load_and_references_to_them_resolve() {
    let case = Case::new("bad_id_kinds");
    let uuid = |subtype, last: u8| {
        let mut bytes: Vec<u8> = (0..16).map(|i| i * 17).collect();
        bytes[15] = last;
        Bson::Binary(bson::Binary { subtype, bytes })
    };
    use bson::spec::BinarySubtype::{Uuid, UuidOld};
    case.dump(
        "owners",
        &[
            thing(uuid(Uuid, 1), doc! { "name": "uuid owner" }),
            thing(12_345_i64, doc! { "name": "int owner" }),
        ],
    );
    case.dump(
        "tags",
        &[
            thing(7_i32, doc! { "name": "int tag" }),
            thing(uuid(UuidOld, 2), doc! { "name": "legacy uuid tag" }),
        ],
    );
    case.dump(
        "things",
        &[
            thing(
                "t1",
                doc! { "owner": uuid(Uuid, 1), "tags": [7_i32, uuid(UuidOld, 2)] },
            ),
            thing(
                "t2",
                doc! { "owner": 12_345_i32, "tags": [{ "_id": 7_i64 }] },
            ),
        ],
    );
    case.run();
    let u1 = "00112233-4455-6677-8899-aabbccddee01";
    let u2 = "00112233-4455-6677-8899-aabbccddee02";
    assert_eq!(
        case.query("SELECT id || '|' || name FROM owners ORDER BY id"),
        [format!("{u1}|uuid owner"), "12345|int owner".to_string()]
    );
    assert_eq!(
        case.query("SELECT id || '|' || owner_id FROM things ORDER BY id"),
        [format!("t1|{u1}"), "t2|12345".to_string()]
    );
    assert_eq!(
        case.query("SELECT thing_id || '|' || tag_id FROM things_tags ORDER BY 1"),
        [format!("t1|{u2}"), "t1|7".to_string(), "t2|7".to_string()]
    );
    for table in ["owners", "tags", "things", "things_tags"] {
        assert!(
            case.rejects(table).is_empty(),
            "{table}: {:?}",
            case.rejects(table)
        );
    }
    let load = case.manifest(Stage::Load);
    for e in &load.entries {
        assert_eq!(e.counts.rejected, 0, "orphans in {}", e.name);
    }
}

/// A document `{_id, creation_date, update_date, <key>: {<key>: ... {}}}` with `levels`
/// documents below `<key>`'s, as bytes (the bson crate would recurse building it).
fn deeply_nested(id: &str, key: &str, levels: usize) -> Vec<u8> {
    let head = bson::to_vec(&thing(id, doc! {})).unwrap();
    // The value: `levels + 1` documents, each holding the next under `key`.
    let per_level = 4 + 1 + key.len() + 1 + 1;
    let mut value = Vec::new();
    for level in 0..=levels {
        let inner = levels - level;
        value.extend(i32::try_from(5 + inner * per_level).unwrap().to_le_bytes());
        if inner > 0 {
            value.push(0x03);
            value.extend(key.as_bytes());
            value.push(0);
        }
    }
    value.extend(std::iter::repeat_n(0, levels + 1));
    // head without its terminator, then `key: value`, then the terminator.
    let mut doc = head[4..head.len() - 1].to_vec();
    doc.push(0x03);
    doc.extend(key.as_bytes());
    doc.push(0);
    doc.extend(value);
    doc.push(0);
    let mut out = i32::try_from(doc.len() + 4).unwrap().to_le_bytes().to_vec();
    out.extend(doc);
    out
}

/// Issue 9.9: about 5000 levels of nesting overflowed the stack (SIGABRT, nothing staged).
#[test]
fn nesting_beyond_mongodb_s_100_levels_is_a_reject_not_a_crash() {
    let case = Case::new("bad_nesting");
    let mut bytes = bson::to_vec(&thing("ok", doc! { "extra": { "a": [1_i32] } })).unwrap();
    bytes.extend(deeply_nested("deep", "extra", 5_000));
    bytes.extend(deeply_nested("label", "label", 5_000));
    case.dump_bytes("things.bson", &bytes);
    case.run();
    assert_eq!(
        case.query("SELECT id || '|' || extra FROM things"),
        [r#"ok|{"a": [1]}"#]
    );
    let rejects = case.rejects("things");
    let got: Vec<(&str, &str)> = rejects
        .iter()
        .map(|r| (r.0.as_str(), r.2.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "deep",
                "(document): field `extra` nests deeper than 100 levels (MongoDB's limit)"
            ),
            (
                "label",
                "(document): field `label` nests deeper than 100 levels (MongoDB's limit)"
            ),
        ]
    );
    assert!(
        rejects[0].3.starts_with(r#"{"(document)":"BSON hex: "#),
        "{}",
        rejects[0].3
    );
}

/// `etl run` on the dump; must fail (exit 1, not a panic). Returns stderr.
fn run_fails(case: &Case) -> String {
    let dump = case.dump_dir().to_str().unwrap().to_string();
    let out = case.etl(&["run", "--source", "dump", "--dump", &dump], &[]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected a refusal:\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    stderr(&out)
}

/// A dump cut in the middle of a document cannot be read past it: the run is refused with
/// the file, the collection and the byte where the cut document starts, and nothing loads.
#[test]
fn a_truncated_bson_file_is_refused_naming_file_collection_and_document() {
    let case = Case::new("bad_truncated");
    let docs: Vec<Document> = (0..3)
        .map(|i| thing(format!("t{i}"), doc! { "label": "x" }))
        .collect();
    let bytes: Vec<u8> = docs.iter().flat_map(|d| bson::to_vec(d).unwrap()).collect();
    let first = bson::to_vec(&docs[0]).unwrap().len();
    case.dump_bytes("things.bson", &bytes[..bytes.len() - 10]);
    let err = run_fails(&case);
    assert!(err.contains("things.bson"), "{err}");
    assert!(err.contains("(collection `app.things`)"), "{err}");
    assert!(
        err.contains(&format!("truncated document at byte {}", 2 * first)),
        "{err}"
    );
    assert_eq!(
        psql(
            &case.url,
            "SELECT count(*) FROM pg_tables WHERE tablename = 'things'"
        )
        .trim(),
        "0",
        "nothing loaded"
    );
}

#[test]
fn a_truncated_gzip_file_is_refused_naming_file_and_collection() {
    use std::io::Write;
    let case = Case::new("bad_truncated_gz");
    let docs: Vec<Document> = (0..200)
        .map(|i| thing(format!("t{i}"), doc! { "label": format!("label {i}") }))
        .collect();
    let bytes: Vec<u8> = docs.iter().flat_map(|d| bson::to_vec(d).unwrap()).collect();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&bytes).unwrap();
    let gz = gz.finish().unwrap();
    case.dump_bytes("things.bson.gz", &gz[..gz.len() / 2]);
    let err = run_fails(&case);
    assert!(err.contains("things.bson.gz"), "{err}");
    assert!(err.contains("(collection `app.things`)"), "{err}");
    assert!(err.contains("of the decompressed stream"), "{err}");
}

/// What happens to one document of the mixed-bag case.
enum Outcome {
    /// Loaded; the column's text in PostgreSQL.
    Loaded(&'static str, &'static str),
    /// Rejected; a part of the reason and of the raw value.
    Rejected(&'static str, &'static str),
}

/// Wrong types, NUL bytes, a 5 MB string and the Extended JSON types in mapped fields: each
/// document ends loaded (and reads back as stated) or rejected with its reason and raw value.
#[test]
fn wrong_types_nul_bytes_long_strings_and_extended_json_types() {
    use bson::spec::BinarySubtype;
    use Outcome::{Loaded, Rejected};
    let case = Case::new("bad_values");
    let five_mb = "é".repeat(2_500_000);
    let binary = Bson::Binary(bson::Binary {
        subtype: BinarySubtype::Generic,
        bytes: vec![0, 1, 0xff],
    });
    let decimal = |s: &str| Bson::Decimal128(s.parse().unwrap());
    let regex = Bson::RegularExpression(bson::Regex {
        pattern: "^a.*".into(),
        options: "i".into(),
    });
    let timestamp = Bson::Timestamp(bson::Timestamp {
        time: 1_700_000_000,
        increment: 3,
    });
    let cases: Vec<(&str, Document, Outcome)> = vec![
        // Wrong types.
        (
            "obj_int",
            doc! { "qty": { "n": 1_i32 } },
            Rejected("qty: wrong type for INTEGER", r#"{\"n\":1}"#),
        ),
        (
            "arr_text",
            doc! { "label": ["a"] },
            Rejected("label: wrong type for VARCHAR(50)", r#"[\"a\"]"#),
        ),
        (
            "str_date",
            doc! { "at": "yesterday" },
            Rejected("at: unparseable date", "yesterday"),
        ),
        (
            "bool_num",
            doc! { "ratio": true },
            Rejected("ratio: wrong type for DOUBLE PRECISION", "true"),
        ),
        (
            "str_bytea",
            doc! { "blob": "dead" },
            Rejected("blob: wrong type for BYTEA", "dead"),
        ),
        // NUL bytes and long strings.
        (
            "nul",
            doc! { "label": "a\u{0}b" },
            Rejected("label: NUL byte in text", r"a\\0b"),
        ),
        (
            "long_varchar",
            doc! { "label": five_mb.as_str() },
            Rejected("label: 2500000 characters, longer than VARCHAR(50)", "éé"),
        ),
        // Extended JSON types in mapped fields.
        (
            "dec_price",
            doc! { "price": decimal("12.345") },
            Loaded("price", "12.35"),
        ),
        (
            "dec_text",
            doc! { "label": decimal("1.05E+3") },
            Loaded("label", "1050"),
        ),
        (
            "dec_nan",
            doc! { "price": decimal("NaN") },
            Rejected("price: NaN does not fit NUMERIC(10,2)", "$numberDecimal"),
        ),
        (
            "i64_int",
            doc! { "qty": 3_000_000_000_i64 },
            Rejected("qty: out of range for INTEGER", "3000000000"),
        ),
        (
            "i64_big",
            doc! { "big": 3_000_000_000_i64 },
            Loaded("big", "3000000000"),
        ),
        (
            "bin_text",
            doc! { "label": binary.clone() },
            Rejected("label: wrong type for VARCHAR(50)", "$binary"),
        ),
        (
            "bin_bytea",
            doc! { "blob": binary.clone() },
            Loaded("encode(blob, 'hex')", "0001ff"),
        ),
        (
            "regex_text",
            doc! { "label": regex.clone() },
            Rejected("label: wrong type for VARCHAR(50)", "$regularExpression"),
        ),
        (
            "regex_json",
            doc! { "extra": regex },
            Loaded("extra->'$regularExpression'->>'pattern'", "^a.*"),
        ),
        (
            "ts_date",
            doc! { "at": timestamp.clone() },
            Rejected("at: unparseable date", "$timestamp"),
        ),
        (
            "ts_int",
            doc! { "big": timestamp },
            Rejected("big: wrong type for BIGINT", "$timestamp"),
        ),
        (
            "minkey_text",
            doc! { "label": Bson::MinKey },
            Rejected("label: wrong type for VARCHAR(50)", "$minKey"),
        ),
        (
            "maxkey_json",
            doc! { "extra": Bson::MaxKey },
            Loaded("extra::text", r#"{"$maxKey": 1}"#),
        ),
    ];
    let docs: Vec<Document> = cases
        .iter()
        .map(|(id, fields, _)| thing(*id, fields.clone()))
        .collect();
    // The 5 MB string also loads whole into a TEXT column.
    case.dump("owners", &[thing("big", doc! { "name": five_mb.as_str() })]);
    case.dump("things", &docs);
    case.run();
    assert_eq!(
        case.query("SELECT length(name) || '|' || octet_length(name) FROM owners"),
        ["2500000|5000000"]
    );
    let rejects = case.rejects("things");
    for (id, _, outcome) in &cases {
        match outcome {
            Loaded(column, text) => {
                let got = case.query(&format!("SELECT {column} FROM things WHERE id = '{id}'"));
                assert_eq!(got, [*text], "{id}: {rejects:?}");
            }
            Rejected(reason, raw) => {
                let r = rejects
                    .iter()
                    .find(|r| r.0 == *id)
                    .unwrap_or_else(|| panic!("{id} not rejected"));
                assert!(r.2.contains(reason), "{id}: {}", r.2);
                assert!(r.3.contains(raw), "{id}: {}", &r.3[..r.3.len().min(200)]);
            }
        }
    }
    let rejected = cases.iter().filter(|c| matches!(c.2, Rejected(..))).count();
    assert_eq!(rejects.len(), rejected);
    assert_eq!(case.counts("things").rejected, rejected as u64);
}

/// Arrays mixing ids of every kind with values that are not ids: ids load, nulls are
/// filtered by a stated rule, the rest is rejected per element with its raw value.
#[test]
fn mixed_arrays_in_link_tables() {
    let case = Case::new("bad_mixed_arrays");
    let tag = bson::oid::ObjectId::from_bytes([9; 12]);
    case.dump(
        "tags",
        &[
            thing(tag, doc! {}),
            thing("s1", doc! {}),
            thing(42_i32, doc! {}),
            thing("e1", doc! {}),
        ],
    );
    case.dump(
        "things",
        &[thing(
            "t",
            doc! { "tags": [tag, "s1", 42_i64, Bson::Null, 4.5, ["nested"], { "_id": "e1", "w": 1_i32 }, { "w": 2_i32 }, tag] },
        )],
    );
    case.run();
    assert_eq!(
        case.query("SELECT tag_id FROM things_tags ORDER BY tag_id COLLATE \"C\""),
        [tag.to_hex().as_str(), "42", "e1", "s1"]
    );
    let c = case.counts("things_tags");
    assert_eq!(
        (c.extracted, c.transformed, c.rejected, c.filtered),
        (9, 4, 3, 2),
        "null and the repeated id filtered"
    );
    let rules = &case
        .manifest(Stage::Transform)
        .entry("things_tags")
        .unwrap()
        .filtered_by_rule
        .clone();
    assert_eq!(rules.get("null element in `tags`"), Some(&1));
    assert_eq!(rules.get("duplicate element in `tags`"), Some(&1));
    let raws: Vec<String> = case
        .rejects("things_tags")
        .into_iter()
        .map(|r| r.3)
        .collect();
    assert_eq!(
        raws,
        [
            r#"{"tag_id":"4.5"}"#,
            r#"{"tag_id":"[\"nested\"]"}"#,
            r#"{"tag_id":"{\"w\":2}"}"#
        ]
    );
}

/// Issue 9.4: a document without `_id` in a collection feeding a link table aborted the
/// transform with an internal Arrow error naming no table or document.
#[test]
fn documents_without_id_are_rejected_and_the_rest_loads() {
    let case = Case::new("bad_no_id");
    case.dump("tags", &[thing("g", doc! {})]);
    let mut missing = thing("x", doc! { "label": "no id", "tags": ["g"] });
    missing.remove("_id");
    case.dump(
        "things",
        &[
            thing("t", doc! { "tags": ["g"] }),
            missing,
            thing(Bson::Null, doc! { "label": "null id", "tags": ["g"] }),
        ],
    );
    case.run();
    assert_eq!(case.query("SELECT id FROM things"), ["t"]);
    assert_eq!(case.query("SELECT thing_id FROM things_tags"), ["t"]);
    for table in ["things", "things_tags"] {
        let rejects = case.rejects(table);
        assert_eq!(rejects.len(), 2, "{table}: {rejects:?}");
        assert!(rejects
            .iter()
            .all(|r| r.2 == "_id: document without `_id` (missing or null)"));
    }
}
