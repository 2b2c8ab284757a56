//! Command line: the clap definitions of DESIGN.md and the dispatch to the stages.
//!
//! Exit codes: 0 when everything asked for was done, 1 when a stage failed, 2 for a usage or
//! configuration error, or a command this version does not have yet.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use std::time::Instant;

use anyhow::Context;

use crate::config::{ddl, Config, ConfigError, UnknownTables};
use crate::settings::{MatomoApiSettings, MatomoSettings, MongoSettings, PostgresSettings};
use crate::staging::{self, Stage};
use crate::{extract, load, progress, transform};

/// Migrate a MongoDB application database and its Matomo analytics into PostgreSQL,
/// in three replayable stages with Parquet files in between.
#[derive(Debug, Parser)]
#[command(name = "etl", version, about, long_about = None)]
pub struct Cli {
    /// Folder holding schemas.yaml and matomo_schemas.yaml.
    #[arg(long, global = true, default_value = "config", value_name = "DIR")]
    pub config: PathBuf,
    /// Folder of staged runs.
    #[arg(long, global = true, default_value = "staging", value_name = "DIR")]
    pub staging: PathBuf,
    /// No progress bars, only warnings and errors on stderr (results still go to stdout).
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Exit 1 when a stage finished with warnings (a collection or table missing from the
    /// source, a table with nothing to transform).
    #[arg(long, global = true)]
    pub strict: bool,
    /// INFO log lines too (default: warnings and errors only; `ETL_LOG=<filter>` overrides).
    #[arg(long, short, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Dump MongoDB collections (live or mongodump) and Matomo tables into Parquet under staging/.
    Extract(ExtractArgs),
    /// Map staged documents to typed rows of the target tables (no database needed).
    Transform(TransformArgs),
    /// Bulk-load a transformed run into PostgreSQL, or write SQL files for psql.
    Load(LoadArgs),
    /// extract, then transform, then load, with the same flags.
    Run(RunArgs),
    /// Staged runs: their stages, row counts and watermarks.
    Status,
    /// Compare the target with the source (or another database): counts, keys, values, links,
    /// foreign keys; exit 1 on any mismatch.
    Verify(VerifyArgs),
    /// Undo the newest load recorded in the target, in one transaction.
    Rollback(RollbackArgs),
    /// Load what the source has and the target lacks (by key); report the reverse.
    Reconcile(ReconcileArgs),
    /// SQL bundles written by `etl load --to sql`.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Print the PostgreSQL DDL the config implies, in foreign-key order.
    Schema,
    /// Write the sample data: a SmartDiet mongodump and Matomo rows (matomo.sql).
    Sample(crate::sample::SampleArgs),
    /// Write a starter config/ and .env.example into the current folder.
    Init(crate::init::InitArgs),
    /// Print shell completions: etl completions bash|zsh|fish.
    Completions(crate::init::CompletionsArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SourceArg {
    /// Live MongoDB (MONGODB_URL, MONGODB_DATABASE).
    Mongo,
    /// A mongodump folder or --archive file (--dump PATH).
    Dump,
    /// Matomo tables in MariaDB/MySQL (MATOMO_*).
    Matomo,
    /// Matomo's HTTP Reporting API (MATOMO_URL, MATOMO_KEY, MATOMO_SITE).
    MatomoApi,
    /// Tables of a source PostgreSQL (SOURCE_DATABASE_URL or SOURCE_POSTGRES_*).
    Postgres,
    /// Live MongoDB and Matomo, plus the Matomo API and the source PostgreSQL when the
    /// environment configures them.
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SinkArg {
    /// Bulk COPY into PostgreSQL (POSTGRES_* or DATABASE_URL).
    Postgres,
    /// SQL files under --out that `psql -1 -f` loads on another host.
    Sql,
}

#[derive(Debug, Clone, Args)]
pub struct ExtractArgs {
    /// Which source to read.
    #[arg(long, value_enum, default_value = "all")]
    pub source: SourceArg,
    /// mongodump folder (<db>/<collection>.bson[.gz]) or archive file, for --source dump.
    #[arg(long, value_name = "PATH")]
    pub dump: Option<PathBuf>,
    /// Only these target tables (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "a,b")]
    pub tables: Option<Vec<String>>,
    /// Ignore watermarks: extract everything.
    #[arg(long)]
    pub full: bool,
    /// Start the window no later than this date (the earlier of this and the watermark wins).
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub since: Option<chrono::NaiveDate>,
    /// Stage every MongoDB document whole (relaxed Extended JSON), as `keep_source` does.
    #[arg(long)]
    pub keep_documents: bool,
}

#[derive(Debug, Clone, Args)]
pub struct TransformArgs {
    /// Staged run to transform (default: the latest).
    #[arg(long, value_name = "ID")]
    pub run: Option<String>,
    /// Only these target tables (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "a,b")]
    pub tables: Option<Vec<String>>,
}

#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Staged run to load (default: the latest).
    #[arg(long, value_name = "ID")]
    pub run: Option<String>,
    /// Where to load.
    #[arg(long, value_enum, default_value = "postgres")]
    pub to: SinkArg,
    /// Folder for --to sql.
    #[arg(long, default_value = "sql_exports", value_name = "DIR")]
    pub out: PathBuf,
    /// Only these target tables (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "a,b")]
    pub tables: Option<Vec<String>>,
    /// Print the plan and the SQL; touch nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// With --to sql: gzip the bundle's data files (psql reads them through `gzip -dc`).
    #[arg(long)]
    pub compress: bool,
    #[command(flatten)]
    pub prune: PruneArgs,
}

/// `--prune` and `--force`, on `load` and `run`.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct PruneArgs {
    /// After a run that extracted the whole source (--full, or no window), delete the target
    /// rows whose key is no longer in the source; refused above ETL_PRUNE_MAX_SHARE (default
    /// 10%) of any table.
    #[arg(long)]
    pub prune: bool,
    /// With --prune: prune whatever share of a table it deletes.
    #[arg(long, requires = "prune")]
    pub force: bool,
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub extract: ExtractArgs,
    /// Where to load.
    #[arg(long, value_enum, default_value = "postgres")]
    pub to: SinkArg,
    /// Folder for --to sql.
    #[arg(long, default_value = "sql_exports", value_name = "DIR")]
    pub out: PathBuf,
    /// Print the load plan and SQL; touch nothing in the target.
    #[arg(long)]
    pub dry_run: bool,
    /// With --to sql: gzip the bundle's data files.
    #[arg(long)]
    pub compress: bool,
    #[command(flatten)]
    pub prune: PruneArgs,
}

#[derive(Debug, Clone, Args)]
pub struct VerifyArgs {
    /// Which source to read (all of it, no window).
    #[arg(long, value_enum, default_value = "all")]
    pub source: SourceArg,
    /// mongodump folder or archive file, for --source dump.
    #[arg(long, value_name = "PATH")]
    pub dump: Option<PathBuf>,
    /// Only these target tables (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "a,b")]
    pub tables: Option<Vec<String>>,
    /// Compare the values of N random keys per table, among those both sides hold (counts and
    /// keys stay complete).
    #[arg(long, value_name = "N")]
    pub sample: Option<u64>,
    /// Compare the target with this PostgreSQL database instead of the source.
    #[arg(long, value_name = "URL")]
    pub against: Option<String>,
    /// Also write the full report as JSON to this file.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct ReconcileArgs {
    /// Which source to compare (every key of it, no window).
    #[arg(long, value_enum, default_value = "all")]
    pub source: SourceArg,
    /// mongodump folder or archive file, for --source dump.
    #[arg(long, value_name = "PATH")]
    pub dump: Option<PathBuf>,
    /// Only these target tables (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "a,b")]
    pub tables: Option<Vec<String>>,
    /// Compare and report; extract and load nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Clone, Subcommand)]
pub enum BundleCommand {
    /// Verify a bundle's checksums and, when a target is configured, its place in the
    /// target's ledger, without applying anything.
    Check {
        /// The bundle folder (`sql_exports/<run>`).
        dir: PathBuf,
    },
}

#[derive(Debug, Clone, Args)]
pub struct RollbackArgs {
    /// The run to undo; it must be the newest load (default: the newest load).
    #[arg(long, value_name = "ID")]
    pub run: Option<String>,
    /// Check and count what would be undone; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Undo even rows changed after the load (those changes are lost).
    #[arg(long)]
    pub force: bool,
}

/// `print!` to stdout that never panics: when the reader went away (`etl status | head -1`)
/// the results are dropped and the command still does its work.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($arg)*);
    }};
}

/// `println!` to stdout that never panics (see [`say!`]).
macro_rules! sayln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Failures the command line maps to exit codes.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    UnknownTables(#[from] UnknownTables),
    #[error("`etl {0}` is not built yet in this version; see README.md for what works")]
    NotBuilt(&'static str),
    /// A flag or setting the user must change.
    #[error("{0}")]
    Usage(String),
    /// `--strict` and the run had warnings.
    #[error("--strict: {0}")]
    Strict(String),
    /// `etl verify` found differences.
    #[error("{0}")]
    Mismatch(String),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Failed(_) | CliError::Strict(_) | CliError::Mismatch(_) => 1,
            CliError::Config(_)
            | CliError::UnknownTables(_)
            | CliError::NotBuilt(_)
            | CliError::Usage(_) => 2,
        }
    }
}

/// Runs the parsed command line and prints the outcome; the binary's whole body.
pub fn main(cli: Cli) -> ExitCode {
    init_logging(cli.quiet, cli.verbose);
    crate::settings::load_dotenv(std::path::Path::new(".env"));
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_text(&e));
            ExitCode::from(e.exit_code())
        }
    }
}

/// The error and its causes, each cause once (a message often already quotes its source).
fn error_text(e: &CliError) -> String {
    let CliError::Failed(err) = e else {
        return e.to_string();
    };
    let mut text = String::new();
    for cause in err.chain() {
        let line = cause.to_string();
        if text.contains(&line) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&line);
    }
    text
}

fn init_logging(quiet: bool, verbose: bool) {
    let default = if verbose && !quiet { "info" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("ETL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(progress::stderr_colours())
        .with_writer(|| progress::LogWriter)
        .with_target(false)
        .try_init();
}

/// Loads the config and reports its warnings.
pub fn load_config(cli: &Cli) -> Result<Config, CliError> {
    let config = Config::load(&cli.config)?;
    for w in &config.warnings {
        tracing::warn!("{w}");
    }
    Ok(config)
}

fn run(cli: &Cli) -> Result<(), CliError> {
    // These work without a config folder: on a fresh machine, outside a project.
    match &cli.command {
        Command::Sample(args) => return Ok(crate::sample::run(args).context("sample")?),
        Command::Init(args) => {
            return crate::init::run(args, &cli.config).map_err(|e| {
                if e.is_refusal() {
                    CliError::Usage(e.to_string())
                } else {
                    CliError::Failed(e.into())
                }
            });
        }
        Command::Completions(args) => {
            return crate::init::completions(args).map_err(|e| CliError::Failed(e.into()))
        }
        _ => {}
    }
    let config = load_config(cli)?;
    // Table names are checked once, before any stage or connection: a typo is a usage error.
    if let Some(tables) = cli.command.tables() {
        config.select(Some(tables))?;
    }
    match &cli.command {
        Command::Schema => {
            say!("{}", ddl::schema_sql(&config));
            Ok(())
        }
        Command::Extract(args) => runtime()?.block_on(extract(cli, &config, args)).map(|_| ()),
        Command::Transform(args) => {
            transform(cli, &config, args.run.as_deref(), args.tables.as_deref())
        }
        Command::Load(args) => runtime()?.block_on(load(cli, &config, args)),
        Command::Run(args) => runtime()?.block_on(async {
            let run_id = extract(cli, &config, &args.extract).await?;
            transform(cli, &config, Some(&run_id), args.extract.tables.as_deref())?;
            let load_args = LoadArgs {
                run: Some(run_id),
                to: args.to,
                out: args.out.clone(),
                tables: args.extract.tables.clone(),
                dry_run: args.dry_run,
                compress: args.compress,
                prune: args.prune,
            };
            load(cli, &config, &load_args).await
        }),
        Command::Status => status(cli),
        Command::Verify(args) => runtime()?.block_on(verify(cli, &config, args)),
        Command::Rollback(args) => runtime()?.block_on(rollback(&config, args)),
        Command::Reconcile(args) => runtime()?.block_on(reconcile(cli, &config, args)),
        Command::Bundle(BundleCommand::Check { dir }) => runtime()?.block_on(bundle_check(dir)),
        Command::Sample(_) | Command::Init(_) | Command::Completions(_) => Ok(()), // above
    }
}

impl Command {
    /// The `--tables` of the command, if it takes one.
    fn tables(&self) -> Option<&[String]> {
        match self {
            Command::Extract(a) => a.tables.as_deref(),
            Command::Transform(a) => a.tables.as_deref(),
            Command::Load(a) => a.tables.as_deref(),
            Command::Run(a) => a.extract.tables.as_deref(),
            Command::Verify(a) => a.tables.as_deref(),
            Command::Reconcile(a) => a.tables.as_deref(),
            Command::Status
            | Command::Schema
            | Command::Rollback(_)
            | Command::Bundle(_)
            | Command::Sample(_)
            | Command::Init(_)
            | Command::Completions(_) => None,
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Runtime::new()
        .map_err(|e| CliError::Failed(anyhow::anyhow!("cannot start the async runtime: {e}")))
}

/// `etl extract`; returns the new run's id.
async fn extract(cli: &Cli, config: &Config, args: &ExtractArgs) -> Result<String, CliError> {
    let opts = extract_options(cli, args)?;
    let started = Instant::now();
    let (run, reports) = extract::run(config, &cli.staging, &opts)
        .await
        .context("extract")?;
    sayln!(
        "extract: run {} ({:.1}s)",
        run.id,
        started.elapsed().as_secs_f64()
    );
    say!("{}", extract_summary(&reports));
    let missing: Vec<&str> = reports
        .iter()
        .filter(|r| r.missing)
        .map(|r| r.name.as_str())
        .collect();
    if cli.strict && !missing.is_empty() {
        return Err(CliError::Strict(format!(
            "missing from the source: {}",
            missing.join(", ")
        )));
    }
    Ok(run.id)
}

/// The sources `--source` names, with their settings from the environment.
fn extract_options(cli: &Cli, args: &ExtractArgs) -> Result<extract::ExtractOptions, CliError> {
    let mongo = match (args.source, &args.dump) {
        (SourceArg::Dump, None) => {
            return Err(CliError::Usage("--source dump needs --dump PATH".into()))
        }
        (SourceArg::Dump | SourceArg::All, Some(path)) => {
            Some(extract::MongoInput::Dump(path.clone()))
        }
        (SourceArg::Mongo | SourceArg::All, _) => {
            Some(extract::MongoInput::Live(MongoSettings::from_env()))
        }
        (SourceArg::Matomo | SourceArg::MatomoApi | SourceArg::Postgres, _) => None,
    };
    let postgres = match args.source {
        SourceArg::Postgres => Some(PostgresSettings::source_from_env().map_err(CliError::Usage)?),
        SourceArg::All if PostgresSettings::source_configured() => {
            Some(PostgresSettings::source_from_env().map_err(CliError::Usage)?)
        }
        _ => None,
    };
    let matomo_api = match args.source {
        SourceArg::MatomoApi => Some(MatomoApiSettings::from_env().map_err(CliError::Usage)?),
        SourceArg::All if MatomoApiSettings::configured() => {
            Some(MatomoApiSettings::from_env().map_err(CliError::Usage)?)
        }
        _ => None,
    };
    let matomo = match args.source {
        SourceArg::Matomo | SourceArg::All => {
            Some(MatomoSettings::from_env().map_err(CliError::Usage)?)
        }
        _ => None,
    };
    Ok(extract::ExtractOptions {
        mongo,
        matomo,
        matomo_api,
        postgres,
        target: configured_target(),
        tables: args.tables.clone(),
        full: args.full,
        since: args.since,
        threshold: extract::window::global_threshold(
            std::env::var("GLOBAL_DATE_THRESHOLD").ok().as_deref(),
        ),
        quiet: cli.quiet,
        keep_documents: args.keep_documents,
    })
}

fn extract_summary(reports: &[extract::ExtractReport]) -> String {
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            let note = if r.missing {
                "missing from the source".to_string()
            } else if r.truncated_visits > 0 {
                format!(
                    "{} visit(s) truncated by Matomo: {} action(s) not in the API",
                    r.truncated_visits, r.truncated_actions
                )
            } else {
                String::new()
            };
            vec![
                r.name.clone(),
                r.source.clone(),
                r.rows.to_string(),
                format!("{:.2}", r.seconds),
                r.window.clone(),
                note,
            ]
        })
        .collect();
    let header = [
        "collection/table",
        "source",
        "extracted",
        "seconds",
        "window from",
        "note",
    ];
    progress::table(&header, &rows)
}

/// The target whose watermarks start the extract windows, when the environment names one.
fn configured_target() -> Option<PostgresSettings> {
    let configured = ["DATABASE_URL", "POSTGRES_HOST", "POSTGRES_DATABASE"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    if !configured {
        return None;
    }
    match PostgresSettings::from_env() {
        Ok(settings) => Some(settings),
        Err(e) => {
            tracing::warn!("the target's settings are unusable ({e}): windows start at the recorded watermarks");
            None
        }
    }
}

fn transform(
    cli: &Cli,
    config: &Config,
    run: Option<&str>,
    tables: Option<&[String]>,
) -> Result<(), CliError> {
    let started = Instant::now();
    let (run, reports) = transform::run(config, &cli.staging, run, tables).context("transform")?;
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            let c = &r.counts;
            vec![
                r.table.clone(),
                c.extracted.to_string(),
                c.transformed.to_string(),
                c.rejected.to_string(),
                c.filtered.to_string(),
                format!("{:.2}", r.seconds),
                c.duplicates.to_string(),
                r.coerced.to_string(),
                r.rounded.to_string(),
                r.skipped.clone().unwrap_or_default(),
            ]
        })
        .collect();
    sayln!(
        "transform: run {} ({:.1}s)",
        run.id,
        started.elapsed().as_secs_f64()
    );
    say!(
        "{}",
        progress::table(
            &[
                "table",
                "extracted",
                "transformed",
                "rejected",
                "filtered",
                "seconds",
                "duplicates",
                "coerced",
                "rounded",
                "note"
            ],
            &rows
        )
    );
    let rejected: u64 = reports.iter().map(|r| r.counts.rejected).sum();
    if rejected > 0 {
        sayln!(
            "{rejected} row(s) rejected: see {}",
            run.rejects_dir().display()
        );
    }
    let skipped: Vec<&str> = reports
        .iter()
        .filter(|r| r.skipped.is_some())
        .map(|r| r.table.as_str())
        .collect();
    if cli.strict && !skipped.is_empty() {
        return Err(CliError::Strict(format!(
            "nothing to transform for: {}",
            skipped.join(", ")
        )));
    }
    Ok(())
}

async fn load(cli: &Cli, config: &Config, args: &LoadArgs) -> Result<(), CliError> {
    let opts = load_options(args.prune)?;
    if args.dry_run {
        say!(
            "{}",
            load::dry_run(
                config,
                &cli.staging,
                args.run.as_deref(),
                args.tables.as_deref(),
                &opts
            )
            .context("load")?
        );
        if opts.prune.is_some() {
            say!("{}", prune_preview(cli, config, args, &opts).await?);
        }
        return Ok(());
    }
    let sink = match args.to {
        SinkArg::Postgres => {
            load::Sink::Postgres(PostgresSettings::from_env().map_err(CliError::Usage)?)
        }
        SinkArg::Sql => load::Sink::SqlFiles {
            out: args.out.clone(),
            compress: args.compress,
        },
    };
    let started = Instant::now();
    let (run, loads, target) = load::run(
        config,
        &cli.staging,
        args.run.as_deref(),
        args.tables.as_deref(),
        &sink,
        &opts,
    )
    .await
    .context("load")?;
    sayln!(
        "load: run {} into {} ({:.1}s)",
        run.id,
        target.display(),
        started.elapsed().as_secs_f64()
    );
    say!("{}", load_summary(&loads));
    if opts.prune.is_some() && matches!(args.to, SinkArg::Postgres) {
        say!("{}", pruned_summary(&loads));
    }
    let rejected: u64 = loads.iter().map(|l| l.rejected).sum();
    let orphans: usize = loads.iter().map(|l| l.orphans.len()).sum();
    if rejected + orphans as u64 > 0 {
        sayln!(
            "{rejected} row(s) rejected by transform, {orphans} orphan(s) at load: see {}",
            run.rejects_dir().display()
        );
    }
    Ok(())
}

/// What `--prune` did, per table that lost rows or kept some still referenced.
fn pruned_summary(loads: &[load::TableLoad]) -> String {
    use std::fmt::Write as _;
    let touched: Vec<&load::TableLoad> = loads
        .iter()
        .filter(|l| l.pruned + l.prune_kept > 0)
        .collect();
    if touched.is_empty() {
        return "prune: every target row's key is still in the source: nothing deleted\n".into();
    }
    let mut out = String::from("prune: rows whose key is no longer in the source\n");
    for l in touched {
        let _ = write!(out, "  {}: {} deleted", l.table, l.pruned);
        if l.prune_kept > 0 {
            let _ = write!(
                out,
                ", {} kept (still referenced by rows that stay)",
                l.prune_kept
            );
        }
        out.push('\n');
    }
    out
}

/// `etl load --dry-run --prune`: per table, what the prune would delete in the configured
/// target now, as comments after the script (nothing is changed).
async fn prune_preview(
    cli: &Cli,
    config: &Config,
    args: &LoadArgs,
    opts: &load::LoadOptions,
) -> Result<String, CliError> {
    use std::fmt::Write as _;
    let Some(target) = configured_target() else {
        return Ok(
            "\n-- prune preview: no target configured (DATABASE_URL or POSTGRES_*): \
                   the counts need it\n"
                .into(),
        );
    };
    let previews = load::prune_preview(
        config,
        &cli.staging,
        args.run.as_deref(),
        args.tables.as_deref(),
        &target,
        opts,
    )
    .await
    .context("load --dry-run --prune")?;
    let limit = opts.prune.filter(|p| !p.force).map(|p| p.max_share_bp);
    let mut out = format!("\n-- prune preview against {target} (nothing was changed):\n");
    for p in &previews {
        let over = limit
            .is_some_and(|bp| u128::from(p.doomed) * 10_000 > u128::from(p.total) * u128::from(bp));
        let _ = write!(
            out,
            "--   {}: {} of {} rows would be deleted{}",
            p.table,
            p.doomed,
            p.total,
            if over {
                " (over the allowed share: the load would be refused)"
            } else {
                ""
            }
        );
        if !p.samples.is_empty() {
            let _ = write!(out, ", e.g. {}", p.samples.join(" "));
        }
        out.push('\n');
    }
    Ok(out)
}

/// `etl verify`: compare, print the summary, write the JSON report, exit 1 on a mismatch.
async fn verify(cli: &Cli, config: &Config, args: &VerifyArgs) -> Result<(), CliError> {
    let target = PostgresSettings::from_env().map_err(CliError::Usage)?;
    let source = match &args.against {
        Some(url) => crate::verify::VerifySource::Database(
            PostgresSettings::from_url(url)
                .map_err(|e| CliError::Usage(format!("--against: {e}")))?,
        ),
        None => {
            let extract_args = ExtractArgs {
                source: args.source,
                dump: args.dump.clone(),
                tables: args.tables.clone(),
                full: true,
                since: None,
                keep_documents: false,
            };
            crate::verify::VerifySource::Source(Box::new(extract_options(cli, &extract_args)?))
        }
    };
    let opts = crate::verify::VerifyOptions {
        source,
        tables: args.tables.clone(),
        compare: load::CompareOptions {
            sample: args.sample,
        },
    };
    let started = Instant::now();
    let report = crate::verify::run(config, &cli.staging, &target, &opts)
        .await
        .context("verify")?;
    sayln!(
        "verify: {} against {} ({:.1}s)",
        report.target,
        report.against,
        started.elapsed().as_secs_f64()
    );
    say!("{}", verify_summary(&report));
    say!("{}", verify_details(&report));
    if let Some(path) = &args.json {
        let json = serde_json::to_vec_pretty(&report)
            .map_err(|e| CliError::Failed(anyhow::anyhow!("verify report: {e}")))?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    let differing: Vec<&str> = report
        .tables
        .iter()
        .filter(|t| !t.matches())
        .map(|t| t.verdict.table.as_str())
        .collect();
    if differing.is_empty() {
        sayln!("everything matches");
        Ok(())
    } else {
        Err(CliError::Mismatch(format!(
            "verify: {} table(s) differ: {}",
            differing.len(),
            differing.join(", ")
        )))
    }
}

fn verify_summary(report: &crate::verify::VerifyReport) -> String {
    let rows: Vec<Vec<String>> = report
        .tables
        .iter()
        .map(|t| {
            let v = &t.verdict;
            let fk: u64 = v.foreign_key_violations.iter().map(|(_, n)| n).sum();
            vec![
                v.table.clone(),
                t.source_rows.map_or_else(|| "-".into(), |n| n.to_string()),
                v.expected.to_string(),
                v.target.to_string(),
                v.missing.count.to_string(),
                v.extra.count.to_string(),
                format!("{}/{}", v.differing.count, v.compared),
                (t.rejected + v.orphans).to_string(),
                (fk + v.duplicate_keys).to_string(),
                if t.matches() { "ok" } else { "MISMATCH" }.into(),
            ]
        })
        .collect();
    let header = [
        "table",
        "source",
        "expected",
        "target",
        "missing",
        "extra",
        "differing/compared",
        "rejected",
        "fk/dup",
        "result",
    ];
    progress::table(&header, &rows)
}

/// The first keys of every difference, and differing rows column by column.
fn verify_details(report: &crate::verify::VerifyReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for t in report.tables.iter().filter(|t| !t.matches()) {
        let v = &t.verdict;
        let _ = writeln!(out, "\n{}:", v.table);
        for (what, diff) in [
            ("missing in the target", &v.missing),
            ("not in the source", &v.extra),
        ] {
            if diff.count > 0 {
                let _ = writeln!(out, "  {} {what}: {}", diff.count, diff.keys.join("; "));
            }
        }
        if let Some(parents) = v.parents_differing.filter(|n| *n > 0) {
            let _ = writeln!(out, "  {parents} parent(s) whose set of links differs");
        }
        for d in &v.differences {
            let _ = writeln!(out, "  differs, key {}:", d.key);
            for (column, expected, actual) in &d.columns {
                let _ = writeln!(
                    out,
                    "    {column}: expected {expected}, target has {actual}"
                );
            }
        }
        for (column, n) in v.foreign_key_violations.iter().filter(|(_, n)| *n > 0) {
            let _ = writeln!(out, "  {n} row(s) whose {column} points nowhere");
        }
        if v.duplicate_keys > 0 {
            let _ = writeln!(out, "  {} key(s) held by several rows", v.duplicate_keys);
        }
    }
    if let Some(scratch) = &report.scratch {
        let _ = writeln!(out, "\nexpected rows and rejects: {}", scratch.display());
    }
    out
}

/// `etl reconcile`: compare keys, load the missing ones, print what was found and done.
async fn reconcile(cli: &Cli, config: &Config, args: &ReconcileArgs) -> Result<(), CliError> {
    let target = PostgresSettings::from_env().map_err(CliError::Usage)?;
    let extract_args = ExtractArgs {
        source: args.source,
        dump: args.dump.clone(),
        tables: args.tables.clone(),
        full: true,
        since: None,
        keep_documents: false,
    };
    let opts = crate::reconcile::ReconcileOptions {
        source: extract_options(cli, &extract_args)?,
        tables: args.tables.clone(),
        dry_run: args.dry_run,
        load: load_options(PruneArgs::default())?,
    };
    let started = Instant::now();
    let report = crate::reconcile::run(config, &cli.staging, &target, &opts)
        .await
        .context("reconcile")?;
    say!(
        "{}",
        reconcile_summary(&report, started.elapsed().as_secs_f64())
    );
    if !report.loads.is_empty() {
        say!("{}", load_summary(&report.loads));
    }
    Ok(())
}

fn reconcile_summary(report: &crate::reconcile::ReconcileReport, seconds: f64) -> String {
    use std::fmt::Write as _;
    let mut out = format!(
        "reconcile: {} against the source ({seconds:.1}s)\n",
        report.target
    );
    let rows: Vec<Vec<String>> = report
        .sources
        .iter()
        .map(|s| {
            let note = s.note.clone().unwrap_or_else(|| {
                let mut parts = Vec::new();
                if !s.with.is_empty() {
                    parts.push(format!("with {}", s.with.join(", ")));
                }
                if s.unreadable > 0 {
                    parts.push(format!("{} unreadable key(s) not compared", s.unreadable));
                }
                parts.join("; ")
            });
            vec![
                s.table.clone(),
                s.source.clone(),
                s.source_keys.to_string(),
                s.target_keys.to_string(),
                s.missing.count.to_string(),
                s.extra.count.to_string(),
                note,
            ]
        })
        .collect();
    let header = [
        "table",
        "source",
        "source keys",
        "target keys",
        "missing",
        "only in target",
        "note",
    ];
    out.push_str(&progress::table(&header, &rows));
    for s in &report.sources {
        for (what, keys) in [
            ("missing in the target", &s.missing),
            ("only in the target", &s.extra),
        ] {
            if keys.count > 0 {
                let more = if keys.count > keys.keys.len() as u64 {
                    ", ..."
                } else {
                    ""
                };
                let _ = writeln!(
                    out,
                    "{}: {} {what}: {}{more}",
                    s.table,
                    keys.count,
                    keys.keys.join(" ")
                );
            }
        }
    }
    let missing = report.missing();
    let _ = match (&report.run, missing, report.dry_run) {
        (_, 0, _) => writeln!(
            out,
            "nothing missing in the target: nothing extracted or loaded"
        ),
        (_, n, true) => writeln!(
            out,
            "dry run: {n} missing key(s) would be extracted and loaded"
        ),
        (Some(run), n, false) => {
            writeln!(out, "{n} missing key(s) extracted and loaded by run {run}:")
        }
        (None, n, false) => writeln!(out, "{n} missing key(s), nothing loaded"),
    };
    out
}

/// `etl bundle check DIR`: exit 1 when a file is altered or the bundle cannot apply now.
async fn bundle_check(dir: &std::path::Path) -> Result<(), CliError> {
    let target = configured_target();
    let check = load::check_bundle(dir, target.as_ref())
        .await
        .context("bundle check")?;
    let m = &check.manifest;
    let follows = m
        .follows
        .as_ref()
        .map_or_else(String::new, |f| format!(", follows run {f}"));
    let rows: u64 = m.tables.iter().map(|t| t.rows).sum();
    sayln!(
        "bundle of run {}{follows}: {} tables, {rows} rows, {} files checked against SHA256SUMS",
        m.run_id,
        m.tables.len(),
        check.checked
    );
    for p in &check.problems {
        sayln!("  {p}");
    }
    let mut failures = Vec::new();
    if !check.problems.is_empty() {
        failures.push(format!("{} file problem(s)", check.problems.len()));
    }
    match (check.ledger, &target) {
        (Some(load::LedgerState::Ready), Some(t)) => sayln!("{t}: ready to apply"),
        (Some(load::LedgerState::Applied), Some(t)) => {
            sayln!("{t}: already applied, applying it again changes nothing")
        }
        (Some(load::LedgerState::OutOfOrder), Some(t)) => {
            let previous = m.follows.clone().unwrap_or_default();
            sayln!("{t}: run {previous} is not applied there; apply it first");
            failures.push(format!("run {previous} must be applied first"));
        }
        _ => sayln!("no target configured: the ledger order was not checked"),
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(CliError::Mismatch(format!(
            "bundle check: {}",
            failures.join("; ")
        )))
    }
}

/// `etl rollback`: undo the newest load, or say why not.
async fn rollback(config: &Config, args: &RollbackArgs) -> Result<(), CliError> {
    let settings = PostgresSettings::from_env().map_err(CliError::Usage)?;
    let opts = load::RollbackOptions {
        run: args.run.clone(),
        dry_run: args.dry_run,
        force: args.force,
    };
    let report = load::rollback(config, &settings, &opts)
        .await
        .context("rollback")?;
    let verb = if report.dry_run {
        "would roll back (dry run, nothing changed)"
    } else {
        "rolled back"
    };
    sayln!("rollback: {verb} run {} in {settings}", report.run_id);
    let rows: Vec<Vec<String>> = report
        .tables
        .iter()
        .map(|t| {
            vec![
                t.table.clone(),
                t.deleted.to_string(),
                t.restored.to_string(),
                t.reinserted.to_string(),
            ]
        })
        .collect();
    let header = [
        "table",
        "inserted rows deleted",
        "updated rows restored",
        "deleted rows restored",
    ];
    say!("{}", progress::table(&header, &rows));
    Ok(())
}

/// `ETL_HISTORY_RUNS` (how many loaded runs keep what `etl rollback` needs),
/// `ETL_COPY_FORMAT` (`binary`, the default, or `text`), and with `--prune`
/// `ETL_PRUNE_MAX_SHARE` (the largest share of a table one load may prune, default 10%).
fn load_options(prune: PruneArgs) -> Result<load::LoadOptions, CliError> {
    let prune = if prune.prune {
        let max_share_bp = match std::env::var("ETL_PRUNE_MAX_SHARE") {
            Err(_) => load::DEFAULT_PRUNE_MAX_SHARE_BP,
            Ok(v) => load::parse_share(&v)
                .map_err(|e| CliError::Usage(format!("ETL_PRUNE_MAX_SHARE: {e}")))?,
        };
        Some(load::PruneOptions {
            max_share_bp,
            force: prune.force,
        })
    } else {
        None
    };
    let keep_history = match std::env::var("ETL_HISTORY_RUNS") {
        Err(_) => load::DEFAULT_HISTORY_RUNS,
        Ok(v) => v.trim().parse().map_err(|_| {
            CliError::Usage(format!(
                "ETL_HISTORY_RUNS must be a whole number of runs (0 keeps none), not `{v}`"
            ))
        })?,
    };
    let binary_copy = match std::env::var("ETL_COPY_FORMAT").as_deref() {
        Err(_) | Ok("binary") => true,
        Ok("text") => false,
        Ok(other) => {
            return Err(CliError::Usage(format!(
                "ETL_COPY_FORMAT is `binary` or `text`, not `{other}`"
            )))
        }
    };
    Ok(load::LoadOptions {
        keep_history,
        binary_copy,
        prune,
    })
}

/// Per table; `rejected` counts the transform's rejects and the load's orphans.
fn load_summary(loads: &[load::TableLoad]) -> String {
    let rows: Vec<Vec<String>> = loads
        .iter()
        .map(|l| {
            vec![
                l.table.clone(),
                l.rows.to_string(),
                l.inserted.to_string(),
                l.updated.to_string(),
                l.deleted.to_string(),
                (l.rejected + l.orphans.len() as u64).to_string(),
                format!("{:.2}", l.seconds),
            ]
        })
        .collect();
    let header = [
        "table", "rows", "inserted", "updated", "deleted", "rejected", "seconds",
    ];
    progress::table(&header, &rows)
}

/// The loads and rollbacks the target's ledger records (a note when it cannot be read).
async fn target_status(target: &PostgresSettings) {
    match load::ledger_rows(target).await {
        Ok(rows) if rows.is_empty() => sayln!("no load recorded in {target}"),
        Ok(rows) => {
            sayln!("loads recorded in {target}:");
            let header = [
                "load",
                "run",
                "via",
                "source",
                "loaded at",
                "status",
                "rolled back at",
                "history",
            ];
            say!("{}", progress::table(&header, &rows));
        }
        Err(e) => sayln!("loads in {target}: not readable ({e})"),
    }
    sayln!();
}

/// `etl status`: every run, its finished stages, rows and watermarks.
fn status(cli: &Cli) -> Result<(), CliError> {
    let runs = staging::list_runs(&cli.staging).context("status")?;
    if let Some(target) = configured_target() {
        runtime()?.block_on(target_status(&target));
    }
    if runs.is_empty() {
        sayln!("no staged runs in {}", cli.staging.display());
        return Ok(());
    }
    let mut rows = Vec::new();
    for run in &runs {
        let mut cells = vec![run.id.clone()];
        for stage in [Stage::Extract, Stage::Transform, Stage::Load] {
            cells.push(match run.manifest(stage) {
                Ok(m) => format!("{} rows", m.entries.iter().map(|e| e.rows).sum::<u64>()),
                Err(_) if run.stage_dir(stage).exists() => "unfinished".into(),
                Err(_) => "-".into(),
            });
        }
        // Time watermarks only (log_action's is an integer id).
        let latest = run.manifest(Stage::Extract).ok().and_then(|m| {
            m.entries
                .iter()
                .flat_map(|e| e.watermarks.values())
                .filter_map(staging::WatermarkValue::timestamp)
                .max()
        });
        cells.push(latest.map(|t| t.to_string()).unwrap_or_default());
        rows.push(cells);
    }
    say!(
        "{}",
        progress::table(
            &["run", "extract", "transform", "load", "latest watermark"],
            &rows
        )
    );
    Ok(())
}
