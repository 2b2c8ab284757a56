//! The live-MongoDB path over the wire: the real `etl` binary, through the official driver,
//! against a MongoDB wire-protocol server. No `mongod` can be installed on the project's
//! machines, so by default each test starts the OP_MSG server of `tests/util/wire.rs` on a
//! loopback port; with `ETL_TEST_MONGODB_URL` set (a plain `mongodb://` URL of a standalone or
//! primary, without TLS), the same tests run against that real server instead. The first test
//! to start prints which one ran.
//!
//! Either way `etl` reaches the server through a tap (`wire::Tap`) that records the commands
//! the driver sends and can close a connection mid-cursor, so the assertions on the wire
//! (the window filter, `getMore`) and the dropped connection hold for both servers.
//!
//! The live path and the mongodump path share the converter: the same documents must give
//! byte-identical output through both.

mod util;
#[path = "util/wire.rs"]
mod wire;

use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};

use bson::{doc, Bson, Document};
use etl::staging::{self, ManifestEntry, Stage};
use util::smartdiet::{self, Sizes};
use util::*;
use wire::{FakeMongo, Tap};

/// The extractor's cursor batch (`src/extract/mongo_live.rs`).
const CURSOR_BATCH: usize = 5_000;
/// Users for the cursor tests: two full batches and a partial third.
const MANY_USERS: usize = 2 * CURSOR_BATCH + 1;

/// The server the documents live in.
enum Server {
    /// The wire-protocol server of `tests/util/wire.rs`, started for this test.
    Test(FakeMongo),
    /// The real server `ETL_TEST_MONGODB_URL` names; `addr` is its (first) host.
    Real { url: String, addr: SocketAddr },
}

type Collections = Vec<(String, Vec<Document>)>;

impl Server {
    fn start() -> Server {
        let server = match std::env::var("ETL_TEST_MONGODB_URL") {
            Ok(url) if !url.is_empty() => Server::Real {
                addr: first_host(&url),
                url,
            },
            _ => Server::Test(FakeMongo::start()),
        };
        server.announce();
        server
    }

    /// One line per test binary saying which server ran; straight to the process's stderr,
    /// because the test harness captures `println!` of passing tests.
    fn announce(&self) {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let line = match self {
                Server::Test(s) => format!(
                    "mongo_live: MongoDB wire-protocol test server (tests/util/wire.rs) on {}; \
                     set ETL_TEST_MONGODB_URL to run these tests against a real server",
                    s.addr()
                ),
                Server::Real { addr, .. } => {
                    format!("mongo_live: real MongoDB server from ETL_TEST_MONGODB_URL ({addr})")
                }
            };
            let _ = writeln!(std::io::stderr(), "{line}");
        });
    }

    fn addr(&self) -> SocketAddr {
        match self {
            Server::Test(s) => s.addr(),
            Server::Real { addr, .. } => *addr,
        }
    }

    /// `MONGODB_URL` for `etl`: the server's, with the tap as its only host.
    fn url_through(&self, tap: &Tap) -> String {
        match self {
            Server::Test(_) => format!("mongodb://{}/?directConnection=true", tap.addr()),
            Server::Real { url, .. } => url_via(url, tap.addr()),
        }
    }

    /// Replaces the database's content with these collections.
    fn seed(&self, db: &str, collections: &Collections) {
        match self {
            Server::Test(s) => {
                for (name, docs) in collections {
                    s.insert(db, name, docs);
                }
            }
            Server::Real { url, .. } => block_on(async {
                let client = mongodb::Client::with_uri_str(url).await.unwrap();
                let database = client.database(db);
                database.drop().await.unwrap();
                for (name, docs) in collections {
                    database
                        .collection::<Document>(name)
                        .insert_many(docs)
                        .await
                        .unwrap();
                }
            }),
        }
    }

    /// `$set` on one document, by `_id`.
    fn set_fields(&self, db: &str, collection: &str, id: Bson, set: Document) {
        match self {
            Server::Test(s) => assert!(s.set_fields(db, collection, &id, &set), "no _id {id}"),
            Server::Real { url, .. } => block_on(async {
                let client = mongodb::Client::with_uri_str(url).await.unwrap();
                let coll = client.database(db).collection::<Document>(collection);
                let result = coll
                    .update_one(doc! { "_id": id }, doc! { "$set": set })
                    .await
                    .unwrap();
                assert_eq!(result.matched_count, 1);
            }),
        }
    }

    /// The test server answered every command the driver sent (a new command in a driver
    /// release shows up here).
    fn assert_no_unknown_commands(&self) {
        if let Server::Test(s) = self {
            assert_eq!(s.unknown_commands(), Vec::<String>::new());
        }
    }
}

fn block_on<F: std::future::Future<Output = ()>>(f: F) {
    tokio::runtime::Runtime::new().unwrap().block_on(f)
}

/// The first host of a `mongodb://` URL, resolved.
fn first_host(url: &str) -> SocketAddr {
    let (_, hosts, _) = split_mongodb_url(url);
    let host = hosts.split(',').next().unwrap_or_default();
    let host = if host.ends_with(']') || !host.contains(':') {
        format!("{host}:27017")
    } else {
        host.to_string()
    };
    host.to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .unwrap_or_else(|| panic!("ETL_TEST_MONGODB_URL: cannot resolve its host {host}"))
}

/// `url` with `addr` as its only host and `directConnection=true`; user, password, database
/// and options stay.
fn url_via(url: &str, addr: SocketAddr) -> String {
    let (userinfo, _, tail) = split_mongodb_url(url);
    let userinfo = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
    let tail = match tail {
        "" | "/" => "/?".to_string(),
        t if t.contains('?') => format!("{t}&"),
        t => format!("{t}?"),
    };
    format!("mongodb://{userinfo}{addr}{tail}directConnection=true")
}

/// `(userinfo, hosts, "/db?options")`; the userinfo runs to the last `@`, as in `etl`.
fn split_mongodb_url(url: &str) -> (Option<&str>, &str, &str) {
    let rest = url.strip_prefix("mongodb://").unwrap_or_else(|| {
        panic!(
            "ETL_TEST_MONGODB_URL must be a mongodb:// URL: the tests put a tap in front of \
             the server, which a mongodb+srv:// URL cannot have"
        )
    });
    let lower = rest.to_ascii_lowercase();
    assert!(
        !lower.contains("tls=true") && !lower.contains("ssl=true"),
        "ETL_TEST_MONGODB_URL: the tap in front of the server reads the wire, so no TLS"
    );
    let (userinfo, after) = match rest.rsplit_once('@') {
        Some((u, a)) => (Some(u), a),
        None => (None, rest),
    };
    let end = after.find(['/', '?']).unwrap_or(after.len());
    (userinfo, &after[..end], &after[end..])
}

/// A database name no other test (or test run) uses.
fn database_name() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "etl_live_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// The SmartDiet sample: every collection, `users` users.
fn smartdiet_collections(users: usize) -> Collections {
    let s = Sizes::for_users(users);
    let mut collections: Collections = smartdiet::other_collections(&s)
        .into_iter()
        .map(|(n, d)| (n.to_string(), d))
        .collect();
    collections.push(("users".into(), users_only(users).remove(0).1));
    collections
}

/// Only the `users` collection of the sample.
fn users_only(users: usize) -> Collections {
    let s = Sizes::for_users(users);
    let mut rng = smartdiet::Lcg::new(42);
    let docs = (0..users)
        .map(|i| smartdiet::user(i, &s, &mut rng))
        .collect();
    vec![("users".into(), docs)]
}

fn live_env(url: &str, db: &str) -> Vec<(&'static str, String)> {
    vec![
        ("MONGODB_URL", url.to_string()),
        ("MONGODB_DATABASE", db.to_string()),
    ]
}

fn etl_ok(work: &Workdir, args: &[&str], env: &[(&'static str, String)]) -> String {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = work.etl(args, &env);
    assert!(
        out.status.success(),
        "etl {args:?}:\n{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    stdout(&out)
}

fn latest(work: &Workdir, stage: Stage) -> staging::RunDir {
    staging::latest_run(&work.path().join("staging"), stage)
        .unwrap()
        .unwrap_or_else(|| panic!("no finished {stage:?} run"))
}

fn manifest_entries(work: &Workdir, stage: Stage) -> Vec<ManifestEntry> {
    latest(work, stage).manifest(stage).unwrap().entries
}

/// Per manifest entry, its name and the digests of its files.
fn digests(entries: &[ManifestEntry]) -> Vec<(String, String)> {
    entries
        .iter()
        .map(|e| {
            let files: Vec<&str> = e.files.iter().map(|f| f.sha256.as_str()).collect();
            (e.name.clone(), files.join(","))
        })
        .collect()
}

/// The same collections as a mongodump folder, extracted (and transformed) in a new workdir.
fn dump_workdir(collections: &Collections, extract_args: &[&str]) -> Workdir {
    let dump = Workdir::new();
    let dir = dump.path().join("dump/app");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, docs) in collections {
        smartdiet::write_collection(&dir, name, docs.iter());
    }
    dump.extract_transform_dump(&dir, extract_args, &[]);
    dump
}

/// `{$or: [{creation_date: {$gte: since}}, {update_date: {$gte: since}}]}`, written here
/// independently of the extractor.
fn window(since: bson::DateTime) -> Document {
    doc! { "$or": [ { "creation_date": { "$gte": since } }, { "update_date": { "$gte": since } } ] }
}

fn millis(d: &Document, key: &str) -> Option<i64> {
    d.get_datetime(key).ok().map(|t| t.timestamp_millis())
}

/// The `find`s the driver sent for one collection.
fn finds_of(tap: &Tap, collection: &str) -> Vec<Document> {
    let mut finds = tap.commands_named("find");
    finds.retain(|c| c.get_str("find") == Ok(collection));
    finds
}

fn batch_size(command: &Document) -> Option<i64> {
    command
        .get("batchSize")
        .and_then(|v| v.as_i32().map(i64::from).or_else(|| v.as_i64()))
}

#[test]
fn live_and_dump_paths_give_identical_rows() {
    let server = Server::start();
    let db = database_name();
    let collections = smartdiet_collections(200);
    server.seed(&db, &collections);
    let tap = Tap::start(server.addr(), None);
    let live = Workdir::new();
    let env = live_env(&server.url_through(&tap), &db);
    etl_ok(&live, &["extract", "--source", "mongo"], &env);
    etl_ok(&live, &["transform"], &env);

    let dump = dump_workdir(&collections, &[]);
    let live_digests = digests(&manifest_entries(&live, Stage::Transform));
    assert!(!live_digests.is_empty());
    assert_eq!(
        live_digests,
        digests(&manifest_entries(&dump, Stage::Transform))
    );
    // Every collection was read with one find, none with an empty projection.
    for (name, _) in &collections {
        let finds = finds_of(&tap, name);
        assert_eq!(finds.len(), 1, "{name}: {finds:?}");
        assert!(finds[0]
            .get_document("projection")
            .is_ok_and(|p| !p.is_empty()));
    }
    server.assert_no_unknown_commands();
}

#[test]
fn live_incremental_window_is_a_server_side_inclusive_filter() {
    let server = Server::start();
    let db = database_name();
    let collections = smartdiet_collections(50);
    server.seed(&db, &collections);
    let users = &collections.iter().find(|(n, _)| n == "users").unwrap().1;
    let tap = Tap::start(server.addr(), None);
    let work = Workdir::new();
    let url = fresh_database("mongo_live");
    let mut env = live_env(&server.url_through(&tap), &db);
    env.push(("DATABASE_URL", url.clone()));
    etl_ok(&work, &["run", "--source", "mongo"], &env);

    // Three users change after the load.
    let later = smartdiet::at(100_000);
    for u in users.iter().take(3) {
        let id = u.get("_id").unwrap().clone();
        server.set_fields(
            &db,
            "users",
            id,
            doc! { "update_date": later, "firstname": "Changed" },
        );
    }
    // Expected: the changed ones plus those exactly at the loaded watermark (inclusive).
    let stamp = |d: &Document| {
        millis(d, "creation_date")
            .unwrap_or(i64::MIN)
            .max(millis(d, "update_date").unwrap_or(i64::MIN))
    };
    let max = users.iter().map(stamp).max().unwrap();
    let expected = 3 + users.iter().skip(3).filter(|d| stamp(d) >= max).count();

    let text = etl_ok(
        &work,
        &["run", "--source", "mongo", "--tables", "users"],
        &env,
    );
    let line = text.lines().find(|l| l.starts_with("users ")).unwrap();
    let rows: usize = line.split_whitespace().nth(2).unwrap().parse().unwrap();
    assert_eq!(rows, expected, "{text}");
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM users WHERE firstname = 'Changed'"
        ),
        3
    );
    // The second run's find carried the window from the loaded watermark.
    let finds = finds_of(&tap, "users");
    assert_eq!(finds.len(), 2, "{finds:?}");
    assert_eq!(
        finds[1].get_document("filter").unwrap(),
        &window(bson::DateTime::from_millis(max))
    );
    server.assert_no_unknown_commands();
}

#[test]
fn server_side_window_returns_only_matching_documents() {
    const DAY: i64 = 24 * 60;
    let server = Server::start();
    let db = database_name();
    let mut collections = users_only(40);
    // One user a day from 2024-03-01; a quarter updated 20 days later, a quarter never
    // updated, a quarter with an update_date the server must not compare with a date.
    for (i, user) in (0i64..).zip(collections[0].1.iter_mut()) {
        user.insert("creation_date", smartdiet::at(i * DAY));
        match i % 4 {
            0 => user.insert("update_date", smartdiet::at((i + 20) * DAY)),
            1 => user.remove("update_date"),
            2 => user.insert("update_date", "2099-01-01"),
            _ => user.insert("update_date", smartdiet::at(i * DAY + 60)),
        };
    }
    server.seed(&db, &collections);
    let tap = Tap::start(server.addr(), None);
    let work = Workdir::new();
    let env = live_env(&server.url_through(&tap), &db);
    let since = smartdiet::at(20 * DAY); // 2024-03-21T00:00:00Z
    etl_ok(
        &work,
        &[
            "extract",
            "--source",
            "mongo",
            "--tables",
            "users",
            "--since",
            "2024-03-21",
        ],
        &env,
    );

    let finds = finds_of(&tap, "users");
    assert_eq!(finds.len(), 1, "{finds:?}");
    assert_eq!(finds[0].get_document("filter").unwrap(), &window(since));
    assert_eq!(batch_size(&finds[0]), Some(5_000));
    let in_window = |d: &&Document| {
        [millis(d, "creation_date"), millis(d, "update_date")]
            .into_iter()
            .flatten()
            .any(|t| t >= since.timestamp_millis())
    };
    let expected = collections[0].1.iter().filter(in_window).count();
    assert_eq!(
        expected, 25,
        "20 created in the window + 5 older ones updated in it"
    );
    let entries = manifest_entries(&work, Stage::Extract);
    let users = entries.iter().find(|e| e.name == "users").unwrap();
    // What the server sent (scanned) is what matched: the filter ran on the server.
    assert_eq!(users.scanned, Some(25));
    assert_eq!(users.rows, 25);
    server.assert_no_unknown_commands();
}

#[test]
fn cursor_spanning_several_batches_reads_every_document_with_get_more() {
    let server = Server::start();
    let db = database_name();
    let collections = users_only(MANY_USERS);
    server.seed(&db, &collections);
    let tap = Tap::start(server.addr(), None);
    let live = Workdir::new();
    let env = live_env(&server.url_through(&tap), &db);
    etl_ok(
        &live,
        &["extract", "--source", "mongo", "--tables", "users"],
        &env,
    );

    let finds = finds_of(&tap, "users");
    assert_eq!(finds.len(), 1, "{finds:?}");
    let get_mores = tap.commands_named("getMore");
    assert_eq!(
        get_mores.len(),
        2,
        "5000 + 5000 + 1 documents: {get_mores:?}"
    );
    for g in &get_mores {
        assert_eq!(g.get_str("collection"), Ok("users"));
        assert_eq!(batch_size(g), Some(5_000));
    }
    let entries = manifest_entries(&live, Stage::Extract);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].rows, u64::try_from(MANY_USERS).unwrap());
    // The batches were put back together in order: the same bytes as the dump path.
    let dump = dump_workdir(&collections, &["--tables", "users"]);
    assert_eq!(
        digests(&entries),
        digests(&manifest_entries(&dump, Stage::Extract))
    );
    if let Server::Test(s) = &server {
        assert_eq!(s.open_cursors(), 0, "the cursor was read to its end");
    }
    server.assert_no_unknown_commands();
}

#[test]
fn connection_dropped_mid_cursor_fails_the_extract_and_keeps_the_previous_run() {
    let server = Server::start();
    let db = database_name();
    server.seed(&db, &users_only(MANY_USERS));
    let work = Workdir::new();
    let extract = ["extract", "--source", "mongo", "--tables", "users"];
    let healthy = Tap::start(server.addr(), None);
    etl_ok(
        &work,
        &extract,
        &live_env(&server.url_through(&healthy), &db),
    );
    let previous = latest(&work, Stage::Extract).id;

    // The connection closes when the driver asks for the third batch.
    let cutting = Tap::start(server.addr(), Some(2));
    let env = live_env(&server.url_through(&cutting), &db);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = work.etl(&extract, &env);
    let err = stderr(&out);
    assert_eq!(cutting.closed(), 1, "the tap closed the connection: {err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: ") && last.contains("collection `users`: "),
        "{err}"
    );
    assert!(
        last.contains(
            "reading stopped after 10000 documents, the connection to the server was lost"
        ),
        "{err}"
    );
    assert_eq!(latest(&work, Stage::Extract).id, previous);
    let runs = staging::list_runs(&work.path().join("staging")).unwrap();
    assert_eq!(
        runs.len(),
        2,
        "the failed run left its folder, without a manifest"
    );
    server.assert_no_unknown_commands();
}

/// The real-server path cannot run here: at least the URL it hands `etl` must keep the
/// credentials, database and options and be one the driver accepts.
#[test]
fn url_through_the_tap_keeps_credentials_database_and_options() {
    let tap: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let cases = [
        (
            "mongodb://bob:p@ss@h1:27018,h2/app?replicaSet=rs0",
            "mongodb://bob:p@ss@127.0.0.1:9/app?replicaSet=rs0&directConnection=true",
        ),
        (
            "mongodb://h1",
            "mongodb://127.0.0.1:9/?directConnection=true",
        ),
        (
            "mongodb://h1/app",
            "mongodb://127.0.0.1:9/app?directConnection=true",
        ),
    ];
    for (url, expected) in cases {
        let via = url_via(url, tap);
        assert_eq!(via, expected);
        let escaped = via.replace("p@ss", "p%40ss");
        let parsed = mongodb::options::ConnectionString::parse(&escaped)
            .unwrap_or_else(|e| panic!("{via}: {e}"));
        let mongodb::options::HostInfo::HostIdentifiers(hosts) = parsed.host_info else {
            panic!("{via}: not a host list");
        };
        let hosts: Vec<String> = hosts.iter().map(ToString::to_string).collect();
        assert_eq!(hosts, ["127.0.0.1:9"], "{via}");
        assert_eq!(parsed.direct_connection, Some(true), "{via}");
    }
    assert_eq!(
        first_host("mongodb://u:p@127.0.0.1:27018,other:1/app"),
        "127.0.0.1:27018".parse().unwrap()
    );
    assert_eq!(
        first_host("mongodb://[::1]/app"),
        "[::1]:27017".parse().unwrap()
    );
}
