//! Tables fed by several sources (`sources:`): each source's staged rows are transformed
//! with its own column mapping into the same table, then keys given by more than one row
//! are found. Such a key is a conflict: which row should win is not something a rule can
//! know, so none of them is loaded silently over the other; every row with the key is
//! rejected, naming the key and the sources that gave it, with the row's values.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use arrow::array::{ArrayRef, BooleanArray};
use arrow::compute::filter_record_batch;
use arrow::record_batch::RecordBatch;
use rayon::prelude::*;

use super::convert::{display_value, CellError};
use super::{
    add_adjusted, per_column, pieces, transform_piece, write_rejects, Output, Piece, Reject,
    TableReport, TransformError,
};
use crate::config::TableSpec;
use crate::staging::{
    self, read_batches, Counts, FileEntry, Manifest, ManifestEntry, PartWriter, SourceKeys,
    StagingError,
};

/// Transforms every source of `table` and rejects the rows of conflicting keys.
pub(super) fn transform_parts(
    table: &TableSpec,
    extract: &Manifest,
    extract_dir: &Path,
    out_dir: &Path,
    rejects_dir: &Path,
) -> Result<(ManifestEntry, TableReport), TransformError> {
    let started = Instant::now();
    let schema = super::output_schema(table);
    let no_duplicates = super::duplicates::Duplicates::default();
    let specs = table.part_specs();
    // Each source's pieces, numbered on from the previous source's so part files never
    // share a name.
    let mut tasks: Vec<(&TableSpec, crate::transform::duplicates::Piece)> = Vec::new();
    let mut read_sources = Vec::new();
    for spec in &specs {
        let Some(entry) = extract.entry(spec.source.name()) else {
            continue;
        };
        read_sources.push(spec.source.name().to_string());
        for piece in pieces(extract_dir, entry)? {
            tasks.push((spec, piece));
        }
    }
    let done: Vec<(String, Piece)> = tasks
        .par_iter()
        .enumerate()
        .map(|(index, (spec, piece))| {
            let output = Output {
                schema: &schema,
                dir: out_dir,
                index,
                key_columns: None,
            };
            transform_piece(spec, piece, &no_duplicates, &output)
                .map(|p| (spec.source.name().to_string(), p))
        })
        .collect::<Result<_, _>>()?;

    let mut counts = Counts::default();
    let mut rejects = Vec::new();
    let mut adjusted = std::collections::BTreeMap::new();
    let mut files: Vec<(String, FileEntry)> = Vec::new();
    for (source, piece) in done {
        counts.extracted += piece.counts.extracted;
        counts.transformed += piece.counts.transformed;
        counts.rejected += piece.counts.rejected;
        counts.filtered += piece.counts.filtered;
        rejects.extend(piece.rejects);
        add_adjusted(&mut adjusted, piece.adjusted);
        files.extend(piece.files.into_iter().map(|f| (source.clone(), f)));
    }
    let (mut files, conflicts) = reject_conflicts(table, &schema, out_dir, files)?;
    counts.transformed = counts.transformed.saturating_sub(conflicts.len() as u64);
    counts.rejected += conflicts.len() as u64;
    rejects.extend(conflicts);
    if files.is_empty() {
        files =
            PartWriter::new(&out_dir.join(&table.name), &table.name, schema.clone())?.finish()?;
    }
    write_rejects(rejects_dir, &table.name, &rejects)?;
    let seconds = started.elapsed().as_secs_f64();
    let entry = ManifestEntry {
        name: table.name.clone(),
        source: specs
            .first()
            .and_then(|s| extract.entry(s.source.name()))
            .and_then(|e| e.source),
        rows: counts.transformed,
        files,
        schema: staging::schema_pairs(&schema),
        window_reason: format!("all of {}", read_sources.join(", ")),
        counts,
        seconds,
        coerced: per_column(&adjusted, |a| a.coerced),
        rounded: per_column(&adjusted, |a| a.rounded),
        source_keys: Some(SourceKeys {
            incomplete: Some(
                "a table fed by several sources: its keys are computed per source, --prune \
                 does not apply"
                    .into(),
            ),
            ..Default::default()
        }),
        ..Default::default()
    };
    let report = TableReport {
        table: table.name.clone(),
        counts,
        seconds,
        skipped: read_sources
            .is_empty()
            .then(|| format!("none of the sources of `{}` was extracted", table.name)),
        coerced: adjusted.values().map(|a| a.coerced).sum(),
        rounded: adjusted.values().map(|a| a.rounded).sum(),
    };
    Ok((entry, report))
}

/// One output row's key, as text (`prompt_a` or `a,1`).
fn key_text(key_columns: &[ArrayRef], row: usize) -> String {
    key_columns
        .iter()
        .map(|c| display_value(c, row))
        .collect::<Vec<_>>()
        .join(",")
}

/// Finds the keys given by more than one row; when there are some, rewrites the table's
/// files without their rows and returns those rows as rejects. Returns the files to load.
fn reject_conflicts(
    table: &TableSpec,
    schema: &arrow::datatypes::SchemaRef,
    out_dir: &Path,
    files: Vec<(String, FileEntry)>,
) -> Result<(Vec<FileEntry>, Vec<Reject>), TransformError> {
    // Pass 1: who gives each key (keys as text: the output types are the table's).
    let mut givers: HashMap<String, Vec<String>> = HashMap::new();
    let mut read = Vec::new();
    for (source, file) in &files {
        let (_, batches) = read_batches(&out_dir.join(&file.path))?;
        for batch in &batches {
            let keys = key_columns(table, batch)?;
            for row in 0..batch.num_rows() {
                givers
                    .entry(key_text(&keys, row))
                    .or_default()
                    .push(source.clone());
            }
        }
        read.push((source.clone(), batches));
    }
    if givers.values().all(|g| g.len() < 2) {
        return Ok((files.into_iter().map(|(_, f)| f).collect(), Vec::new()));
    }
    // Pass 2: every row again, those of conflicting keys out, into new files.
    let dir = out_dir.join(&table.name);
    let mut writer = PartWriter::new(&dir, &table.name, schema.clone())?.with_name_prefix("merged");
    let mut rejects = Vec::new();
    for (source, batches) in read {
        for batch in batches {
            let keys = key_columns(table, &batch)?;
            let keep: Vec<bool> = (0..batch.num_rows())
                .map(|row| {
                    let key = key_text(&keys, row);
                    let from = givers.get(&key).map_or(&[][..], Vec::as_slice);
                    if from.len() < 2 {
                        return true;
                    }
                    rejects.push(conflict(table, &batch, row, &key, &source, from));
                    false
                })
                .collect();
            let kept = filter_record_batch(&batch, &BooleanArray::from(keep)).map_err(|e| {
                TransformError::Arrow {
                    table: table.name.clone(),
                    source: e,
                }
            })?;
            writer.write(&kept)?;
        }
    }
    let merged = writer.finish_nonempty()?;
    for (_, file) in &files {
        let path = out_dir.join(&file.path);
        std::fs::remove_file(&path).map_err(StagingError::io(&path))?;
    }
    Ok((merged, rejects))
}

fn key_columns(table: &TableSpec, batch: &RecordBatch) -> Result<Vec<ArrayRef>, TransformError> {
    table
        .conflict_key
        .iter()
        .map(|k| {
            batch.column_by_name(k).cloned().ok_or_else(|| {
                TransformError::Staging(StagingError::Invalid {
                    path: table.name.clone().into(),
                    message: format!("key column `{k}` missing from the table's output"),
                })
            })
        })
        .collect()
}

/// The reject of one row of a conflicting key: the key, this row's source, all the sources
/// that gave the key, and the row's values.
fn conflict(
    table: &TableSpec,
    batch: &RecordBatch,
    row: usize,
    key: &str,
    source: &str,
    from: &[String],
) -> Reject {
    let values: serde_json::Map<String, serde_json::Value> = batch
        .schema()
        .fields()
        .iter()
        .zip(batch.columns())
        .map(|(f, c)| {
            let value = if c.is_null(row) {
                serde_json::Value::Null
            } else {
                serde_json::Value::String(display_value(c, row))
            };
            (f.name().clone(), value)
        })
        .collect();
    Reject {
        document_id: format!("{source}: {key}"),
        errors: vec![CellError {
            row,
            column: table.conflict_key.join(", "),
            reason: format!(
                "key conflict: {} rows give key `{key}` (from {}); none is loaded",
                from.len(),
                from.join(", ")
            ),
            raw: Some(serde_json::Value::Object(values).to_string()),
        }],
    }
}
