//! Parquet part files: written under a temp name with their SHA-256 computed on the way,
//! renamed when complete; read back only after their checksum matches the manifest.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use sha2::{Digest, Sha256};

use super::{commit_file, FileEntry, StagingError};

/// Rows per Parquet row group: bounds the writer's memory and gives readers units to share.
const ROW_GROUP_ROWS: usize = 128 * 1024;
/// Rows per part file before a new one starts (`ETL_PART_ROWS` overrides it, e.g. to test
/// behaviour across files on small data).
const FILE_ROWS: u64 = 1_000_000;

fn file_rows() -> u64 {
    std::env::var("ETL_PART_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(FILE_ROWS)
}

/// Writes batches into `dir/part-NNNNN.parquet` files.
pub struct PartWriter {
    dir: PathBuf,
    schema: SchemaRef,
    current: Option<OpenPart>,
    files: Vec<FileEntry>,
    /// Prefix of file paths in the manifest (relative to the stage folder).
    rel_prefix: String,
    file_rows: u64,
    /// File names are `<name_prefix>-NNNNN.parquet`.
    name_prefix: String,
}

struct OpenPart {
    writer: ArrowWriter<HashingWriter>,
    tmp: PathBuf,
    path: PathBuf,
    rows: u64,
}

impl PartWriter {
    /// `rel_prefix` is how the manifest names `dir` relative to the stage folder.
    pub fn new(
        dir: &Path,
        rel_prefix: &str,
        schema: SchemaRef,
    ) -> Result<PartWriter, StagingError> {
        std::fs::create_dir_all(dir).map_err(StagingError::io(dir))?;
        Ok(PartWriter {
            dir: dir.to_path_buf(),
            schema,
            current: None,
            files: Vec::new(),
            rel_prefix: rel_prefix.into(),
            file_rows: file_rows(),
            name_prefix: "part".into(),
        })
    }

    /// Names files `<prefix>-NNNNN.parquet`, so several writers can share a folder (one per
    /// parallel task, the prefix sorting in input order).
    pub fn with_name_prefix(mut self, prefix: &str) -> PartWriter {
        self.name_prefix = prefix.to_string();
        self
    }

    /// Closes the last file and returns the files written; none when nothing was written.
    pub fn finish_nonempty(mut self) -> Result<Vec<FileEntry>, StagingError> {
        self.close_current()?;
        Ok(self.files)
    }

    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), StagingError> {
        let mut offset = 0;
        while offset < batch.num_rows() {
            if self.current.is_none() {
                self.open_next()?;
            }
            let part = self.current.as_mut().expect("opened above");
            let room = usize::try_from(self.file_rows.saturating_sub(part.rows))
                .unwrap_or(usize::MAX)
                .max(1);
            let slice = batch.slice(offset, room.min(batch.num_rows() - offset));
            part.writer
                .write(&slice)
                .map_err(|source| StagingError::Parquet {
                    path: part.tmp.clone(),
                    source,
                })?;
            part.rows += slice.num_rows() as u64;
            offset += slice.num_rows();
            if part.rows >= self.file_rows {
                self.close_current()?;
            }
        }
        Ok(())
    }

    /// Closes the last file and returns every file written. A collection with no rows still
    /// gets one (empty) file, so readers see its schema.
    pub fn finish(mut self) -> Result<Vec<FileEntry>, StagingError> {
        if self.files.is_empty() && self.current.is_none() {
            self.open_next()?;
        }
        self.close_current()?;
        Ok(self.files)
    }

    fn open_next(&mut self) -> Result<(), StagingError> {
        let name = format!("{}-{:05}.parquet", self.name_prefix, self.files.len());
        let path = self.dir.join(&name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let file = File::create(&tmp).map_err(StagingError::io(&tmp))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
            .build();
        let sink = HashingWriter {
            inner: BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            bytes: 0,
        };
        let writer =
            ArrowWriter::try_new(sink, self.schema.clone(), Some(props)).map_err(|source| {
                StagingError::Parquet {
                    path: tmp.clone(),
                    source,
                }
            })?;
        self.current = Some(OpenPart {
            writer,
            tmp,
            path,
            rows: 0,
        });
        Ok(())
    }

    fn close_current(&mut self) -> Result<(), StagingError> {
        let Some(part) = self.current.take() else {
            return Ok(());
        };
        let sink = part
            .writer
            .into_inner()
            .map_err(|source| StagingError::Parquet {
                path: part.tmp.clone(),
                source,
            })?;
        let HashingWriter {
            inner,
            hasher,
            bytes,
        } = sink;
        inner.into_inner().map_err(|e| StagingError::Io {
            path: part.tmp.clone(),
            source: e.into_error(),
        })?;
        commit_file(&part.tmp, &part.path)?;
        let file_name = part
            .path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let rel = if self.rel_prefix.is_empty() {
            file_name.to_string()
        } else {
            format!("{}/{file_name}", self.rel_prefix)
        };
        self.files.push(FileEntry {
            path: rel,
            rows: part.rows,
            sha256: hex::encode(hasher.finalize()),
            bytes,
        });
        Ok(())
    }
}

/// A [`PartWriter`] on its own thread: Parquet encoding overlaps the work that produces the
/// batches (extract's conversion). Batches are written in the order given.
pub struct BackgroundWriter {
    sender: Option<std::sync::mpsc::SyncSender<RecordBatch>>,
    handle: Option<std::thread::JoinHandle<Result<Vec<FileEntry>, StagingError>>>,
}

impl BackgroundWriter {
    pub fn spawn(mut writer: PartWriter) -> BackgroundWriter {
        // Two batches in flight: enough to overlap, little memory.
        let (sender, receiver) = std::sync::mpsc::sync_channel::<RecordBatch>(2);
        let handle = std::thread::spawn(move || {
            for batch in receiver {
                writer.write(&batch)?;
            }
            writer.finish()
        });
        BackgroundWriter {
            sender: Some(sender),
            handle: Some(handle),
        }
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), StagingError> {
        let sent = self
            .sender
            .as_ref()
            .is_some_and(|s| s.send(batch.clone()).is_ok());
        if sent {
            return Ok(());
        }
        // The thread stopped: its error says why.
        self.join().and_then(|_| {
            Err(StagingError::Invalid {
                path: PathBuf::new(),
                message: "the Parquet writer thread stopped".into(),
            })
        })
    }

    /// Waits for every batch to be written; returns the files.
    pub fn finish(mut self) -> Result<Vec<FileEntry>, StagingError> {
        self.join()
    }

    fn join(&mut self) -> Result<Vec<FileEntry>, StagingError> {
        self.sender = None;
        match self.handle.take().map(std::thread::JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(StagingError::Invalid {
                path: PathBuf::new(),
                message: "the Parquet writer thread panicked".into(),
            }),
            None => Err(StagingError::Invalid {
                path: PathBuf::new(),
                message: "the Parquet writer was already finished".into(),
            }),
        }
    }
}

/// A writer that hashes what goes through it (Parquet writes files front to back).
struct HashingWriter {
    inner: BufWriter<File>,
    hasher: Sha256,
    bytes: u64,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Checks a staged file against its manifest entry (size and SHA-256).
pub fn verify_file(stage_dir: &Path, entry: &FileEntry) -> Result<(), StagingError> {
    let path = stage_dir.join(&entry.path);
    let mut file = File::open(&path).map_err(StagingError::io(&path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(StagingError::io(&path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    let sha = hex::encode(hasher.finalize());
    if sha != entry.sha256 || bytes != entry.bytes {
        return Err(StagingError::Invalid {
            path,
            message: format!("checksum mismatch: manifest says sha256 {} ({} bytes), file has {sha} ({bytes} bytes)", entry.sha256, entry.bytes),
        });
    }
    Ok(())
}

/// Reads every batch of one staged file.
/// Streams a staged file's batches of up to `batch_rows` rows, each error naming the file.
pub(crate) fn stream_batches(
    path: &Path,
    batch_rows: usize,
) -> Result<impl Iterator<Item = Result<RecordBatch, StagingError>> + '_, StagingError> {
    let file = File::open(path).map_err(StagingError::io(path))?;
    let to_err = |source| StagingError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(to_err)?
        .with_batch_size(batch_rows)
        .build()
        .map_err(to_err)?;
    Ok(reader.map(move |batch| {
        batch.map_err(|e| StagingError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    }))
}

pub fn read_batches(path: &Path) -> Result<(SchemaRef, Vec<RecordBatch>), StagingError> {
    let file = File::open(path).map_err(StagingError::io(path))?;
    let to_err = |source| StagingError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(to_err)?;
    let schema = builder.schema().clone();
    let reader = builder.with_batch_size(64 * 1024).build().map_err(to_err)?;
    let batches = reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| StagingError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    Ok((Arc::clone(&schema), batches))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    #[test]
    fn written_files_round_trip_and_checksums_catch_changes() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(StringArray::from(vec!["a", "b"])),
                Arc::new(Int64Array::from(vec![Some(1), None])),
            ],
        )
        .unwrap();
        let mut writer = PartWriter::new(&dir.path().join("users"), "users", schema).unwrap();
        writer.write(&batch).unwrap();
        let files = writer.finish().unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(
            (files[0].path.as_str(), files[0].rows),
            ("users/part-00000.parquet", 2)
        );
        verify_file(dir.path(), &files[0]).unwrap();
        let (_, batches) = read_batches(&dir.path().join(&files[0].path)).unwrap();
        assert_eq!(batches, vec![batch]);
        // No temp file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("users"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");

        let path = dir.path().join(&files[0].path);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 10;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        let err = verify_file(dir.path(), &files[0]).unwrap_err();
        assert!(
            err.to_string().contains("checksum mismatch") && err.to_string().contains("part-00000"),
            "{err}"
        );
    }

    #[test]
    fn background_writer_keeps_batch_order() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)]));
        let batches: Vec<RecordBatch> = (0..5)
            .map(|i| {
                RecordBatch::try_new(
                    schema.clone(),
                    vec![Arc::new(Int64Array::from(vec![i, i + 100]))],
                )
                .unwrap()
            })
            .collect();
        let mut writer =
            BackgroundWriter::spawn(PartWriter::new(dir.path(), "", schema.clone()).unwrap());
        for b in &batches {
            writer.write(b).unwrap();
        }
        let files = writer.finish().unwrap();
        assert_eq!(files.iter().map(|f| f.rows).sum::<u64>(), 10);
        let (_, read) = read_batches(&dir.path().join(&files[0].path)).unwrap();
        let all = arrow::compute::concat_batches(&schema, &read).unwrap();
        let expected = arrow::compute::concat_batches(&schema, &batches).unwrap();
        assert_eq!(all, expected);
    }

    #[test]
    fn an_empty_table_still_gets_a_file_with_its_schema() {
        let dir = tempfile::tempdir().unwrap();
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Utf8, false)]));
        let files = PartWriter::new(dir.path(), "", schema.clone())
            .unwrap()
            .finish()
            .unwrap();
        assert_eq!(files[0].rows, 0);
        let (read_schema, batches) = read_batches(&dir.path().join(&files[0].path)).unwrap();
        assert_eq!(read_schema.fields(), schema.fields());
        assert!(batches.is_empty());
    }
}
