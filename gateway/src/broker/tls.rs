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

/// The subject common name (OID 2.5.4.3, RFC 5280 §4.1.2.6) of a DER
/// certificate, when it has one as a UTF8String, PrintableString or
/// IA5String. webpki parses the certificate and hands over the subject
/// `Name`, a SEQUENCE OF RelativeDistinguishedName (SET OF
/// AttributeTypeAndValue); the walk below reads that DER (X.690) and no
/// more. The first common name wins.
pub fn common_name(der: &[u8]) -> Option<String> {
    let der = rustls::pki_types::CertificateDer::from(der);
    let cert = webpki::EndEntityCert::try_from(&der).ok()?;
    let mut rdns = cert.subject();
    while let Some((0x31, rdn, rest)) = tlv(rdns) {
        rdns = rest;
        let mut attributes = rdn;
        while let Some((0x30, attribute, rest)) = tlv(attributes) {
            attributes = rest;
            if let Some((0x06, [0x55, 0x04, 0x03], value)) = tlv(attribute)
                && let Some((0x0c | 0x13 | 0x16, text, _)) = tlv(value)
            {
                return std::str::from_utf8(text).ok().map(str::to_string);
            }
        }
    }
    None
}

/// One DER TLV at the start of `der`: its tag, contents and the bytes
/// after it. Single-byte tags; definite lengths up to 4 bytes.
fn tlv(der: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = der.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81..=0x84 => {
            let n = usize::from(first & 0x7f);
            let (bytes, rest) = rest.split_at_checked(n)?;
            let len = bytes.iter().fold(0usize, |l, &b| (l << 8) | usize::from(b));
            (len, rest)
        }
        _ => return None,
    };
    let (contents, after) = rest.split_at_checked(len)?;
    Some((tag, contents, after))
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn certificate(cn: Option<&str>) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "a plant");
        if let Some(cn) = cn {
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, cn);
        }
        let key = rcgen::KeyPair::generate().expect("key");
        params.self_signed(&key).expect("cert").der().to_vec()
    }

    #[test]
    fn the_common_name_of_a_certificate_is_read_and_its_absence_seen() {
        assert_eq!(
            common_name(&certificate(Some("dev-9"))).as_deref(),
            Some("dev-9")
        );
        let long = "d".repeat(200);
        assert_eq!(common_name(&certificate(Some(&long))), Some(long));
        assert_eq!(common_name(&certificate(None)), None);
        assert_eq!(common_name(b"not a certificate"), None);
    }

    proptest! {
        #[test]
        fn tlv_never_reads_past_its_input(der in prop::collection::vec(any::<u8>(), 0..64)) {
            if let Some((_, contents, after)) = tlv(&der) {
                prop_assert!(contents.len() + after.len() < der.len());
            }
        }
    }
}
