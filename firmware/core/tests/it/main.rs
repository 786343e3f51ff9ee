//! The integration tests of `eddy-firmware`, one test binary: a module per
//! behaviour (`cargo test -p eddy-firmware --test it`).

mod backlog;
mod drivers;
mod node;
