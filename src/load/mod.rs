//! Load stage: a transformed run into PostgreSQL (one transaction, COPY + upsert), or into
//! SQL files that `psql -1` applies on another host. Reads only the transform manifest and
//! files.

mod compare;
mod copy_binary;
mod copy_text;
mod ledger;
mod plan;
mod postgres;
mod rollback;
mod sql_files;

use std::path::{Path, PathBuf};

pub(crate) use compare::{compare, CompareOptions, Expected, TableVerdict};
pub(crate) use rollback::{ledger_rows, rollback, RollbackOptions};
pub(crate) use sql_files::{check_bundle, LedgerState};

use crate::config::{Config, TableSpec};
use crate::settings::PostgresSettings;
use crate::staging::{
    self, Counts, Manifest, ManifestEntry, RejectRow, RunDir, Stage, StagingError,
};

#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    #[error(transparent)]
    Staging(#[from] StagingError),
    #[error("cannot connect to {target}: {message}")]
    Connect { target: String, message: String },
    #[error("table `{table}`: {}\n  in: {statement}", postgres::db_message(.source))]
    Sql {
        table: String,
        /// The statement's beginning.
        statement: String,
        source: tokio_postgres::Error,
    },
    #[error(transparent)]
    UnknownTables(#[from] crate::config::UnknownTables),
    #[error(
        "table `{table}`: the run was transformed with columns ({staged}) but the config now \
         loads ({wanted}); run `etl transform` again"
    )]
    ConfigChanged {
        table: String,
        staged: String,
        wanted: String,
    },
    /// A request the target's state does not allow (a rollback out of order, or over rows
    /// changed since the load); nothing was changed.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Internal(String),
}

/// What happened to one table.
#[derive(Debug, Clone, Default)]
pub(crate) struct TableLoad {
    pub table: String,
    /// Rows in the transform output.
    pub rows: u64,
    /// Rows the transform rejected (in `rejects/<table>.parquet`).
    pub rejected: u64,
    pub inserted: u64,
    pub updated: u64,
    /// Rows deleted: children of replaced parents that are gone, and pruned rows.
    pub deleted: u64,
    /// Of `deleted`: rows `--prune` deleted because their key is gone from the source.
    pub pruned: u64,
    /// Rows whose key is gone from the source that `--prune` kept because a row that stays
    /// still references them.
    pub prune_kept: u64,
    pub orphans: Vec<OrphanReject>,
    pub seconds: f64,
    /// Every statement the live load ran for the table, in order (COPY data left out).
    pub statements: Vec<String>,
}

/// A row whose foreign key points nowhere, left out of the load.
#[derive(Debug, Clone)]
pub(crate) struct OrphanReject {
    /// The row's conflict key values, comma-separated.
    pub key: String,
    pub column: String,
    pub value: String,
    pub references: String,
    /// Left out for being on a parent cycle; `value` is the cycle's path.
    pub cycle: bool,
}

/// What `etl load --dry-run --prune` found in the target for one table.
#[derive(Debug, Clone)]
pub(crate) struct PrunePreview {
    pub(crate) table: String,
    /// Rows whose key is no longer in the source.
    pub(crate) doomed: u64,
    /// Rows in the table now.
    pub(crate) total: u64,
    /// The first of their keys.
    pub(crate) samples: Vec<String>,
}

/// Where `etl load` writes.
#[derive(Debug, Clone)]
pub(crate) enum Sink {
    Postgres(PostgresSettings),
    /// A bundle of SQL and data files under this folder.
    SqlFiles {
        out: PathBuf,
        /// gzip the data files.
        compress: bool,
    },
}

/// The tables of the run's transform manifest that the user selected, in load order.
fn planned<'a>(
    config: &'a Config,
    manifest: &'a Manifest,
    tables: Option<&[String]>,
) -> Result<Vec<(&'a TableSpec, &'a ManifestEntry)>, LoadError> {
    let selected = config.select(tables)?;
    let planned: Vec<(&TableSpec, &ManifestEntry)> = selected
        .into_iter()
        .filter_map(|t| manifest.entry(&t.name).map(|e| (t, e)))
        .collect();
    // The staged columns must be the ones the config loads now.
    for (table, entry) in &planned {
        let staged: Vec<&str> = entry.schema.iter().map(|(name, _)| name.as_str()).collect();
        let wanted: Vec<&str> = table.loaded_columns().map(|c| c.name.as_str()).collect();
        if staged != wanted {
            return Err(LoadError::ConfigChanged {
                table: table.name.clone(),
                staged: staged.join(", "),
                wanted: wanted.join(", "),
            });
        }
    }
    Ok(planned)
}

/// `--prune` on tables whose source keys are not all known: why, per table (empty when it
/// can go on). Decided before anything connects.
fn prune_refusals(planned: &[(&TableSpec, &ManifestEntry)]) -> Vec<String> {
    planned
        .iter()
        .filter_map(|(t, entry)| {
            let why = match &entry.source_keys {
                None => Some(
                    "the run was transformed by an etl that did not record the source's keys: \
                     run `etl transform` again"
                        .to_string(),
                ),
                Some(keys) => keys.incomplete.clone(),
            };
            why.map(|why| format!("table `{}`: {why}", t.name))
        })
        .collect()
}

/// Checks `--prune` can apply to every planned table.
fn check_prune(
    planned: &[(&TableSpec, &ManifestEntry)],
    opts: &LoadOptions,
) -> Result<(), LoadError> {
    if opts.prune.is_none() {
        return Ok(());
    }
    let refusals = prune_refusals(planned);
    if refusals.is_empty() {
        return Ok(());
    }
    Err(LoadError::Refused(format!(
        "--prune refused: the source's keys are not all known for {} table(s), so a missing \
         key would not mean a deleted document; nothing was loaded (leave these tables out \
         with --tables, or extract with --full):\n  {}",
        refusals.len(),
        refusals.join("\n  ")
    )))
}

/// The plan of a run, as every executor gets it.
fn build_plan(
    config: &Config,
    run: &RunDir,
    manifest: &Manifest,
    planned: &[(&TableSpec, &ManifestEntry)],
    opts: &LoadOptions,
) -> Result<plan::LoadPlan, LoadError> {
    check_prune(planned, opts)?;
    let mut options = plan_options(&run.id, manifest, opts.keep_history);
    options.prune = opts.prune.map(|p| plan::PruneRule {
        max_share_bp: (!p.force).then_some(p.max_share_bp),
    });
    Ok(plan::plan_load(config, &options, planned))
}

/// `etl load --dry-run`: the plan as the psql script a bundle holds, touching nothing.
pub(crate) fn dry_run(
    config: &Config,
    staging_dir: &Path,
    run: Option<&str>,
    tables: Option<&[String]>,
    opts: &LoadOptions,
) -> Result<String, LoadError> {
    let run = RunDir::open(staging_dir, run, Stage::Transform)?;
    let manifest = run.manifest(Stage::Transform)?;
    let planned = planned(config, &manifest, tables)?;
    let plan = build_plan(config, &run, &manifest, &planned, opts)?;
    let bundle = sql_files::BundleOptions {
        compress: false,
        follows: previous_loaded_run(staging_dir, &run.id),
    };
    Ok(sql_files::dry_run(&plan, &bundle))
}

/// `etl load --dry-run --prune` with a target: per table, how many rows the prune would
/// delete and the first of their keys, computed in a transaction that is rolled back.
pub(crate) async fn prune_preview(
    config: &Config,
    staging_dir: &Path,
    run: Option<&str>,
    tables: Option<&[String]>,
    settings: &PostgresSettings,
    opts: &LoadOptions,
) -> Result<Vec<PrunePreview>, LoadError> {
    let run = RunDir::open(staging_dir, run, Stage::Transform)?;
    let manifest = run.manifest(Stage::Transform)?;
    let planned = planned(config, &manifest, tables)?;
    let plan = build_plan(config, &run, &manifest, &planned, opts)?;
    let mut client = postgres::connect(settings).await?;
    postgres::preview_prune(&mut client, &plan, &run.stage_dir(Stage::Transform)).await
}

/// Loads a transformed run into `sink`; returns the run and per-table results, and writes the
/// run's load manifest (the JSON report) and orphan rejects.
pub(crate) async fn run(
    config: &Config,
    staging_dir: &Path,
    run: Option<&str>,
    tables: Option<&[String]>,
    sink: &Sink,
    opts: &LoadOptions,
) -> Result<(RunDir, Vec<TableLoad>, PathBuf), LoadError> {
    let run = RunDir::open(staging_dir, run, Stage::Transform)?;
    let manifest = run.manifest(Stage::Transform)?;
    let planned = planned(config, &manifest, tables)?;
    let plan = build_plan(config, &run, &manifest, &planned, opts)?;
    let transform_dir = run.stage_dir(Stage::Transform);
    let (loads, written_to) = match sink {
        Sink::Postgres(settings) => {
            let mut client = postgres::connect(settings).await?;
            let loads =
                postgres::load(&mut client, &plan, &transform_dir, opts.binary_copy).await?;
            (loads, PathBuf::from(settings.to_string()))
        }
        Sink::SqlFiles { out, compress } => {
            let bundle = sql_files::BundleOptions {
                compress: *compress,
                follows: previous_loaded_run(staging_dir, &run.id),
            };
            let file = sql_files::write_bundle(&plan, &transform_dir, out, &bundle)?;
            let loads = plan
                .tables
                .iter()
                .map(|t| TableLoad {
                    table: t.table.clone(),
                    rows: t.rows,
                    ..Default::default()
                })
                .collect();
            (loads, file)
        }
    };
    let mut loads = loads;
    for ((_, entry), load) in planned.iter().zip(loads.iter_mut()) {
        load.rejected = entry.counts.rejected;
    }
    write_orphans(&run, &loads)?;
    let mut report = Manifest::new(Stage::Load, &run.id, &manifest.config_fingerprint);
    for ((_, entry), load) in planned.iter().zip(&loads) {
        report.entries.push(ManifestEntry {
            name: load.table.clone(),
            rows: load.rows,
            watermarks: entry.watermarks.clone(),
            counts: Counts {
                inserted: load.inserted,
                updated: load.updated,
                deleted: load.deleted,
                pruned: load.pruned,
                orphans: load.orphans.len() as u64,
                transformed: entry.rows,
                ..entry.counts
            },
            seconds: load.seconds,
            target: Some(written_to.display().to_string()),
            statements: load.statements.clone(),
            ..Default::default()
        });
    }
    report.write(&run.stage_dir(Stage::Load))?;
    Ok((run, loads, written_to))
}

/// `etl reconcile`: the key of every row of `table` in the target, as text (its key columns
/// printed by PostgreSQL, several joined by `,`), streamed to `on_key`; a table that does
/// not exist yet has none. Returns how many rows.
pub(crate) async fn target_keys(
    settings: &PostgresSettings,
    table: &TableSpec,
    key: &[String],
    mut on_key: impl FnMut(String),
) -> Result<u64, LoadError> {
    use futures_util::TryStreamExt;
    let client = postgres::connect(settings).await?;
    let columns: Vec<String> = key
        .iter()
        .map(|k| format!("{}::text", crate::config::ddl::ident(k)))
        .collect();
    let sql = format!(
        "SELECT concat_ws(',', {}) FROM {}",
        columns.join(", "),
        crate::config::ddl::ident(&table.name)
    );
    let rows = match client.query_raw(sql.as_str(), Vec::<String>::new()).await {
        Ok(rows) => rows,
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            return Ok(0)
        }
        Err(e) => return Err(postgres::sql_error(&table.name, &sql, e)),
    };
    futures_util::pin_mut!(rows);
    let mut count = 0;
    while let Some(row) = rows
        .try_next()
        .await
        .map_err(|e| postgres::sql_error(&table.name, &sql, e))?
    {
        on_key(row.get(0));
        count += 1;
    }
    Ok(count)
}

/// The run a bundle of `run_id` follows: the newest earlier run of the staging folder that was
/// loaded or bundled (its load stage finished).
fn previous_loaded_run(staging_dir: &Path, run_id: &str) -> Option<String> {
    staging::list_runs(staging_dir)
        .ok()?
        .into_iter()
        .rfind(|r| r.id.as_str() < run_id && r.has_finished(Stage::Load))
        .map(|r| r.id)
}

/// How a load runs, beyond what to load and where.
#[derive(Debug, Clone)]
pub(crate) struct LoadOptions {
    /// Loaded runs whose history `etl rollback` can use (`ETL_HISTORY_RUNS`; 0 keeps none).
    pub keep_history: u32,
    /// The live COPY in PostgreSQL's binary format (`ETL_COPY_FORMAT=binary`, the default);
    /// text otherwise. Bundles always carry text.
    pub binary_copy: bool,
    /// `--prune`: delete the target rows whose key is no longer in the source.
    pub prune: Option<PruneOptions>,
}

/// How `--prune` may delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PruneOptions {
    /// The largest share of a table's rows one load may prune, in hundredths of a percent
    /// (`ETL_PRUNE_MAX_SHARE`, default [`DEFAULT_PRUNE_MAX_SHARE_BP`]).
    pub(crate) max_share_bp: u32,
    /// `--force`: prune whatever the share.
    pub(crate) force: bool,
}

/// 10%: above it a table's prune is refused without `--force` (an empty or partial dump must
/// never wipe production).
pub(crate) const DEFAULT_PRUNE_MAX_SHARE_BP: u32 = 1_000;

/// A share of a table's rows as written (`10%`, `2.5%`, or a fraction `0.1`), in hundredths of
/// a percent.
pub(crate) fn parse_share(text: &str) -> Result<u32, String> {
    let text = text.trim();
    let (number, scale) = match text.strip_suffix('%') {
        Some(percent) => (percent.trim(), 100.0),
        None => (text, 10_000.0),
    };
    let value: f64 = number
        .parse()
        .ok()
        .filter(|v: &f64| v.is_finite() && *v >= 0.0)
        .ok_or_else(|| {
            format!("`{text}` is not a share: write a percentage (`10%`) or a fraction (`0.1`)")
        })?;
    let bp = (value * scale).round();
    if bp > 10_000.0 {
        return Err(format!("`{text}` is more than the whole table (100%)"));
    }
    // Rounded and within 0..=10000: the conversion is exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    Ok(bp as u32)
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            keep_history: DEFAULT_HISTORY_RUNS,
            binary_copy: true,
            prune: None,
        }
    }
}

/// How many loaded runs keep the history `etl rollback` needs (`ETL_HISTORY_RUNS`).
pub(crate) const DEFAULT_HISTORY_RUNS: u32 = ledger::DEFAULT_HISTORY_RUNS;

fn plan_options<'a>(
    run_id: &'a str,
    manifest: &Manifest,
    keep_history: u32,
) -> plan::PlanOptions<'a> {
    let mut sources: Vec<&str> = manifest
        .entries
        .iter()
        .filter_map(|e| e.source.map(crate::staging::SourceKind::as_str))
        .collect();
    sources.sort_unstable();
    sources.dedup();
    plan::PlanOptions {
        run_id,
        source: sources.join(","),
        keep_history,
        prune: None,
    }
}

/// `rejects/<table>.orphans.parquet`, in the same shape as transform rejects.
fn write_orphans(run: &RunDir, loads: &[TableLoad]) -> Result<(), StagingError> {
    for load in loads {
        let rows: Vec<RejectRow> = load
            .orphans
            .iter()
            .map(|o| RejectRow {
                document_id: o.key.clone(),
                column: o.column.clone(),
                reason: if o.cycle {
                    format!("{}: parent cycle {} ({})", o.column, o.value, o.references)
                } else {
                    format!(
                        "{}: foreign key `{}` not found in {}",
                        o.column, o.value, o.references
                    )
                },
                raw_value: Some(serde_json::json!({ &o.column: o.value }).to_string()),
            })
            .collect();
        let path = run
            .rejects_dir()
            .join(format!("{}.orphans.parquet", load.table));
        staging::write_rejects(&path, &load.table, &rows)?;
    }
    Ok(())
}
