//! `etl load --to sql`: one `load.sql` that another host applies with
//! `psql -1 -v ON_ERROR_STOP=1 -f load.sql`: the same plan as the live load, COPY data inline
//! (encoded by the same encoder, so values cannot end the data or become SQL), orphans moved
//! to an `etl_load_rejects` table in the target since there is no run folder over there.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::plan::plan_table;
use super::postgres::encode_files;
use super::LoadError;
use crate::config::{ddl, Config, TableSpec};
use crate::staging::{commit_file, ManifestEntry, StagingError};

const REJECTS_TABLE: &str = "CREATE TABLE IF NOT EXISTS etl_load_rejects (\n    run_id TEXT NOT NULL,\n    \
    table_name TEXT NOT NULL,\n    document_key TEXT,\n    column_name TEXT NOT NULL,\n    value TEXT,\n    \
    reason TEXT NOT NULL,\n    rejected_at TIMESTAMPTZ NOT NULL DEFAULT now()\n);\n";

/// Writes `<out>/<run>/load.sql` (temp name, then rename) and returns its path.
pub fn write_bundle(
    config: &Config,
    run_id: &str,
    transform_dir: &Path,
    tables: &[(&TableSpec, &ManifestEntry)],
    out: &Path,
) -> Result<PathBuf, LoadError> {
    let dir = out.join(run_id);
    std::fs::create_dir_all(&dir).map_err(StagingError::io(&dir))?;
    let path = dir.join("load.sql");
    let tmp = dir.join(".load.sql.tmp");
    let file = std::fs::File::create(&tmp).map_err(StagingError::io(&tmp))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let io = |e: std::io::Error| {
        LoadError::Staging(StagingError::Io {
            path: tmp.clone(),
            source: e,
        })
    };

    writeln!(w, "-- etl SQL export of run {run_id}.").map_err(io)?;
    writeln!(
        w,
        "-- Apply in one transaction: psql -1 -v ON_ERROR_STOP=1 -f load.sql"
    )
    .map_err(io)?;
    writeln!(w, "\\set ON_ERROR_STOP on").map_err(io)?;
    for t in &config.tables {
        w.write_all(ddl::create_table(t).as_bytes()).map_err(io)?;
    }
    w.write_all(REJECTS_TABLE.as_bytes()).map_err(io)?;
    let run_literal = literal(run_id);

    for (table, entry) in tables {
        let plan = plan_table(table);
        writeln!(w, "\n-- {}: {} rows", table.name, entry.rows).map_err(io)?;
        if let Some(truncate) = &plan.truncate {
            writeln!(w, "{truncate};").map_err(io)?;
        }
        writeln!(w, "{};", plan.create_stage).map_err(io)?;
        copy_block(&mut w, &plan.copy, transform_dir, &entry.files, &table.name)
            .map_err(|e| e.or_io(&tmp))?;
        if let Some(parents) = &plan.parents {
            writeln!(w, "{};", parents.create_stage).map_err(io)?;
            copy_block(
                &mut w,
                &parents.copy,
                transform_dir,
                &entry.parent_files,
                &table.name,
            )
            .map_err(|e| e.or_io(&tmp))?;
        }
        for check in &plan.orphans {
            let reason = literal(&format!("foreign key not found in {}", check.references));
            let insert = format!(
                "WITH gone(k, v) AS ({}) INSERT INTO etl_load_rejects (run_id, table_name, document_key, \
                 column_name, value, reason) SELECT {run_literal}, {}, k, {}, v, {reason} FROM gone",
                check.sql,
                literal(&table.name),
                literal(&check.column)
            );
            if check.repeat {
                // A self reference: repeat until no orphan is left (a child of an orphan is one too).
                writeln!(
                    w,
                    "DO $etl$ BEGIN LOOP {insert}; EXIT WHEN NOT FOUND; END LOOP; END $etl$;"
                )
                .map_err(io)?;
            } else {
                writeln!(w, "{insert};").map_err(io)?;
            }
        }
        if let Some(parents) = &plan.parents {
            writeln!(w, "{};", parents.delete_children).map_err(io)?;
        }
        writeln!(w, "{};", plan.upsert).map_err(io)?;
    }
    w.flush().map_err(io)?;
    drop(w);
    commit_file(&tmp, &path)?;
    Ok(path)
}

fn copy_block(
    w: &mut impl Write,
    copy_sql: &str,
    dir: &Path,
    files: &[crate::staging::FileEntry],
    table: &str,
) -> Result<(), BundleError> {
    writeln!(w, "{copy_sql};")?;
    let mut failure = None;
    encode_files(dir, files, table, |chunk| match w.write_all(&chunk) {
        Ok(()) => true,
        Err(e) => {
            failure = Some(e);
            false
        }
    })?;
    if let Some(e) = failure {
        return Err(e.into());
    }
    writeln!(w, "\\.")?;
    Ok(())
}

/// A string as a SQL literal (`'` doubled; standard_conforming_strings is on by default).
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

enum BundleError {
    Io(std::io::Error),
    Load(LoadError),
}

impl From<std::io::Error> for BundleError {
    fn from(e: std::io::Error) -> Self {
        BundleError::Io(e)
    }
}

impl From<LoadError> for BundleError {
    fn from(e: LoadError) -> Self {
        BundleError::Load(e)
    }
}

impl BundleError {
    fn or_io(self, path: &Path) -> LoadError {
        match self {
            BundleError::Io(e) => LoadError::Staging(StagingError::Io {
                path: path.to_path_buf(),
                source: e,
            }),
            BundleError::Load(e) => e,
        }
    }
}
