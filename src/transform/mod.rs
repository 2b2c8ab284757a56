//! Transform stage: staged extract files -> one Parquet folder per target table, typed for
//! PostgreSQL, plus rejects with their reasons. Synchronous, parallel with rayon across tables
//! and across batches; needs no database, only the run folder.
//!
//! Batches are processed in parallel in bounded chunks and written in input order, so the
//! output is deterministic and memory stays flat whatever the input size (except for dedupe
//! tables, which hold their rows until every file is read). Before its tables, a MongoDB
//! collection's `_id`s are scanned once for repeats (8 bytes per document while scanning, see
//! `duplicates`): only the latest copy of a repeated `_id` is transformed.
//!
//! A document extract could not read (malformed BSON, invalid UTF-8, nesting too deep) is
//! staged as a row of its collection with the reason and its BSON bytes
//! (`fields::DOCUMENT_ERROR`, `DOCUMENT_BSON`): it was extracted, so each table of the
//! collection counts it and rejects it (once, in link tables too, whose elements it cannot
//! tell), with the bytes in hex as its raw value. Per table, extracted = transformed +
//! rejected + filtered holds with extract-stage rejects included.

mod coerce;
mod convert;
mod dedupe;
mod duplicates;
mod elements;
pub(crate) mod expr;
mod keys;
mod parts;
mod pg_input;
mod rows;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::ArrayRef;
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use rayon::prelude::*;

pub(crate) use rows::{output_schema, transform_batch, Adjusted, Reject};

use crate::config::{ColumnSpec, Config, Source, TableSpec};
use crate::staging::{
    self, Counts, Manifest, ManifestEntry, PartWriter, RejectRow, RunDir, SourceKeys, Stage,
    StagingError,
};
use duplicates::Duplicates;

const READ_BATCH_ROWS: usize = 32 * 1024;
/// Fewer rows per read batch when a row group's values are large (long texts), so that one
/// batch's text stays far below Arrow's 2 GiB offsets (and memory stays bounded).
const READ_BATCH_BYTES: u64 = 256 << 20;

/// Rows per read batch for a row group of `rows` rows and `bytes` uncompressed bytes.
fn read_batch_rows(rows: u64, bytes: u64) -> usize {
    let per_row = bytes.div_ceil(rows.max(1)).max(1);
    let fit = usize::try_from(READ_BATCH_BYTES / per_row).unwrap_or(usize::MAX);
    fit.clamp(1, READ_BATCH_ROWS)
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum TransformError {
    #[error(transparent)]
    Staging(#[from] StagingError),
    #[error(transparent)]
    UnknownTables(#[from] crate::config::UnknownTables),
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
pub(crate) struct TableReport {
    pub table: String,
    pub counts: Counts,
    pub seconds: f64,
    /// Set when the run holds nothing for this table's source.
    pub skipped: Option<String>,
    /// Values loaded through a coercion, and rounded, in all columns.
    pub coerced: u64,
    pub rounded: u64,
}

/// Transforms a staged run (the latest with a finished extract when `run` is None).
pub(crate) fn run(
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
    let selected = config.select(tables)?;
    let out_dir = run.reset_stage(Stage::Transform)?;
    let rejects_dir = run.rejects_dir();
    std::fs::create_dir_all(&rejects_dir).map_err(StagingError::io(&rejects_dir))?;
    let extract_dir = run.stage_dir(Stage::Extract);
    // Each staged file once, whatever the number of tables reading it.
    let mut to_verify: Vec<&staging::FileEntry> = selected
        .iter()
        .flat_map(|t| t.part_specs())
        .filter_map(|t| extract.entry(t.source.name()))
        .flat_map(|e| &e.files)
        .collect();
    to_verify.sort_by(|a, b| a.path.cmp(&b.path));
    to_verify.dedup_by(|a, b| a.path == b.path);
    to_verify
        .par_iter()
        .try_for_each(|f| staging::verify_file(&extract_dir, f))?;

    // Repeated `_id`s, once per collection whatever the number of tables reading it.
    let mut pieces_of: HashMap<&str, Vec<duplicates::Piece>> = HashMap::new();
    let mut duplicates_of: HashMap<&str, Duplicates> = HashMap::new();
    for table in &selected {
        let name = table.source.name();
        let Some(entry) = extract.entry(name) else {
            continue;
        };
        if pieces_of.contains_key(name) {
            continue;
        }
        let pieces = pieces(&extract_dir, entry)?;
        if matches!(table.source, Source::Mongo { .. }) {
            let found = Duplicates::find(&pieces)?;
            if !found.is_empty() {
                tracing::warn!(
                    collection = name,
                    ids = found.repeated_ids(),
                    "the same _id in several documents: {}",
                    duplicates::RULE
                );
            }
            duplicates_of.insert(name, found);
        }
        pieces_of.insert(name, pieces);
    }
    let no_duplicates = Duplicates::default();

    let results: Vec<Result<(ManifestEntry, TableReport), TransformError>> = selected
        .par_iter()
        .map(|table| match extract.entry(table.source.name()) {
            _ if !table.parts.is_empty() => {
                parts::transform_parts(table, &extract, &extract_dir, &out_dir, &rejects_dir)
            }
            Some(entry) => transform_table(
                table,
                entry,
                pieces_of
                    .get(table.source.name())
                    .map_or(&[][..], Vec::as_slice),
                duplicates_of
                    .get(table.source.name())
                    .unwrap_or(&no_duplicates),
                &out_dir,
                &rejects_dir,
            ),
            None => Ok((
                ManifestEntry {
                    name: table.name.clone(),
                    ..Default::default()
                },
                TableReport {
                    table: table.name.clone(),
                    counts: Counts::default(),
                    seconds: 0.0,
                    skipped: Some(format!(
                        "`{}` was not extracted in run {}",
                        table.source.name(),
                        run.id
                    )),
                    coerced: 0,
                    rounded: 0,
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

/// What one piece (one row group of one staged file) gave for a table.
#[derive(Default)]
struct Piece {
    files: Vec<staging::FileEntry>,
    parent_files: Vec<staging::FileEntry>,
    counts: Counts,
    filtered_by_rule: BTreeMap<String, u64>,
    rejects: Vec<Reject>,
    /// Rows of dedupe tables, merged once every piece is done.
    held: Vec<RecordBatch>,
    adjusted: BTreeMap<String, Adjusted>,
    /// The source's keys (see `keys`): files, how many, how many could not be read.
    key_files: Vec<staging::FileEntry>,
    keys: u64,
    unknown_keys: u64,
}

/// The row groups of a source's staged files, in input order, each with the input-order
/// number of its first row.
fn pieces(
    extract_dir: &Path,
    entry: &ManifestEntry,
) -> Result<Vec<duplicates::Piece>, TransformError> {
    let mut pieces = Vec::new();
    let mut first_row = 0u64;
    for file in &entry.files {
        let path = extract_dir.join(&file.path);
        let reader = std::fs::File::open(&path).map_err(StagingError::io(&path))?;
        let builder = ParquetRecordBatchReaderBuilder::try_new(reader).map_err(|source| {
            StagingError::Parquet {
                path: path.clone(),
                source,
            }
        })?;
        for (row_group, meta) in builder.metadata().row_groups().iter().enumerate() {
            pieces.push(duplicates::Piece {
                path: path.clone(),
                row_group,
                first_row,
            });
            first_row += u64::try_from(meta.num_rows()).unwrap_or(0);
        }
    }
    Ok(pieces)
}

/// Transforms every staged file of one table's source: one task per row group, in
/// parallel, each writing its own part files (named in input order, so the output is the
/// same whatever the number of threads).
fn transform_table(
    table: &TableSpec,
    entry: &ManifestEntry,
    tasks: &[duplicates::Piece],
    duplicates: &Duplicates,
    out_dir: &Path,
    rejects_dir: &Path,
) -> Result<(ManifestEntry, TableReport), TransformError> {
    let started = Instant::now();
    let schema = output_schema(table);
    let key_plan = keys::key_plan(table, entry);
    let key_columns = match &key_plan {
        keys::KeyPlan::Write(columns) => Some(columns.as_slice()),
        keys::KeyPlan::Incomplete(_) => None,
    };
    let pieces: Vec<Piece> = tasks
        .par_iter()
        .enumerate()
        .map(|(i, piece)| {
            let output = Output {
                schema: &schema,
                dir: out_dir,
                index: i,
                key_columns,
            };
            transform_piece(table, piece, duplicates, &output)
        })
        .collect::<Result<_, _>>()?;

    let mut counts = Counts::default();
    let mut filtered_by_rule: BTreeMap<String, u64> = BTreeMap::new();
    let mut files = Vec::new();
    let mut parent_files = Vec::new();
    let mut rejects = Vec::new();
    let mut held = Vec::new();
    let mut adjusted = BTreeMap::new();
    let (mut key_files, mut keys, mut unknown_keys) = (Vec::new(), 0, 0);
    for piece in pieces {
        key_files.extend(piece.key_files);
        keys += piece.keys;
        unknown_keys += piece.unknown_keys;
        counts.extracted += piece.counts.extracted;
        counts.transformed += piece.counts.transformed;
        counts.rejected += piece.counts.rejected;
        counts.filtered += piece.counts.filtered;
        counts.duplicates += piece.counts.duplicates;
        for (rule, n) in piece.filtered_by_rule {
            *filtered_by_rule.entry(rule).or_default() += n;
        }
        files.extend(piece.files);
        parent_files.extend(piece.parent_files);
        rejects.extend(piece.rejects);
        held.extend(piece.held);
        add_adjusted(&mut adjusted, piece.adjusted);
    }
    let table_dir = out_dir.join(&table.name);
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
        let mut writer = PartWriter::new(&table_dir, &table.name, schema.clone())?;
        writer.write(&merged)?;
        files = writer.finish()?;
    }
    if files.is_empty() {
        // No rows: one empty file still carries the table's schema.
        files = PartWriter::new(&table_dir, &table.name, schema.clone())?.finish()?;
    }
    write_rejects(rejects_dir, &table.name, &rejects)?;

    let seconds = started.elapsed().as_secs_f64();
    let manifest_entry = ManifestEntry {
        name: table.name.clone(),
        source: entry.source,
        rows: counts.transformed,
        files,
        parent_files,
        schema: staging::schema_pairs(&schema),
        window_since: entry.window_since.clone(),
        window_reason: entry.window_reason.clone(),
        watermarks: entry.watermarks.clone(),
        counts,
        seconds,
        filtered_by_rule,
        coerced: per_column(&adjusted, |a| a.coerced),
        rounded: per_column(&adjusted, |a| a.rounded),
        source_keys: Some(source_keys(table, key_plan, key_files, keys, unknown_keys)),
        truncated_visits: entry.truncated_visits,
        truncated_actions: entry.truncated_actions,
        ..Default::default()
    };
    Ok((
        manifest_entry,
        TableReport {
            table: table.name.clone(),
            counts,
            seconds,
            skipped: None,
            coerced: adjusted.values().map(|a| a.coerced).sum(),
            rounded: adjusted.values().map(|a| a.rounded).sum(),
        },
    ))
}

/// What the manifest says of a table's source keys.
fn source_keys(
    table: &TableSpec,
    plan: keys::KeyPlan<'_>,
    files: Vec<staging::FileEntry>,
    keys: u64,
    unknown: u64,
) -> SourceKeys {
    match plan {
        keys::KeyPlan::Incomplete(why) => SourceKeys {
            incomplete: Some(why),
            ..Default::default()
        },
        keys::KeyPlan::Write(columns) => SourceKeys {
            columns: columns.iter().map(|c| c.name.clone()).collect(),
            files,
            keys,
            incomplete: (unknown > 0).then(|| {
                format!(
                    "{unknown} document(s) or row(s) of `{}` have a key that cannot be read \
                     (unreadable, or a key value that does not convert: see \
                     rejects/{}.parquet); their rows could be pruned",
                    table.source.name(),
                    table.name
                )
            }),
        },
    }
}

fn add_adjusted(total: &mut BTreeMap<String, Adjusted>, more: BTreeMap<String, Adjusted>) {
    for (column, a) in more {
        let t = total.entry(column).or_default();
        t.coerced += a.coerced;
        t.rounded += a.rounded;
    }
}

/// One count per column, the columns where it is zero left out.
fn per_column(
    adjusted: &BTreeMap<String, Adjusted>,
    count: impl Fn(&Adjusted) -> u64,
) -> BTreeMap<String, u64> {
    adjusted
        .iter()
        .filter(|(_, a)| count(a) > 0)
        .map(|(c, a)| (c.clone(), count(a)))
        .collect()
}

/// Where one piece's output goes.
struct Output<'a> {
    schema: &'a arrow::datatypes::SchemaRef,
    dir: &'a Path,
    /// The piece's place in input order, which names its part files.
    index: usize,
    /// The columns of the source keys to write, if the extract lets them be known.
    key_columns: Option<&'a [&'a ColumnSpec]>,
}

/// One row group of one staged file -> the table's rows, in part files of its own.
fn transform_piece(
    table: &TableSpec,
    piece_spec: &duplicates::Piece,
    duplicates: &Duplicates,
    output: &Output<'_>,
) -> Result<Piece, TransformError> {
    let (schema, out_dir, index) = (output.schema, output.dir, output.index);
    let (path, row_group) = (piece_spec.path.as_path(), piece_spec.row_group);
    let mut first_row = piece_spec.first_row;
    let to_err = |source| StagingError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let reader = std::fs::File::open(path).map_err(StagingError::io(path))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(reader).map_err(to_err)?;
    let batch_rows = builder
        .metadata()
        .row_groups()
        .get(row_group)
        .map_or(READ_BATCH_ROWS, |rg| {
            read_batch_rows(
                u64::try_from(rg.num_rows()).unwrap_or(0),
                u64::try_from(rg.total_byte_size()).unwrap_or(0),
            )
        });
    let batches = builder
        .with_row_groups(vec![row_group])
        .with_batch_size(batch_rows)
        .build()
        .map_err(to_err)?;
    let prefix = format!("part-{index:05}");
    let mut writer = PartWriter::new(&out_dir.join(&table.name), &table.name, schema.clone())?
        .with_name_prefix(&prefix);
    let mut parents = match table.replace_parent_column() {
        Some(_) => {
            let rel = format!("{}/parents", table.name);
            Some(
                PartWriter::new(&out_dir.join(&rel), &rel, parent_schema())?
                    .with_name_prefix(&prefix),
            )
        }
        None => None,
    };
    let mut key_writer = match output.key_columns {
        Some(columns) => {
            let rel = format!("{}/keys", table.name);
            Some(
                PartWriter::new(&out_dir.join(&rel), &rel, keys::key_schema(columns))?
                    .with_name_prefix(&prefix),
            )
        }
        None => None,
    };
    let mut piece = Piece::default();
    for batch in batches {
        let batch = batch.map_err(|e| TransformError::Arrow {
            table: table.name.clone(),
            source: e,
        })?;
        if let (Some(writer), Some(columns)) = (key_writer.as_mut(), output.key_columns) {
            // Every document of the batch, losing copies of a repeated `_id` included.
            let (keys, unknown) = keys::source_keys(table, columns, &batch)?;
            piece.keys += keys.num_rows() as u64;
            piece.unknown_keys += unknown;
            writer.write(&keys)?;
        }
        let losers = duplicates.losers(&batch, first_row);
        first_row += batch.num_rows() as u64;
        let out = transform_batch(table, &batch, losers.as_ref())?;
        piece.counts.extracted += out.extracted;
        piece.counts.duplicates += out.duplicates;
        piece.counts.rejected += out.rejects.len() as u64;
        for (rule, n) in out.filtered {
            piece.counts.filtered += n;
            *piece.filtered_by_rule.entry(rule).or_default() += n;
        }
        piece.rejects.extend(out.rejects);
        add_adjusted(&mut piece.adjusted, out.adjusted);
        if let (Some(writer), Some(ids)) = (parents.as_mut(), &out.parents) {
            writer.write(&parent_batch(ids)?)?;
        }
        if table.dedupe.is_some() {
            piece.held.push(out.rows);
        } else {
            piece.counts.transformed += out.rows.num_rows() as u64;
            writer.write(&out.rows)?;
        }
    }
    piece.files = writer.finish_nonempty()?;
    piece.parent_files = parents
        .map(PartWriter::finish_nonempty)
        .transpose()?
        .unwrap_or_default();
    piece.key_files = key_writer
        .map(PartWriter::finish_nonempty)
        .transpose()?
        .unwrap_or_default();
    Ok(piece)
}

fn parent_schema() -> arrow::datatypes::SchemaRef {
    Arc::new(Schema::new(vec![Field::new(
        "parent",
        DataType::Utf8,
        false,
    )]))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 9.10: 32k rows of 100 kB texts are 3.2 GB, past Arrow's 2 GiB text offsets.
    #[test]
    fn read_batches_shrink_for_large_rows() {
        assert_eq!(read_batch_rows(128 * 1024, 50 << 20), READ_BATCH_ROWS);
        assert_eq!(read_batch_rows(32 * 1024, 32 * 1024 * 100_000), 2_684);
        assert_eq!(
            read_batch_rows(10, 10 << 30),
            1,
            "a 1 GiB row is read alone"
        );
        assert_eq!(read_batch_rows(0, 0), READ_BATCH_ROWS);
    }
}
