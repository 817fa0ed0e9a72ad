//! The measured part of a workload, on `sluice bench`'s engine
//! ([`sluice::bench::run_via`]): each path warmed up, then the same
//! closed-loop workload sent to the direct path and through each hop in
//! rounds that alternate between the paths, so that whatever else the
//! machine does (another tenant of the VM, frequency changes) weighs on
//! every path alike. At C=1 the figure that matters is a difference of a
//! few tens of microseconds, smaller than the drift between two runs a few
//! seconds apart.
//!
//! Each path has processes of its own (its mock, and the relay or Sluice
//! in front), so their CPU over the whole measured part is that path's
//! alone; the client's is measured around each of the path's rounds.

use std::sync::Arc;
use std::time::Duration;

use sluice::bench::client::Target;
use sluice::bench::report::StepReport;
use sluice::bench::workload::{Lengths, Load, PromptSource, Stop};
use sluice::bench::{self, Plan};

use super::args::Spec;
use super::procs::{self, Proc};
use super::report::{Cpu, Phase};

/// One path under test.
pub(crate) struct Path<'a> {
    pub label: &'static str,
    pub target: Arc<Target>,
    /// The hop between the client and the mock (Sluice or the relay), and
    /// Sluice's port when it is Sluice.
    pub hop: Option<&'a Proc>,
    pub sluice_port: Option<u16>,
    pub mock: &'a Proc,
}

fn cpu_of(p: &Proc) -> f64 {
    procs::cpu_seconds(p.pid()).unwrap_or(f64::NAN)
}

impl Path<'_> {
    /// CPU seconds of the path's processes so far: (hop, mock).
    fn cpu_now(&self) -> (Option<f64>, f64) {
        (self.hop.map(cpu_of), cpu_of(self.mock))
    }

    /// Waits until Sluice has concluded `expected` requests.
    async fn concluded(&self, expected: u64) -> Option<Duration> {
        match self.sluice_port {
            Some(port) => Some(wait_concluded(port, expected).await),
            None => None,
        }
    }
}

/// The workload as `sluice bench` runs it: a closed loop at the spec's
/// concurrency, `tokens` asked for with a short prompt.
pub(crate) fn plan(spec: &Spec, tokens: usize, requests: u64) -> Plan {
    Plan {
        steps: vec![Load::Closed {
            concurrency: spec.concurrency,
        }],
        stop: Stop {
            requests: Some(requests),
            duration: None,
        },
        warmup: Stop::none(),
        prompts: PromptSource::Synthetic {
            prompt_tokens: Lengths::Fixed(8),
        },
        output_tokens: Lengths::Fixed(tokens as u32),
        ramp: spec.ramp,
        ..Plan::default()
    }
}

/// Warms every path up, then runs the measured requests in `spec.rounds`
/// rounds alternating between the paths (the first path is the direct
/// one); one phase per path, in order.
pub(crate) async fn run(paths: &[Path<'_>], spec: &Spec, tokens: usize) -> Vec<Phase> {
    let mut expected = vec![0u64; paths.len()];
    for (path, expected) in paths.iter().zip(&mut expected) {
        eprintln!("  {}: warm-up ({} requests)", path.label, spec.warmup);
        let warm = Plan {
            steps: vec![Load::Closed {
                concurrency: spec.concurrency.min(50),
            }],
            ramp: Duration::ZERO,
            ..plan(spec, tokens, spec.warmup as u64)
        };
        for s in bench::run(path.target.clone(), &warm, None).await {
            if s.failed > 0 {
                eprintln!("  {}: warm-up failures: {:?}", path.label, s.failures);
            }
            *expected += s.ok + s.failed;
        }
        path.concluded(*expected).await;
    }
    eprintln!(
        "  {} requests per path, {} clients{}{}",
        spec.requests,
        spec.concurrency,
        if spec.rounds > 1 {
            format!(", in {} rounds alternating between the paths", spec.rounds)
        } else {
            String::new()
        },
        if spec.ramp.is_zero() {
            String::new()
        } else {
            format!(", clients started over {:?}", spec.ramp)
        }
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before: Vec<_> = paths.iter().map(Path::cpu_now).collect();
    let plan = plan(spec, tokens, spec.requests as u64);
    let mut steps: Vec<StepReport> = match paths {
        [only] => bench::run(only.target.clone(), &plan, None).await,
        [direct, via @ ..] => {
            let targets: Vec<Arc<Target>> = via.iter().map(|p| p.target.clone()).collect();
            let names: Vec<String> = via.iter().map(|p| p.label.to_string()).collect();
            let (d, v) = bench::run_via(
                direct.target.clone(),
                &targets,
                &names,
                &plan,
                spec.rounds as u32,
                None,
            )
            .await;
            d.into_iter().chain(v.into_iter().flatten()).collect()
        }
        [] => Vec::new(),
    };
    // Settlement, logs and connection teardown of the last requests.
    let mut lags = Vec::new();
    for ((path, expected), step) in paths.iter().zip(&expected).zip(&steps) {
        lags.push(path.concluded(expected + step.ok + step.failed).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut phases = Vec::new();
    for (((path, step), before), lag) in paths.iter().zip(steps.drain(..)).zip(before).zip(lags) {
        let (hop, mock) = path.cpu_now();
        let cpu = Cpu {
            hop: hop.zip(before.0).map(|(a, b)| a - b),
            mock: mock - before.1,
        };
        let mut p = Phase::new(&step, cpu);
        p.hop_peak_rss = path.hop.and_then(|h| procs::status_bytes(h.pid(), "VmHWM"));
        p.mock_peak_rss = procs::status_bytes(path.mock.pid(), "VmHWM");
        p.conclude_lag_s = lag.map(|d| d.as_secs_f64());
        eprintln!(
            "  {}: {} ok, {} failed in {:.1} s{}",
            path.label,
            p.ok,
            p.failed,
            p.wall_s,
            lag.map_or(String::new(), |d| format!(
                "; Sluice concluded the last of them {:.2} s after the last stream ended",
                d.as_secs_f64()
            ))
        );
        phases.push(p);
    }
    phases
}

/// Sluice concludes a request (settles its ledger row, then counts it in
/// `sluice_requests_total`) after the client saw its last event. Waits until
/// it has counted `expected` requests, or until the count stops moving for
/// 5 s; returns how long that took.
async fn wait_concluded(port: u16, expected: u64) -> Duration {
    let started = tokio::time::Instant::now();
    let mut last = (0, started);
    loop {
        let n: u64 = crate::requests_by_status(port)
            .await
            .iter()
            .map(|(_, v)| v)
            .sum();
        if n >= expected {
            return started.elapsed();
        }
        if n != last.0 {
            last = (n, tokio::time::Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(5)
            || started.elapsed() > Duration::from_secs(300)
        {
            eprintln!("  sluice: concluded {n} of {expected} requests; not waiting longer");
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
