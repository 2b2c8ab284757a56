//! Column expressions at run time: `value_map`, `regex` and `json` on a source value's text,
//! `const` and `template` as sources. The config checked and compiled them
//! ([`crate::config::Expression`]); here they run per row and their text results are cast to
//! the column's type by the rules staged raw values get ([`super::convert`] and
//! [`super::coerce`]), so `"42"` from a regex loads into an INTEGER column as the string
//! `"42"` from a document would. A value an expression refuses, or whose result does not
//! cast, is a reject naming the expression, with the source value as its raw value.
//!
//! The text of a value: a string as is; a number, boolean or date as the staged value prints
//! (`1`, `1.5`, `true`); an extended JSON number (`{"$numberDecimal": "1.50"}`) as its digits,
//! a date (`{"$date": "2024-03-01T12:00:00Z"}`) as its ISO text;
//! any other value that did not fit the staged type (a document, an array) as its relaxed
//! extended JSON. NULL or missing has no text, and stays NULL.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, StringArray, StringBuilder};
use arrow::datatypes::{DataType, TimeUnit};

use super::convert::{convert_column, CellError, Converted};
use crate::config::{ColumnSpec, Expression, JsonMode, NoMatch, Piece, SqlType, Unmapped};
use crate::staging::fields::FieldKind;

/// Whether `text` casts to `col`'s type (NULL allowed): the config checks its own values
/// (`const`, `value_map` targets, `default`) with the rules the run applies.
pub(crate) fn check_fits(col: &ColumnSpec, text: &str) -> Result<(), String> {
    let nullable = ColumnSpec {
        nullable: true,
        ..col.clone()
    };
    let texts = StringArray::from(vec![Some(text)]);
    let converted = convert_text(&nullable, &texts, chrono_tz::UTC);
    match converted.errors.into_iter().next() {
        Some(e) => Err(e.reason),
        None => Ok(()),
    }
}

/// Texts into `col`'s type: text types take them as they are, the others through the
/// coercions a raw staged string gets. Only `rounded` is counted: an expression's text is
/// declared, not a coercion of messy data.
pub(super) fn convert_text(col: &ColumnSpec, texts: &StringArray, tz: chrono_tz::Tz) -> Converted {
    let direct = matches!(
        col.sql_type,
        SqlType::Varchar(_)
            | SqlType::Char(_)
            | SqlType::Text
            | SqlType::Time
            | SqlType::Jsonb
            | SqlType::Bytea
            | SqlType::Numeric(Some(_))
    );
    let mut converted = if direct {
        let values: ArrayRef = Arc::new(texts.clone());
        convert_column(col, &values, None, tz)
    } else {
        // Staged raw values are JSON: a text is a JSON string.
        let raw: StringArray = texts
            .iter()
            .map(|t| t.map(|t| serde_json::Value::String(t.to_string()).to_string()))
            .collect();
        let staged = FieldKind::for_sql_type(col.sql_type).data_type();
        let values = new_null_array(&staged, texts.len());
        convert_column(col, &values, Some(&raw), tz)
    };
    converted.coerced = 0;
    converted
}

/// A column whose source value goes through `expr` first.
pub(super) fn evaluate(
    col: &ColumnSpec,
    expr: &Expression,
    values: &ArrayRef,
    raw: Option<&StringArray>,
    tz: chrono_tz::Tz,
) -> Converted {
    let sources: Vec<Option<String>> = (0..values.len()).map(|r| text(values, raw, r)).collect();
    let mut results = StringBuilder::new();
    let mut refused = Vec::new();
    for (row, source) in sources.iter().enumerate() {
        let result = match source.as_deref().map(|t| apply(expr, t)) {
            None => None,
            Some(Ok(result)) => result,
            Some(Err(reason)) => {
                refused.push(CellError {
                    row,
                    column: col.name.clone(),
                    reason: format!("{}: {reason}", expr.describe()),
                    raw: source.clone(),
                });
                None
            }
        };
        results.append_option(result);
    }
    let results = results.finish();
    let mut converted = convert_text(col, &results, tz);
    name_cast_errors(&mut converted, &expr.describe(), &results, |row| {
        sources.get(row).cloned().flatten()
    });
    add_errors(&mut converted, refused);
    converted
}

/// One expression on one text: the column's text, `None` for NULL, or why it is refused.
fn apply(expr: &Expression, text: &str) -> Result<Option<String>, String> {
    match expr {
        Expression::ValueMap(map) => match (map.entries.get(text), &map.unmapped) {
            (Some(to), _) => Ok(to.clone()),
            (None, Unmapped::Default(to)) => Ok(Some(to.clone())),
            (None, Unmapped::Null) => Ok(None),
            (None, Unmapped::Reject) => Err("value not in the map (`unmapped: reject`)".into()),
        },
        Expression::Regex { regex, no_match } => {
            let group = regex
                .captures(text)
                .and_then(|c| c.get(1))
                .map(|m| m.as_str().to_string());
            match (group, no_match) {
                (Some(group), _) => Ok(Some(group)),
                (None, NoMatch::Null) => Ok(None),
                (None, NoMatch::Reject) => Err("no match (`no_match: reject`)".into()),
            }
        }
        Expression::Json(JsonMode::Wrap) => {
            Ok(Some(serde_json::Value::String(text.into()).to_string()))
        }
        Expression::Json(JsonMode::Parse) => {
            match serde_json::from_str::<serde_json::Value>(text) {
                Ok(_) => Ok(Some(text.to_string())),
                Err(e) => Err(format!("not JSON ({e})")),
            }
        }
    }
}

/// `const`: the same (checked) text on each of `rows` rows.
pub(super) fn const_column(
    col: &ColumnSpec,
    text: &str,
    rows: usize,
    tz: chrono_tz::Tz,
) -> Converted {
    let texts: StringArray = std::iter::repeat_n(Some(text), rows).collect();
    convert_text(col, &texts, tz)
}

/// `template`: its text per row, from the texts of its parts' values (`parts`, one per
/// `{...}` in order); a part without a value makes the row's text NULL.
pub(super) fn fill_template(
    pieces: &[Piece],
    parts: &[(&ArrayRef, Option<&StringArray>)],
    rows: usize,
) -> StringArray {
    let mut out = StringBuilder::new();
    for row in 0..rows {
        let mut value = String::new();
        let mut next = parts.iter();
        let mut complete = true;
        for piece in pieces {
            match piece {
                Piece::Text(t) => value.push_str(t),
                Piece::Value(_) => match next.next().and_then(|(v, r)| text(v, *r, row)) {
                    Some(t) => value.push_str(&t),
                    None => complete = false,
                },
            }
        }
        // A missing part leaves no value: a NOT NULL column then rejects the row.
        out.append_option(complete.then_some(value));
    }
    out.finish()
}

/// A `template` column of a MongoDB or Matomo table, cast to its type.
pub(super) fn template_column(
    col: &ColumnSpec,
    pieces: &[Piece],
    parts: &[(&ArrayRef, Option<&StringArray>)],
    rows: usize,
    tz: chrono_tz::Tz,
) -> Converted {
    let texts = fill_template(pieces, parts, rows);
    let mut converted = convert_text(col, &texts, tz);
    name_cast_errors(&mut converted, "template", &texts, |row| {
        texts.is_valid(row).then(|| texts.value(row).to_string())
    });
    converted
}

/// A cast error of an expression's result names the expression and what it gave; its raw
/// value is the source value.
fn name_cast_errors(
    converted: &mut Converted,
    what: &str,
    results: &StringArray,
    source: impl Fn(usize) -> Option<String>,
) {
    for e in &mut converted.errors {
        e.reason = if results.is_valid(e.row) {
            format!("{what} gave `{}`: {}", results.value(e.row), e.reason)
        } else {
            format!("{what} gave NULL: {}", e.reason)
        };
        e.raw = source(e.row);
    }
}

/// Adds the rows an expression refused; their NULL is not also a NOT NULL error.
fn add_errors(converted: &mut Converted, refused: Vec<CellError>) {
    let rows: HashSet<usize> = refused.iter().map(|e| e.row).collect();
    converted.errors.retain(|e| !rows.contains(&e.row));
    converted.errors.extend(refused);
    converted.errors.sort_by_key(|e| e.row);
}

/// A staged value's text (see the module doc); `None` for NULL or missing.
pub(super) fn text(values: &ArrayRef, raw: Option<&StringArray>, row: usize) -> Option<String> {
    if values.is_valid(row) {
        if let Some(s) = values.as_string_opt::<i32>() {
            return Some(s.value(row).to_string());
        }
        if values.data_type() == &DataType::Null {
            return None;
        }
        if let DataType::Timestamp(unit, tz) = values.data_type() {
            return timestamp_text(values, *unit, tz.is_some(), row);
        }
        return arrow::util::display::array_value_to_string(values, row).ok();
    }
    let raw = raw.filter(|raw| raw.is_valid(row))?.value(row);
    Some(raw_text(raw))
}

/// A timestamp as ISO text, `Z` when it is in UTC (arrow's own display needs its time zone
/// database for that, which etl does not build).
fn timestamp_text(values: &ArrayRef, unit: TimeUnit, utc: bool, row: usize) -> Option<String> {
    use arrow::datatypes::{
        TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
        TimestampSecondType,
    };
    let t = match unit {
        TimeUnit::Second => chrono::DateTime::from_timestamp(
            values.as_primitive::<TimestampSecondType>().value(row),
            0,
        ),
        TimeUnit::Millisecond => chrono::DateTime::from_timestamp_millis(
            values.as_primitive::<TimestampMillisecondType>().value(row),
        ),
        TimeUnit::Microsecond => chrono::DateTime::from_timestamp_micros(
            values.as_primitive::<TimestampMicrosecondType>().value(row),
        ),
        TimeUnit::Nanosecond => Some(chrono::DateTime::from_timestamp_nanos(
            values.as_primitive::<TimestampNanosecondType>().value(row),
        )),
    }?;
    let text = t.naive_utc().format("%Y-%m-%dT%H:%M:%S%.f").to_string();
    Some(if utc { text + "Z" } else { text })
}

/// A raw (relaxed extended JSON) value's text: strings unquoted, extended numbers as digits.
fn raw_text(raw: &str) -> String {
    use serde_json::Value;
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::String(s)) => s,
        Ok(Value::Object(o)) if o.len() == 1 => {
            let number = o.iter().next().and_then(|(k, v)| match (k.as_str(), v) {
                (
                    "$numberDecimal" | "$numberDouble" | "$numberLong" | "$numberInt" | "$date",
                    Value::String(s),
                ) => Some(s.clone()),
                _ => None,
            });
            number.unwrap_or_else(|| raw.to_string())
        }
        _ => raw.to_string(),
    }
}

#[cfg(test)]
mod tests;
