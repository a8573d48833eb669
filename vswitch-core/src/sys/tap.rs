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
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::cvt;
use super::packet_ring::{VNET_HDR_LEN, VnetHdr};

/// The largest virtio-net header an adopted device may use (the kernel's
/// own are 10 and 12 bytes).
const MAX_VNET_LEN: usize = 64;
const IFF_TAP: libc::c_short = libc::IFF_TAP as libc::c_short;
const IFF_NO_PI: libc::c_short = libc::IFF_NO_PI as libc::c_short;
const IFF_VNET_HDR: libc::c_short = libc::IFF_VNET_HDR as libc::c_short;
const IFF_MULTI_QUEUE: libc::c_short = libc::IFF_MULTI_QUEUE as libc::c_short;

/// The name and flags of the device a TUN/TAP descriptor is attached to
/// (`TUNGETIFF`). EBADFD once the device is gone.
fn device(fd: RawFd) -> io::Result<(String, libc::c_short)> {
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: TUNGETIFF writes the device's name and flags into `req`,
    // which is valid and outlives the call. It fails (EBADFD, ENOTTY) on a
    // descriptor that is not attached to a TUN/TAP device.
    cvt(unsafe { libc::ioctl(fd, libc::TUNGETIFF, &mut req) })?;
    // SAFETY: TUNGETIFF set the flags member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    let bytes: Vec<u8> = req.ifr_name.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
    Ok((String::from_utf8_lossy(&bytes).into_owned(), flags))
}

/// Where a TAP device is, as its link watch asks each round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TapPlace {
    /// In this thread's network namespace, under this name.
    Here(String),
    /// In another namespace (a container's or a VM's).
    Elsewhere,
    /// Gone: the device was destroyed (its namespace deleted, say).
    Gone,
}

/// A TAP device's link watch: its own descriptor of the device.
#[derive(Debug)]
pub(crate) struct TapWatch {
    fd: OwnedFd,
}

impl TapWatch {
    /// Where the device is now: its current name, and whether it is in
    /// this thread's network namespace (`TUNGETDEVNETNS`, Linux 5.2,
    /// compared with `/proc/thread-self/ns/net`; without it, taken to be
    /// here if a device of that name exists here).
    pub(crate) fn place(&self) -> TapPlace {
        let raw = self.fd.as_raw_fd();
        let name = match device(raw) {
            Ok((name, _)) => name,
            Err(_) => return TapPlace::Gone,
        };
        // SAFETY: TUNGETDEVNETNS takes no argument and returns a new
        // descriptor of the device's namespace.
        let ns = cvt(unsafe { libc::ioctl(raw, libc::TUNGETDEVNETNS) })
            // SAFETY: a fresh descriptor that nobody else owns.
            .map(|fd| File::from(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }));
        let here = match (ns, std::fs::metadata("/proc/thread-self/ns/net")) {
            (Ok(ns), Ok(mine)) => {
                use std::os::unix::fs::MetadataExt;
                ns.metadata().is_ok_and(|m| m.ino() == mine.ino() && m.dev() == mine.dev())
            }
            _ => std::path::Path::new("/sys/class/net").join(&name).exists(),
        };
        if here { TapPlace::Here(name) } else { TapPlace::Elsewhere }
    }
}

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
    /// Bytes of virtio-net header before each frame (0: none, the device
    /// was opened without `IFF_VNET_HDR`; 10 or more otherwise).
    vnet_len: usize,
    /// The device's name, as the kernel reports it.
    name: String,
}

fn check_name(name: &str) -> io::Result<()> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(['/', ' ', '\0']) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{name}' is not a valid interface name (1 to 15 bytes, no '/' or spaces)"),
        ));
    }
    Ok(())
}

fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain fcntl(2) calls on a descriptor the caller owns.
    unsafe {
        let flags = cvt(libc::fcntl(fd, libc::F_GETFL))?;
        cvt(libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK))?;
    }
    Ok(())
}

/// Tells the kernel which offloads this reader takes: partial checksums
/// and TCP segmentation, or none.
fn set_offloads(fd: RawFd, on: bool) -> io::Result<()> {
    let offloads = if on { libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN } else { 0 };
    // SAFETY: TUNSETOFFLOAD takes its flags by value; nothing is read from
    // or written to memory.
    cvt(unsafe { libc::ioctl(fd, libc::TUNSETOFFLOAD, offloads as libc::c_ulong) }).map(|_| ())
}

/// Opens `/dev/net/tun` as TAP device `name` (creating it, or attaching to
/// a persistent one of that name), without packet information, with a
/// virtio-net header if `vnet_hdr`.
pub(crate) fn open(name: &str, vnet_hdr: bool) -> io::Result<OwnedFd> {
    check_name(name)?;
    let file = File::options().read(true).write(true).open("/dev/net/tun")?;
    // SAFETY: ifreq is plain data; all-zero is valid.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI | if vnet_hdr { IFF_VNET_HDR } else { 0 };
    // SAFETY: `req` is a valid ifreq that outlives the call; TUNSETIFF
    // reads the name and flags and writes back the name.
    cvt(unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) })?;
    Ok(OwnedFd::from(file))
}

impl Tap {
    /// Creates TAP device `name` (at most 15 bytes) with a virtio-net
    /// header and TCP offloads. Fails with `EBUSY` if an interface of that
    /// name exists already.
    pub(crate) fn create(name: &str) -> io::Result<Tap> {
        check_name(name)?;
        // Refuse to take over an existing device: TUNSETIFF would attach
        // to a persistent TAP of that name instead of failing.
        if std::path::Path::new("/sys/class/net").join(name).exists() {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        Tap::adopt(open(name, true)?)
    }

    /// Takes over a TAP device someone else opened (`IFF_TAP |
    /// IFF_NO_PI`, with or without `IFF_VNET_HDR`): its name and header
    /// size are asked of the kernel; with a header, TCP offloads are
    /// turned on, without one they are off (the kernel then hands over
    /// finished frames).
    pub(crate) fn adopt(fd: OwnedFd) -> io::Result<Tap> {
        let raw = fd.as_raw_fd();
        let (name, flags) = device(raw).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("not an attached TAP device descriptor: {e}"))
        })?;
        if flags & IFF_TAP == 0 || flags & IFF_NO_PI == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the descriptor must be a TAP device (IFF_TAP) opened with IFF_NO_PI",
            ));
        }
        if flags & IFF_MULTI_QUEUE != 0 {
            // One queue of several: the port would see only the frames
            // the kernel steers to it.
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "multi-queue TAP devices are not supported"));
        }
        let vnet_len = if flags & IFF_VNET_HDR != 0 {
            let mut size: libc::c_int = 0;
            // SAFETY: TUNGETVNETHDRSZ writes one int into `size`.
            cvt(unsafe { libc::ioctl(raw, libc::TUNGETVNETHDRSZ, &mut size) })?;
            let size = size as usize;
            if !(VNET_HDR_LEN..=MAX_VNET_LEN).contains(&size) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("virtio-net header of {size} bytes; {VNET_HDR_LEN} to {MAX_VNET_LEN} taken"),
                ));
            }
            size
        } else {
            0
        };
        set_offloads(raw, vnet_len > 0)?;
        set_nonblocking(raw)?;
        Ok(Tap { file: File::from(fd), vnet_len, name })
    }

    /// True if frames carry a virtio-net header (offloads both ways).
    pub(crate) fn has_vnet_hdr(&self) -> bool {
        self.vnet_len > 0
    }

    /// The device's name when it was opened or adopted.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// A second descriptor for the same device, for its link watch.
    pub(crate) fn watch(&self) -> io::Result<TapWatch> {
        Ok(TapWatch { fd: self.file.try_clone()?.into() })
    }

    /// Reads one frame into `buf` (its virtio-net header first, if any).
    /// `Ok(None)` when none is waiting.
    pub(crate) fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<TapRead>> {
        let h = self.vnet_len;
        match self.file.read(buf) {
            // The kernel cuts a frame to the buffer without saying so: one
            // that fills it may have been longer.
            Ok(n) if n >= buf.len() => Ok(Some(TapRead::Truncated)),
            Ok(n) if n > h => {
                let vnet = if h > 0 { VnetHdr::from_bytes(&buf[..VNET_HDR_LEN]) } else { VnetHdr::default() };
                Ok(Some(TapRead::Frame(vnet, h..n)))
            }
            Ok(_) => Ok(Some(TapRead::Truncated)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes one frame (behind its virtio-net header, if the device has
    /// them: zeros past the 10 bytes this switch fills); `Ok(false)` if the
    /// device's queue is full.
    pub(crate) fn send(&mut self, vnet: VnetHdr, frame: &[u8]) -> io::Result<bool> {
        let mut hdr = [0u8; MAX_VNET_LEN];
        hdr[..VNET_HDR_LEN].copy_from_slice(&vnet.to_bytes());
        let head = &hdr[..self.vnet_len];
        let written = if self.vnet_len == 0 {
            self.file.write(frame)
        } else {
            self.file.write_vectored(&[IoSlice::new(head), IoSlice::new(frame)])
        };
        match written {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
