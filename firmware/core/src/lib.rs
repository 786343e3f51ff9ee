//! Eddy device firmware core: everything that is not board specific.
//!
//! A board binds this core to hardware: it provides [`Sensor`]s (or
//! embedded-hal buses and pins for the [`drivers`]), a clock, and a
//! [`Link`]. The core decides when to sample, numbers telemetry frames,
//! keeps them until the gateway confirms they are stored ([`Backlog`]),
//! and carries out commands. It is `no_std`, has no allocator and does no
//! I/O of its own, so the same code runs on a microcontroller, in QEMU,
//! and by the thousand on a host in the testbench.

#![no_std]
#![forbid(unsafe_code)]

mod backlog;
pub mod drivers;
mod link;
mod node;
mod sensor;

pub use backlog::Backlog;
/// Serial-number order of sequence numbers (RFC 1982); lives in `proto`.
pub use eddy_proto::seq_le;
pub use link::{Link, SerialError, SerialLink};
pub use node::{Node, NodeError, Outputs};
pub use sensor::{Readings, Sensor, SensorError};
