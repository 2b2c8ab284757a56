//! `etl verify` against the real PostgreSQL: zero mismatches after a real run; each kind of
//! damage (a row deleted, a value changed, a link removed, a row added by hand, a foreign key
//! pointing nowhere) exits 1 naming the table and the key; `--against` compares two copies;
//! `--sample` limits the value comparison, not the counts; `--json` writes the report.

mod util;

use std::path::PathBuf;
use std::process::Output;

use util::*;

struct Case {
    work: Workdir,
    dump: PathBuf,
    url: String,
}

impl Case {
    /// A dump of `users` users run into a fresh database.
    fn new(users: usize) -> Case {
        let work = Workdir::new();
        let dump = util::smartdiet::write_dump(&work.path().join("dump"), users);
        let url = fresh_database("verify");
        let case = Case { work, dump, url };
        let out = case.etl(&["run", "--source", "dump", "--dump", case.dump_arg()]);
        assert!(out.status.success(), "{}", stderr(&out));
        case
    }

    fn dump_arg(&self) -> &str {
        self.dump.to_str().unwrap()
    }

    fn etl(&self, args: &[&str]) -> Output {
        self.work.etl(args, &[("DATABASE_URL", self.url.as_str())])
    }

    fn verify(&self, extra: &[&str]) -> Output {
        let mut args = vec!["verify", "--source", "dump", "--dump", self.dump_arg()];
        args.extend_from_slice(extra);
        self.etl(&args)
    }
}

/// The summary row of `table` in verify's output, split on whitespace.
fn row(out: &str, table: &str) -> Vec<String> {
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(table))
        .unwrap_or_else(|| panic!("no row for {table}:\n{out}"))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

#[test]
fn a_real_run_verifies_and_each_kind_of_damage_is_named() {
    let case = Case::new(120);
    let out = case.verify(&[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(text.contains("everything matches"), "{text}");
    // table source expected target missing extra differing/compared rejected fk/dup result
    let users = row(&text, "users");
    assert_eq!(&users[1..5], ["120", "120", "120", "0"], "{text}");
    assert_eq!(users[6], "0/120", "{text}");
    assert!(
        !text.contains("matomo_log"),
        "only the tables of the source read are compared:\n{text}"
    );
    assert!(
        !case
            .work
            .path()
            .join("staging")
            .read_dir()
            .unwrap()
            .any(|e| e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".verify")),
        "a matching verify removes its scratch run"
    );

    let user = psql(
        &case.url,
        "SELECT id FROM users ORDER BY id LIMIT 1 OFFSET 7",
    );
    let user = user.trim();
    let gone_message = psql(&case.url, "SELECT id FROM messages ORDER BY id LIMIT 1");
    let gone_message = gone_message.trim();
    let link = psql(
        &case.url,
        "SELECT user_id || ',' || target_id || ',' || type FROM users_targets ORDER BY 1 LIMIT 1",
    );
    let link = link.trim();
    let (link_user, link_rest) = link.split_once(',').unwrap();
    let (link_target, link_type) = link_rest.split_once(',').unwrap();
    psql(
        &case.url,
        &format!(
            "UPDATE users SET lastname = 'changed by hand' WHERE id = '{user}';
             DELETE FROM messages WHERE id = '{gone_message}';
             DELETE FROM users_targets WHERE user_id = '{link_user}' AND target_id = '{link_target}' AND type = '{link_type}';
             INSERT INTO targets (id, created_at, updated_at, name) VALUES ('added-by-hand', now(), now(), 'x');"
        ),
    );
    let report = case.work.path().join("report.json");
    let out = case.verify(&["--json", report.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    for (table, result) in [
        ("users", "MISMATCH"),
        ("messages", "MISMATCH"),
        ("users_targets", "MISMATCH"),
        ("targets", "MISMATCH"),
        ("companies", "ok"),
    ] {
        assert_eq!(
            row(&text, table).last().unwrap(),
            result,
            "{table}:\n{text}"
        );
    }
    assert_eq!(
        row(&text, "messages")[4],
        "1",
        "one message missing:\n{text}"
    );
    assert_eq!(row(&text, "targets")[5], "1", "one target extra:\n{text}");
    for detail in [
        format!("differs, key {user}"),
        "lastname: expected".to_string(),
        "\"changed by hand\"".to_string(),
        format!("1 missing in the target: {gone_message}"),
        format!("1 missing in the target: {link}"),
        "1 parent(s) whose set of links differs".to_string(),
        "1 not in the source: added-by-hand".to_string(),
    ] {
        assert!(text.contains(&detail), "no `{detail}` in:\n{text}");
    }
    assert!(
        stderr(&out).contains("4 table(s) differ"),
        "{}",
        stderr(&out)
    );
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let tables = json["tables"].as_array().unwrap();
    let users = tables.iter().find(|t| t["table"] == "users").unwrap();
    assert_eq!(users["differing"]["count"], 1);
    assert_eq!(users["differing"]["keys"][0], user);
    assert!(
        json["scratch"].is_string(),
        "a mismatch keeps the scratch run: {json}"
    );

    // A foreign key pointing nowhere (the constraint dropped by someone first).
    psql(
        &case.url,
        "ALTER TABLE users DROP CONSTRAINT users_company_id_fkey;
         UPDATE users SET company_id = 'no-such-company' WHERE id = (SELECT min(id) FROM users);",
    );
    let out = case.verify(&["--tables", "users"]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert!(
        text.contains("1 row(s) whose company_id points nowhere"),
        "{text}"
    );
}

#[test]
fn sample_limits_the_value_comparison_not_the_counts() {
    let case = Case::new(60);
    psql(&case.url, "DELETE FROM users_targets WHERE user_id = (SELECT max(id) FROM users); DELETE FROM user_events WHERE user_id = (SELECT max(id) FROM users); DELETE FROM users WHERE id = (SELECT max(id) FROM users)");
    let out = case.verify(&["--tables", "users", "--sample", "5"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let users = row(&stdout(&out), "users");
    assert_eq!(
        users[4], "1",
        "the missing key is found whatever the sample"
    );
    assert_eq!(users[6], "0/5", "5 keys compared value by value");
}

#[test]
fn against_compares_the_target_with_another_database() {
    let case = Case::new(40);
    let copy = fresh_database("verify_copy");
    let out = case.work.etl(&["load"], &[("DATABASE_URL", copy.as_str())]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = case.etl(&["verify", "--against", &copy]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    assert_eq!(row(&text, "users")[1], "-", "no source side: {text}");
    psql(
        &copy,
        "UPDATE companies SET name = 'renamed' WHERE id = (SELECT min(id) FROM companies)",
    );
    let out = case.etl(&["verify", "--against", &copy]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    assert_eq!(
        row(&text, "companies").last().unwrap(),
        "MISMATCH",
        "{text}"
    );
    assert!(text.contains("name: expected \"renamed\""), "{text}");
}
