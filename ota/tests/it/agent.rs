//! The transfer protocol on the device: offers, chunks with CRCs, resume
//! points, refusals, and the final reports.

use crate::common::{self, BOARD, LAYOUT, RamFlash, SECRET, image, payload};
use eddy_ota::agent::{Action, Agent};
use eddy_ota::slots::Slots;
use eddy_ota::{OFFER_LEN, public_key};
use eddy_proto::{
    Frame, MAX_OTA_CHUNK, OtaChunk, OtaOffer, OtaReject, OtaState, OtaStatus, chunk_crc,
};

const CAMPAIGN: u32 = 42;

fn agent() -> Agent<RamFlash> {
    let slots = Slots::open(common::flash(), LAYOUT).expect("opens");
    Agent::new(
        "dev-1".try_into().expect("fits"),
        BOARD,
        public_key(&SECRET),
        slots,
    )
}

fn offer(img: &[u8]) -> Frame {
    Frame::OtaOffer(OtaOffer {
        device: "dev-1".try_into().expect("fits"),
        campaign: CAMPAIGN,
        offer: img[..OFFER_LEN].iter().copied().collect(),
    })
}

fn chunk(img: &[u8], offset: usize, len: usize) -> Frame {
    let body = &img[OFFER_LEN..];
    let data: heapless::Vec<u8, MAX_OTA_CHUNK> = body[offset..(offset + len).min(body.len())]
        .iter()
        .copied()
        .collect();
    Frame::OtaChunk(OtaChunk {
        device: "dev-1".try_into().expect("fits"),
        campaign: CAMPAIGN,
        offset: offset as u32,
        crc: chunk_crc(&data),
        data,
    })
}

fn state(answer: Option<(Frame, Action)>) -> (OtaState, Action) {
    match answer {
        Some((
            Frame::OtaStatus(OtaStatus {
                state, campaign, ..
            }),
            action,
        )) => {
            assert_eq!(campaign, CAMPAIGN);
            (state, action)
        }
        other => panic!("expected a status, got {other:?}"),
    }
}

#[test]
fn a_transfer_with_a_damaged_chunk_and_a_reconnect_ends_verified() {
    let mut agent = agent();
    let img = image(BOARD, "1.0.0", &payload(1, 1500), &SECRET);
    assert_eq!(
        state(agent.handle(&offer(&img))),
        (OtaState::Next { next: 0 }, Action::None)
    );
    assert_eq!(
        state(agent.handle(&chunk(&img, 0, 512))).0,
        OtaState::Next { next: 512 }
    );
    // A chunk damaged in transit: not written, same resume point.
    let Frame::OtaChunk(mut bad) = chunk(&img, 512, 512) else {
        unreachable!()
    };
    bad.data[3] ^= 0xFF;
    assert_eq!(
        state(agent.handle(&Frame::OtaChunk(bad))).0,
        OtaState::Next { next: 512 }
    );
    // The link drops; the gateway offers again and resumes, not from zero.
    assert_eq!(
        state(agent.handle(&offer(&img))).0,
        OtaState::Next { next: 512 }
    );
    // A stale chunk from before the reconnect changes nothing.
    assert_eq!(
        state(agent.handle(&chunk(&img, 0, 512))).0,
        OtaState::Next { next: 512 }
    );
    assert_eq!(
        state(agent.handle(&chunk(&img, 512, 512))).0,
        OtaState::Next { next: 1024 }
    );
    assert_eq!(
        state(agent.handle(&chunk(&img, 1024, 512))),
        (OtaState::Verified, Action::Reboot)
    );
    // The board restarts into the trial image, which confirms itself.
    let mut slots = Slots::open(agent.into_slots().into_flash(), LAYOUT).expect("reopens");
    slots.boot().expect("boots the trial");
    let mut agent = Agent::new(
        "dev-1".try_into().expect("fits"),
        BOARD,
        public_key(&SECRET),
        slots,
    );
    let report = agent.confirm().expect("confirms");
    assert_eq!(
        state(report.map(|f| (f, Action::None))).0,
        OtaState::Confirmed { version: [1, 0, 0] }
    );
}

#[test]
fn refusals_name_their_reason() {
    let mut agent = agent();
    let cases = [
        (
            image(BOARD, "1.0.0", &payload(2, 100), &[9; 32]),
            OtaReject::BadSignature,
        ),
        (
            image("other", "1.0.0", &payload(2, 100), &SECRET),
            OtaReject::WrongBoard,
        ),
        (
            image(BOARD, "0.0.0", &payload(2, 100), &SECRET),
            OtaReject::NotNewer,
        ),
        (
            image(BOARD, "1.0.0", &payload(2, 20_000), &SECRET),
            OtaReject::TooLarge,
        ),
    ];
    for (img, reason) in cases {
        assert_eq!(
            state(agent.handle(&offer(&img))).0,
            OtaState::Rejected { reason }
        );
    }
    // A chunk without an accepted offer.
    let img = image(BOARD, "1.0.0", &payload(2, 100), &SECRET);
    assert_eq!(
        state(agent.handle(&chunk(&img, 0, 100))).0,
        OtaState::Rejected {
            reason: OtaReject::Malformed
        }
    );
    // Frames for other devices, or of other kinds, are not the agent's.
    let Frame::OtaOffer(mut elsewhere) = offer(&img) else {
        unreachable!()
    };
    elsewhere.device = "dev-2".try_into().expect("fits");
    assert!(agent.handle(&Frame::OtaOffer(elsewhere)).is_none());
}

/// Sends a whole image through the agent; returns the final answer.
fn transfer(agent: &mut Agent<RamFlash>, img: &[u8]) -> (OtaState, Action) {
    assert_eq!(
        state(agent.handle(&offer(img))).0,
        OtaState::Next { next: 0 }
    );
    let len = img.len() - OFFER_LEN;
    let mut last = None;
    for at in (0..len).step_by(MAX_OTA_CHUNK) {
        last = Some(state(agent.handle(&chunk(img, at, MAX_OTA_CHUNK))));
    }
    last.expect("at least one chunk")
}

fn restart(agent: Agent<RamFlash>) -> Agent<RamFlash> {
    let mut slots = Slots::open(agent.into_slots().into_flash(), LAYOUT).expect("reopens");
    slots.boot().expect("boots");
    Agent::new(
        "dev-1".try_into().expect("fits"),
        BOARD,
        public_key(&SECRET),
        slots,
    )
}

#[test]
fn a_trial_image_that_never_confirms_is_reported_rolled_back_to_its_campaign() {
    let mut agent = agent();
    let first = image(BOARD, "1.0.0", &payload(3, 1200), &SECRET);
    assert_eq!(
        transfer(&mut agent, &first),
        (OtaState::Verified, Action::Reboot)
    );
    let mut agent = restart(agent);
    assert!(agent.boot_report().is_none(), "a trial boot owes no report");
    assert!(agent.confirm().expect("confirms").is_some());

    let second = image(BOARD, "2.0.0", &payload(4, 900), &SECRET);
    assert_eq!(transfer(&mut agent, &second).0, OtaState::Verified);
    // The trial image crashes before its health check: two restarts.
    let mut agent = restart(restart(agent));
    assert_eq!(
        state(agent.boot_report().map(|f| (f, Action::None))).0,
        OtaState::RolledBack { version: [1, 0, 0] }
    );
    assert_eq!(agent.installed_version(), common::version("1.0.0"));
    assert!(agent.confirm().expect("nothing to confirm").is_none());
}
