//! The pump against a real Mosquitto: readiness, messages, reconnecting
//! and subscribing again after the broker restarts, stopping at the first
//! failure, and a clean disconnect that flushes what was queued.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use eddy_mqtt::{
    AsyncClient, BrokerUrl, Connector, Delivery, Discard, End, NotReady, Pump, QoS, Running,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(10);

/// A throw-away Mosquitto in local-only mode (no config file: loopback,
/// anonymous, no persistence) on a free port, restartable on it.
struct Broker {
    port: u16,
    child: Option<Child>,
}

impl Broker {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut broker = Self { port, child: None };
        broker.launch();
        broker
    }

    fn url(&self) -> BrokerUrl {
        BrokerUrl::tcp("127.0.0.1", self.port)
    }

    fn launch(&mut self) {
        let spawned = Command::new("mosquitto")
            .args(["-p", &self.port.to_string()])
            .stderr(Stdio::null())
            .spawn();
        self.child =
            Some(spawned.expect("mosquitto must be installed (apt-get install mosquitto)"));
        let listening = SocketAddr::from(([127, 0, 0, 1], self.port));
        let give_up = Instant::now() + WAIT;
        while TcpStream::connect(listening).is_err() {
            assert!(Instant::now() < give_up, "no mosquitto on {listening}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The next message's payload, skipping other deliveries.
async fn next_message(rx: &mut mpsc::Receiver<Delivery>) -> Vec<u8> {
    let wait = async {
        loop {
            match rx.recv().await.expect("pump alive") {
                Delivery::Message(m) => return m.payload.to_vec(),
                _ => continue,
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .expect("a message in time")
}

/// A subscriber to `filter` reconnecting fast; its deliveries.
fn subscriber(
    broker: &Broker,
    filter: &str,
    stop: &CancellationToken,
) -> (mpsc::Receiver<Delivery>, Running) {
    let (tx, rx) = mpsc::channel(1024);
    let pump = Pump::new()
        .subscribe(filter, QoS::AtLeastOnce)
        .reconnect(Duration::from_millis(50), Duration::from_millis(300));
    let (_, running) = Connector::new(&broker.url(), "sub")
        .keep_alive(Duration::from_secs(5))
        .spawn(&pump, tx, stop.clone());
    (rx, running)
}

/// A connected publisher that ignores what it receives.
async fn publisher(broker: &Broker, stop: &CancellationToken) -> (AsyncClient, Running) {
    let (client, running) = Connector::new(&broker.url(), "pub")
        .request_capacity(512)
        .spawn(&Pump::new(), Discard, stop.clone());
    running.ready.wait(WAIT).await.expect("publisher ready");
    (client, running)
}

#[tokio::test]
async fn ready_after_the_subscription_then_messages_arrive() {
    let broker = Broker::start();
    let stop = CancellationToken::new();
    let (mut rx, sub) = subscriber(&broker, "t/#", &stop);
    sub.ready.wait(WAIT).await.expect("ready");
    assert!(matches!(
        rx.recv().await,
        Some(Delivery::Connected {
            session_present: false
        })
    ));
    let (client, _) = publisher(&broker, &stop).await;
    client
        .publish("t/1", QoS::AtLeastOnce, false, "hello")
        .await
        .expect("queued");
    assert_eq!(next_message(&mut rx).await, b"hello");

    stop.cancel();
    assert_eq!(sub.task.await.expect("joined"), End::Cancelled);
    assert!(sub.ready.status().ended);
}

#[tokio::test]
async fn reconnects_and_subscribes_again_after_a_broker_restart() {
    let mut broker = Broker::start();
    let stop = CancellationToken::new();
    let (mut rx, sub) = subscriber(&broker, "t/#", &stop);
    sub.ready.wait(WAIT).await.expect("ready");

    // Mosquitto without persistence forgets the subscription.
    broker.kill();
    let lost = async {
        while !matches!(
            rx.recv().await,
            Some(Delivery::Lost {
                retry_in: Some(_),
                ..
            })
        ) {}
    };
    tokio::time::timeout(WAIT, lost)
        .await
        .expect("the loss noticed");
    assert!(!sub.ready.status().connected);
    assert!(matches!(
        sub.ready.wait(Duration::from_millis(200)).await,
        Err(NotReady::Timeout(_))
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    broker.launch();
    sub.ready.wait(WAIT).await.expect("ready again");
    let status = sub.ready.status();
    assert_eq!(status.connects, 2);
    assert!(status.failures >= 1);

    let (client, _) = publisher(&broker, &stop).await;
    client
        .publish("t/after", QoS::AtLeastOnce, false, "again")
        .await
        .expect("queued");
    assert_eq!(next_message(&mut rx).await, b"again");
    stop.cancel();
}

#[tokio::test]
async fn stop_on_error_ends_at_the_first_failure() {
    let mut broker = Broker::start();
    let stop = CancellationToken::new();
    let (tx, mut rx) = mpsc::channel(16);
    let pump = Pump::new().stop_on_error();
    let (_client, running) = Connector::new(&broker.url(), "once").spawn(&pump, tx, stop.clone());
    running.ready.wait(WAIT).await.expect("ready");
    broker.kill();
    let end = tokio::time::timeout(WAIT, running.task)
        .await
        .expect("ended in time")
        .expect("joined");
    assert_eq!(end, End::Failed);
    let mut last = None;
    while let Ok(d) = rx.try_recv() {
        last = Some(d);
    }
    assert!(
        matches!(last, Some(Delivery::Lost { retry_in: None, .. })),
        "the failure is the last delivery: {last:?}"
    );

    // No broker at all: the first attempt fails and the pump ends.
    let (_client, running) =
        Connector::new(&broker.url(), "never").spawn(&pump, |_: Delivery| {}, stop.clone());
    let end = tokio::time::timeout(WAIT, running.task)
        .await
        .expect("in time");
    assert_eq!(end.expect("joined"), End::Failed);
    assert_eq!(
        running.ready.wait(Duration::from_millis(10)).await,
        Err(NotReady::Ended)
    );
}

#[tokio::test]
async fn cancelling_flushes_what_was_queued() {
    let broker = Broker::start();
    let stop = CancellationToken::new();
    let (mut rx, sub) = subscriber(&broker, "flush/#", &stop);
    sub.ready.wait(WAIT).await.expect("ready");

    let publisher_stop = CancellationToken::new();
    let (client, publishing) = publisher(&broker, &publisher_stop).await;
    for i in 0..500u32 {
        client
            .try_publish("flush/n", QoS::AtLeastOnce, false, i.to_be_bytes().to_vec())
            .expect("queued");
    }
    publisher_stop.cancel();
    assert_eq!(publishing.task.await.expect("joined"), End::Cancelled);
    for i in 0..500u32 {
        assert_eq!(next_message(&mut rx).await, i.to_be_bytes());
    }
    stop.cancel();
}
