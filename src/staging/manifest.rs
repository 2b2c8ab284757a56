//! `manifest.json`: what a stage produced (files, rows, SHA-256, schema, windows, counts).
//!
//! It is the contract between stages: the next stage reads only what a finished manifest
//! lists, and checks the checksums of what it reads.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::StagingError;

pub const MANIFEST_FILE: &str = "manifest.json";
/// Bumped when the layout changes incompatibly; older manifests are refused with a message.
pub const MANIFEST_FORMAT: u32 = 1;

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
    /// `mongo`, `dump` or `matomo` for extract entries.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub source: String,
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
    /// Start of the window extracted (inclusive), when not everything was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_since: Option<String>,
    /// Why the window starts there (watermark, --since, GLOBAL_DATE_THRESHOLD, full).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub window_reason: String,
    /// Highest watermark value seen in what was extracted (per target table for Mongo).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub watermarks: BTreeMap<String, String>,
    #[serde(default)]
    pub counts: Counts,
    /// Free-form facts worth keeping (e.g. zero dates turned to NULL).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub notes: BTreeMap<String, String>,
    /// Transform, per column: values loaded through a coercion of PostgreSQL's input rules
    /// (a number into a text column, a numeric or boolean string, a date string).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub coerced: BTreeMap<String, u64>,
    /// Transform, per column: values rounded to fit (a `NUMERIC(p,s)`'s scale).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rounded: BTreeMap<String, u64>,
}

/// Row accounting; for every table `extracted = transformed + rejected + filtered`, and after
/// a load `transformed = inserted + updated + unchanged + orphans`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub extracted: u64,
    pub transformed: u64,
    pub rejected: u64,
    pub filtered: u64,
    pub inserted: u64,
    pub updated: u64,
    pub deleted: u64,
    /// Of `filtered`: losing copies of a repeated `_id` (transform keeps one per key).
    #[serde(default)]
    pub duplicates: u64,
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
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| StagingError::Invalid {
                path: path.clone(),
                message: format!("unreadable manifest: {e}"),
            })?;
        if manifest.format != MANIFEST_FORMAT {
            return Err(StagingError::Invalid {
                path,
                message: format!(
                    "manifest format {} but this etl reads format {MANIFEST_FORMAT}",
                    manifest.format
                ),
            });
        }
        Ok(manifest)
    }
}

/// Arrow schema as (name, type) pairs for the manifest.
pub fn schema_pairs(schema: &arrow::datatypes::Schema) -> Vec<(String, String)> {
    schema
        .fields()
        .iter()
        .map(|f| (f.name().clone(), f.data_type().to_string()))
        .collect()
}
