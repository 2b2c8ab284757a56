//! `etl verify`: proves a target holds what the source says it should, or what another
//! database holds.
//!
//! Against the source, the source is read as it is now (all of it, no window) and mapped with
//! the config exactly as `etl transform` maps it: verify runs the real extract and transform
//! into a scratch run under `<staging>/.verify-<time>/`, then compares each table's rows with
//! the target inside PostgreSQL (`load::compare`). Rows the transform rejects or the load
//! would reject as orphans are expected to be absent, and listed. The scratch run is removed
//! when everything matches, kept (and named) otherwise.
//!
//! Verify composes the stages as `etl run` does; it is the only module besides `cli` that
//! calls more than one stage.

use std::path::{Path, PathBuf};

use crate::config::{Config, Source, TableSpec};
use crate::extract::{self, ExtractOptions};
use crate::load::{self, CompareOptions, Expected, TableVerdict};
use crate::settings::PostgresSettings;
use crate::staging::{Manifest, RunDir, Stage};
use crate::transform;

/// What `etl verify` compares the target with.
#[derive(Debug, Clone)]
pub(crate) enum VerifySource {
    /// The sources an extract would read (no window is applied).
    Source(Box<ExtractOptions>),
    /// The same tables in another PostgreSQL database.
    Database(PostgresSettings),
}

#[derive(Debug, Clone)]
pub(crate) struct VerifyOptions {
    pub source: VerifySource,
    pub tables: Option<Vec<String>>,
    pub compare: CompareOptions,
}

/// One table's result, with what the source side says about it.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct TableReport {
    #[serde(flatten)]
    pub verdict: TableVerdict,
    /// Documents or rows read from the source for the table (source mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_rows: Option<u64>,
    /// Rows the transform rejects (not expected in the target).
    pub rejected: u64,
    /// Rows filtered by a rule of the config (not expected in the target).
    pub filtered: u64,
}

impl TableReport {
    pub(crate) fn matches(&self) -> bool {
        self.verdict.matches()
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct VerifyReport {
    /// The target, without its password.
    pub target: String,
    /// What it was compared with: `source` or the other database.
    pub against: String,
    pub tables: Vec<TableReport>,
    /// The scratch run holding the expected rows and rejects, kept when something differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scratch: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum VerifyError {
    #[error(transparent)]
    Config(#[from] crate::config::UnknownTables),
    #[error("reading the source: {0}")]
    Extract(#[from] extract::ExtractError),
    #[error("mapping the source: {0}")]
    Transform(#[from] transform::TransformError),
    #[error(transparent)]
    Load(#[from] load::LoadError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Compares the target with the source or another database.
pub(crate) async fn run(
    config: &Config,
    staging_dir: &Path,
    target: &PostgresSettings,
    opts: &VerifyOptions,
) -> Result<VerifyReport, VerifyError> {
    let tables = config.select(opts.tables.as_deref())?;
    match &opts.source {
        VerifySource::Database(other) => {
            let verdicts =
                load::compare(target, &tables, Expected::Database(other), &opts.compare).await?;
            Ok(VerifyReport {
                target: target.to_string(),
                against: other.to_string(),
                tables: verdicts
                    .into_iter()
                    .map(|verdict| TableReport {
                        verdict,
                        source_rows: None,
                        rejected: 0,
                        filtered: 0,
                    })
                    .collect(),
                scratch: None,
            })
        }
        VerifySource::Source(source) => {
            against_source(config, staging_dir, target, &tables, source, opts).await
        }
    }
}

async fn against_source(
    config: &Config,
    staging_dir: &Path,
    target: &PostgresSettings,
    tables: &[&TableSpec],
    source: &ExtractOptions,
    opts: &VerifyOptions,
) -> Result<VerifyReport, VerifyError> {
    let scratch = staging_dir.join(format!(
        ".verify-{}",
        chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
    ));
    let everything = ExtractOptions {
        tables: opts.tables.clone(),
        full: true,
        since: None,
        threshold: None,
        target: None,
        ..source.clone()
    };
    let (run, _) = extract::run(config, &scratch, &everything).await?;
    transform::run(config, &scratch, Some(&run.id), opts.tables.as_deref())?;
    let run = RunDir::open(&scratch, Some(&run.id), Stage::Transform)
        .map_err(|e| VerifyError::Transform(e.into()))?;
    let extracted = run
        .manifest(Stage::Extract)
        .map_err(|e| VerifyError::Transform(e.into()))?;
    let transformed = run
        .manifest(Stage::Transform)
        .map_err(|e| VerifyError::Transform(e.into()))?;
    let dir = run.stage_dir(Stage::Transform);
    let expected = Expected::Staged {
        dir: &dir,
        manifest: &transformed,
    };
    // Only the tables of the sources read: the others have nothing to be compared with.
    let tables: Vec<&TableSpec> = tables
        .iter()
        .copied()
        .filter(|t| match t.source {
            Source::Mongo { .. } => source.mongo.is_some(),
            Source::Matomo { .. } => source.matomo.is_some(),
            Source::MatomoApi { .. } => source.matomo_api.is_some(),
            Source::Postgres { .. } => source.postgres.is_some(),
        })
        .collect();
    let verdicts = load::compare(target, &tables, expected, &opts.compare).await?;
    let reports: Vec<TableReport> = tables
        .iter()
        .zip(verdicts)
        .map(|(t, verdict)| source_side(t, verdict, &extracted, &transformed))
        .collect();
    let all_match = reports.iter().all(TableReport::matches);
    if all_match {
        std::fs::remove_dir_all(&scratch).map_err(|source| VerifyError::Io {
            path: scratch.clone(),
            source,
        })?;
    }
    Ok(VerifyReport {
        target: target.to_string(),
        against: "source".into(),
        tables: reports,
        scratch: (!all_match).then_some(scratch),
    })
}

fn source_side(
    t: &TableSpec,
    verdict: TableVerdict,
    extracted: &Manifest,
    transformed: &Manifest,
) -> TableReport {
    let counts = transformed.entry(&t.name).map(|e| e.counts);
    TableReport {
        verdict,
        source_rows: extracted.entry(t.source.name()).map(|e| e.rows),
        rejected: counts.map_or(0, |c| c.rejected),
        filtered: counts.map_or(0, |c| c.filtered),
    }
}
