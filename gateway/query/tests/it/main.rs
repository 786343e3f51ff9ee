//! The integration tests of `eddy-query`, one test binary: a module per
//! behaviour (`cargo test -p eddy-query --test it`).

mod common;
mod live;
mod store;
