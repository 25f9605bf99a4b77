//! A grouped bar chart in plain SVG: one panel per metric, groups along x, one bar per system.
//! Hand-rolled (a few hundred bytes of markup per bar) to avoid a plotting dependency.

use std::fmt::Write;

/// Colours of the series, in order (colour-blind friendly, Okabe–Ito).
const PALETTE: [&str; 8] = [
    "#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000",
];

/// Width of the whole chart, px.
pub const WIDTH: f64 = 1000.0;
const PANEL_HEIGHT: f64 = 260.0;
const MARGIN_LEFT: f64 = 70.0;
const MARGIN_RIGHT: f64 = 20.0;
const TITLE_HEIGHT: f64 = 30.0;
const AXIS_LABELS: f64 = 40.0;

/// One panel: `groups` along x; `series[i].1[g]` is series i's value in group g.
#[derive(Debug, Clone)]
pub struct Panel {
    /// Title above the panel.
    pub title: String,
    /// Group labels.
    pub groups: Vec<String>,
    /// (series name, one value per group; `None` = not measured).
    pub series: Vec<(String, Vec<Option<f64>>)>,
    /// Logarithmic y axis (latencies spanning orders of magnitude).
    pub log: bool,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A short number: 12.3k, 1.2M, 0.45.
pub fn short(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 10.0 {
        format!("{v:.0}")
    } else if a >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The chart: panels stacked, a legend on top naming the series of the first panel.
pub fn render(title: &str, panels: &[Panel]) -> String {
    let names: Vec<&str> = panels
        .iter()
        .flat_map(|p| p.series.iter().map(|(n, _)| n.as_str()))
        .fold(Vec::new(), |mut acc, n| {
            if !acc.contains(&n) {
                acc.push(n);
            }
            acc
        });
    let legend_rows = names.len().div_ceil(3).max(1);
    let legend_h = 20.0 * legend_rows as f64 + 10.0;
    let top = 40.0 + legend_h;
    let height = top + panels.len() as f64 * (PANEL_HEIGHT + TITLE_HEIGHT + AXIS_LABELS);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" font-size="16" text-anchor="middle">{}</text>"#,
        WIDTH / 2.0,
        esc(title)
    );
    let colour = |name: &str| {
        let i = names.iter().position(|n| *n == name).unwrap_or(0);
        PALETTE[i % PALETTE.len()]
    };
    for (i, n) in names.iter().enumerate() {
        let x = MARGIN_LEFT + (i % 3) as f64 * 300.0;
        let y = 40.0 + (i / 3) as f64 * 20.0;
        let _ = writeln!(
            s,
            r#"<rect x="{x}" y="{y}" width="12" height="12" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            colour(n),
            x + 18.0,
            y + 10.0,
            esc(n)
        );
    }
    let mut y0 = top;
    for p in panels {
        panel(&mut s, p, y0, &colour);
        y0 += PANEL_HEIGHT + TITLE_HEIGHT + AXIS_LABELS;
    }
    s.push_str("</svg>\n");
    s
}

fn panel(s: &mut String, p: &Panel, y0: f64, colour: &dyn Fn(&str) -> &'static str) {
    let plot_top = y0 + TITLE_HEIGHT;
    let plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let values = p
        .series
        .iter()
        .flat_map(|(_, v)| v.iter().flatten().copied());
    let max = values.clone().fold(0.0f64, f64::max);
    let min_pos = values.filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
    let _ = writeln!(
        s,
        r#"<text x="{MARGIN_LEFT}" y="{}" font-size="13" font-weight="bold">{}</text>"#,
        y0 + 18.0,
        esc(&p.title)
    );
    if max <= 0.0 || p.groups.is_empty() {
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">no data</text>"#,
            MARGIN_LEFT + 10.0,
            plot_top + 20.0
        );
        return;
    }
    // y scale: value -> pixel height.
    let (lo, hi) = if p.log {
        let lo = min_pos.log10().floor();
        let hi = max.log10().ceil().max(lo + 1.0);
        (lo, hi)
    } else {
        (0.0, max * 1.1)
    };
    let height_of = |v: f64| -> f64 {
        if p.log {
            if v <= 0.0 {
                0.0
            } else {
                ((v.log10() - lo) / (hi - lo)).clamp(0.0, 1.0) * PANEL_HEIGHT
            }
        } else {
            (v / hi).clamp(0.0, 1.0) * PANEL_HEIGHT
        }
    };
    // Axis and grid.
    let base = plot_top + PANEL_HEIGHT;
    let ticks: Vec<f64> = if p.log {
        let steps = (hi - lo) as i32;
        (0..=steps).map(|k| 10f64.powf(lo + f64::from(k))).collect()
    } else {
        (0..=4).map(|k| hi * f64::from(k) / 4.0).collect()
    };
    for t in ticks {
        let y = base - height_of(t);
        let _ = writeln!(
            s,
            r##"<line x1="{MARGIN_LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            WIDTH - MARGIN_RIGHT,
            MARGIN_LEFT - 5.0,
            y + 4.0,
            short(t)
        );
    }
    let _ = writeln!(
        s,
        r##"<line x1="{MARGIN_LEFT}" x2="{}" y1="{base}" y2="{base}" stroke="#333"/>"##,
        WIDTH - MARGIN_RIGHT
    );
    let group_w = plot_w / p.groups.len() as f64;
    let n = p.series.len().max(1) as f64;
    let bar_w = (group_w * 0.8 / n).min(40.0);
    for (g, label) in p.groups.iter().enumerate() {
        let gx = MARGIN_LEFT + g as f64 * group_w;
        let used = bar_w * n;
        let start = gx + (group_w - used) / 2.0;
        for (i, (name, vals)) in p.series.iter().enumerate() {
            let Some(v) = vals.get(g).copied().flatten() else {
                continue;
            };
            let h = height_of(v);
            let x = start + i as f64 * bar_w;
            let _ = writeln!(
                s,
                r#"<rect x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{}"><title>{}: {}</title></rect>"#,
                base - h,
                (bar_w - 1.0).max(1.0),
                colour(name),
                esc(name),
                short(v)
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            gx + group_w / 2.0,
            base + 16.0,
            esc(label)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bars_and_skips_missing_values() {
        let p = Panel {
            title: "t <1>".into(),
            groups: vec!["a".into(), "b".into()],
            series: vec![
                ("x".into(), vec![Some(10.0), None]),
                ("y".into(), vec![Some(5.0), Some(1000.0)]),
            ],
            log: true,
        };
        let svg = render("chart", &[p]);
        assert!(svg.starts_with("<svg"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<title>").count(), 3);
        assert!(svg.contains("t &lt;1&gt;"));
    }

    #[test]
    fn short_numbers() {
        assert_eq!(short(1_234_567.0), "1.2M");
        assert_eq!(short(45_000.0), "45k");
        assert_eq!(short(1_500.0), "1.5k");
        assert_eq!(short(0.5), "0.50");
    }
}
