//! The load benchmark's command line and workload definitions.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// One workload's settings.
#[derive(Clone, Debug)]
pub(crate) struct Spec {
    pub(crate) name: &'static str,
    pub(crate) concurrency: usize,
    pub(crate) requests: usize,
    pub(crate) gap_ms: f64,
    /// The clients start one after another over this time.
    pub(crate) ramp: Duration,
    pub(crate) warmup: usize,
    /// Measured requests cut into this many rounds that alternate between
    /// the paths (1: each path in one go).
    pub(crate) rounds: usize,
    /// Also measure a plain TCP relay (the floor of one more hop).
    pub(crate) relay: bool,
}

pub(crate) const WORKLOADS: &[&str] = &["c1", "c50", "c500", "c10k", "cancel"];
/// Workloads that `all` leaves out (the soak runs for half an hour).
pub(crate) const ON_REQUEST: &[&str] = &["soak"];

pub(crate) fn spec(name: &str) -> Option<Spec> {
    let s = |name, concurrency, requests, gap_ms, warmup| Spec {
        name,
        concurrency,
        requests,
        gap_ms,
        ramp: Duration::ZERO,
        warmup,
        rounds: 1,
        relay: true,
    };
    Some(match name {
        // The overhead is a difference of tens of microseconds: measured in
        // 10 alternating rounds of 200 so that drift weighs on both paths.
        "c1" => Spec {
            rounds: 10,
            ..s("c1", 1, 2000, 0.0, 200)
        },
        "c50" => s("c50", 50, 20_000, 0.0, 1000),
        "c500" => s("c500", 500, 5000, 5.0, 500),
        "c10k" => Spec {
            // The clients start over 2 s: 10,000 connects at once would
            // overflow the listen backlogs (Sluice's upstream connects
            // too, into the mock's).
            ramp: Duration::from_secs(2),
            ..s("c10k", 10_000, 10_000, 5.0, 500)
        },
        _ => return None,
    })
}

pub(crate) struct Opts {
    pub(crate) workloads: Vec<String>,
    pub(crate) requests: Option<usize>,
    pub(crate) concurrency: Option<usize>,
    pub(crate) tokens: usize,
    pub(crate) deadline: Duration,
    pub(crate) bin_dir: PathBuf,
    pub(crate) keep_temp: bool,
    pub(crate) sluice_log: String,
    pub(crate) json_out: Option<PathBuf>,
    /// Experiments (not the benchmark's configuration): the in-process
    /// ledger, no budget, a new connection per direct request.
    pub(crate) memory_ledger: bool,
    pub(crate) budget: bool,
    /// An API key on Sluice (sent by its clients) with a rate limit and a
    /// budget of its own.
    pub(crate) keys: bool,
    /// Sluice exports traces (every request sampled) to a collector in
    /// this process that discards them.
    pub(crate) tracing: bool,
    /// Rounds per workload instead of its own (c1: 10, others: 1).
    pub(crate) rounds: Option<usize>,
    /// HTTP/2 for the clients of Sluice: `None` = only when HTTP/1.1 would
    /// need more descriptors than RLIMIT_NOFILE allows (c10k).
    pub(crate) http2: Option<bool>,
    /// RLIMIT_NOFILE in force (after raising it).
    pub(crate) nofile: u64,
    /// Experiments: the gap between the mock's events for every workload,
    /// extra environment for `sluice serve` (e.g. MALLOC_ARENA_MAX=2).
    pub(crate) gap_ms: Option<f64>,
    pub(crate) sluice_env: Vec<(String, String)>,
    /// Experiments: warm-up size override, and no direct phase.
    pub(crate) warmup: Option<usize>,
    pub(crate) skip_direct: bool,
    /// Experiments: a command that runs Sluice (e.g. `heaptrack -o FILE`).
    pub(crate) sluice_wrap: Vec<String>,
    /// The soak: how long, and each client's pause between two requests.
    pub(crate) duration: Duration,
    pub(crate) pause: Duration,
}

pub(crate) const USAGE: &str = "\
usage: load [--workload NAME[,NAME...]|all] [--requests R] [--concurrency C] [--tokens N]
            [--deadline-secs S] [--bin-dir DIR] [--sluice-log LEVEL] [--json-out FILE] [--keep-temp]
experiments (not the benchmark's set-up): [--storage sqlite|memory] [--budget on|off]
            [--keys on|off] (clients of Sluice send an API key that has a rate limit and a budget)
            [--tracing on|off] (Sluice exports OTLP traces to a collector here that discards them)
            [--rounds N] (rounds alternating between the paths; c1: 10, others: 1)
            [--gap-ms MS] [--sluice-env NAME=VALUE]... [--warmup N] [--skip-direct]
            [--sluice-wrap 'CMD ARGS'] (e.g. 'heaptrack -o FILE'; CPU/RSS are then the wrapper's)
            [--http2 auto|on|off] clients of Sluice on h2c, 100 streams per connection
            (auto: only when HTTP/1.1 needs more descriptors than RLIMIT_NOFILE allows)

workloads: c1 (C=1, 2000 requests, 0 ms gaps), c50 (C=50, 20000, 0 ms), c500 (C=500, 5000, 5 ms),
           c10k (C=10000, 10000, 5 ms), cancel (upstream close after a deadline / a disconnect);
           all = every one of them. --requests / --concurrency override the chosen workloads.
           soak (not in all): mixed traffic for --duration (default 30m, e.g. 2m, 90s, 1h),
           --concurrency clients (default 64) plus one tool-loop client, --pause-ms between
           requests (default 20); RSS, descriptors and the ledger's WAL sampled, verdict at the end
Needs target/release/sluice (which runs the mock provider too, as sluice mock):
  cargo build --release -p sluice";

pub(crate) fn parse_args() -> Result<Opts, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current exe: {e}"))?;
    let mut o = Opts {
        workloads: vec!["c1".into(), "c50".into()],
        requests: None,
        concurrency: None,
        tokens: 64,
        deadline: Duration::from_secs(120),
        bin_dir: exe.parent().map(Path::to_path_buf).unwrap_or_default(),
        keep_temp: false,
        sluice_log: "info".into(),
        json_out: None,
        memory_ledger: false,
        budget: true,
        keys: false,
        tracing: false,
        rounds: None,
        http2: None,
        nofile: 0,
        gap_ms: None,
        sluice_env: Vec::new(),
        warmup: None,
        skip_direct: false,
        sluice_wrap: Vec::new(),
        duration: Duration::from_secs(30 * 60),
        pause: Duration::from_millis(20),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        let num = |name: &str, v: String| -> Result<usize, String> {
            v.parse().map_err(|e| format!("{name} {v:?}: {e}"))
        };
        match a.as_str() {
            "--workload" | "--workloads" => {
                let v = value("--workload")?;
                o.workloads = if v == "all" {
                    WORKLOADS.iter().map(|s| s.to_string()).collect()
                } else {
                    v.split(',').map(|s| s.trim().to_string()).collect()
                };
                for w in &o.workloads {
                    if !WORKLOADS.contains(&w.as_str()) && !ON_REQUEST.contains(&w.as_str()) {
                        return Err(format!(
                            "unknown workload {w:?}; known: {}, {}, all",
                            WORKLOADS.join(", "),
                            ON_REQUEST.join(", ")
                        ));
                    }
                }
            }
            "--requests" => o.requests = Some(num("--requests", value("--requests")?)?),
            "--concurrency" => {
                o.concurrency = Some(num("--concurrency", value("--concurrency")?)?.max(1))
            }
            "--tokens" => o.tokens = num("--tokens", value("--tokens")?)?.max(1),
            "--gap-ms" => {
                let v = value("--gap-ms")?;
                let ms: f64 = v.parse().map_err(|e| format!("--gap-ms {v:?}: {e}"))?;
                if !ms.is_finite() || ms < 0.0 {
                    return Err(format!("--gap-ms must be a number >= 0, found {v}"));
                }
                o.gap_ms = Some(ms);
            }
            "--duration" => o.duration = duration("--duration", &value("--duration")?)?,
            "--pause-ms" => {
                o.pause = Duration::from_millis(num("--pause-ms", value("--pause-ms")?)? as u64)
            }
            "--warmup" => o.warmup = Some(num("--warmup", value("--warmup")?)?),
            "--skip-direct" => o.skip_direct = true,
            "--sluice-wrap" => {
                o.sluice_wrap = value("--sluice-wrap")?
                    .split_whitespace()
                    .map(str::to_string)
                    .collect()
            }
            "--sluice-env" => {
                let v = value("--sluice-env")?;
                let (k, val) = v
                    .split_once('=')
                    .ok_or_else(|| format!("--sluice-env {v:?}: expected NAME=VALUE"))?;
                o.sluice_env.push((k.to_string(), val.to_string()));
            }
            "--deadline-secs" => {
                o.deadline =
                    Duration::from_secs(num("--deadline-secs", value("--deadline-secs")?)? as u64)
            }
            "--bin-dir" => o.bin_dir = PathBuf::from(value("--bin-dir")?),
            "--sluice-log" => o.sluice_log = value("--sluice-log")?,
            "--json-out" => o.json_out = Some(PathBuf::from(value("--json-out")?)),
            "--keep-temp" => o.keep_temp = true,
            "--storage" => match value("--storage")?.as_str() {
                "sqlite" => o.memory_ledger = false,
                "memory" => o.memory_ledger = true,
                v => return Err(format!("--storage {v:?}: expected sqlite or memory")),
            },
            "--keys" => match value("--keys")?.as_str() {
                "on" => o.keys = true,
                "off" => o.keys = false,
                v => return Err(format!("--keys {v:?}: expected on or off")),
            },
            "--tracing" => match value("--tracing")?.as_str() {
                "on" => o.tracing = true,
                "off" => o.tracing = false,
                v => return Err(format!("--tracing {v:?}: expected on or off")),
            },
            "--budget" => match value("--budget")?.as_str() {
                "on" => o.budget = true,
                "off" => o.budget = false,
                v => return Err(format!("--budget {v:?}: expected on or off")),
            },
            "--rounds" => o.rounds = Some(num("--rounds", value("--rounds")?)?.max(1)),
            "--http2" => match value("--http2")?.as_str() {
                "auto" => o.http2 = None,
                "on" => o.http2 = Some(true),
                "off" => o.http2 = Some(false),
                v => return Err(format!("--http2 {v:?}: expected auto, on or off")),
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    for (on, flag) in [(o.keys, "--keys"), (o.tracing, "--tracing")] {
        if on
            && o.workloads
                .iter()
                .any(|w| matches!(w.as_str(), "cancel" | "soak" | "all"))
        {
            return Err(format!(
                "{flag} on applies to the throughput workloads (c1, c50, c500, c10k) only"
            ));
        }
    }
    Ok(o)
}

/// `90s`, `2m`, `1h` (or plain seconds) as a duration of at least 10 s.
fn duration(flag: &str, v: &str) -> Result<Duration, String> {
    let (digits, unit) = match v.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{flag} {v:?}: expected a whole number and s, m or h"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{flag} {v:?}: expected a unit of s, m or h")),
    };
    if secs < 10 {
        return Err(format!("{flag} {v:?}: expected at least 10s"));
    }
    Ok(Duration::from_secs(secs))
}
