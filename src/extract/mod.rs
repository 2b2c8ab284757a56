//! Extract stage: MongoDB (live or mongodump) and Matomo tables into staged Parquet.

pub mod bson_arrow;
pub mod fields;
pub mod matomo;
pub mod mongodump;
