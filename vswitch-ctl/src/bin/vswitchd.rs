//! vswitchd: runs a switch and serves its control socket until SIGTERM or
//! SIGINT, then shuts down cleanly (ports detached, XDP programs removed,
//! the socket file unlinked).

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use vswitch_core::Switch;
use vswitch_core::control::ControlServer;

/// The vswitch daemon.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Control socket path (default $VSWITCH_SOCKET or /run/vswitch/vswitchd.sock).
    #[arg(long)]
    socket: Option<String>,
    /// Poll-mode datapath threads.
    #[arg(long, default_value_t = 1)]
    pmd_threads: usize,
    /// Pin datapath threads to these CPUs (comma-separated).
    #[arg(long, value_delimiter = ',')]
    pin_cpus: Vec<usize>,
}

fn main() {
    let args = Args::parse();
    let path = PathBuf::from(vswitch_ctl::socket_path(args.socket.as_deref()));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!("vswitchd: cannot create {}: {e}", dir.display());
        std::process::exit(1);
    }
    let mut signals =
        match signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT]) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("vswitchd: cannot handle signals: {e}");
                std::process::exit(1);
            }
        };
    let switch = match Switch::builder().pmd_threads(args.pmd_threads).pin_cpus(&args.pin_cpus).build() {
        Ok(s) => Arc::new(s),
        Err(e) => {
            eprintln!("vswitchd: {e}");
            std::process::exit(1);
        }
    };
    let server = match ControlServer::start(switch.clone(), &path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("vswitchd: {e}");
            std::process::exit(1);
        }
    };
    eprintln!("vswitchd: serving {} with {} datapath thread(s)", path.display(), args.pmd_threads);
    let signal = signals.forever().next();
    eprintln!("vswitchd: signal {signal:?}, shutting down");
    // The server first (no new requests), then the switch: its ports are
    // detached, XDP programs removed, datapath threads joined.
    drop(server);
    drop(switch);
    eprintln!("vswitchd: stopped");
}
