//! rule-rate: how fast rules go in, with many already installed.
//!
//! Through the library API (a switch with its datapath thread running):
//! for each table size N, the table is filled to N, then timed are (a)
//! single-rule `add_flow` calls and (b) one `add_flows` batch. Through the
//! daemon: `vswitch-ctl add-flows` of a file of M rules into a fresh
//! `vswitchd` (parsed, staged, installed on the datapath and saved), then
//! a restart that restores them. No root needed.
//!
//! ```sh
//! cargo build --release -p vswitch-ctl -p vswitch-benches
//! target/release/rule-rate --installed 100000,1000000 --daemon-rules 1000000
//! ```

use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use vswitch_core::Switch;

#[derive(Parser, Debug)]
#[command(about = "Rule additions per second, through the API and through vswitchd")]
struct Args {
    /// Table sizes to measure at.
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
    installed: Vec<usize>,
    /// Single-rule calls timed at each size.
    #[arg(long, default_value_t = 20_000)]
    single: usize,
    /// Rules in the batch timed at each size.
    #[arg(long, default_value_t = 100_000)]
    batch: usize,
    /// Rules loaded through vswitchd with one add-flows (0: skip).
    #[arg(long, default_value_t = 1_000_000)]
    daemon_rules: usize,
}

/// Rule `i`: a distinct /32 destination and port, so every rule is new.
fn rule(i: usize) -> String {
    format!(
        "priority={},tcp,nw_dst={}.{}.{}.{},tp_dst={},actions=drop",
        100 + i % 7,
        10 + (i >> 24) % 200,
        (i >> 16) & 255,
        (i >> 8) & 255,
        i & 255,
        1 + i % 60_000
    )
}

fn rate(n: usize, t: Duration) -> String {
    format!("{:.0}", n as f64 / t.as_secs_f64())
}

fn api(args: &Args) {
    println!("| installed | single add_flow calls/s | add_flows batch of {} rules/s |", args.batch);
    println!("|---:|---:|---:|");
    for &n in &args.installed {
        let sw = Switch::builder().flow_limit(n + args.single + args.batch + 1).build().expect("a switch");
        sw.add_bridge("br0").expect("a bridge");
        let mut next = 0;
        while next < n {
            let chunk: Vec<String> = (next..(next + 50_000).min(n)).map(rule).collect();
            let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
            sw.add_flows("br0", &refs).expect("fill the table");
            next += chunk.len();
        }
        let singles: Vec<String> = (next..next + args.single).map(rule).collect();
        let t = Instant::now();
        for r in &singles {
            sw.add_flow("br0", r).expect("add a rule");
        }
        let single = t.elapsed();
        next += args.single;
        let batch: Vec<String> = (next..next + args.batch).map(rule).collect();
        let refs: Vec<&str> = batch.iter().map(String::as_str).collect();
        let t = Instant::now();
        sw.add_flows("br0", &refs).expect("add a batch");
        let batched = t.elapsed();
        println!("| {n} | {} | {} |", rate(args.single, single), rate(args.batch, batched));
    }
}

fn daemon(args: &Args) {
    let bin = std::env::current_exe().expect("own path");
    let bin = bin.parent().expect("a directory");
    let (vswitchd, ctl) = (bin.join("vswitchd"), bin.join("vswitch-ctl"));
    assert!(vswitchd.exists() && ctl.exists(), "build vswitch-ctl in the same profile first");
    let dir = std::env::temp_dir().join(format!("rule-rate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (sock, db) = (dir.join("s.sock"), dir.join("conf.json"));
    let rules: String = (0..args.daemon_rules).map(|i| rule(i) + "\n").collect();
    let file = dir.join("rules.txt");
    std::fs::write(&file, &rules).unwrap();
    let start = |dir: &std::path::Path| {
        let child = Command::new(&vswitchd)
            .args(["--socket", sock.to_str().unwrap(), "--db", db.to_str().unwrap(), "--log-level", "error"])
            .args(["--flow-limit", &(args.daemon_rules + 1).to_string()])
            .spawn()
            .expect("start vswitchd");
        let t = Instant::now();
        let ready = || {
            Command::new(&ctl)
                .args(["--socket", sock.to_str().unwrap(), "list-br"])
                .output()
                .is_ok_and(|o| o.status.success())
        };
        while !ready() {
            assert!(t.elapsed() < Duration::from_secs(300), "vswitchd did not come up in {}", dir.display());
            std::thread::sleep(Duration::from_millis(50));
        }
        (child, t.elapsed())
    };
    let ctl_ok = |a: &[&str]| {
        let out = Command::new(&ctl).args(["--socket", sock.to_str().unwrap(), "-t", "600"]).args(a).output().unwrap();
        assert!(out.status.success(), "vswitch-ctl {a:?}: {}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    let (mut child, _) = start(&dir);
    ctl_ok(&["add-br", "br0"]);
    let t = Instant::now();
    ctl_ok(&["add-flows", "br0", file.to_str().unwrap()]);
    let load = t.elapsed();
    let saved = std::fs::metadata(&db).map(|m| m.len()).unwrap_or(0)
        + std::fs::metadata(dir.join("conf.json.journal")).map(|m| m.len()).unwrap_or(0);
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    let (mut child, restore) = start(&dir);
    let dumped = ctl_ok(&["-f", "json", "dump-flows", "br0"]);
    let n = serde_json::from_slice::<serde_json::Value>(&dumped).unwrap().as_array().map_or(0, Vec::len);
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    println!();
    println!("| vswitchd | rules | seconds | rules/s |");
    println!("|---|---:|---:|---:|");
    println!(
        "| add-flows (staged, installed, saved: {} MB on disk) | {} | {:.2} | {} |",
        saved / 1_000_000,
        args.daemon_rules,
        load.as_secs_f64(),
        rate(args.daemon_rules, load)
    );
    println!(
        "| restart until it answers (load, replay, install) | {} | {:.2} | {} |",
        n - 1,
        restore.as_secs_f64(),
        rate(n - 1, restore)
    );
    assert_eq!(n, args.daemon_rules + 1, "every rule was restored");
}

fn main() {
    let args = Args::parse();
    api(&args);
    if args.daemon_rules > 0 {
        daemon(&args);
    }
}
