//! Events: what happened in the switch, in the order it happened, for an
//! embedder to react to instead of polling [`Switch::stats`].
//!
//! [`Switch::subscribe`] returns an [`Events`] subscription: a bounded
//! queue of [`Event`]s with a descriptor ([`AsFd`]) that is readable while
//! events wait, so it plugs into epoll, mio or tokio (with the `tokio`
//! feature, [`AsyncEvents`](crate::asyncio::AsyncEvents)). Events are
//! published in one order to every subscriber: a port's
//! [`PortAdded`](Event::PortAdded) comes before anything else about it and
//! its [`PortRemoved`](Event::PortRemoved) after. A subscriber that falls
//! behind loses the newest events, counted in [`Events::missed`]; the
//! datapath never waits for a subscriber.
//!
//! ```
//! use std::time::Duration;
//! use vswitch_core::events::Event;
//! use vswitch_core::{PortConfig, Switch};
//!
//! let sw = Switch::builder().build()?;
//! let events = sw.subscribe()?;
//! sw.add_bridge("br0")?;
//! let nic = sw.add_memory_port("br0", "vm1", PortConfig::default())?;
//! nic.set_link_up(false);
//! let seen: Vec<Event> = std::iter::from_fn(|| events.recv_timeout(Duration::from_secs(2))).take(2).collect();
//! assert!(matches!(&seen[0], Event::PortAdded { port, .. } if port == "vm1"));
//! assert!(matches!(&seen[1], Event::LinkChanged { port, up: false, .. } if port == "vm1"));
//! # Ok::<(), vswitch_core::Error>(())
//! ```
//!
//! [`Switch::stats`]: crate::Switch::stats
//! [`Switch::subscribe`]: crate::Switch::subscribe

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender, TryRecvError, TrySendError};
use serde::Serialize;

use crate::port::PortNo;
use crate::sys::eventfd::EventFd;
use crate::wire::MacAddr;
use crate::{Error, Result};

/// Events a subscription holds by default before it starts missing them.
pub const DEFAULT_EVENT_QUEUE: usize = 4096;

/// Something that happened in the switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A port was attached and is being polled.
    PortAdded {
        /// Its bridge.
        bridge: String,
        /// The port's name.
        port: String,
        /// Its number on the bridge.
        port_no: PortNo,
        /// Its backend (`memory`, `afpacket`, ...).
        kind: String,
    },
    /// A port was detached.
    PortRemoved {
        /// Its bridge.
        bridge: String,
        /// The port's name.
        port: String,
        /// Its number on the bridge.
        port_no: PortNo,
    },
    /// A port's code panicked (or its slow half did): the port was taken
    /// down alone and forwards nothing until it is removed and added again.
    /// [`Switch::health`](crate::Switch::health) reports it too.
    PortFailed {
        /// Its bridge.
        bridge: String,
        /// The port's name.
        port: String,
        /// Its number on the bridge.
        port_no: PortNo,
        /// What happened (`tx_burst panicked: MESSAGE`).
        why: String,
    },
    /// A port's link went up or down.
    LinkChanged {
        /// Its bridge.
        bridge: String,
        /// The port's name.
        port: String,
        /// Its number on the bridge.
        port_no: PortNo,
        /// The new state.
        up: bool,
    },
    /// A learned address was seen on another port than the one it was
    /// learned on (a VM migrated, or a loop).
    MacMoved {
        /// The bridge.
        bridge: String,
        /// The address.
        mac: MacAddr,
        /// Its VLAN.
        vlan: u16,
        /// Where it was.
        from: PortNo,
        /// Where it is now.
        to: PortNo,
    },
    /// A datapath thread failed (the pipeline itself panicked): its ports
    /// stop forwarding and changes are refused with
    /// [`Error::DatapathFailed`].
    DatapathFailed {
        /// The thread (`vswitch-pmd0`, ...).
        thread: String,
        /// What happened (`panicked: MESSAGE`).
        why: String,
    },
}

/// What a subscription and the bus share.
#[derive(Debug)]
struct Subscriber {
    tx: Sender<Event>,
    missed: Arc<AtomicU64>,
    ready: Arc<EventFd>,
    /// Set when the switch is gone.
    closed: Arc<AtomicBool>,
}

/// Where events are published: one per switch, shared by its threads.
#[derive(Debug, Default)]
pub(crate) struct EventBus {
    /// Someone subscribes: publishing costs one load when nobody does.
    active: AtomicBool,
    subscribers: Mutex<Vec<Subscriber>>,
}

impl EventBus {
    pub(crate) fn subscribe(&self, capacity: usize) -> Result<Events> {
        if capacity == 0 || capacity > 1 << 20 {
            return Err(Error::invalid("event queue length", format!("{capacity} must be 1 to 1048576")));
        }
        let (tx, rx) = crossbeam::channel::bounded(capacity);
        let ready = Arc::new(EventFd::new().map_err(|e| Error::io("eventfd", e))?);
        let missed = Arc::new(AtomicU64::new(0));
        let closed = Arc::new(AtomicBool::new(false));
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.push(Subscriber { tx, missed: missed.clone(), ready: ready.clone(), closed: closed.clone() });
        self.active.store(true, Ordering::Release);
        Ok(Events { rx, missed, ready, closed })
    }

    /// Publishes the event `make` builds (built only if someone listens).
    /// Every subscriber sees events in the order of these calls.
    #[inline]
    pub(crate) fn publish(&self, make: impl FnOnce() -> Event) {
        if !self.active.load(Ordering::Acquire) {
            return;
        }
        self.publish_slow(make());
    }

    #[cold]
    fn publish_slow(&self, event: Event) {
        let mut subs = self.subscribers.lock().unwrap_or_else(|e| e.into_inner());
        subs.retain(|s| match s.tx.try_send(event.clone()) {
            Ok(()) => {
                s.ready.signal();
                true
            }
            Err(TrySendError::Full(_)) => {
                s.missed.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        });
        self.active.store(!subs.is_empty(), Ordering::Release);
    }
}

impl Drop for EventBus {
    fn drop(&mut self) {
        // The switch is gone: a subscriber waiting on the descriptor wakes
        // and finds the queue closed.
        let subs = self.subscribers.get_mut().unwrap_or_else(|e| e.into_inner());
        for s in subs.drain(..) {
            s.closed.store(true, Ordering::Release);
            drop(s.tx);
            s.ready.signal();
        }
    }
}

/// A subscription to a switch's [`Event`]s (see the [module docs](self)).
///
/// The descriptor ([`AsFd`]) is readable while events wait (and once the
/// switch is gone); it may also read readable with none, so a reader
/// always asks [`try_recv`](Self::try_recv). Dropping the subscription
/// unsubscribes.
#[derive(Debug)]
pub struct Events {
    rx: Receiver<Event>,
    missed: Arc<AtomicU64>,
    ready: Arc<EventFd>,
    closed: Arc<AtomicBool>,
}

impl Events {
    /// The next event, if one waits. `None` also once the switch is gone
    /// (see [`is_closed`](Self::is_closed)).
    pub fn try_recv(&self) -> Option<Event> {
        match self.rx.try_recv() {
            Ok(e) => return Some(e),
            Err(TryRecvError::Disconnected) => return None,
            Err(TryRecvError::Empty) => {}
        }
        // Nothing waits: make the descriptor unreadable, then look again
        // for an event published meanwhile (its signal may have come
        // before the clear).
        self.ready.clear();
        match self.rx.try_recv() {
            Ok(e) => {
                if !self.rx.is_empty() {
                    self.ready.signal();
                }
                Some(e)
            }
            Err(TryRecvError::Disconnected) => {
                self.ready.signal();
                None
            }
            Err(TryRecvError::Empty) => None,
        }
    }

    /// Waits up to `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        let deadline = Instant::now() + timeout;
        self.rx.recv_deadline(deadline).ok()
    }

    /// Waits for the next event; `None` once the switch is gone.
    pub fn recv(&self) -> Option<Event> {
        self.rx.recv().ok()
    }

    /// Events dropped because this subscription's queue was full.
    pub fn missed(&self) -> u64 {
        self.missed.load(Ordering::Relaxed)
    }

    #[cfg(feature = "tokio")]
    pub(crate) fn eventfd(&self) -> &Arc<EventFd> {
        &self.ready
    }

    /// True once the switch is gone and every event has been read.
    pub fn is_closed(&self) -> bool {
        // Asked without receiving: a waiting event is never taken here.
        self.closed.load(Ordering::Acquire) && self.rx.is_empty()
    }
}

impl AsFd for Events {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.ready.as_fd()
    }
}

impl AsRawFd for Events {
    fn as_raw_fd(&self) -> RawFd {
        self.ready.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn added(n: PortNo) -> Event {
        Event::PortAdded { bridge: "br0".into(), port: format!("p{n}"), port_no: n, kind: "memory".into() }
    }

    #[test]
    fn subscribers_see_every_event_in_order_and_count_what_they_miss() {
        let bus = EventBus::default();
        let mut built = 0;
        bus.publish(|| {
            built += 1;
            added(0)
        });
        assert_eq!(built, 0, "nobody listens: the event is not even built");
        let a = bus.subscribe(2).unwrap();
        let b = bus.subscribe(8).unwrap();
        for n in 1..=3 {
            bus.publish(|| added(n));
        }
        assert_eq!(a.try_recv(), Some(added(1)));
        assert_eq!(a.try_recv(), Some(added(2)));
        assert_eq!(a.try_recv(), None);
        assert_eq!(a.missed(), 1);
        assert_eq!((1..=3).map(|_| b.try_recv().unwrap()).collect::<Vec<_>>(), vec![added(1), added(2), added(3)]);
        assert_eq!(b.missed(), 0);
        drop(a);
        bus.publish(|| added(4));
        assert_eq!(bus.subscribers.lock().unwrap().len(), 1, "a dropped subscription is forgotten");
        drop(bus);
        assert_eq!(b.try_recv(), Some(added(4)));
        assert!(b.is_closed());
    }

    /// Whether `fd` reads readable now (epoll through mio, no wait).
    pub(crate) fn readable(fd: RawFd) -> bool {
        let mut poll = mio::Poll::new().unwrap();
        let mut events = mio::Events::with_capacity(1);
        poll.registry().register(&mut mio::unix::SourceFd(&fd), mio::Token(0), mio::Interest::READABLE).unwrap();
        poll.poll(&mut events, Some(Duration::ZERO)).unwrap();
        events.iter().any(|e| e.is_readable())
    }

    #[test]
    fn the_descriptor_is_readable_while_events_wait() {
        let bus = EventBus::default();
        let e = bus.subscribe(16).unwrap();
        assert!(!readable(e.as_raw_fd()));
        bus.publish(|| added(1));
        bus.publish(|| added(2));
        assert!(readable(e.as_raw_fd()));
        assert!(e.try_recv().is_some());
        assert!(readable(e.as_raw_fd()), "one event still waits");
        assert!(e.try_recv().is_some());
        assert!(e.try_recv().is_none());
        assert!(!readable(e.as_raw_fd()));
    }
}
