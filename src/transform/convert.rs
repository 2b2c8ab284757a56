//! One staged column -> one target column of its `sql_type`, with a reason for every value
//! that does not fit.
//!
//! Vectorised: arrow's `cast` does the conversion (a value it cannot represent comes back
//! NULL, which is how out-of-range values are found), then the checks PostgreSQL would fail
//! on run over the result (length, NUL bytes, NOT NULL). Values staged in a `__raw` column
//! (they did not fit the staged type) get one more chance: strings parsed as dates, and the
//! coercions of PostgreSQL's input rules ([`super::coerce`]); they are counted, and rejected
//! with their raw value when nothing fits. Decimals are rounded to a `NUMERIC(p,s)`'s scale
//! half away from zero, as PostgreSQL's cast does, and counted.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Date32Builder, Decimal128Builder, Float32Array, Float64Array,
    StringArray, TimestampMicrosecondBuilder,
};
use arrow::compute::{cast_with_options, interleave, CastOptions};
use arrow::datatypes::{DataType, Date32Type, TimeUnit, TimestampMillisecondType};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Offset, TimeZone, Utc};

use super::coerce::{coerce, coerced_array, Coerced};
use crate::config::{ColumnSpec, SqlType};
use crate::decimal::{fits_precision, Decimal, DecimalError, Rounding};
use crate::pg_time;

/// Why one value of a column was refused.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct CellError {
    pub row: usize,
    pub column: String,
    pub reason: String,
    /// The value as the source had it (extended JSON for MongoDB values).
    pub raw: Option<String>,
}

/// The Arrow type a target column has in transform output (what load writes as `sql_type`).
pub(crate) fn target_type(ty: SqlType) -> DataType {
    match ty {
        SqlType::Varchar(_) | SqlType::Char(_) | SqlType::Text | SqlType::Jsonb => DataType::Utf8,
        SqlType::SmallInt => DataType::Int16,
        SqlType::Integer | SqlType::Serial => DataType::Int32,
        SqlType::BigInt | SqlType::BigSerial => DataType::Int64,
        SqlType::Boolean => DataType::Boolean,
        SqlType::Real => DataType::Float32,
        SqlType::Double => DataType::Float64,
        SqlType::Numeric(Some((p, s))) if p <= 38 => decimal_type(p, s),
        SqlType::Numeric(_) => DataType::Utf8,
        SqlType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
        SqlType::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        SqlType::Date => DataType::Date32,
        SqlType::Time => DataType::Time64(TimeUnit::Microsecond),
        SqlType::Bytea => DataType::Binary,
    }
}

fn decimal_type(p: u32, s: u32) -> DataType {
    // p <= 38 and s <= p are checked by the config (SqlType::parse).
    DataType::Decimal128(u8::try_from(p).unwrap_or(38), i8::try_from(s).unwrap_or(0))
}

/// A converted column.
#[derive(Debug)]
pub(super) struct Converted {
    pub array: ArrayRef,
    /// The refused cells (their slots are NULL in `array`), in row order.
    pub errors: Vec<CellError>,
    /// Values loaded through a coercion of PostgreSQL's input rules (a number into a text
    /// column, a numeric or boolean string, a date string).
    pub coerced: u64,
    /// Values rounded to fit (a `NUMERIC(p,s)`'s scale, a large integer into a double).
    pub rounded: u64,
}

/// Converts `values` (with its optional `__raw` companion) to `col`'s type.
pub(super) fn convert_column(
    col: &ColumnSpec,
    values: &ArrayRef,
    raw: Option<&StringArray>,
    tz: chrono_tz::Tz,
) -> Converted {
    let mut errors = Vec::new();
    let (mut coerced, mut rounded) = (0_u64, 0_u64);
    let error = |row: usize, reason: String, raw: Option<String>| CellError {
        row,
        column: col.name.clone(),
        reason,
        raw,
    };
    let target = target_type(col.sql_type);
    let converted: ArrayRef = match (col.sql_type, values.data_type()) {
        (SqlType::Date, DataType::Timestamp(TimeUnit::Millisecond, _)) => dates_in_zone(
            values.as_primitive::<TimestampMillisecondType>().iter(),
            raw,
            tz,
            &mut coerced,
            |row, reason, r| errors.push(error(row, reason, Some(r))),
        ),
        (
            SqlType::Timestamp | SqlType::TimestampTz,
            DataType::Timestamp(TimeUnit::Millisecond, _),
        ) => {
            let target_tz = matches!(col.sql_type, SqlType::TimestampTz).then(|| "UTC".to_string());
            timestamps(
                values.as_primitive::<TimestampMillisecondType>().iter(),
                raw,
                col.sql_type,
                target_tz,
                &mut coerced,
                |row, reason, r| errors.push(error(row, reason, Some(r))),
            )
        }
        (SqlType::Real | SqlType::Double, DataType::Utf8) => {
            floats_from_text(values.as_string::<i32>(), col.sql_type, |row, reason, r| {
                errors.push(error(row, reason, Some(r.to_string())))
            })
        }
        (SqlType::Numeric(Some((p, s))), DataType::Utf8) if p <= 38 => decimals_from_text(
            values.as_string::<i32>(),
            p,
            s,
            &mut rounded,
            |row, reason, r| errors.push(error(row, reason, Some(r.to_string()))),
        ),
        _ => {
            let options = CastOptions {
                safe: true,
                ..Default::default()
            };
            match cast_with_options(values, &target, &options) {
                Ok(array) => {
                    for row in 0..values.len() {
                        if values.is_valid(row) && array.is_null(row) {
                            let shown = display_value(values, row);
                            errors.push(error(
                                row,
                                format!("out of range for {}", col.sql_type),
                                Some(shown),
                            ));
                        }
                    }
                    array
                }
                Err(e) => {
                    // A staged type the target cannot take at all: every non-null value is refused.
                    for row in (0..values.len()).filter(|r| values.is_valid(*r)) {
                        errors.push(error(
                            row,
                            format!("cannot convert to {}: {e}", col.sql_type),
                            Some(display_value(values, row)),
                        ));
                    }
                    arrow::array::new_null_array(&target, values.len())
                }
            }
        }
    };

    // Values that did not fit the staged type: dates were parsed above; the others get
    // PostgreSQL's input rules, or are refused with their raw value.
    let mut converted = converted;
    if let Some(raw) = raw.filter(|r| r.null_count() < r.len()) {
        let dates = matches!(
            col.sql_type,
            SqlType::Date | SqlType::Timestamp | SqlType::TimestampTz
        );
        let failed = rows_with_errors(&errors, raw.len());
        let mut rescued = Vec::new();
        for row in (0..raw.len()).filter(|r| !failed[*r] && raw.is_valid(*r)) {
            if dates {
                if converted.is_null(row) {
                    let reason = format!("wrong type for {}", col.sql_type);
                    errors.push(error(row, reason, Some(raw.value(row).to_string())));
                }
                continue;
            }
            match coerce(col.sql_type, raw.value(row)) {
                Ok(c) => {
                    rounded += u64::from(c.rounded);
                    rescued.push((row, c.value));
                }
                Err(reason) => errors.push(error(row, reason, Some(raw.value(row).to_string()))),
            }
        }
        if !rescued.is_empty() {
            match merge(&converted, &target, rescued) {
                Ok((array, n)) => {
                    converted = array;
                    coerced += n;
                }
                Err(rows) => {
                    for (row, shown) in rows {
                        let reason = format!("cannot convert to {}", col.sql_type);
                        errors.push(error(row, reason, Some(shown)));
                    }
                }
            }
        }
    }

    // Checks PostgreSQL would fail the whole COPY on.
    if let Some(strings) = converted.as_string_opt::<i32>() {
        let limit = match col.sql_type {
            SqlType::Varchar(Some(n)) | SqlType::Char(n) => Some(n as usize),
            _ => None,
        };
        for (row, value) in strings.iter().enumerate() {
            let Some(value) = value else { continue };
            if value.contains('\0') {
                errors.push(error(
                    row,
                    "NUL byte in text".into(),
                    Some(value.escape_debug().to_string()),
                ));
            } else if col.sql_type == SqlType::Jsonb && has_nul_escape(value) {
                errors.push(error(
                    row,
                    "JSON holding the NUL character (\\u0000), which jsonb cannot store".into(),
                    Some(value.to_string()),
                ));
            } else if let Some(n) = limit {
                let chars = value.chars().count();
                if chars > n {
                    errors.push(error(
                        row,
                        format!("{chars} characters, longer than {}", col.sql_type),
                        Some(value.to_string()),
                    ));
                }
            }
        }
    }
    if !col.nullable {
        let failed = rows_with_errors(&errors, converted.len());
        for row in (0..converted.len()).filter(|r| converted.is_null(*r) && !failed[*r]) {
            errors.push(error(row, "NULL in NOT NULL column".into(), None));
        }
    }
    errors.sort_by_key(|e| e.row);
    Converted {
        array: converted,
        errors,
        coerced,
        rounded,
    }
}

/// `converted` with the coerced values put in their rows; the number put. On a type
/// mismatch (a bug, not data), the rows and their values for rejects.
fn merge(
    converted: &ArrayRef,
    target: &DataType,
    rescued: Vec<(usize, super::coerce::Coerced)>,
) -> Result<(ArrayRef, u64), Vec<(usize, String)>> {
    let rows: Vec<usize> = rescued.iter().map(|(row, _)| *row).collect();
    let shown = |rescued: &[(usize, super::coerce::Coerced)]| {
        rescued
            .iter()
            .map(|(row, v)| (*row, format!("{v:?}")))
            .collect::<Vec<_>>()
    };
    let debug = shown(&rescued);
    let values: Vec<_> = rescued.into_iter().map(|(_, v)| v).collect();
    let Some(patch) = coerced_array(target, values) else {
        return Err(debug);
    };
    // (0, row) keeps the converted value, (1, k) takes the k-th coerced one.
    let mut indices: Vec<(usize, usize)> = (0..converted.len()).map(|r| (0, r)).collect();
    for (k, row) in rows.iter().enumerate() {
        if let Some(slot) = indices.get_mut(*row) {
            *slot = (1, k);
        }
    }
    match interleave(&[converted.as_ref(), patch.as_ref()], &indices) {
        Ok(array) => Ok((array, rows.len() as u64)),
        Err(_) => Err(debug),
    }
}

/// Which rows already have an error (a lookup per row, not a scan of the errors: a column
/// failing on every row would otherwise cost rows x errors).
fn rows_with_errors(errors: &[CellError], rows: usize) -> Vec<bool> {
    let mut failed = vec![false; rows];
    for e in errors {
        if let Some(f) = failed.get_mut(e.row) {
            *f = true;
        }
    }
    failed
}

/// Timestamps (ms since epoch, UTC) -> microseconds; raw strings parsed as dates. A value
/// outside what PostgreSQL (and the staged µs) can hold is refused with its reason.
fn timestamps(
    values: impl Iterator<Item = Option<i64>>,
    raw: Option<&StringArray>,
    ty: SqlType,
    tz: Option<String>,
    coerced: &mut u64,
    mut bad: impl FnMut(usize, String, String),
) -> ArrayRef {
    let mut out = TimestampMicrosecondBuilder::new().with_timezone_opt(tz);
    for (row, ms) in values.enumerate() {
        let parsed = match (ms, raw_at(raw, row)) {
            (Some(ms), _) => match timestamp_micros(ms, ty) {
                Ok(micros) => Some(micros),
                Err(reason) => {
                    bad(row, reason, bson_date_json(ms));
                    None
                }
            },
            (None, Some(r)) => {
                let t = parse_date_text(r).map(|t| t.timestamp_micros());
                match t.map(|t| check_timestamp(t, ty)) {
                    Some(Ok(micros)) => {
                        *coerced += 1;
                        Some(micros)
                    }
                    Some(Err(reason)) => {
                        bad(row, reason, r.to_string());
                        None
                    }
                    None => {
                        bad(row, "unparseable date".into(), r.to_string());
                        None
                    }
                }
            }
            (None, None) => None,
        };
        out.append_option(parsed);
    }
    Arc::new(out.finish())
}

/// A BSON date (ms since 1970) as staged microseconds, if PostgreSQL's `TIMESTAMP` holds it.
fn timestamp_micros(ms: i64, ty: SqlType) -> Result<i64, String> {
    match ms.checked_mul(1000) {
        Some(micros) => check_timestamp(micros, ty),
        None => Err(timestamp_range_error(ms.div_euclid(MILLIS_PER_DAY), ty)),
    }
}

fn check_timestamp(micros: i64, ty: SqlType) -> Result<i64, String> {
    if micros < pg_time::FIRST_TIMESTAMP_MICROS {
        return Err(timestamp_range_error(
            micros.div_euclid(pg_time::MICROS_PER_DAY),
            ty,
        ));
    }
    Ok(micros)
}

fn timestamp_range_error(days: i64, ty: SqlType) -> String {
    // PostgreSQL's TIMESTAMP ends in 294276; Arrow's µs since 1970 end on 294247-01-10.
    format!(
        "date out of range for {ty}: year {}, outside 4714-11-24 BC .. 294247-01-10",
        pg_time::year_text(days)
    )
}

fn date_range_error(days: i64) -> String {
    format!(
        "date out of range for DATE: year {}, outside 4714-11-24 BC .. 5874897-12-31",
        pg_time::year_text(days)
    )
}

/// A day (since 1970) as `Date32`, if PostgreSQL's `DATE` holds it.
fn check_date(days: i64) -> Result<i32, String> {
    if (pg_time::FIRST_DAY..=pg_time::LAST_DATE).contains(&days) {
        i32::try_from(days).map_err(|_| date_range_error(days))
    } else {
        Err(date_range_error(days))
    }
}

/// Whether JSON text holds the escape `\u0000`, which PostgreSQL's `jsonb` refuses (it
/// cannot store a NUL character): the whole COPY would fail on it.
fn has_nul_escape(json: &str) -> bool {
    let bytes = json.as_bytes();
    let mut i = 0;
    while let Some(at) = bytes
        .get(i..)
        .and_then(|b| b.iter().position(|c| *c == b'\\'))
    {
        let at = i + at;
        if bytes.get(at + 1..at + 6) == Some(b"u0000") {
            return true;
        }
        // Skip the escaped character, so `\\u0000` (a backslash, then text) is not one.
        i = at + 2;
    }
    false
}

const MILLIS_PER_DAY: i64 = 86_400_000;

/// A BSON date as relaxed extended JSON, the way the raw column would show it.
fn bson_date_json(ms: i64) -> String {
    format!("{{\"$date\":{{\"$numberLong\":\"{ms}\"}}}}")
}

/// The calendar day (since 1970) an instant falls on in `tz`. Integer arithmetic, so every
/// BSON date has a day; beyond chrono's ±262143 years the zone's offset at the nearest
/// instant chrono knows is used.
fn local_day(ms: i64, tz: chrono_tz::Tz) -> i64 {
    let secs = ms.div_euclid(1000);
    let offset = if tz == chrono_tz::UTC {
        0
    } else {
        let known = secs.clamp(
            DateTime::<Utc>::MIN_UTC.timestamp(),
            DateTime::<Utc>::MAX_UTC.timestamp(),
        );
        DateTime::from_timestamp(known, 0).map_or(0, |t| {
            i64::from(
                tz.offset_from_utc_datetime(&t.naive_utc())
                    .fix()
                    .local_minus_utc(),
            )
        })
    };
    // |secs| <= 9.3e15 and |offset| < 1 day: no overflow.
    (secs + offset).div_euclid(86_400)
}

/// Timestamps -> the calendar date they fall on in `tz`; raw strings parsed as dates.
fn dates_in_zone(
    values: impl Iterator<Item = Option<i64>>,
    raw: Option<&StringArray>,
    tz: chrono_tz::Tz,
    coerced: &mut u64,
    mut bad: impl FnMut(usize, String, String),
) -> ArrayRef {
    let mut out = Date32Builder::new();
    for (row, ms) in values.enumerate() {
        let day = match (ms, raw_at(raw, row)) {
            (Some(ms), _) => {
                Some(check_date(local_day(ms, tz)).map_err(|e| (e, bson_date_json(ms))))
            }
            (None, Some(r)) => {
                // A bare `YYYY-MM-DD` is already a date: no zone applies.
                let day = match NaiveDate::parse_from_str(unquote(r), "%Y-%m-%d") {
                    Ok(d) => Some(i64::from(Date32Type::from_naive_date(d))),
                    Err(_) => parse_date_text(r).map(|t| local_day(t.timestamp_millis(), tz)),
                };
                match day {
                    Some(day) => {
                        let day = check_date(day).map_err(|e| (e, r.to_string()));
                        *coerced += u64::from(day.is_ok());
                        Some(day)
                    }
                    None => Some(Err(("unparseable date".to_string(), r.to_string()))),
                }
            }
            (None, None) => None,
        };
        match day {
            Some(Ok(day)) => out.append_value(day),
            Some(Err((reason, raw))) => {
                bad(row, reason, raw);
                out.append_null();
            }
            None => out.append_null(),
        }
    }
    Arc::new(out.finish())
}

fn raw_at(raw: Option<&StringArray>, row: usize) -> Option<&str> {
    raw.filter(|r| r.is_valid(row)).map(|r| r.value(row))
}

fn unquote(raw: &str) -> &str {
    raw.strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(raw)
}

/// Dates MongoDB apps store as strings: RFC 3339, `YYYY-MM-DD[ T]HH:MM:SS[.f]` (taken as
/// UTC), or `YYYY-MM-DD` (midnight UTC). The raw value is JSON, so strings are quoted.
pub(crate) fn parse_date_text(raw: &str) -> Option<DateTime<Utc>> {
    let text = unquote(raw).trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc());
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// Decimal text -> Decimal128(p, s), rounded half away from zero to the scale like
/// PostgreSQL's cast (counted in `rounded`); more integer digits than the type holds is a
/// reject.
/// Text into REAL / DOUBLE PRECISION by PostgreSQL's float input rules (`coerce`): a number
/// beyond the type's range is refused, where arrow's cast read it as infinity.
fn floats_from_text(
    values: &StringArray,
    ty: SqlType,
    mut bad: impl FnMut(usize, String, &str),
) -> ArrayRef {
    let mut floats = Vec::with_capacity(values.len());
    for (row, value) in values.iter().enumerate() {
        let Some(text) = value else {
            floats.push(None);
            continue;
        };
        // Raw values are JSON: a text is a JSON string.
        let raw = serde_json::Value::String(text.to_string()).to_string();
        let float = match coerce(ty, &raw).map(|c| c.value) {
            Ok(Coerced::Float(f)) => Ok(f),
            Ok(_) => Err(format!("wrong type for {ty}")),
            Err(reason) => Err(reason),
        };
        match float {
            Ok(f) => floats.push(Some(f)),
            Err(reason) => {
                bad(row, reason, text);
                floats.push(None);
            }
        }
    }
    if ty == SqlType::Real {
        // `coerce` checked every value is within REAL's range.
        #[allow(clippy::cast_possible_truncation)]
        let singles: Vec<Option<f32>> = floats.into_iter().map(|f| f.map(|f| f as f32)).collect();
        Arc::new(Float32Array::from(singles))
    } else {
        Arc::new(Float64Array::from(floats))
    }
}

fn decimals_from_text(
    values: &StringArray,
    p: u32,
    s: u32,
    rounded: &mut u64,
    mut bad: impl FnMut(usize, String, &str),
) -> ArrayRef {
    let mut out = Decimal128Builder::with_capacity(values.len());
    for (row, value) in values.iter().enumerate() {
        let Some(text) = value else {
            out.append_null();
            continue;
        };
        match parse_decimal(text, p, s) {
            Ok((n, was_rounded)) => {
                *rounded += u64::from(was_rounded);
                out.append_value(n);
            }
            Err(reason) => {
                bad(row, reason, text);
                out.append_null();
            }
        }
    }
    let array = out
        .finish()
        .with_precision_and_scale(u8::try_from(p).unwrap_or(38), i8::try_from(s).unwrap_or(0));
    match array {
        Ok(a) => Arc::new(a),
        Err(_) => arrow::array::new_null_array(&decimal_type(p, s), values.len()),
    }
}

/// `-12.50` with (p=10, s=2) -> (-1250, false); `37.123456` -> (3712, true). Exponents
/// (`1.5E+3`) are accepted.
fn parse_decimal(text: &str, p: u32, s: u32) -> Result<(i128, bool), String> {
    let too_big = || format!("`{text}` does not fit NUMERIC({p},{s})");
    let scaled = Decimal::parse(text.as_bytes())
        .map_err(|_| format!("`{text}` is not a decimal number"))?
        .to_scaled::<i128>(s, Rounding::HalfAwayFromZero)
        .map_err(|e| match e {
            DecimalError::Syntax => format!("`{text}` is not a decimal number"),
            _ => too_big(),
        })?;
    if !fits_precision(scaled.value, p) {
        return Err(too_big());
    }
    Ok((scaled.value, scaled.rounded))
}

/// A cell as text, for reject files.
pub(super) fn display_value(array: &ArrayRef, row: usize) -> String {
    if array.is_null(row) {
        return "null".into();
    }
    arrow::util::display::array_value_to_string(array, row).unwrap_or_else(|e| format!("<{e}>"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ColumnSource;
    use arrow::array::{Int64Array, TimestampMillisecondArray, UInt64Array};

    /// (array, errors) of `convert_column`.
    fn conv(
        col: &ColumnSpec,
        values: &ArrayRef,
        raw: Option<&StringArray>,
        tz: chrono_tz::Tz,
    ) -> (ArrayRef, Vec<CellError>) {
        let c = convert_column(col, values, raw, tz);
        (c.array, c.errors)
    }

    fn col(name: &str, ty: &str, nullable: bool) -> ColumnSpec {
        ColumnSpec {
            name: name.into(),
            sql_type: SqlType::parse(ty).unwrap(),
            nullable,
            foreign_key: None,
            source: ColumnSource::Field(name.into()),
            expression: None,
        }
    }

    #[test]
    fn out_of_range_integers_are_refused_not_wrapped() {
        let values: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), Some(40_000), None]));
        let (out, errors) = conv(&col("n", "SMALLINT", true), &values, None, chrono_tz::UTC);
        assert_eq!(
            out.as_primitive::<arrow::datatypes::Int16Type>().value(0),
            1
        );
        assert_eq!(errors.len(), 1);
        assert_eq!(
            (errors[0].row, errors[0].reason.as_str()),
            (1, "out of range for SMALLINT")
        );
        assert_eq!(errors[0].raw.as_deref(), Some("40000"));
    }

    #[test]
    fn unsigned_bigint_fits_numeric_20() {
        let values: ArrayRef = Arc::new(UInt64Array::from(vec![u64::MAX]));
        let (out, errors) = conv(
            &col("id", "NUMERIC(20,0)", false),
            &values,
            None,
            chrono_tz::UTC,
        );
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(display_value(&out, 0), "18446744073709551615");
    }

    #[test]
    fn varchar_length_nul_bytes_and_not_null() {
        let values: ArrayRef = Arc::new(StringArray::from(vec![
            Some("été"),
            Some("toolong"),
            Some("a\0b"),
            None,
        ]));
        let (_, errors) = conv(
            &col("s", "VARCHAR(3)", false),
            &values,
            None,
            chrono_tz::UTC,
        );
        let reasons: Vec<(usize, &str)> =
            errors.iter().map(|e| (e.row, e.reason.as_str())).collect();
        assert_eq!(
            reasons,
            vec![
                (1, "7 characters, longer than VARCHAR(3)"),
                (2, "NUL byte in text"),
                (3, "NULL in NOT NULL column")
            ]
        );
    }

    #[test]
    fn a_column_failing_on_every_row_gives_one_error_per_row() {
        let n = 40_000;
        let values: ArrayRef = Arc::new(StringArray::from(vec![None::<&str>; n]));
        let raw = StringArray::from(
            (0..n)
                // A boolean: a number would now be coerced to text (issue 9.7).
                .map(|i| (i % 2 == 0).then_some("true"))
                .collect::<Vec<_>>(),
        );
        let (_, errors) = conv(
            &col("s", "TEXT", false),
            &values,
            Some(&raw),
            chrono_tz::UTC,
        );
        assert_eq!(errors.len(), n);
        assert!(errors.iter().enumerate().all(|(i, e)| e.row == i));
        assert_eq!(errors[0].reason, "wrong type for TEXT");
        assert_eq!(errors[1].reason, "NULL in NOT NULL column");
    }

    #[test]
    fn date_near_midnight_follows_the_time_zone() {
        // 2024-03-06T23:30:00Z is already March 7 in Paris.
        let ms = DateTime::parse_from_rfc3339("2024-03-06T23:30:00Z")
            .unwrap()
            .timestamp_millis();
        let values: ArrayRef =
            Arc::new(TimestampMillisecondArray::from(vec![ms]).with_timezone("UTC"));
        let paris: chrono_tz::Tz = "Europe/Paris".parse().unwrap();
        let (utc, _) = conv(&col("day", "DATE", false), &values, None, chrono_tz::UTC);
        let (local, _) = conv(&col("day", "DATE", false), &values, None, paris);
        assert_eq!(display_value(&utc, 0), "2024-03-06");
        assert_eq!(display_value(&local, 0), "2024-03-07");
    }

    /// Issue 9.1: these came out NULL with no reject (nullable) or as "NULL in NOT NULL
    /// column" without the value (NOT NULL).
    #[test]
    fn out_of_range_bson_dates_are_refused_with_reason_and_value() {
        // 300000-01-01T00:00:00Z.
        let year_300000 = 9_404_918_380_800_000_i64;
        let values: ArrayRef = Arc::new(
            TimestampMillisecondArray::from(vec![Some(year_300000), Some(i64::MAX), Some(0)])
                .with_timezone("UTC"),
        );
        for nullable in [true, false] {
            for ty in ["TIMESTAMP", "TIMESTAMPTZ"] {
                let (out, errors) = conv(&col("t", ty, nullable), &values, None, chrono_tz::UTC);
                let got: Vec<(usize, &str, Option<&str>)> = errors
                    .iter()
                    .map(|e| (e.row, e.reason.as_str(), e.raw.as_deref()))
                    .collect();
                assert_eq!(got.len(), 2, "{ty}: {got:?}");
                assert_eq!(got[0].0, 0);
                assert!(
                    got[0]
                        .1
                        .starts_with(&format!("date out of range for {ty}: year 300000")),
                    "{got:?}"
                );
                assert_eq!(
                    got[0].2,
                    Some(r#"{"$date":{"$numberLong":"9404918380800000"}}"#)
                );
                assert_eq!(got[1].0, 1);
                assert!(got[1].1.contains("out of range"), "{got:?}");
                assert_eq!(
                    got[1].2,
                    Some(r#"{"$date":{"$numberLong":"9223372036854775807"}}"#)
                );
                assert!(out.is_valid(2), "1970 still converts");
            }
            // PostgreSQL's DATE reaches 5874897: year 300000 is a date, i64::MAX ms is not.
            let (out, errors) = conv(&col("d", "DATE", nullable), &values, None, chrono_tz::UTC);
            assert_eq!(
                i64::from(out.as_primitive::<Date32Type>().value(0)),
                pg_time::days_from_civil(300_000, 1, 1)
            );
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert_eq!(errors[0].row, 1);
            assert!(
                errors[0]
                    .reason
                    .starts_with("date out of range for DATE: year 292278994"),
                "{errors:?}"
            );
            assert_eq!(
                errors[0].raw.as_deref(),
                Some(r#"{"$date":{"$numberLong":"9223372036854775807"}}"#)
            );
        }
    }

    /// Before PostgreSQL's first day (4714-11-24 BC) is refused; that day itself loads.
    #[test]
    fn dates_before_julian_day_zero_are_refused() {
        let first = pg_time::FIRST_DAY * MILLIS_PER_DAY;
        let values: ArrayRef =
            Arc::new(TimestampMillisecondArray::from(vec![first, first - 1]).with_timezone("UTC"));
        for ty in ["TIMESTAMP", "DATE"] {
            let (out, errors) = conv(&col("t", ty, true), &values, None, chrono_tz::UTC);
            assert!(out.is_valid(0), "{ty}");
            assert_eq!(errors.len(), 1, "{ty}: {errors:?}");
            assert_eq!(errors[0].row, 1);
            assert!(errors[0].reason.contains("year 4714 BC"), "{errors:?}");
        }
    }

    #[test]
    fn raw_strings_are_parsed_as_dates_or_refused() {
        let values: ArrayRef =
            Arc::new(TimestampMillisecondArray::from(vec![None, None, None]).with_timezone("UTC"));
        let raw = StringArray::from(vec![
            Some("\"2024-03-06T08:00:00Z\""),
            Some("\"yesterday\""),
            Some("42"),
        ]);
        let (out, errors) = conv(
            &col("t", "TIMESTAMP", true),
            &values,
            Some(&raw),
            chrono_tz::UTC,
        );
        assert_eq!(display_value(&out, 0), "2024-03-06T08:00:00");
        let reasons: Vec<(usize, &str)> =
            errors.iter().map(|e| (e.row, e.reason.as_str())).collect();
        assert_eq!(
            reasons,
            vec![(1, "unparseable date"), (2, "unparseable date")]
        );
    }

    #[test]
    fn wrong_types_keep_their_raw_value() {
        let values: ArrayRef = Arc::new(StringArray::from(vec![None::<&str>]));
        let raw = StringArray::from(vec![Some("{\"$numberLong\":\"7\"}")]);
        let (_, errors) = conv(
            &col("name", "TEXT", true),
            &values,
            Some(&raw),
            chrono_tz::UTC,
        );
        assert_eq!(errors[0].reason, "wrong type for TEXT");
        assert_eq!(errors[0].raw.as_deref(), Some("{\"$numberLong\":\"7\"}"));
    }

    #[test]
    fn decimals_are_rounded_to_the_scale_or_refused() {
        assert_eq!(parse_decimal("12.5", 10, 2), Ok((1250, false)));
        assert_eq!(parse_decimal("-0.01", 10, 2), Ok((-1, false)));
        assert_eq!(parse_decimal("1.5E+3", 10, 2), Ok((150_000, false)));
        // Issue 9.7: PostgreSQL rounds half away from zero to the scale.
        assert_eq!(parse_decimal("1.005", 10, 2), Ok((101, true)));
        assert_eq!(parse_decimal("37.123456", 10, 2), Ok((3712, true)));
        assert!(parse_decimal("123456789", 5, 0)
            .unwrap_err()
            .contains("does not fit"));
        assert!(parse_decimal("99999.995", 7, 2)
            .unwrap_err()
            .contains("does not fit"));
        assert!(parse_decimal("abc", 5, 0).is_err());
        // Issue 9.10: the exponent sum overflowed (a panic in debug builds).
        assert!(parse_decimal("1e2147483647", 10, 2)
            .unwrap_err()
            .contains("does not fit"));
        assert_eq!(parse_decimal("1e-2147483648", 10, 2), Ok((0, true)));
    }

    /// A 1000-digit number staged as text (a source numeric) once loaded as Infinity into a
    /// DOUBLE PRECISION column; PostgreSQL refuses it as out of range.
    #[test]
    fn text_beyond_a_float_s_range_is_refused_not_infinity() {
        let huge = format!("1{}", "7".repeat(999));
        let text: ArrayRef = Arc::new(StringArray::from(vec![
            Some(huge.as_str()),
            Some("1.5"),
            Some("-Infinity"),
            None,
            Some("1e39"),
            Some("abc"),
        ]));
        let c = convert_column(
            &col("x", "DOUBLE PRECISION", true),
            &text,
            None,
            chrono_tz::UTC,
        );
        let shown: Vec<String> = (0..6).map(|r| display_value(&c.array, r)).collect();
        assert_eq!(shown, ["null", "1.5", "-inf", "null", "1e39", "null"]);
        let reasons: Vec<(usize, &str)> = c
            .errors
            .iter()
            .map(|e| (e.row, e.reason.as_str()))
            .collect();
        assert_eq!(reasons.len(), 2, "{reasons:?}");
        assert_eq!(reasons[0].0, 0);
        assert!(reasons[0].1.contains("out of range"), "{reasons:?}");
        assert_eq!(reasons[1].0, 5);
        let c = convert_column(&col("x", "REAL", true), &text, None, chrono_tz::UTC);
        // 1e39 is beyond REAL.
        assert!(c.errors.iter().any(|e| e.row == 4), "{:?}", c.errors);
    }

    /// Issue 9.7: the reference tool loaded these through PostgreSQL's input rules; etl
    /// rejected them (and a rejected parent orphaned its whole subtree).
    #[test]
    fn raw_values_get_postgresql_s_coercions_and_are_counted() {
        let nulls = |n: usize| -> ArrayRef { Arc::new(StringArray::from(vec![None::<&str>; n])) };
        let raw = StringArray::from(vec![Some("42"), None, Some("1e20"), Some("true")]);
        let text: ArrayRef = Arc::new(StringArray::from(vec![None, Some("kept"), None, None]));
        let c = convert_column(
            &col("code", "VARCHAR(50)", true),
            &text,
            Some(&raw),
            chrono_tz::UTC,
        );
        assert_eq!(
            (0..4)
                .map(|r| display_value(&c.array, r))
                .collect::<Vec<_>>(),
            ["42", "kept", "1e+20", "null"]
        );
        assert_eq!((c.coerced, c.rounded), (2, 0));
        assert_eq!(c.errors.len(), 1);
        assert_eq!(
            (
                c.errors[0].row,
                c.errors[0].reason.as_str(),
                c.errors[0].raw.as_deref()
            ),
            (3, "wrong type for VARCHAR(50)", Some("true"))
        );

        let raw = StringArray::from(vec![Some("\" 120 \""), Some("\"12a\""), Some("\"70000\"")]);
        let ints: ArrayRef = Arc::new(Int64Array::from(vec![None::<i64>; 3]));
        let c = convert_column(
            &col("n", "SMALLINT", true),
            &ints,
            Some(&raw),
            chrono_tz::UTC,
        );
        assert_eq!(display_value(&c.array, 0), "120");
        let reasons: Vec<&str> = c.errors.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "invalid input syntax for SMALLINT",
                "out of range for SMALLINT"
            ]
        );
        assert_eq!(c.coerced, 1);

        let raw = StringArray::from(vec![Some("\"yes\""), Some("0")]);
        let c = convert_column(
            &col("b", "BOOLEAN", false),
            &nulls(2),
            Some(&raw),
            chrono_tz::UTC,
        );
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        assert_eq!(
            (display_value(&c.array, 0), display_value(&c.array, 1)),
            ("true".into(), "false".into())
        );

        // A double staged as decimal text rounds to the scale; a numeric string too.
        let decimals: ArrayRef = Arc::new(StringArray::from(vec![
            Some("37.123456"),
            None,
            Some("12.5"),
        ]));
        let raw = StringArray::from(vec![None, Some("\"1.005\""), None]);
        let c = convert_column(
            &col("price", "NUMERIC(10,2)", true),
            &decimals,
            Some(&raw),
            chrono_tz::UTC,
        );
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        assert_eq!(
            (0..3)
                .map(|r| display_value(&c.array, r))
                .collect::<Vec<_>>(),
            ["37.12", "1.01", "12.50"]
        );
        assert_eq!((c.coerced, c.rounded), (1, 2));
    }

    #[test]
    fn raw_date_strings_are_counted_as_coerced() {
        let values: ArrayRef =
            Arc::new(TimestampMillisecondArray::from(vec![None, Some(0)]).with_timezone("UTC"));
        let raw = StringArray::from(vec![Some("\"2024-03-06\""), None]);
        for ty in ["TIMESTAMP", "DATE"] {
            let c = convert_column(&col("t", ty, true), &values, Some(&raw), chrono_tz::UTC);
            assert!(c.errors.is_empty());
            assert_eq!(c.coerced, 1, "{ty}");
        }
    }

    #[test]
    fn nul_escapes_are_found_only_where_they_are_escapes() {
        assert!(has_nul_escape(r#"{"a":"x\u0000y"}"#));
        assert!(!has_nul_escape(r#"{"a":"x\\u0000y"}"#));
        assert!(has_nul_escape(r#"{"a":"x\\\u0000y"}"#));
        assert!(!has_nul_escape(r#"{"a":"\u0001"}"#));
        assert!(!has_nul_escape("\\"));
    }
}
