//! Why the embedded broker's queue limits are raised: with rmqtt's
//! listener defaults a QoS 1 subscriber that falls behind loses messages;
//! with Eddy's defaults it loses none.

use std::time::Duration;

use eddy_gateway::broker::EmbeddedBroker;
use eddy_gateway::config::BrokerConfig;
use eddy_mqtt::{BrokerUrl, Connector, QoS};
use eddy_test_support::mqtt::burst;
use rumqttc::{Event, Packet};

const BURST: usize = 5_000;

/// A persistent QoS 1 subscriber subscribes, goes away while a burst is
/// published, then comes back and drains its session. Returns how many
/// messages it got.
async fn delivered_after_falling_behind(config: BrokerConfig) -> usize {
    tokio::time::timeout(Duration::from_secs(60), run_burst(config))
        .await
        .expect("the burst scenario finishes within 60 s")
}

async fn run_burst(config: BrokerConfig) -> usize {
    let mut broker = EmbeddedBroker::start(&config).await.expect("broker");
    let addr = broker.open().expect("listens");
    let url = BrokerUrl::from(addr);
    let subscriber = Connector::new(&url, "slow-subscriber")
        .clean_session(false)
        .keep_alive(Duration::from_secs(5))
        .request_capacity(16);
    // Subscribe, then disconnect: the session (and its queue) stays.
    {
        let (client, mut eventloop) = subscriber.connect();
        client
            .subscribe("burst/#", QoS::AtLeastOnce)
            .await
            .expect("queued");
        loop {
            if let Ok(Event::Incoming(Packet::SubAck(_))) = eventloop.poll().await {
                break;
            }
        }
        client.disconnect().await.expect("queued");
        loop {
            match eventloop.poll().await {
                Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                Ok(_) => {}
            }
        }
    }
    // Publish the burst with QoS 1 and wait for every PUBACK.
    let burster = Connector::new(&url, "burster").inflight(500);
    let messages = (0..BURST)
        .map(|i| (format!("burst/{i}"), vec![0u8; 32]))
        .collect();
    burst(&burster, messages).await;
    // Come back and count what the session kept.
    let (_client, mut eventloop) = subscriber.connect();
    let mut got = 0;
    loop {
        match tokio::time::timeout(Duration::from_secs(2), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::Publish(_)))) => got += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("subscriber: {e}"),
            Err(_) => break, // quiet for 2 s: the session is drained
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rmqtt_defaults_drop_qos1_messages_for_a_subscriber_that_fell_behind() {
    // rmqtt's own listener defaults: 16 in flight, 1,000 queued.
    let defaults = BrokerConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        max_inflight: 16,
        max_queued_messages: 1000,
        ..BrokerConfig::default()
    };
    let got = delivered_after_falling_behind(defaults).await;
    assert!(
        got < BURST,
        "expected loss with rmqtt defaults, got all {got}"
    );
    eprintln!(
        "rmqtt defaults: {got} of {BURST} delivered ({:.0}% lost)",
        100.0 * (BURST - got) as f64 / BURST as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eddy_broker_defaults_keep_every_qos1_message() {
    let eddy = BrokerConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        ..BrokerConfig::default()
    };
    assert_eq!(delivered_after_falling_behind(eddy).await, BURST);
}
