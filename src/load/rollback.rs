//! `etl rollback`: undoes the newest load recorded in the target's ledger, in one
//! transaction, from the history that load left (see `ledger.rs`).
//!
//! Per table the load touched: the rows it deleted are inserted again and the previous
//! versions of the rows it updated are written back (parents first), then the rows it
//! inserted are deleted (children first): old versions never point to the load's new rows. Before anything changes, every row the load wrote must
//! still be as the load left it: a row changed, added or removed by someone else since is a
//! conflict, and the rollback refuses, naming the rows, unless `--force`.
//!
//! A row "as the load left it" still carries the load's transaction id in `xmin`. A rollback
//! gives the rows it restores its own transaction id, so it records in `etl.restored` which id
//! each restored row stood for: an older load's rollback still recognises its rows.

use std::fmt;

use tokio_postgres::{Client, Transaction};

use super::ledger::{self, key_json, CURRENT_XID};
use super::plan::{counted_first, literal};
use super::LoadError;
use crate::config::ddl::{ident, ident_list};
use crate::config::{Config, TableSpec};
use crate::settings::PostgresSettings;

/// Rows named per conflict in messages.
const SHOWN: i64 = 5;

/// What `etl rollback` is asked to do.
#[derive(Debug, Clone, Default)]
pub(crate) struct RollbackOptions {
    /// The run to undo; it must be the newest loaded one (default: that one).
    pub run: Option<String>,
    pub dry_run: bool,
    /// Undo even rows changed since the load (their later changes are lost).
    pub force: bool,
}

/// What a rollback did (or, with `--dry-run`, would do) to one table.
#[derive(Debug, Clone, Default)]
pub(crate) struct TableUndo {
    pub table: String,
    /// Rows the load inserted, deleted again.
    pub deleted: u64,
    /// Rows the load updated, given back their previous version.
    pub restored: u64,
    /// Rows the load deleted, inserted again.
    pub reinserted: u64,
}

#[derive(Debug, Clone)]
pub(crate) struct RollbackReport {
    pub run_id: String,
    pub dry_run: bool,
    pub tables: Vec<TableUndo>,
}

/// One row of `etl.runs`.
#[derive(Debug, Clone)]
struct Load {
    seq: i64,
    run_id: String,
    /// The load's transaction id as `xmin` shows it.
    xid: i64,
    history: bool,
}

/// A row the rollback would overwrite although someone changed it after the load.
#[derive(Debug, Clone)]
pub(super) struct Conflict {
    pub table: String,
    pub what: &'static str,
    pub keys: Vec<String>,
    pub count: i64,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "table `{}`: {} row(s) {}: {}",
            self.table,
            self.count,
            self.what,
            self.keys.join(", ")
        )?;
        if self.count > SHOWN {
            write!(f, ", ...")?;
        }
        Ok(())
    }
}

/// Undoes the newest load (or checks that it can, with `dry_run`).
pub(crate) async fn rollback(
    config: &Config,
    settings: &PostgresSettings,
    opts: &RollbackOptions,
) -> Result<RollbackReport, LoadError> {
    let mut client = super::postgres::connect(settings).await?;
    run(&mut client, config, opts).await
}

async fn run(
    client: &mut Client,
    config: &Config,
    opts: &RollbackOptions,
) -> Result<RollbackReport, LoadError> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| sql_error("", "BEGIN", e))?;
    exec(&tx, "", ledger::PIN_SEARCH_PATH).await?;
    // The history was just written by a load: before autovacuum samples it the planner
    // guesses a few rows and joins it row by row (minutes for 50k rows instead of 0.1 s).
    exec(&tx, "", "ANALYZE etl.history, etl.restored").await?;
    let load = newest_load(&tx, opts.run.as_deref()).await?;
    let tables = touched_tables(&tx, config, &load).await?;
    for t in &tables {
        let lock = format!("LOCK TABLE {} IN SHARE ROW EXCLUSIVE MODE", ident(&t.name));
        exec(&tx, &t.name, &lock).await?;
    }
    let mut conflicts = Vec::new();
    for t in &tables {
        conflicts.extend(conflicts_in(&tx, t, &load).await?);
    }
    if !conflicts.is_empty() && !opts.force {
        return Err(LoadError::Refused(format!(
            "rows changed after load {} of run {}; nothing was rolled back (--force undoes \
             them anyway, losing those changes):\n  {}",
            load.seq,
            load.run_id,
            conflicts
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n  ")
        )));
    }
    let mut undone: Vec<TableUndo> = tables
        .iter()
        .map(|t| TableUndo {
            table: t.name.clone(),
            ..Default::default()
        })
        .collect();
    // Old versions first (parents first), so no row still points to a row the load
    // inserted; then the inserted rows go (children first).
    for (t, undo) in tables.iter().zip(undone.iter_mut()) {
        undo.reinserted = restore(&tx, t, &load, "d").await?;
        undo.restored = restore(&tx, t, &load, "b").await?;
    }
    for (t, undo) in tables.iter().zip(undone.iter_mut()).rev() {
        undo.deleted = delete_inserted(&tx, t, &load).await?;
    }
    let report = RollbackReport {
        run_id: load.run_id.clone(),
        dry_run: opts.dry_run,
        tables: undone,
    };
    if opts.dry_run {
        tx.rollback()
            .await
            .map_err(|e| sql_error("", "ROLLBACK", e))?;
        return Ok(report);
    }
    let seq = load.seq;
    exec(
        &tx,
        "",
        &format!(
            "UPDATE etl.runs SET status = 'rolled_back', rolled_back_at = now() WHERE seq = {seq}"
        ),
    )
    .await?;
    exec(
        &tx,
        "",
        &format!("DELETE FROM etl.history WHERE load_seq = {seq}"),
    )
    .await?;
    tx.commit().await.map_err(|e| sql_error("", "COMMIT", e))?;
    Ok(report)
}

/// The newest load not rolled back; `run` must name it.
async fn newest_load(tx: &Transaction<'_>, run: Option<&str>) -> Result<Load, LoadError> {
    let sql = "SELECT seq, run_id, txid % 4294967296, history FROM etl.runs \
               WHERE status = 'loaded' ORDER BY seq DESC";
    let rows = match tx.query(sql, &[]).await {
        Ok(rows) => rows,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            return Err(LoadError::Refused(
                "no load is recorded in this target (no etl.runs table): nothing to roll back"
                    .into(),
            ))
        }
        Err(e) => return Err(sql_error("", sql, e)),
    };
    let loads: Vec<Load> = rows
        .iter()
        .map(|r| Load {
            seq: r.get(0),
            run_id: r.get(1),
            xid: r.get(2),
            history: r.get(3),
        })
        .collect();
    let Some(newest) = loads.first().cloned() else {
        return Err(LoadError::Refused(
            "no loaded run is left to roll back in this target".into(),
        ));
    };
    if let Some(wanted) = run {
        if wanted != newest.run_id {
            let newer: Vec<&str> = loads
                .iter()
                .take_while(|l| l.run_id != wanted)
                .map(|l| l.run_id.as_str())
                .collect();
            let known = loads.iter().any(|l| l.run_id == wanted);
            return Err(LoadError::Refused(if known {
                format!(
                    "run {wanted} is not the newest load: roll back {} first (newest first)",
                    newer.join(", ")
                )
            } else {
                format!("run {wanted} has no load to roll back in this target")
            }));
        }
    }
    if !newest.history {
        return Err(LoadError::Refused(format!(
            "run {} was loaded without history (ETL_HISTORY_RUNS=0) or its history was dropped by later \
             loads (ETL_HISTORY_RUNS): it cannot be rolled back",
            newest.run_id
        )));
    }
    Ok(newest)
}

/// The config's tables the load left history for, in load order.
async fn touched_tables<'a>(
    tx: &Transaction<'_>,
    config: &'a Config,
    load: &Load,
) -> Result<Vec<&'a TableSpec>, LoadError> {
    let sql = format!(
        "SELECT DISTINCT table_name FROM etl.history WHERE load_seq = {}",
        load.seq
    );
    let names: Vec<String> = tx
        .query(sql.as_str(), &[])
        .await
        .map_err(|e| sql_error("", &sql, e))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if let Some(unknown) = names.iter().find(|n| config.table(n).is_none()) {
        return Err(LoadError::Refused(format!(
            "run {} loaded table `{unknown}`, which the config no longer declares: \
             roll back with the config that loaded it",
            load.run_id
        )));
    }
    Ok(config
        .tables
        .iter()
        .filter(|t| names.contains(&t.name))
        .collect())
}

/// `xmin` of a table row (`t`), or, for a row a rollback restored, the id it stands for.
fn effective_xmin(t: &TableSpec) -> String {
    format!(
        "COALESCE((SELECT r.original_xmin FROM etl.restored r WHERE r.table_name = {} \
         AND r.restored_xmin = {} AND r.key = {} LIMIT 1), {})",
        literal(&t.name),
        ledger::xmin("t"),
        key_json(t, "t"),
        ledger::xmin("t")
    )
}

/// The condition (on `h`) selecting this table's history rows of the given kinds.
fn history_of(t: &TableSpec, load: &Load, ops: &str) -> String {
    let ops: Vec<String> = ops.chars().map(|op| format!("'{op}'")).collect();
    format!(
        "h.load_seq = {} AND h.table_name = {} AND h.op IN ({})",
        load.seq,
        literal(&t.name),
        ops.join(", ")
    )
}

async fn has_history(
    tx: &Transaction<'_>,
    t: &TableSpec,
    load: &Load,
    op: &str,
) -> Result<bool, LoadError> {
    let sql = format!(
        "SELECT EXISTS (SELECT 1 FROM etl.history h WHERE {})",
        history_of(t, load, op)
    );
    Ok(tx
        .query_one(sql.as_str(), &[])
        .await
        .map_err(|e| sql_error(&t.name, &sql, e))?
        .get(0))
}

/// Rows of this table someone changed after the load.
async fn conflicts_in(
    tx: &Transaction<'_>,
    t: &TableSpec,
    load: &Load,
) -> Result<Vec<Conflict>, LoadError> {
    let target = ident(&t.name);
    let mine = format!("{} = {}", effective_xmin(t), load.xid);
    let key = key_json(t, "t");
    let written = history_of(t, load, "ib");
    let mut checks = Vec::new();
    if has_history(tx, t, load, "e").await? {
        checks.push((
            "added or changed after the load (the table was empty before it)",
            format!("SELECT {key}::text FROM {target} t WHERE NOT ({mine})"),
        ));
    }
    checks.push((
        "changed after the load",
        format!(
            "SELECT {key}::text FROM {target} t JOIN etl.history h ON {written} \
             AND h.key = {key} WHERE NOT ({mine})"
        ),
    ));
    checks.push((
        "deleted after the load",
        format!(
            "SELECT h.key::text FROM etl.history h WHERE {written} AND NOT EXISTS \
             (SELECT 1 FROM {target} t WHERE {key} = h.key)"
        ),
    ));
    checks.push((
        "inserted after the load with the key of a row the load deleted",
        format!(
            "SELECT h.key::text FROM etl.history h WHERE {} AND EXISTS \
             (SELECT 1 FROM {target} t WHERE {key} = h.key)",
            history_of(t, load, "d")
        ),
    ));
    let mut conflicts = Vec::new();
    for (what, sql) in checks {
        let counted = counted_first(&sql, &["k"], SHOWN);
        let rows = tx
            .query(counted.as_str(), &[])
            .await
            .map_err(|e| sql_error(&t.name, &counted, e))?;
        if let Some(first) = rows.first() {
            conflicts.push(Conflict {
                table: t.name.clone(),
                what,
                count: first.get(0),
                keys: rows.iter().map(|r| r.get(1)).collect(),
            });
        }
    }
    Ok(conflicts)
}

/// Deletes the rows the load inserted; returns how many.
async fn delete_inserted(
    tx: &Transaction<'_>,
    t: &TableSpec,
    load: &Load,
) -> Result<u64, LoadError> {
    let target = ident(&t.name);
    let mut deleted = 0;
    if has_history(tx, t, load, "e").await? {
        let sql = format!(
            "DELETE FROM {target} t WHERE {} = {}",
            effective_xmin(t),
            load.xid
        );
        deleted += exec_count(tx, &t.name, &sql).await?;
    }
    let sql = format!(
        "DELETE FROM {target} t USING etl.history h WHERE {} AND h.key = {}",
        history_of(t, load, "i"),
        key_json(t, "t")
    );
    deleted += exec_count(tx, &t.name, &sql).await?;
    Ok(deleted)
}

/// Writes back the rows history kept as `op` (`b`: previous versions of updated rows, `d`:
/// deleted rows), and records which transaction id they stand for.
async fn restore(
    tx: &Transaction<'_>,
    t: &TableSpec,
    load: &Load,
    op: &str,
) -> Result<u64, LoadError> {
    let target = ident(&t.name);
    let names: Vec<String> = t.columns.iter().map(|c| c.name.clone()).collect();
    let cols = ident_list(&names);
    let values: Vec<String> = names.iter().map(|c| format!("r.{}", ident(c))).collect();
    let values = values.join(", ");
    let key = key_json(t, "t");
    let records = history_of(t, load, op);
    let rows = format!(
        "etl.history h CROSS JOIN LATERAL jsonb_populate_record(NULL::{target}, h.row) r \
         WHERE {records}"
    );
    let written = if op == "b" {
        let sql =
            format!("UPDATE {target} t SET ({cols}) = ROW({values}) FROM {rows} AND h.key = {key}");
        exec_count(tx, &t.name, &sql).await?
    } else {
        // A row holding the key now was added after the load: only `--force` gets here
        // with one, and the deleted row wins.
        let clear =
            format!("DELETE FROM {target} t USING etl.history h WHERE {records} AND h.key = {key}");
        exec_count(tx, &t.name, &clear).await?;
        let sql = format!("INSERT INTO {target} ({cols}) SELECT {values} FROM {rows}");
        exec_count(tx, &t.name, &sql).await?
    };
    if written > 0 {
        // The restored rows now carry this transaction's id: remember the one they stood for.
        // The earlier aliases are read once, before the insert: a subquery per row planned
        // as a scan of etl.restored rescanned the rows this very statement adds (quadratic:
        // a 1M-row rollback ran for minutes).
        let alias = format!(
            "WITH prior AS MATERIALIZED (SELECT key, restored_xmin, min(original_xmin) AS xmin \
             FROM etl.restored WHERE table_name = {table} GROUP BY key, restored_xmin) \
             INSERT INTO etl.restored (table_name, key, restored_xmin, original_xmin) \
             SELECT {table}, h.key, {CURRENT_XID}, COALESCE(p.xmin, h.row_xmin) \
             FROM etl.history h LEFT JOIN prior p ON p.restored_xmin = h.row_xmin \
             AND p.key = h.key WHERE {records}",
            table = literal(&t.name),
        );
        exec(tx, &t.name, &alias).await?;
    }
    Ok(written)
}

async fn exec(
    client: &impl tokio_postgres::GenericClient,
    table: &str,
    sql: &str,
) -> Result<(), LoadError> {
    client
        .batch_execute(sql)
        .await
        .map_err(|e| sql_error(table, sql, e))
}

async fn exec_count(tx: &Transaction<'_>, table: &str, sql: &str) -> Result<u64, LoadError> {
    tx.execute(sql, &[])
        .await
        .map_err(|e| sql_error(table, sql, e))
}

fn sql_error(table: &str, sql: &str, source: tokio_postgres::Error) -> LoadError {
    LoadError::Sql {
        table: table.to_string(),
        statement: sql.chars().take(200).collect(),
        source,
    }
}

/// The ledger's loads, newest first, as text cells for `etl status`.
pub(crate) async fn ledger_rows(
    settings: &PostgresSettings,
) -> Result<Vec<Vec<String>>, LoadError> {
    let client = super::postgres::connect(settings).await?;
    let sql = "SELECT seq::text, run_id, via, coalesce(source, ''), \
               to_char(loaded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), status, \
               coalesce(to_char(rolled_back_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), ''), \
               CASE WHEN history THEN 'kept' ELSE 'dropped' END \
               FROM etl.runs ORDER BY seq DESC";
    match client.query(sql, &[]).await {
        Ok(rows) => Ok(rows
            .iter()
            .map(|r| (0..8).map(|i| r.get::<_, String>(i)).collect())
            .collect()),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            Ok(Vec::new())
        }
        Err(e) => Err(sql_error("", sql, e)),
    }
}
