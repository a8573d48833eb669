//! Datapath isolation, as root: slow-path work on one port (its interface
//! recreated and reattached, over and over) never stalls the other ports
//! on the same datapath thread.

use std::time::{Duration, Instant};

use vswitch_core::{PortConfig, Switch};
use vswitch_tests::netns::{NetNs, Veth};

/// While an AF_XDP port's interface is deleted and recreated over and over
/// (each time attached anew: an XDP program loaded, sockets bound, a bind
/// that may retry while the old socket is torn down), traffic between two
/// in-process ports on the same datapath thread goes on with nothing lost:
/// the reattaching is done on the slow-path thread, never on the datapath
/// thread.
#[test]
fn a_reattaching_port_does_not_stall_the_others_on_its_thread() {
    use vswitch_tests::{frame, mac, seq_of};
    const QUEUE: usize = 256;
    // The datapath thread gets CPU 1 to itself, as a deployment pins its
    // poll-mode threads; this test's threads (sender, receiver, the
    // flapper and the `ip` commands it runs) and the switch's slow-path
    // thread inherit CPU 0 from this thread. Otherwise, on two cores, the
    // scheduler alone can hold the datapath thread off for longer than
    // a's queue lasts, and the test would measure the scheduler.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(cpus >= 2, "this test needs two CPUs (one for the datapath thread); the machine has {cpus}");
    let me = std::fs::read_link("/proc/thread-self").expect("/proc/thread-self");
    let tid = me.file_name().and_then(|t| t.to_str()).expect("a thread id").to_string();
    let pinned = std::process::Command::new("taskset").args(["-p", "-c", "0", &tid]).output().expect("taskset");
    assert!(pinned.status.success(), "taskset: {}", String::from_utf8_lossy(&pinned.stderr));
    let ns = std::sync::Arc::new(NetNs::new());
    let cidr = "10.98.0.1/24".to_string();
    let first = Veth::new(&ns, &cidr);
    let host = first.host.clone();
    let sw = std::sync::Arc::new(Switch::builder().memory_queue_len(QUEUE).pin_cpus(&[1]).build().unwrap());
    sw.add_bridge("br0").unwrap();
    sw.add_afxdp_port("br0", &host, PortConfig::default()).unwrap();
    let a = sw.add_memory_port("br0", "a", PortConfig::default()).unwrap();
    let b = sw.add_memory_port("br0", "b", PortConfig::default()).unwrap();
    // b is learned, so a's frames to it are unicast (never flooded to the
    // flapping port).
    b.send_frame(&frame(mac(0xffff), mac(2), 0)).unwrap();
    assert!(!vswitch_tests::recv_n(&a, 1, Duration::from_secs(2)).is_empty());

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (s, ns2) = (stop.clone(), ns.clone());
    let flapper = std::thread::spawn(move || {
        let mut current = Some(first);
        let mut flaps = 0;
        while !s.load(std::sync::atomic::Ordering::Relaxed) {
            drop(current.take());
            std::thread::sleep(Duration::from_millis(30));
            current = Some(Veth::named(&host, &ns2, &cidr));
            std::thread::sleep(Duration::from_millis(120));
            flaps += 1;
        }
        (flaps, current)
    });

    let receiver = std::thread::spawn(move || {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while got.len() < 20_000 && Instant::now() < deadline {
            // (The recreated veth's own IPv6 chatter is flooded here too.)
            if let Some(p) = b.recv_timeout(Duration::from_millis(200))
                && p.data()[6..14] == frame(mac(2), mac(1), 0)[6..14]
            {
                got.push(seq_of(p.data()));
            }
        }
        // The handle is kept: a closed one reads link down, and what is
        // flooded to b afterwards would count as link_down.
        (got, b)
    });
    // 20,000 frames, ten every millisecond: a stall of the datapath
    // thread longer than QUEUE frames' time (about 25 ms) overflows a's
    // queue. (Run on its own, not beside the other kernel tests, so that
    // nothing else competes for the two cores.)
    let start = Instant::now();
    let mut refused = 0;
    for ms in 0..2_000u32 {
        for k in 0..10 {
            if a.send_frame(&frame(mac(2), mac(1), ms * 10 + k + 1)).is_err() {
                refused += 1;
            }
        }
        if let Some(wait) = Duration::from_millis(ms as u64 + 1).checked_sub(start.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    let (got, _b) = receiver.join().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (flaps, last) = flapper.join().unwrap();
    assert!(flaps >= 5, "the interface was recreated {flaps} times");
    // A stall of the datapath thread fills a's queue: nothing refused
    // means it kept forwarding. What it forwarded either reached this
    // test's receiver or, if that thread was starved of CPU (two cores,
    // one busy-polling), found b's queue full: counted on b, not lost
    // unseen, and not the datapath's doing.
    assert_eq!(refused, 0, "the datapath thread kept taking a's frames");
    let stats = sw.stats();
    let b_stats = stats.port("b").expect("port b");
    let queue_full = b_stats.drops[&vswitch_core::DropReason::TxQueueFull];
    let other_drops = b_stats.total_drops() - queue_full;
    assert_eq!(other_drops, 0, "no other drop on b: {:?}", b_stats.drops);
    // (b's queue also holds the new veths' own chatter, flooded to it.)
    assert!(got.len() as u64 + queue_full >= 20_000, "every frame arrived or is counted at b's full queue");
    if queue_full > 0 {
        eprintln!("note: the receiving thread fell behind; {queue_full} frames met b's full queue");
    }
    let disorder: Vec<_> = got.windows(2).filter(|w| w[0] >= w[1]).take(5).collect();
    assert!(disorder.is_empty(), "in order: {disorder:?}");
    // And the flapping port came back each time: it is up on its last veth.
    let last = last.expect("a veth at the end");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sw.stats().port(&last.host).is_some_and(|p| p.link_up) {
        assert!(Instant::now() < deadline, "reattached after the last flap");
        std::thread::sleep(Duration::from_millis(20));
    }
}
