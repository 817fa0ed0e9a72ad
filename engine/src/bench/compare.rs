//! `sluice bench compare A.json B.json`: two runs side by side, step by
//! step (steps are matched by their load), with B/A for every figure.

use std::fmt::Write as _;

use super::report::{Report, Stats, StepReport};

/// One row: a figure's name, its value in A and in B, and whether more
/// is better (for the marker beside the ratio).
struct Row {
    name: String,
    a: Option<f64>,
    b: Option<f64>,
    higher_is_better: bool,
}

/// Where a step keeps one of its latency figures.
type Figure = fn(&StepReport) -> &Option<Stats>;

fn rows(a: &StepReport, b: &StepReport) -> Vec<Row> {
    let mut rows = Vec::new();
    let mut push = |name: &str, a: Option<f64>, b: Option<f64>, higher: bool| {
        rows.push(Row {
            name: name.into(),
            a,
            b,
            higher_is_better: higher,
        })
    };
    push("ok", Some(a.ok as f64), Some(b.ok as f64), true);
    push(
        "failed",
        Some(a.failed as f64),
        Some(b.failed as f64),
        false,
    );
    push(
        "requests/s",
        Some(a.request_throughput),
        Some(b.request_throughput),
        true,
    );
    push(
        "output tokens/s",
        Some(a.output_throughput),
        Some(b.output_throughput),
        true,
    );
    push("goodput requests/s", a.goodput, b.goodput, true);
    let stats: [(&str, Figure); 5] = [
        ("TTFT ms", |s| &s.ttft_ms),
        ("ITL ms", |s| &s.itl_ms),
        ("TPOT ms", |s| &s.tpot_ms),
        ("E2E ms", |s| &s.e2e_ms),
        ("send lag ms", |s| &s.send_lag_ms),
    ];
    for (name, get) in stats {
        let (sa, sb) = (get(a), get(b));
        if sa.is_none() && sb.is_none() {
            continue;
        }
        for (q, f) in [
            ("p50", (|s: &Stats| s.p50) as fn(&Stats) -> f64),
            ("p90", |s| s.p90),
            ("p99", |s| s.p99),
            ("max", |s| s.max),
        ] {
            push(
                &format!("{name} {q}"),
                sa.map(|s| f(&s)),
                sb.map(|s| f(&s)),
                false,
            );
        }
    }
    rows
}

fn fmt(v: Option<f64>) -> String {
    match v {
        None => "-".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.2}"),
    }
}

/// The comparison, as printed.
pub fn render(a: &Report, b: &Report, a_name: &str, b_name: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "A: {a_name} ({}, {}, model {})",
        a.started_at, a.config.url, a.config.model
    );
    let _ = writeln!(
        out,
        "B: {b_name} ({}, {}, model {})",
        b.started_at, b.config.url, b.config.model
    );
    for (i, sa) in a.steps.iter().enumerate() {
        let sb = b.steps.iter().find(|s| s.load == sa.load).or_else(|| {
            b.steps
                .get(i)
                .filter(|_| a.steps.len() == 1 && b.steps.len() == 1)
        });
        let Some(sb) = sb else {
            let _ = writeln!(out, "\n{}: not in B", sa.label());
            continue;
        };
        let title = if sa.load == sb.load {
            sa.label()
        } else {
            format!("{} vs {}", sa.label(), sb.label())
        };
        let _ = writeln!(out, "\n{title}");
        let _ = writeln!(out, "  {:<22}{:>12}{:>12}{:>10}", "", "A", "B", "B/A");
        for r in rows(sa, sb) {
            let ratio = match (r.a, r.b) {
                (Some(x), Some(y)) if x != 0.0 => {
                    let q = y / x;
                    let better = if (q - 1.0).abs() < 0.005 {
                        ""
                    } else if (q > 1.0) == r.higher_is_better {
                        " +"
                    } else {
                        " -"
                    };
                    format!("{q:.3}{better}")
                }
                (Some(x), Some(y)) if x == y => "1.000".into(),
                _ => "-".into(),
            };
            let _ = writeln!(
                out,
                "  {:<22}{:>12}{:>12}{:>10}",
                r.name,
                fmt(r.a),
                fmt(r.b),
                ratio
            );
        }
    }
    let paired = a.steps.len() == 1 && b.steps.len() == 1;
    for sb in &b.steps {
        if !(paired || a.steps.iter().any(|s| s.load == sb.load)) {
            let _ = writeln!(out, "\n{}: not in A", sb.label());
        }
    }
    out.push_str("\n+ better in B, - worse in B (by more than 0.5%)\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::report::{RunConfig, SCHEMA, StepLoad};

    fn report(ttft: f64, tput: f64) -> Report {
        Report {
            schema: SCHEMA.into(),
            sluice_version: "0".into(),
            started_at: "t".into(),
            config: RunConfig::default(),
            steps: vec![StepReport {
                load: StepLoad {
                    kind: "concurrency".into(),
                    value: 4.0,
                },
                ok: 10,
                output_throughput: tput,
                ttft_ms: Some(Stats {
                    count: 10,
                    mean: ttft,
                    min: ttft,
                    p50: ttft,
                    p90: ttft,
                    p99: ttft,
                    max: ttft,
                }),
                ..StepReport::default()
            }],
            via: Vec::new(),
        }
    }

    #[test]
    fn ratios_are_b_over_a_and_marked_by_direction() {
        let out = render(
            &report(100.0, 1000.0),
            &report(50.0, 1500.0),
            "a.json",
            "b.json",
        );
        let line = |name: &str| {
            out.lines()
                .find(|l| l.trim_start().starts_with(name))
                .unwrap()
                .to_string()
        };
        assert!(line("TTFT ms p50").ends_with("0.500 +"), "{out}");
        assert!(line("output tokens/s").ends_with("1.500 +"), "{out}");
        assert!(line("ok").ends_with("1.000"), "{out}");
        let worse = render(&report(100.0, 1000.0), &report(200.0, 900.0), "a", "b");
        assert!(
            worse.contains("2.000 -") && worse.contains("0.900 -"),
            "{worse}"
        );
    }
}
