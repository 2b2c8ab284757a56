//! Transform on small named cases: each builds a mongodump, runs the real `etl extract` and
//! `etl transform` (no database), and compares the transform output with a golden file
//! `tests/fixtures/transform/<case>.txt`. `ETL_BLESS=1 cargo test --test transform`
//! rewrites the golden files; review the diff before committing it.
//!
//! Besides the golden text, each case asserts the facts it is about, and every case checks
//! that per table extracted = transformed + rejected + filtered.

mod util;

use std::path::{Path, PathBuf};

use bson::{doc, Bson, Document};
use etl::staging::{read_batches, Manifest};
use util::smartdiet::{at, oid, write_collection};
use util::*;

/// One case: documents per collection, an optional config edit, extra environment.
struct Case {
    name: &'static str,
    work: Workdir,
}

impl Case {
    fn new(name: &'static str, collections: &[(&str, Vec<Document>)]) -> Case {
        let work = Workdir::new();
        let db = work.path().join("dump/app");
        std::fs::create_dir_all(&db).unwrap();
        for (collection, docs) in collections {
            write_collection(&db, collection, docs.iter());
        }
        Case { name, work }
    }

    fn edit_config(&self, from: &str, to: &str) {
        let path = self.work.path().join("config/schemas.yaml");
        let yaml = std::fs::read_to_string(&path).unwrap();
        assert!(yaml.contains(from), "config has no `{from}`");
        std::fs::write(&path, yaml.replacen(from, to, 1)).unwrap();
    }

    /// extract (everything) + transform; returns the transform manifest.
    fn run(&self, env: &[(&str, &str)]) -> Manifest {
        let dump = self.work.path().join("dump/app");
        self.work.extract_transform_dump(&dump, &["--full"], env);
        let run = etl::staging::latest_run(
            &self.work.path().join("staging"),
            etl::staging::Stage::Transform,
        )
        .unwrap()
        .unwrap();
        let manifest = run.manifest(etl::staging::Stage::Transform).unwrap();
        for e in &manifest.entries {
            let c = e.counts;
            assert_eq!(
                c.extracted,
                c.transformed + c.rejected + c.filtered,
                "counts of {} do not add up: {c:?}",
                e.name
            );
        }
        manifest
    }

    fn run_dir(&self) -> PathBuf {
        etl::staging::latest_run(
            &self.work.path().join("staging"),
            etl::staging::Stage::Transform,
        )
        .unwrap()
        .unwrap()
        .root
    }

    /// Rows, parents and rejects of `tables` as text, compared with the golden file.
    fn check(&self, manifest: &Manifest, tables: &[&str]) -> String {
        let run = self.run_dir();
        let mut text = String::new();
        for table in tables {
            let e = manifest
                .entry(table)
                .unwrap_or_else(|| panic!("{table} not transformed"));
            let c = e.counts;
            text.push_str(&format!(
                "== {table}: extracted {} transformed {} rejected {} filtered {}\n",
                c.extracted, c.transformed, c.rejected, c.filtered
            ));
            for (rule, n) in &e.filtered_by_rule {
                text.push_str(&format!("   filtered by `{rule}`: {n}\n"));
            }
            text.push_str(&pretty(&run.join("transform"), &e.files));
            if !e.parent_files.is_empty() {
                text.push_str("parents:\n");
                text.push_str(&pretty(&run.join("transform"), &e.parent_files));
            }
            let rejects = run.join("rejects").join(format!("{table}.parquet"));
            if rejects.exists() {
                text.push_str("rejects:\n");
                let (_, batches) = read_batches(&rejects).unwrap();
                text.push_str(
                    &arrow::util::pretty::pretty_format_batches(&batches)
                        .unwrap()
                        .to_string(),
                );
                text.push('\n');
            }
        }
        let golden = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/transform")
            .join(format!("{}.txt", self.name));
        if std::env::var_os("ETL_BLESS").is_some() {
            std::fs::create_dir_all(golden.parent().unwrap()).unwrap();
            std::fs::write(&golden, &text).unwrap();
        }
        let expected = std::fs::read_to_string(&golden).unwrap_or_else(|_| {
            panic!(
                "no golden file {}: run with ETL_BLESS=1 to create it",
                golden.display()
            )
        });
        assert_eq!(
            text, expected,
            "transform output of case `{}` changed",
            self.name
        );
        text
    }
}

fn pretty(dir: &Path, files: &[etl::staging::FileEntry]) -> String {
    let mut batches = Vec::new();
    for f in files {
        batches.extend(read_batches(&dir.join(&f.path)).unwrap().1);
    }
    let mut s = arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string();
    s.push('\n');
    s
}

fn user(i: usize, extra: Document) -> Document {
    let mut d = doc! {
        "_id": oid(4, i), "firstname": format!("F{i}"), "lastname": format!("L{i}"),
        "creation_date": at(i as i64), "update_date": at(i as i64 + 1),
    };
    d.extend(extra);
    d
}

fn hex(tag: u8, i: usize) -> String {
    oid(tag, i).to_hex()
}

#[test]
fn link_tables_from_ids_embedded_documents_nulls_and_duplicates() {
    let case = Case::new(
        "link_tables",
        &[(
            "users",
            vec![
                // Ids and embedded documents mixed, a null element, a duplicate id.
                user(
                    1,
                    doc! { "registered_events": [oid(2, 1), { "_id": oid(2, 2), "name": "embedded" }, Bson::Null, oid(2, 1)] },
                ),
                // An emptied array and a removed one: no rows, but the parents are listed.
                user(2, doc! { "registered_events": [] }),
                user(3, doc! {}),
                // An element that is neither an id nor a document with `_id` (an integer
                // is an id since issue 9.8: a double is not).
                user(4, doc! { "registered_events": [4.5, oid(2, 3)] }),
                // Three arrays into one table with a type column.
                user(
                    5,
                    doc! { "targets": [oid(3, 1)], "specificity_targets": [oid(3, 1)], "health_targets": [oid(3, 2), "plain-string-id"] },
                ),
            ],
        )],
    );
    let manifest = case.run(&[]);
    let text = case.check(&manifest, &["user_events", "users_targets"]);

    let events = manifest.entry("user_events").unwrap().counts;
    assert_eq!(
        (events.transformed, events.rejected, events.filtered),
        (3, 1, 2),
        "{text}"
    );
    // Every user is a parent whose children are replaced, even without an array.
    for i in 1..=5 {
        assert!(
            text.contains(&hex(4, i)),
            "user {i} missing from parents:\n{text}"
        );
    }
    assert!(
        text.contains("neither an id nor a document with `_id`")
            && text.contains(r#"{"event_id":"4.5"}"#),
        "{text}"
    );
    let targets = manifest.entry("users_targets").unwrap().counts;
    assert_eq!(
        targets.transformed, 4,
        "basic + specificity (same id, other type) + two health: {text}"
    );
}

#[test]
fn a_document_failing_three_columns_gives_one_reject_with_every_reason() {
    let long = "x".repeat(300);
    let case = Case::new(
        "three_failures",
        &[(
            "users",
            vec![
                user(1, doc! {}),
                // firstname missing (NOT NULL), lastname longer than VARCHAR(255), birthday not a date.
                doc! { "_id": oid(4, 2), "lastname": long.as_str(), "birthday": "not a date", "creation_date": at(2), "update_date": at(3) },
                // NUL byte in text, and a string date that parses.
                user(
                    3,
                    doc! { "email": "a\u{0}b", "birthday": "1990-05-17T00:00:00Z" },
                ),
            ],
        )],
    );
    let manifest = case.run(&[]);
    let text = case.check(&manifest, &["users"]);
    let users = manifest.entry("users").unwrap().counts;
    assert_eq!((users.transformed, users.rejected), (1, 2), "{text}");
    let reject_line = text.lines().find(|l| l.contains(&hex(4, 2))).unwrap();
    for reason in [
        "firstname: NULL in NOT NULL column",
        "lastname: 300 characters, longer than VARCHAR(255)",
        "birthday: unparseable date",
    ] {
        assert!(
            reject_line.contains(reason),
            "{reason} missing: {reject_line}"
        );
    }
    assert!(text.contains("email: NUL byte in text"), "{text}");
}

#[test]
fn logbook_duplicates_across_files_become_one_row_per_user_and_day() {
    let doc = |i: usize, user: Option<usize>, day_minutes: i64, created: i64, updated: i64| {
        let mut d = doc! { "_id": oid(15, i), "day": at(day_minutes), "creation_date": at(created), "update_date": at(updated) };
        if let Some(u) = user {
            d.insert("user", oid(4, u));
        }
        d
    };
    let case = Case::new(
        "logbook_dedupe",
        &[(
            "coachinglogbooks",
            vec![
                doc(1, Some(1), 0, 50, 60),
                doc(2, Some(2), 0, 10, 11),
                doc(3, None, 0, 1, 1),          // no user: filtered
                doc(4, Some(1), 30, 20, 90),    // same user, same day (00:30): merged
                doc(5, Some(1), 24 * 60, 5, 5), // next day: its own row
                doc(6, Some(1), 60, 70, 71),    // same day again, in another file
            ],
        )],
    );
    // Two documents per staged file, so duplicates are spread over three files.
    let manifest = case.run(&[("ETL_PART_ROWS", "2")]);
    let extract = etl::staging::latest_run(
        &case.work.path().join("staging"),
        etl::staging::Stage::Extract,
    )
    .unwrap()
    .unwrap();
    let staged = extract.manifest(etl::staging::Stage::Extract).unwrap();
    assert_eq!(staged.entry("coachinglogbooks").unwrap().files.len(), 3);
    let text = case.check(&manifest, &["users_logbook"]);
    let c = manifest.entry("users_logbook").unwrap().counts;
    assert_eq!(
        (c.extracted, c.transformed, c.filtered),
        (6, 3, 3),
        "{text}"
    );
    // User 1 on day one: earliest created (20 min), latest updated (90 min).
    assert!(
        text.contains(&format!(
            "| {} | 2024-03-01 | 2024-03-01T00:20:00 | 2024-03-01T01:30:00 |",
            hex(4, 1)
        )),
        "{text}"
    );
}

#[test]
fn dates_near_midnight_follow_the_configured_time_zone() {
    let case = Case::new(
        "date_time_zone",
        &[(
            "days",
            vec![doc! {
                "_id": oid(14, 1), "period": oid(13, 1), "is_success": true,
                // 23:30 UTC on March 6 is 00:30 on March 7 in Paris.
                "date": bson::DateTime::from_millis(1_709_767_800_000),
                "creation_date": at(0), "update_date": at(0),
            }],
        )],
    );
    case.edit_config(
        "days:\n  include_base: true\n",
        "days:\n  include_base: true\n  time_zone: Europe/Paris\n",
    );
    let manifest = case.run(&[]);
    let text = case.check(&manifest, &["days"]);
    assert!(text.contains("| 2024-03-07 |"), "{text}");
}

#[test]
fn transform_is_deterministic() {
    let docs: Vec<Document> = (0..200)
        .map(|i| user(i, doc! { "targets": [oid(3, i % 7), oid(3, (i + 1) % 7)] }))
        .collect();
    let case = Case::new("deterministic", &[("users", docs)]);
    let digest = |m: &Manifest| {
        m.entries
            .iter()
            .flat_map(|e| e.files.iter().map(|f| f.sha256.clone()))
            .collect::<Vec<_>>()
    };
    let first = case.run(&[("RAYON_NUM_THREADS", "2"), ("ETL_PART_ROWS", "64")]);
    let second = case.run(&[("RAYON_NUM_THREADS", "1"), ("ETL_PART_ROWS", "64")]);
    assert_eq!(digest(&first), digest(&second));
}

#[test]
fn every_smartdiet_table_from_the_sample() {
    let sizes = util::smartdiet::Sizes::for_users(10);
    let mut rng = util::smartdiet::Lcg::new(42);
    let users: Vec<Document> = (0..10)
        .map(|i| util::smartdiet::user(i, &sizes, &mut rng))
        .collect();
    let mut collections: Vec<(&str, Vec<Document>)> = util::smartdiet::other_collections(&sizes);
    collections.push(("users", users));
    let case = Case::new("smartdiet_all_tables", &collections);
    let manifest = case.run(&[]);
    let text = case.check(&manifest, SMARTDIET_TABLES);
    assert_eq!(manifest.entries.len(), 30, "{text}");
    // Spot checks of the renamed and computed columns (the golden file holds the rest).
    assert!(text.contains("| days_numbers | coaching_id"), "{text}");
    assert_eq!(
        manifest.entry("users_logbook").unwrap().counts.filtered,
        10,
        "15 logbooks: 2 without user, 8 merged"
    );
}

/// Issue 9.4: a null or missing `_id` in a collection feeding a link table aborted the whole
/// transform (`parents: ... Column 'parent' is declared as non-nullable`).
#[test]
fn documents_without_id_are_rejected_and_the_run_goes_on() {
    let no_id = |i: usize, id: Option<Bson>| {
        let mut d = user(i, doc! { "registered_events": [oid(2, i)] });
        match id {
            Some(id) => d.insert("_id", id),
            None => d.remove("_id"),
        };
        d
    };
    let case = Case::new(
        "missing_ids",
        &[(
            "users",
            vec![
                user(1, doc! { "registered_events": [oid(2, 1)] }),
                no_id(2, None),
                no_id(3, Some(Bson::Null)),
                // No `_id` and no elements: nothing for the link table to count.
                {
                    let mut d = user(4, doc! {});
                    d.remove("_id");
                    d
                },
            ],
        )],
    );
    let manifest = case.run(&[]);
    let text = case.check(&manifest, &["users", "user_events"]);
    let users = manifest.entry("users").unwrap().counts;
    assert_eq!((users.transformed, users.rejected), (1, 3), "{text}");
    let events = manifest.entry("user_events").unwrap().counts;
    assert_eq!((events.transformed, events.rejected), (1, 2), "{text}");
    assert_eq!(
        text.matches("_id: document without `_id` (missing or null)")
            .count(),
        5,
        "one reason per refused row, no NOT NULL noise: {text}"
    );
    assert!(!text.contains("NOT NULL"), "{text}");
}

/// Issue 9.5: the same `_id` twice (a mongodump without `--oplog`) went through, and the load
/// failed on the primary key, or with "ON CONFLICT DO UPDATE command cannot affect row a
/// second time".
#[test]
fn a_repeated_id_keeps_the_latest_copy_and_counts_the_others() {
    let copy = |id: Bson, name: &str, updated: Option<i64>, events: Vec<Bson>| {
        let mut d = doc! {
            "_id": id, "firstname": name, "lastname": "L",
            "creation_date": at(0), "registered_events": events,
        };
        if let Some(u) = updated {
            d.insert("update_date", at(u));
        }
        d
    };
    let a = oid(4, 1);
    let b = oid(4, 2);
    let case = Case::new(
        "repeated_ids",
        &[(
            "users",
            vec![
                copy(
                    Bson::ObjectId(a),
                    "a-new",
                    Some(50),
                    vec![oid(2, 1).into(), oid(2, 2).into()],
                ),
                copy(
                    Bson::ObjectId(b),
                    "b-first",
                    Some(10),
                    vec![oid(2, 3).into()],
                ),
                copy(
                    Bson::ObjectId(oid(4, 3)),
                    "single",
                    Some(1),
                    vec![oid(2, 1).into()],
                ),
                // Same hex as `a`, as a string, older: loses to the ObjectId copy.
                copy(
                    Bson::String(a.to_hex()),
                    "a-old",
                    Some(20),
                    vec![oid(2, 9).into()],
                ),
                // `b` again with the same update_date: the later copy wins.
                copy(
                    Bson::ObjectId(b),
                    "b-second",
                    Some(10),
                    vec![oid(2, 4).into()],
                ),
            ],
        )],
    );
    // Two documents per staged file: the copies are in different files.
    let manifest = case.run(&[("ETL_PART_ROWS", "2")]);
    let text = case.check(&manifest, &["users", "user_events"]);
    let users = manifest.entry("users").unwrap().counts;
    assert_eq!(
        (
            users.extracted,
            users.transformed,
            users.filtered,
            users.duplicates
        ),
        (5, 3, 2, 2),
        "{text}"
    );
    for kept in ["a-new", "b-second", "single"] {
        assert!(text.contains(&format!("| {kept} ")), "{kept}: {text}");
    }
    for lost in ["a-old", "b-first"] {
        assert!(!text.contains(lost), "{lost}: {text}");
    }
    // Link rows only from the kept copies: a's two events, b's second, single's one.
    let events = manifest.entry("user_events").unwrap().counts;
    assert_eq!(
        (
            events.extracted,
            events.transformed,
            events.filtered,
            events.duplicates
        ),
        (6, 4, 2, 2),
        "{text}"
    );
    assert!(
        !text.contains(&hex(2, 9)) && !text.contains(&hex(2, 3)),
        "{text}"
    );
    assert_eq!(
        text.matches(&a.to_hex()).count(),
        1 + 2 + 1,
        "row, events, parent: {text}"
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

/// Issue 9.6: one invalid UTF-8 string stopped the whole extract. The document is rejected
/// with its BSON bytes in every table of its collection; the others go on.
#[test]
fn a_document_with_invalid_utf8_is_rejected_in_every_table_of_its_collection() {
    let docs = vec![
        user(1, doc! { "registered_events": [oid(2, 1)] }),
        user(
            2,
            doc! { "firstname": "Xbroken", "registered_events": [oid(2, 2)], "targets": [oid(3, 1)] },
        ),
        user(3, doc! { "targets": [oid(3, 2)] }),
    ];
    let case = Case::new("invalid_utf8", &[("users", docs.clone())]);
    std::fs::write(
        case.work.path().join("dump/app/users.bson"),
        with_invalid_utf8(&docs, "Xbroken"),
    )
    .unwrap();
    let manifest = case.run(&[]);
    let text = case.check(&manifest, &["users", "user_events", "users_targets"]);
    for (table, transformed) in [("users", 2), ("user_events", 1), ("users_targets", 1)] {
        let c = manifest.entry(table).unwrap().counts;
        assert_eq!(
            (c.transformed, c.rejected),
            (transformed, 1),
            "{table}: {text}"
        );
    }
    assert_eq!(
        text.matches("(document): malformed BSON at field `firstname`")
            .count(),
        3,
        "{text}"
    );
    let bson_hex = hex::encode(with_invalid_utf8(&docs[1..2], "Xbroken"));
    assert!(text.contains(&bson_hex[..40]), "the raw bytes: {text}");
    assert_eq!(
        text.matches(&format!("| {} | (document) |", hex(4, 2)))
            .count(),
        3,
        "named by its `_id` in each table: {text}"
    );
}
