//! Underlay sockets of the tunnel ports: batched receive (recvmmsg) on a
//! UDP socket (VXLAN) or a raw IPPROTO_GRE socket, and batched send
//! (sendmmsg) on raw sockets, through the host's IP stack (routing,
//! neighbour resolution and the outer IP header are the kernel's).

use std::io;
use std::mem::{size_of, zeroed};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::cvt;

/// Largest datagram read (a reassembled outer packet can reach 64 KiB).
pub(crate) const MAX_DATAGRAM: usize = 65_536;

/// Datagrams read per call.
pub(crate) const RX_BATCH: usize = 32;

fn setsockopt<T>(fd: RawFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` points to a live T and its exact size is passed.
    cvt(unsafe { libc::setsockopt(fd, level, name, (value as *const T).cast(), size_of::<T>() as libc::socklen_t) })
        .map(|_| ())
}

fn sockaddr(addr: Ipv4Addr, port: u16) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all-zero is valid.
    let mut sa: libc::sockaddr_in = unsafe { zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = port.to_be();
    sa.sin_addr.s_addr = u32::from(addr).to_be();
    sa
}

fn socket(kind: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; the descriptor returned is
    // owned by the OwnedFd from here on.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, kind | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, proto) })?;
    // SAFETY: `fd` was just returned by socket(2) and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn bind(fd: RawFd, addr: Ipv4Addr, port: u16) -> io::Result<()> {
    let sa = sockaddr(addr, port);
    // SAFETY: `sa` is a valid sockaddr_in of the size given.
    cvt(unsafe {
        libc::bind(fd, (&sa as *const libc::sockaddr_in).cast(), size_of::<libc::sockaddr_in>() as libc::socklen_t)
    })
    .map(|_| ())
}

/// A duplicate of `fd` (for a second epoll registration of one socket).
pub(crate) fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl(F_DUPFD_CLOEXEC) returns a new descriptor we own.
    let new = cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: `new` is a fresh descriptor owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// The path MTU the kernel would use towards `remote` (IP_MTU of a
/// connected UDP socket).
pub(crate) fn route_mtu(remote: Ipv4Addr) -> io::Result<u32> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
    s.connect((remote, 9))?;
    let mut mtu: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `mtu` and `len` are valid for writes of the sizes given.
    cvt(unsafe {
        libc::getsockopt(s.as_raw_fd(), libc::IPPROTO_IP, libc::IP_MTU, (&mut mtu as *mut i32).cast(), &mut len)
    })?;
    Ok(mtu as u32)
}

/// One datagram of a received batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Datagram {
    /// Bytes in the buffer.
    pub len: usize,
    /// The sender's address (outer source).
    pub src: Ipv4Addr,
    /// The address it was sent to (outer destination), if known.
    pub dst: Ipv4Addr,
    /// It was longer than the buffer.
    pub truncated: bool,
    /// The interface it arrived on (0 if unknown).
    pub ifindex: u32,
}

/// What the receive path needs to know of an underlay interface.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Underlay {
    /// A virtual interface (veth, bridge, ...): its packets may carry
    /// checksums the sender left to offload, and segments merged by GSO,
    /// with nothing in the payload to say so.
    pub is_virtual: bool,
    /// Its MTU (1500 if unknown).
    pub mtu: u32,
}

/// Looks interface `ifindex` up in sysfs.
pub(crate) fn underlay(ifindex: u32) -> Underlay {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` has the IF_NAMESIZE bytes if_indextoname writes at most.
    let p = unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) };
    if p.is_null() {
        return Underlay { is_virtual: false, mtu: 1500 };
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }.to_string_lossy().into_owned();
    let mtu = std::fs::read_to_string(format!("/sys/class/net/{name}/mtu"))
        .ok()
        .and_then(|m| m.trim().parse().ok())
        .unwrap_or(1500);
    Underlay { is_virtual: std::path::Path::new("/sys/devices/virtual/net").join(name).exists(), mtu }
}

/// A receiving socket with its batch buffers.
pub(crate) struct RxSocket {
    fd: OwnedFd,
    bufs: Vec<Vec<u8>>,
    ctrl: Vec<[u64; 8]>,
    names: Vec<libc::sockaddr_in>,
}

impl std::fmt::Debug for RxSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RxSocket").field("fd", &self.fd).finish()
    }
}

impl RxSocket {
    fn with_fd(fd: OwnedFd) -> RxSocket {
        RxSocket {
            fd,
            bufs: (0..RX_BATCH).map(|_| vec![0; MAX_DATAGRAM]).collect(),
            ctrl: vec![[0; 8]; RX_BATCH],
            // SAFETY: sockaddr_in is plain data; all-zero is valid.
            names: vec![unsafe { zeroed() }; RX_BATCH],
        }
    }

    /// A UDP socket bound to `local`:`port` that reports each datagram's
    /// destination address (IP_PKTINFO).
    pub(crate) fn udp(local: Ipv4Addr, port: u16) -> io::Result<RxSocket> {
        let fd = socket(libc::SOCK_DGRAM, libc::IPPROTO_UDP)?;
        setsockopt(fd.as_raw_fd(), libc::IPPROTO_IP, libc::IP_PKTINFO, &1 as &libc::c_int)?;
        setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, &(4 << 20) as &libc::c_int)?;
        bind(fd.as_raw_fd(), local, port)?;
        Ok(Self::with_fd(fd))
    }

    /// A raw socket receiving every IPv4 packet of protocol `proto`, IP
    /// header included.
    pub(crate) fn raw(proto: libc::c_int) -> io::Result<RxSocket> {
        let fd = socket(libc::SOCK_RAW, proto)?;
        setsockopt(fd.as_raw_fd(), libc::IPPROTO_IP, libc::IP_PKTINFO, &1 as &libc::c_int)?;
        setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, &(4 << 20) as &libc::c_int)?;
        Ok(Self::with_fd(fd))
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The buffer of datagram `i` of the last batch.
    pub(crate) fn buf(&self, i: usize) -> &[u8] {
        &self.bufs[i]
    }

    /// Reads up to [`RX_BATCH`] waiting datagrams into `out` (cleared);
    /// returns how many. Never blocks.
    pub(crate) fn recv_batch(&mut self, out: &mut Vec<Datagram>) -> usize {
        out.clear();
        // SAFETY: iovec and mmsghdr are plain data; all-zero is valid.
        let mut iov: [libc::iovec; RX_BATCH] = unsafe { zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; RX_BATCH] = unsafe { zeroed() };
        for i in 0..RX_BATCH {
            iov[i] = libc::iovec { iov_base: self.bufs[i].as_mut_ptr().cast(), iov_len: self.bufs[i].len() };
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_in).cast();
            h.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_iov = &mut iov[i];
            h.msg_iovlen = 1;
            h.msg_control = self.ctrl[i].as_mut_ptr().cast();
            h.msg_controllen = size_of::<[u64; 8]>();
        }
        // SAFETY: every header points into buffers owned by `self` (or the
        // local arrays) that outlive the call, with their true lengths.
        let n = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                msgs.as_mut_ptr(),
                RX_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            return 0;
        }
        for m in msgs.iter().take(n as usize) {
            let h = &m.msg_hdr;
            let i = out.len();
            let src = Ipv4Addr::from(u32::from_be(self.names[i].sin_addr.s_addr));
            let mut dst = Ipv4Addr::UNSPECIFIED;
            let mut ifindex = 0;
            // SAFETY: the CMSG macros walk the control buffer the kernel
            // filled, bounded by msg_controllen; IP_PKTINFO data is an
            // in_pktinfo, read unaligned.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(h);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_PKTINFO {
                        let info: libc::in_pktinfo = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                        dst = Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr));
                        ifindex = info.ipi_ifindex as u32;
                    }
                    c = libc::CMSG_NXTHDR(h, c);
                }
            }
            out.push(Datagram {
                len: (m.msg_len as usize).min(MAX_DATAGRAM),
                src,
                dst,
                truncated: h.msg_flags & libc::MSG_TRUNC != 0,
                ifindex,
            });
        }
        n as usize
    }
}

/// A socket that holds a tunnel's UDP port (`proto` IPPROTO_UDP, bound to
/// `local`:`port`) or its protocol (IPPROTO_GRE, raw) for a native tunnel
/// whose packets the kernel also sees (an AF_PACKET uplink): the kernel
/// then delivers them here, where a drop-all filter discards them, instead
/// of answering "port (or protocol) unreachable". It reads nothing.
pub(crate) fn claim(proto: libc::c_int, local: Ipv4Addr, port: u16) -> io::Result<OwnedFd> {
    let fd = match proto {
        libc::IPPROTO_UDP => socket(libc::SOCK_DGRAM, libc::IPPROTO_UDP)?,
        _ => socket(libc::SOCK_RAW, proto)?,
    };
    let mut drop_all = [libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: 0 }];
    let prog = libc::sock_fprog { len: 1, filter: drop_all.as_mut_ptr() };
    setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &prog)?;
    setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, &4096 as &libc::c_int)?;
    if proto == libc::IPPROTO_UDP {
        bind(fd.as_raw_fd(), local, port)?;
    }
    Ok(fd)
}

/// A raw sending socket: the kernel adds the outer IPv4 header (with this
/// socket's TOS and TTL, DF set) and routes it; it never queues received
/// packets (a drop-all socket filter).
#[derive(Debug)]
pub(crate) struct TxSocket {
    fd: OwnedFd,
}

impl TxSocket {
    /// A raw socket for protocol `proto` (IPPROTO_UDP with our own UDP
    /// header, or IPPROTO_GRE), sending from `local` if given.
    pub(crate) fn raw(proto: libc::c_int, local: Option<Ipv4Addr>, tos: u8, ttl: Option<u8>) -> io::Result<TxSocket> {
        let fd = socket(libc::SOCK_RAW, proto)?;
        let raw = fd.as_raw_fd();
        // Oversized packets fail with EMSGSIZE instead of being fragmented.
        setsockopt(raw, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, &libc::IP_PMTUDISC_DO)?;
        setsockopt(raw, libc::IPPROTO_IP, libc::IP_TOS, &(tos as libc::c_int))?;
        if let Some(ttl) = ttl {
            setsockopt(raw, libc::IPPROTO_IP, libc::IP_TTL, &(ttl as libc::c_int))?;
        }
        setsockopt(raw, libc::SOL_SOCKET, libc::SO_SNDBUF, &(4 << 20) as &libc::c_int)?;
        // A raw socket gets a copy of every packet of its protocol; this
        // one only sends, so it accepts none (classic BPF: "ret #0").
        let mut drop_all = [libc::sock_filter { code: 0x06, jt: 0, jf: 0, k: 0 }];
        let prog = libc::sock_fprog { len: 1, filter: drop_all.as_mut_ptr() };
        setsockopt(raw, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &prog)?;
        if let Some(local) = local {
            bind(raw, local, 0)?;
        }
        Ok(TxSocket { fd })
    }

    /// Sends each message (`header` then `payload`) to its destination;
    /// returns how many were sent, and the error that stopped the batch
    /// at the message after them (that message is not sent).
    pub(crate) fn send_batch(&self, msgs: &[(Ipv4Addr, &[u8], &[u8])]) -> (usize, Option<io::Error>) {
        let mut sent = 0;
        while sent < msgs.len() {
            let chunk = &msgs[sent..msgs.len().min(sent + RX_BATCH)];
            let addrs: Vec<libc::sockaddr_in> = chunk.iter().map(|m| sockaddr(m.0, 0)).collect();
            let mut iov: Vec<[libc::iovec; 2]> = chunk
                .iter()
                .map(|m| {
                    [
                        libc::iovec { iov_base: m.1.as_ptr() as *mut _, iov_len: m.1.len() },
                        libc::iovec { iov_base: m.2.as_ptr() as *mut _, iov_len: m.2.len() },
                    ]
                })
                .collect();
            let mut hdrs: Vec<libc::mmsghdr> = (0..chunk.len())
                .map(|i| {
                    // SAFETY: mmsghdr is plain data; all-zero is valid.
                    let mut m: libc::mmsghdr = unsafe { zeroed() };
                    m.msg_hdr.msg_name = (&addrs[i] as *const libc::sockaddr_in) as *mut _;
                    m.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
                    m.msg_hdr.msg_iov = iov[i].as_mut_ptr();
                    m.msg_hdr.msg_iovlen = 2;
                    m
                })
                .collect();
            // SAFETY: every header points at addresses and iovecs in the
            // vectors above, which outlive the call; the kernel only reads
            // the payload buffers.
            let n = unsafe {
                libc::sendmmsg(self.fd.as_raw_fd(), hdrs.as_mut_ptr(), hdrs.len() as libc::c_uint, libc::MSG_DONTWAIT)
            };
            if n < 0 {
                return (sent, Some(io::Error::last_os_error()));
            }
            sent += n as usize;
            if (n as usize) < chunk.len() {
                // The kernel stops at the first failing message without
                // saying why; sending it alone gives its error.
                let (again, err) = self.send_batch(&msgs[sent..sent + 1]);
                sent += again;
                if let Some(e) = err {
                    return (sent, Some(e));
                }
            }
        }
        (sent, None)
    }
}
