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

#![warn(unreachable_pub)]

pub mod cli;
pub mod config;
pub(crate) mod decimal;
pub mod extract;
pub(crate) mod init;
pub(crate) mod load;
mod percent;
pub(crate) mod pg_time;
pub(crate) mod progress;
pub(crate) mod reconcile;
pub mod sample;
pub mod settings;
pub mod staging;
pub(crate) mod tls;
pub(crate) mod transform;
pub(crate) mod verify;
