//! Serial ports on pseudo-terminal pairs: the device end stays here, the
//! other end is linked under a path for the gateway's `[[serial]]` ports.

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use tokio_serial::{SerialPort, SerialStream};

/// Makes a pty pair, links its port end at `link` (replacing what was
/// there) and returns the device end. The port end stays open until the
/// gateway opens it by path (closing it first would hang the pty up).
///
/// Both ends are closed on exec: a child process started meanwhile (a
/// broker, the `eddy` binary, QEMU) must not hold the device end, or
/// dropping it would not hang up the gateway's side.
pub fn plug(link: &Path) -> io::Result<SerialStream> {
    let (device, port) = SerialStream::pair()?;
    for fd in [device.as_raw_fd(), port.as_raw_fd()] {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))?;
    }
    let name = port
        .name()
        .ok_or_else(|| io::Error::other("a pty without a name"))?;
    match std::fs::remove_file(link) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    std::os::unix::fs::symlink(&name, link)?;
    std::mem::forget(port);
    Ok(device)
}
