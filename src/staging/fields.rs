//! Which document fields a MongoDB collection's staged Parquet holds, and as what type: the
//! extract side of the contract that transform reads.
//!
//! The config decides: every field a column, an exploded array or a filter of a table on this
//! collection reads, typed by the column's `sql_type`. The staged file keeps each field as a
//! typed column named by its path, plus `<path>__raw` holding the extended JSON of any value
//! that does not fit that type, so nothing is lost and transform can reject it with its reason.

use arrow::datatypes::{DataType, Field, Fields, Schema, TimeUnit};
use std::sync::Arc;

use crate::config::{ColumnSource, Config, Source, SqlType};

/// Suffix of the column that keeps values that do not fit the typed column.
pub const RAW_SUFFIX: &str = "__raw";
/// The documents' `_id`: ObjectId as 24-char hex, a string as is, an integer as decimal
/// text, a UUID (binary subtype 4 or 3) as 8-4-4-4-12 text (references to documents are
/// staged the same way), anything else as extended JSON.
pub const ID_FIELD: &str = "_id";
/// Window fields, always staged.
pub const CREATION_DATE: &str = "creation_date";
pub const UPDATE_DATE: &str = "update_date";
/// Last two columns of every staged collection: set (the reason, and the document's BSON
/// bytes) on the row of a document extract could not read (invalid UTF-8, malformed BSON,
/// nesting too deep). Its field columns are then NULL, its `_id` kept when readable;
/// transform rejects it in every table of the collection, so the counts add up per table.
pub const DOCUMENT_ERROR: &str = "__document_error";
pub const DOCUMENT_BSON: &str = "__document_bson";
/// The whole document as relaxed Extended JSON, staged for a collection one of whose tables
/// has `keep_source` (or for every collection with `etl extract --keep-documents`).
pub const KEPT_DOCUMENT: &str = "__document";
/// Beside [`KEPT_DOCUMENT`]: why a document that was otherwise read could not be written as
/// JSON (invalid UTF-8 or malformed BSON in a field no column reads, nesting too deep); its
/// BSON bytes are then in [`DOCUMENT_BSON`], while [`DOCUMENT_ERROR`] stays NULL.
pub const KEPT_DOCUMENT_ERROR: &str = "__document_unkept";

/// How a staged field is typed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldKind {
    /// Utf8: strings as is, ObjectId as 24-char hex, UUID as 8-4-4-4-12 text.
    Text,
    /// Int64: int32, int64, and doubles with an integral value.
    Int,
    /// Float64: double, int32, int64.
    Float,
    /// Utf8 holding an exact decimal: decimal128, int32, int64, double.
    Decimal,
    /// Boolean.
    Bool,
    /// Timestamp(ms, UTC): BSON dates.
    Timestamp,
    /// Binary: BSON binary.
    Binary,
    /// Utf8: any value as relaxed extended JSON.
    Json,
    /// List<Struct{id: Utf8, raw: Utf8}>: an array of ids or embedded documents with `_id`;
    /// `id` is the element's id when it has one (ObjectId, string, integer or UUID, as text
    /// like `_id`), `raw` the element's extended JSON otherwise; a null element is a null
    /// struct.
    IdList,
    /// Utf8: the whole document as relaxed Extended JSON ([`KEPT_DOCUMENT`]), not a field.
    Document,
}

impl FieldKind {
    pub fn for_sql_type(ty: SqlType) -> FieldKind {
        match ty {
            SqlType::Varchar(_) | SqlType::Char(_) | SqlType::Text | SqlType::Time => {
                FieldKind::Text
            }
            SqlType::SmallInt
            | SqlType::Integer
            | SqlType::BigInt
            | SqlType::Serial
            | SqlType::BigSerial => FieldKind::Int,
            SqlType::Real | SqlType::Double => FieldKind::Float,
            SqlType::Numeric(_) => FieldKind::Decimal,
            SqlType::Boolean => FieldKind::Bool,
            SqlType::Timestamp | SqlType::TimestampTz | SqlType::Date => FieldKind::Timestamp,
            SqlType::Bytea => FieldKind::Binary,
            SqlType::Jsonb => FieldKind::Json,
        }
    }

    /// The Arrow type of the typed column.
    pub fn data_type(self) -> DataType {
        match self {
            FieldKind::Text | FieldKind::Decimal | FieldKind::Json | FieldKind::Document => {
                DataType::Utf8
            }
            FieldKind::Int => DataType::Int64,
            FieldKind::Float => DataType::Float64,
            FieldKind::Bool => DataType::Boolean,
            FieldKind::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            FieldKind::Binary => DataType::Binary,
            FieldKind::IdList => {
                DataType::List(Arc::new(Field::new("item", id_element_type(), true)))
            }
        }
    }
}

/// The struct of one `IdList` element.
pub fn id_element_type() -> DataType {
    DataType::Struct(Fields::from(vec![
        Field::new("id", DataType::Utf8, true),
        Field::new("raw", DataType::Utf8, true),
    ]))
}

/// One staged field: a document path and its type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedField {
    /// Dotted path in the document (`a.b` for nested documents).
    pub path: String,
    pub kind: FieldKind,
}

/// The fields staged for a MongoDB collection: `_id`, `creation_date`, `update_date`, then
/// every field the tables reading this collection use, in config order, each once; last the
/// whole document ([`KEPT_DOCUMENT`]) when a table keeps it (`keep_source`) or
/// `keep_documents` (`etl extract --keep-documents`) asks for it.
pub fn fields_for_collection(
    config: &Config,
    collection: &str,
    keep_documents: bool,
) -> Vec<StagedField> {
    let mut fields = vec![
        StagedField {
            path: ID_FIELD.into(),
            kind: FieldKind::Text,
        },
        StagedField {
            path: CREATION_DATE.into(),
            kind: FieldKind::Timestamp,
        },
        StagedField {
            path: UPDATE_DATE.into(),
            kind: FieldKind::Timestamp,
        },
    ];
    let mut add = |path: &str, kind: FieldKind| {
        if !fields.iter().any(|f| f.path == path) {
            fields.push(StagedField {
                path: path.to_string(),
                kind,
            });
        }
    };
    let tables = config.tables.iter().filter(|t| {
        t.source
            == Source::Mongo {
                collection: collection.to_string(),
            }
    });
    let mut keep = keep_documents;
    let tables: Vec<_> = tables.collect();
    for t in &tables {
        for c in &t.columns {
            match &c.source {
                ColumnSource::Field(path) if c.expression.is_none() => {
                    add(path, FieldKind::for_sql_type(c.sql_type))
                }
                ColumnSource::Document => keep = true,
                _ => {}
            }
        }
    }
    // Expressions read text; a field a plain column also reads keeps that column's type (the
    // config refuses a JSONB one, whose text would be JSON).
    for c in tables.iter().flat_map(|t| &t.columns) {
        for path in c.text_sources() {
            add(path, FieldKind::Text);
        }
    }
    for t in &tables {
        for array in t.explode.iter().flat_map(|e| &e.arrays) {
            add(&array.field, FieldKind::IdList);
        }
        for path in &t.filter_exists {
            add(path, FieldKind::Json);
        }
        // Compared on their text, as `value_map` reads a field.
        for (path, _) in &t.filter_equals {
            add(path, FieldKind::Text);
        }
    }
    if keep {
        fields.push(StagedField {
            path: KEPT_DOCUMENT.into(),
            kind: FieldKind::Document,
        });
    }
    fields
}

/// The Arrow schema of a staged collection: per field, the typed column then its `__raw`
/// column (not for `_id`, which is always text; for the whole document, the reason it could
/// not be kept); then the document error columns.
pub fn staged_schema(fields: &[StagedField]) -> Schema {
    let mut columns = Vec::with_capacity(fields.len() * 2 + 2);
    for f in fields {
        columns.push(Field::new(&f.path, f.kind.data_type(), true));
        if f.kind == FieldKind::Document {
            columns.push(Field::new(KEPT_DOCUMENT_ERROR, DataType::Utf8, true));
        } else if f.path != ID_FIELD {
            columns.push(Field::new(
                format!("{}{RAW_SUFFIX}", f.path),
                DataType::Utf8,
                true,
            ));
        }
    }
    columns.push(Field::new(DOCUMENT_ERROR, DataType::Utf8, true));
    columns.push(Field::new(DOCUMENT_BSON, DataType::Binary, true));
    Schema::new(columns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_collection_stages_every_field_its_tables_read() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
        let config = Config::load(&dir).unwrap();
        let fields = fields_for_collection(&config, "users", false);
        let paths: Vec<&str> = fields.iter().map(|f| f.path.as_str()).collect();
        for expected in [
            "_id",
            "creation_date",
            "firstname",
            "company",
            "registered_events",
            "health_targets",
        ] {
            assert!(
                paths.contains(&expected),
                "{expected} missing from {paths:?}"
            );
        }
        assert_eq!(paths.iter().filter(|p| **p == "_id").count(), 1);
        let targets = fields.iter().find(|f| f.path == "targets").unwrap();
        assert_eq!(targets.kind, FieldKind::IdList);
        let schema = staged_schema(&fields);
        assert!(schema.field_with_name("firstname__raw").is_ok());
        assert!(schema.field_with_name("_id__raw").is_err());
        let last: Vec<&str> = schema.fields()[schema.fields().len() - 2..]
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(last, [DOCUMENT_ERROR, DOCUMENT_BSON]);
    }
}
