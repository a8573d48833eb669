//! An AF_PACKET socket (packet(7)) receiving in one of three ways:
//!
//! - **A TPACKET_V2 ring of frames** ([`RxMode::Frames`], the default):
//!   one fixed-size slot per frame, sized for the interface's MTU (2 KiB
//!   for 1500). The kernel hands each frame over on its own by setting
//!   `TP_STATUS_USER` in its slot and wakes a sleeping reader on every
//!   frame, so nothing waits for a timer; under load the reader takes a
//!   burst of slots with no system call. A frame larger than a slot (a
//!   64 KiB GSO super-frame) is not cut: with `PACKET_COPY_THRESH` the
//!   kernel also queues it whole on the socket and marks its slot
//!   `TP_STATUS_COPY`, and the reader takes it from there with one
//!   `recvmsg` (it keeps its virtio-net header), in order.
//! - **A TPACKET_V3 ring** ([`RxMode::Ring`]): the kernel fills fixed-size
//!   blocks of a shared memory ring with variable-size frames and hands a
//!   block to user space by setting `TP_STATUS_USER` in its header, either
//!   when it is full or when the block timeout expires (1 ms at least). We
//!   read the frames of a block (possibly across several bursts), then give
//!   the block back by setting `TP_STATUS_KERNEL`. No system call per
//!   burst, but a frame at a low rate waits for its block's timeout.
//! - **`recvmmsg(2)`** ([`RxMode::Socket`]): each burst is one call that
//!   returns the frames queued on the socket as soon as they arrive, each
//!   with its virtio-net header and (in a control message) the VLAN tag
//!   the kernel took out, into 32 buffers large enough for a 64 KiB GSO
//!   frame. A system call per burst, no added latency.
//!
//! Transmission is batched with `sendmmsg(2)` in both.

use std::io;
use std::mem::{offset_of, size_of};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use super::cvt;

/// The virtio-net header the kernel puts before each frame with
/// `PACKET_VNET_HDR` (and a TAP device with `IFF_VNET_HDR`): `struct
/// virtio_net_hdr`, 10 bytes, in host byte order (legacy virtio).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VnetHdr {
    /// `VIRTIO_NET_HDR_F_NEEDS_CSUM` (1) and friends.
    pub flags: u8,
    /// `VIRTIO_NET_HDR_GSO_*`: 0 none, 1 TCPv4, 3 UDP, 4 TCPv6.
    pub gso_type: u8,
    /// Length of the headers to replicate in each segment.
    pub hdr_len: u16,
    /// Payload bytes per segment.
    pub gso_size: u16,
    /// Where checksumming starts, from the frame's first byte.
    pub csum_start: u16,
    /// Where to store the checksum, from `csum_start`.
    pub csum_offset: u16,
}

/// Size of [`VnetHdr`] on the wire.
pub const VNET_HDR_LEN: usize = 10;

impl VnetHdr {
    pub(crate) fn from_bytes(b: &[u8]) -> VnetHdr {
        let u = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        VnetHdr { flags: b[0], gso_type: b[1], hdr_len: u(2), gso_size: u(4), csum_start: u(6), csum_offset: u(8) }
    }

    pub(crate) fn to_bytes(self) -> [u8; VNET_HDR_LEN] {
        let mut b = [0u8; VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
        b
    }
}

/// One received frame, borrowed from the ring.
#[derive(Debug)]
pub struct RxFrame<'a> {
    /// The frame as captured (the kernel may have moved a VLAN tag out).
    pub data: &'a [u8],
    /// The frame's length on the wire (larger than `data` if truncated).
    pub wire_len: usize,
    /// A VLAN tag the kernel stripped into metadata: (TPID, TCI).
    pub vlan: Option<(u16, u16)>,
    /// The frame's virtio-net header.
    pub vnet: VnetHdr,
}

/// How a packet socket receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxMode {
    /// The TPACKET_V2 ring of frames.
    Frames,
    /// The TPACKET_V3 ring of blocks.
    Ring,
    /// `recvmmsg(2)`.
    Socket,
}

/// Frames one `recvmmsg` call takes at most.
const RECV_BATCH: usize = 32;
/// Bytes each `recvmmsg` buffer holds: a 64 KiB GSO frame and its headers.
const RECV_SLOT: usize = 65536 + 256;
/// Control-message room per frame (one `tpacket_auxdata`).
const CTL_WORDS: usize = 8;

/// What socket mode (and the frame ring, for frames larger than a slot)
/// reads into: `slots` buffers of [`RECV_SLOT`] bytes.
struct SockRx {
    slots: usize,
    buf: Vec<u8>,
    hdrs: [[u8; VNET_HDR_LEN]; RECV_BATCH],
    ctl: [[u64; CTL_WORDS]; RECV_BATCH],
    /// The last call filled its batch: more may be queued.
    more: bool,
}

impl SockRx {
    fn new(slots: usize) -> Box<SockRx> {
        let slots = slots.clamp(1, RECV_BATCH);
        Box::new(SockRx {
            slots,
            buf: vec![0u8; slots * RECV_SLOT],
            hdrs: [[0; VNET_HDR_LEN]; RECV_BATCH],
            ctl: [[0; CTL_WORDS]; RECV_BATCH],
            more: false,
        })
    }

    /// One `recvmmsg` of at most `max` frames (and at most `slots`) from
    /// `fd`, each handed to `f`; returns how many were handed.
    fn recv(&mut self, fd: RawFd, max: usize, mut f: impl FnMut(RxFrame<'_>)) -> usize {
        let n = max.min(self.slots);
        if n == 0 {
            return 0;
        }
        let base = self.buf.as_mut_ptr();
        let mut iovs = [[libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; 2]; RECV_BATCH];
        // SAFETY: msghdr/mmsghdr are plain data; all-zero is valid.
        let mut msgs: [libc::mmsghdr; RECV_BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..n {
            iovs[i] = [
                libc::iovec { iov_base: self.hdrs[i].as_mut_ptr().cast(), iov_len: VNET_HDR_LEN },
                // SAFETY: slot i < slots lies inside `buf`.
                libc::iovec { iov_base: unsafe { base.add(i * RECV_SLOT) }.cast(), iov_len: RECV_SLOT },
            ];
            let m = &mut msgs[i].msg_hdr;
            m.msg_iov = iovs[i].as_mut_ptr();
            m.msg_iovlen = 2;
            m.msg_control = self.ctl[i].as_mut_ptr().cast();
            m.msg_controllen = size_of::<[u64; CTL_WORDS]>();
        }
        // SAFETY: each of the first `n` msghdrs points at two iovecs over
        // live buffers of the lengths given (a header of `hdrs`, a slot of
        // `buf`) and at a control buffer of `ctl`, all owned by `self` and
        // alive for the call; MSG_TRUNC makes msg_len the frame's length.
        let r = unsafe {
            libc::recvmmsg(fd, msgs.as_mut_ptr(), n as u32, libc::MSG_DONTWAIT | libc::MSG_TRUNC, std::ptr::null_mut())
        };
        if r <= 0 {
            self.more = false;
            return 0;
        }
        let r = r as usize;
        self.more = r == n;
        let mut delivered = 0;
        for (i, m) in msgs.iter().enumerate().take(r) {
            let total = m.msg_len as usize;
            if total < VNET_HDR_LEN {
                continue;
            }
            let wire_len = total - VNET_HDR_LEN;
            let len = wire_len.min(RECV_SLOT);
            let vlan = auxdata_vlan(&m.msg_hdr);
            let data = &self.buf[i * RECV_SLOT..i * RECV_SLOT + len];
            f(RxFrame { data, wire_len, vlan, vnet: VnetHdr::from_bytes(&self.hdrs[i]) });
            delivered += 1;
        }
        delivered
    }
}

impl std::fmt::Debug for SockRx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SockRx").field("more", &self.more).finish_non_exhaustive()
    }
}

/// Ring geometry (and the receive mode).
#[derive(Debug, Clone, Copy)]
pub struct RingConfig {
    /// Bytes per block (a multiple of the page size, at least 128 KiB so a
    /// 64 KiB GSO frame fits in the TPACKET_V3 ring). The frame ring has
    /// the same memory: `block_size * blocks / frame_size` slots.
    pub block_size: u32,
    /// Bytes per slot of the frame ring (a power of two, 2 KiB to
    /// `block_size`): see [`RingConfig::frame_size_for_mtu`].
    pub frame_size: u32,
    /// Number of blocks.
    pub blocks: u32,
    /// Milliseconds after which the kernel hands over a block that is not
    /// full: the worst added latency at low rates.
    pub block_timeout_ms: u32,
    /// Ring or `recvmmsg`.
    pub mode: RxMode,
    /// Transmissions skip the interface's qdisc (faster; the kernel's own
    /// captures then do not see them).
    pub qdisc_bypass: bool,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            block_size: 256 * 1024,
            frame_size: 2048,
            blocks: 16,
            block_timeout_ms: 1,
            mode: RxMode::Frames,
            qdisc_bypass: true,
        }
    }
}

impl RingConfig {
    /// The smallest power-of-two slot (2 KiB at least, `block_size` at
    /// most) that holds a frame of an interface with this MTU behind the
    /// kernel's headers: the `tpacket2_hdr` and address area, the
    /// virtio-net header, an Ethernet header and two VLAN tags. Larger
    /// frames still arrive, through the socket ([`RxMode::Frames`]).
    pub fn frame_size_for_mtu(&self, mtu: u32) -> u32 {
        let need = FRAME_HEADROOM + VNET_HDR_LEN as u32 + 14 + 8 + mtu;
        need.next_power_of_two().clamp(2048, self.block_size)
    }

    fn frames(&self) -> u32 {
        self.block_size / self.frame_size * self.blocks
    }
}

/// Bytes the kernel puts before a frame's Ethernet header in a
/// TPACKET_V2 slot (less the virtio-net header): the header and the
/// `sockaddr_ll`, aligned, then 16 bytes of room for the link header.
const FRAME_HEADROOM: u32 = ((libc::TPACKET2_HDRLEN as u32 + 16 + 15) & !15) - 14;

/// An AF_PACKET socket bound to one interface, with its receive ring.
#[derive(Debug)]
pub struct PacketRing {
    fd: OwnedFd,
    /// The ring (ring mode), or `NonNull::dangling()` with length 0.
    map: NonNull<u8>,
    map_len: usize,
    /// Socket mode's buffers.
    sock: Option<Box<SockRx>>,
    cfg: RingConfig,
    /// The block (TPACKET_V3) or slot (TPACKET_V2) to read next.
    block: u32,
    /// Frames left in the block being read (0: not holding a block).
    left: u32,
    /// Offset of the next frame in the block being read.
    next: usize,
    holding: bool,
}

// SAFETY: the ring's memory is owned by this value alone (the mapping is
// private to the socket, which it owns); moving it to another thread moves
// that ownership. It is not Sync: all access goes through &mut self.
unsafe impl Send for PacketRing {}

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a valid, initialised T for the duration of the
    // call and its exact size is passed; the kernel copies it.
    cvt(unsafe { libc::setsockopt(fd, level, name, (value as *const T).cast(), size_of::<T>() as libc::socklen_t) })
        .map(|_| ())
}

impl PacketRing {
    /// Opens a packet socket on interface `ifindex`: a receive ring of
    /// frames or of blocks (or none, for `recvmmsg`), virtio-net headers, qdisc bypass on transmit, its own
    /// transmissions never received back, promiscuous membership.
    ///
    /// # Errors
    /// The failing step's OS error (EPERM without CAP_NET_RAW).
    pub fn open(ifindex: u32, cfg: RingConfig) -> io::Result<PacketRing> {
        let proto = (libc::ETH_P_ALL as u16).to_be() as libc::c_int;
        // Protocol 0: the socket receives nothing until `bind` names both
        // the protocol and the interface. Opened with ETH_P_ALL it would
        // capture every interface's traffic into the ring until then.
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = cvt(unsafe {
            libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0)
        })?;
        // SAFETY: `raw` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let f = fd.as_raw_fd();
        let one: libc::c_int = 1;
        setsockopt(f, libc::SOL_PACKET, libc::PACKET_VNET_HDR, &one)?;
        if cfg.qdisc_bypass {
            setsockopt(f, libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &one)?;
        }
        setsockopt(f, libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, &one)?;
        if cfg.mode == RxMode::Socket {
            // The VLAN tag the kernel takes out comes in a control message.
            setsockopt(f, libc::SOL_PACKET, libc::PACKET_AUXDATA, &one)?;
            // As much queue as the ring would have had (beyond the
            // default limit with CAP_NET_ADMIN; the default otherwise).
            let bytes = (cfg.block_size as libc::c_int).saturating_mul(cfg.blocks as libc::c_int);
            if setsockopt(f, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &bytes).is_err() {
                let _ = setsockopt(f, libc::SOL_SOCKET, libc::SO_RCVBUF, &bytes);
            }
            let sock = SockRx::new(RECV_BATCH);
            let ring = PacketRing {
                fd,
                map: NonNull::dangling(),
                map_len: 0,
                sock: Some(sock),
                cfg,
                block: 0,
                left: 0,
                next: 0,
                holding: false,
            };
            bind_promisc(f, proto, ifindex)?;
            return Ok(ring);
        }
        let mut sock = None;
        if cfg.mode == RxMode::Frames {
            if !cfg.frame_size.is_power_of_two() || cfg.frame_size < 2048 || cfg.frame_size > cfg.block_size {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, "frame size"));
            }
            let version: libc::c_int = libc::tpacket_versions::TPACKET_V2 as libc::c_int;
            setsockopt(f, libc::SOL_PACKET, libc::PACKET_VERSION, &version)?;
            // A frame too large for its slot is queued whole on the socket
            // as well; it needs receive-queue room (with CAP_NET_ADMIN
            // beyond the default limit) and its VLAN tag in a control
            // message.
            setsockopt(f, libc::SOL_PACKET, libc::PACKET_COPY_THRESH, &one)?;
            setsockopt(f, libc::SOL_PACKET, libc::PACKET_AUXDATA, &one)?;
            let bytes = (cfg.block_size as libc::c_int).saturating_mul(cfg.blocks as libc::c_int);
            if setsockopt(f, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, &bytes).is_err() {
                let _ = setsockopt(f, libc::SOL_SOCKET, libc::SO_RCVBUF, &bytes);
            }
            let req = libc::tpacket_req {
                tp_block_size: cfg.block_size,
                tp_block_nr: cfg.blocks,
                tp_frame_size: cfg.frame_size,
                tp_frame_nr: cfg.frames(),
            };
            setsockopt(f, libc::SOL_PACKET, libc::PACKET_RX_RING, &req)?;
            sock = Some(SockRx::new(1));
        } else {
            let version: libc::c_int = libc::tpacket_versions::TPACKET_V3 as libc::c_int;
            setsockopt(f, libc::SOL_PACKET, libc::PACKET_VERSION, &version)?;
            let frame_size = 2048u32;
            let req = libc::tpacket_req3 {
                tp_block_size: cfg.block_size,
                tp_block_nr: cfg.blocks,
                tp_frame_size: frame_size,
                tp_frame_nr: cfg.block_size / frame_size * cfg.blocks,
                tp_retire_blk_tov: cfg.block_timeout_ms,
                tp_sizeof_priv: 0,
                tp_feature_req_word: 0,
            };
            setsockopt(f, libc::SOL_PACKET, libc::PACKET_RX_RING, &req)?;
        }
        let map_len = cfg.block_size as usize * cfg.blocks as usize;
        // SAFETY: mapping the ring the kernel just allocated for this
        // socket, at a kernel-chosen address, with the length it expects.
        let ptr = unsafe {
            libc::mmap(std::ptr::null_mut(), map_len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, f, 0)
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let map = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        let ring = PacketRing { fd, map, map_len, sock, cfg, block: 0, left: 0, next: 0, holding: false };
        bind_promisc(f, proto, ifindex)?;
        Ok(ring)
    }

    /// The socket's descriptor, for readiness (epoll).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn block_ptr(&self, i: u32) -> *mut u8 {
        // SAFETY: i < blocks, so the offset stays inside the mapping.
        unsafe { self.map.as_ptr().add(i as usize * self.cfg.block_size as usize) }
    }

    fn status(&self, i: u32) -> &AtomicU32 {
        let off = offset_of!(libc::tpacket_block_desc, hdr) + offset_of!(libc::tpacket_hdr_v1, block_status);
        // SAFETY: block_status is a naturally aligned u32 inside block i's
        // header, in memory mapped for the ring's lifetime; the kernel
        // updates it concurrently, hence the atomic view.
        unsafe { AtomicU32::from_ptr(self.block_ptr(i).add(off).cast()) }
    }

    fn block_u32(&self, i: u32, field: usize) -> u32 {
        let off = offset_of!(libc::tpacket_block_desc, hdr) + field;
        // SAFETY: reading a u32 of block i's header, which the kernel does
        // not write while the block is ours (TP_STATUS_USER, checked by the
        // caller with an acquire load).
        unsafe { self.block_ptr(i).add(off).cast::<u32>().read_unaligned() }
    }

    fn slot_ptr(&self, i: u32) -> *mut u8 {
        // SAFETY: i < frames and slots tile the blocks exactly (both sizes
        // are powers of two), so the offset stays inside the mapping.
        unsafe { self.map.as_ptr().add(i as usize * self.cfg.frame_size as usize) }
    }

    fn slot_status(&self, i: u32) -> &AtomicU32 {
        // SAFETY: tp_status is the naturally aligned first u32 of slot i's
        // tpacket2_hdr, in memory mapped for the ring's lifetime; the
        // kernel updates it concurrently, hence the atomic view.
        unsafe { AtomicU32::from_ptr(self.slot_ptr(i).add(offset_of!(libc::tpacket2_hdr, tp_status)).cast()) }
    }

    /// True if a frame, a block (or the rest of one) is waiting to be
    /// read; in socket mode, if the last burst was full (more may be
    /// queued).
    pub fn rx_ready(&self) -> bool {
        match self.cfg.mode {
            RxMode::Socket => return self.sock.as_ref().is_some_and(|s| s.more),
            RxMode::Frames => return self.slot_status(self.block).load(Ordering::Acquire) & libc::TP_STATUS_USER != 0,
            RxMode::Ring => {}
        }
        self.holding || self.status(self.block).load(Ordering::Acquire) & libc::TP_STATUS_USER != 0
    }

    fn release_block(&mut self) {
        self.status(self.block).store(libc::TP_STATUS_KERNEL, Ordering::Release);
        self.block = (self.block + 1) % self.cfg.blocks;
        self.holding = false;
        self.left = 0;
    }

    /// Hands at most `max` frames to `f`; returns how many.
    pub fn recv_burst(&mut self, max: usize, mut f: impl FnMut(RxFrame<'_>)) -> usize {
        match self.cfg.mode {
            RxMode::Socket => {
                let fd = self.fd();
                return self.sock.as_mut().map_or(0, |s| s.recv(fd, max, f));
            }
            RxMode::Frames => return self.recv_frames(max, f),
            RxMode::Ring => {}
        }
        let bs = self.cfg.block_size as usize;
        let mut n = 0;
        while n < max {
            if !self.holding {
                if self.status(self.block).load(Ordering::Acquire) & libc::TP_STATUS_USER == 0 {
                    break;
                }
                self.holding = true;
                self.left = self.block_u32(self.block, offset_of!(libc::tpacket_hdr_v1, num_pkts));
                self.next = self.block_u32(self.block, offset_of!(libc::tpacket_hdr_v1, offset_to_first_pkt)) as usize;
            }
            if self.left == 0 || self.next + size_of::<libc::tpacket3_hdr>() > bs {
                self.release_block();
                continue;
            }
            let base = self.block_ptr(self.block);
            // SAFETY: the header lies inside the block (checked above) and
            // the block is ours until we release it.
            let hdr: libc::tpacket3_hdr = unsafe { base.add(self.next).cast::<libc::tpacket3_hdr>().read_unaligned() };
            let mac = self.next + hdr.tp_mac as usize;
            let len = hdr.tp_snaplen as usize;
            if mac < VNET_HDR_LEN || mac + len > bs {
                // A header we cannot trust: skip the rest of the block.
                self.release_block();
                continue;
            }
            // SAFETY: [mac - 10, mac + len) is inside the block (checked
            // just above), which the kernel leaves alone while it is ours;
            // the slice does not outlive this iteration.
            let (vnet, data) = unsafe {
                (
                    std::slice::from_raw_parts(base.add(mac - VNET_HDR_LEN), VNET_HDR_LEN),
                    std::slice::from_raw_parts(base.add(mac), len),
                )
            };
            let vlan = (hdr.tp_status & libc::TP_STATUS_VLAN_VALID != 0).then(|| {
                let tpid =
                    if hdr.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 { hdr.hv1.tp_vlan_tpid } else { 0x8100 };
                (tpid, hdr.hv1.tp_vlan_tci as u16)
            });
            f(RxFrame { data, wire_len: hdr.tp_len as usize, vlan, vnet: VnetHdr::from_bytes(vnet) });
            n += 1;
            self.left -= 1;
            self.next += hdr.tp_next_offset as usize;
            if self.left == 0 {
                self.release_block();
            }
        }
        n
    }

    /// The frame ring's receive: the slots the kernel has handed over, in
    /// order, each given back as soon as `f` returns. A slot marked
    /// `TP_STATUS_COPY` holds only the start of its frame; the whole frame
    /// is the next one on the socket's queue. A frame that cannot be read
    /// whole is handed over empty with its wire length (so it is counted
    /// as truncated).
    fn recv_frames(&mut self, max: usize, mut f: impl FnMut(RxFrame<'_>)) -> usize {
        let fd = self.fd();
        let fs = self.cfg.frame_size as usize;
        let frames = self.cfg.frames();
        let mut n = 0;
        while n < max {
            let slot = self.block;
            let status = self.slot_status(slot).load(Ordering::Acquire);
            if status & libc::TP_STATUS_USER == 0 {
                break;
            }
            let base = self.slot_ptr(slot);
            // SAFETY: the header starts the slot, inside the mapping, and
            // the slot is ours (TP_STATUS_USER, acquired above).
            let hdr: libc::tpacket2_hdr = unsafe { base.cast::<libc::tpacket2_hdr>().read_unaligned() };
            let wire_len = (hdr.tp_len as usize).max(1);
            let mac = hdr.tp_mac as usize;
            let len = hdr.tp_snaplen as usize;
            let copied =
                status & libc::TP_STATUS_COPY != 0 && self.sock.as_mut().is_some_and(|s| s.recv(fd, 1, &mut f) == 1);
            if copied {
                // Handed over from the socket.
            } else if status & libc::TP_STATUS_COPY == 0 && mac >= VNET_HDR_LEN && mac + len <= fs {
                // SAFETY: [mac - 10, mac + len) lies inside the slot
                // (checked just above), which the kernel leaves alone
                // while it is ours; the slices do not outlive `f`.
                let (vnet, data) = unsafe {
                    (
                        std::slice::from_raw_parts(base.add(mac - VNET_HDR_LEN), VNET_HDR_LEN),
                        std::slice::from_raw_parts(base.add(mac), len),
                    )
                };
                let vlan = (status & libc::TP_STATUS_VLAN_VALID != 0).then(|| {
                    let tpid = if status & libc::TP_STATUS_VLAN_TPID_VALID != 0 { hdr.tp_vlan_tpid } else { 0x8100 };
                    (tpid, hdr.tp_vlan_tci)
                });
                f(RxFrame { data, wire_len: hdr.tp_len as usize, vlan, vnet: VnetHdr::from_bytes(vnet) });
            } else {
                f(RxFrame { data: &[], wire_len, vlan: None, vnet: VnetHdr::default() });
            }
            self.slot_status(slot).store(libc::TP_STATUS_KERNEL, Ordering::Release);
            self.block = (slot + 1) % frames;
            n += 1;
        }
        n
    }

    /// Frames the kernel dropped because the ring was full, since the last
    /// call (`PACKET_STATISTICS`, which resets on read).
    pub fn take_ring_drops(&self) -> io::Result<u64> {
        // SAFETY: tpacket_stats_v3 is plain data; all-zero is valid.
        let mut st: libc::tpacket_stats_v3 = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
        // SAFETY: `st` and `len` are valid for writes of the sizes given.
        cvt(unsafe {
            libc::getsockopt(
                self.fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats_v3).cast(),
                &mut len,
            )
        })?;
        Ok(st.tp_drops as u64)
    }

    /// Sends each frame with its virtio-net header, in one `sendmmsg` call
    /// per 64 frames. Returns how many the kernel took; the first error
    /// that stopped it, if any.
    pub fn send_batch(&self, frames: &[(VnetHdr, &[u8])]) -> (usize, Option<io::Error>) {
        let mut sent = 0;
        for chunk in frames.chunks(64) {
            let hdrs: Vec<[u8; VNET_HDR_LEN]> = chunk.iter().map(|(v, _)| v.to_bytes()).collect();
            let mut iovs: Vec<[libc::iovec; 2]> = chunk
                .iter()
                .zip(&hdrs)
                .map(|((_, d), h)| {
                    [
                        libc::iovec { iov_base: h.as_ptr() as *mut _, iov_len: VNET_HDR_LEN },
                        libc::iovec { iov_base: d.as_ptr() as *mut _, iov_len: d.len() },
                    ]
                })
                .collect();
            let mut msgs: Vec<libc::mmsghdr> = iovs
                .iter_mut()
                .map(|iov| {
                    // SAFETY: msghdr is plain data; all-zero is valid.
                    let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
                    m.msg_iov = iov.as_mut_ptr();
                    m.msg_iovlen = 2;
                    libc::mmsghdr { msg_hdr: m, msg_len: 0 }
                })
                .collect();
            // SAFETY: every msghdr points at two iovecs that point at live
            // buffers (the headers in `hdrs`, the frames borrowed from the
            // caller), all of which outlive the call; the count is exact.
            let r = unsafe { libc::sendmmsg(self.fd(), msgs.as_mut_ptr(), msgs.len() as u32, libc::MSG_DONTWAIT) };
            if r < 0 {
                return (sent, Some(io::Error::last_os_error()));
            }
            sent += r as usize;
            if (r as usize) < chunk.len() {
                return (sent, None);
            }
        }
        (sent, None)
    }
}

impl Drop for PacketRing {
    fn drop(&mut self) {
        if self.map_len == 0 {
            return; // socket mode: nothing mapped
        }
        // SAFETY: unmapping exactly the mapping made in `open`; no slice
        // into it outlives a `recv_burst` call. Closing the socket (after
        // this) drops the promiscuous membership and the ring.
        unsafe {
            libc::munmap(self.map.as_ptr().cast(), self.map_len);
        }
    }
}

/// Binds packet socket `f` to `ifindex` for protocol `proto` and makes the
/// interface promiscuous for as long as the socket lives.
fn bind_promisc(f: RawFd, proto: libc::c_int, ifindex: u32) -> io::Result<()> {
    // SAFETY: sockaddr_ll is plain data; all-zero is a valid value.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto as u16;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: `sll` is a valid sockaddr_ll and its size is passed.
    cvt(unsafe {
        libc::bind(f, (&sll as *const libc::sockaddr_ll).cast(), size_of::<libc::sockaddr_ll>() as libc::socklen_t)
    })?;
    let mreq = libc::packet_mreq {
        mr_ifindex: ifindex as i32,
        mr_type: libc::PACKET_MR_PROMISC as u16,
        mr_alen: 0,
        mr_address: [0; 8],
    };
    setsockopt(f, libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mreq)
}

/// The VLAN tag a received message's `PACKET_AUXDATA` says the kernel took
/// out of the frame: (TPID, TCI).
fn auxdata_vlan(m: &libc::msghdr) -> Option<(u16, u16)> {
    // SAFETY: `m` came back from recvmmsg, which set msg_control and
    // msg_controllen to the control messages it wrote into our buffer; the
    // CMSG_* macros walk exactly that range.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(m);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_PACKET
                && (*c).cmsg_type == libc::PACKET_AUXDATA
                && (*c).cmsg_len as usize >= libc::CMSG_LEN(size_of::<libc::tpacket_auxdata>() as u32) as usize
            {
                let aux = libc::CMSG_DATA(c).cast::<libc::tpacket_auxdata>().read_unaligned();
                if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 {
                    let tpid =
                        if aux.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 { aux.tp_vlan_tpid } else { 0x8100 };
                    return Some((tpid, aux.tp_vlan_tci));
                }
                return None;
            }
            c = libc::CMSG_NXTHDR(m, c);
        }
        None
    }
}

/// Promiscuous membership on an interface, held by a packet socket that
/// receives nothing (protocol 0, never bound). The kernel counts such
/// memberships and drops this one when the socket closes, so the
/// interface returns to its previous state however the holder goes away.
#[derive(Debug)]
pub struct PromiscGuard {
    _fd: OwnedFd,
}

impl PromiscGuard {
    /// Makes `ifindex` promiscuous for as long as the guard lives.
    pub fn new(ifindex: u32) -> io::Result<PromiscGuard> {
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = cvt(unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })?;
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let mreq = libc::packet_mreq {
            mr_ifindex: ifindex as i32,
            mr_type: libc::PACKET_MR_PROMISC as u16,
            mr_alen: 0,
            mr_address: [0; 8],
        };
        setsockopt(fd.as_raw_fd(), libc::SOL_PACKET, libc::PACKET_ADD_MEMBERSHIP, &mreq)?;
        Ok(PromiscGuard { _fd: fd })
    }
}
