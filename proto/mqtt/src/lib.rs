//! Eddy's MQTT transport: the one way every client in the workspace (the
//! gateway's sessions, simulated devices, the testbench) connects to a
//! broker and drives its event loop.
//!
//! - [`BrokerUrl`]: `mqtt://`, `tcp://`, `mqtts://`, `ssl://` addresses.
//! - [`Connector`]: client options (keep-alive, session, in-flight
//!   window, packet size, request queue, manual acks, TLS files, last
//!   will); [`Connector::connect`] gives a client and its event loop.
//! - [`Pump`]: polls an event loop until cancelled, reconnecting with
//!   backoff (or stopping at the first failure), subscribing again at
//!   every CONNACK, handing messages and acknowledgements to a [`Handler`]
//!   (a closure, a bounded channel, or a type of the caller's); [`Ready`]
//!   says when the client is connected and subscribed.
//! - [`tls`]: rustls client configuration from CA, certificate and key
//!   files.
//!
//! ```no_run
//! use std::time::Duration;
//! use eddy_mqtt::{BrokerUrl, Connector, Delivery, Pump, QoS};
//! use tokio_util::sync::CancellationToken;
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! let url = BrokerUrl::parse("mqtt://localhost:1883")?;
//! let pump = Pump::new().subscribe("eddy/v1/alerts/#", QoS::AtLeastOnce);
//! let stop = CancellationToken::new();
//! let (client, running) = Connector::new(&url, "watcher").spawn(
//!     &pump,
//!     |delivery: Delivery| {
//!         if let Delivery::Message(m) = delivery {
//!             println!("{}: {} bytes", m.topic, m.payload.len());
//!         }
//!     },
//!     stop.clone(),
//! );
//! running.ready.wait(Duration::from_secs(5)).await?;
//! client.publish("eddy/v1/d1/telemetry", QoS::AtLeastOnce, false, "{}").await?;
//! stop.cancel();
//! running.task.await?;
//! # Ok(())
//! # }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod connector;
mod pump;
pub mod tls;
mod url;

pub use connector::{Connector, DEFAULT_REQUEST_CAPACITY};
pub use pump::{
    Delivery, Discard, End, Handler, NotReady, OnError, Pump, Ready, Running, Status, backoff,
};
pub use rumqttc::{AsyncClient, ClientError, ConnectionError, EventLoop, Publish, QoS};
pub use url::{BrokerUrl, UrlError};
