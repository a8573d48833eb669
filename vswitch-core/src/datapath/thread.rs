//! The poll-mode datapath thread and its idle policy.
//!
//! The thread polls its ports in bursts while traffic flows. After a short
//! spell with no packets it announces that it is going to sleep, checks its
//! queues once more, and blocks in `epoll` (through `mio`) on an eventfd
//! that producers write only when they see it asleep. It wakes at least
//! every [`HOUSEKEEPING`] for MAC aging. An idle switch thus costs a few
//! wake-ups a second instead of a spinning core.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, RecvTimeoutError, Sender, TryRecvError};

use super::perf::PmdCounters;
use super::{Datapath, Wakeup};
use crate::clock::Clock;
use crate::{Error, Result};

/// Longest sleep of an idle datapath thread.
pub const HOUSEKEEPING: Duration = Duration::from_millis(100);

const WAKE_TOKEN: mio::Token = mio::Token(0);

/// What a datapath thread does when there is no traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
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

/// Told the thread's name and what went wrong when a datapath thread fails.
pub type FailureHook = Arc<dyn Fn(&str, &str) + Send + Sync>;

enum Message {
    Run(Command),
    Stop,
}

/// A running datapath thread and the means to reach it.
#[derive(Debug)]
pub(crate) struct DatapathThread {
    name: String,
    commands: Sender<Message>,
    wakeup: Arc<Wakeup>,
    /// Why the thread stopped, once it has stopped by failing.
    failure: Arc<Mutex<Option<String>>>,
    join: Option<JoinHandle<()>>,
    /// What the thread counts of its cycles and bursts.
    perf: Arc<PmdCounters>,
}

// The life of a submitted command: queued until the thread takes it (or
// the caller withdraws it), then run.
const QUEUED: u8 = 0;
const RUNNING: u8 = 1;
const DONE: u8 = 2;
const WITHDRAWN: u8 = 3;

/// A command submitted to a datapath thread: its result, or its fate.
pub(crate) struct Submitted<R> {
    state: Arc<AtomicU8>,
    /// The command itself, until the thread runs it or it is withdrawn
    /// (then dropped here: whatever it holds, a port being added, is
    /// released at once, not when the thread resumes).
    payload: Arc<Mutex<Option<Command>>>,
    result: Receiver<R>,
}

impl<R> std::fmt::Debug for Submitted<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Submitted").field("state", &self.state.load(Ordering::Relaxed)).finish_non_exhaustive()
    }
}

impl<R> Submitted<R> {
    /// Waits until `deadline` for the result. `Ok(None)` if the deadline
    /// passed; `Err` if the thread is gone.
    pub(crate) fn wait(&self, deadline: Instant) -> Result<Option<R>, ()> {
        // A running thread answers in microseconds: look for a while
        // before paying for a sleep and a wake-up.
        let spin_until = Instant::now() + Duration::from_micros(20);
        while Instant::now() < spin_until {
            match self.result.try_recv() {
                Ok(r) => return Ok(Some(r)),
                Err(TryRecvError::Disconnected) => return Err(()),
                Err(TryRecvError::Empty) => std::hint::spin_loop(),
            }
        }
        match self.result.recv_deadline(deadline) {
            Ok(r) => Ok(Some(r)),
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => Err(()),
        }
    }

    /// Withdraws the command if the thread has not taken it yet: true if
    /// it will never run, false if the thread is running it or has run it.
    pub(crate) fn withdraw(&self) -> bool {
        match self.state.compare_exchange(QUEUED, WITHDRAWN, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                drop(self.payload.lock().unwrap_or_else(|e| e.into_inner()).take());
                true
            }
            Err(state) => state == WITHDRAWN,
        }
    }
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
        on_failure: FailureHook,
    ) -> Result<Self> {
        let poll = mio::Poll::new().map_err(|e| Error::io("epoll_create", e))?;
        let waker = mio::Waker::new(poll.registry(), WAKE_TOKEN).map_err(|e| Error::io("eventfd", e))?;
        dp.set_registry(poll.registry().try_clone().map_err(|e| Error::io("epoll dup", e))?);
        let wakeup = Arc::new(Wakeup::new(Some(waker)));
        let perf = dp.perf();
        let (tx, rx) = crossbeam::channel::unbounded();
        let w = wakeup.clone();
        let failure = Arc::new(Mutex::new(None));
        let (f, thread_name) = (failure.clone(), name.clone());
        let join = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                if let Some(cpu) = cpu {
                    // Best effort: an unavailable CPU leaves the thread
                    // unpinned rather than stopping the switch.
                    let _ = crate::sys::pin_current_thread(cpu);
                }
                // A panic (a port's bug, a broken invariant) ends this
                // thread only: it is recorded for every later call to
                // report, and `on_failure` is told.
                let run =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(dp, rx, w, poll, clock, policy)));
                if let Err(payload) = run {
                    let why = panic_message(&*payload);
                    *f.lock().unwrap_or_else(|e| e.into_inner()) = Some(format!("panicked: {why}"));
                    on_failure(&thread_name, &format!("panicked: {why}"));
                }
            })
            .map_err(|e| Error::io("thread spawn", e))?;
        Ok(DatapathThread { name, commands: tx, wakeup, failure, join: Some(join), perf })
    }

    /// The thread's cycle and burst counters.
    pub(crate) fn perf(&self) -> &PmdCounters {
        &self.perf
    }

    pub(crate) fn wakeup(&self) -> Arc<Wakeup> {
        self.wakeup.clone()
    }

    /// The thread's name (`vswitch-pmd0`, ...).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Why the thread stopped, if it failed.
    pub(crate) fn failure(&self) -> Option<String> {
        self.failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The error a call gets once the thread is gone. A thread that is
    /// panicking drops its channels while it unwinds, a moment before its
    /// failure is recorded: wait that moment, so the caller that made it
    /// fail learns why.
    pub(crate) fn gone(&self) -> Error {
        let deadline = Instant::now() + Duration::from_millis(500);
        loop {
            if let Some(why) = self.failure() {
                return Error::DatapathFailed { thread: self.name.clone(), why };
            }
            if self.join.as_ref().is_none_or(|j| j.is_finished()) || Instant::now() >= deadline {
                return self
                    .failure()
                    .map_or(Error::Unavailable, |why| Error::DatapathFailed { thread: self.name.clone(), why });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Queues `f` to run on the datapath between bursts.
    pub(crate) fn submit<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Datapath) -> R + Send + 'static,
    ) -> Result<Submitted<R>> {
        let (tx, rx) = crossbeam::channel::bounded(1);
        let state = Arc::new(AtomicU8::new(QUEUED));
        let job: Command = Box::new(move |dp| {
            let _ = tx.send(f(dp));
        });
        let payload = Arc::new(Mutex::new(Some(job)));
        let (s, p) = (state.clone(), payload.clone());
        self.commands
            .send(Message::Run(Box::new(move |dp| {
                if s.compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire).is_ok() {
                    let job = p.lock().unwrap_or_else(|e| e.into_inner()).take();
                    if let Some(job) = job {
                        job(dp);
                    }
                    s.store(DONE, Ordering::Release);
                }
            })))
            .map_err(|_| self.gone())?;
        self.wakeup.notify();
        Ok(Submitted { state, payload, result: rx })
    }
}

/// The text of a panic's payload.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

impl DatapathThread {
    /// Stops the thread, waiting at most `timeout` for it: true if it
    /// stopped (and was joined), false if it is left running.
    pub(crate) fn stop(mut self, timeout: Duration) -> bool {
        let _ = self.commands.send(Message::Stop);
        self.wakeup.notify();
        let deadline = Instant::now() + timeout;
        let Some(j) = self.join.take() else { return true };
        while !j.is_finished() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = j.join();
        true
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
    let perf = dp.perf();
    loop {
        loop {
            match commands.try_recv() {
                Ok(Message::Run(f)) => {
                    f(&mut dp);
                    // Control calls come in runs (a script of add-flow
                    // calls): keep spinning for the next one rather than
                    // paying a wake-up for each.
                    last_work = Instant::now();
                }
                Ok(Message::Stop) | Err(TryRecvError::Disconnected) => return,
                Err(TryRecvError::Empty) => break,
            }
        }
        let start = crate::sys::cycles();
        let received = dp.poll(clock.now_ms());
        perf.iteration(crate::sys::cycles().wrapping_sub(start), received);
        if received > 0 {
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
            let start = crate::sys::cycles();
            std::thread::yield_now();
            perf.idle(crate::sys::cycles().wrapping_sub(start));
            continue;
        }
        wakeup.set_sleeping(true);
        if !dp.rx_pending() && commands.is_empty() {
            // An error here (EINTR) just means another turn of the loop.
            let start = crate::sys::cycles();
            let _ = poll.poll(&mut events, Some(HOUSEKEEPING));
            perf.slept(crate::sys::cycles().wrapping_sub(start));
        }
        wakeup.set_sleeping(false);
        last_work = Instant::now() - spin;
    }
}
