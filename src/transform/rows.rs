//! One staged batch -> rows of one target table, as pure functions.
//!
//! Direct tables map one document (or Matomo row) to one row; `explode` tables map each array
//! element to one row, with the parent's fields repeated. Every input row ends in exactly one
//! place: an output row, a reject (with all its reasons), or a filtered count.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, StringArray, StringBuilder, UInt32Array,
};
use arrow::compute::{filter_record_batch, take};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;

use super::convert::{convert_column, display_value, target_type, CellError, Converted};
use super::expr;
use super::TransformError;
use crate::config::{ColumnSource, ColumnSpec, Computed, Operand, Source, TableSpec};
use crate::staging::fields::{
    DOCUMENT_BSON, DOCUMENT_ERROR, ID_FIELD, KEPT_DOCUMENT, KEPT_DOCUMENT_ERROR, RAW_SUFFIX,
};

/// A source row that did not make it, with every reason.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reject {
    pub document_id: String,
    pub errors: Vec<CellError>,
}

/// What one staged batch gave for one table.
#[derive(Debug)]
pub(crate) struct BatchOutput {
    pub rows: RecordBatch,
    pub rejects: Vec<Reject>,
    /// Rows (or array elements) counted in.
    pub extracted: u64,
    /// Rows left out by a stated rule, by rule.
    pub filtered: BTreeMap<String, u64>,
    /// For replace-per-parent tables: every parent seen (its `_id`), whatever its arrays hold.
    pub parents: Option<ArrayRef>,
    /// Of `filtered`: rows of losing copies of a repeated `_id`.
    pub duplicates: u64,
    /// Per column, values loaded through a coercion or rounded (only columns with some).
    pub adjusted: BTreeMap<String, Adjusted>,
}

/// Values of one column that PostgreSQL's input rules converted (`coerced`: a number into a
/// text column, a numeric or boolean string, a date string) or that were rounded to fit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Adjusted {
    pub coerced: u64,
    pub rounded: u64,
}

/// The Arrow schema of a table's transform output: its loaded columns, PostgreSQL-ready types.
pub(crate) fn output_schema(table: &TableSpec) -> SchemaRef {
    Arc::new(Schema::new(
        table
            .loaded_columns()
            .map(|c| Field::new(&c.name, target_type(c.sql_type), c.nullable))
            .collect::<Vec<_>>(),
    ))
}

/// Maps one staged batch to `table`'s rows. `duplicates` marks the rows that are losing
/// copies of a repeated `_id` (see [`super::duplicates`]): they are counted as filtered
/// duplicates, in the table's units (documents, or array elements for link tables), and give
/// no row, no reject and no parent.
pub(crate) fn transform_batch(
    table: &TableSpec,
    batch: &RecordBatch,
    duplicates: Option<&BooleanArray>,
) -> Result<BatchOutput, TransformError> {
    let Some(losers) = duplicates else {
        return transform_documents(table, batch);
    };
    let kept = arrow::compute::not(losers).map_err(|e| arrow_error(table, e))?;
    let mut output = transform_documents(
        table,
        &filter_record_batch(batch, &kept).map_err(|e| arrow_error(table, e))?,
    )?;
    let lost = transform_documents(
        table,
        &filter_record_batch(batch, losers).map_err(|e| arrow_error(table, e))?,
    )?
    .extracted;
    output.extracted += lost;
    output.duplicates += lost;
    *output
        .filtered
        .entry(super::duplicates::RULE.to_string())
        .or_default() += lost;
    Ok(output)
}

fn transform_documents(
    table: &TableSpec,
    batch: &RecordBatch,
) -> Result<BatchOutput, TransformError> {
    let mut filtered = BTreeMap::new();
    // Visits staged before the config read more of their keys are staged again from their JSON.
    let restaged;
    let batch = if matches!(table.source, Source::MatomoApi { .. }) {
        restaged = super::elements::complete(table, batch)?;
        restaged.as_ref()
    } else {
        batch
    };
    let kept = apply_filter(table, batch, &mut filtered)?;
    let ids = DocIds::new(table, &kept)?;
    let doc_errors = document_errors(table, &kept)?;
    let mut output = match &table.explode {
        None => {
            let mut out = direct_rows(table, &kept, &ids, &doc_errors)?;
            // Filtered documents were extracted too.
            out.extracted = batch.num_rows() as u64;
            out
        }
        Some(_) if matches!(table.source, Source::MatomoApi { .. }) => {
            super::elements::element_rows(table, &kept, &ids)?
        }
        Some(_) => explode_rows(table, &kept, &ids, &doc_errors)?,
    };
    for (rule, n) in filtered {
        *output.filtered.entry(rule).or_default() += n;
    }
    Ok(output)
}

/// Drops documents missing a field the table's filter requires.
fn apply_filter(
    table: &TableSpec,
    batch: &RecordBatch,
    filtered: &mut BTreeMap<String, u64>,
) -> Result<RecordBatch, TransformError> {
    if table.filter_exists.is_empty() && table.filter_equals.is_empty() {
        return Ok(batch.clone());
    }
    let mut keep = vec![true; batch.num_rows()];
    // A document refused as a whole is rejected with its reason, not filtered.
    let refused = document_errors(table, batch)?;
    for path in &table.filter_exists {
        let (values, raw) = staged_column(table, batch, path)?;
        let mut dropped = 0;
        for (row, k) in keep.iter_mut().enumerate() {
            let present = values.is_valid(row) || raw.is_some_and(|r| r.is_valid(row));
            if *k && !present && !refused.contains_key(&row) {
                *k = false;
                dropped += 1;
            }
        }
        *filtered
            .entry(format!("filter: `{path}` missing or null"))
            .or_default() += dropped;
    }
    for (path, wanted) in &table.filter_equals {
        let (values, raw) = staged_column(table, batch, path)?;
        let mut dropped = 0;
        for (row, k) in keep.iter_mut().enumerate() {
            let equal = super::expr::text(values, raw, row).is_some_and(|t| &t == wanted);
            if *k && !equal && !refused.contains_key(&row) {
                *k = false;
                dropped += 1;
            }
        }
        *filtered
            .entry(format!("filter: `{path}` is not `{wanted}`"))
            .or_default() += dropped;
    }
    filter_record_batch(batch, &BooleanArray::from(keep)).map_err(|e| arrow_error(table, e))
}

/// A staged column and its `__raw` companion (MongoDB sources only).
pub(super) fn staged_column<'a>(
    table: &TableSpec,
    batch: &'a RecordBatch,
    path: &str,
) -> Result<(&'a ArrayRef, Option<&'a StringArray>), TransformError> {
    let values = batch
        .column_by_name(path)
        .ok_or_else(|| TransformError::MissingField {
            table: table.name.clone(),
            source_name: table.source.name().to_string(),
            field: path.to_string(),
        })?;
    let raw = batch
        .column_by_name(&format!("{path}{RAW_SUFFIX}"))
        .and_then(|a| a.as_string_opt::<i32>());
    Ok((values, raw))
}

/// Why a whole document is refused, by row: a document extract could not read (its reason,
/// its BSON bytes in hex), or a MongoDB document without `_id` (missing or null: no key to
/// load it under, no parent for its link rows). Such a row's column errors are replaced by
/// this one reason.
fn document_errors(
    table: &TableSpec,
    batch: &RecordBatch,
) -> Result<BTreeMap<usize, CellError>, TransformError> {
    let mut errors = BTreeMap::new();
    if !matches!(table.source, Source::Mongo { .. }) {
        return Ok(errors);
    }
    // Runs staged before these columns existed have none.
    let refused = batch
        .column_by_name(DOCUMENT_ERROR)
        .and_then(|c| c.as_string_opt::<i32>())
        .filter(|c| c.null_count() < c.len());
    if let Some(refused) = refused {
        let bytes = batch
            .column_by_name(DOCUMENT_BSON)
            .and_then(|c| c.as_binary_opt::<i32>());
        for row in (0..batch.num_rows()).filter(|r| refused.is_valid(*r)) {
            let raw = bytes
                .filter(|b| b.is_valid(row))
                .map(|b| format!("BSON hex: {}", hex::encode(b.value(row))));
            errors.insert(
                row,
                CellError {
                    row,
                    column: DOCUMENT_COLUMN.into(),
                    reason: refused.value(row).to_string(),
                    raw,
                },
            );
        }
    }
    let (ids, _) = staged_column(table, batch, ID_FIELD)?;
    if ids.null_count() == 0 {
        return Ok(errors);
    }
    for row in (0..batch.num_rows()).filter(|r| ids.is_null(*r)) {
        errors.entry(row).or_insert_with(|| CellError {
            row,
            column: ID_FIELD.into(),
            reason: "document without `_id` (missing or null)".into(),
            raw: None,
        });
    }
    Ok(errors)
}

/// The rows whose document extract read but could not write as JSON (`keep_source`): why,
/// with the document's BSON bytes as the raw value.
fn unkept_documents(col: &crate::config::ColumnSpec, batch: &RecordBatch) -> Vec<CellError> {
    let Some(unkept) = batch
        .column_by_name(KEPT_DOCUMENT_ERROR)
        .and_then(|c| c.as_string_opt::<i32>())
    else {
        return Vec::new();
    };
    let bytes = batch
        .column_by_name(DOCUMENT_BSON)
        .and_then(|c| c.as_binary_opt::<i32>());
    (0..batch.num_rows())
        .filter(|row| unkept.is_valid(*row))
        .map(|row| CellError {
            row,
            column: col.name.clone(),
            reason: format!("the document cannot be kept as JSON: {}", unkept.value(row)),
            raw: bytes
                .filter(|b| b.is_valid(row))
                .map(|b| format!("BSON hex: {}", hex::encode(b.value(row)))),
        })
        .collect()
}

/// What a reject of a whole document names as its column.
const DOCUMENT_COLUMN: &str = "(document)";

/// The id a reject names for a row (`_id`, or the Matomo primary key), formatted only for
/// the rows that need it.
pub(super) struct DocIds {
    columns: Vec<ArrayRef>,
}

impl DocIds {
    fn new(table: &TableSpec, batch: &RecordBatch) -> Result<DocIds, TransformError> {
        let key_sources: Vec<String> = match &table.source {
            Source::Mongo { .. } => vec![ID_FIELD.to_string()],
            Source::MatomoApi { .. } => vec![crate::staging::matomo_api::VISIT_ID.to_string()],
            Source::Matomo { .. } | Source::Postgres { .. } => table
                .primary_key
                .iter()
                .filter_map(|k| table.column(k))
                .filter_map(|c| match &c.source {
                    ColumnSource::Field(f) => Some(f.clone()),
                    _ => None,
                })
                .collect(),
        };
        let columns = key_sources
            .iter()
            .map(|k| staged_column(table, batch, k).map(|(v, _)| v.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DocIds { columns })
    }

    pub(super) fn get(&self, row: usize) -> String {
        self.columns
            .iter()
            .map(|c| display_value(c, row))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Converted columns by name, the refused cells grouped by row, and the columns' coerced and
/// rounded counts.
type Fields = (
    BTreeMap<String, ArrayRef>,
    BTreeMap<usize, Vec<CellError>>,
    BTreeMap<String, Adjusted>,
);

/// Converts every `Field` column of the table on `batch`; a row refused as a whole keeps only
/// its document error.
fn convert_fields(
    table: &TableSpec,
    batch: &RecordBatch,
    doc_errors: &BTreeMap<usize, CellError>,
) -> Result<Fields, TransformError> {
    let mut arrays = BTreeMap::new();
    let mut errors: BTreeMap<usize, Vec<CellError>> = BTreeMap::new();
    let mut adjusted = BTreeMap::new();
    for col in table.loaded_columns() {
        let Some(converted) = convert_field(table, batch, col)? else {
            continue;
        };
        for e in converted.errors {
            errors.entry(e.row).or_default().push(e);
        }
        if col.source == ColumnSource::Document {
            for e in unkept_documents(col, batch) {
                errors.entry(e.row).or_default().push(e);
            }
        }
        if converted.coerced + converted.rounded > 0 {
            adjusted.insert(
                col.name.clone(),
                Adjusted {
                    coerced: converted.coerced,
                    rounded: converted.rounded,
                },
            );
        }
        arrays.insert(col.name.clone(), converted.array);
    }
    for (row, e) in doc_errors {
        errors.insert(*row, vec![e.clone()]);
    }
    Ok((arrays, errors, adjusted))
}

/// One column read from the document (or Matomo row): a field, with its expression if it has
/// one, the whole document, a `const` or a `template`; `None` for the other sources.
fn convert_field(
    table: &TableSpec,
    batch: &RecordBatch,
    col: &ColumnSpec,
) -> Result<Option<Converted>, TransformError> {
    let tz = table.time_zone;
    let path = match &col.source {
        ColumnSource::Field(path) => path.as_str(),
        ColumnSource::Document => KEPT_DOCUMENT,
        ColumnSource::Computed(Computed::Const(text)) => {
            return Ok(Some(expr::const_column(col, text, batch.num_rows(), tz)))
        }
        ColumnSource::Computed(Computed::Template(pieces)) => {
            let mut parts = Vec::new();
            for operand in Computed::Template(pieces.clone()).operands() {
                let Operand::Field(path) = operand else {
                    continue;
                };
                parts.push(staged_column(table, batch, path)?);
            }
            return Ok(Some(expr::template_column(
                col,
                pieces,
                &parts,
                batch.num_rows(),
                tz,
            )));
        }
        _ => return Ok(None),
    };
    let (values, raw) = staged_column(table, batch, path)?;
    Ok(Some(match &col.expression {
        Some(expression) => expr::evaluate(col, expression, values, raw, tz),
        None => convert_column(col, values, raw, tz),
    }))
}

fn direct_rows(
    table: &TableSpec,
    batch: &RecordBatch,
    ids: &DocIds,
    doc_errors: &BTreeMap<usize, CellError>,
) -> Result<BatchOutput, TransformError> {
    let (arrays, errors, adjusted) = convert_fields(table, batch, doc_errors)?;
    let keep = BooleanArray::from(
        (0..batch.num_rows())
            .map(|r| !errors.contains_key(&r))
            .collect::<Vec<_>>(),
    );
    let columns = table
        .loaded_columns()
        .map(|c| arrow::compute::filter(&arrays[&c.name], &keep).map_err(|e| arrow_error(table, e)))
        .collect::<Result<Vec<_>, _>>()?;
    let rows =
        RecordBatch::try_new(output_schema(table), columns).map_err(|e| arrow_error(table, e))?;
    let rejects = errors
        .into_iter()
        .map(|(row, errors)| Reject {
            document_id: ids.get(row),
            errors,
        })
        .collect();
    Ok(BatchOutput {
        rows,
        rejects,
        extracted: batch.num_rows() as u64,
        filtered: BTreeMap::new(),
        parents: None,
        duplicates: 0,
        adjusted,
    })
}

fn explode_rows(
    table: &TableSpec,
    batch: &RecordBatch,
    ids: &DocIds,
    doc_errors: &BTreeMap<usize, CellError>,
) -> Result<BatchOutput, TransformError> {
    let explode = table
        .explode
        .as_ref()
        .expect("explode_rows is called for explode tables");
    let element_col = table
        .columns
        .iter()
        .find(|c| c.source == ColumnSource::Element)
        .expect("validated");
    let (parent_arrays, parent_errors, adjusted) = convert_fields(table, batch, doc_errors)?;

    let mut parent_index: Vec<u32> = Vec::new();
    let mut elements = StringBuilder::new();
    let mut types = StringBuilder::new();
    let mut rejects = Vec::new();
    let mut filtered: BTreeMap<String, u64> = BTreeMap::new();
    let mut extracted = 0u64;
    let mut lists = Vec::new();
    for array in &explode.arrays {
        let (values, raw) = staged_column(table, batch, &array.field)?;
        let list = values
            .as_list_opt::<i32>()
            .ok_or_else(|| TransformError::MissingField {
                table: table.name.clone(),
                source_name: table.source.name().to_string(),
                field: format!(
                    "{} (staged as {}, expected a list)",
                    array.field,
                    values.data_type()
                ),
            })?;
        lists.push((array, list, raw));
    }
    for row in 0..batch.num_rows() {
        // A document extract could not read has no known elements: it counts once, rejected.
        if let Some(e) = doc_errors.get(&row).filter(|e| e.column == DOCUMENT_COLUMN) {
            extracted += 1;
            rejects.push(Reject {
                document_id: ids.get(row),
                errors: vec![e.clone()],
            });
            continue;
        }
        let mut seen: HashSet<(&str, Option<&str>)> = HashSet::new();
        for (array, list, raw) in &lists {
            let type_value = array.type_value.as_deref();
            let reject = |reason: String, raw: Option<String>| Reject {
                document_id: ids.get(row),
                errors: vec![CellError {
                    row,
                    column: element_col.name.clone(),
                    reason,
                    raw,
                }],
            };
            if let Some(raw) = raw.filter(|r| r.is_valid(row)) {
                extracted += 1;
                rejects.push(reject(
                    format!("`{}` is not an array", array.field),
                    Some(raw.value(row).to_string()),
                ));
                continue;
            }
            if list.is_null(row) {
                continue;
            }
            // Elements of all rows are one flat struct array; this row's are a range of it.
            let items = list.values().as_struct();
            let (item_ids, item_raws) = (
                items.column(0).as_string::<i32>(),
                items.column(1).as_string::<i32>(),
            );
            let offsets = list.value_offsets();
            let range = offsets[row] as usize..offsets[row + 1] as usize;
            for i in range {
                extracted += 1;
                if items.is_null(i) {
                    *filtered
                        .entry(format!("null element in `{}`", array.field))
                        .or_default() += 1;
                } else if item_ids.is_null(i) {
                    let raw = item_raws
                        .is_valid(i)
                        .then(|| item_raws.value(i).to_string());
                    rejects.push(reject(
                        format!(
                            "element of `{}` is neither an id nor a document with `_id`",
                            array.field
                        ),
                        raw,
                    ));
                } else if !seen.insert((item_ids.value(i), type_value)) {
                    *filtered
                        .entry(format!("duplicate element in `{}`", array.field))
                        .or_default() += 1;
                } else if let Some(errors) = parent_errors.get(&row) {
                    rejects.push(Reject {
                        document_id: ids.get(row),
                        errors: errors.clone(),
                    });
                } else {
                    parent_index.push(
                        u32::try_from(row)
                            .map_err(|_| TransformError::TooLarge(table.name.clone()))?,
                    );
                    elements.append_value(item_ids.value(i));
                    types.append_option(type_value);
                }
            }
        }
    }

    // Element ids and type values get the same checks as any column (length, NOT NULL).
    let indices = UInt32Array::from(parent_index);
    let element_values: ArrayRef = Arc::new(elements.finish());
    let type_values: ArrayRef = Arc::new(types.finish());
    let mut columns = Vec::new();
    let mut late_errors: BTreeMap<usize, Vec<CellError>> = BTreeMap::new();
    for col in table.loaded_columns() {
        let array = match &col.source {
            ColumnSource::Field(_)
            | ColumnSource::Document
            | ColumnSource::Computed(Computed::Template(_) | Computed::Const(_)) => {
                { take(&parent_arrays[&col.name], &indices, None) }
                    .map_err(|e| arrow_error(table, e))?
            }
            ColumnSource::Element | ColumnSource::ArrayType => {
                let values = if col.source == ColumnSource::Element {
                    &element_values
                } else {
                    &type_values
                };
                let converted = convert_column(col, values, None, table.time_zone);
                for e in converted.errors {
                    late_errors.entry(e.row).or_default().push(e);
                }
                converted.array
            }
            ColumnSource::Generated => continue,
            // Validation keeps these in API tables, which `elements` transforms.
            ColumnSource::ElementField(_)
            | ColumnSource::ElementIndex
            | ColumnSource::Computed(Computed::Coalesce(_) | Computed::JsonObject(_)) => {
                return Err(TransformError::MissingField {
                    table: table.name.clone(),
                    source_name: table.source.name().to_string(),
                    field: format!("{} (a source of Matomo API tables)", col.name),
                })
            }
        };
        columns.push(array);
    }
    let mut rows =
        RecordBatch::try_new(output_schema(table), columns).map_err(|e| arrow_error(table, e))?;
    if !late_errors.is_empty() {
        let keep = BooleanArray::from(
            (0..rows.num_rows())
                .map(|r| !late_errors.contains_key(&r))
                .collect::<Vec<_>>(),
        );
        rows = filter_record_batch(&rows, &keep).map_err(|e| arrow_error(table, e))?;
        for (out_row, errors) in late_errors {
            let parent = indices.value(out_row) as usize;
            rejects.push(Reject {
                document_id: ids.get(parent),
                errors,
            });
        }
    }
    // Every parent of the batch (its `_id`), whatever its arrays hold; not the documents
    // refused as a whole.
    let all_ids = staged_column(table, batch, ID_FIELD)?.0;
    let parents = if doc_errors.is_empty() {
        all_ids.clone()
    } else {
        let keep = BooleanArray::from(
            (0..batch.num_rows())
                .map(|r| !doc_errors.contains_key(&r))
                .collect::<Vec<_>>(),
        );
        arrow::compute::filter(all_ids, &keep).map_err(|e| arrow_error(table, e))?
    };
    let parents = Some(parents);
    Ok(BatchOutput {
        rows,
        rejects,
        extracted,
        filtered,
        parents,
        duplicates: 0,
        adjusted,
    })
}

pub(super) fn arrow_error(table: &TableSpec, e: arrow::error::ArrowError) -> TransformError {
    TransformError::Arrow {
        table: table.name.clone(),
        source: e,
    }
}
