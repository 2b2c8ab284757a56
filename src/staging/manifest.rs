//! `manifest.json`: what a stage produced (files, rows, SHA-256, schema, windows, counts).
//!
//! It is the contract between stages: the next stage reads only what a finished manifest
//! lists, and checks the checksums of what it reads.

use std::collections::BTreeMap;
use std::path::Path;

use chrono::NaiveDateTime;
use serde::{Deserialize, Serialize};

use super::StagingError;

pub(super) const MANIFEST_FILE: &str = "manifest.json";
/// Bumped when the layout changes incompatibly; older manifests are refused with a message.
/// Format 2: typed watermarks and windows, timings and per-stage facts as fields (format 1
/// kept them as text in `notes`).
pub const MANIFEST_FORMAT: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Extract,
    Transform,
    Load,
}

impl Stage {
    pub fn dir_name(self) -> &'static str {
        match self {
            Stage::Extract => "extract",
            Stage::Transform => "transform",
            Stage::Load => "load",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.dir_name())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub stage: Stage,
    /// Always `complete`: a manifest is written only when its stage finished.
    pub status: String,
    pub run_id: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub config_fingerprint: String,
    /// Per collection (extract) or table (transform, load).
    pub entries: Vec<ManifestEntry>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// Collection or source table (extract), target table (transform, load).
    pub name: String,
    /// Where an extract entry was read from (carried along by later stages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceKind>,
    /// Files relative to the stage folder.
    #[serde(default)]
    pub files: Vec<FileEntry>,
    pub rows: u64,
    /// For link tables that replace children per parent: files listing every parent whose
    /// children the load replaces (including parents whose arrays are now empty or gone).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parent_files: Vec<FileEntry>,
    /// Arrow schema of the files: column name -> type.
    #[serde(default)]
    pub schema: Vec<(String, String)>,
    /// Start of the window extracted (inclusive); absent when everything was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_since: Option<WatermarkValue>,
    /// Why the window starts there (watermark, --since, GLOBAL_DATE_THRESHOLD, full).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub window_reason: String,
    /// Highest watermark value seen in what was extracted, per target table.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub watermarks: BTreeMap<String, WatermarkValue>,
    #[serde(default)]
    pub counts: Counts,
    /// Seconds the stage spent on this entry.
    #[serde(default)]
    pub seconds: f64,
    /// Extract: documents read, in the window or not (MongoDB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scanned: Option<u64>,
    /// Extract: the source has no such collection or table, so its tables got no rows.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub missing: bool,
    /// Extract (Matomo): zero dates (`0000-00-00`) read as NULL.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub zero_dates_as_null: u64,
    /// Extract (Matomo): invalid dates (`2024-02-30`), staged as NULL with their text in the
    /// `__raw` column, so transform rejects their rows with the raw value.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub invalid_dates: u64,
    /// Transform: rows filtered out, per rule the config states.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub filtered_by_rule: BTreeMap<String, u64>,
    /// Load: where the rows went (the target without its password, or the bundle's script).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// Load: every statement the live load ran for the table, in order (COPY data left out).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statements: Vec<String>,
    /// Transform, per column: values loaded through a coercion of PostgreSQL's input rules
    /// (a number into a text column, a numeric or boolean string, a date string).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub coerced: BTreeMap<String, u64>,
    /// Transform, per column: values rounded to fit (a `NUMERIC(p,s)`'s scale).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rounded: BTreeMap<String, u64>,
    /// Transform: the keys the source holds for this table, which `etl load --prune` keeps
    /// (absent in runs transformed before it existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_keys: Option<SourceKeys>,
    /// Extract: only the documents or rows of given keys were read (`etl reconcile`), not the
    /// whole source, whatever the window says.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub by_key: bool,
    /// Extract (Matomo API): per site, its time zone, the days read and what they held.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_sites: Vec<ApiSite>,
    /// Visits whose `actionDetails` Matomo truncated (its per-visit action limit), carried
    /// along by transform and load so every summary can show them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub truncated_visits: u64,
    /// Actions those visits lost.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub truncated_actions: u64,
}

/// The keys of every document or row the source holds for a table, rejected and filtered ones
/// included: a target row whose key is not among them is gone from the source.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceKeys {
    /// The key columns: the table's upsert key, or a link table's parent column.
    pub columns: Vec<String>,
    /// The keys, files relative to the stage folder (absent when `incomplete`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileEntry>,
    pub keys: u64,
    /// Why the source's keys are not all known (a windowed extract, unreadable keys): then
    /// `--prune` refuses the table.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incomplete: Option<String>,
}

/// What an API extract read for one site.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiSite {
    pub site: u32,
    /// The zone its days are cut in (IANA name or `UTC+05:30`).
    pub time_zone: String,
    pub first_day: Option<chrono::NaiveDate>,
    pub last_day: Option<chrono::NaiveDate>,
    /// Why the window starts on `first_day`.
    pub reason: String,
    pub visits: u64,
    pub actions: u64,
    /// Requests answered (pages, every day counted).
    pub pages: u64,
    pub truncated_visits: u64,
    pub truncated_actions: u64,
    /// Visits listed again by a later page or day of the same run (a visit that went on while
    /// it was read): the first copy is kept, the next run's re-read window updates it.
    pub repeated_visits: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Where extracted rows came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A live MongoDB server.
    Mongo,
    /// A mongodump folder or archive.
    Dump,
    /// Matomo tables in MariaDB/MySQL.
    Matomo,
    /// Matomo's HTTP Reporting API.
    #[serde(rename = "matomo-api")]
    MatomoApi,
    /// Tables of a source PostgreSQL.
    Postgres,
}

impl SourceKind {
    /// The name used in staged paths and summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Mongo => "mongo",
            SourceKind::Dump => "dump",
            SourceKind::Matomo => "matomo",
            SourceKind::MatomoApi => "matomo-api",
            SourceKind::Postgres => "postgres",
        }
    }
}

/// The value that starts an incremental window: the highest timestamp or integer an extract
/// saw in a table's watermark column(s).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WatermarkValue {
    /// A date or time watermark, in UTC.
    Timestamp(NaiveDateTime),
    /// An integer watermark (`log_action.idaction`); i128 holds every MariaDB integer.
    Int(i128),
}

impl WatermarkValue {
    /// The instant, for a time watermark.
    pub fn timestamp(&self) -> Option<NaiveDateTime> {
        match self {
            WatermarkValue::Timestamp(t) => Some(*t),
            WatermarkValue::Int(_) => None,
        }
    }
}

impl std::fmt::Display for WatermarkValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WatermarkValue::Timestamp(t) => write!(f, "{}", t.format("%Y-%m-%d %H:%M:%S%.f")),
            WatermarkValue::Int(i) => write!(f, "{i}"),
        }
    }
}

/// Row accounting; for every table `extracted = transformed + rejected + filtered`, and after
/// a load `transformed = inserted + updated + unchanged + orphans` (`rejected` stays the
/// transform's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub extracted: u64,
    pub transformed: u64,
    pub rejected: u64,
    pub filtered: u64,
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    /// Load: rows left out because a foreign key pointed nowhere.
    #[serde(default)]
    pub orphans: u64,
    /// Of `filtered`: losing copies of a repeated `_id` (transform keeps one per key).
    #[serde(default)]
    pub duplicates: u64,
    /// Load, of `deleted`: rows `--prune` deleted because their key is gone from the source.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub pruned: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub rows: u64,
    pub sha256: String,
    pub bytes: u64,
}

impl Manifest {
    pub fn new(stage: Stage, run_id: &str, config_fingerprint: &str) -> Manifest {
        Manifest {
            format: MANIFEST_FORMAT,
            stage,
            status: "complete".into(),
            run_id: run_id.to_string(),
            started_at: chrono::Utc::now(),
            finished_at: None,
            config_fingerprint: config_fingerprint.to_string(),
            entries: Vec::new(),
        }
    }

    pub fn entry(&self, name: &str) -> Option<&ManifestEntry> {
        self.entries.iter().find(|e| e.name == name)
    }

    /// Writes `manifest.json` into `dir` (temp name, fsync, rename): the stage's last act.
    pub fn write(mut self, dir: &Path) -> Result<Manifest, StagingError> {
        self.finished_at = Some(chrono::Utc::now());
        std::fs::create_dir_all(dir).map_err(StagingError::io(dir))?;
        let path = dir.join(MANIFEST_FILE);
        let tmp = dir.join(format!(".{MANIFEST_FILE}.tmp"));
        let json = serde_json::to_vec_pretty(&self).map_err(|e| StagingError::Invalid {
            path: path.clone(),
            message: e.to_string(),
        })?;
        std::fs::write(&tmp, json).map_err(StagingError::io(&tmp))?;
        super::commit_file(&tmp, &path)?;
        Ok(self)
    }

    /// Reads a finished stage's manifest from its folder.
    pub fn read(dir: &Path) -> Result<Manifest, StagingError> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StagingError::Invalid {
                path: dir.to_path_buf(),
                message: "this stage did not finish (no manifest.json); run it again".into(),
            },
            _ => StagingError::Io {
                path: path.clone(),
                source: e,
            },
        })?;
        let unreadable = |e: serde_json::Error| StagingError::Invalid {
            path: path.clone(),
            message: format!("unreadable manifest: {e}"),
        };
        // The version first: an older layout must get the message below, not a parse error.
        let header: Header = serde_json::from_slice(&bytes).map_err(unreadable)?;
        if header.format != MANIFEST_FORMAT {
            let stage = header.stage;
            let message = if header.format < MANIFEST_FORMAT {
                format!(
                    "written by an older etl (manifest format {}; this etl reads format \
                     {MANIFEST_FORMAT}): run `etl {stage}` again to stage this run anew",
                    header.format
                )
            } else {
                format!(
                    "written by a newer etl (manifest format {}; this etl reads format \
                     {MANIFEST_FORMAT}): upgrade etl",
                    header.format
                )
            };
            return Err(StagingError::Invalid { path, message });
        }
        let manifest: Manifest = serde_json::from_slice(&bytes).map_err(unreadable)?;
        Ok(manifest)
    }
}

/// The part of a manifest every format version has.
#[derive(Deserialize)]
struct Header {
    format: u32,
    stage: Stage,
}

/// Arrow schema as (name, type) pairs for the manifest.
pub fn schema_pairs(schema: &arrow::datatypes::Schema) -> Vec<(String, String)> {
    schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().to_string()))
        .collect()
}
