//! The `eddy` command line over the gateway daemon library: the HTTP
//! API's client and its displays, the OTA release tools, the QEMU board
//! runner and the demo (a simulated fleet wired to a gateway). The daemon
//! itself is `eddy_gateway`; `eddy query` runs the separate `eddy-query`
//! binary (package `eddy-query`), which brings polars.

#![forbid(unsafe_code)]

pub mod client;
pub mod demo;
pub mod display;
pub mod external;
pub mod ota_tools;
pub mod qemu;
