//! `eddy ota keygen | sign | inspect` as a release engineer uses them.

use std::process::{Command, Output};

use crate::common::output_text as text;

fn eddy(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_eddy"))
        .args(args)
        .output()
        .expect("eddy runs")
}

#[test]
fn keygen_sign_and_inspect_round_trip_and_refuse_what_they_should() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = |name: &str| dir.path().join(name).display().to_string();
    let keys = d("keys");
    let out = eddy(&["ota", "keygen", "--out", &keys]);
    assert!(out.status.success(), "{}", text(&out));
    let secret = format!("{keys}/eddy-ota.key");
    let public = format!("{keys}/eddy-ota.pub");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&secret)
        .expect("secret")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "secret key readable by others");
    // A second keygen must not overwrite the keys.
    let again = eddy(&["ota", "keygen", "--out", &keys]);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("refusing to overwrite"),
        "{}",
        text(&again)
    );

    // A planted symlink (dangling) is not written through.
    let planted = d("planted");
    std::fs::create_dir_all(d("linked")).expect("dir");
    std::os::unix::fs::symlink(&planted, d("linked/eddy-ota.pub")).expect("symlink");
    let out = eddy(&["ota", "keygen", "--out", &d("linked")]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        !std::path::Path::new(&planted).exists(),
        "written through a symlink"
    );

    std::fs::write(d("fw.bin"), vec![0xA5u8; 5000]).expect("firmware");
    let out = eddy(&[
        "ota",
        "sign",
        "--key",
        &secret,
        "--board",
        "lm3s6965",
        "--version",
        "1.4.2",
        &d("fw.bin"),
        "-o",
        &d("fw.eddy"),
    ]);
    assert!(out.status.success(), "{}", text(&out));

    let out = eddy(&["ota", "inspect", &d("fw.eddy"), "--pubkey", &public]);
    assert!(out.status.success(), "{}", text(&out));
    let shown = text(&out);
    for want in [
        "board     lm3s6965",
        "version   1.4.2",
        "payload   5000 bytes",
        "signature valid",
    ] {
        assert!(shown.contains(want), "{shown}");
    }

    // Another key pair: the signature no longer verifies.
    let other = d("other");
    assert!(eddy(&["ota", "keygen", "--out", &other]).status.success());
    let out = eddy(&[
        "ota",
        "inspect",
        &d("fw.eddy"),
        "--pubkey",
        &format!("{other}/eddy-ota.pub"),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("signature does not verify"),
        "{}",
        text(&out)
    );

    // A flipped payload byte fails the hash.
    let mut image = std::fs::read(d("fw.eddy")).expect("image");
    let last = image.len() - 1;
    image[last] ^= 1;
    std::fs::write(d("bad.eddy"), image).expect("write");
    let out = eddy(&["ota", "inspect", &d("bad.eddy"), "--pubkey", &public]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("SHA-256 does not match"),
        "{}",
        text(&out)
    );

    // Bad inputs are named.
    let sign_error = |key: &str, version: &str| {
        let out = eddy(&[
            "ota",
            "sign",
            "--key",
            key,
            "--board",
            "b",
            "--version",
            version,
            &d("fw.bin"),
            "-o",
            &d("x.eddy"),
        ]);
        assert!(!out.status.success());
        text(&out)
    };
    std::fs::write(d("junk.key"), "not a key").expect("write");
    let shown = sign_error(&d("junk.key"), "1.0.0");
    assert!(shown.contains("junk.key"), "{shown}");
    let shown = sign_error(&secret, "1.0");
    assert!(shown.contains("X.Y.Z"), "{shown}");
}
