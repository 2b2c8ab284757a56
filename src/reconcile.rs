//! `etl reconcile`: loads what the source has and the target lacks, and reports the reverse.
//! Meant for cron during a dual-write period, so it is cheap when nothing is missing: keys
//! only on both sides (a projection on `_id` for live MongoDB, a `SELECT` of the key columns
//! for Matomo and the target; a dump is read for its `_id`s), no run folder, nothing loaded.
//!
//! Keys are compared per source, through one table of it whose key is the source's own: a
//! MongoDB table keyed by `_id` alone (not a link or dedupe table), or a Matomo table by its
//! upsert key. The documents or rows of missing keys go through the normal stages: a run
//! folder extracted by key (`extract::keys`), the real transform of every selected table of
//! that source (its link tables included), and a normal load with its ledger and history.
//! Keys only in the target are reported, never deleted (`etl load --prune` does that).
//! A source whose selected tables include none keyed that way is reported as not compared.
//!
//! Like `verify`, it composes the stages; no stage imports it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use crate::config::{ColumnSource, ColumnSpec, Config, Source, TableSpec};
use crate::extract::keys::{self as source_keys, SourceKey};
use crate::extract::{ExtractError, ExtractOptions};
use crate::load::{self, LoadError, LoadOptions, Sink, TableLoad};
use crate::settings::PostgresSettings;
use crate::transform::{self, TransformError};

/// Keys shown per list in the report.
pub(crate) const SHOWN_KEYS: usize = 10;

#[derive(Debug, Clone)]
pub(crate) struct ReconcileOptions {
    /// The sources to read (windows do not apply: every key is read).
    pub(crate) source: ExtractOptions,
    pub(crate) tables: Option<Vec<String>>,
    /// Compare and report only: extract and load nothing.
    pub(crate) dry_run: bool,
    pub(crate) load: LoadOptions,
}

/// How many keys, and the first of them (sorted).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct KeySample {
    pub(crate) count: u64,
    pub(crate) keys: Vec<String>,
}

/// What reconcile found for one source, through its keyed table.
#[derive(Debug, Clone, Default)]
pub(crate) struct SourceReconcile {
    /// The table whose keys were compared.
    pub(crate) table: String,
    /// The collection or Matomo table.
    pub(crate) source: String,
    pub(crate) source_keys: u64,
    pub(crate) target_keys: u64,
    /// In the source, not in the target: extracted and loaded (unless `--dry-run`).
    pub(crate) missing: KeySample,
    /// In the target, not in the source: reported only.
    pub(crate) extra: KeySample,
    /// Documents or rows whose key could not be read, so not compared.
    pub(crate) unreadable: u64,
    /// The other selected tables of the source, loaded from the same documents.
    pub(crate) with: Vec<String>,
    /// Why the source was not compared (then the counts are zero).
    pub(crate) note: Option<String>,
}

#[derive(Debug, Clone)]
pub(crate) struct ReconcileReport {
    pub(crate) target: String,
    pub(crate) dry_run: bool,
    pub(crate) sources: Vec<SourceReconcile>,
    /// The run that extracted and loaded the missing keys.
    pub(crate) run: Option<String>,
    pub(crate) loads: Vec<TableLoad>,
}

impl ReconcileReport {
    pub(crate) fn missing(&self) -> u64 {
        self.sources.iter().map(|s| s.missing.count).sum()
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ReconcileError {
    #[error(transparent)]
    Config(#[from] crate::config::UnknownTables),
    #[error("extract: {0}")]
    Extract(#[from] ExtractError),
    #[error("transform: {0}")]
    Transform(#[from] TransformError),
    #[error("load: {0}")]
    Load(#[from] LoadError),
}

/// Compares the keys of every selected source with the target's, then (unless `dry_run`)
/// extracts, transforms and loads the documents or rows the target lacks.
pub(crate) async fn run(
    config: &Config,
    staging_dir: &Path,
    target: &PostgresSettings,
    opts: &ReconcileOptions,
) -> Result<ReconcileReport, ReconcileError> {
    let selected: Vec<&TableSpec> = config
        .select(opts.tables.as_deref())?
        .into_iter()
        .filter(|t| match t.source {
            Source::Mongo { .. } => opts.source.mongo.is_some(),
            Source::Matomo { .. } => opts.source.matomo.is_some(),
            Source::MatomoApi { .. } => opts.source.matomo_api.is_some(),
            // Reading a source PostgreSQL's keys alone is not built yet: not compared.
            Source::Postgres { .. } => false,
        })
        .collect();
    let mut by_source: BTreeMap<&str, Vec<&TableSpec>> = BTreeMap::new();
    for t in &selected {
        by_source.entry(t.source.name()).or_default().push(t);
    }
    let mut sources = Vec::new();
    let mut to_load: BTreeMap<String, (&TableSpec, Vec<SourceKey>)> = BTreeMap::new();
    for (source, tables) in by_source {
        let Some((anchor, key)) = tables
            .iter()
            .find_map(|t| keyed_by_source(t).map(|k| (*t, k)))
        else {
            for t in tables {
                sources.push(SourceReconcile {
                    table: t.name.clone(),
                    source: source.to_string(),
                    note: Some(format!(
                        "not compared: no selected table of `{source}` is keyed by {}",
                        match t.source {
                            Source::Mongo { .. } => "the document's `_id` alone",
                            Source::Matomo { .. } => "columns of the source table",
                            // The API lists visits by day, with no way to ask for keys alone.
                            Source::MatomoApi { .. } => {
                                "its source's keys (the Matomo API lists visits, not keys)"
                            }
                            Source::Postgres { .. } => "keys a source PostgreSQL is asked for",
                        }
                    )),
                    ..Default::default()
                });
            }
            continue;
        };
        let (report, missing) = compare(anchor, &key, target, &opts.source).await?;
        let report = SourceReconcile {
            with: tables
                .iter()
                .filter(|t| t.name != anchor.name)
                .map(|t| t.name.clone())
                .collect(),
            ..report
        };
        tracing::info!(
            source,
            missing = report.missing.count,
            extra = report.extra.count,
            "keys compared"
        );
        if !missing.is_empty() {
            to_load.insert(source.to_string(), (anchor, missing));
        }
        sources.push(report);
    }
    let mut report = ReconcileReport {
        target: target.to_string(),
        dry_run: opts.dry_run,
        sources,
        run: None,
        loads: Vec::new(),
    };
    if opts.dry_run || to_load.is_empty() {
        return Ok(report);
    }
    let tables: Vec<String> = selected
        .iter()
        .filter(|t| to_load.contains_key(t.source.name()))
        .map(|t| t.name.clone())
        .collect();
    let (run, _) = source_keys::run_by_keys(config, staging_dir, &opts.source, &to_load).await?;
    transform::run(config, staging_dir, Some(&run.id), Some(&tables))?;
    let (_, loads, _) = load::run(
        config,
        staging_dir,
        Some(&run.id),
        Some(&tables),
        &Sink::Postgres(target.clone()),
        &opts.load,
    )
    .await?;
    report.run = Some(run.id);
    report.loads = loads;
    Ok(report)
}

/// The key columns of a table whose key is its source's own: `_id` alone for MongoDB (a
/// table with one row per document), the upsert key's columns for Matomo.
fn keyed_by_source(t: &TableSpec) -> Option<Vec<String>> {
    // A key computed by an expression is not the source's own key.
    let field = |name: &String| match t.column(name).filter(|c| c.expression.is_none()) {
        Some(ColumnSpec {
            source: ColumnSource::Field(f),
            ..
        }) => Some(f.clone()),
        _ => None,
    };
    match t.source {
        Source::Mongo { .. } => {
            let [key] = t.conflict_key.as_slice() else {
                return None;
            };
            let one_per_document = t.explode.is_none() && t.dedupe.is_none();
            (one_per_document && field(key).as_deref() == Some(crate::staging::fields::ID_FIELD))
                .then(|| vec![key.clone()])
        }
        Source::Matomo { .. } => t
            .conflict_key
            .iter()
            .all(|k| field(k).is_some())
            .then(|| t.conflict_key.clone()),
        Source::MatomoApi { .. } | Source::Postgres { .. } => None,
    }
}

/// The target's keys of `table`, then the source's, compared: the report and the source
/// keys the target lacks.
async fn compare(
    table: &TableSpec,
    key: &[String],
    target: &PostgresSettings,
    source: &ExtractOptions,
) -> Result<(SourceReconcile, Vec<SourceKey>), ReconcileError> {
    // Each target key, and whether the source has it.
    let mut in_target: HashMap<String, bool> = HashMap::new();
    let target_rows = load::target_keys(target, table, key, |k| {
        in_target.insert(k, false);
    })
    .await?;
    let mut missing: Vec<SourceKey> = Vec::new();
    let mut missing_texts: HashSet<String> = HashSet::new();
    let mut source_rows = 0;
    let scan = source_keys::scan_keys(source, table, |k| {
        source_rows += 1;
        match in_target.get_mut(&k.text) {
            Some(seen) => *seen = true,
            // A key repeated in the source is missing once.
            None if missing_texts.insert(k.text.clone()) => missing.push(k),
            None => {}
        }
    })
    .await?;
    let extra: Vec<&String> = in_target
        .iter()
        .filter(|(_, seen)| !**seen)
        .map(|(k, _)| k)
        .collect();
    let report = SourceReconcile {
        table: table.name.clone(),
        source: table.source.name().to_string(),
        source_keys: source_rows,
        target_keys: target_rows,
        missing: sample(missing.iter().map(|k| &k.text)),
        extra: sample(extra.into_iter()),
        unreadable: scan.unreadable,
        note: scan
            .missing
            .then(|| format!("`{}` is not in the source", table.source.name())),
        ..Default::default()
    };
    Ok((report, missing))
}

fn sample<'a>(keys: impl Iterator<Item = &'a String>) -> KeySample {
    let mut all: Vec<&String> = keys.collect();
    all.sort_unstable();
    KeySample {
        count: all.len() as u64,
        keys: all.into_iter().take(SHOWN_KEYS).cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_compared_through_its_table_keyed_by_the_document() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let config = Config::load(&dir).unwrap();
        let key = |t: &str| keyed_by_source(config.table(t).unwrap());
        assert_eq!(key("users"), Some(vec!["id".to_string()]));
        assert_eq!(key("users_targets"), None, "a link table");
        assert_eq!(key("users_logbook"), None, "a dedupe table");
        assert_eq!(key("matomo_log_visit"), Some(vec!["idvisit".to_string()]));
        let sampled = sample(["c", "a", "b"].map(String::from).iter());
        assert_eq!(sampled.count, 3);
        assert_eq!(sampled.keys, ["a", "b", "c"]);
    }
}
