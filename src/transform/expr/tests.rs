use super::*;
use crate::config::{ColumnSource, Operand, ValueMap};
use arrow::array::{BinaryArray, Int32Array, Int64Array};
use std::collections::HashMap;

fn col(ty: &str, nullable: bool) -> ColumnSpec {
    ColumnSpec {
        name: "c".into(),
        sql_type: SqlType::parse(ty).unwrap(),
        nullable,
        foreign_key: None,
        source: ColumnSource::Field("f".into()),
        expression: None,
    }
}

fn map(pairs: &[(&str, Option<&str>)], unmapped: Unmapped) -> Expression {
    let entries: HashMap<String, Option<String>> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
        .collect();
    Expression::ValueMap(ValueMap { entries, unmapped })
}

fn regex(pattern: &str, no_match: NoMatch) -> Expression {
    Expression::Regex {
        regex: regex::Regex::new(pattern).unwrap(),
        no_match,
    }
}

/// A staged Text-kind field: strings typed, other values as raw extended JSON.
fn staged(values: &[Option<&str>], raw: &[Option<&str>]) -> (ArrayRef, StringArray) {
    (
        Arc::new(StringArray::from(values.to_vec())),
        StringArray::from(raw.to_vec()),
    )
}

fn strings(a: &ArrayRef) -> Vec<Option<String>> {
    a.as_string::<i32>()
        .iter()
        .map(|v| v.map(str::to_string))
        .collect()
}

fn errors(c: &Converted) -> Vec<(usize, String, Option<String>)> {
    c.errors
        .iter()
        .map(|e| (e.row, e.reason.clone(), e.raw.clone()))
        .collect()
}

#[test]
fn value_map_compares_text_so_number_and_string_are_one_key() {
    // "1" as a string, 1 as a number (raw), 2.0 a double, null, missing.
    let (values, raw) = staged(
        &[Some("1"), None, None, None, Some("3")],
        &[
            None,
            Some("1"),
            Some("{\"$numberDecimal\": \"2\"}"),
            None,
            None,
        ],
    );
    let expr = map(
        &[("1", Some("male")), ("2", Some("female")), ("3", None)],
        Unmapped::Reject,
    );
    let c = evaluate(
        &col("TEXT", true),
        &expr,
        &values,
        Some(&raw),
        chrono_tz::UTC,
    );
    assert_eq!(
        strings(&c.array),
        [
            Some("male".into()),
            Some("male".into()),
            Some("female".into()),
            None,
            None
        ]
    );
    assert!(c.errors.is_empty(), "{:?}", c.errors);
}

#[test]
fn value_map_reads_an_integer_staged_column_as_its_digits() {
    let values: ArrayRef = Arc::new(Int64Array::from(vec![Some(1), Some(7), None]));
    let expr = map(&[("1", Some("10"))], Unmapped::Default("0".into()));
    let c = evaluate(&col("INTEGER", true), &expr, &values, None, chrono_tz::UTC);
    let out = c.array.as_primitive::<arrow::datatypes::Int32Type>();
    assert_eq!(out, &Int32Array::from(vec![Some(10), Some(0), None]));
}

#[test]
fn unmapped_value_is_rejected_with_the_expression_and_raw_value() {
    // A wrong type (a document) and an unknown text.
    let (values, raw) = staged(&[Some("x"), None], &[None, Some("{\"a\":1}")]);
    let expr = map(&[("1", Some("male"))], Unmapped::Reject);
    let c = evaluate(
        &col("TEXT", false),
        &expr,
        &values,
        Some(&raw),
        chrono_tz::UTC,
    );
    assert_eq!(
        errors(&c),
        [
            (
                0,
                "value_map: value not in the map (`unmapped: reject`)".into(),
                Some("x".into())
            ),
            (
                1,
                "value_map: value not in the map (`unmapped: reject`)".into(),
                Some("{\"a\":1}".into())
            ),
        ],
        "one error per row: the NULL left behind is not also a NOT NULL error"
    );
}

#[test]
fn unmapped_null_gives_null_and_a_not_null_column_rejects_it_naming_the_expression() {
    let (values, raw) = staged(&[Some("x"), None], &[None, None]);
    let expr = map(&[("1", Some("a"))], Unmapped::Null);
    let c = evaluate(
        &col("TEXT", true),
        &expr,
        &values,
        Some(&raw),
        chrono_tz::UTC,
    );
    assert_eq!(strings(&c.array), [None, None]);
    assert!(c.errors.is_empty());
    let c = evaluate(
        &col("TEXT", false),
        &expr,
        &values,
        Some(&raw),
        chrono_tz::UTC,
    );
    assert_eq!(
        errors(&c),
        [
            (
                0,
                "value_map gave NULL: NULL in NOT NULL column".into(),
                Some("x".into())
            ),
            (
                1,
                "value_map gave NULL: NULL in NOT NULL column".into(),
                None
            ),
        ]
    );
}

#[test]
fn regex_takes_the_first_group_and_casts_it_like_a_text_value() {
    let (values, raw) = staged(
        &[Some("born 1984"), Some("no year"), Some("born  0042"), None],
        &[None, None, None, Some("1990")],
    );
    let expr = regex(r"(\d{4})", NoMatch::Null);
    let c = evaluate(
        &col("SMALLINT", true),
        &expr,
        &values,
        Some(&raw),
        chrono_tz::UTC,
    );
    let out = c.array.as_primitive::<arrow::datatypes::Int16Type>();
    assert_eq!(
        out,
        &arrow::array::Int16Array::from(vec![Some(1984), None, Some(42), Some(1990)])
    );
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    assert_eq!(c.coerced, 0, "a declared expression is not a coercion");
}

#[test]
fn regex_no_match_reject_and_a_group_that_does_not_cast_are_rejects() {
    let (values, raw) = staged(&[Some("abc"), Some("n=99999"), Some("n=")], &[None; 3]);
    let expr = regex(r"n=(\d*)", NoMatch::Reject);
    let c = evaluate(
        &col("SMALLINT", true),
        &expr,
        &values,
        Some(&raw),
        chrono_tz::UTC,
    );
    let found = errors(&c);
    assert_eq!(found.len(), 3, "{found:?}");
    assert_eq!(
        found[0],
        (
            0,
            "regex `n=(\\d*)`: no match (`no_match: reject`)".into(),
            Some("abc".into())
        )
    );
    assert!(
        found[1].1.starts_with("regex `n=(\\d*)` gave `99999`: ")
            && found[1].1.contains("SMALLINT"),
        "{found:?}"
    );
    assert_eq!(found[1].2.as_deref(), Some("n=99999"));
    assert!(
        found[2].1.starts_with("regex `n=(\\d*)` gave ``: "),
        "{found:?}"
    );
}

#[test]
fn regex_optional_group_that_takes_no_part_is_no_match() {
    let (values, raw) = staged(&[Some("b")], &[None]);
    let c = evaluate(
        &col("TEXT", true),
        &regex("(a)?b", NoMatch::Null),
        &values,
        Some(&raw),
        chrono_tz::UTC,
    );
    assert_eq!(strings(&c.array), [None]);
}

#[test]
fn json_wrap_makes_a_string_and_parse_keeps_json_or_rejects() {
    let (values, raw) = staged(
        &[Some("say \"hi\"\n"), Some("[1, 2]"), Some("{bad"), None],
        &[None, None, None, Some("{\"a\":{\"$oid\":\"x\"}}")],
    );
    let wrap = evaluate(
        &col("JSONB", true),
        &Expression::Json(JsonMode::Wrap),
        &values,
        Some(&raw),
        chrono_tz::UTC,
    );
    assert_eq!(
        strings(&wrap.array),
        [
            Some("\"say \\\"hi\\\"\\n\"".into()),
            Some("\"[1, 2]\"".into()),
            Some("\"{bad\"".into()),
            Some("\"{\\\"a\\\":{\\\"$oid\\\":\\\"x\\\"}}\"".into())
        ]
    );
    let parse = evaluate(
        &col("JSONB", true),
        &Expression::Json(JsonMode::Parse),
        &values,
        Some(&raw),
        chrono_tz::UTC,
    );
    assert_eq!(
        strings(&parse.array),
        [
            None,
            Some("[1, 2]".into()),
            None,
            Some("{\"a\":{\"$oid\":\"x\"}}".into())
        ]
    );
    let found = errors(&parse);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].1.starts_with("json: parse: not JSON"), "{found:?}");
    assert_eq!(found[1].2.as_deref(), Some("{bad"));
}

#[test]
fn json_wrap_of_a_nul_character_is_refused_as_jsonb_cannot_store_it() {
    let (values, raw) = staged(&[Some("a\0b")], &[None]);
    let c = evaluate(
        &col("JSONB", true),
        &Expression::Json(JsonMode::Wrap),
        &values,
        Some(&raw),
        chrono_tz::UTC,
    );
    assert_eq!(c.errors.len(), 1);
    assert!(c.errors[0].reason.contains("NUL"), "{:?}", c.errors);
    assert_eq!(c.errors[0].raw.as_deref(), Some("a\0b"));
}

#[test]
fn binary_and_odd_unicode_sources_have_a_text() {
    let bytes: ArrayRef = Arc::new(BinaryArray::from(vec![Some(&[0xff_u8, 0x00][..])]));
    assert_eq!(text(&bytes, None, 0).as_deref(), Some("ff00"));
    let (values, raw) = staged(&[Some("é\u{fffd}😀")], &[None]);
    let c = evaluate(
        &col("VARCHAR(3)", true),
        &regex("^(.*)$", NoMatch::Null),
        &values,
        Some(&raw),
        chrono_tz::UTC,
    );
    assert_eq!(strings(&c.array), [Some("é\u{fffd}😀".into())]);
}

#[test]
fn const_is_cast_once_per_row_to_the_column_type() {
    let c = const_column(
        &col("TIMESTAMPTZ", false),
        "2024-03-01T10:00:00Z",
        2,
        chrono_tz::UTC,
    );
    assert!(c.errors.is_empty());
    let out = c
        .array
        .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
    assert_eq!(out.values().to_vec(), [1_709_287_200_000_000; 2]);
    assert_eq!(check_fits(&col("INTEGER", false), "12"), Ok(()));
    assert!(check_fits(&col("INTEGER", true), "x12").is_err());
    assert!(check_fits(&col("VARCHAR(2)", true), "abc").is_err());
    assert!(check_fits(&col("BOOLEAN", true), "yes").is_ok());
}

#[test]
fn template_fills_parts_and_a_missing_part_gives_null() {
    let name: ArrayRef = Arc::new(StringArray::from(vec![Some("intro"), None, Some("x")]));
    let name_raw = StringArray::from(vec![None, None, Some("ignored")]);
    let n: ArrayRef = Arc::new(Int64Array::from(vec![Some(3), Some(4), None]));
    let n_raw = StringArray::from(vec![None, None, Some("\"seven\"")]);
    let pieces = vec![
        Piece::Text("prompt_{".into()),
        Piece::Value(Operand::Field("name".into())),
        Piece::Text("}_".into()),
        Piece::Value(Operand::Field("n".into())),
    ];
    let parts = [(&name, Some(&name_raw)), (&n, Some(&n_raw))];
    let c = template_column(&col("TEXT", false), &pieces, &parts, 3, chrono_tz::UTC);
    assert_eq!(
        strings(&c.array),
        [
            Some("prompt_{intro}_3".into()),
            None,
            Some("prompt_{x}_seven".into())
        ]
    );
    assert_eq!(
        errors(&c),
        [(
            1,
            "template gave NULL: NULL in NOT NULL column".into(),
            None
        )]
    );
}

#[test]
fn dates_read_as_iso_text_whether_staged_typed_or_raw() {
    let typed: ArrayRef = Arc::new(
        arrow::array::TimestampMillisecondArray::from(vec![Some(1_709_294_400_000)])
            .with_timezone("UTC"),
    );
    assert_eq!(
        text(&typed, None, 0).as_deref(),
        Some("2024-03-01T12:00:00Z")
    );
    let naive: ArrayRef = Arc::new(arrow::array::TimestampMicrosecondArray::from(vec![Some(
        1_709_294_400_000_000,
    )]));
    assert_eq!(
        text(&naive, None, 0).as_deref(),
        Some("2024-03-01T12:00:00")
    );
    let nulls: ArrayRef = Arc::new(StringArray::from(vec![None::<&str>]));
    let raw = StringArray::from(vec![Some(r#"{"$date":"2024-03-01T12:00:00Z"}"#)]);
    assert_eq!(
        text(&nulls, Some(&raw), 0).as_deref(),
        Some("2024-03-01T12:00:00Z")
    );
    let raw = StringArray::from(vec![Some(r#"{"$date":{"$numberLong":"-1"}}"#)]);
    assert_eq!(
        text(&nulls, Some(&raw), 0).as_deref(),
        Some(r#"{"$date":{"$numberLong":"-1"}}"#),
        "a date outside 0..9999 keeps its extended JSON"
    );
}
