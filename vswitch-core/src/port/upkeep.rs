//! The slow half of a port: work that reads files, opens devices, retries
//! or sleeps, done on the switch's slow-path thread and never on a
//! datapath thread.
//!
//! A port hands the switch its [`Upkeep`] when it is attached
//! ([`Port::upkeep`](super::Port::upkeep)); the slow-path thread runs every
//! upkeep about ten times a second. What an upkeep makes for its port (a
//! device reopened after its interface came back, the link state) goes
//! through a [`Mailbox`]: the upkeep posts, and the port's housekeeping on
//! the datapath thread collects without ever waiting (a `try_lock`). What
//! the port lets go of (the old ring of a vanished interface) goes back
//! through the mailbox, to be closed on the slow-path thread.
//!
//! A port used outside a switch (an embedder driving it by hand) whose
//! upkeep nobody took runs it from its own housekeeping instead.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam::channel::{RecvTimeoutError, Sender};
use crossbeam::queue::SegQueue;

use crate::clock::Clock;
use crate::{Error, Result};

/// How often each upkeep runs.
pub const UPKEEP_INTERVAL: Duration = Duration::from_millis(100);

/// A port's slow-path work (see the [module docs](self)).
pub trait Upkeep: Send {
    /// One round, at `now_ms` on the switch's clock. May block.
    fn run(&mut self, now_ms: u64);
}

/// What an upkeep hands its port, and what the port hands back.
#[derive(Debug)]
pub struct Mailbox<T> {
    /// A replacement for the port's device: `Some(None)` means "let go of
    /// it" (the interface is gone).
    next: Mutex<Option<Option<T>>>,
    retired: SegQueue<T>,
    link_up: AtomicBool,
}

impl<T> Mailbox<T> {
    /// An empty mailbox, the link as given.
    pub fn new(link_up: bool) -> Arc<Mailbox<T>> {
        Arc::new(Mailbox { next: Mutex::new(None), retired: SegQueue::new(), link_up: AtomicBool::new(link_up) })
    }

    /// Posts a replacement (slow side); one the port has not collected yet
    /// is retired.
    pub fn post(&self, device: Option<T>) {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(Some(old)) = next.replace(device) {
            self.retired.push(old);
        }
    }

    /// The posted replacement, if any (datapath side: never waits).
    pub fn collect(&self) -> Option<Option<T>> {
        self.next.try_lock().ok()?.take()
    }

    /// Hands a device the port no longer uses back to be closed on the
    /// slow side (datapath side: lock-free).
    pub fn retire(&self, device: T) {
        self.retired.push(device);
    }

    /// Closes what the port handed back (slow side).
    pub fn close_retired(&self) {
        while self.retired.pop().is_some() {}
    }

    /// Records the link state (slow side).
    pub fn set_link(&self, up: bool) {
        self.link_up.store(up, Ordering::Relaxed);
    }

    /// The link state last recorded.
    pub fn link_up(&self) -> bool {
        self.link_up.load(Ordering::Relaxed)
    }
}

/// A port's slow half until the switch takes it ([`Port::upkeep`]
/// returns [`take`](Self::take)); a port driven by an embedder's own loop,
/// whose slow half nobody took, runs it from its housekeeping
/// ([`run_here`](Self::run_here)).
///
/// [`Port::upkeep`]: super::Port::upkeep
#[derive(Debug)]
pub(crate) struct SlowHalf<U>(Option<U>);

impl<U: Upkeep + 'static> SlowHalf<U> {
    pub(crate) fn new(upkeep: U) -> Self {
        SlowHalf(Some(upkeep))
    }

    /// Runs the slow half if nobody took it.
    pub(crate) fn run_here(&mut self, now_ms: u64) {
        if let Some(u) = self.0.as_mut() {
            u.run(now_ms);
        }
    }

    /// Hands the slow half over, once.
    pub(crate) fn take(&mut self) -> Option<Box<dyn Upkeep>> {
        self.0.take().map(|u| Box::new(u) as Box<dyn Upkeep>)
    }
}

/// Told why, when an upkeep panics (it is then dropped).
pub(crate) type OnPanic = Box<dyn Fn(String) + Send>;

enum Message {
    Add(u64, Box<dyn Upkeep>, OnPanic),
    /// Drop the upkeep, then say so.
    Remove(u64, Sender<()>),
}

/// The switch's slow-path thread: runs every attached port's upkeep.
pub(crate) struct SlowPath {
    tx: Option<Sender<Message>>,
    join: Option<JoinHandle<()>>,
    next_id: Mutex<u64>,
}

impl std::fmt::Debug for SlowPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlowPath").finish_non_exhaustive()
    }
}

impl SlowPath {
    pub(crate) fn spawn(clock: Arc<dyn Clock>) -> Result<SlowPath> {
        let (tx, rx) = crossbeam::channel::unbounded::<Message>();
        let join = std::thread::Builder::new()
            .name("vswitch-slow".into())
            .spawn(move || {
                let mut upkeeps: BTreeMap<u64, (Box<dyn Upkeep>, OnPanic)> = BTreeMap::new();
                let mut next = std::time::Instant::now();
                loop {
                    match rx.recv_deadline(next) {
                        Ok(Message::Add(id, u, on_panic)) => {
                            upkeeps.insert(id, (u, on_panic));
                            run_guarded(&mut upkeeps, id, clock.now_ms());
                        }
                        // Dropped here: whatever the upkeep held is closed
                        // on this thread.
                        Ok(Message::Remove(id, done)) => {
                            drop(upkeeps.remove(&id));
                            let _ = done.send(());
                        }
                        Err(RecvTimeoutError::Timeout) => {
                            let now = clock.now_ms();
                            let ids: Vec<u64> = upkeeps.keys().copied().collect();
                            ids.into_iter().for_each(|id| run_guarded(&mut upkeeps, id, now));
                            next = std::time::Instant::now() + UPKEEP_INTERVAL;
                        }
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
            })
            .map_err(|e| Error::io("thread spawn", e))?;
        Ok(SlowPath { tx: Some(tx), join: Some(join), next_id: Mutex::new(0) })
    }

    /// Starts running `upkeep`; its id, for [`remove`](Self::remove). If
    /// it panics it is dropped and `on_panic` told why; the others go on.
    pub(crate) fn add(&self, upkeep: Box<dyn Upkeep>, on_panic: OnPanic) -> u64 {
        let id = {
            let mut n = self.next_id.lock().unwrap_or_else(|e| e.into_inner());
            *n += 1;
            *n
        };
        if let Some(tx) = &self.tx {
            let _ = tx.send(Message::Add(id, upkeep, on_panic));
        }
        id
    }

    /// Stops running upkeep `id` and drops it; returns once it is gone
    /// (at most after the round it may be in, such as an AF_XDP bind being
    /// retried), so nothing it does can touch an interface a new port
    /// attaches afterwards.
    pub(crate) fn remove(&self, id: u64) {
        if let Some(tx) = &self.tx {
            let (done, wait) = crossbeam::channel::bounded(1);
            if tx.send(Message::Remove(id, done)).is_ok() {
                let _ = wait.recv_timeout(Duration::from_secs(10));
            }
        }
    }
}

/// Runs upkeep `id` once; one that panics is dropped (its own panics as
/// it drops caught too) and its port told why.
fn run_guarded(upkeeps: &mut BTreeMap<u64, (Box<dyn Upkeep>, OnPanic)>, id: u64, now_ms: u64) {
    let Some((u, _)) = upkeeps.get_mut(&id) else { return };
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| u.run(now_ms)));
    if let Err(payload) = run {
        let why = format!("upkeep panicked: {}", crate::datapath::thread::panic_message(&*payload));
        if let Some((u, on_panic)) = upkeeps.remove(&id) {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(u)));
            on_panic(why);
        }
    }
}

impl SlowPath {
    /// Stops the thread and waits for it (the upkeeps it holds are
    /// dropped there); nothing added later runs. Dropping does the same.
    pub(crate) fn stop(&mut self) {
        self.tx = None;
        if let Some(j) = self.join.take() {
            let _ = j.join();
        }
    }
}

impl Drop for SlowPath {
    fn drop(&mut self) {
        self.stop();
    }
}
