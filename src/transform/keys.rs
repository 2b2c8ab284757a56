//! The keys a source holds for a table, which `etl load --prune` keeps: a target row whose key
//! is not among them was deleted from the source.
//!
//! Which keys are "in the source": those of every document (or Matomo row) the extract read,
//! whatever became of it here. A document rejected by transform, filtered by a rule, or a
//! losing copy of a repeated `_id` still exists in the source, so its key is kept and its row
//! is never pruned. The key is the table's upsert key, or for a link table its parent column
//! (a link row goes when its parent document is gone; while the parent is there its children
//! follow the table's `children` rule). Each key column is converted from the staged document
//! exactly as the column is, so the keys compare with the target's values:
//!
//! * a document whose key converts gives its key;
//! * a document without the key's fields (a missing or null `_id`, a logbook entry without
//!   `user`) gives none: no target row can stand for it;
//! * a document whose key cannot be known (refused as unreadable with an unreadable `_id`, or
//!   a key value that does not convert) makes the table's keys incomplete: `--prune` refuses
//!   the table then, naming the reason, since the row of such a document could be pruned.
//!
//! Keys are written only when the extract took the whole source (`window_since` absent, not
//! extracted by key, the collection found): after a windowed extract a missing key means "not
//! extracted", not "deleted", and the table's keys say so instead.

use std::sync::Arc;

use arrow::array::{Array, AsArray, BooleanArray};
use arrow::compute::filter;
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use super::convert::{convert_column, target_type};
use super::rows::staged_column;
use super::TransformError;
use crate::config::{ColumnSource, ColumnSpec, Source, TableSpec};
use crate::staging::fields::DOCUMENT_ERROR;
use crate::staging::ManifestEntry;

/// What transform records of a table's source keys.
pub(super) enum KeyPlan<'a> {
    /// Write the keys of these columns.
    Write(Vec<&'a ColumnSpec>),
    /// The source's keys cannot be known from this run: why.
    Incomplete(String),
}

/// The key columns of a table and whether the extract lets their keys be known.
pub(super) fn key_plan<'a>(table: &'a TableSpec, extract: &ManifestEntry) -> KeyPlan<'a> {
    let source = table.source.name();
    if extract.by_key {
        return KeyPlan::Incomplete(
            "the run holds only documents extracted by key (etl reconcile), not the whole source"
                .into(),
        );
    }
    if let Some(since) = &extract.window_since {
        return KeyPlan::Incomplete(format!(
            "extracted with a window (from {since}, {}): a key missing from it was not \
             extracted, not deleted; extract with --full",
            extract.window_reason
        ));
    }
    if let Source::MatomoApi { .. } = table.source {
        // Its extract reads days of visits and explodes their actions; whether every visit
        // of the site was read is not something this run can tell.
        return KeyPlan::Incomplete(
            "a Matomo API table: its source's keys cannot be listed, --prune does not apply".into(),
        );
    }
    if extract.missing {
        return KeyPlan::Incomplete(format!(
            "`{source}` was not in the source: its keys are unknown"
        ));
    }
    let names: Vec<&str> = match &table.explode {
        Some(e) => vec![e.parent_column.as_str()],
        None => table.conflict_key.iter().map(String::as_str).collect(),
    };
    let mut columns = Vec::new();
    for name in names {
        match table.column(name) {
            Some(c) if matches!(c.source, ColumnSource::Field(_)) && c.expression.is_none() => {
                columns.push(c)
            }
            _ => {
                return KeyPlan::Incomplete(format!(
                    "key column `{name}` is not read from a field of `{source}`"
                ))
            }
        }
    }
    KeyPlan::Write(columns)
}

/// The schema of a table's key files: its key columns, typed as in the transform output.
pub(super) fn key_schema(columns: &[&ColumnSpec]) -> SchemaRef {
    Arc::new(Schema::new(
        columns
            .iter()
            .map(|c| Field::new(&c.name, target_type(c.sql_type), true))
            .collect::<Vec<_>>(),
    ))
}

/// The keys of every row of a staged batch, and how many rows have a key that cannot be known.
pub(super) fn source_keys(
    table: &TableSpec,
    columns: &[&ColumnSpec],
    batch: &RecordBatch,
) -> Result<(RecordBatch, u64), TransformError> {
    let rows = batch.num_rows();
    // A document extract could not read (its fields are NULL), Mongo only.
    let refused = match table.source {
        Source::Mongo { .. } => batch
            .column_by_name(DOCUMENT_ERROR)
            .and_then(|c| c.as_string_opt::<i32>()),
        Source::Matomo { .. } | Source::MatomoApi { .. } | Source::Postgres { .. } => None,
    };
    let mut arrays = Vec::with_capacity(columns.len());
    // A key value the source has but that does not convert: the key is unknown.
    let mut lost = vec![false; rows];
    for col in columns {
        let ColumnSource::Field(path) = &col.source else {
            continue;
        };
        let (values, raw) = staged_column(table, batch, path)?;
        let converted = convert_column(col, values, raw, table.time_zone).array;
        for (row, lost) in lost.iter_mut().enumerate() {
            let present = values.is_valid(row) || raw.is_some_and(|r| r.is_valid(row));
            *lost |= present && converted.is_null(row);
        }
        arrays.push(converted);
    }
    let mut unknown = 0;
    let keep: Vec<bool> = (0..rows)
        .map(|row| {
            let complete = arrays.iter().all(|a| a.is_valid(row));
            if !complete && (lost[row] || refused.is_some_and(|r| r.is_valid(row))) {
                unknown += 1;
            }
            complete
        })
        .collect();
    let keep = BooleanArray::from(keep);
    let arrays = arrays
        .iter()
        .map(|a| filter(a, &keep))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| arrow_error(table, e))?;
    let keys =
        RecordBatch::try_new(key_schema(columns), arrays).map_err(|e| arrow_error(table, e))?;
    Ok((keys, unknown))
}

fn arrow_error(table: &TableSpec, e: arrow::error::ArrowError) -> TransformError {
    TransformError::Arrow {
        table: table.name.clone(),
        source: e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::staging::fields::{fields_for_collection, staged_schema};
    use arrow::array::{ArrayRef, StringArray, TimestampMillisecondArray};
    use arrow::util::pretty::pretty_format_batches;

    fn config() -> Config {
        Config::load(&std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config")).unwrap()
    }

    /// One staged logbook document: `_id`, `user`, `user__raw`, `day` (ms), refused.
    struct Logbook {
        id: &'static str,
        user: Option<&'static str>,
        user_raw: Option<&'static str>,
        day: Option<i64>,
        refused: bool,
    }

    /// A staged `coachinglogbooks` batch of these documents.
    fn logbooks(rows: &[Logbook]) -> RecordBatch {
        let config = config();
        let schema = Arc::new(staged_schema(&fields_for_collection(
            &config,
            "coachinglogbooks",
            false,
        )));
        let text = |pick: &dyn Fn(&Logbook) -> Option<String>| -> ArrayRef {
            Arc::new(StringArray::from(rows.iter().map(pick).collect::<Vec<_>>()))
        };
        let columns: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .map(|f| -> ArrayRef {
                match f.name().as_str() {
                    "_id" => text(&|r| Some(r.id.to_string())),
                    "user" => text(&|r| r.user.map(str::to_string)),
                    "user__raw" => text(&|r| r.user_raw.map(str::to_string)),
                    "day" => Arc::new(
                        TimestampMillisecondArray::from(
                            rows.iter().map(|r| r.day).collect::<Vec<_>>(),
                        )
                        .with_timezone("UTC"),
                    ),
                    DOCUMENT_ERROR => text(&|r| r.refused.then(|| "unreadable".to_string())),
                    _ => arrow::array::new_null_array(f.data_type(), rows.len()),
                }
            })
            .collect();
        RecordBatch::try_new(schema, columns).unwrap()
    }

    #[test]
    fn keys_of_rejected_and_filtered_documents_are_kept_unknown_ones_counted() {
        let config = config();
        let logbook = config.table("users_logbook").unwrap();
        let extract = ManifestEntry::default();
        let KeyPlan::Write(columns) = key_plan(logbook, &extract) else {
            panic!("the whole source was extracted");
        };
        let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["user_id", "day"]);
        let day = 1_709_251_200_000; // 2024-03-01T00:00:00Z
        let row = |id, user, user_raw, day, refused| Logbook {
            id,
            user,
            user_raw,
            day,
            refused,
        };
        let batch = logbooks(&[
            row("l1", Some("u1"), None, Some(day), false),
            // No `user`: filtered by the table's rule, no key, nothing unknown.
            row("l2", None, None, Some(day), false),
            // A `user` that is not text: the key cannot be known.
            row("l3", None, Some("{\"a\":1}"), Some(day), false),
            // Refused by extract as unreadable: unknown.
            row("l4", None, None, None, true),
        ]);
        let (keys, unknown) = source_keys(logbook, &columns, &batch).unwrap();
        assert_eq!(unknown, 2);
        let shown = pretty_format_batches(&[keys]).unwrap().to_string();
        assert_eq!(
            shown,
            "+---------+------------+\n| user_id | day        |\n+---------+------------+\n| u1      | 2024-03-01 |\n+---------+------------+"
        );
    }

    #[test]
    fn link_tables_are_keyed_by_their_parent_and_windows_make_keys_incomplete() {
        let config = config();
        let links = config.table("users_targets").unwrap();
        match key_plan(links, &ManifestEntry::default()) {
            KeyPlan::Write(columns) => assert_eq!(columns[0].name, "user_id"),
            KeyPlan::Incomplete(why) => panic!("{why}"),
        }
        let windowed = ManifestEntry {
            window_since: Some(crate::staging::WatermarkValue::Int(3)),
            window_reason: "target watermark".into(),
            ..Default::default()
        };
        let KeyPlan::Incomplete(why) = key_plan(links, &windowed) else {
            panic!("a windowed extract does not know the source's keys");
        };
        assert!(why.contains("window") && why.contains("--full"), "{why}");
        let missing = ManifestEntry {
            missing: true,
            ..Default::default()
        };
        assert!(matches!(key_plan(links, &missing), KeyPlan::Incomplete(_)));
    }
}
