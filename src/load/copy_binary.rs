//! The live COPY in PostgreSQL's binary format: Arrow rows -> `COPY ... FROM STDIN (FORMAT
//! binary)`. PostgreSQL parses binary input faster than text (no number or date parsing), so
//! the live load uses it; SQL bundles keep the text format (`copy_text.rs`), which psql can
//! carry and people can read.
//!
//! Each value is written as PostgreSQL's own `*_recv` functions read it, chosen by the
//! column's declared type: big-endian integers and floats, days and microseconds since
//! 2000-01-01, `numeric` as base-10000 digits, `jsonb` with its version byte.

use arrow::array::{Array, ArrayRef, AsArray};
use arrow::datatypes::{
    DataType, Date32Type, Decimal128Type, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, Time64MicrosecondType, TimestampMicrosecondType,
};
use arrow::record_batch::RecordBatch;

use crate::config::SqlType;
use crate::decimal::Numeric;

/// `PGCOPY\n\377\r\n\0`, no flags, no header extension.
pub(crate) const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";
/// A field count of -1 ends the data.
pub(crate) const TRAILER: &[u8] = &[0xff, 0xff];

/// Days from 1970-01-01 (Arrow) to 2000-01-01 (PostgreSQL).
const EPOCH_DAYS: i64 = 10_957;
/// Microseconds from 1970-01-01 to 2000-01-01.
const EPOCH_MICROS: i64 = 946_684_800_000_000;

/// Appends every row of `batch`; `types` are the declared types of its columns, in order.
pub(crate) fn encode_batch(
    batch: &RecordBatch,
    types: &[SqlType],
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let columns = batch.columns();
    if columns.len() != types.len() {
        return Err(format!(
            "{} columns staged, {} declared",
            columns.len(),
            types.len()
        ));
    }
    let fields = i16::try_from(columns.len()).map_err(|_| "too many columns".to_string())?;
    for row in 0..batch.num_rows() {
        out.extend_from_slice(&fields.to_be_bytes());
        for (column, ty) in columns.iter().zip(types) {
            encode_value(column, *ty, row, out)?;
        }
    }
    Ok(())
}

fn encode_value(
    column: &ArrayRef,
    ty: SqlType,
    row: usize,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    if column.is_null(row) {
        out.extend_from_slice(&(-1i32).to_be_bytes());
        return Ok(());
    }
    match column.data_type() {
        DataType::Utf8 => {
            let text = column.as_string::<i32>().value(row);
            match ty {
                SqlType::Jsonb => field(out, &[&[1u8][..], text.as_bytes()]),
                SqlType::Numeric(_) => numeric_any(text, out)?,
                _ => field(out, &[text.as_bytes()]),
            }
        }
        DataType::Binary => field(out, &[column.as_binary::<i32>().value(row)]),
        DataType::Int16 => field(
            out,
            &[&column.as_primitive::<Int16Type>().value(row).to_be_bytes()],
        ),
        DataType::Int32 => field(
            out,
            &[&column.as_primitive::<Int32Type>().value(row).to_be_bytes()],
        ),
        DataType::Int64 => field(
            out,
            &[&column.as_primitive::<Int64Type>().value(row).to_be_bytes()],
        ),
        DataType::Boolean => field(out, &[&[u8::from(column.as_boolean().value(row))]]),
        DataType::Float32 => field(
            out,
            &[&column
                .as_primitive::<Float32Type>()
                .value(row)
                .to_be_bytes()],
        ),
        DataType::Float64 => field(
            out,
            &[&column
                .as_primitive::<Float64Type>()
                .value(row)
                .to_be_bytes()],
        ),
        DataType::Decimal128(_, scale) => {
            let v = column.as_primitive::<Decimal128Type>().value(row);
            let scale = usize::try_from(*scale).map_err(|_| format!("negative scale {scale}"))?;
            numeric(v < 0, &v.unsigned_abs().to_string(), scale, out)?;
        }
        DataType::Timestamp(_, _) => {
            let micros = column.as_primitive::<TimestampMicrosecondType>().value(row);
            let pg = micros
                .checked_sub(EPOCH_MICROS)
                .ok_or_else(|| format!("timestamp {micros} out of range"))?;
            field(out, &[&pg.to_be_bytes()]);
        }
        DataType::Date32 => {
            let days = i64::from(column.as_primitive::<Date32Type>().value(row)) - EPOCH_DAYS;
            let pg = i32::try_from(days).map_err(|_| format!("date {days} out of range"))?;
            field(out, &[&pg.to_be_bytes()]);
        }
        DataType::Time64(_) => {
            let micros = column.as_primitive::<Time64MicrosecondType>().value(row);
            field(out, &[&micros.to_be_bytes()]);
        }
        other => return Err(format!("no binary COPY encoding for Arrow type {other}")),
    }
    Ok(())
}

/// A field: its length, then its bytes (given in parts).
fn field(out: &mut Vec<u8>, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    // Staged values are far below 1 GiB (PostgreSQL's own limit for a field).
    let len = i32::try_from(len).unwrap_or(i32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    for p in parts {
        out.extend_from_slice(p);
    }
}

/// Any text PostgreSQL's `numeric` input reads (`1e3`, `NaN`, `-Infinity`, ` 12.50 `): an
/// unconstrained `NUMERIC` column carries it as text.
fn numeric_any(text: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let special = |sign: u16, out: &mut Vec<u8>| {
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0]);
        out.extend_from_slice(&sign.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
    };
    match Numeric::parse_pg(text).map_err(|e| format!("`{text}` is not a numeric: {e:?}"))? {
        Numeric::Finite(d) => numeric_text(&d.to_pg_text(), out)?,
        Numeric::NaN => special(0xC000, out),
        Numeric::Infinity => special(0xD000, out),
        Numeric::NegInfinity => special(0xF000, out),
    }
    Ok(())
}

/// A plain decimal text (`-12.50`, `7`) as `numeric`.
fn numeric_text(text: &str, out: &mut Vec<u8>) -> Result<(), String> {
    let invalid = || format!("`{text}` is not a plain decimal number");
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    if int_part.is_empty()
        || !int_part
            .chars()
            .chain(frac_part.chars())
            .all(|c| c.is_ascii_digit())
    {
        return Err(invalid());
    }
    // PostgreSQL keeps up to 16383 digits after the point (`1e-200` has 200).
    numeric(
        negative,
        &format!("{int_part}{frac_part}"),
        frac_part.len(),
        out,
    )
}

/// `numeric` from the decimal digits of |value| with `scale` of them after the point:
/// ndigits, weight, sign, dscale, then base-10000 digits, most significant first.
fn numeric(negative: bool, digits: &str, scale: usize, out: &mut Vec<u8>) -> Result<(), String> {
    let digits = digits.as_bytes();
    // Pad so the integer part and the fraction each split into groups of 4 digits.
    let (int_len, frac_len) = if digits.len() > scale {
        (digits.len() - scale, scale)
    } else {
        (0, scale)
    };
    let int_pad = (4 - int_len % 4) % 4;
    let frac_pad = (4 - frac_len % 4) % 4;
    let mut padded = Vec::with_capacity(int_pad + digits.len().max(scale) + frac_pad);
    padded.extend(std::iter::repeat_n(b'0', int_pad));
    if digits.len() < scale {
        padded.extend(std::iter::repeat_n(b'0', scale - digits.len()));
    }
    padded.extend_from_slice(digits);
    padded.extend(std::iter::repeat_n(b'0', frac_pad));
    let mut groups: Vec<i16> = padded
        .chunks(4)
        .map(|c| c.iter().fold(0i16, |n, d| n * 10 + i16::from(d - b'0')))
        .collect();
    let int_groups = (int_len + int_pad) / 4;
    let mut weight = i64::try_from(int_groups).map_err(|e| e.to_string())? - 1;
    // Leading and trailing zero groups are implied by the weight and dscale.
    let leading = groups.iter().take_while(|g| **g == 0).count();
    groups.drain(..leading);
    weight -= i64::try_from(leading).map_err(|e| e.to_string())?;
    while groups.last() == Some(&0) {
        groups.pop();
    }
    let (weight, sign) = if groups.is_empty() {
        (0, 0u16)
    } else {
        (weight, if negative { 0x4000 } else { 0 })
    };
    let ndigits = i16::try_from(groups.len()).map_err(|e| e.to_string())?;
    let weight = i16::try_from(weight).map_err(|e| e.to_string())?;
    let dscale = u16::try_from(scale).map_err(|e| e.to_string())?;
    let len = i32::try_from(8 + 2 * groups.len()).map_err(|e| e.to_string())?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&ndigits.to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&dscale.to_be_bytes());
    for g in groups {
        out.extend_from_slice(&g.to_be_bytes());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (ndigits, weight, sign, dscale, digits) of an encoded numeric field.
    fn decode(bytes: &[u8]) -> (i16, i16, u16, u16, Vec<i16>) {
        let be16 = |i: usize| [bytes[i], bytes[i + 1]];
        let len = i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        assert_eq!(usize::try_from(len).unwrap(), bytes.len() - 4);
        let n = i16::from_be_bytes(be16(4));
        let digits = (0..usize::try_from(n).unwrap())
            .map(|i| i16::from_be_bytes(be16(12 + 2 * i)))
            .collect();
        (
            n,
            i16::from_be_bytes(be16(6)),
            u16::from_be_bytes(be16(8)),
            u16::from_be_bytes(be16(10)),
            digits,
        )
    }

    fn enc(text: &str) -> (i16, i16, u16, u16, Vec<i16>) {
        let mut out = Vec::new();
        numeric_text(text, &mut out).unwrap();
        decode(&out)
    }

    #[test]
    fn numerics_are_base_10000_digits_with_weight_and_scale() {
        // 12345.678 = 1*10000^1 + 2345 + 6780/10000
        assert_eq!(enc("12345.678"), (3, 1, 0, 3, vec![1, 2345, 6780]));
        assert_eq!(enc("-0.0001"), (1, -1, 0x4000, 4, vec![1]));
        assert_eq!(enc("0.00"), (0, 0, 0, 2, vec![]));
        assert_eq!(enc("100000000"), (1, 2, 0, 0, vec![1]));
        assert_eq!(enc("37.12"), (2, 0, 0, 2, vec![37, 1200]));
        assert_eq!(enc("0.12345"), (2, -1, 0, 5, vec![1234, 5000]));
        assert!(numeric_text("1e5", &mut Vec::new()).is_err());
        assert!(numeric_text("", &mut Vec::new()).is_err());
    }

    #[test]
    fn any_numeric_input_text_encodes() {
        let mut out = Vec::new();
        numeric_any("1e3", &mut out).unwrap();
        assert_eq!(decode(&out), (1, 0, 0, 0, vec![1000]));
        for (text, sign) in [("NaN", 0xC000), ("Infinity", 0xD000), ("-inf", 0xF000)] {
            let mut out = Vec::new();
            numeric_any(text, &mut out).unwrap();
            assert_eq!(decode(&out), (0, 0, sign, 0, vec![]), "{text}");
        }
        assert!(numeric_any("twelve", &mut Vec::new()).is_err());
    }

    /// `1e-200` (a source numeric) once failed the whole load: the scale was held in an i8.
    #[test]
    fn numerics_with_more_than_127_decimals_encode() {
        let mut out = Vec::new();
        numeric_text(&format!("0.{}1", "0".repeat(199)), &mut out).unwrap();
        // 1e-200 = 1 x 10000^-50: one digit group, weight -50, dscale 200.
        assert_eq!(decode(&out), (1, -50, 0, 200, vec![1]));
    }

    #[test]
    fn decimal128_values_encode_like_their_text() {
        let mut a = Vec::new();
        numeric(true, "5", 3, &mut a).unwrap(); // -0.005
        let mut b = Vec::new();
        numeric_text("-0.005", &mut b).unwrap();
        assert_eq!(a, b);
    }
}
