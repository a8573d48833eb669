//! Every `unsafe` block and raw system call of the crate, behind safe
//! wrappers. The rest of the crate denies `unsafe_code`; here each block
//! says why it holds in a `// SAFETY:` comment.

#![allow(unsafe_code)]

pub(crate) mod bpf;
pub(crate) mod packet_ring;
pub(crate) mod xsk;

use std::io;

/// Turns a libc return value into a `Result`, reading `errno` on -1.
pub(crate) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 { Err(io::Error::last_os_error()) } else { Ok(ret) }
}
