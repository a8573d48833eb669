//! What a runtime embedding the switch relies on (issue 15): a port whose
//! code panics is taken down alone and reported; events arrive in order;
//! memory ports wake an epoll loop and tokio tasks, and carry TCP between
//! smoltcp hosts driven from tokio.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam::channel::{Receiver, Sender};
use vswitch_core::events::{Event, Events};
use vswitch_core::packet::PacketPool;
use vswitch_core::port::upkeep::Upkeep;
use vswitch_core::port::{Port, TxOutcome};
use vswitch_core::{DropReason, MemoryPortHandle, Packet, PortConfig, PortState, Switch};
use vswitch_tests::{frame, mac, recv_n};

const WAIT: Duration = Duration::from_secs(5);

/// Where a [`Faulty`] port panics once armed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Rx,
    Tx,
    Upkeep,
}

/// A custom port that works until its fault is armed, then panics where
/// it is told to. It receives what the test pushes into `inbound` and
/// hands what the switch sends it to `outbound`.
#[derive(Debug)]
struct Faulty {
    fault: Fault,
    armed: Arc<AtomicBool>,
    inbound: Receiver<Vec<u8>>,
    outbound: Sender<Vec<u8>>,
}

struct FaultyUpkeep(Arc<AtomicBool>);

impl Upkeep for FaultyUpkeep {
    fn run(&mut self, _now_ms: u64) {
        if self.0.load(Ordering::Relaxed) {
            panic!("boom in upkeep");
        }
    }
}

impl Port for Faulty {
    fn kind(&self) -> &'static str {
        "faulty"
    }

    fn rx_burst(&mut self, batch: &mut Vec<Packet>, max: usize, pool: &mut PacketPool) -> usize {
        let mut n = 0;
        while n < max {
            let Ok(f) = self.inbound.try_recv() else { break };
            if self.fault == Fault::Rx && self.armed.load(Ordering::Relaxed) {
                panic!("boom in rx");
            }
            let mut p = pool.get();
            p.set_frame(&f);
            batch.push(p);
            n += 1;
        }
        n
    }

    fn tx_burst(&mut self, batch: &mut Vec<Packet>, pool: &mut PacketPool) -> TxOutcome {
        if self.fault == Fault::Tx && self.armed.load(Ordering::Relaxed) {
            // It takes the burst before it fails: the switch still counts it.
            let taken = std::mem::take(batch);
            assert!(!taken.is_empty());
            panic!("boom in tx");
        }
        let mut out = TxOutcome::default();
        for p in batch.drain(..) {
            out.sent += 1;
            out.sent_bytes += p.len() as u64;
            let _ = self.outbound.send(p.data().to_vec());
            pool.put(p);
        }
        out
    }

    fn rx_pending(&self) -> bool {
        !self.inbound.is_empty()
    }

    fn upkeep(&mut self) -> Option<Box<dyn Upkeep>> {
        (self.fault == Fault::Upkeep).then(|| Box::new(FaultyUpkeep(self.armed.clone())) as Box<dyn Upkeep>)
    }
}

/// A [`Faulty`] port and the test's ends of it.
struct FaultyEnds {
    armed: Arc<AtomicBool>,
    inbound: Sender<Vec<u8>>,
    outbound: Receiver<Vec<u8>>,
}

fn faulty(fault: Fault) -> (Box<dyn Port>, FaultyEnds) {
    let (in_tx, in_rx) = crossbeam::channel::unbounded();
    let (out_tx, out_rx) = crossbeam::channel::unbounded();
    let armed = Arc::new(AtomicBool::new(false));
    let port = Faulty { fault, armed: armed.clone(), inbound: in_rx, outbound: out_tx };
    (Box::new(port), FaultyEnds { armed, inbound: in_tx, outbound: out_rx })
}

/// Events until `want` matches one (returned with those before it).
fn until(events: &Events, want: impl Fn(&Event) -> bool) -> Vec<Event> {
    let deadline = Instant::now() + WAIT;
    let mut seen = Vec::new();
    while let Some(e) = events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
        let done = want(&e);
        seen.push(e);
        if done {
            return seen;
        }
    }
    panic!("the awaited event did not come; saw {seen:?}");
}

fn is_port_failed(e: &Event, name: &str) -> bool {
    matches!(e, Event::PortFailed { port, .. } if port == name)
}

/// `n` unicast frames a -> b, all delivered.
fn forwards(a: &MemoryPortHandle, b: &MemoryPortHandle, n: u32) {
    for seq in 0..n {
        a.send_frame(&frame(mac(2), mac(1), seq)).unwrap();
    }
    assert_eq!(recv_n(b, n as usize, WAIT).len(), n as usize, "a -> b still forwards");
}

fn a_failing_port_is_taken_down_alone(fault: Fault, threads: usize) {
    let sw = Switch::builder().pmd_threads(threads).build().unwrap();
    let events = sw.subscribe().unwrap();
    sw.add_bridge("br0").unwrap();
    let a = sw.add_memory_port("br0", "a", PortConfig::default()).unwrap();
    let b = sw.add_memory_port("br0", "b", PortConfig::default()).unwrap();
    let (port, bad) = faulty(fault);
    sw.add_port("br0", "bad", port, PortConfig::default()).unwrap();
    // Learn both hosts: b answers a's flood.
    a.send_frame(&frame(mac(2), mac(1), 0)).unwrap();
    assert_eq!(recv_n(&b, 1, WAIT).len(), 1);
    assert!(bad.outbound.recv_timeout(WAIT).is_ok(), "the flood reached the custom port while it worked");
    b.send_frame(&frame(mac(1), mac(2), 0)).unwrap();
    assert_eq!(recv_n(&a, 1, WAIT).len(), 1);
    assert!(sw.health().is_ok());

    bad.armed.store(true, Ordering::Relaxed);
    match fault {
        // A broadcast is flooded to it: its tx_burst panics.
        Fault::Tx => a.send_frame(&frame(mac(0xffff), mac(1), 1)).unwrap(),
        Fault::Rx => {
            bad.inbound.send(frame(mac(1), mac(3), 1)).unwrap();
            sw.port_wakeup("bad").unwrap().notify();
        }
        // The slow-path thread runs it within 100 ms.
        Fault::Upkeep => {}
    }
    let seen = until(&events, |e| is_port_failed(e, "bad"));
    let Some(Event::PortFailed { why, .. }) = seen.last() else { unreachable!() };
    let expected = match fault {
        Fault::Tx => "tx_burst panicked: boom in tx",
        Fault::Rx => "rx_burst panicked: boom in rx",
        Fault::Upkeep => "upkeep panicked: boom in upkeep",
    };
    assert_eq!(why, expected);
    // The datapath marks its link down after it.
    until(&events, |e| matches!(e, Event::LinkChanged { port, up: false, .. } if port == "bad"));
    if fault == Fault::Tx {
        let s = sw.stats();
        let d = &s.port("bad").unwrap().drops;
        assert_eq!(d[&DropReason::PortFailed], 1, "the flood frame the port took as it panicked is counted");
    }

    let health = sw.health();
    assert!(!health.is_ok());
    let h = health.port("bad").unwrap();
    assert_eq!((h.state, h.why.as_deref()), (PortState::Failed, Some(expected)));
    assert!(health.threads.iter().all(|t| t.failure.is_none()), "no datapath thread failed: {:?}", health.threads);
    assert_eq!(health.port("a").unwrap().state, PortState::Up);
    assert_eq!(sw.stats().port("bad").unwrap().failure.as_deref(), Some(expected));

    // The others forward, unicast and flood; the failed port gets
    // nothing more, counted.
    forwards(&a, &b, 100);
    a.send_frame(&frame(mac(0xffff), mac(1), 2)).unwrap();
    assert_eq!(recv_n(&b, 1, WAIT).len(), 1);
    let deadline = Instant::now() + WAIT;
    let refused = || {
        let s = sw.stats();
        let d = &s.port("bad").unwrap().drops;
        d[&DropReason::PortFailed] + d[&DropReason::LinkDown]
    };
    while refused() == 0 {
        assert!(Instant::now() < deadline, "the flood to the failed port was counted as a drop");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(bad.outbound.try_recv().is_err(), "nothing reached the failed port");
    // Changes are still taken.
    sw.add_flow("br0", "priority=0,actions=NORMAL").unwrap();

    // Removed and added again, it works.
    sw.del_port("bad").unwrap();
    until(&events, |e| matches!(e, Event::PortRemoved { port, .. } if port == "bad"));
    let (port, good) = faulty(fault);
    sw.add_port("br0", "bad", port, PortConfig::default()).unwrap();
    until(&events, |e| matches!(e, Event::PortAdded { port, .. } if port == "bad"));
    assert!(sw.health().is_ok(), "{:?}", sw.health());
    a.send_frame(&frame(mac(0xffff), mac(1), 3)).unwrap();
    assert!(good.outbound.recv_timeout(WAIT).is_ok(), "the re-added port receives floods");
    good.inbound.send(frame(mac(1), mac(3), 4)).unwrap();
    sw.port_wakeup("bad").unwrap().notify();
    assert_eq!(recv_n(&a, 1, WAIT).len(), 1, "and what it sends is switched");
}

#[test]
fn a_port_panicking_in_tx_is_taken_down_alone() {
    a_failing_port_is_taken_down_alone(Fault::Tx, 1);
}

#[test]
fn a_port_panicking_in_rx_is_taken_down_alone() {
    a_failing_port_is_taken_down_alone(Fault::Rx, 1);
}

#[test]
fn a_port_whose_upkeep_panics_is_taken_down_alone() {
    a_failing_port_is_taken_down_alone(Fault::Upkeep, 1);
}

#[test]
fn a_port_panicking_on_another_thread_is_taken_down_on_all() {
    // Two datapath threads: the port is received from by one and sent to
    // by either.
    a_failing_port_is_taken_down_alone(Fault::Tx, 2);
}

#[test]
fn events_tell_ports_links_and_moves_in_order() {
    let sw = Switch::builder().build().unwrap();
    let events = sw.subscribe().unwrap();
    sw.add_bridge("br0").unwrap();
    let a = sw.add_memory_port("br0", "a", PortConfig::default()).unwrap();
    let b = sw.add_memory_port("br0", "b", PortConfig::default()).unwrap();
    let mut all = Vec::new();
    a.set_link_up(false);
    all.extend(until(&events, |e| matches!(e, Event::LinkChanged { up: false, .. })));
    a.set_link_up(true);
    all.extend(until(&events, |e| matches!(e, Event::LinkChanged { up: true, .. })));
    // The same source address from a, then from b.
    a.send_frame(&frame(mac(9), mac(1), 0)).unwrap();
    assert_eq!(recv_n(&b, 1, WAIT).len(), 1);
    b.send_frame(&frame(mac(9), mac(1), 1)).unwrap();
    assert_eq!(recv_n(&a, 1, WAIT).len(), 1);
    all.extend(until(&events, |e| matches!(e, Event::MacMoved { .. })));
    sw.del_port("a").unwrap();
    all.extend(until(&events, |e| matches!(e, Event::PortRemoved { .. })));
    assert_eq!(events.missed(), 0);
    assert_eq!(
        all,
        vec![
            Event::PortAdded { bridge: "br0".into(), port: "a".into(), port_no: 1, kind: "memory".into() },
            Event::PortAdded { bridge: "br0".into(), port: "b".into(), port_no: 2, kind: "memory".into() },
            Event::LinkChanged { bridge: "br0".into(), port: "a".into(), port_no: 1, up: false },
            Event::LinkChanged { bridge: "br0".into(), port: "a".into(), port_no: 1, up: true },
            Event::MacMoved { bridge: "br0".into(), mac: mac(1), vlan: 0, from: 1, to: 2 },
            Event::PortRemoved { bridge: "br0".into(), port: "a".into(), port_no: 1 },
        ]
    );
    drop(sw);
    drop(b);
    // Dropping the switch removes its last port, told as such; then the
    // subscription ends.
    assert_eq!(
        events.recv_timeout(WAIT),
        Some(Event::PortRemoved { bridge: "br0".into(), port: "b".into(), port_no: 2 })
    );
    assert!(events.recv_timeout(WAIT).is_none() && events.is_closed(), "the subscription ends with the switch");
}

#[test]
fn events_tell_a_veth_link_going_down_and_up() {
    use vswitch_tests::netns::{NetNs, Veth};
    let ns = NetNs::new();
    let veth = Veth::new(&ns, "10.98.0.1/24");
    let sw = Switch::builder().build().unwrap();
    let events = sw.subscribe().unwrap();
    sw.add_bridge("br0").unwrap();
    sw.add_afpacket_port("br0", &veth.host, PortConfig::default()).unwrap();
    let is = |up: bool| {
        let name = veth.host.clone();
        move |e: &Event| matches!(e, Event::LinkChanged { port, up: u, .. } if *port == name && *u == up)
    };
    let mut all = until(&events, |e| matches!(e, Event::PortAdded { .. }));
    // The peer going down takes the carrier of the switch's end with it.
    ns.run(&["ip", "link", "set", &veth.inner, "down"]);
    all.extend(until(&events, is(false)));
    ns.run(&["ip", "link", "set", &veth.inner, "up"]);
    all.extend(until(&events, is(true)));
    assert_eq!(sw.health().port(&veth.host).unwrap().state, PortState::Up);
    sw.del_port(&veth.host).unwrap();
    all.extend(until(&events, |e| matches!(e, Event::PortRemoved { .. })));
    let names: Vec<String> = all
        .iter()
        .map(|e| match e {
            Event::PortAdded { .. } => "added".to_string(),
            Event::LinkChanged { up, .. } => format!("link {}", if *up { "up" } else { "down" }),
            Event::PortRemoved { .. } => "removed".to_string(),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(names, ["added", "link down", "link up", "removed"]);
}

/// Whether `fd` reads readable now (a fresh epoll, no wait).
fn readable(fd: std::os::fd::RawFd) -> bool {
    let mut poll = mio::Poll::new().unwrap();
    let mut events = mio::Events::with_capacity(1);
    poll.registry().register(&mut mio::unix::SourceFd(&fd), mio::Token(0), mio::Interest::READABLE).unwrap();
    poll.poll(&mut events, Some(Duration::ZERO)).unwrap();
    events.iter().any(|e| e.is_readable())
}

#[test]
fn the_memory_port_descriptor_wakes_an_epoll_loop() {
    use std::os::fd::AsRawFd;
    let sw = Switch::builder().build().unwrap();
    sw.add_bridge("br0").unwrap();
    let a = sw.add_memory_port("br0", "a", PortConfig::default()).unwrap();
    let b = sw.add_memory_port("br0", "b", PortConfig::default()).unwrap();
    let fd = b.rx_fd().unwrap().as_raw_fd();
    assert!(!readable(fd), "nothing waits yet");
    let mut poll = mio::Poll::new().unwrap();
    poll.registry().register(&mut mio::unix::SourceFd(&fd), mio::Token(7), mio::Interest::READABLE).unwrap();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        for seq in 0..3 {
            a.send_frame(&frame(mac(0xffff), mac(1), seq)).unwrap();
        }
        a
    });
    let mut events = mio::Events::with_capacity(4);
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while got.len() < 3 {
        assert!(Instant::now() < deadline, "woken for {} of 3 frames", got.len());
        poll.poll(&mut events, Some(WAIT)).unwrap();
        assert!(events.iter().any(|e| e.token() == mio::Token(7)), "epoll woke for the port's descriptor");
        while let Some(p) = b.recv() {
            got.push(vswitch_tests::seq_of(p.data()));
        }
    }
    assert_eq!(got, [0, 1, 2]);
    assert!(!readable(fd), "drained: unreadable again");
    let _a = sender.join().unwrap();
    // The send side: readable while the queue towards the switch has room.
    assert!(readable(b.tx_fd().unwrap().as_raw_fd()));
}

#[test]
fn async_memory_ports_wake_tokio_tasks_and_report_removal() {
    use vswitch_core::asyncio::{AsyncEvents, AsyncMemoryPort};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let sw = Switch::builder().build().unwrap();
        let events = AsyncEvents::new(sw.subscribe().unwrap()).unwrap();
        sw.add_bridge("br0").unwrap();
        let a = AsyncMemoryPort::new(sw.add_memory_port("br0", "a", PortConfig::default()).unwrap()).unwrap();
        let b = AsyncMemoryPort::new(sw.add_memory_port("br0", "b", PortConfig::default()).unwrap()).unwrap();
        assert!(matches!(events.recv().await, Some(Event::PortAdded { port, .. }) if port == "a"));
        assert!(matches!(events.recv().await, Some(Event::PortAdded { port, .. }) if port == "b"));
        let waiter = tokio::spawn(async move {
            let p = b.recv().await.unwrap();
            (vswitch_tests::seq_of(p.data()), b)
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        a.send_frame(&frame(mac(0xffff), mac(1), 42)).await.unwrap();
        let (seq, b) = tokio::time::timeout(WAIT, waiter).await.expect("the task was woken").unwrap();
        assert_eq!(seq, 42);
        // A task waiting on a port that is removed is told so.
        let waiter = tokio::spawn(async move { b.recv().await.map(|_| ()) });
        tokio::time::sleep(Duration::from_millis(50)).await;
        sw.del_port("b").unwrap();
        let r = tokio::time::timeout(WAIT, waiter).await.expect("woken by the removal").unwrap();
        assert_eq!(r.unwrap_err().kind(), vswitch_core::ErrorKind::Unavailable);
        assert!(matches!(events.recv().await, Some(Event::PortRemoved { port, .. }) if port == "b"));
        drop(a);
    });
}

#[allow(dead_code)]
#[path = "../examples/tokio_service.rs"]
mod tokio_service;

/// The tokio example as a test: two smoltcp hosts as tokio tasks on async
/// memory ports move TCP data through the switch with no thread of their
/// own, while a tenant's buggy port is taken down alone.
#[test]
fn async_memory_ports_carry_tcp_between_smoltcp_hosts_on_tokio() {
    let total = 4 << 20;
    let report = tokio_service::run(total).expect("the service ran");
    assert_eq!(report.bytes, total, "every byte arrived and matched");
    assert_eq!(report.host_drops, 0);
    let why = "tx_burst panicked: tenant bug: unexpected frame";
    assert_eq!(report.failure.as_deref(), Some(why));
    assert!(report.shutdown.is_ok(), "{:?}", report.shutdown);
    // The log, in order, for the buggy port; and every port's removal.
    let buggy: Vec<String> = report
        .events
        .iter()
        .filter_map(|e| match e {
            Event::PortAdded { port, .. } if port == "buggy" => Some("added".to_string()),
            Event::PortFailed { port, why, .. } if port == "buggy" => Some(format!("failed: {why}")),
            Event::LinkChanged { port, up: false, .. } if port == "buggy" => Some("down".to_string()),
            Event::PortRemoved { port, .. } if port == "buggy" => Some("removed".to_string()),
            _ => None,
        })
        .collect();
    assert_eq!(buggy, ["added".to_string(), format!("failed: {why}"), "down".into(), "removed".into()]);
    let removed = report.events.iter().filter(|e| matches!(e, Event::PortRemoved { .. })).count();
    assert_eq!(removed, 3, "{:?}", report.events);
}

#[test]
fn memory_ports_enforce_their_mtu_both_ways() {
    let sw = Switch::builder().build().unwrap();
    sw.add_bridge("br0").unwrap();
    let a = sw.add_memory_port("br0", "a", PortConfig::default()).unwrap();
    let mut b = sw.add_memory_port("br0", "b", PortConfig::default()).unwrap();
    assert_eq!(b.set_mtu(67).unwrap_err().kind(), vswitch_core::ErrorKind::InvalidArgument);
    b.set_mtu(1000).unwrap();
    let sized = |len: usize, seq: u32| {
        let mut f = frame(mac(0xffff), mac(1), seq);
        f.resize(len, 0);
        f
    };
    // To b: 1018 bytes fit (1000 + Ethernet + a VLAN tag), 1019 do not.
    a.send_frame(&sized(1018, 1)).unwrap();
    a.send_frame(&sized(1019, 2)).unwrap();
    a.send_frame(&sized(1018, 3)).unwrap();
    let got: Vec<u32> = recv_n(&b, 2, WAIT).iter().map(|p| vswitch_tests::seq_of(p.data())).collect();
    assert_eq!(got, [1, 3], "the frame above b's MTU was not delivered, the others in order");
    // From b: the same limit.
    b.send_frame(&sized(1019, 4)).unwrap();
    b.send_frame(&sized(1018, 5)).unwrap();
    let got: Vec<u32> = recv_n(&a, 1, WAIT).iter().map(|p| vswitch_tests::seq_of(p.data())).collect();
    assert_eq!(got, [5]);
    let deadline = Instant::now() + WAIT;
    loop {
        let s = sw.stats();
        let d = &s.port("b").unwrap().drops;
        // tx: one to b; rx: one from b (reported at housekeeping).
        if d[&DropReason::TooBig] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "too_big drops on b: {d:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_closed_handle_reads_link_down_and_shutdown_reports_what_failed() {
    let sw = Switch::builder().build().unwrap();
    sw.add_bridge("br0").unwrap();
    let a = sw.add_memory_port("br0", "a", PortConfig::default()).unwrap();
    let b = sw.add_memory_port("br0", "b", PortConfig::default()).unwrap();
    let events = sw.subscribe().unwrap();
    b.close();
    until(&events, |e| matches!(e, Event::LinkChanged { port, up: false, .. } if port == "b"));
    assert_eq!(sw.health().port("b").unwrap().state, PortState::LinkDown);
    a.send_frame(&frame(mac(0xffff), mac(1), 0)).unwrap();
    let deadline = Instant::now() + WAIT;
    while sw.stats().port("b").unwrap().drops[&DropReason::LinkDown] == 0 {
        assert!(Instant::now() < deadline, "the flood to the closed port is counted link_down");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(sw.shutdown().is_ok(), "a clean switch shuts down cleanly");
    assert!(a.is_detached());

    let sw = Switch::builder().build().unwrap();
    sw.add_bridge("br0").unwrap();
    sw.add_port("br0", "bad", Box::new(PanicsOnDrop::default()), PortConfig::default()).unwrap();
    let kept = sw.add_memory_port("br0", "kept", PortConfig::default()).unwrap();
    let e = sw.shutdown().unwrap_err();
    assert!(e.to_string().contains("closing a port panicked: boom in drop"), "{e}");
    assert!(kept.is_detached(), "the other ports were torn down all the same");
}

/// Dropping a switch without `shutdown` tears it down the same way: every
/// port is told as removed and closed (here, not on a datapath thread),
/// even one whose closing panics, and the threads stop.
#[test]
fn dropping_a_switch_removes_and_closes_every_port_like_shutdown() {
    let bad = PanicsOnDrop::default();
    let closed_on = bad.closed_on.clone();
    let (events, kept) = std::thread::Builder::new()
        .name("dropper".into())
        .spawn(move || {
            let sw = Switch::builder().pmd_threads(2).build().unwrap();
            sw.add_bridge("br0").unwrap();
            sw.add_bridge("br1").unwrap();
            sw.add_port("br0", "bad", Box::new(bad), PortConfig::default()).unwrap();
            let kept = sw.add_memory_port("br1", "kept", PortConfig::default()).unwrap();
            let events = sw.subscribe().unwrap();
            drop(sw);
            (events, kept)
        })
        .unwrap()
        .join()
        .expect("dropping the switch does not panic, whatever its ports do");
    assert!(kept.is_detached(), "the memory port was torn down");
    let on = closed_on.lock().unwrap().clone();
    assert_eq!(on.as_deref(), Some("dropper"), "closed on the dropping thread");
    let mut removed = Vec::new();
    while let Some(e) = events.try_recv() {
        if let Event::PortRemoved { port, .. } = e {
            removed.push(port);
        }
    }
    removed.sort();
    assert_eq!(removed, ["bad", "kept"], "each port told as removed");
}

/// A port whose closing panics; it records the name of the thread that
/// closed it first.
#[derive(Debug, Default)]
struct PanicsOnDrop {
    closed_on: Arc<std::sync::Mutex<Option<String>>>,
}

impl Port for PanicsOnDrop {
    fn kind(&self) -> &'static str {
        "panics-on-drop"
    }
    fn rx_burst(&mut self, _: &mut Vec<Packet>, _: usize, _: &mut PacketPool) -> usize {
        0
    }
    fn tx_burst(&mut self, batch: &mut Vec<Packet>, pool: &mut PacketPool) -> TxOutcome {
        TxOutcome::drop_all(batch, pool, DropReason::TxError)
    }
}

impl Drop for PanicsOnDrop {
    fn drop(&mut self) {
        let on = std::thread::current().name().map(str::to_string);
        if let Ok(mut c) = self.closed_on.lock() {
            c.get_or_insert(on.unwrap_or_default());
        }
        panic!("boom in drop");
    }
}
