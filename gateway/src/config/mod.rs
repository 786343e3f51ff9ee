//! `eddy.toml`: every field has a default, so no file is needed.
//!
//! Parsing and validation live here and only here, and every command goes
//! through them (`run`, `check`, `rules check`, `demo`, the rules
//! directory watcher): serde reads the text into these structs (unknown
//! tables and keys are refused), then [`Config::validate`] checks what
//! serde cannot and reports every problem at once, each placed at
//! `file:line:column` with its field ([`place`]). What leaves this module
//! is a configuration the gateway can run, or those errors.
//!
//! A configuration without `[[rules]]` runs no rule: there is no hidden
//! default rule (the demo brings its own).

pub mod place;

pub use place::{Document, FieldPath, Placed, PlacedErrors};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use eddy_analytics::{
    Aggregate, DeviceLevel, EngineConfig, GroupBy, GroupingWord, Rule, ViewSpec, WindowKind,
    WindowName,
};
use eddy_proto::topic::DEFAULT_PREFIX;
use serde::Deserialize;

pub use crate::rules::RuleConfig;
use crate::sources::serial::SerialConfig;
use crate::tls::TlsFiles;
/// Broker addresses are the MQTT transport's ([`eddy_mqtt::BrokerUrl`]).
pub use eddy_mqtt::BrokerUrl;

/// Largest config file accepted.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// A configuration that cannot be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: PathBuf },
    /// TOML syntax, an unknown table or key, a value of the wrong type.
    #[error("{0}")]
    Parse(Placed),
    /// Values that parse but cannot be used; every one of them.
    #[error("{0}")]
    Invalid(PlacedErrors),
}

/// Problems found on the structs: a field path and what is wrong there.
type Problems = Vec<(FieldPath, String)>;

fn field(path: &str) -> FieldPath {
    FieldPath::of(&path.split('.').collect::<Vec<_>>())
}

/// The whole gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the redb store lives.
    pub data_dir: PathBuf,
    pub store: StoreConfig,
    pub broker: BrokerConfig,
    pub ingest: IngestConfig,
    pub engine: EngineSection,
    /// Alert rules (`[[rules]]`); more in `alerts.rules_dir` and the API.
    pub rules: Vec<RuleConfig>,
    /// Where rules live besides this file, and how alerts are delivered.
    pub alerts: AlertsConfig,
    /// The file this configuration was read from (its `[[rules]]` are
    /// reloaded when it changes).
    #[serde(skip)]
    pub path: Option<PathBuf>,
    /// Where aggregates and alerts are forwarded; none by default.
    pub upstream: Option<UpstreamConfig>,
    pub http: HttpConfig,
    /// Serial ports with Eddy devices on them (`[[serial]]`).
    pub serial: Vec<SerialConfig>,
    pub ota: OtaConfig,
}

/// Firmware update campaigns (`eddy ota deploy`): how images travel.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OtaConfig {
    /// Public key file (`eddy ota keygen` writes `eddy-ota.pub`). When
    /// set, an image whose signature does not verify is refused before
    /// any device sees it; devices check it anyway.
    pub public_key: Option<PathBuf>,
    /// Chunks (512 bytes each) in flight per device.
    pub window: u32,
    /// Silence after which a device is offered the image again (it
    /// answers with its resume point).
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Offers in a row without an answer before a device has failed.
    pub max_retries: u32,
    /// How long a device may take from verifying an image to reporting it
    /// confirmed (or rolled back) before it has failed.
    #[serde(with = "humantime_serde")]
    pub confirm_timeout: Duration,
    /// Devices updated at the same time.
    pub max_parallel: usize,
    /// Largest image accepted by the HTTP API.
    pub max_image_bytes: usize,
}

impl Default for OtaConfig {
    fn default() -> Self {
        Self {
            public_key: None,
            window: 8,
            retry_after: Duration::from_secs(2),
            max_retries: 5,
            confirm_timeout: Duration::from_secs(60),
            max_parallel: 32,
            max_image_bytes: 4 << 20,
        }
    }
}

/// The gateway's HTTP port: `/metrics` (Prometheus), `/healthz`, the
/// API and HTTP ingest.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub enabled: bool,
    /// Address to listen on; loopback by default (port 0 picks a free one).
    pub listen: SocketAddr,
    /// Accept readings by `POST` (JSON, SenML, line protocol).
    pub ingest: bool,
    /// The bearer token HTTP ingest requires (`Authorization: Bearer
    /// <token>`, or `Token <token>` as InfluxDB 2 clients send it).
    /// Required when `listen` is not a loopback address.
    pub ingest_token: Option<String>,
    /// Largest request body, in bytes; larger ones are answered `413`.
    pub max_body_bytes: usize,
    /// Ingest requests waiting for their commit at once; more are
    /// answered `503`.
    pub max_pending_requests: usize,
    /// Line protocol over HTTP: the tag naming each line's device.
    pub device_tag: String,
    /// Line protocol over HTTP: tags whose values make the device's
    /// hierarchy path, outermost first.
    pub path_tags: Vec<String>,
    /// `/metrics` needs a token of scope `read` too (open by default).
    pub metrics_auth: bool,
    /// A connection must send a request's whole head within this long
    /// (also between requests on a kept-alive connection), else it is
    /// closed.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A connection that moves no byte either way for this long (a
    /// stalled body, a client that stopped reading) is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Connections served at once; beyond, new ones are closed at once
    /// and counted (`eddy_http_connections_refused_total`).
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            ingest: true,
            ingest_token: None,
            max_body_bytes: 1 << 20,
            max_pending_requests: 64,
            device_tag: "device".into(),
            path_tags: Vec::new(),
            metrics_auth: false,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 256,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("eddy-data"),
            store: StoreConfig::default(),
            broker: BrokerConfig::default(),
            ingest: IngestConfig::default(),
            engine: EngineSection::default(),
            rules: Vec::new(),
            alerts: AlertsConfig::default(),
            path: None,
            upstream: None,
            http: HttpConfig::default(),
            serial: Vec::new(),
            ota: OtaConfig::default(),
        }
    }
}

/// The store: retention, caps, what happens at a cap, durability.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Most samples kept in the raw log.
    pub max_samples: u64,
    /// Most bytes of sample records kept (about 40 bytes per sample plus
    /// redb's overhead, roughly 2x on disk).
    pub max_bytes: u64,
    /// Samples whose event time is older than this are deleted; none by default.
    #[serde(with = "humantime_serde")]
    pub max_age: Option<Duration>,
    /// What happens when `max_samples` or `max_bytes` is reached.
    pub on_full: FullPolicy,
    /// `immediate`: every batch is fsynced before devices are acknowledged
    /// (survives power loss). `none`: commits are not fsynced; faster, but a
    /// crash or power loss rolls the store back to the last durable commit,
    /// losing acknowledged data. Use `none` only for disposable data.
    pub durability: DurabilityMode,
    /// redb's page cache, in bytes: the store's memory, whatever the
    /// file's size (16 MiB by default, fit for a 1 GB board).
    pub cache_bytes: usize,
    /// Check every page of the file at start (redb's integrity check;
    /// reads the whole file once), so a file damaged outside the gateway
    /// stops start-up with an error instead of being trusted.
    pub verify_on_open: bool,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_samples: 50_000_000,
            max_bytes: 4 << 30,
            max_age: None,
            on_full: FullPolicy::DropOldest,
            durability: DurabilityMode::Immediate,
            cache_bytes: 16 << 20,
            verify_on_open: true,
        }
    }
}

/// The declared policy at a store cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FullPolicy {
    /// Delete the oldest samples to make room, counting them
    /// (`samples_dropped`). The gateway keeps the newest data.
    DropOldest,
    /// Keep what is stored and stop admitting: Eddy devices are not
    /// acknowledged and hold their data until room appears (age retention
    /// or an operator); JSON messages are refused and counted
    /// (`samples_refused`). The gateway keeps the oldest data.
    Refuse,
}

/// Whether commits are fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DurabilityMode {
    Immediate,
    None,
}

/// The MQTT broker devices publish to.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// `mqtt://host:port` of an external broker (Mosquitto, EMQX, ...).
    /// When set, the embedded broker does not start.
    pub url: Option<String>,
    /// Where the embedded broker listens.
    pub listen: SocketAddr,
    /// Unacknowledged QoS 1 messages the embedded broker sends one client
    /// before waiting for PUBACKs.
    pub max_inflight: u16,
    /// Messages the embedded broker queues per client beyond the in-flight
    /// window before it drops (its default of 1,000 loses data under load).
    pub max_queued_messages: usize,
    /// Largest MQTT packet the embedded broker accepts, in bytes.
    pub max_packet_size: u32,
    /// Connections each public listener of the embedded broker holds at
    /// most (more are closed at accept), so clients cannot take every
    /// file descriptor.
    pub max_connections: usize,
    /// Clients without credentials (no user name) on the embedded
    /// broker. Unset: admitted only while every public listener is on a
    /// loopback address; any other listener then needs credentials
    /// (`eddy device add`) or a client certificate. `true` admits them
    /// anywhere (logged as a warning at start); `false` nowhere.
    pub allow_anonymous: Option<bool>,
    /// A TLS listener for devices, beside `listen`.
    pub tls: Option<BrokerTls>,
    /// Publishes per second one client of a public listener may send
    /// (a token bucket holding one second's worth); a faster client is
    /// slowed, its publishes waiting their turn, never dropped. 0: no
    /// limit.
    pub max_publish_rate: u32,
}

/// The embedded broker's TLS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerTls {
    /// Where it listens, e.g. `0.0.0.0:8883`.
    pub listen: SocketAddr,
    /// The server's certificate chain (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM). When set, every client must present a
    /// certificate they sign, and its subject common name is its device
    /// id (no password needed).
    pub client_ca: Option<PathBuf>,
}

impl BrokerConfig {
    /// Whether clients without credentials are admitted (see
    /// [`BrokerConfig::allow_anonymous`]).
    pub fn anonymous_allowed(&self) -> bool {
        self.allow_anonymous.unwrap_or_else(|| {
            self.listen.ip().is_loopback()
                && self
                    .tls
                    .as_ref()
                    .is_none_or(|t| t.listen.ip().is_loopback())
        })
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 1883)),
            max_inflight: 1024,
            max_queued_messages: 1_000_000,
            max_packet_size: 1 << 20,
            max_connections: 10_000,
            allow_anonymous: None,
            tls: None,
            max_publish_rate: 10_000,
        }
    }
}

/// How the gateway reads telemetry.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// MQTT client id of the ingest session (persistent across restarts).
    pub client_id: String,
    /// Topic prefix for devices and outputs.
    pub topic_prefix: String,
    /// Most messages committed in one redb transaction.
    pub batch_size: usize,
    /// Longest a message waits for its batch to fill. `0s` (the default)
    /// is group commit: a batch is what arrived while the previous commit
    /// ran, committed at once, so the disk sets the pace (batches grow
    /// under load and are one message when idle).
    #[serde(with = "humantime_serde")]
    pub batch_delay: Duration,
    /// Messages buffered between the MQTT client and the pipeline; when
    /// full, the client stops reading and the broker holds the rest.
    pub queue_capacity: usize,
    /// Larger payloads are rejected and counted.
    pub max_payload_bytes: usize,
    /// Eddy devices whose sequence state is tracked for exactly-once
    /// admission. Frames of further devices are refused (counted, not
    /// acknowledged), so those devices keep their data.
    pub max_devices: usize,
    /// Extra topics for devices that do not speak Eddy (Tasmota, ...).
    pub topics: Vec<TopicMapping>,
    /// How far ahead of the gateway's clock an event time may be. A
    /// device's clock further ahead is handled by `on_future`, so no
    /// device can move the fleet's event time (and watermarks) past it.
    #[serde(with = "humantime_serde")]
    pub future_horizon: Duration,
    /// What happens to a reading timed beyond `future_horizon`: refused,
    /// or stamped with its arrival time; counted either way.
    pub on_future: FuturePolicy,
    /// A retained message the broker delivers at subscription is an old
    /// reading, not a new one: skipped (counted) unless this is false.
    pub skip_retained: bool,
}

/// What happens to a reading timed beyond `ingest.future_horizon`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FuturePolicy {
    /// Not stored or analysed; counted (`eddy_samples_future_refused_total`).
    Refuse,
    /// Stored and analysed at its arrival time; counted
    /// (`eddy_samples_future_stamped_total`).
    ArrivalTime,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            client_id: "eddy-gateway".into(),
            topic_prefix: DEFAULT_PREFIX.into(),
            batch_size: 1000,
            batch_delay: Duration::ZERO,
            queue_capacity: 10_000,
            max_payload_bytes: 64 * 1024,
            max_devices: 100_000,
            topics: Vec::new(),
            future_horizon: Duration::from_secs(300),
            on_future: FuturePolicy::Refuse,
            skip_retained: true,
        }
    }
}

/// Payload formats the gateway decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// JSON when the payload opens with `{` or `[`, Eddy binary frames otherwise.
    Auto,
    /// Eddy binary frames.
    Eddy,
    /// A JSON object of readings (`{"temperature": 21.5, "ts": 1700000000}`)
    /// or an array of them.
    Json,
    /// One plain value per message (`21.5`, `ON`), the metric named by a
    /// topic level (`metric_level`).
    Value,
    /// A SenML pack (RFC 8428, JSON): an array of records with base name,
    /// time and value.
    Senml,
    /// InfluxDB line protocol: lines of measurement, tags, fields and a
    /// timestamp; the device from a tag (`device_tag`) or the topic.
    #[serde(rename = "line_protocol")]
    LineProtocol,
}

/// Maps an MQTT topic filter to a payload format and the topic level that
/// holds the device id.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicMapping {
    /// MQTT filter, e.g. `tele/+/SENSOR`.
    pub filter: String,
    pub format: PayloadFormat,
    /// Zero-based topic level of the device id (`tele/+/SENSOR` -> 1), or
    /// several levels joined with `.` (`home/+/+/state` with `[1, 2]`:
    /// `kitchen.plug`, so the same device name in two rooms stays two
    /// devices). Optional only for line protocol naming devices by a tag.
    #[serde(default)]
    pub device_level: Option<Levels>,
    /// Topic levels that make the device's hierarchy path, outermost
    /// first (`factory/+/+/+/data` with `[1, 2]`: site, line).
    #[serde(default)]
    pub path_levels: Vec<usize>,
    /// Topic level of the metric, for `format = "value"`
    /// (`sensor/+/+/state` -> 2).
    #[serde(default)]
    pub metric_level: Option<usize>,
    /// The payload member holding the event time (`Time`, `meta.ts`;
    /// default `ts`).
    #[serde(default)]
    pub time_key: Option<String>,
    /// The zone of times written without an offset: an IANA name
    /// (`Europe/Berlin`), `UTC` (the default) or an offset (`+01:00`).
    #[serde(default)]
    pub timezone: Option<String>,
    /// Line protocol: the tag naming each line's device (lines without it
    /// belong to the topic's device).
    #[serde(default)]
    pub device_tag: Option<String>,
    /// Line protocol: tags whose values make the device's hierarchy path,
    /// outermost first.
    #[serde(default)]
    pub path_tags: Vec<String>,
    /// Line protocol: the timestamps' unit, `ns` (the default), `us`, `ms`
    /// or `s`.
    #[serde(default)]
    pub precision: Option<crate::decode::Precision>,
}

/// One topic level, or several.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Levels {
    One(usize),
    Several(Vec<usize>),
}

impl Levels {
    /// The levels, in order.
    pub fn levels(&self) -> &[usize] {
        match self {
            Self::One(l) => std::slice::from_ref(l),
            Self::Several(ls) => ls,
        }
    }
}

/// Window settings of the engine.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineSection {
    /// Tumbling window of the published aggregates.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How late (event time) a sample may arrive and still count.
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// Most live series; new series beyond it are not analysed (still
    /// stored) unless idle ones can be evicted.
    pub max_series: usize,
    /// Series silent this long (event time) are evicted once their
    /// windows closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How far a device's clock may lag the newest device's and still
    /// close its windows by its own watermark.
    #[serde(with = "humantime_serde")]
    pub max_source_skew: Duration,
    /// `event`: samples carry their device's time (`ts`); `processing`:
    /// the gateway's arrival time is every sample's time.
    pub time: TimeMode,
    /// How often the engine's open windows are saved; a restart resumes
    /// them from the snapshot plus the samples stored since.
    #[serde(with = "humantime_serde")]
    pub snapshot_every: Duration,
    /// Device -> hierarchy path (`site/building/line`), for views grouped
    /// by level.
    pub paths: BTreeMap<String, String>,
    /// Further continuous views (`[[engine.views]]`), published on
    /// `{prefix}/view/{name}/{group}/{metric}` and queryable live.
    pub views: Vec<ViewConfig>,
}

/// Which clock samples are windowed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeMode {
    Event,
    Processing,
}

/// A continuous view: a window kind over groups of series.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ViewConfig {
    pub name: String,
    /// `tumbling`, `hopping`, `sliding`, `session` or `count`.
    pub window: WindowName,
    /// Window length (tumbling, hopping, sliding).
    #[serde(default, with = "humantime_serde")]
    pub size: Option<Duration>,
    /// Hopping: how often a window starts.
    #[serde(default, with = "humantime_serde")]
    pub hop: Option<Duration>,
    /// Session: the silence that ends a session.
    #[serde(default, with = "humantime_serde")]
    pub gap: Option<Duration>,
    /// Session: the longest a session may grow.
    #[serde(default, with = "humantime_serde")]
    pub max_length: Option<Duration>,
    /// Count: samples per window, and optionally every how many samples.
    pub count: Option<u64>,
    pub count_hop: Option<u64>,
    /// `["device", "metric"]` (default), `["site", "metric"]`,
    /// `["level:2"]`, `["metric"]`, `[]` (everything together).
    #[serde(default = "ViewConfig::default_group_by")]
    pub group_by: Vec<String>,
    /// Only this metric.
    pub metric: Option<String>,
    /// Aggregates published (quantiles as `p50`, `p99.9`).
    #[serde(default = "ViewConfig::default_aggregates")]
    pub aggregates: Vec<Aggregate>,
    #[serde(default, with = "humantime_serde")]
    pub allowed_lateness: Option<Duration>,
}

impl ViewConfig {
    fn default_group_by() -> Vec<String> {
        vec!["device".into(), "metric".into()]
    }

    fn default_aggregates() -> Vec<Aggregate> {
        vec![
            Aggregate::Count,
            Aggregate::Mean,
            Aggregate::Min,
            Aggregate::Max,
        ]
    }

    /// The engine's view, or the key that is wrong and why.
    fn spec(&self, default_lateness: Duration) -> Result<ViewSpec, (&'static str, String)> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let kind = self.window;
        let need = |d: Option<Duration>, what: &'static str| {
            d.map(ms).ok_or_else(|| {
                (
                    "window",
                    format!("a {} window needs `{what}`", window_word(kind)),
                )
            })
        };
        let window = match kind {
            WindowName::Tumbling => WindowKind::Tumbling {
                size_ms: need(self.size, "size")?,
            },
            WindowName::Hopping => WindowKind::Hopping {
                size_ms: need(self.size, "size")?,
                hop_ms: need(self.hop, "hop")?,
            },
            WindowName::Sliding => WindowKind::Sliding {
                size_ms: need(self.size, "size")?,
            },
            WindowName::Session => WindowKind::Session {
                gap_ms: need(self.gap, "gap")?,
                max_ms: self.max_length.map(ms),
            },
            WindowName::Count => WindowKind::Count {
                n: self
                    .count
                    .ok_or_else(|| ("window", "a count window needs `count`".to_string()))?,
                hop: self.count_hop,
            },
        };
        window.validate().map_err(|r| ("window", r))?;
        let mut group_by = GroupBy {
            device: DeviceLevel::All,
            metric: false,
        };
        for key in &self.group_by {
            match GroupingWord::parse(key).map_err(|r| ("group_by", r))? {
                GroupingWord::Metric => group_by.metric = true,
                GroupingWord::Devices(level) => group_by.device = level,
            }
        }
        if self.aggregates.is_empty() {
            return Err(("aggregates", "needs at least one aggregate".into()));
        }
        Ok(ViewSpec {
            name: Arc::from(self.name.as_str()),
            window,
            group_by,
            metric: self.metric.clone(),
            quantiles: self
                .aggregates
                .iter()
                .any(|a| matches!(a, Aggregate::Quantile(_))),
            allowed_lateness_ms: ms(self.allowed_lateness.unwrap_or(default_lateness)),
            publish: true,
            filter: Default::default(),
        })
    }
}

fn window_word(kind: WindowName) -> &'static str {
    match kind {
        WindowName::Tumbling => "tumbling",
        WindowName::Hopping => "hopping",
        WindowName::Sliding => "sliding",
        WindowName::Session => "session",
        WindowName::Count => "count",
    }
}

impl Default for EngineSection {
    fn default() -> Self {
        let e = EngineConfig::default();
        Self {
            window: Duration::from_millis(e.window_ms),
            allowed_lateness: Duration::from_millis(e.allowed_lateness_ms),
            max_series: e.max_series,
            idle_timeout: Duration::from_millis(e.idle_timeout_ms),
            max_source_skew: Duration::from_millis(e.max_source_skew_ms),
            time: TimeMode::Event,
            snapshot_every: Duration::from_secs(30),
            paths: BTreeMap::new(),
            views: Vec::new(),
        }
    }
}

/// `[alerts]`: where rules live besides `eddy.toml`, and how webhooks
/// are delivered.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// A directory of `*.toml` files with `[[rules]]` tables, watched.
    pub rules_dir: Option<PathBuf>,
    /// How often rule files are checked for changes.
    #[serde(with = "humantime_serde")]
    pub reload_every: Duration,
    /// Webhook posts waiting at most; beyond, new ones are dropped.
    pub webhook_queue: usize,
    /// Tries per webhook post.
    pub webhook_attempts: u32,
    /// Wait after the first failure; doubles up to `webhook_max_backoff`.
    #[serde(with = "humantime_serde")]
    pub webhook_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub webhook_max_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub webhook_timeout: Duration,
    /// URL prefixes webhooks may post to (`"http://127.0.0.1:9000/"`); a
    /// rule whose webhook matches none is refused. None by default: no
    /// rule makes the gateway call a URL nobody allowed.
    pub webhook_allow: Vec<String>,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            rules_dir: None,
            reload_every: Duration::from_secs(1),
            webhook_queue: 1000,
            webhook_attempts: 8,
            webhook_backoff: Duration::from_millis(500),
            webhook_max_backoff: Duration::from_secs(60),
            webhook_timeout: Duration::from_secs(5),
            webhook_allow: Vec::new(),
        }
    }
}

impl AlertsConfig {
    /// Where this configuration lets webhooks post.
    pub fn allow(&self) -> crate::rules::WebhookAllow<'_> {
        crate::rules::WebhookAllow::Prefixes(&self.webhook_allow)
    }

    pub fn webhooks(&self) -> crate::rules::actions::WebhookSettings {
        crate::rules::actions::WebhookSettings {
            queue: self.webhook_queue,
            attempts: self.webhook_attempts,
            backoff: self.webhook_backoff,
            max_backoff: self.webhook_max_backoff,
            timeout: self.webhook_timeout,
        }
    }
}

/// An upstream MQTT broker that receives aggregates and alerts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// `mqtt://host:port`, or `mqtts://host:port` for TLS (port 8883 by default).
    pub url: String,
    #[serde(default = "UpstreamConfig::default_client_id")]
    pub client_id: String,
    /// Prefix of the topics published upstream.
    #[serde(default = "UpstreamConfig::default_prefix")]
    pub topic_prefix: String,
    /// Unacknowledged publishes in flight.
    #[serde(default = "UpstreamConfig::default_inflight")]
    pub max_inflight: u16,
    /// Most records the outbox holds while upstream is away; beyond it the
    /// oldest are dropped and counted.
    #[serde(default = "UpstreamConfig::default_max_outbox")]
    pub max_outbox: u64,
    /// Certificates for an `mqtts://` url; the system's roots and no client
    /// certificate when absent.
    #[serde(default)]
    pub tls: Option<TlsFiles>,
}

impl UpstreamConfig {
    fn default_client_id() -> String {
        "eddy-gateway-upstream".into()
    }
    fn default_prefix() -> String {
        DEFAULT_PREFIX.into()
    }
    fn default_inflight() -> u16 {
        100
    }
    fn default_max_outbox() -> u64 {
        1_000_000
    }
}

impl Config {
    /// Reads and validates a config file; errors are placed in it.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let read = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read)?;
        if !meta.is_file() {
            return Err(read(std::io::Error::other("not a regular file")));
        }
        if meta.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        let mut config = Self::from_document(&Document::new(&path.display().to_string(), &text))?;
        config.path = Some(path.to_path_buf());
        Ok(config)
    }

    /// Parses and validates config text (errors name it `<text>`).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        Self::from_document(&Document::new("<text>", text))
    }

    /// Parses and validates a document; every problem placed in it.
    pub fn from_document(doc: &Document<'_>) -> Result<Self, ConfigError> {
        let config: Config = doc.deserialize().map_err(ConfigError::Parse)?;
        let mut errors: Vec<Placed> = config
            .problems()
            .into_iter()
            .map(|(path, message)| doc.error(&path, message))
            .collect();
        let (_, rule_errors) =
            crate::rules::compile_placed(doc, &config.rules, config.alerts.allow());
        errors.extend(rule_errors);
        if errors.is_empty() {
            Ok(config)
        } else {
            errors.sort_by_key(|e| (e.line, e.column));
            Err(ConfigError::Invalid(PlacedErrors(errors)))
        }
    }

    /// Checks a configuration built in code (every problem, unplaced).
    pub fn validate(&self) -> Result<(), ConfigError> {
        let source = self
            .path
            .as_ref()
            .map_or_else(|| "config".to_string(), |p| p.display().to_string());
        let mut errors: Vec<Placed> = self
            .problems()
            .into_iter()
            .map(|(path, message)| Placed {
                field: Some(path.to_string()),
                ..Placed::unplaced(&source, None, message)
            })
            .collect();
        errors.extend(crate::rules::compile_unplaced(&source, &self.rules, self.alerts.allow()).1);
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(PlacedErrors(errors)))
        }
    }

    /// What serde cannot check: ranges, names, URLs, views; rules are
    /// compiled by [`crate::rules`].
    fn problems(&self) -> Problems {
        // 64 GiB, or a quarter of the address space on a 32-bit board
        // (armv7), where 64 GiB does not fit in a `usize`.
        const MAX_CACHE_BYTES: usize = if usize::BITS >= 64 {
            64 << 30
        } else {
            usize::MAX / 4
        };
        let mut p: Problems = Vec::new();
        let mut bad = |path: FieldPath, reason: &str| p.push((path, reason.to_string()));
        macro_rules! require {
            ($cond:expr, $field:expr, $reason:expr) => {
                if !$cond {
                    bad(field($field), &$reason);
                }
            };
        }
        // Every size and count has a ceiling, so no accepted value makes
        // `run` allocate absurdly, overflow or spin.
        macro_rules! within {
            ($value:expr, $lo:expr, $hi:expr, $field:expr) => {
                if !($lo..=$hi).contains(&$value) {
                    bad(field($field), &format!("must be in {}..={}", $lo, $hi));
                }
            };
        }
        macro_rules! within_time {
            ($value:expr, $lo:expr, $hi:expr, $field:expr) => {
                if !($lo..=$hi).contains(&$value) {
                    bad(
                        field($field),
                        &format!(
                            "must be from {} to {}",
                            humantime_serde::re::humantime::format_duration($lo),
                            humantime_serde::re::humantime::format_duration($hi)
                        ),
                    );
                }
            };
        }
        const MS: Duration = Duration::from_millis(1);
        const SECOND: Duration = Duration::from_secs(1);
        const DAY: Duration = Duration::from_secs(86_400);
        if let Some(url) = &self.broker.url {
            match BrokerUrl::parse(url) {
                Err(r) => bad(field("broker.url"), &r.to_string()),
                Ok(u) if u.tls => bad(
                    field("broker.url"),
                    "TLS to the ingest broker is not supported; use a loopback or LAN mqtt:// broker",
                ),
                Ok(_) => {}
            }
        }
        require!(
            self.store.max_samples > 0,
            "store.max_samples",
            "must be at least 1"
        );
        let ota = &self.ota;
        require!(
            (1..=64).contains(&ota.window),
            "ota.window",
            "must be in 1..=64"
        );
        require!(
            ota.retry_after >= Duration::from_millis(10),
            "ota.retry_after",
            "must be at least 10ms"
        );
        require!(ota.max_retries > 0, "ota.max_retries", "must be at least 1");
        require!(
            (1..=10_000).contains(&ota.max_parallel),
            "ota.max_parallel",
            "must be in 1..=10000"
        );
        require!(
            ota.max_image_bytes >= eddy_ota::OFFER_LEN,
            "ota.max_image_bytes",
            "smaller than an image header"
        );
        within!(
            self.store.cache_bytes,
            1 << 20,
            MAX_CACHE_BYTES,
            "store.cache_bytes"
        );
        require!(
            self.store.max_bytes >= 4096,
            "store.max_bytes",
            "must be at least 4096"
        );
        require!(
            !self.store.max_age.is_some_and(|a| a.is_zero()),
            "store.max_age",
            "must be longer than 0"
        );
        require!(
            self.broker.max_inflight > 0,
            "broker.max_inflight",
            "must be at least 1"
        );
        within!(
            self.broker.max_queued_messages,
            1,
            10_000_000,
            "broker.max_queued_messages"
        );
        // MQTT's own ceiling: a remaining length of at most 268,435,455.
        within!(
            self.broker.max_packet_size,
            64,
            268_435_455,
            "broker.max_packet_size"
        );
        within!(
            self.broker.max_connections,
            1,
            1_000_000,
            "broker.max_connections"
        );
        let ingest = &self.ingest;
        within!(ingest.batch_size, 1, 100_000, "ingest.batch_size");
        within_time!(
            ingest.batch_delay,
            Duration::ZERO,
            60 * SECOND,
            "ingest.batch_delay"
        );
        within!(ingest.queue_capacity, 1, 1_000_000, "ingest.queue_capacity");
        within!(
            ingest.max_payload_bytes,
            1,
            16 << 20,
            "ingest.max_payload_bytes"
        );
        within!(ingest.max_devices, 1, 10_000_000, "ingest.max_devices");
        require!(
            !ingest.client_id.is_empty(),
            "ingest.client_id",
            "must not be empty"
        );
        if let Err(r) = valid_prefix(&ingest.topic_prefix) {
            bad(field("ingest.topic_prefix"), &r);
        }
        within_time!(
            ingest.future_horizon,
            SECOND,
            366 * DAY,
            "ingest.future_horizon"
        );
        let http = &self.http;
        if http.enabled
            && http.ingest
            && http.ingest_token.is_none()
            && !http.listen.ip().is_loopback()
        {
            bad(
                field("http.ingest_token"),
                "HTTP ingest on a non-loopback address needs a token (or set http.ingest = false)",
            );
        }
        if http.ingest_token.as_deref().is_some_and(|t| t.len() < 16) {
            bad(field("http.ingest_token"), "must be at least 16 characters");
        }
        within!(http.max_body_bytes, 1, 64 << 20, "http.max_body_bytes");
        within!(
            http.max_pending_requests,
            1,
            10_000,
            "http.max_pending_requests"
        );
        within_time!(
            http.header_timeout,
            10 * MS,
            3600 * SECOND,
            "http.header_timeout"
        );
        within_time!(http.idle_timeout, 10 * MS, DAY, "http.idle_timeout");
        within!(http.max_connections, 1, 65_536, "http.max_connections");
        let topics = field("ingest.topics");
        for (i, m) in ingest.topics.iter().enumerate() {
            let at = topics.index(i);
            let levels: Vec<&str> = m.filter.split('/').collect();
            let line = m.format == PayloadFormat::LineProtocol;
            let device = m.device_level.as_ref().map_or(&[][..], Levels::levels);
            match (&m.device_level, line && m.device_tag.is_some()) {
                (None, false) => bad(
                    at.key("device_level"),
                    "names no topic level (only line protocol with a device_tag may omit it)",
                ),
                (Some(_), _) if device.is_empty() => {
                    bad(at.key("device_level"), "names no topic level")
                }
                _ => {}
            }
            if !line {
                for (key, set) in [
                    ("device_tag", m.device_tag.is_some()),
                    ("path_tags", !m.path_tags.is_empty()),
                    ("precision", m.precision.is_some()),
                ] {
                    if set {
                        bad(at.key(key), "only for format \"line_protocol\"");
                    }
                }
            }
            if !m.path_levels.is_empty() && !m.path_tags.is_empty() {
                bad(
                    at.key("path_tags"),
                    "a path comes from levels or tags, not both",
                );
            }
            if let Some(level) = device.iter().find(|&&l| levels.get(l) != Some(&"+")) {
                bad(
                    at.key("device_level"),
                    &format!("level {level} of `{}` must be `+`", m.filter),
                );
            }
            match (m.format, m.metric_level) {
                (PayloadFormat::Value, None) => bad(
                    at.key("metric_level"),
                    "format \"value\" takes the metric from a topic level",
                ),
                (_, Some(level)) if levels.get(level) != Some(&"+") => bad(
                    at.key("metric_level"),
                    &format!("level {level} of `{}` must be `+`", m.filter),
                ),
                (PayloadFormat::Value, Some(_)) | (_, None) => {}
                (_, Some(_)) => bad(at.key("metric_level"), "only for format \"value\""),
            }
            if let Some(zone) = &m.timezone
                && let Err(e) = crate::decode::time::zone(zone)
            {
                bad(at.key("timezone"), &e);
            }
            if m.time_key.as_deref().is_some_and(str::is_empty) {
                bad(at.key("time_key"), "must not be empty");
            }
            if levels.iter().any(|l| l.contains('#') && *l != "#") {
                bad(at.key("filter"), "misplaced `#`");
            }
            if let Some(level) = m.path_levels.iter().find(|&&l| levels.get(l) != Some(&"+")) {
                bad(
                    at.key("path_levels"),
                    &format!("level {level} of `{}` must be `+`", m.filter),
                );
            }
        }
        // The engine counts in whole milliseconds.
        within_time!(self.engine.window, MS, 366 * DAY, "engine.window");
        within_time!(
            self.engine.allowed_lateness,
            Duration::ZERO,
            31 * DAY,
            "engine.allowed_lateness"
        );
        within_time!(
            self.engine.max_source_skew,
            Duration::ZERO,
            31 * DAY,
            "engine.max_source_skew"
        );
        within!(self.engine.max_series, 1, 10_000_000, "engine.max_series");
        within_time!(
            self.engine.snapshot_every,
            SECOND,
            DAY,
            "engine.snapshot_every"
        );
        let views = field("engine.views");
        let mut names = std::collections::HashSet::new();
        for (i, v) in self.engine.views.iter().enumerate() {
            let at = views.index(i);
            if v.name.is_empty() || v.name == "default" || v.name.contains(['/', '+', '#']) {
                bad(
                    at.key("name"),
                    "must be non-empty, not `default`, without `/`, `+` or `#`",
                );
            } else if !names.insert(v.name.as_str()) {
                bad(at.key("name"), &format!("`{}` is used twice", v.name));
            }
            if let Err((key, reason)) = v.spec(self.engine.allowed_lateness) {
                bad(at.key(key), &format!("view `{}`: {reason}", v.name));
            }
        }
        let paths = field("engine.paths");
        for (device, path) in &self.engine.paths {
            if path
                .split('/')
                .any(|level| level.is_empty() || level.contains(['+', '#']))
            {
                bad(
                    paths.key(device),
                    "a path is levels separated by `/`, none empty, without `+` or `#`",
                );
            }
        }
        let alerts = &self.alerts;
        within_time!(alerts.reload_every, 10 * MS, DAY, "alerts.reload_every");
        within!(alerts.webhook_queue, 1, 1_000_000, "alerts.webhook_queue");
        within!(alerts.webhook_attempts, 1, 1000, "alerts.webhook_attempts");
        within_time!(alerts.webhook_backoff, MS, DAY, "alerts.webhook_backoff");
        within_time!(
            alerts.webhook_max_backoff,
            alerts.webhook_backoff,
            DAY,
            "alerts.webhook_max_backoff"
        );
        within_time!(
            alerts.webhook_timeout,
            MS,
            3600 * SECOND,
            "alerts.webhook_timeout"
        );
        let allow = field("alerts.webhook_allow");
        for (i, prefix) in alerts.webhook_allow.iter().enumerate() {
            if let Err(reason) = crate::rules::actions::valid_allow_prefix(prefix) {
                bad(allow.index(i), &reason);
            }
        }
        let serial = field("serial");
        let mut ports = std::collections::HashSet::new();
        for (i, port) in self.serial.iter().enumerate() {
            let at = serial.index(i);
            if port.path.as_os_str().is_empty() {
                bad(at.key("path"), "must not be empty");
            } else if !ports.insert(&port.path) {
                bad(at.key("path"), "is configured twice");
            }
            if port.baud == 0 {
                bad(at.key("baud"), "must be at least 1");
            }
        }
        if let Some(up) = &self.upstream {
            match BrokerUrl::parse(&up.url) {
                Err(r) => bad(field("upstream.url"), &r.to_string()),
                Ok(url) if up.tls.is_some() && !url.tls => bad(
                    field("upstream.tls"),
                    "TLS settings need an mqtts:// upstream.url",
                ),
                Ok(_) => {}
            }
            if let Err(r) = valid_prefix(&up.topic_prefix) {
                bad(field("upstream.topic_prefix"), &r);
            }
            within!(up.max_inflight, 1, 65_535, "upstream.max_inflight");
            within!(up.max_outbox, 1, 10_000_000_000u64, "upstream.max_outbox");
        }
        p
    }

    /// The store's caps (no outbox cap without an upstream: no outbox).
    pub fn store_limits(&self) -> crate::store::Limits {
        crate::store::Limits {
            max_samples: self.store.max_samples,
            max_sample_bytes: self.store.max_bytes,
            max_age_ms: self
                .store
                .max_age
                .map(|a| i64::try_from(a.as_millis()).unwrap_or(i64::MAX)),
            on_full: self.store.on_full,
            durability: self.store.durability,
            max_outbox: self.upstream.as_ref().map_or(u64::MAX, |u| u.max_outbox),
        }
    }

    /// The engine settings and this file's rules, compiled.
    pub fn engine(&self) -> (EngineConfig, Vec<Rule>) {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let engine = EngineConfig {
            window_ms: ms(self.engine.window),
            allowed_lateness_ms: ms(self.engine.allowed_lateness),
            max_series: self.engine.max_series,
            idle_timeout_ms: ms(self.engine.idle_timeout),
            max_source_skew_ms: ms(self.engine.max_source_skew),
            // validate() checked every view.
            views: self
                .engine
                .views
                .iter()
                .filter_map(|v| v.spec(self.engine.allowed_lateness).ok())
                .collect(),
        };
        // validate() compiled every rule.
        let rules = self
            .rules
            .iter()
            .filter_map(|r| {
                crate::rules::compile(r, self.alerts.allow())
                    .ok()
                    .map(|(rule, _)| rule)
            })
            .collect();
        (engine, rules)
    }
}

fn valid_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() || prefix.starts_with('/') || prefix.ends_with('/') {
        return Err(format!(
            "`{prefix}` must be non-empty without leading or trailing `/`"
        ));
    }
    if prefix.contains(['+', '#']) {
        return Err(format!("`{prefix}` must not contain MQTT wildcards"));
    }
    Ok(())
}

/// The demo's gateway configuration: short windows so alerts show within
/// seconds, a free port for the embedded broker, one threshold rule.
pub fn demo_config(data_dir: PathBuf) -> Config {
    let mut config = Config {
        data_dir,
        ..Config::default()
    };
    config.broker.listen = ([127, 0, 0, 1], 0).into();
    config.http.listen = ([127, 0, 0, 1], 0).into();
    config.engine.window = Duration::from_secs(2);
    config.engine.allowed_lateness = Duration::from_millis(500);
    config.rules = vec![RuleConfig::above(
        "overheat",
        "temperature",
        Duration::from_secs(2),
        eddy_analytics::Aggregate::Mean,
        50.0,
    )];
    config
}
