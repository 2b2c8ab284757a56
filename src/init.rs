//! `etl init` and `etl completions`: setting up an `etl` installed with `cargo install` and
//! run far from this repository. `init` writes a starter project into the current folder. The shipped SmartDiet and Matomo configs,
//! the annotated reference and `.env.example` are compiled into the binary, so what `init`
//! writes is exactly what this version was tested with. Existing files are never overwritten
//! without `--force`: a config folder is the user's work.

use std::path::{Path, PathBuf};

use clap::Args;

#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// Overwrite files that already exist.
    #[arg(long)]
    pub force: bool,
}

/// The files `init` writes: path relative to the config folder (or, for `.env.example`, the
/// current folder) and contents.
const CONFIG_FILES: &[(&str, &str)] = &[
    ("schemas.yaml", include_str!("../config/schemas.yaml")),
    (
        "matomo_schemas.yaml",
        include_str!("../config/matomo_schemas.yaml"),
    ),
    ("matomo_api.yaml", include_str!("../config/matomo_api.yaml")),
    (
        "reference/schemas.yaml",
        include_str!("../config/reference/schemas.yaml"),
    ),
];
const ENV_EXAMPLE: &str = include_str!("../.env.example");

#[derive(Debug, thiserror::Error)]
pub(crate) enum InitError {
    #[error("not overwriting existing {}: move them away or run `etl init --force`", list(.0))]
    Exists(Vec<PathBuf>),
    #[error("cannot write {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl InitError {
    /// A refusal (the user must choose), as opposed to a failure to write.
    pub(crate) fn is_refusal(&self) -> bool {
        matches!(self, InitError::Exists(_))
    }
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes the starter files: the config folder `config_dir` (the global `--config`) and
/// `.env.example` beside it in the current folder. All or nothing when files exist.
pub(crate) fn run(args: &InitArgs, config_dir: &Path) -> Result<(), InitError> {
    let files: Vec<(PathBuf, &str)> = CONFIG_FILES
        .iter()
        .map(|(rel, text)| (config_dir.join(rel), *text))
        .chain(std::iter::once((
            PathBuf::from(".env.example"),
            ENV_EXAMPLE,
        )))
        .collect();
    if !args.force {
        let existing: Vec<PathBuf> = files
            .iter()
            .filter(|(path, _)| path.exists())
            .map(|(path, _)| path.clone())
            .collect();
        if !existing.is_empty() {
            return Err(InitError::Exists(existing));
        }
    }
    for (path, text) in &files {
        write_file(path, text)?;
        println!("wrote {}", path.display());
    }
    println!(
        "next: cp .env.example .env and fill it in; `etl schema` prints the tables; `etl run` migrates"
    );
    Ok(())
}

/// Writes through a temporary name and a rename, so an interrupted init leaves no half file.
fn write_file(path: &Path, text: &str) -> Result<(), InitError> {
    let io = |source| InitError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".etl-init.tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// Shell to write completions for (bash, zsh, fish; elvish and powershell work too).
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// `etl completions SHELL`: the completion script on stdout, e.g.
/// `etl completions bash > ~/.local/share/bash-completion/completions/etl`. A reader that
/// stops early (`| head`) is not an error.
pub(crate) fn completions(args: &CompletionsArgs) -> std::io::Result<()> {
    use clap::CommandFactory;
    use std::io::Write;
    let mut command = crate::cli::Cli::command();
    // clap_complete panics when its writer fails: generate into memory, write ourselves.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "etl", &mut script);
    let mut out = std::io::stdout().lock();
    match out.write_all(&script).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}
