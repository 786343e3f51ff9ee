//! Running the firmware in QEMU with its UART on a pseudo-terminal, the
//! way `eddy flash --qemu` and the end-to-end test use it.
//!
//! Start-up follows the known-good recipe for QEMU 7.2: start halted
//! (`-S`) with the UART on a pty, read the pty path QEMU prints, let the
//! gateway open it, then resume (`cont` on the monitor). Output written
//! before the host opens the pty would be lost otherwise.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The firmware crate for the QEMU board, relative to the repository root.
pub const BOARD_CRATE: &str = "firmware/qemu";
/// Where `cargo build --release` puts its ELF, relative to the board crate.
pub const BOARD_ELF: &str = "target/thumbv7m-none-eabi/release/eddy-board-qemu";

/// Running QEMU failed.
#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("cannot run {program}: {source} (install it: {hint})")]
    Spawn {
        program: &'static str,
        hint: &'static str,
        source: std::io::Error,
    },
    #[error("building the firmware failed ({status}); see the cargo output above")]
    Build { status: std::process::ExitStatus },
    #[error("firmware image {0} does not exist")]
    NoImage(PathBuf),
    #[error("QEMU exited or said nothing about its serial pty within {0:?}")]
    NoPty(Duration),
    #[error("QEMU monitor: {0}")]
    Monitor(std::io::Error),
}

/// Builds the QEMU board firmware of the repository at `root` (needs the
/// `thumbv7m-none-eabi` target) and returns the ELF's path.
pub fn build_firmware(root: &Path) -> Result<PathBuf, QemuError> {
    let krate = root.join(BOARD_CRATE);
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["build", "--release", "--quiet"])
        .current_dir(&krate)
        // The board crate has its own workspace and target directory.
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .map_err(|source| QemuError::Spawn {
            program: "cargo",
            hint: "rustup, then `rustup target add thumbv7m-none-eabi`",
            source,
        })?;
    if !status.success() {
        return Err(QemuError::Build { status });
    }
    Ok(krate.join(BOARD_ELF))
}

/// A QEMU `lm3s6965evb` running `elf`, its UART0 on a pty. Killed on drop.
#[derive(Debug)]
pub struct QemuBoard {
    child: Child,
    monitor: ChildStdin,
    pty: PathBuf,
}

impl QemuBoard {
    /// Starts QEMU halted and returns once its UART pty exists.
    pub fn start(elf: &Path) -> Result<Self, QemuError> {
        if !elf.is_file() {
            return Err(QemuError::NoImage(elf.to_path_buf()));
        }
        let mut child = Command::new("qemu-system-arm")
            .args(["-M", "lm3s6965evb", "-cpu", "cortex-m3", "-display", "none"])
            .args(["-semihosting-config", "enable=on,target=native"])
            .args(["-S", "-monitor", "stdio", "-serial", "pty", "-kernel"])
            .arg(elf)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| QemuError::Spawn {
                program: "qemu-system-arm",
                hint: "apt-get install qemu-system-arm",
                source,
            })?;
        let (Some(monitor), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err(QemuError::NoPty(Duration::ZERO));
        };
        // QEMU prints "char device redirected to /dev/pts/N (label serial0)".
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("redirected to ").nth(1) {
                    let path = rest.split_whitespace().next().unwrap_or_default();
                    let _ = tx.send(PathBuf::from(path));
                }
                // Keep draining the monitor's output so QEMU never blocks.
            }
        });
        let wait = Duration::from_secs(10);
        match rx.recv_timeout(wait) {
            Ok(pty) => Ok(Self {
                child,
                monitor,
                pty,
            }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(QemuError::NoPty(wait))
            }
        }
    }

    /// The pseudo-terminal that is the board's UART0.
    pub fn pty(&self) -> &Path {
        &self.pty
    }

    /// Lets the halted CPU run (call once the pty is open on the host).
    pub fn resume(&mut self) -> Result<(), QemuError> {
        self.monitor
            .write_all(b"cont\n")
            .and_then(|()| self.monitor.flush())
            .map_err(QemuError::Monitor)
    }

    /// Stops QEMU.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for QemuBoard {
    fn drop(&mut self) {
        self.kill();
    }
}
