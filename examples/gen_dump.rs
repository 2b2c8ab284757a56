//! Writes a SmartDiet-like mongodump: `cargo run --release --example gen_dump -- DIR USERS`.
//! Used by `make demo` (a small sample) and `make bench` (1M users).

#[path = "../tests/util/smartdiet.rs"]
mod smartdiet;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), users) = (
        args.get(1),
        args.get(2)
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(200),
    ) else {
        eprintln!("usage: gen_dump DIR [USERS]");
        std::process::exit(2);
    };
    let db = smartdiet::write_dump(std::path::Path::new(dir), users);
    println!("{}", db.display());
}
