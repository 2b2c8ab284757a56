//! Column expressions as the config declares them (`value_map`, `const`, `regex`, `json`;
//! `template` is parsed with the other computed sources in `validate`), checked when the
//! config loads: every problem of a column is reported, and every value the config itself
//! gives (`const`, `value_map` targets, `default`) is cast to the column's type here by the
//! transform's own rules, so a run never meets a config value that does not fit.
//! Regular expressions are compiled here, once; the transform only runs them.

use std::collections::HashMap;

use super::raw::RawColumn;
use super::{
    ColumnSource, ColumnSpec, Computed, Expression, JsonMode, NoMatch, SqlType, Unmapped, ValueMap,
};

/// A problem: the column's sub-key and the message.
pub(super) type KeyProblem = (&'static str, String);

/// The expression keys a column sets, in the order the docs list them.
pub(super) fn expression_keys(rc: &RawColumn) -> Vec<&'static str> {
    [
        ("template", rc.template.is_some()),
        ("coalesce", rc.coalesce.is_some()),
        ("json_object", rc.json_object.is_some()),
        ("const", rc.constant.is_some()),
        ("value_map", rc.value_map.is_some()),
        ("regex", rc.regex.is_some()),
        ("json", rc.json.is_some()),
    ]
    .into_iter()
    .filter(|(_, set)| *set)
    .map(|(k, _)| k)
    .collect()
}

/// Applies `const`, `value_map`, `regex` and `json` to a built column, or lists every problem.
pub(super) fn apply(rc: &RawColumn, col: &mut ColumnSpec) -> Result<(), Vec<KeyProblem>> {
    let mut problems = orphan_keys(rc);
    let keys = expression_keys(rc);
    if keys.len() > 1 {
        problems.push((
            keys[0],
            format!("a column takes one expression, found {}", keys.join(", ")),
        ));
    }
    let reads_source = rc.value_map.is_some() || rc.regex.is_some() || rc.json.is_some();
    if col.sql_type.is_generated() && (reads_source || rc.constant.is_some()) {
        problems.push((
            keys.first().copied().unwrap_or("sql_type"),
            format!(
                "`{}` is {}: PostgreSQL generates it",
                col.name, col.sql_type
            ),
        ));
    }
    if reads_source
        && !matches!(
            col.source,
            ColumnSource::Field(_) | ColumnSource::ElementField(_) | ColumnSource::ElementIndex
        )
    {
        problems.push((
            keys.first().copied().unwrap_or("source"),
            "reads a field's value: `source` must name a field".into(),
        ));
    }
    if problems.is_empty() {
        if let Err(found) = build(rc, col) {
            problems.extend(found);
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Sub-keys given without the key they belong to.
fn orphan_keys(rc: &RawColumn) -> Vec<KeyProblem> {
    let mut problems = Vec::new();
    for (set, key, parent) in [
        (rc.default.is_some(), "default", "value_map"),
        (rc.unmapped.is_some(), "unmapped", "value_map"),
        (rc.no_match.is_some(), "no_match", "regex"),
    ] {
        let parent_set = match parent {
            "value_map" => rc.value_map.is_some(),
            _ => rc.regex.is_some(),
        };
        if set && !parent_set {
            problems.push((
                key,
                format!("goes with `{parent}`, which the column does not set"),
            ));
        }
    }
    problems
}

/// The expression of a column whose keys are otherwise consistent.
fn build(rc: &RawColumn, col: &mut ColumnSpec) -> Result<(), Vec<KeyProblem>> {
    if let Some(value) = &rc.constant {
        if rc.source.is_some() {
            return Err(vec![("const", "a `const` column takes no `source`".into())]);
        }
        let text = config_value(value, col).map_err(|m| vec![("const", m)])?;
        col.source = ColumnSource::Computed(Computed::Const(text));
    } else if let Some(map) = &rc.value_map {
        col.expression = Some(Expression::ValueMap(value_map(rc, map, col)?));
    } else if let Some(pattern) = &rc.regex {
        col.expression = Some(regex(pattern, rc.no_match.as_deref()).map_err(|e| vec![e])?);
    } else if let Some(mode) = &rc.json {
        col.expression = Some(json(mode, col.sql_type).map_err(|e| vec![e])?);
    }
    Ok(())
}

/// `value_map` with its `default` or `unmapped`.
fn value_map(
    rc: &RawColumn,
    map: &serde_yaml::Mapping,
    col: &ColumnSpec,
) -> Result<ValueMap, Vec<KeyProblem>> {
    let mut problems = Vec::new();
    let mut entries: HashMap<String, Option<String>> = HashMap::new();
    let mut seen = std::collections::HashSet::new();
    for (key, target) in map {
        let Some(from) = scalar_text(key) else {
            problems.push((
                "value_map",
                format!("key {} is not a text, number or boolean", yaml_shown(key)),
            ));
            continue;
        };
        if !seen.insert(from.clone()) {
            problems.push((
                "value_map",
                format!(
                    "key `{from}` is listed twice (keys are compared as text: 1 and \"1\" are \
                     one key)"
                ),
            ));
            continue;
        }
        let to = match target {
            serde_yaml::Value::Null => None,
            value => match config_value(value, col) {
                Ok(text) => Some(text),
                Err(m) => {
                    problems.push(("value_map", format!("`{from}` -> {m}")));
                    continue;
                }
            },
        };
        entries.insert(from, to);
    }
    if entries.is_empty() && problems.is_empty() {
        problems.push(("value_map", "list at least one value".into()));
    }
    let unmapped = match (&rc.default, rc.unmapped.as_ref().map(Option::as_deref)) {
        (Some(_), Some(_)) => {
            problems.push((
                "unmapped",
                "a column takes `default` or `unmapped`, not both".into(),
            ));
            Unmapped::Reject
        }
        (Some(serde_yaml::Value::Null), None) => Unmapped::Null,
        (Some(value), None) => match config_value(value, col) {
            Ok(text) => Unmapped::Default(text),
            Err(m) => {
                problems.push(("default", m));
                Unmapped::Reject
            }
        },
        (None, None | Some(Some("reject"))) => Unmapped::Reject,
        (None, Some(None | Some("null"))) => Unmapped::Null,
        (None, Some(Some(other))) => {
            problems.push((
                "unmapped",
                format!("`{other}`: `reject` or `null` (or give a `default`)"),
            ));
            Unmapped::Reject
        }
    };
    if problems.is_empty() {
        Ok(ValueMap { entries, unmapped })
    } else {
        Err(problems)
    }
}

/// `regex` (with its first capture group) and `no_match`.
fn regex(pattern: &str, no_match: Option<&str>) -> Result<Expression, KeyProblem> {
    let no_match = match no_match {
        None | Some("null") => NoMatch::Null,
        Some("reject") => NoMatch::Reject,
        Some(other) => return Err(("no_match", format!("`{other}`: `null` or `reject`"))),
    };
    let regex = regex::Regex::new(pattern).map_err(|e| {
        (
            "regex",
            format!("`{pattern}` is not a valid regular expression: {e}"),
        )
    })?;
    if regex.captures_len() < 2 {
        return Err((
            "regex",
            format!("`{pattern}` has no capture group: the value is the first `( )` group"),
        ));
    }
    Ok(Expression::Regex { regex, no_match })
}

/// `json: wrap | parse`, JSONB columns only.
fn json(mode: &str, sql_type: SqlType) -> Result<Expression, KeyProblem> {
    if sql_type != SqlType::Jsonb {
        return Err((
            "json",
            format!("is for JSONB columns, the column is {sql_type}"),
        ));
    }
    match mode {
        "wrap" => Ok(Expression::Json(JsonMode::Wrap)),
        "parse" => Ok(Expression::Json(JsonMode::Parse)),
        other => Err(("json", format!("`{other}`: `wrap` or `parse`"))),
    }
}

/// A value the config gives a column, as the text the transform casts, checked to fit:
/// scalars as written; for a JSONB column, the YAML value as JSON (so `{a: 1}` is an object
/// and `abc` a JSON string).
fn config_value(value: &serde_yaml::Value, col: &ColumnSpec) -> Result<String, String> {
    let text = if col.sql_type == SqlType::Jsonb {
        // serde_json would write them as `null`: a silent change.
        if holds_non_finite(value) {
            return Err(format!(
                "{} holds NaN or infinity, which JSON cannot hold",
                yaml_shown(value)
            ));
        }
        serde_json::to_string(value)
            .map_err(|e| format!("{} is not JSON: {e}", yaml_shown(value)))?
    } else {
        scalar_text(value).ok_or_else(|| {
            format!(
                "{} is not a text, number or boolean (for {})",
                yaml_shown(value),
                col.sql_type
            )
        })?
    };
    crate::transform::expr::check_fits(col, &text).map_err(|reason| {
        let refused = format!("`{text}` does not fit {}", col.sql_type);
        // Some casts already say it in those words.
        if reason.starts_with(&refused) {
            reason
        } else {
            format!("{refused}: {reason}")
        }
    })?;
    Ok(text)
}

/// Whether a YAML value holds `.nan` or `.inf` anywhere.
fn holds_non_finite(value: &serde_yaml::Value) -> bool {
    match value {
        serde_yaml::Value::Number(n) => n.as_f64().is_some_and(|f| !f.is_finite()),
        serde_yaml::Value::Sequence(items) => items.iter().any(holds_non_finite),
        serde_yaml::Value::Mapping(m) => m
            .iter()
            .any(|(k, v)| holds_non_finite(k) || holds_non_finite(v)),
        serde_yaml::Value::Tagged(t) => holds_non_finite(&t.value),
        _ => false,
    }
}

/// A YAML scalar's text: strings as is, numbers and booleans as written.
fn scalar_text(value: &serde_yaml::Value) -> Option<String> {
    match value {
        serde_yaml::Value::String(s) => Some(s.clone()),
        serde_yaml::Value::Number(n) => Some(n.to_string()),
        serde_yaml::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn yaml_shown(value: &serde_yaml::Value) -> String {
    serde_yaml::to_string(value)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| format!("{value:?}"))
}
