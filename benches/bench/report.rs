//! The report: every figure as JSON, a markdown table with the ratios of
//! this switch against each peer measured in the same run, and an SVG
//! chart.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Serialize;

use crate::stats::Summary;

/// One device at one frame size and flow count, over the repetitions.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub device: String,
    pub ours: bool,
    pub frame_size: usize,
    pub flows: u32,
    pub offered_mpps: Summary,
    pub delivered_mpps: Summary,
    /// Delivered, in Gbit/s of Ethernet frames (FCS included).
    pub delivered_gbps: Summary,
    /// Loss (1 - delivered/offered), median.
    pub loss: f64,
    /// Cores the device used while forwarding; None when its work runs in
    /// the kernel's softirq (the Linux bridge).
    pub cpu_cores: Option<Summary>,
    /// Busy cycles per packet received, by the device's own counters
    /// (this switch's pmd-stats, Open vSwitch's pmd-stats-show); None for
    /// a device without them.
    pub cycles_per_packet: Option<Summary>,
}

/// Round-trip latency through a device, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub device: String,
    pub idle_p50_us: Option<f64>,
    pub idle_p99_us: Option<f64>,
    pub idle_loss: f64,
    pub load_p50_us: Option<f64>,
    pub load_p99_us: Option<f64>,
    pub load_loss: f64,
}

/// iperf3 TCP through a device, from the generator's namespace to the
/// sink's.
#[derive(Debug, Clone, Serialize)]
pub struct Tcp {
    pub device: String,
    pub ours: bool,
    /// Parallel streams.
    pub streams: u32,
    /// Their sum at the receiver (None: no data crossed).
    pub gbps: Option<f64>,
}

/// A device that could not be measured, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub device: String,
    pub reason: String,
}

/// One device over a peer, same run, same traffic.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub device: String,
    pub peer: String,
    pub frame_size: usize,
    pub flows: u32,
    pub delivered: f64,
    /// Busy cycles per packet over the peer's (lower is better), where
    /// both count them.
    pub cycles: Option<f64>,
}

/// Everything measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: String,
    pub command: String,
    pub seconds: u64,
    pub repetitions: usize,
    pub generator: String,
    pub rows: Vec<Row>,
    /// Cores each device used with no traffic.
    pub idle_cpu: Vec<(String, Option<f64>)>,
    pub latency: Vec<Latency>,
    pub tcp: Vec<Tcp>,
    pub skipped: Vec<Skipped>,
    pub ratios: Vec<Ratio>,
    /// True if the run was interrupted before the end.
    pub interrupted: bool,
}

/// True if two devices are of a kind to compare: an overlay
/// (`...-vxlan`) with an overlay, a switch with a switch.
fn comparable(a: &str, b: &str) -> bool {
    let overlay = |d: &str| d.ends_with("-vxlan") || d.ends_with("-native");
    overlay(a) == overlay(b)
}

impl Report {
    /// Fills `ratios`: each of our devices over each peer of its kind, per
    /// traffic.
    pub fn compute_ratios(&mut self) {
        self.ratios.clear();
        for r in self.rows.iter().filter(|r| r.ours) {
            for p in self.rows.iter().filter(|p| {
                !p.ours && p.frame_size == r.frame_size && p.flows == r.flows && comparable(&r.device, &p.device)
            }) {
                if p.delivered_mpps.median > 0.0 {
                    self.ratios.push(Ratio {
                        device: r.device.clone(),
                        peer: p.device.clone(),
                        frame_size: r.frame_size,
                        flows: r.flows,
                        delivered: r.delivered_mpps.median / p.delivered_mpps.median,
                        cycles: r
                            .cycles_per_packet
                            .zip(p.cycles_per_packet)
                            .filter(|(_, p)| p.median > 0.0)
                            .map(|(r, p)| r.median / p.median),
                    });
                }
            }
        }
    }

    /// The TCP section: Gbit/s per device and stream count, then each of
    /// our devices over each peer.
    fn tcp_markdown(&self) -> String {
        let mut streams: Vec<u32> = self.tcp.iter().map(|t| t.streams).collect();
        streams.sort_unstable();
        streams.dedup();
        let run = |d: &str, s: u32| self.tcp.iter().find(|t| t.device == d && t.streams == s);
        let gbps = |d: &str, s: u32| run(d, s).and_then(|t| t.gbps);
        let mut devices: Vec<(&str, bool)> = Vec::new();
        for t in &self.tcp {
            if !devices.iter().any(|(d, _)| *d == t.device) {
                devices.push((&t.device, t.ours));
            }
        }
        let cols: Vec<String> =
            streams.iter().map(|s| format!("{s} stream{}", if *s == 1 { "" } else { "s" })).collect();
        let mut o = format!(
            "\nTCP (iperf3, Gbit/s at the receiver):\n\n| device | {} |\n|---|{}\n",
            cols.join(" | "),
            "---:|".repeat(cols.len())
        );
        for (d, _) in &devices {
            let cells: Vec<String> = streams
                .iter()
                .map(|s| match run(d, *s) {
                    None => "-".into(),
                    Some(t) => t.gbps.map_or("failed".into(), |g| format!("{g:.2}")),
                })
                .collect();
            o.push_str(&format!("| {d} | {} |\n", cells.join(" | ")));
        }
        let mut ratios = String::new();
        for (d, _) in devices.iter().filter(|(_, ours)| *ours) {
            for (p, _) in devices.iter().filter(|(p, ours)| !*ours && comparable(d, p)) {
                let cells: Vec<String> = streams
                    .iter()
                    .map(|s| match (gbps(d, *s), gbps(p, *s)) {
                        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
                        _ => "-".into(),
                    })
                    .collect();
                ratios.push_str(&format!("| {d} | {p} | {} |\n", cells.join(" | ")));
            }
        }
        if !ratios.is_empty() {
            o.push_str(&format!(
                "\nTCP, this switch over each peer (same run):\n\n| device | peer | {} |\n|---|---|{}\n{ratios}",
                cols.join(" | "),
                "---:|".repeat(cols.len())
            ));
        }
        o
    }

    /// The markdown report.
    pub fn markdown(&self) -> String {
        let range =
            |s: &Summary, k: f64, d: usize| format!("{:.d$} ({:.d$}-{:.d$})", s.median * k, s.min * k, s.max * k);
        let mut o = format!(
            "# vswitch-bench\n\n`{}`\n\n{}; {} s per run, {} run(s) per figure (median, min-max); generator: {}.{}\n\n",
            self.command,
            self.machine,
            self.seconds,
            self.repetitions,
            self.generator,
            if self.interrupted { " **Interrupted: partial results.**" } else { "" }
        );
        o.push_str(
            "| device | frame | flows | offered Mpps | delivered Mpps | Gbit/s | loss | CPU (cores) | busy cycles/packet |\n",
        );
        o.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for r in &self.rows {
            let cpu = r.cpu_cores.as_ref().map_or("softirq".to_string(), |c| range(c, 1.0, 2));
            let cycles = r.cycles_per_packet.as_ref().map_or("-".to_string(), |c| range(c, 1.0, 0));
            o.push_str(&format!(
                "| {} | {} B | {} | {} | {} | {} | {:.1} % | {} | {} |\n",
                r.device,
                r.frame_size,
                r.flows,
                range(&r.offered_mpps, 1.0, 3),
                range(&r.delivered_mpps, 1.0, 3),
                range(&r.delivered_gbps, 1.0, 2),
                r.loss * 100.0,
                cpu,
                cycles
            ));
        }
        if !self.ratios.is_empty() {
            o.push_str("\nThis switch over each peer (medians, same run):\n\n");
            o.push_str("| device | peer | frame | flows | delivered Mpps | busy cycles/packet |\n");
            o.push_str("|---|---|---:|---:|---:|---:|\n");
            for r in &self.ratios {
                let cycles = r.cycles.map_or("-".to_string(), |c| format!("{c:.2}x"));
                o.push_str(&format!(
                    "| {} | {} | {} B | {} | {:.2}x | {} |\n",
                    r.device, r.peer, r.frame_size, r.flows, r.delivered, cycles
                ));
            }
        }
        if !self.latency.is_empty() {
            let us = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}"));
            o.push_str("\nRound-trip latency (ping, µs), idle and with the generator at full rate:\n\n");
            o.push_str("| device | idle p50 | idle p99 | idle loss | load p50 | load p99 | load loss |\n");
            o.push_str("|---|---:|---:|---:|---:|---:|---:|\n");
            for l in &self.latency {
                o.push_str(&format!(
                    "| {} | {} | {} | {:.0} % | {} | {} | {:.0} % |\n",
                    l.device,
                    us(l.idle_p50_us),
                    us(l.idle_p99_us),
                    l.idle_loss * 100.0,
                    us(l.load_p50_us),
                    us(l.load_p99_us),
                    l.load_loss * 100.0
                ));
            }
        }
        if !self.tcp.is_empty() {
            o.push_str(&self.tcp_markdown());
        }
        if !self.idle_cpu.is_empty() {
            o.push_str("\nCPU with no traffic (cores):");
            for (d, c) in &self.idle_cpu {
                o.push_str(&format!(" {d} {};", c.map_or("softirq".to_string(), |c| format!("{c:.3}"))));
            }
            o.push('\n');
        }
        for s in &self.skipped {
            o.push_str(&format!("\nSkipped {}: {}\n", s.device, s.reason));
        }
        o
    }

    /// A bar chart of delivered Mpps (median, with min-max whiskers), one
    /// group per traffic pattern, one bar per device.
    pub fn svg(&self, path: &std::path::Path) -> Result<(), String> {
        let e = |e: &dyn std::fmt::Display| e.to_string();
        let mut devices: Vec<&str> = Vec::new();
        let mut groups: Vec<(usize, u32)> = Vec::new();
        for r in &self.rows {
            if !devices.contains(&r.device.as_str()) {
                devices.push(&r.device);
            }
            if !groups.contains(&(r.frame_size, r.flows)) {
                groups.push((r.frame_size, r.flows));
            }
        }
        if devices.is_empty() {
            return Ok(());
        }
        let top = self.rows.iter().map(|r| r.delivered_mpps.max).fold(0.0, f64::max).max(0.001) * 1.15;
        let slots = groups.len() * (devices.len() + 1);
        let width = (240 + slots * 28).max(640) as u32;
        let root = SVGBackend::new(path, (width, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Delivered Mpps (median, min-max) by frame size and flows", ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..slots as f64, 0f64..top)
            .map_err(|x| e(&x))?;
        let n = devices.len() + 1;
        // No automatic x labels: plotters puts its ticks at round values,
        // not at the groups. Each group's label is drawn under its centre.
        chart.configure_mesh().disable_x_mesh().x_labels(0).y_desc("Mpps").draw().map_err(|x| e(&x))?;
        for (g, (size, flows)) in groups.iter().enumerate() {
            let centre = (g * n) as f64 + devices.len() as f64 / 2.0;
            let (px, py) = chart.backend_coord(&(centre, 0.0));
            let style = ("sans-serif", 14).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Top));
            root.draw(&Text::new(format!("{size} B, {flows} flows"), (px, py + 8), style)).map_err(|x| e(&x))?;
        }
        for (di, dev) in devices.iter().enumerate() {
            let color = Palette99::pick(di).to_rgba();
            let bars: Vec<_> = self
                .rows
                .iter()
                .filter(|r| r.device == *dev)
                .filter_map(|r| {
                    let g = groups.iter().position(|g| *g == (r.frame_size, r.flows))?;
                    Some(((g * n + di) as f64, r.delivered_mpps))
                })
                .collect();
            chart
                .draw_series(
                    bars.iter().map(|(x, s)| Rectangle::new([(*x + 0.1, 0.0), (*x + 0.9, s.median)], color.filled())),
                )
                .map_err(|x| e(&x))?
                .label(dev.to_string())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
            chart
                .draw_series(
                    bars.iter().map(|(x, s)| {
                        PathElement::new(vec![(*x + 0.5, s.min), (*x + 0.5, s.max)], BLACK.stroke_width(2))
                    }),
                )
                .map_err(|x| e(&x))?;
        }
        // What the generator offered each device (median): a dashed mark
        // across its bar, so delivered reads against offered.
        let offered: Vec<(f64, f64)> = self
            .rows
            .iter()
            .filter_map(|r| {
                let g = groups.iter().position(|g| *g == (r.frame_size, r.flows))?;
                let di = devices.iter().position(|d| *d == r.device)?;
                Some(((g * n + di) as f64, r.offered_mpps.median))
            })
            .collect();
        let mark = RGBColor(200, 30, 30);
        chart
            .draw_series(
                offered.iter().map(|(x, o)| PathElement::new(vec![(*x, *o), (*x + 1.0, *o)], mark.stroke_width(3))),
            )
            .map_err(|x| e(&x))?
            .label("offered (median)")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 10, y)], mark.stroke_width(3)));
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(|x| e(&x))?;
        root.present().map_err(|x| e(&x))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(device: &str, ours: bool, mpps: f64) -> Row {
        let s = Summary { median: mpps, min: mpps * 0.9, max: mpps * 1.1 };
        Row {
            device: device.into(),
            ours,
            frame_size: 64,
            flows: 1,
            offered_mpps: s,
            delivered_mpps: s,
            delivered_gbps: s,
            loss: 0.0,
            cpu_cores: ours.then_some(s),
            cycles_per_packet: (!device.starts_with("linux")).then_some(Summary {
                median: 1000.0 * mpps,
                min: 900.0 * mpps,
                max: 1100.0 * mpps,
            }),
        }
    }

    fn report() -> Report {
        Report {
            machine: "test".into(),
            command: "vswitch-bench".into(),
            seconds: 1,
            repetitions: 1,
            generator: "afpacket".into(),
            rows: vec![row("vswitch-afxdp", true, 1.5), row("linux-bridge", false, 1.0), row("ovs-afxdp", false, 0.5)],
            idle_cpu: vec![("vswitch-afxdp".into(), Some(0.001))],
            latency: vec![],
            tcp: vec![
                Tcp { device: "vswitch-afxdp".into(), ours: true, streams: 1, gbps: Some(2.0) },
                Tcp { device: "vswitch-afxdp".into(), ours: true, streams: 4, gbps: Some(3.0) },
                Tcp { device: "linux-bridge".into(), ours: false, streams: 1, gbps: Some(4.0) },
                Tcp { device: "linux-bridge".into(), ours: false, streams: 4, gbps: Some(6.0) },
            ],
            skipped: vec![Skipped { device: "ovs-afpacket".into(), reason: "not installed".into() }],
            ratios: vec![],
            interrupted: false,
        }
    }

    /// An overlay is compared with the kernel's overlay only, a switch
    /// with the switches only.
    #[test]
    fn overlays_are_compared_with_overlays() {
        let mut r = report();
        r.rows.push(row("vswitch-afpacket-vxlan", true, 0.2));
        r.rows.push(row("linux-vxlan", false, 0.1));
        r.tcp.push(Tcp { device: "vswitch-afpacket-vxlan".into(), ours: true, streams: 1, gbps: Some(1.0) });
        r.tcp.push(Tcp { device: "linux-vxlan".into(), ours: false, streams: 1, gbps: Some(8.0) });
        r.compute_ratios();
        let pairs: Vec<(&str, &str)> = r.ratios.iter().map(|x| (x.device.as_str(), x.peer.as_str())).collect();
        assert_eq!(
            pairs,
            vec![
                ("vswitch-afxdp", "linux-bridge"),
                ("vswitch-afxdp", "ovs-afxdp"),
                ("vswitch-afpacket-vxlan", "linux-vxlan")
            ]
        );
        let md = r.markdown();
        assert!(md.contains("| vswitch-afpacket-vxlan | linux-vxlan | 0.12x | - |"), "{md}");
        assert!(!md.contains("| vswitch-afxdp | linux-vxlan |"), "{md}");
    }

    #[test]
    fn ratios_are_against_each_peer() {
        let mut r = report();
        r.compute_ratios();
        let got: Vec<(String, f64, Option<f64>)> =
            r.ratios.iter().map(|x| (x.peer.clone(), x.delivered, x.cycles)).collect();
        // The bridge counts no cycles; OVS's are compared.
        assert_eq!(got, vec![("linux-bridge".into(), 1.5, None), ("ovs-afxdp".into(), 3.0, Some(3.0))]);
    }

    #[test]
    fn markdown_has_every_device_and_the_skips() {
        let mut r = report();
        r.compute_ratios();
        let md = r.markdown();
        for d in [
            "vswitch-afxdp",
            "linux-bridge",
            "ovs-afxdp",
            "Skipped ovs-afpacket: not installed",
            "3.00x",
            "| vswitch-afxdp | 2.00 | 3.00 |",
            "| vswitch-afxdp | linux-bridge | 0.50x | 0.50x |",
        ] {
            assert!(md.contains(d), "{d} in\n{md}");
        }
        assert!(md.contains("| vswitch-afxdp | 64 B | 1 | 1.500 (1.350-1.650) |"), "{md}");
        assert!(serde_json::to_string(&r).unwrap().contains("\"delivered_mpps\":{\"median\":1.5"));
    }

    #[test]
    fn the_chart_is_an_svg_with_every_device() {
        let path = std::env::temp_dir().join(format!("vswitch-bench-test-{}.svg", std::process::id()));
        report().svg(&path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(svg.starts_with("<svg"));
        for d in ["vswitch-afxdp", "linux-bridge", "ovs-afxdp", "64 B, 1 flows", "offered (median)"] {
            assert!(svg.contains(d), "{d} in the chart");
        }
    }

    /// Every group has its label, once, under its own bars.
    #[test]
    fn every_group_of_the_chart_is_labelled() {
        let mut r = report();
        let more: Vec<Row> = r
            .rows
            .iter()
            .flat_map(|x| [(1518, 1), (64, 1000)].map(|(size, flows)| Row { frame_size: size, flows, ..x.clone() }))
            .collect();
        r.rows.extend(more);
        let path = std::env::temp_dir().join(format!("vswitch-bench-groups-{}.svg", std::process::id()));
        r.svg(&path).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let mut xs = Vec::new();
        for label in ["64 B, 1 flows", "1518 B, 1 flows", "64 B, 1000 flows"] {
            // plotters writes a text element's content on lines of its own.
            let content = format!("\n{label}\n</text>");
            assert_eq!(svg.matches(&content).count(), 1, "{label} once in\n{svg}");
            // The x of the <text> element holding it.
            let at = svg.find(&content).unwrap();
            let tag = &svg[svg[..at].rfind("<text").unwrap()..at];
            let x: f64 = tag.split("x=\"").nth(1).unwrap().split('"').next().unwrap().parse().unwrap();
            xs.push(x);
        }
        assert!(xs.windows(2).all(|w| w[0] < w[1]), "labels left to right in group order: {xs:?}");
    }
}
