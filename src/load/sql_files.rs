//! The load plan as a psql script: `etl load --to sql` writes it as a bundle that another host
//! applies, `--dry-run` prints it without writing anything.
//!
//! A bundle is a folder `<out>/<run>/`: `load.sql` and one COPY text file per data set under
//! `data/` (encoded by the same encoder as the live COPY, so values cannot end the data or
//! become SQL). It is applied from its folder with `psql -1 -v ON_ERROR_STOP=1 -f load.sql`.
//! The plan's branch on an empty target becomes psql's `\if`; since the data sits in its own
//! files (`\copy ... FROM 'data/...'`), no data line is ever read as part of the script.
//! Orphans go to an `etl_load_rejects` table in the target, since there is no run folder over
//! there: that table and the statement around each orphan check are the only lines the live
//! load does not run.

use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::copy_text::encode_files;
use super::plan::{literal, Data, LoadPlan, OrphanCheck, Step, TablePlan};
use super::LoadError;
use crate::staging::StagingError;

/// Where the psql script's statements end (psql sends a statement at `;`).
const END: &str = ";\n";

const REJECTS_TABLE: &str = "CREATE TABLE IF NOT EXISTS etl_load_rejects (\n    run_id TEXT NOT NULL,\n    \
    table_name TEXT NOT NULL,\n    document_key TEXT,\n    column_name TEXT NOT NULL,\n    value TEXT,\n    \
    reason TEXT NOT NULL,\n    rejected_at TIMESTAMPTZ NOT NULL DEFAULT now()\n)";

/// `etl load --dry-run`: the script a bundle of this plan holds, data files named, not written.
pub(crate) fn dry_run(plan: &LoadPlan) -> String {
    let mut out = format!(
        "-- etl load --dry-run of run {}: nothing is executed. This is the script\n\
         -- `etl load --to sql` writes; the live load runs the same statements.\n",
        plan.run_id
    );
    out.push_str(&script(plan, |table, data| data_file(&table.table, data)));
    out
}

/// Writes the bundle `<out>/<run>/` (a temp folder, renamed when complete) and returns the
/// path of its `load.sql`.
pub(crate) fn write_bundle(
    plan: &LoadPlan,
    transform_dir: &Path,
    out: &Path,
) -> Result<PathBuf, LoadError> {
    let dir = out.join(&plan.run_id);
    let tmp = out.join(format!(".{}.tmp", plan.run_id));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(StagingError::io(&tmp))?;
    }
    let data_dir = tmp.join("data");
    std::fs::create_dir_all(&data_dir).map_err(StagingError::io(&data_dir))?;
    let mut failure = None;
    let text = script(plan, |table, data| {
        let rel = data_file(&table.table, data);
        if failure.is_none() {
            let path = tmp.join(&rel);
            if let Err(e) = write_data(&path, transform_dir, table, data) {
                failure = Some(e);
            }
        }
        rel
    });
    if let Some(e) = failure {
        return Err(e);
    }
    let sql = tmp.join("load.sql");
    write_synced(&sql, text.as_bytes()).map_err(StagingError::io(&sql))?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(StagingError::io(&dir))?;
    }
    std::fs::rename(&tmp, &dir).map_err(StagingError::io(&dir))?;
    Ok(dir.join("load.sql"))
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::File::create(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// The bundle's file for one data set of a table.
fn data_file(table: &str, data: Data) -> String {
    match data {
        Data::Rows => format!("data/{table}.copy"),
        Data::Parents => format!("data/{table}.parents.copy"),
    }
}

/// One data set as COPY text (written once, however many COPY steps read it).
fn write_data(
    path: &Path,
    transform_dir: &Path,
    table: &TablePlan,
    data: Data,
) -> Result<(), LoadError> {
    if path.exists() {
        return Ok(());
    }
    let file = std::fs::File::create(path).map_err(StagingError::io(path))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let mut failure = None;
    encode_files(
        transform_dir,
        table.files(data),
        &table.table,
        |chunk| match w.write_all(&chunk) {
            Ok(()) => true,
            Err(e) => {
                failure = Some(e);
                false
            }
        },
    )?;
    let flushed = match failure {
        Some(e) => Err(e),
        None => w.flush().and_then(|()| w.get_ref().sync_all()),
    };
    flushed.map_err(|e| StagingError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    Ok(())
}

/// The plan as a psql script. `data` gives, for each COPY, the file it reads.
fn script(plan: &LoadPlan, mut data: impl FnMut(&TablePlan, Data) -> String) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "-- etl load of run {}. Apply from this folder, in one transaction:\n\
         --   psql -1 -v ON_ERROR_STOP=1 -f load.sql\n\\set ON_ERROR_STOP on",
        plan.run_id
    );
    for sql in &plan.prelude {
        out.push_str(sql);
        out.push_str(END);
    }
    out.push_str(REJECTS_TABLE);
    out.push_str(END);
    let run = literal(&plan.run_id);
    for table in &plan.tables {
        let _ = writeln!(out, "\n-- {}: {} rows", table.table, table.rows);
        for step in &table.steps {
            write_step(&mut out, table, step, &run, &mut data);
        }
    }
    out.push_str("\n-- after every table\n");
    for sql in &plan.postlude {
        out.push_str(sql);
        out.push_str(END);
    }
    out
}

fn write_step(
    out: &mut String,
    table: &TablePlan,
    step: &Step,
    run: &str,
    data: &mut impl FnMut(&TablePlan, Data) -> String,
) {
    match step {
        Step::Sql(sql) | Step::DeleteChildren(sql) | Step::Write { sql, .. } => {
            out.push_str(sql);
            out.push_str(END);
        }
        Step::Copy {
            into, data: set, ..
        } => {
            let file = data(table, *set);
            let rows: u64 = table.files(*set).iter().map(|f| f.rows).sum();
            let _ = writeln!(
                out,
                "\\copy {into} FROM {}\n-- ({rows} rows)",
                literal(&file)
            );
        }
        Step::Orphans(check) => out.push_str(&orphans_into_rejects(table, check, run)),
        Step::IfEmpty {
            check,
            then,
            otherwise,
        } => {
            let _ = writeln!(out, "{check} AS etl_empty \\gset\n\\if :etl_empty");
            for inner in then {
                write_step(out, table, inner, run, data);
            }
            out.push_str("\\else\n");
            for inner in otherwise {
                write_step(out, table, inner, run, data);
            }
            out.push_str("\\endif\n");
        }
    }
}

/// The orphan check, its rows kept in `etl_load_rejects`.
fn orphans_into_rejects(table: &TablePlan, check: &OrphanCheck, run: &str) -> String {
    let reason = literal(&format!("foreign key not found in {}", check.references));
    let insert = format!(
        "WITH gone(k, v) AS ({}) INSERT INTO etl_load_rejects (run_id, table_name, \
         document_key, column_name, value, reason) SELECT {run}, {}, k, {}, v, {reason} FROM gone",
        check.sql,
        literal(&table.table),
        literal(&check.column)
    );
    if check.repeat {
        // A self reference: repeat until no orphan is left (a child of an orphan is one too).
        format!("DO $etl$ BEGIN LOOP {insert}; EXIT WHEN NOT FOUND; END LOOP; END $etl${END}")
    } else {
        format!("{insert}{END}")
    }
}
