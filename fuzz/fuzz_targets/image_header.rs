//! Any bytes as an OTA image header: parse never panics; a parsed header
//! encodes back to the same bytes.
#![no_main]
use eddy_ota::{HEADER_LEN, ImageHeader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = ImageHeader::parse(data) {
        let again = ImageHeader::parse(&h.encode()).expect("round trip");
        assert_eq!(again, h);
        let _ = h.verify_payload(&data[HEADER_LEN..]);
    }
});
