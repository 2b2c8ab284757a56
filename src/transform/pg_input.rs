//! PostgreSQL's input rules for the values transform coerces (a number staged for a text
//! column, a string for an integer, boolean or number column): what `int4in`, `boolin` and
//! `float8in` accept, and the text `float8out` prints. Checked against PostgreSQL 15; its
//! newer spellings (`1_000`, `0x1F` integers) and C's hexadecimal floats are not taken.

use crate::decimal::{trim_pg_space, Decimal};

/// Why a text is not a value of the type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InputError {
    Syntax,
    OutOfRange,
}

/// `int8in`: optional surrounding whitespace, an optional sign, decimal digits; no point,
/// no exponent. The caller checks the column's narrower range.
pub(crate) fn parse_int(text: &str) -> Result<i64, InputError> {
    let t = trim_pg_space(text).as_bytes();
    let (negative, digits) = match t.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, t),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return Err(InputError::Syntax);
    }
    // Accumulate negatively so i64::MIN parses.
    let mut n: i64 = 0;
    for &c in digits {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_sub(i64::from(c - b'0')))
            .ok_or(InputError::OutOfRange)?;
    }
    if negative {
        Ok(n)
    } else {
        n.checked_neg().ok_or(InputError::OutOfRange)
    }
}

/// `boolin`: `t`/`true`/`y`/`yes`/`on`/`1` and `f`/`false`/`n`/`no`/`off`/`0`, any case,
/// any unique prefix (`o` alone is not one), surrounding whitespace allowed.
pub(crate) fn parse_bool(text: &str) -> Option<bool> {
    let t = trim_pg_space(text);
    let lower = t.to_ascii_lowercase();
    let prefix_of = |word: &str| !lower.is_empty() && word.starts_with(lower.as_str());
    match lower.as_bytes().first()? {
        b't' if prefix_of("true") => Some(true),
        b'f' if prefix_of("false") => Some(false),
        b'y' if prefix_of("yes") => Some(true),
        b'n' if prefix_of("no") => Some(false),
        b'o' if lower.len() >= 2 && prefix_of("on") => Some(true),
        b'o' if lower.len() >= 2 && prefix_of("off") => Some(false),
        b'1' if lower.len() == 1 => Some(true),
        b'0' if lower.len() == 1 => Some(false),
        _ => None,
    }
}

/// `float8in`: surrounding whitespace, `NaN`, `[+-]Infinity`/`inf` in any case, or a decimal
/// number (exponent allowed); a finite text that rounds to an infinity, or a non-zero one
/// that rounds to zero, is out of range.
pub(crate) fn parse_float(text: &str) -> Result<f64, InputError> {
    let t = trim_pg_space(text);
    let (sign, word) = match t.as_bytes().first() {
        Some(b'-') => (-1.0, &t[1..]),
        Some(b'+') => (1.0, &t[1..]),
        _ => (1.0, t),
    };
    if word.eq_ignore_ascii_case("nan") {
        return Ok(f64::NAN);
    }
    if word.eq_ignore_ascii_case("infinity") || word.eq_ignore_ascii_case("inf") {
        return Ok(sign * f64::INFINITY);
    }
    let decimal = Decimal::parse(t.as_bytes()).map_err(|_| InputError::Syntax)?;
    let v: f64 = t.parse().map_err(|_| InputError::Syntax)?;
    if v.is_infinite() || (v == 0.0 && !decimal.is_zero()) {
        return Err(InputError::OutOfRange);
    }
    Ok(v)
}

/// A double as `float8out` prints it: the shortest text that reads back the same, in
/// exponent form below 1e-4 and from 1e15 (`1e+20`, `1e-05`, `1.5`, `100000000000000`).
pub(crate) fn float8_text(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    // Rust's `{:e}` is the shortest round-trip digits: `-1.2345e17`, `1e-5`, `0e0`.
    let sci = format!("{v:e}");
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (negative, mantissa) = match mantissa.strip_prefix('-') {
        Some(m) => (true, m),
        None => (false, mantissa),
    };
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    if (-4..15).contains(&exponent) {
        // Fixed notation: `exponent + 1` digits before the point (or leading zeros after it).
        let point = exponent + 1;
        if point <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n(
                '0',
                usize::try_from(-point).unwrap_or(0),
            ));
            out.push_str(&digits);
        } else {
            let point = usize::try_from(point).unwrap_or(0);
            if digits.len() <= point {
                out.push_str(&digits);
                out.extend(std::iter::repeat_n('0', point - digits.len()));
            } else {
                out.push_str(&digits[..point]);
                out.push('.');
                out.push_str(&digits[point..]);
            }
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        out.push('e');
        out.push(if exponent < 0 { '-' } else { '+' });
        out.push_str(&format!("{:02}", exponent.unsigned_abs()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_as_postgresql_reads_them() {
        assert_eq!(parse_int("120"), Ok(120));
        assert_eq!(parse_int(" +120 \n"), Ok(120));
        assert_eq!(parse_int("-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(
            parse_int("9223372036854775808"),
            Err(InputError::OutOfRange)
        );
        for bad in [
            "", " ", "12.0", "1e3", "1_000", "0x10", "abc", "12a", "+", "- 1", "١٢",
        ] {
            assert_eq!(parse_int(bad), Err(InputError::Syntax), "{bad}");
        }
    }

    #[test]
    fn booleans_as_postgresql_reads_them() {
        for t in ["t", "TRUE", " tru ", "y", "yes", "on", "ON", "1"] {
            assert_eq!(parse_bool(t), Some(true), "{t}");
        }
        for f in ["f", "False", "n", "no", "of", "off", "0", "\tfalse\n"] {
            assert_eq!(parse_bool(f), Some(false), "{f}");
        }
        for bad in ["", "o", "truex", "yess", "2", "01", "onn", "-1", "tr ue"] {
            assert_eq!(parse_bool(bad), None, "{bad}");
        }
    }

    #[test]
    fn floats_as_postgresql_reads_them() {
        assert_eq!(parse_float(" +1.5 "), Ok(1.5));
        assert_eq!(parse_float("1e5"), Ok(100_000.0));
        assert_eq!(parse_float("-inf"), Ok(f64::NEG_INFINITY));
        assert!(parse_float("NaN").unwrap().is_nan());
        assert!(parse_float("-nan").unwrap().is_nan());
        assert_eq!(parse_float("1e400"), Err(InputError::OutOfRange));
        assert_eq!(parse_float("1e-400"), Err(InputError::OutOfRange));
        assert_eq!(parse_float("0e-400"), Ok(0.0));
        for bad in ["", "abc", "1.2.3", "0x1p3", "1,5", "infinite"] {
            assert_eq!(parse_float(bad), Err(InputError::Syntax), "{bad}");
        }
    }

    /// Each expected text is what PostgreSQL 15 prints for the value (`SELECT x::float8::text`).
    #[test]
    fn doubles_print_like_float8out() {
        for (v, text) in [
            (42.0, "42"),
            (1.5, "1.5"),
            (1e20, "1e+20"),
            (1e15, "1e+15"),
            (1e14, "100000000000000"),
            (123_456_789_012_345.0, "123456789012345"),
            (1_234_567_890_123_456.0, "1.234567890123456e+15"),
            (123_456_789_012_345_678.0, "1.2345678901234568e+17"),
            (0.0001, "0.0001"),
            (0.00001, "1e-05"),
            (9.9999e-5, "9.9999e-05"),
            (2.5e-5, "2.5e-05"),
            (1e300, "1e+300"),
            (0.1 + 0.2, "0.30000000000000004"),
            (-0.0, "-0"),
            (0.0, "0"),
            (-37.25, "-37.25"),
            (5e-324, "5e-324"),
            (f64::MAX, "1.7976931348623157e+308"),
            (f64::NAN, "NaN"),
            (f64::NEG_INFINITY, "-Infinity"),
        ] {
            assert_eq!(float8_text(v), text, "{v:e}");
        }
    }
}
