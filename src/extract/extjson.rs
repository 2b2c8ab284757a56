//! Relaxed Extended JSON (MongoDB's Extended JSON specification, version 2) of raw BSON: the
//! one writer behind `keep_source`'s whole documents, `JSONB` fields and the `__raw` values of
//! fields that do not fit their type.
//!
//! Written straight from `RawBsonRef` into a `String`, in document order, as the specification
//! says a generator does: numbers as JSON numbers (doubles always with a fraction or an
//! exponent, non-finite ones as `{"$numberDouble": "NaN"}`), dates from 1970 to 9999 as
//! `{"$date": "2024-03-15T10:30:00.500Z"}` (milliseconds only when not zero, then three
//! digits), other dates as `{"$date": {"$numberLong": "..."}}`, regular expression options
//! sorted, binary subtypes as two lower-case hex digits. The bson crate's own relaxed output
//! differs on two points (it trims `.500` to `.5` and writes `-NaN`), hence this writer.
//! Nesting is bounded by [`super::bson_arrow::MAX_DEPTH`], so the recursion is too.

use std::fmt::Write as _;

use bson::raw::{RawBsonRef, RawDocument};
use bson::spec::BinarySubtype;
use bson::Bson;
use chrono::{DateTime, Utc};

/// Why a value has no Extended JSON.
#[derive(Debug)]
pub(crate) enum JsonError {
    /// The BSON is malformed (or a string is not UTF-8) at this path.
    Malformed { path: String, error: String },
    /// Documents and arrays nest deeper than the limit.
    TooDeep,
}

/// The first instant of year 10000: dates from here on have no four-digit year.
const YEAR_10000_MS: i64 = 253_402_300_800_000;

/// A whole document, at nesting level 1; `limit` is the deepest level allowed.
pub(crate) fn document(doc: &RawDocument, limit: usize) -> Result<String, JsonError> {
    let mut out = String::with_capacity(doc.as_bytes().len() + doc.as_bytes().len() / 2);
    Writer {
        out: &mut out,
        limit,
    }
    .document(doc, 1, "")?;
    Ok(out)
}

/// One value found in a document of nesting level `level`.
pub(crate) fn value(
    value: RawBsonRef<'_>,
    level: usize,
    limit: usize,
) -> Result<String, JsonError> {
    let mut out = String::new();
    Writer {
        out: &mut out,
        limit,
    }
    .value(value, level, "")?;
    Ok(out)
}

struct Writer<'o> {
    out: &'o mut String,
    limit: usize,
}

impl Writer<'_> {
    /// `doc` as a JSON object; `level` is its own nesting level.
    fn document(&mut self, doc: &RawDocument, level: usize, path: &str) -> Result<(), JsonError> {
        if level > self.limit {
            return Err(JsonError::TooDeep);
        }
        self.out.push('{');
        for (i, element) in doc.iter_elements().enumerate() {
            let element = element.map_err(|e| malformed(path, e.key(), &e))?;
            let key = element.key();
            let here = child_path(path, key);
            let value = element
                .value()
                .map_err(|e| malformed(path, Some(key), &e))?;
            if i > 0 {
                self.out.push(',');
            }
            string(self.out, key);
            self.out.push(':');
            self.value(value, level, &here)?;
        }
        self.out.push('}');
        Ok(())
    }

    /// One value held by a document or array of nesting level `level`.
    fn value(&mut self, value: RawBsonRef<'_>, level: usize, path: &str) -> Result<(), JsonError> {
        use RawBsonRef as B;
        match value {
            B::Double(v) => double(self.out, v),
            B::String(s) => string(self.out, s),
            B::Document(d) => self.document(d, level + 1, path)?,
            B::Array(a) => {
                if level + 1 > self.limit {
                    return Err(JsonError::TooDeep);
                }
                self.out.push('[');
                for (i, item) in a.into_iter().enumerate() {
                    let item = item.map_err(|e| malformed(path, None, &e))?;
                    if i > 0 {
                        self.out.push(',');
                    }
                    self.value(item, level + 1, &child_path(path, &i.to_string()))?;
                }
                self.out.push(']');
            }
            B::Binary(b) => binary(self.out, b.subtype, b.bytes),
            B::Undefined => self.out.push_str(r#"{"$undefined":true}"#),
            B::ObjectId(oid) => {
                let _ = write!(self.out, r#"{{"$oid":"{}"}}"#, oid.to_hex());
            }
            B::Boolean(v) => self.out.push_str(if v { "true" } else { "false" }),
            B::DateTime(d) => date(self.out, d.timestamp_millis()),
            B::Null => self.out.push_str("null"),
            B::RegularExpression(r) => {
                let mut options: Vec<char> = r.options.chars().collect();
                options.sort_unstable();
                self.out.push_str(r#"{"$regularExpression":{"pattern":"#);
                string(self.out, r.pattern);
                self.out.push_str(r#","options":"#);
                string(self.out, &options.into_iter().collect::<String>());
                self.out.push_str("}}");
            }
            B::JavaScriptCode(code) => {
                self.out.push_str(r#"{"$code":"#);
                string(self.out, code);
                self.out.push('}');
            }
            B::JavaScriptCodeWithScope(c) => {
                self.out.push_str(r#"{"$code":"#);
                string(self.out, c.code);
                self.out.push_str(r#","$scope":"#);
                self.document(c.scope, level + 1, path)?;
                self.out.push('}');
            }
            B::Int32(v) => {
                let _ = write!(self.out, "{v}");
            }
            B::Int64(v) => {
                let _ = write!(self.out, "{v}");
            }
            B::Timestamp(t) => {
                let _ = write!(
                    self.out,
                    r#"{{"$timestamp":{{"t":{},"i":{}}}}}"#,
                    t.time, t.increment
                );
            }
            B::Decimal128(d) => {
                let _ = write!(self.out, r#"{{"$numberDecimal":"{d}"}}"#);
            }
            B::MaxKey => self.out.push_str(r#"{"$maxKey":1}"#),
            B::MinKey => self.out.push_str(r#"{"$minKey":1}"#),
            B::Symbol(s) => {
                self.out.push_str(r#"{"$symbol":"#);
                string(self.out, s);
                self.out.push('}');
            }
            // The raw pointer's parts are private to the bson crate: its own conversion, whose
            // output for this type is the specification's.
            B::DbPointer(_) => {
                let bson = Bson::try_from(value).map_err(|e| malformed(path, None, &e))?;
                self.out.push_str(&bson.into_relaxed_extjson().to_string());
            }
        }
        Ok(())
    }
}

fn child_path(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

fn malformed(path: &str, key: Option<&str>, e: &bson::raw::Error) -> JsonError {
    let path = match key {
        Some(key) => child_path(path, key),
        None if path.is_empty() => "(document)".to_string(),
        None => path.to_string(),
    };
    JsonError::Malformed {
        path,
        error: e.to_string(),
    }
}

/// A JSON string: `"` and `\` escaped, control characters as `\n`, `\t`... or `\u00XX`.
fn string(out: &mut String, s: &str) {
    out.push('"');
    let mut start = 0;
    for (i, c) in s.char_indices() {
        let escape = match c {
            '"' => "\\\"",
            '\\' => "\\\\",
            '\n' => "\\n",
            '\r' => "\\r",
            '\t' => "\\t",
            '\u{08}' => "\\b",
            '\u{0c}' => "\\f",
            c if c < ' ' => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{:04x}", u32::from(c));
        } else {
            out.push_str(escape);
        }
        start = i + c.len_utf8();
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// A finite double as a JSON number with a fraction or an exponent (`1.0`, `1e+300`, `-0.0`:
/// the shortest text that reads back as the same double, as serde_json prints it); NaN and
/// infinities as `$numberDouble`.
fn double(out: &mut String, v: f64) {
    match serde_json::Number::from_f64(v) {
        Some(n) => {
            let _ = write!(out, "{n}");
        }
        None if v.is_nan() => out.push_str(r#"{"$numberDouble":"NaN"}"#),
        None => {
            let sign = if v < 0.0 { "-" } else { "" };
            let _ = write!(out, r#"{{"$numberDouble":"{sign}Infinity"}}"#);
        }
    }
}

fn date(out: &mut String, ms: i64) {
    let iso = (0..YEAR_10000_MS)
        .contains(&ms)
        .then(|| DateTime::<Utc>::from_timestamp_millis(ms))
        .flatten();
    match iso {
        Some(t) => {
            let _ = write!(out, r#"{{"$date":"{}"#, t.format("%Y-%m-%dT%H:%M:%S"));
            let millis = ms % 1000;
            if millis != 0 {
                let _ = write!(out, ".{millis:03}");
            }
            out.push_str("Z\"}");
        }
        None => {
            let _ = write!(out, r#"{{"$date":{{"$numberLong":"{ms}"}}}}"#);
        }
    }
}

fn binary(out: &mut String, subtype: BinarySubtype, bytes: &[u8]) {
    out.push_str(r#"{"$binary":{"base64":""#);
    base64(out, bytes);
    let _ = write!(out, r#"","subType":"{:02x}"}}}}"#, u8::from(subtype));
}

/// Standard base64 with `=` padding.
fn base64(out: &mut String, bytes: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sextet = |n: u32, shift: u32| char::from(ALPHABET[((n >> shift) & 63) as usize]);
    for chunk in bytes.chunks(3) {
        let b = |i: usize| u32::from(chunk.get(i).copied().unwrap_or(0));
        let n = (b(0) << 16) | (b(1) << 8) | b(2);
        out.push(sextet(n, 18));
        out.push(sextet(n, 12));
        out.push(if chunk.len() > 1 { sextet(n, 6) } else { '=' });
        out.push(if chunk.len() > 2 { sextet(n, 0) } else { '=' });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::oid::ObjectId;
    use bson::{doc, Binary, RawDocumentBuf, Timestamp};
    use std::str::FromStr;

    fn json(d: bson::Document) -> String {
        document(&RawDocumentBuf::from_document(&d).unwrap(), 100).unwrap()
    }

    /// Expected texts written by hand from the Extended JSON specification's conversion table
    /// (relaxed column) and its footnotes on dates and regular expression options.
    #[test]
    fn every_bson_type_as_the_specification_writes_it() {
        let oid = ObjectId::parse_str("57e193d7a9cc81b4027498b5").unwrap();
        let d = doc! {
            "_id": oid,
            "s": "a\"b\\c\nd\u{1}é",
            "i32": 42_i32,
            "i64": 9_007_199_254_740_993_i64,
            "dbl": 1.0_f64,
            "frac": -0.25_f64,
            "big": 1e300_f64,
            "nan": f64::NAN,
            "ninf": f64::NEG_INFINITY,
            "dec": bson::Decimal128::from_str("1.05E+3").unwrap(),
            "bin": Binary { subtype: BinarySubtype::Generic, bytes: vec![1, 2, 3, 4, 5] },
            "uuid": Binary { subtype: BinarySubtype::Uuid, bytes: vec![0xc8; 16] },
            "user": Binary { subtype: BinarySubtype::UserDefined(0x80), bytes: vec![0xff] },
            "epoch": bson::DateTime::from_millis(0),
            "ms": bson::DateTime::from_millis(1_356_351_330_500),
            "before": bson::DateTime::from_millis(-284_643_869_501),
            "far": bson::DateTime::from_millis(YEAR_10000_MS),
            "re": bson::Regex { pattern: "^a/b".into(), options: "xsmi".into() },
            "code": bson::Bson::JavaScriptCode("f()".into()),
            "scoped": bson::Bson::JavaScriptCodeWithScope(bson::JavaScriptCodeWithScope {
                code: "g()".into(), scope: doc! { "x": 1 } }),
            "ts": Timestamp { time: 42, increment: 1 },
            "sym": bson::Bson::Symbol("sym".into()),
            "t": true,
            "n": bson::Bson::Null,
            "u": bson::Bson::Undefined,
            "min": bson::Bson::MinKey,
            "max": bson::Bson::MaxKey,
            "sub": { "a": [1, "x", { "b": false }] },
        };
        let expected = concat!(
            r#"{"_id":{"$oid":"57e193d7a9cc81b4027498b5"},"s":"a\"b\\c\nd\u0001é","i32":42,"#,
            r#""i64":9007199254740993,"dbl":1.0,"frac":-0.25,"big":1e+300,"#,
            r#""nan":{"$numberDouble":"NaN"},"ninf":{"$numberDouble":"-Infinity"},"#,
            r#""dec":{"$numberDecimal":"1.05E+3"},"#,
            r#""bin":{"$binary":{"base64":"AQIDBAU=","subType":"00"}},"#,
            r#""uuid":{"$binary":{"base64":"yMjIyMjIyMjIyMjIyMjIyA==","subType":"04"}},"#,
            r#""user":{"$binary":{"base64":"/w==","subType":"80"}},"#,
            r#""epoch":{"$date":"1970-01-01T00:00:00Z"},"ms":{"$date":"2012-12-24T12:15:30.500Z"},"#,
            r#""before":{"$date":{"$numberLong":"-284643869501"}},"#,
            r#""far":{"$date":{"$numberLong":"253402300800000"}},"#,
            r#""re":{"$regularExpression":{"pattern":"^a/b","options":"imsx"}},"#,
            r#""code":{"$code":"f()"},"scoped":{"$code":"g()","$scope":{"x":1}},"#,
            r#""ts":{"$timestamp":{"t":42,"i":1}},"sym":{"$symbol":"sym"},"t":true,"n":null,"#,
            r#""u":{"$undefined":true},"min":{"$minKey":1},"max":{"$maxKey":1},"#,
            r#""sub":{"a":[1,"x",{"b":false}]}}"#
        );
        assert_eq!(json(d), expected);
    }

    #[test]
    fn db_pointer_as_the_specification_writes_it() {
        // A DBPointer cannot be built through the bson crate's API: its BSON bytes.
        let mut bytes = vec![0u8; 4];
        bytes.push(0x0C);
        bytes.extend_from_slice(b"p\0");
        bytes.extend_from_slice(&4_i32.to_le_bytes());
        bytes.extend_from_slice(b"a.b\0");
        bytes.extend_from_slice(&[
            0x57, 0xe1, 0x93, 0xd7, 0xa9, 0xcc, 0x81, 0xb4, 2, 0x74, 0x98, 0xb5,
        ]);
        bytes.push(0);
        let len = i32::try_from(bytes.len()).unwrap().to_le_bytes();
        bytes[..4].copy_from_slice(&len);
        let raw = RawDocument::from_bytes(&bytes).unwrap();
        assert_eq!(
            document(raw, 100).unwrap(),
            r#"{"p":{"$dbPointer":{"$ref":"a.b","$id":{"$oid":"57e193d7a9cc81b4027498b5"}}}}"#
        );
    }

    #[test]
    fn base64_pads_every_length() {
        for (bytes, text) in [
            (&b""[..], ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foob", "Zm9vYg=="),
            (b"\xfb\xff", "+/8="),
        ] {
            let mut out = String::new();
            base64(&mut out, bytes);
            assert_eq!(out, text);
        }
    }

    #[test]
    fn nesting_past_the_limit_is_refused() {
        let mut d = doc! { "x": 1 };
        for _ in 0..4 {
            d = doc! { "a": d };
        }
        let raw = RawDocumentBuf::from_document(&d).unwrap();
        assert!(document(&raw, 5).is_ok());
        assert!(matches!(document(&raw, 4), Err(JsonError::TooDeep)));
        let arrays = RawDocumentBuf::from_document(&doc! { "a": [[[1]]] }).unwrap();
        assert!(document(&arrays, 4).is_ok());
        assert!(matches!(document(&arrays, 3), Err(JsonError::TooDeep)));
    }
}
