//! `eddy ota keygen | sign | inspect`: the release side of signed images.
//!
//! Keys are 32-byte ed25519 keys stored as one line of hex: the secret in
//! `eddy-ota.key` (mode 0600; keep it off the gateway), the public key in
//! `eddy-ota.pub` (built into the firmware).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use eddy_gateway::campaign::key::{KeyError, read_key, to_hex};
use eddy_ota::{ImageHeader, KEY_LEN, SignedImage, Version, public_key, sign_header};

/// File names `keygen` writes.
pub const SECRET_FILE: &str = "eddy-ota.key";
pub const PUBLIC_FILE: &str = "eddy-ota.pub";

/// A release-tool failure, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum OtaToolError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("{path} exists; refusing to overwrite a key")]
    Exists { path: PathBuf },
    #[error("{path}: {source}")]
    Image {
        path: PathBuf,
        #[source]
        source: eddy_ota::ImageError,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OtaToolError + '_ {
    move |source| OtaToolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a new key pair into `dir`; never overwrites one, and never
/// writes through a symlink (a dangling one included): both files are
/// created new (`O_EXCL`), the secret key owner-only.
pub fn keygen(dir: &Path) -> Result<(PathBuf, PathBuf), OtaToolError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let secret_path = dir.join(SECRET_FILE);
    let public_path = dir.join(PUBLIC_FILE);
    for p in [&secret_path, &public_path] {
        if std::fs::symlink_metadata(p).is_ok() {
            return Err(OtaToolError::Exists { path: p.clone() });
        }
    }
    let secret: [u8; KEY_LEN] = rand::random();
    write_new(&secret_path, 0o600, &to_hex(&secret))?;
    write_new(&public_path, 0o644, &to_hex(&public_key(&secret)))?;
    Ok((secret_path, public_path))
}

/// Creates `path` (refusing anything there, a symlink included) with
/// `mode` and the line `text`.
fn write_new(path: &Path, mode: u32, text: &str) -> Result<(), OtaToolError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => OtaToolError::Exists {
                path: path.to_path_buf(),
            },
            _ => io(path)(e),
        })?;
    writeln!(f, "{text}").map_err(io(path))
}

/// Signs the firmware binary `input` for `board` at `version` into `output`.
pub fn sign(
    key: &Path,
    board: &str,
    version: &str,
    input: &Path,
    output: &Path,
) -> Result<ImageHeader, OtaToolError> {
    let secret = read_key(key)?;
    let payload = std::fs::read(input).map_err(io(input))?;
    let image_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| OtaToolError::Image { path, source }
    };
    let version = Version::parse(version).map_err(image_err(input))?;
    let header = ImageHeader::for_payload(board, version, &payload).map_err(image_err(input))?;
    let encoded = header.encode();
    let mut image = encoded.to_vec();
    image.extend_from_slice(&sign_header(&secret, &encoded));
    image.extend_from_slice(&payload);
    std::fs::write(output, image).map_err(io(output))?;
    Ok(header)
}

/// Describes an image; with a public key, verifies it completely.
pub fn inspect(file: &Path, pubkey: Option<&Path>) -> Result<String, OtaToolError> {
    let bytes = std::fs::read(file).map_err(io(file))?;
    let image_err = |source| OtaToolError::Image {
        path: file.to_path_buf(),
        source,
    };
    let image = match pubkey {
        Some(p) => SignedImage::verify(&bytes, &read_key(p)?).map_err(image_err)?,
        None => SignedImage::parse_unverified(&bytes).map_err(image_err)?,
    };
    let h = &image.header;
    let mut out = String::new();
    let _ = writeln!(out, "board     {}", h.board);
    let _ = writeln!(out, "version   {}", h.version);
    let _ = writeln!(out, "payload   {} bytes", h.payload_len);
    let _ = writeln!(out, "sha256    {}", to_hex(&h.sha256));
    let _ = writeln!(
        out,
        "signature {}",
        if pubkey.is_some() {
            "valid"
        } else {
            "not checked (pass --pubkey)"
        }
    );
    Ok(out)
}
