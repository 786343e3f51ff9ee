//! The integration tests of `eddy-testbench`, one test binary: a module per
//! behaviour (`cargo test -p eddy-testbench --test it`).

mod bench;
mod scenarios;
mod simulate;
