//! Extract from Matomo's HTTP Reporting API (`--source matomo-api`), for Matomo users who
//! cannot reach its database: `Live.getLastVisitsDetails`, site by site, day by day in each
//! site's time zone ([`days`]), page by page (`filter_offset` advancing by `filter_limit`
//! until a short page), into staged Parquet of one row per visit
//! ([`crate::staging::matomo_api`]).
//!
//! One HTTP client per run ([`http`]), every call bounded by `MATOMO_API_TIMEOUT`; a 5xx,
//! 429, timeout or broken connection is tried again (`MATOMO_API_RETRIES` times, backoff
//! doubling from half a second). An answer that is not a list of visits stops the extract
//! with a message naming the site, the day and the page: Matomo's own error
//! (`{"result":"error"}`, a wrong token), HTML (a wrong URL), anything else. The token goes
//! in the POST body only, and every text a server sends back is scrubbed of it before it is
//! shown.
//!
//! A visit that goes on while it is read may be listed twice (on a later page, or the next
//! day): the first copy is staged, the others counted (`repeated_visits`); the next run's
//! re-read window brings its later actions. Visits whose actions Matomo truncated are
//! counted per site and in the manifest entry.

mod days;
mod http;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use chrono::{NaiveDate, NaiveDateTime, Utc};
use serde_json::Value;

use days::SiteZone;
pub use days::StartRule;
use http::{HttpClient, HttpError};

use crate::settings::MatomoApiSettings;
use crate::staging::matomo_api::{self as staged, ApiFields, VisitBatchBuilder};
use crate::staging::{
    schema_pairs, ApiSite, BackgroundWriter, FileEntry, PartWriter, StagingError, WatermarkValue,
};

/// Visits per staged batch, and the JSON bytes that close a batch earlier (Arrow's text
/// offsets hold 2 GiB per column).
const BATCH_VISITS: usize = 8192;
const BATCH_BYTES: usize = 128 * 1024 * 1024;

/// Why an API extract stopped. Messages name the site, day and page, never the token.
#[derive(Debug, thiserror::Error)]
pub enum MatomoApiError {
    #[error("Matomo API {endpoint}: site {site}, day {day}, page {page} (filter_offset {offset}): {message}")]
    Page {
        endpoint: String,
        site: u32,
        day: NaiveDate,
        page: u64,
        offset: u64,
        message: String,
    },
    #[error("Matomo API {endpoint}: site {site}: {message}")]
    Site {
        endpoint: String,
        site: u32,
        message: String,
    },
    #[error("Matomo API {endpoint}: {message}")]
    Setup { endpoint: String, message: String },
    #[error(transparent)]
    Staging(#[from] StagingError),
}

/// A watermark an extract computes for a table: the latest unix time at a path.
#[derive(Debug, Clone)]
pub struct WatermarkPath {
    pub table: String,
    pub path: String,
    /// The path is a key of each action (`element.timestamp`), not of the visit.
    pub in_actions: bool,
}

/// One API extract: where the staged files go and what decides the days.
pub struct ApiExtract<'a> {
    pub settings: &'a MatomoApiSettings,
    pub fields: &'a ApiFields,
    pub start: StartRule,
    pub watermarks: Vec<WatermarkPath>,
    /// The folder of the staged files and its name relative to the stage folder.
    pub dir: &'a Path,
    pub rel: String,
    /// The progress bar of the extract (a hidden one shows nothing).
    pub bar: indicatif::ProgressBar,
}

/// What an API extract staged.
#[derive(Debug, Clone, Default)]
pub struct ApiExtracted {
    pub files: Vec<FileEntry>,
    pub schema: Vec<(String, String)>,
    /// Visits staged.
    pub visits: u64,
    pub sites: Vec<ApiSite>,
    /// The latest value of each table's watermark among staged visits.
    pub watermarks: BTreeMap<String, WatermarkValue>,
    /// The earliest instant read (the first day's midnight in its site's zone, as UTC).
    pub since: Option<NaiveDateTime>,
    pub seconds: f64,
}

impl ApiExtract<'_> {
    /// Reads every site's days into staged Parquet.
    pub async fn run(&self) -> Result<ApiExtracted, MatomoApiError> {
        let started = Instant::now();
        let endpoint = self.settings.to_string();
        let client = HttpClient::new(&self.settings.endpoint(), self.settings.timeout).map_err(
            |message| MatomoApiError::Setup {
                endpoint: endpoint.clone(),
                message,
            },
        )?;
        let api = Api {
            settings: self.settings,
            client,
            endpoint,
        };
        let schema = self.fields.schema();
        let mut stager = Stager {
            fields: Arc::new(self.fields.clone()),
            writer: BackgroundWriter::spawn(PartWriter::new(self.dir, &self.rel, schema.clone())?),
            pending: Vec::new(),
            pending_bytes: 0,
            converting: None,
        };
        let bar = &self.bar;
        let mut out = ApiExtracted {
            schema: schema_pairs(&schema),
            ..Default::default()
        };
        let mut seen: HashSet<i64> = HashSet::new();
        for &site in &self.settings.sites {
            let zone = api.site_zone(site).await?;
            let today = zone.date_of(Utc::now());
            let (first, reason) = self.start.first_day(zone, today);
            let first = first.min(today);
            out.since = Some(
                out.since
                    .map_or(zone.start_of(first), |s| s.min(zone.start_of(first))),
            );
            tracing::info!(site, time_zone = %zone.name(), first_day = %first, last_day = %today, %reason, "reading Matomo visits");
            let mut report = ApiSite {
                site,
                time_zone: zone.name(),
                first_day: Some(first),
                last_day: Some(today),
                reason,
                ..Default::default()
            };
            for day in days::days(first, today) {
                bar.set_prefix(format!("matomo-api site {site} {day}"));
                let read = self
                    .read_day(&api, site, day, &mut seen, &mut stager, &mut out.watermarks)
                    .await?;
                bar.inc(read.visits);
                tracing::info!(site, day = %day, visits = read.visits, actions = read.actions, pages = read.pages, truncated = read.truncated_visits, "day read");
                report.visits += read.visits;
                report.actions += read.actions;
                report.pages += read.pages;
                report.truncated_visits += read.truncated_visits;
                report.truncated_actions += read.truncated_actions;
                report.repeated_visits += read.repeated_visits;
            }
            if report.truncated_visits > 0 {
                tracing::warn!(site, visits = report.truncated_visits, actions = report.truncated_actions, "Matomo truncated the actions of some visits (its per-visit action limit): those actions are not in the API's answers");
            }
            out.visits += report.visits;
            out.sites.push(report);
        }
        bar.finish();
        out.files = stager.finish().await?;
        out.seconds = started.elapsed().as_secs_f64();
        Ok(out)
    }

    /// Every page of one site's day.
    async fn read_day(
        &self,
        api: &Api<'_>,
        site: u32,
        day: NaiveDate,
        seen: &mut HashSet<i64>,
        stager: &mut Stager,
        watermarks: &mut BTreeMap<String, WatermarkValue>,
    ) -> Result<ApiSite, MatomoApiError> {
        let mut read = ApiSite::default();
        let limit = u64::from(self.settings.page_size);
        let mut offset = 0u64;
        loop {
            let page = read.pages + 1;
            let (visits, bytes) = api.visits(site, day, page, offset).await?;
            read.pages = page;
            let count = u64::try_from(visits.len()).unwrap_or(u64::MAX);
            let per_visit = bytes / visits.len().max(1);
            for visit in visits {
                let id = visit.get("idVisit").and_then(|v| match v {
                    Value::Number(n) => n.as_i64(),
                    Value::String(s) => s.trim().parse().ok(),
                    _ => None,
                });
                if id.is_some_and(|id| !seen.insert(id)) {
                    read.repeated_visits += 1;
                    continue;
                }
                read.visits += 1;
                read.actions += staged::action_count(&visit);
                if let Some(lost) = staged::truncated_actions(&visit) {
                    read.truncated_visits += 1;
                    read.truncated_actions += lost;
                }
                for w in &self.watermarks {
                    let latest = staged::latest_millis(&visit, &w.path, w.in_actions)
                        .and_then(chrono::DateTime::from_timestamp_millis)
                        .map(|t| WatermarkValue::Timestamp(t.naive_utc()));
                    if let Some(latest) = latest {
                        let entry = watermarks.entry(w.table.clone()).or_insert(latest.clone());
                        if latest.timestamp() > entry.timestamp() {
                            *entry = latest;
                        }
                    }
                }
                stager.push(visit, per_visit).await?;
            }
            if count < limit {
                return Ok(read);
            }
            offset += limit;
        }
    }
}

/// Calls to one Matomo, with the run's client.
struct Api<'a> {
    settings: &'a MatomoApiSettings,
    client: HttpClient,
    /// The endpoint as messages show it (no credentials).
    endpoint: String,
}

/// Where in the extract a call was made, for messages.
#[derive(Clone, Copy)]
enum Call {
    Site(u32),
    Page {
        site: u32,
        day: NaiveDate,
        page: u64,
        offset: u64,
    },
}

impl Api<'_> {
    fn error(&self, call: Call, message: String) -> MatomoApiError {
        let message = self.settings.scrub(&message);
        let endpoint = self.endpoint.clone();
        match call {
            Call::Site(site) => MatomoApiError::Site {
                endpoint,
                site,
                message,
            },
            Call::Page {
                site,
                day,
                page,
                offset,
            } => MatomoApiError::Page {
                endpoint,
                site,
                day,
                page,
                offset,
                message,
            },
        }
    }

    /// The site's time zone: `MATOMO_TIMEZONE`, else Matomo's.
    async fn site_zone(&self, site: u32) -> Result<SiteZone, MatomoApiError> {
        let call = Call::Site(site);
        let (text, from) = match &self.settings.time_zone {
            Some(tz) => (tz.clone(), "MATOMO_TIMEZONE"),
            None => {
                let site_text = site.to_string();
                let body = self
                    .post(
                        call,
                        &[
                            ("method", "SitesManager.getSiteFromId"),
                            ("idSite", &site_text),
                        ],
                    )
                    .await?;
                let answer = tokio::task::spawn_blocking(move || parse_answer(&body))
                    .await
                    .map_err(|e| self.error(call, format!("reading the answer: {e}")))?
                    .map_err(|m| self.error(call, m))?;
                let tz = answer
                    .get("timezone")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        self.error(call, "SitesManager.getSiteFromId gave no `timezone`".into())
                    })?;
                (tz.to_string(), "Matomo")
            }
        };
        SiteZone::parse(&text).ok_or_else(|| {
            self.error(
                call,
                format!("unknown time zone `{text}` (from {from}): expected an IANA name or UTC+H"),
            )
        })
    }

    /// One page of visits and the bytes it took.
    async fn visits(
        &self,
        site: u32,
        day: NaiveDate,
        page: u64,
        offset: u64,
    ) -> Result<(Vec<Value>, usize), MatomoApiError> {
        let call = Call::Page {
            site,
            day,
            page,
            offset,
        };
        let (site_text, day_text) = (site.to_string(), day.format("%Y-%m-%d").to_string());
        let (limit, offset_text) = (self.settings.page_size.to_string(), offset.to_string());
        let body = self
            .post(
                call,
                &[
                    ("method", "Live.getLastVisitsDetails"),
                    ("idSite", &site_text),
                    ("period", "day"),
                    ("date", &day_text),
                    ("filter_limit", &limit),
                    ("filter_offset", &offset_text),
                    ("filter_sort_order", "asc"),
                ],
            )
            .await?;
        let bytes = body.len();
        let visits = tokio::task::spawn_blocking(move || parse_visits(&body))
            .await
            .map_err(|e| self.error(call, format!("reading the answer: {e}")))?
            .map_err(|m| self.error(call, m))?;
        Ok((visits, bytes))
    }

    /// POSTs the API call with the token in the body; tries again on what may pass.
    async fn post(&self, call: Call, params: &[(&str, &str)]) -> Result<Vec<u8>, MatomoApiError> {
        let mut form: Vec<(&str, &str)> = vec![("module", "API"), ("format", "JSON")];
        form.extend_from_slice(params);
        form.push(("token_auth", self.settings.token()));
        let tries = self.settings.retries + 1;
        let mut last = String::new();
        for attempt in 0..tries {
            if attempt > 0 {
                let delay = std::time::Duration::from_millis(500u64 << (attempt - 1).min(4));
                tracing::warn!(
                    attempt,
                    of = tries,
                    "Matomo API: {last}; trying again in {delay:?}"
                );
                tokio::time::sleep(delay).await;
            }
            match self.client.post_form(&form).await {
                Ok(r) if r.status == 200 => return Ok(r.body),
                Ok(r) if r.status >= 500 || r.status == 429 => {
                    last = format!("HTTP {}", r.status);
                }
                Ok(r) if (300..400).contains(&r.status) => {
                    let to = r.location.map_or_else(String::new, |l| {
                        format!(" to {}", crate::settings::redact_url(&l))
                    });
                    return Err(self.error(
                        call,
                        format!(
                            "HTTP {} redirects{to}: set MATOMO_URL to where Matomo answers",
                            r.status
                        ),
                    ));
                }
                Ok(r) => {
                    return Err(
                        self.error(call, format!("HTTP {}: {}", r.status, snippet(&r.body)))
                    );
                }
                Err(e) if e.is_transient() => last = e.to_string(),
                Err(e @ HttpError::Protocol(_)) => return Err(self.error(call, e.to_string())),
                Err(e) => return Err(self.error(call, e.to_string())),
            }
        }
        Err(self.error(call, format!("{last} (gave up after {tries} tries)")))
    }
}

/// A page's visits, or why the answer is not one.
fn parse_visits(body: &[u8]) -> Result<Vec<Value>, String> {
    match parse_json(body)? {
        Value::Array(visits) => Ok(visits),
        other => Err(match api_error(&other) {
            Some(message) => message,
            None => format!("expected a list of visits, got {}", shape(&other)),
        }),
    }
}

/// An object answer (`SitesManager.getSiteFromId`), or Matomo's error.
fn parse_answer(body: &[u8]) -> Result<Value, String> {
    let value = parse_json(body)?;
    if let Some(message) = api_error(&value) {
        return Err(message);
    }
    match value {
        // Older Matomo wraps the site in a list.
        Value::Array(mut items) if items.len() == 1 => Ok(items.remove(0)),
        Value::Object(_) => Ok(value),
        other => Err(format!("expected a site, got {}", shape(&other))),
    }
}

fn parse_json(body: &[u8]) -> Result<Value, String> {
    serde_json::from_slice(body).map_err(|e| {
        let looks_html = body
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'<');
        let hint = if looks_html {
            "HTML instead of JSON: is MATOMO_URL the root of Matomo (where index.php answers)?"
        } else {
            "not JSON"
        };
        format!("{hint} ({e}); the answer starts with: {}", snippet(body))
    })
}

/// `{"result":"error","message":...}`: Matomo's message, with a hint for a token problem.
fn api_error(value: &Value) -> Option<String> {
    let object = value.as_object()?;
    if object.get("result").and_then(Value::as_str) != Some("error") {
        return None;
    }
    let message = object
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("(no message)");
    let token = ["token", "access", "authenticat", "login"]
        .iter()
        .any(|w| message.to_ascii_lowercase().contains(w));
    Some(if token {
        format!("Matomo refused: {message} (check MATOMO_KEY and its access to this site)")
    } else {
        format!("Matomo refused: {message}")
    })
}

fn shape(value: &Value) -> String {
    let kind = match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    };
    format!("{kind}: {}", snippet(value.to_string().as_bytes()))
}

/// The first characters of an answer, printable (control characters escaped).
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text
        .chars()
        .take(120)
        .flat_map(char::escape_default)
        .collect();
    if text.chars().count() > 120 {
        out.push('…');
    }
    out
}

/// Visits gathered into staged batches: converted on a blocking thread while the next pages
/// are fetched, written by the Parquet writer's own thread, in read order.
struct Stager {
    fields: Arc<ApiFields>,
    writer: BackgroundWriter,
    pending: Vec<Value>,
    pending_bytes: usize,
    converting: Option<tokio::task::JoinHandle<Result<arrow::record_batch::RecordBatch, String>>>,
}

impl Stager {
    async fn push(&mut self, visit: Value, bytes: usize) -> Result<(), MatomoApiError> {
        self.pending.push(visit);
        self.pending_bytes = self.pending_bytes.saturating_add(bytes);
        if self.pending.len() >= BATCH_VISITS || self.pending_bytes >= BATCH_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes the batch being converted, then starts converting the pending visits.
    async fn flush(&mut self) -> Result<(), MatomoApiError> {
        self.write_converted().await?;
        if self.pending.is_empty() {
            return Ok(());
        }
        let visits = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let fields = self.fields.clone();
        self.converting = Some(tokio::task::spawn_blocking(move || {
            let mut builder = VisitBatchBuilder::new(&fields);
            for visit in &visits {
                builder.push(visit).map_err(|e| e.to_string())?;
            }
            builder.finish().map_err(|e| e.to_string())
        }));
        Ok(())
    }

    async fn write_converted(&mut self) -> Result<(), MatomoApiError> {
        let Some(handle) = self.converting.take() else {
            return Ok(());
        };
        let staging = |message: String| StagingError::Invalid {
            path: "matomo-api".into(),
            message,
        };
        let batch = handle
            .await
            .map_err(|e| staging(e.to_string()))?
            .map_err(staging)?;
        self.writer.write(&batch)?;
        Ok(())
    }

    async fn finish(mut self) -> Result<Vec<FileEntry>, MatomoApiError> {
        self.flush().await?;
        self.write_converted().await?;
        Ok(self.writer.finish()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_that_are_not_visits_say_what_they_are() {
        let err = parse_visits(br#"{"result":"error","message":"You can't access this resource as it requires 'view' access for the website id = 1."}"#).unwrap_err();
        assert!(
            err.contains("check MATOMO_KEY") && err.contains("website id = 1"),
            "{err}"
        );
        let err = parse_visits(b"  <!DOCTYPE html><html><body>Login</body></html>").unwrap_err();
        assert!(
            err.starts_with("HTML instead of JSON") && err.contains("<!DOCTYPE html>"),
            "{err}"
        );
        let err = parse_visits(br#"{"value": 3}"#).unwrap_err();
        assert!(
            err.contains("expected a list of visits, got an object"),
            "{err}"
        );
        assert_eq!(parse_visits(b"[]").unwrap().len(), 0);
        let err = parse_visits(b"\x00\x01 binary").unwrap_err();
        assert!(
            err.starts_with("not JSON") && err.contains("\\u{0}"),
            "{err}"
        );
        let site = parse_answer(br#"[{"idsite":"1","timezone":"UTC+5.5"}]"#).unwrap();
        assert_eq!(site["timezone"], "UTC+5.5");
    }
}
