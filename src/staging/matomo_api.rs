//! The staged shape of Matomo HTTP API visits (`Live.getLastVisitsDetails`): the one type
//! mapping of that source, from the API's JSON to Arrow. Extract writes it; transform reads
//! the columns by name like any staged field.
//!
//! One row per visit: each documented visit key as a typed column named by its key
//! (`idVisit`, `firstActionTimestamp`, ...), `actionDetails` as a list of structs (one typed
//! field per documented action key), and `visit_json`, the whole visit as JSON text, so a new
//! mapping can be replayed offline. Keys the config reads beyond the documented ones are
//! staged too, typed by their column's `sql_type`.
//!
//! The API sends numbers as strings as often as numbers (`"idSite": "1"`, `"timeSpent": 12`
//! or `"12"`): both are typed. A value that does not fit its type (`"timeSpent": "soon"`, an
//! object where text is expected, `""` in a number) is kept as JSON in the `<key>__raw`
//! companion column ([`RAW_SUFFIX`]), so transform loads, coerces or rejects it with its
//! reason, never silently. Unix-second timestamps become UTC timestamps. Matomo's custom
//! variables (`{"1": {"customVariableName1": n, "customVariableValue1": v}, ...}`) become one
//! JSON object `{n: v}`, as every reader of them wants; the slot layout stays in `visit_json`.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, ListArray, StringBuilder, StructArray,
    TimestampMillisecondBuilder,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use serde_json::Value;

use super::fields::{FieldKind, RAW_SUFFIX};
use crate::config::{ColumnSource, Operand, Source, TableSpec};

/// The API method whose visits are staged, naming the extract folder and manifest entry.
pub const VISITS_METHOD: &str = "Live.getLastVisitsDetails";
/// The key that identifies a visit (rejects name it).
pub const VISIT_ID: &str = "idVisit";
/// The array of a visit whose elements are its actions.
pub const ACTIONS_FIELD: &str = "actionDetails";
/// The whole visit as JSON text.
pub const VISIT_JSON: &str = "visit_json";
/// The newer Matomo's count of actions it left out of `actionDetails`.
pub const TRUNCATED_FIELD: &str = "truncatedActionsCount";

/// How one API key is staged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKind {
    /// Typed as the MongoDB sources type the same kind (text, integer, timestamp, JSON...).
    Field(FieldKind),
    /// Matomo's slot-keyed custom variables, staged as one JSON object name -> value.
    CustomVariables,
}

impl ApiKind {
    fn data_type(self) -> DataType {
        match self {
            ApiKind::Field(kind) => kind.data_type(),
            ApiKind::CustomVariables => DataType::Utf8,
        }
    }
}

use ApiKind::Field as F;

/// Visit keys: the ones the existing sync reads, and a few more that say when and how.
pub const VISIT_KEYS: &[(&str, ApiKind)] = &[
    ("idSite", F(FieldKind::Int)),
    ("idVisit", F(FieldKind::Int)),
    ("visitorId", F(FieldKind::Text)),
    ("actions", F(FieldKind::Int)),
    ("country", F(FieldKind::Text)),
    ("region", F(FieldKind::Text)),
    ("city", F(FieldKind::Text)),
    ("operatingSystemName", F(FieldKind::Text)),
    ("deviceModel", F(FieldKind::Text)),
    ("deviceBrand", F(FieldKind::Text)),
    ("visitDuration", F(FieldKind::Int)),
    ("daysSinceFirstVisit", F(FieldKind::Int)),
    ("visitorType", F(FieldKind::Text)),
    ("siteName", F(FieldKind::Text)),
    ("userId", F(FieldKind::Text)),
    ("resolution", F(FieldKind::Text)),
    ("referrerType", F(FieldKind::Text)),
    ("referrerName", F(FieldKind::Text)),
    ("firstActionTimestamp", F(FieldKind::Timestamp)),
    ("lastActionTimestamp", F(FieldKind::Timestamp)),
    ("serverDate", F(FieldKind::Text)),
    ("dimension1", F(FieldKind::Text)),
    ("dimension2", F(FieldKind::Text)),
    ("dimension3", F(FieldKind::Text)),
    ("dimension4", F(FieldKind::Text)),
    ("dimension5", F(FieldKind::Text)),
    ("dimension6", F(FieldKind::Text)),
    ("dimension7", F(FieldKind::Text)),
    ("dimension8", F(FieldKind::Text)),
    ("dimension9", F(FieldKind::Text)),
    ("dimension10", F(FieldKind::Text)),
    ("experiments", F(FieldKind::Json)),
    ("customVariables", ApiKind::CustomVariables),
    (TRUNCATED_FIELD, F(FieldKind::Int)),
];

/// Keys of one element of `actionDetails`.
pub const ACTION_KEYS: &[(&str, ApiKind)] = &[
    ("type", F(FieldKind::Text)),
    ("url", F(FieldKind::Text)),
    ("title", F(FieldKind::Text)),
    ("pageTitle", F(FieldKind::Text)),
    ("pageIdAction", F(FieldKind::Int)),
    ("idpageview", F(FieldKind::Text)),
    ("pageId", F(FieldKind::Int)),
    ("pageviewPosition", F(FieldKind::Int)),
    ("timestamp", F(FieldKind::Timestamp)),
    ("timeSpent", F(FieldKind::Int)),
    ("eventCategory", F(FieldKind::Text)),
    ("eventAction", F(FieldKind::Text)),
    ("eventName", F(FieldKind::Text)),
    ("eventValue", F(FieldKind::Decimal)),
    ("siteSearchKeyword", F(FieldKind::Text)),
    ("dimension1", F(FieldKind::Text)),
    ("dimension2", F(FieldKind::Text)),
    ("dimension3", F(FieldKind::Text)),
    ("dimension4", F(FieldKind::Text)),
    ("dimension5", F(FieldKind::Text)),
    ("dimension6", F(FieldKind::Text)),
    ("dimension7", F(FieldKind::Text)),
    ("dimension8", F(FieldKind::Text)),
    ("dimension9", F(FieldKind::Text)),
    ("dimension10", F(FieldKind::Text)),
    ("customVariables", ApiKind::CustomVariables),
];

/// One staged key: its path in the visit (or action) and its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiField {
    /// Key, or dotted path into nested objects (`a.b`, `list.0`).
    pub path: String,
    pub kind: ApiKind,
}

/// The keys staged for visits and for their actions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiFields {
    pub visit: Vec<ApiField>,
    pub actions: Vec<ApiField>,
}

impl ApiFields {
    /// The documented keys, plus `extra_visit` and `extra_actions` (keys a config reads), each
    /// once; a documented key keeps its documented kind.
    pub fn new(
        extra_visit: impl IntoIterator<Item = (String, FieldKind)>,
        extra_actions: impl IntoIterator<Item = (String, FieldKind)>,
    ) -> ApiFields {
        let build = |documented: &[(&str, ApiKind)], extra: Vec<(String, FieldKind)>| {
            let mut fields: Vec<ApiField> = documented
                .iter()
                .map(|(path, kind)| ApiField {
                    path: (*path).to_string(),
                    kind: *kind,
                })
                .collect();
            for (path, kind) in extra {
                if path != ACTIONS_FIELD && !fields.iter().any(|f| f.path == path) {
                    fields.push(ApiField {
                        path,
                        kind: ApiKind::Field(kind),
                    });
                }
            }
            fields
        };
        ApiFields {
            visit: build(VISIT_KEYS, extra_visit.into_iter().collect()),
            actions: build(ACTION_KEYS, extra_actions.into_iter().collect()),
        }
    }

    /// The staged Arrow schema: visit keys (typed, then `__raw`), `actionDetails`
    /// (list of structs) and its `__raw`, `visit_json`.
    pub fn schema(&self) -> SchemaRef {
        let mut columns = typed_and_raw(&self.visit);
        columns.push(Field::new(ACTIONS_FIELD, self.actions_type(), true));
        columns.push(raw_field(ACTIONS_FIELD));
        columns.push(Field::new(VISIT_JSON, DataType::Utf8, true));
        Arc::new(Schema::new(columns))
    }

    fn action_struct_fields(&self) -> Fields {
        Fields::from(typed_and_raw(&self.actions))
    }

    fn actions_type(&self) -> DataType {
        DataType::List(Arc::new(Field::new(
            "item",
            DataType::Struct(self.action_struct_fields()),
            true,
        )))
    }
}

fn raw_field(path: &str) -> Field {
    Field::new(format!("{path}{RAW_SUFFIX}"), DataType::Utf8, true)
}

fn typed_and_raw(fields: &[ApiField]) -> Vec<Field> {
    fields
        .iter()
        .flat_map(|f| {
            [
                Field::new(&f.path, f.kind.data_type(), true),
                raw_field(&f.path),
            ]
        })
        .collect()
}

/// The keys staged for the API tables among `tables`: the documented ones, plus every visit
/// and action key their columns read, typed by the column's `sql_type` (text for the
/// sources of computed columns).
pub fn fields_for_tables<'a>(tables: impl IntoIterator<Item = &'a TableSpec>) -> ApiFields {
    let mut visit = Vec::new();
    let mut actions = Vec::new();
    let mut add = |operand: &Operand, kind: FieldKind| match operand {
        Operand::Field(path) => visit.push((path.clone(), kind)),
        Operand::ElementField(key) => actions.push((key.clone(), kind)),
        Operand::ElementIndex => {}
    };
    let api = tables
        .into_iter()
        .filter(|t| matches!(t.source, Source::MatomoApi { .. }));
    for t in api {
        for c in &t.columns {
            let kind = FieldKind::for_sql_type(c.sql_type);
            match &c.source {
                ColumnSource::Field(path) => add(&Operand::Field(path.clone()), kind),
                ColumnSource::ElementField(key) => add(&Operand::ElementField(key.clone()), kind),
                ColumnSource::Computed(computed) => {
                    for operand in computed.operands() {
                        add(operand, FieldKind::Text);
                    }
                }
                _ => {}
            }
        }
    }
    ApiFields::new(visit, actions)
}

impl ApiFields {
    /// Whether `batch` (staged visits) holds every key these fields name.
    pub fn staged_in(&self, batch: &RecordBatch) -> bool {
        let schema = batch.schema();
        let visit = self
            .visit
            .iter()
            .all(|f| schema.field_with_name(&f.path).is_ok());
        let items = match schema.field_with_name(ACTIONS_FIELD).map(|f| f.data_type()) {
            Ok(DataType::List(item)) => match item.data_type() {
                DataType::Struct(fields) => Some(fields.clone()),
                _ => None,
            },
            _ => None,
        };
        visit
            && items.is_some_and(|items| {
                self.actions
                    .iter()
                    .all(|f| items.iter().any(|i| i.name() == &f.path))
            })
    }

    /// The visits of `batch` staged again from their `visit_json`, with these fields: how a
    /// mapping added after the extract is replayed offline. A row without readable JSON is
    /// staged as a non-visit (transform rejects it with its text).
    pub fn restage(&self, batch: &RecordBatch) -> Result<RecordBatch, StageError> {
        use arrow::array::{Array, AsArray};
        let json = batch
            .column_by_name(VISIT_JSON)
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| StageError(format!("the staged visits have no `{VISIT_JSON}`")))?;
        let mut builder = VisitBatchBuilder::new(self);
        for row in 0..json.len() {
            let visit = if json.is_valid(row) {
                serde_json::from_str(json.value(row))
                    .unwrap_or_else(|_| Value::String(json.value(row).to_string()))
            } else {
                Value::Null
            };
            builder.push(&visit)?;
        }
        builder.finish()
    }
}

/// The value at a dotted path (object keys; a number indexes an array).
pub fn get_path<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, part| match v {
        Value::Object(map) => map.get(part),
        Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get(i)),
        _ => None,
    })
}

/// How many actions Matomo left out of a visit's `actionDetails`: its
/// `truncatedActionsCount` (newer Matomo), else, when its `actions` count exceeds the
/// elements it sent (older Matomo says nothing else), the difference. `None`: not truncated.
pub fn truncated_actions(visit: &Value) -> Option<u64> {
    let number = |key: &str| match get_path(visit, key) {
        Some(Value::Number(n)) => n.as_u64(),
        Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
        _ => None,
    };
    if let Some(n) = number(TRUNCATED_FIELD).filter(|n| *n > 0) {
        return Some(n);
    }
    let sent = match get_path(visit, ACTIONS_FIELD) {
        Some(Value::Array(items)) => u64::try_from(items.len()).ok()?,
        _ => return None,
    };
    number("actions")
        .and_then(|total| total.checked_sub(sent))
        .filter(|n| *n > 0)
}

/// The latest unix time (in milliseconds) a visit holds at `path`: in the visit, or in each of
/// its actions when `in_actions` (what a watermark on `element.timestamp` reads).
pub fn latest_millis(visit: &Value, path: &str, in_actions: bool) -> Option<i64> {
    let read = |v: &Value| get_path(v, path).and_then(unix_millis);
    if !in_actions {
        return read(visit);
    }
    match get_path(visit, ACTIONS_FIELD) {
        Some(Value::Array(items)) => items.iter().filter_map(read).max(),
        _ => None,
    }
}

/// How many actions a visit carries (elements of `actionDetails`).
pub fn action_count(visit: &Value) -> u64 {
    match get_path(visit, ACTIONS_FIELD) {
        Some(Value::Array(items)) => u64::try_from(items.len()).unwrap_or(u64::MAX),
        _ => 0,
    }
}

/// One value as staged: typed, or kept as JSON in `__raw` when it does not fit.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Null,
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Millis(i64),
    Raw(String),
}

fn raw(value: &Value) -> Cell {
    Cell::Raw(value.to_string())
}

/// The staged cell of `value` for `kind`.
fn cell(kind: ApiKind, value: Option<&Value>) -> Cell {
    let Some(value) = value.filter(|v| !v.is_null()) else {
        return Cell::Null;
    };
    match kind {
        ApiKind::CustomVariables => custom_variables(value),
        ApiKind::Field(kind) => match kind {
            FieldKind::Text => match value {
                Value::String(s) => Cell::Text(s.clone()),
                Value::Number(n) => Cell::Text(n.to_string()),
                _ => raw(value),
            },
            FieldKind::Int => integer(value).map_or_else(|| raw(value), Cell::Int),
            FieldKind::Float => float(value).map_or_else(|| raw(value), Cell::Float),
            FieldKind::Decimal => decimal(value).map_or_else(|| raw(value), Cell::Text),
            FieldKind::Bool => boolean(value).map_or_else(|| raw(value), Cell::Bool),
            FieldKind::Timestamp => unix_millis(value).map_or_else(|| raw(value), Cell::Millis),
            FieldKind::Json => Cell::Text(value.to_string()),
            // Nothing of the API is binary or a list of ids: kept as JSON for transform to judge.
            FieldKind::Binary | FieldKind::IdList | FieldKind::Document => raw(value),
        },
    }
}

/// An integer from a JSON integer, an integral float, or a string holding an integer.
fn integer(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            let f = n.as_f64()?;
            // Integral and inside i64: the range check first, so the conversion is exact.
            (f.fract() == 0.0 && (-9.223_372_036_854_775e18..9.223_372_036_854_775e18).contains(&f))
                .then(|| format!("{f:.0}").parse().ok())
                .flatten()
        }),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    }
}

fn float(value: &Value) -> Option<f64> {
    match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) if is_decimal_text(s.trim()) => s.trim().parse::<f64>().ok(),
        _ => None,
    }
    .filter(|f| f.is_finite())
}

/// Exact decimal text: a JSON number as serde prints it, or a string of decimal syntax.
fn decimal(value: &Value) -> Option<String> {
    match value {
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) if is_decimal_text(s.trim()) => Some(s.trim().to_string()),
        _ => None,
    }
}

/// `[+-]digits[.digits][e[+-]digits]` (digits on at least one side of the point).
fn is_decimal_text(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (mantissa, exponent) = match s.split_once(['e', 'E']) {
        Some((m, e)) => (m, Some(e)),
        None => (s, None),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    let exponent_ok = exponent.is_none_or(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && digits(e)
    });
    !(int.is_empty() && frac.is_empty()) && digits(int) && digits(frac) && exponent_ok
}

fn boolean(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => match n.as_i64() {
            Some(0) => Some(false),
            Some(1) => Some(true),
            _ => None,
        },
        Value::String(s) => match s.trim() {
            "0" | "false" => Some(false),
            "1" | "true" => Some(true),
            _ => None,
        },
        _ => None,
    }
}

/// Unix seconds (integer, fractional, or a string of either) as milliseconds.
fn unix_millis(value: &Value) -> Option<i64> {
    let seconds = match value {
        Value::Number(_) => float(value)?,
        Value::String(s) if is_decimal_text(s.trim()) => float(value)?,
        _ => return None,
    };
    let millis = (seconds * 1000.0).round();
    // Inside what chrono and PostgreSQL can hold is transform's check; here only i64's.
    (millis.is_finite() && millis.abs() < 9.0e18)
        .then(|| format!("{millis:.0}").parse().ok())
        .flatten()
}

/// `{"1": {"customVariableName1": "n", "customVariableValue1": "v"}, ...}` -> `{"n": "v"}`.
/// An empty array (PHP's empty map) is no variable; any other shape is kept raw.
fn custom_variables(value: &Value) -> Cell {
    let slots: Vec<&Value> = match value {
        Value::Object(map) => map.values().collect(),
        Value::Array(items) if items.is_empty() => return Cell::Null,
        Value::Array(items) => items.iter().collect(),
        _ => return raw(value),
    };
    let mut out = serde_json::Map::new();
    for slot in slots {
        let Value::Object(slot) = slot else {
            return raw(value);
        };
        let find = |prefix: &str| {
            slot.iter()
                .find(|(k, _)| k.starts_with(prefix))
                .map(|(_, v)| v)
        };
        let name = match find("customVariableName") {
            Some(Value::String(name)) => name.clone(),
            Some(Value::Number(n)) => n.to_string(),
            _ => return raw(value),
        };
        let v = find("customVariableValue").cloned().unwrap_or(Value::Null);
        out.insert(name, v);
    }
    Cell::Text(Value::Object(out).to_string())
}

/// The typed builder of one staged key and its `__raw` companion.
struct ColumnBuilder {
    path: String,
    kind: ApiKind,
    values: Values,
    raw: StringBuilder,
}

enum Values {
    Text(StringBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    Millis(TimestampMillisecondBuilder),
}

impl ColumnBuilder {
    fn new(field: &ApiField) -> ColumnBuilder {
        let values = match field.kind {
            ApiKind::Field(FieldKind::Int) => Values::Int(Int64Builder::new()),
            ApiKind::Field(FieldKind::Float) => Values::Float(Float64Builder::new()),
            ApiKind::Field(FieldKind::Bool) => Values::Bool(BooleanBuilder::new()),
            ApiKind::Field(FieldKind::Timestamp) => {
                Values::Millis(TimestampMillisecondBuilder::new().with_timezone("UTC"))
            }
            _ => Values::Text(StringBuilder::new()),
        };
        ColumnBuilder {
            path: field.path.clone(),
            kind: field.kind,
            values,
            raw: StringBuilder::new(),
        }
    }

    fn push(&mut self, object: &Value) {
        let cell = cell(self.kind, get_path(object, &self.path));
        let mut raw = None;
        match (&mut self.values, cell) {
            (Values::Text(b), Cell::Text(s)) => b.append_value(s),
            (Values::Int(b), Cell::Int(i)) => b.append_value(i),
            (Values::Float(b), Cell::Float(f)) => b.append_value(f),
            (Values::Bool(b), Cell::Bool(v)) => b.append_value(v),
            (Values::Millis(b), Cell::Millis(ms)) => b.append_value(ms),
            (values, cell) => {
                values.append_null();
                if let Cell::Raw(text) = cell {
                    raw = Some(text);
                }
            }
        }
        self.raw.append_option(raw);
    }

    fn finish(mut self) -> [ArrayRef; 2] {
        let values: ArrayRef = match &mut self.values {
            Values::Text(b) => Arc::new(b.finish()),
            Values::Int(b) => Arc::new(b.finish()),
            Values::Float(b) => Arc::new(b.finish()),
            Values::Bool(b) => Arc::new(b.finish()),
            Values::Millis(b) => Arc::new(b.finish()),
        };
        [values, Arc::new(self.raw.finish())]
    }
}

impl Values {
    fn append_null(&mut self) {
        match self {
            Values::Text(b) => b.append_null(),
            Values::Int(b) => b.append_null(),
            Values::Float(b) => b.append_null(),
            Values::Bool(b) => b.append_null(),
            Values::Millis(b) => b.append_null(),
        }
    }
}

/// Why visits could not become a batch (more elements than Arrow's offsets hold).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StageError(String);

/// Visits -> one staged batch.
pub struct VisitBatchBuilder {
    schema: SchemaRef,
    action_fields: Fields,
    visit: Vec<ColumnBuilder>,
    actions: Vec<ColumnBuilder>,
    offsets: Vec<i32>,
    list_valid: Vec<bool>,
    list_raw: StringBuilder,
    json: StringBuilder,
    rows: usize,
}

impl VisitBatchBuilder {
    pub fn new(fields: &ApiFields) -> VisitBatchBuilder {
        VisitBatchBuilder {
            schema: fields.schema(),
            action_fields: fields.action_struct_fields(),
            visit: fields.visit.iter().map(ColumnBuilder::new).collect(),
            actions: fields.actions.iter().map(ColumnBuilder::new).collect(),
            offsets: vec![0],
            list_valid: Vec::new(),
            list_raw: StringBuilder::new(),
            json: StringBuilder::new(),
            rows: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Adds one visit. Anything but an object is staged with every key null, its JSON in
    /// `visit_json` and in `actionDetails__raw`, so transform rejects it with its value.
    pub fn push(&mut self, visit: &Value) -> Result<(), StageError> {
        for column in &mut self.visit {
            column.push(visit);
        }
        let end = *self.offsets.last().unwrap_or(&0);
        match (visit.is_object(), get_path(visit, ACTIONS_FIELD)) {
            (true, Some(Value::Array(items))) => {
                for item in items {
                    for column in &mut self.actions {
                        column.push(item);
                    }
                }
                let n = i32::try_from(items.len())
                    .ok()
                    .and_then(|n| end.checked_add(n))
                    .ok_or_else(|| {
                        StageError("more actions in one batch than Arrow can hold".into())
                    })?;
                self.offsets.push(n);
                self.list_valid.push(true);
                self.list_raw.append_null();
            }
            (true, None | Some(Value::Null)) => {
                self.offsets.push(end);
                self.list_valid.push(false);
                self.list_raw.append_null();
            }
            (true, Some(other)) => {
                self.offsets.push(end);
                self.list_valid.push(false);
                self.list_raw.append_value(other.to_string());
            }
            (false, _) => {
                self.offsets.push(end);
                self.list_valid.push(false);
                self.list_raw.append_value(visit.to_string());
            }
        }
        self.json.append_value(visit.to_string());
        self.rows += 1;
        Ok(())
    }

    /// The staged batch of every visit pushed.
    pub fn finish(self) -> Result<RecordBatch, StageError> {
        let arrow_error = |e: arrow::error::ArrowError| StageError(e.to_string());
        let mut columns: Vec<ArrayRef> = self
            .visit
            .into_iter()
            .flat_map(ColumnBuilder::finish)
            .collect();
        let children: Vec<ArrayRef> = self
            .actions
            .into_iter()
            .flat_map(ColumnBuilder::finish)
            .collect();
        let elements = StructArray::try_new(self.action_fields.clone(), children, None)
            .map_err(arrow_error)?;
        let item = Arc::new(Field::new(
            "item",
            DataType::Struct(self.action_fields),
            true,
        ));
        let list = ListArray::try_new(
            item,
            OffsetBuffer::new(self.offsets.into()),
            Arc::new(elements),
            Some(NullBuffer::from(self.list_valid)),
        )
        .map_err(arrow_error)?;
        let mut list_raw = self.list_raw;
        let mut json = self.json;
        columns.push(Arc::new(list));
        columns.push(Arc::new(list_raw.finish()));
        columns.push(Arc::new(json.finish()));
        RecordBatch::try_new(self.schema, columns).map_err(arrow_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int64Type, TimestampMillisecondType};
    use serde_json::json;

    fn stage(visits: &[Value]) -> RecordBatch {
        let fields = ApiFields::new([("browserName".to_string(), FieldKind::Text)], []);
        let mut builder = VisitBatchBuilder::new(&fields);
        for v in visits {
            builder.push(v).unwrap();
        }
        builder.finish().unwrap()
    }

    #[test]
    fn strings_and_numbers_are_typed_alike_and_misfits_kept_raw() {
        let batch = stage(&[
            json!({"idSite": "1", "idVisit": 42, "visitDuration": "12", "browserName": "Firefox",
            "firstActionTimestamp": "1709251200", "userId": 123,
            "actionDetails": [
                {"type": "action", "timeSpent": "7", "timestamp": 1709251200, "idpageview": ""},
                {"type": "event", "timeSpent": 3, "eventValue": "12.50", "timestamp": "1709251260"},
                {"type": "goal", "timeSpent": "soon", "eventValue": {"x": 1}}
            ]}),
            json!({"idSite": 1, "idVisit": "x", "visitDuration": "", "actionDetails": "broken"}),
            json!("not a visit"),
        ]);
        assert_eq!(batch.num_rows(), 3);
        let ints = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_primitive::<Int64Type>()
                .clone()
        };
        let raws = |name: &str| {
            batch
                .column_by_name(&format!("{name}__raw"))
                .unwrap()
                .as_string::<i32>()
                .clone()
        };
        assert_eq!(ints("idSite").values()[..2], [1, 1]);
        assert_eq!(ints("idVisit").value(0), 42);
        assert!(ints("idVisit").is_null(1));
        assert_eq!(raws("idVisit").value(1), "\"x\"");
        assert_eq!(raws("visitDuration").value(1), "\"\"");
        let text = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_string::<i32>()
                .clone()
        };
        assert_eq!(text("userId").value(0), "123");
        assert_eq!(text("browserName").value(0), "Firefox");
        let first = batch
            .column_by_name("firstActionTimestamp")
            .unwrap()
            .as_primitive::<TimestampMillisecondType>();
        assert_eq!(first.value(0), 1_709_251_200_000);

        let list = batch
            .column_by_name(ACTIONS_FIELD)
            .unwrap()
            .as_list::<i32>();
        assert_eq!(list.value_offsets(), &[0, 3, 3, 3]);
        assert!(list.is_valid(0) && list.is_null(1) && list.is_null(2));
        let items = list.values().as_struct();
        let spent = items
            .column_by_name("timeSpent")
            .unwrap()
            .as_primitive::<Int64Type>();
        assert_eq!(
            (spent.value(0), spent.value(1), spent.is_null(2)),
            (7, 3, true)
        );
        let spent_raw = items
            .column_by_name("timeSpent__raw")
            .unwrap()
            .as_string::<i32>();
        assert_eq!(spent_raw.value(2), "\"soon\"");
        let value = items
            .column_by_name("eventValue")
            .unwrap()
            .as_string::<i32>();
        assert_eq!(value.value(1), "12.50");
        let value_raw = items
            .column_by_name("eventValue__raw")
            .unwrap()
            .as_string::<i32>();
        assert_eq!(value_raw.value(2), "{\"x\":1}");
        let page_view = items
            .column_by_name("idpageview")
            .unwrap()
            .as_string::<i32>();
        assert_eq!(page_view.value(0), "");
        let list_raw = raws(ACTIONS_FIELD);
        assert_eq!(list_raw.value(1), "\"broken\"");
        assert_eq!(list_raw.value(2), "\"not a visit\"");
        let json_col = text(VISIT_JSON);
        let back: Value = serde_json::from_str(json_col.value(0)).unwrap();
        assert_eq!(back["actionDetails"][1]["eventValue"], "12.50");
    }

    #[test]
    fn custom_variables_become_name_to_value() {
        let visit = json!({"actionDetails": [
            {"customVariables": {"1": {"customVariableName1": "plan", "customVariableValue1": "pro"},
                                 "10": {"customVariableName10": "ab", "customVariableValue10": "B"}}},
            {"customVariables": []},
            {"customVariables": "odd"}
        ]});
        let batch = stage(&[visit]);
        let items = batch
            .column_by_name(ACTIONS_FIELD)
            .unwrap()
            .as_list::<i32>()
            .values()
            .as_struct()
            .clone();
        let cv = items
            .column_by_name("customVariables")
            .unwrap()
            .as_string::<i32>();
        assert_eq!(cv.value(0), r#"{"plan":"pro","ab":"B"}"#);
        assert!(cv.is_null(1) && cv.is_null(2));
        let cv_raw = items
            .column_by_name("customVariables__raw")
            .unwrap()
            .as_string::<i32>();
        assert_eq!(cv_raw.value(2), "\"odd\"");
    }

    #[test]
    fn truncation_is_read_from_the_count_or_the_missing_actions() {
        let details = |n: usize| Value::Array(vec![json!({}); n]);
        assert_eq!(
            truncated_actions(
                &json!({"truncatedActionsCount": "100", "actionDetails": details(500)})
            ),
            Some(100)
        );
        assert_eq!(
            truncated_actions(&json!({"actions": "600", "actionDetails": details(500)})),
            Some(100)
        );
        assert_eq!(
            truncated_actions(&json!({"actions": 3, "actionDetails": details(4)})),
            None
        );
        assert_eq!(
            truncated_actions(&json!({"actions": 3, "actionDetails": details(3)})),
            None
        );
        assert_eq!(truncated_actions(&json!({"actions": "x"})), None);
    }

    #[test]
    fn decimal_text_and_numbers() {
        for ok in ["1", "-1.5", "+.5", "5.", "1e10", "1.5E-3"] {
            assert!(is_decimal_text(ok), "{ok}");
        }
        for bad in ["", ".", "e5", "1e", "1.2.3", "NaN", "inf", "1 2", "--1"] {
            assert!(!is_decimal_text(bad), "{bad}");
        }
        assert_eq!(integer(&json!(12.0)), Some(12));
        assert_eq!(integer(&json!(12.5)), None);
        assert_eq!(integer(&json!(1e300)), None);
        assert_eq!(integer(&json!(" 7 ")), Some(7));
        assert_eq!(unix_millis(&json!("1709251200.5")), Some(1_709_251_200_500));
        assert_eq!(unix_millis(&json!(1e300)), None);
        assert_eq!(unix_millis(&json!("soon")), None);
    }
}
