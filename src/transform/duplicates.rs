//! The same `_id` twice in one collection (a mongodump of a live server without `--oplog` can
//! hold a document twice): one copy is kept, the latest by `update_date` (on a tie, or
//! without dates, the later one in input order), and the others are counted as duplicates.
//!
//! Found in two passes over the staged `_id` column, before any table of the collection is
//! transformed, so that no table holds its rows waiting for a later file. The first pass
//! hashes every `_id` to 64 bits, sorts the hashes and looks for equal neighbours: 8 bytes per
//! document, freed before the tables are transformed, and the common case (no duplicate)
//! ends there. Only when hashes repeat does a second pass read `_id` and `update_date` again
//! and keep, for the ids behind those hashes, which copy wins (a 64-bit collision between
//! different ids is told apart there, exactly). Staged ids are text, an ObjectId as its hex:
//! an ObjectId and a string with the same hex are the same key, as they are once loaded.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, BooleanArray, StringArray};
use arrow::datatypes::TimestampMillisecondType;
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use rayon::prelude::*;

use crate::staging::fields::{DOCUMENT_ERROR, ID_FIELD, UPDATE_DATE};
use crate::staging::StagingError;

/// The rule, as the manifest and the summary state it.
pub(super) const RULE: &str =
    "duplicate `_id`: the copy with the latest update_date is kept (on a tie, the later one)";

/// One row group of one staged file, and the input-order number of its first row.
#[derive(Debug, Clone)]
pub(super) struct Piece {
    pub path: PathBuf,
    pub row_group: usize,
    pub first_row: u64,
}

/// Which copies of repeated `_id`s lose, for one collection.
#[derive(Debug, Default)]
pub(super) struct Duplicates {
    /// Hashes of the repeated ids (a quick "not repeated" for every other row).
    hashes: HashSet<u64>,
    /// Repeated id -> input-order number of the copy kept.
    kept: HashMap<String, u64>,
}

/// A fixed hasher: the same id hashes the same in every pass and thread.
fn hash_id(id: &str) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(id)
}

impl Duplicates {
    /// Scans the `_id`s of a collection's pieces (in input order).
    pub(super) fn find(pieces: &[Piece]) -> Result<Duplicates, StagingError> {
        let mut hashes: Vec<u64> = pieces
            .par_iter()
            .map(|p| {
                let mut out = Vec::new();
                for batch in read(p, &[ID_FIELD, DOCUMENT_ERROR])? {
                    let ids = ids(&batch, &p.path)?;
                    let refused = refused(&batch);
                    out.extend(
                        (0..batch.num_rows())
                            .filter(|i| {
                                ids.is_valid(*i) && !refused.is_some_and(|r| r.is_valid(*i))
                            })
                            .map(|i| hash_id(ids.value(i))),
                    );
                }
                Ok(out)
            })
            .collect::<Result<Vec<Vec<u64>>, StagingError>>()?
            .concat();
        hashes.par_sort_unstable();
        let repeated: HashSet<u64> = hashes
            .windows(2)
            .filter(|w| w[0] == w[1])
            .map(|w| w[0])
            .collect();
        drop(hashes);
        if repeated.is_empty() {
            return Ok(Duplicates::default());
        }
        Duplicates::resolve(pieces, repeated)
    }

    /// Second pass, for the repeated hashes only: the copy each repeated id keeps.
    fn resolve(pieces: &[Piece], repeated: HashSet<u64>) -> Result<Duplicates, StagingError> {
        // id -> (copies, (update_date, input order) of the best copy so far).
        type Best = HashMap<String, (u64, (Option<i64>, u64))>;
        let found: Vec<Best> = pieces
            .par_iter()
            .map(|p| {
                let mut best = Best::new();
                let mut row = p.first_row;
                for batch in read(p, &[ID_FIELD, UPDATE_DATE, DOCUMENT_ERROR])? {
                    let ids = ids(&batch, &p.path)?;
                    let refused = refused(&batch);
                    let updated = batch
                        .column_by_name(UPDATE_DATE)
                        .and_then(|c| c.as_primitive_opt::<TimestampMillisecondType>());
                    for i in 0..batch.num_rows() {
                        let this = row;
                        row += 1;
                        if ids.is_null(i)
                            || refused.is_some_and(|r| r.is_valid(i))
                            || !repeated.contains(&hash_id(ids.value(i)))
                        {
                            continue;
                        }
                        let key = (updated.filter(|u| u.is_valid(i)).map(|u| u.value(i)), this);
                        merge(&mut best, ids.value(i), 1, key);
                    }
                }
                Ok(best)
            })
            .collect::<Result<_, StagingError>>()?;
        let mut all = Best::new();
        for best in found {
            for (id, (copies, key)) in best {
                merge(&mut all, &id, copies, key);
            }
        }
        let kept: HashMap<String, u64> = all
            .into_iter()
            .filter(|(_, (copies, _))| *copies > 1)
            .map(|(id, (_, (_, row)))| (id, row))
            .collect();
        let hashes = kept.keys().map(|id| hash_id(id)).collect();
        Ok(Duplicates { hashes, kept })
    }

    pub(super) fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    /// How many distinct ids are repeated.
    pub(super) fn repeated_ids(&self) -> usize {
        self.kept.len()
    }

    /// The rows of a staged batch (input-order numbers from `first_row`) that are losing
    /// copies, or `None` when there is none in this batch. A document extract refused is
    /// never a copy: it is rejected with its reason.
    pub(super) fn losers(&self, batch: &RecordBatch, first_row: u64) -> Option<BooleanArray> {
        if self.is_empty() {
            return None;
        }
        let ids = batch
            .column_by_name(ID_FIELD)
            .and_then(|c| c.as_string_opt::<i32>())?;
        let refused = refused(batch);
        let mut any = false;
        let mask: Vec<bool> = (0..ids.len())
            .map(|i| {
                let lost = ids.is_valid(i)
                    && !refused.is_some_and(|r| r.is_valid(i))
                    && self.hashes.contains(&hash_id(ids.value(i)))
                    && self
                        .kept
                        .get(ids.value(i))
                        .is_some_and(|kept| *kept != first_row + i as u64);
                any |= lost;
                lost
            })
            .collect();
        any.then(|| BooleanArray::from(mask))
    }
}

/// Adds `copies` copies of `id`, the best of them at `key`; the later (update_date, input
/// order) wins.
fn merge(
    best: &mut HashMap<String, (u64, (Option<i64>, u64))>,
    id: &str,
    copies: u64,
    key: (Option<i64>, u64),
) {
    match best.get_mut(id) {
        Some((n, current)) => {
            *n += copies;
            if key > *current {
                *current = key;
            }
        }
        None => {
            best.insert(id.to_string(), (copies, key));
        }
    }
}

/// The document error column, when the batch has one (runs staged before it have none).
fn refused(batch: &RecordBatch) -> Option<&StringArray> {
    batch
        .column_by_name(DOCUMENT_ERROR)
        .and_then(|c| c.as_string_opt::<i32>())
}

/// The staged `_id` column of a batch.
fn ids<'a>(batch: &'a RecordBatch, path: &Path) -> Result<&'a StringArray, StagingError> {
    batch
        .column_by_name(ID_FIELD)
        .and_then(|c| c.as_string_opt::<i32>())
        .ok_or_else(|| StagingError::Invalid {
            path: path.to_path_buf(),
            message: format!("no text `{ID_FIELD}` column"),
        })
}

/// The named top-level columns of one row group.
fn read(piece: &Piece, columns: &[&str]) -> Result<Vec<RecordBatch>, StagingError> {
    let path = &piece.path;
    let to_err = |source| StagingError::Parquet {
        path: path.clone(),
        source,
    };
    let file = std::fs::File::open(path).map_err(StagingError::io(path))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(to_err)?;
    let roots: Vec<usize> = builder
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| columns.contains(&f.name().as_str()))
        .map(|(i, _)| i)
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    let reader = builder
        .with_projection(mask)
        .with_row_groups(vec![piece.row_group])
        .build()
        .map_err(to_err)?;
    reader
        .map(|b| {
            b.map_err(|e| StagingError::Invalid {
                path: path.clone(),
                message: e.to_string(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::staging::PartWriter;
    use arrow::array::{ArrayRef, TimestampMillisecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use std::sync::Arc;

    /// Staged files of (id, update_date) rows, one row group each; their pieces in order.
    fn staged(dir: &Path, files: &[Vec<(Option<&str>, Option<i64>)>]) -> Vec<Piece> {
        let schema = Arc::new(Schema::new(vec![
            Field::new(ID_FIELD, DataType::Utf8, true),
            Field::new(
                UPDATE_DATE,
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                true,
            ),
        ]));
        let mut pieces = Vec::new();
        let mut first_row = 0;
        for (n, rows) in files.iter().enumerate() {
            let ids: ArrayRef = Arc::new(StringArray::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            ));
            let dates: ArrayRef = Arc::new(
                TimestampMillisecondArray::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            );
            let batch = RecordBatch::try_new(schema.clone(), vec![ids, dates]).unwrap();
            let rel = format!("f{n}");
            let mut writer = PartWriter::new(&dir.join(&rel), &rel, schema.clone()).unwrap();
            writer.write(&batch).unwrap();
            for f in writer.finish().unwrap() {
                pieces.push(Piece {
                    path: dir.join(&f.path),
                    row_group: 0,
                    first_row,
                });
                first_row += f.rows;
            }
        }
        pieces
    }

    fn id_batch(ids: &[Option<&str>], refused: &[Option<&str>]) -> RecordBatch {
        RecordBatch::try_from_iter([
            (
                ID_FIELD,
                Arc::new(StringArray::from(ids.to_vec())) as ArrayRef,
            ),
            (
                DOCUMENT_ERROR,
                Arc::new(StringArray::from(refused.to_vec())) as ArrayRef,
            ),
        ])
        .unwrap()
    }

    fn losers(d: &Duplicates, ids: &[Option<&str>], first_row: u64) -> Vec<bool> {
        d.losers(&id_batch(ids, &vec![None; ids.len()]), first_row)
            .map(|m| m.iter().map(|b| b.unwrap_or(false)).collect())
            .unwrap_or_else(|| vec![false; ids.len()])
    }

    #[test]
    fn no_duplicates_leaves_nothing_to_check() {
        let dir = tempfile::tempdir().unwrap();
        let pieces = staged(
            dir.path(),
            &[
                vec![(Some("a"), Some(1)), (None, None)],
                vec![(Some("b"), None), (None, None)],
            ],
        );
        let d = Duplicates::find(&pieces).unwrap();
        assert!(d.is_empty());
        assert!(d
            .losers(&id_batch(&[Some("a"), Some("b")], &[None, None]), 0)
            .is_none());
    }

    #[test]
    fn the_latest_update_wins_across_files_and_ties_go_to_the_later_copy() {
        let dir = tempfile::tempdir().unwrap();
        let pieces = staged(
            dir.path(),
            &[
                // rows 0..3
                vec![
                    (Some("a"), Some(5)),
                    (Some("b"), Some(1)),
                    (Some("c"), None),
                ],
                // rows 3..6
                vec![
                    (Some("a"), Some(2)),
                    (Some("b"), Some(1)),
                    (Some("c"), Some(0)),
                ],
                // rows 6..8
                vec![(Some("b"), None), (Some("d"), Some(9))],
            ],
        );
        let d = Duplicates::find(&pieces).unwrap();
        assert_eq!(d.repeated_ids(), 3);
        // a: row 0 (update 5) beats row 3 (update 2).
        // b: rows 1 and 4 tie on update 1, row 4 is later; row 7 has no date.
        // c: row 5 has a date, row 2 has none.
        assert_eq!(
            losers(&d, &[Some("a"), Some("b"), Some("c")], 0),
            [false, true, true]
        );
        assert_eq!(
            losers(&d, &[Some("a"), Some("b"), Some("c")], 3),
            [true, false, false]
        );
        assert_eq!(losers(&d, &[Some("b"), Some("d")], 6), [true, false]);
        // A document extract refused is rejected, never a losing copy.
        let batch = id_batch(&[Some("a"), Some("a")], &[None, Some("malformed")]);
        let mask = d.losers(&batch, 3).unwrap();
        assert!(mask.value(0) && !mask.value(1));
    }
}
