//! A VMM-style process embedding the switch: one bridge, a vhost-user port
//! per VM, a gateway, and optionally an uplink to a kernel interface.
//!
//! * Each VM gets a vhost-user socket the switch listens on
//!   (`DIR/vmN.sock`); the program prints the QEMU options that connect a
//!   guest's virtio-net device to it. A VM may come and go (a reboot, a
//!   VMM restart): its port's link follows, and the next connection is
//!   served on the same socket.
//! * The gateway is what a VMM's own user-mode network offers its guests:
//!   a smoltcp host at 10.0.0.1/24 on a memory port, answering ping and
//!   echoing TCP on port 7.
//! * `--uplink IFACE` attaches a kernel interface through AF_PACKET (root).
//! * The switch's events are printed as they come, and its health is
//!   checked every second; problems are printed.
//! * SIGINT or SIGTERM (or `--for SECS`) ends it: `shutdown()` reports
//!   anything that did not stop cleanly, and the sockets are removed.
//!
//! Run: `cargo run --release -p vswitch-examples --example vmm -- [--vms N] [--dir DIR] [--uplink IFACE] [--for SECS]`

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::socket::tcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, Ipv4Address};
use vswitch_core::events::Event;
use vswitch_core::port::vhost_user::VhostUserConfig;
use vswitch_core::{MemoryPortHandle, PortConfig, Switch};

/// The gateway's address on the VMs' network.
pub const GATEWAY: Ipv4Address = Ipv4Address::new(10, 0, 0, 1);
/// Its TCP echo service.
pub const ECHO_PORT: u16 = 7;

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// How many VMs (vhost-user ports).
    pub vms: usize,
    /// Where their sockets go.
    pub dir: PathBuf,
    /// A kernel interface to attach as the uplink.
    pub uplink: Option<String>,
}

/// How a run ended.
#[derive(Debug)]
pub struct Summary {
    /// Frames the gateway received.
    pub gateway_rx: u64,
    /// What `shutdown()` returned.
    pub shutdown: vswitch_core::Result<()>,
}

/// How many TCP connections the gateway's echo service serves at once.
const ECHO_CONNECTIONS: usize = 8;

/// The gateway's stack: answers ARP and ping (smoltcp does, for its
/// address) and echoes TCP on [`ECHO_PORT`], up to [`ECHO_CONNECTIONS`]
/// at once, until `stop`. A connection whose peer went silent (a guest
/// that rebooted mid-stream) is given up after a minute.
fn gateway(mut nic: MemoryPortHandle, stop: &AtomicBool) -> MemoryPortHandle {
    let mut config = Config::new(HardwareAddress::Ethernet(EthernetAddress([2, 0, 0, 0, 0, 1])));
    config.random_seed = 1;
    let mut iface = Interface::new(config, &mut nic, smoltcp::time::Instant::now());
    iface.update_ip_addrs(|a| a.push(IpCidr::new(IpAddress::Ipv4(GATEWAY), 24)).unwrap());
    let mut sockets = SocketSet::new(Vec::new());
    let listen = |sockets: &mut SocketSet<'static>| -> SocketHandle {
        let buffer = || tcp::SocketBuffer::new(vec![0; 64 * 1024]);
        let mut s = tcp::Socket::new(buffer(), buffer());
        s.set_keep_alive(Some(smoltcp::time::Duration::from_secs(10)));
        s.set_timeout(Some(smoltcp::time::Duration::from_secs(60)));
        s.listen(ECHO_PORT).expect("listen");
        sockets.add(s)
    };
    let mut echo: Vec<SocketHandle> = (0..ECHO_CONNECTIONS).map(|_| listen(&mut sockets)).collect();
    let mut chunk = vec![0; 16 * 1024];
    while !stop.load(Ordering::Relaxed) {
        let now = smoltcp::time::Instant::now();
        iface.poll(now, &mut nic, &mut sockets);
        for h in echo.iter_mut() {
            let s = sockets.get_mut::<tcp::Socket<'static>>(*h);
            while s.can_recv() && s.can_send() {
                let room = (s.send_capacity() - s.send_queue()).min(chunk.len());
                let n = s.recv_slice(&mut chunk[..room]).unwrap_or(0);
                if n == 0 {
                    break;
                }
                s.send_slice(&chunk[..n]).expect("room was there");
            }
            // The peer is done: close once everything is echoed, and
            // listen again for the next.
            if s.state() == tcp::State::CloseWait && s.send_queue() == 0 {
                s.close();
            }
            if matches!(s.state(), tcp::State::Closed | tcp::State::TimeWait) {
                sockets.remove(*h);
                *h = listen(&mut sockets);
            }
        }
        let delay = iface.poll_delay(now, &sockets).map_or(Duration::from_millis(50), |d| d.into());
        nic.wait(delay.min(Duration::from_millis(50)));
    }
    nic
}

/// Runs the VMM's switch until `stop`; `say` gets every line to print.
///
/// # Errors
/// What the switch refused while being built (a socket in use, a missing
/// uplink), as text.
pub fn run(opts: &Options, stop: Arc<AtomicBool>, mut say: impl FnMut(String)) -> Result<Summary, String> {
    let e = |e: vswitch_core::Error| e.to_string();
    let switch = Switch::builder().build().map_err(e)?;
    let events = switch.subscribe().map_err(e)?;
    switch.add_bridge("br0").map_err(e)?;
    if let Some(uplink) = &opts.uplink {
        switch.add_afpacket_port("br0", uplink, PortConfig::default()).map_err(e)?;
        say(format!("uplink: {uplink} (AF_PACKET)"));
    }
    std::fs::create_dir_all(&opts.dir).map_err(|e| format!("create {}: {e}", opts.dir.display()))?;
    for n in 1..=opts.vms {
        let socket = opts.dir.join(format!("vm{n}.sock"));
        let vm = VhostUserConfig::server(&socket);
        switch.add_vhost_user_port("br0", &format!("vm{n}"), &vm, PortConfig::default()).map_err(e)?;
        say(format!(
            "vm{n}: qemu-system-x86_64 ... -object memory-backend-memfd,id=mem0,size=1G,share=on -numa node,memdev=mem0 \
             -chardev socket,id=vu0,path={},reconnect=1 -netdev vhost-user,id=n0,chardev=vu0 \
             -device virtio-net-pci,netdev=n0,mac=52:54:00:00:00:{n:02x}",
            socket.display()
        ));
    }
    let nic = switch.add_memory_port("br0", "gateway", PortConfig::default()).map_err(e)?;
    say(format!("gateway: {GATEWAY}/24 (ping, TCP echo on port {ECHO_PORT})"));
    let gw_stop = stop.clone();
    let gw = std::thread::Builder::new()
        .name("gateway".into())
        .spawn(move || gateway(nic, &gw_stop))
        .map_err(|e| format!("start the gateway: {e}"))?;

    let mut checked = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if let Some(event) = events.recv_timeout(Duration::from_millis(100)) {
            match event {
                Event::LinkChanged { port, up, .. } => say(format!("{port}: link {}", if up { "up" } else { "down" })),
                Event::PortFailed { port, why, .. } => say(format!("{port}: FAILED: {why}")),
                _ => {}
            }
        }
        if checked.elapsed() >= Duration::from_secs(1) {
            checked = Instant::now();
            let health = switch.health();
            if !health.is_ok() {
                say(format!("health: {}", serde_json::to_string(&health).unwrap_or_default()));
            }
        }
    }
    let nic = gw.join().expect("the gateway thread");
    let gateway_rx = switch.stats().port("gateway").map_or(0, |p| p.rx_packets);
    // The handle stays open until the switch has gone, so the gateway's
    // port is not left reading link down while it is removed.
    let shutdown = switch.shutdown();
    drop(nic);
    Ok(Summary { gateway_rx, shutdown })
}

fn main() {
    let mut opts = Options { vms: 2, dir: std::env::temp_dir().join("vswitch-vmm"), uplink: None };
    let mut run_for = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().unwrap_or_else(|| usage(&format!("{arg} needs a value")));
        match arg.as_str() {
            "--vms" => opts.vms = value().parse().unwrap_or_else(|_| usage("--vms takes a number")),
            "--dir" => opts.dir = value().into(),
            "--uplink" => opts.uplink = Some(value()),
            "--for" => run_for = Some(value().parse::<u64>().unwrap_or_else(|_| usage("--for takes seconds"))),
            _ => usage(&format!("unknown argument {arg}")),
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone()).expect("signal handler");
    }
    if let Some(secs) = run_for {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(secs));
            stop.store(true, Ordering::Relaxed);
        });
    }
    match run(&opts, stop, |line| println!("{line}")) {
        Ok(summary) => {
            println!("the gateway received {} frames", summary.gateway_rx);
            match summary.shutdown {
                Ok(()) => println!("shutdown: clean"),
                Err(e) => {
                    println!("shutdown: {e}");
                    std::process::exit(1);
                }
            }
        }
        Err(e) => {
            eprintln!("vmm: {e}");
            std::process::exit(1);
        }
    }
}

fn usage(why: &str) -> ! {
    eprintln!("vmm: {why}\nusage: vmm [--vms N] [--dir DIR] [--uplink IFACE] [--for SECS]");
    std::process::exit(2);
}
