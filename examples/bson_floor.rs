//! The extract floor for a mongodump: read a `.bson` file with the bson crate alone and walk
//! every element of every document (no conversion, no output). `make bench` times it beside
//! `etl extract`: `cargo run --release --example bson_floor -- users.bson`.

use std::io::{BufReader, Read};

fn main() {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: bson_floor FILE.bson");
        std::process::exit(2);
    };
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let (mut docs, mut elements) = (0u64, 0u64);
    let mut buf = Vec::new();
    loop {
        let mut len = [0u8; 4];
        match reader.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => panic!("{path}: {e}"),
        }
        let n = u32::from_le_bytes(len) as usize;
        buf.clear();
        buf.extend_from_slice(&len);
        buf.resize(n, 0);
        reader
            .read_exact(&mut buf[4..])
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        let doc = bson::RawDocument::from_bytes(&buf).unwrap_or_else(|e| panic!("{path}: {e}"));
        for element in doc {
            let (_, value) = element.unwrap_or_else(|e| panic!("{path}: {e}"));
            if let bson::RawBsonRef::Array(array) = value {
                elements += array.into_iter().count() as u64;
            }
            elements += 1;
        }
        docs += 1;
    }
    println!("{docs} documents, {elements} elements");
}
