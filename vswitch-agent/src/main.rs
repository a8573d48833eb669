//! `vswitch-agent`: joins this host's `vswitchd` to a cluster network kept
//! in etcd (flannel's layout, docs/cluster.md). It leases the host a
//! subnet of the cluster's block, publishes its endpoint with the lease,
//! watches every other host's and keeps `vswitchd`'s routes to them. The
//! datapath never waits on it: `vswitchd` keeps forwarding on the last
//! routes it was given while the agent or etcd is away.

mod agent;
mod flannel;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use ipnet::Ipv4Net;

/// Joins this host's vswitchd to an etcd-backed cluster network: a subnet
/// lease for the host, routes (VXLAN or host-gw) to every other host's.
#[derive(Debug, Clone, Parser)]
#[command(name = "vswitch-agent", version)]
pub struct Opts {
    /// etcd's client URLs, comma-separated (every member of a cluster).
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub etcd_endpoints: Vec<String>,
    /// The key prefix of the cluster's records (flannel's default).
    #[arg(long, default_value = "/coreos.com/network")]
    pub etcd_prefix: String,
    /// This host's underlay address: the VXLAN endpoint (an address of
    /// the host's kernel), published as the lease's PublicIP. With
    /// host-gw it is the switch's own uplink address (--uplink-address)
    /// and may be left out.
    #[arg(long)]
    pub public_ip: Option<Ipv4Addr>,
    /// The network's name in vswitchd (what CNI configurations name, with
    /// "cluster": true).
    #[arg(long, default_value = "cluster")]
    pub network: String,
    /// The network's bridge; its gateway port (same name) holds the
    /// subnet's first address on the host.
    #[arg(long, default_value = "vsc0")]
    pub bridge: String,
    /// An uplink for the switch's own presence on the underlay: outside
    /// traffic is masqueraded behind --uplink-address there, published
    /// ports are reached there, and host-gw routes through it (required
    /// for host-gw).
    #[arg(long, requires = "uplink_address")]
    pub uplink: Option<String>,
    /// The switch's own address on the uplink's segment, A.B.C.D/N (not
    /// an address of the host's kernel).
    #[arg(long, requires = "uplink")]
    pub uplink_address: Option<Ipv4Net>,
    /// The uplink segment's router, for destinations off it.
    #[arg(long, requires = "uplink")]
    pub uplink_router: Option<Ipv4Addr>,
    /// The containers' MTU (default: 1450 with VXLAN, which adds 50 bytes,
    /// else the interfaces' own).
    #[arg(long)]
    pub mtu: Option<u32>,
    /// The lease's time to live in seconds: how long a host that stopped
    /// without revoking it (a crash) keeps its subnet and its routes on
    /// the other hosts.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(i64).range(2..=86400))]
    pub lease_ttl: i64,
    /// Where the agent remembers its subnet (kept across restarts) and
    /// writes NETWORK.env (flannel's subnet.env variables).
    #[arg(long, default_value = "/var/lib/vswitch-agent")]
    pub state_dir: PathBuf,
    /// vswitchd's control socket (default: $VSWITCH_SOCKET, else
    /// /run/vswitch/vswitchd.sock).
    #[arg(long)]
    pub socket: Option<String>,
    /// Seconds between reports to vswitchd (what `vswitch-ctl
    /// cluster-show` shows) and checks that it still has the network.
    #[arg(long, default_value_t = 5.0)]
    pub report_interval: f64,
}

fn main() -> std::process::ExitCode {
    let opts = Opts::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vswitch-agent: cannot start: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let report = Duration::from_secs_f64(opts.report_interval.clamp(0.1, 3600.0));
    match runtime.block_on(agent::run(opts, report)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vswitch-agent: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
