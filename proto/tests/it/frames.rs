//! Round trips and hostile input for the wire contract.

use eddy_proto::link::{FrameDecoder, LinkError, MAX_WIRE_LEN, encode_framed};
use eddy_proto::{
    Ack, Command, CommandFrame, DecodeError, Frame, Hello, MAX_FRAME_LEN, MAX_OTA_CHUNK,
    MAX_OTA_OFFER, MAX_READINGS, OtaChunk, OtaOffer, OtaReject, OtaState, OtaStatus, Reading,
    Telemetry, WIRE_VERSION, chunk_crc, decode, encode,
};
use proptest::prelude::*;

fn name(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[A-Za-z0-9_.:-]{{1,{max}}}")).expect("regex")
}

fn hstr<const N: usize>(s: &str) -> heapless::String<N> {
    heapless::String::try_from(s).expect("fits")
}

fn reading() -> impl Strategy<Value = Reading> {
    (
        name(32),
        proptest::num::f64::NORMAL | proptest::num::f64::ZERO,
    )
        .prop_map(|(m, value)| Reading {
            metric: hstr(&m),
            value,
        })
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        any::<u32>().prop_map(|ms| Command::SetInterval { ms }),
        (any::<u8>(), any::<bool>()).prop_map(|(pin, on)| Command::SetOutput { pin, on }),
        Just(Command::Reboot),
    ]
}

fn ota_state() -> impl Strategy<Value = OtaState> {
    let version = any::<[u16; 3]>();
    prop_oneof![
        any::<u32>().prop_map(|next| OtaState::Next { next }),
        Just(OtaState::Rejected {
            reason: OtaReject::NotNewer
        }),
        Just(OtaState::Verified),
        version.prop_map(|version| OtaState::Confirmed { version }),
        any::<[u16; 3]>().prop_map(|version| OtaState::RolledBack { version }),
    ]
}

fn bytes<const N: usize>() -> impl Strategy<Value = heapless::Vec<u8, N>> {
    proptest::collection::vec(any::<u8>(), 0..=N).prop_map(|v| v.into_iter().collect())
}

fn ota_frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (name(32), any::<u32>(), bytes::<MAX_OTA_OFFER>()).prop_map(|(d, campaign, offer)| {
            Frame::OtaOffer(OtaOffer {
                device: hstr(&d),
                campaign,
                offer,
            })
        }),
        (name(32), any::<(u32, u32)>(), bytes::<MAX_OTA_CHUNK>()).prop_map(
            |(d, (campaign, offset), data)| Frame::OtaChunk(OtaChunk {
                device: hstr(&d),
                campaign,
                offset,
                crc: chunk_crc(&data),
                data,
            })
        ),
        (name(32), any::<u32>(), ota_state()).prop_map(|(d, campaign, state)| {
            Frame::OtaStatus(OtaStatus {
                device: hstr(&d),
                campaign,
                state,
            })
        }),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    prop_oneof![
        (name(32), name(16), name(16)).prop_map(|(d, b, f)| Frame::Hello(Hello {
            device: hstr(&d),
            board: hstr(&b),
            firmware: hstr(&f),
        })),
        (
            name(32),
            any::<(u32, u32, u32)>(),
            any::<u64>(),
            proptest::collection::vec(reading(), 1..=MAX_READINGS)
        )
            .prop_map(
                |(d, (boot, seq, oldest), timestamp_ms, rs)| Frame::Telemetry(Telemetry {
                    device: hstr(&d),
                    boot,
                    seq,
                    oldest,
                    timestamp_ms,
                    readings: rs.into_iter().collect(),
                })
            ),
        (name(32), any::<u32>(), any::<u32>()).prop_map(|(d, boot, seq)| Frame::Ack(Ack {
            device: hstr(&d),
            boot,
            seq
        })),
        (name(32), any::<u32>(), command()).prop_map(|(d, id, command)| Frame::Command(
            CommandFrame {
                device: hstr(&d),
                id,
                command
            }
        )),
        ota_frame(),
    ]
}

proptest! {
    #[test]
    fn every_valid_frame_round_trips(f in frame()) {
        let mut buf = [0u8; MAX_FRAME_LEN];
        let bytes = encode(&f, &mut buf).expect("a valid frame fits MAX_FRAME_LEN");
        prop_assert_eq!(decode(bytes).expect("decodes"), f);
    }

    #[test]
    fn every_valid_frame_round_trips_over_a_byte_stream(
        frames in proptest::collection::vec(frame(), 1..8),
        cut in 1usize..64,
    ) {
        let mut stream = Vec::new();
        for f in &frames {
            let mut out = [0u8; MAX_WIRE_LEN];
            stream.extend_from_slice(encode_framed(f, &mut out).expect("encodes"));
        }
        let mut decoder = FrameDecoder::new();
        let mut got = Vec::new();
        // Any split of the stream into reads yields the same frames.
        for chunk in stream.chunks(cut) {
            decoder.feed(chunk, |r| got.push(r.expect("valid frame")));
        }
        prop_assert_eq!(got, frames);
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode(&bytes);
        let mut decoder = FrameDecoder::new();
        decoder.feed(&bytes, |_| {});
        decoder.feed(&[0], |_| {});
    }

    #[test]
    fn a_flipped_bit_is_caught_and_the_next_frame_still_decodes(
        f in frame(), g in frame(), pos in any::<prop::sample::Index>(), bit in 0u8..8,
    ) {
        let mut out = [0u8; MAX_WIRE_LEN];
        let mut stream = encode_framed(&f, &mut out).expect("encodes").to_vec();
        let i = pos.index(stream.len() - 1); // keep the delimiter
        stream[i] ^= 1 << bit;
        stream.extend_from_slice(encode_framed(&g, &mut out).expect("encodes"));
        let mut decoder = FrameDecoder::new();
        let mut results = Vec::new();
        decoder.feed(&stream, |r| results.push(r));
        // The corrupted frame never decodes as something else, and `g` survives.
        prop_assert_eq!(results.last(), Some(&Ok(g)));
        prop_assert!(results[..results.len() - 1].iter().all(|r| r.is_err()));
    }
}

fn telemetry(device: &str, readings: &[(&str, f64)]) -> Frame {
    Frame::Telemetry(Telemetry {
        device: hstr(device),
        boot: 1,
        seq: 7,
        oldest: 3,
        timestamp_ms: 1_700_000_000_000,
        readings: readings
            .iter()
            .map(|(m, v)| Reading {
                metric: hstr(m),
                value: *v,
            })
            .collect(),
    })
}

#[test]
fn a_frame_with_every_field_at_its_limit_fits() {
    let metric = "m".repeat(32);
    let readings: Vec<(&str, f64)> = (0..MAX_READINGS)
        .map(|_| (metric.as_str(), f64::MAX))
        .collect();
    let mut f = telemetry(&"d".repeat(32), &readings);
    if let Frame::Telemetry(t) = &mut f {
        t.boot = u32::MAX;
        t.seq = u32::MAX;
        t.oldest = u32::MAX;
        t.timestamp_ms = u64::MAX;
    }
    let mut buf = [0u8; MAX_FRAME_LEN];
    let bytes = encode(&f, &mut buf).expect("fits");
    assert_eq!(decode(bytes), Ok(f));
}

#[test]
fn invalid_contents_are_rejected_on_both_sides() {
    let mut buf = [0u8; MAX_FRAME_LEN];
    for bad in [
        telemetry("dev/1", &[("t", 1.0)]),
        telemetry("dev-1", &[("t", f64::NAN)]),
        telemetry("dev-1", &[("", 1.0)]),
        telemetry("dev-1", &[]),
    ] {
        assert!(encode(&bad, &mut buf).is_err(), "{bad:?} encoded");
    }
}

#[test]
fn wrong_version_trailing_bytes_and_oversize_are_named() {
    let mut buf = [0u8; MAX_FRAME_LEN];
    let good = encode(&telemetry("d1", &[("t", 1.0)]), &mut buf)
        .expect("encodes")
        .to_vec();

    for other in [0, WIRE_VERSION - 1, WIRE_VERSION + 1, u8::MAX] {
        let mut v = good.clone();
        v[0] = other;
        assert_eq!(decode(&v), Err(DecodeError::UnsupportedVersion(other)));
    }

    let mut trailing = good.clone();
    trailing.push(0);
    assert_eq!(decode(&trailing), Err(DecodeError::TrailingBytes(1)));

    assert_eq!(decode(&[]), Err(DecodeError::Empty));
    let huge = vec![1u8; MAX_FRAME_LEN + 1];
    assert_eq!(
        decode(&huge),
        Err(DecodeError::TooLong {
            len: MAX_FRAME_LEN + 1
        })
    );
}

#[test]
fn an_oversized_run_on_a_stream_is_reported_once_and_resynchronised() {
    let mut decoder = FrameDecoder::new();
    let mut results = Vec::new();
    decoder.feed(&vec![0x55; MAX_WIRE_LEN * 3], |r| results.push(r));
    assert!(results.is_empty(), "nothing completes before a delimiter");
    decoder.feed(&[0], |r| results.push(r));
    assert_eq!(results, vec![Err(LinkError::Oversized)]);

    let f = telemetry("d1", &[("t", 21.5)]);
    let mut out = [0u8; MAX_WIRE_LEN];
    decoder.feed(encode_framed(&f, &mut out).expect("encodes"), |r| {
        results.push(r)
    });
    assert_eq!(results.last(), Some(&Ok(f)));
}

#[test]
fn a_truncated_frame_is_an_error_not_a_hang() {
    let f = telemetry("d1", &[("t", 21.5)]);
    let mut out = [0u8; MAX_WIRE_LEN];
    let wire = encode_framed(&f, &mut out).expect("encodes").to_vec();
    let mut decoder = FrameDecoder::new();
    let mut results = Vec::new();
    // The sender died mid-frame; its next frame starts after a delimiter.
    decoder.feed(&wire[..wire.len() / 2], |r| results.push(r));
    decoder.feed(&[0], |r| results.push(r));
    decoder.feed(&wire, |r| results.push(r));
    assert_eq!(results.len(), 2);
    assert!(results[0].is_err());
    assert_eq!(results[1], Ok(f));
}
