//! TAP devices (`/dev/net/tun` with `IFF_TAP | IFF_NO_PI |
//! IFF_VNET_HDR`): the kernel interface behind an internal port. The device
//! lives as long as the descriptor (it is not made persistent), so closing
//! it removes it.
//!
//! Every frame read or written carries a virtio-net header in front
//! (10 bytes, as AF_PACKET's `PACKET_VNET_HDR`), and `TUNSETOFFLOAD` tells
//! the kernel this reader takes partial checksums and TCP segmentation:
//! the host's TCP sends 64 KiB super-frames through the device, and the
//! switch can write GSO frames into it for the host's stack to take whole.
//! Not UDP segmentation (`TUN_F_USO4/6`): the datapath cannot segment UDP
//! GSO frames for ports without offloads, so the host keeps cutting those.

use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, RawFd};

use super::cvt;
use super::packet_ring::{VNET_HDR_LEN, VnetHdr};

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUN_F_CSUM: libc::c_ulong = 0x01;
const TUN_F_TSO4: libc::c_ulong = 0x02;
const TUN_F_TSO6: libc::c_ulong = 0x04;
const TUN_F_TSO_ECN: libc::c_ulong = 0x08;

/// What one read from a TAP device gave.
#[derive(Debug)]
pub(crate) enum TapRead {
    /// A frame's virtio-net header, and where the frame is in the buffer.
    Frame(VnetHdr, std::ops::Range<usize>),
    /// A frame that did not fit the buffer (or shorter than its header).
    Truncated,
}

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
        req.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
        // Refuse to take over an existing device: TUNSETIFF would attach
        // to a persistent TAP of that name instead of failing.
        if std::path::Path::new("/sys/class/net").join(name).exists() {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        // SAFETY: `req` is a valid ifreq that outlives the call; TUNSETIFF
        // reads the name and flags and writes back the name.
        cvt(unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut req) })?;
        let offloads = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
        // SAFETY: TUNSETOFFLOAD takes its flags by value; nothing is read
        // from or written to memory.
        cvt(unsafe { libc::ioctl(file.as_raw_fd(), TUNSETOFFLOAD, offloads) })?;
        // SAFETY: plain fcntl(2) calls on a descriptor we own.
        unsafe {
            let flags = cvt(libc::fcntl(file.as_raw_fd(), libc::F_GETFL))?;
            cvt(libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK))?;
        }
        Ok(Tap { file })
    }

    /// Reads one frame into `buf` (its virtio-net header first).
    /// `Ok(None)` when none is waiting.
    pub(crate) fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<TapRead>> {
        match self.file.read(buf) {
            // The kernel cuts a frame to the buffer without saying so: one
            // that fills it may have been longer.
            Ok(n) if n >= buf.len() => Ok(Some(TapRead::Truncated)),
            Ok(n) if n > VNET_HDR_LEN => {
                Ok(Some(TapRead::Frame(VnetHdr::from_bytes(&buf[..VNET_HDR_LEN]), VNET_HDR_LEN..n)))
            }
            Ok(_) => Ok(Some(TapRead::Truncated)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes one frame behind its virtio-net header; `Ok(false)` if the
    /// device's queue is full.
    pub(crate) fn send(&mut self, vnet: VnetHdr, frame: &[u8]) -> io::Result<bool> {
        let hdr = vnet.to_bytes();
        match self.file.write_vectored(&[IoSlice::new(&hdr), IoSlice::new(frame)]) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
