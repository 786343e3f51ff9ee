//! Links that carry frames between a device and the gateway.
//!
//! [`Link`] is what the firmware sends through; [`SerialLink`] implements
//! it on any embedded-io byte stream (a UART), COBS-framed with a CRC-32C,
//! and reassembles incoming frames. The host build implements [`Link`] on
//! an MQTT client.

use eddy_proto::link::{FrameDecoder, LinkError, MAX_WIRE_LEN, encode_framed};
use eddy_proto::{EncodeError, Frame};
use embedded_io::{Read, ReadReady, Write};

/// Sends frames to the gateway.
pub trait Link {
    type Error;
    fn send(&mut self, frame: &Frame) -> Result<(), Self::Error>;
}

/// Why a frame did not go out on a byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SerialError<E> {
    Encode(EncodeError),
    Io(E),
}

/// Eddy frames over a byte stream.
#[derive(Debug)]
pub struct SerialLink<T> {
    io: T,
    decoder: FrameDecoder,
}

impl<T> SerialLink<T> {
    pub const fn new(io: T) -> Self {
        Self {
            io,
            decoder: FrameDecoder::new(),
        }
    }

    /// Gives the byte stream back.
    pub fn into_inner(self) -> T {
        self.io
    }
}

impl<T: Write> Link for SerialLink<T> {
    type Error = SerialError<T::Error>;

    fn send(&mut self, frame: &Frame) -> Result<(), Self::Error> {
        let mut out = [0u8; MAX_WIRE_LEN];
        let bytes = encode_framed(frame, &mut out).map_err(SerialError::Encode)?;
        self.io.write_all(bytes).map_err(SerialError::Io)
    }
}

impl<T: Read + ReadReady> SerialLink<T> {
    /// Reads what has arrived, without blocking, and calls `on_frame` for
    /// every frame it completes (damaged ones as errors, to count).
    pub fn receive(
        &mut self,
        mut on_frame: impl FnMut(Result<Frame, LinkError>),
    ) -> Result<(), T::Error> {
        let mut buf = [0u8; 32];
        while self.io.read_ready()? {
            let n = self.io.read(&mut buf)?;
            if n == 0 {
                break;
            }
            self.decoder.feed(&buf[..n], &mut on_frame);
        }
        Ok(())
    }
}
