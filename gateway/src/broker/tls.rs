//! The embedded broker's TLS listener (`[broker.tls]`).
//!
//! rmqtt's own TLS listener builds rustls on aws-lc (a C library and
//! cmake in every build, cross builds included); the gateway already
//! has rustls on ring. So TLS ends here: each connection is accepted
//! with tokio-rustls (TLS 1.2 and 1.3, rustls' safe defaults) and its
//! plaintext relayed over loopback to a private broker listener, which
//! treats it as a TLS client ([`super::TLS_LISTENER`]). With
//! `client_ca` every client must present a certificate chaining to it
//! (webpki verification); the certificate's subject common name is the
//! device id, kept in [`TlsPeers`] under the relay connection's address
//! for the broker's access hook while the connection lasts.
//!
//! Handshakes that do not finish within 10 s are dropped; connections
//! beyond `broker.max_connections` are closed at accept. Both counted.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info};

use super::access::TlsPeers;
use crate::config::BrokerTls;
use crate::stats::{self, Stats};

/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect();
    let certs = certs.map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// The rustls server configuration of `tls`.
pub fn server_config(tls: &BrokerTls) -> Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates(&tls.cert)?;
    let key = PrivateKeyDer::from_pem_file(&tls.key)
        .map_err(|e| format!("{}: {e}", tls.key.display()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match &tls.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("{} and {}: {e}", tls.cert.display(), tls.key.display()))
}

/// The subject common name of a DER certificate.
pub fn common_name(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_string)
}

/// Accepts TLS on `listener`, relays each connection to `backend`.
pub fn serve(
    listener: TcpListener,
    config: rustls::ServerConfig,
    backend: SocketAddr,
    peers: Arc<TlsPeers>,
    max_connections: usize,
    stats: Arc<Stats>,
) -> JoinHandle<()> {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let open = Arc::new(AtomicUsize::new(0));
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "embedded MQTT broker listening (TLS)");
    }
    tokio::spawn(async move {
        loop {
            let Ok((tcp, remote)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            if open.load(Ordering::Relaxed) >= max_connections {
                stats::add(&stats.broker_connects_refused, 1);
                drop(tcp);
                continue;
            }
            open.fetch_add(1, Ordering::Relaxed);
            let (acceptor, peers, open, stats) =
                (acceptor.clone(), peers.clone(), open.clone(), stats.clone());
            tokio::spawn(async move {
                relay(tcp, remote, acceptor, backend, &peers, &stats).await;
                open.fetch_sub(1, Ordering::Relaxed);
            });
        }
    })
}

async fn relay(
    tcp: TcpStream,
    remote: SocketAddr,
    acceptor: TlsAcceptor,
    backend: SocketAddr,
    peers: &TlsPeers,
    stats: &Stats,
) {
    let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            stats::add(&stats.broker_tls_handshakes_failed, 1);
            debug!(%remote, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            stats::add(&stats.broker_tls_handshakes_failed, 1);
            debug!(%remote, "TLS handshake timed out");
            return;
        }
    };
    let name = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|leaf| common_name(leaf));
    let Ok(mut plain) = TcpStream::connect(backend).await else {
        return;
    };
    let _ = plain.set_nodelay(true);
    let Ok(local) = plain.local_addr() else {
        return;
    };
    if let Some(name) = name {
        peers.insert(local, name);
    }
    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
    peers.remove(&local);
}
