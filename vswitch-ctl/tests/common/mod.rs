//! A vswitchd under test, driven with vswitch-ctl.

#![allow(dead_code)] // each test file uses its own part

use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use vswitch_tests::netns::{NetNs, unique};

/// A running vswitchd on its own socket and configuration file (in a
/// directory of its own), stopped with SIGTERM on drop.
pub struct Daemon {
    child: Child,
    pub socket: String,
    pub db: String,
    /// Remove the directory on drop (false while a restart follows).
    pub owns_dir: bool,
}

impl Daemon {
    pub fn start() -> Daemon {
        Self::start_in(&std::env::temp_dir().join(unique("vsd")))
    }

    /// A daemon on `dir`/vswitchd.sock and `dir`/conf.json.
    pub fn start_in(dir: &std::path::Path) -> Daemon {
        Self::spawn(dir, None, &[])
    }

    /// A daemon with more vswitchd arguments.
    pub fn start_with(args: &[&str]) -> Daemon {
        Self::spawn(&std::env::temp_dir().join(unique("vsd")), None, args)
    }

    /// A daemon whose descriptor limit is `nofile` (through prlimit(1)).
    pub fn start_limited(nofile: u32, args: &[&str]) -> Daemon {
        let limit = format!("--nofile={nofile}:{nofile}");
        let mut all = vec!["prlimit", &limit, "--", env!("CARGO_BIN_EXE_vswitchd")];
        all.extend_from_slice(args);
        Self::spawn_cmd(&std::env::temp_dir().join(unique("vsd")), &all)
    }

    /// vswitchd's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What vswitchd has written on stderr so far.
    pub fn log(&self) -> String {
        let dir = std::path::Path::new(&self.socket).parent().unwrap();
        std::fs::read_to_string(dir.join("vswitchd.log")).unwrap_or_default()
    }

    /// Waits up to `within` for vswitchd to exit; its status.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().expect("wait for vswitchd") {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// A daemon running inside network namespace `ns` (its ports and
    /// tunnel sockets are that namespace's).
    pub fn start_netns(ns: &NetNs) -> Daemon {
        Self::spawn(&std::env::temp_dir().join(unique("vsd")), Some(ns), &[])
    }

    /// A daemon in `ns` on `dir` (a restart of one whose directory was
    /// kept with `owns_dir = false`).
    pub fn start_in_netns(ns: &NetNs, dir: &std::path::Path) -> Daemon {
        Self::spawn(dir, Some(ns), &[])
    }

    /// As [`start_netns`](Self::start_netns), with more vswitchd arguments.
    pub fn start_netns_with(ns: &NetNs, args: &[&str]) -> Daemon {
        Self::spawn(&std::env::temp_dir().join(unique("vsd")), Some(ns), args)
    }

    fn spawn(dir: &std::path::Path, ns: Option<&NetNs>, extra: &[&str]) -> Daemon {
        let mut all = match ns {
            Some(ns) => vec!["ip", "netns", "exec", &ns.name, env!("CARGO_BIN_EXE_vswitchd")],
            None => vec![env!("CARGO_BIN_EXE_vswitchd")],
        };
        all.extend_from_slice(extra);
        Self::spawn_cmd(dir, &all)
    }

    /// Runs `cmd` (whose vswitchd arguments may follow) with the socket and
    /// database in `dir`; stderr goes to `dir`/vswitchd.log (printed if
    /// the test fails).
    fn spawn_cmd(dir: &std::path::Path, cmd: &[&str]) -> Daemon {
        let socket = dir.join("vswitchd.sock").display().to_string();
        let db = dir.join("conf.json").display().to_string();
        std::fs::create_dir_all(dir).expect("create the daemon's directory");
        let log = std::fs::File::create(dir.join("vswitchd.log")).expect("create the daemon's log");
        let child = Command::new(cmd[0])
            .args(&cmd[1..])
            .args(["--socket", &socket, "--db", &db])
            .stderr(log)
            .spawn()
            .expect("start vswitchd");
        let d = Daemon { child, socket, db, owns_dir: true };
        let deadline = Instant::now() + Duration::from_secs(10);
        while d.ctl(&["list-br"]).status.code() != Some(0) {
            assert!(Instant::now() < deadline, "vswitchd did not come up");
            std::thread::sleep(Duration::from_millis(50));
        }
        d
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_vswitch-ctl"))
            .args(["--socket", &self.socket])
            .args(args)
            .output()
            .expect("run vswitch-ctl")
    }

    /// Runs vswitch-ctl and expects success; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(out.status.success(), "vswitch-ctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = vec!["-f", "json"];
        a.extend_from_slice(args);
        serde_json::from_str(&self.ok(&a)).unwrap_or_else(|e| panic!("{args:?}: not JSON: {e}"))
    }

    pub fn stop(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        self.child.wait().expect("vswitchd exits")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.stop();
        }
        if std::thread::panicking() {
            eprintln!("vswitchd's log:\n{}", self.log());
        }
        if let Some(dir) = std::path::Path::new(&self.socket).parent().filter(|_| self.owns_dir) {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Runs one of the repository's scripts (`script`, from the workspace
/// root) on the binaries these tests built; returns its stdout, panicking
/// with both outputs if it fails.
pub fn run_script(script: &str) -> String {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_vswitchd")).parent().unwrap();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(script);
    let out = Command::new("bash").arg(&path).env("VSWITCH_BIN", bin).output().expect("run bash");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{script} failed: {text}\n{}", String::from_utf8_lossy(&out.stderr));
    text
}
