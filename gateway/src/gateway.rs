//! Wires the parts together: broker, store, source, pipeline, sinks.

use std::net::SocketAddr;
use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;

use eddy_analytics::EngineError;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::auth::{Need, Tokens};
use crate::broker::access::Access;
use crate::broker::credentials::Credentials;
use crate::broker::{BrokerError, EmbeddedBroker};
use crate::campaign;
use crate::config::{BrokerUrl, Config, ConfigError, Placed, PlacedErrors};
use crate::http::{self, HttpError};
use crate::pipeline::route::Router;
use crate::pipeline::{Inbox, PipelineError, PipelineParts};
use crate::rules::Registry;
use crate::rules::actions::Webhooks;
use crate::sinks::local::LocalPublisher;
use crate::sinks::{self, OutboxHead};
use crate::sources::embedded::IngestHook;
use crate::sources::http::HttpSource;
use crate::sources::waiters::Waiters;
use crate::sources::{Acknowledger, Fanout, mqtt, serial};
use crate::stats::Stats;
use crate::store::{OpenOptions, Store, StoreError};
use crate::supervisor::{RestartPolicy, Tasks, supervise};

/// The store file inside `data_dir`.
pub const STORE_FILE: &str = "eddy.redb";

/// The gateway could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("rules: {0}")]
    Engine(#[from] EngineError),
    #[error("rules refused:\n{0}")]
    Rules(#[from] crate::rules::registry::RulesRefused),
    #[error("pipeline: {0}")]
    Pipeline(#[from] PipelineError),
    #[error("ingest did not subscribe at {broker} within {waited:?}")]
    NotSubscribed { broker: String, waited: Duration },
    #[error("{task} task panicked")]
    Panicked { task: &'static str },
    #[error("the ingest source stopped unexpectedly")]
    SourceClosed,
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error(transparent)]
    Sink(#[from] crate::sinks::SinkError),
    #[error("ota.public_key: {0}")]
    OtaKey(#[from] crate::campaign::key::KeyError),
    #[error("API tokens: {0}")]
    Auth(#[from] crate::auth::AuthError),
}

/// A running gateway.
#[derive(Debug)]
pub struct Gateway {
    broker: BrokerUrl,
    store: Store,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    /// Cancelled once the pipeline has drained, so the source can disconnect.
    drained: CancellationToken,
    /// Supervised; finishes once the source closed and it drained.
    pipeline: JoinHandle<()>,
    /// Outbox sinks, stopped after the pipeline drained.
    sinks: Vec<JoinHandle<()>>,
    /// Every other task: sources' pumps, publishers, HTTP, watchers.
    tasks: Tasks,
    /// The external broker's ingest session (the embedded broker needs
    /// no subscription: its hook takes every publish).
    subscribed: Option<eddy_mqtt::Ready>,
    embedded: Option<EmbeddedBroker>,
    http: Option<SocketAddr>,
    /// Holds the store, the API tokens and `admin.token`.
    data_dir: std::path::PathBuf,
}

impl Gateway {
    /// Starts every part; returns once the broker listens and the ingest
    /// session is being established.
    pub async fn start(config: Config) -> Result<Self, GatewayError> {
        config.validate()?;
        // Owner-only: the store holds every device's telemetry, and the
        // directory the API tokens (a directory made here is 0700).
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.data_dir)
            .map_err(|source| GatewayError::DataDir {
                path: config.data_dir.clone(),
                source,
            })?;
        let store_path = config.data_dir.join(STORE_FILE);
        let store = {
            let path = store_path.clone();
            let options = OpenOptions {
                cache_bytes: config.store.cache_bytes,
                verify: config.store.verify_on_open,
            };
            tokio::task::spawn_blocking(move || Store::open_with(&path, options))
                .await
                .map_err(|_| GatewayError::Panicked { task: "store open" })??
        };
        owner_only(&store_path).map_err(|source| GatewayError::DataDir {
            path: store_path.clone(),
            source,
        })?;
        info!(path = %store_path.display(), "store open");
        let tokens = {
            let dir = config.data_dir.clone();
            tokio::task::spawn_blocking(move || Tokens::open(&dir))
                .await
                .map_err(|_| GatewayError::Panicked {
                    task: "tokens open",
                })??
        };

        let credentials = {
            let dir = config.data_dir.clone();
            tokio::task::spawn_blocking(move || Credentials::open(&dir))
                .await
                .map_err(|_| GatewayError::Panicked {
                    task: "credentials open",
                })??
        };
        let stats = Arc::new(Stats::default());
        let (embedded, broker) = match &config.broker.url {
            Some(url) => (
                None,
                BrokerUrl::parse(url).map_err(|e| {
                    ConfigError::Invalid(PlacedErrors(vec![Placed {
                        field: Some("broker.url".into()),
                        ..Placed::unplaced("config", None, e.to_string())
                    }]))
                })?,
            ),
            None => {
                let mut b = EmbeddedBroker::start(&config.broker).await?;
                let anonymous = config.broker.anonymous_allowed();
                if anonymous && config.broker.allow_anonymous == Some(true) {
                    warn!(
                        listen = %config.broker.listen,
                        "broker.allow_anonymous = true: any client that reaches the broker may publish and subscribe without credentials"
                    );
                } else if !anonymous && credentials.is_empty() {
                    info!(
                        "the broker admits devices with credentials only, and none exist yet: add one with `eddy device add ID`"
                    );
                }
                b.access(
                    |peers| {
                        Access::new(
                            credentials.clone(),
                            anonymous,
                            config.broker.max_publish_rate,
                            &config.ingest,
                            peers,
                            stats.clone(),
                        )
                    },
                    stats.clone(),
                )
                .await;
                let url = BrokerUrl::from(b.internal_addr());
                (Some(b), url)
            }
        };
        let shutdown = CancellationToken::new();
        let (tx, rx) = mpsc::channel(config.ingest.queue_capacity);
        let drained = CancellationToken::new();
        // Source 0: the embedded broker stores each publish before its
        // PUBACK; an external broker is read by a persistent session.
        let (ingest_acker, ingest_task, subscribed): (Acknowledger, _, _) = match &embedded {
            Some(b) => {
                let waiters = Waiters::new(tx.clone(), 0, shutdown.clone());
                let router = Router::new(&config.ingest);
                b.ingest(IngestHook::new(waiters.clone(), router, stats.clone()))
                    .await;
                (waiters, None, None)
            }
            None => {
                let source = mqtt::spawn(
                    &broker,
                    &config.ingest,
                    tx.clone(),
                    stats.clone(),
                    shutdown.clone(),
                    drained.clone(),
                );
                (
                    Arc::new(source.acker),
                    Some(source.task),
                    Some(source.ready),
                )
            }
        };
        // HTTP ingest is source 1 of the pipeline's fanout.
        let http_source = (config.http.enabled && config.http.ingest).then(|| {
            HttpSource::spawn(&config.http, tx.clone(), 1, stats.clone(), shutdown.clone())
        });
        drop(tx);
        let acker: Acknowledger = match &http_source {
            Some(http) => Arc::new(Fanout(vec![ingest_acker, http.acknowledger()])),
            None => ingest_acker,
        };
        let (local, local_task) = LocalPublisher::spawn(
            &broker,
            &format!("{}-out", config.ingest.client_id),
            &config.ingest.topic_prefix,
            stats.clone(),
            shutdown.clone(),
        );
        let outbox_head = OutboxHead::default();
        let policy = RestartPolicy::default();
        let sinks = sinks::spawn(&config, &store, &outbox_head, &stats, &shutdown)?;
        let (engine, _) = config.engine();
        let registry = {
            let (engine, rules, path, dir, allow, store) = (
                engine.clone(),
                config.rules.clone(),
                config.path.clone(),
                config.alerts.rules_dir.clone(),
                config.alerts.webhook_allow.clone(),
                store.clone(),
            );
            tokio::task::spawn_blocking(move || {
                Registry::open(engine, rules, path, dir, allow, store)
            })
            .await
            .map_err(|_| GatewayError::Panicked { task: "rules load" })?
            .map_err(crate::rules::registry::RulesRefused)?
        };
        let (webhooks, webhook_task) =
            Webhooks::spawn(config.alerts.webhooks(), stats.clone(), shutdown.clone());
        let watcher = registry.watch(config.alerts.reload_every, stats.clone(), shutdown.clone());
        let (request_tx, request_rx) = mpsc::channel(16);
        let parts = PipelineParts {
            engine,
            rules: registry.clone(),
            webhooks,
            engine_section: config.engine.clone(),
            requests: Arc::new(tokio::sync::Mutex::new(request_rx)),
            store: store.clone(),
            ingest: config.ingest.clone(),
            acker,
            local: Arc::new(local),
            outbox: sinks::any(&config),
            limits: config.store_limits(),
            outbox_head,
            stats: stats.clone(),
            stop: shutdown.clone(),
        };
        // Fail fast on a bad engine config or unreadable state, before
        // anything is supervised.
        let first = parts.build_off_runtime().await?;
        let inbox: Inbox = Arc::new(tokio::sync::Mutex::new(rx));
        let first = Arc::new(std::sync::Mutex::new(Some(first)));
        let pipeline = supervise(
            "pipeline",
            policy,
            stats.clone(),
            shutdown.clone(),
            move || {
                let (parts, inbox, first) = (parts.clone(), inbox.clone(), first.clone());
                async move {
                    let ready = first.lock().unwrap_or_else(|e| e.into_inner()).take();
                    let pipeline = match ready {
                        Some(p) => p,
                        None => parts.build_off_runtime().await?,
                    };
                    pipeline.run(inbox).await
                }
            },
        );
        let public_key = match &config.ota.public_key {
            Some(path) => Some(crate::campaign::key::read_key(path)?),
            None => None,
        };
        let (control, fleet, ota_task) = campaign::runner::spawn(
            &broker,
            &config.ingest,
            config.ota.clone(),
            store.clone(),
            stats.clone(),
            shutdown.clone(),
        );
        let api = campaign::api::router(campaign::api::ApiState {
            store: store.clone(),
            control,
            public_key,
            max_image_bytes: config.ota.max_image_bytes,
            fleet,
        })
        .merge(crate::live::router(request_tx.clone()))
        .merge(crate::samples::router(store.clone()))
        .merge(crate::rules::api::router(crate::rules::api::RulesApi {
            registry,
            store: store.clone(),
            pipeline: request_tx,
        }));
        // Every API route needs a token (read for GETs, admin for changes);
        // HTTP ingest, merged after, has its own `ingest_token`.
        let api = crate::auth::guard(api, &tokens, Need::ByMethod)
            .merge(crate::auth::router(&tokens))
            .merge(crate::broker::credentials::router(&credentials, &tokens));
        let api = match &http_source {
            Some(http) => api.merge(http.router()),
            None => api,
        };
        let tasks = Tasks::new(shutdown.clone(), stats.clone());
        if let Some(task) = ingest_task {
            tasks.adopt("ingest", task);
        }
        for (name, task) in [
            ("local", local_task),
            ("ota", ota_task),
            ("webhooks", webhook_task),
            ("rules", watcher),
        ] {
            tasks.adopt(name, task);
        }
        for port in &config.serial {
            tasks.adopt(
                "serial",
                serial::spawn(
                    port.clone(),
                    &broker,
                    &config.ingest.topic_prefix,
                    stats.clone(),
                    shutdown.clone(),
                ),
            );
        }
        let http = match config.http.enabled {
            true => {
                let (addr, task) = http::serve(
                    config.http.listen,
                    http::Limits::from(&config.http),
                    stats.clone(),
                    store.clone(),
                    api,
                    config.http.metrics_auth.then_some(&tokens),
                    shutdown.clone(),
                )
                .await?;
                tasks.adopt("http", task);
                Some(addr)
            }
            false => None,
        };
        let mut gateway = Self {
            broker,
            store,
            stats,
            shutdown,
            drained,
            pipeline,
            sinks,
            tasks,
            http,
            subscribed,
            embedded,
            data_dir: config.data_dir.clone(),
        };
        // Devices may connect only once everything that takes their
        // publishes runs. An external broker may be down at start; then
        // ingest keeps retrying in the background.
        if let Some(b) = gateway.embedded.as_mut() {
            gateway.broker = BrokerUrl::from(b.open()?);
        }
        Ok(gateway)
    }

    /// Waits until the ingest session is connected and subscribed (at
    /// once with the embedded broker).
    pub async fn subscribed(&self, timeout: Duration) -> Result<(), GatewayError> {
        let Some(subscribed) = &self.subscribed else {
            return Ok(());
        };
        subscribed
            .wait(timeout)
            .await
            .map_err(|_| GatewayError::NotSubscribed {
                broker: format!("{}:{}", self.broker.host, self.broker.port),
                waited: timeout,
            })
    }

    /// The embedded broker's TLS listener (`[broker.tls]`), once open.
    pub fn broker_tls(&self) -> Option<SocketAddr> {
        self.embedded.as_ref().and_then(|b| b.tls_addr())
    }

    /// Where devices and local consumers connect (the embedded broker's
    /// public listener, or the external broker).
    pub fn broker(&self) -> &BrokerUrl {
        &self.broker
    }

    /// Where `/metrics` is served, if the HTTP port is enabled.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// The data directory (`admin.token` is in it).
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// A token that stops the gateway when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the gateway stops: by its token, or because the
    /// pipeline failed. Then stops everything and reports the first error.
    pub async fn wait(mut self) -> Result<(), GatewayError> {
        let result = tokio::select! {
            r = &mut self.pipeline => match r {
                Ok(()) if self.shutdown.is_cancelled() => Ok(()),
                // Otherwise the pipeline only ends when the source is gone.
                Ok(()) => Err(GatewayError::SourceClosed),
                Err(_) => Err(GatewayError::Panicked { task: "pipeline supervisor" }),
            },
            () = self.shutdown.cancelled() => Ok(()),
        };
        if let Err(e) = &result {
            error!(error = %e, "gateway stopping");
        }
        self.shutdown.cancel();
        if let Some(b) = self.embedded.as_mut() {
            b.close();
        }
        let rest = self.stop_tasks().await;
        result.and(rest)
    }

    /// Stops the gateway: the pipeline commits and acknowledges what it
    /// holds; undelivered outbox records stay in the store.
    pub async fn shutdown(self) -> Result<(), GatewayError> {
        self.shutdown.cancel();
        self.wait().await
    }

    async fn stop_tasks(&mut self) -> Result<(), GatewayError> {
        let mut result = Ok(());
        if !self.pipeline.is_finished() && (&mut self.pipeline).await.is_err() {
            result = Err(GatewayError::Panicked {
                task: "pipeline supervisor",
            });
        }
        self.drained.cancel();
        for sink in self.sinks.drain(..) {
            if sink.await.is_err() {
                result = result.and(Err(GatewayError::Panicked {
                    task: "sink supervisor",
                }));
            }
        }
        self.tasks.stop().await;
        result
    }
}

/// Takes group and other access away from `path` (redb creates the store
/// file with the process's umask).
fn owner_only(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o700))?;
    }
    Ok(())
}
