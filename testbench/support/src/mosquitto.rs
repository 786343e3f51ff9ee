//! A Mosquitto broker on a free loopback port, with its own data
//! directory: what the tests and the testbench run as an external broker.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use tempfile::TempDir;

use crate::process::ChildGuard;

/// The project's recommended settings: persistence, deep queues.
const RECOMMENDED: &str = include_str!("../../../deploy/mosquitto.conf");

/// How long Mosquitto may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running Mosquitto, killed when dropped; its data directory goes with
/// it.
#[derive(Debug)]
pub struct Mosquitto {
    dir: TempDir,
    port: u16,
    /// The configuration after the `listener` line.
    settings: String,
    child: Option<ChildGuard>,
}

impl Mosquitto {
    /// With the recommended settings (`deploy/mosquitto.conf`).
    pub fn start() -> io::Result<Self> {
        Self::start_with("")
    }

    /// With the recommended settings and `extra` appended, e.g. a TLS
    /// listener block; the plain listener on [`port`](Self::port) stays.
    pub fn start_with(extra: &str) -> io::Result<Self> {
        Self::launch_new(|dir| {
            format!(
                "persistence_location {}/\n{RECOMMENDED}\n{extra}\n",
                dir.display()
            )
        })
    }

    /// With `settings` only: no persistence unless they ask for it.
    pub fn with_settings(settings: &str) -> io::Result<Self> {
        Self::launch_new(|_| settings.to_string())
    }

    fn launch_new(settings: impl FnOnce(&Path) -> String) -> io::Result<Self> {
        let dir = tempfile::tempdir()?;
        // Started as root, Mosquitto drops to its own user, which must be
        // able to write its persistence file here.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777))?;
        let mut m = Self {
            settings: settings(dir.path()),
            dir,
            port: crate::free_port()?,
            child: None,
        };
        m.launch()?;
        Ok(m)
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `mqtt://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("mqtt://{}", self.addr())
    }

    /// Starts it (again, after [`stop`](Self::stop)) on the same port with
    /// the same persistence; returns once it listens.
    pub fn launch(&mut self) -> io::Result<()> {
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {} 127.0.0.1\n{}\n", self.port, self.settings),
        )?;
        let child = ChildGuard::spawn(
            Command::new("mosquitto")
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        )
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("mosquitto (apt-get install mosquitto; .ci/run does this): {e}"),
            )
        })?;
        self.child = Some(child);
        crate::wait_listening(self.addr(), START_TIMEOUT)
    }

    /// Stops it gracefully (SIGTERM: it saves its persistence file).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.terminate();
        }
    }

    /// [`stop`](Self::stop), then [`launch`](Self::launch).
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop();
        self.launch()
    }
}
