use eddy_ota::{HEADER_LEN, ImageError, ImageHeader, Version};
use proptest::prelude::*;

fn v(s: &str) -> Version {
    Version::parse(s).expect("valid version")
}

#[test]
fn a_header_round_trips_and_verifies_its_payload() {
    let payload = b"firmware bytes".repeat(100);
    let h = ImageHeader::for_payload("lm3s6965", v("1.2.3"), &payload).expect("valid");
    let parsed = ImageHeader::parse(&h.encode()).expect("parses");
    assert_eq!(parsed, h);
    parsed.verify_payload(&payload).expect("matches");
}

#[test]
fn corrupted_or_truncated_payloads_are_refused() {
    let payload = vec![7u8; 4096];
    let h = ImageHeader::for_payload("board", v("0.1.0"), &payload).expect("valid");
    let mut bad = payload.clone();
    bad[100] ^= 1;
    assert_eq!(h.verify_payload(&bad), Err(ImageError::HashMismatch));
    assert_eq!(
        h.verify_payload(&payload[..4000]),
        Err(ImageError::LengthMismatch {
            expected: 4096,
            actual: 4000
        })
    );
}

#[test]
fn bad_headers_are_named() {
    let h = ImageHeader::for_payload("board", v("1.0.0"), b"x")
        .expect("valid")
        .encode();
    assert_eq!(ImageHeader::parse(&h[..10]), Err(ImageError::Truncated));
    let mut m = h;
    m[0] = b'X';
    assert_eq!(ImageHeader::parse(&m), Err(ImageError::BadMagic));
    let mut f = h;
    f[4] = 9;
    assert_eq!(
        ImageHeader::parse(&f),
        Err(ImageError::UnsupportedFormat(9))
    );
    let mut b = h;
    b[5] = 200;
    assert_eq!(ImageHeader::parse(&b), Err(ImageError::BadBoard));
    assert_eq!(
        ImageHeader::for_payload("a/b", v("1.0.0"), b""),
        Err(ImageError::BadBoard)
    );
}

#[test]
fn versions_parse_and_order() {
    assert!(v("1.10.0") > v("1.9.9"));
    assert_eq!(v("2.0.1").to_string(), "2.0.1");
    for bad in ["1.2", "1.2.3.4", "a.b.c", "1.2.70000", ""] {
        assert_eq!(Version::parse(bad), Err(ImageError::BadVersion), "{bad}");
    }
}

proptest! {
    #[test]
    fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..HEADER_LEN * 2)) {
        let _ = ImageHeader::parse(&bytes);
    }
}
