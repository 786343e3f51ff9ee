//! Ingest inside the embedded broker: a device's publish is stored
//! before the broker acknowledges it.
//!
//! With an external broker the gateway is one more subscriber, and the
//! broker's own persistence keeps what it acknowledged until the gateway
//! takes it. The embedded broker keeps its sessions in memory, so a
//! PUBACK sent when the broker received a publish would promise what a
//! restart loses (the subscriber queue goes with the process). Here the
//! gateway is the broker: a hook on each publish (rmqtt's
//! `message_publish_check_acl`, which rmqtt awaits before it answers the
//! client) hands every publish on an ingest topic to the pipeline and
//! returns only once the transaction holding it committed. Then the
//! broker sends the PUBACK and routes the message on to any subscriber.
//!
//! A QoS 1/2 publish that cannot be committed (the pipeline's queue stays
//! full for [`COMMIT_TIMEOUT`](super::waiters::COMMIT_TIMEOUT), the gateway is stopping, the commit is
//! slower than that) is refused: the broker closes the device's
//! connection without acknowledging, and the device sends it again after
//! reconnecting (MQTT 3.1.1 has no negative PUBACK; MQTT 5 clients get
//! reason code 0x87 first). A QoS 0 publish has nobody to answer: it is
//! queued (waiting for room, so a fast device is slowed, not dropped)
//! without waiting for its commit.
//!
//! The hook runs before the broker's ACL plugin (it has the highest
//! priority), in every session of the broker.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmqtt::codec::types::QoS;
use rmqtt::hook::{HookResult, Parameter, ReturnType};
use rmqtt::types::PublishAclResult;
use tracing::{debug, warn};

use super::Message;
use super::waiters::{COMMIT_TIMEOUT, Unstored, Waiters, WhenFull};
use crate::pipeline::route::Router;
use crate::stats::{self, LogEvery, Stats};

/// The hook: publishes on topics the ingest [`Router`] claims go to the
/// pipeline through `waiters`; every other publish passes untouched.
#[derive(Debug)]
pub struct IngestHook {
    waiters: Arc<Waiters>,
    router: Router,
    stats: Arc<Stats>,
    /// Refusals logged at most once per reason every 10 s.
    log: Mutex<LogEvery>,
}

impl IngestHook {
    pub(crate) fn new(waiters: Arc<Waiters>, router: Router, stats: Arc<Stats>) -> Self {
        Self {
            waiters,
            router,
            stats,
            log: Mutex::new(LogEvery::new(Duration::from_secs(10))),
        }
    }

    /// Takes one publish; `Err` when it was not committed.
    async fn take(&self, topic: &str, payload: &bytes::Bytes, qos: QoS) -> Result<(), Unstored> {
        let make = |ack| Message {
            topic: topic.to_string(),
            payload: payload.clone(),
            // A live publish: the retain flag asks the broker to keep it
            // for later subscribers; it is a new reading all the same.
            retained: false,
            preset: None,
            ack,
        };
        let wait_commit = qos != QoS::AtMostOnce;
        let sent = self
            .waiters
            .submit(make, WhenFull::Wait, wait_commit, COMMIT_TIMEOUT)
            .await;
        // Queued, whether or not its commit was seen in time.
        if matches!(sent, Ok(_) | Err(Unstored::TimedOut)) {
            stats::add(&self.stats.messages_received, 1);
        }
        sent.map(drop)
    }
}

crate::broker::rmqtt_handler!(IngestHook);

impl IngestHook {
    async fn check(&self, param: &Parameter<'_>, acc: Option<HookResult>) -> ReturnType {
        let Parameter::MessagePublishCheckAcl(session, publish) = param else {
            return (true, acc);
        };
        if self.router.route(&publish.topic).is_none() {
            return (true, acc);
        }
        match self
            .take(&publish.topic, &publish.payload, publish.qos)
            .await
        {
            Ok(()) => (true, acc),
            Err(why) => {
                stats::add(&self.stats.broker_publishes_unstored, 1);
                self.stats.messages_refused(why.name(), 1);
                let due = self
                    .log
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .due(why.name());
                match (why, due) {
                    (Unstored::Closed, _) => {
                        debug!(client = ?session.id.client_id, %why, "publish refused")
                    }
                    (_, Some(suppressed)) => warn!(
                        client = ?session.id.client_id,
                        topic = ?publish.topic,
                        %why,
                        suppressed,
                        "publish refused: not acknowledged, the device sends it again"
                    ),
                    (_, None) => {}
                }
                let reason = format!("not stored: {why}; send again");
                let refused = PublishAclResult::rejected(true, Some(reason.into()));
                (false, Some(HookResult::PublishAclResult(refused)))
            }
        }
    }
}
