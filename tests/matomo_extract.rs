//! Matomo extract against the real test MariaDB: every column type as the server sends it,
//! the fixture tables' exact values, the inclusive window, and the errors that name table,
//! column and row. Each test gets a database of its own, so tests run in parallel.
//!
//! Needs the test services (`make test`, or `scripts/with-services.sh cargo test`): without
//! them every test fails with one message saying so (CI must not pass without a server).

mod util;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use arrow::array::{Array, AsArray};
use arrow::datatypes::{
    DataType, Decimal128Type, Decimal256Type, Float32Type, Float64Type, Int16Type, Int32Type,
    Int64Type, Int8Type, Time64MicrosecondType, TimestampMicrosecondType, UInt16Type, UInt32Type,
    UInt64Type, UInt8Type,
};
use arrow::record_batch::RecordBatch;
use chrono::{NaiveDate, NaiveDateTime};
use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use etl::config::{ColumnSource, ColumnSpec, Config, Source, SqlType, TableSpec, Watermark};
use etl::extract::matomo::{
    connect, extract_table, MatomoError, MatomoStats, ValueProblem, WatermarkValue,
};
use etl::settings::MatomoSettings;

/// A database of its own for one test, so tests run in parallel.
struct TestDb {
    name: String,
    conn: Conn,
}

static NEXT_DB: AtomicUsize = AtomicUsize::new(0);

fn test_settings() -> MatomoSettings {
    util::require_services(util::MARIADB_VARS);
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
        conn.query_drop(include_str!("fixtures/matomo/schema.sql"))
            .await
            .unwrap();
        if rows {
            conn.query_drop(include_str!("fixtures/matomo/rows.sql"))
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
    visit_last_action_time: Timestamp(µs, \"UTC\");visit_last_action_time__raw: Utf8;\
    config_id: Binary;location_ip: Binary;profilable: Int8;user_id: Utf8;\
    visit_first_action_time: Timestamp(µs, \"UTC\");visit_first_action_time__raw: Utf8;\
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
    assert_eq!(stats.invalid_dates, 0);
    for raw in [
        "visit_last_action_time__raw",
        "visit_first_action_time__raw",
    ] {
        assert_eq!(
            column(&batch, raw).null_count(),
            3,
            "{raw}: every date is valid"
        );
    }

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
    let last = column(&batch, "visit_last_action_time").as_primitive::<TimestampMicrosecondType>();
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
        62 - 8,
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

    // 40 columns, and server_time__raw.
    assert_eq!(actions.num_columns(), 42);
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
        (1, 0, 62)
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
        .query_drop(
            "ALTER TABLE matomo_log_visit DROP COLUMN config_os, DROP COLUMN custom_dimension_5",
        )
        .await
        .unwrap();
    let mut visits = spec("matomo_log_visit");
    visits.columns.push(ColumnSpec {
        name: "campaign_name".into(),
        sql_type: SqlType::Text,
        nullable: true,
        foreign_key: None,
        source: ColumnSource::Field("campaign_name".into()),
        expression: None,
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

/// A table of `columns` (space-separated) read from MariaDB table `source`, keyed by `id`.
fn table_reading(source: &str, columns: &str, watermark: &str) -> TableSpec {
    let mut table = spec("matomo_log_action");
    table.source = Source::Matomo {
        table: source.into(),
    };
    table.primary_key = vec!["id".into()];
    table.watermark = Watermark::Column(watermark.into());
    table.columns = columns
        .split(' ')
        .map(|n| ColumnSpec {
            name: n.into(),
            sql_type: SqlType::Text,
            nullable: true,
            foreign_key: None,
            source: ColumnSource::Field(n.into()),
            expression: None,
        })
        .collect();
    table
}

/// A date that names no day (`2024-02-30`, stored under `ALLOW_INVALID_DATES`; `2024-04-00`
/// without `NO_ZERO_IN_DATE`) stopped the whole extract with "is not a valid date". The server
/// sends such a date's fields as they are; the row is now staged with NULL and the date's
/// text in `<column>__raw`, and the extract goes on.
#[tokio::test]
async fn invalid_dates_are_staged_as_null_with_their_text_and_the_extract_goes_on() {
    let mut db = TestDb::new(false).await;
    db.conn
        .query_drop(
            "CREATE TABLE dates (
               id INT NOT NULL PRIMARY KEY, d DATE, dt DATETIME(6), ts TIMESTAMP NULL
             );
             SET SESSION sql_mode = 'ALLOW_INVALID_DATES';
             INSERT INTO dates VALUES
               (1, '2024-02-30', '2024-02-30 10:00:00.5', '2024-02-30 10:00:00'),
               (2, '2024-03-01', '2024-03-01 12:00:00', '2024-03-01 12:00:00');
             SET SESSION sql_mode = '';
             INSERT INTO dates VALUES
               (3, '2024-04-00', '2024-00-10 00:00:00', NULL),
               (4, '0000-00-00', '0000-00-00 00:00:00', NULL);
             SET SESSION sql_mode = DEFAULT",
        )
        .await
        .unwrap();
    let (batch, _, stats) = db
        .extract(&table_reading("dates", "id d dt ts", "dt"), None, 10)
        .await
        .unwrap();
    db.drop().await;

    assert_eq!(stats.rows, 4);
    assert_eq!(stats.invalid_dates, 4, "d and dt of rows 1 and 3");
    // A TIMESTAMP cannot hold 2024-02-30: MariaDB stored the zero date (row 1), and row 4.
    assert_eq!(stats.zero_dates, 3);
    // Only valid dates count for the watermark.
    assert_eq!(stats.max_watermark, Some(at("2024-03-01 12:00:00")));
    let nulls = |name: &str| {
        let array = column(&batch, name);
        (0..4).map(|i| array.is_null(i)).collect::<Vec<_>>()
    };
    assert_eq!(nulls("d"), [true, false, true, true]);
    assert_eq!(nulls("dt"), [true, false, true, true]);
    assert_eq!(nulls("ts"), [true, false, true, true]);
    assert_eq!(
        texts(&batch, "d__raw"),
        [
            Some("2024-02-30".into()),
            None,
            Some("2024-04-00".into()),
            None
        ]
    );
    assert_eq!(
        texts(&batch, "dt__raw"),
        [
            Some("2024-02-30 10:00:00.500000".into()),
            None,
            Some("2024-00-10 00:00:00".into()),
            None
        ]
    );
    assert_eq!(texts(&batch, "ts__raw"), [None, None, None, None]);
    assert_eq!(
        column(&batch, "dt")
            .as_primitive::<TimestampMicrosecondType>()
            .value(1),
        micros("2024-03-01 12:00:00")
    );
}

#[tokio::test]
async fn time_outside_a_day_names_table_column_and_key() {
    let mut db = TestDb::new(true).await;
    db.conn
        .query_drop("UPDATE matomo_log_visit SET visitor_localtime = '25:00:00' WHERE idvisit = 2")
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
            expression: None,
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
            "dt__raw Utf8",
            "ts Timestamp(µs, \"UTC\")",
            "ts__raw Utf8",
            "d Date32",
            "d__raw Utf8",
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
