//! Every `unsafe` block and raw system call of the crate, behind safe
//! wrappers. The rest of the crate denies `unsafe_code`; here each block
//! says why it holds in a `// SAFETY:` comment.

#![allow(unsafe_code)]

pub(crate) mod bpf;
pub(crate) mod eventfd;
pub(crate) mod netlink;
pub(crate) mod packet_ring;
pub(crate) mod tap;
pub(crate) mod tunnel_sock;
pub(crate) mod xsk;

use std::io;

/// Turns a libc return value into a `Result`, reading `errno` on -1.
pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}

/// Pins the calling thread to CPU `cpu` (sched_setaffinity(2)).
pub(crate) fn pin_current_thread(cpu: usize) -> io::Result<()> {
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: cpu_set_t is plain data; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE (checked), so CPU_SET stays in
    // bounds; sched_setaffinity reads exactly size_of::<cpu_set_t>().
    cvt(unsafe {
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    })
    .map(|_| ())
}

/// This process's effective uid.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// The uid and primary gid of the process at the other end of a Unix
/// socket (SO_PEERCRED).
pub(crate) fn peer_cred(sock: &impl std::os::fd::AsRawFd) -> io::Result<(u32, u32)> {
    // SAFETY: ucred is plain data; all-zero is valid.
    let mut cred: libc::ucred = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given.
    cvt(unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    })?;
    Ok((cred.uid, cred.gid))
}

/// The supplementary groups of the process at the other end of a Unix
/// socket, as they were when it connected (SO_PEERGROUPS, Linux 4.13).
pub(crate) fn peer_groups(sock: &impl std::os::fd::AsRawFd) -> io::Result<Vec<u32>> {
    let mut groups = vec![0 as libc::gid_t; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `groups` holds `len` bytes, valid for writes; the kernel
        // writes at most `len` and says how much it needed in `len`.
        let r = cvt(unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        });
        let n = len as usize / std::mem::size_of::<libc::gid_t>();
        match r {
            Ok(_) => {
                groups.truncate(n);
                return Ok(groups);
            }
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) && n > groups.len() => groups.resize(n, 0),
            Err(e) => return Err(e),
        }
    }
}

/// Asks the kernel to back `mem` with transparent huge pages
/// (madvise(2) MADV_HUGEPAGE; a hint: failure changes nothing). For large
/// tables read at random (conntrack's), where a TLB miss per lookup is
/// what costs.
pub(crate) fn advise_huge_pages<T>(mem: &[T]) {
    let start = mem.as_ptr() as usize;
    let len = std::mem::size_of_val(mem);
    // madvise wants a page-aligned start: advise the whole pages inside.
    let page = 4096;
    let aligned = start.next_multiple_of(page);
    let end = (start + len) & !(page - 1);
    if end <= aligned {
        return;
    }
    // SAFETY: the range lies within `mem`, which this process owns for the
    // call's duration; MADV_HUGEPAGE only changes how the kernel backs
    // those pages (their contents are kept), and its result is ignored.
    unsafe {
        libc::madvise(aligned as *mut libc::c_void, end - aligned, libc::MADV_HUGEPAGE);
    }
}

/// Starts fetching the cache line holding `value` (no effect on what the
/// program computes; a hint for the hardware).
#[inline(always)]
pub(crate) fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetching never faults and reads nothing the program sees;
    // `value` is a valid reference. SSE is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(value as *const T as *const i8);
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// A cycle count: the CPU's time-stamp counter on x86_64 (constant rate on
/// every CPU this runs on: `constant_tsc`), nanoseconds of a monotonic
/// clock elsewhere. [`cycles_per_second`] converts it.
#[inline(always)]
pub(crate) fn cycles() -> u64 {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: RDTSC reads a counter; it has no memory effects and is part
    // of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_rdtsc()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        START.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64
    }
}

/// The rate of [`cycles`], measured once against the monotonic clock
/// (over 20 ms, on first use).
pub(crate) fn cycles_per_second() -> u64 {
    static HZ: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *HZ.get_or_init(|| {
        let (t0, c0) = (std::time::Instant::now(), cycles());
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (dt, dc) = (t0.elapsed().as_secs_f64(), cycles().wrapping_sub(c0));
        ((dc as f64 / dt) as u64).max(1)
    })
}
