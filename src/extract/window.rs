//! Where each table's extract window starts.
//!
//! The watermark is the target's `MAX(GREATEST(created_at, updated_at))` (or `MAX(col)` for a
//! Matomo watermark column) when PostgreSQL is reachable, else what the last loaded run
//! recorded. `--since` and `GLOBAL_DATE_THRESHOLD` move the start back: the earliest date
//! wins, as in the Python tool. `--full` and `force_reimport` take everything. The window is
//! inclusive: documents at exactly the watermark are extracted again (the load's upsert makes
//! that harmless, and nothing written during the previous extract is missed).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};

use super::ExtractOptions;
use crate::config::ddl::ident;
use crate::config::{SqlType, TableSpec, Watermark};
use crate::settings::PostgresSettings;
use crate::staging::{self, Stage, WatermarkValue};

/// The start of one table's window; `since == None` means everything.
#[derive(Debug, Clone, PartialEq)]
pub struct Window {
    pub since: Option<WatermarkValue>,
    /// Where the start comes from, for the manifest and the log.
    pub reason: String,
}

impl Window {
    fn all(reason: impl Into<String>) -> Window {
        Window {
            since: None,
            reason: reason.into(),
        }
    }

    /// The widest of several windows (a collection read for several tables).
    pub fn earliest<'a>(windows: impl Iterator<Item = &'a Window>) -> Window {
        let mut result: Option<Window> = None;
        for w in windows {
            result = Some(match result {
                None => w.clone(),
                Some(r) => match (&r.since, &w.since) {
                    (None, _) => r,
                    (_, None) => w.clone(),
                    (Some(a), Some(b)) => {
                        if b.timestamp() < a.timestamp() {
                            w.clone()
                        } else {
                            r
                        }
                    }
                },
            });
        }
        result.unwrap_or_else(|| Window::all("no table"))
    }

    /// The start as a UTC instant (MongoDB windows).
    pub fn since_utc(&self) -> Option<DateTime<Utc>> {
        self.since
            .as_ref()
            .and_then(WatermarkValue::timestamp)
            .map(|t| t.and_utc())
    }

    /// The bound of a Matomo `WHERE wm >= ?`.
    pub fn matomo(&self) -> Option<&WatermarkValue> {
        self.since.as_ref()
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.since {
            Some(s) => write!(f, ">= {s} ({})", self.reason),
            None => write!(f, "all ({})", self.reason),
        }
    }
}

/// `GLOBAL_DATE_THRESHOLD`'s value when set and well-formed (`YYYY-MM-DD`); a malformed
/// value is a warning and is ignored.
pub fn global_threshold(raw: Option<&str>) -> Option<NaiveDate> {
    let raw = raw.map(str::trim).filter(|v| !v.is_empty())?;
    let valid_shape = raw.len() == 10 && raw.as_bytes()[4] == b'-' && raw.as_bytes()[7] == b'-';
    match NaiveDate::parse_from_str(raw, "%Y-%m-%d") {
        Ok(d) if valid_shape => {
            tracing::info!(threshold = %d, "global date threshold active");
            Some(d)
        }
        _ => {
            tracing::warn!(
                value = raw,
                "GLOBAL_DATE_THRESHOLD is not YYYY-MM-DD: ignored"
            );
            None
        }
    }
}

/// The window of every selected table.
pub async fn windows(
    staging_dir: &Path,
    tables: &[&TableSpec],
    opts: &ExtractOptions,
) -> HashMap<String, Window> {
    let threshold = opts.threshold;
    let need_watermarks = !opts.full
        && tables
            .iter()
            .any(|t| !t.force_reimport && t.watermark != Watermark::None);
    let target = match (&opts.target, need_watermarks) {
        (Some(settings), true) => target_watermarks(settings, tables).await,
        (None, true) => {
            tracing::info!(
                "no PostgreSQL target configured: windows start at the recorded watermarks"
            );
            None
        }
        (_, false) => None,
    };
    let recorded = if need_watermarks && target.is_none() {
        recorded_watermarks(staging_dir)
    } else {
        HashMap::new()
    };
    tables
        .iter()
        .map(|t| {
            let w = table_window(t, opts, threshold, target.as_ref(), &recorded);
            (t.name.clone(), w)
        })
        .collect()
}

fn table_window(
    t: &TableSpec,
    opts: &ExtractOptions,
    threshold: Option<NaiveDate>,
    target: Option<&HashMap<String, Option<WatermarkValue>>>,
    recorded: &HashMap<String, WatermarkValue>,
) -> Window {
    if opts.full {
        return Window::all("--full");
    }
    if t.force_reimport {
        return Window::all("force_reimport");
    }
    if t.watermark == Watermark::None {
        return Window::all("no watermark column");
    }
    let (watermark, source) = match target {
        Some(values) => (values.get(&t.name).cloned().flatten(), "target watermark"),
        None => (
            recorded.get(&t.name).cloned(),
            "watermark recorded by the last loaded run",
        ),
    };
    let mut window = match watermark {
        Some(v) => Window {
            since: Some(v),
            reason: source.into(),
        },
        None => Window::all("first run"),
    };
    for (date, name) in [
        (opts.since, "--since"),
        (threshold, "GLOBAL_DATE_THRESHOLD"),
    ] {
        let Some(date) = date else { continue };
        let start = date.and_hms_opt(0, 0, 0).unwrap_or_default();
        let earlier = match &window.since {
            Some(WatermarkValue::Timestamp(t)) => start < *t,
            // An integer watermark (log_action) has no date to move back.
            Some(WatermarkValue::Int(_)) => false,
            None => window.reason == "first run",
        };
        if earlier {
            window = Window {
                since: Some(WatermarkValue::Timestamp(start)),
                reason: format!("{name} (earlier than {})", window.reason),
            };
        }
    }
    window
}

/// Per table, the target's watermark (`None` for an empty or missing table); `None` overall
/// when PostgreSQL is not reachable.
async fn target_watermarks(
    settings: &PostgresSettings,
    tables: &[&TableSpec],
) -> Option<HashMap<String, Option<WatermarkValue>>> {
    let connect = tokio::time::timeout(std::time::Duration::from_secs(10), settings.connect());
    let client = match connect.await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => {
            tracing::warn!(target = %settings, "PostgreSQL not reachable ({e}): windows start at the recorded watermarks");
            return None;
        }
        Err(_) => {
            tracing::warn!(target = %settings, "PostgreSQL did not answer: windows start at the recorded watermarks");
            return None;
        }
    };
    let mut out = HashMap::new();
    for t in tables {
        let Some(query) = WatermarkQuery::of(t) else {
            continue;
        };
        let value = match client.query_one(&query.sql, &[]).await {
            Ok(row) => query.value(&row),
            // A table that does not exist yet: first run.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => None,
            Err(e) => {
                tracing::warn!(table = %t.name, "cannot read the watermark ({e}): taking everything");
                None
            }
        };
        out.insert(t.name.clone(), value);
    }
    Some(out)
}

/// How to read a table's watermark from the target, typed by its column's declared type.
struct WatermarkQuery {
    sql: String,
    integer: bool,
}

impl WatermarkQuery {
    fn of(t: &TableSpec) -> Option<WatermarkQuery> {
        let table = ident(&t.name);
        let (expr, ty) = match &t.watermark {
            Watermark::CreatedUpdated => (
                "GREATEST(created_at, updated_at)".to_string(),
                SqlType::Timestamp,
            ),
            Watermark::Column(c) => (ident(c), t.column(c)?.sql_type),
            Watermark::None => return None,
        };
        let (select, integer) = match ty {
            SqlType::TimestampTz => (format!("MAX({expr}) AT TIME ZONE 'UTC'"), false),
            SqlType::Timestamp | SqlType::Date => (format!("MAX({expr})::timestamp"), false),
            // Integers of any width (NUMERIC(20,0) holds BIGINT UNSIGNED) as exact text.
            _ => (format!("MAX({expr})::text"), true),
        };
        Some(WatermarkQuery {
            sql: format!("SELECT {select} FROM {table}"),
            integer,
        })
    }

    fn value(&self, row: &tokio_postgres::Row) -> Option<WatermarkValue> {
        if self.integer {
            let text: Option<String> = row.try_get(0).ok()?;
            text?.parse::<i128>().ok().map(WatermarkValue::Int)
        } else {
            let time: Option<NaiveDateTime> = row.try_get(0).ok()?;
            time.map(WatermarkValue::Timestamp)
        }
    }
}

/// Watermarks recorded in the load manifest of the newest run that was loaded.
fn recorded_watermarks(staging_dir: &Path) -> HashMap<String, WatermarkValue> {
    let Ok(Some(run)) = staging::latest_run(staging_dir, Stage::Load) else {
        return HashMap::new();
    };
    match run.manifest(Stage::Load) {
        Ok(manifest) => manifest
            .entries
            .into_iter()
            .flat_map(|e| e.watermarks)
            .collect(),
        Err(e) => {
            tracing::warn!("no recorded watermarks: {e}");
            HashMap::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> ExtractOptions {
        ExtractOptions {
            mongo: None,
            matomo: None,
            matomo_api: None,
            postgres: None,
            target: None,
            tables: None,
            full: false,
            since: None,
            threshold: None,
            quiet: true,
            keep_documents: false,
        }
    }

    fn users() -> TableSpec {
        let config = crate::config::Config::load(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config"),
        )
        .unwrap();
        config.table("users").unwrap().clone()
    }

    fn ts(s: &str) -> WatermarkValue {
        WatermarkValue::Timestamp(NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S").unwrap())
    }

    #[test]
    fn earlier_date_wins_and_later_ones_do_not_narrow() {
        let t = users();
        let recorded: HashMap<String, WatermarkValue> =
            [("users".to_string(), ts("2024-03-15 10:30:00"))].into();
        let w = table_window(
            &t,
            &opts(),
            NaiveDate::from_ymd_opt(2024, 1, 1),
            None,
            &recorded,
        );
        assert_eq!(w.since, Some(ts("2024-01-01 00:00:00")));
        assert!(
            w.reason.starts_with("GLOBAL_DATE_THRESHOLD"),
            "{}",
            w.reason
        );
        let w = table_window(
            &t,
            &opts(),
            NaiveDate::from_ymd_opt(2024, 6, 1),
            None,
            &recorded,
        );
        assert_eq!(w.since, Some(ts("2024-03-15 10:30:00")));
    }

    #[test]
    fn full_and_force_reimport_take_everything() {
        let mut t = users();
        let recorded: HashMap<String, WatermarkValue> =
            [("users".to_string(), ts("2024-03-15 10:30:00"))].into();
        let w = table_window(
            &t,
            &ExtractOptions {
                full: true,
                ..opts()
            },
            None,
            None,
            &recorded,
        );
        assert_eq!(w.since, None);
        t.force_reimport = true;
        assert_eq!(table_window(&t, &opts(), None, None, &recorded).since, None);
    }

    #[test]
    fn threshold_limits_a_first_run() {
        let w = table_window(
            &users(),
            &opts(),
            NaiveDate::from_ymd_opt(2023, 1, 1),
            None,
            &HashMap::new(),
        );
        assert_eq!(w.since, Some(ts("2023-01-01 00:00:00")));
    }

    #[test]
    fn malformed_threshold_is_ignored() {
        assert_eq!(global_threshold(Some("2024/01/15")), None);
        assert_eq!(global_threshold(Some("2024-01-15 10:00:00")), None);
        assert_eq!(global_threshold(Some("2024-1-15")), None);
        assert_eq!(global_threshold(Some("")), None);
        assert_eq!(global_threshold(None), None);
        assert_eq!(
            global_threshold(Some(" 2024-01-15 ")),
            NaiveDate::from_ymd_opt(2024, 1, 15)
        );
    }

    #[test]
    fn watermark_values_round_trip_through_json() {
        let t = NaiveDate::from_ymd_opt(2024, 3, 1)
            .unwrap()
            .and_hms_micro_opt(12, 0, 0, 250)
            .unwrap();
        for w in [
            WatermarkValue::Timestamp(t),
            WatermarkValue::Int(i128::from(u64::MAX)),
        ] {
            let json = serde_json::to_string(&w).unwrap();
            assert_eq!(
                serde_json::from_str::<WatermarkValue>(&json).unwrap(),
                w,
                "{json}"
            );
        }
        assert_eq!(
            serde_json::to_string(&WatermarkValue::Timestamp(t)).unwrap(),
            r#"{"timestamp":"2024-03-01T12:00:00.000250"}"#
        );
    }
}
