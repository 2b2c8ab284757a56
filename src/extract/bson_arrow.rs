//! BSON documents to Arrow record batches: the one converter behind both the mongodump reader
//! and the live MongoDB path.
//!
//! A [`DocBatchBuilder`] is made from a collection's [`StagedField`]s and appends raw documents
//! (`bson::RawDocument`, never a decoded `bson::Document`) into per-column Arrow builders. Every
//! conversion rule, one `match` on the BSON element type per [`FieldKind`], lives in
//! [`typed_value`]; a value that does not fit its kind goes, as relaxed extended JSON, to the
//! field's `__raw` column so transform can reject it with its reason. A missing field and a
//! BSON null are NULL in both columns, whatever the kind. Reading files or cursors, filtering
//! beyond the date window and writing Parquet are the callers' business.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Float64Builder, Int64Builder, ListArray,
    StringBuilder, StructArray, TimestampMillisecondBuilder,
};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, FieldRef, Fields, SchemaRef};
use arrow::record_batch::RecordBatch;
use bson::oid::ObjectId;
use bson::raw::{RawBsonRef, RawDocument};
use bson::Decimal128;
use chrono::{DateTime, Utc};

use super::extjson::{self, JsonError};
use super::fields::{self, FieldKind, StagedField, CREATION_DATE, ID_FIELD, UPDATE_DATE};

/// A document the converter cannot stage. (A document it cannot read is staged as a
/// refused row instead, see [`DocBatchBuilder::push`].)
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// One batch would hold more array elements than an Arrow `List` can index.
    #[error(
        "document {}: field `{path}` would put more than {} array elements in one batch; \
         use smaller batches",
        display_id(.id),
        i32::MAX
    )]
    ListOverflow { id: Option<String>, path: String },
    /// The batch holds too many bytes of text and binary values to take this document
    /// (Arrow's 32-bit offsets): finish it and push the document into the next one.
    #[error(
        "document {}: the batch already holds {bytes} bytes of text and binary values; \
         finish it before pushing more",
        display_id(.id)
    )]
    BatchFull { id: Option<String>, bytes: usize },
}

/// A batch is full (see [`DocBatchBuilder::is_full`]) once its text and binary values reach
/// this many bytes, as the Matomo extractor caps its batches.
pub const MAX_BATCH_BYTES: usize = 256 << 20;

/// What one batch can hold in text and binary values at all: Arrow's `Utf8` and `Binary`
/// arrays index their values with `i32` offsets. A push beyond it is refused, never a panic.
const BATCH_BYTES_LIMIT: usize = i32::MAX as usize;

fn display_id(id: &Option<String>) -> &str {
    id.as_deref().unwrap_or("with unreadable _id")
}

/// Whether a document falls in the extract window: `creation_date >= since OR update_date >=
/// since`, inclusive, compared in milliseconds like the MongoDB query the live path sends (only
/// BSON dates match, as with `$gte` on a date). `None` takes everything. A document too
/// malformed to read the two dates is let through, so that [`DocBatchBuilder::push`] reports it.
pub fn in_window(doc: &RawDocument, since: Option<DateTime<Utc>>) -> bool {
    let Some(since) = since else {
        return true;
    };
    let since = since.timestamp_millis();
    // One pass over the top-level keys, stopping once both dates were seen.
    let mut remaining = 2;
    for element in doc.iter_elements() {
        let Ok(element) = element else {
            return true;
        };
        if element.key() != CREATION_DATE && element.key() != UPDATE_DATE {
            continue;
        }
        match element.value() {
            Ok(RawBsonRef::DateTime(date)) if date.timestamp_millis() >= since => return true,
            Ok(_) => {}
            Err(_) => return true,
        }
        remaining -= 1;
        if remaining == 0 {
            break;
        }
    }
    false
}

/// Appends raw BSON documents as rows of the staged schema of a set of fields.
pub struct DocBatchBuilder {
    schema: SchemaRef,
    columns: Vec<Column>,
    /// Fields grouped by the first segment of their path, so one pass over a document's
    /// top-level keys finds all of them.
    groups: Vec<Group>,
    /// Per group, whether the current document had its key (scratch, reused).
    seen: Vec<bool>,
    /// The `_id` column, when staged (a refused document keeps its readable `_id`).
    id_column: Option<usize>,
    /// The whole document's column ([`FieldKind::Document`]), when staged.
    document_column: Option<usize>,
    /// Why a document was refused, and its bytes (`fields::DOCUMENT_ERROR`, `DOCUMENT_BSON`).
    refused: StringBuilder,
    refused_bson: BinaryBuilder,
    rows: usize,
    /// Text and binary bytes appended since the last finish, all columns together (so no
    /// one column's offsets can pass `limit`).
    bytes: usize,
    limit: usize,
}

struct Group {
    key: String,
    members: Vec<Member>,
}

struct Member {
    column: usize,
    /// Path segments below the group's key (empty for a top-level field).
    rest: Vec<String>,
}

impl DocBatchBuilder {
    pub fn new(fields: &[StagedField]) -> DocBatchBuilder {
        let schema = Arc::new(fields::staged_schema(fields));
        let mut groups: Vec<Group> = Vec::new();
        let mut columns = Vec::with_capacity(fields.len());
        for (index, field) in fields.iter().enumerate() {
            columns.push(Column::new(field));
            // The whole document is no field of it: no key to look for.
            if field.kind == FieldKind::Document {
                continue;
            }
            let mut segments = field.path.split('.').map(str::to_string);
            let key = segments.next().unwrap_or_default();
            let member = Member {
                column: index,
                rest: segments.collect(),
            };
            match groups.iter_mut().find(|g| g.key == key) {
                Some(group) => group.members.push(member),
                None => groups.push(Group {
                    key,
                    members: vec![member],
                }),
            }
        }
        let seen = vec![false; groups.len()];
        let id_column = fields.iter().position(|f| f.path == ID_FIELD);
        let document_column = fields.iter().position(|f| f.kind == FieldKind::Document);
        DocBatchBuilder {
            schema,
            columns,
            groups,
            seen,
            id_column,
            document_column,
            refused: StringBuilder::new(),
            refused_bson: BinaryBuilder::new(),
            rows: 0,
            bytes: 0,
            limit: BATCH_BYTES_LIMIT,
        }
    }

    /// Whether the batch should be finished before more documents are pushed: its text and
    /// binary values reached [`MAX_BATCH_BYTES`]. Pushing more still works up to Arrow's
    /// limit; past it [`push`](Self::push) returns [`ConvertError::BatchFull`].
    pub fn is_full(&self) -> bool {
        self.bytes >= MAX_BATCH_BYTES.min(self.limit / 2)
    }

    /// Text and binary bytes appended since the last [`finish`](Self::finish).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    #[cfg(test)]
    fn with_byte_limit(mut self, limit: usize) -> DocBatchBuilder {
        self.limit = limit;
        self
    }

    /// Reserves `more` bytes, or says the batch cannot take them.
    fn reserve(&mut self, doc: &RawDocument, more: usize) -> Result<(), ConvertError> {
        match self
            .bytes
            .checked_add(more)
            .filter(|total| *total <= self.limit)
        {
            Some(total) => {
                self.bytes = total;
                Ok(())
            }
            None => Err(ConvertError::BatchFull {
                id: doc_id(doc),
                bytes: self.bytes,
            }),
        }
    }

    /// Appends one document (raw BSON).
    ///
    /// A document that cannot be read (malformed BSON, invalid UTF-8 in a field the config
    /// reads, nesting deeper than [`MAX_DEPTH`]) is appended as a refused row: its reason and
    /// bytes in the document error columns, every field NULL but a readable `_id`, so one bad
    /// document never stops an extract and transform rejects it with its raw bytes. An error
    /// means the batch cannot take the document at all; nothing was appended then.
    pub fn push(&mut self, doc: &RawDocument) -> Result<(), ConvertError> {
        let DocBatchBuilder {
            columns,
            groups,
            seen,
            ..
        } = self;
        let mut cells = match read_cells(columns, groups, seen, doc) {
            Ok(cells) => cells,
            Err(reason) => return self.push_refused(doc, &reason),
        };
        // The whole document, when kept: its JSON, or why it has none (then its bytes).
        let mut unkept_bytes = None;
        if let Some(cell) = self.document_column.and_then(|i| cells.get_mut(i)) {
            match extjson::document(doc, MAX_DEPTH) {
                Ok(json) => {
                    *cell = Cell {
                        typed: Typed::Text(json),
                        raw: None,
                    }
                }
                Err(e) => {
                    *cell = Cell {
                        typed: Typed::Null,
                        raw: Some(Unreadable::from(e).reason("(document)")),
                    };
                    unkept_bytes = Some(doc.as_bytes());
                }
            }
        }
        for (column, cell) in self.columns.iter().zip(&cells) {
            if !column.typed.fits(&cell.typed) {
                return Err(ConvertError::ListOverflow {
                    id: doc_id(doc),
                    path: column.path.clone(),
                });
            }
        }
        let kept_bytes = unkept_bytes.map_or(0, <[u8]>::len);
        self.reserve(
            doc,
            cells.iter().map(Cell::bytes).sum::<usize>() + kept_bytes,
        )?;
        for (column, cell) in self.columns.iter_mut().zip(cells) {
            column.append(cell);
        }
        self.refused.append_null();
        self.refused_bson.append_option(unkept_bytes);
        self.rows += 1;
        Ok(())
    }

    /// Appends a document that cannot be read: NULL fields, its `_id` if readable, the reason
    /// and its bytes.
    fn push_refused(&mut self, doc: &RawDocument, reason: &str) -> Result<(), ConvertError> {
        let id = doc_id(doc);
        let id_bytes = id.as_ref().map_or(0, String::len);
        self.reserve(doc, reason.len() + doc.as_bytes().len() + id_bytes)?;
        for (i, column) in self.columns.iter_mut().enumerate() {
            match (&id, Some(i) == self.id_column) {
                (Some(id), true) => column.append(Cell {
                    typed: Typed::Str(id),
                    raw: None,
                }),
                _ => column.append(Cell::NULL),
            }
        }
        self.refused.append_value(reason);
        self.refused_bson.append_value(doc.as_bytes());
        self.rows += 1;
        Ok(())
    }

    /// Documents appended since the last [`finish`](Self::finish).
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Builds the batch (schema = `fields::staged_schema(fields)`) and resets the builder.
    pub fn finish(&mut self) -> RecordBatch {
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.schema.fields().len());
        for column in &mut self.columns {
            arrays.push(column.typed.finish());
            if let Some(raw) = &mut column.raw {
                arrays.push(Arc::new(raw.finish()));
            }
        }
        arrays.push(Arc::new(self.refused.finish()));
        arrays.push(Arc::new(self.refused_bson.finish()));
        self.rows = 0;
        self.bytes = 0;
        // Each builder was made from the field that `staged_schema` types, and every push
        // appends exactly one value to every builder: a mismatch is a bug here, not bad data.
        RecordBatch::try_new(self.schema.clone(), arrays)
            .expect("column builders match the staged schema")
    }
}

/// Reads and converts every staged field of a document; the reason it cannot be read
/// otherwise. Nothing is appended here.
fn read_cells<'d>(
    columns: &[Column],
    groups: &[Group],
    seen: &mut [bool],
    doc: &'d RawDocument,
) -> Result<Vec<Cell<'d>>, String> {
    let mut cells: Vec<Cell<'d>> = columns.iter().map(|_| Cell::NULL).collect();
    seen.fill(false);
    let mut remaining = groups.len();
    for element in doc.iter_elements() {
        let element = element.map_err(|e| {
            let path = e.key().unwrap_or("(document)").to_string();
            malformed(&path, &e)
        })?;
        let Some(g) = groups.iter().position(|g| g.key == element.key()) else {
            continue;
        };
        // A repeated key: the first one wins, as with `RawDocument::get`.
        if seen[g] {
            continue;
        }
        seen[g] = true;
        let value = element.value().map_err(|e| malformed(&groups[g].key, &e))?;
        for member in &groups[g].members {
            let column = &columns[member.column];
            cells[member.column] = descend(value, &member.rest)
                .map_err(Unreadable::Bson)
                .and_then(|v| v.map_or(Ok(Cell::NULL), |v| convert(column, v)))
                .map_err(|e| e.reason(&column.path))?;
        }
        remaining -= 1;
        if remaining == 0 {
            break;
        }
    }
    Ok(cells)
}

/// Why a value cannot be read.
enum Unreadable {
    Bson(bson::raw::Error),
    /// Malformed below the field: at this path inside it, for this reason.
    Inside {
        path: String,
        error: String,
    },
    /// Nested deeper than [`MAX_DEPTH`] levels.
    TooDeep,
}

impl From<JsonError> for Unreadable {
    fn from(e: JsonError) -> Unreadable {
        match e {
            JsonError::Malformed { path, error } => Unreadable::Inside { path, error },
            JsonError::TooDeep => Unreadable::TooDeep,
        }
    }
}

/// MongoDB refuses documents nested deeper than 100 levels; a dump can still hold one (and
/// converting it recursively could overflow the stack), so a document whose read fields go
/// deeper is refused (the JSON writer stops descending there, whatever the depth). The
/// document itself is the first level.
pub const MAX_DEPTH: usize = 100;

impl From<bson::raw::Error> for Unreadable {
    fn from(e: bson::raw::Error) -> Unreadable {
        Unreadable::Bson(e)
    }
}

impl Unreadable {
    fn reason(&self, path: &str) -> String {
        match self {
            Unreadable::Bson(e) => malformed(path, e),
            // Inside a field, the field is named (as for any value of it); for the whole
            // document, the field the problem is in.
            Unreadable::Inside { path: inner, error } => {
                let at = if path == "(document)" { inner } else { path };
                format!("malformed BSON at field `{at}`: {error}")
            }
            Unreadable::TooDeep if path == "(document)" => {
                format!("the document nests deeper than {MAX_DEPTH} levels (MongoDB's limit)")
            }
            Unreadable::TooDeep => {
                format!("field `{path}` nests deeper than {MAX_DEPTH} levels (MongoDB's limit)")
            }
        }
    }
}

fn malformed(path: &str, e: &bson::raw::Error) -> String {
    format!("malformed BSON at field `{path}`: {e}")
}

/// The document's `_id` as staged, for error messages.
fn doc_id(doc: &RawDocument) -> Option<String> {
    id_text(doc.get(ID_FIELD).ok()??)
}

/// An `_id` value as the staged `_id` column holds it (and the target's key column then):
/// ObjectId hex, a string as is, an integer in decimal, a UUID as 8-4-4-4-12 text, anything
/// else as its relaxed Extended JSON; `None` when it cannot be read.
pub fn id_text(value: RawBsonRef<'_>) -> Option<String> {
    match id_key(value) {
        Some(IdKey::Oid(oid)) => Some(oid.to_hex()),
        Some(IdKey::Str(s)) => Some(s.to_string()),
        Some(IdKey::Int(n)) => Some(n.to_string()),
        Some(IdKey::Uuid(bytes)) => Some(uuid_text(&bytes, &mut [0; 36]).to_string()),
        None => ext_json(value).ok(),
    }
}

/// A value that is a document key the same way in an `_id` and in a reference to it: an
/// ObjectId (24-char hex), a string (as is), an integer (decimal text), a UUID (BSON binary
/// subtype 4, or the legacy subtype 3, as 8-4-4-4-12 text).
#[derive(Clone, Copy)]
enum IdKey<'a> {
    Oid(ObjectId),
    Str(&'a str),
    Int(i64),
    Uuid([u8; 16]),
}

fn id_key(value: RawBsonRef<'_>) -> Option<IdKey<'_>> {
    use bson::spec::BinarySubtype;
    use RawBsonRef as B;
    match value {
        B::ObjectId(oid) => Some(IdKey::Oid(oid)),
        B::String(s) => Some(IdKey::Str(s)),
        B::Int32(n) => Some(IdKey::Int(i64::from(n))),
        B::Int64(n) => Some(IdKey::Int(n)),
        B::Binary(b) if matches!(b.subtype, BinarySubtype::Uuid | BinarySubtype::UuidOld) => {
            <[u8; 16]>::try_from(b.bytes).ok().map(IdKey::Uuid)
        }
        _ => None,
    }
}

impl<'a> From<IdKey<'a>> for Typed<'a> {
    fn from(key: IdKey<'a>) -> Typed<'a> {
        match key {
            IdKey::Oid(oid) => Typed::Oid(oid),
            IdKey::Str(s) => Typed::Str(s),
            IdKey::Int(n) => Typed::I64(n),
            IdKey::Uuid(bytes) => Typed::Uuid(bytes),
        }
    }
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, lowercase, written into `buf` without allocating.
fn uuid_text<'b>(bytes: &[u8; 16], buf: &'b mut [u8; 36]) -> &'b str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut at = 0;
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            buf[at] = b'-';
            at += 1;
        }
        buf[at] = HEX[usize::from(byte >> 4)];
        buf[at + 1] = HEX[usize::from(byte & 0x0f)];
        at += 2;
    }
    // Only ASCII was written, so this is never the empty default.
    std::str::from_utf8(buf).unwrap_or_default()
}

/// Follows the rest of a dotted path down embedded documents. A missing key, or an
/// intermediate value that is not a document, is a missing field.
fn descend<'a>(
    value: RawBsonRef<'a>,
    rest: &[String],
) -> Result<Option<RawBsonRef<'a>>, bson::raw::Error> {
    let mut value = value;
    for segment in rest {
        let RawBsonRef::Document(doc) = value else {
            return Ok(None);
        };
        match doc.get(segment)? {
            Some(v) => value = v,
            None => return Ok(None),
        }
    }
    Ok(Some(value))
}

/// One field of one document, converted and ready to append.
struct Cell<'a> {
    typed: Typed<'a>,
    raw: Option<String>,
}

impl Cell<'_> {
    /// Typed NULL, raw NULL: a missing field or a BSON null.
    const NULL: Cell<'static> = Cell {
        typed: Typed::Null,
        raw: None,
    };

    /// Bytes the cell adds to text and binary arrays (an upper bound for numbers as text).
    fn bytes(&self) -> usize {
        let typed = match &self.typed {
            Typed::Null | Typed::Bool(_) | Typed::Millis(_) => 0,
            Typed::Str(s) => s.len(),
            Typed::Text(s) => s.len(),
            Typed::Bytes(b) => b.len(),
            Typed::Oid(_) => 24,
            Typed::Uuid(_) => 36,
            // Integers, doubles and decimals, when a text column holds them.
            Typed::I64(_) | Typed::F64(_) | Typed::Decimal(_) => 48,
            Typed::Ids(ids) => ids
                .iter()
                .map(|e| match e {
                    IdElement::Null => 0,
                    IdElement::Raw(json) => json.len(),
                    IdElement::Id(IdKey::Str(s)) => s.len(),
                    IdElement::Id(_) => 36,
                })
                .sum(),
        };
        typed + self.raw.as_ref().map_or(0, String::len)
    }
}

/// A value for a typed column. Which variants a column takes follows from its kind (see
/// [`TypedBuilder::append`]).
enum Typed<'a> {
    Null,
    Str(&'a str),
    Oid(ObjectId),
    Text(String),
    I64(i64),
    F64(f64),
    Decimal(Decimal128),
    Bool(bool),
    Millis(i64),
    Bytes(&'a [u8]),
    Ids(Vec<IdElement<'a>>),
    Uuid([u8; 16]),
}

/// One element of an `IdList` array.
enum IdElement<'a> {
    Null,
    Id(IdKey<'a>),
    Raw(String),
}

/// Converts a present, possibly null value of a field.
fn convert<'a>(column: &Column, value: RawBsonRef<'a>) -> Result<Cell<'a>, Unreadable> {
    if let RawBsonRef::Null = value {
        return Ok(Cell::NULL);
    }
    Ok(match typed_value(column.kind, value)? {
        Some(typed) => Cell { typed, raw: None },
        // `_id` has no raw column: whatever it is, it is text, a key the way references
        // to it are (integers too), anything else its extended JSON.
        None if column.raw.is_none() => Cell {
            typed: match id_key(value) {
                Some(key) => key.into(),
                None => Typed::Text(ext_json(value)?),
            },
            raw: None,
        },
        None => Cell {
            typed: Typed::Null,
            raw: Some(ext_json(value)?),
        },
    })
}

/// The conversion rules: the typed value of a non-null BSON value for a kind, or `None` when
/// it does not fit (the value then goes to the raw column).
fn typed_value<'a>(
    kind: FieldKind,
    value: RawBsonRef<'a>,
) -> Result<Option<Typed<'a>>, Unreadable> {
    use RawBsonRef as B;
    let typed = match (kind, value) {
        (FieldKind::Text, B::String(s) | B::Symbol(s)) => Typed::Str(s),
        (FieldKind::Text, B::ObjectId(oid)) => Typed::Oid(oid),
        (FieldKind::Text, B::Binary(_)) => match id_key(value) {
            Some(IdKey::Uuid(bytes)) => Typed::Uuid(bytes),
            _ => return Ok(None),
        },

        (FieldKind::Int, B::Int32(v)) => Typed::I64(i64::from(v)),
        (FieldKind::Int, B::Int64(v)) => Typed::I64(v),
        (FieldKind::Int, B::Double(v)) => match exact_i64(v) {
            Some(v) => Typed::I64(v),
            None => return Ok(None),
        },

        (FieldKind::Float, B::Double(v)) => Typed::F64(v),
        (FieldKind::Float, B::Int32(v)) => Typed::F64(f64::from(v)),
        (FieldKind::Float, B::Int64(v)) => match exact_f64(v) {
            Some(v) => Typed::F64(v),
            None => return Ok(None),
        },

        // Decimal128 is kept as bson prints it ("12.50", "1.05E+3", "-0.001"): exact, and
        // accepted by PostgreSQL's NUMERIC input. NaN and infinities do not fit NUMERIC columns.
        (FieldKind::Decimal, B::Decimal128(d)) if decimal128_is_finite(d) => Typed::Decimal(d),
        (FieldKind::Decimal, B::Int32(v)) => Typed::I64(i64::from(v)),
        (FieldKind::Decimal, B::Int64(v)) => Typed::I64(v),
        // Rust prints the shortest text that reads back as the same double, never in exponent
        // form (1e21 is "1000000000000000000000").
        (FieldKind::Decimal, B::Double(v)) if v.is_finite() => Typed::F64(v),

        (FieldKind::Bool, B::Boolean(v)) => Typed::Bool(v),

        (FieldKind::Timestamp, B::DateTime(d)) => Typed::Millis(d.timestamp_millis()),

        (FieldKind::Binary, B::Binary(b)) => Typed::Bytes(b.bytes),

        (FieldKind::Json, _) => Typed::Text(ext_json(value)?),

        (FieldKind::IdList, B::Array(array)) => {
            let mut ids = Vec::new();
            for element in array {
                ids.push(id_element(element?)?);
            }
            Typed::Ids(ids)
        }

        _ => return Ok(None),
    };
    Ok(Some(typed))
}

/// An `IdList` element: an id, an embedded document's `_id`, null, or raw JSON otherwise.
fn id_element(value: RawBsonRef<'_>) -> Result<IdElement<'_>, Unreadable> {
    use RawBsonRef as B;
    Ok(match value {
        B::Null => IdElement::Null,
        B::Document(doc) => match doc.get(ID_FIELD)?.and_then(id_key) {
            Some(key) => IdElement::Id(key),
            None => IdElement::Raw(ext_json(value)?),
        },
        _ => match id_key(value) {
            Some(key) => IdElement::Id(key),
            None => IdElement::Raw(ext_json(value)?),
        },
    })
}

/// A double with an integral value inside the i64 range, as i64.
fn exact_i64(v: f64) -> Option<i64> {
    // -2^63 is exact as f64; 2^63 is the first value past i64::MAX.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    if v.fract() == 0.0 && (-LIMIT..LIMIT).contains(&v) {
        // Integral and in range: the cast is exact.
        #[allow(clippy::cast_possible_truncation)]
        Some(v as i64)
    } else {
        None
    }
}

/// An i64 that a double holds exactly (|v| <= 2^53), as f64.
fn exact_f64(v: i64) -> Option<f64> {
    const LIMIT: i64 = 1 << 53;
    if (-LIMIT..=LIMIT).contains(&v) {
        // Within 53 bits: the cast is exact.
        #[allow(clippy::cast_precision_loss)]
        Some(v as f64)
    } else {
        None
    }
}

fn decimal128_is_finite(d: Decimal128) -> bool {
    // The combination field (bits 6..2 of the most significant byte, stored last) is 11110 for
    // infinities and 11111 for NaNs; every finite value has a 0 in its first four bits.
    let high = d.bytes()[15];
    high & 0x78 != 0x78
}

/// The relaxed extended JSON text of a field's value (`{"$date": "..."}`, `42`,
/// `{"$oid": "..."}`); the field sits in the document, level 1.
fn ext_json(value: RawBsonRef<'_>) -> Result<String, Unreadable> {
    Ok(extjson::value(value, 1, MAX_DEPTH)?)
}

/// 24-char lowercase hex of an ObjectId, written into `buf` without allocating.
fn oid_hex(oid: ObjectId, buf: &mut [u8; 24]) -> &str {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (i, byte) in oid.bytes().iter().enumerate() {
        buf[2 * i] = HEX[usize::from(byte >> 4)];
        buf[2 * i + 1] = HEX[usize::from(byte & 0x0f)];
    }
    // Only ASCII hex digits were written, so this is never the empty default.
    std::str::from_utf8(buf).unwrap_or_default()
}

/// The builders of one staged field: its typed column and, except for `_id`, its raw column.
struct Column {
    path: String,
    kind: FieldKind,
    typed: TypedBuilder,
    raw: Option<StringBuilder>,
}

impl Column {
    fn new(field: &StagedField) -> Column {
        let raw = (field.path != ID_FIELD).then(StringBuilder::new);
        Column {
            path: field.path.clone(),
            kind: field.kind,
            typed: TypedBuilder::new(field.kind),
            raw,
        }
    }

    fn append(&mut self, cell: Cell<'_>) {
        self.typed.append(cell.typed);
        if let Some(raw) = &mut self.raw {
            raw.append_option(cell.raw);
        }
    }
}

enum TypedBuilder {
    Utf8(StringBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    Timestamp(TimestampMillisecondBuilder),
    Binary(BinaryBuilder),
    IdList(IdListBuilder),
}

impl TypedBuilder {
    fn new(kind: FieldKind) -> TypedBuilder {
        match kind {
            FieldKind::Text | FieldKind::Decimal | FieldKind::Json | FieldKind::Document => {
                TypedBuilder::Utf8(StringBuilder::new())
            }
            FieldKind::Int => TypedBuilder::Int(Int64Builder::new()),
            FieldKind::Float => TypedBuilder::Float(Float64Builder::new()),
            FieldKind::Bool => TypedBuilder::Bool(BooleanBuilder::new()),
            FieldKind::Timestamp => {
                TypedBuilder::Timestamp(TimestampMillisecondBuilder::new().with_timezone("UTC"))
            }
            FieldKind::Binary => TypedBuilder::Binary(BinaryBuilder::new()),
            FieldKind::IdList => TypedBuilder::IdList(IdListBuilder::new(kind.data_type())),
        }
    }

    /// Whether appending this value keeps the batch within Arrow's limits.
    fn fits(&self, value: &Typed<'_>) -> bool {
        match (self, value) {
            (TypedBuilder::IdList(b), Typed::Ids(ids)) => b.next_offset(ids.len()).is_some(),
            _ => true,
        }
    }

    fn append(&mut self, value: Typed<'_>) {
        use std::fmt::Write;
        match (self, value) {
            (TypedBuilder::Utf8(b), Typed::Str(s)) => b.append_value(s),
            (TypedBuilder::Utf8(b), Typed::Oid(oid)) => b.append_value(oid_hex(oid, &mut [0; 24])),
            (TypedBuilder::Utf8(b), Typed::Text(s)) => b.append_value(s),
            (TypedBuilder::Utf8(b), Typed::Uuid(bytes)) => {
                b.append_value(uuid_text(&bytes, &mut [0; 36]))
            }
            // Decimal text of numbers, written straight into the builder's buffer; its
            // `fmt::Write` never fails, and `append_value("")` ends the value.
            (TypedBuilder::Utf8(b), Typed::I64(v)) => {
                let _ = write!(b, "{v}");
                b.append_value("");
            }
            (TypedBuilder::Utf8(b), Typed::F64(v)) => {
                let _ = write!(b, "{v}");
                b.append_value("");
            }
            (TypedBuilder::Utf8(b), Typed::Decimal(d)) => {
                let _ = write!(b, "{d}");
                b.append_value("");
            }
            (TypedBuilder::Int(b), Typed::I64(v)) => b.append_value(v),
            (TypedBuilder::Float(b), Typed::F64(v)) => b.append_value(v),
            (TypedBuilder::Bool(b), Typed::Bool(v)) => b.append_value(v),
            (TypedBuilder::Timestamp(b), Typed::Millis(v)) => b.append_value(v),
            (TypedBuilder::Binary(b), Typed::Bytes(v)) => b.append_value(v),
            (TypedBuilder::IdList(b), Typed::Ids(ids)) => b.append(ids),
            (builder, value) => {
                // `typed_value` only produces values its kind's builder takes.
                debug_assert!(
                    matches!(value, Typed::Null),
                    "typed value does not match its column"
                );
                builder.append_null();
            }
        }
    }

    fn append_null(&mut self) {
        match self {
            TypedBuilder::Utf8(b) => b.append_null(),
            TypedBuilder::Int(b) => b.append_null(),
            TypedBuilder::Float(b) => b.append_null(),
            TypedBuilder::Bool(b) => b.append_null(),
            TypedBuilder::Timestamp(b) => b.append_null(),
            TypedBuilder::Binary(b) => b.append_null(),
            TypedBuilder::IdList(b) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            TypedBuilder::Utf8(b) => Arc::new(b.finish()),
            TypedBuilder::Int(b) => Arc::new(b.finish()),
            TypedBuilder::Float(b) => Arc::new(b.finish()),
            TypedBuilder::Bool(b) => Arc::new(b.finish()),
            TypedBuilder::Timestamp(b) => Arc::new(b.finish()),
            TypedBuilder::Binary(b) => Arc::new(b.finish()),
            TypedBuilder::IdList(b) => Arc::new(b.finish()),
        }
    }
}

/// Builds `List<Struct{id, raw}>` from offsets and two string columns.
struct IdListBuilder {
    item: FieldRef,
    struct_fields: Fields,
    offsets: Vec<i32>,
    valid: Vec<bool>,
    item_valid: Vec<bool>,
    id: StringBuilder,
    raw: StringBuilder,
}

impl IdListBuilder {
    fn new(data_type: DataType) -> IdListBuilder {
        let item = match data_type {
            DataType::List(item) => item,
            other => Arc::new(arrow::datatypes::Field::new("item", other, true)),
        };
        let struct_fields = match item.data_type() {
            DataType::Struct(fields) => fields.clone(),
            _ => Fields::empty(),
        };
        IdListBuilder {
            item,
            struct_fields,
            offsets: vec![0],
            valid: Vec::new(),
            item_valid: Vec::new(),
            id: StringBuilder::new(),
            raw: StringBuilder::new(),
        }
    }

    /// The end offset after appending `n` more elements, if it fits in i32.
    fn next_offset(&self, n: usize) -> Option<i32> {
        let last = self.offsets.last().copied().unwrap_or(0);
        i32::try_from(n).ok().and_then(|n| last.checked_add(n))
    }

    fn append(&mut self, ids: Vec<IdElement<'_>>) {
        use std::fmt::Write;
        for element in &ids {
            match element {
                IdElement::Null | IdElement::Raw(_) => self.id.append_null(),
                IdElement::Id(IdKey::Str(s)) => self.id.append_value(s),
                IdElement::Id(IdKey::Oid(oid)) => {
                    self.id.append_value(oid_hex(*oid, &mut [0; 24]));
                }
                IdElement::Id(IdKey::Uuid(bytes)) => {
                    self.id.append_value(uuid_text(bytes, &mut [0; 36]));
                }
                IdElement::Id(IdKey::Int(n)) => {
                    // The builder's `fmt::Write` never fails; `append_value("")` ends it.
                    let _ = write!(self.id, "{n}");
                    self.id.append_value("");
                }
            }
            match element {
                IdElement::Raw(json) => self.raw.append_value(json),
                _ => self.raw.append_null(),
            }
            self.item_valid.push(!matches!(element, IdElement::Null));
        }
        // `push` checked `fits` before appending anything.
        let end = self.next_offset(ids.len()).unwrap_or(i32::MAX);
        self.offsets.push(end);
        self.valid.push(true);
    }

    fn append_null(&mut self) {
        let last = self.offsets.last().copied().unwrap_or(0);
        self.offsets.push(last);
        self.valid.push(false);
    }

    fn finish(&mut self) -> ListArray {
        let items = StructArray::new(
            self.struct_fields.clone(),
            vec![Arc::new(self.id.finish()), Arc::new(self.raw.finish())],
            nulls(std::mem::take(&mut self.item_valid)),
        );
        let offsets = OffsetBuffer::new(std::mem::replace(&mut self.offsets, vec![0]).into());
        ListArray::new(
            self.item.clone(),
            offsets,
            Arc::new(items),
            nulls(std::mem::take(&mut self.valid)),
        )
    }
}

fn nulls(valid: Vec<bool>) -> Option<NullBuffer> {
    valid.contains(&false).then(|| NullBuffer::from(valid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Int64Type, TimestampMillisecondType};
    use arrow::util::pretty::pretty_format_batches;
    use bson::{doc, spec::BinarySubtype, Binary, RawDocumentBuf};
    use std::str::FromStr;

    fn field(path: &str, kind: FieldKind) -> StagedField {
        StagedField {
            path: path.into(),
            kind,
        }
    }

    fn raw(doc: bson::Document) -> RawDocumentBuf {
        RawDocumentBuf::from_document(&doc).unwrap()
    }

    /// The staged batch of valid documents, without the document error columns (checked
    /// empty here).
    fn convert_docs(fields: &[StagedField], docs: Vec<bson::Document>) -> RecordBatch {
        let batch = convert_all(fields, docs);
        let n = batch.num_columns();
        for c in [n - 2, n - 1] {
            assert_eq!(batch.column(c).null_count(), batch.num_rows());
        }
        batch.project(&(0..n - 2).collect::<Vec<_>>()).unwrap()
    }

    fn convert_all(fields: &[StagedField], docs: Vec<bson::Document>) -> RecordBatch {
        let mut builder = DocBatchBuilder::new(fields);
        for d in docs {
            builder.push(&raw(d)).unwrap();
        }
        builder.finish()
    }

    fn oid(hex: &str) -> ObjectId {
        ObjectId::parse_str(hex).unwrap()
    }

    fn date(ms: i64) -> bson::DateTime {
        bson::DateTime::from_millis(ms)
    }

    fn dec(s: &str) -> Decimal128 {
        Decimal128::from_str(s).unwrap()
    }

    fn assert_batch(batch: &RecordBatch, expected: &str) {
        let actual = pretty_format_batches(std::slice::from_ref(batch))
            .unwrap()
            .to_string();
        assert_eq!(actual.trim(), expected.trim(), "\nactual:\n{actual}\n");
    }

    #[test]
    fn batch_schema_is_the_staged_schema() {
        let fields = vec![
            field("_id", FieldKind::Text),
            field("creation_date", FieldKind::Timestamp),
            field("a.b", FieldKind::Int),
            field("targets", FieldKind::IdList),
            field("bytes", FieldKind::Binary),
            field("ok", FieldKind::Bool),
            field("f", FieldKind::Float),
            field("d", FieldKind::Decimal),
            field("j", FieldKind::Json),
        ];
        let batch = convert_all(&fields, vec![doc! {}, doc! { "targets": [1] }]);
        assert_eq!(batch.schema().as_ref(), &fields::staged_schema(&fields));
        assert_eq!(batch.num_rows(), 2);
    }

    #[test]
    fn ids_and_text() {
        let fields = vec![
            field("_id", FieldKind::Text),
            field("name", FieldKind::Text),
        ];
        let batch = convert_docs(
            &fields,
            vec![
                doc! { "_id": oid("5f1d7a3b9c8e4a0012345678"), "name": "Ana" },
                doc! { "_id": "custom-id", "name": oid("0123456789abcdefABCDEF01") },
                doc! { "_id": 42_i32, "name": bson::Bson::Symbol("sym".into()) },
                doc! { "_id": { "k": 1_i32 }, "name": date(0) },
                doc! { "name": bson::Bson::Null },
                doc! { "_id": bson::Bson::Null, "name": 7_i64 },
            ],
        );
        assert_batch(
            &batch,
            r#"
+--------------------------+--------------------------+----------------------------------+
| _id                      | name                     | name__raw                        |
+--------------------------+--------------------------+----------------------------------+
| 5f1d7a3b9c8e4a0012345678 | Ana                      |                                  |
| custom-id                | 0123456789abcdefabcdef01 |                                  |
| 42                       | sym                      |                                  |
| {"k":1}                  |                          | {"$date":"1970-01-01T00:00:00Z"} |
|                          |                          |                                  |
|                          |                          | 7                                |
+--------------------------+--------------------------+----------------------------------+"#,
        );
    }

    #[test]
    fn numbers() {
        let fields = vec![
            field("i", FieldKind::Int),
            field("f", FieldKind::Float),
            field("d", FieldKind::Decimal),
        ];
        let batch = convert_docs(
            &fields,
            vec![
                doc! { "i": 5_i32, "f": 1.5, "d": dec("12.50") },
                doc! { "i": 9_007_199_254_740_993_i64, "f": 9_007_199_254_740_993_i64, "d": 7_i32 },
                doc! { "i": 3.0, "f": 9_007_199_254_740_992_i64, "d": 0.1 },
                doc! { "i": 3.5, "f": 2_i32, "d": 1e21 },
                doc! { "i": "12", "f": "1.5", "d": dec("1.05E+3") },
                doc! { "i": dec("4"), "f": dec("4"), "d": dec("NaN") },
                doc! { "i": 1e19, "f": f64::NAN, "d": f64::INFINITY },
                doc! { "i": -0.0, "d": -12_345_678_901_234_i64 },
                doc! { "d": dec("-0.001") },
                doc! { "d": dec("-Infinity") },
            ],
        );
        assert_batch(
            &batch,
            r#"
+------------------+------------------------+--------------------+------------------------+------------------------+--------------------------------+
| i                | i__raw                 | f                  | f__raw                 | d                      | d__raw                         |
+------------------+------------------------+--------------------+------------------------+------------------------+--------------------------------+
| 5                |                        | 1.5                |                        | 12.50                  |                                |
| 9007199254740993 |                        |                    | 9007199254740993       | 7                      |                                |
| 3                |                        | 9007199254740992.0 |                        | 0.1                    |                                |
|                  | 3.5                    | 2.0                |                        | 1000000000000000000000 |                                |
|                  | "12"                   |                    | "1.5"                  | 1.05E+3                |                                |
|                  | {"$numberDecimal":"4"} |                    | {"$numberDecimal":"4"} |                        | {"$numberDecimal":"NaN"}       |
|                  | 1e+19                  | NaN                |                        |                        | {"$numberDouble":"Infinity"}   |
| 0                |                        |                    |                        | -12345678901234        |                                |
|                  |                        |                    |                        | -0.001                 |                                |
|                  |                        |                    |                        |                        | {"$numberDecimal":"-Infinity"} |
+------------------+------------------------+--------------------+------------------------+------------------------+--------------------------------+"#,
        );
    }

    #[test]
    fn bool_dates_binary_json() {
        let fields = vec![
            field("ok", FieldKind::Bool),
            field("at", FieldKind::Timestamp),
            field("blob", FieldKind::Binary),
            field("extra", FieldKind::Json),
        ];
        let blob = Binary {
            subtype: BinarySubtype::Generic,
            bytes: vec![0xde, 0xad],
        };
        let uuid = Binary {
            subtype: BinarySubtype::Uuid,
            bytes: vec![1; 16],
        };
        let batch = convert_docs(
            &fields,
            vec![
                doc! { "ok": true, "at": date(1_600_000_000_123), "blob": blob, "extra": { "a": [1_i32, "x"] } },
                doc! { "ok": 1_i32, "at": "2020-09-13", "blob": uuid, "extra": oid("5f1d7a3b9c8e4a0012345678") },
                doc! { "ok": "true", "at": 1_600_000_000_i64, "blob": "dead", "extra": bson::Bson::Null },
            ],
        );
        let ok = batch.column(0).as_boolean();
        assert!(ok.value(0) && ok.is_null(1) && ok.is_null(2));
        assert_eq!(batch.column(1).as_string::<i32>().value(1), "1");
        let at = batch.column(2).as_primitive::<TimestampMillisecondType>();
        assert_eq!(at.value(0), 1_600_000_000_123);
        assert!(at.is_null(1) && at.is_null(2));
        assert_eq!(
            batch.column(3).as_string::<i32>().value(1),
            r#""2020-09-13""#
        );
        assert_eq!(batch.column(3).as_string::<i32>().value(2), "1600000000");
        let blob = batch.column(4).as_binary::<i32>();
        assert_eq!(blob.value(0), [0xde, 0xad]);
        assert_eq!(blob.value(1), [1; 16]);
        assert!(blob.is_null(2));
        assert_eq!(batch.column(5).as_string::<i32>().value(2), r#""dead""#);
        let extra = batch.column(6).as_string::<i32>();
        assert_eq!(extra.value(0), r#"{"a":[1,"x"]}"#);
        assert_eq!(extra.value(1), r#"{"$oid":"5f1d7a3b9c8e4a0012345678"}"#);
        assert!(extra.is_null(2));
        assert_eq!(
            batch.column(7).null_count(),
            3,
            "Json values never go to raw"
        );
    }

    #[test]
    fn nested_paths_and_missing_intermediates() {
        let fields = vec![
            field("profile.age", FieldKind::Int),
            field("profile.name.first", FieldKind::Text),
            field("profile", FieldKind::Json),
        ];
        let batch = convert_docs(
            &fields,
            vec![
                doc! { "profile": { "age": 30_i32, "name": { "first": "Ana" } } },
                doc! { "profile": { "name": "flat" } },
                doc! { "profile": "not a document" },
                doc! { "other": 1_i32 },
                doc! { "profile": { "age": "thirty" } },
            ],
        );
        assert_batch(
            &batch,
            r#"
+-------------+------------------+--------------------+-------------------------+-----------------------------------+--------------+
| profile.age | profile.age__raw | profile.name.first | profile.name.first__raw | profile                           | profile__raw |
+-------------+------------------+--------------------+-------------------------+-----------------------------------+--------------+
| 30          |                  | Ana                |                         | {"age":30,"name":{"first":"Ana"}} |              |
|             |                  |                    |                         | {"name":"flat"}                   |              |
|             |                  |                    |                         | "not a document"                  |              |
|             |                  |                    |                         |                                   |              |
|             | "thirty"         |                    |                         | {"age":"thirty"}                  |              |
+-------------+------------------+--------------------+-------------------------+-----------------------------------+--------------+"#,
        );
    }

    #[test]
    fn id_lists() {
        let fields = vec![field("targets", FieldKind::IdList)];
        let a = oid("5f1d7a3b9c8e4a00000000aa");
        let b = oid("5f1d7a3b9c8e4a00000000bb");
        let batch = convert_docs(
            &fields,
            vec![
                doc! { "targets": [a, "s1", bson::Bson::Null, b] },
                doc! { "targets": [{ "_id": a, "w": 1_i32 }, { "_id": "s2" }, { "w": 2_i32 }, { "_id": 3_i32 }] },
                doc! { "targets": [5_i32, [a], date(0)] },
                doc! { "targets": [] },
                doc! { "targets": "not an array" },
                doc! { "targets": bson::Bson::Null },
                doc! {},
            ],
        );
        assert_batch(
            &batch,
            r#"
+---------------------------------------------------------------------------------------------------------------------+----------------+
| targets                                                                                                             | targets__raw   |
+---------------------------------------------------------------------------------------------------------------------+----------------+
| [{id: 5f1d7a3b9c8e4a00000000aa, raw: }, {id: s1, raw: }, , {id: 5f1d7a3b9c8e4a00000000bb, raw: }]                   |                |
| [{id: 5f1d7a3b9c8e4a00000000aa, raw: }, {id: s2, raw: }, {id: , raw: {"w":2}}, {id: 3, raw: }]                      |                |
| [{id: 5, raw: }, {id: , raw: [{"$oid":"5f1d7a3b9c8e4a00000000aa"}]}, {id: , raw: {"$date":"1970-01-01T00:00:00Z"}}] |                |
| []                                                                                                                  |                |
|                                                                                                                     | "not an array" |
|                                                                                                                     |                |
|                                                                                                                     |                |
+---------------------------------------------------------------------------------------------------------------------+----------------+"#,
        );
        let list = batch.column(0).as_list::<i32>();
        assert!(list.is_valid(3) && list.is_null(4) && list.is_null(5) && list.is_null(6));
        let first = list.value(0);
        let first = first.as_struct();
        assert!(first.is_null(2), "a BSON null element is a null struct");
        assert_eq!(
            first.column(0).as_string::<i32>().value(3),
            "5f1d7a3b9c8e4a00000000bb"
        );
    }

    /// Issue 9.8: a UUID `_id` was staged as its extended JSON and an integer reference was
    /// refused, so relationships to such documents could never load.
    #[test]
    fn uuid_and_integer_ids_are_keys_in_ids_and_references_alike() {
        let fields = vec![
            field("_id", FieldKind::Text),
            field("owner", FieldKind::Text),
            field("targets", FieldKind::IdList),
        ];
        let uuid = |subtype, bytes: Vec<u8>| Binary { subtype, bytes };
        let bytes: Vec<u8> = (0..16).map(|i| i * 17).collect();
        let text = "00112233-4455-6677-8899-aabbccddeeff";
        let batch = convert_docs(
            &fields,
            vec![
                doc! {
                    "_id": uuid(BinarySubtype::Uuid, bytes.clone()),
                    "owner": uuid(BinarySubtype::UuidOld, bytes.clone()),
                    "targets": [uuid(BinarySubtype::Uuid, bytes.clone()), 12_345_i64, { "_id": 7_i32 }],
                },
                doc! {
                    "_id": 12_345_i64,
                    "owner": 7_i32,
                    "targets": [uuid(BinarySubtype::Generic, bytes.clone()), uuid(BinarySubtype::Uuid, vec![1; 15])],
                },
                doc! { "_id": uuid(BinarySubtype::UuidOld, bytes.clone()), "owner": uuid(BinarySubtype::Generic, bytes.clone()) },
            ],
        );
        let ids = batch.column(0).as_string::<i32>();
        assert_eq!(
            (ids.value(0), ids.value(1), ids.value(2)),
            (text, "12345", text)
        );
        let owner = batch.column(1).as_string::<i32>();
        assert_eq!(owner.value(0), text);
        // An integer reference is coerced (and counted) in transform, like any number into
        // text; a generic binary is no key.
        let owner_raw = batch.column(2).as_string::<i32>();
        assert_eq!(owner_raw.value(1), "7");
        assert!(owner.is_null(2) && owner_raw.value(2).contains("$binary"));
        let targets = batch.column(3).as_list::<i32>();
        let first = targets.value(0);
        let first = first.as_struct().column(0).as_string::<i32>().clone();
        assert_eq!(
            (first.value(0), first.value(1), first.value(2)),
            (text, "12345", "7")
        );
        let second = targets.value(1);
        let second = second.as_struct();
        assert!(second.column(0).is_null(0) && second.column(0).is_null(1));
        assert!(second
            .column(1)
            .as_string::<i32>()
            .value(1)
            .contains("$binary"));
    }

    #[test]
    fn a_field_with_different_types_in_different_docs() {
        let fields = vec![field("age", FieldKind::Int)];
        let batch = convert_docs(
            &fields,
            vec![
                doc! { "age": 30_i32 },
                doc! { "age": "30" },
                doc! { "age": 31_i64 },
                doc! { "age": 29.0 },
            ],
        );
        let age = batch.column(0).as_primitive::<Int64Type>();
        assert_eq!(
            age.iter().collect::<Vec<_>>(),
            [Some(30), None, Some(31), Some(29)]
        );
        assert_eq!(batch.column(1).as_string::<i32>().value(1), r#""30""#);
    }

    /// A document as the SmartDiet app writes it, every BSON type it uses in one place.
    #[test]
    fn a_realistic_user_document() {
        let fields = vec![
            field("_id", FieldKind::Text),
            field("creation_date", FieldKind::Timestamp),
            field("update_date", FieldKind::Timestamp),
            field("firstname", FieldKind::Text),
            field("company", FieldKind::Text),
            field("weight", FieldKind::Float),
            field("height", FieldKind::Int),
            field("budget", FieldKind::Decimal),
            field("active", FieldKind::Bool),
            field("address.city", FieldKind::Text),
            field("registered_events", FieldKind::IdList),
            field("health_targets", FieldKind::IdList),
            field("missing", FieldKind::Text),
        ];
        let user = doc! {
            "_id": oid("5f1d7a3b9c8e4a0012345678"),
            "firstname": "Zoé",
            "company": oid("5f1d7a3b9c8e4a00000000cc"),
            "creation_date": date(1_577_836_800_000),
            "update_date": bson::Bson::Null,
            "weight": 72_i32,
            "height": 180_i64,
            "budget": dec("12.50"),
            "active": false,
            "address": { "city": "Lyon", "zip": "69001" },
            "registered_events": [oid("5f1d7a3b9c8e4a00000000e1"), bson::Bson::Null],
            "health_targets": [{ "_id": oid("5f1d7a3b9c8e4a00000000f1"), "value": 1.5 }, 3_i32],
            "picture": Binary { subtype: BinarySubtype::Generic, bytes: vec![1, 2] },
        };
        let batch = convert_docs(&fields, vec![user]);
        // arrow prints "UTC" timestamps only with its chrono-tz feature: check the dates as
        // values and print the rest.
        let created = batch.column(1).as_primitive::<TimestampMillisecondType>();
        assert_eq!(created.value(0), 1_577_836_800_000);
        assert!(batch.column(3).is_null(0), "a null update_date is NULL");
        assert!(
            batch.column(4).is_null(0),
            "a null update_date has no raw value"
        );
        let rest: Vec<usize> = (5..batch.num_columns()).collect();
        assert_batch(
            &batch.project(&rest).unwrap(),
            r#"
+-----------+----------------+--------------------------+--------------+--------+-------------+--------+-------------+--------+-------------+--------+-------------+--------------+-------------------+-------------------------------------------+------------------------+---------------------------------------------------------+---------------------+---------+--------------+
| firstname | firstname__raw | company                  | company__raw | weight | weight__raw | height | height__raw | budget | budget__raw | active | active__raw | address.city | address.city__raw | registered_events                         | registered_events__raw | health_targets                                          | health_targets__raw | missing | missing__raw |
+-----------+----------------+--------------------------+--------------+--------+-------------+--------+-------------+--------+-------------+--------+-------------+--------------+-------------------+-------------------------------------------+------------------------+---------------------------------------------------------+---------------------+---------+--------------+
| Zoé       |                | 5f1d7a3b9c8e4a00000000cc |              | 72.0   |             | 180    |             | 12.50  |             | false  |             | Lyon         |                   | [{id: 5f1d7a3b9c8e4a00000000e1, raw: }, ] |                        | [{id: 5f1d7a3b9c8e4a00000000f1, raw: }, {id: 3, raw: }] |                     |         |              |
+-----------+----------------+--------------------------+--------------+--------+-------------+--------+-------------+--------+-------------+--------+-------------+--------------+-------------------+-------------------------------------------+------------------------+---------------------------------------------------------+---------------------+---------+--------------+"#,
        );
    }

    #[test]
    fn finish_resets_the_builder() {
        let fields = vec![
            field("_id", FieldKind::Text),
            field("targets", FieldKind::IdList),
        ];
        let mut builder = DocBatchBuilder::new(&fields);
        builder
            .push(&raw(doc! { "_id": "a", "targets": ["x", "y"] }))
            .unwrap();
        assert_eq!(builder.len(), 1);
        assert_eq!(builder.finish().num_rows(), 1);
        assert!(builder.is_empty());
        builder
            .push(&raw(doc! { "_id": "b", "targets": ["z"] }))
            .unwrap();
        let batch = builder.finish();
        assert_eq!(batch.num_rows(), 1);
        let list = batch.column(1).as_list::<i32>();
        assert_eq!(list.value(0).len(), 1);
    }

    /// A malformed document used to stop the whole extract (issue 9.6): it is now a refused
    /// row naming its field, with its `_id` and its bytes, and the next document goes on.
    #[test]
    fn a_malformed_document_is_staged_as_refused_with_its_id_field_and_bytes() {
        let fields = vec![
            field("_id", FieldKind::Text),
            field("name", FieldKind::Text),
        ];
        let mut bytes = raw(doc! { "_id": "doc-1", "name": "Ana" }).into_bytes();
        // Break the string length of `name` (the last element): claim 100 bytes.
        let at = bytes.len() - 1 - 4 - 4;
        bytes[at..at + 4].copy_from_slice(&100_i32.to_le_bytes());
        let doc = RawDocument::from_bytes(&bytes).unwrap();
        let mut builder = DocBatchBuilder::new(&fields);
        builder.push(doc).unwrap();
        builder
            .push(&raw(doc! { "_id": "doc-2", "name": "Bo" }))
            .unwrap();
        let batch = builder.finish();
        assert_eq!(batch.num_rows(), 2);
        let ids = batch.column(0).as_string::<i32>();
        assert_eq!((ids.value(0), ids.value(1)), ("doc-1", "doc-2"));
        let names = batch.column(1).as_string::<i32>();
        assert!(names.is_null(0) && batch.column(2).is_null(0));
        assert_eq!(names.value(1), "Bo");
        let reasons = batch
            .column_by_name(fields::DOCUMENT_ERROR)
            .unwrap()
            .as_string::<i32>();
        assert!(
            reasons
                .value(0)
                .starts_with("malformed BSON at field `name`"),
            "{}",
            reasons.value(0)
        );
        assert!(reasons.is_null(1));
        let stored = batch
            .column_by_name(fields::DOCUMENT_BSON)
            .unwrap()
            .as_binary::<i32>();
        assert_eq!(stored.value(0), &bytes[..]);
        assert!(stored.is_null(1));
    }

    #[test]
    fn a_kept_document_is_staged_whole_or_with_why_it_cannot_be() {
        let fields = vec![
            field("_id", FieldKind::Text),
            field("name", FieldKind::Text),
            field(fields::KEPT_DOCUMENT, FieldKind::Document),
        ];
        let schema = fields::staged_schema(&fields);
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "_id",
                "name",
                "name__raw",
                fields::KEPT_DOCUMENT,
                fields::KEPT_DOCUMENT_ERROR,
                fields::DOCUMENT_ERROR,
                fields::DOCUMENT_BSON
            ]
        );
        let good = raw(doc! { "_id": 7, "name": "Ana", "when": date(1_500), "unmapped": [1.5] });
        // Invalid UTF-8 in a field no column reads: the row's fields load, its JSON cannot.
        let mut broken = raw(doc! { "_id": "b", "name": "Bo", "other": "Xo" }).into_bytes();
        let at = broken.windows(2).position(|w| w == b"Xo").unwrap();
        broken[at] = 0xff;
        let mut builder = DocBatchBuilder::new(&fields);
        builder.push(&good).unwrap();
        builder
            .push(RawDocument::from_bytes(&broken).unwrap())
            .unwrap();
        let batch = builder.finish();
        let text = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_string::<i32>()
                .clone()
        };
        assert_eq!(
            text(fields::KEPT_DOCUMENT).value(0),
            r#"{"_id":7,"name":"Ana","when":{"$date":"1970-01-01T00:00:01.500Z"},"unmapped":[1.5]}"#
        );
        assert!(text(fields::KEPT_DOCUMENT).is_null(1));
        assert!(text(fields::KEPT_DOCUMENT_ERROR).is_null(0));
        let why = text(fields::KEPT_DOCUMENT_ERROR).value(1).to_string();
        assert!(
            why.contains("field `other`") && why.contains("utf-8"),
            "{why}"
        );
        assert_eq!(text("name").value(1), "Bo", "the fields still load");
        assert!(
            text(fields::DOCUMENT_ERROR).is_null(1),
            "not refused as a whole"
        );
        let bytes = batch
            .column_by_name(fields::DOCUMENT_BSON)
            .unwrap()
            .as_binary::<i32>();
        assert!(bytes.is_null(0));
        assert_eq!(bytes.value(1), &broken[..]);
    }

    /// Issue 9.6: one invalid UTF-8 string stopped the whole extract.
    #[test]
    fn invalid_utf8_in_a_read_field_refuses_only_that_document() {
        let fields = vec![
            field("_id", FieldKind::Text),
            field("name", FieldKind::Text),
            field("extra", FieldKind::Json),
        ];
        let utf8_breaking = |d: bson::Document, text: &str| {
            let mut bytes = raw(d).into_bytes();
            let at = bytes
                .windows(text.len())
                .position(|w| w == text.as_bytes())
                .unwrap();
            bytes[at] = 0xff;
            bytes
        };
        let in_name = utf8_breaking(doc! { "_id": "a", "name": "Xna" }, "Xna");
        let nested = utf8_breaking(doc! { "_id": "b", "extra": { "k": ["Xx"] } }, "Xx");
        let unread = utf8_breaking(doc! { "_id": "c", "other": "Xo" }, "Xo");
        let mut builder = DocBatchBuilder::new(&fields);
        for bytes in [&in_name, &nested, &unread] {
            builder
                .push(RawDocument::from_bytes(bytes).unwrap())
                .unwrap();
        }
        let batch = builder.finish();
        let reasons = batch
            .column_by_name(fields::DOCUMENT_ERROR)
            .unwrap()
            .as_string::<i32>();
        assert!(
            reasons.value(0).contains("field `name`"),
            "{}",
            reasons.value(0)
        );
        assert!(reasons.value(0).contains("utf-8"), "{}", reasons.value(0));
        assert!(
            reasons.value(1).contains("field `extra`"),
            "{}",
            reasons.value(1)
        );
        assert!(
            reasons.is_null(2),
            "a field the config does not read is not looked at"
        );
        assert_eq!(batch.column(0).as_string::<i32>().value(1), "b");
    }

    /// `{"a": {"a": ... {}}}` with `levels` documents below the top one, built as bytes
    /// (building it with the bson crate would itself recurse).
    fn nested_bytes(key: &str, levels: usize) -> Vec<u8> {
        let mut out = Vec::new();
        // Per level: length, element type, key and its NUL, and the terminating NUL.
        let per_level = 4 + 1 + key.len() + 1 + 1;
        for level in 0..=levels {
            let inner = levels - level;
            let len = 5 + inner * per_level;
            out.extend(i32::try_from(len).unwrap().to_le_bytes());
            if inner > 0 {
                out.push(0x03);
                out.extend(key.as_bytes());
                out.push(0);
            }
        }
        out.extend(std::iter::repeat_n(0, levels + 1));
        out
    }

    /// Issue 9.9: nesting of about 5000 levels overflowed the stack (a crash, not an error).
    #[test]
    fn nesting_deeper_than_mongodb_allows_refuses_the_document() {
        let fields = vec![field("_id", FieldKind::Text), field("a", FieldKind::Json)];
        let mut builder = DocBatchBuilder::new(&fields);
        for levels in [5_000, 100, 99] {
            let bytes = nested_bytes("a", levels);
            builder
                .push(RawDocument::from_bytes(&bytes).unwrap())
                .unwrap();
        }
        // A value into a text column goes to the raw column as JSON: bounded the same way.
        let text = vec![field("a", FieldKind::Text)];
        let mut text_builder = DocBatchBuilder::new(&text);
        let bytes = nested_bytes("a", 5_000);
        text_builder
            .push(RawDocument::from_bytes(&bytes).unwrap())
            .unwrap();
        for batch in [builder.finish(), text_builder.finish()] {
            let reasons = batch
                .column_by_name(fields::DOCUMENT_ERROR)
                .unwrap()
                .as_string::<i32>()
                .clone();
            assert_eq!(
                reasons.value(0),
                "field `a` nests deeper than 100 levels (MongoDB's limit)"
            );
            if batch.num_rows() == 3 {
                // The top document plus 100 levels is 101: refused; 100 is MongoDB's limit.
                assert!(reasons.is_valid(1), "101 levels");
                assert!(reasons.is_null(2), "100 levels");
                assert!(batch
                    .column(1)
                    .as_string::<i32>()
                    .value(2)
                    .starts_with(r#"{"a":{"a":"#));
            }
        }
    }

    /// Issue 9.10: text batches had no byte cap, and Arrow panics once a batch's text passes
    /// its 32-bit offsets (2 GiB). The builder says when it is full, and refuses (without
    /// appending) a document that would pass the limit, instead of panicking.
    #[test]
    fn batches_are_capped_by_bytes() {
        let fields = vec![field("_id", FieldKind::Text), field("s", FieldKind::Text)];
        let big = "x".repeat(1000);
        let mut builder = DocBatchBuilder::new(&fields).with_byte_limit(4_000);
        for i in 0..3 {
            builder
                .push(&raw(doc! { "_id": format!("d{i}"), "s": big.as_str() }))
                .unwrap();
        }
        assert!(builder.is_full(), "{} bytes", builder.bytes());
        let err = builder
            .push(&raw(doc! { "_id": "d3", "s": big.as_str() }))
            .unwrap_err();
        assert!(matches!(err, ConvertError::BatchFull { .. }), "{err}");
        assert!(err.to_string().contains("d3"), "{err}");
        assert_eq!(builder.len(), 3, "nothing appended");
        assert_eq!(builder.finish().num_rows(), 3);
        assert_eq!(builder.bytes(), 0);
        assert!(!builder.is_full());
        builder
            .push(&raw(doc! { "_id": "d3", "s": big.as_str() }))
            .unwrap();
        assert_eq!(builder.finish().num_rows(), 1);

        let mut normal = DocBatchBuilder::new(&fields);
        normal
            .push(&raw(doc! { "_id": "a", "s": big.as_str() }))
            .unwrap();
        assert!(!normal.is_full());
        assert!(normal.bytes() >= 1001);
    }

    #[test]
    fn a_repeated_key_keeps_the_first_value() {
        let mut doc = RawDocumentBuf::new();
        doc.append("n", 1_i32);
        doc.append("n", 2_i32);
        let batch = {
            let mut builder = DocBatchBuilder::new(&[field("n", FieldKind::Int)]);
            builder.push(&doc).unwrap();
            builder.finish()
        };
        assert_eq!(batch.column(0).as_primitive::<Int64Type>().value(0), 1);
    }

    #[test]
    fn window_is_inclusive_on_either_date() {
        let since = DateTime::from_timestamp_millis(1_000).unwrap();
        let d = |created: Option<i64>, updated: Option<i64>| {
            let mut doc = doc! { "_id": 1_i32 };
            if let Some(ms) = created {
                doc.insert("creation_date", date(ms));
            }
            if let Some(ms) = updated {
                doc.insert("update_date", date(ms));
            }
            raw(doc)
        };
        assert!(
            in_window(&d(Some(1_000), None), Some(since)),
            "equal creation_date is in"
        );
        assert!(
            in_window(&d(Some(0), Some(1_000)), Some(since)),
            "equal update_date is in"
        );
        assert!(in_window(&d(None, Some(1_001)), Some(since)));
        assert!(!in_window(&d(Some(999), Some(999)), Some(since)));
        assert!(!in_window(&d(None, None), Some(since)));
        assert!(in_window(&d(None, None), None));
        let as_string = raw(doc! { "creation_date": "1970-01-01T00:00:02Z" });
        assert!(
            !in_window(&as_string, Some(since)),
            "only BSON dates compare, as in the query"
        );
    }
}
