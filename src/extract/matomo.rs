//! Matomo tables from MariaDB/MySQL into Arrow record batches.
//!
//! `extract_table` streams one table's window (`watermark >= since`, inclusive) row by row
//! over the binary protocol and hands batches to the caller; it never holds a result set in
//! memory. Each MariaDB column becomes the Arrow type `arrow_type` picks from the result set's
//! metadata, without loss: unsigned integers stay unsigned, `DECIMAL(p,s)` stays exact, binary
//! strings stay bytes, text must be valid UTF-8. Writing the batches (Parquet, manifest) is the
//! caller's job; this module knows only MariaDB and Arrow.
//!
//! Staged columns are named by their MariaDB column (`ColumnSource::Field`), in config order,
//! and are all nullable: a `NOT NULL DATETIME` can still hold `0000-00-00 00:00:00`, which
//! becomes NULL (counted in `MatomoStats::zero_dates`).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, Date32Builder, Decimal128Builder, Decimal256Builder, Float32Builder,
    Float64Builder, Int16Builder, Int32Builder, Int64Builder, Int8Builder, StringBuilder,
    Time64MicrosecondBuilder, TimestampMicrosecondBuilder, UInt16Builder, UInt32Builder,
    UInt64Builder, UInt8Builder,
};
use arrow::datatypes::{
    i256, DataType, Field, Schema, SchemaRef, TimeUnit, DECIMAL128_MAX_PRECISION,
    DECIMAL256_MAX_PRECISION,
};
use arrow::error::ArrowError;
use arrow::record_batch::RecordBatch;
use chrono::{NaiveDate, NaiveDateTime};
use mysql_async::consts::{ColumnFlags, ColumnType};
use mysql_async::prelude::Queryable;
use mysql_async::{Column, Conn, OptsBuilder, Params, Row, Value};

use crate::config::{ColumnSource, Source, TableSpec, Watermark};
use crate::settings::MatomoSettings;

/// MariaDB's character set number for binary strings (`BINARY`, `VARBINARY`, `BLOB`).
const BINARY_CHARSET: u16 = 63;
/// A batch is flushed early once its text and binary values reach this many bytes, so a
/// table of long values never overflows Arrow's 32-bit offsets (2 GiB per array).
const MAX_BATCH_BYTES: usize = 256 << 20;
/// Microseconds in a day: a `TIME` must lie in `[00:00:00, 24:00:00)` to be a time of day.
const MICROS_PER_DAY: i64 = 86_400_000_000;

pub use crate::staging::WatermarkValue;

impl WatermarkValue {
    /// The value bound to the `WHERE wm >= ?` placeholder.
    fn to_param(&self) -> Option<Value> {
        match self {
            WatermarkValue::Timestamp(t) => Some(date_value(t)),
            WatermarkValue::Int(i) => i64::try_from(*i)
                .map(Value::Int)
                .or_else(|_| u64::try_from(*i).map(Value::UInt))
                .ok(),
        }
    }
}

/// What one `extract_table` call read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MatomoStats {
    pub rows: u64,
    /// Highest watermark value over the streamed rows (`None` without rows or watermark).
    pub max_watermark: Option<WatermarkValue>,
    /// `0000-00-00` dates turned into NULL.
    pub zero_dates: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum MatomoError {
    #[error("cannot connect to Matomo database {target}: {source}")]
    Connect {
        /// The settings without the password.
        target: String,
        source: mysql_async::Error,
    },
    #[error("Matomo table `{table}`: query failed: {source}")]
    Query {
        table: String,
        source: mysql_async::Error,
    },
    #[error("table `{table}` is not a Matomo table (its source is {source_name})")]
    NotMatomo { table: String, source_name: String },
    #[error("Matomo table `{table}` does not exist in the database")]
    TableNotFound { table: String },
    #[error("Matomo table `{table}` has no column(s) {} ({config} expects them)", .columns.join(", "))]
    MissingColumns {
        table: String,
        /// The config file that declares the columns.
        config: String,
        columns: Vec<String>,
    },
    #[error("Matomo table `{table}`: {message}")]
    Watermark { table: String, message: String },
    #[error("Matomo table `{table}`, column `{column}`: unsupported MariaDB type {type_name}")]
    UnsupportedType {
        table: String,
        column: String,
        type_name: String,
    },
    #[error("Matomo table `{table}`, column `{column}` ({arrow_type}), row {key}: {problem}")]
    Value {
        table: String,
        column: String,
        arrow_type: String,
        /// The row's primary key, `idvisit=42`.
        key: String,
        /// Boxed: errors stay small on the happy path's `Result`s.
        problem: Box<ValueProblem>,
    },
    #[error("Matomo table `{table}`: cannot build a record batch: {source}")]
    Arrow { table: String, source: ArrowError },
    #[error("Matomo table `{table}`: {source}")]
    Batch {
        table: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Why one value could not be converted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueProblem {
    #[error("text is not valid UTF-8")]
    InvalidUtf8,
    #[error("TIME {0} is not a time of day (00:00:00 to 23:59:59.999999)")]
    TimeOutOfDay(String),
    #[error("{0} is not a valid date")]
    InvalidDate(String),
    #[error("value {0} does not fit the column's Arrow type")]
    OutOfRange(String),
    #[error("unexpected value {0} for the column's Arrow type")]
    Unexpected(String),
}

/// What a result set's column metadata says about one column; `arrow_type` maps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnMeta {
    pub column_type: ColumnType,
    pub flags: ColumnFlags,
    /// Character set (collation id) of the values as sent: 63 for binary strings.
    pub charset: u16,
    /// Display length: for `DECIMAL(p,s)` it is p plus sign and point.
    pub length: u32,
    /// Scale of a `DECIMAL`, fractional digits of a temporal type.
    pub decimals: u8,
}

impl ColumnMeta {
    pub fn of(column: &Column) -> ColumnMeta {
        ColumnMeta {
            column_type: column.column_type(),
            flags: column.flags(),
            charset: column.character_set(),
            length: column.column_length(),
            decimals: column.decimals(),
        }
    }
}

/// The Arrow type that holds every value of a MariaDB column; `None` for types we do not copy.
///
/// | MariaDB                              | Arrow                               |
/// |--------------------------------------|-------------------------------------|
/// | TINYINT / SMALLINT / MEDIUMINT / INT / BIGINT | Int8 / Int16 / Int32 / Int32 / Int64, `UNSIGNED`: UInt8 / UInt16 / UInt32 / UInt32 / UInt64 |
/// | DECIMAL(p,s)                         | Decimal128(p,s); Decimal256(p,s) when p > 38 |
/// | FLOAT / DOUBLE                       | Float32 / Float64                   |
/// | DATETIME, TIMESTAMP                  | Timestamp(µs, "UTC") (Matomo stores UTC; the session runs in UTC) |
/// | DATE                                 | Date32                              |
/// | TIME                                 | Time64(µs); a value outside a day is an error |
/// | YEAR                                 | Int16                               |
/// | BIT(n)                               | UInt64 (the bits as a big-endian number, n ≤ 64) |
/// | CHAR, VARCHAR, TEXT, ENUM, SET, JSON | Utf8                                |
/// | BINARY, VARBINARY, BLOB              | Binary                              |
///
/// Text and binary strings share wire types: the character set tells them apart (63 is
/// binary). `BINARY_FLAG` does not, since a `utf8mb4_bin` text column carries it too.
pub fn arrow_type(meta: &ColumnMeta) -> Option<DataType> {
    let unsigned = meta.flags.contains(ColumnFlags::UNSIGNED_FLAG);
    let int = |signed: DataType, unsigned_type: DataType| {
        Some(if unsigned { unsigned_type } else { signed })
    };
    match meta.column_type {
        ColumnType::MYSQL_TYPE_TINY => int(DataType::Int8, DataType::UInt8),
        ColumnType::MYSQL_TYPE_SHORT => int(DataType::Int16, DataType::UInt16),
        ColumnType::MYSQL_TYPE_INT24 | ColumnType::MYSQL_TYPE_LONG => {
            int(DataType::Int32, DataType::UInt32)
        }
        ColumnType::MYSQL_TYPE_LONGLONG => int(DataType::Int64, DataType::UInt64),
        ColumnType::MYSQL_TYPE_YEAR => Some(DataType::Int16),
        ColumnType::MYSQL_TYPE_BIT => Some(DataType::UInt64),
        ColumnType::MYSQL_TYPE_FLOAT => Some(DataType::Float32),
        ColumnType::MYSQL_TYPE_DOUBLE => Some(DataType::Float64),
        ColumnType::MYSQL_TYPE_DECIMAL | ColumnType::MYSQL_TYPE_NEWDECIMAL => {
            // The display length counts the digits, the point (when s > 0) and the sign
            // (unless unsigned).
            let scale = meta.decimals;
            let extra = u32::from(scale > 0) + u32::from(!unsigned);
            let precision = u8::try_from(meta.length.saturating_sub(extra).max(1)).ok()?;
            let scale = i8::try_from(scale).ok()?;
            if precision <= DECIMAL128_MAX_PRECISION {
                Some(DataType::Decimal128(precision, scale))
            } else if precision <= DECIMAL256_MAX_PRECISION {
                Some(DataType::Decimal256(precision, scale))
            } else {
                None
            }
        }
        ColumnType::MYSQL_TYPE_DATETIME
        | ColumnType::MYSQL_TYPE_DATETIME2
        | ColumnType::MYSQL_TYPE_TIMESTAMP
        | ColumnType::MYSQL_TYPE_TIMESTAMP2 => Some(DataType::Timestamp(
            TimeUnit::Microsecond,
            Some("UTC".into()),
        )),
        ColumnType::MYSQL_TYPE_DATE | ColumnType::MYSQL_TYPE_NEWDATE => Some(DataType::Date32),
        ColumnType::MYSQL_TYPE_TIME | ColumnType::MYSQL_TYPE_TIME2 => {
            Some(DataType::Time64(TimeUnit::Microsecond))
        }
        ColumnType::MYSQL_TYPE_ENUM | ColumnType::MYSQL_TYPE_SET | ColumnType::MYSQL_TYPE_JSON => {
            Some(DataType::Utf8)
        }
        ColumnType::MYSQL_TYPE_STRING
        | ColumnType::MYSQL_TYPE_VAR_STRING
        | ColumnType::MYSQL_TYPE_VARCHAR
        | ColumnType::MYSQL_TYPE_TINY_BLOB
        | ColumnType::MYSQL_TYPE_MEDIUM_BLOB
        | ColumnType::MYSQL_TYPE_LONG_BLOB
        | ColumnType::MYSQL_TYPE_BLOB => Some(if meta.charset == BINARY_CHARSET {
            DataType::Binary
        } else {
            DataType::Utf8
        }),
        _ => None,
    }
}

/// Opens a connection to the Matomo database; errors name the server but never the password.
pub async fn connect(settings: &MatomoSettings) -> Result<Conn, MatomoError> {
    let opts = OptsBuilder::default()
        .ip_or_hostname(settings.host.clone())
        .tcp_port(settings.port)
        .user(Some(settings.user.clone()))
        .pass(settings.password().map(str::to_string))
        .db_name(Some(settings.database.clone()));
    Conn::new(opts)
        .await
        .map_err(|source| MatomoError::Connect {
            target: settings.to_string(),
            source,
        })
}

/// Streams the rows of one Matomo table whose watermark column is >= `since` (inclusive;
/// `None` = all), selecting exactly the config's columns (by their MariaDB names), converting
/// each column to Arrow without loss (`arrow_type`), and handing batches of at most
/// `batch_rows` rows to `on_batch` (fewer when their text reaches 256 MiB). A window without
/// rows gives one empty batch, so the caller still learns the schema.
///
/// Returns rows read and the highest watermark value seen. Sets the session's character set to
/// utf8mb4 and its time zone to UTC (`TIMESTAMP` columns then read as UTC, like Matomo's
/// `DATETIME`s).
pub async fn extract_table(
    conn: &mut Conn,
    table: &TableSpec,
    since: Option<&WatermarkValue>,
    batch_rows: usize,
    mut on_batch: impl FnMut(RecordBatch) -> anyhow::Result<()>,
) -> Result<MatomoStats, MatomoError> {
    let Source::Matomo {
        table: source_table,
    } = &table.source
    else {
        return Err(MatomoError::NotMatomo {
            table: table.name.clone(),
            source_name: table.source.name().to_string(),
        });
    };
    let name = source_table.as_str();
    let query_err = |source| MatomoError::Query {
        table: name.to_string(),
        source,
    };

    // Each MariaDB column once, in config order, even when two target columns read it.
    let mut columns: Vec<&str> = Vec::new();
    for column in table.loaded_columns() {
        if let ColumnSource::Field(field) = &column.source {
            if !columns.contains(&field.as_str()) {
                columns.push(field);
            }
        }
    }
    let source_name = |target: &str| match table.column(target).map(|c| &c.source) {
        Some(ColumnSource::Field(field)) => Some(field.as_str()),
        _ => None,
    };
    let watermark = match &table.watermark {
        Watermark::Column(col) => Some(source_name(col).ok_or_else(|| MatomoError::Watermark {
            table: name.to_string(),
            message: format!("watermark column `{col}` is not read from a MariaDB column"),
        })?),
        Watermark::None => None,
        Watermark::CreatedUpdated => {
            return Err(MatomoError::Watermark {
                table: name.to_string(),
                message: "a Matomo table's watermark is one of its columns".into(),
            })
        }
    };

    let source_types = source_columns(conn, name).await.map_err(query_err)?;
    if source_types.is_empty() {
        return Err(MatomoError::TableNotFound {
            table: name.to_string(),
        });
    }
    let type_of = |col: &str| {
        source_types
            .iter()
            .find(|(c, _)| c.eq_ignore_ascii_case(col))
            .map(|(_, t)| t.as_str())
    };
    let missing: Vec<String> = columns
        .iter()
        .filter(|c| type_of(c).is_none())
        .map(|c| c.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(MatomoError::MissingColumns {
            table: name.to_string(),
            config: table.file.display().to_string(),
            columns: missing,
        });
    }

    let mut sql = format!(
        "SELECT {} FROM {}",
        columns
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", "),
        quote_ident(name)
    );
    let params = match (since, watermark) {
        (None, _) => Params::Empty,
        (Some(since), Some(wm)) => {
            check_watermark_kind(since, type_of(wm).unwrap_or_default()).map_err(|message| {
                MatomoError::Watermark {
                    table: name.to_string(),
                    message: format!("watermark `{wm}`: {message}"),
                }
            })?;
            let value = since.to_param().ok_or_else(|| MatomoError::Watermark {
                table: name.to_string(),
                message: format!("watermark value {since} is not a MariaDB integer"),
            })?;
            sql.push_str(&format!(" WHERE {} >= ?", quote_ident(wm)));
            Params::Positional(vec![value])
        }
        (Some(_), None) => {
            return Err(MatomoError::Watermark {
                table: name.to_string(),
                message: "a window was asked for but the table has no watermark column".into(),
            })
        }
    };

    // Text arrives as UTF-8 whatever the column's charset (binary strings stay charset 63),
    // and TIMESTAMP columns in UTC like Matomo's DATETIMEs.
    conn.query_drop("SET NAMES utf8mb4, time_zone = '+00:00'")
        .await
        .map_err(query_err)?;
    tracing::debug!(table = name, %sql, since = ?since, "extracting Matomo table");
    let mut result = conn.exec_iter(sql, params).await.map_err(query_err)?;
    let metas: Vec<(String, ColumnMeta)> = result
        .columns()
        .map(|cols| {
            cols.iter()
                .map(|c| (c.name_str().into_owned(), ColumnMeta::of(c)))
                .collect()
        })
        .unwrap_or_default();

    let mut fields = Vec::with_capacity(metas.len());
    for (column, meta) in &metas {
        let data_type = arrow_type(meta).ok_or_else(|| MatomoError::UnsupportedType {
            table: name.to_string(),
            column: column.clone(),
            type_name: format!("{:?} (flags {:?})", meta.column_type, meta.flags),
        })?;
        fields.push(Field::new(column.as_str(), data_type, true));
    }
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    let key_indexes: Vec<usize> = table
        .primary_key
        .iter()
        .filter_map(|k| source_name(k))
        .filter_map(|k| columns.iter().position(|c| *c == k))
        .collect();
    let watermark_index = watermark.and_then(|wm| columns.iter().position(|c| *c == wm));

    let batch_rows = batch_rows.max(1);
    let mut batch = BatchBuilder::new(&schema, batch_rows);
    let mut warned_zero = vec![false; schema.fields().len()];
    let mut max_watermark: Option<WatermarkValue> = None;
    let mut stats = MatomoStats {
        rows: 0,
        max_watermark: None,
        zero_dates: 0,
    };
    let mut batches = 0u64;

    while let Some(row) = result.next().await.map_err(query_err)? {
        for (i, builder) in batch.columns.iter_mut().enumerate() {
            let value = row.as_ref(i).unwrap_or(&Value::NULL);
            batch.bytes += ColumnBuilder::bytes_of(value);
            match builder.append(value) {
                Ok(Appended::Value) => {}
                Ok(Appended::ZeroDate) => {
                    stats.zero_dates += 1;
                    if !warned_zero[i] {
                        warned_zero[i] = true;
                        tracing::warn!(
                            table = name,
                            column = columns[i],
                            "zero dates (0000-00-00) in this column become NULL"
                        );
                    }
                }
                Err(problem) => {
                    return Err(MatomoError::Value {
                        table: name.to_string(),
                        column: columns[i].to_string(),
                        arrow_type: schema.field(i).data_type().to_string(),
                        key: row_key(&row, &key_indexes, &columns, stats.rows),
                        problem: Box::new(problem),
                    })
                }
            }
        }
        if let Some(seen) = watermark_index.and_then(|i| watermark_of(row.as_ref(i)?)) {
            if max_watermark
                .as_ref()
                .is_none_or(|max| seen_is_higher(&seen, max))
            {
                max_watermark = Some(seen);
            }
        }
        stats.rows += 1;
        batch.rows += 1;
        if batch.rows >= batch_rows || batch.bytes >= MAX_BATCH_BYTES {
            flush(&mut batch, &schema, name, &mut on_batch)?;
            batches += 1;
        }
    }
    if batch.rows > 0 || batches == 0 {
        flush(&mut batch, &schema, name, &mut on_batch)?;
    }
    stats.max_watermark = max_watermark;
    tracing::debug!(
        table = name,
        rows = stats.rows,
        zero_dates = stats.zero_dates,
        "extracted Matomo table"
    );
    Ok(stats)
}

/// `(column name, data type)` of a table in the connection's database; empty when the table
/// does not exist.
async fn source_columns(
    conn: &mut Conn,
    table: &str,
) -> mysql_async::Result<Vec<(String, String)>> {
    conn.exec(
        "SELECT COLUMN_NAME, DATA_TYPE FROM information_schema.COLUMNS \
         WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
        (table,),
    )
    .await
}

/// `name` as a MariaDB identifier: backtick-quoted, backticks doubled.
fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// A window's start must be of the watermark column's kind (time or integer).
fn check_watermark_kind(since: &WatermarkValue, data_type: &str) -> Result<(), String> {
    let data_type = data_type.to_ascii_lowercase();
    let ok = match since {
        WatermarkValue::Timestamp(_) => {
            matches!(data_type.as_str(), "datetime" | "timestamp" | "date")
        }
        WatermarkValue::Int(_) => matches!(
            data_type.as_str(),
            "tinyint" | "smallint" | "mediumint" | "int" | "bigint"
        ),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "cannot start a window at {since} on a {data_type} column"
        ))
    }
}

/// The watermark value of one row's watermark column; zero dates and NULLs have none.
fn watermark_of(value: &Value) -> Option<WatermarkValue> {
    match *value {
        Value::Int(i) => Some(WatermarkValue::Int(i128::from(i))),
        Value::UInt(u) => Some(WatermarkValue::Int(i128::from(u))),
        Value::Date(y, mo, d, h, mi, s, us) => {
            NaiveDate::from_ymd_opt(y.into(), mo.into(), d.into())
                .and_then(|date| date.and_hms_micro_opt(h.into(), mi.into(), s.into(), us))
                .map(WatermarkValue::Timestamp)
        }
        _ => None,
    }
}

fn seen_is_higher(seen: &WatermarkValue, max: &WatermarkValue) -> bool {
    match (seen, max) {
        (WatermarkValue::Timestamp(a), WatermarkValue::Timestamp(b)) => a > b,
        (WatermarkValue::Int(a), WatermarkValue::Int(b)) => a > b,
        _ => false,
    }
}

/// The row's primary key for messages (`idvisit=42`); its position when the key is not read.
fn row_key(row: &Row, key_indexes: &[usize], columns: &[&str], rows_before: u64) -> String {
    if key_indexes.is_empty() {
        return format!("#{}", rows_before + 1);
    }
    key_indexes
        .iter()
        .map(|&i| {
            let value = row.as_ref(i).map_or_else(|| "?".into(), |v| v.as_sql(true));
            format!("{}={value}", columns[i])
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn flush(
    batch: &mut BatchBuilder,
    schema: &SchemaRef,
    table: &str,
    on_batch: &mut impl FnMut(RecordBatch) -> anyhow::Result<()>,
) -> Result<(), MatomoError> {
    let record_batch = batch.finish(schema).map_err(|source| MatomoError::Arrow {
        table: table.to_string(),
        source,
    })?;
    on_batch(record_batch).map_err(|e| MatomoError::Batch {
        table: table.to_string(),
        source: e.into(),
    })
}

/// The builders of one batch.
struct BatchBuilder {
    columns: Vec<ColumnBuilder>,
    rows: usize,
    /// Text and binary bytes appended since the last flush.
    bytes: usize,
}

impl BatchBuilder {
    fn new(schema: &Schema, capacity: usize) -> BatchBuilder {
        BatchBuilder {
            columns: schema
                .fields()
                .iter()
                .map(|f| ColumnBuilder::new(f.data_type(), capacity))
                .collect(),
            rows: 0,
            bytes: 0,
        }
    }

    fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
        let arrays: Vec<ArrayRef> = self.columns.iter_mut().map(ColumnBuilder::finish).collect();
        self.rows = 0;
        self.bytes = 0;
        RecordBatch::try_new(schema.clone(), arrays)
    }
}

/// What `ColumnBuilder::append` did with a value.
#[derive(Debug, PartialEq, Eq)]
enum Appended {
    Value,
    /// A `0000-00-00` date, appended as NULL.
    ZeroDate,
}

/// An Arrow builder for one of the types `arrow_type` returns.
enum ColumnBuilder {
    Int8(Int8Builder),
    Int16(Int16Builder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    UInt8(UInt8Builder),
    UInt16(UInt16Builder),
    UInt32(UInt32Builder),
    UInt64(UInt64Builder),
    Float32(Float32Builder),
    Float64(Float64Builder),
    Decimal128(Decimal128Builder, u8),
    Decimal256(Decimal256Builder, u8),
    Timestamp(TimestampMicrosecondBuilder),
    Date32(Date32Builder),
    Time64(Time64MicrosecondBuilder),
    Utf8(StringBuilder),
    Binary(BinaryBuilder),
}

impl ColumnBuilder {
    fn new(data_type: &DataType, n: usize) -> ColumnBuilder {
        match data_type {
            DataType::Int8 => ColumnBuilder::Int8(Int8Builder::with_capacity(n)),
            DataType::Int16 => ColumnBuilder::Int16(Int16Builder::with_capacity(n)),
            DataType::Int32 => ColumnBuilder::Int32(Int32Builder::with_capacity(n)),
            DataType::Int64 => ColumnBuilder::Int64(Int64Builder::with_capacity(n)),
            DataType::UInt8 => ColumnBuilder::UInt8(UInt8Builder::with_capacity(n)),
            DataType::UInt16 => ColumnBuilder::UInt16(UInt16Builder::with_capacity(n)),
            DataType::UInt32 => ColumnBuilder::UInt32(UInt32Builder::with_capacity(n)),
            DataType::UInt64 => ColumnBuilder::UInt64(UInt64Builder::with_capacity(n)),
            DataType::Float32 => ColumnBuilder::Float32(Float32Builder::with_capacity(n)),
            DataType::Float64 => ColumnBuilder::Float64(Float64Builder::with_capacity(n)),
            DataType::Decimal128(_, s) => ColumnBuilder::Decimal128(
                Decimal128Builder::with_capacity(n).with_data_type(data_type.clone()),
                u8::try_from(*s).unwrap_or(0),
            ),
            DataType::Decimal256(_, s) => ColumnBuilder::Decimal256(
                Decimal256Builder::with_capacity(n).with_data_type(data_type.clone()),
                u8::try_from(*s).unwrap_or(0),
            ),
            DataType::Timestamp(..) => ColumnBuilder::Timestamp(
                TimestampMicrosecondBuilder::with_capacity(n).with_data_type(data_type.clone()),
            ),
            DataType::Date32 => ColumnBuilder::Date32(Date32Builder::with_capacity(n)),
            DataType::Time64(_) => {
                ColumnBuilder::Time64(Time64MicrosecondBuilder::with_capacity(n))
            }
            DataType::Binary => ColumnBuilder::Binary(BinaryBuilder::with_capacity(n, n * 16)),
            // Utf8, the only other type `arrow_type` gives.
            _ => ColumnBuilder::Utf8(StringBuilder::with_capacity(n, n * 16)),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            ColumnBuilder::Int8(b) => Arc::new(b.finish()),
            ColumnBuilder::Int16(b) => Arc::new(b.finish()),
            ColumnBuilder::Int32(b) => Arc::new(b.finish()),
            ColumnBuilder::Int64(b) => Arc::new(b.finish()),
            ColumnBuilder::UInt8(b) => Arc::new(b.finish()),
            ColumnBuilder::UInt16(b) => Arc::new(b.finish()),
            ColumnBuilder::UInt32(b) => Arc::new(b.finish()),
            ColumnBuilder::UInt64(b) => Arc::new(b.finish()),
            ColumnBuilder::Float32(b) => Arc::new(b.finish()),
            ColumnBuilder::Float64(b) => Arc::new(b.finish()),
            ColumnBuilder::Decimal128(b, _) => Arc::new(b.finish()),
            ColumnBuilder::Decimal256(b, _) => Arc::new(b.finish()),
            ColumnBuilder::Timestamp(b) => Arc::new(b.finish()),
            ColumnBuilder::Date32(b) => Arc::new(b.finish()),
            ColumnBuilder::Time64(b) => Arc::new(b.finish()),
            ColumnBuilder::Utf8(b) => Arc::new(b.finish()),
            ColumnBuilder::Binary(b) => Arc::new(b.finish()),
        }
    }
}

/// Appends one integer value to a builder of native type `$t`, checking the range.
macro_rules! append_int {
    ($builder:expr, $value:expr, $t:ty) => {
        match *$value {
            Value::NULL => $builder.append_null(),
            Value::Int(i) => $builder.append_value(
                <$t>::try_from(i).map_err(|_| ValueProblem::OutOfRange(i.to_string()))?,
            ),
            Value::UInt(u) => $builder.append_value(
                <$t>::try_from(u).map_err(|_| ValueProblem::OutOfRange(u.to_string()))?,
            ),
            ref other => return Err(unexpected(other)),
        }
    };
}

impl ColumnBuilder {
    /// Appends one value as the binary protocol delivers it (`Value::Int` for every signed
    /// and most unsigned integers, `Value::UInt` above `i64::MAX`, `Value::Bytes` for
    /// strings, decimals and bits, `Value::Date`/`Value::Time` for temporal types).
    fn append(&mut self, value: &Value) -> Result<Appended, ValueProblem> {
        match self {
            ColumnBuilder::Int8(b) => append_int!(b, value, i8),
            ColumnBuilder::Int16(b) => append_int!(b, value, i16),
            ColumnBuilder::Int32(b) => append_int!(b, value, i32),
            ColumnBuilder::Int64(b) => append_int!(b, value, i64),
            ColumnBuilder::UInt8(b) => append_int!(b, value, u8),
            ColumnBuilder::UInt16(b) => append_int!(b, value, u16),
            ColumnBuilder::UInt32(b) => append_int!(b, value, u32),
            ColumnBuilder::UInt64(b) => match value {
                // BIT(n): the bits as a big-endian number.
                Value::Bytes(bits) if bits.len() <= 8 => {
                    b.append_value(bits.iter().fold(0u64, |n, &byte| n << 8 | u64::from(byte)))
                }
                _ => append_int!(b, value, u64),
            },
            ColumnBuilder::Float32(b) => match *value {
                Value::NULL => b.append_null(),
                Value::Float(f) => b.append_value(f),
                ref other => return Err(unexpected(other)),
            },
            ColumnBuilder::Float64(b) => match *value {
                Value::NULL => b.append_null(),
                Value::Double(f) => b.append_value(f),
                Value::Float(f) => b.append_value(f64::from(f)),
                ref other => return Err(unexpected(other)),
            },
            ColumnBuilder::Decimal128(b, scale) => match value {
                Value::NULL => b.append_null(),
                Value::Bytes(text) => b.append_value(
                    parse_decimal128(text, *scale).ok_or_else(|| out_of_range(value))?,
                ),
                other => return Err(unexpected(other)),
            },
            ColumnBuilder::Decimal256(b, scale) => match value {
                Value::NULL => b.append_null(),
                Value::Bytes(text) => b.append_value(
                    parse_decimal256(text, *scale).ok_or_else(|| out_of_range(value))?,
                ),
                other => return Err(unexpected(other)),
            },
            ColumnBuilder::Timestamp(b) => match *value {
                Value::NULL => b.append_null(),
                Value::Date(0, 0, 0, 0, 0, 0, 0) => {
                    b.append_null();
                    return Ok(Appended::ZeroDate);
                }
                Value::Date(y, mo, d, h, mi, s, us) => {
                    let t = NaiveDate::from_ymd_opt(y.into(), mo.into(), d.into())
                        .and_then(|date| date.and_hms_micro_opt(h.into(), mi.into(), s.into(), us))
                        .ok_or_else(|| ValueProblem::InvalidDate(value.as_sql(true)))?;
                    b.append_value(t.and_utc().timestamp_micros());
                }
                ref other => return Err(unexpected(other)),
            },
            ColumnBuilder::Date32(b) => match *value {
                Value::NULL => b.append_null(),
                Value::Date(0, 0, 0, ..) => {
                    b.append_null();
                    return Ok(Appended::ZeroDate);
                }
                Value::Date(y, mo, d, ..) => {
                    let days = NaiveDate::from_ymd_opt(y.into(), mo.into(), d.into())
                        .map(|date| (date - NaiveDate::default()).num_days())
                        .and_then(|days| i32::try_from(days).ok())
                        .ok_or_else(|| ValueProblem::InvalidDate(value.as_sql(true)))?;
                    b.append_value(days);
                }
                ref other => return Err(unexpected(other)),
            },
            ColumnBuilder::Time64(b) => match *value {
                Value::NULL => b.append_null(),
                Value::Time(negative, days, h, mi, s, us) => {
                    let micros = ((i64::from(days) * 24 + i64::from(h)) * 60 + i64::from(mi)) * 60
                        + i64::from(s);
                    let micros = micros * 1_000_000 + i64::from(us);
                    if micros >= MICROS_PER_DAY || (negative && micros != 0) {
                        return Err(ValueProblem::TimeOutOfDay(value.as_sql(true)));
                    }
                    b.append_value(micros);
                }
                ref other => return Err(unexpected(other)),
            },
            ColumnBuilder::Utf8(b) => match value {
                Value::NULL => b.append_null(),
                Value::Bytes(bytes) => {
                    b.append_value(
                        std::str::from_utf8(bytes).map_err(|_| ValueProblem::InvalidUtf8)?,
                    );
                }
                other => return Err(unexpected(other)),
            },
            ColumnBuilder::Binary(b) => match value {
                Value::NULL => b.append_null(),
                Value::Bytes(bytes) => b.append_value(bytes),
                other => return Err(unexpected(other)),
            },
        }
        Ok(Appended::Value)
    }

    /// Bytes a value adds to a text or binary array.
    fn bytes_of(value: &Value) -> usize {
        match value {
            Value::Bytes(bytes) => bytes.len(),
            _ => 0,
        }
    }
}

fn unexpected(value: &Value) -> ValueProblem {
    ValueProblem::Unexpected(format!("{value:?}"))
}

fn out_of_range(value: &Value) -> ValueProblem {
    ValueProblem::OutOfRange(value.as_sql(true))
}

fn date_value(t: &NaiveDateTime) -> Value {
    use chrono::{Datelike, Timelike};
    // The fields of a valid NaiveDateTime are in range for the wire format, except years
    // outside 0..=9999, which MariaDB cannot store anyway: those saturate.
    let year = u16::try_from(t.year()).unwrap_or(if t.year() < 0 { 0 } else { u16::MAX });
    let small = |n: u32| u8::try_from(n).unwrap_or(u8::MAX);
    Value::Date(
        year,
        small(t.month()),
        small(t.day()),
        small(t.hour()),
        small(t.minute()),
        small(t.second()),
        t.nanosecond() / 1000,
    )
}

/// Splits MariaDB's decimal text (`-12.345600`) into sign, integer digits and fraction digits,
/// the fraction padded to `scale`; `None` when it is not a decimal or has more fraction digits.
fn decimal_digits(text: &[u8], scale: u8) -> Option<(bool, &[u8], &[u8], usize)> {
    let (negative, rest) = match text.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, text),
    };
    let (int, frac) = match rest.iter().position(|&c| c == b'.') {
        Some(dot) => (&rest[..dot], &rest[dot + 1..]),
        None => (rest, &rest[rest.len()..]),
    };
    let scale = usize::from(scale);
    if (int.is_empty() && frac.is_empty())
        || frac.len() > scale
        || !int.iter().chain(frac).all(u8::is_ascii_digit)
    {
        return None;
    }
    Some((negative, int, frac, scale - frac.len()))
}

/// `-12.345600` at scale 6 -> -12345600.
fn parse_decimal128(text: &[u8], scale: u8) -> Option<i128> {
    let (negative, int, frac, pad) = decimal_digits(text, scale)?;
    let mut n: i128 = 0;
    for &c in int.iter().chain(frac) {
        n = n.checked_mul(10)?.checked_add(i128::from(c - b'0'))?;
    }
    for _ in 0..pad {
        n = n.checked_mul(10)?;
    }
    Some(if negative { -n } else { n })
}

fn parse_decimal256(text: &[u8], scale: u8) -> Option<i256> {
    let (negative, int, frac, pad) = decimal_digits(text, scale)?;
    let ten = i256::from_i128(10);
    let mut n = i256::ZERO;
    for &c in int.iter().chain(frac) {
        n = n
            .checked_mul(ten)?
            .checked_add(i256::from_i128(i128::from(c - b'0')))?;
    }
    for _ in 0..pad {
        n = n.checked_mul(ten)?;
    }
    Some(if negative { n.checked_neg()? } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ColumnSpec, Config, SqlType};
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{
        Date32Type, Decimal128Type, Decimal256Type, Float32Type, Float64Type, Int16Type, Int32Type,
        Int64Type, Int8Type, Time64MicrosecondType, TimestampMicrosecondType, UInt16Type,
        UInt32Type, UInt64Type, UInt8Type,
    };
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn meta(
        column_type: ColumnType,
        flags: ColumnFlags,
        charset: u16,
        length: u32,
        decimals: u8,
    ) -> ColumnMeta {
        ColumnMeta {
            column_type,
            flags,
            charset,
            length,
            decimals,
        }
    }

    const UTF8MB4: u16 = 45;
    const UNSIGNED: ColumnFlags = ColumnFlags::UNSIGNED_FLAG;

    fn utc_micros() -> DataType {
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    }

    #[test]
    fn watermark_values_bind_as_mariadb_params() {
        let t = NaiveDate::from_ymd_opt(2024, 3, 1)
            .unwrap()
            .and_hms_micro_opt(12, 0, 0, 250)
            .unwrap();
        assert_eq!(
            WatermarkValue::Timestamp(t).to_param(),
            Some(Value::Date(2024, 3, 1, 12, 0, 0, 250))
        );
        assert_eq!(
            WatermarkValue::Int(i128::from(u64::MAX)).to_param(),
            Some(Value::UInt(u64::MAX))
        );
        assert_eq!(WatermarkValue::Int(-1).to_param(), Some(Value::Int(-1)));
        assert_eq!(WatermarkValue::Int(i128::MAX).to_param(), None);
    }

    #[test]
    fn maps_every_mariadb_type() {
        use ColumnType::*;
        let none = ColumnFlags::empty();
        let bin = ColumnFlags::BINARY_FLAG;
        let cases = [
            (meta(MYSQL_TYPE_TINY, none, 63, 4, 0), DataType::Int8),
            (meta(MYSQL_TYPE_TINY, UNSIGNED, 63, 3, 0), DataType::UInt8),
            (meta(MYSQL_TYPE_SHORT, none, 63, 6, 0), DataType::Int16),
            (meta(MYSQL_TYPE_SHORT, UNSIGNED, 63, 5, 0), DataType::UInt16),
            (meta(MYSQL_TYPE_INT24, none, 63, 9, 0), DataType::Int32),
            (meta(MYSQL_TYPE_INT24, UNSIGNED, 63, 8, 0), DataType::UInt32),
            (meta(MYSQL_TYPE_LONG, none, 63, 11, 0), DataType::Int32),
            (meta(MYSQL_TYPE_LONG, UNSIGNED, 63, 10, 0), DataType::UInt32),
            (meta(MYSQL_TYPE_LONGLONG, none, 63, 20, 0), DataType::Int64),
            (
                meta(MYSQL_TYPE_LONGLONG, UNSIGNED, 63, 20, 0),
                DataType::UInt64,
            ),
            (meta(MYSQL_TYPE_YEAR, UNSIGNED, 63, 4, 0), DataType::Int16),
            (meta(MYSQL_TYPE_BIT, UNSIGNED, 63, 12, 0), DataType::UInt64),
            (meta(MYSQL_TYPE_FLOAT, none, 63, 12, 31), DataType::Float32),
            (meta(MYSQL_TYPE_DOUBLE, none, 63, 22, 31), DataType::Float64),
            // DECIMAL(9,6): 9 digits + point + sign.
            (
                meta(MYSQL_TYPE_NEWDECIMAL, none, 63, 11, 6),
                DataType::Decimal128(9, 6),
            ),
            // DECIMAL(20,0) UNSIGNED: neither point nor sign.
            (
                meta(MYSQL_TYPE_NEWDECIMAL, UNSIGNED, 63, 20, 0),
                DataType::Decimal128(20, 0),
            ),
            (
                meta(MYSQL_TYPE_NEWDECIMAL, none, 63, 39, 0),
                DataType::Decimal128(38, 0),
            ),
            (
                meta(MYSQL_TYPE_NEWDECIMAL, none, 63, 40, 0),
                DataType::Decimal256(39, 0),
            ),
            (
                meta(MYSQL_TYPE_NEWDECIMAL, none, 63, 67, 30),
                DataType::Decimal256(65, 30),
            ),
            (meta(MYSQL_TYPE_DATETIME, bin, 63, 19, 0), utc_micros()),
            (meta(MYSQL_TYPE_TIMESTAMP, bin, 63, 26, 6), utc_micros()),
            (meta(MYSQL_TYPE_DATE, bin, 63, 10, 0), DataType::Date32),
            (
                meta(MYSQL_TYPE_TIME, bin, 63, 10, 0),
                DataType::Time64(TimeUnit::Microsecond),
            ),
            (
                meta(MYSQL_TYPE_STRING, none, UTF8MB4, 12, 0),
                DataType::Utf8,
            ),
            (
                meta(MYSQL_TYPE_VAR_STRING, none, UTF8MB4, 800, 0),
                DataType::Utf8,
            ),
            // utf8mb4_bin carries BINARY_FLAG and is still text.
            (meta(MYSQL_TYPE_VAR_STRING, bin, 46, 800, 0), DataType::Utf8),
            (
                meta(MYSQL_TYPE_BLOB, none, UTF8MB4, 262_140, 0),
                DataType::Utf8,
            ),
            (
                meta(MYSQL_TYPE_STRING, ColumnFlags::ENUM_FLAG, UTF8MB4, 4, 0),
                DataType::Utf8,
            ),
            (meta(MYSQL_TYPE_STRING, bin, 63, 8, 0), DataType::Binary),
            (
                meta(MYSQL_TYPE_VAR_STRING, bin, 63, 16, 0),
                DataType::Binary,
            ),
            (meta(MYSQL_TYPE_BLOB, bin, 63, 65_535, 0), DataType::Binary),
            (
                meta(MYSQL_TYPE_LONG_BLOB, bin, 63, u32::MAX, 0),
                DataType::Binary,
            ),
        ];
        for (m, expected) in cases {
            assert_eq!(arrow_type(&m), Some(expected), "{m:?}");
        }
    }

    #[test]
    fn unsupported_types_have_no_arrow_type() {
        for t in [
            ColumnType::MYSQL_TYPE_GEOMETRY,
            ColumnType::MYSQL_TYPE_NULL,
            ColumnType::MYSQL_TYPE_VECTOR,
        ] {
            assert_eq!(
                arrow_type(&meta(t, ColumnFlags::empty(), 63, 0, 0)),
                None,
                "{t:?}"
            );
        }
    }

    fn builder_for(data_type: DataType) -> ColumnBuilder {
        ColumnBuilder::new(&data_type, 4)
    }

    #[test]
    fn invalid_utf8_is_an_error_never_a_lossy_string() {
        let mut b = builder_for(DataType::Utf8);
        assert_eq!(
            b.append(&Value::Bytes(b"a\xffb".to_vec())),
            Err(ValueProblem::InvalidUtf8)
        );
        assert_eq!(
            b.append(&Value::Bytes("é中🎉".as_bytes().to_vec())),
            Ok(Appended::Value)
        );
    }

    #[test]
    fn time_must_be_a_time_of_day() {
        let mut b = builder_for(DataType::Time64(TimeUnit::Microsecond));
        assert_eq!(
            b.append(&Value::Time(false, 0, 23, 59, 59, 999_999)),
            Ok(Appended::Value)
        );
        assert_eq!(
            b.append(&Value::Time(true, 0, 0, 0, 0, 0)),
            Ok(Appended::Value)
        );
        for bad in [
            Value::Time(false, 1, 0, 0, 0, 0),
            Value::Time(false, 0, 24, 0, 0, 0),
            Value::Time(false, 0, 25, 0, 0, 0),
            Value::Time(true, 0, 1, 0, 0, 0),
        ] {
            assert!(
                matches!(b.append(&bad), Err(ValueProblem::TimeOutOfDay(_))),
                "{bad:?}"
            );
        }
        let array = b.finish();
        let times = array.as_primitive::<Time64MicrosecondType>();
        assert_eq!(times.values().as_ref(), &[86_399_999_999, 0]);
    }

    #[test]
    fn zero_dates_become_null_and_bad_dates_are_errors() {
        let mut b = builder_for(utc_micros());
        assert_eq!(
            b.append(&Value::Date(0, 0, 0, 0, 0, 0, 0)),
            Ok(Appended::ZeroDate)
        );
        assert_eq!(
            b.append(&Value::Date(2024, 2, 29, 23, 59, 59, 5)),
            Ok(Appended::Value)
        );
        assert!(matches!(
            b.append(&Value::Date(2024, 0, 0, 0, 0, 0, 0)),
            Err(ValueProblem::InvalidDate(_))
        ));
        let mut d = builder_for(DataType::Date32);
        assert_eq!(
            d.append(&Value::Date(0, 0, 0, 0, 0, 0, 0)),
            Ok(Appended::ZeroDate)
        );
        assert_eq!(
            d.append(&Value::Date(1970, 1, 2, 0, 0, 0, 0)),
            Ok(Appended::Value)
        );
        let ts = b.finish();
        let ts = ts.as_primitive::<TimestampMicrosecondType>();
        assert!(ts.is_null(0));
        assert_eq!(ts.value(1), 1_709_251_199_000_005);
        let dates = d.finish();
        assert_eq!(dates.as_primitive::<Date32Type>().value(1), 1);
        assert!(dates.is_null(0));
    }

    #[test]
    fn integers_keep_their_full_unsigned_range() {
        let mut u64s = builder_for(DataType::UInt64);
        u64s.append(&Value::UInt(u64::MAX)).unwrap();
        u64s.append(&Value::Int(7)).unwrap();
        // BIT(12) b'101000000001'
        u64s.append(&Value::Bytes(vec![0x0a, 0x01])).unwrap();
        assert_eq!(
            u64s.finish().as_primitive::<UInt64Type>().values().as_ref(),
            &[u64::MAX, 7, 0x0a01]
        );
        let mut u8s = builder_for(DataType::UInt8);
        assert!(matches!(
            u8s.append(&Value::Int(256)),
            Err(ValueProblem::OutOfRange(_))
        ));
        let mut i64s = builder_for(DataType::Int64);
        assert!(matches!(
            i64s.append(&Value::UInt(u64::MAX)),
            Err(ValueProblem::OutOfRange(_))
        ));
        assert!(matches!(
            i64s.append(&Value::Double(1.0)),
            Err(ValueProblem::Unexpected(_))
        ));
    }

    #[test]
    fn decimals_parse_exactly() {
        assert_eq!(parse_decimal128(b"-12.345600", 6), Some(-12_345_600));
        assert_eq!(parse_decimal128(b"48.856613", 6), Some(48_856_613));
        assert_eq!(parse_decimal128(b"7.5", 3), Some(7_500));
        assert_eq!(
            parse_decimal128(b"18446744073709551615", 0),
            Some(18_446_744_073_709_551_615)
        );
        assert_eq!(parse_decimal128(b"1.2345", 2), None);
        assert_eq!(parse_decimal128(b"1e5", 0), None);
        assert_eq!(parse_decimal128(b"", 0), None);
        let big = format!("-{}.{}", "9".repeat(35), "1".repeat(30));
        let expected = i256::from_string(&format!("-{}{}", "9".repeat(35), "1".repeat(30)));
        assert_eq!(parse_decimal256(big.as_bytes(), 30), expected);
    }

    #[test]
    fn identifiers_are_backtick_quoted() {
        assert_eq!(quote_ident("matomo_log_visit"), "`matomo_log_visit`");
        assert_eq!(quote_ident("we`ird"), "`we``ird`");
    }

    // ---- against the test MariaDB ----

    /// A database of its own for one test, so tests run in parallel.
    struct TestDb {
        name: String,
        conn: Conn,
    }

    static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

    fn test_settings() -> MatomoSettings {
        if std::env::var_os("ETL_TEST_MARIADB_URL").is_none()
            || std::env::var_os("MATOMO_HOST").is_none()
        {
            panic!(
                "ETL_TEST_MARIADB_URL and MATOMO_* are not set: the Matomo tests need the test \
                 MariaDB; run them via `scripts/with-services.sh cargo test`"
            );
        }
        MatomoSettings::from_env().expect("MATOMO_* settings")
    }

    impl TestDb {
        /// A fresh database with the fixture schema, and the fixture rows when `rows`.
        async fn new(rows: bool) -> TestDb {
            let mut settings = test_settings();
            let name = format!(
                "matomo_t_{}_{}",
                std::process::id(),
                NEXT_DB.fetch_add(1, Ordering::SeqCst)
            );
            let mut admin = connect(&settings)
                .await
                .expect("connect to the test MariaDB");
            admin
                .query_drop(format!(
                    "DROP DATABASE IF EXISTS `{name}`; CREATE DATABASE `{name}`"
                ))
                .await
                .unwrap();
            admin.disconnect().await.unwrap();
            settings.database = name.clone();
            let mut conn = connect(&settings).await.unwrap();
            conn.query_drop(include_str!("../../tests/fixtures/matomo/schema.sql"))
                .await
                .unwrap();
            if rows {
                conn.query_drop(include_str!("../../tests/fixtures/matomo/rows.sql"))
                    .await
                    .unwrap();
            }
            TestDb { name, conn }
        }

        async fn drop(mut self) {
            self.conn
                .query_drop(format!("DROP DATABASE `{}`", self.name))
                .await
                .unwrap();
            self.conn.disconnect().await.unwrap();
        }

        /// Every row of `table` as one batch (extracted in batches of `batch_rows`), the
        /// number of batches, and the stats.
        async fn extract(
            &mut self,
            table: &TableSpec,
            since: Option<&WatermarkValue>,
            batch_rows: usize,
        ) -> Result<(RecordBatch, usize, MatomoStats), MatomoError> {
            let mut batches = Vec::new();
            let stats = extract_table(&mut self.conn, table, since, batch_rows, |b| {
                batches.push(b);
                Ok(())
            })
            .await?;
            let n = batches.len();
            let all = arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
            assert_eq!(all.num_rows() as u64, stats.rows);
            Ok((all, n, stats))
        }
    }

    fn config() -> Config {
        Config::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config")).unwrap()
    }

    fn spec(name: &str) -> TableSpec {
        config().table(name).unwrap().clone()
    }

    fn column<'a>(batch: &'a RecordBatch, name: &str) -> &'a dyn Array {
        batch
            .column_by_name(name)
            .unwrap_or_else(|| panic!("no column {name}"))
            .as_ref()
    }

    fn texts(batch: &RecordBatch, name: &str) -> Vec<Option<String>> {
        column(batch, name)
            .as_string::<i32>()
            .iter()
            .map(|s| s.map(str::to_string))
            .collect()
    }

    fn bytes(batch: &RecordBatch, name: &str) -> Vec<Option<Vec<u8>>> {
        column(batch, name)
            .as_binary::<i32>()
            .iter()
            .map(|b| b.map(<[u8]>::to_vec))
            .collect()
    }

    fn micros(s: &str) -> i64 {
        NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S")
            .unwrap()
            .and_utc()
            .timestamp_micros()
    }

    fn at(s: &str) -> WatermarkValue {
        WatermarkValue::Timestamp(NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap())
    }

    fn hex(s: &str) -> Option<Vec<u8>> {
        Some(hex::decode(s).unwrap())
    }

    const LOG_VISIT_SCHEMA: &str = "idvisit: UInt64;idsite: UInt32;idvisitor: Binary;\
        visit_last_action_time: Timestamp(µs, \"UTC\");config_id: Binary;location_ip: Binary;\
        profilable: Int8;user_id: Utf8;visit_first_action_time: Timestamp(µs, \"UTC\");\
        visit_goal_buyer: Int8;visit_goal_converted: Int8;visitor_returning: Int8;\
        visitor_seconds_since_first: UInt32;visitor_seconds_since_order: UInt32;\
        visitor_count_visits: UInt32;visit_entry_idaction_name: UInt32;\
        visit_entry_idaction_url: UInt32;visit_exit_idaction_name: UInt32;\
        visit_exit_idaction_url: UInt32;visit_total_actions: UInt32;\
        visit_total_interactions: UInt32;visit_total_searches: UInt16;referer_keyword: Utf8;\
        referer_name: Utf8;referer_type: UInt8;referer_url: Utf8;location_browser_lang: Utf8;\
        config_browser_engine: Utf8;config_browser_name: Utf8;config_browser_version: Utf8;\
        config_client_type: Int8;config_device_brand: Utf8;config_device_model: Utf8;\
        config_device_type: Int8;config_os: Utf8;config_os_version: Utf8;\
        visit_total_events: UInt32;visitor_localtime: Time64(µs);\
        visitor_seconds_since_last: UInt32;config_resolution: Utf8;config_cookie: Int8;\
        config_flash: Int8;config_java: Int8;config_pdf: Int8;config_quicktime: Int8;\
        config_realplayer: Int8;config_silverlight: Int8;config_windowsmedia: Int8;\
        visit_total_time: UInt32;location_city: Utf8;location_country: Utf8;\
        location_latitude: Decimal128(9, 6);location_longitude: Decimal128(9, 6);\
        location_region: Utf8;last_idlink_va: UInt64;custom_dimension_1: Utf8;\
        custom_dimension_2: Utf8;custom_dimension_3: Utf8;custom_dimension_4: Utf8;\
        custom_dimension_5: Utf8;";

    #[tokio::test]
    async fn log_visit_rows_come_out_with_exact_types_and_values() {
        let mut db = TestDb::new(true).await;
        let (batch, batches, stats) = db
            .extract(&spec("matomo_log_visit"), None, 2)
            .await
            .unwrap();
        db.drop().await;

        let schema: String = batch
            .schema()
            .fields()
            .iter()
            .map(|f| format!("{}: {};", f.name(), f.data_type()))
            .collect();
        assert_eq!(schema, LOG_VISIT_SCHEMA);
        assert_eq!(
            (stats.rows, batches),
            (3, 2),
            "3 rows in batches of at most 2"
        );
        assert_eq!(stats.max_watermark, Some(at("2024-03-01 12:00:01")));
        assert_eq!(stats.zero_dates, 1);

        let ids = column(&batch, "idvisit").as_primitive::<UInt64Type>();
        assert_eq!(ids.values().as_ref(), &[1, 2, u64::MAX]);
        let idsite = column(&batch, "idsite").as_primitive::<UInt32Type>();
        assert_eq!(idsite.values().as_ref(), &[1, 1, u32::MAX]);
        assert_eq!(
            bytes(&batch, "idvisitor"),
            [
                hex("0123456789abcdef"),
                hex("ff00000000000000"),
                hex("ffffffffffffffff")
            ]
        );
        assert_eq!(bytes(&batch, "config_id")[0], hex("00ff00ff00ff0000"));
        assert_eq!(
            bytes(&batch, "location_ip"),
            [
                hex("c0a80001"),
                hex("20010db8000000000000000000000001"),
                hex("00000000")
            ]
        );
        let last =
            column(&batch, "visit_last_action_time").as_primitive::<TimestampMicrosecondType>();
        assert_eq!(
            last.values().as_ref(),
            &[
                micros("2024-03-01 12:00:00"),
                micros("2024-03-01 11:59:59"),
                micros("2024-03-01 12:00:01")
            ]
        );
        let first =
            column(&batch, "visit_first_action_time").as_primitive::<TimestampMicrosecondType>();
        assert!(first.is_null(1), "the zero date is NULL");
        assert_eq!(first.value(2), micros("2024-02-29 23:59:59"));
        assert_eq!(
            texts(&batch, "user_id"),
            [
                Some("rené@example.com".into()),
                None,
                Some("北京用户 中文".into())
            ]
        );
        assert_eq!(
            texts(&batch, "custom_dimension_1"),
            [Some("🍎 pomme".into()), None, Some("emoji 🎉🚀".into())]
        );
        // A utf8mb3 column (DevicesDetection) comes out as UTF-8 too.
        assert_eq!(
            texts(&batch, "config_device_brand"),
            [Some("Apple".into()), None, Some("Huawei 华为".into())]
        );
        assert_eq!(
            texts(&batch, "referer_keyword")[0].as_deref(),
            Some("régime méditerranéen")
        );
        let u32_max = |name: &str| column(&batch, name).as_primitive::<UInt32Type>().value(2);
        for name in [
            "visitor_count_visits",
            "visit_total_time",
            "visitor_seconds_since_last",
            "visit_total_events",
        ] {
            assert_eq!(u32_max(name), u32::MAX, "{name}");
        }
        assert_eq!(u32_max("visit_total_interactions"), 16_777_215);
        assert_eq!(
            column(&batch, "visit_total_searches")
                .as_primitive::<UInt16Type>()
                .value(2),
            u16::MAX
        );
        assert_eq!(
            column(&batch, "referer_type")
                .as_primitive::<UInt8Type>()
                .value(2),
            u8::MAX
        );
        let device_type = column(&batch, "config_device_type").as_primitive::<Int8Type>();
        assert_eq!(
            (
                device_type.value(0),
                device_type.is_null(1),
                device_type.value(2)
            ),
            (1, true, -128)
        );
        let localtime = column(&batch, "visitor_localtime").as_primitive::<Time64MicrosecondType>();
        assert_eq!(localtime.value(0), (14 * 3600 + 30 * 60 + 5) * 1_000_000);
        assert!(localtime.is_null(1));
        assert_eq!(localtime.value(2), 86_399_000_000);
        let lat = column(&batch, "location_latitude").as_primitive::<Decimal128Type>();
        let long = column(&batch, "location_longitude").as_primitive::<Decimal128Type>();
        assert_eq!((lat.value(0), long.value(0)), (48_856_613, 2_352_222));
        assert_eq!((lat.value(2), long.value(2)), (-33_868_820, -151_209_296));
        assert_eq!(lat.value_as_string(2), "-33.868820");
        assert!(lat.is_null(1));
        let last_link = column(&batch, "last_idlink_va").as_primitive::<UInt64Type>();
        assert_eq!(
            (last_link.value(0), last_link.is_null(1), last_link.value(2)),
            (2, true, u64::MAX)
        );
        // Row 2 is all NULL but for its NOT NULL columns.
        let nulls = batch.columns().iter().filter(|c| c.is_null(1)).count();
        assert_eq!(
            nulls,
            60 - 8,
            "row 2: NULL everywhere but idvisit, idsite, idvisitor, times, config_id, ip, counts"
        );
    }

    #[tokio::test]
    async fn log_link_visit_action_and_log_action_values() {
        let mut db = TestDb::new(true).await;
        let (actions, _, action_stats) = db
            .extract(&spec("matomo_log_link_visit_action"), None, 1000)
            .await
            .unwrap();
        let (names, _, name_stats) = db
            .extract(&spec("matomo_log_action"), None, 1000)
            .await
            .unwrap();
        db.drop().await;

        assert_eq!(actions.num_columns(), 41);
        assert_eq!(action_stats.max_watermark, Some(at("2024-03-01 12:00:00")));
        let float = column(&actions, "custom_float").as_primitive::<Float64Type>();
        assert_eq!((float.is_null(0), float.value(1)), (true, 12.5));
        assert_eq!(
            column(&actions, "product_price")
                .as_primitive::<Float64Type>()
                .value(1),
            19.99
        );
        assert_eq!(
            texts(&actions, "idpageview"),
            [Some("aB3xZ9".into()), Some("aB3xZ9".into())]
        );
        assert_eq!(
            texts(&actions, "search_cat")[1].as_deref(),
            Some("recettes été")
        );
        assert_eq!(
            texts(&actions, "custom_dimension_1")[1].as_deref(),
            Some("café ☕")
        );
        assert_eq!(
            column(&actions, "time_dom_completion")
                .as_primitive::<UInt32Type>()
                .value(1),
            16_777_215
        );
        assert_eq!(
            column(&actions, "time_spent")
                .as_primitive::<UInt32Type>()
                .value(1),
            u32::MAX
        );
        assert_eq!(bytes(&actions, "idvisitor")[1], hex("0123456789abcdef"));

        assert_eq!(name_stats.rows, 7);
        assert_eq!(name_stats.max_watermark, Some(WatermarkValue::Int(7)));
        let hash = column(&names, "hash").as_primitive::<UInt32Type>();
        assert_eq!(hash.value(4), 4_294_967_295);
        let name = texts(&names, "name");
        let long_url = format!("example.com/recherche?q={}fin", "r%C3%A9gime-".repeat(100));
        assert!(long_url.len() > 1000);
        assert_eq!(name[1].as_deref(), Some(long_url.as_str()));
        assert_eq!(name[3].as_deref(), Some("Accueil — Régime 中文 🎉"));
        let url_prefix = column(&names, "url_prefix").as_primitive::<Int8Type>();
        assert_eq!((url_prefix.value(0), url_prefix.is_null(2)), (3, true));
        assert_eq!(
            column(&names, "type").as_primitive::<UInt8Type>().value(2),
            3
        );
    }

    #[tokio::test]
    async fn window_is_inclusive_at_the_boundary_second() {
        let mut db = TestDb::new(true).await;
        let visits = spec("matomo_log_visit");
        let (batch, _, stats) = db
            .extract(&visits, Some(&at("2024-03-01 12:00:00")), 100)
            .await
            .unwrap();
        let ids = column(&batch, "idvisit").as_primitive::<UInt64Type>();
        assert_eq!(
            ids.values().as_ref(),
            &[1, u64::MAX],
            "12:00:00 is in, 11:59:59 is not"
        );
        assert_eq!(stats.max_watermark, Some(at("2024-03-01 12:00:01")));
        let (batch, _, _) = db
            .extract(&visits, Some(&at("2024-03-01 11:59:59")), 100)
            .await
            .unwrap();
        assert_eq!(batch.num_rows(), 3);

        // An integer watermark (log_action.idaction) is inclusive too.
        let (batch, _, stats) = db
            .extract(
                &spec("matomo_log_action"),
                Some(&WatermarkValue::Int(5)),
                100,
            )
            .await
            .unwrap();
        assert_eq!(
            column(&batch, "idaction")
                .as_primitive::<UInt32Type>()
                .values()
                .as_ref(),
            &[5, 6, 7]
        );
        assert_eq!(stats.max_watermark, Some(WatermarkValue::Int(7)));

        // A window past the last row: one empty batch that still carries the schema.
        let mut got = Vec::new();
        let stats = extract_table(
            &mut db.conn,
            &visits,
            Some(&at("2030-01-01 00:00:00")),
            100,
            |b| {
                got.push(b);
                Ok(())
            },
        )
        .await
        .unwrap();
        assert_eq!((stats.rows, stats.max_watermark.clone()), (0, None));
        assert_eq!(
            (got.len(), got[0].num_rows(), got[0].num_columns()),
            (1, 0, 60)
        );

        // A window of the wrong kind is refused before anything is read.
        let err = extract_table(
            &mut db.conn,
            &visits,
            Some(&WatermarkValue::Int(3)),
            100,
            |_| Ok(()),
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("visit_last_action_time"), "{err}");
        db.drop().await;
    }

    #[tokio::test]
    async fn missing_columns_are_all_named_with_their_table() {
        let mut db = TestDb::new(true).await;
        db.conn
            .query_drop("ALTER TABLE matomo_log_visit DROP COLUMN config_os, DROP COLUMN custom_dimension_5")
            .await
            .unwrap();
        let mut visits = spec("matomo_log_visit");
        visits.columns.push(ColumnSpec {
            name: "campaign_name".into(),
            sql_type: SqlType::Text,
            nullable: true,
            foreign_key: None,
            source: ColumnSource::Field("campaign_name".into()),
        });
        let err = db.extract(&visits, None, 100).await.unwrap_err();
        match &err {
            MatomoError::MissingColumns { table, columns, .. } => {
                assert_eq!(table, "matomo_log_visit");
                assert_eq!(
                    columns,
                    &["config_os", "custom_dimension_5", "campaign_name"]
                );
            }
            other => panic!("expected MissingColumns, got {other:?}"),
        }
        let message = err.to_string();
        assert!(
            message.contains("matomo_log_visit") && message.contains("campaign_name"),
            "{message}"
        );

        let mut missing_table = spec("matomo_log_action");
        missing_table.source = Source::Matomo {
            table: "matomo_log_nope".into(),
        };
        let err = db.extract(&missing_table, None, 100).await.unwrap_err();
        assert!(
            matches!(&err, MatomoError::TableNotFound { table } if table == "matomo_log_nope"),
            "{err}"
        );
        db.drop().await;
    }

    #[tokio::test]
    async fn zero_date_becomes_null_and_is_counted() {
        let mut db = TestDb::new(true).await;
        db.conn
            .query_drop(
                "SET sql_mode = ''; UPDATE matomo_log_visit SET visit_first_action_time = '0000-00-00 00:00:00' \
                 WHERE idvisit = 1",
            )
            .await
            .unwrap();
        let (batch, _, stats) = db
            .extract(&spec("matomo_log_visit"), None, 100)
            .await
            .unwrap();
        db.drop().await;
        assert_eq!(stats.zero_dates, 2);
        let first =
            column(&batch, "visit_first_action_time").as_primitive::<TimestampMicrosecondType>();
        assert_eq!(
            (first.is_null(0), first.is_null(1), first.is_null(2)),
            (true, true, false)
        );
    }

    #[tokio::test]
    async fn time_outside_a_day_names_table_column_and_key() {
        let mut db = TestDb::new(true).await;
        db.conn
            .query_drop(
                "UPDATE matomo_log_visit SET visitor_localtime = '25:00:00' WHERE idvisit = 2",
            )
            .await
            .unwrap();
        let err = db
            .extract(&spec("matomo_log_visit"), None, 100)
            .await
            .unwrap_err();
        db.drop().await;
        let message = err.to_string();
        assert!(
            matches!(&err, MatomoError::Value { problem, .. }
                if matches!(**problem, ValueProblem::TimeOutOfDay(_))),
            "{message}"
        );
        for part in [
            "matomo_log_visit",
            "visitor_localtime",
            "idvisit=2",
            "25:00:00",
        ] {
            assert!(message.contains(part), "{part} missing in: {message}");
        }
    }

    /// The mapping against what the server really sends for every type (display lengths,
    /// charsets, flags), beyond the types Matomo uses.
    #[tokio::test]
    async fn every_mariadb_type_maps_as_documented() {
        let mut db = TestDb::new(false).await;
        db.conn
            .query_drop(
                "CREATE TABLE all_types (
                   id INT NOT NULL PRIMARY KEY,
                   i8 TINYINT, u8 TINYINT UNSIGNED, i16 SMALLINT, u16 SMALLINT UNSIGNED,
                   i24 MEDIUMINT, u24 MEDIUMINT UNSIGNED, u32 INT UNSIGNED, i64 BIGINT,
                   d1 DECIMAL(9,6), d2 DECIMAL(20,0) UNSIGNED, d3 DECIMAL(65,30), d4 DECIMAL(5,5),
                   f FLOAT, g DOUBLE, dt DATETIME(6), ts TIMESTAMP(3) NULL, d DATE, t TIME(6), y YEAR,
                   b BIT(12), e ENUM('small','large'), s SET('a','b'), j JSON, tx TEXT,
                   vb VARCHAR(10) COLLATE utf8mb4_bin, l1 VARCHAR(10) CHARACTER SET latin1,
                   bl BLOB, bn BINARY(3)
                 ) DEFAULT CHARSET=utf8mb4;
                 SET time_zone = '+02:00';
                 INSERT INTO all_types VALUES (
                   1, -128, 255, -32768, 65535, -8388608, 16777215, 4294967295, -9223372036854775808,
                   -999.999999, 99999999999999999999, -12345678901234567890123456789012345.123456789012345678901234567890, 0.12345,
                   1.5, 0.1, '2024-03-01 12:00:00.123456', '2024-03-01 14:00:00.5', '1969-12-31', '-00:00:00', 2024,
                   b'101000000001', 'large', 'a,b', '{\"k\": [1]}', 'texte é',
                   'Bin', 'Café', 0x00FF00, 0x610000
                 )",
            )
            .await
            .unwrap();
        let mut types = spec("matomo_log_action");
        types.source = Source::Matomo {
            table: "all_types".into(),
        };
        types.primary_key = vec!["id".into()];
        types.watermark = Watermark::Column("dt".into());
        let names =
            "id i8 u8 i16 u16 i24 u24 u32 i64 d1 d2 d3 d4 f g dt ts d t y b e s j tx vb l1 bl bn";
        types.columns = names
            .split(' ')
            .map(|n| ColumnSpec {
                name: n.into(),
                sql_type: SqlType::Text,
                nullable: true,
                foreign_key: None,
                source: ColumnSource::Field(n.into()),
            })
            .collect();
        let (batch, _, stats) = db.extract(&types, None, 10).await.unwrap();
        db.drop().await;

        let schema: Vec<String> = batch
            .schema()
            .fields()
            .iter()
            .map(|f| format!("{} {}", f.name(), f.data_type()))
            .collect();
        assert_eq!(
            schema,
            [
                "id Int32",
                "i8 Int8",
                "u8 UInt8",
                "i16 Int16",
                "u16 UInt16",
                "i24 Int32",
                "u24 UInt32",
                "u32 UInt32",
                "i64 Int64",
                "d1 Decimal128(9, 6)",
                "d2 Decimal128(20, 0)",
                "d3 Decimal256(65, 30)",
                "d4 Decimal128(5, 5)",
                "f Float32",
                "g Float64",
                "dt Timestamp(µs, \"UTC\")",
                "ts Timestamp(µs, \"UTC\")",
                "d Date32",
                "t Time64(µs)",
                "y Int16",
                "b UInt64",
                "e Utf8",
                "s Utf8",
                "j Utf8",
                "tx Utf8",
                "vb Utf8",
                "l1 Utf8",
                "bl Binary",
                "bn Binary",
            ]
        );
        let value = |name: &str| {
            let array = column(&batch, name);
            if let DataType::Timestamp(..) = array.data_type() {
                // Arrow formats a "UTC" zone only with its chrono-tz feature, which we do not
                // build: show the instant ourselves.
                let micros = array.as_primitive::<TimestampMicrosecondType>().value(0);
                let t = chrono::DateTime::from_timestamp_micros(micros).unwrap();
                return t.format("%Y-%m-%dT%H:%M:%S%.fZ").to_string();
            }
            arrow::util::display::ArrayFormatter::try_new(array, &Default::default())
                .unwrap()
                .value(0)
                .to_string()
        };
        let shown: Vec<String> = names
            .split(' ')
            .map(|n| format!("{n}={}", value(n)))
            .collect();
        assert_eq!(
            shown,
            [
                "id=1",
                "i8=-128",
                "u8=255",
                "i16=-32768",
                "u16=65535",
                "i24=-8388608",
                "u24=16777215",
                "u32=4294967295",
                "i64=-9223372036854775808",
                "d1=-999.999999",
                "d2=99999999999999999999",
                "d3=-12345678901234567890123456789012345.123456789012345678901234567890",
                "d4=0.12345",
                "f=1.5",
                "g=0.1",
                "dt=2024-03-01T12:00:00.123456Z",
                // Written at +02:00, read in UTC.
                "ts=2024-03-01T12:00:00.500Z",
                "d=1969-12-31",
                "t=00:00:00",
                "y=2024",
                "b=2561",
                "e=large",
                "s=a,b",
                "j={\"k\": [1]}",
                "tx=texte é",
                "vb=Bin",
                "l1=Café",
                "bl=00ff00",
                "bn=610000",
            ]
        );
        assert_eq!(
            column(&batch, "d3")
                .as_primitive::<Decimal256Type>()
                .precision(),
            65
        );
        assert_eq!(
            column(&batch, "f").as_primitive::<Float32Type>().value(0),
            1.5
        );
        assert_eq!(
            column(&batch, "i64").as_primitive::<Int64Type>().value(0),
            i64::MIN
        );
        assert_eq!(
            column(&batch, "i16").as_primitive::<Int16Type>().value(0),
            i16::MIN
        );
        assert_eq!(
            column(&batch, "i24").as_primitive::<Int32Type>().value(0),
            -8_388_608
        );
        assert_eq!(
            stats.max_watermark,
            Some(WatermarkValue::Timestamp(
                NaiveDate::from_ymd_opt(2024, 3, 1)
                    .unwrap()
                    .and_hms_micro_opt(12, 0, 0, 123_456)
                    .unwrap()
            ))
        );
    }
}
