//! `etl sample`: the bundled sample data, made on the spot so a fresh clone needs no fixture
//! download and no second build. Writes a SmartDiet mongodump (`<out>/smartdiet/*.bson`, what
//! `etl extract --source dump` reads) and `<out>/matomo.sql` (the Matomo log tables and their
//! rows, for `mariadb DATABASE < matomo.sql`). The same arguments give the same bytes.
//!
//! The generators are public because the integration tests and `make bench` build their
//! data with them too.

pub mod matomo;
pub mod smartdiet;

use std::path::{Path, PathBuf};

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct SampleArgs {
    /// SmartDiet users to generate (the other collections grow with it, up to 1000 documents).
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub users: usize,
    /// Folder to write `smartdiet/` and `matomo.sql` into (created if needed).
    #[arg(long, default_value = "sample", value_name = "DIR")]
    pub out: PathBuf,
    /// The first N users as edited later (a target removed, events emptied, update_date moved
    /// forward): run this after a first load to see an incremental one.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub changed: usize,
}

/// Why the sample could not be written.
#[derive(Debug, thiserror::Error)]
pub enum SampleError {
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot encode a sample document: {0}")]
    Bson(#[from] bson::ser::Error),
}

impl SampleError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SampleError + '_ {
        move |source| SampleError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// `etl sample`: writes both parts and says what it wrote (on stdout) and how to use it.
pub fn run(args: &SampleArgs) -> Result<(), SampleError> {
    std::fs::create_dir_all(&args.out).map_err(SampleError::io(&args.out))?;
    let db = smartdiet::write_dump_changed(&args.out, args.users, args.changed)?;
    let sql = args.out.join("matomo.sql");
    let matomo = matomo::write(&sql, args.users)?;
    println!(
        "sample: mongodump of {} SmartDiet users ({} changed) and the collections they use -> {}",
        args.users,
        args.changed.min(args.users),
        db.display()
    );
    println!(
        "sample: Matomo: {} visits, {} page views, {} actions -> {}",
        matomo.visits,
        matomo.page_views,
        matomo.actions,
        sql.display()
    );
    println!(
        "next: mariadb DATABASE < {}; etl run --source all --dump {}",
        sql.display(),
        db.display()
    );
    Ok(())
}
