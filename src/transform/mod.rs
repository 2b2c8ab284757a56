//! Transform stage: staged extract files -> one Parquet folder per target table, typed for
//! PostgreSQL, plus rejects with their reasons. Synchronous, parallel with rayon across tables
//! and across batches; needs no database, only the run folder.
//!
//! Batches are processed in parallel in bounded chunks and written in input order, so the
//! output is deterministic and memory stays flat whatever the input size (except for dedupe
//! tables, which hold their rows until every file is read).

mod convert;
mod dedupe;
mod rows;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::ArrayRef;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rayon::prelude::*;

pub use convert::{parse_date_text, target_type, CellError};
pub use rows::{output_schema, transform_batch, BatchOutput, Reject};

use crate::config::{Config, TableSpec};
use crate::staging::{
    self, Counts, Manifest, ManifestEntry, PartWriter, RejectRow, RunDir, Stage, StagingError,
};

/// Batches handed to rayon at once per table: enough to keep every thread busy.
const CHUNK_BATCHES: usize = 8;
const READ_BATCH_ROWS: usize = 32 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    #[error(transparent)]
    Staging(#[from] StagingError),
    #[error(
        "table `{table}`: the staged `{source_name}` has no field `{field}`; the config changed since \
         extract: run `etl extract` again"
    )]
    MissingField {
        table: String,
        source_name: String,
        field: String,
    },
    #[error("table `{table}`: {source}")]
    Arrow {
        table: String,
        source: arrow::error::ArrowError,
    },
    #[error("table `{0}`: more than 4 billion rows in one batch")]
    TooLarge(String),
}

/// What `etl transform` did for one table.
#[derive(Debug, Clone)]
pub struct TableReport {
    pub table: String,
    pub counts: Counts,
    pub filtered_by_rule: BTreeMap<String, u64>,
    pub seconds: f64,
    /// Set when the run holds nothing for this table's source.
    pub skipped: Option<String>,
}

/// Transforms a staged run (the latest with a finished extract when `run` is None).
pub fn run(
    config: &Config,
    staging_dir: &Path,
    run: Option<&str>,
    tables: Option<&[String]>,
) -> Result<(RunDir, Vec<TableReport>), TransformError> {
    let run = RunDir::open(staging_dir, run, Stage::Extract)?;
    let extract = run.manifest(Stage::Extract)?;
    if extract.config_fingerprint != config.fingerprint {
        tracing::warn!(run = %run.id, "the config changed since this run was extracted");
    }
    let selected = config
        .select(tables)
        .map_err(|message| StagingError::Invalid {
            path: config_path(config),
            message,
        })?;
    let out_dir = run.reset_stage(Stage::Transform)?;
    let rejects_dir = run.rejects_dir();
    std::fs::create_dir_all(&rejects_dir).map_err(StagingError::io(&rejects_dir))?;
    let extract_dir = run.stage_dir(Stage::Extract);

    let results: Vec<Result<(ManifestEntry, TableReport), TransformError>> = selected
        .par_iter()
        .map(|table| match extract.entry(table.source.name()) {
            Some(entry) => transform_table(table, &extract_dir, entry, &out_dir, &rejects_dir),
            None => Ok((
                ManifestEntry {
                    name: table.name.clone(),
                    ..Default::default()
                },
                TableReport {
                    table: table.name.clone(),
                    counts: Counts::default(),
                    filtered_by_rule: BTreeMap::new(),
                    seconds: 0.0,
                    skipped: Some(format!(
                        "`{}` was not extracted in run {}",
                        table.source.name(),
                        run.id
                    )),
                },
            )),
        })
        .collect();
    let mut manifest = Manifest::new(Stage::Transform, &run.id, &config.fingerprint);
    let mut reports = Vec::new();
    for result in results {
        let (entry, report) = result?;
        if report.skipped.is_none() {
            manifest.entries.push(entry);
        }
        reports.push(report);
    }
    manifest.write(&out_dir)?;
    Ok((run, reports))
}

fn config_path(config: &Config) -> std::path::PathBuf {
    config
        .tables
        .first()
        .map(|t| t.file.clone())
        .unwrap_or_default()
}

/// Transforms every staged file of one table's source.
fn transform_table(
    table: &TableSpec,
    extract_dir: &Path,
    entry: &ManifestEntry,
    out_dir: &Path,
    rejects_dir: &Path,
) -> Result<(ManifestEntry, TableReport), TransformError> {
    let started = Instant::now();
    let schema = output_schema(table);
    let mut writer = PartWriter::new(&out_dir.join(&table.name), &table.name, schema.clone())?;
    let mut parents = table
        .replace_parent_column()
        .map(|_| {
            let parent_schema = Arc::new(Schema::new(vec![Field::new(
                "parent",
                DataType::Utf8,
                false,
            )]));
            let rel = format!("{}/parents", table.name);
            PartWriter::new(&out_dir.join(&rel), &rel, parent_schema)
        })
        .transpose()?;
    let mut counts = Counts::default();
    let mut filtered_by_rule: BTreeMap<String, u64> = BTreeMap::new();
    let mut rejects: Vec<Reject> = Vec::new();
    let mut held: Vec<RecordBatch> = Vec::new();

    for file in &entry.files {
        staging::verify_file(extract_dir, file)?;
        let path = extract_dir.join(&file.path);
        let reader = std::fs::File::open(&path).map_err(StagingError::io(&path))?;
        let to_err = |source| StagingError::Parquet {
            path: path.clone(),
            source,
        };
        let batches = ParquetRecordBatchReaderBuilder::try_new(reader)
            .map_err(to_err)?
            .with_batch_size(READ_BATCH_ROWS)
            .build()
            .map_err(to_err)?;
        let mut batches = batches.peekable();
        while batches.peek().is_some() {
            let chunk: Vec<RecordBatch> = batches
                .by_ref()
                .take(CHUNK_BATCHES)
                .collect::<Result<_, _>>()
                .map_err(|e| TransformError::Arrow {
                    table: table.name.clone(),
                    source: e,
                })?;
            let outputs: Vec<BatchOutput> = chunk
                .par_iter()
                .map(|b| transform_batch(table, b))
                .collect::<Result<_, _>>()?;
            for out in outputs {
                counts.extracted += out.extracted;
                counts.rejected += out.rejects.len() as u64;
                for (rule, n) in out.filtered {
                    counts.filtered += n;
                    *filtered_by_rule.entry(rule).or_default() += n;
                }
                rejects.extend(out.rejects);
                if let (Some(writer), Some(ids)) = (parents.as_mut(), &out.parents) {
                    writer.write(&parent_batch(ids)?)?;
                }
                if table.dedupe.is_some() {
                    held.push(out.rows);
                } else {
                    counts.transformed += out.rows.num_rows() as u64;
                    writer.write(&out.rows)?;
                }
            }
        }
    }
    if let Some(spec) = &table.dedupe {
        let (merged, dropped) =
            dedupe::dedupe(&schema, &held, spec).map_err(|e| TransformError::Arrow {
                table: table.name.clone(),
                source: e,
            })?;
        counts.filtered += dropped;
        *filtered_by_rule
            .entry(format!("dedupe: one row per ({})", spec.key.join(", ")))
            .or_default() += dropped;
        counts.transformed += merged.num_rows() as u64;
        writer.write(&merged)?;
    }
    let files = writer.finish()?;
    let parent_files = parents
        .map(PartWriter::finish)
        .transpose()?
        .unwrap_or_default();
    write_rejects(rejects_dir, &table.name, &rejects)?;

    let seconds = started.elapsed().as_secs_f64();
    let manifest_entry = ManifestEntry {
        name: table.name.clone(),
        source: entry.source.clone(),
        rows: counts.transformed,
        files,
        parent_files,
        schema: staging::schema_pairs(&schema),
        window_since: entry.window_since.clone(),
        window_reason: entry.window_reason.clone(),
        watermarks: entry.watermarks.clone(),
        counts,
        notes: filtered_by_rule
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect(),
    };
    Ok((
        manifest_entry,
        TableReport {
            table: table.name.clone(),
            counts,
            filtered_by_rule,
            seconds,
            skipped: None,
        },
    ))
}

fn parent_batch(ids: &ArrayRef) -> Result<RecordBatch, StagingError> {
    let schema = Arc::new(Schema::new(vec![Field::new(
        "parent",
        DataType::Utf8,
        false,
    )]));
    RecordBatch::try_new(schema, vec![ids.clone()]).map_err(|e| StagingError::Invalid {
        path: "parents".into(),
        message: e.to_string(),
    })
}

/// Turns a table's rejects into reject rows and writes `rejects/<table>.parquet`.
fn write_rejects(dir: &Path, table: &str, rejects: &[Reject]) -> Result<(), StagingError> {
    let rows: Vec<RejectRow> = rejects
        .iter()
        .map(|r| {
            let columns: Vec<&str> = r.errors.iter().map(|e| e.column.as_str()).collect();
            let reasons: Vec<String> = r
                .errors
                .iter()
                .map(|e| format!("{}: {}", e.column, e.reason))
                .collect();
            let raw: serde_json::Map<String, serde_json::Value> = r
                .errors
                .iter()
                .map(|e| {
                    (
                        e.column.clone(),
                        e.raw
                            .clone()
                            .map_or(serde_json::Value::Null, serde_json::Value::String),
                    )
                })
                .collect();
            RejectRow {
                document_id: r.document_id.clone(),
                column: columns.join(", "),
                reason: reasons.join("; "),
                raw_value: Some(serde_json::Value::Object(raw).to_string()),
            }
        })
        .collect();
    staging::write_rejects(&dir.join(format!("{table}.parquet")), table, &rows)
}
