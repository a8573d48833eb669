//! eventfd(2): a kernel counter that a descriptor's readiness follows.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A non-blocking eventfd: readable while its counter is above zero.
#[derive(Debug)]
pub(crate) struct EventFd(OwnedFd);

impl EventFd {
    pub(crate) fn new() -> io::Result<EventFd> {
        // SAFETY: eventfd(2) takes no pointers; a non-negative result is a
        // new descriptor that nothing else owns.
        let fd = super::cvt(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
        // SAFETY: `fd` was just created and is owned by nobody else.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes the descriptor readable (adds one to the counter). A full
    /// counter (EAGAIN) is already readable.
    pub(crate) fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of `one`, which outlives the call, to a
        // descriptor this value owns.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), (&raw const one).cast(), 8) };
    }

    /// Makes the descriptor unreadable (reads the counter to zero). An
    /// empty counter (EAGAIN) is already unreadable.
    pub(crate) fn clear(&self) {
        let mut value: u64 = 0;
        // SAFETY: reads at most 8 bytes into `value`, which is 8 bytes and
        // outlives the call, from a descriptor this value owns.
        let _ = unsafe { libc::read(self.0.as_raw_fd(), (&raw mut value).cast(), 8) };
    }
}

impl AsFd for EventFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// An eventfd shared with whoever else signals or clears it, as tokio's
/// reactor registers it.
#[cfg(feature = "tokio")]
#[derive(Debug)]
pub(crate) struct SharedEventFd(std::sync::Arc<EventFd>);

#[cfg(feature = "tokio")]
impl AsRawFd for SharedEventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Registers `fd` with the current tokio runtime's reactor, for readiness
/// to read.
///
/// # Panics
/// Outside a tokio runtime with I/O enabled.
#[cfg(feature = "tokio")]
pub(crate) fn register_async(fd: std::sync::Arc<EventFd>) -> io::Result<tokio::io::unix::AsyncFd<SharedEventFd>> {
    // SAFETY: the AsyncFd owns an `Arc` of the EventFd, whose descriptor
    // is opened once, never replaced, and closed only when the last `Arc`
    // drops: it stays open and the same for the AsyncFd's whole life, and
    // `as_raw_fd` always returns it.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(SharedEventFd(fd), tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable(fd: &EventFd) -> bool {
        let mut p = libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, no wait.
        unsafe { libc::poll(&mut p, 1, 0) == 1 }
    }

    #[test]
    fn signal_and_clear_follow_readiness() {
        let fd = EventFd::new().unwrap();
        assert!(!readable(&fd));
        fd.signal();
        fd.signal();
        assert!(readable(&fd));
        fd.clear();
        assert!(!readable(&fd));
        fd.clear();
        assert!(!readable(&fd));
    }
}
