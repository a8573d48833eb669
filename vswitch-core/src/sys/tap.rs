//! TAP devices (`/dev/net/tun` with `IFF_TAP | IFF_NO_PI`): the kernel
//! interface behind an internal port. The device lives as long as the
//! descriptor (it is not made persistent), so closing it removes it.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};

use super::cvt;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;

/// An open TAP device, non-blocking.
#[derive(Debug)]
pub(crate) struct Tap {
    file: File,
}

impl Tap {
    /// Creates TAP device `name` (at most 15 bytes). Fails with `EBUSY` if
    /// an interface of that name exists already.
    pub(crate) fn create(name: &str) -> io::Result<Tap> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("'{name}' is not a valid interface name (1 to 15 bytes, no '/' or spaces)"),
            ));
        }
        let file = File::options().read(true).write(true).open("/dev/net/tun")?;
        // SAFETY: ifreq is plain data; all-zero is valid.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI;
        // Refuse to take over an existing device: TUNSETIFF would attach
        // to a persistent TAP of that name instead of failing.
        if std::path::Path::new("/sys/class/net").join(name).exists() {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        // SAFETY: `req` is a valid ifreq that outlives the call; TUNSETIFF
        // reads the name and flags and writes back the name.
        cvt(unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) })?;
        // SAFETY: plain fcntl(2) calls on a descriptor we own.
        unsafe {
            let flags = cvt(libc::fcntl(file.as_raw_fd(), libc::F_GETFL))?;
            cvt(libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK))?;
        }
        Ok(Tap { file })
    }

    /// Reads one frame into `buf`; `Ok(None)` when none is waiting.
    pub(crate) fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        match self.file.read(buf) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes one frame; `Ok(false)` if the device's queue is full.
    pub(crate) fn send(&mut self, frame: &[u8]) -> io::Result<bool> {
        match self.file.write(frame) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
