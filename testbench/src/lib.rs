//! The Eddy testbench: simulated sensor fleets against a real gateway,
//! scenario files with fault injection and expectations, and the TCP
//! fault proxy they use.

#![forbid(unsafe_code)]

pub mod bench;
pub mod footprint;
pub mod proxy;
pub mod scenario;
pub mod serial_fleet;
