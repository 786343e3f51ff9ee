//! What the gateway's integration tests and the testbench share: a
//! Mosquitto broker on a free port with its own data directory
//! ([`Mosquitto`]), the `eddy` binary and other children killed when
//! dropped ([`process`]), MQTT subscribers that outlive broker restarts
//! ([`mqtt`]), HTTP GETs and `/metrics` values ([`http`]), serial ports on
//! pseudo-terminals ([`pty`]), a small tmpfs to fill ([`disk`]), the
//! exactly-once check of a fleet's frames against a store
//! ([`exactly_once`]), JSON devices whose acknowledged publishes are
//! checked against a store ([`json_device`]), and gateway fixtures
//! ([`gateway`]).
//!
//! Errors are `std::io::Error` values, since the testbench uses these at
//! run time too; tests `expect` them.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod disk;
pub mod exactly_once;
pub mod gateway;
pub mod http;
pub mod json_device;
pub mod mosquitto;
pub mod mqtt;
pub mod process;
pub mod pty;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

pub use mosquitto::Mosquitto;

/// A loopback TCP port nobody listens on right now (the OS picks it; a
/// process started later may still take it first).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Polls `f` every 50 ms until it holds or `timeout` passes; returns
/// whether it held.
pub async fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    f()
}

/// Blocks until `addr` accepts TCP connections; `TimedOut` after `timeout`.
pub fn wait_listening(addr: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    let end = Instant::now() + timeout;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        if Instant::now() > end {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("nothing listened on {addr} within {timeout:?}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}
