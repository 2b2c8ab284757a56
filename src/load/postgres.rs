//! The live executor: runs a [`LoadPlan`] in one PostgreSQL transaction. A kill at any moment
//! rolls everything back.
//!
//! Staged Parquet is read and COPY-encoded on a blocking thread while the async side streams
//! the bytes to PostgreSQL, so decoding and PostgreSQL's ingest overlap. Every statement run
//! is recorded in the table's result, so the load report shows exactly what ran.

use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio_postgres::{Client, Transaction};

use super::copy_text::{self, CopyFormat};
use super::plan::{LoadPlan, PrunePlan, Step, TablePlan, WriteCounts};
use super::{LoadError, OrphanReject, PrunePreview, TableLoad};
use crate::settings::PostgresSettings;
use crate::staging::FileEntry;

/// A connection to the target, named `etl` in `pg_stat_activity` and in the ledger's `via`.
pub(crate) async fn connect(settings: &PostgresSettings) -> Result<Client, LoadError> {
    let client = settings
        .connect()
        .await
        .map_err(|message| LoadError::Connect {
            target: settings.to_string(),
            message,
        })?;
    client
        .batch_execute("SET application_name = 'etl'")
        .await
        .map_err(|e| sql_error("", "SET application_name", e))?;
    Ok(client)
}

/// Runs `plan` in one transaction; returns what happened to each table.
pub(crate) async fn load(
    client: &mut Client,
    plan: &LoadPlan,
    transform_dir: &Path,
    binary: bool,
) -> Result<Vec<TableLoad>, LoadError> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| sql_error("BEGIN", "", e))?;
    for sql in plan.setup.iter().chain(&plan.prelude) {
        tx.batch_execute(sql)
            .await
            .map_err(|e| sql_error("", sql, e))?;
    }
    let mut loads = Vec::new();
    for table in &plan.tables {
        let started = Instant::now();
        let mut load = TableLoad {
            table: table.table.clone(),
            rows: table.rows,
            ..Default::default()
        };
        run_steps(&tx, table, transform_dir, binary, &mut load).await?;
        load.seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            table = %table.table,
            inserted = load.inserted,
            updated = load.updated,
            deleted = load.deleted,
            orphans = load.orphans.len(),
            "loaded"
        );
        loads.push(load);
    }
    if let Some(prune) = &plan.prune {
        run_prune(&tx, plan, prune, transform_dir, binary, &mut loads).await?;
    }
    for sql in &plan.postlude {
        tx.batch_execute(sql)
            .await
            .map_err(|e| sql_error("", sql, e))?;
    }
    tx.commit().await.map_err(|e| sql_error("COMMIT", "", e))?;
    Ok(loads)
}

/// The prune section, after every table: keys and counts, the share check, the deletions.
async fn run_prune(
    tx: &Transaction<'_>,
    plan: &LoadPlan,
    prune: &PrunePlan,
    transform_dir: &Path,
    binary: bool,
    loads: &mut [TableLoad],
) -> Result<(), LoadError> {
    count_prune(tx, prune, transform_dir, binary, loads).await?;
    if let Some(check) = &prune.check {
        tx.batch_execute(check)
            .await
            .map_err(|e| refusal(check, e))?;
    }
    for (i, step) in &prune.delete {
        let (Some(table), Some(load)) = (plan.tables.get(*i), loads.get_mut(*i)) else {
            return Err(LoadError::Internal(format!(
                "prune step of table #{i}, which the plan has not"
            )));
        };
        let started = Instant::now();
        run_step(tx, table, step, transform_dir, binary, load).await?;
        load.seconds += started.elapsed().as_secs_f64();
    }
    Ok(())
}

/// The prune section up to its check: each table's source keys staged, its doomed rows counted.
async fn count_prune(
    tx: &Transaction<'_>,
    prune: &PrunePlan,
    transform_dir: &Path,
    binary: bool,
    loads: &mut [TableLoad],
) -> Result<(), LoadError> {
    for sql in &prune.setup {
        tx.batch_execute(sql)
            .await
            .map_err(|e| sql_error("", sql, e))?;
    }
    for (i, keys) in &prune.count {
        let Some(load) = loads.get_mut(*i) else {
            return Err(LoadError::Internal(format!(
                "prune step of table #{i}, which the plan has not"
            )));
        };
        let started = Instant::now();
        run_steps(tx, keys, transform_dir, binary, load).await?;
        load.seconds += started.elapsed().as_secs_f64();
    }
    Ok(())
}

/// A check the plan raises with a message starting `etl: ` refuses the load with that message
/// (nothing was changed: the transaction rolls back); anything else is a failed statement.
fn refusal(sql: &str, e: tokio_postgres::Error) -> LoadError {
    match e.as_db_error().map(|db| db.message()) {
        Some(message) if message.starts_with("etl: ") => {
            LoadError::Refused(message.trim_start_matches("etl: ").to_string())
        }
        _ => sql_error("", sql, e),
    }
}

/// `etl load --dry-run --prune` against the target: the prune section's counts and first keys
/// per table, computed in a transaction that is rolled back.
pub(crate) async fn preview_prune(
    client: &mut Client,
    plan: &LoadPlan,
    transform_dir: &Path,
) -> Result<Vec<PrunePreview>, LoadError> {
    let Some(prune) = &plan.prune else {
        return Ok(Vec::new());
    };
    let tx = client
        .transaction()
        .await
        .map_err(|e| sql_error("BEGIN", "", e))?;
    // The tables the load would create, so a first load counts zero rows, not an error.
    let creates = plan
        .prelude
        .iter()
        .filter(|s| s.starts_with("CREATE TABLE"));
    for sql in plan.setup.iter().chain(creates) {
        tx.batch_execute(sql)
            .await
            .map_err(|e| sql_error("", sql, e))?;
    }
    let mut loads = vec![TableLoad::default(); plan.tables.len()];
    count_prune(&tx, prune, transform_dir, true, &mut loads).await?;
    let mut previews = Vec::new();
    for (i, sample) in &prune.samples {
        let Some(table) = plan.tables.get(*i) else {
            continue;
        };
        let counts = "SELECT doomed, total FROM etl_prune WHERE table_name = $1";
        let row = tx
            .query_one(counts, &[&table.table])
            .await
            .map_err(|e| sql_error(&table.table, counts, e))?;
        let keys = tx
            .query(sample.as_str(), &[])
            .await
            .map_err(|e| sql_error(&table.table, sample, e))?;
        previews.push(PrunePreview {
            table: table.table.clone(),
            doomed: u64::try_from(row.get::<_, i64>(0)).unwrap_or(0),
            total: u64::try_from(row.get::<_, i64>(1)).unwrap_or(0),
            samples: keys.iter().map(|r| r.get(0)).collect(),
        });
    }
    tx.rollback()
        .await
        .map_err(|e| sql_error("ROLLBACK", "", e))?;
    Ok(previews)
}

/// A table's steps; a branch runs the arm its check chooses.
pub(crate) async fn run_steps(
    tx: &Transaction<'_>,
    table: &TablePlan,
    transform_dir: &Path,
    binary: bool,
    load: &mut TableLoad,
) -> Result<(), LoadError> {
    for step in &table.steps {
        let Step::IfEmpty {
            check,
            then,
            otherwise,
        } = step
        else {
            run_step(tx, table, step, transform_dir, binary, load).await?;
            continue;
        };
        let empty: bool = tx
            .query_one(check.as_str(), &[])
            .await
            .map_err(|e| sql_error(&table.table, check, e))?
            .get(0);
        load.statements.push(check.clone());
        for inner in if empty { then } else { otherwise } {
            run_step(tx, table, inner, transform_dir, binary, load).await?;
        }
    }
    Ok(())
}

/// One step that is not a branch (plans never nest branches).
async fn run_step(
    tx: &Transaction<'_>,
    table: &TablePlan,
    step: &Step,
    transform_dir: &Path,
    binary: bool,
    load: &mut TableLoad,
) -> Result<(), LoadError> {
    let name = table.table.as_str();
    if let Some(statement) = step.statement() {
        load.statements.push(statement);
    }
    match step {
        Step::Sql(sql) => tx
            .batch_execute(sql)
            .await
            .map_err(|e| sql_error(name, sql, e))?,
        Step::Copy {
            into,
            data,
            into_target,
        } => {
            let (sql, format) = if binary {
                let sql = format!("COPY {into} FROM STDIN (FORMAT binary)");
                (sql, CopyFormat::Binary(table.types(*data)))
            } else {
                (format!("COPY {into} FROM STDIN"), CopyFormat::Text)
            };
            if let Some(last) = load.statements.last_mut() {
                last.clone_from(&sql);
            }
            let files = table.files(*data);
            let copied = copy_files(tx, name, &sql, transform_dir, files, format).await?;
            if *into_target {
                load.inserted += copied;
            }
        }
        Step::Orphans(check) => loop {
            let rows = tx
                .query(check.sql.as_str(), &[])
                .await
                .map_err(|e| sql_error(name, &check.sql, e))?;
            load.orphans.extend(rows.iter().map(|row| OrphanReject {
                key: row.get::<_, Option<String>>(0).unwrap_or_default(),
                column: check.column.clone(),
                value: row.get::<_, Option<String>>(1).unwrap_or_default(),
                references: check.references.clone(),
                cycle: check.cycle,
            }));
            if rows.is_empty() || !check.repeat {
                break;
            }
        },
        Step::DeleteChildren(sql) => {
            let deleted: i64 = tx
                .query_one(sql.as_str(), &[])
                .await
                .map_err(|e| sql_error(name, sql, e))?
                .get(0);
            load.deleted += u64::try_from(deleted).unwrap_or(0);
        }
        Step::Prune(sql) => {
            let row = tx
                .query_one(sql.as_str(), &[])
                .await
                .map_err(|e| sql_error(name, sql, e))?;
            let deleted = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
            let counted = row
                .get::<_, Option<i64>>(1)
                .and_then(|n| u64::try_from(n).ok())
                .unwrap_or(deleted);
            load.deleted += deleted;
            load.pruned += deleted;
            load.prune_kept += counted.saturating_sub(deleted);
        }
        Step::Write {
            sql,
            counts: WriteCounts::Inserted,
        } => {
            load.inserted += tx
                .execute(sql.as_str(), &[])
                .await
                .map_err(|e| sql_error(name, sql, e))?;
        }
        Step::Write {
            sql,
            counts: WriteCounts::InsertedUpdated,
        } => {
            let row = tx
                .query_one(sql.as_str(), &[])
                .await
                .map_err(|e| sql_error(name, sql, e))?;
            let (inserted, updated): (i64, i64) = (row.get(0), row.get(1));
            load.inserted += u64::try_from(inserted).unwrap_or(0);
            load.updated += u64::try_from(updated).unwrap_or(0);
        }
        Step::IfEmpty { .. } => {
            return Err(LoadError::Internal(format!(
                "table `{name}`: the load plan nests a branch, which no executor runs"
            )))
        }
    }
    Ok(())
}

/// Streams staged files into `COPY ... FROM STDIN`: a blocking thread decodes and encodes,
/// this task forwards the chunks. Returns the rows PostgreSQL copied.
pub(crate) async fn copy_files(
    tx: &Transaction<'_>,
    table: &str,
    copy_sql: &str,
    dir: &Path,
    files: &[FileEntry],
    format: CopyFormat,
) -> Result<u64, LoadError> {
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Result<Bytes, LoadError>>(4);
    let dir: PathBuf = dir.to_path_buf();
    let files = files.to_vec();
    let table_name = table.to_string();
    let producer = tokio::task::spawn_blocking(move || {
        let result = copy_text::encode_files(&dir, &files, &table_name, &format, |chunk| {
            sender.blocking_send(Ok(chunk)).is_ok()
        });
        if let Err(e) = result {
            let _ = sender.blocking_send(Err(e));
        }
    });
    let sink = tx
        .copy_in::<_, Bytes>(copy_sql)
        .await
        .map_err(|e| sql_error(table, copy_sql, e))?;
    futures_util::pin_mut!(sink);
    while let Some(chunk) = receiver.recv().await {
        sink.send(chunk?)
            .await
            .map_err(|e| sql_error(table, copy_sql, e))?;
    }
    let rows = sink
        .finish()
        .await
        .map_err(|e| sql_error(table, copy_sql, e))?;
    producer
        .await
        .map_err(|e| LoadError::Internal(format!("COPY encoder for {table}: {e}")))?;
    Ok(rows)
}

pub(crate) fn sql_error(table: &str, sql: &str, source: tokio_postgres::Error) -> LoadError {
    LoadError::Sql {
        table: table.to_string(),
        statement: sql.chars().take(200).collect(),
        source,
    }
}

/// PostgreSQL's message and detail, or the driver's text when the server said nothing.
pub(super) fn db_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => match db.detail() {
            Some(detail) => format!("{} ({detail})", db.message()),
            None => db.message().to_string(),
        },
        None => e.to_string(),
    }
}
