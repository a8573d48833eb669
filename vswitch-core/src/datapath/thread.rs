//! The poll-mode datapath thread and its idle policy.
//!
//! The thread polls its ports in bursts while traffic flows. After a short
//! spell with no packets it announces that it is going to sleep, checks its
//! queues once more, and blocks in `epoll` (through `mio`) on an eventfd
//! that producers write only when they see it asleep. It wakes at least
//! every [`HOUSEKEEPING`] for MAC aging. An idle switch thus costs a few
//! wake-ups a second instead of a spinning core.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender, TryRecvError};

use super::{Datapath, Wakeup};
use crate::clock::Clock;
use crate::{Error, Result};

/// Longest sleep of an idle datapath thread.
pub const HOUSEKEEPING: Duration = Duration::from_millis(100);

const WAKE_TOKEN: mio::Token = mio::Token(0);

/// What a datapath thread does when there is no traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdlePolicy {
    /// Keep polling for `spin` after the last packet, then sleep until
    /// woken. The default spins for 50 µs.
    Adaptive {
        /// How long to keep polling an idle datapath before sleeping.
        spin: Duration,
    },
    /// Never sleep: lowest latency, one core at 100 % (for benchmarks).
    Busy,
}

impl Default for IdlePolicy {
    fn default() -> Self {
        IdlePolicy::Adaptive { spin: Duration::from_micros(50) }
    }
}

pub(crate) type Command = Box<dyn FnOnce(&mut Datapath) + Send>;

enum Message {
    Run(Command),
    Stop,
}

/// A running datapath thread and the means to reach it.
#[derive(Debug)]
pub(crate) struct DatapathThread {
    commands: Sender<Message>,
    wakeup: Arc<Wakeup>,
    join: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Message::Run(_) => "Run",
            Message::Stop => "Stop",
        })
    }
}

impl DatapathThread {
    /// Starts a thread running `dp`; returns it with the [`Wakeup`] that
    /// ports must use to rouse it.
    pub(crate) fn spawn(
        mut dp: Datapath,
        clock: Arc<dyn Clock>,
        policy: IdlePolicy,
        name: String,
        cpu: Option<usize>,
    ) -> Result<Self> {
        let poll = mio::Poll::new().map_err(|e| Error::io("epoll_create", e))?;
        let waker = mio::Waker::new(poll.registry(), WAKE_TOKEN).map_err(|e| Error::io("eventfd", e))?;
        dp.set_registry(poll.registry().try_clone().map_err(|e| Error::io("epoll dup", e))?);
        let wakeup = Arc::new(Wakeup::new(Some(waker)));
        let (tx, rx) = crossbeam::channel::unbounded();
        let w = wakeup.clone();
        let join = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                if let Some(cpu) = cpu {
                    // Best effort: an unavailable CPU leaves the thread
                    // unpinned rather than stopping the switch.
                    let _ = crate::sys::pin_current_thread(cpu);
                }
                run(dp, rx, w, poll, clock, policy)
            })
            .map_err(|e| Error::io("thread spawn", e))?;
        Ok(DatapathThread { commands: tx, wakeup, join: Some(join) })
    }

    pub(crate) fn wakeup(&self) -> Arc<Wakeup> {
        self.wakeup.clone()
    }

    /// Queues `f` to run on the datapath between bursts; the receiver
    /// yields its result.
    pub(crate) fn submit<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Datapath) -> R + Send + 'static,
    ) -> Result<Receiver<R>> {
        let (tx, rx) = crossbeam::channel::bounded(1);
        self.commands
            .send(Message::Run(Box::new(move |dp| {
                let _ = tx.send(f(dp));
            })))
            .map_err(|_| Error::Unavailable)?;
        self.wakeup.notify();
        Ok(rx)
    }
}

impl Drop for DatapathThread {
    fn drop(&mut self) {
        let _ = self.commands.send(Message::Stop);
        self.wakeup.notify();
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

fn run(
    mut dp: Datapath,
    commands: Receiver<Message>,
    wakeup: Arc<Wakeup>,
    mut poll: mio::Poll,
    clock: Arc<dyn Clock>,
    policy: IdlePolicy,
) {
    let mut events = mio::Events::with_capacity(16);
    let mut last_work = Instant::now();
    loop {
        loop {
            match commands.try_recv() {
                Ok(Message::Run(f)) => f(&mut dp),
                Ok(Message::Stop) | Err(TryRecvError::Disconnected) => return,
                Err(TryRecvError::Empty) => break,
            }
        }
        if dp.poll(clock.now_ms()) > 0 {
            last_work = Instant::now();
            continue;
        }
        let spin = match policy {
            IdlePolicy::Busy => {
                std::hint::spin_loop();
                continue;
            }
            IdlePolicy::Adaptive { spin } => spin,
        };
        if last_work.elapsed() < spin {
            std::thread::yield_now();
            continue;
        }
        wakeup.set_sleeping(true);
        if !dp.rx_pending() && commands.is_empty() {
            // An error here (EINTR) just means another turn of the loop.
            let _ = poll.poll(&mut events, Some(HOUSEKEEPING));
        }
        wakeup.set_sleeping(false);
        last_work = Instant::now() - spin;
    }
}
