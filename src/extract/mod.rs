//! Extract stage: MongoDB (live or mongodump), Matomo tables and source PostgreSQL tables
//! into staged Parquet.
//!
//! Per source collection or table: pick the window (target watermark, or the one recorded by
//! the last loaded run; `--since` and `GLOBAL_DATE_THRESHOLD` move it back; `--full` and
//! `force_reimport` take all), stream the matching documents or rows into Arrow batches, write
//! them as Parquet parts, and record everything in `extract/manifest.json`, written last.

/// The staged format lives in `staging`; extract writes it.
pub use crate::staging::fields;

pub mod bson_arrow;
mod extjson;
pub mod keys;
pub mod matomo;
pub mod matomo_api;
mod mongo_live;
pub mod mongodump;
pub(crate) mod postgres;
pub mod window;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bson::raw::{RawBsonRef, RawDocument};
use chrono::{DateTime, Utc};

use crate::config::{Config, Source, TableSpec};
use crate::progress::Progress;
use crate::settings::{MatomoApiSettings, MatomoSettings, MongoSettings, PostgresSettings};
use crate::staging::{
    self, BackgroundWriter, Manifest, ManifestEntry, PartWriter, RunDir, SourceKind, Stage,
    StagingError,
};
use bson_arrow::DocBatchBuilder;
use window::Window;

/// Documents per Arrow batch (and Parquet write).
const BATCH_ROWS: usize = 32 * 1024;

/// Where documents come from.
#[derive(Debug, Clone)]
pub enum MongoInput {
    Live(MongoSettings),
    Dump(PathBuf),
}

#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// MongoDB source, if MongoDB tables are extracted.
    pub mongo: Option<MongoInput>,
    /// Matomo source, if Matomo tables are extracted.
    pub matomo: Option<MatomoSettings>,
    /// Matomo's HTTP API, if its tables are extracted.
    pub matomo_api: Option<MatomoApiSettings>,
    /// The source PostgreSQL (`SOURCE_*`), if its tables are extracted.
    pub postgres: Option<PostgresSettings>,
    /// The target, when configured: windows start at its watermarks.
    pub target: Option<PostgresSettings>,
    pub tables: Option<Vec<String>>,
    pub full: bool,
    /// `--since`.
    pub since: Option<chrono::NaiveDate>,
    /// `GLOBAL_DATE_THRESHOLD`, already validated.
    pub threshold: Option<chrono::NaiveDate>,
    pub quiet: bool,
    /// `--keep-documents`: stage every MongoDB document whole (relaxed Extended JSON in a
    /// column of its own), as `keep_source` does for its tables' collections.
    pub keep_documents: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error(transparent)]
    Staging(#[from] StagingError),
    #[error(transparent)]
    Dump(#[from] mongodump::DumpError),
    #[error(transparent)]
    Matomo(#[from] matomo::MatomoError),
    #[error(transparent)]
    MatomoApi(#[from] matomo_api::MatomoApiError),
    #[error(transparent)]
    Postgres(#[from] postgres::PgSourceError),
    #[error("collection `{collection}`: {message}")]
    Mongo { collection: String, message: String },
    #[error("{0}")]
    Convert(String),
    #[error(transparent)]
    UnknownTables(#[from] crate::config::UnknownTables),
    #[error("{0}")]
    Internal(String),
}

/// What was extracted from one collection or table.
#[derive(Debug, Clone)]
pub struct ExtractReport {
    pub name: String,
    pub source: String,
    pub rows: u64,
    pub window: String,
    pub seconds: f64,
    /// The source has no such collection or table.
    pub missing: bool,
    /// Matomo API: visits whose actions Matomo truncated, and the actions they lost.
    pub truncated_visits: u64,
    pub truncated_actions: u64,
}

impl ExtractReport {
    fn of(entry: &ManifestEntry) -> ExtractReport {
        ExtractReport {
            name: entry.name.clone(),
            source: entry.source.map(SourceKind::as_str).unwrap_or("").into(),
            rows: entry.rows,
            window: entry
                .window_since
                .as_ref()
                .map_or_else(|| "all".into(), ToString::to_string),
            seconds: entry.seconds,
            missing: entry.missing,
            truncated_visits: entry.truncated_visits,
            truncated_actions: entry.truncated_actions,
        }
    }
}

/// Extracts into a new run folder; returns it with one report per collection or table.
pub async fn run(
    config: &Config,
    staging_dir: &Path,
    opts: &ExtractOptions,
) -> Result<(RunDir, Vec<ExtractReport>), ExtractError> {
    let tables = config.select(opts.tables.as_deref())?;
    let windows = window::windows(staging_dir, &tables, opts).await;
    let run = RunDir::create(staging_dir)?;
    let stage_dir = run.stage_dir(Stage::Extract);
    let progress = Progress::new(opts.quiet);
    let mut manifest = Manifest::new(Stage::Extract, &run.id, &config.fingerprint);
    tracing::info!(run = %run.id, "extract started");
    if let Some(input) = &opts.mongo {
        let mongo = MongoRun {
            config,
            input,
            stage_dir: &stage_dir,
            progress: &progress,
            keep_documents: opts.keep_documents,
        };
        manifest
            .entries
            .extend(mongo.extract(&tables, &windows).await?);
    }
    if let Some(settings) = &opts.matomo {
        let matomo_tables: Vec<&TableSpec> = tables
            .iter()
            .copied()
            .filter(|t| matches!(t.source, Source::Matomo { .. }))
            .collect();
        if !matomo_tables.is_empty() {
            let mut conn = matomo::connect(settings).await?;
            for table in matomo_tables {
                let entry = extract_matomo_table(
                    &mut conn,
                    table,
                    &windows[&table.name],
                    &stage_dir,
                    &progress,
                )
                .await?;
                manifest.entries.push(entry);
            }
        }
    }
    if let Some(settings) = &opts.matomo_api {
        let api_tables: Vec<&TableSpec> = tables
            .iter()
            .copied()
            .filter(|t| matches!(t.source, Source::MatomoApi { .. }))
            .collect();
        if !api_tables.is_empty() {
            let entry = extract_api(
                staging_dir,
                settings,
                &api_tables,
                opts,
                &stage_dir,
                &progress,
            )
            .await?;
            manifest.entries.push(entry);
        }
    }
    if let Some(settings) = &opts.postgres {
        let entries = extract_postgres(settings, &tables, &windows, &stage_dir, &progress).await?;
        manifest.entries.extend(entries);
    }
    let reports = manifest.entries.iter().map(ExtractReport::of).collect();
    manifest.write(&stage_dir)?;
    Ok((run, reports))
}

/// Every source PostgreSQL table the selected tables read, each once into
/// `postgres/<table>/`, with the earliest window of the tables reading it.
async fn extract_postgres(
    settings: &PostgresSettings,
    tables: &[&TableSpec],
    windows: &std::collections::HashMap<String, Window>,
    stage_dir: &Path,
    progress: &Progress,
) -> Result<Vec<ManifestEntry>, ExtractError> {
    // A table fed by several sources reads each of them with its own columns.
    let specs: Vec<TableSpec> = tables
        .iter()
        .filter(|t| matches!(t.source, Source::Postgres { .. }))
        .flat_map(|t| t.part_specs())
        .collect();
    let mut sources: BTreeMap<&str, Vec<&TableSpec>> = BTreeMap::new();
    for t in &specs {
        sources.entry(t.source.name()).or_default().push(t);
    }
    if sources.is_empty() {
        return Ok(Vec::new());
    }
    let client = postgres::connect(settings).await?;
    let mut entries = Vec::new();
    for (source, readers) in sources {
        let window = Window::earliest(readers.iter().map(|t| &windows[&t.name]));
        let plan = postgres::ReadPlan::new(source, &readers)?;
        let rel = format!("{}/{source}", SourceKind::Postgres.as_str());
        let dir = stage_dir.join(&rel);
        let bar = progress.rows(source);
        let started = Instant::now();
        let mut writer: Option<(BackgroundWriter, arrow::datatypes::SchemaRef)> = None;
        let stats = postgres::extract_table(
            &client,
            &plan,
            readers.len(),
            window.since.as_ref(),
            BATCH_ROWS,
            |batch| {
                bar.inc(batch.num_rows() as u64);
                if writer.is_none() {
                    let part =
                        PartWriter::new(&dir, &rel, batch.schema()).map_err(|e| e.to_string())?;
                    writer = Some((BackgroundWriter::spawn(part), batch.schema()));
                }
                match writer.as_mut() {
                    Some((w, _)) => w.write(&batch).map_err(|e| e.to_string()),
                    None => Ok(()),
                }
            },
        )
        .await?;
        bar.finish();
        let (files, schema) = match writer {
            Some((w, schema)) => (w.finish()?, staging::schema_pairs(&schema)),
            None => (Vec::new(), Vec::new()),
        };
        if stats.unfit > 0 {
            tracing::warn!(
                table = source,
                values = stats.unfit,
                "values Arrow cannot hold (infinity, BC dates, NaN) staged as text in `__raw` \
                 columns: transform rejects their rows"
            );
        }
        tracing::info!(table = source, rows = stats.rows, window = %window, "extracted");
        entries.push(ManifestEntry {
            name: source.to_string(),
            source: Some(SourceKind::Postgres),
            rows: stats.rows,
            files,
            schema,
            window_since: window.since.clone().filter(|_| stats.windowed),
            window_reason: if stats.windowed || window.since.is_none() {
                window.reason.clone()
            } else {
                "all: the tables reading it have different watermark columns".into()
            },
            watermarks: stats.watermarks.into_iter().collect(),
            seconds: started.elapsed().as_secs_f64(),
            ..Default::default()
        });
    }
    Ok(entries)
}

/// One MongoDB extract: every collection the selected tables read, from one input.
struct MongoRun<'a> {
    config: &'a Config,
    input: &'a MongoInput,
    stage_dir: &'a Path,
    progress: &'a Progress,
    keep_documents: bool,
}

impl MongoRun<'_> {
    /// One entry per collection, with the earliest window of its tables.
    async fn extract(
        &self,
        tables: &[&TableSpec],
        windows: &std::collections::HashMap<String, Window>,
    ) -> Result<Vec<ManifestEntry>, ExtractError> {
        let mut collections: BTreeMap<&str, Vec<&TableSpec>> = BTreeMap::new();
        for t in tables
            .iter()
            .filter(|t| matches!(t.source, Source::Mongo { .. }))
        {
            collections.entry(t.source.name()).or_default().push(t);
        }
        let dump = match self.input {
            MongoInput::Dump(path) => Some(mongodump::list_collections(path)?),
            MongoInput::Live(_) => None,
        };
        let mut entries = Vec::new();
        for (collection, tables) in collections {
            let window = Window::earliest(tables.iter().map(|t| &windows[&t.name]));
            let entry = self
                .collection(
                    collection,
                    &tables,
                    Selection::Window(&window),
                    dump.as_deref(),
                )
                .await?;
            entries.push(entry);
        }
        Ok(entries)
    }

    async fn collection(
        &self,
        collection: &str,
        tables: &[&TableSpec],
        selection: Selection<'_>,
        dump: Option<&[mongodump::DumpCollection]>,
    ) -> Result<ManifestEntry, ExtractError> {
        let fields = fields::fields_for_collection(self.config, collection, self.keep_documents);
        let source = match self.input {
            MongoInput::Dump(_) => SourceKind::Dump,
            MongoInput::Live(_) => SourceKind::Mongo,
        };
        let rel = format!("{}/{collection}", source.as_str());
        let schema = Arc::new(fields::staged_schema(&fields));
        let mut writer = BackgroundWriter::spawn(PartWriter::new(
            &self.stage_dir.join(&rel),
            &rel,
            schema.clone(),
        )?);
        let bar = self.progress.rows(collection);
        let started = Instant::now();
        let since = match selection {
            Selection::Window(window) => window.since_utc(),
            Selection::Keys(_) => None,
        };
        let stats = match (self.input, dump, selection) {
            (MongoInput::Live(settings), _, Selection::Window(_)) => {
                mongo_live::extract_collection(
                    settings,
                    collection,
                    &fields,
                    since,
                    &mut writer,
                    &bar,
                )
                .await?
            }
            (MongoInput::Live(settings), _, Selection::Keys(keys)) => {
                let ids = keys::bson_ids(keys);
                mongo_live::extract_by_ids(settings, collection, &fields, &ids, &mut writer, &bar)
                    .await?
            }
            (MongoInput::Dump(_), Some(dump), _) => {
                let wanted = match selection {
                    Selection::Keys(keys) => Some(keys::texts(keys)),
                    Selection::Window(_) => None,
                };
                let read = DumpRead {
                    fields: &fields,
                    since,
                    wanted: wanted.as_ref(),
                };
                extract_dump_collection(dump, collection, &read, &mut writer, &bar)?
            }
            (MongoInput::Dump(path), None, _) => {
                return Err(ExtractError::Internal(format!(
                    "the dump {} was not listed before its collections were read",
                    path.display()
                )))
            }
        };
        bar.finish();
        let files = writer.finish()?;
        if stats.missing {
            tracing::warn!(
                collection,
                "not in the dump: its tables get no rows from this run"
            );
        }
        let (window_since, window_reason) = match selection {
            Selection::Window(window) => {
                tracing::info!(collection, rows = stats.rows, window = %window, "extracted");
                (window.since.clone(), window.reason.clone())
            }
            Selection::Keys(keys) => {
                tracing::info!(
                    collection,
                    rows = stats.rows,
                    keys = keys.len(),
                    "extracted by key"
                );
                (None, keys::reason(keys.len()))
            }
        };
        // A run of some documents by key says nothing of how far the source was read.
        let watermark = stats
            .max_timestamp
            .filter(|_| matches!(selection, Selection::Window(_)))
            .map(|t| staging::WatermarkValue::Timestamp(t.naive_utc()));
        Ok(ManifestEntry {
            name: collection.to_string(),
            source: Some(source),
            rows: stats.rows,
            files,
            schema: staging::schema_pairs(&schema),
            window_since,
            window_reason,
            watermarks: watermark
                .map(|w| tables.iter().map(|t| (t.name.clone(), w.clone())).collect())
                .unwrap_or_default(),
            seconds: started.elapsed().as_secs_f64(),
            scanned: Some(stats.scanned),
            missing: stats.missing,
            by_key: matches!(selection, Selection::Keys(_)),
            ..Default::default()
        })
    }
}

/// The Matomo API's visits, for every API table, into `matomo-api/<method>/`. The days read
/// follow the API's own rules (`matomo_api::StartRule`) from each table's last loaded
/// watermark, read without `--since` and the threshold, which the rules apply themselves.
async fn extract_api(
    staging_dir: &Path,
    settings: &MatomoApiSettings,
    tables: &[&TableSpec],
    opts: &ExtractOptions,
    stage_dir: &Path,
    progress: &Progress,
) -> Result<ManifestEntry, ExtractError> {
    use crate::config::{ColumnSource, Watermark};
    let method = tables
        .first()
        .map_or(staging::matomo_api::VISITS_METHOD, |t| t.source.name());
    let rel = format!("{}/{method}", SourceKind::MatomoApi.as_str());
    let fields = staging::matomo_api::fields_for_tables(tables.iter().copied());
    let plain = ExtractOptions {
        since: None,
        threshold: None,
        full: false,
        ..opts.clone()
    };
    let windows = window::windows(staging_dir, tables, &plain).await;
    // The earliest of the tables' watermarks; none when a table has none yet (a first run).
    let watermark = tables
        .iter()
        .map(|t| {
            windows
                .get(&t.name)
                .and_then(|w| w.since.as_ref())
                .and_then(staging::WatermarkValue::timestamp)
        })
        .collect::<Option<Vec<_>>>()
        .and_then(|all| all.into_iter().min());
    let start = matomo_api::StartRule {
        since: opts.since,
        force: opts.full || settings.force_start_date || tables.iter().any(|t| t.force_reimport),
        watermark,
        lag_days: tables.iter().map(|t| t.lag_days).max().unwrap_or(2),
        threshold: opts.threshold,
        start_date: settings.start_date,
        initial_offset: settings.initial_offset,
    };
    let watermarks = tables
        .iter()
        .filter_map(|t| {
            let Watermark::Column(column) = &t.watermark else {
                return None;
            };
            let (path, in_actions) = match &t.column(column)?.source {
                ColumnSource::ElementField(key) => (key.clone(), true),
                ColumnSource::Field(path) => (path.clone(), false),
                _ => return None,
            };
            Some(matomo_api::WatermarkPath {
                table: t.name.clone(),
                path,
                in_actions,
            })
        })
        .collect();
    let extracted = matomo_api::ApiExtract {
        settings,
        fields: &fields,
        start,
        watermarks,
        dir: &stage_dir.join(&rel),
        rel,
        bar: progress.rows("matomo-api visits"),
    }
    .run()
    .await?;
    let reason = extracted
        .sites
        .iter()
        .map(|s| format!("site {}: {}", s.site, s.reason))
        .collect::<Vec<_>>()
        .join("; ");
    tracing::info!(method, visits = extracted.visits, "extracted");
    Ok(ManifestEntry {
        name: method.to_string(),
        source: Some(SourceKind::MatomoApi),
        rows: extracted.visits,
        files: extracted.files,
        schema: extracted.schema,
        window_since: extracted.since.map(staging::WatermarkValue::Timestamp),
        window_reason: reason,
        watermarks: extracted.watermarks,
        seconds: extracted.seconds,
        truncated_visits: extracted.sites.iter().map(|s| s.truncated_visits).sum(),
        truncated_actions: extracted.sites.iter().map(|s| s.truncated_actions).sum(),
        api_sites: extracted.sites,
        ..Default::default()
    })
}

/// One Matomo table into `matomo/<table>/`.
async fn extract_matomo_table(
    conn: &mut mysql_async::Conn,
    table: &TableSpec,
    window: &Window,
    stage_dir: &Path,
    progress: &Progress,
) -> Result<ManifestEntry, ExtractError> {
    let rel = format!("matomo/{}", table.source.name());
    let bar = progress.rows(&table.name);
    let started = Instant::now();
    let dir = stage_dir.join(&rel);
    let mut writer: Option<PartWriter> = None;
    let stats = matomo::extract_table(conn, table, window.matomo(), BATCH_ROWS, |batch| {
        bar.inc(batch.num_rows() as u64);
        if writer.is_none() {
            writer = Some(PartWriter::new(&dir, &rel, batch.schema())?);
        }
        writer.as_mut().map(|w| w.write(&batch)).transpose()?;
        Ok(())
    })
    .await?;
    bar.finish();
    let (files, schema) = match writer {
        Some(w) => {
            let schema = w.schema().clone();
            (w.finish()?, staging::schema_pairs(&schema))
        }
        // No rows in the window: no file (transform reads zero rows).
        None => (Vec::new(), Vec::new()),
    };
    tracing::info!(table = %table.name, rows = stats.rows, window = %window, "extracted");
    Ok(ManifestEntry {
        name: table.source.name().to_string(),
        source: Some(SourceKind::Matomo),
        rows: stats.rows,
        files,
        schema,
        window_since: window.since.clone(),
        window_reason: window.reason.clone(),
        watermarks: stats
            .max_watermark
            .map(|max| [(table.name.clone(), max)].into())
            .unwrap_or_default(),
        seconds: started.elapsed().as_secs_f64(),
        zero_dates_as_null: stats.zero_dates,
        invalid_dates: stats.invalid_dates,
        ..Default::default()
    })
}

/// What reading one collection gave.
#[derive(Debug, Default)]
pub struct CollectionStats {
    /// Documents in the window (staged).
    pub rows: u64,
    /// Documents read.
    pub scanned: u64,
    /// Highest `GREATEST(creation_date, update_date)` among staged documents.
    pub max_timestamp: Option<DateTime<Utc>>,
    /// The dump has no such collection.
    pub missing: bool,
}

/// Which documents of a collection an extract takes.
#[derive(Clone, Copy)]
enum Selection<'a> {
    /// Those in the window.
    Window(&'a Window),
    /// Those of these keys (`etl reconcile`).
    Keys(&'a [keys::SourceKey]),
}

/// How one dump collection is read.
struct DumpRead<'a> {
    fields: &'a [fields::StagedField],
    since: Option<DateTime<Utc>>,
    /// Only the documents whose `_id` (as staged) is one of these.
    wanted: Option<&'a std::collections::HashSet<&'a str>>,
}

/// Streams one dump collection through the converter into `writer`.
fn extract_dump_collection(
    dump: &[mongodump::DumpCollection],
    collection: &str,
    read: &DumpRead<'_>,
    writer: &mut BackgroundWriter,
    bar: &indicatif::ProgressBar,
) -> Result<CollectionStats, ExtractError> {
    let Some(found) = mongodump::find_collection(dump, collection)? else {
        return Ok(CollectionStats {
            missing: true,
            ..Default::default()
        });
    };
    let mut converter = ParallelConverter::new(read.fields, read.since);
    mongodump::for_each_document(
        found,
        |doc| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            if let Some(wanted) = read.wanted {
                let id = doc.get(fields::ID_FIELD).ok().flatten();
                if !id
                    .and_then(bson_arrow::id_text)
                    .is_some_and(|id| wanted.contains(id.as_str()))
                {
                    return Ok(());
                }
            }
            converter.push(doc, writer, bar).map_err(Box::new)?;
            Ok(())
        },
    )?;
    converter.finish(writer, bar)
}

/// Documents gathered into chunks that rayon converts in parallel, written in input order:
/// reading is cheap, BSON-to-Arrow conversion is the work. Used by both MongoDB paths.
pub struct ParallelConverter<'a> {
    fields: &'a [fields::StagedField],
    since: Option<DateTime<Utc>>,
    pending: Vec<bson::RawDocumentBuf>,
    /// Bytes of the pending documents: big documents are converted before many gather.
    pending_bytes: usize,
    stats: CollectionStats,
}

impl<'a> ParallelConverter<'a> {
    pub fn new(
        fields: &'a [fields::StagedField],
        since: Option<DateTime<Utc>>,
    ) -> ParallelConverter<'a> {
        ParallelConverter {
            fields,
            since,
            pending: Vec::new(),
            pending_bytes: 0,
            stats: CollectionStats::default(),
        }
    }

    /// Takes one document; converts and writes once enough are gathered for every thread.
    pub fn push(
        &mut self,
        doc: &RawDocument,
        writer: &mut BackgroundWriter,
        bar: &indicatif::ProgressBar,
    ) -> Result<(), ExtractError> {
        self.stats.scanned += 1;
        self.pending_bytes += doc.as_bytes().len();
        self.pending.push(doc.to_raw_document_buf());
        let threads = rayon::current_num_threads().max(1);
        if self.pending.len() >= BATCH_ROWS * threads
            || self.pending_bytes >= bson_arrow::MAX_BATCH_BYTES * threads
        {
            self.flush(writer, bar)?;
        }
        Ok(())
    }

    pub fn finish(
        mut self,
        writer: &mut BackgroundWriter,
        bar: &indicatif::ProgressBar,
    ) -> Result<CollectionStats, ExtractError> {
        self.flush(writer, bar)?;
        Ok(self.stats)
    }

    fn flush(
        &mut self,
        writer: &mut BackgroundWriter,
        bar: &indicatif::ProgressBar,
    ) -> Result<(), ExtractError> {
        use rayon::prelude::*;
        let docs = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        let (fields, since) = (self.fields, self.since);
        let chunks: Vec<Result<ConvertedChunk, bson_arrow::ConvertError>> = docs
            .par_chunks(BATCH_ROWS)
            .map(|chunk| convert_chunk(fields, since, chunk))
            .collect();
        for chunk in chunks {
            let chunk = chunk.map_err(|e| ExtractError::Convert(e.to_string()))?;
            self.stats.rows += chunk.rows;
            self.stats.max_timestamp = self.stats.max_timestamp.max(chunk.max_timestamp);
            bar.inc(chunk.rows);
            for batch in &chunk.batches {
                writer.write(batch)?;
            }
        }
        Ok(())
    }
}

struct ConvertedChunk {
    /// Several when the documents' text passes a batch's byte cap.
    batches: Vec<arrow::record_batch::RecordBatch>,
    rows: u64,
    max_timestamp: Option<DateTime<Utc>>,
}

/// The documents of `docs` inside the window, as staged batches (a new batch each time one
/// reaches its byte cap, so no Arrow array passes its 2 GiB offsets).
fn convert_chunk(
    fields: &[fields::StagedField],
    since: Option<DateTime<Utc>>,
    docs: &[bson::RawDocumentBuf],
) -> Result<ConvertedChunk, bson_arrow::ConvertError> {
    let mut builder = DocBatchBuilder::new(fields);
    let mut batches = Vec::new();
    let mut rows = 0;
    let mut max_timestamp = None;
    for doc in docs.iter().filter(|d| bson_arrow::in_window(d, since)) {
        if builder.is_full() {
            rows += builder.len() as u64;
            batches.push(builder.finish());
        }
        builder.push(doc)?;
        max_timestamp = max_timestamp.max(document_timestamp(doc));
    }
    rows += builder.len() as u64;
    batches.push(builder.finish());
    Ok(ConvertedChunk {
        batches,
        rows,
        max_timestamp,
    })
}

/// `GREATEST(creation_date, update_date)` of a document (what the target's watermark is).
pub fn document_timestamp(doc: &RawDocument) -> Option<DateTime<Utc>> {
    [fields::CREATION_DATE, fields::UPDATE_DATE]
        .iter()
        .filter_map(|k| match doc.get(k) {
            Ok(Some(RawBsonRef::DateTime(d))) => {
                DateTime::<Utc>::from_timestamp_millis(d.timestamp_millis())
            }
            _ => None,
        })
        .max()
}
