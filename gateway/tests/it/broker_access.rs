//! Who may use the embedded broker, tried from a second loopback address
//! (127.0.0.2, standing for another host) with a real client: devices
//! with credentials or a client certificate, only on their own topics;
//! the gateway's client ids kept for the gateway; forged device ids never
//! reach admission.

use std::net::SocketAddr;
use std::time::Duration;

use eddy_gateway::Gateway;
use eddy_gateway::config::{BrokerConfig, BrokerTls};
use eddy_gateway::tls::TlsFiles;
use eddy_test_support::http::{admin_token, api_call};
use eddy_test_support::wait_until;
use hyper::Method;
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS,
    SubscribeReasonCode, TlsConfiguration, Transport,
};
use serde_json::{Value, json};

use crate::common::{test_config, wait_committed};
use crate::tls::Pki;

const OTHER_HOST: [u8; 4] = [127, 0, 0, 2];

/// How a test client connects.
#[derive(Default)]
struct Login<'a> {
    credentials: Option<(&'a str, &'a str)>,
    tls: Option<TlsFiles>,
}

/// Connects `client_id` to `addr`; the CONNACK's refusal, if refused.
async fn connect(
    addr: SocketAddr,
    client_id: &str,
    login: Login<'_>,
) -> Result<(AsyncClient, EventLoop), ConnectionError> {
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(5));
    if let Some((user, password)) = login.credentials {
        options.set_credentials(user, password);
    }
    if let Some(files) = &login.tls {
        let config = eddy_mqtt::tls::client_config(files).expect("client TLS config");
        options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(config)));
    }
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll())
            .await
            .expect("an answer to CONNECT within 10 s")
        {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok((client, eventloop)),
            Ok(_) => {}
            Err(e) => return Err(e),
        }
    }
}

fn refused_with(result: Result<(AsyncClient, EventLoop), ConnectionError>) -> ConnectReturnCode {
    match result {
        Err(ConnectionError::ConnectionRefused(code)) => code,
        Err(e) => panic!("expected a refusing CONNACK, got {e}"),
        Ok(_) => panic!("expected a refusal, the broker accepted"),
    }
}

/// The next SUBACK's first return code.
async fn subscribe(client: &AsyncClient, eventloop: &mut EventLoop, filter: &str) -> bool {
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("queued");
    loop {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll())
            .await
            .expect("a SUBACK within 10 s")
        {
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                return matches!(ack.return_codes[0], SubscribeReasonCode::Success(_));
            }
            Ok(_) => {}
            Err(e) => panic!("subscribing to {filter}: {e}"),
        }
    }
}

/// Publishes one reading with QoS 1 and waits for its PUBACK (MQTT 3.1.1
/// has no negative PUBACK: a refused publish is acknowledged and dropped).
async fn publish(client: &AsyncClient, eventloop: &mut EventLoop, topic: &str, value: f64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970");
    let payload = json!({"temperature": value, "ts": now.as_millis() as i64});
    client
        .publish(topic, QoS::AtLeastOnce, false, payload.to_string())
        .await
        .expect("queued");
    loop {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll())
            .await
            .expect("a PUBACK within 10 s")
        {
            Ok(Event::Incoming(Packet::PubAck(_))) => return,
            Ok(_) => {}
            Err(e) => panic!("publishing on {topic}: {e}"),
        }
    }
}

/// Connects with raw MQTT 3.1.1 bytes, publishes on `topic` with QoS 1;
/// whether the broker closed the connection instead of a PUBACK.
async fn raw_publish_closes(addr: SocketAddr, topic: &str) -> bool {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let id = b"raw-client";
    let mut connect = vec![0x10, (10 + 2 + id.len()) as u8];
    connect.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60]);
    connect.extend_from_slice(&[0, id.len() as u8]);
    connect.extend_from_slice(id);
    stream.write_all(&connect).await.expect("CONNECT sent");
    let mut connack = [0u8; 4];
    stream.read_exact(&mut connack).await.expect("CONNACK");
    assert_eq!(connack, [0x20, 2, 0, 0], "accepted");
    let mut publish = vec![0x32, (2 + topic.len() + 2 + 2) as u8, 0, topic.len() as u8];
    publish.extend_from_slice(topic.as_bytes());
    publish.extend_from_slice(&[0, 1, b'{', b'}']);
    stream.write_all(&publish).await.expect("PUBLISH sent");
    let mut answer = [0u8; 4];
    match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer)).await {
        Ok(Ok(0)) | Ok(Err(_)) => true,
        Ok(Ok(_)) => false,
        Err(_) => panic!("neither a PUBACK nor a close within 10 s"),
    }
}

/// Device credentials made through the API: the secret.
async fn add_device(gateway: &Gateway, admin: &str, device: &str, role: &str) -> String {
    let http = gateway.http_addr().expect("HTTP on");
    let body = json!({"device": device, "role": role}).to_string();
    let (status, made) = api_call(http, Method::POST, "/api/credentials", admin, body).await;
    assert_eq!(status, 201, "{made}");
    let made: Value = serde_json::from_str(&made).expect("json");
    made["secret"].as_str().expect("secret").to_string()
}

async fn gateway(data: &std::path::Path, broker: BrokerConfig) -> Gateway {
    let mut config = test_config(data.to_path_buf(), None);
    config.broker = broker;
    Gateway::start(config).await.expect("gateway starts")
}

fn on_other_host(allow_anonymous: Option<bool>) -> BrokerConfig {
    BrokerConfig {
        listen: SocketAddr::from((OTHER_HOST, 0)),
        allow_anonymous,
        ..BrokerConfig::default()
    }
}

#[test]
fn anonymous_clients_are_admitted_by_default_only_on_loopback() {
    let on = |listen: [u8; 4], allow_anonymous| BrokerConfig {
        listen: SocketAddr::from((listen, 1883)),
        allow_anonymous,
        ..BrokerConfig::default()
    };
    assert!(BrokerConfig::default().anonymous_allowed());
    assert!(on([127, 0, 0, 1], None).anonymous_allowed());
    assert!(!on([0, 0, 0, 0], None).anonymous_allowed());
    assert!(!on([192, 168, 1, 5], None).anonymous_allowed());
    assert!(on([0, 0, 0, 0], Some(true)).anonymous_allowed());
    assert!(!on([127, 0, 0, 1], Some(false)).anonymous_allowed());
    let mut tls_outside = on([127, 0, 0, 1], None);
    tls_outside.tls = Some(BrokerTls {
        listen: SocketAddr::from(([0, 0, 0, 0], 8883)),
        cert: "server.pem".into(),
        key: "server.key".into(),
        client_ca: None,
    });
    assert!(
        !tls_outside.anonymous_allowed(),
        "a TLS listener off loopback needs credentials too"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_gets_in_with_its_secret_only_and_stays_on_its_own_topics() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let gateway = gateway(&data, on_other_host(Some(false))).await;
    let addr: SocketAddr = format!("{}:{}", gateway.broker().host, gateway.broker().port)
        .parse()
        .expect("address");
    assert_eq!(addr.ip(), std::net::IpAddr::from(OTHER_HOST));
    let admin = admin_token(&data);
    let http = gateway.http_addr().expect("HTTP on");
    let (status, _) = api_call(
        http,
        Method::POST,
        "/api/credentials",
        "eddy_not-a-token",
        json!({"device": "dev-1"}).to_string(),
    )
    .await;
    assert_eq!(status, 401, "credentials need an admin token");
    let secret = add_device(&gateway, &admin, "dev-1", "device").await;
    let listed = api_call(http, Method::GET, "/api/credentials", &admin, "").await;
    assert!(
        listed.1.contains("dev-1") && !listed.1.contains("argon2"),
        "{listed:?}"
    );
    let stored = std::fs::read_to_string(data.join("devices.json")).expect("devices.json");
    assert!(stored.contains("$argon2id$") && !stored.contains(&secret));

    // Refused: no credentials, an unknown device, a wrong secret.
    let refusals = [
        (Login::default(), ConnectReturnCode::NotAuthorized),
        (
            Login {
                credentials: Some(("dev-2", &secret)),
                ..Login::default()
            },
            ConnectReturnCode::BadUserNamePassword,
        ),
        (
            Login {
                credentials: Some(("dev-1", "0123456789abcdef")),
                ..Login::default()
            },
            ConnectReturnCode::BadUserNamePassword,
        ),
    ];
    for (login, code) in refusals {
        assert_eq!(refused_with(connect(addr, "intruder", login).await), code);
    }

    let as_dev1 = || Login {
        credentials: Some(("dev-1", &secret)),
        ..Login::default()
    };
    let (client, mut events) = connect(addr, "dev-1", as_dev1()).await.expect("admitted");
    publish(&client, &mut events, "eddy/v1/dev-1/telemetry", 21.0).await;
    wait_committed(&gateway, 1).await;
    let stats = gateway.stats().clone();
    // Forged ids: none is stored or admitted, however many.
    for i in 0..50 {
        publish(
            &client,
            &mut events,
            &format!("eddy/v1/forged-{i}/telemetry"),
            99.0,
        )
        .await;
    }
    publish(&client, &mut events, "eddy/v1/dev-1/telemetry", 22.0).await;
    wait_committed(&gateway, 2).await;
    assert!(subscribe(&client, &mut events, "eddy/v1/dev-1/cmd").await);
    assert!(subscribe(&client, &mut events, "eddy/v1/dev-1/ack").await);
    for filter in ["eddy/#", "eddy/v1/+/cmd", "eddy/v1/dev-2/cmd", "#"] {
        assert!(
            !subscribe(&client, &mut events, filter).await,
            "{filter} is not dev-1's"
        );
    }
    let s = stats.snapshot();
    assert_eq!(s.samples_committed, 2);
    assert_eq!(s.broker_publishes_denied, 50);
    assert_eq!(s.broker_subscribes_denied, 4);
    assert_eq!(s.broker_connects_refused, 3);
    assert_eq!(s.frames_device_cap, 0);

    // An observer reads everything and writes nothing.
    let watch = add_device(&gateway, &admin, "dashboard", "observer").await;
    let login = Login {
        credentials: Some(("dashboard", &watch)),
        ..Login::default()
    };
    let (observer, mut observed) = connect(addr, "dashboard", login).await.expect("admitted");
    assert!(subscribe(&observer, &mut observed, "eddy/#").await);
    publish(&observer, &mut observed, "eddy/v1/dashboard/telemetry", 1.0).await;
    assert_eq!(stats.snapshot().broker_publishes_denied, 51);

    // Revoked: the next CONNECT is refused.
    let (status, _) = api_call(http, Method::DELETE, "/api/credentials/dev-1", &admin, "").await;
    assert_eq!(status, 204);
    assert_eq!(
        refused_with(connect(addr, "dev-1", as_dev1()).await),
        ConnectReturnCode::BadUserNamePassword
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stats.snapshot().samples_committed, 2);
    gateway.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_clients_on_loopback_cannot_take_the_gateways_ids_or_break_topic_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let gateway = gateway(
        &data,
        BrokerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..BrokerConfig::default()
        },
    )
    .await;
    let addr: SocketAddr = format!("{}:{}", gateway.broker().host, gateway.broker().port)
        .parse()
        .expect("address");
    for id in ["eddy-gateway", "eddy-gateway-ota", "eddy-gateway-out"] {
        assert_eq!(
            refused_with(connect(addr, id, Login::default()).await),
            ConnectReturnCode::NotAuthorized,
            "{id} is the gateway's"
        );
    }
    let (client, mut events) = connect(addr, "eddy-gatewayish", Login::default())
        .await
        .expect("an anonymous client on loopback is admitted");
    assert!(subscribe(&client, &mut events, "eddy/#").await);
    assert!(
        !subscribe(&client, &mut events, "$share/g/eddy/#").await,
        "shared subscriptions are declared unavailable, not accepted and never delivered"
    );
    // A topic name with a wildcard is a protocol error: disconnected.
    // (Clients refuse to send one; this is what a broken one sends.)
    assert!(
        raw_publish_closes(addr, "eddy/v1/+/telemetry").await,
        "a PUBLISH to a topic with `+` closes the connection"
    );
    let s = gateway.stats().snapshot();
    assert_eq!(s.broker_connects_refused, 3);
    assert_eq!(s.broker_subscribes_denied, 1);
    assert_eq!(s.broker_publishes_denied, 1);
    assert_eq!(s.messages_received, 0);
    gateway.shutdown().await.expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_the_tls_listener_a_device_certificate_names_the_device() {
    let pki = Pki::generate();
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut broker = on_other_host(Some(false));
    broker.tls = Some(BrokerTls {
        listen: SocketAddr::from((OTHER_HOST, 0)),
        cert: pki.path("server.pem"),
        key: pki.path("server.key"),
        client_ca: Some(pki.path("ca.pem")),
    });
    let gateway = gateway(&data, broker).await;
    let tls = gateway.broker_tls().expect("the TLS listener is open");
    let files = |cert: Option<&str>, ca: &str| TlsFiles {
        ca_file: Some(pki.path(ca)),
        cert_file: cert.map(|c| pki.path(&format!("{c}.pem"))),
        key_file: cert.map(|c| pki.path(&format!("{c}.key"))),
    };
    let login = Login {
        tls: Some(files(Some("dev-9"), "ca.pem")),
        ..Login::default()
    };
    let (client, mut events) = connect(tls, "any-client-id", login)
        .await
        .expect("the certificate admits dev-9 without a password");
    publish(&client, &mut events, "eddy/v1/dev-9/telemetry", 20.5).await;
    publish(&client, &mut events, "eddy/v1/dev-1/telemetry", 99.0).await;
    assert!(subscribe(&client, &mut events, "eddy/v1/dev-9/cmd").await);
    assert!(!subscribe(&client, &mut events, "eddy/v1/dev-1/cmd").await);
    wait_committed(&gateway, 1).await;
    let stats = gateway.stats().clone();
    // A user name that is not the certificate's is refused.
    let login = Login {
        credentials: Some(("dev-1", "whatever")),
        tls: Some(files(Some("dev-9"), "ca.pem")),
    };
    assert_eq!(
        refused_with(connect(tls, "dev-9b", login).await),
        ConnectReturnCode::NotAuthorized
    );
    // No client certificate: the handshake fails.
    let login = Login {
        tls: Some(files(None, "ca.pem")),
        ..Login::default()
    };
    assert!(connect(tls, "no-cert", login).await.is_err());
    assert!(
        wait_until(Duration::from_secs(5), || stats
            .snapshot()
            .broker_tls_handshakes_failed
            >= 1)
        .await
    );
    let s = stats.snapshot();
    assert_eq!(s.samples_committed, 1);
    assert_eq!(s.broker_publishes_denied, 1);
    assert_eq!(s.broker_subscribes_denied, 1);
    gateway.shutdown().await.expect("clean shutdown");
}

/// CONNECT with a clean session: the CONNACK's session-present flag.
async fn connack(addr: SocketAddr, client_id: &str) -> (AsyncClient, EventLoop, bool) {
    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options.set_clean_session(true);
    let (client, mut eventloop) = AsyncClient::new(options, 16);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll())
            .await
            .expect("an answer to CONNECT within 10 s")
        {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                return (client, eventloop, ack.session_present);
            }
            Ok(_) => {}
            Err(e) => panic!("{client_id}: CONNECT refused: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_reconnecting_at_once_is_never_turned_away_nor_given_its_old_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = gateway(&dir.path().join("data"), on_other_host(Some(true))).await;
    let addr: SocketAddr = format!("{}:{}", gateway.broker().host, gateway.broker().port)
        .parse()
        .expect("address");
    let (probe, mut probe_events, _) = connack(addr, "blip-probe").await;
    let poll_probe = tokio::spawn(async move { while probe_events.poll().await.is_ok() {} });
    for round in 0..200 {
        let (client, mut events, present) = connack(addr, "blip").await;
        assert!(!present, "round {round}: a clean start resumed a session");
        assert!(subscribe(&client, &mut events, &format!("blip/old/{round}")).await);
        // The network drops: no DISCONNECT, the socket just closes.
        drop((client, events));
        let (client, mut events, present) = connack(addr, "blip").await;
        assert!(!present, "round {round}: a clean start resumed a session");
        if round % 20 == 0 {
            // The old subscription must not deliver to the new session.
            probe
                .publish(format!("blip/old/{round}"), QoS::AtLeastOnce, false, "x")
                .await
                .expect("queued");
            let got = tokio::time::timeout(Duration::from_millis(300), async {
                loop {
                    match events.poll().await {
                        Ok(Event::Incoming(Packet::Publish(p))) => break Some(p.topic),
                        Ok(_) => {}
                        Err(_) => break None,
                    }
                }
            })
            .await;
            assert!(
                !matches!(got, Ok(Some(_))),
                "round {round}: the old session's subscription delivered {got:?}"
            );
        }
        client.disconnect().await.expect("queued");
        drop(events);
    }
    poll_probe.abort();
    gateway.shutdown().await.expect("clean shutdown");
}
