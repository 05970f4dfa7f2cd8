//! A hand-written SVG: median requests/s per contender (left) and latency
//! percentiles p50/p90/p99 per contender (right). No plotting dependency.

use super::report::Summary;
use std::fmt::Write;

/// Height below the panels' top edge (axis labels, legend).
const BELOW_TOP: f64 = 350.0;
/// Narrowest panel; wider when there are many bars.
const MIN_PANEL_W: f64 = 400.0;
const PANEL_H: f64 = 280.0;
/// The panels' top edge with up to two subtitle lines; each more line moves it down.
const TOP: f64 = 100.0;
const COLORS: [&str; 6] = [
    "#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2",
];
const LATENCY_SHADES: [(&str, &str); 3] =
    [("p50", "#9ecae1"), ("p90", "#4292c6"), ("p99", "#08519c")];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A "nice" axis maximum at or above `v` (1, 2, 2.5, 5 x 10^k).
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * mag >= v {
            return m * mag;
        }
    }
    10.0 * mag
}

fn axis(
    out: &mut String,
    top: f64,
    x0: f64,
    panel_w: f64,
    max: f64,
    label: &str,
    fmt: &dyn Fn(f64) -> String,
) {
    let _ = writeln!(
        out,
        r##"<text x="{x0}" y="{}" font-size="13" fill="#333">{}</text>"##,
        top - 12.0,
        esc(label)
    );
    for i in 0..=4 {
        let v = max * i as f64 / 4.0;
        let y = top + PANEL_H - PANEL_H * i as f64 / 4.0;
        let _ = writeln!(
            out,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end" fill="#555">{}</text>"##,
            x0 + panel_w,
            x0 - 6.0,
            y + 4.0,
            fmt(v)
        );
    }
}

pub fn render(title: &str, subtitle: &[String], summaries: &[Summary]) -> String {
    let mut out = String::new();
    let top = TOP.max(68.0 + 16.0 * subtitle.len() as f64);
    #[allow(non_snake_case)]
    let H = top + BELOW_TOP;
    let panel_w = (summaries.len() as f64 * 110.0).max(MIN_PANEL_W);
    #[allow(non_snake_case)]
    let W = 70.0 + panel_w + 90.0 + panel_w + 30.0;
    // One colour per contender, the same for every tool.
    let mut names: Vec<&str> = Vec::new();
    for s in summaries {
        if !names.contains(&s.contender.as_str()) {
            names.push(&s.contender);
        }
    }
    let color_of = |c: &str| COLORS[names.iter().position(|n| *n == c).unwrap_or(0) % COLORS.len()];
    let _ = writeln!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif">"##
    );
    let _ = writeln!(out, r##"<rect width="{W}" height="{H}" fill="white"/>"##);
    let _ = writeln!(
        out,
        r##"<text x="20" y="26" font-size="17" font-weight="bold">{}</text>"##,
        esc(title)
    );
    for (i, line) in subtitle.iter().enumerate() {
        let _ = writeln!(
            out,
            r##"<text x="20" y="{}" font-size="12" fill="#555">{}</text>"##,
            46 + 16 * i,
            esc(line)
        );
    }
    let n = summaries.len().max(1) as f64;

    // Left: requests/s.
    let x0 = 70.0;
    let rps_max = nice_max(summaries.iter().map(|s| s.rps).fold(0.0, f64::max));
    axis(
        &mut out,
        top,
        x0,
        panel_w,
        rps_max,
        "requests/s (median)",
        &|v| trim_number(v / 1000.0) + "k",
    );
    let slot = panel_w / n;
    for (i, s) in summaries.iter().enumerate() {
        let h = PANEL_H * s.rps / rps_max;
        let x = x0 + slot * i as f64 + slot * 0.15;
        let w = slot * 0.7;
        let y = top + PANEL_H - h;
        let _ = writeln!(
            out,
            r##"<rect class="rps" x="{x:.1}" y="{y:.1}" width="{w:.1}" height="{h:.1}" fill="{}"><title>{} {}: {:.0} req/s</title></rect>"##,
            color_of(&s.contender),
            esc(&s.contender),
            esc(&s.tool),
            s.rps
        );
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{:.1}k</text>"##,
            x + w / 2.0,
            y - 4.0,
            s.rps / 1000.0
        );
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"##,
            x + w / 2.0,
            top + PANEL_H + 18.0,
            esc(&label(s, summaries))
        );
        if let Some(cpu) = s.proxy_cpu_us_per_request {
            let _ = writeln!(
                out,
                r##"<text class="cpu" x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle" fill="#555">{cpu:.1} µs CPU/req</text>"##,
                x + w / 2.0,
                top + PANEL_H + 33.0,
            );
        }
    }

    // Right: latency percentiles in ms.
    let x1 = x0 + panel_w + 90.0;
    let lat_max = nice_max(summaries.iter().map(|s| s.p99_us).fold(0.0, f64::max) / 1000.0);
    axis(
        &mut out,
        top,
        x1,
        panel_w,
        lat_max,
        "latency ms (median of runs): p50 / p90 / p99",
        &|v| trim_number(v),
    );
    for (i, s) in summaries.iter().enumerate() {
        let group_x = x1 + slot * i as f64 + slot * 0.1;
        let bar_w = slot * 0.8 / 3.0;
        for (j, (name, color)) in LATENCY_SHADES.iter().enumerate() {
            let v_ms = [s.p50_us, s.p90_us, s.p99_us][j] / 1000.0;
            let h = PANEL_H * v_ms / lat_max;
            let x = group_x + bar_w * j as f64;
            let _ = writeln!(
                out,
                r##"<rect class="latency" x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="{color}"><title>{} {name}: {v_ms:.3} ms</title></rect>"##,
                top + PANEL_H - h,
                bar_w - 1.0,
                esc(&s.contender)
            );
        }
        let _ = writeln!(
            out,
            r##"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="middle">{}</text>"##,
            group_x + slot * 0.4,
            top + PANEL_H + 18.0,
            esc(&label(s, summaries))
        );
    }
    for (j, (name, color)) in LATENCY_SHADES.iter().enumerate() {
        let x = x1 + 10.0 + 60.0 * j as f64;
        let y = top + PANEL_H + 40.0;
        let _ = writeln!(
            out,
            r##"<rect x="{x}" y="{}" width="12" height="12" fill="{color}"/><text x="{}" y="{y}" font-size="12">{name}</text>"##,
            y - 10.0,
            x + 16.0
        );
    }
    out.push_str("</svg>\n");
    out
}

/// `12.50` -> `12.5`, `25.00` -> `25`.
fn trim_number(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// Contender name, plus the tool when several tools are plotted.
fn label(s: &Summary, all: &[Summary]) -> String {
    if all.iter().any(|o| o.tool != s.tool) {
        format!("{} ({})", s.contender, s.tool)
    } else {
        s.contender.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(c: &str, rps: f64) -> Summary {
        Summary {
            contender: c.into(),
            tool: "wrk".into(),
            runs: 3,
            rps,
            p50_us: 500.0,
            p90_us: 800.0,
            p99_us: 1500.0,
            proxy_cpu_us_per_request: Some(10.0),
            rps_vs_baseline: Some(1.0),
            p99_vs_baseline: Some(1.0),
            errors: 0,
        }
    }

    #[test]
    fn one_rps_bar_and_three_latency_bars_per_contender() {
        let svg = render(
            "t <x>",
            &["s".to_string()],
            &[summary("nginx", 50_000.0), summary("ringmesh", 65_000.0)],
        );
        assert!(svg.starts_with("<svg ") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches(r#"class="rps""#).count(), 2);
        assert_eq!(svg.matches(r#"class="latency""#).count(), 6);
        assert!(svg.contains("t &lt;x&gt;"));
        assert_eq!(svg.matches("10.0 µs CPU/req").count(), 2);
        // The tallest bar fills the panel up to the nice maximum (100k): 65%.
        assert!(
            svg.contains(&format!(r#"height="{:.1}""#, PANEL_H * 0.65)),
            "{svg}"
        );
    }

    #[test]
    fn a_third_subtitle_line_moves_the_panels_down_instead_of_overlapping() {
        let two = vec!["a".to_string(), "b".to_string()];
        let svg = render("t", &two, &[summary("nginx", 1000.0)]);
        assert!(svg.contains(r#"height="450""#), "{svg}");
        let three = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let svg = render("t", &three, &[summary("nginx", 1000.0)]);
        // Third subtitle at y=78; the axis titles 26 px below it.
        assert!(
            svg.contains(r##"y="78" font-size="12" fill="#555">c<"##),
            "{svg}"
        );
        assert!(
            svg.contains(r##"y="104" font-size="13" fill="#333">requests/s"##),
            "{svg}"
        );
        assert!(svg.contains(r#"height="466""#), "{svg}");
    }

    #[test]
    fn nice_axis_maxima() {
        assert_eq!(nice_max(65_000.0), 100_000.0);
        assert_eq!(nice_max(42_000.0), 50_000.0);
        assert_eq!(nice_max(1.2), 2.0);
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(trim_number(12.5), "12.5");
        assert_eq!(trim_number(25.0), "25");
        assert_eq!(trim_number(0.0), "0");
    }
}
