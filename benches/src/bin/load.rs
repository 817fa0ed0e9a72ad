//! The load benchmark: the same streaming clients against the mock provider
//! directly, then through `sluice serve`, and what Sluice costs on top.
//!
//! ```text
//! cargo build --release -p sluice \
//!   && cargo run --release -p sluice-benches --bin load -- --workload all
//! ```
//!
//! It builds nothing itself: it runs `sluice` (and `sluice mock`) from the
//! directory of its own executable (`target/release/`, or `--bin-dir`). For
//! each workload it starts fresh processes: one mock per phase and one
//! `sluice serve` (a temporary pipelines directory: an OpenAI-compatible
//! provider pointing at the mock, a SQLite ledger, a price and a daily
//! budget, so the ledger, the budgets and the metrics are on). It warms both
//! paths up, then runs C concurrent HTTP/1.1 clients for R requests, first at
//! the mock's `/v1/chat/completions`, then at Sluice's `/v1/pipelines/bench`
//! (over h2c when RLIMIT_NOFILE cannot hold two descriptors per stream in
//! Sluice, i.e. c10k under a 20,000 hard limit). Each phase is bounded by a
//! deadline; every process it started is stopped when it ends (also on
//! Ctrl-C and on panic). Traffic stays on 127.0.0.1.
//!
//! Workloads: `c1` (overhead), `c50` (throughput), `c500` and `c10k` (many
//! slow streams, 5 ms between events), and `cancel` (how fast Sluice closes
//! its upstream after an idle deadline or a client disconnect, from the
//! mock's journal). On request only, `soak`: mixed traffic for 30 minutes
//! (`--duration`) with Sluice's RSS, descriptors and ledger files sampled
//! (soak.rs). It prints a table per workload, a summary against the
//! targets, and one JSON line (the last line of stdout).

#[path = "../load/args.rs"]
mod args;
#[path = "../load/cancel.rs"]
mod cancel;
#[path = "../load/collector.rs"]
mod collector;
#[path = "../load/phase.rs"]
mod phase;
#[path = "../load/procs.rs"]
mod procs;
#[path = "../load/relay.rs"]
mod relay;
#[path = "../load/report.rs"]
mod report;
#[path = "../load/soak.rs"]
mod soak;
#[path = "../load/soak_report.rs"]
mod soak_report;
#[path = "../load/summary.rs"]
mod summary;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;
use sluice::bench::client::{Target, TargetOptions};

use args::{Opts, Spec, USAGE, parse_args, spec};
use cancel::{Cancel, run_cancel};
use procs::{Mock, MockSpec, PipelineSpec, Proc, TempDir};
use report::{Close, Workload, f3};
use soak::run_soak;
use soak_report::Soak;
use summary::{machine, summary_table, targets};

/// The two binaries, checked to exist (and warned about when older than
/// the sources they are built from).
/// The binaries a run starts: `sluice` serves, and `sluice mock` is the
/// provider.
struct Bins {
    sluice: PathBuf,
}

fn newest_mtime(dir: &Path) -> Option<std::time::SystemTime> {
    let mut newest = None;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(m) = e.metadata().and_then(|m| m.modified()) {
                newest = newest.max(Some(m));
            }
        }
    }
    newest
}

fn find_bins(dir: &Path) -> Result<Bins, String> {
    let bins = Bins {
        sluice: dir.join("sluice"),
    };
    for b in [&bins.sluice] {
        if !b.is_file() {
            return Err(format!(
                "{} is missing: build it first with\n  cargo build --release -p sluice",
                b.display()
            ));
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (bin, src) in [(&bins.sluice, "engine/src"), (&bins.sluice, "testkit/src")] {
        let built = std::fs::metadata(bin).and_then(|m| m.modified()).ok();
        if let (Some(built), Some(src_time)) = (built, newest_mtime(&root.join(src)))
            && src_time > built
        {
            eprintln!(
                "warning: {} is older than {src}: rebuild with cargo build --release -p sluice",
                bin.display()
            );
        }
    }
    Ok(bins)
}

/// Waits until Sluice answers `GET /healthz`.
async fn wait_ready(sluice: &mut Proc, port: u16) -> Result<(), String> {
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = sluice.exited() {
            return Err(format!(
                "sluice exited ({status}) before serving; its log:\n{}",
                sluice.log_tail(30)
            ));
        }
        if let Ok(resp) = http_get(port, "/healthz").await
            && resp.starts_with("HTTP/1.1 200")
        {
            return Ok(());
        }
        if tokio::time::Instant::now() > until {
            return Err(format!(
                "sluice did not answer /healthz within 60 s; its log:\n{}",
                sluice.log_tail(30)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A one-shot `GET` on 127.0.0.1:port; the whole response as text.
async fn http_get(port: u16, path: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    // The key of `--keys on` (which may read the metrics); a server
    // without keys ignores it.
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\nauthorization: Bearer {BENCH_KEY}\r\nconnection: close\r\n\r\n"
    );
    tcp.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut out))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// `sluice_requests_total` from `/metrics`, summed by status.
async fn requests_by_status(port: u16) -> Vec<(String, u64)> {
    let Ok(text) = http_get(port, "/metrics").await else {
        return Vec::new();
    };
    let mut by: std::collections::BTreeMap<String, u64> = Default::default();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("sluice_requests_total{") else {
            continue;
        };
        let status = rest
            .split("status=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or("?")
            .to_string();
        if let Some(v) = rest.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) {
            *by.entry(status).or_insert(0) += v as u64;
        }
    }
    by.into_iter().collect()
}

/// The sum of a counter's series in `/metrics`.
async fn metric_sum(port: u16, name: &str) -> u64 {
    let Ok(text) = http_get(port, "/metrics").await else {
        return 0;
    };
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// The body of a pipeline request (the soak's and the cancel workload's
/// raw clients).
const SLUICE_BODY: &str = r#"{"input":"Say something."}"#;
/// The API key clients of Sluice send with `--keys on`.
const BENCH_KEY: &str =
    "sk-sluice-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// A `sluice bench` target: `url`'s API (detected from its path), a key
/// when given, h2c when asked for.
fn target(
    url: String,
    key: Option<&str>,
    concurrency: usize,
    http2: bool,
    opts: &Opts,
) -> Result<Arc<Target>, String> {
    let t = Target::new(TargetOptions {
        url,
        api: None,
        model: "bench-model".into(),
        stream: true,
        headers: Vec::new(),
        api_key: key.map(str::to_owned),
        extra_body: None,
        timeout: opts.deadline,
        connect_timeout: Duration::from_secs(30),
        max_idle: concurrency.max(50),
        http2,
    })?;
    Ok(Arc::new(t))
}

/// Starts a fresh mock and Sluice for `pipelines`; returns them with Sluice's port.
async fn start_stack(
    bins: &Bins,
    tmp: &TempDir,
    mock_spec: &MockSpec,
    pipelines: &[PipelineSpec],
    opts: &Opts,
) -> Result<(Mock, Proc, u16), String> {
    let mock = Mock::start(&bins.sluice, mock_spec, tmp.path.join("mock.log"))?;
    let dir = tmp.path.join("pipelines");
    let key = opts.keys.then_some(BENCH_KEY);
    let traces_to = match opts.tracing {
        true => Some(
            collector::Collector::start()
                .map_err(|e| format!("trace collector: {e}"))?
                .addr,
        ),
        false => None,
    };
    procs::write_pipelines(
        &dir,
        mock.addr,
        pipelines,
        opts.memory_ledger,
        opts.budget,
        key,
        traces_to,
    )
    .map_err(|e| format!("pipelines: {e}"))?;
    let port = procs::free_port().map_err(|e| format!("free port: {e}"))?;
    let mut sluice = procs::start_sluice(
        &bins.sluice,
        &dir,
        port,
        tmp.path.join("sluice.log"),
        &opts.sluice_log,
        &opts.sluice_env,
        &opts.sluice_wrap,
    )?;
    wait_ready(&mut sluice, port).await?;
    Ok((mock, sluice, port))
}

async fn run_workload(spec: &Spec, bins: &Bins, opts: &Opts) -> Result<Workload, String> {
    let tmp = TempDir::new(spec.name, opts.keep_temp).map_err(|e| format!("temp dir: {e}"))?;
    let mock_spec = MockSpec {
        tokens: opts.tokens,
        gap_ms: spec.gap_ms,
        usage: true,
        stall_after: None,
        tool_calls: false,
    };
    let pipelines = [PipelineSpec {
        name: "bench",
        first_token: "60s",
        idle: "60s",
        total: "300s",
    }];
    // One mock per path, each fresh: one path's traffic does not weigh on
    // the mock of another, and each mock's CPU is its path's.
    let direct_mock = Mock::start(&bins.sluice, &mock_spec, tmp.path.join("mock-direct.log"))?;
    let (mock, sluice, port) = start_stack(bins, &tmp, &mock_spec, &pipelines, opts).await?;
    eprintln!(
        "{}: mock pids {} (direct, {}) and {} (Sluice's, {}), sluice pid {} on 127.0.0.1:{port}, files in {}",
        spec.name,
        direct_mock.proc.pid(),
        direct_mock.addr,
        mock.proc.pid(),
        mock.addr,
        sluice.pid(),
        tmp.path.display()
    );
    // Over HTTP/1.1 Sluice (and the relay) hold two descriptors per
    // stream; the mock and this process one each.
    let fits = 2 * spec.concurrency as u64 + 1000 <= opts.nofile;
    let http2 = opts.http2.unwrap_or(!fits);
    if http2 && opts.http2.is_none() {
        eprintln!(
            "  {}: RLIMIT_NOFILE is {} (hard limit), Sluice would need {} descriptors over HTTP/1.1: \
             its clients use HTTP/2 (h2c), {} streams per connection",
            spec.name,
            opts.nofile,
            2 * spec.concurrency + 1000,
            sluice::bench::STREAMS_PER_CONN
        );
    }
    let chat = |addr: std::net::SocketAddr| format!("http://{addr}/v1/chat/completions");
    let c = spec.concurrency;
    // The relay, with a mock of its own, where the descriptors allow it.
    let relay = if spec.relay && !opts.skip_direct && fits {
        let m = Mock::start(&bins.sluice, &mock_spec, tmp.path.join("mock-relay.log"))?;
        let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
        let r = relay::Relay::start(&exe, m.addr, tmp.path.join("relay.log"))?;
        Some((m, r))
    } else {
        None
    };
    let mut paths = Vec::new();
    if !opts.skip_direct {
        paths.push(phase::Path {
            label: "direct",
            target: target(chat(direct_mock.addr), None, c, false, opts)?,
            hop: None,
            sluice_port: None,
            mock: &direct_mock.proc,
        });
    }
    if let Some((m, r)) = &relay {
        paths.push(phase::Path {
            label: "relay",
            target: target(chat(r.addr), None, c, false, opts)?,
            hop: Some(&r.proc),
            sluice_port: None,
            mock: &m.proc,
        });
    }
    paths.push(phase::Path {
        label: "sluice",
        target: target(
            format!("http://127.0.0.1:{port}/v1/pipelines/bench"),
            opts.keys.then_some(BENCH_KEY),
            c,
            http2,
            opts,
        )?,
        hop: Some(&sluice),
        sluice_port: Some(port),
        mock: &mock.proc,
    });
    let mut phases = phase::run(&paths, spec, opts.tokens).await;
    drop(paths);
    let through = phases.pop().unwrap_or_default();
    let relayed = relay.as_ref().and_then(|_| phases.pop());
    let direct = phases.pop().unwrap_or_default();
    drop(relay);
    let sluice_metrics = requests_by_status(port).await;
    if opts.tracing {
        let dropped = metric_sum(port, "sluice_trace_spans_dropped_total").await;
        let r = &collector::RECEIVED;
        println!(
            "{}: tracing on: {} exports ({} KB) received so far, {dropped} spans dropped (sluice_trace_spans_dropped_total)",
            spec.name,
            r.exports.load(std::sync::atomic::Ordering::Relaxed),
            r.bytes.load(std::sync::atomic::Ordering::Relaxed) / 1024,
        );
    }
    drop(sluice);
    drop(mock);
    drop(direct_mock);
    Ok(Workload {
        name: spec.name.to_string(),
        concurrency: spec.concurrency,
        requests: spec.requests,
        tokens: opts.tokens,
        gap_ms: spec.gap_ms,
        direct,
        relay: relayed,
        sluice: through,
        sluice_metrics,
        sluice_protocol: if http2 { "h2c" } else { "HTTP/1.1" },
    })
}

/// What the chosen workloads produced.
type Results = (Vec<Workload>, Option<Cancel>, Option<Soak>);

async fn run_all(opts: &Opts, bins: &Bins) -> Result<Results, String> {
    let mut results = Vec::new();
    let mut cancel = None;
    let mut soaked = None;
    for name in &opts.workloads {
        if name == "soak" {
            let s = run_soak(bins, opts).await?;
            println!("{}", s.table());
            soaked = Some(s);
            continue;
        }
        if name == "cancel" {
            let c = run_cancel(bins, opts).await?;
            println!(
                "== cancel: upstream close latency, as the mock saw it ==\n\
                 after an idle deadline ({} ms): p50 {} ms, p99 {} ms, max {} ms ({} samples, {} never closed{})\n\
                 after the client left:        p50 {} ms, p99 {} ms, max {} ms ({} samples, {} never closed{})\n",
                c.idle_ms,
                f3(c.deadline.pct(50.0)),
                f3(c.deadline.pct(99.0)),
                f3(c.deadline.max()),
                c.deadline.samples_ms.len(),
                c.deadline.not_closed,
                if c.deadline.failed.is_empty() {
                    String::new()
                } else {
                    format!(", failures: {}", c.deadline.failed.join("; "))
                },
                f3(c.disconnect.pct(50.0)),
                f3(c.disconnect.pct(99.0)),
                f3(c.disconnect.max()),
                c.disconnect.samples_ms.len(),
                c.disconnect.not_closed,
                if c.disconnect.failed.is_empty() {
                    String::new()
                } else {
                    format!(", failures: {}", c.disconnect.failed.join("; "))
                },
            );
            cancel = Some(c);
            continue;
        }
        let Some(mut s) = spec(name) else { continue };
        if let Some(r) = opts.requests {
            s.requests = r;
        }
        if let Some(c) = opts.concurrency {
            s.concurrency = c;
        }
        if let Some(g) = opts.gap_ms {
            s.gap_ms = g;
        }
        if let Some(w) = opts.warmup {
            s.warmup = w;
        }
        if let Some(r) = opts.rounds {
            s.rounds = r;
        }
        s.warmup = s.warmup.min(s.requests);
        let w = run_workload(&s, bins, opts).await?;
        println!("{}", w.table());
        results.push(w);
    }
    Ok((results, cancel, soaked))
}

fn main() -> ExitCode {
    // The relay's own process (see relay.rs).
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() == Some("--relay-to") {
        return match args.next().and_then(|a| a.parse().ok()) {
            Some(upstream) => relay::serve(upstream),
            None => {
                eprintln!("load: --relay-to needs HOST:PORT");
                ExitCode::from(2)
            }
        };
    }
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("load: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let bins = match find_bins(&opts.bin_dir) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("load: {e}");
            return ExitCode::FAILURE;
        }
    };
    // 10,000 client sockets here, 20,000 (client + upstream) in Sluice.
    let mut opts = opts;
    opts.nofile = procs::raise_nofile(65_536);
    let opts = opts;
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("load: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Children are spawned from this (main) thread: `block_on` polls the
    // future here, so PR_SET_PDEATHSIG follows the whole process's life.
    let result = rt.block_on(async {
        tokio::select! {
            r = run_all(&opts, &bins) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    });
    let (workloads, cancel, soaked) = match result {
        Some(Ok(r)) => r,
        Some(Err(e)) => {
            eprintln!("load: {e}");
            return ExitCode::FAILURE;
        }
        None => {
            eprintln!("load: interrupted; stopped every process it started");
            return ExitCode::from(130);
        }
    };
    rt.shutdown_timeout(Duration::from_secs(1));
    let machine = machine();
    let setup = json!({
        "ledger": if opts.memory_ledger { "memory" } else { "sqlite" },
        "budget": opts.budget,
        "keys": opts.keys,
        "tracing": opts.tracing,
        "metrics": true,
        "sluice_log": opts.sluice_log,
        "client": "sluice bench (HTTP/1.1 keep-alive; h2c to Sluice where noted)",
        "tokens": opts.tokens,
    });
    println!(
        "setup: ledger {}, budget {}, keys {}, tracing {}, Sluice log level {}; clients: sluice bench",
        setup["ledger"].as_str().unwrap_or(""),
        if opts.budget { "on" } else { "off" },
        if opts.keys { "on" } else { "off" },
        if opts.tracing { "on" } else { "off" },
        opts.sluice_log,
    );
    if !workloads.is_empty() {
        println!(
            "== summary ({} CPUs, {}) ==\n{}",
            machine["cpus"],
            machine["cpu_model"].as_str().unwrap_or(""),
            summary_table(&workloads)
        );
    }
    let (text, target_list) = targets(&workloads, cancel.as_ref());
    // The soak has a verdict of its own, in its table.
    if !workloads.is_empty() || cancel.is_some() {
        println!("{text}");
    }
    let line = json!({
        "bench": "sluice-load",
        "version": 2,
        "machine": machine,
        "setup": setup,
        "workloads": workloads.iter().map(Workload::json).collect::<Vec<_>>(),
        "cancel": cancel.as_ref().map(|c| json!({
            "idle_ms": c.idle_ms,
            "after_deadline": c.deadline.json(),
            "after_disconnect": c.disconnect.json(),
        })),
        "targets": target_list,
        "soak": soaked.as_ref().map(Soak::json),
    });
    if let Some(path) = &opts.json_out
        && let Err(e) = std::fs::write(path, format!("{line}\n"))
    {
        eprintln!("load: {}: {e}", path.display());
    }
    println!("{line}");
    ExitCode::SUCCESS
}
