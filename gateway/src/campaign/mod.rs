//! OTA campaigns: which devices get an image, in which order, and when
//! to stop.
//!
//! A campaign updates the devices its selector matched in stages: the
//! canary group first, then each stage up to its cumulative share of the
//! fleet (`--canary 5% --stages 25%,100%`: 5 %, then up to 25 %, then
//! all). A stage starts only when every device of the stages before it has
//! finished. When the devices that failed (refused the image, rolled it
//! back, or stopped answering) exceed `max_failures` of the devices
//! started so far, the campaign halts: no further device is started.
//!
//! The record is plain data, stored as JSON in redb (`ota_campaigns`) and
//! served as-is by the HTTP API; [`runner`] drives the transfers.

pub mod api;
pub mod fleet;
pub mod key;
pub mod runner;

use serde::{Deserialize, Serialize};

use eddy_ota::ImageHeader;

/// Why a campaign cannot be created.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlanError {
    #[error("`{value}` is not a percentage (expected e.g. `5%` or `5`)")]
    NotPercent { value: String },
    #[error("{what} must be in 0..=100 %, got {value}")]
    OutOfRange { what: &'static str, value: f64 },
    #[error("stages must increase, and the last one must be 100%")]
    BadStages,
    #[error("selector `{0}` matches no device")]
    NoDevices(String),
    #[error("selector: `{0}` is not a device id or a pattern")]
    BadSelector(String),
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Parses `5%` or `5` as 5.0.
pub fn parse_percent(value: &str) -> Result<f64, PlanError> {
    let v = value.trim();
    let n = v.strip_suffix('%').unwrap_or(v).trim();
    n.parse::<f64>()
        .ok()
        .filter(|p| p.is_finite())
        .ok_or_else(|| PlanError::NotPercent {
            value: value.to_string(),
        })
}

/// How a campaign rolls out.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub canary_pct: f64,
    /// Cumulative shares of the fleet after each stage; the last is 100.
    pub stages_pct: Vec<f64>,
    /// The campaign halts when more than this share of the devices started
    /// so far failed.
    pub max_failures_pct: f64,
}

impl Plan {
    /// From the CLI's words: `5%`, `25%,100%`, `10%`.
    pub fn parse(canary: &str, stages: &str, max_failures: &str) -> Result<Self, PlanError> {
        let stages_pct = stages
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(parse_percent)
            .collect::<Result<Vec<_>, _>>()?;
        let plan = Self {
            canary_pct: parse_percent(canary)?,
            stages_pct,
            max_failures_pct: parse_percent(max_failures)?,
        };
        plan.validate()?;
        Ok(plan)
    }

    pub fn validate(&self) -> Result<(), PlanError> {
        let range = |what, value: f64| {
            if (0.0..=100.0).contains(&value) {
                Ok(())
            } else {
                Err(PlanError::OutOfRange { what, value })
            }
        };
        range("canary", self.canary_pct)?;
        range("max failures", self.max_failures_pct)?;
        for s in &self.stages_pct {
            range("a stage", *s)?;
        }
        let increasing = self.stages_pct.windows(2).all(|w| w[0] < w[1]);
        if !increasing || self.stages_pct.last() != Some(&100.0) {
            return Err(PlanError::BadStages);
        }
        Ok(())
    }

    /// Cumulative device counts at the end of each stage (canary first)
    /// for a fleet of `n`: non-decreasing, the last is `n`. The canary
    /// group has at least one device.
    pub fn boundaries(&self, n: usize) -> Vec<usize> {
        let count = |pct: f64| ((n as f64 * pct / 100.0).ceil() as usize).min(n);
        let mut out = vec![count(self.canary_pct).max(1).min(n)];
        for pct in &self.stages_pct {
            let last = out.last().copied().unwrap_or(0);
            out.push(count(*pct).max(last));
        }
        out
    }
}

/// Where one device stands in a campaign.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum DeviceState {
    /// Its stage has not started (or the device is busy with another
    /// campaign).
    Pending,
    /// Offered; payload bytes the device has acknowledged so far.
    Transferring { acked: u32 },
    /// The image is in flash and verified; the device restarts into it.
    Verified,
    /// The device runs the new image and confirmed it healthy.
    Confirmed { version: String },
    /// The device refused the image; it is unchanged.
    Rejected { reason: String },
    /// The image failed its trial; the device is back on `version`.
    RolledBack { version: String },
    /// The device stopped answering.
    Failed { reason: String },
    /// Not started because the campaign halted.
    Skipped,
}

impl DeviceState {
    pub fn is_done(&self) -> bool {
        !matches!(
            self,
            Self::Pending | Self::Transferring { .. } | Self::Verified
        )
    }

    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            Self::Rejected { .. } | Self::RolledBack { .. } | Self::Failed { .. }
        )
    }
}

/// One device of a campaign.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceEntry {
    pub device: String,
    /// 0 is the canary group.
    pub stage: usize,
    #[serde(flatten)]
    pub state: DeviceState,
    /// Bytes of OTA frames sent to it (offers and chunks, encoded).
    pub bytes_sent: u64,
    /// Chunks sent again (damaged in transit, lost, or after a silence).
    pub chunks_resent: u64,
}

/// Where a campaign stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    Running,
    Halted { reason: String },
    Completed,
}

/// A campaign: the image, the plan and every device's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Campaign {
    pub id: u32,
    pub board: String,
    pub version: String,
    pub payload_len: u32,
    pub selector: String,
    pub plan: Plan,
    /// Cumulative device counts per stage (see [`Plan::boundaries`]).
    pub boundaries: Vec<usize>,
    /// The stage in progress.
    pub stage: usize,
    #[serde(flatten)]
    pub status: Status,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub devices: Vec<DeviceEntry>,
}

/// Device counts of a campaign.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub devices: usize,
    pub pending: usize,
    pub in_progress: usize,
    pub confirmed: usize,
    pub failed: usize,
    pub skipped: usize,
}

/// Resolves a selector against the devices the gateway knows: a comma
/// separated list of device ids (known or not) and patterns with `*`
/// (`line-3-*`), matched against known devices; `all` or `*` is every
/// known device. The result is sorted and without duplicates.
pub fn select(selector: &str, known: &[String]) -> Result<Vec<String>, PlanError> {
    let mut out = Vec::new();
    for item in selector.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        if item == "all" || item.contains('*') {
            let pattern = if item == "all" { "*" } else { item };
            out.extend(known.iter().filter(|d| glob(pattern, d)).cloned());
        } else if eddy_proto::valid_name(item, eddy_proto::MAX_DEVICE_ID_LEN).is_ok() {
            out.push(item.to_string());
        } else {
            return Err(PlanError::BadSelector(item.to_string()));
        }
    }
    out.sort();
    out.dedup();
    if out.is_empty() {
        return Err(PlanError::NoDevices(selector.to_string()));
    }
    Ok(out)
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for p in middle {
        match rest.find(p) {
            Some(i) => rest = &rest[i + p.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

impl Campaign {
    pub fn new(
        id: u32,
        header: &ImageHeader,
        selector: &str,
        plan: Plan,
        devices: Vec<String>,
        now_ms: i64,
    ) -> Self {
        let boundaries = plan.boundaries(devices.len());
        let devices = devices
            .into_iter()
            .enumerate()
            .map(|(i, device)| DeviceEntry {
                device,
                stage: boundaries.iter().position(|&b| i < b).unwrap_or(0),
                state: DeviceState::Pending,
                bytes_sent: 0,
                chunks_resent: 0,
            })
            .collect();
        let mut campaign = Self {
            id,
            board: header.board.to_string(),
            version: header.version.to_string(),
            payload_len: header.payload_len,
            selector: selector.to_string(),
            plan,
            boundaries,
            stage: 0,
            status: Status::Running,
            created_ms: now_ms,
            updated_ms: now_ms,
            devices,
        };
        campaign.advance(now_ms);
        campaign
    }

    /// Devices in started stages.
    fn started(&self) -> usize {
        self.boundaries.get(self.stage).copied().unwrap_or(0)
    }

    /// Devices that may start now: pending, in a started stage, while the
    /// campaign runs.
    pub fn startable(&self) -> impl Iterator<Item = usize> + '_ {
        let running = self.status == Status::Running;
        self.devices[..self.started().min(self.devices.len())]
            .iter()
            .enumerate()
            .filter(move |(_, d)| running && d.state == DeviceState::Pending)
            .map(|(i, _)| i)
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts {
            devices: self.devices.len(),
            ..Counts::default()
        };
        for d in &self.devices {
            match &d.state {
                DeviceState::Pending => c.pending += 1,
                DeviceState::Transferring { .. } | DeviceState::Verified => c.in_progress += 1,
                DeviceState::Confirmed { .. } => c.confirmed += 1,
                DeviceState::Skipped => c.skipped += 1,
                s if s.is_failure() => c.failed += 1,
                _ => {}
            }
        }
        c
    }

    /// After device states changed: halts on too many failures, starts the
    /// next stage once the current one is done, completes at the end.
    /// Returns true when the status or the stage changed.
    pub fn advance(&mut self, now_ms: i64) -> bool {
        if self.status != Status::Running {
            return false;
        }
        let before = (self.stage, self.status.clone());
        self.updated_ms = now_ms;
        loop {
            let started = self.started();
            let failed = self.devices[..started]
                .iter()
                .filter(|d| d.state.is_failure())
                .count();
            if failed as f64 > self.plan.max_failures_pct / 100.0 * started as f64 {
                self.status = Status::Halted {
                    reason: format!(
                        "{failed} of {started} devices started failed, more than the {}% allowed",
                        self.plan.max_failures_pct
                    ),
                };
                for d in &mut self.devices {
                    if d.state == DeviceState::Pending {
                        d.state = DeviceState::Skipped;
                    }
                }
                break;
            }
            if !self.devices[..started].iter().all(|d| d.state.is_done()) {
                break;
            }
            if self.stage + 1 < self.boundaries.len() {
                self.stage += 1;
            } else {
                self.status = Status::Completed;
                break;
            }
        }
        before != (self.stage, self.status.clone())
    }

    /// Halts on an operator's word; devices mid-transfer finish.
    pub fn halt(&mut self, reason: &str, now_ms: i64) {
        if self.status == Status::Running {
            self.status = Status::Halted {
                reason: reason.to_string(),
            };
            for d in &mut self.devices {
                if d.state == DeviceState::Pending {
                    d.state = DeviceState::Skipped;
                }
            }
            self.updated_ms = now_ms;
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use eddy_ota::Version;

    fn header() -> ImageHeader {
        let v = Version::parse("1.2.3").expect("version");
        ImageHeader::for_payload("board", v, &[1, 2, 3]).expect("header")
    }

    fn campaign(n: usize, canary: &str, stages: &str, max: &str) -> Campaign {
        let plan = Plan::parse(canary, stages, max).expect("plan");
        let devices = (0..n).map(|i| format!("d{i:03}")).collect();
        Campaign::new(1, &header(), "*", plan, devices, 0)
    }

    fn finish(c: &mut Campaign, i: usize, state: DeviceState) {
        c.devices[i].state = state;
        c.advance(1);
    }

    fn ok() -> DeviceState {
        DeviceState::Confirmed {
            version: "1.2.3".into(),
        }
    }

    #[test]
    fn stages_run_in_order_and_complete() {
        let mut c = campaign(100, "5%", "25%,100%", "10%");
        assert_eq!(c.boundaries, vec![5, 25, 100]);
        assert_eq!(
            c.startable().collect::<Vec<_>>(),
            (0..5).collect::<Vec<_>>()
        );
        for i in 0..4 {
            finish(&mut c, i, ok());
        }
        assert_eq!(c.stage, 0, "the canary group is not done yet");
        finish(&mut c, 4, ok());
        assert_eq!(c.stage, 1);
        assert_eq!(c.startable().count(), 20);
        for i in 5..100 {
            finish(&mut c, i, ok());
        }
        assert_eq!(c.status, Status::Completed);
        assert_eq!(c.counts().confirmed, 100);
    }

    #[test]
    fn failures_over_the_threshold_halt_and_later_stages_never_start() {
        let mut c = campaign(40, "10%", "50%,100%", "20%");
        assert_eq!(c.boundaries, vec![4, 20, 40]);
        finish(&mut c, 0, ok());
        // One of four failed: 25% > 20%: halted at once.
        finish(
            &mut c,
            1,
            DeviceState::RolledBack {
                version: "1.0.0".into(),
            },
        );
        assert!(matches!(c.status, Status::Halted { .. }), "{:?}", c.status);
        assert_eq!(c.startable().count(), 0);
        assert_eq!(c.counts().skipped, 38);
        assert_eq!(c.stage, 0);
    }

    #[test]
    fn failures_within_the_threshold_do_not_halt() {
        let mut c = campaign(20, "50%", "100%", "10%");
        assert_eq!(c.boundaries, vec![10, 20]);
        finish(
            &mut c,
            0,
            DeviceState::Rejected {
                reason: "not_newer".into(),
            },
        );
        assert_eq!(c.status, Status::Running, "1 of 10 is not more than 10%");
        for i in 1..10 {
            finish(&mut c, i, ok());
        }
        assert_eq!(c.stage, 1);
    }

    #[test]
    fn plans_and_selectors_are_checked() {
        assert!(matches!(
            Plan::parse("5%", "25%,50%", "10%"),
            Err(PlanError::BadStages)
        ));
        assert!(matches!(
            Plan::parse("5%", "50%,25%,100%", "10%"),
            Err(PlanError::BadStages)
        ));
        assert!(matches!(
            Plan::parse("five", "100%", "10%"),
            Err(PlanError::NotPercent { .. })
        ));
        assert!(matches!(
            Plan::parse("5%", "100%", "120%"),
            Err(PlanError::OutOfRange { .. })
        ));
        // One device: the canary group is the whole fleet.
        assert_eq!(
            Plan::parse("5%", "100%", "0%").expect("plan").boundaries(1),
            vec![1, 1]
        );
        let known: Vec<String> = ["a-1", "a-2", "b-1"].map(String::from).into();
        assert_eq!(select("a-*", &known).expect("matches"), ["a-1", "a-2"]);
        assert_eq!(select("all", &known).expect("matches").len(), 3);
        assert_eq!(
            select("*-1,x", &known).expect("matches"),
            ["a-1", "b-1", "x"]
        );
        assert_eq!(select("a*2", &known).expect("matches"), ["a-2"]);
        assert!(matches!(
            select("c-*", &known),
            Err(PlanError::NoDevices(_))
        ));
        assert!(matches!(
            select("a/b", &known),
            Err(PlanError::BadSelector(_))
        ));
    }

    #[test]
    fn records_round_trip_as_json() {
        let c = campaign(3, "34%", "100%", "0%");
        assert_eq!(Campaign::from_json(&c.to_json()).expect("decodes"), c);
    }
}
