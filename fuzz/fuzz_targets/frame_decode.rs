//! Any bytes: decode never panics, and whatever decodes re-encodes to a
//! frame that decodes to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = eddy_proto::decode(data) {
        let mut buf = [0u8; eddy_proto::MAX_FRAME_LEN];
        let bytes = eddy_proto::encode(&frame, &mut buf).expect("a decoded frame encodes");
        assert_eq!(eddy_proto::decode(bytes), Ok(frame));
    }
});
