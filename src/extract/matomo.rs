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
//!
//! A date that names no day (`2024-02-30`, `2024-04-00`: MariaDB stores them under
//! `ALLOW_INVALID_DATES` or without `NO_ZERO_IN_DATE`, and sends their fields as they are)
//! must not stop a table: like a MongoDB value that does not fit its staged type, it is staged
//! as NULL with its text in the `<column>__raw` companion that every `DATE`/`DATETIME`/
//! `TIMESTAMP` column has (counted in `MatomoStats::invalid_dates`). Transform then rejects
//! the row with that raw value, so it is never loaded as a silent NULL.

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
use mysql_async::{BinaryProtocol, Column, Conn, OptsBuilder, Params, QueryResult, Row, Value};

use crate::config::{ColumnSource, Source, TableSpec, Watermark};
use crate::decimal::{Accumulator, Decimal, Rounding};
use crate::settings::MatomoSettings;
use crate::staging::fields::RAW_SUFFIX;

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
    /// Dates that name no day, staged as NULL with their text in `<column>__raw`.
    pub invalid_dates: u64,
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
    on_batch: impl FnMut(RecordBatch) -> anyhow::Result<()>,
) -> Result<MatomoStats, MatomoError> {
    let plan = ReadPlan::new(table)?;
    let source_types = plan.check_source_columns(conn, table).await?;
    let (sql, params) = plan.window_query(since, &source_types)?;

    // Text arrives as UTF-8 whatever the column's charset (binary strings stay charset 63),
    // and TIMESTAMP columns in UTC like Matomo's DATETIMEs.
    conn.query_drop("SET NAMES utf8mb4, time_zone = '+00:00'")
        .await
        .map_err(|source| plan.query_error(source))?;
    tracing::debug!(table = plan.name, %sql, since = ?since, "extracting Matomo table");
    let mut result = conn
        .exec_iter(sql, params)
        .await
        .map_err(|source| plan.query_error(source))?;
    let staged = plan.staged_columns(result.columns().as_deref().unwrap_or_default())?;
    let stats = plan
        .stream_rows(&mut result, &staged, batch_rows, on_batch)
        .await?;
    tracing::debug!(
        table = plan.name,
        rows = stats.rows,
        zero_dates = stats.zero_dates,
        invalid_dates = stats.invalid_dates,
        "extracted Matomo table"
    );
    Ok(stats)
}

/// Keys per `IN (...)` query when rows are read by key (`etl reconcile`).
const KEYS_PER_QUERY: usize = 1_000;

/// `etl reconcile`: the key of every row (the MariaDB columns of the table's upsert key), in
/// key column order, handed to `on_key`; returns how many rows.
pub async fn scan_keys(
    conn: &mut Conn,
    table: &TableSpec,
    mut on_key: impl FnMut(Vec<Value>),
) -> Result<u64, MatomoError> {
    let plan = ReadPlan::new(table)?;
    let keys = plan.key_columns(table)?;
    plan.check_source_columns(conn, table).await?;
    conn.query_drop("SET NAMES utf8mb4, time_zone = '+00:00'")
        .await
        .map_err(|source| plan.query_error(source))?;
    let sql = format!(
        "SELECT {} FROM {}",
        keys.iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", "),
        quote_ident(plan.name)
    );
    let mut result = conn
        .exec_iter(sql, Params::Empty)
        .await
        .map_err(|source| plan.query_error(source))?;
    let mut rows = 0;
    while let Some(row) = result
        .next()
        .await
        .map_err(|source| plan.query_error(source))?
    {
        on_key(row.unwrap());
        rows += 1;
    }
    Ok(rows)
}

/// `etl reconcile`: the rows of these keys (values as [`scan_keys`] gave them), read and
/// staged exactly as [`extract_table`] reads and stages a window, in queries of at most
/// [`KEYS_PER_QUERY`] keys.
pub async fn extract_by_keys(
    conn: &mut Conn,
    table: &TableSpec,
    keys: &[Vec<Value>],
    batch_rows: usize,
    mut on_batch: impl FnMut(RecordBatch) -> anyhow::Result<()>,
) -> Result<MatomoStats, MatomoError> {
    let plan = ReadPlan::new(table)?;
    let key_columns = plan.key_columns(table)?;
    let source_types = plan.check_source_columns(conn, table).await?;
    let (select, _) = plan.window_query(None, &source_types)?;
    conn.query_drop("SET NAMES utf8mb4, time_zone = '+00:00'")
        .await
        .map_err(|source| plan.query_error(source))?;
    let quoted: Vec<String> = key_columns.iter().map(|c| quote_ident(c)).collect();
    let (lhs, one) = match quoted.as_slice() {
        [single] => (single.clone(), "?".to_string()),
        several => (
            format!("({})", several.join(", ")),
            format!("({})", vec!["?"; several.len()].join(", ")),
        ),
    };
    let mut total = MatomoStats {
        rows: 0,
        max_watermark: None,
        zero_dates: 0,
        invalid_dates: 0,
    };
    for chunk in keys.chunks(KEYS_PER_QUERY) {
        let sql = format!(
            "{select} WHERE {lhs} IN ({})",
            vec![one.as_str(); chunk.len()].join(", ")
        );
        let params = Params::Positional(chunk.iter().flatten().cloned().collect());
        let mut result = conn
            .exec_iter(sql, params)
            .await
            .map_err(|source| plan.query_error(source))?;
        let staged = plan.staged_columns(result.columns().as_deref().unwrap_or_default())?;
        let stats = plan
            .stream_rows(&mut result, &staged, batch_rows, &mut on_batch)
            .await?;
        total.rows += stats.rows;
        total.zero_dates += stats.zero_dates;
        total.invalid_dates += stats.invalid_dates;
    }
    Ok(total)
}

/// What `extract_table` reads of one table, resolved from its spec.
struct ReadPlan<'a> {
    /// The MariaDB table.
    name: &'a str,
    /// Each MariaDB column once, in config order, even when two target columns read it.
    columns: Vec<&'a str>,
    /// The MariaDB column whose values start the next window.
    watermark: Option<&'a str>,
    /// Positions in `columns` of the primary key's columns, to name a row in errors.
    key_indexes: Vec<usize>,
}

impl<'a> ReadPlan<'a> {
    fn new(table: &'a TableSpec) -> Result<ReadPlan<'a>, MatomoError> {
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
        let mut columns: Vec<&str> = Vec::new();
        for column in table.loaded_columns() {
            if let ColumnSource::Field(field) = &column.source {
                if !columns.contains(&field.as_str()) {
                    columns.push(field);
                }
            }
        }
        // The columns templates name, after the others.
        for field in table.loaded_columns().flat_map(|c| c.text_sources()) {
            if !columns.contains(&field) {
                columns.push(field);
            }
        }
        let source_name = |target: &str| match table.column(target).map(|c| &c.source) {
            Some(ColumnSource::Field(field)) => Some(field.as_str()),
            _ => None,
        };
        let watermark = match &table.watermark {
            Watermark::Column(col) => {
                Some(source_name(col).ok_or_else(|| MatomoError::Watermark {
                    table: name.to_string(),
                    message: format!("watermark column `{col}` is not read from a MariaDB column"),
                })?)
            }
            Watermark::None => None,
            Watermark::CreatedUpdated => {
                return Err(MatomoError::Watermark {
                    table: name.to_string(),
                    message: "a Matomo table's watermark is one of its columns".into(),
                })
            }
        };
        let key_indexes = table
            .primary_key
            .iter()
            .filter_map(|k| source_name(k))
            .filter_map(|k| columns.iter().position(|c| *c == k))
            .collect();
        Ok(ReadPlan {
            name,
            columns,
            watermark,
            key_indexes,
        })
    }

    /// The MariaDB columns of the table's upsert key, in key order.
    fn key_columns(&self, table: &'a TableSpec) -> Result<Vec<&'a str>, MatomoError> {
        table
            .conflict_key
            .iter()
            .map(|k| match table.column(k).map(|c| &c.source) {
                Some(ColumnSource::Field(field)) => Ok(field.as_str()),
                _ => Err(MatomoError::Watermark {
                    table: self.name.to_string(),
                    message: format!("key column `{k}` is not read from a MariaDB column"),
                }),
            })
            .collect()
    }

    fn query_error(&self, source: mysql_async::Error) -> MatomoError {
        MatomoError::Query {
            table: self.name.to_string(),
            source,
        }
    }

    fn watermark_error(&self, message: String) -> MatomoError {
        MatomoError::Watermark {
            table: self.name.to_string(),
            message,
        }
    }

    /// The table's `(column, data type)`s; every column the config reads must be there.
    async fn check_source_columns(
        &self,
        conn: &mut Conn,
        table: &TableSpec,
    ) -> Result<Vec<(String, String)>, MatomoError> {
        let source_types = source_columns(conn, self.name)
            .await
            .map_err(|source| self.query_error(source))?;
        if source_types.is_empty() {
            return Err(MatomoError::TableNotFound {
                table: self.name.to_string(),
            });
        }
        let missing: Vec<String> = self
            .columns
            .iter()
            .filter(|c| type_of(&source_types, c).is_none())
            .map(|c| c.to_string())
            .collect();
        if !missing.is_empty() {
            return Err(MatomoError::MissingColumns {
                table: self.name.to_string(),
                config: table.file.display().to_string(),
                columns: missing,
            });
        }
        Ok(source_types)
    }

    /// The SELECT of the window starting at `since` (inclusive), and its parameter.
    fn window_query(
        &self,
        since: Option<&WatermarkValue>,
        source_types: &[(String, String)],
    ) -> Result<(String, Params), MatomoError> {
        let mut sql = format!(
            "SELECT {} FROM {}",
            self.columns
                .iter()
                .map(|c| quote_ident(c))
                .collect::<Vec<_>>()
                .join(", "),
            quote_ident(self.name)
        );
        let params = match (since, self.watermark) {
            (None, _) => Params::Empty,
            (Some(since), Some(wm)) => {
                check_watermark_kind(since, type_of(source_types, wm).unwrap_or_default())
                    .map_err(|message| {
                        self.watermark_error(format!("watermark `{wm}`: {message}"))
                    })?;
                let value = since.to_param().ok_or_else(|| {
                    self.watermark_error(format!(
                        "watermark value {since} is not a MariaDB integer"
                    ))
                })?;
                sql.push_str(&format!(" WHERE {} >= ?", quote_ident(wm)));
                Params::Positional(vec![value])
            }
            (Some(_), None) => {
                return Err(self.watermark_error(
                    "a window was asked for but the table has no watermark column".into(),
                ))
            }
        };
        Ok((sql, params))
    }

    /// The Arrow type of each result column (from its metadata) and the staged schema: those
    /// columns, each date column followed by its `__raw` companion.
    fn staged_columns(&self, columns: &[Column]) -> Result<StagedColumns, MatomoError> {
        let mut types = Vec::with_capacity(columns.len());
        let mut fields = Vec::with_capacity(columns.len());
        for column in columns {
            let meta = ColumnMeta::of(column);
            let data_type = arrow_type(&meta).ok_or_else(|| MatomoError::UnsupportedType {
                table: self.name.to_string(),
                column: column.name_str().into_owned(),
                type_name: format!("{:?} (flags {:?})", meta.column_type, meta.flags),
            })?;
            fields.push(Field::new(column.name_str(), data_type.clone(), true));
            if has_raw_companion(&data_type) {
                let raw = format!("{}{RAW_SUFFIX}", column.name_str());
                fields.push(Field::new(raw, DataType::Utf8, true));
            }
            types.push(data_type);
        }
        Ok(StagedColumns {
            types,
            schema: Arc::new(Schema::new(fields)),
        })
    }

    /// Reads every row of the result into batches handed to `on_batch`.
    async fn stream_rows(
        &self,
        result: &mut QueryResult<'_, 'static, BinaryProtocol>,
        staged: &StagedColumns,
        batch_rows: usize,
        mut on_batch: impl FnMut(RecordBatch) -> anyhow::Result<()>,
    ) -> Result<MatomoStats, MatomoError> {
        let schema = &staged.schema;
        let watermark_index = self
            .watermark
            .and_then(|wm| self.columns.iter().position(|c| *c == wm));
        let batch_rows = batch_rows.max(1);
        let mut batch = BatchBuilder::new(&staged.types, batch_rows);
        let mut warned = Warned::default();
        let mut stats = MatomoStats {
            rows: 0,
            max_watermark: None,
            zero_dates: 0,
            invalid_dates: 0,
        };
        let mut batches = 0u64;
        while let Some(row) = result
            .next()
            .await
            .map_err(|source| self.query_error(source))?
        {
            self.append_row(&mut batch, &row, &mut stats, &mut warned)?;
            if let Some(seen) = watermark_index.and_then(|i| watermark_of(row.as_ref(i)?)) {
                if stats
                    .max_watermark
                    .as_ref()
                    .is_none_or(|max| seen_is_higher(&seen, max))
                {
                    stats.max_watermark = Some(seen);
                }
            }
            stats.rows += 1;
            batch.rows += 1;
            if batch.rows >= batch_rows || batch.bytes >= MAX_BATCH_BYTES {
                flush(&mut batch, schema, self.name, &mut on_batch)?;
                batches += 1;
            }
        }
        if batch.rows > 0 || batches == 0 {
            flush(&mut batch, schema, self.name, &mut on_batch)?;
        }
        Ok(stats)
    }

    /// Appends one row's values to the batch; a value that does not convert stops the table
    /// with an error naming the column and the row's key.
    fn append_row(
        &self,
        batch: &mut BatchBuilder,
        row: &Row,
        stats: &mut MatomoStats,
        warned: &mut Warned,
    ) -> Result<(), MatomoError> {
        for (i, (data_type, builder)) in batch.columns.iter_mut().enumerate() {
            let value = row.as_ref(i).unwrap_or(&Value::NULL);
            batch.bytes += ColumnBuilder::bytes_of(value);
            let column = self.columns.get(i).copied().unwrap_or_default();
            match builder.append(value) {
                Ok(Appended::Value) => {}
                Ok(Appended::ZeroDate) => {
                    stats.zero_dates += 1;
                    if warned.zero_dates.insert(i) {
                        tracing::warn!(
                            table = self.name,
                            column,
                            "zero dates (0000-00-00) in this column become NULL"
                        );
                    }
                }
                Ok(Appended::InvalidDate) => {
                    stats.invalid_dates += 1;
                    if warned.invalid_dates.insert(i) {
                        tracing::warn!(
                            table = self.name,
                            column,
                            key = row_key(row, &self.key_indexes, &self.columns, stats.rows),
                            "dates that name no day (like 2024-02-30) in this column: staged as \
                             text in `{column}{RAW_SUFFIX}`, their rows are rejected by transform"
                        );
                    }
                }
                Err(problem) => {
                    return Err(MatomoError::Value {
                        table: self.name.to_string(),
                        column: column.to_string(),
                        arrow_type: data_type.to_string(),
                        key: row_key(row, &self.key_indexes, &self.columns, stats.rows),
                        problem: Box::new(problem),
                    })
                }
            }
        }
        Ok(())
    }
}

/// What a result set is staged as.
struct StagedColumns {
    /// The Arrow type of each result column, in result order.
    types: Vec<DataType>,
    /// The staged schema: those columns, and a `__raw` companion after each date column.
    schema: SchemaRef,
}

/// Whether a staged column of this type has a `<column>__raw` companion: dates, whose
/// invalid values are kept as text there.
fn has_raw_companion(data_type: &DataType) -> bool {
    matches!(data_type, DataType::Timestamp(..) | DataType::Date32)
}

/// Columns (by result position) whose zero or invalid dates were already reported: one
/// warning per column, not per row.
#[derive(Default)]
struct Warned {
    zero_dates: std::collections::BTreeSet<usize>,
    invalid_dates: std::collections::BTreeSet<usize>,
}

/// The data type of `column` in `source_columns`' answer (MariaDB names ignore case).
fn type_of<'t>(source_types: &'t [(String, String)], column: &str) -> Option<&'t str> {
    source_types
        .iter()
        .find(|(c, _)| c.eq_ignore_ascii_case(column))
        .map(|(_, t)| t.as_str())
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
        Value::Date(..) => match mariadb_date(value)? {
            MariaDate::Valid(t) => Some(WatermarkValue::Timestamp(t)),
            MariaDate::Zero | MariaDate::Invalid => None,
        },
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
        return format!("#{}", rows_before.saturating_add(1));
    }
    key_indexes
        .iter()
        .map(|&i| {
            let value = row.as_ref(i).map_or_else(|| "?".into(), |v| v.as_sql(true));
            format!("{}={value}", columns.get(i).copied().unwrap_or("?"))
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

/// The builders of one batch, one per result column, with its Arrow type.
struct BatchBuilder {
    columns: Vec<(DataType, ColumnBuilder)>,
    rows: usize,
    /// Text and binary bytes appended since the last flush.
    bytes: usize,
}

impl BatchBuilder {
    fn new(types: &[DataType], capacity: usize) -> BatchBuilder {
        BatchBuilder {
            columns: types
                .iter()
                .map(|t| (t.clone(), ColumnBuilder::new(t, capacity)))
                .collect(),
            rows: 0,
            bytes: 0,
        }
    }

    fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch, ArrowError> {
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
        for (_, builder) in &mut self.columns {
            builder.finish_into(&mut arrays);
        }
        self.rows = 0;
        self.bytes = 0;
        RecordBatch::try_new(schema.clone(), arrays)
    }
}

/// What `ColumnBuilder::append` did with a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Appended {
    Value,
    /// A `0000-00-00` date, appended as NULL.
    ZeroDate,
    /// A date that names no day, appended as NULL with its text in the `__raw` companion.
    InvalidDate,
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
    /// With the `__raw` companion's builder.
    Timestamp(TimestampMicrosecondBuilder, StringBuilder),
    Date32(Date32Builder, StringBuilder),
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
                StringBuilder::new(),
            ),
            DataType::Date32 => {
                ColumnBuilder::Date32(Date32Builder::with_capacity(n), StringBuilder::new())
            }
            DataType::Time64(_) => {
                ColumnBuilder::Time64(Time64MicrosecondBuilder::with_capacity(n))
            }
            DataType::Binary => ColumnBuilder::Binary(BinaryBuilder::with_capacity(n, n * 16)),
            // Utf8, the only other type `arrow_type` gives.
            _ => ColumnBuilder::Utf8(StringBuilder::with_capacity(n, n * 16)),
        }
    }

    /// Appends the finished array (and the `__raw` companion's) to `arrays`.
    fn finish_into(&mut self, arrays: &mut Vec<ArrayRef>) {
        let array: ArrayRef = match self {
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
            ColumnBuilder::Timestamp(b, raw) => {
                arrays.push(Arc::new(b.finish()));
                Arc::new(raw.finish())
            }
            ColumnBuilder::Date32(b, raw) => {
                arrays.push(Arc::new(b.finish()));
                Arc::new(raw.finish())
            }
            ColumnBuilder::Time64(b) => Arc::new(b.finish()),
            ColumnBuilder::Utf8(b) => Arc::new(b.finish()),
            ColumnBuilder::Binary(b) => Arc::new(b.finish()),
        };
        arrays.push(array);
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
                    exact_decimal::<i128>(text, *scale).ok_or_else(|| out_of_range(value))?,
                ),
                other => return Err(unexpected(other)),
            },
            ColumnBuilder::Decimal256(b, scale) => match value {
                Value::NULL => b.append_null(),
                Value::Bytes(text) => b.append_value(
                    exact_decimal::<i256>(text, *scale).ok_or_else(|| out_of_range(value))?,
                ),
                other => return Err(unexpected(other)),
            },
            ColumnBuilder::Timestamp(b, raw) => {
                let (t, appended) = date_of(value)?;
                b.append_option(t.map(|t| t.and_utc().timestamp_micros()));
                raw.append_option(invalid_date_text(value, appended, true));
                return Ok(appended);
            }
            ColumnBuilder::Date32(b, raw) => {
                let (t, appended) = date_of(value)?;
                let days = t
                    .map(|t| days_since_epoch(t.date()).ok_or_else(|| out_of_range(value)))
                    .transpose()?;
                b.append_option(days);
                raw.append_option(invalid_date_text(value, appended, false));
                return Ok(appended);
            }
            ColumnBuilder::Time64(b) => match *value {
                Value::NULL => b.append_null(),
                Value::Time(negative, days, h, mi, s, us) => {
                    let micros = time_of_day(negative, days, h, mi, s, us)
                        .ok_or_else(|| ValueProblem::TimeOutOfDay(value.as_sql(true)))?;
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

/// What a `DATE`, `DATETIME` or `TIMESTAMP` value on the wire (`Value::Date`) means. The one
/// place that reads MariaDB's date fields: the column builders and the watermark go through
/// it (`date_value` is its inverse, for the window's parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MariaDate {
    /// `0000-00-00 00:00:00`, MariaDB's "no date".
    Zero,
    Valid(NaiveDateTime),
    /// Fields that name no instant: `2024-02-30` or `2024-00-10` (stored under a lax
    /// `sql_mode` such as `ALLOW_INVALID_DATES`), or a time of day out of range.
    Invalid,
}

/// `None` when `value` is not a date at all.
fn mariadb_date(value: &Value) -> Option<MariaDate> {
    let Value::Date(y, mo, d, h, mi, s, us) = *value else {
        return None;
    };
    if (y, mo, d, h, mi, s, us) == (0, 0, 0, 0, 0, 0, 0) {
        return Some(MariaDate::Zero);
    }
    let t = NaiveDate::from_ymd_opt(y.into(), mo.into(), d.into())
        .and_then(|date| date.and_hms_micro_opt(h.into(), mi.into(), s.into(), us));
    Some(t.map_or(MariaDate::Invalid, MariaDate::Valid))
}

/// The instant a date column's value holds (`None`: NULL) and how it is appended: zero and
/// invalid dates become NULL, reported as such.
fn date_of(value: &Value) -> Result<(Option<NaiveDateTime>, Appended), ValueProblem> {
    match (value, mariadb_date(value)) {
        (Value::NULL, _) => Ok((None, Appended::Value)),
        (_, Some(MariaDate::Valid(t))) => Ok((Some(t), Appended::Value)),
        (_, Some(MariaDate::Zero)) => Ok((None, Appended::ZeroDate)),
        (_, Some(MariaDate::Invalid)) => Ok((None, Appended::InvalidDate)),
        (other, None) => Err(unexpected(other)),
    }
}

/// The text MariaDB shows for an invalid date (`2024-02-30`, or `2024-02-30 10:00:00[.ffffff]`
/// when `with_time`), kept in the `__raw` companion; `None` for every other value.
fn invalid_date_text(value: &Value, appended: Appended, with_time: bool) -> Option<String> {
    let Value::Date(y, mo, d, h, mi, s, us) = *value else {
        return None;
    };
    if appended != Appended::InvalidDate {
        return None;
    }
    let mut text = format!("{y:04}-{mo:02}-{d:02}");
    if with_time {
        text.push_str(&format!(" {h:02}:{mi:02}:{s:02}"));
        if us > 0 {
            text.push_str(&format!(".{us:06}"));
        }
    }
    Some(text)
}

/// A `TIME` value as microseconds since midnight; `None` outside `[00:00:00, 24:00:00)`
/// (MariaDB's `TIME` spans ±838 hours; a hostile server could send any `days`).
fn time_of_day(negative: bool, days: u32, h: u8, mi: u8, s: u8, us: u32) -> Option<i64> {
    let seconds = ((i64::from(days) * 24 + i64::from(h)) * 60 + i64::from(mi)) * 60 + i64::from(s);
    let micros = seconds.checked_mul(1_000_000)?.checked_add(i64::from(us))?;
    let in_day = (0..MICROS_PER_DAY).contains(&micros) && !(negative && micros != 0);
    in_day.then_some(micros)
}

/// Arrow's `Date32`: days since 1970-01-01 (every MariaDB date fits).
fn days_since_epoch(date: NaiveDate) -> Option<i32> {
    i32::try_from(date.signed_duration_since(NaiveDate::default()).num_days()).ok()
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

/// A DECIMAL as MariaDB sends it (`-12.345600`), scaled to the column's scale exactly (the
/// column's declared scale always holds it: anything else is out of range).
fn exact_decimal<T: Accumulator>(text: &[u8], scale: u8) -> Option<T> {
    Decimal::parse(text)
        .ok()?
        .to_scaled::<T>(u32::from(scale), Rounding::Exact)
        .ok()
        .map(|s| s.value)
}

#[cfg(test)]
mod tests {
    //! Unit tests that need no server. The tests against the real MariaDB are in
    //! `tests/matomo_extract.rs`.

    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{
        Date32Type, Time64MicrosecondType, TimestampMicrosecondType, UInt64Type,
    };

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

    /// The arrays a builder finishes: one, or two for a date and its `__raw` companion.
    fn finish<const N: usize>(builder: &mut ColumnBuilder) -> [ArrayRef; N] {
        let mut arrays = Vec::new();
        builder.finish_into(&mut arrays);
        arrays.try_into().expect("number of arrays")
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
        let [array] = finish(&mut b);
        let times = array.as_primitive::<Time64MicrosecondType>();
        assert_eq!(times.values().as_ref(), &[86_399_999_999, 0]);
    }

    /// Zero dates become NULL; a date that names no day (`2024-02-30` under
    /// `ALLOW_INVALID_DATES`) stopped the whole extract with an error: now it is NULL with its
    /// text in the `__raw` companion, for transform to reject the row with.
    #[test]
    fn zero_dates_become_null_and_invalid_dates_keep_their_text() {
        let mut b = builder_for(utc_micros());
        for (value, appended) in [
            (Value::Date(0, 0, 0, 0, 0, 0, 0), Appended::ZeroDate),
            (Value::Date(2024, 2, 29, 23, 59, 59, 5), Appended::Value),
            (Value::Date(2024, 2, 30, 10, 0, 0, 0), Appended::InvalidDate),
            (Value::Date(2024, 0, 0, 0, 0, 0, 250), Appended::InvalidDate),
            (Value::NULL, Appended::Value),
        ] {
            assert_eq!(b.append(&value), Ok(appended), "{value:?}");
        }
        assert!(matches!(
            b.append(&Value::Bytes(b"2024-02-30".to_vec())),
            Err(ValueProblem::Unexpected(_))
        ));
        let mut d = builder_for(DataType::Date32);
        for (value, appended) in [
            (Value::Date(0, 0, 0, 0, 0, 0, 0), Appended::ZeroDate),
            (Value::Date(1970, 1, 2, 0, 0, 0, 0), Appended::Value),
            (Value::Date(2023, 2, 29, 0, 0, 0, 0), Appended::InvalidDate),
        ] {
            assert_eq!(d.append(&value), Ok(appended), "{value:?}");
        }
        let [ts, ts_raw] = finish(&mut b);
        let ts = ts.as_primitive::<TimestampMicrosecondType>();
        assert_eq!(
            (0..5).map(|i| ts.is_null(i)).collect::<Vec<_>>(),
            [true, false, true, true, true]
        );
        assert_eq!(ts.value(1), 1_709_251_199_000_005);
        assert_eq!(
            ts_raw.as_string::<i32>().iter().collect::<Vec<_>>(),
            [
                None,
                None,
                Some("2024-02-30 10:00:00"),
                Some("2024-00-00 00:00:00.000250"),
                None
            ]
        );
        let [dates, dates_raw] = finish(&mut d);
        assert_eq!(dates.as_primitive::<Date32Type>().value(1), 1);
        assert!(dates.is_null(0) && dates.is_null(2));
        assert_eq!(
            dates_raw.as_string::<i32>().iter().collect::<Vec<_>>(),
            [None, None, Some("2023-02-29")]
        );
    }

    /// Every path that reads a `Value::Date` (timestamp and date builders, watermark) goes
    /// through `mariadb_date`, so they agree on what is zero, valid and invalid.
    #[test]
    fn one_rule_reads_every_mariadb_date() {
        let t = |y, mo, d, h, mi, s, us| {
            NaiveDate::from_ymd_opt(y, mo, d)
                .and_then(|date| date.and_hms_micro_opt(h, mi, s, us))
                .unwrap()
        };
        for (value, expected) in [
            (Value::Date(0, 0, 0, 0, 0, 0, 0), Some(MariaDate::Zero)),
            (
                Value::Date(2024, 2, 29, 23, 59, 59, 5),
                Some(MariaDate::Valid(t(2024, 2, 29, 23, 59, 59, 5))),
            ),
            (
                Value::Date(1000, 1, 1, 0, 0, 0, 0),
                Some(MariaDate::Valid(t(1000, 1, 1, 0, 0, 0, 0))),
            ),
            (
                Value::Date(2024, 2, 30, 0, 0, 0, 0),
                Some(MariaDate::Invalid),
            ),
            (
                Value::Date(2023, 2, 29, 0, 0, 0, 0),
                Some(MariaDate::Invalid),
            ),
            (
                Value::Date(2024, 0, 10, 0, 0, 0, 0),
                Some(MariaDate::Invalid),
            ),
            (
                Value::Date(2024, 4, 0, 0, 0, 0, 0),
                Some(MariaDate::Invalid),
            ),
            (Value::Date(0, 0, 0, 10, 0, 0, 0), Some(MariaDate::Invalid)),
            (
                Value::Date(2024, 1, 1, 24, 0, 0, 0),
                Some(MariaDate::Invalid),
            ),
            (
                Value::Date(2024, 13, 1, 0, 0, 0, 0),
                Some(MariaDate::Invalid),
            ),
            (
                Value::Date(
                    u16::MAX,
                    u8::MAX,
                    u8::MAX,
                    u8::MAX,
                    u8::MAX,
                    u8::MAX,
                    u32::MAX,
                ),
                Some(MariaDate::Invalid),
            ),
            (Value::NULL, None),
            (Value::Bytes(b"2024-01-01".to_vec()), None),
        ] {
            assert_eq!(mariadb_date(&value), expected, "{value:?}");
            let watermark = match expected {
                Some(MariaDate::Valid(t)) => Some(WatermarkValue::Timestamp(t)),
                _ => None,
            };
            assert_eq!(watermark_of(&value), watermark, "{value:?}");
        }
        // The window's parameter is the inverse.
        let at = t(2024, 3, 1, 12, 0, 0, 250);
        assert_eq!(mariadb_date(&date_value(&at)), Some(MariaDate::Valid(at)));
    }

    /// A `TIME` of u32::MAX days overflowed i64 microseconds (a panic in debug builds).
    #[test]
    fn time_of_day_arithmetic_never_overflows() {
        assert_eq!(time_of_day(false, u32::MAX, 255, 255, 255, u32::MAX), None);
        assert_eq!(time_of_day(true, u32::MAX, 0, 0, 0, 0), None);
        assert_eq!(time_of_day(false, 0, 0, 0, 0, 1), Some(1));
    }

    #[test]
    fn integers_keep_their_full_unsigned_range() {
        let mut u64s = builder_for(DataType::UInt64);
        u64s.append(&Value::UInt(u64::MAX)).unwrap();
        u64s.append(&Value::Int(7)).unwrap();
        // BIT(12) b'101000000001'
        u64s.append(&Value::Bytes(vec![0x0a, 0x01])).unwrap();
        assert_eq!(
            finish::<1>(&mut u64s)[0]
                .as_primitive::<UInt64Type>()
                .values()
                .as_ref(),
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
        assert_eq!(exact_decimal::<i128>(b"-12.345600", 6), Some(-12_345_600));
        assert_eq!(exact_decimal::<i128>(b"48.856613", 6), Some(48_856_613));
        assert_eq!(exact_decimal::<i128>(b"7.5", 3), Some(7_500));
        assert_eq!(
            exact_decimal::<i128>(b"18446744073709551615", 0),
            Some(18_446_744_073_709_551_615)
        );
        // More decimals than the scale is out of range, never a rounding.
        assert_eq!(exact_decimal::<i128>(b"1.2345", 2), None);
        // The crate's one decimal parser reads exponents (MariaDB never sends them).
        assert_eq!(exact_decimal::<i128>(b"1e5", 0), Some(100_000));
        assert_eq!(exact_decimal::<i128>(b"", 0), None);
        assert_eq!(exact_decimal::<i128>(b"12a", 0), None);
        let big = format!("-{}.{}", "9".repeat(35), "1".repeat(30));
        let expected = i256::from_string(&format!("-{}{}", "9".repeat(35), "1".repeat(30)));
        assert_eq!(exact_decimal::<i256>(big.as_bytes(), 30), expected);
    }

    #[test]
    fn identifiers_are_backtick_quoted() {
        assert_eq!(quote_ident("matomo_log_visit"), "`matomo_log_visit`");
        assert_eq!(quote_ident("we`ird"), "`we``ird`");
    }
}
