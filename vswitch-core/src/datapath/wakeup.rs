use std::sync::atomic::{AtomicBool, Ordering, fence};

/// How a datapath thread that went to sleep is woken by someone who just
/// queued work for it (a memory port's runtime side, or the control plane).
///
/// The sleeper sets `sleeping`, fences, and re-checks its queues before it
/// blocks; a producer queues, fences, and wakes only if `sleeping` is set.
/// With a full fence on both sides one of them always sees the other, so no
/// wake-up is lost and a busy datapath costs producers one load.
#[derive(Debug)]
pub struct Wakeup {
    sleeping: AtomicBool,
    waker: Option<mio::Waker>,
}

impl Wakeup {
    pub(crate) fn new(waker: Option<mio::Waker>) -> Self {
        Wakeup { sleeping: AtomicBool::new(false), waker }
    }

    /// Called after queueing work: wakes the datapath if it is asleep.
    #[inline]
    pub fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed)
            && let Some(w) = &self.waker
        {
            // A failed eventfd write means a wake-up is already pending.
            let _ = w.wake();
        }
    }

    pub(crate) fn set_sleeping(&self, sleeping: bool) {
        self.sleeping.store(sleeping, Ordering::Relaxed);
        fence(Ordering::SeqCst);
    }
}
