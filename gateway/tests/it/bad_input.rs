//! Malformed, oversized and misaddressed messages are counted and logged;
//! the gateway keeps running and loses nothing it already accepted.

use std::time::Duration;

use crate::common::*;
use eddy_gateway::Gateway;
use eddy_mqtt::{Connector, QoS};
use eddy_proto::{Frame, MAX_FRAME_LEN, Reading, Telemetry};
use eddy_test_support::wait_until;
use rumqttc::{Event, Packet};

fn frame(device: &str, seq: u32, value: f64) -> Vec<u8> {
    let f = Frame::Telemetry(Telemetry {
        device: device.try_into().expect("fits"),
        boot: 1,
        seq,
        oldest: 0,
        timestamp_ms: 0,
        readings: [Reading {
            metric: "temperature".try_into().expect("fits"),
            value,
        }]
        .into_iter()
        .collect(),
    });
    let mut buf = [0u8; MAX_FRAME_LEN];
    eddy_proto::encode(&f, &mut buf).expect("encodes").to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_messages_are_counted_and_good_ones_are_all_kept() {
    let data = tempfile::tempdir().expect("temp dir");
    let mut config = test_config(data.path().to_path_buf(), None);
    config.ingest.topics.push(
        toml::from_str(
            r#"filter = "tele/+/SENSOR"
format = "json"
device_level = 1"#,
        )
        .expect("mapping"),
    );
    let gateway = Gateway::start(config).await.expect("gateway starts");
    let stats = gateway.stats().clone();
    let broker = gateway.broker().clone();

    let (client, mut eventloop) = Connector::new(&broker, "bad-actor")
        .max_packet_size(1 << 20)
        .request_capacity(256)
        .connect();
    let acks = tokio::spawn(async move {
        let mut acked = 0;
        while acked < 13 {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(_) => {}
                Err(e) => panic!("publisher connection failed: {e}"),
            }
        }
    });
    let t = |d: &str| format!("eddy/v1/{d}/telemetry");
    let publish = |topic: String, payload: Vec<u8>| {
        let client = client.clone();
        async move {
            client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .expect("queued");
        }
    };

    // Good before.
    publish(t("good-1"), frame("good-1", 0, 20.0)).await;
    publish(
        t("good-2"),
        br#"{"temperature": 21.0, "humidity": 40}"#.to_vec(),
    )
    .await;
    // Malformed: 7 kinds.
    publish(t("bad-1"), vec![1, 0xff, 0xff, 0xff]).await; // truncated frame body
    publish(t("bad-1"), vec![9, 1, 2, 3]).await; // unknown wire version
    publish(t("bad-1"), frame("someone-else", 0, 1.0)).await; // device mismatch
    publish(t("bad-1"), b"{\"temperature\": 2".to_vec()).await; // broken JSON
    publish(t("bad-1"), b"{\"status\": \"ok\"}".to_vec()).await; // no readings
    publish(t(&"d".repeat(200)), b"{\"t\": 1}".to_vec()).await; // device id over 128 bytes
    publish("tele/plug-1/SENSOR".into(), b"[1,2,3]".to_vec()).await; // not an object
    // Oversized: over the 64 KiB payload limit, under the broker's packet limit.
    publish(t("big-1"), vec![b'{'; 100 * 1024]).await;
    // A topic nobody subscribed to never reaches the gateway.
    publish("eddy/v1/x/other".into(), b"{}".to_vec()).await;
    // Good after: the gateway still works.
    publish(t("good-1"), frame("good-1", 1, 22.0)).await;
    publish(
        "tele/plug-1/SENSOR".into(),
        br#"{"ENERGY": {"Power": 5.5}}"#.to_vec(),
    )
    .await;
    tokio::time::timeout(Duration::from_secs(10), acks)
        .await
        .expect("broker acknowledged every publish")
        .expect("publisher task");

    assert!(
        wait_until(Duration::from_secs(10), || {
            let s = stats.snapshot();
            // Accepted counts at decode, before the batch commits: wait
            // for the commit too before reading the store.
            s.messages_accepted == 4
                && s.messages_malformed == 7
                && s.messages_oversized == 1
                && s.samples_committed == 5
        })
        .await,
        "{}",
        stats.snapshot()
    );
    let stored = stored_per_device(&gateway).await;
    assert_eq!(stored.get("good-1"), Some(&2));
    assert_eq!(stored.get("good-2"), Some(&2));
    assert_eq!(stored.get("plug-1"), Some(&1));
    assert_eq!(
        stored.len(),
        3,
        "nothing from rejected messages: {stored:?}"
    );
    assert_eq!(stats.snapshot().samples_committed, 5);
    assert_eq!(stats.snapshot().messages_received, 12);
    gateway.shutdown().await.expect("clean shutdown");
}
