//! Async use with tokio (feature `tokio`): memory ports and event
//! subscriptions as futures, on the descriptors
//! [`MemoryPortHandle::rx_fd`] / [`tx_fd`](MemoryPortHandle::tx_fd) and
//! [`Events`] expose, registered with tokio's reactor. Nothing here spawns
//! a thread or polls: a task waiting for frames sleeps in the reactor until
//! the datapath queues one.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), vswitch_core::Error> {
//! use vswitch_core::asyncio::AsyncMemoryPort;
//! use vswitch_core::{PortConfig, Switch};
//!
//! let sw = Switch::builder().build()?;
//! sw.add_bridge("br0")?;
//! let a = AsyncMemoryPort::new(sw.add_memory_port("br0", "a", PortConfig::default())?)?;
//! let b = AsyncMemoryPort::new(sw.add_memory_port("br0", "b", PortConfig::default())?)?;
//! let frame = [[0xff; 6].as_slice(), &[2, 0, 0, 0, 0, 1], &[0x88, 0xb5], &[0; 46]].concat();
//! a.send_frame(&frame).await?;
//! let got = b.recv().await?; // flooded to b
//! assert_eq!(got.data(), &frame[..]);
//! # Ok(())
//! # }
//! ```

use tokio::io::unix::AsyncFd;

use crate::events::{Event, Events};
use crate::packet::Packet;
use crate::port::memory::MemoryPortHandle;
use crate::sys::eventfd::{SharedEventFd, register_async};
use crate::{Error, Result};

fn reactor(e: std::io::Error) -> Error {
    Error::io("tokio reactor", e)
}

/// A memory port's runtime end with async receive and send (see the
/// [module docs](self)). The plain handle is still there, for a smoltcp
/// `Interface` ([`handle_mut`](Self::handle_mut)) and the non-blocking
/// calls.
#[derive(Debug)]
pub struct AsyncMemoryPort {
    rx: AsyncFd<SharedEventFd>,
    tx: AsyncFd<SharedEventFd>,
    handle: MemoryPortHandle,
}

impl AsyncMemoryPort {
    /// Registers `handle`'s descriptors with the current tokio runtime.
    ///
    /// # Errors
    /// [`Error::Io`] if the eventfds cannot be made or registered.
    ///
    /// # Panics
    /// Outside a tokio runtime with I/O enabled (as tokio's `AsyncFd`).
    pub fn new(handle: MemoryPortHandle) -> Result<Self> {
        let rx = register_async(handle.rx_eventfd()?.clone()).map_err(reactor)?;
        let tx = register_async(handle.tx_eventfd()?.clone()).map_err(reactor)?;
        Ok(AsyncMemoryPort { rx, tx, handle })
    }

    /// The next frame the switch forwarded to this port.
    ///
    /// # Errors
    /// [`Error::Unavailable`] once the port is removed and nothing waits.
    pub async fn recv(&self) -> Result<Packet> {
        loop {
            let mut ready = self.rx.readable().await.map_err(reactor)?;
            if let Some(p) = self.handle.recv() {
                return Ok(p);
            }
            if self.handle.is_detached() {
                return Err(Error::Unavailable);
            }
            // The receive found nothing and re-armed the descriptor; an
            // event since the wake-up is kept by tokio.
            ready.clear_ready();
        }
    }

    /// Waits for frames, then moves up to `max` of them into `out`;
    /// returns how many (at least one).
    ///
    /// # Errors
    /// As [`recv`](Self::recv).
    pub async fn recv_burst(&self, out: &mut Vec<Packet>, max: usize) -> Result<usize> {
        loop {
            let mut ready = self.rx.readable().await.map_err(reactor)?;
            let n = self.handle.recv_burst(out, max);
            if n > 0 || max == 0 {
                return Ok(n);
            }
            if self.handle.is_detached() {
                return Err(Error::Unavailable);
            }
            ready.clear_ready();
        }
    }

    /// Waits until a frame waits to be received, without taking it: for a
    /// smoltcp host's loop, which then polls its `Interface` on
    /// [`handle_mut`](Self::handle_mut). Returns at once if the port was
    /// removed.
    ///
    /// # Errors
    /// [`Error::Io`] if the reactor fails.
    pub async fn readable(&self) -> Result<()> {
        loop {
            let mut ready = self.rx.readable().await.map_err(reactor)?;
            if self.handle.pending() > 0 || self.handle.is_detached() {
                return Ok(());
            }
            self.handle.arm_rx();
            if self.handle.pending() > 0 {
                return Ok(());
            }
            ready.clear_ready();
        }
    }

    /// Sends `p` into the switch, waiting while the queue towards it is
    /// full.
    ///
    /// # Errors
    /// [`Error::Unavailable`] if the port was removed (the buffer is
    /// recycled).
    pub async fn send(&self, mut p: Packet) -> Result<()> {
        loop {
            let mut ready = self.tx.readable().await.map_err(reactor)?;
            match self.handle.try_send(p) {
                Ok(()) => return Ok(()),
                Err(back) if self.handle.is_detached() => {
                    self.handle.recycle(back);
                    return Err(Error::Unavailable);
                }
                Err(back) => {
                    p = back;
                    ready.clear_ready();
                }
            }
        }
    }

    /// Copies `frame` into a buffer and [`send`](Self::send)s it.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub async fn send_frame(&self, frame: &[u8]) -> Result<()> {
        let mut p = self.handle.alloc();
        p.set_frame(frame);
        self.send(p).await
    }

    /// The plain handle.
    pub fn handle(&self) -> &MemoryPortHandle {
        &self.handle
    }

    /// The plain handle, mutably (a smoltcp `Interface` polls it).
    pub fn handle_mut(&mut self) -> &mut MemoryPortHandle {
        &mut self.handle
    }

    /// The plain handle back; the descriptors stay with it.
    pub fn into_inner(self) -> MemoryPortHandle {
        let AsyncMemoryPort { rx, tx, handle } = self;
        drop((rx, tx));
        handle
    }
}

/// An event subscription with an async [`recv`](Self::recv).
#[derive(Debug)]
pub struct AsyncEvents {
    fd: AsyncFd<SharedEventFd>,
    events: Events,
}

impl AsyncEvents {
    /// Registers the subscription's descriptor with the current tokio
    /// runtime.
    ///
    /// # Errors
    /// [`Error::Io`] if it cannot be registered.
    ///
    /// # Panics
    /// Outside a tokio runtime with I/O enabled.
    pub fn new(events: Events) -> Result<Self> {
        let fd = register_async(events.eventfd().clone()).map_err(reactor)?;
        Ok(AsyncEvents { fd, events })
    }

    /// The next event; `None` once the switch is gone.
    pub async fn recv(&self) -> Option<Event> {
        loop {
            let mut ready = self.fd.readable().await.ok()?;
            if let Some(e) = self.events.try_recv() {
                return Some(e);
            }
            if self.events.is_closed() {
                return None;
            }
            ready.clear_ready();
        }
    }

    /// Events this subscription missed (its queue was full).
    pub fn missed(&self) -> u64 {
        self.events.missed()
    }
}
