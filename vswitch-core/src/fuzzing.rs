//! The bodies of the fuzz targets: each takes arbitrary bytes, runs one
//! parser or pipeline stage on them and asserts its invariants (never a
//! panic; what is parsed agrees with itself). The libFuzzer targets in
//! `fuzz/` call these, and so does `tests/fuzz_regressions.rs`, which
//! replays the seed corpora and every input a fuzzer ever crashed on as
//! ordinary tests. Not part of the embedding API.

use crate::config::{ConfigChange, SwitchConfig};
use crate::flow::{FlowKey, FlowSelector, FlowSpec, Layer, PackedParse};
use crate::packet::{Packet, PacketPool};
use crate::port::tunnel::wire;
use crate::sys::packet_ring::VnetHdr;

/// A target's body.
pub type Target = fn(&[u8]);

/// The targets, by name (as in `fuzz/fuzz_targets/NAME.rs`).
pub const TARGETS: &[(&str, Target)] = &[
    ("flow_key", flow_key),
    ("tunnel_decap", tunnel_decap),
    ("offloads", offloads),
    ("flow_text", flow_text),
    #[cfg(feature = "daemon")]
    ("control_request", control_request),
    ("config_file", config_file),
    ("conntrack_packet", conntrack_packet),
];

/// Frame to flow key, through both sinks of the one parser: the full
/// [`FlowKey`] and the classifier's packed key agree field for field, and
/// every offset the key records lies inside the frame. The first four
/// bytes are the input port.
pub fn flow_key(data: &[u8]) {
    let (in_port, frame) = match data {
        [a, b, c, d, rest @ ..] => (u32::from_be_bytes([*a, *b, *c, *d]), rest),
        _ => (0, data),
    };
    let full = FlowKey::extract(frame, in_port);
    let packed = PackedParse::extract(frame, in_port);
    assert_eq!(packed.key, full.pack(), "packed key for {frame:02x?}");
    assert_eq!(packed.parsed, full.parsed);
    assert_eq!(packed.headers.dl_type, full.dl_type);
    if full.parsed >= Layer::Network {
        assert!(full.l3_offset as usize <= frame.len());
        assert_eq!(packed.headers.l3, full.l3_offset as usize);
        assert_eq!(packed.headers.nw_proto, if full.dl_type == 0x0806 { 0 } else { full.nw_proto });
    }
    let l4 = if full.parsed == Layer::Transport { full.l4_offset as usize } else { 0 };
    assert!(l4 <= frame.len());
    assert_eq!(packed.headers.l4, l4);
}

/// Tunnel decapsulation: a VXLAN header and an IPv4+GRE packet are
/// checked or refused, never overrun; what is accepted is rebuilt by our
/// own encapsulation and parses back the same.
pub fn tunnel_decap(data: &[u8]) {
    if let Ok((vni, at)) = wire::parse_vxlan(data) {
        assert!(vni < 1 << 24 && at <= data.len());
        let mut again = wire::vxlan_header(vni).to_vec();
        again.extend_from_slice(&data[at..]);
        assert_eq!(wire::parse_vxlan(&again), Ok((vni, wire::VXLAN_LEN)));
    }
    if let Ok(g) = wire::parse_gre(data) {
        assert!(g.inner <= data.len(), "inner frame at {} of {}", g.inner, data.len());
        let (hdr, len) = wire::gre_header(g.key);
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 47, 0, 0];
        ip.extend_from_slice(&g.src.octets());
        ip.extend_from_slice(&g.dst.octets());
        ip.extend_from_slice(&hdr[..len]);
        ip.extend_from_slice(&data[g.inner..]);
        let total = (ip.len() as u16).to_be_bytes();
        ip[2..4].copy_from_slice(&total);
        let back = wire::parse_gre(&ip).expect("our own GRE packet parses");
        assert_eq!((back.src, back.dst, back.key, back.inner), (g.src, g.dst, g.key, 20 + len));
    }
    let _ = wire::flow_hash(data);
}

/// GSO segmentation and checksum completion on a frame with arbitrary
/// offload metadata (the first ten bytes): each either refuses or
/// produces frames that fit, never panics.
pub fn offloads(data: &[u8]) {
    if data.len() < 10 {
        return;
    }
    let u = |i: usize| u16::from_le_bytes([data[i], data[i + 1]]);
    let hdr = VnetHdr {
        flags: data[0] & 1,
        gso_type: [0, 1, 3, 4][(data[1] & 3) as usize],
        hdr_len: u(2) % 256,
        gso_size: u(4).max(1),
        csum_start: u(6) % 512,
        csum_offset: [6, 16][(data[8] & 1) as usize],
    };
    let frame = &data[10..];
    let mut p = Packet::from_frame(frame);
    p.offload = hdr;
    let mut pool = PacketPool::new(64, 2048);
    let mut out = Vec::new();
    if p.segment(&mut pool, &mut out).is_ok() {
        assert!(!out.is_empty(), "a segmented frame yields segments");
        let bound = hdr.hdr_len as usize + hdr.gso_size as usize + 128;
        assert!(out.iter().all(|s| s.len() <= frame.len().max(bound)), "segments fit");
    }
    let mut q = p.clone();
    let _ = q.resolve_offloads();
    let mut r = Packet::from_frame(frame);
    let _ = r.mark_tcp_gso(1 + (data[9] as usize) * 8);
}

/// The `ovs-ofctl` flow syntax: whatever parses prints as text that
/// parses to the same rule and prints the same again; selections parse or
/// are refused.
pub fn flow_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let resolve = |n: &str| (n == "p1").then_some(1);
    if let Ok(spec) = FlowSpec::parse(text, &resolve) {
        let printed = spec.to_text();
        let again = FlowSpec::parse(&printed, &|_: &str| None)
            .unwrap_or_else(|e| panic!("'{text}' printed as '{printed}', which does not parse: {}", e.0));
        assert_eq!(again, spec, "'{text}' printed as '{printed}'");
        assert_eq!(again.to_text(), printed);
    }
    let _ = FlowSelector::parse(text, &resolve);
}

thread_local! {
    static SWITCH: crate::Switch = {
        let sw = crate::Switch::builder().manual().build().expect("a manual switch");
        sw.add_bridge("br0").expect("a bridge");
        sw
    };
}

#[cfg(feature = "daemon")]
/// A control request line against a switch (one per fuzzing thread, kept
/// across inputs, so requests build on each other): the reply is always
/// one JSON-RPC object, never a panic.
pub fn control_request(data: &[u8]) {
    let line = String::from_utf8_lossy(data);
    // Ports would attach the host's interfaces (CI fuzzes as root): no
    // `port.*` method, however spelled or nested in a transaction.
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
        && names_a_port_method(&v)
    {
        return;
    }
    SWITCH.with(|sw| {
        let reply = crate::control::dispatch(sw, &line);
        let v: serde_json::Value = serde_json::from_str(&reply).expect("the reply is JSON");
        assert_eq!(v["jsonrpc"], "2.0");
        assert!(v.get("result").is_some() != v.get("error").is_some(), "{reply}");
        // Keep the switch small: a table that fills up only slows the run.
        if sw.dump_flows("br0").map_or(0, |f| f.len()) > 1000 {
            let _ = sw.del_flows("br0", None, false);
        }
    });
}

fn names_a_port_method(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::Object(m) => {
            m.get("method").and_then(|x| x.as_str()).is_some_and(|x| x.starts_with("port."))
                || m.values().any(names_a_port_method)
        }
        serde_json::Value::Array(a) => a.iter().any(names_a_port_method),
        _ => false,
    }
}

/// The configuration loader: a file (or a journal line) that parses is
/// applied to a new switch or refused whole; what a switch reports of a
/// configuration it took is taken again unchanged.
pub fn config_file(data: &[u8]) {
    if let Ok(change) = serde_json::from_slice::<ConfigChange>(data) {
        let _ = SwitchConfig::default().replay(&[change]);
    }
    let Ok(config) = serde_json::from_slice::<SwitchConfig>(data) else { return };
    // Kernel ports and tunnels would touch the host; keep in-process ones.
    if config.bridges.iter().any(|b| !b.ports.is_empty()) {
        for p in config.bridges.iter().flat_map(|b| &b.ports) {
            let _ = p.validate();
        }
        return;
    }
    let sw = crate::Switch::builder().manual().build().expect("a manual switch");
    if sw.apply_config(&config).is_ok() {
        let taken = sw.config(false).expect("a configuration");
        let again = crate::Switch::builder().manual().build().expect("a manual switch");
        again.apply_config(&taken).expect("a reported configuration applies again");
        assert_eq!(again.config(false).expect("a configuration"), taken);
    } else {
        assert!(sw.bridges().is_empty(), "a refused configuration leaves nothing behind");
    }
}

thread_local! {
    static CONNTRACK: crate::conntrack::Conntrack = crate::conntrack::Conntrack::new(4096);
}

/// A frame through conntrack, as `ct(commit,zone=Z,nat(...))` runs it, into
/// a table kept across inputs (so later frames meet earlier connections):
/// never a panic, and a translated frame parses back to the key its
/// translation promised. The first byte picks the zone and the NAT.
pub fn conntrack_packet(data: &[u8]) {
    use crate::conntrack::{Nat, PacketInfo, Request, Rewrite, Verdict, parse_nat};
    let Some((&sel, frame)) = data.split_first() else { return };
    let nat = match sel & 3 {
        0 => None,
        1 => Some(Nat::Existing),
        2 => parse_nat("src=192.0.2.1-192.0.2.3:2000-2010").ok(),
        _ => parse_nat("dst=[fd00::1]-[fd00::2]:80")
            .ok()
            .filter(|_| sel & 4 != 0)
            .or_else(|| parse_nat("dst=10.9.0.1:80").ok()),
    };
    let parsed = PackedParse::extract(frame, 1);
    let zone = (sel >> 4) as u16;
    let req = Request {
        zone,
        commit: sel & 8 != 0,
        force: sel & 0x80 != 0,
        nat: nat.as_ref(),
        mark: None,
        label: None,
        now_ms: 1,
        dry: false,
    };
    let info = PacketInfo::parse(frame, &parsed.headers, zone);
    let fragment = info.as_ref().is_ok_and(|i| i.frag.is_some());
    CONNTRACK.with(|ct| {
        let v = ct.execute(info, None, &req);
        let mut p = Packet::from_frame(frame);
        match v {
            Verdict::Tracked(_, Some(Rewrite::Headers(to))) => {
                crate::conntrack::translate(&mut p, &parsed.headers, &to);
                let again = PackedParse::extract(p.data(), 1);
                if !fragment && let Ok(i) = PacketInfo::parse(p.data(), &again.headers, zone) {
                    assert_eq!((i.key.src(), i.key.dst()), (to.src(), to.dst()), "translated as promised");
                }
            }
            Verdict::Tracked(_, Some(Rewrite::Error { outer, quoted, at })) => {
                crate::conntrack::translate_error(&mut p, &parsed.headers, at, &outer, &quoted);
            }
            _ => {}
        }
        if ct.len() > 3000 {
            ct.flush(|_| true);
        }
    });
}
