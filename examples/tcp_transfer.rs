//! Two TCP/IP hosts on one learning bridge, no kernel involved.
//!
//! Each host is a smoltcp stack whose NIC is a memory port of the switch
//! (`MemoryPortHandle` implements `smoltcp::phy::Device`). The client sends
//! a stream of bytes to the server through the switch; the server checks
//! every byte. A third port, `watcher`, has no host behind it: it sees the
//! ARP broadcasts and the first flooded frame, and nothing after the switch
//! has learned where the two hosts are.
//!
//! Run: `cargo run --release --example tcp_transfer [-- MEBIBYTES]`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};
use vswitch_core::mac::MacEntry;
use vswitch_core::{MemoryPortHandle, PortConfig, Switch, SwitchStats};

const SERVER_IP: Ipv4Address = Ipv4Address::new(10, 0, 0, 2);
const CLIENT_IP: Ipv4Address = Ipv4Address::new(10, 0, 0, 1);
const PORT: u16 = 5001;
const SOCKET_BUFFER: usize = 512 * 1024;
/// A transfer that has not finished by then has failed.
const DEADLINE: Duration = Duration::from_secs(120);

/// What a run of the transfer measured.
#[derive(Debug)]
pub struct TransferReport {
    /// Bytes the server received and verified.
    pub bytes: usize,
    /// From the connection's first SYN to the server seeing the FIN.
    pub elapsed: Duration,
    /// The bridge's MAC table at the end.
    pub fdb: Vec<MacEntry>,
    /// Every port's counters at the end.
    pub stats: SwitchStats,
    /// Frames the watcher port received.
    pub watcher_frames: usize,
}

impl TransferReport {
    /// Goodput in megabits per second.
    pub fn mbit_per_sec(&self) -> f64 {
        self.bytes as f64 * 8.0 / self.elapsed.as_secs_f64() / 1e6
    }
}

/// Period of the byte pattern: a prime, so it never lines up with segment
/// or buffer sizes and a lost, duplicated or reordered segment shows.
const PERIOD: usize = 65_521;

/// The byte at position `i` of the stream.
pub fn pattern(i: usize) -> u8 {
    ((i % PERIOD) as u64).wrapping_mul(0x9e37_79b9).rotate_right(13) as u8
}

fn mac(n: u8) -> EthernetAddress {
    EthernetAddress([0x02, 0x00, 0x00, 0x00, 0x00, n])
}

/// A smoltcp host: one interface on a memory port, one TCP socket. The
/// port's handle stays with the caller: closing it takes the link down,
/// and a host that is done must not do that to frames still on the way.
struct Host<'a> {
    iface: Interface,
    sockets: SocketSet<'static>,
    socket: smoltcp::iface::SocketHandle,
    nic: &'a mut MemoryPortHandle,
}

impl<'a> Host<'a> {
    fn new(nic: &'a mut MemoryPortHandle, mac: EthernetAddress, ip: Ipv4Address) -> Host<'a> {
        let mut config = Config::new(HardwareAddress::Ethernet(mac));
        config.random_seed = u64::from(ip.octets()[3]);
        let mut iface = Interface::new(config, nic, smoltcp::time::Instant::now());
        iface.update_ip_addrs(|addrs| {
            addrs.push(IpCidr::new(IpAddress::Ipv4(ip), 24)).expect("one address");
        });
        let socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
            tcp::SocketBuffer::new(vec![0; SOCKET_BUFFER]),
        );
        let mut sockets = SocketSet::new(Vec::new());
        let socket = sockets.add(socket);
        Host { iface, sockets, socket, nic }
    }

    /// Lets the stack process what arrived and send what it can.
    fn poll(&mut self) {
        self.iface.poll(smoltcp::time::Instant::now(), &mut *self.nic, &mut self.sockets);
    }

    /// Sleeps until a frame arrives or the stack has a timer due.
    fn wait(&mut self) {
        let now = smoltcp::time::Instant::now();
        let delay = self
            .iface
            .poll_delay(now, &self.sockets)
            .map_or(Duration::from_millis(50), |d| Duration::from_micros(d.total_micros()));
        self.nic.wait(delay.min(Duration::from_millis(50)));
    }

    fn tcp(&mut self) -> &mut tcp::Socket<'static> {
        self.sockets.get_mut::<tcp::Socket<'_>>(self.socket)
    }
}

/// Serves one TCP connection on 10.0.0.2:5001 through `nic`, checking
/// every byte against [`pattern`]; returns the bytes and the time taken.
pub fn run_server(
    nic: &mut MemoryPortHandle,
    expected: usize,
    failed: &AtomicBool,
) -> Result<(usize, Duration), String> {
    let mut host = Host::new(nic, mac(2), SERVER_IP);
    host.tcp().listen(PORT).map_err(|e| format!("listen: {e}"))?;
    let mut received = 0usize;
    let mut started: Option<Instant> = None;
    let mut established = false;
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + DEADLINE;
    loop {
        host.poll();
        let sock = host.tcp();
        if started.is_none() && sock.state() != tcp::State::Listen {
            started = Some(Instant::now());
        }
        established |= sock.may_recv();
        while sock.can_recv() {
            let n = sock.recv_slice(&mut buf).map_err(|e| format!("recv: {e}"))?;
            for (i, &b) in buf[..n].iter().enumerate() {
                if b != pattern(received + i) {
                    return Err(format!("byte {} is {b:#04x}, expected {:#04x}", received + i, pattern(received + i)));
                }
            }
            received += n;
        }
        if established && !sock.may_recv() {
            // The client closed: everything it sent has arrived.
            sock.close();
            host.poll();
            let elapsed = started.map_or(Duration::ZERO, |s| s.elapsed());
            if received != expected {
                return Err(format!("received {received} bytes, expected {expected}"));
            }
            return Ok((received, elapsed));
        }
        if Instant::now() > deadline || failed.load(Ordering::Relaxed) {
            return Err(format!("server gave up after {received} bytes"));
        }
        host.wait();
    }
}

fn run_client(nic: &mut MemoryPortHandle, total: usize, failed: &AtomicBool) -> Result<(), String> {
    let mut host = Host::new(nic, mac(1), CLIENT_IP);
    let cx = host.iface.context();
    let sock = host.sockets.get_mut::<tcp::Socket<'_>>(host.socket);
    sock.connect(cx, (IpAddress::Ipv4(SERVER_IP), PORT), 49152).map_err(|e| format!("connect: {e}"))?;
    // The stream precomputed over one period plus a buffer's worth, so any
    // window of it is one slice.
    let stream: Vec<u8> = (0..PERIOD + SOCKET_BUFFER).map(pattern).collect();
    let mut sent = 0usize;
    let deadline = Instant::now() + DEADLINE;
    loop {
        host.poll();
        let sock = host.tcp();
        while sent < total && sock.can_send() {
            let off = sent % PERIOD;
            let want = (total - sent).min(SOCKET_BUFFER);
            let n = sock.send_slice(&stream[off..off + want]).map_err(|e| format!("send: {e}"))?;
            if n == 0 {
                break;
            }
            sent += n;
        }
        if sent == total && sock.send_queue() == 0 && sock.state() == tcp::State::Established {
            sock.close();
        }
        if matches!(sock.state(), tcp::State::Closed | tcp::State::TimeWait) && sent == total {
            return Ok(());
        }
        if Instant::now() > deadline || failed.load(Ordering::Relaxed) {
            return Err(format!("client gave up after {sent} bytes, state {}", sock.state()));
        }
        host.wait();
    }
}

/// Builds the switch and the hosts, runs the transfer of `total` bytes and
/// reports what happened.
pub fn run_transfer(total: usize) -> Result<TransferReport, String> {
    let switch = Switch::builder().build().map_err(|e| e.to_string())?;
    switch.add_bridge("br0").map_err(|e| e.to_string())?;
    let add = |name| switch.add_memory_port("br0", name, PortConfig::default()).map_err(|e| e.to_string());
    let (client_nic, server_nic, watcher) = (add("client")?, add("server")?, add("watcher")?);

    // Either side failing stops the other at once.
    let failed = Arc::new(AtomicBool::new(false));
    let on_error = |failed: Arc<AtomicBool>| {
        move |e: String| {
            failed.store(true, Ordering::Relaxed);
            e
        }
    };
    let (f1, f2) = (failed.clone(), failed.clone());
    // Each host's thread hands its port's handle back: the handles stay
    // open (links up) until the counters below have been read, so a last
    // frame on its way to a host that has finished is not dropped.
    let server = thread::spawn(move || {
        let mut nic = server_nic;
        (run_server(&mut nic, total, &f1).map_err(on_error(f1.clone())), nic)
    });
    let client = thread::spawn(move || {
        let mut nic = client_nic;
        (run_client(&mut nic, total, &f2).map_err(on_error(f2.clone())), nic)
    });
    let (client, _client_nic) = client.join().map_err(|_| "client thread panicked")?;
    let (server, _server_nic) = server.join().map_err(|_| "server thread panicked")?;
    // The first error is the cause; the other side only gave up.
    let (bytes, elapsed) = match (server, client) {
        (Err(e), _) if !e.starts_with("server gave up") => return Err(e),
        (_, Err(e)) => return Err(e),
        (r, Ok(())) => r?,
    };

    let watcher_frames = std::iter::from_fn(|| watcher.recv()).count();
    Ok(TransferReport {
        bytes,
        elapsed,
        fdb: switch.fdb("br0").map_err(|e| e.to_string())?,
        stats: switch.stats(),
        watcher_frames,
    })
}

fn main() {
    let mib: usize = std::env::args().nth(1).map_or(64, |a| a.parse().expect("MEBIBYTES must be a whole number"));
    println!("TCP transfer of {mib} MiB between two smoltcp hosts through a vswitch bridge");
    let report = match run_transfer(mib * 1024 * 1024) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("transfer failed: {e}");
            std::process::exit(1);
        }
    };
    println!(
        "\n{} bytes verified in {:.3} s: {:.0} Mbit/s",
        report.bytes,
        report.elapsed.as_secs_f64(),
        report.mbit_per_sec()
    );
    println!("\nMAC table of br0:\n {:>4}  {:>4}  {:<17}  {:>3}", "port", "VLAN", "MAC", "Age");
    for e in &report.fdb {
        println!(" {:>4}  {:>4}  {:<17}  {:>3}", e.port, e.vlan, e.mac, e.age_secs);
    }
    println!("\nPort counters:");
    println!(
        " {:<8} {:>4} {:>10} {:>14} {:>10} {:>14} {:>6}",
        "port", "no", "rx_pkts", "rx_bytes", "tx_pkts", "tx_bytes", "drops"
    );
    for p in &report.stats.bridges[0].ports {
        println!(
            " {:<8} {:>4} {:>10} {:>14} {:>10} {:>14} {:>6}",
            p.name,
            p.port_no,
            p.rx_packets,
            p.rx_bytes,
            p.tx_packets,
            p.tx_bytes,
            p.total_drops()
        );
    }
    println!("\nThe watcher port received {} frames (broadcasts and floods before learning).", report.watcher_frames);
}
