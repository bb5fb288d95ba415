//! The two pictures of a run, SVG written by hand (no plotting dependency):
//!
//! - `headline.svg`: the 64-byte packet rate and the TCP connection rate against N (log
//!   scale), one line per datapath and scenario, whiskers the 95 % intervals: netfilter's
//!   rule walks fall with N, bpfnet's one hash lookup does not;
//! - `ratios.svg`: at the first N, bpfnet's figure over each reference's, with the ratio's
//!   95 % interval and the target of issue #18 where there is one.

use std::collections::BTreeSet;
use std::fmt::Write;

use super::report::{decide, escape, Ratio, Row, TARGETS, TARGET_REFERENCES};
use super::stats::Interval;
use super::topology::Datapath;
use super::workload::Metric;

const SCENARIOS: [&str; 3] = ["c2c", "snat", "dnat"];
const HEADLINE_METRICS: [Metric; 2] = [Metric::UdpPps, Metric::CrrPerSec];
/// One colour per datapath, by its place in [`Datapath::ALL`].
const PALETTE: [&str; 8] = ["#7f7f7f", "#e07b39", "#2f6db5", "#3a9a4a", "#9c4fb0", "#c23b3b", "#1aa3a3", "#8c6d1f"];

fn colour(datapath: Datapath) -> &'static str {
    let i = Datapath::ALL.iter().position(|d| *d == datapath).unwrap_or(0);
    PALETTE[i % PALETTE.len()]
}

/// A tick step of 1, 2 or 5 x 10^k giving about `ticks` ticks up to `max`.
fn nice_step(max: f64, ticks: f64) -> f64 {
    let raw = (max / ticks).max(f64::MIN_POSITIVE);
    let magnitude = 10f64.powf(raw.log10().floor());
    let scaled = raw / magnitude;
    magnitude
        * if scaled <= 1.0 {
            1.0
        } else if scaled <= 2.0 {
            2.0
        } else if scaled <= 5.0 {
            5.0
        } else {
            10.0
        }
}

fn tick_label(value: f64, step: f64) -> String {
    if step >= 1.0 {
        format!("{value:.0}")
    } else if step >= 0.1 {
        format!("{value:.1}")
    } else if step >= 0.01 {
        format!("{value:.2}")
    } else {
        format!("{value:.3}")
    }
}

fn open(svg: &mut String, width: f64, height: f64, title: &str, subtitle: &str) {
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0}" height="{height:.0}" viewBox="0 0 {width:.0} {height:.0}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(svg, r#"<text x="20" y="24" font-size="15" font-weight="bold">{}</text>"#, escape(title));
    let _ = writeln!(svg, r##"<text x="20" y="44" fill="#444">{}</text>"##, escape(subtitle));
}

/// A line of the headline chart: one datapath's figure at each N it ran.
struct Series {
    datapath: Datapath,
    /// (N, median, interval); a single point is drawn as a dashed level across the panel.
    points: Vec<(u32, f64, Option<Interval>)>,
    /// The figure is another scenario's (the floor's c2c, in the NAT panels).
    borrowed: bool,
}

fn series(rows: &[Row], scenario: &str, metric: Metric, first_n: u32) -> Vec<Series> {
    let mut out = Vec::new();
    for datapath in Datapath::ALL {
        let points = |scenario: &str| -> Vec<(u32, f64, Option<Interval>)> {
            rows.iter()
                .filter(|r| r.scenario == scenario && r.metric == metric && r.datapath == datapath)
                .filter_map(|r| Some((r.other_published_ports, r.median?, r.ci)))
                .collect()
        };
        let own = points(scenario);
        if !own.is_empty() {
            out.push(Series { datapath, points: own, borrowed: false });
        } else if !datapath.is_bpfnet() && scenario != "c2c" {
            // A reference that does not run this scenario is compared through its c2c figure
            // at the first N (as the ratios are): show that level.
            let c2c: Vec<_> = points("c2c").into_iter().filter(|p| p.0 == first_n).collect();
            if !c2c.is_empty() {
                out.push(Series { datapath, points: c2c, borrowed: true });
            }
        }
    }
    out
}

/// Packet and connection rates against N, per scenario, one line per datapath.
pub fn headline_svg(rows: &[Row], title: &str, first_n: u32) -> String {
    let ns: BTreeSet<u32> = rows
        .iter()
        .filter(|r| SCENARIOS.contains(&r.scenario) && HEADLINE_METRICS.contains(&r.metric))
        .map(|r| r.other_published_ports)
        .collect();
    let (n_lo, n_hi) = (ns.first().copied().unwrap_or(1), ns.last().copied().unwrap_or(1));
    let (log_lo, log_hi) = (f64::from(n_lo.max(1)).log10(), f64::from(n_hi.max(1)).log10());
    let (panel_w, panel_h) = (300.0, 210.0);
    let (left, gap_x, gap_y) = (90.0, 95.0, 80.0);
    let present: Vec<Datapath> =
        Datapath::ALL.into_iter().filter(|d| rows.iter().any(|r| r.datapath == *d && r.median.is_some())).collect();
    let legend_rows = present.len().div_ceil(5).max(1) as f64;
    let top = 60.0 + 22.0 * legend_rows + 30.0;
    let width = left + SCENARIOS.len() as f64 * (panel_w + gap_x);
    let height = top + HEADLINE_METRICS.len() as f64 * (panel_h + gap_y) + 10.0;
    let mut svg = String::new();
    open(
        &mut svg,
        width,
        height,
        title,
        "medians, whiskers: 95 % bootstrap intervals; N = other published ports (log scale); dashed: measured at one N only",
    );
    for (i, datapath) in present.iter().enumerate() {
        let x = 20.0 + 190.0 * (i % 5) as f64;
        let y = 66.0 + 22.0 * (i / 5) as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{x}" y1="{y}" x2="{:.0}" y2="{y}" stroke="{}" stroke-width="3"/><text x="{:.0}" y="{:.0}">{}</text>"#,
            x + 24.0,
            colour(*datapath),
            x + 30.0,
            y + 4.0,
            datapath.name()
        );
    }
    for (mi, metric) in HEADLINE_METRICS.into_iter().enumerate() {
        for (si, scenario) in SCENARIOS.into_iter().enumerate() {
            let px = left + si as f64 * (panel_w + gap_x);
            let py = top + mi as f64 * (panel_h + gap_y);
            let lines = series(rows, scenario, metric, first_n);
            let highest = lines
                .iter()
                .flat_map(|s| s.points.iter().map(|(_, m, ci)| ci.map_or(*m, |ci| ci.hi.max(*m))))
                .fold(0.0f64, f64::max);
            let step = nice_step(highest.max(f64::MIN_POSITIVE) * 1.05, 4.0);
            let y_max = (highest * 1.05 / step).ceil().max(1.0) * step;
            let y = |v: f64| py + panel_h * (1.0 - (v / y_max).clamp(0.0, 1.0));
            let x = |n: u32| {
                // Inset from the frame, so the points (set aside per datapath) stay off the axis.
                if log_hi > log_lo {
                    px + 20.0 + (panel_w - 40.0) * (f64::from(n.max(1)).log10() - log_lo) / (log_hi - log_lo)
                } else {
                    px + panel_w / 2.0
                }
            };
            let _ = writeln!(
                svg,
                r#"<text x="{:.0}" y="{:.0}" font-weight="bold" text-anchor="middle">{scenario}: {}</text>"#,
                px + panel_w / 2.0,
                py - 12.0,
                escape(metric.label())
            );
            let mut tick = 0.0;
            while tick <= y_max + step * 1e-6 {
                let ty = y(tick);
                let _ = writeln!(
                    svg,
                    r##"<line x1="{px}" y1="{ty:.1}" x2="{:.0}" y2="{ty:.1}" stroke="#e6e6e6"/><text x="{:.0}" y="{:.1}" text-anchor="end" fill="#333">{}</text>"##,
                    px + panel_w,
                    px - 6.0,
                    ty + 4.0,
                    tick_label(tick, step)
                );
                tick += step;
            }
            for n in &ns {
                let tx = x(*n);
                let _ = writeln!(
                    svg,
                    r##"<line x1="{tx:.1}" y1="{py}" x2="{tx:.1}" y2="{:.0}" stroke="#e6e6e6"/><text x="{tx:.1}" y="{:.0}" text-anchor="middle" fill="#333">{n}</text>"##,
                    py + panel_h,
                    py + panel_h + 16.0
                );
            }
            let _ = writeln!(
                svg,
                r##"<rect x="{px}" y="{py}" width="{panel_w}" height="{panel_h}" fill="none" stroke="#999"/><text x="{:.0}" y="{:.0}" text-anchor="middle" fill="#333">N</text>"##,
                px + panel_w / 2.0,
                py + panel_h + 32.0
            );
            for (li, line) in lines.iter().enumerate() {
                // Each datapath a few pixels aside, so whiskers at one N do not hide each other.
                let aside = (li as f64 - (lines.len() as f64 - 1.0) / 2.0) * 5.0;
                let x = |n: u32| x(n) + aside;
                let c = colour(line.datapath);
                let wide = if line.datapath.is_bpfnet() { 3.0 } else { 2.0 };
                let tip = format!(
                    "{}{}",
                    line.datapath.name(),
                    if line.borrowed { " (its c2c figure at the first N)" } else { "" }
                );
                if line.points.len() == 1 && ns.len() > 1 {
                    let (_, m, _) = line.points[0];
                    let _ = writeln!(
                        svg,
                        r#"<line x1="{px}" y1="{:.1}" x2="{:.0}" y2="{:.1}" stroke="{c}" stroke-width="{wide}" stroke-dasharray="6 4"><title>{}: {}</title></line>"#,
                        y(m),
                        px + panel_w,
                        y(m),
                        escape(&tip),
                        super::report::figure(m)
                    );
                } else if line.points.len() > 1 {
                    let path: Vec<String> =
                        line.points.iter().map(|(n, m, _)| format!("{:.1},{:.1}", x(*n), y(*m))).collect();
                    let _ = writeln!(
                        svg,
                        r#"<polyline points="{}" fill="none" stroke="{c}" stroke-width="{wide}"/>"#,
                        path.join(" ")
                    );
                }
                for (n, m, ci) in &line.points {
                    let (cx, cy) = (x(*n), y(*m));
                    if let Some(ci) = ci {
                        let _ = writeln!(
                            svg,
                            r#"<path d="M{cx:.1},{:.1}V{:.1}M{:.1},{:.1}h8M{:.1},{:.1}h8" stroke="{c}" stroke-width="1.5"/>"#,
                            y(ci.lo),
                            y(ci.hi),
                            cx - 4.0,
                            y(ci.lo),
                            cx - 4.0,
                            y(ci.hi)
                        );
                    }
                    let _ = writeln!(
                        svg,
                        r#"<circle cx="{cx:.1}" cy="{cy:.1}" r="3.5" fill="{c}"><title>{} N={n}: {}</title></circle>"#,
                        escape(&tip),
                        super::report::figure(*m)
                    );
                }
            }
        }
    }
    svg.push_str("</svg>\n");
    svg
}

/// The target on a ratio line, if issue #18 has one.
fn target_for(row: &Row, reference: Datapath) -> Option<f64> {
    TARGETS.iter().find_map(|t| {
        let name = TARGET_REFERENCES.iter().find(|(role, _)| *role == t.reference)?.1;
        (t.scenario == row.scenario && t.metric == row.metric && name == reference.name()).then_some(t.at_least)
    })
}

/// bpfnet over each reference at the first N, one line per (scenario, metric, bpfnet
/// datapath, reference), with the ratio's interval and its target.
pub fn ratios_svg(rows: &[Row], title: &str, first_n: u32) -> String {
    struct Line<'a> {
        label: String,
        row: &'a Row,
        ratio: &'a Ratio,
        target: Option<f64>,
    }
    let mut lines = Vec::new();
    for scenario in SCENARIOS {
        for metric in HEADLINE_METRICS {
            for row in rows.iter().filter(|r| {
                r.scenario == scenario
                    && r.metric == metric
                    && r.other_published_ports == first_n
                    && r.datapath.is_bpfnet()
            }) {
                for ratio in &row.ratios {
                    lines.push(Line {
                        label: format!("{scenario} {}: {} / {}", metric.label(), row.datapath.name(), ratio.to.name()),
                        row,
                        ratio,
                        target: target_for(row, ratio.to),
                    });
                }
            }
        }
    }
    let (left, top, line_h, plot_w) = (330.0, 96.0, 24.0, 520.0);
    let highest = lines
        .iter()
        .map(|l| l.ratio.ci.map_or(l.ratio.ratio, |ci| ci.hi).max(l.ratio.ratio).max(l.target.unwrap_or(0.0)))
        .fold(2.0f64, f64::max)
        .min(5.0);
    let step = nice_step(highest, 5.0);
    let x_max = (highest * 1.05 / step).ceil() * step;
    let x = |v: f64| left + plot_w * (v / x_max).clamp(0.0, 1.0);
    let plot_h = line_h * lines.len().max(1) as f64;
    let width = left + plot_w + 40.0;
    let height = top + plot_h + 50.0;
    let mut svg = String::new();
    open(
        &mut svg,
        width,
        height,
        title,
        &format!("N={first_n}: bpfnet's median / the reference's, whiskers: 95 % bootstrap interval of the ratio; above 1: bpfnet faster"),
    );
    // Legend: dot colours are the verdicts, the red bar the target.
    let legend = [("#2e7d32", "met"), ("#c62828", "missed"), ("#ef8f00", "undecided or n < 5"), ("#555", "no target")];
    for (i, (c, what)) in legend.iter().enumerate() {
        let lx = 20.0 + [0.0, 70.0, 160.0, 320.0][i];
        let _ = writeln!(
            svg,
            r#"<circle cx="{lx}" cy="64" r="5" fill="{c}"/><text x="{:.0}" y="68">{}</text>"#,
            lx + 10.0,
            escape(what)
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="440" y="56" width="3" height="16" fill="#c62828"/><text x="450" y="68">target (issue #18)</text>"##
    );
    let mut tick = 0.0;
    while tick <= x_max + step * 1e-6 {
        let tx = x(tick);
        let _ = writeln!(
            svg,
            r##"<line x1="{tx:.1}" y1="{top}" x2="{tx:.1}" y2="{:.0}" stroke="#e6e6e6"/><text x="{tx:.1}" y="{:.0}" text-anchor="middle" fill="#333">{}</text>"##,
            top + plot_h,
            top + plot_h + 16.0,
            tick_label(tick, step)
        );
        tick += step;
    }
    let one = x(1.0);
    let _ = writeln!(
        svg,
        r##"<line x1="{one:.1}" y1="{:.0}" x2="{one:.1}" y2="{:.0}" stroke="#333" stroke-dasharray="4 3"/><text x="{:.0}" y="{:.0}" text-anchor="middle" fill="#333">ratio</text>"##,
        top - 6.0,
        top + plot_h,
        left + plot_w / 2.0,
        top + plot_h + 34.0
    );
    let mut last_group = None;
    for (i, line) in lines.iter().enumerate() {
        let cy = top + line_h * (i as f64 + 0.5);
        let group = (line.row.scenario, line.row.metric);
        if last_group.is_some() && last_group != Some(group) {
            let gy = top + line_h * i as f64;
            let _ =
                writeln!(svg, r##"<line x1="20" y1="{gy:.1}" x2="{:.0}" y2="{gy:.1}" stroke="#bbb"/>"##, left + plot_w);
        }
        last_group = Some(group);
        let c = match line.target {
            Some(t) => match decide(line.ratio, t) {
                "met" => "#2e7d32",
                "missed" => "#c62828",
                _ => "#ef8f00",
            },
            None => "#555",
        };
        let _ = writeln!(
            svg,
            r#"<text x="{:.0}" y="{:.1}" text-anchor="end">{}</text>"#,
            left - 10.0,
            cy + 4.0,
            escape(&line.label)
        );
        if let Some(t) = line.target {
            let _ = writeln!(
                svg,
                r##"<rect x="{:.1}" y="{:.1}" width="3" height="{:.0}" fill="#c62828"><title>target {t}</title></rect>"##,
                x(t) - 1.5,
                cy - 9.0,
                18.0
            );
        }
        if let Some(ci) = line.ratio.ci {
            let _ = writeln!(
                svg,
                r#"<path d="M{:.1},{cy:.1}H{:.1}M{:.1},{:.1}v10M{:.1},{:.1}v10" stroke="{c}" stroke-width="1.5"/>"#,
                x(ci.lo),
                x(ci.hi),
                x(ci.lo),
                cy - 5.0,
                x(ci.hi),
                cy - 5.0
            );
        }
        let beyond = if line.ratio.ratio > x_max { " (off the scale)" } else { "" };
        let _ = writeln!(
            svg,
            r#"<circle cx="{:.1}" cy="{cy:.1}" r="4.5" fill="{c}"><title>{}: {:.2}{beyond}</title></circle>"#,
            x(line.ratio.ratio),
            escape(&line.label),
            line.ratio.ratio
        );
        let _ = writeln!(
            svg,
            r##"<text x="{:.1}" y="{:.1}" fill="#333" font-size="10">{:.2}</text>"##,
            (x(line.ratio.ci.map_or(line.ratio.ratio, |ci| ci.hi).min(x_max)) + 6.0).min(left + plot_w - 24.0),
            cy - 4.0,
            line.ratio.ratio
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_round() {
        assert_eq!(nice_step(0.2, 4.0), 0.05);
        assert_eq!(nice_step(6000.0, 4.0), 2000.0);
        assert_eq!(nice_step(2.3, 5.0), 0.5);
    }
}
