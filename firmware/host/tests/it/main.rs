//! The integration tests of `eddy-firmware-host`, one test binary: a module per
//! behaviour (`cargo test -p eddy-firmware-host --test it`).

mod sensors;
