//! vswitchd: runs a switch, replays its saved configuration, serves its
//! control socket and saves every change, until SIGTERM or SIGINT; then
//! shuts down cleanly (replies flushed, ports detached, XDP programs
//! removed, TAP devices deleted, the socket file unlinked).
//!
//! If a datapath thread fails (a panic), vswitchd logs which one and why,
//! shuts down the same way and exits with status 70, so that its
//! supervisor restarts it from the saved configuration.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use vswitch_core::Switch;
use vswitch_core::config::{Loaded, Store};
use vswitch_core::control::{Control, ControlServer, ServerOptions};
use vswitch_core::events::Event;
use vswitch_core::net::Networks;

/// Exit status after a datapath thread failed (EX_SOFTWARE).
const EXIT_DATAPATH_FAILED: i32 = 70;

/// What ends the daemon.
enum Stop {
    Signal(i32),
    DatapathFailed { thread: String, why: String },
}

/// How much vswitchd says on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
enum Level {
    Error,
    Warn,
    Info,
}

/// The vswitch daemon.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Control socket path (default $VSWITCH_SOCKET or /run/vswitch/vswitchd.sock).
    #[arg(long)]
    socket: Option<String>,
    /// Configuration file: replayed at start, rewritten after each change.
    #[arg(long, default_value = "/var/lib/vswitch/conf.json")]
    db: PathBuf,
    /// Container networks' state and the built-in IPAM's reservations
    /// (default: `net` beside the configuration file).
    #[arg(long)]
    net_dir: Option<PathBuf>,
    /// Poll-mode datapath threads.
    #[arg(long, default_value_t = 1)]
    pmd_threads: usize,
    /// Pin datapath threads to these CPUs (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pin_cpus: Vec<usize>,
    /// The backend of `add-port` without `type=`: afpacket or afxdp.
    #[arg(long, default_value = "afpacket")]
    default_port_type: String,
    /// What to log on stderr.
    #[arg(long, value_enum, default_value = "info")]
    log_level: Level,
    /// Most rules a bridge's flow table holds.
    #[arg(long, default_value_t = 1_000_000)]
    flow_limit: usize,
    /// Milliseconds a request waits for the datapath threads before it
    /// fails with a `timeout` error.
    #[arg(long, default_value_t = 3000)]
    datapath_timeout_ms: u64,
    /// A group (name or gid) whose members may use the control socket,
    /// besides root and this user; the socket becomes 0660 owned by it.
    #[arg(long)]
    group: Option<String>,
    /// Seconds after which an idle client connection is closed.
    #[arg(long, default_value_t = 300)]
    idle_timeout: u64,
    /// Move the configuration file (and its journal) aside to
    /// FILE.reset-SECONDS and start empty, on purpose. Without it an
    /// unusable file (unparseable, truncated, from a newer version)
    /// stops vswitchd from starting.
    #[arg(long)]
    reset_config: bool,
    /// Serve the debug.* test hooks (tests only).
    #[arg(long, hide = true)]
    enable_test_hooks: bool,
}

/// A group's gid, from a number or a name in /etc/group.
fn group_id(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let text = std::fs::read_to_string("/etc/group").map_err(|e| format!("cannot read /etc/group: {e}"))?;
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let (name, _, gid) = (f.next()?, f.next()?, f.next()?);
            (name == group).then(|| gid.parse().ok()).flatten()
        })
        .next()
        .ok_or_else(|| format!("no group named '{group}' in /etc/group"))
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        signal_hook::consts::SIGTERM => "SIGTERM",
        signal_hook::consts::SIGINT => "SIGINT",
        _ => "a signal",
    }
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("vswitchd: error: {msg}");
    std::process::exit(1);
}

/// Logs what the switch tells of its ports as it happens: a port whose
/// code failed (taken down alone; the others go on) and link changes.
fn log_events(switch: &Switch, log_level: Level) {
    let events = switch.subscribe().unwrap_or_else(|e| fail(e));
    let spawned = std::thread::Builder::new().name("vswitchd-events".into()).spawn(move || {
        let log = |level: Level, msg: &str| {
            if level <= log_level {
                let tag = if level == Level::Error { "error: " } else { "" };
                eprintln!("vswitchd: {tag}{msg}");
            }
        };
        while let Some(event) = events.recv() {
            match event {
                Event::PortFailed { bridge, port, why, .. } => log(
                    Level::Error,
                    &format!(
                        "port {port} on {bridge} failed and was taken down ({why}); the other ports go on. \
                         Remove it and add it again to retry"
                    ),
                ),
                Event::LinkChanged { bridge, port, up, .. } => log(
                    Level::Info,
                    &format!("port {port} on {bridge}: link state changed to {}", if up { "up" } else { "down" }),
                ),
                _ => {}
            }
        }
    });
    if let Err(e) = spawned {
        fail(format_args!("cannot start the event logger: {e}"));
    }
}

fn main() {
    let args = Args::parse();
    let log = |level: Level, msg: &str| {
        if level <= args.log_level {
            let tag = match level {
                Level::Error => "error: ",
                Level::Warn => "warning: ",
                Level::Info => "",
            };
            eprintln!("vswitchd: {tag}{msg}");
        }
    };
    let path = PathBuf::from(vswitch_ctl::socket_path(args.socket.as_deref()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        fail(format_args!("cannot create {}: {e}", dir.display()));
    }
    // Before touching any interface: is another daemon serving this socket?
    if std::os::unix::net::UnixStream::connect(&path).is_ok() {
        fail(format_args!("{} is in use: another vswitchd is running", path.display()));
    }
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])
        .unwrap_or_else(|e| fail(format_args!("cannot handle signals: {e}")));
    let gid = args.group.as_deref().map(|g| group_id(g).unwrap_or_else(|e| fail(e)));
    let (stop_tx, stop_rx) = std::sync::mpsc::channel();
    let on_signal = stop_tx.clone();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            let _ = on_signal.send(Stop::Signal(sig));
        }
    });
    let switch = Switch::builder()
        .pmd_threads(args.pmd_threads)
        .pin_cpus(&args.pin_cpus)
        .datapath_timeout(Duration::from_millis(args.datapath_timeout_ms.max(1)))
        .flow_limit(args.flow_limit)
        .on_datapath_failure(move |thread, why| {
            let _ = stop_tx.send(Stop::DatapathFailed { thread: thread.to_string(), why: why.to_string() });
        })
        .build()
        .map(Arc::new)
        .unwrap_or_else(|e| fail(e));
    log_events(&switch, args.log_level);
    let store = Store::new(&args.db).unwrap_or_else(|e| fail(e));
    if args.reset_config {
        match store.set_aside().unwrap_or_else(|e| fail(e)) {
            Some(kept) => log(
                Level::Warn,
                &format!(
                    "--reset-config: the configuration at {} was moved to {}; starting empty",
                    args.db.display(),
                    kept.display()
                ),
            ),
            None => log(Level::Info, &format!("--reset-config: no configuration at {}", args.db.display())),
        }
    }
    match store.load().unwrap_or_else(|e| fail(e)) {
        Loaded::Missing => log(Level::Info, &format!("no configuration at {} yet: starting empty", args.db.display())),
        // Starting empty over it would drop every bridge at the next save.
        Loaded::Unusable { reason } => fail(format_args!(
            "the configuration at {} cannot be used: {reason}. It is left as it is; vswitchd does not start an \
             empty switch over it. Repair it, restore the previous one ({}), or start with --reset-config to \
             move it aside and start empty",
            args.db.display(),
            store.backup_path().display()
        )),
        Loaded::Config(config) => {
            // All or nothing; a configuration that cannot be applied is left
            // as it is for the operator to look at.
            if let Err(e) = switch.apply_config(&config) {
                fail(format_args!(
                    "cannot apply the configuration at {}: {e} (the file is unchanged)",
                    args.db.display()
                ));
            }
            let ports: usize = config.bridges.iter().map(|b| b.ports.len()).sum();
            log(
                Level::Info,
                &format!("restored {} bridge(s), {ports} port(s) from {}", config.bridges.len(), args.db.display()),
            );
            for b in switch.bridges() {
                for p in b.ports.iter().filter_map(|p| Some((&p.name, p.error.as_ref()?))) {
                    log(Level::Warn, &format!("port {} on {}: {} (attached when it can be)", p.0, b.name, p.1));
                }
            }
        }
    }
    let net_dir = args.net_dir.clone().unwrap_or_else(|| {
        args.db.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new(".")).join("net")
    });
    let kernel_type = args
        .default_port_type
        .parse()
        .unwrap_or_else(|_| fail(format_args!("'{}' is not afpacket or afxdp", args.default_port_type)));
    let networks = Networks::open(switch.clone(), &net_dir, kernel_type).unwrap_or_else(|e| fail(e));
    for (name, why) in networks.unwired() {
        log(Level::Warn, &format!("network {name} is not wired ({why}); tried again with every net-* request"));
    }
    let mut control = Control::with_store(switch.clone(), store)
        .default_port_type(&args.default_port_type)
        .unwrap_or_else(|e| fail(e))
        .with_networks(Arc::new(networks));
    if args.enable_test_hooks {
        control = control.with_test_hooks();
    }
    let mut options = ServerOptions::default().idle_timeout(Duration::from_secs(args.idle_timeout.max(1)));
    if let Some(gid) = gid {
        options = options.group(gid);
    }
    let server = ControlServer::serve_with(control, &path, options).unwrap_or_else(|e| fail(e));
    log(
        Level::Info,
        &format!(
            "serving {} with {} datapath thread(s), configuration in {}",
            path.display(),
            args.pmd_threads,
            args.db.display()
        ),
    );
    let status = match stop_rx.recv() {
        Ok(Stop::Signal(sig)) => {
            log(Level::Info, &format!("stopping on {}", signal_name(sig)));
            0
        }
        Ok(Stop::DatapathFailed { thread, why }) => {
            log(
                Level::Error,
                &format!(
                    "datapath thread {thread} failed ({why}); stopping with status {EXIT_DATAPATH_FAILED} \
                     so that the supervisor restarts vswitchd from {}",
                    args.db.display()
                ),
            );
            EXIT_DATAPATH_FAILED
        }
        Err(_) => 0,
    };
    // The server first (no new requests; replies in flight are flushed),
    // then the switch: its ports are detached, XDP programs removed,
    // datapath threads joined. A datapath thread stuck for good would hold
    // that up forever: give it half a minute.
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(30));
        eprintln!("vswitchd: error: shutdown did not finish in 30 s (a datapath thread is stuck); exiting now");
        std::process::exit(if status == 0 { 1 } else { status });
    });
    drop(server);
    drop(switch);
    log(Level::Info, "stopped");
    std::process::exit(status);
}
