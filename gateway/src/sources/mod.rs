//! Sources: where messages enter the gateway.

pub mod mqtt;
pub mod serial;
