//! The load benchmark's summary: the machine, and each figure against its
//! target in issue 7.

use serde_json::{Value, json};

use super::report::{Workload, f3, mb};
use super::{Cancel, procs};

pub(crate) fn machine() -> Value {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mem_total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|t| {
        t.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    });
    json!({
        "cpus": cpus,
        "cpu_model": model,
        "kernel": kernel,
        "mem_total_mb": mem_total.map(|kb| kb / 1024),
        "clk_tck": procs::clock_ticks(),
    })
}

/// One line per target: the figure, the bound, and whether it holds.
pub(crate) fn targets(workloads: &[Workload], cancel: Option<&Cancel>) -> (String, Value) {
    let mut text = String::from("== targets ==\n");
    let mut list = Vec::new();
    let mut add = |name: &str, figure: String, bound: &str, pass: Option<bool>| {
        let verdict = match pass {
            Some(true) => "met",
            Some(false) => "MISSED",
            // A figure for context, not a target.
            None => "reference",
        };
        text += &format!("{name:<52}{figure:>22}  {bound:<16}{verdict}\n");
        list.push(json!({"target": name, "figure": figure, "bound": bound, "met": pass}));
    };
    let find = |n: &str| workloads.iter().find(|w| w.name == n);
    if let Some(w) = find("c1") {
        let d50 = w.sluice.ttft_p50_ms - w.direct.ttft_p50_ms;
        let d99 = w.sluice.ttft_p99_ms - w.direct.ttft_p99_ms;
        add(
            "c1: added time to first token, p50",
            format!("{:+.3} ms", d50),
            "<= 0.1 ms",
            Some(d50 <= 0.1),
        );
        add(
            "c1: added time to first token, p99",
            format!("{:+.3} ms", d99),
            "<= 0.5 ms",
            Some(d99 <= 0.5),
        );
        if let Some(r) = &w.relay {
            // Not targets: what one more hop costs here, whatever runs in it.
            let (r50, r99) = (
                r.ttft_p50_ms - w.direct.ttft_p50_ms,
                r.ttft_p99_ms - w.direct.ttft_p99_ms,
            );
            add(
                "c1: added by a plain TCP relay, p50 / p99",
                format!("{r50:+.3} / {r99:+.3} ms"),
                "",
                None,
            );
            add(
                "c1: added by Sluice over the relay, p50 / p99",
                format!("{:+.3} / {:+.3} ms", d50 - r50, d99 - r99),
                "",
                None,
            );
        }
    }
    for w in workloads {
        if let Some(s) = w.sluice.hop_cpu_per_1k {
            let r = s / w.sluice.mock_cpu_per_1k;
            add(
                &format!("{}: Sluice CPU per request / mock CPU", w.name),
                format!("{:.2}x ({} s/1k)", r, f3(s)),
                "<= 2x",
                Some(r <= 2.0),
            );
            // Issue 18's target at C=500; elsewhere for context.
            if let Some(relay) = w.relay.as_ref().and_then(|r| r.hop_cpu_per_1k) {
                let r = s / relay;
                add(
                    &format!("{}: Sluice CPU per request / TCP relay CPU", w.name),
                    format!("{:.2}x ({} s/1k)", r, f3(relay)),
                    if w.name == "c500" { "<= 1.5x" } else { "" },
                    (w.name == "c500").then_some(r <= 1.5),
                );
            }
        }
    }
    if let Some(w) = find("c50") {
        let r = w.sluice.requests_per_s / w.direct.requests_per_s;
        add(
            "c50: Sluice requests/s / direct",
            format!("{:.2}", r),
            ">= 0.33",
            Some(r >= 1.0 / 3.0),
        );
    }
    if let Some(w) = find("c10k") {
        let rss = w.sluice.hop_peak_rss.unwrap_or(u64::MAX);
        let ok = w.sluice.failed == 0 && w.sluice.peak_in_flight >= w.concurrency as u64;
        add(
            "c10k: streams served (peak in flight at once)",
            format!("{} ok ({} at once)", w.sluice.ok, w.sluice.peak_in_flight),
            "all, 10000 at once",
            Some(ok),
        );
        add(
            "c10k: Sluice peak RSS",
            format!("{} MB", mb(Some(rss))),
            "<= 150 MB",
            Some(rss <= 150 * 1024 * 1024),
        );
    }
    if let Some(c) = cancel {
        for (name, close) in [
            (
                "cancel: upstream closed after idle deadline, p99",
                &c.deadline,
            ),
            (
                "cancel: upstream closed after client left, p99",
                &c.disconnect,
            ),
        ] {
            let p99 = close.pct(99.0);
            add(
                name,
                format!("{} ms", f3(p99)),
                "<= 10 ms",
                (!close.samples_ms.is_empty()).then_some(p99 <= 10.0 && close.not_closed == 0),
            );
        }
    }
    (text, Value::Array(list))
}

pub(crate) fn summary_table(workloads: &[Workload]) -> String {
    let mut out = String::from(
        "| workload | path | ok / failed | first token p50 / p99 ms | inter-token p50 / p99 ms | stream p50 / p99 ms | tokens/s | req/s | hop CPU s/1k req | mock CPU s/1k req | peak RSS hop MB |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for w in workloads {
        for (path, p) in w.paths() {
            out += &format!(
                "| {} (C={}, {} ms gaps) | {path} | {} / {} | {} / {} | {} / {} | {} / {} | {:.0} | {:.0} | {} | {} | {} |\n",
                w.name,
                w.concurrency,
                w.gap_ms,
                p.ok,
                p.failed,
                f3(p.ttft_p50_ms),
                f3(p.ttft_p99_ms),
                f3(p.itl_p50_ms),
                f3(p.itl_p99_ms),
                f3(p.stream_p50_ms),
                f3(p.stream_p99_ms),
                p.tokens_per_s,
                p.requests_per_s,
                p.hop_cpu_per_1k.map_or("-".into(), f3),
                f3(p.mock_cpu_per_1k),
                mb(p.hop_peak_rss),
            );
        }
    }
    out
}
