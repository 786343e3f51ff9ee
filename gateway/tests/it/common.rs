//! The gateway tests' shared fixtures live in `eddy_test_support`.

pub use eddy_test_support::gateway::*;
