//! `capture.*`: what a bridge's ports receive and send, handed to a
//! client as frames with timestamps (`vswitch-ctl capture` writes pcap).
//!
//! A capture is a mirror whose output is an in-process port of the switch;
//! a thread of its own drains that port, stamping each frame with the
//! time it arrived, into a bounded buffer the client reads with
//! `capture.read`. Neither the mirror nor the port is saved. A capture
//! whose client stops reading for [`IDLE`] is ended by the housekeeping.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::MirrorSpec;
use crate::{Error, MemoryPortHandle, PortConfig, Result, Switch};

/// Most captures at once.
pub const MAX_CAPTURES: usize = 4;
/// A capture unread this long is ended.
pub const IDLE: Duration = Duration::from_secs(10);
/// Frames one capture buffers for its client; more are counted as lost.
const BUFFER_FRAMES: usize = 16_384;
/// Bytes one capture buffers.
const BUFFER_BYTES: usize = 32 << 20;
/// Most frames one `capture.read` returns.
const READ_MAX: usize = 1_024;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct Buffer {
    frames: VecDeque<(u64, usize, Vec<u8>)>,
    bytes: usize,
    /// Frames lost because the client did not keep up.
    lost: u64,
}

struct Capture {
    bridge: String,
    /// The in-process port (and the mirror) this capture made.
    port: String,
    buffer: Mutex<Buffer>,
    ready: Condvar,
    stop: AtomicBool,
    touched: Mutex<Instant>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    captured: AtomicU64,
}

/// The open captures of a control server.
#[derive(Default)]
pub(crate) struct Captures {
    open: Mutex<BTreeMap<u64, Arc<Capture>>>,
    next: AtomicU64,
}

impl std::fmt::Debug for Captures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Captures").field("open", &lock(&self.open).len()).finish()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Start {
    bridge: String,
    /// The port to capture (none: every port of the bridge now).
    #[serde(default)]
    port: Option<String>,
    /// What it receives (default: true).
    #[serde(default)]
    rx: Option<bool>,
    /// What it sends (default: true with a port, false without).
    #[serde(default)]
    tx: Option<bool>,
    /// Bytes kept of each frame (default 65535).
    #[serde(default)]
    snaplen: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Read {
    id: u64,
    /// Milliseconds to wait for a first frame (at most 1000).
    #[serde(default)]
    wait_ms: u64,
    #[serde(default)]
    max: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Stop {
    id: u64,
}

fn hex(data: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(data.len() * 2);
    for b in data {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

fn drain(handle: MemoryPortHandle, c: Arc<Capture>, snaplen: usize) {
    let mut burst = Vec::new();
    while !c.stop.load(Ordering::Relaxed) && !handle.is_detached() {
        handle.wait(Duration::from_millis(100));
        if handle.recv_burst(&mut burst, 64) == 0 {
            continue;
        }
        let ts = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
        let mut b = lock(&c.buffer);
        for pkt in burst.drain(..) {
            c.captured.fetch_add(1, Ordering::Relaxed);
            let data = pkt.data();
            let keep = data.len().min(snaplen);
            if b.frames.len() >= BUFFER_FRAMES || b.bytes + keep > BUFFER_BYTES {
                b.lost += 1;
            } else {
                b.bytes += keep;
                b.frames.push_back((ts, data.len(), data[..keep].to_vec()));
            }
            handle.recycle(pkt);
        }
        drop(b);
        c.ready.notify_all();
    }
}

impl Captures {
    pub(crate) fn call(&self, sw: &Switch, method: &str, p: Value) -> Result<Value> {
        let p = if p.is_null() { json!({}) } else { p };
        let bad = |e: serde_json::Error| Error::invalid("params", e.to_string());
        match method {
            "capture.start" => self.start(sw, serde_json::from_value(p).map_err(bad)?),
            "capture.read" => self.read(serde_json::from_value(p).map_err(bad)?),
            "capture.stop" => {
                let a: Stop = serde_json::from_value(p).map_err(bad)?;
                let c = lock(&self.open).remove(&a.id).ok_or_else(|| no_capture(a.id))?;
                Ok(end(sw, &c))
            }
            _ => Err(Error::invalid("method", method.to_string())),
        }
    }

    fn start(&self, sw: &Switch, a: Start) -> Result<Value> {
        if lock(&self.open).len() >= MAX_CAPTURES {
            return Err(Error::Full("captures (stop one first)"));
        }
        let ports: Vec<String> = sw
            .bridges()
            .into_iter()
            .find(|b| b.name == a.bridge)
            .ok_or_else(|| Error::BridgeNotFound(a.bridge.clone()))?
            .ports
            .into_iter()
            .map(|p| p.name)
            .filter(|n| !n.starts_with(".capture"))
            .collect();
        let (rx, tx) = (a.rx.unwrap_or(true), a.tx.unwrap_or(a.port.is_some()));
        if !rx && !tx {
            return Err(Error::invalid("capture", "neither received nor sent frames selected"));
        }
        let selected = match &a.port {
            Some(p) if !ports.contains(p) => return Err(Error::PortNotFound(p.clone())),
            Some(p) => vec![p.clone()],
            None => ports,
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let name = format!(".capture{id}");
        let mut handle = sw.add_memory_port(&a.bridge, &name, PortConfig::default())?;
        // A capture takes frames of any size the bridge carries.
        handle.set_mtu(crate::port::memory::MAX_MTU)?;
        let mirror = MirrorSpec {
            name: name.clone(),
            select_all: false,
            select_src_port: if rx { selected.clone() } else { vec![] },
            select_dst_port: if tx { selected } else { vec![] },
            select_vlan: vec![],
            output_port: name.clone(),
        };
        if let Err(e) = sw.add_mirror_transient(&a.bridge, mirror) {
            let _ = sw.del_port(&name);
            return Err(e);
        }
        let c = Arc::new(Capture {
            bridge: a.bridge.clone(),
            port: name.clone(),
            buffer: Mutex::default(),
            ready: Condvar::new(),
            stop: AtomicBool::new(false),
            touched: Mutex::new(Instant::now()),
            thread: Mutex::new(None),
            captured: AtomicU64::new(0),
        });
        let snaplen = a.snaplen.unwrap_or(65_535).clamp(64, 262_144);
        let c2 = c.clone();
        let t = std::thread::Builder::new()
            .name(format!("capture{id}"))
            .spawn(move || drain(handle, c2, snaplen))
            .map_err(|source| Error::Io { call: "start a capture thread", source });
        match t {
            Ok(t) => *lock(&c.thread) = Some(t),
            Err(e) => {
                end(sw, &c);
                return Err(e);
            }
        }
        lock(&self.open).insert(id, c);
        Ok(json!({ "id": id, "snaplen": snaplen, "port": name }))
    }

    fn read(&self, a: Read) -> Result<Value> {
        let c = lock(&self.open).get(&a.id).cloned().ok_or_else(|| no_capture(a.id))?;
        *lock(&c.touched) = Instant::now();
        let max = a.max.unwrap_or(READ_MAX).clamp(1, READ_MAX);
        let mut b = lock(&c.buffer);
        if b.frames.is_empty() && a.wait_ms > 0 {
            let wait = Duration::from_millis(a.wait_ms.min(1_000));
            b = c.ready.wait_timeout_while(b, wait, |b| b.frames.is_empty()).unwrap_or_else(|e| e.into_inner()).0;
        }
        let n = b.frames.len().min(max);
        let frames: Vec<Value> =
            b.frames.drain(..n).map(|(ts, len, data)| json!({ "ts_us": ts, "len": len, "data": hex(&data) })).collect();
        b.bytes = b.frames.iter().map(|f| f.2.len()).sum();
        let lost = std::mem::take(&mut b.lost);
        Ok(json!({ "frames": frames, "lost": lost }))
    }

    /// Ends the captures whose client went away.
    pub(crate) fn expire(&self, sw: &Switch) {
        let idle: Vec<Arc<Capture>> = {
            let mut open = lock(&self.open);
            let ids: Vec<u64> =
                open.iter().filter(|(_, c)| lock(&c.touched).elapsed() > IDLE).map(|(i, _)| *i).collect();
            ids.iter().filter_map(|i| open.remove(i)).collect()
        };
        for c in idle {
            end(sw, &c);
        }
    }
}

fn no_capture(id: u64) -> Error {
    Error::NotFound(format!("no capture {id} (it ended, or was unread for {} s)", IDLE.as_secs()))
}

/// Removes the capture's mirror and port and stops its thread; what it saw.
fn end(sw: &Switch, c: &Capture) -> Value {
    let _ = sw.del_mirror(&c.bridge, &c.port);
    let _ = sw.del_port(&c.port);
    c.stop.store(true, Ordering::Relaxed);
    if let Some(t) = lock(&c.thread).take() {
        let _ = t.join();
    }
    let b = lock(&c.buffer);
    json!({ "captured": c.captured.load(Ordering::Relaxed), "unread": b.frames.len(), "lost": b.lost })
}
