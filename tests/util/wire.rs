//! A MongoDB wire-protocol server for the live-path tests (`tests/mongo_live.rs`), and a tap
//! that sits between the driver and any server (this one or a real `mongod`), records every
//! command the driver sends and can close a connection mid-cursor.
//!
//! No `mongod` can be installed on the project's machines. The official driver 3.x speaks only
//! OP_MSG, so the server does too, and implements what the extractor needs: the handshake
//! (`hello` and the legacy `isMaster`), `ping`, `buildInfo`, `find` with the filter subset the
//! extractor sends (`{}`, equality, `$eq $gt $gte $lt $lte $in`, `$or`, `$and`, with MongoDB's type
//! bracketing: a date only compares with dates) and inclusion projections (top-level and
//! dotted), `getMore`, `killCursors` and `endSessions`. Any other command is answered
//! `{ok: 0, code: 59}` and remembered, so a new command from the driver fails a test instead of
//! going unnoticed; an operator outside the subset is an error reply, never a silent mismatch.
//!
//! Blocking sockets, one thread per connection: the tests drive the `etl` binary, a separate
//! process, so the server must run beside them, not inside their runtime.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bson::{doc, Bson, Document};

const OP_MSG: i32 = 2013;
const HEADER_LEN: usize = 16;
/// What a real server announces; a reply batch stops before it would pass this size.
const MAX_BSON_OBJECT_SIZE: usize = 16 * 1024 * 1024;
const MAX_BSON_OBJECT_SIZE_I32: i32 = 16 * 1024 * 1024;
const MAX_MESSAGE_SIZE: usize = 48_000_000;
/// MongoDB 7.0. The driver 3.x refuses servers below wire version 9 (MongoDB 4.4).
const MAX_WIRE_VERSION: i32 = 21;
/// A `find` without `batchSize` returns this many documents first, as `mongod` does.
const DEFAULT_FIRST_BATCH: usize = 101;
/// OP_MSG flag bits.
const CHECKSUM_PRESENT: u32 = 1;
const MORE_TO_COME: u32 = 1 << 1;

// ---- framing --------------------------------------------------------------------------------

/// One whole message (header included), or `None` when the peer closed the stream between
/// messages.
pub fn read_frame(stream: &mut impl Read) -> io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match stream.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let total = usize::try_from(i32::from_le_bytes(len))
        .ok()
        .filter(|n| (HEADER_LEN..=MAX_MESSAGE_SIZE).contains(n))
        .ok_or_else(|| invalid(format!("message length {len:?} out of range")))?;
    let mut frame = vec![0u8; total];
    frame[..4].copy_from_slice(&len);
    stream.read_exact(&mut frame[4..])?;
    Ok(Some(frame))
}

/// A request read from a frame: its id, flags and command (document sequences folded into
/// the body as arrays, the way the server sees them).
pub struct Request {
    pub request_id: i32,
    pub flags: u32,
    pub body: Document,
}

pub fn parse_op_msg(frame: &[u8]) -> io::Result<Request> {
    let int = |at: usize| -> io::Result<i32> {
        frame
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(i32::from_le_bytes)
            .ok_or_else(|| invalid("truncated message".into()))
    };
    let op_code = int(12)?;
    if op_code != OP_MSG {
        return Err(invalid(format!("op code {op_code}: only OP_MSG is served")));
    }
    let flags = u32::from_le_bytes(int(16)?.to_le_bytes());
    let end = if flags & CHECKSUM_PRESENT != 0 {
        frame.len().saturating_sub(4)
    } else {
        frame.len()
    };
    let mut at = HEADER_LEN + 4;
    let mut body = None;
    let mut sequences = Vec::new();
    while at < end {
        let kind = frame[at];
        at += 1;
        let size = usize::try_from(int(at)?).map_err(|_| invalid("negative size".into()))?;
        let section = frame
            .get(at..at + size)
            .filter(|_| at + size <= end)
            .ok_or_else(|| invalid("section past the end".into()))?;
        match kind {
            0 => body = Some(Document::from_reader(section).map_err(|e| invalid(e.to_string()))?),
            1 => sequences.push(document_sequence(section.get(4..).unwrap_or_default())?),
            other => return Err(invalid(format!("section kind {other}"))),
        }
        at += size;
    }
    let mut body = body.ok_or_else(|| invalid("no body section".into()))?;
    for (name, docs) in sequences {
        body.insert(
            name,
            docs.into_iter().map(Bson::Document).collect::<Vec<_>>(),
        );
    }
    Ok(Request {
        request_id: int(4)?,
        flags,
        body,
    })
}

/// A kind-1 section after its size: a C-string identifier, then documents.
fn document_sequence(mut bytes: &[u8]) -> io::Result<(String, Vec<Document>)> {
    let nul = bytes
        .iter()
        .position(|b| *b == 0)
        .ok_or_else(|| invalid("unterminated identifier".into()))?;
    let name = String::from_utf8_lossy(&bytes[..nul]).into_owned();
    bytes = &bytes[nul + 1..];
    let mut docs = Vec::new();
    while !bytes.is_empty() {
        let doc = Document::from_reader(&mut bytes).map_err(|e| invalid(e.to_string()))?;
        docs.push(doc);
    }
    Ok((name, docs))
}

fn write_reply(
    stream: &mut impl Write,
    request_id: i32,
    response_to: i32,
    body: &Document,
) -> io::Result<()> {
    let bytes = bson::to_vec(body).map_err(|e| invalid(e.to_string()))?;
    let total = HEADER_LEN + 4 + 1 + bytes.len();
    let total = i32::try_from(total).map_err(|_| invalid("reply too large".into()))?;
    let mut out = Vec::new();
    for field in [total, request_id, response_to, OP_MSG, 0] {
        out.extend_from_slice(&field.to_le_bytes());
    }
    out.push(0);
    out.extend_from_slice(&bytes);
    stream.write_all(&out)?;
    stream.flush()
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// The command's name: the body's first key.
pub fn command_name(body: &Document) -> &str {
    body.keys().next().map_or("", String::as_str)
}

// ---- the server -----------------------------------------------------------------------------

/// A MongoDB server on a loopback port, holding its collections in memory. It lives until the
/// test process ends (its threads block on the listener and on the driver's sockets).
pub struct FakeMongo {
    addr: SocketAddr,
    store: Arc<Mutex<Store>>,
}

#[derive(Default)]
struct Store {
    /// `(database, collection)` -> documents in insertion (natural) order.
    collections: BTreeMap<(String, String), Vec<Document>>,
    cursors: HashMap<i64, Cursor>,
    last_cursor: i64,
    /// Names of the commands answered "no such command".
    unknown: Vec<String>,
}

struct Cursor {
    db: String,
    collection: String,
    remaining: VecDeque<Document>,
}

impl FakeMongo {
    pub fn start() -> FakeMongo {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let store = Arc::new(Mutex::new(Store::default()));
        let shared = store.clone();
        std::thread::spawn(move || {
            let connections = AtomicI32::new(0);
            for stream in listener.incoming().flatten() {
                let store = shared.clone();
                let id = connections.fetch_add(1, Ordering::SeqCst) + 1;
                std::thread::spawn(move || serve_connection(stream, id, &store));
            }
        });
        FakeMongo { addr, store }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn insert(&self, db: &str, collection: &str, docs: &[Document]) {
        lock(&self.store)
            .collections
            .entry((db.to_string(), collection.to_string()))
            .or_default()
            .extend(docs.iter().cloned());
    }

    /// `$set` on the document with this `_id`; false when there is none.
    pub fn set_fields(&self, db: &str, collection: &str, id: &Bson, set: &Document) -> bool {
        let mut store = lock(&self.store);
        let key = (db.to_string(), collection.to_string());
        let found = store
            .collections
            .get_mut(&key)
            .and_then(|docs| docs.iter_mut().find(|d| d.get("_id") == Some(id)));
        match found {
            Some(doc) => {
                doc.extend(set.clone());
                true
            }
            None => false,
        }
    }

    /// The commands the server did not know, in the order they came.
    pub fn unknown_commands(&self) -> Vec<String> {
        lock(&self.store).unknown.clone()
    }

    /// Cursors still open (neither exhausted nor killed).
    pub fn open_cursors(&self) -> usize {
        lock(&self.store).cursors.len()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread must not hide the state from the others.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn serve_connection(mut stream: TcpStream, connection_id: i32, store: &Mutex<Store>) {
    let mut reply_id = 0;
    while let Ok(Some(frame)) = read_frame(&mut stream) {
        let reply = match parse_op_msg(&frame) {
            Ok(request) => {
                let reply = lock(store).command(&request.body, connection_id);
                if request.flags & MORE_TO_COME != 0 {
                    continue;
                }
                (request.request_id, reply)
            }
            Err(e) => {
                eprintln!("wire server: unreadable message: {e}");
                return;
            }
        };
        reply_id += 1;
        if write_reply(&mut stream, reply_id, reply.0, &reply.1).is_err() {
            return;
        }
    }
}

impl Store {
    fn command(&mut self, body: &Document, connection_id: i32) -> Document {
        let db = body.get_str("$db").unwrap_or("test").to_string();
        let result = match command_name(body) {
            "hello" | "isMaster" | "ismaster" => Ok(hello(connection_id)),
            "ping" => Ok(doc! {}),
            "buildInfo" | "buildinfo" => Ok(doc! {
                "version": "7.0.0",
                "versionArray": [7, 0, 0, 0],
                "maxBsonObjectSize": MAX_BSON_OBJECT_SIZE_I32,
            }),
            "find" => self.find(&db, body),
            "getMore" => self.get_more(body),
            "killCursors" => Ok(self.kill_cursors(body)),
            "endSessions" => Ok(doc! {}),
            other => {
                eprintln!("wire server: unknown command {other}: {body}");
                self.unknown.push(other.to_string());
                Err((59, "CommandNotFound", format!("no such command: '{other}'")))
            }
        };
        match result {
            Ok(mut reply) => {
                reply.insert("ok", 1.0);
                reply
            }
            Err((code, name, message)) => {
                doc! { "ok": 0.0, "errmsg": message, "code": code, "codeName": name }
            }
        }
    }

    fn find(&mut self, db: &str, body: &Document) -> CommandResult {
        let collection = body
            .get_str("find")
            .map_err(|_| bad_value("find needs a collection name"))?
            .to_string();
        let filter = optional_document(body, "filter")?;
        let projection = Projection::parse(&optional_document(body, "projection")?)?;
        let mut remaining = VecDeque::new();
        let key = (db.to_string(), collection.clone());
        for doc in self.collections.get(&key).into_iter().flatten() {
            if matches(doc, &filter)? {
                remaining.push_back(projection.apply(doc));
            }
        }
        let size = batch_size(body)?.unwrap_or(DEFAULT_FIRST_BATCH);
        let mut cursor = Cursor {
            db: db.to_string(),
            collection,
            remaining,
        };
        let batch = take_batch(&mut cursor.remaining, size);
        Ok(self.cursor_reply(cursor, "firstBatch", batch))
    }

    fn get_more(&mut self, body: &Document) -> CommandResult {
        let id = body
            .get_i64("getMore")
            .map_err(|_| bad_value("getMore needs an int64 cursor id"))?;
        let mut cursor = self.cursors.remove(&id).ok_or((
            43,
            "CursorNotFound",
            format!("cursor id {id} not found"),
        ))?;
        if body.get_str("collection").ok() != Some(cursor.collection.as_str()) {
            return Err(bad_value(
                "getMore names another collection than its cursor's",
            ));
        }
        // No batchSize: as many as fit in one reply.
        let size = batch_size(body)?.filter(|n| *n > 0).unwrap_or(usize::MAX);
        let batch = take_batch(&mut cursor.remaining, size);
        Ok(self.cursor_reply(cursor, "nextBatch", batch))
    }

    /// Keeps the cursor open while it has documents left (id 0 means exhausted).
    fn cursor_reply(&mut self, cursor: Cursor, key: &str, batch: Vec<Document>) -> Document {
        let ns = format!("{}.{}", cursor.db, cursor.collection);
        let id = if cursor.remaining.is_empty() {
            0
        } else {
            self.last_cursor += 1;
            self.cursors.insert(self.last_cursor, cursor);
            self.last_cursor
        };
        let mut reply = Document::new();
        reply.insert(key, batch);
        reply.insert("id", id);
        reply.insert("ns", ns);
        doc! { "cursor": reply }
    }

    fn kill_cursors(&mut self, body: &Document) -> Document {
        let ids: Vec<i64> = body
            .get_array("cursors")
            .map(|a| a.iter().filter_map(Bson::as_i64).collect())
            .unwrap_or_default();
        let (killed, not_found): (Vec<i64>, Vec<i64>) = ids
            .into_iter()
            .partition(|id| self.cursors.remove(id).is_some());
        let empty: Vec<i64> = Vec::new();
        doc! {
            "cursorsKilled": killed,
            "cursorsNotFound": not_found,
            "cursorsAlive": empty.clone(),
            "cursorsUnknown": empty,
        }
    }
}

/// The reply to `hello` / `isMaster`: a writable standalone. No `topologyVersion`, so the
/// driver polls instead of holding a streaming (exhaust) hello open; no `saslSupportedMechs`,
/// as the tests connect without credentials.
fn hello(connection_id: i32) -> Document {
    doc! {
        "helloOk": true,
        "isWritablePrimary": true,
        "ismaster": true,
        "maxBsonObjectSize": MAX_BSON_OBJECT_SIZE_I32,
        "maxMessageSizeBytes": 48_000_000,
        "maxWriteBatchSize": 100_000,
        "localTime": bson::DateTime::now(),
        "logicalSessionTimeoutMinutes": 30,
        "connectionId": connection_id,
        "minWireVersion": 0,
        "maxWireVersion": MAX_WIRE_VERSION,
        "readOnly": false,
    }
}

type CommandResult = Result<Document, CommandError>;

/// `(code, codeName, errmsg)` of an `{ok: 0}` reply.
type CommandError = (i32, &'static str, String);

fn bad_value(message: &str) -> CommandError {
    (2, "BadValue", message.to_string())
}

fn optional_document(body: &Document, key: &str) -> Result<Document, CommandError> {
    match body.get(key) {
        None => Ok(Document::new()),
        Some(Bson::Document(d)) => Ok(d.clone()),
        Some(other) => Err(bad_value(&format!("{key} must be a document, not {other}"))),
    }
}

fn batch_size(body: &Document) -> Result<Option<usize>, CommandError> {
    match body.get("batchSize") {
        None => Ok(None),
        Some(v) => v
            .as_i32()
            .map(i64::from)
            .or_else(|| v.as_i64())
            .and_then(|n| usize::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                bad_value(&format!(
                    "batchSize must be a non-negative integer, not {v}"
                ))
            }),
    }
}

/// Up to `size` documents, and never more bytes than one BSON object, like `mongod`.
fn take_batch(remaining: &mut VecDeque<Document>, size: usize) -> Vec<Document> {
    let mut batch = Vec::new();
    let mut bytes = 0;
    while batch.len() < size {
        let Some(next) = remaining.front() else { break };
        let len = bson::to_vec(next).map_or(0, |b| b.len());
        if !batch.is_empty() && bytes + len > MAX_BSON_OBJECT_SIZE {
            break;
        }
        bytes += len;
        batch.extend(remaining.pop_front());
    }
    batch
}

// ---- queries ---------------------------------------------------------------------------------

/// Whether `doc` matches `filter` (every top-level clause must hold).
fn matches(doc: &Document, filter: &Document) -> Result<bool, CommandError> {
    for (key, condition) in filter {
        let holds = match key.as_str() {
            "$or" => any_clause(doc, condition)?,
            "$and" => all_clauses(doc, condition)?,
            op if op.starts_with('$') => return Err(unsupported(op)),
            path => field_matches(lookup(doc, path), condition)?,
        };
        if !holds {
            return Ok(false);
        }
    }
    Ok(true)
}

fn clauses(condition: &Bson) -> Result<Vec<&Document>, CommandError> {
    let items = condition
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| bad_value("$or/$and need a non-empty array"))?;
    items
        .iter()
        .map(|c| {
            c.as_document()
                .ok_or_else(|| bad_value("$or/$and entries must be documents"))
        })
        .collect()
}

fn any_clause(doc: &Document, condition: &Bson) -> Result<bool, CommandError> {
    for clause in clauses(condition)? {
        if matches(doc, clause)? {
            return Ok(true);
        }
    }
    Ok(false)
}

fn all_clauses(doc: &Document, condition: &Bson) -> Result<bool, CommandError> {
    for clause in clauses(condition)? {
        if !matches(doc, clause)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `{field: literal}` (equality) or `{field: {$op: value, ...}}`.
fn field_matches(value: Option<&Bson>, condition: &Bson) -> Result<bool, CommandError> {
    let operators = match condition {
        Bson::Document(d) if command_name(d).starts_with('$') => d,
        literal => return Ok(value.is_some_and(|v| equal(v, literal))),
    };
    for (op, operand) in operators {
        if op == "$in" {
            let items = operand
                .as_array()
                .ok_or_else(|| bad_value("$in needs an array"))?;
            if !value.is_some_and(|v| items.iter().any(|item| equal(v, item))) {
                return Ok(false);
            }
            continue;
        }
        let wanted: fn(std::cmp::Ordering) -> bool = match op.as_str() {
            "$eq" => std::cmp::Ordering::is_eq,
            "$gt" => std::cmp::Ordering::is_gt,
            "$gte" => std::cmp::Ordering::is_ge,
            "$lt" => std::cmp::Ordering::is_lt,
            "$lte" => std::cmp::Ordering::is_le,
            other => return Err(unsupported(other)),
        };
        // A missing field or one of another type never matches (type bracketing).
        if !value.and_then(|v| compare(v, operand)).is_some_and(wanted) {
            return Ok(false);
        }
    }
    Ok(true)
}

fn equal(a: &Bson, b: &Bson) -> bool {
    a == b || compare(a, b).is_some_and(std::cmp::Ordering::is_eq)
}

/// Orders two values of the same kind; `None` across kinds, as MongoDB's comparison operators
/// do not match across types.
fn compare(a: &Bson, b: &Bson) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Bson::DateTime(x), Bson::DateTime(y)) => Some(x.cmp(y)),
        (Bson::String(x), Bson::String(y)) => Some(x.cmp(y)),
        (Bson::ObjectId(x), Bson::ObjectId(y)) => Some(x.bytes().cmp(&y.bytes())),
        (Bson::Boolean(x), Bson::Boolean(y)) => Some(x.cmp(y)),
        _ => match (integer(a), integer(b)) {
            (Some(x), Some(y)) => Some(x.cmp(&y)),
            _ => float(a)?.partial_cmp(&float(b)?),
        },
    }
}

fn integer(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(n) => Some(i64::from(*n)),
        Bson::Int64(n) => Some(*n),
        _ => None,
    }
}

fn float(v: &Bson) -> Option<f64> {
    match v {
        Bson::Double(f) => Some(*f),
        Bson::Int32(n) => Some(f64::from(*n)),
        // Exact up to 2^53, far beyond any number these tests compare.
        Bson::Int64(n) => Some(*n as f64),
        _ => None,
    }
}

/// The value at a dotted path through embedded documents.
fn lookup<'a>(doc: &'a Document, path: &str) -> Option<&'a Bson> {
    let mut parts = path.split('.');
    let mut value = doc.get(parts.next()?)?;
    for part in parts {
        value = value.as_document()?.get(part)?;
    }
    Some(value)
}

fn unsupported(op: &str) -> CommandError {
    (
        2,
        "BadValue",
        format!("operator {op} is outside what the test server implements"),
    )
}

/// An inclusion projection: which fields (and sub-fields) come back. `_id` does unless
/// excluded.
struct Projection {
    /// `None`: the whole document (empty projection).
    fields: Option<BTreeMap<String, Include>>,
}

enum Include {
    All,
    Fields(BTreeMap<String, Include>),
}

impl Projection {
    fn parse(spec: &Document) -> Result<Projection, CommandError> {
        if spec.is_empty() {
            return Ok(Projection { fields: None });
        }
        let mut fields = BTreeMap::new();
        let mut id = true;
        for (path, value) in spec {
            let included = match value {
                Bson::Boolean(b) => *b,
                v => integer(v)
                    .map(|n| n != 0)
                    .or_else(|| float(v).map(|f| f != 0.0))
                    .ok_or_else(|| unsupported(&format!("projection value {v}")))?,
            };
            match (path.as_str(), included) {
                ("_id", false) => id = false,
                (_, false) => return Err(unsupported("exclusion projection")),
                (path, true) => insert_path(&mut fields, path)?,
            }
        }
        if id && !fields.contains_key("_id") {
            fields.insert("_id".to_string(), Include::All);
        }
        Ok(Projection {
            fields: Some(fields),
        })
    }

    fn apply(&self, doc: &Document) -> Document {
        match &self.fields {
            None => doc.clone(),
            Some(fields) => project_document(doc, fields),
        }
    }
}

fn insert_path(fields: &mut BTreeMap<String, Include>, path: &str) -> Result<(), CommandError> {
    let collision = || (31250, "Location31250", format!("Path collision at {path}"));
    let (head, rest) = match path.split_once('.') {
        Some((head, rest)) => (head, Some(rest)),
        None => (path, None),
    };
    match (fields.get_mut(head), rest) {
        (None, None) => {
            fields.insert(head.to_string(), Include::All);
        }
        (None, Some(rest)) => {
            let mut sub = BTreeMap::new();
            insert_path(&mut sub, rest)?;
            fields.insert(head.to_string(), Include::Fields(sub));
        }
        (Some(Include::Fields(sub)), Some(rest)) => insert_path(sub, rest)?,
        (Some(_), _) => return Err(collision()),
    }
    Ok(())
}

/// Fields keep the document's order, as `mongod` returns them.
fn project_document(doc: &Document, fields: &BTreeMap<String, Include>) -> Document {
    let mut out = Document::new();
    for (key, value) in doc {
        match fields.get(key) {
            None => {}
            Some(Include::All) => {
                out.insert(key, value.clone());
            }
            Some(Include::Fields(sub)) => {
                if let Some(v) = project_value(value, sub) {
                    out.insert(key, v);
                }
            }
        }
    }
    out
}

/// A dotted projection reaches into documents and into the documents of arrays; scalars on
/// the way are dropped.
fn project_value(value: &Bson, fields: &BTreeMap<String, Include>) -> Option<Bson> {
    match value {
        Bson::Document(d) => Some(Bson::Document(project_document(d, fields))),
        Bson::Array(items) => Some(Bson::Array(
            items
                .iter()
                .filter_map(|item| project_value(item, fields))
                .collect(),
        )),
        _ => None,
    }
}

// ---- the tap ---------------------------------------------------------------------------------

/// A TCP proxy in front of a MongoDB server that records every command the driver sends and,
/// when asked, closes the connection as the driver asks for batch `close_after_batches + 1`
/// (its `close_after_batches`-th `getMore`), the way a server that dies mid-cursor does.
/// Because it sits on the wire, the same assertions hold for the test server and a real one.
pub struct Tap {
    addr: SocketAddr,
    shared: Arc<TapShared>,
}

struct TapShared {
    commands: Mutex<Vec<Document>>,
    close_after_batches: Option<usize>,
    get_mores: AtomicUsize,
    closed: AtomicUsize,
}

impl Tap {
    pub fn start(upstream: SocketAddr, close_after_batches: Option<usize>) -> Tap {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let shared = Arc::new(TapShared {
            commands: Mutex::new(Vec::new()),
            close_after_batches,
            get_mores: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
        });
        let state = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let state = state.clone();
                std::thread::spawn(move || relay(client, server, &state));
            }
        });
        Tap { addr, shared }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every command the driver sent, in order (those of all connections interleaved).
    pub fn commands(&self) -> Vec<Document> {
        lock(&self.shared.commands).clone()
    }

    /// The commands named `name`.
    pub fn commands_named(&self, name: &str) -> Vec<Document> {
        let mut found = self.commands();
        found.retain(|c| command_name(c) == name);
        found
    }

    /// How many connections the tap closed on purpose.
    pub fn closed(&self) -> usize {
        self.shared.closed.load(Ordering::SeqCst)
    }
}

/// Copies replies back untouched on a second thread; reads requests here, one frame at a time,
/// so each one can be recorded and the cut falls between two messages.
fn relay(mut client: TcpStream, mut server: TcpStream, state: &TapShared) {
    let (Ok(mut replies_in), Ok(mut replies_out)) = (server.try_clone(), client.try_clone()) else {
        return;
    };
    std::thread::spawn(move || {
        let _ = io::copy(&mut replies_in, &mut replies_out);
        let _ = replies_out.shutdown(Shutdown::Both);
    });
    while let Ok(Some(frame)) = read_frame(&mut client) {
        let body = parse_op_msg(&frame)
            .map(|r| r.body)
            .unwrap_or_else(|e| doc! { "unreadable": e.to_string() });
        let get_more = command_name(&body) == "getMore";
        lock(&state.commands).push(body);
        if get_more {
            let n = state.get_mores.fetch_add(1, Ordering::SeqCst) + 1;
            if state.close_after_batches == Some(n) {
                state.closed.fetch_add(1, Ordering::SeqCst);
                break;
            }
        }
        if server.write_all(&frame).is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users() -> Vec<Document> {
        let at = bson::DateTime::from_millis;
        vec![
            doc! { "_id": 1, "creation_date": at(10), "update_date": at(50), "a": { "b": 1, "c": 2 } },
            doc! { "_id": 2, "creation_date": at(60), "a": [ { "b": 3, "c": 4 }, 5 ] },
            doc! { "_id": 3, "creation_date": "2024-01-01", "update_date": at(20), "a": 7 },
        ]
    }

    fn ids(filter: Document) -> Vec<i32> {
        users()
            .iter()
            .filter(|d| matches(d, &filter).unwrap())
            .map(|d| d.get_i32("_id").unwrap())
            .collect()
    }

    #[test]
    fn window_filter_is_inclusive_and_type_bracketed() {
        let since = bson::DateTime::from_millis(50);
        let window = doc! { "$or": [ { "creation_date": { "$gte": since } }, { "update_date": { "$gte": since } } ] };
        assert_eq!(ids(window), vec![1, 2]);
        assert_eq!(ids(doc! {}), vec![1, 2, 3]);
        assert_eq!(
            ids(doc! { "a.b": 3 }),
            Vec::<i32>::new(),
            "no array traversal"
        );
        assert_eq!(ids(doc! { "a.b": 1 }), vec![1]);
        assert!(matches(&users()[0], &doc! { "x": { "$regex": "a" } }).is_err());
    }

    #[test]
    fn projection_keeps_dotted_fields_in_documents_and_arrays() {
        let p = Projection::parse(&doc! { "a.b": 1, "update_date": 1 }).unwrap();
        let got: Vec<Document> = users().iter().map(|d| p.apply(d)).collect();
        let at = bson::DateTime::from_millis;
        assert_eq!(
            got,
            vec![
                doc! { "_id": 1, "update_date": at(50), "a": { "b": 1 } },
                doc! { "_id": 2, "a": [ { "b": 3 } ] },
                doc! { "_id": 3, "update_date": at(20) },
            ]
        );
        assert!(Projection::parse(&doc! { "a": 1, "a.b": 1 }).is_err());
        assert!(Projection::parse(&doc! { "a": 0 }).is_err());
        let no_id = Projection::parse(&doc! { "_id": 0, "a": 1 }).unwrap();
        assert_eq!(no_id.apply(&users()[2]), doc! { "a": 7 });
    }
}
