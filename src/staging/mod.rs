//! The boundary between stages: run folders, manifests, and Parquet part files.
//!
//! Layout of one run (`staging/<run>/`):
//!
//! ```text
//! extract/<source>/<collection>/part-00000.parquet    extract/manifest.json
//! transform/<table>/part-00000.parquet                 transform/manifest.json
//! rejects/<table>.parquet                              load/manifest.json (report)
//! ```
//!
//! A stage writes its files under temporary names, renames each when complete, and writes
//! `manifest.json` last (temp name, then rename). A stage folder without a finished manifest
//! is not a stage: readers refuse it, and `latest_run` skips it, so a killed stage leaves the
//! previous runs as they were.

pub mod fields;
mod manifest;
pub mod matomo_api;
mod parquet_io;
mod rejects;

use std::path::{Path, PathBuf};

pub use manifest::{
    schema_pairs, ApiSite, Counts, FileEntry, Manifest, ManifestEntry, SourceKeys, SourceKind,
    Stage, WatermarkValue, MANIFEST_FORMAT,
};
pub(crate) use parquet_io::stream_batches;
pub use parquet_io::{read_batches, verify_file, BackgroundWriter, PartWriter};
pub use rejects::{rejects_schema, write_rejects, RejectRow};

/// Problems with staged files, each naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StagingError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Parquet {
        path: PathBuf,
        source: parquet::errors::ParquetError,
    },
    #[error("no staged run in {staging} has a finished {stage} stage{hint}")]
    NoRun {
        staging: PathBuf,
        stage: Stage,
        hint: String,
    },
}

impl StagingError {
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StagingError + '_ {
        move |source| StagingError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// One run folder.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub id: String,
    pub root: PathBuf,
}

impl RunDir {
    /// A new run named after the current UTC time (sortable), unique within `staging`.
    pub fn create(staging: &Path) -> Result<RunDir, StagingError> {
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string();
        std::fs::create_dir_all(staging).map_err(StagingError::io(staging))?;
        for n in 0.. {
            let id = if n == 0 {
                stamp.clone()
            } else {
                format!("{stamp}-{n}")
            };
            let root = staging.join(&id);
            match std::fs::create_dir(&root) {
                Ok(()) => return Ok(RunDir { id, root }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(StagingError::Io {
                        path: root,
                        source: e,
                    })
                }
            }
        }
        unreachable!("an unbounded range always yields")
    }

    /// An existing run by id, or the latest one whose `stage` finished.
    pub fn open(staging: &Path, id: Option<&str>, stage: Stage) -> Result<RunDir, StagingError> {
        let run = match id {
            Some(id) => RunDir {
                id: id.to_string(),
                root: staging.join(id),
            },
            None => latest_run(staging, stage)?.ok_or_else(|| StagingError::NoRun {
                staging: staging.to_path_buf(),
                stage,
                hint: match stage {
                    Stage::Extract => "; run `etl extract` first".into(),
                    Stage::Transform => "; run `etl transform` first".into(),
                    Stage::Load => String::new(),
                },
            })?,
        };
        if !run.root.is_dir() {
            return Err(StagingError::Invalid {
                path: run.root,
                message: "no such run".into(),
            });
        }
        Ok(run)
    }

    pub fn stage_dir(&self, stage: Stage) -> PathBuf {
        self.root.join(stage.dir_name())
    }

    pub fn rejects_dir(&self) -> PathBuf {
        self.root.join("rejects")
    }

    /// The stage's finished manifest; an error when the stage did not finish.
    pub fn manifest(&self, stage: Stage) -> Result<Manifest, StagingError> {
        Manifest::read(&self.stage_dir(stage))
    }

    pub fn has_finished(&self, stage: Stage) -> bool {
        self.stage_dir(stage)
            .join(manifest::MANIFEST_FILE)
            .is_file()
    }

    /// Empties a stage folder before it is written again: the manifest goes first, so a crash
    /// half-way never leaves old files under a finished manifest.
    pub fn reset_stage(&self, stage: Stage) -> Result<PathBuf, StagingError> {
        let dir = self.stage_dir(stage);
        let manifest = dir.join(manifest::MANIFEST_FILE);
        if manifest.exists() {
            std::fs::remove_file(&manifest).map_err(StagingError::io(&manifest))?;
        }
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(StagingError::io(&dir))?;
        }
        std::fs::create_dir_all(&dir).map_err(StagingError::io(&dir))?;
        Ok(dir)
    }
}

/// All runs, oldest first (run ids sort by time).
pub fn list_runs(staging: &Path) -> Result<Vec<RunDir>, StagingError> {
    let entries = match std::fs::read_dir(staging) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(StagingError::Io {
                path: staging.to_path_buf(),
                source: e,
            })
        }
    };
    let mut runs: Vec<RunDir> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| {
            e.file_name().to_str().map(|id| RunDir {
                id: id.to_string(),
                root: e.path(),
            })
        })
        .filter(|r| !r.id.starts_with('.'))
        .collect();
    runs.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(runs)
}

/// The newest run whose `stage` finished.
pub fn latest_run(staging: &Path, stage: Stage) -> Result<Option<RunDir>, StagingError> {
    Ok(list_runs(staging)?
        .into_iter()
        .rev()
        .find(|r| r.has_finished(stage)))
}

/// Renames `tmp` to `path` after syncing it, so a finished name always has complete content.
pub fn commit_file(tmp: &Path, path: &Path) -> Result<(), StagingError> {
    let file = std::fs::File::open(tmp).map_err(StagingError::io(tmp))?;
    file.sync_all().map_err(StagingError::io(tmp))?;
    std::fs::rename(tmp, path).map_err(StagingError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latest_run_skips_unfinished_stages() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunDir::create(dir.path()).unwrap();
        Manifest::new(Stage::Extract, &first.id, "fp")
            .write(&first.stage_dir(Stage::Extract))
            .unwrap();
        let second = RunDir::create(dir.path()).unwrap();
        std::fs::create_dir_all(second.stage_dir(Stage::Extract)).unwrap();
        assert!(
            second.id > first.id,
            "run ids sort by creation: {} {}",
            first.id,
            second.id
        );
        let latest = latest_run(dir.path(), Stage::Extract).unwrap().unwrap();
        assert_eq!(latest.id, first.id);
        assert!(latest_run(dir.path(), Stage::Transform).unwrap().is_none());
        let err = RunDir::open(dir.path(), None, Stage::Transform).unwrap_err();
        assert!(err.to_string().contains("etl transform"), "{err}");
    }
}
