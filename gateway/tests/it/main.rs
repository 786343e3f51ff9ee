//! The integration tests of `eddy-gateway`, one test binary: a module per
//! behaviour (`cargo test -p eddy-gateway --test it`).

mod alerts;
mod api_auth;
mod bad_input;
mod broker_access;
mod broker_limits;
mod common;
mod config;
mod disk_full;
mod end_to_end;
mod engine;
mod field_input;
mod http_ingest;
mod paho;
mod rules;
mod samples_api;
mod serial;
mod shutdown;
mod store;
mod store_full;
mod store_model;
mod supervision;
mod tls;
mod upstream_outage;
