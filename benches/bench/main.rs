//! vswitch-bench: this switch against the Linux bridge and Open vSwitch,
//! on this machine, in one run.
//!
//! A generator namespace and a sink namespace, each joined by a veth pair
//! to the root namespace, where the device under test joins the two host
//! ends. The generator is this program re-run in the generator namespace,
//! sending prebuilt frames through an AF_XDP (or AF_PACKET) socket of the
//! switch's own code; the sink counts on its interface's kernel counter
//! and drops each frame at once (addressed to an IP nobody owns), so
//! receiving costs no user-space work. For each device, frame size and
//! flow count it reports the offered and delivered rates, loss, and the
//! CPU the device used, as median and min-max over the repetitions; then
//! round-trip latency idle and under load; then ratios of this switch
//! against each peer. Output: markdown on stdout and in OUT/report.md,
//! every figure in OUT/report.json, a chart in OUT/report.svg.
//!
//! Run as root: `cargo run --release -p vswitch-benches --bin vswitch-bench -- --help`

mod dut;
mod frames;
mod report;
mod stats;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use vswitch_benches::counter;
use vswitch_core::internals::{AfPacketConfig, XdpModeRequest};
use vswitch_core::internals::{AfPacketPort, AfXdpPort};
use vswitch_core::packet::{Packet, PacketPool};
use vswitch_core::port::Port;
use vswitch_core::{MacAddr, port::BURST};
use vswitch_tests::netns::{NetNs, Veth, iperf3_streams};

use dut::Dut;
use frames::Traffic;
use report::{Latency, Report, Row, Skipped};
use stats::{Summary, percentile};

#[derive(Parser, Debug)]
#[command(about = "Forwarding rate, CPU and latency of this switch against the Linux bridge and Open vSwitch")]
struct Args {
    /// Seconds of traffic per run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Runs per figure (the report gives median, min and max).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Frame sizes in bytes, FCS included (64 to 1518).
    #[arg(long, value_delimiter = ',', default_value = "64,1518")]
    sizes: Vec<usize>,
    /// Flow counts (distinct source address and port pairs).
    #[arg(long, value_delimiter = ',', default_value = "1,1000")]
    flows: Vec<u32>,
    /// Devices under test.
    #[arg(long, value_delimiter = ',', default_value = dut::DEFAULT)]
    duts: Vec<String>,
    /// Rules in the flow-table mode (vswitch-BACKEND-flows).
    #[arg(long, default_value_t = 1000)]
    rules: usize,
    /// Limit the generator to this many packets per second (0: as fast as it can).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Tag every generated frame with this VLAN.
    #[arg(long)]
    vlan: Option<u16>,
    /// The generator's socket: afxdp or afpacket.
    #[arg(long, default_value = "afxdp")]
    generator: String,
    /// This switch's datapath threads never sleep (as OVS's PMD threads);
    /// the default is the switch's own adaptive idle.
    #[arg(long)]
    busy: bool,
    /// Pin this switch's datapath thread to these CPUs (as OVS pins its PMD
    /// threads); default: not pinned.
    #[arg(long, value_delimiter = ',')]
    pin: Vec<usize>,
    /// Pings per latency measurement (idle, and again under load).
    #[arg(long, default_value_t = 200)]
    pings: u32,
    /// Seconds of iperf3 TCP per device and stream count, from the
    /// generator's namespace to the sink's (0: no TCP measurement).
    #[arg(long, default_value_t = 3)]
    tcp_seconds: u32,
    /// Parallel TCP streams per iperf3 measurement.
    #[arg(long, value_delimiter = ',', default_value = "1,4")]
    streams: Vec<u32>,
    /// Where report.md, report.json and report.svg go.
    #[arg(long, default_value = "target/vswitch-bench")]
    out: PathBuf,
    /// A quick check of the whole harness: 1 s, 1 run, 64-byte frames, 1
    /// flow, 20 pings (what CI runs).
    #[arg(long)]
    smoke: bool,
    /// Internal: run as the generator (IFNAME BACKEND DST SIZE FLOWS VLAN SECONDS RATE).
    #[arg(long, num_args = 8, hide = true)]
    generate: Vec<String>,
    /// Internal: announce the sink's receive address from IFNAME.
    #[arg(long, hide = true)]
    announce: Option<String>,
}

/// The address the generated frames go to. The sink's switch port learns
/// it (the sink announces it), but the sink's interface does not own it,
/// so the sink's kernel counts each frame and drops it at once as "other
/// host", costing next to nothing: receiving is never the bottleneck, and
/// no IP processing is charged to whoever transmits into the veth.
const SINK_MAC: MacAddr = MacAddr([0x02, 0x98, 0, 0, 0, 0x99]);

/// Sends a few broadcast frames from [`SINK_MAC`] out of `ifname`, so the
/// device under test learns where that address is.
fn announce(ifname: &str) {
    let mut port = AfPacketPort::open(ifname, AfPacketConfig::default()).expect("open the sink's port");
    let mut pool = PacketPool::new(8, 2048);
    let mut f = vec![0u8; 60];
    f[..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&SINK_MAC.0);
    f[12..14].copy_from_slice(&[0x88, 0xb5]); // local experimental ethertype
    for _ in 0..3 {
        let mut batch = vec![Packet::from_frame(&f)];
        port.tx_burst(&mut batch, &mut pool);
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The generator's side: sends frames for `seconds`, at most `rate` per
/// second (0: unlimited); prints how many were sent.
fn generate(a: &[String]) {
    let p = |i: usize| a[i].parse::<u64>().unwrap_or_else(|_| panic!("bad generator argument '{}'", a[i]));
    let (ifname, backend, dst): (&str, &str, MacAddr) = (&a[0], &a[1], a[2].parse().expect("MAC"));
    let vlan = (p(5) != 0).then_some(p(5) as u16);
    let t = Traffic { size: p(3) as usize, flows: p(4) as u32, vlan };
    let (seconds, rate) = (p(6), p(7));
    let src = mac_of_local(ifname);
    let frames: Vec<Packet> = frames::build(&t, dst, src).iter().map(|f| Packet::from_frame(f)).collect();
    let mut port: Box<dyn Port> = match backend {
        "afxdp" => Box::new(AfXdpPort::open(ifname, XdpModeRequest::BestEffort).expect("open the AF_XDP generator")),
        _ => Box::new(AfPacketPort::open(ifname, AfPacketConfig::default()).expect("open the AF_PACKET generator")),
    };
    let mut pool = PacketPool::new(4096, 2048);
    let mut batch = Vec::with_capacity(BURST);
    let (mut sent, mut next) = (0u64, 0usize);
    let start = Instant::now();
    let end = start + Duration::from_secs(seconds);
    let mut now = start;
    while now < end {
        if rate > 0 {
            let allowed = (rate as f64 * (now - start).as_secs_f64()) as u64;
            if allowed < sent + BURST as u64 {
                std::thread::sleep(Duration::from_micros(50));
                now = Instant::now();
                continue;
            }
        }
        for _ in 0..BURST {
            let mut p = pool.get();
            p.copy_from(&frames[next]);
            batch.push(p);
            next = (next + 1) % frames.len();
        }
        sent += port.tx_burst(&mut batch, &mut pool).sent as u64;
        now = Instant::now();
    }
    println!("{sent}");
}

fn mac_of_local(ifname: &str) -> MacAddr {
    std::fs::read_to_string(format!("/sys/class/net/{ifname}/address"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(MacAddr([2, 0, 0, 0, 0, 1]))
}

/// The generator and sink namespaces and their veths.
struct Lab {
    generator: NetNs,
    sink: NetNs,
    gv: Veth,
    sv: Veth,
}

impl Lab {
    fn new() -> Lab {
        let (generator, sink) = (NetNs::new(), NetNs::new());
        let gv = Veth::new(&generator, "10.98.0.1/24");
        let sv = Veth::new(&sink, "10.98.0.2/24");
        Lab { generator, sink, gv, sv }
    }
}

struct Sample {
    offered: f64,
    delivered: f64,
    cpu: Option<f64>,
    /// The device's busy cycles per packet received, by its own counters.
    cycles_per_packet: Option<f64>,
}

/// Runs the generator once through a running device.
fn run_once(args: &Args, lab: &Lab, dev: &dut::Running, t: &Traffic, seconds: u64) -> Result<Sample, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    let ann = lab.sink.exec(&[me.to_str().unwrap(), "--announce", &lab.sv.inner]);
    if !ann.status.success() {
        return Err(format!("the sink's announcement failed: {}", String::from_utf8_lossy(&ann.stderr).trim()));
    }
    let dst = SINK_MAC;
    let before = counter(&lab.sink, &lab.sv.inner, "rx_packets");
    let c0 = dev.cpu_seconds();
    let k0 = dev.cycles();
    let t0 = Instant::now();
    let out = lab.generator.exec(&[
        me.to_str().unwrap(),
        "--generate",
        &lab.gv.inner,
        &args.generator,
        &dst.to_string(),
        &t.size.to_string(),
        &t.flows.to_string(),
        &t.vlan.unwrap_or(0).to_string(),
        &seconds.to_string(),
        &args.rate.to_string(),
    ]);
    if !out.status.success() {
        return Err(format!("the generator failed: {}", String::from_utf8_lossy(&out.stderr).trim()));
    }
    std::thread::sleep(Duration::from_millis(200)); // let queues drain
    let elapsed = t0.elapsed().as_secs_f64();
    let cpu = c0.zip(dev.cpu_seconds()).map(|(a, b)| (b - a) / elapsed);
    let cycles_per_packet = k0.zip(dev.cycles()).and_then(|(a, b)| {
        let packets = b.packets.saturating_sub(a.packets);
        (packets > 0).then(|| b.busy.saturating_sub(a.busy) as f64 / packets as f64)
    });
    let sent: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
    let got = counter(&lab.sink, &lab.sv.inner, "rx_packets") - before;
    Ok(Sample { offered: sent as f64 / seconds as f64, delivered: got as f64 / seconds as f64, cpu, cycles_per_packet })
}

/// What iperf3 said went wrong (its JSON report's "error"), or the
/// start of its output.
fn iperf3_error(output: &str) -> String {
    let said =
        output.split("\"error\":").nth(1).and_then(|rest| rest.trim_start().strip_prefix('"')?.split('"').next());
    said.map_or_else(|| output.chars().take(200).collect(), str::to_string)
}

/// Round-trip times in µs of `count` pings from the generator to the
/// sink, and the share lost.
fn ping(lab: &Lab, count: u32) -> (Vec<f64>, f64) {
    let out = lab.generator.exec(&["ping", "-n", "-c", &count.to_string(), "-i", "0.01", "-W", "1", "10.98.0.2"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let rtts: Vec<f64> = text
        .lines()
        .filter_map(|l| l.split("time=").nth(1))
        .filter_map(|t| t.split_whitespace().next()?.parse::<f64>().ok())
        .map(|ms| ms * 1000.0)
        .collect();
    let loss = 1.0 - rtts.len() as f64 / count.max(1) as f64;
    (rtts, loss)
}

fn latency(args: &Args, lab: &Lab, device: &str, pings: u32) -> Latency {
    let (idle, idle_loss) = ping(lab, pings);
    // Under load: the generator at full rate (64-byte frames) meanwhile,
    // through AF_PACKET whatever --generator says: an AF_XDP socket would
    // take the ping replies off the generator's interface too.
    let me = std::env::current_exe().expect("own path");
    let secs = (pings as u64 / 100 + 2).to_string();
    let dst = SINK_MAC.to_string();
    let rate = args.rate.to_string();
    let gen_args = [me.to_str().unwrap(), "--generate", &lab.gv.inner, "afpacket", &dst, "64", "1", "0", &secs, &rate];
    let mut load = lab.generator.spawn(&gen_args);
    std::thread::sleep(Duration::from_millis(300));
    let (busy, load_loss) = ping(lab, pings);
    let _ = load.wait();
    Latency {
        device: device.to_string(),
        idle_p50_us: percentile(&idle, 50.0),
        idle_p99_us: percentile(&idle, 99.0),
        idle_loss,
        load_p50_us: percentile(&busy, 50.0),
        load_p99_us: percentile(&busy, 99.0),
        load_loss,
    }
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpus} CPUs ({model}), Linux {}", kernel.trim())
}

fn main() {
    let mut args = Args::parse();
    if !args.generate.is_empty() {
        return generate(&args.generate);
    }
    if let Some(ifname) = &args.announce {
        return announce(ifname);
    }
    if args.smoke {
        (args.seconds, args.reps, args.sizes, args.flows, args.pings) = (1, 1, vec![64], vec![1], 20);
        (args.tcp_seconds, args.streams) = (1, vec![1]);
    }
    let fail = |m: String| -> ! {
        eprintln!("vswitch-bench: {m}");
        std::process::exit(1)
    };
    let duts: Vec<Dut> =
        args.duts.iter().map(|d| Dut::parse(d, args.rules)).collect::<Result<_, _>>().unwrap_or_else(|e| fail(e));
    let traffic: Vec<Traffic> = args
        .sizes
        .iter()
        .flat_map(|&size| args.flows.iter().map(move |&flows| Traffic { size, flows, vlan: None }))
        .map(|t| Traffic { vlan: args.vlan, ..t })
        .collect();
    for t in &traffic {
        t.check().unwrap_or_else(|e| fail(e));
    }
    if !matches!(args.generator.as_str(), "afxdp" | "afpacket") {
        fail(format!("--generator {}: afxdp or afpacket", args.generator));
    }
    if args.seconds == 0 || args.reps == 0 {
        fail("--seconds and --reps must be at least 1".into());
    }
    // Ctrl-C or SIGTERM: stop after the current run, tear down, report.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    let lab = Lab::new();
    let mut report = Report {
        machine: machine(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        seconds: args.seconds,
        repetitions: args.reps,
        generator: format!(
            "{}; this switch's datapath {}",
            args.generator,
            if args.busy { "busy-polling (--busy)" } else { "with adaptive idle" }
        ) + &if args.pin.is_empty() { String::new() } else { format!(", pinned to CPU {:?}", args.pin) },
        rows: vec![],
        idle_cpu: vec![],
        latency: vec![],
        tcp: vec![],
        skipped: vec![],
        ratios: vec![],
        interrupted: false,
    };
    let total = duts.len() * traffic.len() * args.reps;
    let mut step = 0;
    // Repetitions are the outer loop: each one measures every device in
    // turn, so a machine that gets faster or slower during the run (these
    // are shared machines) moves every device's figures alike instead of
    // favouring whichever ran at the good moment.
    let mut samples: Vec<Vec<Vec<Sample>>> =
        duts.iter().map(|_| traffic.iter().map(|_| Vec::new()).collect()).collect();
    let mut skipped = vec![false; duts.len()];
    'reps: for rep in 0..args.reps {
        for (di, d) in duts.iter().enumerate() {
            let name = d.name();
            if skipped[di] {
                step += traffic.len();
                continue;
            }
            let mut skip = |why: String, report: &mut Report| {
                eprintln!("[{name}] skipped: {why}");
                report.skipped.push(Skipped { device: name.clone(), reason: why });
                skipped[di] = true;
            };
            let running = match d.start(&lab.gv.host, &lab.sv.host, args.busy, &args.pin) {
                Ok(r) => r,
                Err(why) => {
                    skip(why, &mut report);
                    step += traffic.len();
                    continue;
                }
            };
            // Check the path (and let the device learn the hosts) first.
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut reachable = true;
            while !lab.sink.ping("10.98.0.1", 1) {
                if Instant::now() > deadline {
                    reachable = false;
                    break;
                }
            }
            if !reachable {
                skip("no ping through the device".into(), &mut report);
                step += traffic.len();
                continue;
            }
            if rep == 0 {
                let c0 = running.cpu_seconds();
                std::thread::sleep(Duration::from_secs(1));
                report.idle_cpu.push((name.clone(), c0.zip(running.cpu_seconds()).map(|(a, b)| b - a)));
            }
            for (ti, t) in traffic.iter().enumerate() {
                step += 1;
                if stop.load(Ordering::Relaxed) {
                    report.interrupted = true;
                    break 'reps;
                }
                eprint!("[{step}/{total}] run {}/{}, {name}, {} B, {} flow(s): ", rep + 1, args.reps, t.size, t.flows);
                match run_once(&args, &lab, &running, t, args.seconds) {
                    Ok(s) => {
                        eprintln!("{:.3} Mpps delivered of {:.3} offered", s.delivered / 1e6, s.offered / 1e6);
                        samples[di][ti].push(s);
                    }
                    Err(e) => eprintln!("{e}"),
                }
            }
            if rep + 1 == args.reps && !stop.load(Ordering::Relaxed) {
                eprintln!("[{name}] latency: {} pings idle, {} under load", args.pings, args.pings);
                report.latency.push(latency(&args, &lab, &name, args.pings));
                for &streams in args.streams.iter().filter(|_| args.tcp_seconds > 0) {
                    let run = iperf3_streams(&lab.generator, &lab.sink, "10.98.0.2", args.tcp_seconds, streams);
                    let gbps = (run.bytes > 0).then_some(run.bits_per_second / 1e9);
                    match gbps {
                        Some(g) => eprintln!("[{name}] TCP, {streams} stream(s): {g:.2} Gbit/s"),
                        None => eprintln!("[{name}] TCP, {streams} stream(s): failed: {}", iperf3_error(&run.output)),
                    }
                    report.tcp.push(report::Tcp { device: name.clone(), ours: d.is_ours(), streams, gbps });
                }
            }
        }
    }
    for (di, d) in duts.iter().enumerate() {
        for (ti, t) in traffic.iter().enumerate() {
            let s = &samples[di][ti];
            if s.is_empty() {
                continue;
            }
            let col = |f: &dyn Fn(&Sample) -> f64| Summary::of(&s.iter().map(f).collect::<Vec<_>>()).unwrap();
            let losses: Vec<f64> = s.iter().map(|s| (1.0 - s.delivered / s.offered.max(1.0)).max(0.0)).collect();
            let cpus: Vec<f64> = s.iter().filter_map(|s| s.cpu).collect();
            let cycles: Vec<f64> = s.iter().filter_map(|s| s.cycles_per_packet).collect();
            report.rows.push(Row {
                device: d.name(),
                ours: d.is_ours(),
                frame_size: t.size,
                flows: t.flows,
                offered_mpps: col(&|s| s.offered / 1e6),
                delivered_mpps: col(&|s| s.delivered / 1e6),
                delivered_gbps: col(&|s| s.delivered * t.size as f64 * 8.0 / 1e9),
                loss: Summary::of(&losses).map_or(0.0, |s| s.median),
                cpu_cores: Summary::of(&cpus),
                cycles_per_packet: Summary::of(&cycles),
            });
        }
    }
    report.compute_ratios();
    let md = report.markdown();
    println!("{md}");
    if let Err(e) = std::fs::create_dir_all(&args.out) {
        fail(format!("{}: {e}", args.out.display()));
    }
    let write = |f: &str, data: &[u8]| {
        if let Err(e) = std::fs::write(args.out.join(f), data) {
            fail(format!("{f}: {e}"));
        }
    };
    write("report.md", md.as_bytes());
    write("report.json", serde_json::to_string_pretty(&report).unwrap_or_default().as_bytes());
    if let Err(e) = report.svg(&args.out.join("report.svg")) {
        fail(format!("report.svg: {e}"));
    }
    eprintln!("reports in {}/report.{{md,json,svg}}", args.out.display());
}
