//! Values staged in a `__raw` column (they did not fit the staged type: a number for a text
//! column, a string for an integer) get the conversion PostgreSQL's own input would give
//! them, as the Python tool got through psycopg2: numbers to their canonical text, numeric
//! strings to numbers, PostgreSQL's boolean spellings, rounding to a `NUMERIC`'s scale. What
//! PostgreSQL would refuse (letters into an integer, a value out of range, NaN into a
//! `NUMERIC(p,s)`) stays a reject with its reason. Only raw values come here, so the happy
//! path (typed values) never pays for it.

use arrow::array::{
    ArrayRef, BooleanArray, Decimal128Array, Float32Array, Float64Array, Int64Array, StringArray,
};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use std::sync::Arc;

use super::pg_input::{self, InputError};
use crate::config::SqlType;
use crate::decimal::{fits_precision, Decimal, Numeric, Rounding};

/// A raw value as the extract wrote it: relaxed extended JSON.
#[derive(Debug, Clone, PartialEq)]
enum RawValue {
    Str(String),
    Int(i64),
    /// A BSON double (`1.5`, `{"$numberDouble": "NaN"}`).
    Double(f64),
    /// A BSON Decimal128's text (`{"$numberDecimal": "12.50"}`).
    Decimal(String),
    Bool(bool),
    Other,
}

impl RawValue {
    fn parse(raw: &str) -> RawValue {
        let parsed = match raw.as_bytes().first() {
            Some(b'"') => serde_json::from_str::<String>(raw).ok().map(RawValue::Str),
            Some(b'{') => extended_number(raw),
            Some(b'-' | b'0'..=b'9') if raw.contains(['.', 'e', 'E']) => {
                raw.parse::<f64>().ok().map(RawValue::Double)
            }
            Some(b'-' | b'0'..=b'9') => raw.parse::<i64>().ok().map(RawValue::Int),
            _ if raw == "true" => Some(RawValue::Bool(true)),
            _ if raw == "false" => Some(RawValue::Bool(false)),
            _ => None,
        };
        parsed.unwrap_or(RawValue::Other)
    }
}

/// `{"$numberDecimal": "..."}` or `{"$numberDouble": "..."}`.
fn extended_number(raw: &str) -> Option<RawValue> {
    if !raw.starts_with("{\"$number") {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(raw).ok()?;
    let object = value.as_object().filter(|o| o.len() == 1)?;
    let (key, text) = object.iter().next()?;
    let text = text.as_str()?;
    match key.as_str() {
        "$numberDecimal" => Some(RawValue::Decimal(text.to_string())),
        "$numberDouble" => pg_input::parse_float(text).ok().map(RawValue::Double),
        _ => None,
    }
}

/// A coerced value, typed for the target column.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Coerced {
    Text(String),
    Int(i64),
    Bool(bool),
    Float(f64),
    /// A `NUMERIC(p,s)` value times 10^s.
    Scaled(i128),
}

/// A coerced value and whether digits were rounded away to get it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Coercion {
    pub value: Coerced,
    pub rounded: bool,
}

impl From<Coerced> for Coercion {
    fn from(value: Coerced) -> Coercion {
        Coercion {
            value,
            rounded: false,
        }
    }
}

/// The value PostgreSQL's input rules give `raw` in a column of type `ty`, or why it has none.
pub(crate) fn coerce(ty: SqlType, raw: &str) -> Result<Coercion, String> {
    let value = RawValue::parse(raw);
    let wrong = || format!("wrong type for {ty}");
    match ty {
        SqlType::Varchar(_) | SqlType::Char(_) | SqlType::Text => match value {
            RawValue::Int(n) => Ok(Coerced::Text(n.to_string()).into()),
            RawValue::Double(v) => Ok(Coerced::Text(pg_input::float8_text(v)).into()),
            RawValue::Decimal(text) => match Numeric::parse_pg(&text) {
                Ok(Numeric::Finite(d)) => Ok(Coerced::Text(d.to_pg_text()).into()),
                Ok(special) => {
                    Ok(Coerced::Text(special.special_text().unwrap_or("NaN").into()).into())
                }
                Err(_) => Err(wrong()),
            },
            _ => Err(wrong()),
        },
        SqlType::SmallInt
        | SqlType::Integer
        | SqlType::BigInt
        | SqlType::Serial
        | SqlType::BigSerial => integer(ty, value).map(|n| Coerced::Int(n).into()),
        SqlType::Boolean => match value {
            RawValue::Str(s) => pg_input::parse_bool(&s)
                .map(|b| Coerced::Bool(b).into())
                .ok_or_else(|| format!("invalid input syntax for {ty}")),
            RawValue::Int(0) => Ok(Coerced::Bool(false).into()),
            RawValue::Int(1) => Ok(Coerced::Bool(true).into()),
            RawValue::Int(_) => Err(format!("only the integers 0 and 1 are {ty} values")),
            _ => Err(wrong()),
        },
        SqlType::Real | SqlType::Double => float(ty, value),
        SqlType::Numeric(Some((p, s))) if p <= 38 => scaled(ty, value, p, s),
        SqlType::Numeric(_) => numeric_text(ty, value),
        _ => Err(wrong()),
    }
}

fn integer(ty: SqlType, value: RawValue) -> Result<i64, String> {
    let out_of_range = || format!("out of range for {ty}");
    let non_integer = || format!("non-integer value for {ty}");
    let n = match value {
        RawValue::Str(s) => pg_input::parse_int(&s).map_err(|e| match e {
            InputError::Syntax => format!("invalid input syntax for {ty}"),
            InputError::OutOfRange => out_of_range(),
        })?,
        RawValue::Decimal(text) => {
            let d = Decimal::parse(text.as_bytes()).map_err(|_| non_integer())?;
            let scaled = d
                .to_scaled::<i128>(0, Rounding::Exact)
                .map_err(|e| match e {
                    crate::decimal::DecimalError::Overflow => out_of_range(),
                    _ => non_integer(),
                })?;
            i64::try_from(scaled.value).map_err(|_| out_of_range())?
        }
        // Extract stages integral doubles within i64 as integers: what is left is either
        // not integral or too large.
        RawValue::Double(v) if v.is_finite() && v.fract() == 0.0 => return Err(out_of_range()),
        RawValue::Double(_) => return Err(non_integer()),
        _ => return Err(format!("wrong type for {ty}")),
    };
    let fits = match ty {
        SqlType::SmallInt => i16::try_from(n).is_ok(),
        SqlType::Integer | SqlType::Serial => i32::try_from(n).is_ok(),
        _ => true,
    };
    if fits {
        Ok(n)
    } else {
        Err(out_of_range())
    }
}

fn float(ty: SqlType, value: RawValue) -> Result<Coercion, String> {
    let out_of_range = || format!("out of range for {ty}");
    let (v, rounded) = match value {
        RawValue::Str(s) | RawValue::Decimal(s) => {
            let v = pg_input::parse_float(&s).map_err(|e| match e {
                InputError::Syntax => format!("invalid input syntax for {ty}"),
                InputError::OutOfRange => out_of_range(),
            })?;
            (v, false)
        }
        RawValue::Int(n) => {
            // An integer beyond 2^53 (extract stages the others): the nearest double, as
            // PostgreSQL's int8-to-float8 cast gives.
            #[allow(clippy::cast_precision_loss)]
            let v = n as f64;
            (v, true)
        }
        RawValue::Double(v) => (v, false),
        _ => return Err(format!("wrong type for {ty}")),
    };
    if ty == SqlType::Real
        && v.is_finite()
        && (v.abs() > f64::from(f32::MAX)
            || (v != 0.0 && v.abs() < f64::from(f32::MIN_POSITIVE) * f64::from(f32::EPSILON)))
    {
        return Err(out_of_range());
    }
    Ok(Coercion {
        value: Coerced::Float(v),
        rounded,
    })
}

fn scaled(ty: SqlType, value: RawValue, p: u32, s: u32) -> Result<Coercion, String> {
    let text = match value {
        RawValue::Str(s) | RawValue::Decimal(s) => s,
        RawValue::Double(v) if !v.is_finite() => {
            return Err(format!("{} does not fit {ty}", pg_input::float8_text(v)))
        }
        _ => return Err(format!("wrong type for {ty}")),
    };
    match Numeric::parse_pg(&text) {
        Ok(Numeric::Finite(d)) => {
            let too_big = || format!("`{}` does not fit {ty}", text.trim());
            let scaled = d
                .to_scaled::<i128>(s, Rounding::HalfAwayFromZero)
                .map_err(|_| too_big())?;
            if !fits_precision(scaled.value, p) {
                return Err(too_big());
            }
            Ok(Coercion {
                value: Coerced::Scaled(scaled.value),
                rounded: scaled.rounded,
            })
        }
        Ok(special) => Err(format!(
            "{} does not fit {ty}",
            special.special_text().unwrap_or("NaN")
        )),
        Err(crate::decimal::DecimalError::Overflow) => {
            Err(format!("`{}` does not fit {ty}", text.trim()))
        }
        Err(_) => Err(format!("invalid input syntax for {ty}")),
    }
}

/// An unconstrained `NUMERIC` (staged and loaded as text): any numeric input PostgreSQL
/// stores, kept as written (trimmed), and the special values.
fn numeric_text(ty: SqlType, value: RawValue) -> Result<Coercion, String> {
    let text = match value {
        RawValue::Str(s) | RawValue::Decimal(s) => s,
        RawValue::Double(v) if !v.is_finite() => {
            return Ok(Coerced::Text(pg_input::float8_text(v)).into())
        }
        _ => return Err(format!("wrong type for {ty}")),
    };
    match Numeric::parse_pg(&text) {
        Ok(Numeric::Finite(_)) => {
            Ok(Coerced::Text(crate::decimal::trim_pg_space(&text).to_string()).into())
        }
        Ok(special) => Ok(Coerced::Text(special.special_text().unwrap_or("NaN").into()).into()),
        Err(crate::decimal::DecimalError::Overflow) => {
            Err(format!("`{}` does not fit {ty}", text.trim()))
        }
        Err(_) => Err(format!("invalid input syntax for {ty}")),
    }
}

/// The coerced values as an array of the target's Arrow type (`None` if a value does not
/// match it, which `coerce` never produces).
pub(crate) fn coerced_array(target: &DataType, values: Vec<Coerced>) -> Option<ArrayRef> {
    Some(match target {
        DataType::Utf8 => Arc::new(StringArray::from_iter_values(values.into_iter().map(
            |v| match v {
                Coerced::Text(s) => s,
                _ => String::new(),
            },
        ))),
        DataType::Int16 | DataType::Int32 | DataType::Int64 => {
            let ints: Option<Vec<i64>> = values
                .into_iter()
                .map(|v| match v {
                    Coerced::Int(n) => Some(n),
                    _ => None,
                })
                .collect();
            cast(&(Arc::new(Int64Array::from(ints?)) as ArrayRef), target).ok()?
        }
        DataType::Boolean => Arc::new(BooleanArray::from(
            values
                .into_iter()
                .map(|v| match v {
                    Coerced::Bool(b) => Some(b),
                    _ => None,
                })
                .collect::<Option<Vec<bool>>>()?,
        )),
        DataType::Float64 | DataType::Float32 => {
            let floats: Vec<f64> = values
                .into_iter()
                .map(|v| match v {
                    Coerced::Float(f) => Some(f),
                    _ => None,
                })
                .collect::<Option<_>>()?;
            if target == &DataType::Float64 {
                Arc::new(Float64Array::from(floats))
            } else {
                // `coerce` checked every value is within REAL's range.
                #[allow(clippy::cast_possible_truncation)]
                let singles: Vec<f32> = floats.into_iter().map(|f| f as f32).collect();
                Arc::new(Float32Array::from(singles))
            }
        }
        DataType::Decimal128(p, s) => Arc::new(
            Decimal128Array::from(
                values
                    .into_iter()
                    .map(|v| match v {
                        Coerced::Scaled(n) => Some(n),
                        _ => None,
                    })
                    .collect::<Option<Vec<i128>>>()?,
            )
            .with_precision_and_scale(*p, *s)
            .ok()?,
        ),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(ty: &str, raw: &str) -> (Coerced, bool) {
        let c = coerce(SqlType::parse(ty).unwrap(), raw)
            .unwrap_or_else(|e| panic!("{raw} into {ty}: {e}"));
        (c.value, c.rounded)
    }

    fn err(ty: &str, raw: &str) -> String {
        coerce(SqlType::parse(ty).unwrap(), raw)
            .map(|c| panic!("{raw} into {ty} gave {c:?}"))
            .unwrap_err()
    }

    fn text(t: &str) -> (Coerced, bool) {
        (Coerced::Text(t.into()), false)
    }

    #[test]
    fn numbers_into_text_in_canonical_form() {
        assert_eq!(ok("VARCHAR(50)", "42"), text("42"));
        assert_eq!(ok("TEXT", "-7"), text("-7"));
        assert_eq!(ok("TEXT", "1.5"), text("1.5"));
        assert_eq!(ok("TEXT", "42.0"), text("42"));
        assert_eq!(ok("TEXT", "1e20"), text("1e+20"));
        assert_eq!(ok("TEXT", r#"{"$numberDouble":"NaN"}"#), text("NaN"));
        assert_eq!(
            ok("TEXT", r#"{"$numberDouble":"-Infinity"}"#),
            text("-Infinity")
        );
        assert_eq!(ok("TEXT", r#"{"$numberDecimal":"1.05E+3"}"#), text("1050"));
        assert_eq!(ok("TEXT", r#"{"$numberDecimal":"12.50"}"#), text("12.50"));
        assert_eq!(err("TEXT", "true"), "wrong type for TEXT");
        assert_eq!(
            err("TEXT", r#"{"$oid":"5f1d7a3b9c8e4a0012345678"}"#),
            "wrong type for TEXT"
        );
        assert_eq!(err("TEXT", r#"{"$numberLong":"7"}"#), "wrong type for TEXT");
        assert_eq!(err("TIME", "42"), "wrong type for TIME");
    }

    #[test]
    fn strings_into_integers_like_int_input() {
        assert_eq!(ok("INTEGER", r#""120""#), (Coerced::Int(120), false));
        assert_eq!(ok("BIGINT", r#"" +120 ""#), (Coerced::Int(120), false));
        assert_eq!(ok("SMALLINT", r#""-32768""#), (Coerced::Int(-32768), false));
        assert_eq!(
            ok("INTEGER", r#"{"$numberDecimal":"120"}"#),
            (Coerced::Int(120), false)
        );
        assert_eq!(err("SMALLINT", r#""32768""#), "out of range for SMALLINT");
        assert_eq!(
            err("INTEGER", r#""12.0""#),
            "invalid input syntax for INTEGER"
        );
        assert_eq!(
            err("INTEGER", r#""abc""#),
            "invalid input syntax for INTEGER"
        );
        assert_eq!(
            err("BIGINT", r#""99999999999999999999""#),
            "out of range for BIGINT"
        );
        assert_eq!(err("INTEGER", "42.5"), "non-integer value for INTEGER");
        assert_eq!(err("BIGINT", "1e19"), "out of range for BIGINT");
        assert_eq!(
            err("INTEGER", r#"{"$numberDecimal":"1.5"}"#),
            "non-integer value for INTEGER"
        );
        assert_eq!(err("INTEGER", "true"), "wrong type for INTEGER");
    }

    #[test]
    fn booleans_from_postgresql_spellings_and_0_1() {
        assert_eq!(ok("BOOLEAN", r#""true""#), (Coerced::Bool(true), false));
        assert_eq!(ok("BOOLEAN", r#"" OFF ""#), (Coerced::Bool(false), false));
        assert_eq!(ok("BOOLEAN", "1"), (Coerced::Bool(true), false));
        assert_eq!(ok("BOOLEAN", "0"), (Coerced::Bool(false), false));
        assert_eq!(
            err("BOOLEAN", "2"),
            "only the integers 0 and 1 are BOOLEAN values"
        );
        assert_eq!(
            err("BOOLEAN", r#""maybe""#),
            "invalid input syntax for BOOLEAN"
        );
        assert_eq!(err("BOOLEAN", "1.0"), "wrong type for BOOLEAN");
    }

    #[test]
    fn numeric_strings_into_numbers() {
        assert_eq!(
            ok("NUMERIC(10,2)", r#""37.123456""#),
            (Coerced::Scaled(3712), true)
        );
        assert_eq!(
            ok("NUMERIC(10,2)", r#"" -0.125 ""#),
            (Coerced::Scaled(-13), true)
        );
        assert_eq!(
            ok("NUMERIC(10,2)", r#""12.5""#),
            (Coerced::Scaled(1250), false)
        );
        assert_eq!(
            err("NUMERIC(10,2)", r#""123456789""#),
            "`123456789` does not fit NUMERIC(10,2)"
        );
        assert_eq!(
            err("NUMERIC(10,2)", r#""NaN""#),
            "NaN does not fit NUMERIC(10,2)"
        );
        assert_eq!(
            err("NUMERIC(10,2)", r#"{"$numberDouble":"Infinity"}"#),
            "Infinity does not fit NUMERIC(10,2)"
        );
        assert_eq!(
            err("NUMERIC(10,2)", r#"{"$numberDecimal":"-Infinity"}"#),
            "-Infinity does not fit NUMERIC(10,2)"
        );
        assert_eq!(
            err("NUMERIC(10,2)", r#""1e2147483647""#),
            "`1e2147483647` does not fit NUMERIC(10,2)"
        );
        assert_eq!(
            err("NUMERIC(10,2)", r#""ten""#),
            "invalid input syntax for NUMERIC(10,2)"
        );
        assert_eq!(ok("NUMERIC", r#"" 1.5e3 ""#), text("1.5e3"));
        assert_eq!(ok("NUMERIC", r#""nan""#), text("NaN"));
        assert_eq!(
            ok("NUMERIC", r#"{"$numberDouble":"-Infinity"}"#),
            text("-Infinity")
        );
        assert_eq!(
            err("NUMERIC", r#""1e131072""#),
            "`1e131072` does not fit NUMERIC"
        );
        assert_eq!(
            ok("DOUBLE PRECISION", r#""1.5""#),
            (Coerced::Float(1.5), false)
        );
        assert_eq!(
            ok("DOUBLE PRECISION", r#"{"$numberDecimal":"2.5"}"#),
            (Coerced::Float(2.5), false)
        );
        assert_eq!(
            ok("DOUBLE PRECISION", "9007199254740993"),
            (Coerced::Float(9_007_199_254_740_992.0), true)
        );
        assert_eq!(
            err("DOUBLE PRECISION", r#""1e400""#),
            "out of range for DOUBLE PRECISION"
        );
        assert_eq!(err("REAL", r#""1e39""#), "out of range for REAL");
        assert_eq!(
            err("DOUBLE PRECISION", r#""x""#),
            "invalid input syntax for DOUBLE PRECISION"
        );
    }
}
