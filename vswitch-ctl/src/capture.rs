//! `vswitch-ctl capture`: frames a bridge's ports receive and send, as a
//! line each or as pcap (the classic format: tcpdump, tshark and
//! Wireshark read it). Written here rather than with a pcap crate: the
//! format is two fixed headers, and the switch hands over whole frames.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vswitch_ctl::{CallError, Client};

/// What to capture and where to put it.
pub struct Options {
    pub bridge: String,
    pub port: Option<String>,
    pub rx: bool,
    pub tx: bool,
    pub count: Option<u64>,
    pub write: Option<String>,
    pub duration: Option<f64>,
    pub snaplen: usize,
}

/// pcap's file header: microsecond timestamps, version 2.4, Ethernet.
fn pcap_header(snaplen: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(24);
    h.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    h.extend_from_slice(&2u16.to_le_bytes());
    h.extend_from_slice(&4u16.to_le_bytes());
    h.extend_from_slice(&0i32.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&snaplen.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes());
    h
}

fn pcap_record(ts_us: u64, orig_len: u32, data: &[u8]) -> Vec<u8> {
    let mut r = Vec::with_capacity(16 + data.len());
    r.extend_from_slice(&((ts_us / 1_000_000) as u32).to_le_bytes());
    r.extend_from_slice(&((ts_us % 1_000_000) as u32).to_le_bytes());
    r.extend_from_slice(&(data.len() as u32).to_le_bytes());
    r.extend_from_slice(&orig_len.to_le_bytes());
    r.extend_from_slice(data);
    r
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    (0..s.len() / 2).map(|i| u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()).collect()
}

fn mac(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect::<Vec<_>>().join(":")
}

/// A frame in a line, in the spirit of `tcpdump -e -n`.
fn summary(d: &[u8], len: u64) -> String {
    if d.len() < 14 {
        return format!("runt, length {len}");
    }
    let mut s = format!("{} > {}", mac(&d[6..12]), mac(&d[0..6]));
    let (mut et, mut off) = (u16::from_be_bytes([d[12], d[13]]), 14);
    while (et == 0x8100 || et == 0x88a8) && d.len() >= off + 4 {
        let tci = u16::from_be_bytes([d[off], d[off + 1]]);
        s.push_str(&format!(", vlan {}", tci & 0x0fff));
        et = u16::from_be_bytes([d[off + 2], d[off + 3]]);
        off += 4;
    }
    let p = &d[off.min(d.len())..];
    let l4 = |proto: u8, t: &[u8]| -> String {
        let ports =
            |t: &[u8]| (t.len() >= 4).then(|| (u16::from_be_bytes([t[0], t[1]]), u16::from_be_bytes([t[2], t[3]])));
        match (proto, ports(t)) {
            (6, Some((a, b))) => format!("TCP {a} > {b}"),
            (17, Some((a, b))) => format!("UDP {a} > {b}"),
            (1, _) if !t.is_empty() => format!("ICMP type {}", t[0]),
            (58, _) if !t.is_empty() => format!("ICMP6 type {}", t[0]),
            (p, _) => format!("proto {p}"),
        }
    };
    let rest = match et {
        0x0800 if p.len() >= 20 => {
            let ihl = ((p[0] & 15) as usize * 4).max(20);
            let (src, dst) = (
                std::net::Ipv4Addr::new(p[12], p[13], p[14], p[15]),
                std::net::Ipv4Addr::new(p[16], p[17], p[18], p[19]),
            );
            format!("IPv4 {src} > {dst}: {}", l4(p[9], p.get(ihl..).unwrap_or_default()))
        }
        0x86dd if p.len() >= 40 => {
            let a = |o: usize| std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&p[o..o + 16]).unwrap_or_default());
            format!("IPv6 {} > {}: {}", a(8), a(24), l4(p[6], &p[40..]))
        }
        0x0806 if p.len() >= 28 => {
            let ip = |o: usize| std::net::Ipv4Addr::new(p[o], p[o + 1], p[o + 2], p[o + 3]);
            match u16::from_be_bytes([p[6], p[7]]) {
                1 => format!("ARP who-has {} tell {}", ip(24), ip(14)),
                2 => format!("ARP {} is-at {}", ip(14), mac(&p[8..14])),
                op => format!("ARP op {op}"),
            }
        }
        et => format!("ethertype 0x{et:04x}"),
    };
    format!("{s}, {rest}, length {len}")
}

fn clock(ts_us: u64) -> String {
    let secs = ts_us / 1_000_000;
    format!("{:02}:{:02}:{:02}.{:06}", secs / 3600 % 24, secs / 60 % 60, secs % 60, ts_us % 1_000_000)
}

/// Runs a capture until its count, duration or a signal; the capture is
/// ended on the daemon in every case but the daemon's own failure (and
/// then the daemon ends it once nobody reads it).
pub fn run(c: &mut Client, o: &Options) -> Result<(), CallError> {
    let io = |e: std::io::Error| CallError::Rpc("io".into(), format!("cannot write the capture: {e}"));
    let (rx, tx) = match (o.rx, o.tx) {
        (false, false) => (None, None),
        (rx, tx) => (Some(rx), Some(tx)),
    };
    let mut out: Option<Box<dyn Write>> = match o.write.as_deref() {
        None => None,
        Some("-") => Some(Box::new(std::io::stdout())),
        Some(f) => Some(Box::new(
            std::fs::File::create(f).map_err(|e| CallError::Rpc("io".into(), format!("cannot create {f}: {e}")))?,
        )),
    };
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM, signal_hook::consts::SIGPIPE] {
        let _ = signal_hook::flag::register(sig, stop.clone());
    }
    let started = c.call(
        "capture.start",
        json!({ "bridge": o.bridge, "port": o.port, "rx": rx, "tx": tx, "snaplen": o.snaplen }),
    )?;
    let id = started["id"].as_u64().unwrap_or(0);
    let snaplen = started["snaplen"].as_u64().unwrap_or(65535) as u32;
    if let Some(w) = out.as_mut() {
        w.write_all(&pcap_header(snaplen)).and_then(|()| w.flush()).map_err(io)?;
    }
    let what = o.port.as_deref().map_or(format!("bridge {}", o.bridge), |p| format!("port {p} of bridge {}", o.bridge));
    eprintln!("vswitch-ctl: capturing on {what} (Ctrl-C to stop)");
    let deadline = o.duration.map(|d| Instant::now() + Duration::from_secs_f64(d.max(0.0)));
    let (mut seen, mut lost) = (0u64, 0u64);
    let result = (|| -> Result<(), CallError> {
        while !stop.load(Ordering::Relaxed)
            && o.count.is_none_or(|n| seen < n)
            && deadline.is_none_or(|d| Instant::now() < d)
        {
            let r = c.call("capture.read", json!({ "id": id, "wait_ms": 200 }))?;
            lost += r["lost"].as_u64().unwrap_or(0);
            for f in r["frames"].as_array().into_iter().flatten() {
                if o.count.is_some_and(|n| seen >= n) {
                    break;
                }
                let data = unhex(f["data"].as_str().unwrap_or_default()).unwrap_or_default();
                let (ts, len) = (f["ts_us"].as_u64().unwrap_or(0), f["len"].as_u64().unwrap_or(0));
                seen += 1;
                match out.as_mut() {
                    Some(w) => w.write_all(&pcap_record(ts, len as u32, &data)).map_err(io)?,
                    None => println!("{} {}", clock(ts), summary(&data, len)),
                }
            }
            if let Some(w) = out.as_mut() {
                w.flush().map_err(io)?;
            }
        }
        Ok(())
    })();
    let end: Value = c.call("capture.stop", json!({ "id": id })).unwrap_or(Value::Null);
    lost += end["lost"].as_u64().unwrap_or(0);
    eprintln!(
        "vswitch-ctl: {seen} frames captured{}",
        if lost > 0 { format!(", {lost} lost (the reader fell behind)") } else { String::new() }
    );
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcap_layout() {
        assert_eq!(pcap_header(65535).len(), 24);
        let r = pcap_record(1_500_000, 60, &[1, 2, 3]);
        assert_eq!(&r[0..4], &1u32.to_le_bytes());
        assert_eq!(&r[4..8], &500_000u32.to_le_bytes());
        assert_eq!(&r[8..12], &3u32.to_le_bytes());
        assert_eq!(&r[12..16], &60u32.to_le_bytes());
    }

    #[test]
    fn summaries() {
        let mut f = vec![0xffu8; 6];
        f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1, 2, 0, 0, 0, 0, 1, 10, 0, 0, 1]);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&[10, 0, 0, 2]);
        assert_eq!(
            summary(&f, 42),
            "02:00:00:00:00:01 > ff:ff:ff:ff:ff:ff, ARP who-has 10.0.0.2 tell 10.0.0.1, length 42"
        );
    }
}
