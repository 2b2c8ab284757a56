//! The SmartDiet sample generator of `etl sample` (src/sample/smartdiet.rs), with the
//! panicking signatures tests want: a test that cannot write its fixture fails there.

#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};

pub use etl::sample::smartdiet::{at, oid, other_collections, user, Lcg, Sizes, DB};

/// Writes the whole database as `<dir>/smartdiet/<collection>.bson`; returns the db folder.
pub fn write_dump(dir: &Path, users: usize) -> PathBuf {
    etl::sample::smartdiet::write_dump(dir, users).expect("write the sample mongodump")
}

/// The same database where the first `changed` users were edited later (see `etl sample`).
pub fn write_dump_changed(dir: &Path, users: usize, changed: usize) -> PathBuf {
    etl::sample::smartdiet::write_dump_changed(dir, users, changed)
        .expect("write the sample mongodump")
}

/// `<db>/<name>.bson`: documents back to back, as mongodump writes them.
pub fn write_collection<'a>(db: &Path, name: &str, docs: impl Iterator<Item = &'a bson::Document>) {
    etl::sample::smartdiet::write_collection(db, name, docs).expect("write a .bson file");
}
