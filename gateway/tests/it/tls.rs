//! Upstream over TLS: a Mosquitto TLS listener that requires client
//! certificates, with a PKI the test generates (rcgen).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{test_config, test_fleet};
use eddy_firmware_host::run_fleet;
use eddy_gateway::Gateway;
use eddy_gateway::tls::TlsFiles;
use eddy_test_support::mqtt::Collector;
use eddy_test_support::{Mosquitto, free_port, wait_listening, wait_until};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

/// A CA, a server certificate for 127.0.0.1 and 127.0.0.2, a client
/// certificate and a device's (common name `dev-9`), as PEM files
/// readable by the broker's user; a rogue CA.
pub(crate) struct Pki {
    dir: TempDir,
}

impl Pki {
    pub(crate) fn generate() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let pki = Self { dir };
        for (name, ca) in [("ca", "eddy test CA"), ("rogue", "somebody else's CA")] {
            let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.distinguished_name.push(DnType::CommonName, ca);
            let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().expect("key"))
                .expect("CA");
            pki.write(&format!("{name}.pem"), &issuer.pem());
            if name == "ca" {
                let sans = vec!["127.0.0.1".to_string(), "127.0.0.2".to_string()];
                for (leaf, sans, cn) in [
                    ("server", sans, "eddy server"),
                    ("client", vec![], "eddy client"),
                    // A device's certificate: its common name is its id.
                    ("dev-9", vec![], "dev-9"),
                ] {
                    let key = KeyPair::generate().expect("key");
                    let mut params = CertificateParams::new(sans).expect("params");
                    params.distinguished_name.push(DnType::CommonName, cn);
                    let cert = params.signed_by(&key, &issuer).expect("signed");
                    pki.write(&format!("{leaf}.pem"), &cert.pem());
                    pki.write(&format!("{leaf}.key"), &key.serialize_pem());
                }
            }
        }
        pki
    }

    fn write(&self, name: &str, pem: &str) {
        use std::os::unix::fs::PermissionsExt;
        let path = self.path(name);
        std::fs::write(&path, pem).expect("write PEM");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A Mosquitto with its plain listener plus a TLS listener that
    /// requires a client certificate from our CA; returns the TLS port.
    fn broker(&self) -> (Mosquitto, u16) {
        let tls_port = free_port().expect("a free port");
        let p = |n: &str| self.path(n).display().to_string();
        let mosquitto = Mosquitto::start_with(&format!(
            "listener {tls_port} 127.0.0.1\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n",
            p("ca.pem"),
            p("server.pem"),
            p("server.key")
        ))
        .expect("mosquitto starts");
        wait_listening(
            SocketAddr::from(([127, 0, 0, 1], tls_port)),
            Duration::from_secs(10),
        )
        .expect("the TLS listener listens");
        (mosquitto, tls_port)
    }

    fn files(&self, ca: &str, client: bool) -> TlsFiles {
        TlsFiles {
            ca_file: Some(self.path(ca)),
            cert_file: client.then(|| self.path("client.pem")),
            key_file: client.then(|| self.path("client.key")),
        }
    }
}

async fn gateway(data: &Path, tls_port: u16, files: TlsFiles) -> Gateway {
    let mut config = test_config(
        data.to_path_buf(),
        Some(format!("mqtts://127.0.0.1:{tls_port}")),
    );
    if let Some(up) = config.upstream.as_mut() {
        up.tls = Some(files);
    }
    Gateway::start(config).await.expect("gateway starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aggregates_reach_a_tls_upstream_that_requires_client_certificates() {
    let pki = Pki::generate();
    let (broker, tls_port) = pki.broker();
    let mut rx = Collector::start(&broker.url(), "tls-rx", "eddy/v1/#").await;
    let data = tempfile::tempdir().expect("temp dir");
    let gateway = gateway(data.path(), tls_port, pki.files("ca.pem", true)).await;
    let local = gateway.broker().clone();
    let report = run_fleet(
        test_fleet(&local.host, local.port, Duration::from_secs(3)),
        CancellationToken::new(),
    )
    .await
    .expect("fleet ran");
    assert_eq!(report.frames_acked(), report.frames_sent());
    let stats = gateway.stats().clone();
    assert!(
        wait_until(Duration::from_secs(15), || {
            let s = stats.snapshot();
            s.windows_closed > 0 && s.upstream_acked == s.outbox_appended
        })
        .await,
        "upstream over TLS acknowledged {:?}",
        stats.snapshot()
    );
    let appended = stats.snapshot().outbox_appended;
    assert!(
        wait_until(Duration::from_secs(10), || rx.drain().len() as u64
            >= appended)
        .await,
        "records arrived at the subscriber"
    );
    let seqs: Vec<u64> = rx.json().iter().filter_map(|v| v["seq"].as_u64()).collect();
    assert_eq!(seqs, (0..appended).collect::<Vec<_>>());
    assert_eq!(stats.task_restarts().get("upstream"), None);
    gateway.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_or_a_missing_client_certificate_forwards_nothing() {
    let pki = Pki::generate();
    let (_broker, tls_port) = pki.broker();
    for (case, files) in [
        ("server cert from another CA", pki.files("rogue.pem", true)),
        ("no client certificate", pki.files("ca.pem", false)),
    ] {
        let data = tempfile::tempdir().expect("temp dir");
        let gateway = gateway(data.path(), tls_port, files).await;
        let local = gateway.broker().clone();
        let mut fleet = test_fleet(&local.host, local.port, Duration::from_secs(2));
        fleet.devices = 2;
        let report = run_fleet(fleet, CancellationToken::new())
            .await
            .expect("fleet ran");
        assert_eq!(
            report.frames_acked(),
            report.frames_sent(),
            "{case}: ingest is unaffected"
        );
        let stats = gateway.stats().clone();
        assert!(
            wait_until(Duration::from_secs(10), || {
                stats.task_restarts().get("upstream").copied().unwrap_or(0) >= 2
            })
            .await,
            "{case}: the sink keeps failing and is restarted"
        );
        assert_eq!(stats.snapshot().upstream_acked, 0, "{case}");
        gateway.shutdown().await.expect("clean shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_certificate_file_stops_start_up_naming_it() {
    let pki = Pki::generate();
    let data = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(
        data.path().to_path_buf(),
        Some("mqtts://127.0.0.1:1".into()),
    );
    if let Some(up) = config.upstream.as_mut() {
        up.tls = Some(TlsFiles {
            ca_file: Some(pki.path("nope.pem")),
            ..TlsFiles::default()
        });
    }
    let err = Gateway::start(config).await.expect_err("must not start");
    assert!(err.to_string().contains("nope.pem"), "{err}");
}
