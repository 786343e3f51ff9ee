//! What a rule does when its alert changes: publish on the local broker,
//! forward upstream through the outbox, post to a webhook, or command a
//! device, so the system acts on its own and not only notifies.
//!
//! Webhooks go through one bounded queue and one worker: each post is
//! tried with exponential backoff until it succeeds, the server refuses it
//! (a 4xx other than 408 and 429), or the attempts run out. A full queue
//! drops the new notification and counts it (`webhooks_dropped`): the
//! alert itself is in the store's history and, with `upstream`, in the
//! outbox.

use std::sync::Arc;
use std::time::Duration;

use eddy_analytics::AlertEvent;
use eddy_proto::Command;
use hyper::Method;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::client;
use crate::pipeline::Rendered;
use crate::sinks::{Guarantee, Publish};
use crate::stats::{self, Stats};
use crate::store::OutboxRecord;

/// Which notifications an action reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum When {
    #[default]
    Firing,
    Resolved,
    /// Firing, resolved, repeats and flapping.
    Any,
}

/// The command a `command` action sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandKind {
    SetOutput,
    SetInterval,
    Reboot,
}

/// An action as written: `{ type = "webhook", url = "http://..." }`,
/// `{ type = "command", command = "set_output", pin = 2, on = true }`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ActionConfig {
    /// Publish on `{prefix}/alerts/{rule}/{group}` (retained).
    Mqtt,
    /// Append to the outbox for the upstream broker.
    Upstream,
    Webhook {
        url: String,
        #[serde(default)]
        when: Option<When>,
    },
    Command {
        command: CommandKind,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pin: Option<u8>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        on: Option<bool>,
        #[serde(
            default,
            with = "humantime_serde",
            skip_serializing_if = "Option::is_none"
        )]
        interval: Option<Duration>,
        /// The device told; the alert's own device when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        #[serde(default)]
        when: Option<When>,
    },
}

/// An action, ready to run.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Mqtt,
    Upstream,
    Webhook {
        url: Arc<str>,
        when: When,
    },
    Command {
        command: Command,
        device: Option<String>,
        when: When,
    },
}

/// Where webhooks may post (`[alerts] webhook_allow`).
#[derive(Debug, Clone, Copy)]
pub enum WebhookAllow<'a> {
    /// URL prefixes; a webhook whose URL starts with none is refused.
    Prefixes(&'a [String]),
    /// Not known here: a rules file checked without its `eddy.toml`
    /// (the gateway checks the list when it loads the file).
    Unchecked,
}

/// An allow-list entry is `http://host:port/` with a path (at least the
/// `/`), so a prefix cannot match another port (`:9000` vs `:90001`) or
/// host (`example.com` vs `example.com.evil`).
pub fn valid_allow_prefix(prefix: &str) -> Result<(), String> {
    let expected =
        || format!("`{prefix}`: expected a URL prefix http://host:port/ (ending in a path)");
    let rest = prefix.strip_prefix("http://").ok_or_else(expected)?;
    if !rest.contains('/') {
        return Err(expected());
    }
    client::split_url(prefix).map_err(|_| expected())?;
    Ok(())
}

impl ActionConfig {
    /// Checks the fields; the message says what is wrong.
    pub fn compile(&self, allow: WebhookAllow<'_>) -> Result<Action, String> {
        Ok(match self {
            ActionConfig::Mqtt => Action::Mqtt,
            ActionConfig::Upstream => Action::Upstream,
            ActionConfig::Webhook { url, when } => {
                client::split_url(url)
                    .map_err(|_| format!("webhook url `{url}`: expected http://host:port/path"))?;
                if let WebhookAllow::Prefixes(prefixes) = allow
                    && !prefixes.iter().any(|p| url.starts_with(p.as_str()))
                {
                    return Err(format!(
                        "webhook url `{url}` is not allowed: no prefix of it in [alerts] webhook_allow"
                    ));
                }
                Action::Webhook {
                    url: Arc::from(url.as_str()),
                    when: when.unwrap_or(When::Any),
                }
            }
            ActionConfig::Command {
                command,
                pin,
                on,
                interval,
                device,
                when,
            } => {
                let command = match command {
                    CommandKind::SetOutput => Command::SetOutput {
                        pin: pin.ok_or("set_output needs `pin`")?,
                        on: on.ok_or("set_output needs `on` (true or false)")?,
                    },
                    CommandKind::SetInterval => {
                        let ms = interval
                            .map(|d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX))
                            .ok_or("set_interval needs `interval`, e.g. \"5s\"")?;
                        Command::SetInterval { ms }
                    }
                    CommandKind::Reboot => Command::Reboot,
                };
                if let Some(d) = device {
                    eddy_proto::valid_name(d, eddy_proto::MAX_DEVICE_ID_LEN)
                        .map_err(|e| format!("command device `{d}` {e}"))?;
                }
                Action::Command {
                    command,
                    device: device.clone(),
                    when: when.unwrap_or(When::Firing),
                }
            }
        })
    }
}

impl When {
    /// Whether a notification with `state` (and `repeat`) triggers it.
    pub fn matches(self, state: eddy_analytics::AlertState, repeat: bool) -> bool {
        use eddy_analytics::AlertState;
        match self {
            When::Any => true,
            When::Firing => state == AlertState::Firing && !repeat,
            When::Resolved => state == AlertState::Resolved,
        }
    }
}

/// What a batch's alert notifications do: decided before the commit,
/// carried out after it.
#[derive(Debug, Default)]
pub struct Dispatch {
    /// Published on the local broker (`mqtt`).
    pub local: Vec<Rendered>,
    /// Appended to the outbox in the batch's transaction (`upstream`).
    pub outbox: Vec<OutboxRecord>,
    /// Run once the batch committed (`webhook`, `command`).
    pub effects: Vec<Effect>,
}

/// An action that reaches outside the gateway, run after the commit.
#[derive(Debug)]
pub enum Effect {
    Webhook {
        url: Arc<str>,
        payload: Vec<u8>,
    },
    Command {
        device: String,
        command: Command,
        rule: Arc<str>,
    },
}

impl Dispatch {
    /// Applies `actions` (the defaults, `mqtt` and `upstream`, when the
    /// rule names none) to one rendered notification of `alert`, whose
    /// group is `group`. `outbox` says whether an upstream sink exists.
    pub fn add(
        &mut self,
        actions: Option<&[Action]>,
        alert: &AlertEvent,
        rendered: &Rendered,
        group: &str,
        outbox: bool,
    ) {
        let default = [Action::Mqtt, Action::Upstream];
        for action in actions.unwrap_or(&default) {
            match action {
                Action::Mqtt => self.local.push(rendered.clone()),
                Action::Upstream if outbox => self.outbox.push(OutboxRecord {
                    topic: rendered.topic.clone(),
                    payload: rendered.payload.clone(),
                }),
                Action::Upstream => {}
                Action::Webhook { url, when } if when.matches(alert.state, alert.repeat) => {
                    self.effects.push(Effect::Webhook {
                        url: url.clone(),
                        payload: rendered.payload.clone(),
                    });
                }
                Action::Command {
                    command,
                    device,
                    when,
                } if when.matches(alert.state, alert.repeat) => {
                    self.effects.push(Effect::Command {
                        device: device.clone().unwrap_or_else(|| group.to_string()),
                        command: *command,
                        rule: alert.rule.clone(),
                    });
                }
                Action::Webhook { .. } | Action::Command { .. } => {}
            }
        }
    }
}

/// Where effects go once their batch committed.
#[derive(Debug)]
pub struct Effects<'a> {
    pub webhooks: &'a Webhooks,
    /// The local broker, where commands go.
    pub local: &'a dyn Publish,
    pub stats: &'a Stats,
}

impl Effects<'_> {
    /// Queues webhooks and publishes command frames; `command_id` numbers
    /// the commands.
    pub async fn run(&self, effects: Vec<Effect>, command_id: &mut u32) {
        for effect in effects {
            match effect {
                Effect::Webhook { url, payload } => self.webhooks.post(url, payload),
                Effect::Command {
                    device,
                    command,
                    rule,
                } => {
                    *command_id = command_id.wrapping_add(1);
                    self.command(&device, command, *command_id, &rule).await;
                }
            }
        }
    }

    /// Publishes a command frame to `{prefix}/{device}/cmd` (QoS 1).
    async fn command(&self, device: &str, command: Command, id: u32, rule: &str) {
        let Ok(target) = eddy_proto::DeviceId::try_from(device) else {
            warn!(
                rule,
                group = device,
                "command action: the alert's group is not a device"
            );
            return;
        };
        let frame = eddy_proto::Frame::Command(eddy_proto::CommandFrame {
            device: target,
            id,
            command,
        });
        let mut buf = [0u8; 128];
        let Ok(bytes) = eddy_proto::encode(&frame, &mut buf) else {
            return;
        };
        let frame = Rendered {
            topic: format!("{device}/{}", eddy_proto::topic::COMMAND),
            payload: bytes.to_vec(),
            retain: false,
        };
        self.local.publish(frame, Guarantee::AtLeastOnce).await;
        stats::add(&self.stats.commands_sent, 1);
        info!(rule, device, ?command, "command sent");
    }
}

/// Webhook delivery settings (`[alerts]` in `eddy.toml`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WebhookSettings {
    pub queue: usize,
    pub attempts: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub timeout: Duration,
}

#[derive(Debug)]
struct Job {
    url: Arc<str>,
    body: Vec<u8>,
}

/// The webhook queue's sending side.
#[derive(Debug, Clone)]
pub struct Webhooks {
    tx: mpsc::Sender<Job>,
    stats: Arc<Stats>,
}

impl Webhooks {
    /// Starts the worker; it stops at `shutdown` (what is queued then is
    /// not sent: the alerts are in the history).
    pub fn spawn(
        settings: WebhookSettings,
        stats: Arc<Stats>,
        shutdown: CancellationToken,
    ) -> (Self, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        let task = tokio::spawn(worker(rx, settings, stats.clone(), shutdown));
        (Self { tx, stats }, task)
    }

    /// Queues a post; a full queue drops it (counted).
    pub fn post(&self, url: Arc<str>, body: Vec<u8>) {
        if self.tx.try_send(Job { url, body }).is_err() {
            stats::add(&self.stats.webhooks_dropped, 1);
            warn!("webhook queue full: notification dropped");
        }
    }
}

async fn worker(
    mut rx: mpsc::Receiver<Job>,
    settings: WebhookSettings,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) {
    loop {
        let job = tokio::select! {
            job = rx.recv() => match job { Some(j) => j, None => return },
            () = shutdown.cancelled() => return,
        };
        let mut backoff = settings.backoff;
        for attempt in 1..=settings.attempts.max(1) {
            match deliver(&job, settings.timeout).await {
                Ok(()) => {
                    stats::add(&stats.webhooks_sent, 1);
                    break;
                }
                Err(Fate::Refused(status)) => {
                    stats::add(&stats.webhooks_failed, 1);
                    warn!(url = %job.url, status, "webhook refused the alert");
                    break;
                }
                Err(Fate::Retry(reason)) if attempt < settings.attempts => {
                    stats::add(&stats.webhooks_retried, 1);
                    debug!(url = %job.url, attempt, %reason, "webhook failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(backoff) => {}
                        () = shutdown.cancelled() => return,
                    }
                    backoff = (backoff * 2).min(settings.max_backoff);
                }
                Err(Fate::Retry(reason)) => {
                    stats::add(&stats.webhooks_failed, 1);
                    warn!(url = %job.url, attempts = attempt, %reason, "webhook gave up");
                }
            }
        }
    }
}

enum Fate {
    Refused(u16),
    Retry(String),
}

async fn deliver(job: &Job, timeout: Duration) -> Result<(), Fate> {
    let (addr, path) = client::split_url(&job.url).map_err(|e| Fate::Retry(e.to_string()))?;
    match client::exchange(
        &addr,
        Method::POST,
        &path,
        "application/json",
        job.body.clone(),
        timeout,
    )
    .await
    {
        Ok((status, _)) if (200..300).contains(&status) => Ok(()),
        Ok((status, _)) if (400..500).contains(&status) && status != 408 && status != 429 => {
            Err(Fate::Refused(status))
        }
        Ok((status, _)) => Err(Fate::Retry(format!("status {status}"))),
        Err(e) => Err(Fate::Retry(e.to_string())),
    }
}
