//! Eddy device firmware core: everything that is not board specific.
//!
//! A board binds this core to hardware: it provides [`Sensor`]s, a clock,
//! and a link that carries encoded frames. The core decides when to sample,
//! numbers telemetry frames, keeps them until the gateway confirms they are
//! stored ([`Backlog`]), and carries out commands. It is `no_std`, has
//! no allocator and no I/O, so the same code runs on a microcontroller, in
//! QEMU, and by the thousand on a host in the testbench.

#![no_std]
#![forbid(unsafe_code)]

mod backlog;
mod node;
mod sensor;

pub use backlog::{Backlog, seq_le};
pub use node::{Node, NodeError, Outputs};
pub use sensor::{Readings, Sensor, SensorError};
