//! `etl` moves an application's MongoDB database and its Matomo analytics into PostgreSQL:
//!
//! ```text
//! MongoDB (live | mongodump) ─┐
//!                             ├─ extract ─> staging/<run>/extract ─ transform ─> staging/<run>/transform ─ load ─> PostgreSQL
//! Matomo (MariaDB) ───────────┘                                                                              └──> sql_exports/
//! ```
//!
//! Each stage reads only the previous stage's Parquet files and manifest, so a staged run can
//! be replayed offline. `config` is the validated YAML every stage works from.

pub mod cli;
pub mod config;
pub(crate) mod decimal;
pub mod extract;
pub mod init;
pub mod load;
mod percent;
pub(crate) mod pg_time;
pub mod progress;
pub mod reconcile;
pub mod sample;
pub mod settings;
pub mod staging;
pub mod tls;
pub mod transform;
pub mod verify;
