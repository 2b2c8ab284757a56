//! Command line: the clap definitions of DESIGN.md and the dispatch to the stages.
//!
//! Exit codes: 0 when everything asked for was done, 1 when a stage failed, 2 for a usage or
//! configuration error, or a command this version does not have yet.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};

use std::time::Instant;

use anyhow::Context;

use crate::config::{ddl, Config, ConfigError};
use crate::settings::{MatomoSettings, MongoSettings, PostgresSettings};
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
    /// Compare source and target: counts per table, key samples, FK integrity (exit 1 on mismatch).
    Verify,
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
    /// Live MongoDB and Matomo.
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
}

/// Failures the command line maps to exit codes.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("`etl {0}` is not built yet in this version; see README.md for what works")]
    NotBuilt(&'static str),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Failed(_) => 1,
            CliError::Config(_) | CliError::NotBuilt(_) | CliError::Usage(_) => 2,
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
            match &e {
                CliError::Failed(err) => eprintln!("error: {err:#}"),
                other => eprintln!("error: {other}"),
            }
            ExitCode::from(e.exit_code())
        }
    }
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
    match &cli.command {
        Command::Schema => {
            print!("{}", ddl::schema_sql(&config));
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
            };
            load(cli, &config, &load_args).await
        }),
        Command::Status => status(cli),
        Command::Verify => Err(CliError::NotBuilt("verify")),
        Command::Sample(_) | Command::Init(_) | Command::Completions(_) => Ok(()), // above
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Runtime::new()
        .map_err(|e| CliError::Failed(anyhow::anyhow!("cannot start the async runtime: {e}")))
}

/// `etl extract`; returns the new run's id.
async fn extract(cli: &Cli, config: &Config, args: &ExtractArgs) -> Result<String, CliError> {
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
        (SourceArg::Matomo, _) => None,
    };
    let matomo = match args.source {
        SourceArg::Matomo | SourceArg::All => {
            Some(MatomoSettings::from_env().map_err(CliError::Usage)?)
        }
        _ => None,
    };
    let opts = extract::ExtractOptions {
        mongo,
        matomo,
        tables: args.tables.clone(),
        full: args.full,
        since: args.since,
        quiet: cli.quiet,
    };
    let started = Instant::now();
    let (run, reports) = extract::run(config, &cli.staging, &opts)
        .await
        .context("extract")?;
    let rows: Vec<Vec<String>> = reports
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.source.clone(),
                r.rows.to_string(),
                format!("{:.2}", r.seconds),
                r.window.clone(),
            ]
        })
        .collect();
    println!(
        "extract: run {} ({:.1}s)",
        run.id,
        started.elapsed().as_secs_f64()
    );
    print!(
        "{}",
        progress::table(
            &[
                "collection/table",
                "source",
                "extracted",
                "seconds",
                "window from"
            ],
            &rows
        )
    );
    Ok(run.id)
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
                r.skipped.clone().unwrap_or_default(),
            ]
        })
        .collect();
    println!(
        "transform: run {} ({:.1}s)",
        run.id,
        started.elapsed().as_secs_f64()
    );
    print!(
        "{}",
        progress::table(
            &[
                "table",
                "extracted",
                "transformed",
                "rejected",
                "filtered",
                "seconds",
                "note"
            ],
            &rows
        )
    );
    let rejected: u64 = reports.iter().map(|r| r.counts.rejected).sum();
    if rejected > 0 {
        println!(
            "{rejected} row(s) rejected: see {}",
            run.rejects_dir().display()
        );
    }
    Ok(())
}

async fn load(cli: &Cli, config: &Config, args: &LoadArgs) -> Result<(), CliError> {
    if args.dry_run {
        print!(
            "{}",
            load::dry_run(
                config,
                &cli.staging,
                args.run.as_deref(),
                args.tables.as_deref()
            )
            .context("load")?
        );
        return Ok(());
    }
    let sink = match args.to {
        SinkArg::Postgres => {
            load::Sink::Postgres(PostgresSettings::from_env().map_err(CliError::Usage)?)
        }
        SinkArg::Sql => load::Sink::SqlFiles(args.out.clone()),
    };
    let started = Instant::now();
    let (run, loads, target) = load::run(
        config,
        &cli.staging,
        args.run.as_deref(),
        args.tables.as_deref(),
        &sink,
    )
    .await
    .context("load")?;
    let rows: Vec<Vec<String>> = loads
        .iter()
        .map(|l| {
            vec![
                l.table.clone(),
                l.rows.to_string(),
                l.inserted.to_string(),
                l.updated.to_string(),
                l.deleted.to_string(),
                l.orphans.len().to_string(),
                format!("{:.2}", l.seconds),
            ]
        })
        .collect();
    println!(
        "load: run {} into {} ({:.1}s)",
        run.id,
        target.display(),
        started.elapsed().as_secs_f64()
    );
    print!(
        "{}",
        progress::table(
            &["table", "rows", "inserted", "updated", "deleted", "rejected", "seconds"],
            &rows
        )
    );
    Ok(())
}

/// `etl status`: every run, its finished stages, rows and watermarks.
fn status(cli: &Cli) -> Result<(), CliError> {
    let runs = staging::list_runs(&cli.staging).context("status")?;
    if runs.is_empty() {
        println!("no staged runs in {}", cli.staging.display());
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
        let watermarks = run
            .manifest(Stage::Extract)
            .map(|m| {
                m.entries
                    .iter()
                    .flat_map(|e| e.watermarks.values().cloned())
                    // Time watermarks only (log_action's is an integer id).
                    .filter(|v| v.contains('-'))
                    .max()
                    .unwrap_or_default()
            })
            .unwrap_or_default();
        cells.push(watermarks);
        rows.push(cells);
    }
    print!(
        "{}",
        progress::table(
            &["run", "extract", "transform", "load", "latest watermark"],
            &rows
        )
    );
    Ok(())
}
