//! The live-MongoDB path against a real server. No MongoDB server can be installed on the
//! project's machines, so these tests are ignored unless run with `--ignored` and
//! `ETL_TEST_MONGODB_URL` set (`make test` does both when the variable is set); `cargo test`
//! lists them as ignored, i.e. not run.
//!
//! The live path and the mongodump path share the converter: the same documents must give
//! byte-identical transform output through both.

mod util;

use util::smartdiet::{self, Sizes};
use util::*;

fn mongo_url() -> String {
    std::env::var("ETL_TEST_MONGODB_URL")
        .expect("ETL_TEST_MONGODB_URL must point at a MongoDB server")
}

/// Inserts the SmartDiet sample into a fresh database; returns its name.
fn seed(users: usize) -> (String, Vec<(String, Vec<bson::Document>)>) {
    let db = format!("etl_live_{}", std::process::id());
    let s = Sizes::for_users(users);
    let mut collections: Vec<(String, Vec<bson::Document>)> = smartdiet::other_collections(&s)
        .into_iter()
        .map(|(n, d)| (n.to_string(), d))
        .collect();
    let mut rng = smartdiet::Lcg::new(42);
    collections.push((
        "users".into(),
        (0..users)
            .map(|i| smartdiet::user(i, &s, &mut rng))
            .collect(),
    ));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = mongodb::Client::with_uri_str(mongo_url()).await.unwrap();
        let database = client.database(&db);
        database.drop().await.unwrap();
        for (name, docs) in &collections {
            database
                .collection::<bson::Document>(name)
                .insert_many(docs)
                .await
                .unwrap();
        }
    });
    (db, collections)
}

fn transform_digests(work: &Workdir) -> Vec<(String, String)> {
    let run =
        etl::staging::latest_run(&work.path().join("staging"), etl::staging::Stage::Transform)
            .unwrap()
            .unwrap();
    let m = run.manifest(etl::staging::Stage::Transform).unwrap();
    m.entries
        .iter()
        .map(|e| {
            (
                e.name.clone(),
                e.files
                    .iter()
                    .map(|f| f.sha256.clone())
                    .collect::<Vec<_>>()
                    .join(","),
            )
        })
        .collect()
}

#[test]
#[ignore = "needs a MongoDB server: set ETL_TEST_MONGODB_URL and run with --ignored"]
fn live_and_dump_paths_give_identical_rows() {
    let (db, collections) = seed(200);
    let live = Workdir::new();
    let env = [
        ("MONGODB_URL", mongo_url()),
        ("MONGODB_DATABASE", db.clone()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    for args in [vec!["extract", "--source", "mongo"], vec!["transform"]] {
        let out = live.etl(&args, &env);
        assert!(out.status.success(), "{}", stderr(&out));
    }

    let dump = Workdir::new();
    let dir = dump.path().join("dump/app");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, docs) in &collections {
        smartdiet::write_collection(&dir, name, docs.iter());
    }
    dump.extract_transform_dump(&dir, &[], &[]);
    assert_eq!(transform_digests(&live), transform_digests(&dump));
}

#[test]
#[ignore = "needs a MongoDB server: set ETL_TEST_MONGODB_URL and run with --ignored"]
fn live_incremental_window_is_a_server_side_inclusive_filter() {
    let (db, collections) = seed(50);
    let users = &collections.iter().find(|(n, _)| n == "users").unwrap().1;
    let work = Workdir::new();
    let url = fresh_database("mongo_live");
    let env = [
        ("MONGODB_URL", mongo_url()),
        ("MONGODB_DATABASE", db.clone()),
        ("DATABASE_URL", url.clone()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let out = work.etl(&["run", "--source", "mongo"], &env);
    assert!(out.status.success(), "{}", stderr(&out));

    // Three users change after the load.
    let later = smartdiet::at(100_000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let client = mongodb::Client::with_uri_str(mongo_url()).await.unwrap();
        let coll = client.database(&db).collection::<bson::Document>("users");
        for u in users.iter().take(3) {
            let id = u.get_object_id("_id").unwrap();
            coll.update_one(
                bson::doc! { "_id": id },
                bson::doc! { "$set": { "update_date": later, "firstname": "Changed" } },
            )
            .await
            .unwrap();
        }
    });
    // Expected: the changed ones plus those exactly at the loaded watermark (inclusive).
    let ts = |d: &bson::Document, k: &str| {
        d.get_datetime(k)
            .map(|t| t.timestamp_millis())
            .unwrap_or(i64::MIN)
    };
    let max = users
        .iter()
        .map(|d| ts(d, "creation_date").max(ts(d, "update_date")))
        .max()
        .unwrap();
    let expected = 3 + users
        .iter()
        .skip(3)
        .filter(|d| ts(d, "creation_date") >= max || ts(d, "update_date") >= max)
        .count();

    let out = work.etl(&["run", "--source", "mongo", "--tables", "users"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.starts_with("users "))
        .unwrap()
        .to_string();
    assert_eq!(
        line.split_whitespace()
            .nth(2)
            .unwrap()
            .parse::<usize>()
            .unwrap(),
        expected,
        "{text}"
    );
    assert_eq!(
        count(
            &url,
            "SELECT count(*) FROM users WHERE firstname = 'Changed'"
        ),
        3
    );
}
