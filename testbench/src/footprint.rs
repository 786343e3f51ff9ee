//! `eddy-testbench footprint`: what the daemon costs a board before any
//! device sends anything. For each run, `eddy run` starts on a fresh data
//! directory and free ports; the figures are
//!
//! - **start-up**: from spawning the process to the first MQTT `CONNACK`
//!   (return code 0) its embedded broker sends a client, that is, to
//!   accepting devices (the public listener opens once ingest subscribed);
//! - **idle RSS**: `VmRSS` after it has been idle for `idle` (with a
//!   `runner` such as `qemu-aarch64`, the emulator's RSS, which includes
//!   the translated code: label such figures as emulated);
//! - **binary size**: the file's length.
//!
//! The process is stopped with SIGTERM after each run and must exit 0.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use eddy_test_support::free_port;
use eddy_test_support::process::ChildGuard;
use serde::Serialize;

use crate::scenario::rss_kb;

/// How long a start may take before the run fails (emulation is slow).
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// What to measure.
#[derive(Debug, Clone)]
pub struct FootprintOptions {
    /// The `eddy` binary.
    pub eddy: PathBuf,
    /// A program that runs it (`qemu-aarch64 -L /usr/aarch64-linux-gnu`),
    /// split on whitespace; `None`: run it directly.
    pub runner: Option<String>,
    /// Starts measured.
    pub runs: usize,
    /// Idle time before RSS is read.
    pub idle: Duration,
}

/// The figures of one binary.
#[derive(Debug, Clone, Serialize)]
pub struct Footprint {
    pub binary: String,
    pub runner: Option<String>,
    pub binary_bytes: u64,
    /// Start-up of each run, milliseconds, in run order.
    pub startup_ms: Vec<f64>,
    /// Idle RSS of each run, KiB.
    pub idle_rss_kb: Vec<u64>,
}

impl Footprint {
    /// The median start-up, milliseconds.
    pub fn startup_median_ms(&self) -> f64 {
        median(&self.startup_ms)
    }

    /// The median idle RSS, KiB.
    pub fn idle_rss_median_kb(&self) -> f64 {
        median(
            &self
                .idle_rss_kb
                .iter()
                .map(|&k| k as f64)
                .collect::<Vec<_>>(),
        )
    }

    /// A few lines for people.
    pub fn summary(&self) -> String {
        let label = match &self.runner {
            Some(r) => format!(" (emulated: {r})"),
            None => String::new(),
        };
        let (lo, hi) = self
            .startup_ms
            .iter()
            .fold((f64::MAX, 0.0f64), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        format!(
            "{}{label}\n  binary            {:.1} MB ({} bytes)\n  start to CONNACK  {:.0} ms median of {} (min {:.0}, max {:.0})\n  idle RSS          {:.1} MB median\n",
            self.binary,
            self.binary_bytes as f64 / 1e6,
            self.binary_bytes,
            self.startup_median_ms(),
            self.startup_ms.len(),
            lo,
            hi,
            self.idle_rss_median_kb() / 1024.0,
        )
    }
}

/// Why a measurement failed.
#[derive(Debug, thiserror::Error)]
pub enum FootprintError {
    #[error("{path}: {source}")]
    Binary {
        path: String,
        source: std::io::Error,
    },
    #[error("starting the gateway: {0}")]
    Io(#[from] std::io::Error),
    #[error("the gateway did not accept a device within {0:?}")]
    Timeout(Duration),
    #[error("the gateway exited early: {0}")]
    Exited(std::process::ExitStatus),
    #[error("the gateway did not stop cleanly on SIGTERM: {0:?}")]
    Stop(Option<std::process::ExitStatus>),
    #[error("no VmRSS for pid {0}")]
    Rss(u32),
}

/// Measures `options.runs` starts of `options.eddy`.
pub fn measure(options: &FootprintOptions) -> Result<Footprint, FootprintError> {
    let binary_bytes = std::fs::metadata(&options.eddy)
        .map_err(|source| FootprintError::Binary {
            path: options.eddy.display().to_string(),
            source,
        })?
        .len();
    let mut footprint = Footprint {
        binary: options.eddy.display().to_string(),
        runner: options.runner.clone(),
        binary_bytes,
        startup_ms: Vec::new(),
        idle_rss_kb: Vec::new(),
    };
    for _ in 0..options.runs.max(1) {
        let (startup, rss) = one_run(options)?;
        footprint.startup_ms.push(startup.as_secs_f64() * 1e3);
        footprint.idle_rss_kb.push(rss);
    }
    Ok(footprint)
}

fn one_run(options: &FootprintOptions) -> Result<(Duration, u64), FootprintError> {
    let dir = tempfile::tempdir()?;
    let broker = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let http = SocketAddr::from(([127, 0, 0, 1], free_port()?));
    let config = dir.path().join("eddy.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[broker]\nlisten = \"{broker}\"\n[http]\nlisten = \"{http}\"\n",
            dir.path().join("data")
        ),
    )?;
    let mut command = command(options, &config);
    let started = Instant::now();
    let mut child = ChildGuard::spawn(&mut command)?;
    let pid = child.pid().ok_or(FootprintError::Rss(0))?;
    let startup = loop {
        if connack(broker) {
            break started.elapsed();
        }
        if let Some(status) = child.get_mut().and_then(|c| c.try_wait().ok().flatten()) {
            return Err(FootprintError::Exited(status));
        }
        if started.elapsed() > START_TIMEOUT {
            return Err(FootprintError::Timeout(START_TIMEOUT));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    std::thread::sleep(options.idle);
    let rss = rss_kb(pid).ok_or(FootprintError::Rss(pid))?;
    match child.terminate()? {
        Some(status) if status.success() => Ok((startup, rss)),
        other => Err(FootprintError::Stop(other)),
    }
}

fn command(options: &FootprintOptions, config: &Path) -> Command {
    let mut words = options
        .runner
        .as_deref()
        .unwrap_or_default()
        .split_whitespace();
    let mut command = match words.next() {
        Some(runner) => {
            let mut c = Command::new(runner);
            c.args(words).arg(&options.eddy);
            c
        }
        None => Command::new(&options.eddy),
    };
    command
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn,rmqtt=error")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    command
}

/// An MQTT 3.1.1 `CONNECT`: clean session, keep-alive 30 s, client id
/// `footprint-probe`.
const CONNECT: &[u8] = &[
    0x10, 27, // CONNECT, remaining length
    0, 4, b'M', b'Q', b'T', b'T', 4,    // protocol name, level 4 (3.1.1)
    0x02, // clean session
    0, 30, // keep-alive
    0, 15, b'f', b'o', b'o', b't', b'p', b'r', b'i', b'n', b't', b'-', b'p', b'r', b'o', b'b',
    b'e',
];

/// Whether the broker answers [`CONNECT`] with a `CONNACK` of return code 0.
fn connack(broker: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&broker, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut answer = [0u8; 4];
    let ok = stream.write_all(CONNECT).is_ok()
        && stream.read_exact(&mut answer).is_ok()
        && answer == [0x20, 2, 0, 0];
    // DISCONNECT, so the probe leaves no session behind.
    let _ = stream.write_all(&[0xE0, 0]);
    ok
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_packet_is_well_formed() {
        assert_eq!(CONNECT.len(), 2 + usize::from(CONNECT[1]));
        assert_eq!(&CONNECT[CONNECT.len() - 15..], b"footprint-probe");
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
