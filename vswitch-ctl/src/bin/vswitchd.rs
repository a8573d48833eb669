//! vswitchd: runs a switch, replays its saved configuration, serves its
//! control socket and saves every change, until SIGTERM or SIGINT; then
//! shuts down cleanly (ports detached, XDP programs removed, TAP devices
//! deleted, the socket file unlinked).

use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, ValueEnum};
use vswitch_core::Switch;
use vswitch_core::config::{Loaded, Store};
use vswitch_core::control::{Control, ControlServer};

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
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("vswitchd: error: {msg}");
    std::process::exit(1);
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
    let switch = Switch::builder()
        .pmd_threads(args.pmd_threads)
        .pin_cpus(&args.pin_cpus)
        .build()
        .map(Arc::new)
        .unwrap_or_else(|e| fail(e));
    let store = Store::new(&args.db).unwrap_or_else(|e| fail(e));
    match store.load().unwrap_or_else(|e| fail(e)) {
        Loaded::Missing => log(Level::Info, &format!("no configuration at {} yet: starting empty", args.db.display())),
        Loaded::Corrupt { reason, kept } => log(
            Level::Error,
            &format!(
                "the configuration at {} is corrupt ({reason}); it was kept as {} and vswitchd starts empty",
                args.db.display(),
                kept.display()
            ),
        ),
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
    let control = Control::with_store(switch.clone(), store)
        .default_port_type(&args.default_port_type)
        .unwrap_or_else(|e| fail(e));
    let server = ControlServer::serve(control, &path).unwrap_or_else(|e| fail(e));
    log(
        Level::Info,
        &format!(
            "serving {} with {} datapath thread(s), configuration in {}",
            path.display(),
            args.pmd_threads,
            args.db.display()
        ),
    );
    let signal = signals.forever().next();
    log(Level::Info, &format!("signal {signal:?}, shutting down"));
    // The server first (no new requests), then the switch: its ports are
    // detached, XDP programs removed, datapath threads joined.
    drop(server);
    drop(switch);
    log(Level::Info, "stopped");
}
