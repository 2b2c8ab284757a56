//! Writes a SmartDiet-like mongodump: `cargo run --release --example gen_dump -- DIR USERS [CHANGED]`
//! (CHANGED: how many users were edited since, for a second, incremental run).
//! Used by `make bench` (1M users); the same generator as `etl sample`, which `make demo` uses.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), users) = (
        args.get(1),
        args.get(2)
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or(200),
    ) else {
        eprintln!("usage: gen_dump DIR [USERS [CHANGED]]");
        std::process::exit(2);
    };
    let changed = args
        .get(3)
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(0);
    match etl::sample::smartdiet::write_dump_changed(std::path::Path::new(dir), users, changed) {
        Ok(db) => println!("{}", db.display()),
        Err(e) => {
            eprintln!("gen_dump: {e}");
            std::process::exit(1);
        }
    }
}
