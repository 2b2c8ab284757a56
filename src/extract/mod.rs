//! Extract stage: MongoDB (live or mongodump) and Matomo tables into staged Parquet.

/// The staged format lives in `staging`; extract writes it.
pub use crate::staging::fields;

pub mod bson_arrow;
pub mod matomo;
pub mod mongodump;
