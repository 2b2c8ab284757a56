//! `rejects/<table>[.orphans].parquet`: rows that did not make it, with table, document id,
//! column(s), reason(s) and raw value(s). Written by transform (values that do not fit) and
//! load (foreign keys pointing nowhere) in the same shape.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;

use super::{commit_file, PartWriter, StagingError};

/// One refused row. Several failing columns of one row share one reject row: `column` lists
/// them, `reason` gives `column: reason` for each, `raw_value` is a JSON object column -> raw.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectRow {
    pub document_id: String,
    pub column: String,
    pub reason: String,
    pub raw_value: Option<String>,
}

pub fn rejects_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("table", DataType::Utf8, false),
        Field::new("document_id", DataType::Utf8, false),
        Field::new("column", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("raw_value", DataType::Utf8, true),
    ]))
}

/// Writes `path` (temp folder, then rename); removes an old file when `rows` is empty.
pub fn write_rejects(path: &Path, table: &str, rows: &[RejectRow]) -> Result<(), StagingError> {
    if rows.is_empty() {
        return match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StagingError::Io {
                path: path.to_path_buf(),
                source: e,
            }),
            _ => Ok(()),
        };
    }
    let mut b = [(); 5].map(|_| StringBuilder::new());
    for r in rows {
        b[0].append_value(table);
        b[1].append_value(&r.document_id);
        b[2].append_value(&r.column);
        b[3].append_value(&r.reason);
        b[4].append_option(r.raw_value.as_deref());
    }
    let columns: Vec<ArrayRef> = b
        .iter_mut()
        .map(|b| Arc::new(b.finish()) as ArrayRef)
        .collect();
    let batch =
        RecordBatch::try_new(rejects_schema(), columns).map_err(|e| StagingError::Invalid {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("rejects");
    let tmp = dir.join(format!(".{name}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    let mut writer = PartWriter::new(&tmp, "", rejects_schema())?;
    writer.write(&batch)?;
    let files = writer.finish()?;
    commit_file(&tmp.join(&files[0].path), path)?;
    std::fs::remove_dir_all(&tmp).map_err(StagingError::io(&tmp))
}
