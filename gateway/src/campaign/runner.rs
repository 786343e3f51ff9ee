//! Drives the running campaigns: offers and chunks go out on
//! `{prefix}/{device}/ota`, devices' reports come back on
//! `{prefix}/{device}/ota/status`. Over a serial line the bridge carries
//! the same frames on the same topics.
//!
//! Each device's transfer is a sliding window of chunks (go-back-N): the
//! device answers every offer and chunk with its resume point; the runner
//! keeps up to `window` chunks beyond the last acknowledged offset in
//! flight. A resume point repeated twice while later chunks are out (a
//! damaged or lost chunk: every chunk after it repeats it) sends the window
//! again from there, once per point (a single repeat is the answer to a
//! repeated offer); silence
//! for `retry_after` offers the image again, which the device answers with
//! where it stands, so a transfer never restarts from zero. A device that
//! stays silent through `max_retries` offers, or does not report its
//! confirmation within `confirm_timeout` of verifying, has failed.
//!
//! Campaign records are the state of record: device state changes are
//! written to redb within `PERSIST_EVERY`, stage and status changes at
//! once. A restarted runner (or gateway) picks the running campaigns up
//! from the store and offers again to every device that was mid-transfer.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use eddy_mqtt::{AsyncClient, Connector, Delivery, Pump, QoS};
use eddy_ota::{OFFER_LEN, SignedImage};
use eddy_proto::{
    Frame, MAX_FRAME_LEN, MAX_OTA_CHUNK, OtaChunk, OtaOffer, OtaReject, OtaState, OtaStatus,
    chunk_crc, topic,
};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::fleet::Fleet;
use super::{Campaign, DeviceState, Status, now_ms};
use crate::config::{BrokerUrl, IngestConfig, OtaConfig};
use crate::stats::{self, Stats};
use crate::store::{Store, StoreError};
use crate::supervisor::{RestartPolicy, supervise};

/// How often changed campaign records are written at most (stage and
/// status changes are written at once).
const PERSIST_EVERY: Duration = Duration::from_millis(500);
/// Device reports queued between the MQTT client and the runner; when
/// full, the client stops reading until the runner catches up.
const REPORT_QUEUE: usize = 256;
/// Timer resolution of retries and starts.
const TICK: Duration = Duration::from_millis(20);

/// What the HTTP API asks of the runner.
#[derive(Debug)]
pub enum Control {
    /// A campaign was stored: start it.
    Created(u32),
    /// Halt a running campaign; answers with the campaign, or `None` when
    /// no such campaign runs.
    Halt(u32, oneshot::Sender<Option<Campaign>>),
}

/// Why the runner stopped (it is restarted by its supervisor).
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("campaign {id}: {reason}")]
    Record { id: u32, reason: String },
}

/// Starts the supervised runner (client id `{ingest.client_id}-ota`, on
/// `ingest.topic_prefix`); returns where to send it [`Control`]s and the
/// boards and versions it hears devices announce.
pub fn spawn(
    broker: &BrokerUrl,
    ingest: &IngestConfig,
    config: OtaConfig,
    store: Store,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> (mpsc::Sender<Control>, Fleet, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel(64);
    let fleet = Fleet::new(ingest.max_devices);
    let shared = Arc::new(Shared {
        broker: broker.clone(),
        client_id: format!("{}-ota", ingest.client_id),
        prefix: ingest.topic_prefix.clone(),
        config,
        store,
        fleet: fleet.clone(),
        stats: stats.clone(),
        shutdown: shutdown.clone(),
        control: Mutex::new(rx),
    });
    let task = supervise(
        "ota",
        RestartPolicy::default(),
        stats,
        shutdown,
        move || shared.clone().run(),
    );
    (tx, fleet, task)
}

#[derive(Debug)]
struct Shared {
    broker: BrokerUrl,
    client_id: String,
    prefix: String,
    config: OtaConfig,
    store: Store,
    /// Boards and versions devices reported.
    fleet: Fleet,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    /// Survives restarts of the runner.
    control: Mutex<mpsc::Receiver<Control>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Offered; waiting for the first resume point.
    Offering,
    Sending,
    /// Verified; waiting for `Confirmed` or `RolledBack`.
    Confirming {
        since: Instant,
    },
}

/// One device's transfer in progress.
#[derive(Debug)]
struct Transfer {
    campaign: u32,
    /// The device's entry in the campaign.
    index: usize,
    image: Arc<Vec<u8>>,
    phase: Phase,
    /// Payload bytes the device acknowledged.
    acked: u32,
    /// Payload bytes sent (in flight beyond `acked`).
    sent: u32,
    /// The furthest offset ever sent: chunks below it are resends.
    high: u32,
    /// Answers repeating `acked` since it last moved.
    repeats: u32,
    /// The resume point the window was last sent again from.
    rewound_at: Option<u32>,
    last_heard: Instant,
    retries: u32,
}

impl Transfer {
    fn new(campaign: u32, index: usize, image: Arc<Vec<u8>>, phase: Phase, now: Instant) -> Self {
        Self {
            campaign,
            index,
            image,
            phase,
            acked: 0,
            sent: 0,
            high: 0,
            repeats: 0,
            rewound_at: None,
            last_heard: now,
            retries: 0,
        }
    }

    fn payload_len(&self) -> u32 {
        (self.image.len() - OFFER_LEN) as u32
    }
}

/// The runner's state between events.
struct Runner<'a> {
    shared: &'a Shared,
    client: AsyncClient,
    campaigns: BTreeMap<u32, Campaign>,
    images: HashMap<u32, Arc<Vec<u8>>>,
    /// By device: one transfer per device at a time.
    transfers: HashMap<String, Transfer>,
    dirty: bool,
    urgent: bool,
    last_persist: Instant,
}

impl Shared {
    async fn run(self: Arc<Self>) -> Result<(), RunnerError> {
        let capacity = (self.config.max_parallel * self.config.window as usize * 2).max(1024);
        let reports = format!("{}/+/{}", self.prefix, topic::OTA_STATUS);
        let hellos = format!("{}/+/{}", self.prefix, topic::HELLO);
        let pump = Pump::new()
            .subscribe(reports, QoS::AtLeastOnce)
            .subscribe(hellos, QoS::AtLeastOnce)
            .reconnect(Duration::from_millis(200), Duration::from_millis(200));
        let (tx, mut events) = mpsc::channel(REPORT_QUEUE);
        let stop = self.shutdown.child_token();
        let _stop_pump = stop.clone().drop_guard();
        let (client, _pump) = Connector::new(&self.broker, self.client_id.clone())
            .inflight(1000)
            .request_capacity(capacity)
            .spawn(&pump, tx, stop);
        let mut runner = Runner {
            shared: &self,
            client,
            campaigns: BTreeMap::new(),
            images: HashMap::new(),
            transfers: HashMap::new(),
            dirty: false,
            urgent: false,
            last_persist: Instant::now(),
        };
        runner.load()?;
        let mut control = self.control.lock().await;
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                Some(delivery) = events.recv() => match delivery {
                    // Whatever was in flight may be lost: ask again.
                    Delivery::Connected { .. } => runner.reoffer_all(),
                    Delivery::Message(p) => runner.on_report(&p.topic, &p.payload),
                    Delivery::Lost { error, .. } => debug!(%error, "ota runner reconnecting"),
                    Delivery::Sent { .. } | Delivery::Acked { .. } => {}
                },
                msg = control.recv() => match msg {
                    Some(Control::Created(id)) => runner.add(id)?,
                    Some(Control::Halt(id, reply)) => {
                        let _ = reply.send(runner.halt(id));
                    }
                    None => {}
                },
                _ = tick.tick() => runner.on_tick(),
                () = self.shutdown.cancelled() => {
                    runner.urgent = true;
                    runner.persist()?;
                    return Ok(());
                }
            }
            runner.persist()?;
        }
    }
}

fn reject_name(reason: OtaReject) -> &'static str {
    match reason {
        OtaReject::BadSignature => "bad_signature",
        OtaReject::WrongBoard => "wrong_board",
        OtaReject::NotNewer => "not_newer",
        OtaReject::TooLarge => "too_large",
        OtaReject::HashMismatch => "hash_mismatch",
        OtaReject::Malformed => "malformed",
        OtaReject::Flash => "flash",
    }
}

fn ota_version([major, minor, patch]: [u16; 3]) -> eddy_ota::Version {
    eddy_ota::Version {
        major,
        minor,
        patch,
    }
}

fn version_text(version: [u16; 3]) -> String {
    ota_version(version).to_string()
}

impl Runner<'_> {
    fn config(&self) -> &OtaConfig {
        &self.shared.config
    }

    /// Picks up the running campaigns from the store.
    fn load(&mut self) -> Result<(), RunnerError> {
        for (id, record) in self.shared.store.campaign_records()? {
            let campaign = Campaign::from_json(&record).map_err(|e| RunnerError::Record {
                id,
                reason: e.to_string(),
            })?;
            if campaign.status == Status::Running {
                self.insert(campaign)?;
            }
        }
        Ok(())
    }

    fn add(&mut self, id: u32) -> Result<(), RunnerError> {
        let record = self
            .shared
            .store
            .campaign_record(id)?
            .ok_or_else(|| RunnerError::Record {
                id,
                reason: "not in the store".into(),
            })?;
        let campaign = Campaign::from_json(&record).map_err(|e| RunnerError::Record {
            id,
            reason: e.to_string(),
        })?;
        info!(
            campaign = id,
            version = %campaign.version,
            devices = campaign.devices.len(),
            "campaign started"
        );
        self.insert(campaign)
    }

    fn insert(&mut self, mut campaign: Campaign) -> Result<(), RunnerError> {
        let id = campaign.id;
        let image = self
            .shared
            .store
            .campaign_image(id)?
            .ok_or_else(|| RunnerError::Record {
                id,
                reason: "its image is missing".into(),
            })?;
        let image = Arc::new(image);
        // Devices that were mid-transfer when the runner stopped: offer
        // again; they answer with where they stand.
        let now = Instant::now();
        for (index, entry) in campaign.devices.iter_mut().enumerate() {
            let phase = match entry.state {
                DeviceState::Transferring { .. } => Phase::Offering,
                DeviceState::Verified => Phase::Confirming { since: now },
                _ => continue,
            };
            if self.transfers.contains_key(&entry.device) {
                entry.state = DeviceState::Pending;
                continue;
            }
            self.transfers.insert(
                entry.device.clone(),
                Transfer::new(id, index, image.clone(), phase, now),
            );
        }
        self.images.insert(id, image);
        self.campaigns.insert(id, campaign);
        let offers: Vec<String> = self
            .transfers
            .iter()
            .filter(|(_, t)| t.campaign == id && t.phase == Phase::Offering)
            .map(|(d, _)| d.clone())
            .collect();
        for device in offers {
            self.offer(&device);
        }
        self.urgent = true;
        Ok(())
    }

    fn halt(&mut self, id: u32) -> Option<Campaign> {
        let campaign = self.campaigns.get_mut(&id)?;
        if campaign.status != Status::Running {
            return None;
        }
        campaign.halt("halted by the operator", now_ms());
        info!(campaign = id, "campaign halted by the operator");
        self.urgent = true;
        Some(campaign.clone())
    }

    fn publish(&mut self, device: &str, frame: &Frame) {
        let mut buf = [0u8; MAX_FRAME_LEN];
        let Ok(bytes) = eddy_proto::encode(frame, &mut buf) else {
            warn!(%device, "ota frame not encodable");
            return;
        };
        let topic = format!("{}/{device}/{}", self.shared.prefix, topic::OTA);
        // QoS 0: the transfer protocol repairs its own losses, and a full
        // request queue is one more loss it repairs.
        if self
            .client
            .try_publish(topic, QoS::AtMostOnce, false, bytes.to_vec())
            .is_ok()
        {
            let stats = &self.shared.stats;
            stats::add(&stats.ota_frames_sent, 1);
            stats::add(&stats.ota_bytes_sent, bytes.len() as u64);
            if let Some(t) = self.transfers.get(device)
                && let Some(entry) = self
                    .campaigns
                    .get_mut(&t.campaign)
                    .and_then(|c| c.devices.get_mut(t.index))
            {
                entry.bytes_sent += bytes.len() as u64;
            }
        }
    }

    fn offer(&mut self, device: &str) {
        let Some(t) = self.transfers.get_mut(device) else {
            return;
        };
        t.phase = Phase::Offering;
        t.sent = t.acked;
        let frame = Frame::OtaOffer(OtaOffer {
            device: device.try_into().unwrap_or_default(),
            campaign: t.campaign,
            offer: t.image[..OFFER_LEN].iter().copied().collect(),
        });
        self.publish(device, &frame);
    }

    /// Sends chunks until `window` chunks are in flight beyond `acked`.
    fn fill(&mut self, device: &str) {
        let window = self.config().window.max(1) * MAX_OTA_CHUNK as u32;
        loop {
            let Some(t) = self.transfers.get_mut(device) else {
                return;
            };
            let len = t.payload_len();
            if t.phase != Phase::Sending || t.sent >= len || t.sent - t.acked >= window {
                return;
            }
            let offset = t.sent;
            let end = (offset as usize + MAX_OTA_CHUNK).min(len as usize);
            let body = &t.image[OFFER_LEN + offset as usize..OFFER_LEN + end];
            let data: heapless::Vec<u8, MAX_OTA_CHUNK> = body.iter().copied().collect();
            t.sent = end as u32;
            let resent = offset < t.high;
            t.high = t.high.max(t.sent);
            let frame = Frame::OtaChunk(OtaChunk {
                device: device.try_into().unwrap_or_default(),
                campaign: t.campaign,
                offset,
                crc: chunk_crc(&data),
                data,
            });
            if resent {
                let (campaign, index) = (t.campaign, t.index);
                stats::add(&self.shared.stats.ota_chunks_resent, 1);
                if let Some(e) = self
                    .campaigns
                    .get_mut(&campaign)
                    .and_then(|c| c.devices.get_mut(index))
                {
                    e.chunks_resent += 1;
                }
            }
            self.publish(device, &frame);
        }
    }

    fn reoffer_all(&mut self) {
        let devices: Vec<String> = self
            .transfers
            .iter()
            .filter(|(_, t)| !matches!(t.phase, Phase::Confirming { .. }))
            .map(|(d, _)| d.clone())
            .collect();
        for d in devices {
            self.offer(&d);
        }
    }

    fn on_report(&mut self, topic: &str, payload: &[u8]) {
        let device = |leaf: &str| {
            topic
                .strip_prefix(self.shared.prefix.as_str())
                .and_then(|t| t.strip_prefix('/'))
                .and_then(|t| t.strip_suffix(leaf))
                .and_then(|t| t.strip_suffix('/'))
        };
        let (status, hello) = (device(topic::OTA_STATUS), device(topic::HELLO));
        let report = match (status, hello, eddy_proto::decode(payload)) {
            (Some(device), _, Ok(Frame::OtaStatus(s))) if s.device.as_str() == device => s,
            (_, Some(device), Ok(Frame::Hello(h))) if h.device.as_str() == device => {
                if self.shared.fleet.hello(device, &h.board, &h.firmware) {
                    stats::add(&self.shared.stats.ota_hellos, 1);
                } else {
                    debug!(%device, "hello not recorded: ingest.max_devices devices known");
                }
                return;
            }
            _ => {
                stats::add(&self.shared.stats.ota_bad_reports, 1);
                debug!(%topic, "not an OTA report of this device");
                return;
            }
        };
        stats::add(&self.shared.stats.ota_reports, 1);
        self.on_status(&report);
    }

    fn on_status(&mut self, report: &OtaStatus) {
        let device = report.device.as_str();
        let Some(t) = self.transfers.get_mut(device) else {
            return;
        };
        if t.campaign != report.campaign {
            // An answer about another (earlier) transfer.
            return;
        }
        t.last_heard = Instant::now();
        t.retries = 0;
        let state = match report.state {
            OtaState::Next { next } => {
                if matches!(t.phase, Phase::Confirming { .. }) {
                    return;
                }
                if t.phase == Phase::Offering {
                    t.phase = Phase::Sending;
                    t.acked = next;
                    t.sent = next;
                    t.repeats = 0;
                    t.rewound_at = None;
                } else if next > t.acked {
                    t.acked = next;
                    t.sent = t.sent.max(next);
                    t.repeats = 0;
                    t.rewound_at = None;
                } else if next == t.acked && t.sent > next {
                    // The chunks after a damaged or lost one each repeat
                    // the resume point. Twice is not a repeated offer's
                    // answer (nor is a repeat with one chunk in flight):
                    // send the window again, once per point.
                    t.repeats += 1;
                    let lone = t.sent - next <= MAX_OTA_CHUNK as u32;
                    if (t.repeats >= 2 || lone) && t.rewound_at != Some(next) {
                        t.sent = next;
                        t.rewound_at = Some(next);
                    }
                }
                let acked = t.acked;
                self.set_state(device, DeviceState::Transferring { acked });
                self.fill(device);
                return;
            }
            OtaState::Verified => {
                t.phase = Phase::Confirming {
                    since: Instant::now(),
                };
                self.set_state(device, DeviceState::Verified);
                return;
            }
            OtaState::Rejected { reason } => DeviceState::Rejected {
                reason: reject_name(reason).to_string(),
            },
            OtaState::Confirmed { version } => {
                self.shared.fleet.runs(device, ota_version(version));
                DeviceState::Confirmed {
                    version: version_text(version),
                }
            }
            OtaState::RolledBack { version } => {
                self.shared.fleet.runs(device, ota_version(version));
                DeviceState::RolledBack {
                    version: version_text(version),
                }
            }
        };
        self.finish(device, state);
    }

    fn set_state(&mut self, device: &str, state: DeviceState) {
        let Some(t) = self.transfers.get(device) else {
            return;
        };
        if let Some(entry) = self
            .campaigns
            .get_mut(&t.campaign)
            .and_then(|c| c.devices.get_mut(t.index))
            && entry.state != state
        {
            entry.state = state;
            self.dirty = true;
        }
    }

    /// A device's transfer ended: record it and move the campaign on.
    fn finish(&mut self, device: &str, state: DeviceState) {
        let Some(t) = self.transfers.remove(device) else {
            return;
        };
        let Some(campaign) = self.campaigns.get_mut(&t.campaign) else {
            return;
        };
        match &state {
            DeviceState::Confirmed { version } => {
                debug!(campaign = t.campaign, %device, %version, "device updated");
            }
            other => {
                warn!(campaign = t.campaign, %device, state = ?other, "device update failed");
            }
        }
        if let Some(entry) = campaign.devices.get_mut(t.index) {
            entry.state = state;
        }
        if campaign.advance(now_ms()) {
            match &campaign.status {
                Status::Halted { reason } => {
                    warn!(campaign = t.campaign, %reason, "campaign halted");
                }
                Status::Completed => {
                    info!(campaign = t.campaign, counts = ?campaign.counts(), "campaign completed");
                }
                Status::Running => {
                    info!(campaign = t.campaign, stage = campaign.stage, "next stage");
                }
            }
        }
        self.dirty = true;
        self.urgent = true;
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        let cfg = self.config().clone();
        // Silences and missing confirmations.
        let mut offers = Vec::new();
        let mut failed = Vec::new();
        for (device, t) in &mut self.transfers {
            match t.phase {
                Phase::Confirming { since } => {
                    if now.duration_since(since) > cfg.confirm_timeout {
                        failed.push((device.clone(), "did not confirm the new image".to_string()));
                    }
                }
                Phase::Offering | Phase::Sending => {
                    if now.duration_since(t.last_heard) > cfg.retry_after {
                        t.retries += 1;
                        t.last_heard = now;
                        if t.retries > cfg.max_retries {
                            failed.push((
                                device.clone(),
                                format!("no answer to {} offers", cfg.max_retries),
                            ));
                        } else {
                            offers.push(device.clone());
                        }
                    }
                }
            }
        }
        for (device, reason) in failed {
            self.finish(&device, DeviceState::Failed { reason });
        }
        for device in offers {
            self.offer(&device);
        }
        self.start_devices(now);
    }

    /// Starts pending devices of started stages, up to `max_parallel`
    /// transfers at once; a device busy with another campaign waits.
    fn start_devices(&mut self, now: Instant) {
        let mut starts = Vec::new();
        let mut budget = self
            .config()
            .max_parallel
            .saturating_sub(self.transfers.len());
        for (id, campaign) in &self.campaigns {
            for index in campaign.startable() {
                if budget == 0 {
                    break;
                }
                let device = &campaign.devices[index].device;
                if self.transfers.contains_key(device) || starts.iter().any(|(_, _, d)| d == device)
                {
                    continue;
                }
                budget -= 1;
                starts.push((*id, index, device.clone()));
            }
        }
        for (id, index, device) in starts {
            let Some(image) = self.images.get(&id).cloned() else {
                continue;
            };
            self.transfers.insert(
                device.clone(),
                Transfer::new(id, index, image, Phase::Offering, now),
            );
            self.set_state(&device, DeviceState::Transferring { acked: 0 });
            self.offer(&device);
        }
    }

    /// Writes changed records: stage and status changes at once, progress
    /// at most every `PERSIST_EVERY`. Campaigns that ended and have no
    /// transfer left are dropped from memory.
    fn persist(&mut self) -> Result<(), RunnerError> {
        if !(self.urgent || self.dirty && self.last_persist.elapsed() >= PERSIST_EVERY) {
            return Ok(());
        }
        let records: Vec<(u32, Vec<u8>)> = self
            .campaigns
            .values()
            .map(|c| (c.id, c.to_json()))
            .collect();
        self.shared
            .store
            .save_campaigns(records.iter().map(|(id, r)| (*id, r.as_slice())))?;
        self.dirty = false;
        self.urgent = false;
        self.last_persist = Instant::now();
        let busy: Vec<u32> = self.transfers.values().map(|t| t.campaign).collect();
        self.campaigns
            .retain(|id, c| c.status == Status::Running || busy.contains(id));
        let campaigns = &self.campaigns;
        self.images.retain(|id, _| campaigns.contains_key(id));
        Ok(())
    }
}

/// Checks an image before a campaign is made of it: it parses, and with
/// a key configured, its signature verifies.
pub fn check_image(
    image: &[u8],
    key: &[u8; eddy_ota::KEY_LEN],
) -> Result<eddy_ota::ImageHeader, eddy_ota::ImageError> {
    let parsed = SignedImage::verify(image, key)?;
    parsed.header.verify_payload(parsed.payload)?;
    Ok(parsed.header)
}
