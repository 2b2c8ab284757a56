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
        bar: indicatif::ProgressBar::hidden(),
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

// ---------------------------------------------------------------- etl run, end to end

/// A work dir with only `config/matomo_api.yaml` (optionally edited), a fresh database and
/// the API server with sites 1 (Paris) and 2 (UTC+5.5).
struct Case {
    work: util::Workdir,
    url: String,
    server: MatomoApiServer,
}

fn site2_visit() -> Value {
    let d = day(1);
    let t = chrono::FixedOffset::east_opt(19_800)
        .unwrap()
        .from_local_datetime(&d.and_hms_opt(0, 30, 0).unwrap())
        .earliest()
        .unwrap()
        .timestamp();
    json!({"idSite": 2, "idVisit": 201, "visitorId": "2222222222222222", "actions": 2,
    "firstActionTimestamp": t, "dimension3": "",
    "actionDetails": [
        {"type": "download", "url": "https://files.example/a.pdf", "timestamp": t, "timeSpent": 0, "dimension3": ""},
        {"type": "outlink", "url": "https://elsewhere.example/", "timestamp": t + 10, "timeSpent": "3"}
    ]})
}

/// The open visit of today: `n` actions, the second one's time spent `spent`.
fn open_visit(n: usize, spent: &str) -> Value {
    let t = at(day(0), 0, 5);
    let actions: Vec<Value> = (0..n)
        .map(|i| {
            json!({"type": "action", "url": format!("https://ex.org/open/{i}"),
                   "timestamp": t + i64::try_from(i).unwrap() * 60,
                   "timeSpent": if i == 1 { spent.to_string() } else { "10".to_string() }})
        })
        .collect();
    json!({"idSite": "1", "idVisit": "106", "visitorId": "6666666666666666", "actions": n.to_string(),
           "firstActionTimestamp": t, "actionDetails": actions})
}

impl Case {
    fn new(name: &str, edit: impl Fn(String) -> String) -> Case {
        let work = util::Workdir::new();
        for file in ["schemas.yaml", "matomo_schemas.yaml"] {
            std::fs::remove_file(work.path().join("config").join(file)).unwrap();
        }
        let yaml = std::fs::read_to_string(util::repo().join("config/matomo_api.yaml")).unwrap();
        work.write("config/matomo_api.yaml", &edit(yaml));
        let server = MatomoApiServer::start(TOKEN);
        serve_site1(&server);
        server.with(|s| {
            s.sites.insert(2, "UTC+5.5".into());
            s.visits
                .insert((2, day(1).to_string()), vec![site2_visit()]);
            s.visits
                .insert((1, day(0).to_string()), vec![open_visit(2, "0")]);
        });
        Case {
            work,
            url: util::fresh_database(name),
            server,
        }
    }

    fn env(&self) -> Vec<(String, String)> {
        vec![
            ("MATOMO_URL".into(), self.server.url()),
            ("MATOMO_KEY".into(), TOKEN.into()),
            ("MATOMO_SITE".into(), "1,2".into()),
            ("MATOMO_API_PAGE_SIZE".into(), "2".into()),
            ("STARTDATE".into(), day(2).to_string()),
            ("DATABASE_URL".into(), self.url.clone()),
        ]
    }

    /// `etl ARGS`, required to succeed; stdout and stderr.
    fn etl(&self, args: &[&str], extra: &[(&str, &str)]) -> String {
        let mut env = self.env();
        for (k, v) in extra {
            env.retain(|(name, _)| name != k);
            env.push((k.to_string(), v.to_string()));
        }
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let out = self.work.etl(args, &env);
        let text = format!("{}\n{}", util::stdout(&out), util::stderr(&out));
        assert!(out.status.success(), "etl {args:?}:\n{text}");
        assert!(
            !text.contains("xyzzy"),
            "the token in the output of {args:?}:\n{text}"
        );
        text
    }

    fn rows(&self, sql_where: &str) -> Vec<Value> {
        util::psql(
            &self.url,
            &format!(
                "SET TimeZone = 'UTC'; SELECT row_to_json(m) FROM matomo m WHERE {sql_where} ORDER BY action_id"
            ),
        )
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
    }

    /// The `Live.getLastVisitsDetails` dates requested since request number `from`.
    fn days_asked(&self, from: usize) -> std::collections::BTreeSet<String> {
        self.server.requests()[from..]
            .iter()
            .filter(|r| {
                r.form.get("method").map(String::as_str) == Some("Live.getLastVisitsDetails")
            })
            .filter_map(|r| r.form.get("date").cloned())
            .collect()
    }

    /// No file of the work dir (config, staging, rejects) holds any piece of the token.
    fn assert_token_nowhere(&self) {
        for entry in walk(self.work.path()) {
            let bytes = std::fs::read(&entry).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains("xyzzy"),
                "the token in {}",
                entry.display()
            );
        }
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

fn utc(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .unwrap()
        .format("%Y-%m-%dT%H:%M:%S+00:00")
        .to_string()
}

fn utc_day(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .unwrap()
        .date_naive()
        .to_string()
}

/// Every column of a row, the ones not given NULL.
fn row(given: Value) -> Value {
    let mut row = serde_json::Map::new();
    for column in [
        "action_id",
        "action_timestamp",
        "idsite",
        "idvisit",
        "actions",
        "country",
        "region",
        "city",
        "operatingsystemname",
        "devicemodel",
        "devicebrand",
        "visitduration",
        "dayssincefirstvisit",
        "visitortype",
        "sitename",
        "userid",
        "serverdateprettyfirstaction",
        "action_type",
        "action_eventcategory",
        "action_eventaction",
        "action_eventname",
        "action_eventvalue",
        "action_timespent",
        "usercustomproperties",
        "usercustomdimensions",
        "dimension1",
        "dimension2",
        "dimension3",
        "dimension4",
        "dimension5",
        "dimension6",
        "dimension7",
        "dimension8",
        "dimension9",
        "dimension10",
        "action_url",
        "sitesearchkeyword",
        "action_title",
        "visitorid",
        "referrertype",
        "referrername",
        "resolution",
        "experiments",
    ] {
        row.insert(
            column.into(),
            given.get(column).cloned().unwrap_or(Value::Null),
        );
    }
    Value::Object(row)
}

#[test]
fn etl_run_loads_every_action_then_rereads_the_open_days_and_reruns_change_nothing() {
    util::require_services(util::POSTGRES_VARS);
    let case = Case::new("api_e2e", |yaml| yaml);
    let first = case.etl(&["run", "--source", "matomo-api"], &[]);
    assert!(first.contains("2 visit(s) truncated by Matomo"), "{first}");

    let d1 = day(2);
    let t1 = at(d1, 10, 0);
    let visit101 = json!({"idsite": "1", "idvisit": "101", "actions": "3", "country": "France",
        "region": "Île-de-France", "city": "Paris", "operatingsystemname": "Windows",
        "devicemodel": "", "devicebrand": "Unknown", "visitduration": "245",
        "dayssincefirstvisit": "0", "visitortype": "new", "sitename": "Exemple — Site",
        "serverdateprettyfirstaction": utc_day(t1), "visitorid": "a1b2c3d4e5f60718",
        "referrertype": "search", "referrername": "Google", "resolution": "1920x1080",
        "dimension1": "pro",
        "experiments": [{"idexperiment": "3", "name": "Hero", "variation": {"idvariation": "7", "name": "B"}}]});
    let with = |base: &Value, more: Value| {
        let mut v = base.clone();
        for (k, x) in more.as_object().unwrap() {
            v[k] = x.clone();
        }
        row(v)
    };
    let expected = vec![
        with(
            &visit101,
            json!({"action_id": "101_0", "action_timestamp": utc(t1), "action_type": "action",
            "action_timespent": "40", "action_url": "https://ex.org/?q=é", "action_title": "Accueil 🎉",
            "usercustomproperties": {"plan": "pro", "lang": "fr"}, "dimension2": "hero-b",
            "usercustomdimensions": {"dimension1": "pro", "dimension2": "hero-b"}}),
        ),
        with(
            &visit101,
            json!({"action_id": "101_1", "action_timestamp": utc(t1 + 40), "action_type": "event",
            "action_eventcategory": "video", "action_eventaction": "play", "action_eventname": "intro",
            "action_eventvalue": 12.5, "action_timespent": "5", "dimension2": "visit-level",
            "usercustomdimensions": {"dimension1": "pro", "dimension2": "visit-level"}}),
        ),
        with(
            &visit101,
            json!({"action_id": "101_2", "action_timestamp": utc(t1 + 45), "action_type": "search",
            "action_timespent": "0", "action_url": "https://ex.org/search?q=r%C3%A9gime",
            "sitesearchkeyword": "régime \"sans\" sel\t\\", "dimension2": "visit-level",
            "usercustomdimensions": {"dimension1": "pro", "dimension2": "visit-level"}}),
        ),
    ];
    assert_eq!(case.rows("idvisit = '101'"), expected);
    let t2 = at(d1, 23, 30);
    assert_eq!(
        case.rows("idvisit = '102'"),
        vec![row(
            json!({"action_id": "102_0", "action_timestamp": utc(t2), "idsite": "1", "idvisit": "102",
            "actions": "1", "country": "日本", "visitduration": "0", "dayssincefirstvisit": "12",
            "visitortype": "returning", "sitename": "Exemple — Site", "userid": "user@example.org",
            "serverdateprettyfirstaction": utc_day(t2), "action_type": "goal",
            "visitorid": "ffffffffffffffff", "usercustomdimensions": {}})
        )]
    );
    // The misfit event value is rejected with its reason; its visit's other action loads.
    assert_eq!(case.rows("idvisit = '105'").len(), 1);
    let rejects = rejects_text(&case);
    assert!(
        rejects.contains("105 (element 0 of `actionDetails`)")
            && rejects.contains("action_eventvalue")
            && rejects.contains("n/a"),
        "{rejects}"
    );
    // Site 2, in UTC+5.5: its day is its own; empty dimensions are no value.
    let site2 = case.rows("idsite = '2'");
    assert_eq!(site2.len(), 2);
    assert_eq!(site2[0]["dimension3"], Value::Null);
    assert_eq!(site2[0]["usercustomdimensions"], json!({}));
    assert_eq!(site2[1]["action_timespent"], "3");
    // The two 500-action visits: every action Matomo sent, in order.
    for visit in ["103", "104"] {
        let n = util::count(
            &case.url,
            &format!("SELECT count(*) FROM matomo WHERE idvisit = '{visit}'"),
        );
        assert_eq!(n, 500, "{visit}");
        let last = util::count(&case.url, &format!("SELECT count(*) FROM matomo WHERE action_id = '{visit}_499' AND action_url = 'https://ex.org/p/499'"));
        assert_eq!(last, 1, "{visit}");
    }
    let total = util::count(&case.url, "SELECT count(*) FROM matomo");
    assert_eq!(total, 3 + 1 + 500 + 500 + 1 + 2 + 2);

    // Second run: the open visit of today gained an action and changed one.
    let asked_before = case.server.requests().len();
    case.server.with(|s| {
        s.visits
            .insert((1, day(0).to_string()), vec![open_visit(3, "30")]);
    });
    let second = case.etl(&["run", "--source", "matomo-api"], &[]);
    let open = case.rows("idvisit = '106'");
    assert_eq!(open.len(), 3, "{second}");
    assert_eq!(open[1]["action_timespent"], "30");
    // The window: the last loaded action (today 00:07 in Paris) minus 2 days.
    let last = at(day(0), 0, 6);
    let first_day = chrono::DateTime::from_timestamp(last - 2 * 86_400, 0)
        .unwrap()
        .with_timezone(&PARIS)
        .date_naive();
    let asked = case.days_asked(asked_before);
    assert_eq!(
        asked.first().map(String::as_str),
        Some(first_day.to_string().as_str()),
        "{asked:?}"
    );
    assert!(asked.contains(&day(0).to_string()), "{asked:?}");

    // Third run, nothing changed at the source: nothing changes in the target.
    let digest = util::table_digest(&case.url, "matomo");
    let third = case.etl(&["run", "--source", "matomo-api"], &[]);
    assert_eq!(util::table_digest(&case.url, "matomo"), digest, "{third}");
    case.assert_token_nowhere();
}

fn rejects_text(case: &Case) -> String {
    let staging = case.work.path().join("staging");
    let run = std::fs::read_dir(&staging)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .max()
        .unwrap();
    let (_, batches) = etl::staging::read_batches(&run.join("rejects/matomo.parquet")).unwrap();
    arrow::util::pretty::pretty_format_batches(&batches)
        .unwrap()
        .to_string()
}

#[test]
fn weekly_partitions_are_created_by_the_load_and_the_bundle_alike() {
    util::require_services(util::POSTGRES_VARS);
    let partitioned = |yaml: String| {
        yaml.replace("  primary_key: [action_id]\n", "")
            .replace("  # partition: {", "  partition: {")
            .replace(
                "  # primary_key: [action_id, action_timestamp]",
                "  primary_key: [action_id, action_timestamp]",
            )
    };
    let case = Case::new("api_partitions", partitioned);
    let dry = case.etl(&["run", "--source", "matomo-api", "--dry-run"], &[]);
    assert!(dry.contains("PARTITION OF"), "{dry}");
    case.etl(&["load"], &[]);
    let parts = util::psql(
        &case.url,
        "SELECT string_agg(c.relname, ',' ORDER BY c.relname) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'matomo'::regclass",
    );
    // One partition per ISO week (in UTC) holding an action, named as the existing sync names them.
    let weeks: std::collections::BTreeSet<String> = util::psql(
        &case.url,
        "SELECT DISTINCT 'matomo_' || to_char(date_trunc('week', action_timestamp AT TIME ZONE 'UTC'), 'IYYY\"w\"IW') FROM matomo",
    )
    .lines()
    .map(|l| l.trim().to_string())
    .filter(|l| !l.is_empty())
    .collect();
    let parts: std::collections::BTreeSet<String> =
        parts.trim().split(',').map(str::to_string).collect();
    assert_eq!(parts, weeks);
    let total = util::count(&case.url, "SELECT count(*) FROM matomo");
    assert_eq!(total, 3 + 1 + 500 + 500 + 1 + 2 + 2);
    // The same run as a bundle, applied by psql to another database: the same rows.
    let other = util::fresh_database("api_partitions_bundle");
    case.etl(&["load", "--to", "sql", "--out", "bundle"], &[]);
    let run = std::fs::read_dir(case.work.path().join("bundle"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .unwrap();
    let out = util::apply_bundle(&run, &other);
    assert!(out.status.success(), "{}", util::stderr(&out));
    assert_eq!(
        util::table_digest(&other, "matomo"),
        util::table_digest(&case.url, "matomo")
    );
    // A rerun writes nothing and creates no partition.
    let digest = util::table_digest(&case.url, "matomo");
    case.etl(&["run", "--source", "matomo-api"], &[]);
    assert_eq!(util::table_digest(&case.url, "matomo"), digest);
    case.assert_token_nowhere();
}

#[test]
fn force_startdate_and_since_choose_the_first_day() {
    util::require_services(util::POSTGRES_VARS);
    let case = Case::new("api_window", |yaml| yaml);
    case.etl(&["run", "--source", "matomo-api"], &[]);
    // The watermark would start at today minus 2 days; FORCE_STARTDATE takes STARTDATE.
    let before = case.server.requests().len();
    case.etl(
        &["extract", "--source", "matomo-api"],
        &[
            ("FORCE_STARTDATE", "true"),
            ("STARTDATE", &day(5).to_string()),
        ],
    );
    assert_eq!(case.days_asked(before).first(), Some(&day(5).to_string()));
    // --since is the first day, as given.
    let before = case.server.requests().len();
    case.etl(
        &[
            "extract",
            "--source",
            "matomo-api",
            "--since",
            &day(0).to_string(),
        ],
        &[],
    );
    let asked = case.days_asked(before);
    assert_eq!(
        asked.iter().collect::<Vec<_>>(),
        [&day(0).to_string()],
        "{asked:?}"
    );
}

#[test]
fn a_mapping_added_after_the_extract_is_replayed_offline_from_the_visit_json() {
    util::require_services(util::POSTGRES_VARS);
    let case = Case::new("api_replay", |yaml| yaml);
    case.etl(&["extract", "--source", "matomo-api"], &[]);
    // A key no column read at extract time, and an action key.
    let yaml = std::fs::read_to_string(case.work.path().join("config/matomo_api.yaml")).unwrap();
    let yaml = yaml.replace(
        "    - { name: experiments, sql_type: JSONB }\n",
        "    - { name: experiments, sql_type: JSONB }\n    - { name: pretty_first, sql_type: TEXT, source: serverDatePrettyFirstAction }\n    - { name: goal_name, sql_type: TEXT, source: element.goalName }\n",
    );
    case.work.write("config/matomo_api.yaml", &yaml);
    // No API from here on.
    let offline = [
        ("MATOMO_URL", "http://127.0.0.1:9"),
        ("MATOMO_KEY", "unused"),
    ];
    case.etl(&["transform"], &offline);
    case.etl(&["load"], &offline);
    let shown = util::psql(
        &case.url,
        "SELECT action_id || '=' || coalesce(pretty_first, '-') || '/' || coalesce(goal_name, '-') FROM matomo WHERE idvisit IN ('101', '102') ORDER BY 1",
    );
    assert_eq!(
        shown.split_whitespace().collect::<Vec<_>>(),
        [
            "101_0=lundi",
            "4",
            "mars",
            "2024/-",
            "101_1=lundi",
            "4",
            "mars",
            "2024/-",
            "101_2=lundi",
            "4",
            "mars",
            "2024/-",
            "102_0=-/signup"
        ]
    );
}

/// Column expressions work on API tables too: a `value_map` on an action key, a `regex` on a
/// visit key (a string on site 1, a number on site 2), a `const`.
#[test]
fn api_columns_take_expressions() {
    util::require_services(util::POSTGRES_VARS);
    let case = Case::new("api_expr", |yaml| {
        yaml.replace(
            "    - { name: experiments, sql_type: JSONB }\n",
            "    - { name: experiments, sql_type: JSONB }\n    - { name: kind, sql_type: TEXT, source: element.type, value_map: { action: page, download: file }, default: other }\n    - { name: visit_no, sql_type: INTEGER, source: idVisit, regex: '^(\\d)' }\n    - { name: origin, sql_type: TEXT, nullable: false, const: api }\n",
        )
    });
    case.etl(&["run", "--source", "matomo-api"], &[]);
    let shown = util::psql(
        &case.url,
        "SELECT action_id || '=' || kind || '/' || visit_no || '/' || origin FROM matomo \
         WHERE idvisit IN ('101', '201') ORDER BY 1",
    );
    assert_eq!(
        shown.lines().collect::<Vec<_>>(),
        [
            "101_0=page/1/api",
            "101_1=other/1/api",
            "101_2=other/1/api",
            "201_0=file/2/api",
            "201_1=other/2/api",
        ]
    );
}
