//! Compares what a table should hold with what the target holds, inside PostgreSQL: the
//! expected rows go into a temporary stage exactly as a load would put them there (same
//! COPY, same orphan checks), then joins on the table's key find the missing, extra and
//! differing rows with PostgreSQL's own typed equality. Nothing in the target changes (the
//! transaction only creates temporary tables and is rolled back), and memory stays with
//! PostgreSQL, which spills big joins to disk: `etl` only streams.
//!
//! Expected rows come from a transformed run (`etl verify` against the source), or from the
//! same table in another database (`etl verify --against URL`).

use std::path::Path;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio_postgres::Transaction;

use super::plan::{self, counted_first, key_match, stage_name, TablePlan};
use super::postgres::{run_steps, sql_error};
use super::{LoadError, TableLoad};
use crate::config::ddl::{ident, ident_list};
use crate::config::TableSpec;
use crate::settings::PostgresSettings;
use crate::staging::Manifest;

/// Keys shown per kind of difference.
const SHOWN: i64 = 5;

/// Where the expected rows come from.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Expected<'a> {
    /// A transformed run: its folder and manifest.
    Staged {
        dir: &'a Path,
        manifest: &'a Manifest,
    },
    /// The same tables in another PostgreSQL database.
    Database(&'a PostgresSettings),
}

#[derive(Debug, Clone, Default)]
pub(crate) struct CompareOptions {
    /// Compare the values of this many random keys per table (all when `None`); counts and
    /// keys are always complete.
    pub sample: Option<u64>,
}

/// Rows on one side only, or with other values: how many, and the first keys.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Diff {
    pub count: u64,
    pub keys: Vec<String>,
}

/// One differing row, column by column.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct RowDiff {
    pub key: String,
    /// (column, expected, in the target), for the columns that differ.
    pub columns: Vec<(String, String, String)>,
}

/// The comparison of one table.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct TableVerdict {
    pub table: String,
    /// Rows expected in the target (after orphans).
    pub expected: u64,
    pub target: u64,
    /// Expected rows whose foreign key points nowhere in the target (a load rejects them).
    pub orphans: u64,
    /// Keys expected but not in the target.
    pub missing: Diff,
    /// Keys in the target but not expected.
    pub extra: Diff,
    /// Keys on both sides whose values differ (among the compared ones).
    pub differing: Diff,
    pub differences: Vec<RowDiff>,
    /// Keys compared value by value (all common keys, or the sample).
    pub compared: u64,
    /// Link tables: parents whose set of children differs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parents_differing: Option<u64>,
    /// Foreign keys of the target pointing nowhere: (column, rows).
    pub foreign_key_violations: Vec<(String, u64)>,
    /// Keys held by more than one target row.
    pub duplicate_keys: u64,
}

impl TableVerdict {
    pub(crate) fn matches(&self) -> bool {
        self.missing.count == 0
            && self.extra.count == 0
            && self.differing.count == 0
            && self.duplicate_keys == 0
            && self.foreign_key_violations.iter().all(|(_, n)| *n == 0)
    }
}

/// Compares each table of `tables` with its expected rows.
pub(crate) async fn compare(
    target: &PostgresSettings,
    tables: &[&TableSpec],
    expected: Expected<'_>,
    opts: &CompareOptions,
) -> Result<Vec<TableVerdict>, LoadError> {
    let mut client = super::postgres::connect(target).await?;
    let other = match expected {
        Expected::Database(settings) => Some(super::postgres::connect(settings).await?),
        Expected::Staged { .. } => None,
    };
    let tx = client
        .transaction()
        .await
        .map_err(|e| sql_error("", "BEGIN", e))?;
    tx.batch_execute(super::ledger::PIN_SEARCH_PATH)
        .await
        .map_err(|e| sql_error("", "search_path", e))?;
    let mut verdicts = Vec::new();
    for t in tables {
        let orphans = match (expected, &other) {
            (Expected::Staged { dir, manifest }, _) => {
                stage_from_run(&tx, t, dir, manifest).await?
            }
            (Expected::Database(_), Some(other)) => {
                stage_from_database(&tx, other, t).await?;
                0
            }
            (Expected::Database(_), None) => {
                return Err(LoadError::Internal(
                    "no connection to compare against".into(),
                ))
            }
        };
        let mut verdict = compare_table(&tx, t, opts).await?;
        verdict.orphans = orphans;
        tracing::info!(table = %t.name, matches = verdict.matches(), "compared");
        verdicts.push(verdict);
    }
    // Temporary tables only: nothing to keep.
    tx.rollback()
        .await
        .map_err(|e| sql_error("", "ROLLBACK", e))?;
    Ok(verdicts)
}

/// The run's rows into the stage, orphans out (as a load does); returns the orphans.
async fn stage_from_run(
    tx: &Transaction<'_>,
    t: &TableSpec,
    dir: &Path,
    manifest: &Manifest,
) -> Result<u64, LoadError> {
    let entry = manifest.entry(&t.name);
    let table = TablePlan {
        table: t.name.clone(),
        rows: entry.map_or(0, |e| e.rows),
        files: entry.map(|e| e.files.clone()).unwrap_or_default(),
        parent_files: Vec::new(),
        row_types: t.loaded_columns().map(|c| c.sql_type).collect(),
        parent_type: None,
        steps: plan::stage_and_orphans(t),
    };
    let mut load = TableLoad::default();
    run_steps(tx, &table, dir, true, &mut load).await?;
    Ok(load.orphans.len() as u64)
}

/// The other database's rows of the same table into the stage.
async fn stage_from_database(
    tx: &Transaction<'_>,
    other: &tokio_postgres::Client,
    t: &TableSpec,
) -> Result<(), LoadError> {
    let stage = stage_name(&t.name);
    let names: Vec<String> = t.loaded_columns().map(|c| c.name.clone()).collect();
    let cols = ident_list(&names);
    let create = plan::create_stage(t);
    tx.batch_execute(&create)
        .await
        .map_err(|e| sql_error(&t.name, &create, e))?;
    let out_sql = format!("COPY (SELECT {cols} FROM {}) TO STDOUT", ident(&t.name));
    let in_sql = format!("COPY {stage} ({cols}) FROM STDIN");
    let source = other
        .copy_out(out_sql.as_str())
        .await
        .map_err(|e| sql_error(&t.name, &out_sql, e))?;
    let sink = tx
        .copy_in::<_, Bytes>(in_sql.as_str())
        .await
        .map_err(|e| sql_error(&t.name, &in_sql, e))?;
    futures_util::pin_mut!(source);
    futures_util::pin_mut!(sink);
    while let Some(chunk) = source.next().await {
        let chunk = chunk.map_err(|e| sql_error(&t.name, &out_sql, e))?;
        sink.send(chunk)
            .await
            .map_err(|e| sql_error(&t.name, &in_sql, e))?;
    }
    sink.finish()
        .await
        .map_err(|e| sql_error(&t.name, &in_sql, e))?;
    Ok(())
}

/// The stage (`s`) against the target (`t`).
async fn compare_table(
    tx: &Transaction<'_>,
    t: &TableSpec,
    opts: &CompareOptions,
) -> Result<TableVerdict, LoadError> {
    let target = ident(&t.name);
    let stage = stage_name(&t.name);
    let on = key_match(&t.conflict_key);
    let key_s = key_text(t, "s");
    let key_t = key_text(t, "t");
    let mut v = TableVerdict {
        table: t.name.clone(),
        expected: scalar(tx, t, &format!("SELECT count(*) FROM {stage}")).await?,
        target: scalar(tx, t, &format!("SELECT count(*) FROM {target}")).await?,
        ..Default::default()
    };
    v.missing = keys(
        tx,
        t,
        &format!(
            "SELECT {key_s} FROM {stage} s WHERE NOT EXISTS (SELECT 1 FROM {target} t WHERE {on})"
        ),
    )
    .await?;
    v.extra = keys(
        tx,
        t,
        &format!(
            "SELECT {key_t} FROM {target} t WHERE NOT EXISTS (SELECT 1 FROM {stage} s WHERE {on})"
        ),
    )
    .await?;
    let compared = match opts.sample {
        // Drawn among the keys both sides hold: a missing key is already counted, and a
        // sample that drew it compared one key fewer than asked.
        Some(n) => format!(
            "(SELECT s.* FROM {stage} s WHERE EXISTS (SELECT 1 FROM {target} t WHERE {on}) \
             ORDER BY random() LIMIT {n})"
        ),
        None => stage.clone(),
    };
    let values: Vec<String> = t
        .loaded_columns()
        .filter(|c| !t.conflict_key.contains(&c.name))
        .map(|c| ident(&c.name))
        .collect();
    let differ = if values.is_empty() {
        "false".to_string()
    } else {
        let side = |alias: &str| {
            let cols: Vec<String> = values.iter().map(|c| format!("{alias}.{c}")).collect();
            format!("ROW({})", cols.join(", "))
        };
        format!("{} IS DISTINCT FROM {}", side("s"), side("t"))
    };
    v.compared = scalar(
        tx,
        t,
        &format!("SELECT count(*) FROM {compared} s JOIN {target} t ON {on}"),
    )
    .await?;
    let diff_sql = format!(
        "SELECT {key_s}, to_jsonb(s.*)::text, to_jsonb(t.*)::text FROM {compared} s \
         JOIN {target} t ON {on} WHERE {differ}"
    );
    let (diff, rows) = keys_with_rows(tx, t, &diff_sql).await?;
    v.differing = diff;
    v.differences = rows
        .into_iter()
        .map(|(key, s, t_row)| row_diff(t, key, &s, &t_row))
        .collect();
    if let Some(parent) = t.replace_parent_column() {
        let p = ident(parent);
        v.parents_differing = Some(
            scalar(
                tx,
                t,
                &format!(
                    "SELECT count(DISTINCT p) FROM (SELECT s.{p} AS p FROM {stage} s WHERE NOT EXISTS \
                     (SELECT 1 FROM {target} t WHERE {on}) UNION ALL SELECT t.{p} FROM {target} t \
                     WHERE NOT EXISTS (SELECT 1 FROM {stage} s WHERE {on})) x"
                ),
            )
            .await?,
        );
    }
    for c in &t.columns {
        let Some(fk) = &c.foreign_key else { continue };
        let col = ident(&c.name);
        let sql = format!(
            "SELECT count(*) FROM {target} t WHERE t.{col} IS NOT NULL AND NOT EXISTS \
             (SELECT 1 FROM {} p WHERE p.{} = t.{col})",
            ident(&fk.table),
            ident(&fk.column)
        );
        v.foreign_key_violations
            .push((c.name.clone(), scalar(tx, t, &sql).await?));
    }
    v.duplicate_keys = scalar(
        tx,
        t,
        &format!(
            "SELECT count(*) FROM (SELECT 1 FROM {target} GROUP BY {} HAVING count(*) > 1) d",
            ident_list(&t.conflict_key)
        ),
    )
    .await?;
    Ok(v)
}

/// `concat_ws(',', a.k1::text, ...)`: a row's key as one text.
fn key_text(t: &TableSpec, alias: &str) -> String {
    let parts: Vec<String> = t
        .conflict_key
        .iter()
        .map(|k| format!("{alias}.{}::text", ident(k)))
        .collect();
    format!("concat_ws(',', {})", parts.join(", "))
}

/// The columns of a differing row whose values differ, from both rows as JSON.
fn row_diff(t: &TableSpec, key: String, expected: &str, actual: &str) -> RowDiff {
    let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).unwrap_or_default();
    let (e, a) = (parse(expected), parse(actual));
    let columns = t
        .loaded_columns()
        .filter_map(|c| {
            let (x, y) = (&e[&c.name], &a[&c.name]);
            (x != y).then(|| (c.name.clone(), x.to_string(), y.to_string()))
        })
        .collect();
    RowDiff { key, columns }
}

async fn scalar(tx: &Transaction<'_>, t: &TableSpec, sql: &str) -> Result<u64, LoadError> {
    let n: i64 = tx
        .query_one(sql, &[])
        .await
        .map_err(|e| sql_error(&t.name, sql, e))?
        .get(0);
    Ok(u64::try_from(n).unwrap_or(0))
}

/// How many rows `sql` (one text column, the key) gives, and the first keys in order.
async fn keys(tx: &Transaction<'_>, t: &TableSpec, sql: &str) -> Result<Diff, LoadError> {
    let counted = counted_first(sql, &["k"], SHOWN);
    let rows = tx
        .query(counted.as_str(), &[])
        .await
        .map_err(|e| sql_error(&t.name, &counted, e))?;
    Ok(Diff {
        count: rows
            .first()
            .map_or(0, |r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)),
        keys: rows.iter().map(|r| r.get(1)).collect(),
    })
}

/// As [`keys`], for a query giving (key, expected row, target row) as text.
async fn keys_with_rows(
    tx: &Transaction<'_>,
    t: &TableSpec,
    sql: &str,
) -> Result<(Diff, Vec<(String, String, String)>), LoadError> {
    let counted = counted_first(sql, &["k", "a", "b"], SHOWN);
    let rows = tx
        .query(counted.as_str(), &[])
        .await
        .map_err(|e| sql_error(&t.name, &counted, e))?;
    let diff = Diff {
        count: rows
            .first()
            .map_or(0, |r| u64::try_from(r.get::<_, i64>(0)).unwrap_or(0)),
        keys: rows.iter().map(|r| r.get(1)).collect(),
    };
    let details = rows
        .iter()
        .map(|r| (r.get(1), r.get(2), r.get(3)))
        .collect();
    Ok((diff, details))
}
