//! Any bytes as an OTA image: header parsing never panics and round-trips;
//! a signature check never panics and never accepts an image that a
//! fixed key did not sign.
#![no_main]
use eddy_ota::{HEADER_LEN, ImageHeader, KEY_LEN, SignedImage, public_key, verify_offer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = ImageHeader::parse(data) {
        let again = ImageHeader::parse(&h.encode()).expect("round trip");
        assert_eq!(again, h);
        let _ = h.verify_payload(&data[HEADER_LEN..]);
    }
    let key = public_key(&[3; KEY_LEN]);
    assert!(verify_offer(data, &key).is_err(), "a forged offer verified");
    assert!(SignedImage::verify(data, &key).is_err());
    let _ = SignedImage::parse_unverified(data);
});
