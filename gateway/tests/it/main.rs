//! The integration tests of `eddy-gateway`, one test binary: a module per
//! behaviour (`cargo test -p eddy-gateway --test it`).

mod alerts;
mod bad_input;
mod broker_limits;
mod cli;
mod common;
mod config;
mod crash;
mod end_to_end;
mod engine;
mod one_path;
mod ota_campaign;
mod ota_cli;
mod qemu;
mod query;
mod rules;
mod serial;
mod shutdown;
mod store;
mod store_full;
mod supervision;
mod tls;
mod upstream_outage;
