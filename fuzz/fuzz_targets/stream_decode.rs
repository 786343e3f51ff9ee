//! Any byte stream: the framing decoder never panics, and a valid frame
//! appended after any garbage (plus a delimiter) is still recovered.
#![no_main]
use eddy_proto::link::{FrameDecoder, MAX_WIRE_LEN, encode_framed};
use eddy_proto::{Ack, Frame};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut decoder = FrameDecoder::new();
    decoder.feed(data, |_| {});
    let probe = Frame::Ack(Ack { device: "probe".try_into().expect("fits"), boot: 1, seq: 42 });
    let mut out = [0u8; MAX_WIRE_LEN];
    let wire = encode_framed(&probe, &mut out).expect("encodes");
    let mut last = None;
    decoder.feed(&[0], |_| {});
    decoder.feed(wire, |r| last = Some(r));
    assert_eq!(last, Some(Ok(probe)));
});
