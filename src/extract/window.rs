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

use super::matomo::WatermarkValue;
use super::ExtractOptions;
use crate::config::ddl::ident;
use crate::config::{TableSpec, Watermark};
use crate::settings::PostgresSettings;
use crate::staging::{self, Stage};

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
                        if timestamp_of(b) < timestamp_of(a) {
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
            .and_then(timestamp_of)
            .map(|t| t.and_utc())
    }

    /// The bound of a Matomo `WHERE wm >= ?`.
    pub fn matomo(&self) -> Option<&WatermarkValue> {
        self.since.as_ref()
    }

    pub fn since_text(&self) -> Option<String> {
        self.since.as_ref().map(ToString::to_string)
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

fn timestamp_of(v: &WatermarkValue) -> Option<NaiveDateTime> {
    match v {
        WatermarkValue::Timestamp(t) => Some(*t),
        WatermarkValue::Int(_) => None,
    }
}

/// `GLOBAL_DATE_THRESHOLD` when set and well-formed (`YYYY-MM-DD`); a malformed value is a
/// warning and is ignored.
pub fn global_threshold() -> Option<NaiveDate> {
    let raw = std::env::var("GLOBAL_DATE_THRESHOLD")
        .ok()
        .filter(|v| !v.trim().is_empty())?;
    let raw = raw.trim();
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
    let threshold = global_threshold();
    let need_watermarks = !opts.full
        && tables
            .iter()
            .any(|t| !t.force_reimport && t.watermark != Watermark::None);
    let target = if need_watermarks {
        target_watermarks(tables).await
    } else {
        None
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
/// when PostgreSQL is not configured or not reachable.
async fn target_watermarks(
    tables: &[&TableSpec],
) -> Option<HashMap<String, Option<WatermarkValue>>> {
    let configured = ["DATABASE_URL", "POSTGRES_HOST", "POSTGRES_DATABASE"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    if !configured {
        tracing::info!("no PostgreSQL target configured: windows start at the recorded watermarks");
        return None;
    }
    let settings = PostgresSettings::from_env().ok()?;
    let client = match tokio::time::timeout(std::time::Duration::from_secs(10), settings.connect())
        .await
    {
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
        let expr = match &t.watermark {
            Watermark::CreatedUpdated => "MAX(GREATEST(created_at, updated_at))".to_string(),
            Watermark::Column(c) => format!("MAX({})", ident(c)),
            Watermark::None => continue,
        };
        let sql = format!("SELECT {expr}::text FROM {}", ident(&t.name));
        let value = match client.query_one(&sql, &[]).await {
            Ok(row) => row
                .get::<_, Option<String>>(0)
                .and_then(|s| parse_watermark(&s)),
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

/// Watermarks recorded in the load manifest of the newest run that was loaded.
fn recorded_watermarks(staging_dir: &Path) -> HashMap<String, WatermarkValue> {
    let Ok(Some(run)) = staging::latest_run(staging_dir, Stage::Load) else {
        return HashMap::new();
    };
    let Ok(manifest) = run.manifest(Stage::Load) else {
        return HashMap::new();
    };
    manifest
        .entries
        .iter()
        .flat_map(|e| e.watermarks.iter())
        .filter_map(|(table, v)| parse_watermark(v).map(|w| (table.clone(), w)))
        .collect()
}

/// A watermark as PostgreSQL prints it or as a manifest records it.
pub fn parse_watermark(text: &str) -> Option<WatermarkValue> {
    let text = text.trim();
    if let Ok(i) = text.parse::<i128>() {
        return Some(WatermarkValue::Int(i));
    }
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(WatermarkValue::Timestamp(t.naive_utc()));
    }
    for format in [
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f%#z",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(WatermarkValue::Timestamp(t));
        }
    }
    NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(WatermarkValue::Timestamp)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> ExtractOptions {
        ExtractOptions {
            mongo: None,
            matomo: None,
            tables: None,
            full: false,
            since: None,
            quiet: true,
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
        parse_watermark(s).unwrap()
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
        // Runs in its own process space only for this variable; other tests do not read it.
        std::env::set_var("GLOBAL_DATE_THRESHOLD", "2024/01/15");
        assert_eq!(global_threshold(), None);
        std::env::set_var("GLOBAL_DATE_THRESHOLD", "2024-01-15 10:00:00");
        assert_eq!(global_threshold(), None);
        std::env::set_var("GLOBAL_DATE_THRESHOLD", "2024-01-15");
        assert_eq!(global_threshold(), NaiveDate::from_ymd_opt(2024, 1, 15));
        std::env::remove_var("GLOBAL_DATE_THRESHOLD");
    }

    #[test]
    fn watermarks_parse_from_postgres_and_manifests() {
        assert_eq!(
            ts("2024-03-06 08:00:00.123"),
            WatermarkValue::Timestamp(
                NaiveDate::from_ymd_opt(2024, 3, 6)
                    .unwrap()
                    .and_hms_milli_opt(8, 0, 0, 123)
                    .unwrap()
            )
        );
        assert_eq!(ts("2024-03-06T08:00:00+00:00"), ts("2024-03-06 08:00:00"));
        assert_eq!(ts("4294967295"), WatermarkValue::Int(4294967295));
    }
}
