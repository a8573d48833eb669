//! An AF_XDP socket for one receive queue, with its own UMEM: fill,
//! completion, rx and tx rings shared with the kernel (see the kernel's
//! Documentation/networking/af_xdp.rst).
//!
//! Frames are copied out of the UMEM on receive (the frame goes straight
//! back to the fill ring) and copied in on transmit (the frame comes back
//! through the completion ring). Each ring is a single-producer,
//! single-consumer queue with producer and consumer indices in shared
//! memory: we load the other side's index with acquire and publish ours
//! with release.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use super::cvt;

/// Bytes per UMEM frame: a whole standard Ethernet frame fits.
pub const FRAME_SIZE: u32 = 2048;
/// Frames in a socket's UMEM: half start in the fill ring, half are for tx.
const FRAMES: u32 = 4096;
/// Entries in each ring.
const RING: u32 = 2048;

/// A region of memory mapped for the socket's lifetime.
#[derive(Debug)]
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Mapping {
    fn new(fd: RawFd, len: usize, offset: u64) -> io::Result<Mapping> {
        let (flags, fd) = if fd < 0 {
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE, -1)
        } else {
            (libc::MAP_SHARED | libc::MAP_POPULATE, fd)
        };
        // SAFETY: a fresh mapping at a kernel-chosen address; the result is
        // checked and owned by the returned value until it is dropped.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, flags, fd, offset as libc::off_t)
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr: NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped; no reference into it
        // outlives the owning socket.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// One ring: indices and descriptors in shared memory.
#[derive(Debug)]
struct Ring {
    map: Mapping,
    producer: usize,
    consumer: usize,
    flags: usize,
    desc: usize,
    mask: u32,
}

impl Ring {
    fn new(fd: RawFd, off: &libc::xdp_ring_offset, entry: usize, pgoff: u64) -> io::Result<Ring> {
        let map = Mapping::new(fd, off.desc as usize + RING as usize * entry, pgoff)?;
        Ok(Ring {
            map,
            producer: off.producer as usize,
            consumer: off.consumer as usize,
            flags: off.flags as usize,
            desc: off.desc as usize,
            mask: RING - 1,
        })
    }

    fn index(&self, at: usize) -> &AtomicU32 {
        // SAFETY: `at` is one of the offsets the kernel gave for this ring,
        // of an aligned u32 inside the mapping, updated concurrently by the
        // kernel: hence the atomic view.
        unsafe { AtomicU32::from_ptr(self.map.ptr.as_ptr().add(at).cast()) }
    }

    fn prod(&self) -> &AtomicU32 {
        self.index(self.producer)
    }

    fn cons(&self) -> &AtomicU32 {
        self.index(self.consumer)
    }

    fn needs_wakeup(&self) -> bool {
        self.index(self.flags).load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    /// Pointer to entry `i` (masked) of a ring whose entries are `T`.
    fn entry<T>(&self, i: u32) -> *mut T {
        // SAFETY: the masked index is below RING, so the entry lies inside
        // the descriptor area the mapping covers.
        unsafe { self.map.ptr.as_ptr().add(self.desc + (i & self.mask) as usize * size_of::<T>()).cast() }
    }
}

/// How the socket moves frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindMode {
    /// The driver DMAs into the UMEM.
    ZeroCopy,
    /// The kernel copies between its buffers and the UMEM.
    Copy,
}

/// An AF_XDP socket bound to one queue of an interface.
#[derive(Debug)]
pub struct XskSocket {
    // Field order is drop order: rings and the UMEM are unmapped before
    // the socket closes.
    rx: Ring,
    tx: Ring,
    fill: Ring,
    comp: Ring,
    umem: Mapping,
    fd: OwnedFd,
    free: Vec<u64>,
    mode: BindMode,
}

// SAFETY: the socket exclusively owns its mappings; moving it to another
// thread moves that ownership. All access goes through &mut self.
unsafe impl Send for XskSocket {}

fn setsockopt<T>(fd: RawFd, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is a valid T for the call and its size is exact.
    cvt(unsafe {
        libc::setsockopt(fd, libc::SOL_XDP, name, (value as *const T).cast(), size_of::<T>() as libc::socklen_t)
    })
    .map(|_| ())
}

fn with_context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

impl XskSocket {
    /// Creates a socket with its UMEM and rings and binds it to queue
    /// `queue` of `ifindex`: zero-copy if the driver can, copy otherwise.
    pub fn open(ifindex: u32, queue: u32, try_zero_copy: bool) -> io::Result<XskSocket> {
        // SAFETY: plain socket(2) call; the result is checked.
        let raw = cvt(unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) })
            .map_err(|e| with_context(e, "AF_XDP socket"))?;
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let f = fd.as_raw_fd();
        let umem = Mapping::new(-1, (FRAMES * FRAME_SIZE) as usize, 0).map_err(|e| with_context(e, "UMEM mmap"))?;
        let reg = libc::xdp_umem_reg {
            addr: umem.ptr.as_ptr() as u64,
            len: umem.len as u64,
            chunk_size: FRAME_SIZE,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setsockopt(f, libc::XDP_UMEM_REG, &reg).map_err(|e| with_context(e, "XDP_UMEM_REG"))?;
        for ring in [libc::XDP_UMEM_FILL_RING, libc::XDP_UMEM_COMPLETION_RING, libc::XDP_RX_RING, libc::XDP_TX_RING] {
            setsockopt(f, ring, &RING).map_err(|e| with_context(e, "XDP ring size"))?;
        }
        // SAFETY: xdp_mmap_offsets is plain data; all-zero is valid.
        let mut off: libc::xdp_mmap_offsets = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::xdp_mmap_offsets>() as libc::socklen_t;
        // SAFETY: `off` and `len` are valid for writes of the sizes given.
        cvt(unsafe {
            libc::getsockopt(
                f,
                libc::SOL_XDP,
                libc::XDP_MMAP_OFFSETS,
                (&mut off as *mut libc::xdp_mmap_offsets).cast(),
                &mut len,
            )
        })
        .map_err(|e| with_context(e, "XDP_MMAP_OFFSETS"))?;
        let desc = size_of::<libc::xdp_desc>();
        let rx = Ring::new(f, &off.rx, desc, libc::XDP_PGOFF_RX_RING as u64)?;
        let tx = Ring::new(f, &off.tx, desc, libc::XDP_PGOFF_TX_RING as u64)?;
        let fill = Ring::new(f, &off.fr, 8, libc::XDP_UMEM_PGOFF_FILL_RING)?;
        let comp = Ring::new(f, &off.cr, 8, libc::XDP_UMEM_PGOFF_COMPLETION_RING)?;
        let mut s =
            XskSocket { rx, tx, fill, comp, umem, fd, free: Vec::with_capacity(FRAMES as usize), mode: BindMode::Copy };
        // Half the frames to the fill ring for receiving, half kept for tx.
        for i in 0..RING {
            // SAFETY: entry i of the fill ring, which we produce into.
            unsafe { s.fill.entry::<u64>(i).write(i as u64 * FRAME_SIZE as u64) };
        }
        s.fill.prod().store(RING, Ordering::Release);
        s.free.extend((RING..FRAMES).map(|i| i as u64 * FRAME_SIZE as u64));
        let modes: &[(u16, BindMode)] = if try_zero_copy {
            &[(libc::XDP_ZEROCOPY, BindMode::ZeroCopy), (libc::XDP_COPY, BindMode::Copy)]
        } else {
            &[(libc::XDP_COPY, BindMode::Copy)]
        };
        let mut attempts = Vec::new();
        let mut last = None;
        for &(flag, mode) in modes {
            let sxdp = libc::sockaddr_xdp {
                sxdp_family: libc::AF_XDP as u16,
                sxdp_flags: flag | libc::XDP_USE_NEED_WAKEUP,
                sxdp_ifindex: ifindex,
                sxdp_queue_id: queue,
                sxdp_shared_umem_fd: 0,
            };
            // EBUSY: a previous socket on this queue is still being torn
            // down. The kernel frees its buffer pool from a workqueue,
            // which a loaded machine can delay (and the attach lock already
            // rules out a live competitor for the queue): retry for up to
            // five seconds.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            let mut tries = 0;
            loop {
                tries += 1;
                // SAFETY: `sxdp` is a valid sockaddr_xdp and its size is passed.
                let r = cvt(unsafe {
                    libc::bind(
                        f,
                        (&sxdp as *const libc::sockaddr_xdp).cast(),
                        size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
                    )
                });
                match r {
                    Ok(_) => {
                        s.mode = mode;
                        return Ok(s);
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && std::time::Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    Err(e) => {
                        attempts.push(format!("{mode:?}: {e} after {tries} tries"));
                        last = Some(e);
                        break;
                    }
                }
            }
        }
        let e = last.unwrap_or_else(|| io::Error::other("no bind mode"));
        Err(io::Error::new(e.kind(), format!("bind the AF_XDP socket ({})", attempts.join("; "))))
    }

    /// The socket's descriptor (readable when frames are waiting).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// How the socket ended up bound.
    pub fn mode(&self) -> BindMode {
        self.mode
    }

    /// True if received frames are waiting.
    pub fn rx_ready(&self) -> bool {
        self.rx.prod().load(Ordering::Acquire) != self.rx.cons().load(Ordering::Relaxed)
    }

    fn kick_rx(&self) {
        // SAFETY: a zero-length receive only wakes the kernel's rx path.
        unsafe {
            libc::recvfrom(
                self.fd(),
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            );
        }
    }

    /// Hands at most `max` received frames to `f`, returning each frame to
    /// the fill ring after the call; returns how many.
    pub fn recv_burst(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> usize {
        let cons = self.rx.cons().load(Ordering::Relaxed);
        let avail = self.rx.prod().load(Ordering::Acquire).wrapping_sub(cons);
        let n = (avail as usize).min(max) as u32;
        if n == 0 {
            if self.fill.needs_wakeup() {
                self.kick_rx();
            }
            return 0;
        }
        let fprod = self.fill.prod().load(Ordering::Relaxed);
        for i in 0..n {
            // SAFETY: entries cons..cons+n were published by the kernel
            // (acquire load of the producer above) and are ours to read.
            let d: libc::xdp_desc = unsafe { self.rx.entry::<libc::xdp_desc>(cons.wrapping_add(i)).read() };
            let chunk = d.addr & !(FRAME_SIZE as u64 - 1);
            let (addr, len) = (d.addr as usize, d.len as usize);
            if addr + len <= self.umem.len {
                // SAFETY: [addr, addr + len) is inside the UMEM (checked),
                // and the kernel does not write a frame it handed us until
                // we give it back through the fill ring, below.
                f(unsafe { std::slice::from_raw_parts(self.umem.ptr.as_ptr().add(addr), len) });
            }
            // Every rx frame came from the fill ring and there are as many
            // fill entries as rx entries, so there is room for it.
            // SAFETY: entry fprod+i of the fill ring, which we produce into.
            unsafe { self.fill.entry::<u64>(fprod.wrapping_add(i)).write(chunk) };
        }
        self.rx.cons().store(cons.wrapping_add(n), Ordering::Release);
        self.fill.prod().store(fprod.wrapping_add(n), Ordering::Release);
        if self.fill.needs_wakeup() {
            self.kick_rx();
        }
        n as usize
    }

    /// Takes transmitted frames back from the completion ring.
    fn reclaim(&mut self) {
        let cons = self.comp.cons().load(Ordering::Relaxed);
        let n = self.comp.prod().load(Ordering::Acquire).wrapping_sub(cons);
        for i in 0..n {
            // SAFETY: entries cons..cons+n were published by the kernel.
            self.free.push(unsafe { self.comp.entry::<u64>(cons.wrapping_add(i)).read() } & !(FRAME_SIZE as u64 - 1));
        }
        self.comp.cons().store(cons.wrapping_add(n), Ordering::Release);
    }

    /// Queues frames for transmission and kicks the kernel; returns how
    /// many were queued (frames longer than a UMEM frame are refused by the
    /// caller beforehand).
    pub fn send_burst<'a>(&mut self, frames: impl Iterator<Item = &'a [u8]>) -> usize {
        self.reclaim();
        let prod = self.tx.prod().load(Ordering::Relaxed);
        let room = RING - prod.wrapping_sub(self.tx.cons().load(Ordering::Acquire));
        let mut n = 0u32;
        for frame in frames {
            if n == room || frame.len() > FRAME_SIZE as usize {
                break;
            }
            let Some(addr) = self.free.pop() else { break };
            // SAFETY: `addr` is a free frame (not in any ring) inside the
            // UMEM, and the frame is at most FRAME_SIZE bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(frame.as_ptr(), self.umem.ptr.as_ptr().add(addr as usize), frame.len());
                self.tx.entry::<libc::xdp_desc>(prod.wrapping_add(n)).write(libc::xdp_desc {
                    addr,
                    len: frame.len() as u32,
                    options: 0,
                });
            }
            n += 1;
        }
        if n > 0 {
            self.tx.prod().store(prod.wrapping_add(n), Ordering::Release);
            if self.tx.needs_wakeup() || self.mode == BindMode::Copy {
                // SAFETY: a zero-length send only makes the kernel process
                // the tx ring; errors (EAGAIN, EBUSY) mean "try later".
                unsafe {
                    libc::sendto(self.fd(), std::ptr::null(), 0, libc::MSG_DONTWAIT, std::ptr::null(), 0);
                }
            }
        }
        n as usize
    }

    /// Frames the kernel dropped on receive since the socket opened
    /// (`XDP_STATISTICS`: rx_dropped + rx_ring_full + fill ring empty).
    pub fn rx_drops(&self) -> u64 {
        // SAFETY: xdp_statistics is plain data; all-zero is valid.
        let mut st: libc::xdp_statistics = unsafe { std::mem::zeroed() };
        let mut len = size_of::<libc::xdp_statistics>() as libc::socklen_t;
        // SAFETY: `st` and `len` are valid for writes of the sizes given.
        let r = unsafe {
            libc::getsockopt(
                self.fd(),
                libc::SOL_XDP,
                libc::XDP_STATISTICS,
                (&mut st as *mut libc::xdp_statistics).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return 0;
        }
        st.rx_dropped + st.rx_ring_full + st.rx_fill_ring_empty_descs
    }
}
