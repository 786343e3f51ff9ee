//! The end-to-end guarantee, checked: what a simulated fleet sent against
//! what the gateway stored.

use std::collections::BTreeMap;

use eddy_firmware_host::FleetReport;
use eddy_gateway::store::Store;

/// Checks that every frame each device of `report` sent is stored exactly
/// once (sequence numbers `0..n` of each of its boots) with as many
/// readings as it sent, and that no frame of another device is stored.
/// Samples without a frame (JSON) are passed over. The problems, one
/// line per device, if not.
pub fn check(store: &Store, report: &FleetReport) -> Result<(), Vec<String>> {
    let mut frames: BTreeMap<String, Vec<(u32, u32)>> = BTreeMap::new();
    let mut readings: BTreeMap<String, u64> = BTreeMap::new();
    let mut previous: Option<(String, (u32, u32))> = None;
    store
        .for_each_sample(|_, s| {
            let Some(frame) = s.frame else {
                return;
            };
            *readings.entry(s.device.clone()).or_insert(0) += 1;
            // A frame's readings are stored together: count it once.
            let key = (s.device, frame);
            if previous.as_ref() != Some(&key) {
                frames.entry(key.0.clone()).or_default().push(frame);
                previous = Some(key);
            }
        })
        .map_err(|e| vec![format!("store: {e}")])?;
    let mut problems = Vec::new();
    for d in &report.devices {
        let mut got = frames.remove(&d.device).unwrap_or_default();
        got.sort_unstable();
        let mut expected: Vec<(u32, u32)> = d
            .boots
            .iter()
            .flat_map(|&(boot, n)| (0..n).map(move |seq| (boot, seq)))
            .collect();
        expected.sort_unstable();
        let stored_readings = readings.get(&d.device).copied().unwrap_or(0);
        if got != expected {
            let dups = got.windows(2).filter(|w| w[0] == w[1]).count();
            let missing = expected
                .iter()
                .filter(|e| got.binary_search(e).is_err())
                .count();
            problems.push(format!(
                "{}: sent {}, stored {} frames ({dups} duplicates, {missing} missing)",
                d.device,
                d.sent,
                got.len()
            ));
        } else if stored_readings != d.readings {
            problems.push(format!(
                "{}: sent {} readings, stored {stored_readings}",
                d.device, d.readings
            ));
        }
    }
    if !frames.is_empty() {
        let others: Vec<&str> = frames.keys().map(String::as_str).collect();
        problems.push(format!(
            "frames of devices not in the fleet: {}",
            others.join(", ")
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}
