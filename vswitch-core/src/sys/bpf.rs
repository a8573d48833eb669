//! The XDP side of AF_XDP: an XSKMAP, the program that redirects every
//! frame of a receive queue into that queue's socket, and attaching it to
//! an interface. The program is six instructions of bytecode built here
//! and loaded with bpf(2); it is attached over rtnetlink. No clang, libbpf
//! or bpffs is involved.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::cvt;

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_FUNC_REDIRECT_MAP: i32 = 51;
const XDP_PASS: i32 = 2;
const BPF_PSEUDO_MAP_FD: u8 = 1;

/// `union bpf_attr`, as the 128 bytes the kernel reads; fields are written
/// at their documented offsets.
#[repr(C, align(8))]
struct BpfAttr([u8; 128]);

impl BpfAttr {
    fn new() -> Self {
        BpfAttr([0; 128])
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

fn bpf(cmd: libc::c_long, attr: &mut BpfAttr) -> io::Result<libc::c_int> {
    // SAFETY: `attr` is 128 initialised bytes, the size passed; every
    // pointer stored in it (instructions, license, log, key, value) points
    // into memory the caller keeps alive for the duration of the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut BpfAttr, std::mem::size_of::<BpfAttr>()) };
    cvt(r as libc::c_int)
}

fn owned(fd: libc::c_int) -> OwnedFd {
    // SAFETY: `fd` was just returned by the kernel and is owned by no one.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// One eBPF instruction.
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | dst, off, imm }
}

/// An XSKMAP and the XDP program redirecting into it.
#[derive(Debug)]
pub struct XdpProgram {
    map: OwnedFd,
    prog: OwnedFd,
}

impl XdpProgram {
    /// Creates a map for `queues` sockets and loads the program.
    ///
    /// # Errors
    /// The failing bpf(2) command's error, with the verifier's log for a
    /// refused program.
    pub fn load(queues: u32) -> io::Result<XdpProgram> {
        let mut a = BpfAttr::new();
        a.u32(0, BPF_MAP_TYPE_XSKMAP).u32(4, 4).u32(8, 4).u32(12, queues.max(1));
        let map =
            owned(bpf(BPF_MAP_CREATE, &mut a).map_err(|e| io::Error::new(e.kind(), format!("create XSKMAP: {e}")))?);
        // r2 = ctx->rx_queue_index; r1 = map; r3 = XDP_PASS;
        // return bpf_redirect_map(r1, r2, r3)
        let prog = [
            insn(0x61, 2, 1, 16, 0),                              // ldxw r2, [r1 + 16]
            insn(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map.as_raw_fd()), // lddw r1, map
            insn(0x00, 0, 0, 0, 0),
            insn(0xb7, 3, 0, 0, XDP_PASS),              // mov64 r3, XDP_PASS
            insn(0x85, 0, 0, 0, BPF_FUNC_REDIRECT_MAP), // call bpf_redirect_map
            insn(0x95, 0, 0, 0, 0),                     // exit
        ];
        let license = b"Dual MIT/GPL\0";
        let mut log = vec![0u8; 4096];
        let mut a = BpfAttr::new();
        a.u32(0, BPF_PROG_TYPE_XDP)
            .u32(4, prog.len() as u32)
            .u64(8, prog.as_ptr() as u64)
            .u64(16, license.as_ptr() as u64)
            .u32(24, 1)
            .u32(28, log.len() as u32)
            .u64(32, log.as_mut_ptr() as u64);
        let name = b"vswitch_xsk";
        a.0[48..48 + name.len()].copy_from_slice(name);
        let prog = match bpf(BPF_PROG_LOAD, &mut a) {
            Ok(fd) => owned(fd),
            Err(e) => {
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                let why = String::from_utf8_lossy(&log[..end]);
                return Err(io::Error::new(e.kind(), format!("load the XDP program: {e}: {}", why.trim())));
            }
        };
        Ok(XdpProgram { map, prog })
    }

    /// Points queue `queue`'s entry at socket `xsk`.
    pub fn set_socket(&self, queue: u32, xsk: RawFd) -> io::Result<()> {
        let (key, value) = (queue, xsk as u32);
        let mut a = BpfAttr::new();
        a.u32(0, self.map.as_raw_fd() as u32).u64(8, &key as *const u32 as u64).u64(16, &value as *const u32 as u64);
        bpf(BPF_MAP_UPDATE_ELEM, &mut a)
            .map(|_| ())
            .map_err(|e| io::Error::new(e.kind(), format!("insert the socket into the XSKMAP: {e}")))
    }

    /// Removes queue `queue`'s socket from the map. The map holds a
    /// reference to each socket, so a socket closed while still in the map
    /// lives on until the map itself is freed, which the kernel defers past
    /// the program's own (RCU-deferred) release; meanwhile its queue stays
    /// busy for a new socket.
    pub fn clear_socket(&self, queue: u32) -> io::Result<()> {
        let mut a = BpfAttr::new();
        a.u32(0, self.map.as_raw_fd() as u32).u64(8, &queue as *const u32 as u64);
        bpf(BPF_MAP_DELETE_ELEM, &mut a).map(|_| ())
    }

    /// The program's descriptor.
    pub fn fd(&self) -> RawFd {
        self.prog.as_raw_fd()
    }
}

/// How an XDP program runs on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver (`XDP_FLAGS_DRV_MODE`).
    Native,
    /// On the generic receive path (`XDP_FLAGS_SKB_MODE`), any driver.
    Generic,
}

impl XdpMode {
    fn flag(self) -> u32 {
        match self {
            XdpMode::Native => 4,
            XdpMode::Generic => 2,
        }
    }
}

/// Attaches program `prog` (or detaches, with `None`) on `ifindex` in
/// `mode` with an RTM_SETLINK request carrying IFLA_XDP. Attaching
/// replaces whatever program was there (a stale one from a crash).
pub fn set_link_xdp(ifindex: u32, prog: Option<RawFd>, mode: XdpMode) -> io::Result<()> {
    super::netlink::Rtnl::open()?.set_xdp(ifindex, prog, mode.flag())
}
