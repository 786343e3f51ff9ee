//! A TCP proxy the testbench controls, put between two components (devices
//! and the broker, the gateway and its upstream) to cut, delay or drop
//! their traffic on cue.
//!
//! - `cut`: closes every open connection and refuses new ones until
//!   `restore` (a cable pulled; clients see a reset and reconnect).
//! - `blackhole`: keeps connections open but discards what they send in
//!   both directions (a silent network: only timeouts notice).
//! - `delay`: holds every chunk for a while before forwarding it.
//!
//! Connections are bounded (`MAX_CONNECTIONS`); beyond it new ones are
//! refused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::debug;

/// Most connections through one proxy at a time.
pub const MAX_CONNECTIONS: usize = 4096;

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    #[default]
    Pass,
    /// Connections closed, new ones refused.
    Cut,
    /// Bytes discarded both ways.
    Blackhole,
    /// Every chunk held this long.
    Delay(Duration),
}

#[derive(Debug, Default)]
struct Counters {
    connections: AtomicUsize,
    accepted: AtomicU64,
    refused: AtomicU64,
    bytes: AtomicU64,
    discarded: AtomicU64,
}

/// A running proxy; dropping it stops it.
#[derive(Debug)]
pub struct Proxy {
    addr: SocketAddr,
    mode: watch::Sender<Mode>,
    counters: Arc<Counters>,
    task: JoinHandle<()>,
}

/// What went through a proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyStats {
    pub open: usize,
    pub accepted: u64,
    pub refused: u64,
    pub bytes: u64,
    pub discarded: u64,
}

impl Proxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let (mode, rx) = watch::channel(Mode::Pass);
        let counters = Arc::new(Counters::default());
        let task = tokio::spawn(accept(listener, target, rx, counters.clone()));
        Ok(Self {
            addr,
            mode,
            counters,
            task,
        })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, mode: Mode) {
        debug!(proxy = %self.addr, ?mode, "proxy mode");
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    pub fn stats(&self) -> ProxyStats {
        let c = &self.counters;
        ProxyStats {
            open: c.connections.load(Ordering::Relaxed),
            accepted: c.accepted.load(Ordering::Relaxed),
            refused: c.refused.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            discarded: c.discarded.load(Ordering::Relaxed),
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.mode.send_replace(Mode::Cut);
    }
}

async fn accept(
    listener: TcpListener,
    target: SocketAddr,
    mode: watch::Receiver<Mode>,
    counters: Arc<Counters>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let refuse = *mode.borrow() == Mode::Cut
            || counters.connections.load(Ordering::Relaxed) >= MAX_CONNECTIONS;
        if refuse {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            drop(client);
            continue;
        }
        let Ok(server) = TcpStream::connect(target).await else {
            counters.refused.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        counters.connections.fetch_add(1, Ordering::Relaxed);
        let (counters, mode) = (counters.clone(), mode.clone());
        tokio::spawn(async move {
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            tokio::select! {
                () = pipe(cr, sw, mode.clone(), &counters) => {}
                () = pipe(sr, cw, mode.clone(), &counters) => {}
                () = cut(mode) => {}
            }
            counters.connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// Resolves once the proxy is cut.
async fn cut(mut mode: watch::Receiver<Mode>) {
    while *mode.borrow_and_update() != Mode::Cut {
        if mode.changed().await.is_err() {
            return;
        }
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mode: watch::Receiver<Mode>,
    counters: &Counters,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        let current = *mode.borrow();
        match current {
            Mode::Blackhole => {
                counters.discarded.fetch_add(n as u64, Ordering::Relaxed);
                continue;
            }
            Mode::Delay(d) => tokio::time::sleep(d).await,
            Mode::Pass | Mode::Cut => {}
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
        counters.bytes.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, timeout: Duration) -> Option<Vec<u8>> {
        stream.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(timeout, stream.read_exact(&mut buf))
            .await
            .ok()?
            .ok()?;
        Some(buf.to_vec())
    }

    #[tokio::test]
    async fn passes_cuts_blackholes_and_delays_traffic() {
        let proxy = Proxy::start(echo_server().await).await.expect("proxy");
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        let t = Duration::from_secs(2);
        assert_eq!(round_trip(&mut s, t).await.as_deref(), Some(&b"ping"[..]));

        proxy.set(Mode::Delay(Duration::from_millis(150)));
        let started = std::time::Instant::now();
        assert!(round_trip(&mut s, t).await.is_some());
        assert!(started.elapsed() >= Duration::from_millis(300), "both ways");

        proxy.set(Mode::Blackhole);
        assert!(
            round_trip(&mut s, Duration::from_millis(300))
                .await
                .is_none()
        );
        assert!(proxy.stats().discarded >= 4);

        proxy.set(Mode::Cut);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(t, s.read(&mut buf)).await;
        assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");
        let mut again = TcpStream::connect(proxy.addr()).await.expect("tcp accept");
        assert!(
            round_trip(&mut again, Duration::from_millis(300))
                .await
                .is_none()
        );
        assert!(proxy.stats().refused >= 1);

        proxy.set(Mode::Pass);
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(round_trip(&mut s, t).await.as_deref(), Some(&b"ping"[..]));
        assert_eq!(proxy.stats().open, 1);
    }
}
