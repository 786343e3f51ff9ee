//! Who may connect to the embedded broker, publish and subscribe.
//!
//! Applies to the public listeners (plain and TLS); the gateway's own
//! clients use the private loopback listener and are not checked.
//!
//! At CONNECT, in this order:
//! 1. The gateway's client ids (`ingest.client_id` and every id starting
//!    `{ingest.client_id}-`) are refused to everyone else (CONNACK "not
//!    authorized"): taking one would take over the gateway's session.
//! 2. On the TLS listener with `client_ca`, the verified certificate's
//!    common name is the device id (a user name, if sent, must equal it).
//! 3. A user name is a device id: the password must be its secret
//!    ([`super::credentials`]), else "bad user name or password".
//! 4. No user name: anonymous, admitted only when
//!    `broker.allow_anonymous` holds (by default: every public listener
//!    on loopback), else "not authorized". So unknown or forged device
//!    ids never reach admission (`ingest.max_devices`).
//!
//! Then, for every client checked:
//! - a PUBLISH whose topic has `+`, `#` or NUL is a protocol error
//!   (MQTT 3.1.1 §4.7.3, 5.0 §4.7.3): the connection is closed;
//! - a `$share/` subscription is refused (shared subscriptions are not
//!   available; SUBACK 0x80 / 0x9E... as the version has);
//! - a device (credentials or certificate) publishes only
//!   `{prefix}/{id}/telemetry`, `hello`, `status`, `ota/status` and the
//!   topics an `[[ingest.topics]]` mapping reads as its own device id;
//!   it subscribes only to `{prefix}/{id}/ack`, `cmd` and `ota`, no
//!   wildcards;
//!   line protocol whose lines name their devices (`device_tag`) speaks
//!   for other devices, so it is not a device's;
//! - an observer publishes nothing and subscribes to anything;
//! - a publisher publishes on any topic an ingest mapping or the Eddy
//!   layout claims and subscribes to nothing;
//! - an anonymous client (where allowed) is not restricted further.
//!
//! A refused publish gets PUBACK "not authorized" (MQTT 5) and is not
//! routed; a refused subscription gets a failure SUBACK. Every refusal
//! is counted (`eddy_broker_*_total`) and logged at most once per reason
//! every 10 s; topics and ids are logged escaped (`?`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rmqtt::codec::v5::SubscribeAckReason;
use rmqtt::context::ServerContext;
use rmqtt::hook::{HookResult, Parameter, ReturnType};
use rmqtt::session::Session;
use rmqtt::types::{AuthResult, ConnectInfo, PublishAclResult, SubscribeAclResult};
use tracing::warn;

use super::credentials::{Credentials, Role, Verdict};
use super::{INTERNAL_LISTENER, TLS_LISTENER};
use crate::pipeline::route::Router;
use crate::stats::{self, LogEvery, Stats};

/// Certificate common names of the TLS listener's open connections, by
/// the address their relay connection has on the broker's side.
#[derive(Debug, Default)]
pub struct TlsPeers(Mutex<HashMap<SocketAddr, String>>);

impl TlsPeers {
    pub(crate) fn insert(&self, relay: SocketAddr, name: String) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(relay, name);
    }

    pub(crate) fn remove(&self, relay: &SocketAddr) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(relay);
    }

    fn get(&self, relay: Option<SocketAddr>) -> Option<String> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&relay?).cloned()
    }
}

/// Token buckets per client id: `rate` publishes a second, a burst of
/// as many. A publish beyond them waits until its token is due (the
/// client's connection is read no further meanwhile: backpressure).
#[derive(Debug)]
struct RateLimit {
    rate: f64,
    /// Client id -> (tokens, when they were counted).
    buckets: Mutex<HashMap<String, (f64, std::time::Instant)>>,
}

/// Buckets kept at most; beyond, those full again are forgotten.
const MAX_BUCKETS: usize = 100_000;

impl RateLimit {
    fn new(rate: u32) -> Option<Self> {
        (rate > 0).then(|| Self {
            rate: f64::from(rate),
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Takes a token for `client`: how long to wait for it, if at all.
    fn take(&self, client: &str) -> Option<Duration> {
        let now = std::time::Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(client) {
            let full = |&(tokens, at): &(f64, std::time::Instant)| {
                tokens + now.duration_since(at).as_secs_f64() * self.rate >= self.rate
            };
            buckets.retain(|_, b| !full(b));
        }
        let (tokens, at) = buckets
            .entry(client.to_string())
            .or_insert((self.rate, now));
        // Tokens may go negative: each waiter owns a later slot.
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.rate).min(self.rate) - 1.0;
        *at = now;
        (*tokens < 0.0).then(|| Duration::from_secs_f64(-*tokens / self.rate))
    }
}

/// Who a client of a public listener is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Identity {
    Anonymous,
    Known(String, Role),
}

/// The access hook (see the module docs).
#[derive(Debug)]
pub struct Access {
    credentials: Credentials,
    anonymous: bool,
    prefix: String,
    /// `ingest.client_id`: it and `{it}-...` are the gateway's.
    reserved: String,
    router: Router,
    peers: Arc<TlsPeers>,
    /// The broker, to wait out a previous connection's clean-up.
    scx: Option<ServerContext>,
    /// Per-client token buckets of `broker.max_publish_rate`.
    rate: Option<RateLimit>,
    stats: Arc<Stats>,
    log: Mutex<LogEvery>,
}

/// Longest a CONNECT waits for the previous connection of its client id
/// to be cleaned up.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a session that lost its connection takes, at most, to be
/// ready to be taken over (its offline loop running, or removed).
const SETTLE_OFFLINE: Duration = Duration::from_millis(250);

/// How long a CONNECT resuming a session waits while the old connection
/// still counts as connected (taking over a live one costs this much).
const TAKEOVER_GRACE: Duration = Duration::from_millis(100);

/// Leaves of `{prefix}/{device}/...` a device may publish.
const DEVICE_PUBLISHES: [&str; 4] = [
    eddy_proto::topic::TELEMETRY,
    eddy_proto::topic::HELLO,
    eddy_proto::topic::STATUS,
    eddy_proto::topic::OTA_STATUS,
];

/// Leaves of `{prefix}/{device}/...` a device may subscribe to.
const DEVICE_SUBSCRIBES: [&str; 3] = [
    eddy_proto::topic::ACK,
    eddy_proto::topic::COMMAND,
    eddy_proto::topic::OTA,
];

impl Access {
    pub(crate) fn new(
        credentials: Credentials,
        anonymous: bool,
        rate: u32,
        config: &crate::config::IngestConfig,
        peers: Arc<TlsPeers>,
        stats: Arc<Stats>,
    ) -> Self {
        Self {
            credentials,
            anonymous,
            prefix: config.topic_prefix.clone(),
            reserved: config.client_id.clone(),
            router: Router::new(config),
            peers,
            scx: None,
            rate: RateLimit::new(rate),
            stats,
            log: Mutex::new(LogEvery::new(Duration::from_secs(10))),
        }
    }

    /// Waits out the clean-up of a previous connection with the same
    /// client id before the broker takes over its session.
    ///
    /// rmqtt answers "server unavailable" to a CONNECT whose client id's
    /// previous connection is still being torn down: its per-client-id
    /// lock is taken with `try_lock`, and its "kick" of the old session
    /// fails while that session moves from its online to its offline
    /// loop (or to its end, with a clean session). A device reconnecting
    /// after a blip does exactly that. So the CONNECT waits here (up to
    /// [`SETTLE_TIMEOUT`]) until the lock is free and the old session is
    /// gone (a clean start ends it here, retrying), connected for
    /// [`TAKEOVER_GRACE`], or offline for [`SETTLE_OFFLINE`].
    async fn settle(&self, info: &ConnectInfo) {
        let Some(scx) = &self.scx else {
            return;
        };
        let id = info.id();
        let start = tokio::time::Instant::now();
        let deadline = start + SETTLE_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            let entry = scx.extends.shared().await.entry(id.clone());
            if let Ok(mut locked) = entry.try_lock().await {
                let settled = match locked.session() {
                    None => true,
                    // A clean start discards the old session anyway: end
                    // it here, where a failed attempt can be retried.
                    Some(_) if info.clean_start() => locked.kick(true, true, false).await.is_ok(),
                    // Still connected: a live connection being taken
                    // over, or one whose close is still in flight; give
                    // the close a moment to land.
                    Some(old) if old.connected().await.unwrap_or(true) => {
                        start.elapsed() >= TAKEOVER_GRACE
                    }
                    Some(old) => {
                        let since = old.disconnected_at().await.unwrap_or(0);
                        let now = rmqtt::utils::timestamp_millis();
                        now.saturating_sub(since) >= SETTLE_OFFLINE.as_millis() as i64
                    }
                };
                if settled {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// The same hook, able to wait on `scx`'s sessions.
    pub(crate) fn on(mut self, scx: ServerContext) -> Self {
        self.scx = Some(scx);
        self
    }

    fn reserved(&self, client_id: &str) -> bool {
        client_id == self.reserved
            || client_id
                .strip_prefix(self.reserved.as_str())
                .is_some_and(|rest| rest.starts_with('-'))
    }

    fn log(&self, reason: &'static str, client: &str, detail: &str) {
        let due = self
            .log
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .due(reason);
        if let Some(suppressed) = due {
            warn!(client = ?client, detail = ?detail, suppressed, "broker refused: {reason}");
        }
    }

    async fn authenticate(&self, info: &ConnectInfo) -> AuthResult {
        let id = info.id();
        self.settle(info).await;
        if self.reserved(&id.client_id) {
            stats::add(&self.stats.broker_connects_refused, 1);
            self.log("the gateway's client id", &id.client_id, "");
            return AuthResult::NotAuthorized;
        }
        let username = info.username().map(|u| u.to_string());
        if id.lid == TLS_LISTENER
            && let Some(name) = self.peers.get(id.remote_addr)
        {
            if username.as_ref().is_some_and(|u| *u != name) {
                stats::add(&self.stats.broker_connects_refused, 1);
                self.log("user name is not the certificate's", &id.client_id, &name);
                return AuthResult::NotAuthorized;
            }
            return AuthResult::Allow(false, None);
        }
        let Some(username) = username else {
            if self.anonymous {
                return AuthResult::Allow(false, None);
            }
            stats::add(&self.stats.broker_connects_refused, 1);
            self.log("no credentials", &id.client_id, "");
            return AuthResult::NotAuthorized;
        };
        let password = info.password().map(|p| p.as_ref()).unwrap_or_default();
        match self.credentials.verify(&username, password).await {
            Verdict::Valid(_) => AuthResult::Allow(false, None),
            Verdict::Unknown | Verdict::Wrong => {
                stats::add(&self.stats.broker_connects_refused, 1);
                self.log("bad user name or password", &id.client_id, &username);
                AuthResult::BadUsernameOrPassword
            }
        }
    }

    fn identity(&self, session: &Session) -> Identity {
        let id = &session.id;
        let name = match id.lid {
            TLS_LISTENER => self
                .peers
                .get(id.remote_addr)
                .or_else(|| id.username.as_ref().map(|u| u.to_string())),
            _ => id.username.as_ref().map(|u| u.to_string()),
        };
        match name {
            // Certificates name devices without credentials too.
            Some(name) => {
                let role = self.credentials.role(&name).unwrap_or(Role::Device);
                Identity::Known(name, role)
            }
            None => Identity::Anonymous,
        }
    }

    /// `{prefix}/{device}/{leaf}` as `(device, leaf)`; the leaf may have
    /// levels (`ota/status`).
    fn device_topic<'t>(&self, topic: &'t str) -> Option<(&'t str, &'t str)> {
        let rest = topic
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('/')?;
        rest.split_once('/')
    }

    /// Whether `topic` is `{prefix}/{device}/{leaf}` for one of `leaves`.
    fn own_topic(&self, device: &str, topic: &str, leaves: &[&str]) -> bool {
        self.device_topic(topic)
            .is_some_and(|(d, leaf)| d == device && leaves.contains(&leaf))
    }

    /// Why `identity` may not publish on `topic`, if it may not.
    fn publish_refusal(&self, identity: &Identity, topic: &str) -> Option<&'static str> {
        match identity {
            Identity::Anonymous => None,
            Identity::Known(_, Role::Observer) => Some("an observer publishes nothing"),
            Identity::Known(device, Role::Device) => {
                let own = self.own_topic(device, topic, &DEVICE_PUBLISHES)
                    || self.router.route(topic).is_some_and(|r| {
                        r.device == device.as_str() && r.decoder.line.device_tag.is_none()
                    });
                (!own).then_some("a device publishes only its own topics")
            }
            Identity::Known(_, Role::Publisher) => {
                let ingest = self.router.route(topic).is_some()
                    || self
                        .device_topic(topic)
                        .is_some_and(|(d, leaf)| !d.is_empty() && DEVICE_PUBLISHES.contains(&leaf));
                (!ingest).then_some("a publisher publishes only on ingest topics")
            }
        }
    }

    /// Why `identity` may not subscribe to `filter`, if it may not.
    fn subscribe_refusal(&self, identity: &Identity, filter: &str) -> Option<&'static str> {
        if filter.starts_with("$share/") {
            return Some("shared subscriptions are not available");
        }
        match identity {
            Identity::Anonymous | Identity::Known(_, Role::Observer) => None,
            Identity::Known(_, Role::Publisher) => Some("a publisher subscribes to nothing"),
            Identity::Known(device, Role::Device) => {
                (!self.own_topic(device, filter, &DEVICE_SUBSCRIBES))
                    .then_some("a device subscribes only to its own ack, command and OTA topics")
            }
        }
    }

    async fn check(&self, param: &Parameter<'_>, acc: Option<HookResult>) -> ReturnType {
        match param {
            Parameter::ClientAuthenticate(info) if info.id().lid != INTERNAL_LISTENER => {
                let result = self.authenticate(info).await;
                (false, Some(HookResult::AuthResult(result)))
            }
            Parameter::MessagePublishCheckAcl(session, publish)
                if session.id.lid != INTERNAL_LISTENER =>
            {
                let topic: &str = &publish.topic;
                if topic.contains(['+', '#', '\0']) {
                    stats::add(&self.stats.broker_publishes_denied, 1);
                    self.log(
                        "a topic name with a wildcard or NUL",
                        &session.id.client_id,
                        topic,
                    );
                    let refused = PublishAclResult::rejected(
                        true,
                        Some("a topic name has no wildcards or NUL".into()),
                    );
                    return (false, Some(HookResult::PublishAclResult(refused)));
                }
                match self.publish_refusal(&self.identity(session), topic) {
                    None => {
                        if let Some(rate) = &self.rate
                            && let Some(wait) = rate.take(&session.id.client_id)
                        {
                            stats::add(&self.stats.broker_publishes_slowed, 1);
                            tokio::time::sleep(wait).await;
                        }
                        (true, acc)
                    }
                    Some(why) => {
                        stats::add(&self.stats.broker_publishes_denied, 1);
                        self.log(why, &session.id.client_id, topic);
                        let refused = PublishAclResult::rejected(false, Some(why.into()));
                        (false, Some(HookResult::PublishAclResult(refused)))
                    }
                }
            }
            Parameter::ClientSubscribeCheckAcl(session, subscribe)
                if session.id.lid != INTERNAL_LISTENER =>
            {
                let filter: &str = &subscribe.topic_filter;
                match self.subscribe_refusal(&self.identity(session), filter) {
                    None => (true, acc),
                    Some(why) => {
                        stats::add(&self.stats.broker_subscribes_denied, 1);
                        self.log(why, &session.id.client_id, filter);
                        let refused =
                            SubscribeAclResult::new_failure(SubscribeAckReason::NotAuthorized);
                        (false, Some(HookResult::SubscribeAclResult(refused)))
                    }
                }
            }
            _ => (true, acc),
        }
    }
}

crate::broker::rmqtt_handler!(Access);

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The gateway's access rules with a JSON mapping `tele/+/SENSOR`
    /// (device at level 1) and a line protocol one naming devices by tag.
    fn access() -> Access {
        let config = crate::config::Config::parse(
            "[[ingest.topics]]\nfilter = \"tele/+/SENSOR\"\nformat = \"json\"\ndevice_level = 1\n\n[[ingest.topics]]\nfilter = \"telegraf/+\"\nformat = \"line_protocol\"\ndevice_level = 1\ndevice_tag = \"host\"\n",
        )
        .expect("config");
        let dir = std::env::temp_dir();
        Access::new(
            Credentials::open(&dir.join("eddy-access-test-none")).expect("no file"),
            false,
            0,
            &config.ingest,
            Arc::default(),
            Arc::default(),
        )
    }

    /// The rules as a reader of the docs would state them, on levels.
    fn may_publish(identity: &Identity, topic: &str) -> bool {
        let levels: Vec<&str> = topic.split('/').collect();
        let eddy = |d: &str| match levels.as_slice() {
            ["eddy", "v1", dev, leaf] => {
                *dev == d && ["telemetry", "hello", "status"].contains(leaf)
            }
            ["eddy", "v1", dev, "ota", "status"] => *dev == d,
            _ => false,
        };
        let json_of = |d: &str| matches!(levels.as_slice(), ["tele", dev, "SENSOR"] if *dev == d);
        match identity {
            Identity::Anonymous => true,
            Identity::Known(_, Role::Observer) => false,
            Identity::Known(d, Role::Device) => eddy(d) || json_of(d),
            Identity::Known(_, Role::Publisher) => match levels.as_slice() {
                ["eddy", "v1", dev, _] | ["eddy", "v1", dev, "ota", "status"] => {
                    !dev.is_empty() && (eddy(dev) || levels[3] == "telemetry")
                }
                ["tele", _, "SENSOR"] | ["telegraf", _] => true,
                _ => false,
            },
        }
    }

    fn may_subscribe(identity: &Identity, filter: &str) -> bool {
        if filter.starts_with("$share/") {
            return false;
        }
        let levels: Vec<&str> = filter.split('/').collect();
        match identity {
            Identity::Anonymous | Identity::Known(_, Role::Observer) => true,
            Identity::Known(_, Role::Publisher) => false,
            Identity::Known(d, Role::Device) => matches!(
                levels.as_slice(),
                ["eddy", "v1", dev, leaf] if dev == d && ["ack", "cmd", "ota"].contains(leaf)
            ),
        }
    }

    fn identity() -> impl Strategy<Value = Identity> {
        prop_oneof![
            Just(Identity::Anonymous),
            Just(Identity::Known("dev-1".into(), Role::Device)),
            Just(Identity::Known("dev-10".into(), Role::Device)),
            Just(Identity::Known("dash".into(), Role::Observer)),
            Just(Identity::Known("agent".into(), Role::Publisher)),
        ]
    }

    /// Topics and filters made of the levels the rules look at, and of
    /// near misses (a device id that is another's prefix, empty levels).
    fn topic() -> impl Strategy<Value = String> {
        let level = prop::sample::select(vec![
            "eddy",
            "v1",
            "dev-1",
            "dev-10",
            "dev-",
            "",
            "telemetry",
            "hello",
            "status",
            "ota",
            "ack",
            "cmd",
            "tele",
            "SENSOR",
            "telegraf",
            "+",
            "#",
            "$share",
            "g",
        ]);
        prop::collection::vec(level, 1..7).prop_map(|l| l.join("/"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4096))]

        #[test]
        fn publish_and_subscribe_rules_match_the_model(id in identity(), t in topic()) {
            let access = access();
            prop_assert_eq!(
                access.publish_refusal(&id, &t).is_none(),
                may_publish(&id, &t),
                "publish {:?} on {:?}", id, t
            );
            prop_assert_eq!(
                access.subscribe_refusal(&id, &t).is_none(),
                may_subscribe(&id, &t),
                "subscribe {:?} to {:?}", id, t
            );
        }
    }

    #[test]
    fn a_client_beyond_its_rate_waits_for_its_turn_and_others_do_not() {
        let limit = RateLimit::new(10).expect("a limit");
        for _ in 0..10 {
            assert_eq!(limit.take("fast"), None, "a second's worth at once");
        }
        let waits: Vec<Duration> = (0..3).map(|_| limit.take("fast").expect("waits")).collect();
        // Each waiter owns a later slot, 100 ms apart (less what elapsed).
        assert!(waits[0] <= Duration::from_millis(100));
        assert!(waits[2] > waits[1] && waits[1] > waits[0], "{waits:?}");
        assert!(waits[2] >= Duration::from_millis(250), "{waits:?}");
        assert_eq!(
            limit.take("slow"),
            None,
            "another client has its own bucket"
        );
        assert!(RateLimit::new(0).is_none(), "0 is no limit");
    }

    #[test]
    fn the_gateways_client_ids_are_its_own_and_no_more() {
        let access = access();
        for id in [
            "eddy-gateway",
            "eddy-gateway-ota",
            "eddy-gateway-out",
            "eddy-gateway-",
        ] {
            assert!(access.reserved(id), "{id}");
        }
        for id in ["eddy-gatewayx", "eddy-gatewa", "x-eddy-gateway", "dev-1"] {
            assert!(!access.reserved(id), "{id}");
        }
    }
}
