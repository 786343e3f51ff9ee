//! External subcommands, git-style: `eddy query ...` runs the
//! `eddy-query` binary with the same arguments, so polars (its engine)
//! stays out of the daemon's binary.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

/// An external subcommand that could not run.
#[derive(Debug, thiserror::Error)]
pub enum ExternalError {
    #[error(
        "`eddy {command}` needs the `{binary}` binary, found neither beside {exe} nor on PATH. \
         Build it with `cargo build --release -p {binary}` (then it is beside `eddy` in \
         target/release), or install the `{binary}` binary next to `eddy` or on PATH"
    )]
    Missing {
        command: String,
        binary: String,
        exe: String,
    },
    #[error("running {path}: {source}")]
    Spawn {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `binary` beside the running executable, else the first on `PATH`.
pub fn locate(binary: &str) -> Option<PathBuf> {
    let name = format!("{binary}{}", std::env::consts::EXE_SUFFIX);
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(&name)));
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join(&name));
    beside.into_iter().chain(on_path).find(|p| is_file(p))
}

fn is_file(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| m.is_file())
}

/// Runs `eddy-{command}` with `args`, waits, and gives its exit code
/// (128 + the signal's number if a signal ended it).
pub fn run(command: &str, args: &[OsString]) -> Result<i32, ExternalError> {
    let binary = format!("eddy-{command}");
    let path = locate(&binary).ok_or_else(|| ExternalError::Missing {
        command: command.to_string(),
        binary: binary.clone(),
        exe: std::env::current_exe().map_or_else(|_| "eddy".into(), |p| p.display().to_string()),
    })?;
    let status =
        Command::new(&path)
            .args(args)
            .status()
            .map_err(|source| ExternalError::Spawn {
                path: path.clone(),
                source,
            })?;
    Ok(status.code().unwrap_or_else(|| {
        use std::os::unix::process::ExitStatusExt;
        128 + status.signal().unwrap_or(0)
    }))
}
