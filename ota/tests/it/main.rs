//! The integration tests of `eddy-ota`, one test binary: a module per
//! behaviour (`cargo test -p eddy-ota --test it`).

mod agent;
mod common;
mod header;
mod slots;
