//! A small file system of its own for a data directory, and a way to fill
//! it: how tests and scenarios make the store's disk run out of space.

use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted at a path, unmounted when dropped. Mounting needs
/// root (CI runs as root); without it, [`Tmpfs::mount`] fails with the
/// reason, never silently.
#[derive(Debug)]
pub struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (`mount -o size=`: `8m`, `24m`) at `path`,
    /// creating the directory.
    pub fn mount(path: &Path, size: &str) -> io::Result<Self> {
        std::fs::create_dir_all(path)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "mounting a {size} tmpfs at {} failed (this needs root): {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
        })
    }

    /// Where it is mounted.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

/// Writes zeros to `path` until its file system is full; the bytes
/// written. Remove the file to give the space back.
pub fn fill(path: &Path) -> io::Result<u64> {
    let mut f = std::fs::File::create(path)?;
    let chunk = vec![0u8; 16 * 1024];
    let mut written = 0;
    while f.write_all(&chunk).is_ok() {
        written += chunk.len() as u64;
    }
    // The last partial chunk: byte by byte.
    while f.write_all(&[0]).is_ok() {
        written += 1;
    }
    Ok(written)
}
