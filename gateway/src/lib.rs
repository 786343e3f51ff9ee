//! The Eddy gateway: ingest telemetry over MQTT, analyse it as it arrives,
//! store it durably, and forward results upstream without losing any.
//!
//! This library is the daemon; the `eddy` command line (package
//! `eddy-cli`) is a shell over it. See ARCHITECTURE.md for the map of the
//! parts.

#![forbid(unsafe_code)]

pub mod auth;
pub mod broker;
pub mod campaign;
pub mod client;
pub mod config;
pub mod decode;
mod gateway;
pub mod http;
pub mod live;
pub mod pipeline;
pub mod rules;
pub mod samples;
pub mod sequencer;
pub mod sinks;
pub mod sources;
pub mod stats;
pub mod store;
pub mod supervisor;
/// TLS client set-up lives with the MQTT transport.
pub use eddy_mqtt::tls;

pub use gateway::{Gateway, GatewayError, STORE_FILE};
