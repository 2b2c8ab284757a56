//! The live load: one PostgreSQL transaction for the whole run, COPY into temporary tables,
//! then the plan's statements. A kill at any moment rolls everything back.
//!
//! Staged Parquet is read and COPY-encoded on a blocking thread while the async side streams
//! the bytes to PostgreSQL, so decoding and PostgreSQL's ingest overlap.

use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use futures_util::SinkExt;
use tokio_postgres::{Client, Transaction};

use super::plan::{plan_table, TablePlan};
use super::{copy_text, LoadError, OrphanReject, TableLoad};
use crate::config::{ddl, Config, TableSpec};
use crate::staging::{self, FileEntry, ManifestEntry, StagingError};

/// Rows from which a load rebuilds a table's foreign keys instead of checking them row by
/// row (5x faster on 700k link rows; it holds an exclusive lock on the table until commit).
const FK_REBUILD_ROWS: u64 = 50_000;

/// Bytes of COPY data per message to PostgreSQL.
const COPY_CHUNK: usize = 1 << 20;

/// Loads `tables` (in load order) from the transform folder in one transaction.
pub async fn load(
    client: &mut Client,
    config: &Config,
    transform_dir: &Path,
    tables: &[(&TableSpec, &ManifestEntry)],
) -> Result<Vec<TableLoad>, LoadError> {
    let tx = client
        .transaction()
        .await
        .map_err(|e| sql_error("BEGIN", "", e))?;
    // Every table of the config, so foreign keys always find their targets.
    for t in &config.tables {
        tx.batch_execute(&ddl::create_table(t))
            .await
            .map_err(|e| sql_error(&t.name, "CREATE TABLE", e))?;
    }
    let mut loads = Vec::new();
    for (table, entry) in tables {
        let started = Instant::now();
        let plan = plan_table(table);
        let mut load = load_table(&tx, &plan, transform_dir, entry).await?;
        load.seconds = started.elapsed().as_secs_f64();
        tracing::info!(
            table = %table.name,
            inserted = load.inserted,
            updated = load.updated,
            deleted = load.deleted,
            orphans = load.orphans.len(),
            "loaded"
        );
        loads.push(load);
    }
    tx.commit().await.map_err(|e| sql_error("COMMIT", "", e))?;
    Ok(loads)
}

async fn load_table(
    tx: &Transaction<'_>,
    plan: &TablePlan,
    transform_dir: &Path,
    entry: &ManifestEntry,
) -> Result<TableLoad, LoadError> {
    let table = plan.table.as_str();
    let mut load = TableLoad {
        table: table.to_string(),
        rows: entry.rows,
        ..Default::default()
    };
    if let Some(truncate) = &plan.truncate {
        tracing::warn!(
            table,
            "TRUNCATE ... CASCADE (force_reimport with truncate_before_import)"
        );
        tx.batch_execute(truncate)
            .await
            .map_err(|e| sql_error(table, truncate, e))?;
    }
    let empty = &plan.empty;
    tx.batch_execute(&empty.lock)
        .await
        .map_err(|e| sql_error(table, &empty.lock, e))?;
    let target_is_empty: bool = tx
        .query_one(&empty.is_empty, &[])
        .await
        .map_err(|e| sql_error(table, &empty.is_empty, e))?
        .get(0);
    if let (true, Some(copy)) = (target_is_empty, &empty.direct_copy) {
        load.inserted = copy_files(tx, table, copy, transform_dir, &entry.files).await?;
        return Ok(load);
    }
    tx.batch_execute(&plan.create_stage)
        .await
        .map_err(|e| sql_error(table, &plan.create_stage, e))?;
    copy_files(tx, table, &plan.copy, transform_dir, &entry.files).await?;
    // An empty target has no children to replace.
    if let Some(parents) = plan.parents.as_ref().filter(|_| !target_is_empty) {
        tx.batch_execute(&parents.create_stage)
            .await
            .map_err(|e| sql_error(table, &parents.create_stage, e))?;
        copy_files(tx, table, &parents.copy, transform_dir, &entry.parent_files).await?;
    }
    for check in &plan.orphans {
        loop {
            let rows = tx
                .query(&check.sql, &[])
                .await
                .map_err(|e| sql_error(table, &check.sql, e))?;
            for row in &rows {
                let key: Option<String> = row.get(0);
                let value: Option<String> = row.get(1);
                load.orphans.push(OrphanReject {
                    key: key.unwrap_or_default(),
                    column: check.column.clone(),
                    value: value.unwrap_or_default(),
                    references: check.references.clone(),
                });
            }
            if rows.is_empty() || !check.repeat {
                break;
            }
        }
    }
    if let Some(parents) = plan.parents.as_ref().filter(|_| !target_is_empty) {
        load.deleted = tx
            .execute(&parents.delete_children, &[])
            .await
            .map_err(|e| sql_error(table, &parents.delete_children, e))?;
    }
    // Orphans are gone from the stage, so the foreign keys hold; checking them row by row
    // costs more than the insert itself on big loads: drop them, then add them back
    // (validated in one pass) before the transaction ends.
    let foreign_keys = if entry.rows >= FK_REBUILD_ROWS {
        drop_foreign_keys(tx, table, &plan.target).await?
    } else {
        Vec::new()
    };
    if target_is_empty {
        load.inserted = tx
            .execute(&empty.insert, &[])
            .await
            .map_err(|e| sql_error(table, &empty.insert, e))?;
    } else {
        let row = tx
            .query_one(&plan.upsert, &[])
            .await
            .map_err(|e| sql_error(table, &plan.upsert, e))?;
        let (inserted, updated): (i64, i64) = (row.get(0), row.get(1));
        load.inserted = u64::try_from(inserted).unwrap_or(0);
        load.updated = u64::try_from(updated).unwrap_or(0);
    }
    for (name, definition) in foreign_keys {
        let sql = format!(
            "ALTER TABLE {} ADD CONSTRAINT {} {definition}",
            plan.target,
            ddl::ident(&name)
        );
        tx.batch_execute(&sql)
            .await
            .map_err(|e| sql_error(table, &sql, e))?;
    }
    Ok(load)
}

/// Drops the table's foreign keys, returning (name, definition) to add them back.
async fn drop_foreign_keys(
    tx: &Transaction<'_>,
    table: &str,
    target: &str,
) -> Result<Vec<(String, String)>, LoadError> {
    let sql = "SELECT conname::text, pg_get_constraintdef(oid) FROM pg_constraint \
               WHERE conrelid = to_regclass($1::text) AND contype = 'f' ORDER BY conname";
    let rows = tx
        .query(sql, &[&target])
        .await
        .map_err(|e| sql_error(table, sql, e))?;
    let keys: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    for (name, _) in &keys {
        let drop = format!("ALTER TABLE {target} DROP CONSTRAINT {}", ddl::ident(name));
        tx.batch_execute(&drop)
            .await
            .map_err(|e| sql_error(table, &drop, e))?;
    }
    Ok(keys)
}

/// Streams staged files into `COPY ... FROM STDIN`: a blocking thread decodes and encodes,
/// this task forwards the chunks. Returns the rows PostgreSQL copied.
async fn copy_files(
    tx: &Transaction<'_>,
    table: &str,
    copy_sql: &str,
    dir: &Path,
    files: &[FileEntry],
) -> Result<u64, LoadError> {
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Result<Bytes, LoadError>>(4);
    let dir: PathBuf = dir.to_path_buf();
    let files = files.to_vec();
    let table_name = table.to_string();
    let producer = tokio::task::spawn_blocking(move || {
        let result = encode_files(&dir, &files, &table_name, |chunk| {
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

/// Reads each staged file (after checking its checksum) and hands COPY text in chunks to
/// `send`; stops early when `send` returns false.
pub fn encode_files(
    dir: &Path,
    files: &[FileEntry],
    table: &str,
    mut send: impl FnMut(Bytes) -> bool,
) -> Result<(), LoadError> {
    let mut buf = Vec::with_capacity(COPY_CHUNK + 64 * 1024);
    for file in files {
        staging::verify_file(dir, file)?;
        let path = dir.join(&file.path);
        let reader = std::fs::File::open(&path).map_err(StagingError::io(&path))?;
        let to_err = |source| StagingError::Parquet {
            path: path.clone(),
            source,
        };
        let batches =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(reader)
                .map_err(to_err)?
                .with_batch_size(8 * 1024)
                .build()
                .map_err(to_err)?;
        for batch in batches {
            let batch = batch.map_err(|e| StagingError::Invalid {
                path: path.clone(),
                message: e.to_string(),
            })?;
            copy_text::encode_batch(&batch, &mut buf)
                .map_err(|message| LoadError::Internal(format!("table `{table}`: {message}")))?;
            if buf.len() >= COPY_CHUNK && !send(Bytes::from(std::mem::take(&mut buf))) {
                return Ok(());
            }
        }
    }
    if !buf.is_empty() {
        send(Bytes::from(buf));
    }
    Ok(())
}

fn sql_error(table: &str, sql: &str, e: tokio_postgres::Error) -> LoadError {
    let detail = e.as_db_error().map(|db| {
        let mut m = db.message().to_string();
        if let Some(d) = db.detail() {
            m.push_str(&format!(" ({d})"));
        }
        m
    });
    LoadError::Sql {
        table: table.to_string(),
        statement: sql.chars().take(200).collect(),
        message: detail.unwrap_or_else(|| e.to_string()),
    }
}
