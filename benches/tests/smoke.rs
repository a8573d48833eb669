//! The whole benchmark harness, briefly (about a second per device), as
//! root: the report lists every device, measured or skipped with a reason,
//! and this switch and the Linux bridge forward at a non-zero rate.

use serde_json::Value;

#[test]
fn a_smoke_run_reports_every_device() {
    vswitch_tests::netns::require_root();
    let ovs_links = || -> Vec<String> {
        std::fs::read_dir("/sys/class/net")
            .map(|d| d.filter_map(|e| e.ok()?.file_name().into_string().ok()).collect::<Vec<_>>())
            .unwrap_or_default()
            .into_iter()
            .filter(|n| n.starts_with("ovsbr") || n == "ovs-netdev" || n.starts_with("ula") || n.starts_with("ulb"))
            .collect()
    };
    let before = ovs_links();
    let out_dir = std::env::temp_dir().join(vswitch_tests::netns::unique("vsbench"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_vswitch-bench"))
        .args(["--smoke", "--out", out_dir.to_str().unwrap()])
        .output()
        .expect("run vswitch-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "vswitch-bench failed: {stderr}");
    let report: Value = serde_json::from_str(&std::fs::read_to_string(out_dir.join("report.json")).unwrap()).unwrap();
    let md = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    let svg = std::fs::read_to_string(out_dir.join("report.svg")).unwrap();
    let _ = std::fs::remove_dir_all(&out_dir);
    let rows = report["rows"].as_array().unwrap();
    let skipped = report["skipped"].as_array().unwrap();
    for device in [
        "vswitch-afpacket",
        "vswitch-afxdp",
        "vswitch-afxdp-flows1000",
        "vswitch-afpacket-vxlan",
        "vswitch-afxdp-native",
        "linux-bridge",
        "linux-vxlan",
        "ovs-afpacket",
        "ovs-afxdp",
    ] {
        let row = rows.iter().find(|r| r["device"] == device);
        let skip = skipped.iter().find(|s| s["device"] == device);
        assert!(row.is_some() || skip.is_some_and(|s| !s["reason"].as_str().unwrap().is_empty()), "{device}: {stderr}");
        assert!(md.contains(device), "{device} in the markdown");
        if row.is_some() {
            assert!(svg.contains(device), "{device} in the chart");
        }
        if !device.starts_with("ovs") {
            let r = row.unwrap_or_else(|| panic!("{device} was not measured: {skip:?}"));
            assert!(r["delivered_mpps"]["median"].as_f64().unwrap() > 0.0, "{device} forwarded nothing: {r}");
            assert!(r["offered_mpps"]["median"].as_f64().unwrap() > 0.0);
            // TCP crossed it too (iperf3, one stream in a smoke run).
            let tcp = report["tcp"].as_array().unwrap().iter().find(|t| t["device"] == device);
            let gbps = tcp.and_then(|t| t["gbps"].as_f64());
            assert!(gbps.is_some_and(|g| g > 0.0), "{device}: no TCP through it: {tcp:?}\n{stderr}");
        }
    }
    assert!(report["latency"].as_array().unwrap().iter().any(|l| l["idle_p50_us"].as_f64().is_some()));
    // Open vSwitch's devices leave nothing behind (its bridge's TAP, the
    // userspace datapath's ovs-netdev), nor does the native overlay (its
    // veth underlay).
    let left: Vec<String> = ovs_links().into_iter().filter(|l| !before.contains(l)).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    // Nor does the kernel's overlay (its two namespaces).
    let namespaces =
        String::from_utf8_lossy(&std::process::Command::new("ip").args(["netns", "list"]).output().unwrap().stdout)
            .to_string();
    assert!(!namespaces.contains("kvx"), "the kernel overlay's namespaces are left: {namespaces}");
    assert!(report["ratios"].as_array().unwrap().iter().any(|r| r["peer"] == "linux-bridge"));
}
