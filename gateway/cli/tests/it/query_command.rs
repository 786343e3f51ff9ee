//! `eddy query`: runs `eddy-query` (beside `eddy`, else on PATH) with the
//! same arguments and passes its exit code through; without it, says how
//! to get it. A stand-in `eddy-query` script records what it was given.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A copy of this build's `eddy` (a hard link: `current_exe` is the
/// link's path) alone in a new directory.
fn lone_eddy() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir");
    let eddy = dir.path().join("eddy");
    let original = Path::new(env!("CARGO_BIN_EXE_eddy"));
    if std::fs::hard_link(original, &eddy).is_err() {
        std::fs::copy(original, &eddy).expect("eddy copied");
    }
    (dir, eddy)
}

/// An `eddy-query` in `dir` that prints its arguments, one a line, and
/// exits 7.
fn stand_in(dir: &Path) {
    let script = dir.join("eddy-query");
    std::fs::write(
        &script,
        "#!/bin/sh\nfor a in \"$@\"; do echo \"$a\"; done\nexit 7\n",
    )
    .expect("script written");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn eddy_query(eddy: &Path, path: &Path, args: &[&str]) -> Output {
    Command::new(eddy)
        .arg("query")
        .args(args)
        .env("PATH", path)
        .output()
        .expect("eddy runs")
}

const ARGS: [&str; 6] = [
    "--sql",
    "SELECT * FROM samples",
    "--help",
    "-x",
    "--",
    "a b",
];

#[test]
fn query_command_runs_eddy_query_beside_eddy_with_the_same_arguments() {
    let (dir, eddy) = lone_eddy();
    stand_in(dir.path());
    let empty = tempfile::tempdir().expect("tempdir");
    let out = eddy_query(&eddy, empty.path(), &ARGS);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .collect::<Vec<_>>(),
        ARGS
    );
}

#[test]
fn query_command_finds_eddy_query_on_path() {
    let (_dir, eddy) = lone_eddy();
    let bin = tempfile::tempdir().expect("tempdir");
    stand_in(bin.path());
    let out = eddy_query(&eddy, bin.path(), &["--sql", "SELECT 1"]);
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "--sql\nSELECT 1\n");
}

#[test]
fn query_command_without_eddy_query_says_how_to_get_it() {
    let (_dir, eddy) = lone_eddy();
    let empty = tempfile::tempdir().expect("tempdir");
    let out = eddy_query(&eddy, empty.path(), &["--sql", "SELECT 1"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cargo build --release -p eddy-query"), "{err}");
    assert!(err.contains("next to `eddy`"), "{err}");
}
