//! OTA key files: a 32-byte ed25519 key stored as one line of 64 hex
//! digits. The gateway reads the public key (`[ota] public_key`) to check
//! images before a campaign starts; `eddy ota keygen` writes the pair.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use eddy_ota::KEY_LEN;

/// A key file could not be read, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a key (expected 64 hex digits)")]
    BadKey { path: PathBuf },
}

/// Reads a key file (64 hex digits, surrounding white space allowed).
pub fn read_key(path: &Path) -> Result<[u8; KEY_LEN], KeyError> {
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let hex = text.trim();
    let bad = || KeyError::BadKey {
        path: path.to_path_buf(),
    };
    if hex.len() != 2 * KEY_LEN {
        return Err(bad());
    }
    let mut key = [0u8; KEY_LEN];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
            .map_err(|_| bad())?;
    }
    Ok(key)
}

/// `bytes` as lower-case hex, the key files' text.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
