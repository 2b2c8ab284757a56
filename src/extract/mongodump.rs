//! mongodump output as a document source: lists the collections a dump holds and streams one
//! collection's raw BSON documents to a callback.
//!
//! A dump is either a folder (`<db>/<coll>.bson[.gz]`, or PATH itself being one database's
//! folder) or a `mongodump --archive` file, gzipped or not. Reading goes through a buffered
//! reader and one document buffer reused for every document, so memory stays flat whatever the
//! dump's size. Nothing here decodes a document: that is [`super::bson_arrow`]'s job, through
//! the callback. The `<coll>.metadata.json[.gz]` files beside the data (indexes, options) are
//! not read: the config, not the dump, decides the target schema.

use std::error::Error as StdError;
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use bson::RawDocument;
use flate2::read::MultiGzDecoder;

/// The archive's magic number, little-endian on disk.
const ARCHIVE_MAGIC: u32 = 0x8199_e26d;
/// Ends the archive prelude and each block of documents.
const TERMINATOR: i32 = -1;
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
/// Larger than any real document (MongoDB caps them at 16 MiB, oplog entries slightly above):
/// a length beyond this is corruption, not data, and is reported before allocating for it.
const MAX_DOCUMENT_LEN: usize = 64 * 1024 * 1024;
const READ_BUFFER: usize = 1 << 20;

/// A dump that cannot be listed or read.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{}{}: read error at byte {offset}{}: {source}", path.display(), collection_note(collection), stream_note(*gzip))]
    Read {
        path: PathBuf,
        /// `db.collection` being read, when known.
        collection: String,
        offset: u64,
        gzip: bool,
        source: io::Error,
    },
    #[error("{}{}: truncated document at byte {offset}{}: {message}", path.display(), collection_note(collection), stream_note(*gzip))]
    Truncated {
        path: PathBuf,
        collection: String,
        offset: u64,
        gzip: bool,
        message: String,
    },
    #[error("{}{}: malformed document at byte {offset}{}: {message}", path.display(), collection_note(collection), stream_note(*gzip))]
    Malformed {
        path: PathBuf,
        collection: String,
        offset: u64,
        gzip: bool,
        message: String,
    },
    #[error("{}: not a mongodump folder or archive: {reason}", path.display())]
    NotADump { path: PathBuf, reason: String },
    #[error(
        "collection `{name}` is in several databases of the dump ({}); point --dump at one \
         database's folder",
        dbs.join(", ")
    )]
    Ambiguous { name: String, dbs: Vec<String> },
    /// The callback failed on a document; the document's place in the dump comes first.
    #[error("{}{}: document at byte {offset}{}: {source}", path.display(), collection_note(collection), stream_note(*gzip))]
    Document {
        path: PathBuf,
        collection: String,
        offset: u64,
        gzip: bool,
        source: Box<dyn StdError + Send + Sync>,
    },
}

fn collection_note(collection: &str) -> String {
    if collection.is_empty() {
        String::new()
    } else {
        format!(" (collection `{collection}`)")
    }
}

fn stream_note(gzip: bool) -> &'static str {
    if gzip {
        " of the decompressed stream"
    } else {
        ""
    }
}

/// One collection found in a dump.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpCollection {
    /// The database it was dumped from: the folder name, or the archive's namespace.
    pub db: String,
    pub name: String,
    pub source: DumpSource,
}

/// Where a collection's documents are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DumpSource {
    /// Its own `<coll>.bson` (or `.bson.gz`, then `gzip`) file: documents back to back.
    File { path: PathBuf, gzip: bool },
    /// A `mongodump --archive` file, interleaving the blocks of all its collections.
    Archive { path: PathBuf, gzip: bool },
}

/// Lists the collections of a dump, sorted by database then name. PATH may be a dump folder
/// (one subfolder per database), one database's folder, or a `mongodump --archive` file
/// (gzipped or not, told by its first bytes).
pub fn list_collections(path: &Path) -> Result<Vec<DumpCollection>, DumpError> {
    let meta = fs::metadata(path).map_err(|source| DumpError::Io {
        path: path.into(),
        source,
    })?;
    let mut found = if meta.is_dir() {
        list_folder(path)?
    } else {
        list_archive(path)?
    };
    found.sort_by(|a, b| (&a.db, &a.name).cmp(&(&b.db, &b.name)));
    Ok(found)
}

/// The collection called `name`, matched across databases. Several databases holding it is an
/// error naming them (a dump of several application databases is ambiguous; point PATH at one
/// database's folder); no database holding it is `None`, for the caller to decide.
pub fn find_collection<'a>(
    collections: &'a [DumpCollection],
    name: &str,
) -> Result<Option<&'a DumpCollection>, DumpError> {
    let mut matching = collections.iter().filter(|c| c.name == name);
    let Some(first) = matching.next() else {
        return Ok(None);
    };
    let others: Vec<&DumpCollection> = matching.collect();
    if others.is_empty() {
        return Ok(Some(first));
    }
    let dbs = std::iter::once(first)
        .chain(others)
        .map(|c| c.db.clone())
        .collect();
    Err(DumpError::Ambiguous {
        name: name.into(),
        dbs,
    })
}

/// Streams one collection's raw documents to `f`, in dump order, and returns how many there
/// were. For an archive, the whole archive is scanned and the other collections' blocks
/// skipped, up to this collection's end-of-collection block. An error from `f` stops the scan
/// and comes back as [`DumpError::Document`], naming the file and the document's offset.
pub fn for_each_document<E>(
    collection: &DumpCollection,
    mut f: impl FnMut(&RawDocument) -> Result<(), E>,
) -> Result<u64, DumpError>
where
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    match &collection.source {
        DumpSource::File { path, gzip } => {
            let mut reader = DocReader::open(path, *gzip)?;
            reader.collection = format!("{}.{}", collection.db, collection.name);
            let mut count = 0;
            while reader.next_item(false)? == Item::Document {
                reader.visit(&mut f)?;
                count += 1;
            }
            Ok(count)
        }
        DumpSource::Archive { path, gzip } => {
            archive_documents(path, *gzip, &collection.db, &collection.name, f)
        }
    }
}

fn list_folder(path: &Path) -> Result<Vec<DumpCollection>, DumpError> {
    let mut in_subfolders = Vec::new();
    for entry in read_dir_sorted(path)? {
        if entry.is_dir() {
            let db = file_name(&entry);
            in_subfolders.extend(bson_files(&entry, &db)?);
        }
    }
    // PATH itself holding `.bson` files is one database's folder. Beside database folders, a
    // root `oplog.bson` is mongodump's `--oplog` capture, not a collection.
    let db = file_name(&fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()));
    let mut found = bson_files(path, &db)?;
    if !in_subfolders.is_empty() {
        found.retain(|c| c.name != "oplog");
    }
    found.extend(in_subfolders);
    if found.is_empty() {
        let reason = "no .bson or .bson.gz files in it or its subfolders".to_string();
        return Err(DumpError::NotADump {
            path: path.into(),
            reason,
        });
    }
    Ok(found)
}

/// The `<coll>.bson` and `<coll>.bson.gz` files directly in `dir`.
fn bson_files(dir: &Path, db: &str) -> Result<Vec<DumpCollection>, DumpError> {
    let mut found = Vec::new();
    for path in read_dir_sorted(dir)? {
        let file = file_name(&path);
        let (stem, gzip) = match (file.strip_suffix(".bson"), file.strip_suffix(".bson.gz")) {
            (Some(stem), _) => (stem, false),
            (None, Some(stem)) => (stem, true),
            (None, None) => continue,
        };
        if !path.is_file() || stem.is_empty() {
            continue;
        }
        let name = unescape_collection_name(stem);
        found.push(DumpCollection {
            db: db.into(),
            name,
            source: DumpSource::File { path, gzip },
        });
    }
    Ok(found)
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, DumpError> {
    let io_error = |source| DumpError::Io {
        path: dir.into(),
        source,
    };
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_error)? {
        paths.push(entry.map_err(io_error)?.path());
    }
    paths.sort();
    Ok(paths)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// mongodump percent-escapes characters of collection names that file names cannot hold
/// (`/` as `%2F`); undo it, keeping anything that is not a valid escape as it is, and the
/// name as written when the escapes do not decode to UTF-8.
fn unescape_collection_name(stem: &str) -> String {
    crate::percent::decode_utf8(stem).unwrap_or_else(|| stem.to_string())
}

fn list_archive(path: &Path) -> Result<Vec<DumpCollection>, DumpError> {
    let gzip = starts_with_gzip_magic(path)?;
    let mut reader = DocReader::open(path, gzip)?;
    reader.expect_archive_magic()?;
    // The prelude: the archive header, then one metadata document per collection.
    let mut found = Vec::new();
    let mut first = true;
    loop {
        match reader.next_item(true)? {
            Item::Terminator => break,
            Item::End => return Err(reader.truncated("the archive ends inside its prelude")),
            Item::Document if first => first = false,
            Item::Document => {
                let (db, name) = reader.namespace()?;
                let source = DumpSource::Archive {
                    path: path.into(),
                    gzip,
                };
                found.push(DumpCollection { db, name, source });
            }
        }
    }
    Ok(found)
}

fn archive_documents<E>(
    path: &Path,
    gzip: bool,
    db: &str,
    name: &str,
    mut f: impl FnMut(&RawDocument) -> Result<(), E>,
) -> Result<u64, DumpError>
where
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    let mut reader = DocReader::open(path, gzip)?;
    reader.collection = format!("{db}.{name}");
    reader.expect_archive_magic()?;
    loop {
        match reader.next_item(true)? {
            Item::Terminator => break,
            Item::Document => {}
            Item::End => return Err(reader.truncated("the archive ends inside its prelude")),
        }
    }
    let mut count = 0;
    // Blocks: a namespace header, that namespace's documents, a terminator. A header with
    // `EOF: true` (and no documents) closes its namespace.
    loop {
        match reader.next_item(false)? {
            Item::End => break,
            Item::Document => {}
            Item::Terminator => {
                return Err(reader.malformed("a terminator where a block header was expected"))
            }
        }
        let ours = {
            let (header_db, header_name) = reader.namespace()?;
            header_db == db && header_name == name
        };
        let eof = reader.document()?.get_bool("EOF").unwrap_or(false);
        loop {
            match reader.next_item(true)? {
                Item::Terminator => break,
                Item::End => return Err(reader.truncated("the archive ends inside a block")),
                Item::Document if ours => {
                    reader.visit(&mut f)?;
                    count += 1;
                }
                Item::Document => {}
            }
        }
        if ours && eof {
            break;
        }
    }
    Ok(count)
}

fn starts_with_gzip_magic(path: &Path) -> Result<bool, DumpError> {
    let mut file = File::open(path).map_err(|source| DumpError::Io {
        path: path.into(),
        source,
    })?;
    let mut magic = [0; 2];
    let n = read_full(&mut file, &mut magic).map_err(|source| DumpError::Io {
        path: path.into(),
        source,
    })?;
    Ok(n == magic.len() && magic == GZIP_MAGIC)
}

/// Reads as much of `buf` as the stream holds; fewer bytes than asked only at its end.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[derive(Debug, PartialEq, Eq)]
enum Item {
    /// A document, now in the reader's buffer.
    Document,
    /// The 0xFFFFFFFF terminator of an archive.
    Terminator,
    /// The end of the stream, between two items.
    End,
}

/// Length-prefixed BSON documents read one at a time into one reused buffer, tracking the
/// byte offset of each for error messages.
struct DocReader {
    inner: Box<dyn Read>,
    /// `db.collection` being read, for errors (empty while listing an archive).
    collection: String,
    path: PathBuf,
    gzip: bool,
    /// Bytes consumed so far.
    offset: u64,
    /// Where the current item starts.
    item_offset: u64,
    buf: Vec<u8>,
}

impl DocReader {
    fn open(path: &Path, gzip: bool) -> Result<DocReader, DumpError> {
        let file = File::open(path).map_err(|source| DumpError::Io {
            path: path.into(),
            source,
        })?;
        let inner: Box<dyn Read> = if gzip {
            Box::new(BufReader::with_capacity(
                READ_BUFFER,
                MultiGzDecoder::new(BufReader::new(file)),
            ))
        } else {
            Box::new(BufReader::with_capacity(READ_BUFFER, file))
        };
        Ok(DocReader {
            inner,
            collection: String::new(),
            path: path.into(),
            gzip,
            offset: 0,
            item_offset: 0,
            buf: Vec::new(),
        })
    }

    fn read(&mut self, n: usize) -> Result<usize, DumpError> {
        let start = self.buf.len();
        self.buf.resize(start + n, 0);
        let got = read_full(&mut self.inner, &mut self.buf[start..]).map_err(|source| {
            DumpError::Read {
                path: self.path.clone(),
                collection: self.collection.clone(),
                offset: self.offset,
                gzip: self.gzip,
                source,
            }
        })?;
        self.buf.truncate(start + got);
        // usize always fits in u64 on the platforms Rust supports.
        self.offset += u64::try_from(got).unwrap_or(u64::MAX);
        Ok(got)
    }

    fn expect_archive_magic(&mut self) -> Result<(), DumpError> {
        self.buf.clear();
        let got = self.read(4)?;
        if got == 4 && self.buf[..4] == ARCHIVE_MAGIC.to_le_bytes() {
            return Ok(());
        }
        let reason =
            "a file that does not start with the mongodump archive magic number".to_string();
        Err(DumpError::NotADump {
            path: self.path.clone(),
            reason,
        })
    }

    /// Reads the next item. With `terminator_allowed`, a length of -1 is an archive
    /// terminator; otherwise it is an invalid length.
    fn next_item(&mut self, terminator_allowed: bool) -> Result<Item, DumpError> {
        self.item_offset = self.offset;
        self.buf.clear();
        match self.read(4)? {
            0 => return Ok(Item::End),
            4 => {}
            n => {
                return Err(self.truncated(&format!(
                    "the stream ends {n} bytes into a document's length"
                )))
            }
        }
        let len = i32::from_le_bytes([self.buf[0], self.buf[1], self.buf[2], self.buf[3]]);
        if len == TERMINATOR && terminator_allowed {
            return Ok(Item::Terminator);
        }
        let len = match usize::try_from(len) {
            Ok(len) if (5..=MAX_DOCUMENT_LEN).contains(&len) => len,
            _ => return Err(self.malformed(&format!("invalid document length {len}"))),
        };
        let got = self.read(len - 4)?;
        if got < len - 4 {
            let message = format!(
                "the stream ends {} bytes into a {len}-byte document",
                got + 4
            );
            return Err(self.truncated(&message));
        }
        Ok(Item::Document)
    }

    /// The document just read.
    fn document(&self) -> Result<&RawDocument, DumpError> {
        RawDocument::from_bytes(&self.buf).map_err(|e| self.malformed(&e.to_string()))
    }

    /// Hands the document just read to the callback.
    fn visit<E>(&self, f: &mut impl FnMut(&RawDocument) -> Result<(), E>) -> Result<(), DumpError>
    where
        E: Into<Box<dyn StdError + Send + Sync>>,
    {
        f(self.document()?).map_err(|e| DumpError::Document {
            path: self.path.clone(),
            collection: self.collection.clone(),
            offset: self.item_offset,
            gzip: self.gzip,
            source: e.into(),
        })
    }

    /// `db` and `collection` of an archive metadata or block header document.
    fn namespace(&self) -> Result<(String, String), DumpError> {
        let doc = self.document()?;
        match (doc.get_str("db"), doc.get_str("collection")) {
            (Ok(db), Ok(collection)) => Ok((db.to_string(), collection.to_string())),
            _ => Err(self.malformed("an archive header without string `db` and `collection`")),
        }
    }

    fn truncated(&self, message: &str) -> DumpError {
        DumpError::Truncated {
            path: self.path.clone(),
            collection: self.collection.clone(),
            offset: self.item_offset,
            gzip: self.gzip,
            message: message.to_string(),
        }
    }

    fn malformed(&self, message: &str) -> DumpError {
        DumpError::Malformed {
            path: self.path.clone(),
            collection: self.collection.clone(),
            offset: self.item_offset,
            gzip: self.gzip,
            message: message.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::{doc, Document};
    use flate2::write::GzEncoder;
    use flate2::Compression;
    use std::io::Write;

    fn bytes(docs: &[Document]) -> Vec<u8> {
        docs.iter().flat_map(|d| bson::to_vec(d).unwrap()).collect()
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
        encoder.write_all(data).unwrap();
        encoder.finish().unwrap()
    }

    fn users() -> Vec<Document> {
        (0..3)
            .map(|i| doc! { "_id": format!("u{i}"), "n": i })
            .collect()
    }

    /// Every document's `_id`, through `for_each_document`.
    fn ids(collection: &DumpCollection) -> Vec<String> {
        let mut ids = Vec::new();
        let count = for_each_document(collection, |doc| {
            ids.push(doc.get_str("_id")?.to_string());
            Ok::<_, bson::raw::ValueAccessError>(())
        })
        .unwrap();
        assert_eq!(count, u64::try_from(ids.len()).unwrap());
        ids
    }

    fn names(collections: &[DumpCollection]) -> Vec<String> {
        collections
            .iter()
            .map(|c| format!("{}.{}", c.db, c.name))
            .collect()
    }

    fn write_folder(root: &Path) {
        let db = root.join("app");
        fs::create_dir_all(&db).unwrap();
        fs::write(db.join("users.bson"), bytes(&users())).unwrap();
        fs::write(db.join("users.metadata.json"), "{}").unwrap();
        let orders = [doc! { "_id": "o1" }, doc! { "_id": "o2" }];
        fs::write(db.join("orders.bson.gz"), gzip(&bytes(&orders))).unwrap();
        fs::write(db.join("orders.metadata.json.gz"), gzip(b"{}")).unwrap();
        fs::write(db.join("empty.bson"), b"").unwrap();
        fs::write(db.join("odd%2Fname.bson"), b"").unwrap();
        fs::write(root.join("oplog.bson"), b"").unwrap();
    }

    #[test]
    fn folder_with_plain_and_gzipped_files() {
        let dir = tempfile::tempdir().unwrap();
        write_folder(dir.path());
        let found = list_collections(dir.path()).unwrap();
        assert_eq!(
            names(&found),
            ["app.empty", "app.odd/name", "app.orders", "app.users"]
        );
        let users = find_collection(&found, "users").unwrap().unwrap();
        assert_eq!(ids(users), ["u0", "u1", "u2"]);
        let orders = find_collection(&found, "orders").unwrap().unwrap();
        assert!(matches!(orders.source, DumpSource::File { gzip: true, .. }));
        assert_eq!(ids(orders), ["o1", "o2"]);
        let empty = find_collection(&found, "empty").unwrap().unwrap();
        assert!(ids(empty).is_empty());
        assert!(find_collection(&found, "nope").unwrap().is_none());
    }

    #[test]
    fn database_folder_as_path() {
        let dir = tempfile::tempdir().unwrap();
        write_folder(dir.path());
        let found = list_collections(&dir.path().join("app")).unwrap();
        assert_eq!(
            names(&found),
            ["app.empty", "app.odd/name", "app.orders", "app.users"]
        );
        assert_eq!(
            ids(find_collection(&found, "users").unwrap().unwrap()),
            ["u0", "u1", "u2"]
        );
    }

    #[test]
    fn a_collection_in_two_databases_is_ambiguous() {
        let dir = tempfile::tempdir().unwrap();
        for db in ["app", "app_copy"] {
            fs::create_dir_all(dir.path().join(db)).unwrap();
            fs::write(dir.path().join(db).join("users.bson"), bytes(&users())).unwrap();
        }
        let found = list_collections(dir.path()).unwrap();
        let err = find_collection(&found, "users").unwrap_err().to_string();
        assert!(err.contains("app, app_copy"), "{err}");
    }

    #[test]
    fn a_folder_without_bson_files_is_not_a_dump() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("notes.txt"), "hi").unwrap();
        let err = list_collections(dir.path()).unwrap_err();
        assert!(matches!(err, DumpError::NotADump { .. }), "{err}");
    }

    #[test]
    fn a_truncated_file_names_the_file_and_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.bson");
        let data = bytes(&users());
        let first_len = bson::to_vec(&users()[0]).unwrap().len();
        let second_end = 2 * first_len;
        fs::write(&path, &data[..second_end - 3]).unwrap();
        let collection = DumpCollection {
            db: "app".into(),
            name: "users".into(),
            source: DumpSource::File { path, gzip: false },
        };
        let mut seen = 0;
        let err = for_each_document(&collection, |_| {
            seen += 1;
            Ok::<_, io::Error>(())
        })
        .unwrap_err();
        assert_eq!(seen, 1, "the document before the cut is delivered");
        let message = err.to_string();
        assert!(
            matches!(err, DumpError::Truncated { offset, .. } if offset == u64::try_from(first_len).unwrap())
        );
        assert!(
            message.contains("users.bson") && message.contains(&format!("byte {first_len}")),
            "{message}"
        );
        assert!(message.contains("(collection `app.users`)"), "{message}");
    }

    #[test]
    fn a_garbage_length_is_malformed_not_an_allocation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.bson");
        fs::write(&path, [0xff, 0xff, 0xff, 0x7f, 0, 0]).unwrap();
        let collection = DumpCollection {
            db: "app".into(),
            name: "users".into(),
            source: DumpSource::File { path, gzip: false },
        };
        let err = for_each_document(&collection, |_| Ok::<_, io::Error>(())).unwrap_err();
        assert!(
            matches!(err, DumpError::Malformed { offset: 0, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_callback_error_names_the_document_offset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.bson");
        fs::write(&path, bytes(&users())).unwrap();
        let collection = DumpCollection {
            db: "app".into(),
            name: "users".into(),
            source: DumpSource::File { path, gzip: false },
        };
        let err = for_each_document(&collection, |doc| match doc.get_str("_id") {
            Ok("u1") => Err(anyhow::anyhow!("no thanks")),
            _ => Ok(()),
        })
        .unwrap_err();
        let first_len = bson::to_vec(&users()[0]).unwrap().len();
        assert!(
            err.to_string()
                .ends_with(&format!("document at byte {first_len}: no thanks")),
            "{err}"
        );
    }

    /// A `mongodump --archive` stream, written by hand following the format mongo-tools reads.
    fn archive() -> Vec<u8> {
        let terminator = TERMINATOR.to_le_bytes();
        let header = |coll: &str, eof: bool| doc! { "db": "app", "collection": coll, "EOF": eof, "CRC": 0_i64 };
        let metadata =
            |coll: &str| doc! { "db": "app", "collection": coll, "metadata": "{}", "size": 0_i32 };
        let mut out = ARCHIVE_MAGIC.to_le_bytes().to_vec();
        out.extend(bytes(&[
            doc! { "concurrent_collections": 2_i32, "version": "0.1", "server_version": "7.0.4", "tool_version": "100.9.4" },
            metadata("users"),
            metadata("orders"),
            metadata("empty"),
        ]));
        out.extend(terminator);
        let users = users();
        let block = |out: &mut Vec<u8>, coll: &str, docs: &[Document]| {
            out.extend(bytes(&[header(coll, false)]));
            out.extend(bytes(docs));
            out.extend(terminator);
        };
        block(&mut out, "users", &users[..2]);
        block(&mut out, "orders", &[doc! { "_id": "o1" }]);
        block(&mut out, "users", &users[2..]);
        block(&mut out, "orders", &[doc! { "_id": "o2" }]);
        for coll in ["empty", "users", "orders"] {
            out.extend(bytes(&[header(coll, true)]));
            out.extend(terminator);
        }
        out
    }

    fn check_archive(path: &Path, gzip: bool) {
        let found = list_collections(path).unwrap();
        assert_eq!(names(&found), ["app.empty", "app.orders", "app.users"]);
        let users = find_collection(&found, "users").unwrap().unwrap();
        assert_eq!(
            users.source,
            DumpSource::Archive {
                path: path.into(),
                gzip
            }
        );
        assert_eq!(ids(users), ["u0", "u1", "u2"]);
        assert_eq!(
            ids(find_collection(&found, "orders").unwrap().unwrap()),
            ["o1", "o2"]
        );
        assert!(ids(find_collection(&found, "empty").unwrap().unwrap()).is_empty());
    }

    #[test]
    fn archive_with_interleaved_collections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.archive");
        fs::write(&path, archive()).unwrap();
        check_archive(&path, false);
    }

    #[test]
    fn gzipped_archive_with_interleaved_collections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.archive.gz");
        fs::write(&path, gzip(&archive())).unwrap();
        check_archive(&path, true);
    }

    #[test]
    fn a_truncated_archive_block_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.archive");
        let data = archive();
        fs::write(&path, &data[..data.len() - 2]).unwrap();
        let found = list_collections(&path).unwrap();
        // `users` ends before the cut; `orders`, whose end is cut, cannot be read to its end.
        assert_eq!(
            ids(find_collection(&found, "users").unwrap().unwrap()),
            ["u0", "u1", "u2"]
        );
        let orders = find_collection(&found, "orders").unwrap().unwrap();
        let err = for_each_document(orders, |_| Ok::<_, io::Error>(())).unwrap_err();
        assert!(matches!(err, DumpError::Truncated { .. }), "{err}");
        assert!(err.to_string().contains("app.archive"), "{err}");
        assert!(
            err.to_string().contains("(collection `app.orders`)"),
            "{err}"
        );
    }

    #[test]
    fn a_file_that_is_neither_is_not_a_dump() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.json");
        fs::write(&path, "[]").unwrap();
        let err = list_collections(&path).unwrap_err();
        assert!(matches!(err, DumpError::NotADump { .. }), "{err}");
    }
}
