//! Update offers, verified with the no_std verifier of `eddy-ota`. This
//! board has no flash driver, so it refuses even a verified offer; the
//! feature exists to measure what the verifier costs in flash.

use eddy_proto::{Frame, OtaOffer, OtaReject, OtaState, OtaStatus};

/// The fleet's public key (the bytes of `eddy ota keygen`'s `eddy-ota.pub`);
/// replace it with your own.
const OTA_PUBLIC_KEY: [u8; eddy_ota::KEY_LEN] = [
    0x8a, 0x88, 0xe3, 0xdd, 0x74, 0x09, 0xf1, 0x95, 0xfd, 0x52, 0xdb, 0x2d, 0x3c, 0xba, 0x5d, 0x72,
    0xca, 0x67, 0x09, 0xbf, 0x1d, 0x94, 0x12, 0x1b, 0xf3, 0x74, 0x88, 0x01, 0xb4, 0x0f, 0x6f, 0x5c,
];

pub fn answer(offer: &OtaOffer) -> Frame {
    let reason = match eddy_ota::verify_offer(&offer.offer, &OTA_PUBLIC_KEY) {
        Ok(header) if header.board.as_str() != crate::BOARD => OtaReject::WrongBoard,
        Ok(_) => OtaReject::Flash,
        Err(_) => OtaReject::BadSignature,
    };
    Frame::OtaStatus(OtaStatus {
        device: offer.device.clone(),
        campaign: offer.campaign,
        state: OtaState::Rejected { reason },
    })
}
