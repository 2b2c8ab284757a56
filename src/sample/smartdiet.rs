//! A deterministic SmartDiet-like MongoDB database written as a real mongodump folder
//! (`<dir>/<db>/<collection>.bson`), for `etl sample`, the tests and `make bench`.
//!
//! Every collection of `config/schemas.yaml` gets documents whose references point at each
//! other, so a full load has no orphans; `users` scales with `users` and is streamed to disk.
//! The output is the same on every machine and every run: tests assert on it.

use std::io::Write;
use std::path::{Path, PathBuf};

use bson::oid::ObjectId;
use bson::{doc, Bson, DateTime, Document};

use super::SampleError;

/// The database folder inside the dump.
pub const DB: &str = "smartdiet";

/// A small pseudo-random generator (no extra crate, same output everywhere).
pub struct Lcg(u64);

impl Lcg {
    pub fn new(seed: u64) -> Lcg {
        Lcg(seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    /// A value in `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        let n = u64::try_from(n.max(1)).unwrap_or(u64::MAX);
        // The remainder is below n, which came from a usize.
        usize::try_from(self.next_u64() % n).unwrap_or(0)
    }
}

/// `i` as an i64 (saturating: sample sizes never get near it).
fn int(i: usize) -> i64 {
    i64::try_from(i).unwrap_or(i64::MAX)
}

/// `i` as an i32 for small document fields (saturating).
fn int32(i: usize) -> i32 {
    i32::try_from(i).unwrap_or(i32::MAX)
}

/// A deterministic ObjectId: collection tag + index.
pub fn oid(tag: u8, i: usize) -> ObjectId {
    let mut bytes = [0u8; 12];
    bytes[0] = 0x65;
    bytes[1] = tag;
    bytes[4..12].copy_from_slice(&u64::try_from(i).unwrap_or(u64::MAX).to_be_bytes());
    ObjectId::from_bytes(bytes)
}

/// 2024-03-01T00:00:00Z plus `minutes`.
pub fn at(minutes: i64) -> DateTime {
    DateTime::from_millis(1_709_251_200_000_i64.saturating_add(minutes.saturating_mul(60_000)))
}

fn stamp(d: &mut Document, created: i64, updated: i64) {
    d.insert("creation_date", at(created));
    d.insert("update_date", at(updated));
}

/// Sizes of the other collections, derived from the number of users.
pub struct Sizes {
    pub users: usize,
    pub small: usize,
}

impl Sizes {
    pub fn for_users(users: usize) -> Sizes {
        Sizes {
            users,
            small: (users / 10).clamp(5, 1000),
        }
    }
}

const TAG_COMPANY: u8 = 1;
const TAG_EVENT: u8 = 2;
const TAG_TARGET: u8 = 3;
/// Users' ids: `oid(TAG_USER, i)` is the `i`-th user (Matomo visits point at them too).
pub const TAG_USER: u8 = 4;
const TAG_RECIPE: u8 = 5;
const TAG_MENU: u8 = 6;
const TAG_QUIZZ: u8 = 7;
const TAG_QUESTION: u8 = 8;
const TAG_CONTENT: u8 = 9;
const TAG_COACHING: u8 = 10;
const TAG_USERQUIZZ: u8 = 11;
const TAG_USERQUESTION: u8 = 12;
const TAG_PERIOD: u8 = 13;
const TAG_DAY: u8 = 14;
const TAG_OTHER: u8 = 15;

/// One user document (ids of the other collections stay within `s.small`).
pub fn user(i: usize, s: &Sizes, rng: &mut Lcg) -> Document {
    let ids = |tag: u8, n: usize, rng: &mut Lcg| -> Vec<Bson> {
        (0..n)
            .map(|_| Bson::ObjectId(oid(tag, rng.below(s.small))))
            .collect()
    };
    let mut d = doc! {
        "_id": oid(TAG_USER, i),
        "firstname": format!("Prénom{i}"),
        "lastname": format!("Nom {i}"),
        "email": format!("user{i}@example.org"),
        "role": if i.is_multiple_of(10) { "coach" } else { "member" },
        "birthday": at(-(20 * 365 * 24 * 60) - int(i % 9000) * 24 * 60),
        "company": oid(TAG_COMPANY, i % s.small),
    };
    let mut events = ids(TAG_EVENT, rng.below(4), rng);
    events.dedup();
    d.insert("registered_events", events);
    d.insert("targets", ids(TAG_TARGET, 1 + rng.below(3), rng));
    d.insert("specificity_targets", ids(TAG_TARGET, rng.below(2), rng));
    d.insert("health_targets", ids(TAG_TARGET, rng.below(3), rng));
    stamp(&mut d, int(i), int(i).saturating_add(int(rng.below(1000))));
    d
}

/// Every collection but `users` (small, referencing valid ids).
pub fn other_collections(s: &Sizes) -> Vec<(&'static str, Vec<Document>)> {
    let n = s.small;
    let mut rng = Lcg::new(7);
    let mut out: Vec<(&'static str, Vec<Document>)> = Vec::new();
    let simple = |tag: u8, f: &dyn Fn(usize) -> Document| -> Vec<Document> {
        (0..n)
            .map(|i| {
                let mut d = doc! { "_id": oid(tag, i) };
                d.extend(f(i));
                stamp(&mut d, int(i), int(i) + 5);
                d
            })
            .collect()
    };
    out.push(("companies", simple(TAG_COMPANY, &|i| doc! { "name": format!("Company {i}"), "code": format!("C{i:04}"), "size": int32(i * 10) })));
    out.push(("ingredients", simple(TAG_OTHER, &|i| doc! { "name": format!("Ingredient {i}"), "unit": "g", "calories": 1.5 * f64::from(int32(i)) })));
    out.push((
        "appointmenttypes",
        simple(
            TAG_OTHER,
            &|i| doc! { "title": format!("Type {i}"), "duration": 30 },
        ),
    ));
    out.push(("offers", simple(TAG_OTHER, &|i| doc! { "name": format!("Offer {i}"), "price": format!("{}.99", i).parse::<f64>().unwrap_or(0.0), "duration": 12 })));
    out.push((
        "categories",
        simple(TAG_OTHER, &|i| {
            let mut d = doc! { "name": format!("Category {i}") };
            if i > 0 {
                d.insert("parent", oid(TAG_OTHER, (i - 1) / 2));
            }
            d
        }),
    ));
    out.push(("targets", simple(TAG_TARGET, &|i| doc! { "name": format!("Target {i}"), "type": (["weight", "sleep", "sport"][i % 3]) })));
    out.push(("recipes", simple(TAG_RECIPE, &|i| doc! { "name": format!("Recipe {i}"), "description": "Mix.\nBake\tat 180°C.", "duration": 20 })));
    out.push((
        "quizzs",
        simple(TAG_QUIZZ, &|i| doc! { "name": format!("Quizz {i}"), "type": "logbook", "questions": [oid(TAG_QUESTION, i), oid(TAG_QUESTION, (i + 1) % n)] }),
    ));
    out.push((
        "quizzquestions",
        simple(
            TAG_QUESTION,
            &|i| doc! { "title": format!("Question {i}?"), "type": "single_enum" },
        ),
    ));
    out.push((
        "contents",
        simple(TAG_CONTENT, &|i| doc! { "name": format!("Content {i}"), "type": "article", "url": format!("https://example.org/c/{i}"), "viewed_by": [oid(TAG_USER, i % n)] }),
    ));
    out.push(("events", simple(TAG_EVENT, &|i| doc! { "name": format!("Event {i}"), "start_date": at(int(i) * 60), "end_date": at(int(i) * 60 + 90) })));
    out.push((
        "menus",
        simple(TAG_MENU, &|i| doc! { "name": format!("Menu {i}"), "start_date": at(0), "end_date": at(7 * 24 * 60), "recipes": [oid(TAG_RECIPE, i), oid(TAG_RECIPE, (i + 3) % n)] }),
    ));
    out.push(("messages", simple(TAG_OTHER, &|i| doc! { "sender": oid(TAG_USER, i % n), "receiver": oid(TAG_USER, (i + 1) % n), "content": format!("Bonjour n°{i} 👋") })));
    out.push((
        "coachings",
        simple(
            TAG_COACHING,
            &|i| doc! { "user": oid(TAG_USER, i % n), "status": "active", "start_date": at(0) },
        ),
    ));
    out.push(("userquizzs", simple(TAG_USERQUIZZ, &|i| doc! { "user": oid(TAG_USER, i % n), "quizz": oid(TAG_QUIZZ, i), "name": format!("Logbook {i}"), "type": "logbook", "questions": [oid(TAG_USERQUESTION, i)] })));
    out.push(("userquizzquestions", simple(TAG_USERQUESTION, &|i| doc! { "quizz_question": oid(TAG_QUESTION, i), "single_enum_answer": "yes", "boolean_answer": i % 2 == 0 })));
    out.push(("appointments", simple(TAG_OTHER, &|i| doc! { "user": oid(TAG_USER, i % n), "coaching": oid(TAG_COACHING, i), "appointment_type": oid(TAG_OTHER, i), "start_date": at(int(i) * 30), "end_date": at(int(i) * 30 + 45) })));
    out.push(("periods", simple(TAG_PERIOD, &|i| doc! { "number_of_days": 14, "coaching": oid(TAG_COACHING, i), "order": int32(i % 4) + 1, "status": "active" })));
    out.push(("items", simple(TAG_OTHER, &|i| doc! { "label": format!("Item {i}"), "quizz_question": oid(TAG_QUESTION, i), "position": int32(i % 5) })));
    out.push((
        "days",
        simple(TAG_DAY, &|i| doc! {
            "period": oid(TAG_PERIOD, i), "is_success": i % 3 != 0, "date": at(int(i) * 24 * 60),
            "userQuizz": oid(TAG_USERQUIZZ, i), "contents": [oid(TAG_CONTENT, i)], "main_logbooks": [oid(TAG_USERQUIZZ, i)],
        }),
    ));
    // Logbooks: several per user and day, some without `user`.
    let logbooks = (0..n * 3)
        .map(|i| {
            let mut d = doc! { "_id": oid(TAG_OTHER, 100_000 + i), "day": at(int(i / 3) * 24 * 60 - 60), "logbook": oid(TAG_USERQUIZZ, i % n), "coaching": oid(TAG_COACHING, i % n) };
            if i % 7 != 6 {
                d.insert("user", oid(TAG_USER, (i / 3) % n));
            }
            stamp(&mut d, int(i) * 10 + int(rng.below(5)), int(i) * 10 + 8);
            d
        })
        .collect();
    out.push(("coachinglogbooks", logbooks));
    out
}

/// Writes the whole database as `<dir>/smartdiet/<collection>.bson`; returns the db folder.
pub fn write_dump(dir: &Path, users: usize) -> Result<PathBuf, SampleError> {
    write_dump_changed(dir, users, 0)
}

/// The same database where the first `changed` users were edited later: their first target
/// removed, their events emptied, their update_date moved forward.
pub fn write_dump_changed(
    dir: &Path,
    users: usize,
    changed: usize,
) -> Result<PathBuf, SampleError> {
    let s = Sizes::for_users(users);
    let db = dir.join(DB);
    std::fs::create_dir_all(&db).map_err(SampleError::io(&db))?;
    for (name, docs) in other_collections(&s) {
        write_collection(&db, name, docs.iter())?;
    }
    let mut rng = Lcg::new(42);
    // After every user's own update (user i: minute i plus up to 1000), at any size.
    let edited = int(users).saturating_add(1_000).max(500_000);
    let path = db.join("users.bson");
    let file = std::fs::File::create(&path).map_err(SampleError::io(&path))?;
    let mut w = std::io::BufWriter::new(file);
    for i in 0..users {
        let mut u = user(i, &s, &mut rng);
        if i < changed {
            if let Ok(targets) = u.get_array_mut("targets") {
                if !targets.is_empty() {
                    targets.remove(0);
                }
            }
            u.insert("registered_events", Vec::<Bson>::new());
            u.insert("update_date", at(edited));
        }
        w.write_all(&bson::to_vec(&u)?)
            .map_err(SampleError::io(&path))?;
    }
    w.flush().map_err(SampleError::io(&path))?;
    Ok(db)
}

/// `<db>/<name>.bson`: documents back to back, as mongodump writes them.
pub fn write_collection<'a>(
    db: &Path,
    name: &str,
    docs: impl Iterator<Item = &'a Document>,
) -> Result<(), SampleError> {
    let mut bytes = Vec::new();
    for d in docs {
        bytes.extend(bson::to_vec(d)?);
    }
    let path = db.join(format!("{name}.bson"));
    std::fs::write(&path, bytes).map_err(SampleError::io(&path))
}
