//! The report: every figure as JSON, a markdown table with the ratios of
//! this switch against each peer measured in the same run, and an SVG
//! chart.

use plotters::prelude::*;
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
    pub skipped: Vec<Skipped>,
    pub ratios: Vec<Ratio>,
    /// True if the run was interrupted before the end.
    pub interrupted: bool,
}

impl Report {
    /// Fills `ratios`: each of our devices over each peer, per traffic.
    pub fn compute_ratios(&mut self) {
        self.ratios.clear();
        for r in self.rows.iter().filter(|r| r.ours) {
            for p in self.rows.iter().filter(|p| !p.ours && p.frame_size == r.frame_size && p.flows == r.flows) {
                if p.delivered_mpps.median > 0.0 {
                    self.ratios.push(Ratio {
                        device: r.device.clone(),
                        peer: p.device.clone(),
                        frame_size: r.frame_size,
                        flows: r.flows,
                        delivered: r.delivered_mpps.median / p.delivered_mpps.median,
                    });
                }
            }
        }
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
        o.push_str("| device | frame | flows | offered Mpps | delivered Mpps | Gbit/s | loss | CPU (cores) |\n");
        o.push_str("|---|---:|---:|---:|---:|---:|---:|---:|\n");
        for r in &self.rows {
            let cpu = r.cpu_cores.as_ref().map_or("softirq".to_string(), |c| range(c, 1.0, 2));
            o.push_str(&format!(
                "| {} | {} B | {} | {} | {} | {} | {:.1} % | {} |\n",
                r.device,
                r.frame_size,
                r.flows,
                range(&r.offered_mpps, 1.0, 3),
                range(&r.delivered_mpps, 1.0, 3),
                range(&r.delivered_gbps, 1.0, 2),
                r.loss * 100.0,
                cpu
            ));
        }
        if !self.ratios.is_empty() {
            o.push_str("\nThis switch over each peer (delivered Mpps, medians, same run):\n\n");
            o.push_str("| device | peer | frame | flows | ratio |\n|---|---|---:|---:|---:|\n");
            for r in &self.ratios {
                o.push_str(&format!(
                    "| {} | {} | {} B | {} | {:.2}x |\n",
                    r.device, r.peer, r.frame_size, r.flows, r.delivered
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
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(groups.len() * 2 + 1)
            .x_label_formatter(&|x| {
                let g = (*x / n as f64).floor() as usize;
                let centre = (g * n) as f64 + devices.len() as f64 / 2.0;
                match groups.get(g) {
                    Some((size, flows)) if (*x - centre).abs() < 0.6 => format!("{size} B, {flows} flows"),
                    _ => String::new(),
                }
            })
            .y_desc("Mpps")
            .draw()
            .map_err(|x| e(&x))?;
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
            skipped: vec![Skipped { device: "ovs-afpacket".into(), reason: "not installed".into() }],
            ratios: vec![],
            interrupted: false,
        }
    }

    #[test]
    fn ratios_are_against_each_peer() {
        let mut r = report();
        r.compute_ratios();
        let got: Vec<(String, f64)> = r.ratios.iter().map(|x| (x.peer.clone(), x.delivered)).collect();
        assert_eq!(got, vec![("linux-bridge".into(), 1.5), ("ovs-afxdp".into(), 3.0)]);
    }

    #[test]
    fn markdown_has_every_device_and_the_skips() {
        let mut r = report();
        r.compute_ratios();
        let md = r.markdown();
        for d in ["vswitch-afxdp", "linux-bridge", "ovs-afxdp", "Skipped ovs-afpacket: not installed", "3.00x"] {
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
        for d in ["vswitch-afxdp", "linux-bridge", "ovs-afxdp", "64 B, 1 flows"] {
            assert!(svg.contains(d), "{d} in the chart");
        }
    }
}
