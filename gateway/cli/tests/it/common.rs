//! Fixtures of the command line's tests: the shared ones, and the `eddy`
//! binary of this build as a child process.

use std::net::SocketAddr;
use std::path::Path;

pub use eddy_test_support::gateway::*;
use eddy_test_support::process::GatewayProcess;

/// The `eddy` binary of this build running `config`, once its broker
/// listens on `port`.
pub fn eddy_process(config: &Path, port: u16) -> GatewayProcess {
    GatewayProcess::start(
        Path::new(env!("CARGO_BIN_EXE_eddy")),
        config,
        &[SocketAddr::from(([127, 0, 0, 1], port))],
    )
    .expect("eddy starts")
}

/// A finished command's stdout and stderr, as text.
pub fn output_text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Stops `process` with SIGTERM and asserts it exited cleanly.
pub fn terminate(process: &mut GatewayProcess) {
    let status = process.terminate().expect("SIGTERM sent");
    assert!(
        status.is_some_and(|s| s.success()),
        "graceful stop failed: {status:?}"
    );
}
