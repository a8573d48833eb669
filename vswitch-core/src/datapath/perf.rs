//! What a datapath thread spends its cycles on (`vswitch-ctl pmd-stats`,
//! after Open vSwitch's `dpif-netdev/pmd-perf-show`).
//!
//! Each thread counts, in TSC cycles on x86_64 (nanoseconds elsewhere):
//! iterations of its loop that received packets (*busy*) and those that
//! received none (*idle*: polling, yielding), the time it slept in epoll,
//! and the packets and bursts it received, with a histogram of burst
//! sizes. Busy cycles over packets is the switch's own per-packet cost
//! (receive, classify, act, transmit, including the system calls the
//! ports make, which are the switch's work too); the generator cannot hide
//! it the way it hides a forwarding rate it cannot exceed.
//!
//! The counters are running totals written by their thread alone (a plain
//! store of each new total, no atomic read-modify-write on the datapath),
//! read by anyone. Clearing keeps a baseline on the reading side.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Burst-size buckets: 1, 2-3, 4-7, 8-15, 16-31, 32 and more.
const BATCH_BUCKETS: usize = 6;

/// One datapath thread's running totals.
#[derive(Debug, Default)]
pub(crate) struct PmdCounters {
    busy_cycles: AtomicU64,
    idle_cycles: AtomicU64,
    sleep_cycles: AtomicU64,
    busy_iterations: AtomicU64,
    idle_iterations: AtomicU64,
    sleeps: AtomicU64,
    packets: AtomicU64,
    batches: AtomicU64,
    histogram: [AtomicU64; BATCH_BUCKETS],
}

/// Adds `n` to a counter only this thread writes.
#[inline(always)]
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl PmdCounters {
    /// An iteration of the loop that took `cycles` and received `packets`.
    #[inline]
    pub(crate) fn iteration(&self, cycles: u64, packets: usize) {
        if packets > 0 {
            bump(&self.busy_cycles, cycles);
            bump(&self.busy_iterations, 1);
        } else {
            bump(&self.idle_cycles, cycles);
            bump(&self.idle_iterations, 1);
        }
    }

    /// Time spent idle between iterations (yielding the CPU).
    #[inline]
    pub(crate) fn idle(&self, cycles: u64) {
        bump(&self.idle_cycles, cycles);
    }

    /// A sleep in epoll that lasted `cycles`.
    pub(crate) fn slept(&self, cycles: u64) {
        bump(&self.sleep_cycles, cycles);
        bump(&self.sleeps, 1);
    }

    /// A burst of `n` packets received from one port.
    #[inline]
    pub(crate) fn burst(&self, n: usize) {
        bump(&self.packets, n as u64);
        bump(&self.batches, 1);
        let bucket = (usize::BITS - 1 - n.max(1).leading_zeros()) as usize;
        bump(&self.histogram[bucket.min(BATCH_BUCKETS - 1)], 1);
    }

    /// The totals as they are now, for thread `thread`.
    pub(crate) fn snapshot(&self, thread: &str) -> PmdStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PmdStats {
            thread: thread.to_string(),
            cycles_per_second: crate::sys::cycles_per_second(),
            busy_cycles: get(&self.busy_cycles),
            idle_cycles: get(&self.idle_cycles),
            sleep_cycles: get(&self.sleep_cycles),
            busy_iterations: get(&self.busy_iterations),
            idle_iterations: get(&self.idle_iterations),
            sleeps: get(&self.sleeps),
            packets: get(&self.packets),
            batches: get(&self.batches),
            batch_histogram: std::array::from_fn(|i| get(&self.histogram[i])),
        }
    }
}

/// A datapath thread's counters since the switch started or since
/// [`crate::Switch::pmd_stats_clear`] (`vswitch-ctl pmd-stats`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct PmdStats {
    /// The thread (`vswitch-pmd0`, ...; `manual` for a switch its embedder
    /// polls).
    pub thread: String,
    /// The rate of the cycle counter (the TSC's, measured at start).
    pub cycles_per_second: u64,
    /// Cycles in iterations that received packets.
    pub busy_cycles: u64,
    /// Cycles in iterations that received nothing (polling before sleep).
    pub idle_cycles: u64,
    /// Cycles asleep in epoll.
    pub sleep_cycles: u64,
    /// Iterations that received packets.
    pub busy_iterations: u64,
    /// Iterations that received nothing.
    pub idle_iterations: u64,
    /// Times the thread went to sleep.
    pub sleeps: u64,
    /// Packets received.
    pub packets: u64,
    /// Bursts received (a port's receive that returned packets).
    pub batches: u64,
    /// Bursts by size (see [`PmdStats::BATCH_LABELS`]).
    pub batch_histogram: [u64; BATCH_BUCKETS],
}

impl PmdStats {
    /// The burst sizes each bucket of `batch_histogram` counts.
    pub const BATCH_LABELS: [&'static str; BATCH_BUCKETS] = ["1", "2-3", "4-7", "8-15", "16-31", "32+"];

    /// Busy cycles per packet received: the switch's cost per packet.
    pub fn cycles_per_packet(&self) -> f64 {
        self.busy_cycles as f64 / self.packets.max(1) as f64
    }

    /// Packets per burst on average.
    pub fn average_batch(&self) -> f64 {
        self.packets as f64 / self.batches.max(1) as f64
    }

    /// The share of the measured time spent in busy iterations, 0 to 1.
    pub fn busy_share(&self) -> f64 {
        let total = self.busy_cycles + self.idle_cycles + self.sleep_cycles;
        self.busy_cycles as f64 / total.max(1) as f64
    }

    /// These totals less an earlier snapshot's (a cleared baseline).
    pub(crate) fn since(&self, base: &PmdStats) -> PmdStats {
        let d = |a: u64, b: u64| a.saturating_sub(b);
        PmdStats {
            thread: self.thread.clone(),
            cycles_per_second: self.cycles_per_second,
            busy_cycles: d(self.busy_cycles, base.busy_cycles),
            idle_cycles: d(self.idle_cycles, base.idle_cycles),
            sleep_cycles: d(self.sleep_cycles, base.sleep_cycles),
            busy_iterations: d(self.busy_iterations, base.busy_iterations),
            idle_iterations: d(self.idle_iterations, base.idle_iterations),
            sleeps: d(self.sleeps, base.sleeps),
            packets: d(self.packets, base.packets),
            batches: d(self.batches, base.batches),
            batch_histogram: std::array::from_fn(|i| d(self.batch_histogram[i], base.batch_histogram[i])),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_land_in_their_buckets() {
        let c = PmdCounters::default();
        for n in [1, 2, 3, 4, 7, 8, 15, 16, 31, 32, 64] {
            c.burst(n);
        }
        let s = c.snapshot("t");
        assert_eq!(s.batch_histogram, [1, 2, 2, 2, 2, 2]);
        assert_eq!(s.packets, 183);
        assert_eq!(s.batches, 11);
    }

    #[test]
    fn iterations_split_busy_from_idle_and_clear_by_baseline() {
        let c = PmdCounters::default();
        c.iteration(1000, 10);
        c.iteration(50, 0);
        c.slept(5000);
        c.burst(10);
        let base = c.snapshot("t");
        assert_eq!((base.busy_cycles, base.idle_cycles, base.sleep_cycles), (1000, 50, 5000));
        assert_eq!(base.cycles_per_packet(), 100.0);
        c.iteration(300, 3);
        c.burst(3);
        let d = c.snapshot("t").since(&base);
        assert_eq!((d.busy_cycles, d.busy_iterations, d.packets, d.idle_cycles), (300, 1, 3, 0));
        assert_eq!(d.cycles_per_packet(), 100.0);
    }
}
