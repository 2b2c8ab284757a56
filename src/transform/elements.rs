//! Rows made of the elements of an array of structs (the Matomo API's visits, one row per
//! element of `actionDetails`): the same explode as link tables, for arrays whose elements
//! are records rather than ids. Columns take a visit key (`idVisit`), a key of the element
//! (`element.url`), the element's position (`element_index`), or a value computed from those
//! ([`Computed`]: `template`, `coalesce`, `json_object`); every value then goes through the
//! same conversion as any column (`convert_column`), so misfits are rejected with their
//! reason and raw value. A row names its visit and the element's position in rejects.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{
    new_null_array, Array, ArrayRef, AsArray, BooleanArray, Int64Array, StringArray, StringBuilder,
    UInt32Array,
};
use arrow::compute::{cast, filter_record_batch, interleave, take};
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;

use super::convert::{convert_column, CellError};
use super::expr;
use super::rows::{
    arrow_error, output_schema, staged_column, Adjusted, BatchOutput, DocIds, Reject,
};
use super::TransformError;
use crate::config::{ColumnSource, Computed, Operand, Piece, TableSpec};
use crate::staging::fields::RAW_SUFFIX;

/// A column's staged values for every output row, and their `__raw` companions.
struct Resolved {
    values: ArrayRef,
    raw: Option<StringArray>,
}

/// Where each output row comes from.
struct Rows {
    /// The visit (row of the staged batch).
    parent: UInt32Array,
    /// The element, among all elements of the batch.
    element: UInt32Array,
    /// Its position in its visit's array.
    position: Int64Array,
}

/// One staged batch of records with arrays of structs -> the table's rows.
pub(super) fn element_rows(
    table: &TableSpec,
    batch: &RecordBatch,
    ids: &DocIds,
) -> Result<BatchOutput, TransformError> {
    let explode = table
        .explode
        .as_ref()
        .ok_or_else(|| TransformError::MissingField {
            table: table.name.clone(),
            source_name: table.source.name().to_string(),
            field: "(explode)".into(),
        })?;
    let field = explode
        .arrays
        .first()
        .map(|a| a.field.as_str())
        .unwrap_or_default();
    let (values, raw) = staged_column(table, batch, field)?;
    let list = values
        .as_list_opt::<i32>()
        .ok_or_else(|| TransformError::MissingField {
            table: table.name.clone(),
            source_name: table.source.name().to_string(),
            field: format!(
                "{field} (staged as {}, expected a list)",
                values.data_type()
            ),
        })?;
    let too_large = || TransformError::TooLarge(table.name.clone());
    let mut rejects = Vec::new();
    let mut extracted = 0u64;
    let (mut parent, mut element, mut position) = (Vec::new(), Vec::new(), Vec::new());
    let offsets = list.value_offsets();
    for row in 0..batch.num_rows() {
        if let Some(raw) = raw.filter(|r| r.is_valid(row)) {
            extracted += 1;
            rejects.push(Reject {
                document_id: ids.get(row),
                errors: vec![CellError {
                    row,
                    column: field.to_string(),
                    reason: format!("`{field}` is not an array"),
                    raw: Some(raw.value(row).to_string()),
                }],
            });
            continue;
        }
        if list.is_null(row) {
            continue;
        }
        let (start, end) = (offsets[row], offsets[row + 1]);
        for (i, at) in (start..end).enumerate() {
            extracted += 1;
            parent.push(u32::try_from(row).map_err(|_| too_large())?);
            element.push(u32::try_from(at).map_err(|_| too_large())?);
            position.push(i64::try_from(i).map_err(|_| too_large())?);
        }
    }
    let rows = Rows {
        parent: UInt32Array::from(parent),
        element: UInt32Array::from(element),
        position: Int64Array::from(position),
    };
    let items = list.values().as_struct();

    let mut columns = Vec::new();
    let mut errors: BTreeMap<usize, Vec<CellError>> = BTreeMap::new();
    let mut adjusted = BTreeMap::new();
    for col in table.loaded_columns() {
        let tz = table.time_zone;
        let converted = match &col.source {
            ColumnSource::Computed(Computed::Const(text)) => {
                expr::const_column(col, text, rows.parent.len(), tz)
            }
            ColumnSource::Computed(computed) => {
                let r = computed_column(table, batch, items, &rows, computed)?;
                convert_column(col, &r.values, r.raw.as_ref(), tz)
            }
            source => {
                let r = resolve(table, batch, items, &rows, &operand_of(source))?;
                match &col.expression {
                    Some(e) => expr::evaluate(col, e, &r.values, r.raw.as_ref(), tz),
                    None => convert_column(col, &r.values, r.raw.as_ref(), tz),
                }
            }
        };
        for e in converted.errors {
            errors.entry(e.row).or_default().push(e);
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
        columns.push(converted.array);
    }
    let all =
        RecordBatch::try_new(output_schema(table), columns).map_err(|e| arrow_error(table, e))?;
    let keep = BooleanArray::from(
        (0..all.num_rows())
            .map(|r| !errors.contains_key(&r))
            .collect::<Vec<_>>(),
    );
    let kept = filter_record_batch(&all, &keep).map_err(|e| arrow_error(table, e))?;
    for (row, errors) in errors {
        let visit = rows.parent.value(row) as usize;
        rejects.push(Reject {
            document_id: format!(
                "{} (element {} of `{field}`)",
                ids.get(visit),
                rows.position.value(row)
            ),
            errors,
        });
    }
    Ok(BatchOutput {
        rows: kept,
        rejects,
        extracted,
        filtered: BTreeMap::new(),
        parents: None,
        duplicates: 0,
        adjusted,
    })
}

/// The operand a plain column source reads.
fn operand_of(source: &ColumnSource) -> Operand {
    match source {
        ColumnSource::ElementField(key) => Operand::ElementField(key.clone()),
        ColumnSource::ElementIndex => Operand::ElementIndex,
        ColumnSource::Field(path) => Operand::Field(path.clone()),
        // Validation keeps the others out of these tables.
        _ => Operand::ElementIndex,
    }
}

/// An operand's values for every output row.
fn resolve(
    table: &TableSpec,
    batch: &RecordBatch,
    items: &arrow::array::StructArray,
    rows: &Rows,
    operand: &Operand,
) -> Result<Resolved, TransformError> {
    let take_raw = |raw: Option<&StringArray>,
                    indices: &UInt32Array|
     -> Result<Option<StringArray>, TransformError> {
        raw.map(|r| {
            take(r, indices, None)
                .map(|a| a.as_string::<i32>().clone())
                .map_err(|e| arrow_error(table, e))
        })
        .transpose()
    };
    match operand {
        Operand::ElementIndex => Ok(Resolved {
            values: Arc::new(rows.position.clone()),
            raw: None,
        }),
        Operand::Field(path) => {
            let (values, raw) = staged_column(table, batch, path)?;
            Ok(Resolved {
                values: take(values, &rows.parent, None).map_err(|e| arrow_error(table, e))?,
                raw: take_raw(raw, &rows.parent)?,
            })
        }
        Operand::ElementField(key) => {
            let values = items
                .column_by_name(key)
                .ok_or_else(|| TransformError::MissingField {
                    table: table.name.clone(),
                    source_name: table.source.name().to_string(),
                    field: format!("element.{key}"),
                })?;
            let raw = items
                .column_by_name(&format!("{key}{RAW_SUFFIX}"))
                .and_then(|c| c.as_string_opt::<i32>());
            Ok(Resolved {
                values: take(values, &rows.element, None).map_err(|e| arrow_error(table, e))?,
                raw: take_raw(raw, &rows.element)?,
            })
        }
    }
}

/// Whether row `r` of an operand holds a value: typed (an empty text does not count), or raw.
fn present(r: &Resolved, row: usize) -> bool {
    if r.raw.as_ref().is_some_and(|raw| raw.is_valid(row)) {
        return true;
    }
    if r.values.is_null(row) {
        return false;
    }
    r.values
        .as_string_opt::<i32>()
        .is_none_or(|s| !s.value(row).is_empty())
}

/// A value's text, as expressions read it ([`expr::text`]).
fn text(r: &Resolved, row: usize) -> Option<String> {
    expr::text(&r.values, r.raw.as_ref(), row)
}

/// A value as JSON: text as a string, numbers and booleans as themselves, raw as parsed.
fn json_value(r: &Resolved, row: usize) -> Option<serde_json::Value> {
    use serde_json::Value;
    if r.values.is_valid(row) {
        let v = &r.values;
        return Some(match v.data_type() {
            DataType::Utf8 => Value::String(v.as_string::<i32>().value(row).to_string()),
            DataType::Int64 => {
                Value::from(v.as_primitive::<arrow::datatypes::Int64Type>().value(row))
            }
            DataType::Float64 => serde_json::Number::from_f64(
                v.as_primitive::<arrow::datatypes::Float64Type>().value(row),
            )
            .map_or(Value::Null, Value::Number),
            DataType::Boolean => Value::Bool(v.as_boolean().value(row)),
            _ => Value::String(text(r, row)?),
        });
    }
    let raw = r.raw.as_ref().filter(|raw| raw.is_valid(row))?.value(row);
    serde_json::from_str(raw).ok()
}

fn computed_column(
    table: &TableSpec,
    batch: &RecordBatch,
    items: &arrow::array::StructArray,
    rows: &Rows,
    computed: &Computed,
) -> Result<Resolved, TransformError> {
    let n = rows.parent.len();
    let resolve_all = |operands: &[Operand]| {
        operands
            .iter()
            .map(|o| resolve(table, batch, items, rows, o))
            .collect::<Result<Vec<_>, _>>()
    };
    match computed {
        Computed::Coalesce(operands) => coalesce(table, &resolve_all(operands)?, n),
        Computed::Template(pieces) => {
            let operands: Vec<Operand> = pieces
                .iter()
                .filter_map(|p| match p {
                    Piece::Value(o) => Some(o.clone()),
                    Piece::Text(_) => None,
                })
                .collect();
            let resolved = resolve_all(&operands)?;
            let parts: Vec<_> = resolved
                .iter()
                .map(|r| (&r.values, r.raw.as_ref()))
                .collect();
            Ok(Resolved {
                values: Arc::new(expr::fill_template(pieces, &parts, n)),
                raw: None,
            })
        }
        // Handled by the caller (`expr::const_column`), with the column's type.
        Computed::Const(text) => Ok(Resolved {
            values: Arc::new(StringArray::from(vec![Some(text.as_str()); n])),
            raw: None,
        }),
        Computed::JsonObject(keys) => {
            let resolved: Vec<(String, Vec<Resolved>)> = keys
                .iter()
                .map(|(k, ops)| resolve_all(ops).map(|r| (k.clone(), r)))
                .collect::<Result<_, _>>()?;
            let mut out = StringBuilder::new();
            for row in 0..n {
                let mut object = serde_json::Map::new();
                for (key, ops) in &resolved {
                    if let Some(v) = ops
                        .iter()
                        .find(|r| present(r, row))
                        .and_then(|r| json_value(r, row))
                    {
                        object.insert(key.clone(), v);
                    }
                }
                out.append_value(serde_json::Value::Object(object).to_string());
            }
            Ok(Resolved {
                values: Arc::new(out.finish()),
                raw: None,
            })
        }
    }
}

/// Per row, the first operand holding a value (typed values keep their type when every
/// operand has the same; otherwise all are compared as text).
fn coalesce(
    table: &TableSpec,
    operands: &[Resolved],
    n: usize,
) -> Result<Resolved, TransformError> {
    let same_type = operands
        .windows(2)
        .all(|w| w[0].values.data_type() == w[1].values.data_type());
    let values: Vec<ArrayRef> = operands
        .iter()
        .map(|r| {
            if same_type {
                Ok(r.values.clone())
            } else {
                cast(&r.values, &DataType::Utf8).map_err(|e| arrow_error(table, e))
            }
        })
        .collect::<Result<_, _>>()?;
    let data_type = values
        .first()
        .map_or(DataType::Utf8, |v| v.data_type().clone());
    let none = operands.len();
    let mut sources: Vec<ArrayRef> = values;
    sources.push(new_null_array(&data_type, n));
    let raws: Vec<ArrayRef> = operands
        .iter()
        .map(|r| -> ArrayRef {
            r.raw
                .clone()
                .map_or_else(|| new_null_array(&DataType::Utf8, n), |raw| Arc::new(raw))
        })
        .chain(std::iter::once(new_null_array(&DataType::Utf8, n)))
        .collect();
    let picks: Vec<(usize, usize)> = (0..n)
        .map(|row| {
            let which = operands
                .iter()
                .position(|r| present(r, row))
                .unwrap_or(none);
            (which, row)
        })
        .collect();
    let value_refs: Vec<&dyn Array> = sources.iter().map(|a| a.as_ref()).collect();
    let raw_refs: Vec<&dyn Array> = raws.iter().map(|a| a.as_ref()).collect();
    let values = interleave(&value_refs, &picks).map_err(|e| arrow_error(table, e))?;
    let raw = interleave(&raw_refs, &picks).map_err(|e| arrow_error(table, e))?;
    Ok(Resolved {
        values,
        raw: Some(raw.as_string::<i32>().clone()),
    })
}

/// The staged visits with every key `table` reads: staged again from `visit_json` when the
/// config reads keys the extract did not stage (a mapping added since), so a run is
/// replayed offline, without calling the API again.
pub(super) fn complete<'a>(
    table: &TableSpec,
    batch: &'a RecordBatch,
) -> Result<std::borrow::Cow<'a, RecordBatch>, TransformError> {
    let fields = crate::staging::matomo_api::fields_for_tables([table]);
    if fields.staged_in(batch) {
        return Ok(std::borrow::Cow::Borrowed(batch));
    }
    fields
        .restage(batch)
        .map(std::borrow::Cow::Owned)
        .map_err(|e| {
            arrow_error(
                table,
                arrow::error::ArrowError::InvalidArgumentError(e.to_string()),
            )
        })
}
