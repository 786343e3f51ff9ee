//! Child processes that never outlive their owner: a test that fails
//! early, or a bench level that ends, kills what it started.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

/// A child process, killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct ChildGuard(Option<std::process::Child>);

impl ChildGuard {
    /// Spawns `command`.
    pub fn spawn(command: &mut Command) -> io::Result<Self> {
        Ok(Self(Some(command.spawn()?)))
    }

    /// The process id, while the child runs.
    pub fn pid(&self) -> Option<u32> {
        self.0.as_ref().map(std::process::Child::id)
    }

    /// The child (its pipes, `try_wait`), until it is stopped here.
    pub fn get_mut(&mut self) -> Option<&mut std::process::Child> {
        self.0.as_mut()
    }

    /// SIGKILL, then reap; nothing if it was already stopped.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM (a graceful stop), then waits for the exit; `None` if it
    /// was already stopped.
    pub fn terminate(&mut self) -> io::Result<Option<ExitStatus>> {
        let Some(mut child) = self.0.take() else {
            return Ok(None);
        };
        Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()?;
        child.wait().map(Some)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `command` to its end; its standard output (lossy UTF-8) if it
/// exited 0. Panics otherwise, with both outputs: for tests.
pub fn stdout_of_success(command: &mut Command) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?} did not run: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{command:?}: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// How long the gateway may take to open its listeners.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// The `eddy` binary running `eddy run --config CONFIG`, killed when
/// dropped. Logs at `$RUST_LOG`, else warnings, to the inherited stderr.
#[derive(Debug)]
pub struct GatewayProcess(ChildGuard);

impl GatewayProcess {
    /// Starts `eddy` and returns once every address in `listening` accepts
    /// connections (20 s at most; the embedded broker's public listener
    /// opens once ingest subscribed, the HTTP listener last).
    pub fn start(eddy: &Path, config: &Path, listening: &[SocketAddr]) -> io::Result<Self> {
        let child = ChildGuard::spawn(
            Command::new(eddy)
                .args(["run", "--config"])
                .arg(config)
                .env(
                    "RUST_LOG",
                    std::env::var("RUST_LOG").unwrap_or_else(|_| "warn,rmqtt=error".into()),
                )
                .stdout(Stdio::null())
                .stderr(Stdio::inherit()),
        )?;
        for addr in listening {
            crate::wait_listening(*addr, START_TIMEOUT)?;
        }
        Ok(Self(child))
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.0.pid()
    }

    /// SIGKILL: a crash, as far as the store is concerned.
    pub fn kill(&mut self) {
        self.0.kill();
    }

    /// SIGTERM: the gateway commits what it holds and stops; its exit
    /// status (`None` if it was already stopped).
    pub fn terminate(&mut self) -> io::Result<Option<ExitStatus>> {
        self.0.terminate()
    }
}
