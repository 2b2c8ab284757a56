//! Live MongoDB through the official driver: the window as a server-side filter, a projection
//! of the fields the config uses, and the same converter as the mongodump path. For
//! `etl reconcile`: every `_id` alone (a projection on `_id`), and documents by `_id`.

use bson::raw::RawBsonRef;
use bson::{doc, Bson, Document, RawDocumentBuf};
use chrono::{DateTime, Utc};
use indicatif::ProgressBar;
use mongodb::action::Action;

use super::fields::{FieldKind, StagedField, CREATION_DATE, ID_FIELD, UPDATE_DATE};
use super::{CollectionStats, ExtractError, ParallelConverter};
use crate::settings::MongoSettings;
use crate::staging::BackgroundWriter;

/// Documents per server round trip.
const CURSOR_BATCH: u32 = 5_000;
/// `_id`s per round trip when only keys are read.
const KEY_CURSOR_BATCH: u32 = 50_000;
/// `_id`s per `$in` query when documents are read by key.
const IDS_PER_QUERY: usize = 1_000;

pub(super) async fn extract_collection(
    settings: &MongoSettings,
    collection: &str,
    fields: &[StagedField],
    since: Option<DateTime<Utc>>,
    writer: &mut BackgroundWriter,
    bar: &ProgressBar,
) -> Result<CollectionStats, ExtractError> {
    let (client, coll) = open(settings, collection).await?;
    let mut converter = ParallelConverter::new(fields, since);
    let read = read_into(
        settings,
        &coll,
        window_filter(since),
        fields,
        &mut converter,
        writer,
        bar,
    )
    .await;
    drop(coll);
    close(client).await;
    read?;
    tokio::task::block_in_place(|| converter.finish(writer, bar))
}

/// The documents of these `_id`s (`etl reconcile`), by `$in` in chunks of [`IDS_PER_QUERY`].
pub(super) async fn extract_by_ids(
    settings: &MongoSettings,
    collection: &str,
    fields: &[StagedField],
    ids: &[Bson],
    writer: &mut BackgroundWriter,
    bar: &ProgressBar,
) -> Result<CollectionStats, ExtractError> {
    let (client, coll) = open(settings, collection).await?;
    let mut converter = ParallelConverter::new(fields, None);
    let mut read = Ok(());
    for chunk in ids.chunks(IDS_PER_QUERY) {
        let filter = doc! { ID_FIELD: { "$in": chunk.to_vec() } };
        read = read_into(settings, &coll, filter, fields, &mut converter, writer, bar).await;
        if read.is_err() {
            break;
        }
    }
    drop(coll);
    close(client).await;
    read?;
    tokio::task::block_in_place(|| converter.finish(writer, bar))
}

/// Every document's `_id` (a projection on `_id` alone: keys, no documents), handed to
/// `on_id` as the raw value.
pub(super) async fn scan_ids(
    settings: &MongoSettings,
    collection: &str,
    mut on_id: impl FnMut(Option<RawBsonRef<'_>>),
) -> Result<u64, ExtractError> {
    let (client, coll) = open(settings, collection).await?;
    let err = |message: String| error(settings, collection, message);
    let scan = async {
        let mut cursor = coll
            .find(doc! {})
            .projection(doc! { ID_FIELD: 1 })
            .batch_size(KEY_CURSOR_BATCH)
            .await
            .map_err(|e| err(e.kind.to_string()))?;
        let mut read: u64 = 0;
        while cursor
            .advance()
            .await
            .map_err(|e| err(cursor_failure(read, &e)))?
        {
            read = read.saturating_add(1);
            on_id(cursor.current().get(ID_FIELD).ok().flatten());
        }
        Ok(read)
    }
    .await;
    drop(coll);
    close(client).await;
    scan
}

fn error(settings: &MongoSettings, collection: &str, message: String) -> ExtractError {
    ExtractError::Mongo {
        collection: collection.to_string(),
        message: settings.scrub(&message),
    }
}

/// How long closing a client may wait for the cursors it still has to kill.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Shuts the client down once its cursors are killed (a cursor dropped on an error kills
/// itself in a background task, which panics in the driver when the client is already gone),
/// waiting at most [`CLOSE_WAIT`] for an unreachable server.
async fn close(client: mongodb::Client) {
    if tokio::time::timeout(CLOSE_WAIT, client.shutdown())
        .await
        .is_err()
    {
        tracing::debug!("the MongoDB client did not shut down in time");
    }
}

async fn open(
    settings: &MongoSettings,
    collection: &str,
) -> Result<(mongodb::Client, mongodb::Collection<RawDocumentBuf>), ExtractError> {
    let client = mongodb::Client::with_uri_str(settings.url())
        .await
        .map_err(|e| {
            error(
                settings,
                collection,
                format!("cannot connect to {}: {}", settings.redacted_url(), e.kind),
            )
        })?;
    let coll = client
        .database(&settings.database)
        .collection::<RawDocumentBuf>(collection);
    Ok((client, coll))
}

/// The documents `filter` matches, through `converter` into `writer`.
async fn read_into(
    settings: &MongoSettings,
    coll: &mongodb::Collection<RawDocumentBuf>,
    filter: Document,
    fields: &[StagedField],
    converter: &mut ParallelConverter<'_>,
    writer: &mut BackgroundWriter,
    bar: &ProgressBar,
) -> Result<(), ExtractError> {
    let err = |message: String| error(settings, coll.name(), message);
    let mut cursor = coll
        .find(filter)
        .optional(projection(fields), |find, p| find.projection(p))
        .batch_size(CURSOR_BATCH)
        .await
        .map_err(|e| err(e.kind.to_string()))?;
    let mut read: u64 = 0;
    while cursor
        .advance()
        .await
        .map_err(|e| err(cursor_failure(read, &e)))?
    {
        read = read.saturating_add(1);
        // Conversion is CPU work: off the runtime's async workers (the server already
        // filtered by the window; the converter checks it again, so both paths agree).
        tokio::task::block_in_place(|| converter.push(cursor.current(), writer, bar))?;
    }
    Ok(())
}

/// Why a cursor stopped, with how far it got: a connection lost mid-cursor (a server restart,
/// a failover, a proxy timeout) must read as that, not as the driver's bare I/O error.
/// The driver's `kind` alone: its full `Display` adds empty labels and server-response fields.
fn cursor_failure(read: u64, e: &mongodb::error::Error) -> String {
    let lost = matches!(
        *e.kind,
        mongodb::error::ErrorKind::Io(_) | mongodb::error::ErrorKind::ConnectionPoolCleared { .. }
    );
    let cause = if lost {
        ", the connection to the server was lost"
    } else {
        ""
    };
    format!("reading stopped after {read} documents{cause}: {}", e.kind)
}

/// `{$or: [{creation_date: {$gte: d}}, {update_date: {$gte: d}}]}`, or everything.
pub(super) fn window_filter(since: Option<DateTime<Utc>>) -> Document {
    match since {
        None => doc! {},
        Some(d) => {
            let d = bson::DateTime::from_millis(d.timestamp_millis());
            doc! { "$or": [ { CREATION_DATE: { "$gte": d } }, { UPDATE_DATE: { "$gte": d } } ] }
        }
    }
}

/// Only the top-level fields the config reads; none when the whole document is kept.
pub(super) fn projection(fields: &[StagedField]) -> Option<Document> {
    if fields.iter().any(|f| f.kind == FieldKind::Document) {
        return None;
    }
    let mut p = Document::new();
    for f in fields {
        let top = f.path.split('.').next().unwrap_or(&f.path);
        p.insert(top, 1);
    }
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_is_inclusive_on_both_dates() {
        let d = DateTime::parse_from_rfc3339("2024-03-15T10:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let f = window_filter(Some(d));
        assert_eq!(
            f.to_string(),
            r#"{ "$or": [{ "creation_date": { "$gte": DateTime("2024-03-15 10:30:00.0 +00:00:00") } }, { "update_date": { "$gte": DateTime("2024-03-15 10:30:00.0 +00:00:00") } }] }"#
        );
        assert!(window_filter(None).is_empty());
    }

    #[test]
    fn projection_keeps_top_level_fields_once() {
        let fields = [
            StagedField {
                path: "_id".into(),
                kind: FieldKind::Text,
            },
            StagedField {
                path: "address.city".into(),
                kind: FieldKind::Text,
            },
            StagedField {
                path: "address.zip".into(),
                kind: FieldKind::Text,
            },
        ];
        assert_eq!(projection(&fields), Some(doc! { "_id": 1, "address": 1 }));
        let whole = [
            fields[0].clone(),
            StagedField {
                path: crate::staging::fields::KEPT_DOCUMENT.into(),
                kind: FieldKind::Document,
            },
        ];
        assert_eq!(projection(&whole), None, "the whole document is read");
    }
}
