//! The load plan as a psql script: `etl load --to sql` writes it as a bundle that another host
//! applies, `--dry-run` prints it without writing anything.
//!
//! A bundle is a folder `<out>/<run>/`:
//!
//! ```text
//! load.sql        the entry: psql -1 -v ON_ERROR_STOP=1 -f load.sql, run from this folder
//! data/*.copy     COPY text per data set (data/*.copy.gz with --compress)
//! manifest.json   run, the run it follows, tables, rows, files with SHA-256
//! SHA256SUMS      for `sha256sum -c SHA256SUMS`
//! README.txt      how to check and apply it
//! ```
//!
//! The data is encoded by the same encoder as the live COPY, so values cannot end the data or
//! become SQL. The plan's branch on an empty target becomes psql's `\if`; since the data sits
//! in its own files (`\copy ... FROM 'data/...'`), no data line is ever read as part of the
//! script. Before anything changes the script checks, in order: every file against
//! `SHA256SUMS` (with `sha256sum`, from coreutils), whether this run is already applied (then
//! it says so and stops, changing nothing), and whether the run it follows is (else it names
//! that run and stops). Orphans go to an `etl_load_rejects` table in the target, since there
//! is no run folder over there: that table, the checks and the statement around each orphan
//! check are the only lines the live load does not run.

use std::fmt::Write as _;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::copy_text::{encode_files, CopyFormat};
use super::plan::{literal, Data, LoadPlan, OrphanCheck, PrunePlan, Step, TablePlan};
use super::LoadError;
use crate::staging::StagingError;

/// Where the psql script's statements end (psql sends a statement at `;`).
const END: &str = ";\n";

const REJECTS_TABLE: &str = "CREATE TABLE IF NOT EXISTS etl_load_rejects (\n    run_id TEXT NOT NULL,\n    \
    table_name TEXT NOT NULL,\n    document_key TEXT,\n    column_name TEXT NOT NULL,\n    value TEXT,\n    \
    reason TEXT NOT NULL,\n    rejected_at TIMESTAMPTZ NOT NULL DEFAULT now()\n)";

/// Version of a bundle's `manifest.json`.
pub(crate) const BUNDLE_FORMAT: u32 = 1;

/// How a bundle is written.
#[derive(Debug, Clone, Default)]
pub(super) struct BundleOptions {
    /// gzip the data files (psql reads them through `gzip -dc`).
    pub compress: bool,
    /// The run that must be applied before this one (the previous run loaded or bundled from
    /// the same staging folder).
    pub follows: Option<String>,
}

/// A bundle's `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BundleManifest {
    pub format: u32,
    pub run_id: String,
    pub follows: Option<String>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub compressed: bool,
    pub tables: Vec<BundleTable>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BundleTable {
    pub table: String,
    pub rows: u64,
    pub files: Vec<BundleFile>,
}

/// One file of a bundle, relative to its folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct BundleFile {
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// `etl load --dry-run`: the script a bundle of this plan holds, data files named, not written.
pub(crate) fn dry_run(plan: &LoadPlan, opts: &BundleOptions) -> String {
    let mut out = format!(
        "-- etl load --dry-run of run {}: nothing is executed. This is the script\n\
         -- `etl load --to sql` writes; the live load runs the same statements.\n",
        plan.run_id
    );
    out.push_str(&script(plan, opts, |table, data| {
        data_file(&table.table, data, opts.compress)
    }));
    out
}

/// Writes the bundle `<out>/<run>/` (a temp folder, renamed when complete) and returns the
/// path of its `load.sql`.
pub(crate) fn write_bundle(
    plan: &LoadPlan,
    transform_dir: &Path,
    out: &Path,
    opts: &BundleOptions,
) -> Result<PathBuf, LoadError> {
    let dir = out.join(&plan.run_id);
    let tmp = out.join(format!(".{}.tmp", plan.run_id));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(StagingError::io(&tmp))?;
    }
    let data_dir = tmp.join("data");
    std::fs::create_dir_all(&data_dir).map_err(StagingError::io(&data_dir))?;
    let mut failure = None;
    let mut written: Vec<(String, BundleFile)> = Vec::new();
    let text = script(plan, opts, |table, data| {
        let rel = data_file(&table.table, data, opts.compress);
        let done = written.iter().any(|(_, f)| f.path == rel);
        if failure.is_none() && !done {
            match write_data(&tmp, &rel, transform_dir, table, data, opts.compress) {
                Ok(file) => written.push((table.table.clone(), file)),
                Err(e) => failure = Some(e),
            }
        }
        rel
    });
    if let Some(e) = failure {
        return Err(e);
    }
    let manifest = BundleManifest {
        format: BUNDLE_FORMAT,
        run_id: plan.run_id.clone(),
        follows: opts.follows.clone(),
        created_at: chrono::Utc::now(),
        compressed: opts.compress,
        tables: plan
            .tables
            .iter()
            .map(|t| BundleTable {
                table: t.table.clone(),
                rows: t.rows,
                files: written
                    .iter()
                    .filter(|(table, _)| *table == t.table)
                    .map(|(_, f)| f.clone())
                    .collect(),
            })
            .collect(),
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| StagingError::Invalid {
        path: tmp.join("manifest.json"),
        message: e.to_string(),
    })?;
    let mut sums = String::new();
    for (name, bytes) in [("load.sql", text.as_bytes()), ("manifest.json", &json)] {
        write_file(&tmp.join(name), bytes)?;
        let _ = writeln!(sums, "{}  {name}", hex::encode(Sha256::digest(bytes)));
    }
    for (_, f) in &written {
        let _ = writeln!(sums, "{}  {}", f.sha256, f.path);
    }
    write_file(&tmp.join("SHA256SUMS"), sums.as_bytes())?;
    write_file(&tmp.join("README.txt"), readme(&manifest).as_bytes())?;
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(StagingError::io(&dir))?;
    }
    std::fs::rename(&tmp, &dir).map_err(StagingError::io(&dir))?;
    Ok(dir.join("load.sql"))
}

fn readme(m: &BundleManifest) -> String {
    let after = m.follows.as_ref().map_or_else(String::new, |f| {
        format!(" It must be applied after run {f}.")
    });
    format!(
        "etl bundle of run {}.{after}\n\
         Check it:  sha256sum -c SHA256SUMS   (or: etl bundle check .)\n\
         Apply it from this folder, in one transaction:  psql -1 -v ON_ERROR_STOP=1 -f load.sql\n",
        m.run_id
    )
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::File::create(path)?;
        file.write_all(bytes)?;
        file.sync_all()
    };
    write().map_err(|e| StagingError::Io {
        path: path.to_path_buf(),
        source: e,
    })?;
    Ok(())
}

/// The bundle's file for one data set of a table.
fn data_file(table: &str, data: Data, compress: bool) -> String {
    let gz = if compress { ".gz" } else { "" };
    match data {
        Data::Rows => format!("data/{table}.copy{gz}"),
        Data::Parents => format!("data/{table}.parents.copy{gz}"),
        Data::Keys => format!("data/{table}.keys.copy{gz}"),
    }
}

/// Hashes what goes through it: the SHA-256 of the bytes as they land in the file.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// One data set as COPY text (gzip'd with `compress`).
fn write_data(
    dir: &Path,
    rel: &str,
    transform_dir: &Path,
    table: &TablePlan,
    data: Data,
    compress: bool,
) -> Result<BundleFile, LoadError> {
    let path = dir.join(rel);
    let io = |e: std::io::Error| StagingError::Io {
        path: path.clone(),
        source: e,
    };
    let file = std::fs::File::create(&path).map_err(io)?;
    let mut hashed = Hashing {
        inner: BufWriter::with_capacity(1 << 20, file),
        hash: Sha256::new(),
        bytes: 0,
    };
    let mut failure = None;
    {
        let mut sink: Box<dyn Write + '_> = if compress {
            Box::new(flate2::write::GzEncoder::new(
                &mut hashed,
                flate2::Compression::fast(),
            ))
        } else {
            Box::new(&mut hashed)
        };
        encode_files(
            transform_dir,
            table.files(data),
            &table.table,
            &CopyFormat::Text,
            |chunk| match sink.write_all(&chunk) {
                Ok(()) => true,
                Err(e) => {
                    failure = Some(e);
                    false
                }
            },
        )?;
        if let Some(e) = failure {
            return Err(io(e).into());
        }
        sink.flush().map_err(io)?;
    }
    hashed.inner.flush().map_err(io)?;
    hashed.inner.get_ref().sync_all().map_err(io)?;
    Ok(BundleFile {
        path: rel.to_string(),
        rows: table.files(data).iter().map(|f| f.rows).sum(),
        bytes: hashed.bytes,
        sha256: hex::encode(hashed.hash.finalize()),
    })
}

/// The plan as a psql script. `data` gives, for each COPY, the file it reads.
fn script(
    plan: &LoadPlan,
    opts: &BundleOptions,
    mut data: impl FnMut(&TablePlan, Data) -> String,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "-- etl load of run {}. Apply from this folder, in one transaction:\n\
         --   psql -1 -v ON_ERROR_STOP=1 -f load.sql\n\\set ON_ERROR_STOP on",
        plan.run_id
    );
    out.push_str(&intact_check());
    for sql in &plan.setup {
        out.push_str(sql);
        out.push_str(END);
    }
    out.push_str(&order_checks(&plan.run_id, opts.follows.as_deref()));
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
            write_step(&mut out, table, step, &run, opts.compress, &mut data);
        }
    }
    if let Some(prune) = &plan.prune {
        write_prune(&mut out, plan, prune, &run, opts.compress, &mut data);
    }
    out.push_str("\n-- after every table\n");
    for sql in &plan.postlude {
        out.push_str(sql);
        out.push_str(END);
    }
    out
}

/// Stops with an error (psql runs with ON_ERROR_STOP): nothing of the transaction remains.
fn stop(message: &str) -> String {
    format!(
        "DO $etl$ BEGIN RAISE EXCEPTION '%', {}; END $etl$;\n",
        literal(message)
    )
}

/// Every file of the bundle against `SHA256SUMS`, before anything else.
fn intact_check() -> String {
    format!(
        "\\set etl_intact `sha256sum --quiet --check SHA256SUMS >/dev/null 2>&1 && echo true || echo false`\n\
         \\if :etl_intact\n\\else\n{}\\endif\n",
        stop(
            "etl: a file of this bundle does not match SHA256SUMS (or sha256sum is missing, or \
             psql runs outside the bundle folder): nothing was applied; run `sha256sum -c \
             SHA256SUMS` in the bundle folder to see which"
        )
    )
}

/// Already applied: say so and stop, changing nothing. The run it follows not applied: stop,
/// naming it.
fn order_checks(run_id: &str, follows: Option<&str>) -> String {
    let run = literal(run_id);
    let mut out = format!(
        "SELECT EXISTS (SELECT 1 FROM etl.runs WHERE run_id = {run} AND status = 'loaded') \
         AS etl_applied \\gset\n\\if :etl_applied\n\
         \\echo 'etl: run {run_id} is already applied to this database: nothing to do'\n\\q\n\\endif\n"
    );
    if let Some(previous) = follows {
        let _ = write!(
            out,
            "SELECT NOT EXISTS (SELECT 1 FROM etl.runs WHERE run_id = {} AND status = 'loaded') \
             AS etl_out_of_order \\gset\n\\if :etl_out_of_order\n{}\\endif\n",
            literal(previous),
            stop(&format!(
                "etl: apply run {previous} first: run {run_id} follows it; nothing was applied"
            ))
        );
    }
    out
}

/// The prune section: setup, each table's keys and count, the share check, the deletions.
fn write_prune(
    out: &mut String,
    plan: &LoadPlan,
    prune: &PrunePlan,
    run: &str,
    compress: bool,
    data: &mut impl FnMut(&TablePlan, Data) -> String,
) {
    out.push_str("\n-- prune: target rows whose key is no longer in the source\n");
    for sql in &prune.setup {
        out.push_str(sql);
        out.push_str(END);
    }
    for (_, keys) in &prune.count {
        let _ = writeln!(
            out,
            "-- prune, the source's keys of {} ({})",
            keys.table, keys.rows
        );
        for step in &keys.steps {
            write_step(out, keys, step, run, compress, data);
        }
    }
    if let Some(check) = &prune.check {
        out.push_str("-- prune, refused above the allowed share of any table\n");
        out.push_str(check);
        out.push_str(END);
    }
    for (i, step) in &prune.delete {
        let Some(table) = plan.tables.get(*i) else {
            continue;
        };
        let _ = writeln!(
            out,
            "-- prune, rows of {} gone from the source",
            table.table
        );
        write_step(out, table, step, run, compress, data);
    }
}

fn write_step(
    out: &mut String,
    table: &TablePlan,
    step: &Step,
    run: &str,
    compress: bool,
    data: &mut impl FnMut(&TablePlan, Data) -> String,
) {
    match step {
        Step::Sql(sql) | Step::DeleteChildren(sql) | Step::Prune(sql) | Step::Write { sql, .. } => {
            out.push_str(sql);
            out.push_str(END);
        }
        Step::Copy {
            into, data: set, ..
        } => {
            let file = data(table, *set);
            let rows: u64 = table.files(*set).iter().map(|f| f.rows).sum();
            let from = if compress {
                format!("PROGRAM {}", literal(&format!("gzip -dc {file}")))
            } else {
                literal(&file)
            };
            let _ = writeln!(out, "\\copy {into} FROM {from}\n-- ({rows} rows)");
        }
        Step::Orphans(check) => out.push_str(&orphans_into_rejects(table, check, run)),
        Step::IfEmpty {
            check,
            then,
            otherwise,
        } => {
            let _ = writeln!(out, "{check} AS etl_empty \\gset\n\\if :etl_empty");
            for inner in then {
                write_step(out, table, inner, run, compress, data);
            }
            out.push_str("\\else\n");
            for inner in otherwise {
                write_step(out, table, inner, run, compress, data);
            }
            out.push_str("\\endif\n");
        }
    }
}

/// The orphan check, its rows kept in `etl_load_rejects`.
fn orphans_into_rejects(table: &TablePlan, check: &OrphanCheck, run: &str) -> String {
    let reason = if check.cycle {
        format!(
            "'parent cycle ' || v || {}",
            literal(&format!(" ({})", check.references))
        )
    } else {
        literal(&format!("foreign key not found in {}", check.references))
    };
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

/// What `etl bundle check` found.
#[derive(Debug, Clone)]
pub(crate) struct BundleCheck {
    pub manifest: BundleManifest,
    /// Files listed in `SHA256SUMS` and checked.
    pub checked: usize,
    /// Files missing, altered, or not listed where they must be: one message each.
    pub problems: Vec<String>,
    /// The target's ledger, when a target was given: is the run applied, is the one it
    /// follows.
    pub ledger: Option<LedgerState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LedgerState {
    /// Applying the bundle now would load it.
    Ready,
    /// The run is applied already: applying it changes nothing.
    Applied,
    /// The run it follows is not applied: applying it would stop.
    OutOfOrder,
}

/// Checks a bundle folder: its manifest, every checksum of `SHA256SUMS`, every file the
/// manifest lists; with a target, where the run stands in the target's ledger.
pub(crate) async fn check_bundle(
    dir: &Path,
    target: Option<&crate::settings::PostgresSettings>,
) -> Result<BundleCheck, LoadError> {
    let read = |name: &str| -> Result<Vec<u8>, LoadError> {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|e| StagingError::Io { path, source: e }.into())
    };
    let manifest: BundleManifest =
        serde_json::from_slice(&read("manifest.json")?).map_err(|e| StagingError::Invalid {
            path: dir.join("manifest.json"),
            message: format!("not a bundle manifest: {e}"),
        })?;
    if manifest.format != BUNDLE_FORMAT {
        return Err(StagingError::Invalid {
            path: dir.join("manifest.json"),
            message: format!(
                "bundle format {} but this etl reads format {BUNDLE_FORMAT}",
                manifest.format
            ),
        }
        .into());
    }
    let sums = String::from_utf8_lossy(&read("SHA256SUMS")?).into_owned();
    let mut problems = Vec::new();
    let mut listed = Vec::new();
    for line in sums.lines().filter(|l| !l.trim().is_empty()) {
        let Some((sum, name)) = line.split_once("  ") else {
            problems.push(format!("SHA256SUMS: unreadable line `{line}`"));
            continue;
        };
        listed.push(name.to_string());
        if name.contains("..") || name.starts_with('/') {
            problems.push(format!("SHA256SUMS: `{name}` is outside the bundle"));
            continue;
        }
        match file_sha256(&dir.join(name)) {
            Ok(actual) if actual == sum => {}
            Ok(_) => problems.push(format!("{name}: does not match its SHA-256")),
            Err(e) => problems.push(format!("{name}: {e}")),
        }
    }
    let expected = ["load.sql", "manifest.json"]
        .into_iter()
        .map(String::from)
        .chain(
            manifest
                .tables
                .iter()
                .flat_map(|t| t.files.iter().map(|f| f.path.clone())),
        );
    for name in expected {
        if !listed.contains(&name) {
            problems.push(format!("{name}: not in SHA256SUMS"));
        }
    }
    let ledger = match target {
        Some(settings) => Some(ledger_state(settings, &manifest).await?),
        None => None,
    };
    Ok(BundleCheck {
        checked: listed.len(),
        manifest,
        problems,
        ledger,
    })
}

fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hash = Sha256::new();
    std::io::copy(&mut file, &mut hash)?;
    Ok(hex::encode(hash.finalize()))
}

async fn ledger_state(
    settings: &crate::settings::PostgresSettings,
    manifest: &BundleManifest,
) -> Result<LedgerState, LoadError> {
    let client = super::postgres::connect(settings).await?;
    let loaded = "SELECT EXISTS (SELECT 1 FROM etl.runs WHERE run_id = $1 AND status = 'loaded')";
    let is_loaded = |run: String| {
        let client = &client;
        async move {
            match client.query_one(loaded, &[&run]).await {
                Ok(row) => Ok(row.get::<_, bool>(0)),
                Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
                    Ok(false)
                }
                Err(e) => Err(super::postgres::sql_error("", loaded, e)),
            }
        }
    };
    if is_loaded(manifest.run_id.clone()).await? {
        return Ok(LedgerState::Applied);
    }
    match &manifest.follows {
        Some(previous) if !is_loaded(previous.clone()).await? => Ok(LedgerState::OutOfOrder),
        _ => Ok(LedgerState::Ready),
    }
}
