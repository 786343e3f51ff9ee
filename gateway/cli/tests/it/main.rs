//! The integration tests of the `eddy` command line, one test binary: a
//! module per behaviour (`cargo test -p eddy-cli --test it`).

mod api_token;
mod cli;
mod common;
mod crash;
mod one_path;
mod ota_campaign;
mod ota_cli;
mod qemu;
mod query_command;
mod rules_check;
