//! The `etl` binary: parse the command line, run it, turn the outcome into an exit code.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = etl::cli::Cli::parse();
    etl::cli::main(cli)
}
