//! Kernel ports over veth pairs between network namespaces, as root, the
//! same suite over each backend (AF_PACKET with its ring of frames, its
//! ring of blocks and recvmmsg, AF_XDP): ping both ways,
//! iperf3 TCP with the kernel's default offloads, VLAN isolation, a
//! namespace joining under traffic, an interface deleted under traffic and
//! coming back, attach hygiene.

use std::time::{Duration, Instant};

use vswitch_core::{DropReason, ErrorKind, PortConfig, PortNo, Switch, VlanMode};
use vswitch_tests::netns::{NetNs, Veth, iperf3, is_promiscuous, run};

// (Every kernel socket for packets starts with "AF_".)
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    /// AF_PACKET with the default TPACKET_V2 ring of frames.
    AfPacket,
    /// AF_PACKET with the TPACKET_V3 ring of blocks (`rx_mode=ring`).
    AfPacketBlocks,
    /// AF_PACKET receiving with recvmmsg (`rx_mode=socket`).
    AfPacketSocket,
    AfXdp,
}

impl Backend {
    fn add(self, sw: &Switch, ifname: &str, config: PortConfig) -> vswitch_core::Result<PortNo> {
        match self {
            Backend::AfPacket => sw.add_afpacket_port("br0", ifname, config),
            Backend::AfPacketSocket | Backend::AfPacketBlocks => {
                use vswitch_core::internals::AfPacketPort;
                use vswitch_core::internals::{AfPacketConfig, AfPacketRx};
                let rx_mode = if self == Backend::AfPacketSocket { AfPacketRx::Socket } else { AfPacketRx::Ring };
                let mut cfg = AfPacketConfig::default();
                cfg.rx_mode = rx_mode;
                sw.add_port("br0", ifname, Box::new(AfPacketPort::open(ifname, cfg)?), config)
            }
            Backend::AfXdp => sw.add_afxdp_port("br0", ifname, config),
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Backend::AfPacket | Backend::AfPacketSocket | Backend::AfPacketBlocks => "afpacket",
            Backend::AfXdp => "afxdp",
        }
    }
}

/// Each test, once per backend.
macro_rules! over_backends {
    ($($name:ident),* $(,)?) => {
        mod afpacket {
            $(#[test] fn $name() { super::$name(super::Backend::AfPacket) })*
        }
        mod afxdp {
            $(#[test] fn $name() { super::$name(super::Backend::AfXdp) })*
        }
        mod afpacket_socket {
            $(#[test] fn $name() { super::$name(super::Backend::AfPacketSocket) })*
        }
        mod afpacket_blocks {
            $(#[test] fn $name() { super::$name(super::Backend::AfPacketBlocks) })*
        }
    };
}

#[allow(dead_code)]
#[path = "../examples/tcp_transfer.rs"]
mod tcp_transfer;

over_backends!(
    tcp_from_a_namespace_to_an_in_process_host,
    two_datapath_threads,
    ping_both_ways,
    iperf3_tcp_with_default_offloads,
    vlan_access_ports_isolate_pairs,
    a_namespace_joins_while_traffic_flows,
    interface_deleted_under_traffic_then_recreated,
    attach_hygiene,
);

/// A subnet of its own for each lab (10.99.N.0/24), so tests running in
/// parallel never share addresses.
fn next_subnet() -> u8 {
    static NEXT: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// `n` namespaces, each with a veth into it addressed 10.99.S.(i+1)/24,
/// and a switch with one bridge "br0" attaching the host ends.
struct Lab {
    sw: Switch,
    veths: Vec<Veth>,
    nss: Vec<NetNs>,
    subnet: u8,
}

impl Lab {
    fn new(backend: Backend, n: usize, vlans: &[Option<u16>]) -> Lab {
        Self::with_threads(backend, n, vlans, 1)
    }

    fn with_threads(backend: Backend, n: usize, vlans: &[Option<u16>], threads: usize) -> Lab {
        let subnet = next_subnet();
        let nss: Vec<NetNs> = (0..n).map(|_| NetNs::new()).collect();
        let veths: Vec<Veth> =
            nss.iter().enumerate().map(|(i, ns)| Veth::new(ns, &format!("10.99.{subnet}.{}/24", i + 1))).collect();
        let sw = Switch::builder().pmd_threads(threads).build().unwrap();
        sw.add_bridge("br0").unwrap();
        for (i, v) in veths.iter().enumerate() {
            let vlan = match vlans.get(i).copied().flatten() {
                Some(tag) => VlanMode::access(tag).unwrap(),
                None => VlanMode::default(),
            };
            backend.add(&sw, &v.host, PortConfig::with_vlan(vlan)).unwrap();
        }
        Lab { sw, veths, nss, subnet }
    }

    fn ip(&self, i: usize) -> String {
        format!("10.99.{}.{}", self.subnet, i + 1)
    }
}

/// A kernel TCP client (default offloads: GSO super-frames, partial
/// checksums) talks to a smoltcp server on an in-process port of the same
/// bridge: the switch segments and checksums in software, and the server
/// checks every byte.
fn tcp_from_a_namespace_to_an_in_process_host(backend: Backend) {
    let ns = NetNs::new();
    let v = Veth::new(&ns, "10.0.0.1/24");
    let sw = Switch::builder().build().unwrap();
    sw.add_bridge("br0").unwrap();
    backend.add(&sw, &v.host, PortConfig::default()).unwrap();
    let nic = sw.add_memory_port("br0", "smol", PortConfig::default()).unwrap();
    const TOTAL: usize = 4 * 1024 * 1024;
    let failed = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = failed.clone();
    let server = std::thread::spawn(move || {
        let mut nic = nic;
        tcp_transfer::run_server(&mut nic, TOTAL, &f)
    });
    let data: Vec<u8> = (0..TOTAL).map(tcp_transfer::pattern).collect();
    let file = std::env::temp_dir().join(vswitch_tests::netns::unique("vsdata"));
    std::fs::write(&file, &data).unwrap();
    // bash's /dev/tcp: a plain kernel TCP client, retried while the server starts.
    let send = format!(
        "for i in 1 2 3 4 5 6 7 8 9 10; do cat {} > /dev/tcp/10.0.0.2/5001 && exit 0; sleep 0.3; done; exit 1",
        file.display()
    );
    let out = ns.exec(&["timeout", "60", "bash", "-c", &send]);
    let _ = std::fs::remove_file(&file);
    if !out.status.success() {
        failed.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let result = server.join().unwrap();
    let s = sw.stats();
    let smol = s.port("smol").unwrap();
    assert!(out.status.success(), "client failed: {}", String::from_utf8_lossy(&out.stderr));
    let (bytes, _) = result.unwrap_or_else(|e| panic!("server: {e}; switch stats {s:?}"));
    assert_eq!(bytes, TOTAL, "every byte arrived, in order");
    assert_eq!(smol.drops[&DropReason::TooBig], 0, "GSO frames were segmented, not dropped");
    if backend == Backend::AfPacket {
        let kernel = s.port(&v.host).unwrap();
        assert!(
            smol.tx_packets > kernel.rx_packets,
            "GSO super-frames came in ({} frames) and went out segmented ({} frames)",
            kernel.rx_packets,
            smol.tx_packets
        );
    }
}

/// Two poll-mode threads, each receiving from one of the ports: traffic
/// in each direction crosses from one thread's port to the other's.
fn two_datapath_threads(backend: Backend) {
    let lab = Lab::with_threads(backend, 2, &[], 2);
    assert!(lab.nss[0].ping(&lab.ip(1), 3), "ns0 -> ns1");
    assert!(lab.nss[1].ping(&lab.ip(0), 3), "ns1 -> ns0");
    let run = iperf3(&lab.nss[0], &lab.nss[1], &lab.ip(1), 2);
    let stats = serde_json::to_string(&lab.sw.stats()).unwrap_or_default();
    assert!(
        run.bytes > 10_000_000,
        "{backend:?}: only {} bytes with two threads; iperf3 said {}; switch stats {stats}",
        run.bytes,
        run.output.chars().take(600).collect::<String>()
    );
}

fn ping_both_ways(backend: Backend) {
    let lab = Lab::new(backend, 2, &[]);
    assert!(lab.nss[0].ping(&lab.ip(1), 3), "ns0 -> ns1");
    assert!(lab.nss[1].ping(&lab.ip(0), 3), "ns1 -> ns0");
    let fdb = lab.sw.fdb("br0").unwrap();
    // Exactly the two namespaces' MACs: nothing from other interfaces
    // (tests run in parallel, their traffic all in the root namespace).
    let inner_mac = |i: usize| {
        let out = lab.nss[i].exec(&["cat", &format!("/sys/class/net/{}/address", lab.veths[i].inner)]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let learned: Vec<(u32, String)> = fdb.iter().map(|e| (e.port, e.mac.to_string())).collect();
    assert_eq!(learned, vec![(1, inner_mac(0)), (2, inner_mac(1))], "only the two hosts, each on its port");
    let s = lab.sw.stats();
    for v in &lab.veths {
        let p = s.port(&v.host).unwrap();
        assert!(p.rx_packets >= 4 && p.tx_packets >= 4, "{p:?}");
        assert!(p.link_up);
        assert_eq!(p.kind, backend.kind());
    }
}

fn iperf3_tcp_with_default_offloads(backend: Backend) {
    let lab = Lab::new(backend, 2, &[]);
    let run = iperf3(&lab.nss[0], &lab.nss[1], &lab.ip(1), 3);
    println!("iperf3 through {} ports: {} bytes, {:.2} Gbit/s", backend.kind(), run.bytes, run.bits_per_second / 1e9);
    if run.bytes <= 10_000_000 {
        let listening = String::from_utf8_lossy(&lab.nss[1].exec(&["ss", "-ltn"]).stdout).to_string();
        let fdb = lab.sw.fdb("br0").unwrap();
        panic!(
            "{backend:?}: only {} bytes crossed the switch: {}\nlistening in the server namespace: {listening}\nfdb {fdb:?}\nstats {}",
            run.bytes,
            run.output.chars().take(400).collect::<String>(),
            serde_json::to_string(&lab.sw.stats()).unwrap_or_default()
        );
    }
    let s = lab.sw.stats();
    for v in &lab.veths {
        let p = s.port(&v.host).unwrap();
        assert_eq!(p.drops[&DropReason::Truncated], 0, "no frame cut short: {p:?}");
        assert_eq!(p.drops[&DropReason::TooBig], 0, "no GSO frame lost: {p:?}");
    }
    if backend != Backend::AfXdp {
        // AF_PACKET keeps the virtio-net header: the client's TCP
        // super-frames cross the switch whole (the frame ring takes them
        // through the socket, its slots being 2 KiB), so the frames the
        // switch received from the client average well above the MTU.
        let p = s.port(&lab.veths[0].host).unwrap();
        let average = p.rx_bytes / p.rx_packets.max(1);
        assert!(average > 4000, "{backend:?}: GSO frames crossed whole, {average} bytes per frame on average: {p:?}");
    }
}

fn vlan_access_ports_isolate_pairs(backend: Backend) {
    let lab = Lab::new(backend, 4, &[Some(10), Some(10), Some(20), Some(20)]);
    assert!(lab.nss[0].ping(&lab.ip(1), 2), "same VLAN 10");
    assert!(lab.nss[2].ping(&lab.ip(3), 2), "same VLAN 20");
    let crossed = lab.nss[0].exec(&["ping", "-c", "2", "-W", "1", &lab.ip(2)]);
    assert!(!crossed.status.success(), "VLAN 10 must not reach VLAN 20");
    let fdb = lab.sw.fdb("br0").unwrap();
    assert!(fdb.iter().all(|e| e.vlan == 10 || e.vlan == 20), "{fdb:?}");
}

fn received(out: &std::process::Output) -> (u32, u32) {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.contains("packets transmitted")).unwrap_or("");
    let nums: Vec<u32> = line.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse().ok()).collect();
    (nums.first().copied().unwrap_or(0), nums.get(1).copied().unwrap_or(0))
}

fn a_namespace_joins_while_traffic_flows(backend: Backend) {
    let lab = Lab::new(backend, 2, &[]);
    let ns2 = NetNs::new();
    let v2 = Veth::new(&ns2, &format!("{}/24", lab.ip(2)));
    let flow = lab.nss[0].spawn(&["ping", "-c", "150", "-i", "0.01", &lab.ip(1)]);
    std::thread::sleep(Duration::from_millis(300));
    backend.add(&lab.sw, &v2.host, PortConfig::default()).unwrap();
    assert!(ns2.ping(&lab.ip(0), 2), "the new namespace reaches ns0");
    let out = flow.wait_with_output().unwrap();
    let (sent, got) = received(&out);
    assert_eq!(sent, 150);
    assert!(got >= 148, "traffic kept flowing while the port was added: {got}/150");
}

fn interface_deleted_under_traffic_then_recreated(backend: Backend) {
    let mut lab = Lab::new(backend, 3, &[]);
    let flow = lab.nss[0].spawn(&["ping", "-c", "200", "-i", "0.01", &lab.ip(1)]);
    std::thread::sleep(Duration::from_millis(200));
    let gone = lab.veths.pop().unwrap();
    let host = gone.host.clone();
    drop(gone);
    std::thread::sleep(Duration::from_millis(400));
    let s = lab.sw.stats();
    assert!(!s.port(&host).unwrap().link_up, "the port saw its interface go");
    let out = flow.wait_with_output().unwrap();
    let (_, got) = received(&out);
    assert!(got >= 195, "the other ports kept forwarding: {got}/200");
    // The interface comes back with the same name: the port reattaches.
    let again = Veth::named(&host, &lab.nss[2], &format!("{}/24", lab.ip(2)));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !lab.sw.stats().port(&host).unwrap().link_up && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(lab.nss[2].ping(&lab.ip(0), 2), "traffic flows through the recreated interface");
    drop(again);
}

/// Adds `ifname` again right after a detach, allowing the kernel's
/// asynchronous teardown of the previous port up to ten seconds.
fn readd(backend: Backend, sw: &Switch, ifname: &str) {
    let start = Instant::now();
    loop {
        match backend.add(sw, ifname, PortConfig::default()) {
            Ok(_) => return,
            Err(e) if start.elapsed() < Duration::from_secs(10) => {
                eprintln!("re-adding {ifname} after {:?}: {e}", start.elapsed());
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("{ifname} not free 10 s after detach: {e}"),
        }
    }
}

/// AF_XDP ports detached and attached again, twelve times in a row.
#[test]
fn afxdp_reattaches_repeatedly() {
    let ns = NetNs::new();
    let v = Veth::new(&ns, "10.93.0.1/24");
    for _ in 0..12 {
        let sw = Switch::builder().build().unwrap();
        sw.add_bridge("br0").unwrap();
        readd(Backend::AfXdp, &sw, &v.host);
        sw.del_port(&v.host).unwrap();
    }
}

/// Waits up to two seconds for `cond`. Closing a socket releases its
/// kernel state only when the last reference goes, and a process forked
/// by a parallel test may hold one until it execs: a moment, not never.
fn eventually(cond: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(2);
    while !cond() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

fn attach_hygiene(backend: Backend) {
    let ns = NetNs::new();
    let v = Veth::new(&ns, &format!("10.99.{}.1/24", next_subnet()));
    let sw = Switch::builder().build().unwrap();
    sw.add_bridge("br0").unwrap();
    sw.add_bridge("br1").unwrap();
    let e = backend.add(&sw, "vsnosuch0", PortConfig::default()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("no network interface named 'vsnosuch0'"), "{e}");
    let os = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<std::io::Error>()).map(|s| s.raw_os_error());
    assert_eq!(os, Some(Some(19)), "the OS error (ENODEV) is the source");
    assert!(!is_promiscuous(&v.host));
    backend.add(&sw, &v.host, PortConfig::default()).unwrap();
    assert!(is_promiscuous(&v.host), "promiscuous while attached");
    assert_eq!(sw.add_afpacket_port("br1", &v.host, PortConfig::default()).unwrap_err().kind(), ErrorKind::Exists);
    if backend == Backend::AfXdp {
        let xdp = String::from_utf8_lossy(&run(&["ip", "link", "show", &v.host]).stdout).to_string();
        assert!(xdp.contains("prog/xdp"), "an XDP program is attached: {xdp}");
    }
    // Another switch in the same machine is refused too.
    let other = Switch::builder().build().unwrap();
    other.add_bridge("br0").unwrap();
    let e = backend.add(&other, &v.host, PortConfig::default()).unwrap_err();
    assert!(e.to_string().contains("already attached"), "{e}");
    sw.del_port(&v.host).unwrap();
    assert!(eventually(|| !is_promiscuous(&v.host)), "detaching restores the interface");
    let shown = String::from_utf8_lossy(&run(&["ip", "link", "show", &v.host]).stdout).to_string();
    assert!(!shown.contains("prog/xdp"), "no XDP program left behind: {shown}");
    // The kernel tears an AF_XDP socket down asynchronously: allow it a
    // moment before the queue is free for the next one.
    readd(backend, &other, &v.host);
    other.del_port(&v.host).unwrap();
    // A kernel bridge's port is refused.
    let kbr = vswitch_tests::netns::unique("vkb");
    run(&["ip", "link", "add", &kbr, "type", "bridge"]);
    run(&["ip", "link", "set", &v.host, "master", &kbr]);
    let e = backend.add(&sw, &v.host, PortConfig::default()).unwrap_err();
    let _ = std::process::Command::new("ip").args(["link", "del", &kbr]).status();
    assert!(e.to_string().contains(&format!("port of kernel device '{kbr}'")), "{e}");
}

/// A TAP device a runtime opened and handed over (`add_tap_fd_port`),
/// then moved into the namespace of its "guest", as a VMM or container
/// runtime does: ping and iperf3 TCP both ways between that namespace and
/// one behind a veth port. With IFF_VNET_HDR the super-frames cross whole
/// (frames average far above the MTU both ways); without it the datapath
/// segments them for the TAP and TCP still flows.
#[test]
fn runtime_owned_tap_fd_carries_tcp() {
    for vnet_hdr in [true, false] {
        let subnet = next_subnet();
        let (guest, c) = (NetNs::new(), NetNs::new());
        let v = Veth::new(&c, &format!("10.99.{subnet}.1/24"));
        let sw = Switch::builder().build().unwrap();
        sw.add_bridge("br0").unwrap();
        sw.add_afpacket_port("br0", &v.host, PortConfig::default()).unwrap();
        let tap = vswitch_tests::netns::unique("vtap");
        let fd = vswitch_core::port::open_tap(&tap, vnet_hdr).unwrap();
        sw.add_tap_fd_port("br0", "guest", fd, PortConfig::default()).unwrap();
        // The device follows its guest; the descriptor keeps working.
        run(&["ip", "link", "set", &tap, "netns", &guest.name]);
        guest.run(&["ip", "addr", "add", &format!("10.99.{subnet}.2/24"), "dev", &tap]);
        guest.run(&["ip", "link", "set", &tap, "up"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !c.ping(&format!("10.99.{subnet}.2"), 1) {
            assert!(Instant::now() < deadline, "vnet_hdr={vnet_hdr}: no ping to the guest");
        }
        let (ip_c, ip_guest) = (format!("10.99.{subnet}.1"), format!("10.99.{subnet}.2"));
        let (to_guest, from_guest) =
            vswitch_tests::netns::iperf3_both_ways(&c, &ip_c, &guest, &ip_guest, 2, 20_000_000);
        println!(
            "TAP fd (vnet_hdr={vnet_hdr}): to the guest {:.2} Gbit/s, from it {:.2} Gbit/s",
            to_guest.bits_per_second / 1e9,
            from_guest.bits_per_second / 1e9
        );
        let s = sw.stats();
        let p = s.port("guest").unwrap();
        assert_eq!(p.kind, "tap");
        assert!(p.link_up, "a device in another namespace is taken to be up: {p:?}");
        for reason in [DropReason::TooBig, DropReason::Truncated, DropReason::TxError] {
            assert_eq!(p.drops[&reason], 0, "vnet_hdr={vnet_hdr}: {reason:?}: {p:?}");
        }
        let (rx, tx) = (p.rx_bytes / p.rx_packets.max(1), p.tx_bytes / p.tx_packets.max(1));
        if vnet_hdr {
            assert!(rx > 4000 && tx > 4000, "super-frames whole both ways: {rx} / {tx} bytes per frame: {p:?}");
        } else {
            assert!(rx <= 1518 && tx <= 1518, "finished frames only without the header: {rx} / {tx}: {p:?}");
        }
        // The guest goes, and its device with its namespace: the port's
        // link goes down.
        drop(guest);
        let deadline = Instant::now() + Duration::from_secs(10);
        while sw.stats().port("guest").unwrap().link_up {
            assert!(Instant::now() < deadline, "vnet_hdr={vnet_hdr}: the port is still up with its device gone");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
