//! Tables of a source PostgreSQL into Arrow record batches (`--source postgres`).
//!
//! Each source table is read once, whatever the number of target tables declared on it, with
//! `COPY (SELECT ...) TO STDOUT` in text format through tokio-postgres' `copy_out`: the rows
//! stream in and are parsed into typed Arrow batches (at most `batch_rows` rows or 256 MiB of
//! text each) handed to the caller, which writes the Parquet parts. The session runs with
//! `DateStyle = ISO`, `TimeZone = UTC`, `bytea_output = hex` and `extra_float_digits = 3`, so
//! every value's text has one known shape and floats round-trip exactly.
//!
//! The column types come from the catalog before the COPY (`pg_attribute`, domains resolved
//! to their base type), so an unsupported type is an extract-time error naming the table and
//! the column (the config does not declare source types, so it cannot be known earlier):
//!
//! | PostgreSQL                                | staged Arrow                          |
//! |-------------------------------------------|---------------------------------------|
//! | smallint / integer / bigint               | Int16 / Int32 / Int64                 |
//! | real / double precision                   | Float32 / Float64                     |
//! | numeric(p,s), p <= 38                     | Decimal128(p,s)                       |
//! | numeric (unconstrained or p > 38)         | Utf8 (the number's exact text)        |
//! | text, varchar, char, name, uuid, citext   | Utf8                                  |
//! | boolean                                   | Boolean                               |
//! | timestamp / timestamptz                   | Timestamp(µs) / Timestamp(µs, "UTC")  |
//! | date / time                               | Date32 / Time64(µs)                   |
//! | bytea                                     | Binary                                |
//! | json, jsonb                               | Utf8 (the JSON text)                  |
//! | arrays (any element type)                 | Utf8, `array_to_json(col)::text`      |
//! | enums                                     | Utf8, the label                       |
//!
//! Values Arrow cannot hold (`infinity` and BC timestamps and dates, `24:00:00`, a numeric
//! `NaN`) are staged as NULL with their text in the `<column>__raw` companion of their
//! column, so transform rejects the row with that value instead of loading a silent NULL.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, StringBuilder,
    Time64MicrosecondBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit, DECIMAL128_MAX_PRECISION};
use arrow::record_batch::RecordBatch;
use chrono::{NaiveDate, NaiveDateTime, NaiveTime, Timelike};
use futures_util::StreamExt;
use tokio_postgres::Client;

use crate::config::{ColumnSource, TableSpec, Watermark};
use crate::decimal::{Decimal, Rounding};
use crate::settings::PostgresSettings;
use crate::staging::fields::RAW_SUFFIX;
use crate::staging::WatermarkValue;

/// A batch is flushed early once its text and binary values reach this many bytes, so a
/// table of long values never overflows Arrow's 32-bit offsets (2 GiB per array).
const MAX_BATCH_BYTES: usize = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum PgSourceError {
    #[error("cannot connect to the source PostgreSQL {target}: {message}")]
    Connect {
        /// The settings without the password.
        target: String,
        message: String,
    },
    #[error("source PostgreSQL table `{table}`: {message}")]
    Query { table: String, message: String },
    #[error("source PostgreSQL table `{table}` does not exist")]
    TableNotFound { table: String },
    #[error("source PostgreSQL table `{table}` has no column(s) {} ({config} reads them)", .columns.join(", "))]
    MissingColumns {
        table: String,
        config: String,
        columns: Vec<String>,
    },
    #[error(
        "source PostgreSQL table `{table}`, column `{column}`: unsupported type {type_name} \
         (supported: integers, real, double precision, numeric, text types, uuid, boolean, \
         timestamp, timestamptz, date, time, bytea, json, jsonb, arrays, enums)"
    )]
    UnsupportedType {
        table: String,
        column: String,
        type_name: String,
    },
    #[error("source PostgreSQL table `{table}`: {message}")]
    Watermark { table: String, message: String },
    #[error("source PostgreSQL table `{table}`, column `{column}`, row {key}: {message}")]
    Value {
        table: String,
        column: String,
        /// The row's primary key (`id=42`), or its position.
        key: String,
        message: String,
    },
    #[error("source PostgreSQL table `{table}`: {message}")]
    Batch { table: String, message: String },
}

/// How a source column is selected, staged and parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PgKind {
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Decimal {
        precision: u8,
        scale: i8,
    },
    /// A numeric without a precision Arrow's Decimal128 holds: its exact text.
    NumericText,
    Text,
    Bool,
    Timestamp,
    TimestampTz,
    Date,
    Time,
    Bytea,
    Json,
    /// Read as `array_to_json(col)::text`.
    Array,
    /// Read as `col::text`.
    Enum,
}

/// A column as the catalog describes it: base type name, `typtype`, `typcategory`, typmod.
#[derive(Debug, Clone)]
pub(crate) struct CatalogColumn {
    pub name: String,
    pub type_name: String,
    pub type_type: String,
    pub category: String,
    pub typmod: i32,
    /// `format_type` of the declared type, for messages.
    pub shown: String,
}

/// The one mapping from a PostgreSQL type to how it is staged; `None` for types not copied.
pub(crate) fn kind_of(col: &CatalogColumn) -> Option<PgKind> {
    if col.category == "A" {
        return Some(PgKind::Array);
    }
    if col.type_type == "e" {
        return Some(PgKind::Enum);
    }
    Some(match col.type_name.as_str() {
        "int2" => PgKind::Int2,
        "int4" => PgKind::Int4,
        "int8" => PgKind::Int8,
        "float4" => PgKind::Float4,
        "float8" => PgKind::Float8,
        "numeric" => numeric_kind(col.typmod),
        "text" | "varchar" | "bpchar" | "name" | "uuid" | "citext" => PgKind::Text,
        "bool" => PgKind::Bool,
        "timestamp" => PgKind::Timestamp,
        "timestamptz" => PgKind::TimestampTz,
        "date" => PgKind::Date,
        "time" => PgKind::Time,
        "bytea" => PgKind::Bytea,
        "json" | "jsonb" => PgKind::Json,
        _ => return None,
    })
}

/// `numeric(p,s)`'s typmod is `((p << 16) | s) + 4`; a scale outside `0..=p` (PostgreSQL 15
/// allows negative ones) or a precision above 38 is staged as text.
fn numeric_kind(typmod: i32) -> PgKind {
    let Some(packed) = typmod.checked_sub(4).filter(|m| *m >= 0) else {
        return PgKind::NumericText;
    };
    let precision = (packed >> 16) & 0xffff;
    let scale = packed & 0xffff;
    match (u8::try_from(precision), i8::try_from(scale)) {
        (Ok(p), Ok(s))
            if (1..=DECIMAL128_MAX_PRECISION).contains(&p) && i32::from(s) <= i32::from(p) =>
        {
            PgKind::Decimal {
                precision: p,
                scale: s,
            }
        }
        _ => PgKind::NumericText,
    }
}

impl PgKind {
    pub(crate) fn arrow_type(self) -> DataType {
        match self {
            PgKind::Int2 => DataType::Int16,
            PgKind::Int4 => DataType::Int32,
            PgKind::Int8 => DataType::Int64,
            PgKind::Float4 => DataType::Float32,
            PgKind::Float8 => DataType::Float64,
            PgKind::Decimal { precision, scale } => DataType::Decimal128(precision, scale),
            PgKind::NumericText | PgKind::Text | PgKind::Json | PgKind::Array | PgKind::Enum => {
                DataType::Utf8
            }
            PgKind::Bool => DataType::Boolean,
            PgKind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
            PgKind::TimestampTz => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            PgKind::Date => DataType::Date32,
            PgKind::Time => DataType::Time64(TimeUnit::Microsecond),
            PgKind::Bytea => DataType::Binary,
        }
    }

    /// Whether values of this kind may not fit Arrow (infinities, BC dates, `24:00:00`,
    /// `NaN`): their text then goes to a `__raw` companion.
    fn has_raw_companion(self) -> bool {
        matches!(
            self,
            PgKind::Timestamp
                | PgKind::TimestampTz
                | PgKind::Date
                | PgKind::Time
                | PgKind::Decimal { .. }
        )
    }

    /// The SELECT expression of a column (already quoted).
    fn select(self, quoted: &str) -> String {
        match self {
            PgKind::Array => format!("array_to_json({quoted})::text"),
            PgKind::Enum => format!("{quoted}::text"),
            _ => quoted.to_string(),
        }
    }

    fn watermark_kind(self) -> Option<WatermarkKind> {
        match self {
            PgKind::Timestamp | PgKind::TimestampTz | PgKind::Date => Some(WatermarkKind::Time),
            PgKind::Int2 | PgKind::Int4 | PgKind::Int8 => Some(WatermarkKind::Int),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WatermarkKind {
    Time,
    Int,
}

/// What one source table read gave.
#[derive(Debug, Default)]
pub(crate) struct PgStats {
    pub rows: u64,
    /// Per target table, the highest value of its watermark column among the rows read.
    pub watermarks: Vec<(String, WatermarkValue)>,
    /// Values staged as NULL with their text in `__raw` (infinities, BC dates, NaN).
    pub unfit: u64,
    /// Whether the window bounded the read (false: every row was read).
    pub windowed: bool,
}

/// Opens a connection to the source; errors name the server but never the password.
pub(crate) async fn connect(settings: &PostgresSettings) -> Result<Client, PgSourceError> {
    settings
        .connect()
        .await
        .map_err(|message| PgSourceError::Connect {
            target: settings.to_string(),
            message,
        })
}

/// `name` as a PostgreSQL identifier; `schema.table` is quoted part by part.
pub(crate) fn quote_qualified(name: &str) -> String {
    name.split('.')
        .map(|part| format!("\"{}\"", part.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(".")
}

/// What is read of one source table for the target tables declared on it.
#[derive(Debug)]
pub(crate) struct ReadPlan {
    /// The source table as the config names it.
    pub table: String,
    /// The source columns, each once, in the order the tables' columns name them.
    pub columns: Vec<String>,
    /// Per target table with a watermark, the index of its source column in `columns`.
    watermarks: Vec<(String, usize)>,
    /// Indexes in `columns` of the first table's primary key, to name a row in errors.
    key_indexes: Vec<usize>,
    /// The config file declaring the tables (for messages).
    config: String,
}

impl ReadPlan {
    /// The columns every table reads (direct fields, then the fields expressions and
    /// templates read) and their watermark columns.
    pub(crate) fn new(table: &str, tables: &[&TableSpec]) -> Result<ReadPlan, PgSourceError> {
        let mut columns: Vec<String> = Vec::new();
        fn add(field: &str, columns: &mut Vec<String>) {
            if !columns.iter().any(|c| c == field) {
                columns.push(field.to_string());
            }
        }
        for t in tables {
            for column in t.loaded_columns() {
                if let ColumnSource::Field(field) = &column.source {
                    add(field, &mut columns);
                }
            }
            for field in t.loaded_columns().flat_map(|c| c.text_sources()) {
                add(field, &mut columns);
            }
            let filtered = t
                .filter_exists
                .iter()
                .chain(t.filter_equals.iter().map(|(f, _)| f));
            for field in filtered {
                add(field, &mut columns);
            }
        }
        let mut watermarks = Vec::new();
        for t in tables {
            let Watermark::Column(col) = &t.watermark else {
                continue;
            };
            let Some(ColumnSource::Field(field)) = t.column(col).map(|c| &c.source) else {
                return Err(PgSourceError::Watermark {
                    table: table.to_string(),
                    message: format!(
                        "table `{}`: watermark column `{col}` is not read from a source column",
                        t.name
                    ),
                });
            };
            if let Some(i) = columns.iter().position(|c| c == field) {
                watermarks.push((t.name.clone(), i));
            }
        }
        let key_indexes = tables
            .first()
            .map(|t| {
                t.primary_key
                    .iter()
                    .filter_map(|k| match t.column(k).map(|c| &c.source) {
                        Some(ColumnSource::Field(f)) => columns.iter().position(|c| c == f),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        Ok(ReadPlan {
            table: table.to_string(),
            columns,
            watermarks,
            key_indexes,
            config: tables
                .first()
                .map(|t| t.file.display().to_string())
                .unwrap_or_default(),
        })
    }

    /// The source column a window bounds, when every table reading the source has the same
    /// one (with different ones, the window cannot be one `WHERE`: everything is read, which
    /// the load's upsert makes harmless).
    fn window_column(&self, tables_reading: usize) -> Option<usize> {
        let first = self.watermarks.first()?.1;
        (self.watermarks.len() == tables_reading
            && self.watermarks.iter().all(|(_, i)| *i == first))
        .then_some(first)
    }

    fn error(&self, message: impl Into<String>) -> PgSourceError {
        PgSourceError::Query {
            table: self.table.clone(),
            message: message.into(),
        }
    }

    /// The kind of every read column, from the catalog: a missing table, missing columns or
    /// an unsupported type are errors naming them.
    async fn kinds(&self, client: &Client) -> Result<Vec<PgKind>, PgSourceError> {
        let catalog = catalog_columns(client, &self.table)
            .await
            .map_err(|e| self.error(crate::settings::error_text(&e)))?;
        let Some(catalog) = catalog else {
            return Err(PgSourceError::TableNotFound {
                table: self.table.clone(),
            });
        };
        self.kinds_from(&catalog)
    }

    pub(crate) fn kinds_from(
        &self,
        catalog: &[CatalogColumn],
    ) -> Result<Vec<PgKind>, PgSourceError> {
        let missing: Vec<String> = self
            .columns
            .iter()
            .filter(|c| !catalog.iter().any(|k| &k.name == *c))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(PgSourceError::MissingColumns {
                table: self.table.clone(),
                config: self.config.clone(),
                columns: missing,
            });
        }
        self.columns
            .iter()
            .map(|c| {
                let found = catalog.iter().find(|k| &k.name == c);
                found
                    .and_then(kind_of)
                    .ok_or_else(|| PgSourceError::UnsupportedType {
                        table: self.table.clone(),
                        column: c.clone(),
                        type_name: found.map(|k| k.shown.clone()).unwrap_or_default(),
                    })
            })
            .collect()
    }

    /// The `COPY (SELECT ...) TO STDOUT` of the window starting at `since` (inclusive). COPY
    /// takes no parameters: the bound is a literal printed from a typed value, never text
    /// from the data or the config.
    pub(crate) fn copy_sql(
        &self,
        kinds: &[PgKind],
        since: Option<(&WatermarkValue, usize)>,
    ) -> Result<String, PgSourceError> {
        let select = self
            .columns
            .iter()
            .zip(kinds)
            .map(|(c, k)| k.select(&quote_qualified(c)))
            .collect::<Vec<_>>()
            .join(", ");
        let mut sql = format!("SELECT {select} FROM {}", quote_qualified(&self.table));
        if let Some((since, index)) = since {
            let column = self.columns.get(index).map(String::as_str).unwrap_or("");
            let kind = kinds.get(index).copied().and_then(PgKind::watermark_kind);
            let literal = match (since, kind) {
                (WatermarkValue::Timestamp(t), Some(WatermarkKind::Time)) => {
                    format!("'{}'", t.format("%Y-%m-%d %H:%M:%S%.6f"))
                }
                (WatermarkValue::Int(i), Some(WatermarkKind::Int)) => i.to_string(),
                _ => {
                    return Err(PgSourceError::Watermark {
                        table: self.table.clone(),
                        message: format!(
                            "cannot start a window at {since} on column `{column}` (a watermark \
                             column is a timestamp, date or integer of the same kind)"
                        ),
                    })
                }
            };
            sql.push_str(&format!(" WHERE {} >= {literal}", quote_qualified(column)));
        }
        Ok(format!("COPY ({sql}) TO STDOUT"))
    }

    /// The staged schema: the columns in read order, each that may not fit Arrow followed by
    /// its `__raw` companion.
    pub(crate) fn schema(&self, kinds: &[PgKind]) -> SchemaRef {
        let mut fields = Vec::new();
        for (name, kind) in self.columns.iter().zip(kinds) {
            fields.push(Field::new(name, kind.arrow_type(), true));
            if kind.has_raw_companion() {
                fields.push(Field::new(
                    format!("{name}{RAW_SUFFIX}"),
                    DataType::Utf8,
                    true,
                ));
            }
        }
        Arc::new(Schema::new(fields))
    }
}

/// The columns of `table` (domains resolved to their base type); `None` when no such table.
async fn catalog_columns(
    client: &Client,
    table: &str,
) -> Result<Option<Vec<CatalogColumn>>, tokio_postgres::Error> {
    let exists = client
        .query_one(
            "SELECT to_regclass($1::text) IS NOT NULL",
            &[&quote_qualified(table)],
        )
        .await?;
    if !exists.get::<_, bool>(0) {
        return Ok(None);
    }
    let rows = client
        .query(
            "SELECT a.attname::text, b.typname::text, b.typtype::text, b.typcategory::text, \
                    CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END, \
                    format_type(a.atttypid, a.atttypmod) \
             FROM pg_attribute a \
             JOIN pg_type t ON t.oid = a.atttypid \
             JOIN pg_type b ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END \
             WHERE a.attrelid = to_regclass($1::text) AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[&quote_qualified(table)],
        )
        .await?;
    Ok(Some(
        rows.iter()
            .map(|r| CatalogColumn {
                name: r.get(0),
                type_name: r.get(1),
                type_type: r.get(2),
                category: r.get(3),
                typmod: r.get(4),
                shown: r.get(5),
            })
            .collect(),
    ))
}

/// Streams one source table's window into batches handed to `on_batch` (one empty batch
/// when the window has no row, so the caller still learns the schema).
pub(crate) async fn extract_table(
    client: &Client,
    plan: &ReadPlan,
    tables_reading: usize,
    since: Option<&WatermarkValue>,
    batch_rows: usize,
    mut on_batch: impl FnMut(RecordBatch) -> Result<(), String>,
) -> Result<PgStats, PgSourceError> {
    let kinds = plan.kinds(client).await?;
    let window = match (since, plan.window_column(tables_reading)) {
        (Some(since), Some(index)) => Some((since, index)),
        (Some(_), None) => {
            tracing::info!(
                table = plan.table,
                "the tables reading this source have no common watermark column: reading all"
            );
            None
        }
        (None, _) => None,
    };
    let windowed = window.is_some();
    let sql = plan.copy_sql(&kinds, window)?;
    client
        .batch_execute(
            "SET DateStyle = ISO, YMD; SET TimeZone = 'UTC'; SET bytea_output = hex; \
             SET extra_float_digits = 3; SET IntervalStyle = postgres",
        )
        .await
        .map_err(|e| plan.error(crate::settings::error_text(&e)))?;
    tracing::debug!(table = plan.table, %sql, "extracting source PostgreSQL table");
    let stream = client
        .copy_out(sql.as_str())
        .await
        .map_err(|e| plan.error(crate::settings::error_text(&e)))?;
    let schema = plan.schema(&kinds);
    let mut reader = RowReader::new(plan, &kinds, batch_rows.max(1));
    let mut flushed = 0u64;
    let mut pending: Vec<u8> = Vec::new();
    futures_util::pin_mut!(stream);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| plan.error(crate::settings::error_text(&e)))?;
        pending.extend_from_slice(&chunk);
        let mut start = 0;
        while let Some(end) = pending
            .get(start..)
            .and_then(|rest| rest.iter().position(|b| *b == b'\n'))
        {
            let line = pending.get(start..start + end).unwrap_or_default();
            reader.push_line(line)?;
            start += end + 1;
            if reader.is_full() {
                reader.flush(&schema, &mut on_batch)?;
                flushed += 1;
            }
        }
        pending.drain(..start);
    }
    if !pending.is_empty() {
        return Err(plan.error("the COPY output ended in the middle of a row"));
    }
    if reader.batch_rows > 0 || flushed == 0 {
        reader.flush(&schema, &mut on_batch)?;
    }
    Ok(PgStats {
        windowed,
        ..reader.stats()
    })
}

/// Parses COPY text rows into column builders.
struct RowReader<'a> {
    plan: &'a ReadPlan,
    kinds: &'a [PgKind],
    builders: Vec<(ColumnBuilder, Option<StringBuilder>)>,
    capacity: usize,
    batch_rows: usize,
    bytes: usize,
    rows: u64,
    unfit: u64,
    /// Highest watermark value per read column index.
    max: Vec<Option<WatermarkValue>>,
    /// Per read column, whether a table's watermark reads it.
    watermarked: Vec<bool>,
    field: Vec<u8>,
}

impl<'a> RowReader<'a> {
    fn new(plan: &'a ReadPlan, kinds: &'a [PgKind], capacity: usize) -> RowReader<'a> {
        RowReader {
            plan,
            kinds,
            builders: Self::builders(kinds, capacity),
            capacity,
            batch_rows: 0,
            bytes: 0,
            rows: 0,
            unfit: 0,
            max: vec![None; kinds.len()],
            watermarked: (0..kinds.len())
                .map(|i| plan.watermarks.iter().any(|(_, w)| *w == i))
                .collect(),
            field: Vec::new(),
        }
    }

    fn builders(kinds: &[PgKind], capacity: usize) -> Vec<(ColumnBuilder, Option<StringBuilder>)> {
        kinds
            .iter()
            .map(|k| {
                let raw = k
                    .has_raw_companion()
                    .then(|| StringBuilder::with_capacity(capacity, 0));
                (ColumnBuilder::new(*k, capacity), raw)
            })
            .collect()
    }

    fn is_full(&self) -> bool {
        self.batch_rows >= self.capacity || self.bytes >= MAX_BATCH_BYTES
    }

    /// One row of COPY text: tab-separated fields, `\N` for NULL, backslash escapes.
    fn push_line(&mut self, line: &[u8]) -> Result<(), PgSourceError> {
        let fields: Vec<&[u8]> = line.split(|b| *b == b'\t').collect();
        if fields.len() != self.kinds.len() {
            return Err(self.plan.error(format!(
                "a COPY row has {} fields, {} were selected",
                fields.len(),
                self.kinds.len()
            )));
        }
        for (i, raw_field) in fields.iter().enumerate() {
            let kind = self.kinds.get(i).copied().unwrap_or(PgKind::Text);
            let value =
                if *raw_field == b"\\N" {
                    None
                } else {
                    unescape(raw_field, &mut self.field);
                    Some(std::str::from_utf8(&self.field).map_err(|_| {
                        self.value_error(&fields, i, "text is not valid UTF-8".into())
                    })?)
                };
            self.bytes += value.map_or(0, str::len);
            let Some((builder, raw)) = self.builders.get_mut(i) else {
                continue;
            };
            match builder.append(kind, value) {
                Ok(Appended::Value(seen)) => {
                    if let (Some(seen), true) =
                        (seen, self.watermarked.get(i).copied().unwrap_or(false))
                    {
                        if let Some(slot) = self.max.get_mut(i) {
                            if slot.as_ref().is_none_or(|m| higher(&seen, m)) {
                                *slot = Some(seen);
                            }
                        }
                    }
                    if let Some(raw) = raw {
                        raw.append_null();
                    }
                }
                Ok(Appended::Unfit) => {
                    self.unfit += 1;
                    match raw {
                        Some(raw) => raw.append_value(value.unwrap_or_default()),
                        None => {
                            let text = value.unwrap_or_default().to_string();
                            return Err(self.value_error(
                                &fields,
                                i,
                                format!("value `{text}` does not fit"),
                            ));
                        }
                    }
                }
                Err(message) => return Err(self.value_error(&fields, i, message)),
            }
        }
        self.rows += 1;
        self.batch_rows += 1;
        Ok(())
    }

    fn value_error(&self, fields: &[&[u8]], column: usize, message: String) -> PgSourceError {
        let key = if self.plan.key_indexes.is_empty() {
            format!("#{}", self.rows.saturating_add(1))
        } else {
            self.plan
                .key_indexes
                .iter()
                .map(|&k| {
                    let name = self.plan.columns.get(k).map(String::as_str).unwrap_or("?");
                    let value = fields
                        .get(k)
                        .map(|v| String::from_utf8_lossy(v))
                        .unwrap_or_default();
                    format!("{name}={value}")
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        PgSourceError::Value {
            table: self.plan.table.clone(),
            column: self.plan.columns.get(column).cloned().unwrap_or_default(),
            key,
            message,
        }
    }

    fn flush(
        &mut self,
        schema: &SchemaRef,
        on_batch: &mut impl FnMut(RecordBatch) -> Result<(), String>,
    ) -> Result<(), PgSourceError> {
        let builders = std::mem::replace(
            &mut self.builders,
            Self::builders(self.kinds, self.capacity),
        );
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for (builder, raw) in builders {
            arrays.push(builder.finish());
            if let Some(mut raw) = raw {
                arrays.push(Arc::new(raw.finish()));
            }
        }
        self.batch_rows = 0;
        self.bytes = 0;
        let batch =
            RecordBatch::try_new(schema.clone(), arrays).map_err(|e| PgSourceError::Batch {
                table: self.plan.table.clone(),
                message: e.to_string(),
            })?;
        on_batch(batch).map_err(|message| PgSourceError::Batch {
            table: self.plan.table.clone(),
            message,
        })
    }

    fn stats(self) -> PgStats {
        let watermarks = self
            .plan
            .watermarks
            .iter()
            .filter_map(|(t, i)| Some((t.clone(), self.max.get(*i)?.clone()?)))
            .collect();
        PgStats {
            rows: self.rows,
            watermarks,
            unfit: self.unfit,
            windowed: false,
        }
    }
}

fn higher(seen: &WatermarkValue, max: &WatermarkValue) -> bool {
    match (seen, max) {
        (WatermarkValue::Timestamp(a), WatermarkValue::Timestamp(b)) => a > b,
        (WatermarkValue::Int(a), WatermarkValue::Int(b)) => a > b,
        _ => false,
    }
}

/// Undoes COPY text escaping (`\\`, `\t`, `\n`, `\r`, `\b`, `\f`, `\v`, and octal or `\x`
/// hex bytes, which COPY TO does not write but the format defines) into `out`.
pub(crate) fn unescape(field: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut i = 0;
    while let Some(&b) = field.get(i) {
        i += 1;
        if b != b'\\' {
            out.push(b);
            continue;
        }
        let Some(&next) = field.get(i) else {
            out.push(b'\\');
            break;
        };
        i += 1;
        match next {
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            b'0'..=b'7' => {
                let mut value = u32::from(next - b'0');
                for _ in 0..2 {
                    match field.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            value = value * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(u8::try_from(value & 0xff).unwrap_or(0));
            }
            b'x' => {
                let mut value = 0u32;
                let mut digits = 0;
                while digits < 2 {
                    match field.get(i).and_then(|d| char::from(*d).to_digit(16)) {
                        Some(d) => {
                            value = value * 16 + d;
                            i += 1;
                            digits += 1;
                        }
                        None => break,
                    }
                }
                if digits == 0 {
                    out.push(b'x');
                } else {
                    out.push(u8::try_from(value).unwrap_or(0));
                }
            }
            other => out.push(other),
        }
    }
}

/// What appending one value did.
#[derive(Debug, PartialEq)]
enum Appended {
    /// Stored; with its watermark value for time and integer columns.
    Value(Option<WatermarkValue>),
    /// Arrow cannot hold it: staged NULL, its text kept in `__raw`.
    Unfit,
}

/// One column's builder.
enum ColumnBuilder {
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Decimal(Decimal128Builder, u8, i8),
    Utf8(StringBuilder),
    Bool(BooleanBuilder),
    Timestamp(TimestampMicrosecondBuilder, bool),
    Date(Date32Builder),
    Time(Time64MicrosecondBuilder),
    Binary(BinaryBuilder),
}

impl ColumnBuilder {
    fn new(kind: PgKind, capacity: usize) -> ColumnBuilder {
        match kind {
            PgKind::Int2 => ColumnBuilder::Int16(Int16Builder::with_capacity(capacity)),
            PgKind::Int4 => ColumnBuilder::Int32(Int32Builder::with_capacity(capacity)),
            PgKind::Int8 => ColumnBuilder::Int64(Int64Builder::with_capacity(capacity)),
            PgKind::Float4 => ColumnBuilder::Float32(Float32Builder::with_capacity(capacity)),
            PgKind::Float8 => ColumnBuilder::Float64(Float64Builder::with_capacity(capacity)),
            PgKind::Decimal { precision, scale } => {
                ColumnBuilder::Decimal(Decimal128Builder::with_capacity(capacity), precision, scale)
            }
            PgKind::NumericText | PgKind::Text | PgKind::Json | PgKind::Array | PgKind::Enum => {
                ColumnBuilder::Utf8(StringBuilder::with_capacity(capacity, 0))
            }
            PgKind::Bool => ColumnBuilder::Bool(BooleanBuilder::with_capacity(capacity)),
            PgKind::Timestamp | PgKind::TimestampTz => ColumnBuilder::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(capacity),
                kind == PgKind::TimestampTz,
            ),
            PgKind::Date => ColumnBuilder::Date(Date32Builder::with_capacity(capacity)),
            PgKind::Time => ColumnBuilder::Time(Time64MicrosecondBuilder::with_capacity(capacity)),
            PgKind::Bytea => ColumnBuilder::Binary(BinaryBuilder::with_capacity(capacity, 0)),
        }
    }

    /// Appends one value's text (`None`: NULL). An error is a text PostgreSQL would never
    /// print for the type (a bug or a changed server setting), never a data value.
    fn append(&mut self, kind: PgKind, value: Option<&str>) -> Result<Appended, String> {
        let Some(text) = value else {
            self.append_null();
            return Ok(Appended::Value(None));
        };
        let bad = || format!("unexpected text `{text}` for {kind:?}");
        let int = |i: i64| Some(WatermarkValue::Int(i128::from(i)));
        Ok(match self {
            ColumnBuilder::Int16(b) => {
                let v: i16 = text.parse().map_err(|_| bad())?;
                b.append_value(v);
                Appended::Value(int(i64::from(v)))
            }
            ColumnBuilder::Int32(b) => {
                let v: i32 = text.parse().map_err(|_| bad())?;
                b.append_value(v);
                Appended::Value(int(i64::from(v)))
            }
            ColumnBuilder::Int64(b) => {
                let v: i64 = text.parse().map_err(|_| bad())?;
                b.append_value(v);
                Appended::Value(int(v))
            }
            ColumnBuilder::Float32(b) => {
                b.append_value(parse_float::<f32>(text).ok_or_else(bad)?);
                Appended::Value(None)
            }
            ColumnBuilder::Float64(b) => {
                b.append_value(parse_float::<f64>(text).ok_or_else(bad)?);
                Appended::Value(None)
            }
            ColumnBuilder::Decimal(b, _, scale) => {
                let scaled = u32::try_from(*scale).ok().and_then(|s| {
                    Decimal::parse(text.as_bytes())
                        .ok()?
                        .to_scaled::<i128>(s, Rounding::Exact)
                        .ok()
                });
                match scaled {
                    Some(v) => {
                        b.append_value(v.value);
                        Appended::Value(None)
                    }
                    None => {
                        b.append_null();
                        Appended::Unfit
                    }
                }
            }
            ColumnBuilder::Utf8(b) => {
                b.append_value(text);
                Appended::Value(None)
            }
            ColumnBuilder::Bool(b) => {
                b.append_value(match text {
                    "t" => true,
                    "f" => false,
                    _ => return Err(bad()),
                });
                Appended::Value(None)
            }
            ColumnBuilder::Timestamp(b, tz) => match parse_timestamp(text, *tz) {
                Some(t) => {
                    b.append_value(t.and_utc().timestamp_micros());
                    Appended::Value(Some(WatermarkValue::Timestamp(t)))
                }
                None => {
                    b.append_null();
                    Appended::Unfit
                }
            },
            ColumnBuilder::Date(b) => match parse_date(text) {
                Some((d, days)) => {
                    b.append_value(days);
                    Appended::Value(d.and_hms_opt(0, 0, 0).map(WatermarkValue::Timestamp))
                }
                None => {
                    b.append_null();
                    Appended::Unfit
                }
            },
            ColumnBuilder::Time(b) => match NaiveTime::parse_from_str(text, "%H:%M:%S%.f") {
                Ok(t) => {
                    let micros = i64::from(t.num_seconds_from_midnight()) * 1_000_000
                        + i64::from(t.nanosecond() / 1000);
                    b.append_value(micros);
                    Appended::Value(None)
                }
                Err(_) => {
                    b.append_null();
                    Appended::Unfit
                }
            },
            ColumnBuilder::Binary(b) => {
                let bytes = text
                    .strip_prefix("\\x")
                    .and_then(|h| hex::decode(h).ok())
                    .ok_or_else(|| "bytea is not in hex output format".to_string())?;
                b.append_value(bytes);
                Appended::Value(None)
            }
        })
    }

    fn append_null(&mut self) {
        match self {
            ColumnBuilder::Int16(b) => b.append_null(),
            ColumnBuilder::Int32(b) => b.append_null(),
            ColumnBuilder::Int64(b) => b.append_null(),
            ColumnBuilder::Float32(b) => b.append_null(),
            ColumnBuilder::Float64(b) => b.append_null(),
            ColumnBuilder::Decimal(b, _, _) => b.append_null(),
            ColumnBuilder::Utf8(b) => b.append_null(),
            ColumnBuilder::Bool(b) => b.append_null(),
            ColumnBuilder::Timestamp(b, _) => b.append_null(),
            ColumnBuilder::Date(b) => b.append_null(),
            ColumnBuilder::Time(b) => b.append_null(),
            ColumnBuilder::Binary(b) => b.append_null(),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            ColumnBuilder::Int16(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Int32(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Int64(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Float32(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Float64(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Decimal(mut b, p, s) => Arc::new(
                b.finish()
                    .with_precision_and_scale(p, s)
                    .unwrap_or_else(|_| arrow::array::Decimal128Array::from(Vec::<i128>::new())),
            ),
            ColumnBuilder::Utf8(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Bool(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Timestamp(mut b, tz) => {
                let array = b.finish();
                if tz {
                    Arc::new(array.with_timezone("UTC"))
                } else {
                    Arc::new(array)
                }
            }
            ColumnBuilder::Date(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Time(mut b) => Arc::new(b.finish()),
            ColumnBuilder::Binary(mut b) => Arc::new(b.finish()),
        }
    }
}

/// PostgreSQL's float text: digits, `NaN`, `Infinity`, `-Infinity`.
fn parse_float<T: std::str::FromStr + From<f32>>(text: &str) -> Option<T> {
    match text {
        "NaN" => Some(T::from(f32::NAN)),
        "Infinity" => Some(T::from(f32::INFINITY)),
        "-Infinity" => Some(T::from(f32::NEG_INFINITY)),
        _ => text.parse().ok(),
    }
}

/// A `timestamp` (`2024-01-02 03:04:05.123456`) or, with the session in UTC, a
/// `timestamptz` (`...+00`); `None` for infinities, BC and what Arrow's µs cannot hold.
fn parse_timestamp(text: &str, tz: bool) -> Option<NaiveDateTime> {
    let text = if tz { text.strip_suffix("+00")? } else { text };
    // chrono's range (±262,000 years) fits i64 microseconds; PostgreSQL's is inside it.
    NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f").ok()
}

/// A `date` and its days since 1970-01-01; `None` for infinities and BC dates.
fn parse_date(text: &str) -> Option<(NaiveDate, i32)> {
    let d = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    let epoch = NaiveDate::from_ymd_opt(1970, 1, 1)?;
    let days = i32::try_from(d.signed_duration_since(epoch).num_days()).ok()?;
    Some((d, days))
}

#[cfg(test)]
mod tests {
    //! Unit tests that need no server; `tests/postgres_source.rs` reads a real one.

    use super::*;

    fn catalog(
        name: &str,
        type_name: &str,
        type_type: &str,
        category: &str,
        typmod: i32,
    ) -> CatalogColumn {
        CatalogColumn {
            name: name.into(),
            type_name: type_name.into(),
            type_type: type_type.into(),
            category: category.into(),
            typmod,
            shown: type_name.into(),
        }
    }

    #[test]
    fn copy_text_escapes_are_undone() {
        let mut out = Vec::new();
        unescape(br"a\tb\nc\\d\re\101\x42", &mut out);
        assert_eq!(out, b"a\tb\nc\\d\reAB");
        unescape(br"\\x00ff", &mut out);
        assert_eq!(out, br"\x00ff");
    }

    #[test]
    fn types_map_to_staged_arrow_types() {
        let k =
            |t: &str, typtype: &str, cat: &str, m: i32| kind_of(&catalog("c", t, typtype, cat, m));
        assert_eq!(k("int4", "b", "N", -1), Some(PgKind::Int4));
        assert_eq!(k("_int4", "b", "A", -1), Some(PgKind::Array));
        assert_eq!(k("mood", "e", "E", -1), Some(PgKind::Enum));
        assert_eq!(k("numeric", "b", "N", -1), Some(PgKind::NumericText));
        // numeric(10,2): ((10 << 16) | 2) + 4
        assert_eq!(
            k("numeric", "b", "N", (10 << 16 | 2) + 4),
            Some(PgKind::Decimal {
                precision: 10,
                scale: 2
            })
        );
        assert_eq!(
            k("numeric", "b", "N", (60 << 16) + 4),
            Some(PgKind::NumericText)
        );
        assert_eq!(k("point", "b", "G", -1), None);
        assert_eq!(k("interval", "b", "T", -1), None);
    }

    #[test]
    fn unsupported_and_missing_columns_name_table_and_column() {
        let spec = ReadPlan {
            table: "tls_shape".into(),
            columns: vec!["id".into(), "where".into()],
            watermarks: Vec::new(),
            key_indexes: Vec::new(),
            config: "postgres_schemas.yaml".into(),
        };
        let err = spec
            .kinds_from(&[
                catalog("id", "int4", "b", "N", -1),
                catalog("where", "point", "b", "G", -1),
            ])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`tls_shape`") && err.contains("`where`") && err.contains("point"),
            "{err}"
        );
        let err = spec
            .kinds_from(&[catalog("id", "int4", "b", "N", -1)])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no column(s) where"), "{err}");
    }

    #[test]
    fn copy_sql_quotes_names_and_prints_the_bound() {
        let plan = ReadPlan {
            table: "legacy.tls_x".into(),
            columns: vec!["id".into(), "tags".into(), "time_create".into()],
            watermarks: vec![("x".into(), 2)],
            key_indexes: vec![0],
            config: String::new(),
        };
        let kinds = [PgKind::Int4, PgKind::Array, PgKind::Timestamp];
        let since = WatermarkValue::Timestamp(
            NaiveDate::from_ymd_opt(2024, 3, 1)
                .and_then(|d| d.and_hms_opt(10, 0, 0))
                .unwrap(),
        );
        assert_eq!(
            plan.copy_sql(&kinds, Some((&since, 2))).unwrap(),
            "COPY (SELECT \"id\", array_to_json(\"tags\")::text, \"time_create\" FROM \
             \"legacy\".\"tls_x\" WHERE \"time_create\" >= '2024-03-01 10:00:00.000000') TO STDOUT"
        );
        let err = plan
            .copy_sql(&kinds, Some((&WatermarkValue::Int(5), 2)))
            .unwrap_err();
        assert!(err.to_string().contains("time_create"), "{err}");
    }

    #[test]
    fn values_arrow_cannot_hold_go_to_raw() {
        let mut b = ColumnBuilder::new(PgKind::Timestamp, 4);
        assert_eq!(
            b.append(PgKind::Timestamp, Some("infinity")),
            Ok(Appended::Unfit)
        );
        assert_eq!(
            b.append(PgKind::Timestamp, Some("0044-03-15 12:00:00 BC")),
            Ok(Appended::Unfit)
        );
        assert!(matches!(
            b.append(PgKind::Timestamp, Some("2024-01-02 03:04:05.5")),
            Ok(Appended::Value(Some(WatermarkValue::Timestamp(_))))
        ));
        let mut tz = ColumnBuilder::new(PgKind::TimestampTz, 1);
        assert!(matches!(
            tz.append(PgKind::TimestampTz, Some("2024-01-02 03:04:05+00")),
            Ok(Appended::Value(Some(_)))
        ));
        let mut d = ColumnBuilder::new(
            PgKind::Decimal {
                precision: 5,
                scale: 2,
            },
            2,
        );
        assert_eq!(
            d.append(
                PgKind::Decimal {
                    precision: 5,
                    scale: 2
                },
                Some("NaN")
            ),
            Ok(Appended::Unfit)
        );
        assert_eq!(
            d.append(
                PgKind::Decimal {
                    precision: 5,
                    scale: 2
                },
                Some("12.5")
            ),
            Ok(Appended::Value(None))
        );
        let mut t = ColumnBuilder::new(PgKind::Time, 1);
        assert_eq!(
            t.append(PgKind::Time, Some("24:00:00")),
            Ok(Appended::Unfit)
        );
        let mut bytes = ColumnBuilder::new(PgKind::Bytea, 1);
        assert_eq!(
            bytes.append(PgKind::Bytea, Some("\\x00ff")),
            Ok(Appended::Value(None))
        );
        assert!(bytes.append(PgKind::Bytea, Some("zz")).is_err());
    }
}
