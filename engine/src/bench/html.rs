//! `--html FILE`: the report as one self-contained page, plots drawn as
//! inline SVG here (no script, no external asset): latency percentiles
//! against the sweep's concurrency or rate, the TTFT and ITL
//! distributions, output tokens per second over time, and the figures'
//! table.

use std::fmt::Write as _;

use super::report::{Report, Stats, StepReport};

const W: f64 = 640.0;
const H: f64 = 300.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 180.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 44.0;
/// Line colours, in turn (distinct for the common kinds of colour blindness).
const COLOURS: [&str; 8] = [
    "#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#f0e442",
];

/// Escapes text for HTML and SVG.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A "nice" step for about `n` ticks over `span`.
fn tick_step(span: f64, n: f64) -> f64 {
    let raw = (span / n).max(f64::MIN_POSITIVE);
    let mag = 10f64.powf(raw.log10().floor());
    let f = raw / mag;
    let nice = if f <= 1.0 {
        1.0
    } else if f <= 2.0 {
        2.0
    } else if f <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * mag
}

fn label(v: f64) -> String {
    if v == 0.0 || v.abs() >= 10.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

/// One line chart: named series of (x, y) points, axes from zero.
fn chart(title: &str, x_name: &str, y_name: &str, series: &[(String, Vec<(f64, f64)>)]) -> String {
    let points = series.iter().flat_map(|(_, p)| p.iter());
    let (mut x_max, mut y_max) = (0f64, 0f64);
    for &(x, y) in points {
        if x.is_finite() && y.is_finite() {
            x_max = x_max.max(x);
            y_max = y_max.max(y);
        }
    }
    let x_step = tick_step(x_max.max(1e-9), 6.0);
    let y_step = tick_step(y_max.max(1e-9), 5.0);
    let x_top = (x_max / x_step).ceil().max(1.0) * x_step;
    let y_top = (y_max / y_step).ceil().max(1.0) * y_step;
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let px = |x: f64| LEFT + x / x_top * pw;
    let py = |y: f64| TOP + ph - y / y_top * ph;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{t}"><text x="{LEFT}" y="20" class="title">{t}</text>"##,
        t = esc(title)
    );
    let mut y = 0.0;
    while y <= y_top + y_step / 2.0 {
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{py:.1}" y2="{py:.1}" class="grid"/><text x="{}" y="{:.1}" class="tick" text-anchor="end">{}</text>"##,
            LEFT + pw,
            LEFT - 6.0,
            py(y) + 4.0,
            label(y),
            py = py(y)
        );
        y += y_step;
    }
    let mut x = 0.0;
    while x <= x_top + x_step / 2.0 {
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{}" class="tick" text-anchor="middle">{}</text>"##,
            px(x),
            TOP + ph + 16.0,
            label(x)
        );
        x += x_step;
    }
    let _ = write!(
        svg,
        r##"<line x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{}" class="axis"/><line x1="{LEFT}" x2="{}" y1="{}" y2="{}" class="axis"/><text x="{}" y="{}" class="name" text-anchor="middle">{}</text><text x="14" y="{}" class="name" text-anchor="middle" transform="rotate(-90 14 {})">{}</text>"##,
        TOP + ph,
        LEFT + pw,
        TOP + ph,
        TOP + ph,
        LEFT + pw / 2.0,
        H - 6.0,
        esc(x_name),
        TOP + ph / 2.0,
        TOP + ph / 2.0,
        esc(y_name)
    );
    for (i, (name, pts)) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let path: Vec<String> = pts
            .iter()
            .filter(|(x, y)| x.is_finite() && y.is_finite())
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        if path.len() == 1 {
            let _ = write!(
                svg,
                r##"<circle cx="{}" cy="{}" r="3" fill="{colour}"/>"##,
                path[0].split(',').next().unwrap_or("0"),
                path[0].split(',').nth(1).unwrap_or("0")
            );
        } else if !path.is_empty() {
            let _ = write!(
                svg,
                r##"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"##,
                path.join(" ")
            );
        }
        let ly = TOP + 8.0 + i as f64 * 18.0;
        let _ = write!(
            svg,
            r##"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{colour}" stroke-width="3"/><text x="{}" y="{}" class="legend">{}</text>"##,
            LEFT + pw + 12.0,
            LEFT + pw + 30.0,
            LEFT + pw + 36.0,
            ly + 4.0,
            esc(name)
        );
    }
    svg.push_str("</svg>");
    svg
}

fn stat_series(
    steps: &[StepReport],
    get: fn(&StepReport) -> &Option<Stats>,
    q: fn(&Stats) -> f64,
) -> Vec<(f64, f64)> {
    steps
        .iter()
        .filter_map(|s| get(s).as_ref().map(|st| (s.load.value, q(st))))
        .collect()
}

/// The whole page.
pub fn render(report: &Report) -> String {
    let c = &report.config;
    let mut page = String::new();
    let _ = write!(
        page,
        r##"<!doctype html><html lang="en"><head><meta charset="utf-8"><title>sluice bench: {title}</title><style>
body{{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1320px;padding:0 16px;color:#222}}
h1{{font-size:20px}}h2{{font-size:16px;margin-top:28px}}
.charts{{display:flex;flex-wrap:wrap;gap:12px}}
svg{{background:#fff;border:1px solid #ddd;border-radius:4px}}
.title{{font-weight:600;font-size:14px}}.tick{{font-size:11px;fill:#555}}.name{{font-size:12px;fill:#333}}.legend{{font-size:12px}}
.grid{{stroke:#eee}}.axis{{stroke:#888}}
table{{border-collapse:collapse;margin:8px 0}}td,th{{padding:3px 10px;text-align:right;border-bottom:1px solid #eee}}th:first-child,td:first-child{{text-align:left}}
.meta{{color:#555}}
</style></head><body><h1>sluice bench: {title}</h1><p class="meta">{api}, model {model}, {stream}; started {started}; sluice {version}</p>"##,
        title = esc(&c.url),
        api = esc(&c.api),
        model = esc(&c.model),
        stream = if c.stream {
            "streaming"
        } else {
            "not streaming"
        },
        started = esc(&report.started_at),
        version = esc(&report.sluice_version),
    );
    // With --via, every series and row comes once per path: direct and
    // through each gateway.
    let names: Vec<String> = if report.via.is_empty() {
        vec![String::new()]
    } else {
        std::iter::once("direct ".to_string())
            .chain(report.via.iter().map(|v| format!("{} ", v.name)))
            .collect()
    };
    let sides: Vec<(&str, &Vec<StepReport>)> = names
        .iter()
        .map(String::as_str)
        .zip(std::iter::once(&report.steps).chain(report.via.iter().map(|v| &v.steps)))
        .collect();
    for (v, name) in report.via.iter().zip(&names[1..]) {
        let _ = write!(
            page,
            r#"<p class="meta">{}: {} ({}, model {}), in {} rounds alternating with the direct ones</p>"#,
            esc(name.trim()),
            esc(&v.url),
            esc(&v.api),
            esc(&v.model),
            v.rounds
        );
    }
    let x_name = if c.load == "rate" {
        "rate (requests/s)"
    } else {
        "concurrency"
    };
    page.push_str(r#"<div class="charts">"#);
    if report.steps.len() > 1 {
        let lat = |name: &str, get: fn(&StepReport) -> &Option<Stats>| {
            let mut series = Vec::new();
            for (side, steps) in &sides {
                series.push((
                    format!("{side}{name} p50"),
                    stat_series(steps, get, |s| s.p50),
                ));
                // Beside other paths, p50 and p99 are enough to read.
                if report.via.is_empty() {
                    series.push((
                        format!("{side}{name} p90"),
                        stat_series(steps, get, |s| s.p90),
                    ));
                }
                series.push((
                    format!("{side}{name} p99"),
                    stat_series(steps, get, |s| s.p99),
                ));
            }
            series
        };
        page.push_str(&chart(
            "TTFT against load",
            x_name,
            "ms",
            &lat("TTFT", |s| &s.ttft_ms),
        ));
        page.push_str(&chart(
            "ITL against load",
            x_name,
            "ms",
            &lat("ITL", |s| &s.itl_ms),
        ));
        page.push_str(&chart(
            "E2E against load",
            x_name,
            "ms",
            &lat("E2E", |s| &s.e2e_ms),
        ));
        page.push_str(&chart(
            "Throughput against load",
            x_name,
            "output tokens/s",
            &sides
                .iter()
                .map(|(side, steps)| {
                    (
                        format!("{side}output tokens/s"),
                        steps
                            .iter()
                            .map(|s| (s.load.value, s.output_throughput))
                            .collect(),
                    )
                })
                .collect::<Vec<_>>(),
        ));
    }
    let dist = |get: fn(&StepReport) -> &Vec<[f64; 2]>| -> Vec<(String, Vec<(f64, f64)>)> {
        sides
            .iter()
            .flat_map(|(side, steps)| {
                steps.iter().filter(|s| !get(s).is_empty()).map(move |s| {
                    (
                        format!("{side}{}", s.label()),
                        get(s).iter().map(|p| (p[0], p[1])).collect(),
                    )
                })
            })
            .collect()
    };
    let ttft = dist(|s| &s.ttft_distribution_ms);
    if !ttft.is_empty() {
        page.push_str(&chart("TTFT distribution", "percentile", "ms", &ttft));
    }
    let itl = dist(|s| &s.itl_distribution_ms);
    if !itl.is_empty() {
        page.push_str(&chart("ITL distribution", "percentile", "ms", &itl));
    }
    let over_time: Vec<(String, Vec<(f64, f64)>)> = sides
        .iter()
        .flat_map(|(side, steps)| {
            steps.iter().map(move |s| {
                (
                    format!("{side}{}", s.label()),
                    s.series
                        .iter()
                        .map(|p| (f64::from(p.t), p.output_tokens))
                        .collect(),
                )
            })
        })
        .collect();
    page.push_str(&chart(
        "Output tokens per second over time",
        "seconds into the step",
        "output tokens/s",
        &over_time,
    ));
    page.push_str("</div>");
    page.push_str("<h2>Figures</h2><table><tr><th>step</th><th>ok</th><th>failed</th><th>req/s</th><th>out tok/s</th><th>goodput</th><th>TTFT p50</th><th>TTFT p99</th><th>ITL p50</th><th>ITL p99</th><th>TPOT p50</th><th>E2E p50</th><th>E2E p99</th><th>client CPU</th></tr>");
    let ms = |s: &Option<Stats>, f: fn(&Stats) -> f64| {
        s.as_ref().map_or("-".into(), |s| format!("{:.1}", f(s)))
    };
    for (side, s) in sides
        .iter()
        .flat_map(|(side, steps)| steps.iter().map(move |s| (side, s)))
    {
        let causes: Vec<String> = s
            .failures
            .iter()
            .map(|(k, n)| format!("{k}: {n}"))
            .collect();
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td title=\"{}\">{}</td><td>{:.2}</td><td>{:.1}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&format!("{side}{}", s.label())),
            s.ok,
            esc(&causes.join(", ")),
            s.failed,
            s.request_throughput,
            s.output_throughput,
            s.goodput.map_or("-".into(), |g| format!("{g:.2}")),
            ms(&s.ttft_ms, |s| s.p50),
            ms(&s.ttft_ms, |s| s.p99),
            ms(&s.itl_ms, |s| s.p50),
            ms(&s.itl_ms, |s| s.p99),
            ms(&s.tpot_ms, |s| s.p50),
            ms(&s.e2e_ms, |s| s.p50),
            ms(&s.e2e_ms, |s| s.p99),
            s.client_cpu.map_or("-".into(), |c| format!(
                "{:.0}%{}",
                c.cores_busy * 100.0,
                if c.saturated { " (saturated)" } else { "" }
            )),
        );
    }
    page.push_str("</table>");
    for (v, name) in report.via.iter().zip(&names[1..]) {
        let _ = write!(page, "<h2>Added by {}</h2>", esc(name.trim()));
        page.push_str("<table><tr><th>step</th><th>TTFT p50</th><th>TTFT p99</th><th>ITL p50</th><th>ITL p99</th><th>E2E p50</th><th>E2E p99</th><th>req/s</th><th>out tok/s</th></tr>");
        let d = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:+.2}"));
        let r = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.3}×"));
        for (a, s) in v.added.iter().zip(&v.steps) {
            let _ = write!(
                page,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                esc(&s.label()),
                d(a.ttft_p50_ms),
                d(a.ttft_p99_ms),
                d(a.itl_p50_ms),
                d(a.itl_p99_ms),
                d(a.e2e_p50_ms),
                d(a.e2e_p99_ms),
                r(a.request_throughput_ratio),
                r(a.output_throughput_ratio),
            );
        }
        page.push_str("</table>");
    }
    page.push_str("<p class=\"meta\">Times in milliseconds. Definitions: docs/bench.md (TTFT to the first content chunk, ITL the gaps between content chunks, TPOT (E2E − TTFT) / (tokens − 1), latencies from the intended send time).</p>");
    let _ = write!(
        page,
        "<h2>Report</h2><pre>{}</pre>",
        esc(&super::report::render(report))
    );
    page.push_str("</body></html>\n");
    page
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::{RunConfig, SCHEMA, Second, StepLoad};

    fn step(c: f64) -> StepReport {
        let st = Stats {
            count: 3,
            mean: 10.0 * c,
            min: 5.0,
            p50: 10.0 * c,
            p90: 12.0 * c,
            p99: 15.0 * c,
            max: 20.0 * c,
        };
        StepReport {
            load: StepLoad {
                kind: "concurrency".into(),
                value: c,
            },
            ok: 3,
            output_throughput: 100.0 * c,
            ttft_ms: Some(st),
            itl_ms: Some(st),
            e2e_ms: Some(st),
            ttft_distribution_ms: vec![[0.0, 5.0], [50.0, 10.0], [100.0, 20.0]],
            itl_distribution_ms: vec![[0.0, 1.0], [100.0, 2.0]],
            series: vec![
                Second {
                    t: 0,
                    ok: 1,
                    failed: 0,
                    output_tokens: 40.0,
                },
                Second {
                    t: 1,
                    ok: 2,
                    failed: 0,
                    output_tokens: 60.0,
                },
            ],
            ..StepReport::default()
        }
    }

    #[test]
    fn the_page_is_self_contained_and_escaped() {
        let report = Report {
            schema: SCHEMA.into(),
            sluice_version: "0.1.0".into(),
            started_at: "2025-01-01T00:00:00Z".into(),
            config: RunConfig {
                url: "http://h/v1/chat/completions?<script>".into(),
                model: "<b>m</b>".into(),
                api: "chat".into(),
                load: "concurrency".into(),
                ..RunConfig::default()
            },
            steps: vec![step(1.0), step(4.0)],
            via: Vec::new(),
        };
        let page = render(&report);
        assert_eq!(
            page.matches("<svg").count(),
            7,
            "4 sweep charts, 2 distributions, 1 over time"
        );
        assert!(!page.contains("<script"), "no script, and text is escaped");
        assert!(page.contains("&lt;b&gt;m&lt;/b&gt;"));
        // Nothing fetched from anywhere: the only URL is the SVG namespace.
        let without_ns = page.replace("http://www.w3.org/2000/svg", "");
        assert!(!without_ns.contains("src=") && !without_ns.contains("href="));
        assert!(page.contains("concurrency 4") && page.contains("TTFT against load"));
        // One step: no sweep charts.
        let one = Report {
            steps: vec![step(2.0)],
            ..report
        };
        assert_eq!(render(&one).matches("<svg").count(), 3);
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(tick_step(1000.0, 5.0), 200.0);
        assert_eq!(tick_step(7.0, 6.0), 2.0);
        assert_eq!(tick_step(0.3, 5.0), 0.1);
    }
}
