//! What a load leaves in the target's `etl` schema, in the load's own transaction: the run in
//! `etl.runs`, and in `etl.history` what `etl rollback` needs to undo it.
//!
//! History per table, by the arm the load took:
//!
//! * the table was empty: one `e` row. Every row the load wrote carries its transaction id
//!   (`xmin`), so nothing per row is needed: this keeps a first load as fast as without
//!   history.
//! * the table had rows: `i` (key of each inserted row), `b` (the previous version of each row
//!   the upsert changes, with its `xmin`), `d` (each child row deleted because its parent's set
//!   changed, or each row a `truncate_before_import` removed).
//!
//! A row the run wrote still carries the run's transaction id unless someone changed it since:
//! that is how a rollback tells "changed after the load" apart. A rollback restores old
//! versions, which gives them its own transaction id; `etl.restored` maps those back to the id
//! they had, so an older run's rollback still recognises them.
//!
//! Every statement here is plain SQL run by the plan's executors, so a SQL bundle applied by
//! psql writes the same ledger as a live load.

use crate::config::ddl::ident;
use crate::config::TableSpec;

use super::plan::literal;

/// Pins the transaction's `search_path` to what it resolves to now, without the `etl`
/// schema: with PostgreSQL's default path (`"$user", public`), a role named `etl` would
/// otherwise find (and create) its tables in the ledger's schema once it exists.
pub(crate) const PIN_SEARCH_PATH: &str = "SELECT set_config('search_path', \
    coalesce(string_agg(quote_ident(s), ', ' ORDER BY n), 'public'), true) \
    FROM unnest(current_schemas(false)) WITH ORDINALITY AS p(s, n) WHERE s <> 'etl'";

/// The `etl` schema, created when missing.
pub(crate) const SCHEMA: &[&str] = &[
    "CREATE SCHEMA IF NOT EXISTS etl",
    "CREATE TABLE IF NOT EXISTS etl.runs (\n    \
        seq BIGSERIAL PRIMARY KEY,\n    \
        run_id TEXT NOT NULL,\n    \
        follows TEXT,\n    \
        source TEXT,\n    \
        via TEXT NOT NULL,\n    \
        txid BIGINT NOT NULL,\n    \
        rows JSONB NOT NULL,\n    \
        status TEXT NOT NULL,\n    \
        history BOOLEAN NOT NULL DEFAULT true,\n    \
        loaded_at TIMESTAMPTZ NOT NULL DEFAULT now(),\n    \
        rolled_back_at TIMESTAMPTZ\n)",
    "CREATE TABLE IF NOT EXISTS etl.history (\n    \
        load_seq BIGINT NOT NULL,\n    \
        table_name TEXT NOT NULL,\n    \
        op CHAR(1) NOT NULL,\n    \
        key JSONB,\n    \
        row JSONB,\n    \
        row_xmin BIGINT\n)",
    "CREATE INDEX IF NOT EXISTS history_load ON etl.history (load_seq, table_name, op)",
    "CREATE TABLE IF NOT EXISTS etl.restored (\n    \
        table_name TEXT NOT NULL,\n    \
        key JSONB NOT NULL,\n    \
        restored_xmin BIGINT NOT NULL,\n    \
        original_xmin BIGINT NOT NULL\n)",
    "CREATE INDEX IF NOT EXISTS restored_row ON etl.restored (table_name, restored_xmin)",
];

/// How many loaded runs keep their history, unless `ETL_HISTORY_RUNS` says otherwise.
pub(crate) const DEFAULT_HISTORY_RUNS: u32 = 3;

/// The ledger row of the load running in this transaction (a run may be loaded more than
/// once: each load is its own row).
pub(crate) const LOAD_SEQ: &str = "(SELECT currval('etl.runs_seq_seq'))";

/// The current transaction's id as `xmin` shows it (32 bits, no epoch).
pub(crate) const CURRENT_XID: &str = "(txid_current() % 4294967296)";

/// A row's `xmin` as a number.
pub(crate) fn xmin(alias: &str) -> String {
    format!("{alias}.xmin::text::bigint")
}

/// The run's ledger row, the first statement of a load after the schema. The run it follows
/// is the newest loaded one, and `via` the client (`etl`, or `psql` for a bundle): both come
/// from the target itself, so the statement is the same whatever executes it.
pub(crate) fn begin_run(
    run_id: &str,
    source: &str,
    rows: &[(String, u64)],
    history: bool,
) -> String {
    // A JSON literal, not jsonb_build_object: a config may have more tables than a function
    // has arguments.
    let rows: serde_json::Map<String, serde_json::Value> =
        rows.iter().map(|(t, n)| (t.clone(), (*n).into())).collect();
    let rows = literal(&serde_json::Value::Object(rows).to_string());
    format!(
        "INSERT INTO etl.runs (run_id, follows, source, via, txid, rows, status, history) \
         VALUES ({}, (SELECT run_id FROM etl.runs WHERE status = 'loaded' ORDER BY seq DESC \
         LIMIT 1), {}, current_setting('application_name'), txid_current(), \
         {rows}::jsonb, 'loaded', {history})",
        literal(run_id),
        literal(source),
    )
}

/// Drops the history of loaded runs beyond the newest `keep`: they can no longer be rolled back.
pub(crate) fn prune_history(keep: u32) -> Vec<String> {
    let old = format!(
        "SELECT seq FROM etl.runs WHERE status = 'loaded' AND history ORDER BY seq DESC OFFSET {keep}"
    );
    vec![
        format!("DELETE FROM etl.history WHERE load_seq IN ({old})"),
        format!("UPDATE etl.runs SET history = false WHERE seq IN ({old})"),
    ]
}

/// `jsonb_build_object('k', alias.k, ...)` over the table's conflict key: how history names a row.
pub(crate) fn key_json(t: &TableSpec, alias: &str) -> String {
    let pairs: Vec<String> = t
        .conflict_key
        .iter()
        .map(|k| format!("{}, {alias}.{}", literal(k), ident(k)))
        .collect();
    format!("jsonb_build_object({})", pairs.join(", "))
}

/// The load found the table empty.
pub(crate) fn was_empty(table: &str) -> String {
    format!(
        "INSERT INTO etl.history (load_seq, table_name, op) VALUES ({LOAD_SEQ}, {}, 'e')",
        literal(table)
    )
}

/// `INSERT INTO etl.history` of rows `source` (a FROM clause with the table's rows as `t`)
/// gives, as operation `op`.
pub(crate) fn record_rows(t: &TableSpec, op: char, source: &str) -> String {
    format!(
        "INSERT INTO etl.history (load_seq, table_name, op, key, row, row_xmin) \
         SELECT {LOAD_SEQ}, {}, '{op}', {}, to_jsonb(t.*), {} FROM {source}",
        literal(&t.name),
        key_json(t, "t"),
        xmin("t"),
    )
}

/// The `RETURNING` list of a statement whose rows (as `alias`) go to the history.
pub(crate) fn returned_row(t: &TableSpec, alias: &str) -> String {
    format!(
        "{} AS key, to_jsonb({alias}.*) AS row, {} AS row_xmin",
        key_json(t, alias),
        xmin(alias)
    )
}

/// `INSERT INTO etl.history` of the rows a CTE named `cte` returned with [`returned_row`].
pub(crate) fn record_returned(table: &str, op: char, cte: &str) -> String {
    format!(
        "INSERT INTO etl.history (load_seq, table_name, op, key, row, row_xmin) \
         SELECT {LOAD_SEQ}, {}, '{op}', key, row, row_xmin FROM {cte}",
        literal(table)
    )
}

/// `INSERT INTO etl.history` of the keys of inserted rows a CTE named `cte` returned.
pub(crate) fn record_inserted(table: &str, cte: &str) -> String {
    format!(
        "INSERT INTO etl.history (load_seq, table_name, op, key) \
         SELECT {LOAD_SEQ}, {}, 'i', key FROM {cte} WHERE inserted",
        literal(table)
    )
}
