//! What `etl reconcile` reads of a source: every key it holds (cheap: keys only, no
//! documents), then a run holding only the documents or rows of the keys the target lacks.
//!
//! A MongoDB key is a document's `_id` as the staged `_id` column (and so the target's key
//! column) holds it; live, the server sends `_id` alone (a projection on `_id`), and the
//! documents of missing keys come back by `$in` queries; a dump has no index, so it is read
//! through twice (keys, then the missing documents). A Matomo key is the table's upsert key,
//! read with a `SELECT` of its columns, the rows then by `IN (...)`. The run is a normal run
//! folder, staged by the same converters, its entries marked `by_key` with no window and no
//! watermark: transform and load treat it like any run, and `--prune` refuses it.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Instant;

use bson::Bson;
use mysql_async::Value;

use super::{
    bson_arrow, fields, matomo, mongo_live, mongodump, ExtractError, ExtractOptions, ExtractReport,
    MongoInput, MongoRun, Selection, BATCH_ROWS,
};
use crate::config::{Config, Source, TableSpec};
use crate::progress::Progress;
use crate::staging::{self, Manifest, ManifestEntry, PartWriter, RunDir, SourceKind, Stage};

/// One key of a source: its text as the target's key column holds it, and what asks the
/// source for it again.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceKey {
    pub text: String,
    value: KeyValue,
}

#[derive(Debug, Clone, PartialEq)]
enum KeyValue {
    /// A live document's `_id`.
    Bson(Bson),
    /// A Matomo row's key columns.
    Matomo(Vec<Value>),
    /// A dump's document: found again by its text.
    Text,
}

/// What a key scan saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyScan {
    /// Documents or rows read.
    pub rows: u64,
    /// Of them, those whose key could not be read (no `_id`, malformed, a key type with no
    /// text form): they cannot be compared.
    pub unreadable: u64,
    /// The source has no such collection (dump).
    pub missing: bool,
}

/// Every key `table`'s source holds (its collection, or its Matomo table), handed to `on_key`.
pub async fn scan_keys(
    opts: &ExtractOptions,
    table: &TableSpec,
    mut on_key: impl FnMut(SourceKey),
) -> Result<KeyScan, ExtractError> {
    let mut scan = KeyScan::default();
    match (&table.source, &opts.mongo, &opts.matomo) {
        (Source::Mongo { collection }, Some(MongoInput::Live(settings)), _) => {
            scan.rows = mongo_live::scan_ids(settings, collection, |id| {
                match id.and_then(|id| Some((bson_arrow::id_text(id)?, Bson::try_from(id).ok()?))) {
                    Some((text, value)) => on_key(SourceKey {
                        text,
                        value: KeyValue::Bson(value),
                    }),
                    None => scan.unreadable += 1,
                }
            })
            .await?;
        }
        (Source::Mongo { collection }, Some(MongoInput::Dump(path)), _) => {
            let dump = mongodump::list_collections(path)?;
            let Some(found) = mongodump::find_collection(&dump, collection)? else {
                scan.missing = true;
                return Ok(scan);
            };
            scan.rows = mongodump::for_each_document(
                found,
                |doc| -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
                    let id = doc.get(fields::ID_FIELD).ok().flatten();
                    match id.and_then(bson_arrow::id_text) {
                        Some(text) => on_key(SourceKey {
                            text,
                            value: KeyValue::Text,
                        }),
                        None => scan.unreadable += 1,
                    }
                    Ok(())
                },
            )?;
        }
        (Source::Matomo { .. }, _, Some(settings)) => {
            let mut conn = matomo::connect(settings).await?;
            scan.rows = matomo::scan_keys(&mut conn, table, |values| match matomo_text(&values) {
                Some(text) => on_key(SourceKey {
                    text,
                    value: KeyValue::Matomo(values),
                }),
                None => scan.unreadable += 1,
            })
            .await?;
        }
        _ => {
            return Err(ExtractError::Internal(format!(
                "table `{}`: no source configured for `{}`",
                table.name,
                table.source.name()
            )))
        }
    }
    Ok(scan)
}

/// A Matomo key as PostgreSQL prints the target's key columns (`concat_ws(',', k::text...)`):
/// integers in decimal, text as is; `None` for a NULL or another type.
fn matomo_text(values: &[Value]) -> Option<String> {
    let parts = values
        .iter()
        .map(|v| match v {
            Value::Int(n) => Some(n.to_string()),
            Value::UInt(n) => Some(n.to_string()),
            Value::Bytes(b) => String::from_utf8(b.clone()).ok(),
            _ => None,
        })
        .collect::<Option<Vec<String>>>()?;
    Some(parts.join(","))
}

/// The `_id`s of live keys, for `$in`.
pub(super) fn bson_ids(keys: &[SourceKey]) -> Vec<Bson> {
    keys.iter()
        .filter_map(|k| match &k.value {
            KeyValue::Bson(b) => Some(b.clone()),
            _ => None,
        })
        .collect()
}

/// The texts of keys, to find documents again in a dump.
pub(super) fn texts(keys: &[SourceKey]) -> HashSet<&str> {
    keys.iter().map(|k| k.text.as_str()).collect()
}

/// The manifest's `window_reason` of a by-key extract.
pub(super) fn reason(keys: usize) -> String {
    format!("etl reconcile: {keys} key(s) missing in the target")
}

/// A new run holding only the documents or rows of these keys, per source (collection or
/// Matomo table name, as `scan_keys` was asked for it through `tables`).
pub async fn run_by_keys(
    config: &Config,
    staging_dir: &Path,
    opts: &ExtractOptions,
    keys: &BTreeMap<String, (&TableSpec, Vec<SourceKey>)>,
) -> Result<(RunDir, Vec<ExtractReport>), ExtractError> {
    let run = RunDir::create(staging_dir)?;
    let stage_dir = run.stage_dir(Stage::Extract);
    let progress = Progress::new(opts.quiet);
    let mut manifest = Manifest::new(Stage::Extract, &run.id, &config.fingerprint);
    tracing::info!(run = %run.id, "extract by key started");
    let dump = match &opts.mongo {
        Some(MongoInput::Dump(path)) => Some(mongodump::list_collections(path)?),
        _ => None,
    };
    let mut matomo_conn = None;
    for (name, (table, wanted)) in keys {
        let entry = match (&table.source, &opts.mongo, &opts.matomo) {
            (Source::Mongo { .. }, Some(input), _) => {
                let mongo = MongoRun {
                    config,
                    input,
                    stage_dir: &stage_dir,
                    progress: &progress,
                    keep_documents: opts.keep_documents,
                };
                mongo
                    .collection(name, &[], Selection::Keys(wanted), dump.as_deref())
                    .await?
            }
            (Source::Matomo { .. }, _, Some(settings)) => {
                if matomo_conn.is_none() {
                    matomo_conn = Some(matomo::connect(settings).await?);
                }
                let Some(conn) = matomo_conn.as_mut() else {
                    continue;
                };
                matomo_by_keys(conn, table, wanted, &stage_dir, &progress).await?
            }
            _ => continue,
        };
        manifest.entries.push(entry);
    }
    let reports = manifest.entries.iter().map(ExtractReport::of).collect();
    manifest.write(&stage_dir)?;
    Ok((run, reports))
}

/// The rows of these keys of one Matomo table into `matomo/<table>/`.
async fn matomo_by_keys(
    conn: &mut mysql_async::Conn,
    table: &TableSpec,
    keys: &[SourceKey],
    stage_dir: &Path,
    progress: &Progress,
) -> Result<ManifestEntry, ExtractError> {
    let rel = format!("matomo/{}", table.source.name());
    let bar = progress.rows(&table.name);
    let started = Instant::now();
    let dir = stage_dir.join(&rel);
    let values: Vec<Vec<Value>> = keys
        .iter()
        .filter_map(|k| match &k.value {
            KeyValue::Matomo(v) => Some(v.clone()),
            _ => None,
        })
        .collect();
    let mut writer: Option<PartWriter> = None;
    let stats = matomo::extract_by_keys(conn, table, &values, BATCH_ROWS, |batch| {
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
        None => (Vec::new(), Vec::new()),
    };
    Ok(ManifestEntry {
        name: table.source.name().to_string(),
        source: Some(SourceKind::Matomo),
        rows: stats.rows,
        files,
        schema,
        window_reason: reason(keys.len()),
        seconds: started.elapsed().as_secs_f64(),
        zero_dates_as_null: stats.zero_dates,
        invalid_dates: stats.invalid_dates,
        by_key: true,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matomo_keys_print_as_postgresql_prints_them() {
        assert_eq!(
            matomo_text(&[Value::UInt(18_446_744_073_709_551_615)]).as_deref(),
            Some("18446744073709551615")
        );
        assert_eq!(
            matomo_text(&[Value::Int(-3), Value::Bytes(b"a".to_vec())]).as_deref(),
            Some("-3,a")
        );
        assert_eq!(matomo_text(&[Value::NULL]), None);
    }
}
