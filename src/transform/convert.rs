//! One staged column -> one target column of its `sql_type`, with a reason for every value
//! that does not fit.
//!
//! Vectorised: arrow's `cast` does the conversion (a value it cannot represent comes back
//! NULL, which is how out-of-range values are found), then the checks PostgreSQL would fail
//! on run over the result (length, NUL bytes, NOT NULL). Values staged in a `__raw` column
//! (they did not fit the staged type) get one more chance where the target can parse text
//! (dates), and are rejected with their raw value otherwise.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Date32Builder, Decimal128Builder, StringArray,
    TimestampMicrosecondBuilder,
};
use arrow::compute::{cast_with_options, CastOptions};
use arrow::datatypes::{DataType, Date32Type, TimeUnit, TimestampMillisecondType};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Offset, TimeZone, Utc};

use crate::config::{ColumnSpec, SqlType};
use crate::pg_time;

/// Why one value of a column was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct CellError {
    pub row: usize,
    pub column: String,
    pub reason: String,
    /// The value as the source had it (extended JSON for MongoDB values).
    pub raw: Option<String>,
}

/// The Arrow type a target column has in transform output (what load writes as `sql_type`).
pub fn target_type(ty: SqlType) -> DataType {
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

/// Converts `values` (with its optional `__raw` companion) to `col`'s type. Returns the
/// converted array and the refused cells (their slots are NULL in the array).
pub fn convert_column(
    col: &ColumnSpec,
    values: &ArrayRef,
    raw: Option<&StringArray>,
    tz: chrono_tz::Tz,
) -> (ArrayRef, Vec<CellError>) {
    let mut errors = Vec::new();
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
                |row, reason, r| errors.push(error(row, reason, Some(r))),
            )
        }
        (SqlType::Numeric(Some((p, s))), DataType::Utf8) if p <= 38 => {
            decimals_from_text(values.as_string::<i32>(), p, s, |row, reason, r| {
                errors.push(error(row, reason, Some(r.to_string())))
            })
        }
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

    // Values that did not fit the staged type and were not rescued above.
    if let Some(raw) = raw {
        let rescued_dates = matches!(
            col.sql_type,
            SqlType::Date | SqlType::Timestamp | SqlType::TimestampTz
        );
        let failed = rows_with_errors(&errors, raw.len());
        for (row, _) in failed.iter().enumerate().filter(|(_, f)| !**f) {
            if raw.is_valid(row) && !(rescued_dates && converted.is_valid(row)) {
                errors.push(error(
                    row,
                    format!("wrong type for {}", col.sql_type),
                    Some(raw.value(row).to_string()),
                ));
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
    (converted, errors)
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
                    Some(Ok(micros)) => Some(micros),
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
                    Some(day) => Some(check_date(day).map_err(|e| (e, r.to_string()))),
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
pub fn parse_date_text(raw: &str) -> Option<DateTime<Utc>> {
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

/// Exact decimal text -> Decimal128(p, s); more digits than the type holds is a reject,
/// never a rounding.
fn decimals_from_text(
    values: &StringArray,
    p: u32,
    s: u32,
    mut bad: impl FnMut(usize, String, &str),
) -> ArrayRef {
    let mut out = Decimal128Builder::new();
    for (row, value) in values.iter().enumerate() {
        let parsed = value.map(|v| (v, parse_decimal(v, p, s)));
        match parsed {
            None => out.append_null(),
            Some((_, Ok(n))) => out.append_value(n),
            Some((v, Err(reason))) => {
                bad(row, reason, v);
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

/// `-12.50` with (p=10, s=2) -> 1250 * sign. Exponents (`1.5E+3`) are accepted.
fn parse_decimal(text: &str, p: u32, s: u32) -> Result<i128, String> {
    let invalid = || format!("`{text}` is not a decimal number");
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(i) => (
            &text[..i],
            text[i + 1..].parse::<i32>().map_err(|_| invalid())?,
        ),
        None => (text, 0),
    };
    let (negative, digits) = match mantissa.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, mantissa.strip_prefix('+').unwrap_or(mantissa)),
    };
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    if int_part.is_empty() && frac_part.is_empty()
        || !int_part
            .chars()
            .chain(frac_part.chars())
            .all(|c| c.is_ascii_digit())
    {
        return Err(invalid());
    }
    let all: String = format!("{int_part}{frac_part}");
    // value = all * 10^(exponent - frac_len); we want value * 10^s as an integer.
    let shift = exponent - frac_part.len() as i32 + s as i32;
    let trimmed = all.trim_start_matches('0');
    let mut n: i128 = 0;
    let too_big = || format!("`{text}` does not fit NUMERIC({p},{s})");
    for c in trimmed.chars() {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(i128::from(c as u8 - b'0')))
            .ok_or_else(too_big)?;
    }
    if shift >= 0 {
        for _ in 0..shift {
            n = n.checked_mul(10).ok_or_else(too_big)?;
        }
    } else {
        for _ in 0..(-shift) {
            if n % 10 != 0 {
                return Err(format!(
                    "`{text}` has more than {s} decimal places for NUMERIC({p},{s})"
                ));
            }
            n /= 10;
        }
    }
    if n >= 10i128.pow(p) {
        return Err(too_big());
    }
    Ok(if negative { -n } else { n })
}

/// A cell as text, for reject files.
pub fn display_value(array: &ArrayRef, row: usize) -> String {
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

    fn col(name: &str, ty: &str, nullable: bool) -> ColumnSpec {
        ColumnSpec {
            name: name.into(),
            sql_type: SqlType::parse(ty).unwrap(),
            nullable,
            foreign_key: None,
            source: ColumnSource::Field(name.into()),
        }
    }

    #[test]
    fn out_of_range_integers_are_refused_not_wrapped() {
        let values: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), Some(40_000), None]));
        let (out, errors) =
            convert_column(&col("n", "SMALLINT", true), &values, None, chrono_tz::UTC);
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
        let (out, errors) = convert_column(
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
        let (_, errors) = convert_column(
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
                .map(|i| (i % 2 == 0).then_some("42"))
                .collect::<Vec<_>>(),
        );
        let (_, errors) = convert_column(
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
        let (utc, _) = convert_column(&col("day", "DATE", false), &values, None, chrono_tz::UTC);
        let (local, _) = convert_column(&col("day", "DATE", false), &values, None, paris);
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
                let (out, errors) =
                    convert_column(&col("t", ty, nullable), &values, None, chrono_tz::UTC);
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
            let (out, errors) =
                convert_column(&col("d", "DATE", nullable), &values, None, chrono_tz::UTC);
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
            let (out, errors) = convert_column(&col("t", ty, true), &values, None, chrono_tz::UTC);
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
        let (out, errors) = convert_column(
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
        let (_, errors) = convert_column(
            &col("name", "TEXT", true),
            &values,
            Some(&raw),
            chrono_tz::UTC,
        );
        assert_eq!(errors[0].reason, "wrong type for TEXT");
        assert_eq!(errors[0].raw.as_deref(), Some("{\"$numberLong\":\"7\"}"));
    }

    #[test]
    fn decimals_are_exact_or_refused() {
        assert_eq!(parse_decimal("12.5", 10, 2), Ok(1250));
        assert_eq!(parse_decimal("-0.01", 10, 2), Ok(-1));
        assert_eq!(parse_decimal("1.5E+3", 10, 2), Ok(150000));
        assert!(parse_decimal("1.005", 10, 2)
            .unwrap_err()
            .contains("decimal places"));
        assert!(parse_decimal("123456789", 5, 0)
            .unwrap_err()
            .contains("does not fit"));
        assert!(parse_decimal("abc", 5, 0).is_err());
    }
}
