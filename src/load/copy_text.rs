//! The one COPY encoder: Arrow rows -> PostgreSQL `COPY ... FROM STDIN` text format. It feeds
//! both the live COPY and the SQL export files, so both carry exactly the same bytes.
//!
//! Text format rules: columns separated by a tab, rows end with `\n`, NULL is `\N`, and a
//! backslash, tab, newline or carriage return inside a value is escaped, so no value can end a
//! row, end the data (`\.`), or be read as SQL.

use std::fmt::Write as _;
use std::path::Path;

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, Time64MicrosecondType, TimeUnit, TimestampMicrosecondType,
};
use arrow::record_batch::RecordBatch;
use bytes::Bytes;

use super::LoadError;
use crate::staging::{self, FileEntry};

/// Bytes of COPY data handed over at a time (one message to PostgreSQL, one file write).
const COPY_CHUNK: usize = 1 << 20;

/// The COPY data format.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum CopyFormat {
    Text,
    /// PostgreSQL's binary format; the declared type of each column.
    Binary(Vec<crate::config::SqlType>),
}

/// Reads each staged file (after checking its checksum) and hands COPY data in chunks to
/// `send`; stops early when `send` returns false.
pub(crate) fn encode_files(
    dir: &Path,
    files: &[FileEntry],
    table: &str,
    format: &CopyFormat,
    mut send: impl FnMut(Bytes) -> bool,
) -> Result<(), LoadError> {
    let mut buf = Vec::with_capacity(COPY_CHUNK + 64 * 1024);
    if let CopyFormat::Binary(_) = format {
        buf.extend_from_slice(super::copy_binary::HEADER);
    }
    for file in files {
        staging::verify_file(dir, file)?;
        let path = dir.join(&file.path);
        for batch in staging::stream_batches(&path, 8 * 1024)? {
            let batch = batch?;
            match format {
                CopyFormat::Text => encode_batch(&batch, &mut buf),
                CopyFormat::Binary(types) => {
                    super::copy_binary::encode_batch(&batch, types, &mut buf)
                }
            }
            .map_err(|message| LoadError::Internal(format!("table `{table}`: {message}")))?;
            if buf.len() >= COPY_CHUNK && !send(Bytes::from(std::mem::take(&mut buf))) {
                return Ok(());
            }
        }
    }
    if let CopyFormat::Binary(_) = format {
        buf.extend_from_slice(super::copy_binary::TRAILER);
    }
    if !buf.is_empty() {
        send(Bytes::from(buf));
    }
    Ok(())
}

use crate::pg_time;

/// Appends every row of `batch` to `out`. Fails only on an Arrow type transform never writes.
pub(crate) fn encode_batch(batch: &RecordBatch, out: &mut Vec<u8>) -> Result<(), String> {
    let columns = batch.columns();
    for c in columns {
        check_supported(c.data_type())?;
    }
    let mut scratch = String::new();
    for row in 0..batch.num_rows() {
        for (i, column) in columns.iter().enumerate() {
            if i > 0 {
                out.push(b'\t');
            }
            encode_value(column, row, out, &mut scratch);
        }
        out.push(b'\n');
    }
    Ok(())
}

fn check_supported(ty: &DataType) -> Result<(), String> {
    match ty {
        DataType::Utf8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::Boolean
        | DataType::Float32
        | DataType::Float64
        | DataType::Decimal128(_, _)
        | DataType::Timestamp(TimeUnit::Microsecond, _)
        | DataType::Date32
        | DataType::Time64(TimeUnit::Microsecond)
        | DataType::Binary => Ok(()),
        other => Err(format!("no COPY encoding for Arrow type {other}")),
    }
}

fn encode_value(column: &ArrayRef, row: usize, out: &mut Vec<u8>, scratch: &mut String) {
    if column.is_null(row) {
        out.extend_from_slice(b"\\N");
        return;
    }
    scratch.clear();
    match column.data_type() {
        DataType::Utf8 => {
            escape_text(column.as_string::<i32>().value(row).as_bytes(), out);
            return;
        }
        DataType::Binary => {
            // bytea hex input `\x0102`, with its backslash escaped for COPY.
            out.extend_from_slice(b"\\\\x");
            for b in column.as_binary::<i32>().value(row) {
                let _ = write!(scratch, "{b:02x}");
            }
        }
        DataType::Int16 => write_num(scratch, column.as_primitive::<Int16Type>().value(row)),
        DataType::Int32 => write_num(scratch, column.as_primitive::<Int32Type>().value(row)),
        DataType::Int64 => write_num(scratch, column.as_primitive::<Int64Type>().value(row)),
        DataType::Boolean => scratch.push(if column.as_boolean().value(row) {
            't'
        } else {
            'f'
        }),
        DataType::Float32 => write_float(
            scratch,
            f64::from(column.as_primitive::<Float32Type>().value(row)),
            true,
        ),
        DataType::Float64 => write_float(
            scratch,
            column.as_primitive::<Float64Type>().value(row),
            false,
        ),
        DataType::Decimal128(_, scale) => {
            let v = column.as_primitive::<Decimal128Type>().value(row);
            write_decimal(scratch, v, *scale);
        }
        // PostgreSQL's own spelling: five-digit years, `BC` for years before 1 AD (chrono
        // would write `+20240-...` or `-0100-...`, which COPY refuses).
        DataType::Timestamp(_, tz) => {
            let micros = column.as_primitive::<TimestampMicrosecondType>().value(row);
            pg_time::write_timestamp(scratch, micros, tz.is_some());
        }
        DataType::Date32 => {
            let days = column.as_primitive::<Date32Type>().value(row);
            pg_time::write_date(scratch, i64::from(days));
        }
        DataType::Time64(_) => {
            let micros = column.as_primitive::<Time64MicrosecondType>().value(row);
            let (secs, frac) = (micros.div_euclid(1_000_000), micros.rem_euclid(1_000_000));
            let _ = write!(
                scratch,
                "{:02}:{:02}:{:02}.{frac:06}",
                secs / 3600,
                secs / 60 % 60,
                secs % 60
            );
        }
        _ => unreachable!("check_supported ran first"),
    }
    out.extend_from_slice(scratch.as_bytes());
}

fn write_num(out: &mut String, n: impl std::fmt::Display) {
    let _ = write!(out, "{n}");
}

/// Shortest text that reads back as the same float (`{}` of Rust floats round-trips).
fn write_float(out: &mut String, v: f64, single: bool) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "Infinity" } else { "-Infinity" });
    } else if single {
        // Print the f32 itself so its shortest form is used, not the widened f64's.
        #[allow(clippy::cast_possible_truncation)] // v came from an f32 just above
        let _ = write!(out, "{}", v as f32);
    } else {
        let _ = write!(out, "{v}");
    }
}

fn write_decimal(out: &mut String, v: i128, scale: i8) {
    let digits = v.unsigned_abs().to_string();
    if v < 0 {
        out.push('-');
    }
    let scale = usize::try_from(scale).unwrap_or(0);
    if scale == 0 {
        out.push_str(&digits);
    } else if digits.len() > scale {
        out.push_str(&digits[..digits.len() - scale]);
        out.push('.');
        out.push_str(&digits[digits.len() - scale..]);
    } else {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', scale - digits.len()));
        out.push_str(&digits);
    }
}

/// Escapes the bytes COPY text format treats specially.
pub(crate) fn escape_text(bytes: &[u8], out: &mut Vec<u8>) {
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escaped: &[u8] = match b {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.extend_from_slice(escaped);
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        BinaryArray, Decimal128Array, Float64Array, StringArray, TimestampMicrosecondArray,
    };
    use arrow::datatypes::{Field, Schema};
    use std::sync::Arc;

    fn encode(columns: Vec<ArrayRef>) -> String {
        let fields: Vec<Field> = columns
            .iter()
            .enumerate()
            .map(|(i, c)| Field::new(format!("c{i}"), c.data_type().clone(), true))
            .collect();
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
        let mut out = Vec::new();
        encode_batch(&batch, &mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn text_that_could_break_out_is_escaped() {
        let s: ArrayRef = Arc::new(StringArray::from(vec![
            Some("a\tb\nc\\d\r"),
            Some("\\."),
            Some("'); DROP TABLE x; --"),
            None,
        ]));
        assert_eq!(
            encode(vec![s]),
            "a\\tb\\nc\\\\d\\r\n\\\\.\n'); DROP TABLE x; --\n\\N\n"
        );
    }

    #[test]
    fn numbers_dates_and_bytes() {
        let d: ArrayRef = Arc::new(
            Decimal128Array::from(vec![-5i128, 123456])
                .with_precision_and_scale(9, 3)
                .unwrap(),
        );
        let f: ArrayRef = Arc::new(Float64Array::from(vec![0.1, f64::NEG_INFINITY]));
        let b: ArrayRef = Arc::new(BinaryArray::from(vec![&b"\x00\xff"[..], b""]));
        let t: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![
            1_709_712_000_000_001,
            0,
        ]));
        assert_eq!(
            encode(vec![d, f, b, t]),
            "-0.005\t0.1\t\\\\x00ff\t2024-03-06 08:00:00.000001\n123.456\t-Infinity\t\\\\x\t1970-01-01 00:00:00.000000\n"
        );
    }

    /// Issue 9.2: chrono wrote `+20240-06-15 ...` and `-0100-...`, which COPY refuses.
    #[test]
    fn years_past_9999_and_before_1_ad_are_written_the_postgresql_way() {
        use arrow::array::Date32Array;
        let day = |y, m, d| pg_time::days_from_civil(y, m, d);
        let micros = |days: i64| days * pg_time::MICROS_PER_DAY + 36_000_000_000;
        let dates: ArrayRef = Arc::new(Date32Array::from(vec![
            i32::try_from(day(20_240, 6, 15)).unwrap(),
            i32::try_from(day(-100, 6, 15)).unwrap(),
            i32::try_from(day(0, 12, 31)).unwrap(),
            i32::try_from(pg_time::LAST_DATE).unwrap(),
        ]));
        let stamps: ArrayRef = Arc::new(TimestampMicrosecondArray::from(vec![
            micros(day(20_240, 6, 15)),
            micros(day(-100, 6, 15)),
            micros(day(0, 12, 31)),
            pg_time::FIRST_TIMESTAMP_MICROS,
        ]));
        let zoned: ArrayRef = Arc::new(
            TimestampMicrosecondArray::from(vec![
                micros(day(20_240, 6, 15)),
                micros(day(-100, 6, 15)),
                micros(day(0, 12, 31)),
                i64::MAX,
            ])
            .with_timezone("UTC"),
        );
        assert_eq!(
            encode(vec![dates, stamps, zoned]),
            "20240-06-15\t20240-06-15 10:00:00.000000\t20240-06-15 10:00:00.000000+00\n\
             0101-06-15 BC\t0101-06-15 10:00:00.000000 BC\t0101-06-15 10:00:00.000000+00 BC\n\
             0001-12-31 BC\t0001-12-31 10:00:00.000000 BC\t0001-12-31 10:00:00.000000+00 BC\n\
             5874897-12-31\t4714-11-24 00:00:00.000000 BC\t294247-01-10 04:00:54.775807+00\n"
        );
    }
}
