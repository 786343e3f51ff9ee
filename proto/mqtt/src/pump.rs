//! The supervised event-loop pump: the one place an Eddy client's rumqttc
//! event loop is polled.
//!
//! rumqttc does nothing unless its event loop is polled, and reconnects
//! by being polled again after an error. The pump polls it until
//! cancelled, subscribes again at every CONNACK (a clean session forgets
//! subscriptions, a restarted broker forgets everything), backs off
//! between failed connections, and hands what the caller needs to a
//! [`Handler`] in the event loop's order. [`Ready`] tells whether the
//! client is connected with every subscription acknowledged, and counts
//! connections and failures.

use std::future::Future;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rumqttc::{
    AsyncClient, ConnectionError, Event, EventLoop, Outgoing, Packet, Publish, QoS,
    SubscribeReasonCode,
};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Exponential backoff with full jitter: attempt 0 waits up to `base`,
/// each failure doubles the bound, up to `max`; the wait is drawn from the
/// upper half of the bound.
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let bound = base.saturating_mul(1u32 << attempt.min(16)).min(max);
    let ms = u64::try_from(bound.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
}

/// What the pump hands its [`Handler`], in the event loop's order. Other
/// packets (pings, SUBACKs, acknowledgements this client sends) are not
/// handed over.
#[derive(Debug)]
pub enum Delivery {
    /// CONNACK: connected; the pump's subscriptions have been requested
    /// again. Requests queued while disconnected go out now; anything the
    /// caller must redo on a new connection goes here.
    Connected {
        /// The broker kept this client's session (`clean_session(false)`).
        session_present: bool,
    },
    /// A message on a subscribed topic. With manual acks, the caller
    /// acknowledges it through the client.
    Message(Publish),
    /// A QoS 1 or 2 publish of this client went out with packet id
    /// `pkid` (in the order of the publish calls; QoS 0 ones have none).
    Sent {
        /// Its packet id.
        pkid: u16,
    },
    /// The broker acknowledged (PUBACK) this client's publish `pkid`.
    Acked {
        /// The packet id.
        pkid: u16,
    },
    /// The connection failed or could not be made.
    Lost {
        /// Why.
        error: ConnectionError,
        /// When the pump connects again; `None` when it stops
        /// ([`Pump::stop_on_error`]).
        retry_in: Option<Duration>,
    },
}

/// Takes the pump's deliveries.
///
/// The pump polls no further until `deliver` returns, so a handler that
/// waits (a full channel) stops the client reading: TCP backpressure
/// reaches the broker, which holds the rest. Requests the caller makes on
/// the client meanwhile are queued, not lost. `ControlFlow::Break` stops
/// the pump (it disconnects cleanly).
///
/// Implemented for closures `FnMut(Delivery)` (handled at once, never
/// stop), for `mpsc::Sender<Delivery>` (waits while the channel is full,
/// stops when it is closed) and for [`Discard`].
pub trait Handler: Send {
    /// Takes one delivery.
    fn deliver(&mut self, delivery: Delivery) -> impl Future<Output = ControlFlow<()>> + Send;
}

impl<F: FnMut(Delivery) + Send> Handler for F {
    fn deliver(&mut self, delivery: Delivery) -> impl Future<Output = ControlFlow<()>> + Send {
        self(delivery);
        std::future::ready(ControlFlow::Continue(()))
    }
}

impl Handler for mpsc::Sender<Delivery> {
    async fn deliver(&mut self, delivery: Delivery) -> ControlFlow<()> {
        match self.send(delivery).await {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    }
}

/// A handler for clients that only publish: drops every delivery.
#[derive(Debug, Clone, Copy, Default)]
pub struct Discard;

impl Handler for Discard {
    fn deliver(&mut self, _: Delivery) -> impl Future<Output = ControlFlow<()>> + Send {
        std::future::ready(ControlFlow::Continue(()))
    }
}

/// What the pump does when the connection fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// Connect again after [`backoff`] from `base` to `max` (reset by a
    /// CONNACK). Packets awaiting acknowledgement are sent again.
    Reconnect {
        /// First wait bound.
        base: Duration,
        /// Largest wait bound.
        max: Duration,
    },
    /// Hand over [`Delivery::Lost`] and end with [`End::Failed`]; for
    /// callers that start over themselves (a supervised session).
    Stop,
}

/// Why a pump ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Its cancellation token fired.
    Cancelled,
    /// The handler answered `Break`.
    Stopped,
    /// The connection failed under [`OnError::Stop`].
    Failed,
}

/// The state of a pump's client, as [`Ready`] shows it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Status {
    /// Connected (CONNACK seen, no failure since).
    pub connected: bool,
    /// Connected and every subscription of this connection acknowledged.
    pub ready: bool,
    /// CONNACKs so far; more than one means reconnects.
    pub connects: u64,
    /// Failed connections and connection attempts so far.
    pub failures: u64,
    /// The pump has ended.
    pub ended: bool,
}

/// The pump did not become ready in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotReady {
    /// Not connected and subscribed within the wait.
    #[error("not connected and subscribed within {0:?}")]
    Timeout(Duration),
    /// The pump ended first.
    #[error("the MQTT pump ended before it was connected and subscribed")]
    Ended,
}

/// Watches a pump's [`Status`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct Ready(watch::Receiver<Status>);

impl Ready {
    /// The status now.
    pub fn status(&self) -> Status {
        *self.0.borrow()
    }

    /// Waits until connected with every subscription acknowledged (at
    /// once if it is now), for at most `timeout`.
    pub async fn wait(&self, timeout: Duration) -> Result<(), NotReady> {
        let mut rx = self.0.clone();
        match tokio::time::timeout(timeout, rx.wait_for(|s| s.ready || s.ended)).await {
            Ok(Ok(s)) if s.ready => Ok(()),
            Ok(_) => Err(NotReady::Ended),
            Err(_) => Err(NotReady::Timeout(timeout)),
        }
    }
}

/// A pump running on its own task.
#[derive(Debug)]
pub struct Running {
    /// Its status.
    pub ready: Ready,
    /// Its task; ends after a clean disconnect.
    pub task: JoinHandle<End>,
}

/// How a client's event loop is driven: its subscriptions, what happens
/// on failure, how long a clean disconnect may take. Clones share one
/// [`Status`], so a caller that restarts its client (a new event loop on
/// the same pump) keeps one [`Ready`] across restarts.
#[derive(Debug, Clone)]
pub struct Pump {
    subscriptions: Vec<(String, QoS)>,
    on_error: OnError,
    linger: Duration,
    status: Arc<watch::Sender<Status>>,
}

impl Default for Pump {
    fn default() -> Self {
        Self::new()
    }
}

impl Pump {
    /// No subscriptions; reconnects with backoff from 100 ms to 5 s; a
    /// clean disconnect flushes for at most 2 s.
    pub fn new() -> Self {
        Self {
            subscriptions: Vec::new(),
            on_error: OnError::Reconnect {
                base: Duration::from_millis(100),
                max: Duration::from_secs(5),
            },
            linger: Duration::from_secs(2),
            status: Arc::new(watch::Sender::new(Status::default())),
        }
    }

    /// Subscribes to `filter` at every CONNACK.
    pub fn subscribe(mut self, filter: impl Into<String>, qos: QoS) -> Self {
        self.subscriptions.push((filter.into(), qos));
        self
    }

    /// Waits between connection attempts: [`backoff`] from `base` to `max`.
    pub fn reconnect(mut self, base: Duration, max: Duration) -> Self {
        self.on_error = OnError::Reconnect { base, max };
        self
    }

    /// Ends at the first connection failure ([`OnError::Stop`]).
    pub fn stop_on_error(mut self) -> Self {
        self.on_error = OnError::Stop;
        self
    }

    /// Longest a clean disconnect (at cancellation or a handler's
    /// `Break`) keeps polling, so that queued requests (publishes,
    /// acknowledgements) reach the broker first.
    pub fn linger(mut self, flush: Duration) -> Self {
        self.linger = flush;
        self
    }

    /// The pump's status, shared by every run.
    pub fn ready(&self) -> Ready {
        Ready(self.status.subscribe())
    }

    /// Runs [`run`](Self::run) on a task of its own.
    pub fn spawn<H: Handler + 'static>(
        &self,
        client: AsyncClient,
        eventloop: EventLoop,
        handler: H,
        cancel: CancellationToken,
    ) -> Running {
        let pump = self.clone();
        let ready = self.ready();
        let task = tokio::spawn(async move { pump.run(client, eventloop, handler, &cancel).await });
        Running { ready, task }
    }

    /// Polls `eventloop` (the one of `client`) until `cancel` fires, the
    /// handler stops, or (with [`stop_on_error`](Self::stop_on_error)) the
    /// connection fails. Cancellation is checked while polling, while
    /// handing over and while backing off. Ending by cancellation or the
    /// handler, a connected client disconnects cleanly: what it queued
    /// before goes out first, for at most the linger time.
    pub async fn run<H: Handler>(
        &self,
        client: AsyncClient,
        mut eventloop: EventLoop,
        mut handler: H,
        cancel: &CancellationToken,
    ) -> End {
        let id = eventloop.mqtt_options.client_id();
        let mut failures = 0u32;
        let mut pending_subacks = 0usize;
        let mut connected = false;
        self.status.send_modify(|s| s.ended = false);
        let end = loop {
            let event = tokio::select! {
                e = eventloop.poll() => e,
                () = cancel.cancelled() => break End::Cancelled,
            };
            let delivery = match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    failures = 0;
                    connected = true;
                    pending_subacks = self.subscriptions.len();
                    for (filter, qos) in &self.subscriptions {
                        if let Err(e) = client.try_subscribe(filter.clone(), *qos) {
                            warn!(client = %id, %filter, error = %e, "cannot subscribe");
                        }
                    }
                    self.status.send_modify(|s| {
                        s.connected = true;
                        s.ready = pending_subacks == 0;
                        s.connects += 1;
                    });
                    debug!(client = %id, session_present = ack.session_present, "MQTT connected");
                    Delivery::Connected {
                        session_present: ack.session_present,
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack
                        .return_codes
                        .iter()
                        .any(|c| matches!(c, SubscribeReasonCode::Failure))
                    {
                        warn!(client = %id, "the broker refused a subscription");
                    }
                    pending_subacks = pending_subacks.saturating_sub(1);
                    if pending_subacks == 0 && connected {
                        self.status
                            .send_if_modified(|s| !std::mem::replace(&mut s.ready, true));
                    }
                    continue;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => Delivery::Message(p),
                Ok(Event::Incoming(Packet::PubAck(ack))) => Delivery::Acked { pkid: ack.pkid },
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) if pkid != 0 => {
                    Delivery::Sent { pkid }
                }
                Ok(_) => continue,
                Err(error) => {
                    connected = false;
                    self.status.send_modify(|s| {
                        s.connected = false;
                        s.ready = false;
                        s.failures += 1;
                    });
                    let retry_in = match self.on_error {
                        OnError::Stop => None,
                        OnError::Reconnect { base, max } => {
                            failures = failures.saturating_add(1);
                            Some(backoff(failures, base, max))
                        }
                    };
                    debug!(client = %id, %error, ?retry_in, "MQTT connection lost");
                    let flow = deliver(&mut handler, Delivery::Lost { error, retry_in }, cancel);
                    match (flow.await, retry_in) {
                        (None, _) => break End::Cancelled,
                        (Some(ControlFlow::Break(())), _) => break End::Stopped,
                        (Some(ControlFlow::Continue(())), None) => break End::Failed,
                        (Some(ControlFlow::Continue(())), Some(delay)) => {
                            tokio::select! {
                                () = tokio::time::sleep(delay) => continue,
                                () = cancel.cancelled() => break End::Cancelled,
                            }
                        }
                    }
                }
            };
            match deliver(&mut handler, delivery, cancel).await {
                None => break End::Cancelled,
                Some(ControlFlow::Break(())) => break End::Stopped,
                Some(ControlFlow::Continue(())) => {}
            }
        };
        if connected && client.try_disconnect().is_ok() {
            // Requests are written after rumqttc reports them, so poll
            // until the broker closes the connection, not just until the
            // DISCONNECT is reported, or the last requests are lost.
            let _ = tokio::time::timeout(self.linger, async {
                while eventloop.poll().await.is_ok() {}
            })
            .await;
        }
        self.status.send_modify(|s| {
            s.connected = false;
            s.ready = false;
            s.ended = true;
        });
        debug!(client = %id, ?end, "MQTT pump ended");
        end
    }
}

/// Hands `delivery` over unless `cancel` fires first (`None`).
async fn deliver<H: Handler>(
    handler: &mut H,
    delivery: Delivery,
    cancel: &CancellationToken,
) -> Option<ControlFlow<()>> {
    tokio::select! {
        flow = handler.deliver(delivery) => Some(flow),
        () = cancel.cancelled() => None,
    }
}
