//! A tokio service embedding the switch: every tenant is an async task on
//! a memory port, none has a thread of its own.
//!
//! * Two tenants are smoltcp TCP/IP hosts on `AsyncMemoryPort`s: a client
//!   sends a stream of bytes through the switch, the server checks every
//!   byte. Each host polls its stack, then waits on its port's descriptor
//!   (or its stack's next timer) on tokio's reactor.
//! * A third tenant is a port of the runtime's own whose code has a bug:
//!   it panics on the first frame it is given (the client's ARP request,
//!   flooded). The switch takes it down alone and says so: a `PortFailed`
//!   event, `health()`; the transfer goes on. The service removes it.
//! * A task logs the switch's events as they come (`AsyncEvents`).
//! * At the end, `shutdown()` reports anything that did not stop cleanly.
//!
//! Run: `cargo run --release -p vswitch-examples --example tokio_service [-- MEBIBYTES]`

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Context, Interface, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};
use vswitch_core::asyncio::{AsyncEvents, AsyncMemoryPort};
use vswitch_core::events::Event;
use vswitch_core::packet::PacketPool;
use vswitch_core::port::{Port, TxOutcome};
use vswitch_core::{Packet, PortConfig, PortState, Switch};

const PORT: u16 = 7000;
/// A transfer that has not finished by then has failed.
const DEADLINE: Duration = Duration::from_secs(120);

/// What a run did.
#[derive(Debug)]
pub struct Report {
    /// Bytes the server received and checked.
    pub bytes: usize,
    /// From the client's start to the server seeing the end of the stream.
    pub elapsed: Duration,
    /// Why the faulty tenant's port was taken down, as `health()` said.
    pub failure: Option<String>,
    /// Every event the logging task saw, in order.
    pub events: Vec<Event>,
    /// Drops on the two hosts' ports (none expected).
    pub host_drops: u64,
    /// What `shutdown()` returned.
    pub shutdown: vswitch_core::Result<()>,
}

/// The byte at position `i` of the stream.
pub fn pattern(i: usize) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8
}

/// A tenant's port with a bug: its `tx_burst` panics.
#[derive(Debug)]
struct Buggy;

impl Port for Buggy {
    fn kind(&self) -> &'static str {
        "buggy"
    }

    fn rx_burst(&mut self, _batch: &mut Vec<Packet>, _max: usize, _pool: &mut PacketPool) -> usize {
        0
    }

    fn tx_burst(&mut self, _batch: &mut Vec<Packet>, _pool: &mut PacketPool) -> TxOutcome {
        panic!("tenant bug: unexpected frame");
    }
}

/// One smoltcp host on `nic` with address 10.0.0.`n` and one TCP socket;
/// `app` is the application, called after each poll until it says it is
/// done. The host then goes on until its end of the connection is closed
/// (its FIN sent and answered), and returns the port.
async fn host(
    mut nic: AsyncMemoryPort,
    n: u8,
    mut app: impl FnMut(&mut tcp::Socket<'static>, &mut Context) -> bool,
) -> AsyncMemoryPort {
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress([2, 0, 0, 0, 0, n])));
    config.random_seed = u64::from(n);
    let mut iface = Interface::new(config, nic.handle_mut(), smoltcp::time::Instant::now());
    iface.update_ip_addrs(|a| a.push(IpCidr::new(IpAddress::Ipv4(Ipv4Address::new(10, 0, 0, n)), 24)).unwrap());
    let buffer = || tcp::SocketBuffer::new(vec![0; 256 * 1024]);
    let mut sockets = SocketSet::new(Vec::new());
    let h = sockets.add(tcp::Socket::new(buffer(), buffer()));
    let mut done: Option<Instant> = None;
    loop {
        let now = smoltcp::time::Instant::now();
        iface.poll(now, nic.handle_mut(), &mut sockets);
        if done.is_none() && app(sockets.get_mut::<tcp::Socket<'static>>(h), iface.context()) {
            done = Some(Instant::now());
        }
        let state = sockets.get::<tcp::Socket<'static>>(h).state();
        if done.is_some_and(|at| {
            matches!(state, tcp::State::Closed | tcp::State::TimeWait) || at.elapsed() > Duration::from_secs(2)
        }) {
            return nic;
        }
        let delay = iface
            .poll_delay(now, &sockets)
            .map_or(Duration::from_millis(20), |d| Duration::from_micros(d.total_micros()))
            .min(Duration::from_millis(20));
        if delay.is_zero() {
            tokio::task::yield_now().await;
            continue;
        }
        // Frames for the host, or its stack's next timer, whichever first.
        tokio::select! {
            r = nic.readable() => if r.is_err() { return nic },
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// The server's application: listen, check every byte, close at the end.
fn server(received: Arc<Mutex<usize>>) -> impl FnMut(&mut tcp::Socket<'static>, &mut Context) -> bool {
    let mut listening = false;
    let mut established = false;
    move |s, _| {
        if !listening {
            s.listen(PORT).expect("listen");
            listening = true;
        }
        established |= s.may_recv();
        let mut got = received.lock().unwrap();
        while s.can_recv() {
            let at = *got;
            let n = s
                .recv(|buf| {
                    let bad = buf.iter().enumerate().position(|(i, &b)| b != pattern(at + i));
                    assert!(bad.is_none(), "byte {} of the stream is wrong", at + bad.unwrap_or(0));
                    (buf.len(), buf.len())
                })
                .expect("recv");
            *got += n;
        }
        if established && !s.may_recv() {
            s.close();
            return true;
        }
        false
    }
}

/// The client's application: connect, send `total` bytes, close.
fn client(total: usize) -> impl FnMut(&mut tcp::Socket<'static>, &mut Context) -> bool {
    let mut sent = 0usize;
    let mut connected = false;
    move |s, cx| {
        if !connected {
            s.connect(cx, (IpAddress::Ipv4(Ipv4Address::new(10, 0, 0, 2)), PORT), 49152).expect("connect");
            connected = true;
        }
        while sent < total && s.can_send() {
            let n = s
                .send(|buf| {
                    let n = buf.len().min(total - sent);
                    for (i, b) in buf[..n].iter_mut().enumerate() {
                        *b = pattern(sent + i);
                    }
                    (n, n)
                })
                .expect("send");
            if n == 0 {
                break;
            }
            sent += n;
        }
        if sent == total && s.send_queue() == 0 && s.state() == tcp::State::Established {
            s.close();
        }
        sent == total && s.state() != tcp::State::Established
    }
}

/// Runs the service: `total` bytes from client to server, the buggy
/// tenant taken down on the way.
pub fn run(total: usize) -> Result<Report, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let e = |e: vswitch_core::Error| e.to_string();
        let switch = Switch::builder().build().map_err(e)?;
        // Subscribed before the first port, so the log has everything.
        let events = AsyncEvents::new(switch.subscribe().map_err(e)?).map_err(e)?;
        let log = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some(event) = events.recv().await {
                seen.push(event);
            }
            seen
        });
        switch.add_bridge("br0").map_err(e)?;
        let nic = |name: &str| {
            let handle = switch.add_memory_port("br0", name, PortConfig::default()).map_err(e)?;
            AsyncMemoryPort::new(handle).map_err(e)
        };
        let (client_nic, server_nic) = (nic("client")?, nic("server")?);
        switch.add_port("br0", "buggy", Box::new(Buggy), PortConfig::default()).map_err(e)?;

        let received = Arc::new(Mutex::new(0));
        let server = tokio::spawn(host(server_nic, 2, server(received.clone())));
        let start = Instant::now();
        let client = tokio::spawn(host(client_nic, 1, client(total)));
        let both = async { (client.await, server.await) };
        let (c, s) = tokio::time::timeout(DEADLINE, both).await.map_err(|_| "the transfer did not finish")?;
        let (_client_nic, _server_nic) = (c.map_err(|e| e.to_string())?, s.map_err(|e| e.to_string())?);
        let elapsed = start.elapsed();

        let health = switch.health();
        let buggy = health.port("buggy").ok_or("no buggy port")?;
        let failure = (buggy.state == PortState::Failed).then(|| buggy.why.clone()).flatten();
        // Control calls wait for the datapath: off the async workers.
        tokio::task::block_in_place(|| switch.del_port("buggy")).map_err(e)?;
        let stats = switch.stats();
        let host_drops = ["client", "server"].iter().filter_map(|p| stats.port(p)).map(|p| p.total_drops()).sum();
        // The subscription ends with the switch.
        let shutdown = tokio::task::block_in_place(|| switch.shutdown());
        let events = log.await.map_err(|e| e.to_string())?;
        let bytes = *received.lock().unwrap();
        Ok(Report { bytes, elapsed, failure, events, host_drops, shutdown })
    })
}

fn main() {
    // The buggy tenant's panic is caught by the switch; say so in one line
    // rather than with the default hook's report.
    std::panic::set_hook(Box::new(|info| eprintln!("(caught by the switch) {info}")));
    let mib: usize = std::env::args().nth(1).map_or(64, |a| a.parse().expect("MEBIBYTES is a number"));
    let report = match run(mib << 20) {
        Ok(r) => r,
        Err(why) => {
            eprintln!("tokio_service: {why}");
            std::process::exit(1);
        }
    };
    let secs = report.elapsed.as_secs_f64();
    println!(
        "{} MiB from client to server over TCP, on tokio: {:.2} s, {:.0} Mbit/s",
        report.bytes >> 20,
        secs,
        report.bytes as f64 * 8.0 / secs / 1e6
    );
    println!("the buggy tenant: {}", report.failure.as_deref().unwrap_or("did not fail"));
    println!("events:");
    for event in &report.events {
        println!("  {}", serde_json::to_string(event).unwrap_or_default());
    }
    println!("drops on the hosts' ports: {}", report.host_drops);
    match report.shutdown {
        Ok(()) => println!("shutdown: clean"),
        Err(e) => println!("shutdown: {e}"),
    }
}
