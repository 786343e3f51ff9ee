//! The integration tests of `eddy-proto`, one test binary: a module per
//! behaviour (`cargo test -p eddy-proto --test it`).

mod frames;
mod topic;
