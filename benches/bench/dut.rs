//! Devices under test: this switch (each backend, NORMAL or a flow table,
//! or two switches joined by VXLAN), the Linux bridge, and Open vSwitch's
//! userspace datapath when it is installed. Each is set up between the
//! generator's and the sink's veth ends and torn down when dropped.

use std::path::PathBuf;
use std::process::Command;

use vswitch_core::config::PortSpec;
use vswitch_core::{IdlePolicy, OnOpenError, PortConfig, Switch};
use vswitch_tests::netns::{run, unique};
use vswitch_tests::process_cpu_seconds;

/// A kernel-port backend.
// (Every kernel socket for packets starts with "AF_".)
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// AF_PACKET with its default receive ring of frames (TPACKET_V2).
    AfPacket,
    /// AF_PACKET with a ring of blocks (TPACKET_V3,
    /// `options:rx_mode=ring`; this switch only).
    AfPacketBlocks,
    /// AF_PACKET receiving with recvmmsg (`options:rx_mode=socket`; this
    /// switch only).
    AfPacketSocket,
    AfXdp,
}

impl Backend {
    fn name(self) -> &'static str {
        match self {
            Backend::AfPacket => "afpacket",
            Backend::AfPacketSocket => "afpsock",
            Backend::AfPacketBlocks => "afpring",
            Backend::AfXdp => "afxdp",
        }
    }
}

/// What this switch does with the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// MAC learning.
    Normal,
    /// A flow table of this many rules, one per generated flow's source
    /// (more rules than flows leave some unused), and rules for the rest.
    Flows(usize),
    /// Two switches in one process: the generator's port and a VXLAN port
    /// on one, the sink's port and a VXLAN port on the other, the tunnel
    /// over the loopback interface.
    Vxlan,
    /// Two switches in one process joined by native VXLAN: each tunnel
    /// port sends and receives through an uplink port (of the same
    /// backend) on its end of a veth underlay of 1,600 bytes, with its own
    /// outer headers and ARP; the kernel holds no address on the underlay.
    Native,
}

/// A device under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dut {
    Vswitch(Backend, Mode),
    LinuxBridge,
    /// The kernel's own overlay, the peer of `vswitch-BACKEND-vxlan`: on
    /// each side a namespace with a Linux bridge joining the host-side
    /// interface to a `vxlan` device, the two joined by a veth underlay.
    LinuxVxlan,
    Ovs(Backend),
}

/// The devices measured when none are named.
pub const DEFAULT: &str = "vswitch-afpacket,vswitch-afxdp,vswitch-afxdp-flows,vswitch-afpacket-vxlan,vswitch-afxdp-native,linux-bridge,linux-vxlan,ovs-afpacket,ovs-afxdp";

impl Dut {
    /// Parses a device name (see [`DEFAULT`]); `rules` sizes the flow mode.
    pub fn parse(s: &str, rules: usize) -> Result<Dut, String> {
        let backend = |b: &str| match b {
            "afpacket" => Ok(Backend::AfPacket),
            "afpsock" => Ok(Backend::AfPacketSocket),
            "afpring" => Ok(Backend::AfPacketBlocks),
            "afxdp" => Ok(Backend::AfXdp),
            _ => Err(format!("unknown backend '{b}' in '{s}' (afpacket, afpring, afpsock, afxdp)")),
        };
        let parts: Vec<&str> = s.split('-').collect();
        match parts.as_slice() {
            ["linux", "bridge"] => Ok(Dut::LinuxBridge),
            ["linux", "vxlan"] => Ok(Dut::LinuxVxlan),
            ["ovs", b] => Ok(Dut::Ovs(backend(b)?)),
            ["vswitch", b] => Ok(Dut::Vswitch(backend(b)?, Mode::Normal)),
            ["vswitch", b, "flows"] => Ok(Dut::Vswitch(backend(b)?, Mode::Flows(rules))),
            ["vswitch", b, "vxlan"] => Ok(Dut::Vswitch(backend(b)?, Mode::Vxlan)),
            ["vswitch", b, "native"] => Ok(Dut::Vswitch(backend(b)?, Mode::Native)),
            _ => Err(format!(
                "unknown device '{s}' (vswitch-BACKEND, vswitch-BACKEND-flows, vswitch-BACKEND-vxlan, vswitch-BACKEND-native, linux-bridge, linux-vxlan, ovs-BACKEND)"
            )),
        }
    }

    /// The name in reports.
    pub fn name(&self) -> String {
        match self {
            Dut::Vswitch(b, Mode::Normal) => format!("vswitch-{}", b.name()),
            Dut::Vswitch(b, Mode::Flows(n)) => format!("vswitch-{}-flows{n}", b.name()),
            Dut::Vswitch(b, Mode::Vxlan) => format!("vswitch-{}-vxlan", b.name()),
            Dut::Vswitch(b, Mode::Native) => format!("vswitch-{}-native", b.name()),
            Dut::LinuxBridge => "linux-bridge".into(),
            Dut::LinuxVxlan => "linux-vxlan".into(),
            Dut::Ovs(b) => format!("ovs-{}", b.name()),
        }
    }

    /// True for this switch's own configurations (the others are peers).
    pub fn is_ours(&self) -> bool {
        matches!(self, Dut::Vswitch(..))
    }

    /// Sets the device up between host-side interfaces `a` (generator)
    /// and `b` (sink). `Err` says why it cannot be measured here (the
    /// device is then reported as skipped).
    /// `busy`: this switch's datapath never sleeps (as OVS's PMD threads);
    /// `pin`: the CPUs its datapath threads are pinned to.
    pub fn start(&self, a: &str, b: &str, busy: bool, pin: &[usize]) -> Result<Running, String> {
        match *self {
            Dut::Vswitch(backend, mode) => start_vswitch(backend, mode, a, b, busy, pin),
            Dut::LinuxBridge => {
                // A plain bridge: bridged frames skip iptables.
                for f in ["iptables", "ip6tables", "arptables"] {
                    let _ = std::fs::write(format!("/proc/sys/net/bridge/bridge-nf-call-{f}"), "0");
                }
                let br = unique("vbr");
                run(&["ip", "link", "add", &br, "type", "bridge"]);
                let guard = BridgeGuard(br.clone());
                for p in [a, b] {
                    run(&["ip", "link", "set", p, "master", &br]);
                }
                run(&["ip", "link", "set", &br, "up"]);
                Ok(Running { cpu: Cpu::Softirq, cycles: None, _keep: Box::new(guard) })
            }
            Dut::LinuxVxlan => {
                let guard = KernelVxlan::start(a, b)?;
                Ok(Running { cpu: Cpu::Softirq, cycles: None, _keep: Box::new(guard) })
            }
            Dut::Ovs(backend) => Ovs::start(backend, a, b).map(|ovs| {
                let dir = ovs.dir.clone();
                let cycles = Box::new(move || {
                    let out = Command::new("ovs-appctl")
                        .args(["-t", "ovs-vswitchd", "dpif-netdev/pmd-stats-show"])
                        .env("OVS_RUNDIR", &dir)
                        .output()
                        .ok()
                        .filter(|o| o.status.success())?;
                    // The main thread, which polls `system` ports, counts
                    // packets but no cycles: no figure rather than zero.
                    Some(ovs_cycles(&String::from_utf8_lossy(&out.stdout))).filter(|c| c.busy > 0)
                });
                Running { cpu: Cpu::Process(ovs.vswitchd_pid.clone()), cycles: Some(cycles), _keep: Box::new(ovs) }
            }),
        }
    }
}

fn start_vswitch(backend: Backend, mode: Mode, a: &str, b: &str, busy: bool, pin: &[usize]) -> Result<Running, String> {
    let e = |e: vswitch_core::Error| e.to_string();
    let add_to = |sw: &Switch, bridge: &str, ifname: &str| -> Result<(), String> {
        match backend {
            Backend::AfPacket => sw.add_afpacket_port(bridge, ifname, PortConfig::default()),
            Backend::AfPacketSocket | Backend::AfPacketBlocks => {
                let mut spec = PortSpec::new(ifname, vswitch_core::config::PortKind::AfPacket);
                let mode = if backend == Backend::AfPacketSocket { "socket" } else { "ring" };
                spec.options.insert("rx_mode".into(), mode.into());
                sw.add_port_spec(bridge, &spec, OnOpenError::Fail)
            }
            Backend::AfXdp => sw.add_afxdp_port(bridge, ifname, PortConfig::default()),
        }
        .map(|_| ())
        .map_err(e)
    };
    let add = |sw: &Switch, ifname: &str| add_to(sw, "br0", ifname);
    let mut underlay = None;
    let one = || -> Result<Switch, String> {
        let idle = if busy { IdlePolicy::Busy } else { IdlePolicy::default() };
        let sw = Switch::builder().idle_policy(idle).pin_cpus(pin).build().map_err(e)?;
        sw.add_bridge("br0").map_err(e)?;
        Ok(sw)
    };
    let switches = match mode {
        Mode::Normal | Mode::Flows(_) => {
            let sw = one()?;
            add(&sw, a)?;
            add(&sw, b)?;
            if let Mode::Flows(n) = mode {
                // A rule per generated source (10.1.x.y), each sending to
                // port 2; other traffic (ARP, ping) crosses in both
                // directions at a lower priority.
                let mut rules: Vec<String> = (0..n as u32)
                    .map(|i| {
                        let (src, _) = crate::frames::flow_source(i);
                        let ip = std::net::Ipv4Addr::from(src);
                        format!("priority=100,ip,in_port=1,nw_src={ip},actions=output:2")
                    })
                    .collect();
                rules.push("priority=10,in_port=1,actions=output:2".into());
                rules.push("priority=10,in_port=2,actions=output:1".into());
                sw.replace_flows("br0", &rules).map_err(e)?;
            }
            vec![sw]
        }
        Mode::Vxlan => {
            let (sa, sb) = (one()?, one()?);
            add(&sa, a)?;
            add(&sb, b)?;
            for (sw, local, remote) in [(&sa, "127.0.0.1", "127.0.0.2"), (&sb, "127.0.0.2", "127.0.0.1")] {
                let mut vx = PortSpec::new(&unique("vx"), vswitch_core::config::PortKind::Vxlan);
                vx.options.insert("local_ip".into(), local.into());
                vx.options.insert("remote_ip".into(), remote.into());
                vx.options.insert("key".into(), "1".into());
                vx.options.insert("dst_port".into(), "4790".into());
                sw.add_port_spec("br0", &vx, OnOpenError::Fail).map_err(e)?;
            }
            vec![sa, sb]
        }
        Mode::Native => {
            let (sa, sb) = (one()?, one()?);
            add(&sa, a)?;
            add(&sb, b)?;
            let u = Underlay::start()?;
            for (sw, uplink, local, remote) in [(&sa, &u.a, &u.ip_a, &u.ip_b), (&sb, &u.b, &u.ip_b, &u.ip_a)] {
                sw.add_bridge("br-phy").map_err(e)?;
                add_to(sw, "br-phy", uplink)?;
                let mut vx = PortSpec::new(&unique("vx"), vswitch_core::config::PortKind::Vxlan);
                vx.options.insert("local_ip".into(), local.clone());
                vx.options.insert("remote_ip".into(), remote.clone());
                vx.options.insert("key".into(), "1".into());
                vx.options.insert("uplink".into(), uplink.clone());
                sw.add_port_spec("br0", &vx, OnOpenError::Fail).map_err(e)?;
            }
            underlay = Some(u);
            vec![sa, sb]
        }
    };
    // The switches go before their underlay.
    let switches = std::sync::Arc::new((switches, underlay));
    let s = switches.clone();
    let cycles = Box::new(move || {
        let mut c = Cycles::default();
        for t in s.0.iter().flat_map(|sw| sw.pmd_stats()) {
            c.busy += t.busy_cycles;
            c.packets += t.packets;
        }
        Some(c)
    });
    Ok(Running { cpu: Cpu::Process("self".into()), cycles: Some(cycles), _keep: Box::new(switches) })
}

/// A device's datapath threads' busy (processing) cycles and the packets
/// they received, as running totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cycles {
    pub busy: u64,
    pub packets: u64,
}

/// Open vSwitch's `dpif-netdev/pmd-stats-show`, summed over its threads
/// (each PMD thread and the main thread, which polls `system` ports):
/// "processing cycles" (its iterations that did work) and "packets
/// received".
fn ovs_cycles(text: &str) -> Cycles {
    let mut c = Cycles::default();
    let first_number = |rest: &str| rest.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("processing cycles:") {
            c.busy += first_number(rest);
        } else if let Some(rest) = line.strip_prefix("packets received:") {
            c.packets += first_number(rest);
        }
    }
    c
}

/// Where a device's CPU time is read.
#[derive(Debug, Clone)]
pub enum Cpu {
    /// A process's (`self` for this switch, in this process).
    Process(String),
    /// The kernel's softirq time, not attributable here.
    Softirq,
}

/// A device that is set up; torn down on drop.
pub struct Running {
    pub cpu: Cpu,
    /// Reads the device's own cycle counters, where it has them.
    cycles: Option<Box<dyn Fn() -> Option<Cycles>>>,
    _keep: Box<dyn std::any::Any>,
}

impl Running {
    /// CPU seconds used so far, if attributable.
    pub fn cpu_seconds(&self) -> Option<f64> {
        match &self.cpu {
            Cpu::Process(pid) => process_cpu_seconds(pid),
            Cpu::Softirq => None,
        }
    }

    /// The device's busy cycles and packets so far (this switch's
    /// pmd-stats, Open vSwitch's pmd-stats-show), if it counts them.
    pub fn cycles(&self) -> Option<Cycles> {
        self.cycles.as_ref().and_then(|f| f())
    }
}

/// The kernel's VXLAN overlay: the host-side interfaces moved into two
/// namespaces of their own, each with a bridge and a `vxlan` device (VNI
/// 42), over a veth underlay whose MTU (65,535) leaves the overlay room
/// for any frame, as this switch's loopback underlay does. Dropping it
/// moves the interfaces back, up, and deletes the namespaces.
struct KernelVxlan {
    /// The namespaces this one created.
    namespaces: Vec<String>,
    /// Host interfaces moved, with the index of the namespace they are in.
    moved: Vec<(usize, String)>,
}

impl KernelVxlan {
    fn start(a: &str, b: &str) -> Result<KernelVxlan, String> {
        let mut k = KernelVxlan { namespaces: Vec::new(), moved: Vec::new() };
        let sh = |args: &[&str]| -> Result<(), String> {
            let out = Command::new(args[0]).args(&args[1..]).output().map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
            }
        };
        for _ in 0..2 {
            let ns = unique("kvx");
            sh(&["ip", "netns", "add", &ns])?;
            k.namespaces.push(ns);
        }
        let (na, nb) = (k.namespaces[0].clone(), k.namespaces[1].clone());
        let under = ["u0", "u1"];
        sh(&[
            "ip", "link", "add", under[0], "netns", &na, "mtu", "65535", "type", "veth", "peer", "name", under[1],
            "netns", &nb, "mtu", "65535",
        ])?;
        for (i, (ns, host)) in [(&na, a), (&nb, b)].into_iter().enumerate() {
            // A plain bridge, as the root namespace's (these settings are
            // per namespace, and on in a new one while br_netfilter is
            // loaded; absent while it is not).
            for f in ["iptables", "ip6tables", "arptables"] {
                let _ = sh(&["ip", "netns", "exec", ns, "sysctl", "-qw", &format!("net.bridge.bridge-nf-call-{f}=0")]);
            }
            sh(&["ip", "link", "set", host, "netns", ns])?;
            k.moved.push((i, host.to_string()));
            let ip = |args: &[&str]| {
                let mut v = vec!["ip", "-n", ns.as_str()];
                v.extend_from_slice(args);
                sh(&v)
            };
            let (local, remote) =
                if i == 0 { ("192.168.251.1", "192.168.251.2") } else { ("192.168.251.2", "192.168.251.1") };
            ip(&["addr", "add", &format!("{local}/24"), "dev", under[i]])?;
            ip(&["link", "set", under[i], "up"])?;
            ip(&[
                "link", "add", "vx0", "type", "vxlan", "id", "42", "local", local, "remote", remote, "dstport", "4789",
            ])?;
            ip(&["link", "add", "br0", "type", "bridge"])?;
            for dev in [host, "vx0"] {
                ip(&["link", "set", dev, "master", "br0"])?;
                ip(&["link", "set", dev, "up"])?;
            }
            ip(&["link", "set", "br0", "up"])?;
        }
        Ok(k)
    }
}

impl Drop for KernelVxlan {
    /// Moves the host interfaces back (up, as they were) before the
    /// namespaces go: deleting a namespace that still held one would
    /// destroy its veth pair, and the rest of the run with it.
    fn drop(&mut self) {
        let me = std::process::id().to_string();
        let mut kept = Vec::new();
        for (i, host) in &self.moved {
            let ns = &self.namespaces[*i];
            let _ = Command::new("ip").args(["-n", ns, "link", "set", host, "nomaster"]).output();
            let back = Command::new("ip").args(["-n", ns, "link", "set", host, "netns", &me]).output();
            match back {
                Ok(o) if o.status.success() => {
                    let _ = Command::new("ip").args(["link", "set", host, "up"]).output();
                }
                other => {
                    eprintln!("linux-vxlan: could not move {host} back from {ns}: {other:?}; {ns} is left for it");
                    kept.push(*i);
                }
            }
        }
        for (i, ns) in self.namespaces.iter().enumerate() {
            if !kept.contains(&i) {
                let _ = Command::new("ip").args(["netns", "del", ns]).output();
            }
        }
    }
}

struct BridgeGuard(String);

/// A veth pair for native tunnels' underlay, in this namespace, of 1,600
/// bytes (room for a 1,500-byte inner frame and 50 of VXLAN): no
/// address on either end (the switches own 172.30.N.1 and .2 and answer
/// ARP for them), a /32 route to each through the other end's peer, and
/// forwarding off on both so the kernel never routes what it sees of the
/// tunnel traffic back out. Deleted on drop.
struct Underlay {
    a: String,
    b: String,
    ip_a: String,
    ip_b: String,
}

impl Underlay {
    fn start() -> Result<Underlay, String> {
        let (a, b) = (unique("ula"), unique("ulb"));
        let n = std::process::id() % 250 + 1;
        let (ip_a, ip_b) = (format!("172.30.{n}.1"), format!("172.30.{n}.2"));
        let ok = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().map_err(|e| format!("ip: {e}"))?;
            if st.success() { Ok(()) } else { Err(format!("ip {} failed", args.join(" "))) }
        };
        ok(&["link", "add", &a, "mtu", "1600", "type", "veth", "peer", "name", &b, "mtu", "1600"])?;
        let u = Underlay { a, b, ip_a, ip_b };
        for dev in [&u.a, &u.b] {
            let _ = std::fs::write(format!("/proc/sys/net/ipv4/conf/{dev}/forwarding"), "0");
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{dev}/disable_ipv6"), "1");
            ok(&["link", "set", dev, "up"])?;
        }
        ok(&["route", "add", &format!("{}/32", u.ip_b), "dev", &u.a])?;
        ok(&["route", "add", &format!("{}/32", u.ip_a), "dev", &u.b])?;
        Ok(u)
    }
}

impl Drop for Underlay {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.a]).status();
    }
}

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

/// Open vSwitch with the userspace (netdev) datapath, run from a private
/// directory: ovsdb-server and ovs-vswitchd, one bridge with two ports.
/// OVS's own ports are `system` (AF_PACKET sockets) or `afxdp`.
struct Ovs {
    dir: PathBuf,
    vswitchd_pid: String,
    /// Its bridge (a TAP device of that name while it lives).
    bridge: String,
    /// `ovs-netdev` (the userspace datapath's own TAP) was there before
    /// this one started: someone else's, left alone.
    had_netdev: bool,
}

/// True if network interface `name` exists (in this namespace).
fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

impl Ovs {
    fn start(backend: Backend, a: &str, b: &str) -> Result<Ovs, String> {
        let which = |t: &str| Command::new("sh").args(["-c", &format!("command -v {t}")]).output();
        for tool in ["ovs-vswitchd", "ovsdb-server", "ovsdb-tool", "ovs-vsctl"] {
            if !which(tool).is_ok_and(|o| o.status.success()) {
                return Err(format!(
                    "{tool} is not installed (benches/install-ovs.sh installs Debian's openvswitch-switch)"
                ));
            }
        }
        let schema = ["/usr/share/openvswitch/vswitch.ovsschema", "/usr/local/share/openvswitch/vswitch.ovsschema"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .ok_or("vswitch.ovsschema not found")?;
        let dir = std::env::temp_dir().join(unique("ovs"));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut ovs = Ovs {
            dir: dir.clone(),
            vswitchd_pid: String::new(),
            bridge: String::new(),
            had_netdev: link_exists("ovs-netdev"),
        };
        let d = |f: &str| dir.join(f).display().to_string();
        let db = format!("unix:{}", d("db.sock"));
        let sh = |args: &[&str]| -> Result<(), String> {
            let out = Command::new(args[0])
                .args(&args[1..])
                .env("OVS_RUNDIR", &dir)
                .env("OVS_LOGDIR", &dir)
                .env("OVS_DBDIR", &dir)
                .env("OVS_SYSCONFDIR", &dir)
                .output()
                .map_err(|e| format!("{}: {e}", args[0]))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(format!("{:?}: {}", args, String::from_utf8_lossy(&out.stderr).trim()))
            }
        };
        sh(&["ovsdb-tool", "create", &d("conf.db"), schema])?;
        let remote = format!("--remote=punix:{}", d("db.sock"));
        let (pid_db, log_db) =
            (format!("--pidfile={}", d("ovsdb-server.pid")), format!("--log-file={}", d("ovsdb.log")));
        sh(&["ovsdb-server", &remote, &pid_db, &log_db, "--detach", &d("conf.db")])?;
        sh(&["ovs-vsctl", &format!("--db={db}"), "--no-wait", "init"])?;
        // TCP super-frames from veth: without userspace TSO (read at
        // start) OVS's userspace datapath cannot carry them and TCP
        // through it stalls.
        sh(&[
            "ovs-vsctl",
            &format!("--db={db}"),
            "--no-wait",
            "set",
            "Open_vSwitch",
            ".",
            "other_config:userspace-tso-enable=true",
        ])?;
        let (pid_sw, log_sw) =
            (format!("--pidfile={}", d("ovs-vswitchd.pid")), format!("--log-file={}", d("vswitchd.log")));
        sh(&["ovs-vswitchd", &db, &pid_sw, &log_sw, "--detach"])?;
        ovs.vswitchd_pid =
            std::fs::read_to_string(d("ovs-vswitchd.pid")).map_err(|e| format!("ovs-vswitchd pid: {e}"))?.trim().into();
        let br = unique("ovsbr");
        ovs.bridge = br.clone();
        let vsctl = |args: &[&str]| {
            let mut v = vec!["ovs-vsctl".to_string(), format!("--db={db}"), "--timeout=20".into()];
            v.extend(args.iter().map(|s| s.to_string()));
            let refs: Vec<&str> = v.iter().map(String::as_str).collect();
            sh(&refs)
        };
        vsctl(&["add-br", &br, "--", "set", "bridge", &br, "datapath_type=netdev"])?;
        for p in [a, b] {
            match backend {
                // (OVS's own AF_PACKET netdev receives with recvmmsg already.)
                Backend::AfPacket | Backend::AfPacketSocket | Backend::AfPacketBlocks => vsctl(&["add-port", &br, p])?,
                Backend::AfXdp => vsctl(&["add-port", &br, p, "--", "set", "interface", p, "type=afxdp"])?,
            }
        }
        // An interface OVS could not open is reported in its error column.
        for p in [a, b] {
            let out = Command::new("ovs-vsctl")
                .args([&format!("--db={db}"), "get", "interface", p, "error"])
                .output()
                .map_err(|e| e.to_string())?;
            let err = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !err.is_empty() && err != "[]" {
                return Err(format!("OVS could not open {p} as {}: {err}", backend.name()));
            }
        }
        Ok(ovs)
    }
}

impl Drop for Ovs {
    /// Leaves the machine as it was: the bridge deleted, ovs-vswitchd
    /// told to exit with `--cleanup` (without it the userspace datapath
    /// keeps its ports: the bridge's TAP and `ovs-netdev` stay behind),
    /// then ovsdb-server; whatever TAP is still there removed.
    fn drop(&mut self) {
        let dir = &self.dir;
        let run = |args: &[&str]| {
            let _ = Command::new(args[0])
                .args(&args[1..])
                .env("OVS_RUNDIR", dir)
                .env("OVS_LOGDIR", dir)
                .env("OVS_DBDIR", dir)
                .env("OVS_SYSCONFDIR", dir)
                .output();
        };
        if !self.bridge.is_empty() {
            let db = format!("--db=unix:{}", dir.join("db.sock").display());
            run(&["ovs-vsctl", &db, "--timeout=10", "--if-exists", "del-br", &self.bridge]);
        }
        // With OVS_RUNDIR set, `-t NAME` finds NAME's pidfile and control
        // socket (NAME.PID.ctl) there.
        run(&["ovs-appctl", "-t", "ovs-vswitchd", "exit", "--cleanup"]);
        run(&["ovs-appctl", "-t", "ovsdb-server", "exit"]);
        for pid in ["ovs-vswitchd.pid", "ovsdb-server.pid"] {
            if let Ok(p) = std::fs::read_to_string(dir.join(pid)) {
                // Gone already, or told again (a stuck one).
                let _ = Command::new("kill").arg(p.trim()).output();
            }
        }
        for link in [Some(self.bridge.as_str()).filter(|b| !b.is_empty()), (!self.had_netdev).then_some("ovs-netdev")]
            .into_iter()
            .flatten()
        {
            if link_exists(link) {
                let _ = Command::new("ip").args(["link", "del", link]).output();
            }
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ovs_pmd_stats_show_is_summed_over_threads() {
        let text = "pmd thread numa_id 0 core_id 1:\n  packets received: 1000\n  idle cycles: 500 (33.33%)\n  \
                    processing cycles: 1000000 (66.67%)\n  avg processing cycles per packet: 1000.00 (1000000/1000)\n\
                    main thread:\n  packets received: 10\n  processing cycles: 20000 (1.00%)\n";
        assert_eq!(ovs_cycles(text), Cycles { busy: 1_020_000, packets: 1010 });
    }

    #[test]
    fn names_round_trip() {
        for name in DEFAULT.split(',') {
            let d = Dut::parse(name, 1000).unwrap();
            let expect = if name == "vswitch-afxdp-flows" { "vswitch-afxdp-flows1000" } else { name };
            assert_eq!(d.name(), expect);
        }
        assert!(Dut::parse("vswitch-dpdk", 1).is_err());
        assert!(Dut::parse("bridge", 1).is_err());
    }
}
