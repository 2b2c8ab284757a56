//! The Matomo HTTP API source against a real HTTP server on loopback
//! (`tests/util/matomo_api_server.rs`): paging, retries, slow pages, errors that name site, day
//! and page, and the token never leaving the POST body.

#[path = "util/matomo_api_server.rs"]
mod server;
mod util;

use std::time::Duration;

use chrono::{NaiveDate, TimeZone};
use serde_json::{json, Value};

use etl::extract::matomo_api::{ApiExtract, StartRule, WatermarkPath};
use etl::settings::MatomoApiSettings;
use etl::staging::matomo_api::ApiFields;
use server::{Fault, MatomoApiServer};

/// A token with every character a form encoding must escape; each piece holds `xyzzy`, so
/// any fragment of it in an output is caught.
const TOKEN: &str = "xyzzy+tok/en=&é xyzzy";

const PARIS: chrono_tz::Tz = chrono_tz::Europe::Paris;

/// Today in Paris, and `n` days before.
fn day(n: i64) -> NaiveDate {
    chrono::Utc::now().with_timezone(&PARIS).date_naive() - chrono::Duration::days(n)
}

/// Unix seconds of `hh:mm` local time in Paris on `d`.
fn at(d: NaiveDate, hh: u32, mm: u32) -> i64 {
    PARIS
        .from_local_datetime(&d.and_hms_opt(hh, mm, 0).unwrap())
        .earliest()
        .unwrap()
        .timestamp()
}

/// An action of `n` at `t`.
fn page_view(n: usize, t: i64) -> Value {
    json!({"type": "action", "url": format!("https://ex.org/p/{n}"), "title": format!("Page {n}"),
           "pageIdAction": n.to_string(), "idpageview": format!("pv{n:04}"), "timestamp": t,
           "timeSpent": "1"})
}

/// The hand-written visits of site 1 (Paris), per day: strings and numbers mixed, an empty
/// `idpageview`, custom variables, dimensions on visit and action, experiments, Unicode, a
/// 600-action visit Matomo truncated at 500 (newer and older Matomo), a misfit value.
pub fn site1_visits() -> Vec<(NaiveDate, Vec<Value>)> {
    let d1 = day(2);
    let d2 = day(1);
    let t1 = at(d1, 10, 0);
    let v101 = json!({
        "idSite": "1", "idVisit": "101", "visitorId": "a1b2c3d4e5f60718", "actions": "3",
        "country": "France", "region": "Île-de-France", "city": "Paris",
        "operatingSystemName": "Windows", "deviceModel": "", "deviceBrand": "Unknown",
        "visitDuration": "245", "daysSinceFirstVisit": "0", "visitorType": "new",
        "siteName": "Exemple — Site", "userId": null, "resolution": "1920x1080",
        "referrerType": "search", "referrerName": "Google", "firstActionTimestamp": t1,
        "serverDatePrettyFirstAction": "lundi 4 mars 2024",
        "dimension1": "pro", "dimension2": "visit-level",
        "experiments": [{"idexperiment": "3", "name": "Hero", "variation": {"idvariation": "7", "name": "B"}}],
        "actionDetails": [
            {"type": "action", "url": "https://ex.org/?q=é", "title": "Accueil 🎉",
             "pageIdAction": "12", "idpageview": "aB3dE9", "timestamp": t1, "timeSpent": "40",
             "dimension2": "hero-b",
             "customVariables": {"1": {"customVariableName1": "plan", "customVariableValue1": "pro"},
                                 "2": {"customVariableName2": "lang", "customVariableValue2": "fr"}}},
            {"type": "event", "eventCategory": "video", "eventAction": "play", "eventName": "intro",
             "eventValue": 12.5, "timestamp": (t1 + 40).to_string(), "timeSpent": 5, "idpageview": ""},
            {"type": "search", "siteSearchKeyword": "régime \"sans\" sel\t\\", "timestamp": t1 + 45,
             "timeSpent": "0", "url": "https://ex.org/search?q=r%C3%A9gime"}
        ]
    });
    let t2 = at(d1, 23, 30);
    let v102 = json!({
        "idSite": 1, "idVisit": 102, "visitorId": "ffffffffffffffff", "actions": 1,
        "country": "日本", "visitDuration": 0, "daysSinceFirstVisit": 12, "visitorType": "returning",
        "siteName": "Exemple — Site", "userId": "user@example.org", "firstActionTimestamp": t2,
        "actionDetails": [{"type": "goal", "timestamp": t2, "timeSpent": null, "goalName": "signup"}]
    });
    let t3 = at(d2, 8, 0);
    let truncated_new = json!({
        "idSite": "1", "idVisit": "103", "visitorId": "0123456789abcdef", "actions": "600",
        "firstActionTimestamp": t3, "truncatedActionsCount": "100",
        "actionDetails": (0..500).map(|n| page_view(n, t3 + i64::try_from(n).unwrap())).collect::<Vec<_>>()
    });
    let truncated_old = json!({
        "idSite": "1", "idVisit": "104", "visitorId": "0123456789abcdee", "actions": 510,
        "firstActionTimestamp": t3 + 1000,
        "actionDetails": (0..500).map(|n| page_view(n, t3 + 1000 + i64::try_from(n).unwrap())).collect::<Vec<_>>()
    });
    let misfit = json!({
        "idSite": "1", "idVisit": "105", "visitorId": "1111111111111111", "actions": "2",
        "firstActionTimestamp": at(d2, 9, 0),
        "actionDetails": [
            {"type": "event", "eventCategory": "form", "eventValue": "n/a", "timestamp": at(d2, 9, 0), "timeSpent": "soon"},
            {"type": "action", "url": "https://ex.org/ok", "timestamp": at(d2, 9, 1), "timeSpent": 2}
        ]
    });
    vec![
        (d1, vec![v101, v102]),
        (d2, vec![truncated_new, truncated_old, misfit]),
    ]
}

fn settings(server: &MatomoApiServer, extra: &[(&str, &str)]) -> MatomoApiSettings {
    let url = server.url();
    let mut vars: Vec<(String, String)> = vec![
        ("MATOMO_URL".into(), url),
        ("MATOMO_KEY".into(), TOKEN.into()),
        ("MATOMO_SITE".into(), "1".into()),
        ("MATOMO_API_PAGE_SIZE".into(), "2".into()),
        ("MATOMO_API_TIMEOUT".into(), "2".into()),
    ];
    for (k, v) in extra {
        vars.retain(|(name, _)| name != k);
        vars.push((k.to_string(), v.to_string()));
    }
    MatomoApiSettings::from_lookup(&|name| {
        vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    })
    .unwrap()
}

fn serve_site1(server: &MatomoApiServer) {
    server.with(|s| {
        s.sites.insert(1, "Europe/Paris".into());
        for (d, visits) in site1_visits() {
            s.visits.insert((1, d.to_string()), visits);
        }
    });
}

async fn extract(
    settings: &MatomoApiSettings,
    dir: &std::path::Path,
) -> Result<etl::extract::matomo_api::ApiExtracted, String> {
    let fields = ApiFields::new([], []);
    let progress = etl::progress::Progress::new(true);
    let run = ApiExtract {
        settings,
        fields: &fields,
        start: StartRule {
            start_date: Some(day(2)),
            initial_offset: 3,
            lag_days: 2,
            ..Default::default()
        },
        watermarks: vec![WatermarkPath {
            table: "matomo".into(),
            path: "timestamp".into(),
            in_actions: true,
        }],
        dir,
        rel: "matomo-api/visits".into(),
        progress: &progress,
    };
    run.run().await.map_err(|e| e.to_string())
}

#[tokio::test]
async fn every_page_and_day_is_read_through_retries_slow_pages_and_resets() {
    let server = MatomoApiServer::start(TOKEN);
    serve_site1(&server);
    server.with(|s| {
        s.faults
            .insert((1, day(1).to_string(), 2), Fault::Unavailable(1));
        s.faults.insert(
            (1, day(2).to_string(), 0),
            Fault::Slow(Duration::from_millis(700)),
        );
        s.faults.insert((1, day(1).to_string(), 0), Fault::Reset(1));
    });
    let dir = tempfile::tempdir().unwrap();
    let got = extract(&settings(&server, &[]), dir.path()).await.unwrap();
    assert_eq!(got.visits, 5);
    let site = &got.sites[0];
    assert_eq!((site.visits, site.actions), (5, 3 + 1 + 500 + 500 + 2));
    assert_eq!((site.truncated_visits, site.truncated_actions), (2, 110));
    assert_eq!(site.time_zone, "Europe/Paris");
    assert_eq!(
        (site.first_day, site.last_day),
        (Some(day(2)), Some(day(0)))
    );
    // Day 2: pages at offset 0 and 2 (short: 0 visits); day 1: 0, 2 (one visit); today: 0.
    assert_eq!(site.pages, 2 + 2 + 1);
    let requests = server.requests();
    let visits_calls: Vec<_> = requests
        .iter()
        .filter(|r| r.form.get("method").map(String::as_str) == Some("Live.getLastVisitsDetails"))
        .collect();
    // 5 pages answered, one 503 and one reset tried again.
    assert_eq!(visits_calls.len(), 5 + 1 + 1, "{visits_calls:#?}");
    for r in &requests {
        assert_eq!(r.method, "POST");
        assert_eq!(r.target, "/index.php");
        assert_eq!(r.form.get("token_auth").map(String::as_str), Some(TOKEN));
        assert!(
            !r.target.contains("xyzzy"),
            "token in the URL: {}",
            r.target
        );
        assert!(
            r.headers.iter().all(|(_, v)| !v.contains("xyzzy")),
            "token in a header: {:?}",
            r.headers
        );
    }
    let first = visits_calls[0];
    for (k, v) in [
        ("module", "API"),
        ("format", "JSON"),
        ("idSite", "1"),
        ("period", "day"),
        ("filter_limit", "2"),
        ("filter_offset", "0"),
        ("filter_sort_order", "asc"),
    ] {
        assert_eq!(first.form.get(k).map(String::as_str), Some(v), "{k}");
    }
    // The latest action's time is the watermark.
    let latest = at(day(1), 9, 1);
    assert_eq!(
        got.watermarks["matomo"],
        etl::staging::WatermarkValue::Timestamp(
            chrono::DateTime::from_timestamp(latest, 0)
                .unwrap()
                .naive_utc()
        )
    );
    // The staged file: one row per visit, every visit's JSON kept.
    let file = dir
        .path()
        .join(got.files[0].path.replacen("matomo-api/visits/", "", 1));
    let (_, batches) = etl::staging::read_batches(&file).unwrap();
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, 5);
    let bytes = std::fs::read(&file).unwrap();
    assert!(!String::from_utf8_lossy(&bytes).contains("xyzzy"));
}

#[tokio::test]
async fn api_errors_stop_with_site_day_and_page_never_the_token() {
    let cases: Vec<(Fault, &str)> = vec![
        (
            // A server that echoes the request's token: scrubbed.
            Fault::Body(
                json!({"result": "error", "message": format!("Database error near '{TOKEN}'")})
                    .to_string(),
            ),
            "Matomo refused: Database error near '***'",
        ),
        (
            Fault::Body("<!DOCTYPE html><html>Sign in</html>".into()),
            "HTML instead of JSON",
        ),
        (
            Fault::Body("{\"unexpected\": true}".into()),
            "expected a list of visits",
        ),
        (Fault::Unavailable(99), "HTTP 503 (gave up after 2 tries)"),
        (Fault::Slow(Duration::from_secs(5)), "no answer within 2s"),
    ];
    for (fault, needle) in cases {
        let server = MatomoApiServer::start(TOKEN);
        serve_site1(&server);
        server.with(|s| {
            s.faults.insert((1, day(1).to_string(), 2), fault.clone());
        });
        let dir = tempfile::tempdir().unwrap();
        let err = extract(
            &settings(
                &server,
                &[("MATOMO_API_RETRIES", "1"), ("MATOMO_API_TIMEOUT", "2")],
            ),
            dir.path(),
        )
        .await
        .unwrap_err();
        let expected = format!("site 1, day {}, page 2 (filter_offset 2)", day(1));
        assert!(
            err.contains(&expected) && err.contains(needle),
            "{fault:?}: {err}"
        );
        assert!(!err.contains("xyzzy"), "{err}");
    }
}

#[tokio::test]
async fn a_wrong_token_says_so_without_showing_either_token() {
    let server = MatomoApiServer::start("xyzzy-the-right-one");
    serve_site1(&server);
    let dir = tempfile::tempdir().unwrap();
    let err = extract(&settings(&server, &[]), dir.path())
        .await
        .unwrap_err();
    assert!(
        err.contains("site 1") && err.contains("check MATOMO_KEY"),
        "{err}"
    );
    assert!(!err.contains("xyzzy"), "{err}");
    // With MATOMO_TIMEZONE no site call is made: the first page says it.
    let err = extract(
        &settings(&server, &[("MATOMO_TIMEZONE", "UTC+5.5")]),
        dir.path(),
    )
    .await
    .unwrap_err();
    assert!(
        err.contains("page 1 (filter_offset 0)") && err.contains("check MATOMO_KEY"),
        "{err}"
    );
}
