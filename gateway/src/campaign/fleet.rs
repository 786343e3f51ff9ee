//! What the gateway heard of each device's board and firmware: the
//! `Hello` frame a device sends at every connect (`{prefix}/{device}/hello`,
//! over MQTT or bridged from a serial line) and the versions its
//! `OtaStatus` reports name (`Confirmed`, `RolledBack`). Kept in memory,
//! since devices introduce themselves again after a gateway restart; the
//! campaign API checks an image against it before accepting it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use eddy_ota::{ImageHeader, Version};

/// A device's board and firmware, as it said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firmware {
    pub board: String,
    /// As sent; [`Firmware::version`] parses it.
    pub firmware: String,
}

impl Firmware {
    pub fn version(&self) -> Option<Version> {
        Version::parse(&self.firmware).ok()
    }
}

/// Every device's [`Firmware`], shared by the OTA runner (writes) and the
/// campaign API (reads). Holds at most `cap` devices (`ingest.max_devices`);
/// a device beyond it is not recorded, so campaigns refuse it.
#[derive(Debug, Clone)]
pub struct Fleet {
    devices: Arc<RwLock<HashMap<String, Firmware>>>,
    cap: usize,
}

impl Fleet {
    pub fn new(cap: usize) -> Self {
        Self {
            devices: Arc::default(),
            cap,
        }
    }

    /// A device said hello; `false` when the fleet is full.
    pub fn hello(&self, device: &str, board: &str, firmware: &str) -> bool {
        let mut devices = self.devices.write().unwrap_or_else(|e| e.into_inner());
        if devices.len() >= self.cap && !devices.contains_key(device) {
            return false;
        }
        devices.insert(
            device.to_string(),
            Firmware {
                board: board.to_string(),
                firmware: firmware.to_string(),
            },
        );
        true
    }

    /// A device reported running `version` (after an update or a rollback).
    pub fn runs(&self, device: &str, version: Version) {
        let mut devices = self.devices.write().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = devices.get_mut(device) {
            f.firmware = version.to_string();
        }
    }

    pub fn get(&self, device: &str) -> Option<Firmware> {
        self.devices
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(device)
            .cloned()
    }

    /// Whether `image` may go to every one of `devices`: each said which
    /// board it is (that of the image) and runs an older version
    /// (anti-rollback). The first device that fails is named.
    pub fn check(&self, image: &ImageHeader, devices: &[String]) -> Result<(), String> {
        for device in devices {
            let Some(f) = self.get(device) else {
                return Err(format!(
                    "device `{device}` has not said which board and firmware it runs \
                     (no Hello frame since the gateway started); the image is refused"
                ));
            };
            if f.board != image.board.as_str() {
                return Err(format!(
                    "device `{device}` is a `{}` board; the image is for `{}`",
                    f.board, image.board
                ));
            }
            match f.version() {
                Some(v) if v < image.version => {}
                Some(v) => {
                    return Err(format!(
                        "device `{device}` runs {v}; the image's {} is not newer (anti-rollback)",
                        image.version
                    ));
                }
                None => {
                    return Err(format!(
                        "device `{device}` runs firmware `{}`, not an X.Y.Z version: \
                         anti-rollback cannot be checked",
                        f.firmware
                    ));
                }
            }
        }
        Ok(())
    }
}
