//! The `eddy` command line over the gateway daemon library: the HTTP
//! API's client and its displays, the OTA release tools, the QEMU board
//! runner, the demo (a simulated fleet wired to a gateway) and batch SQL
//! queries over the store. The daemon itself is `eddy_gateway`.

#![forbid(unsafe_code)]

pub mod client;
pub mod demo;
pub mod display;
pub mod ota_tools;
pub mod qemu;
#[cfg(feature = "query")]
pub mod query;
