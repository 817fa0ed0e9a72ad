//! Running the measured phases of a workload: warm-ups, the measured
//! requests, and the CPU each process used, for the direct path and the
//! path through Sluice.
//!
//! With one round, each path runs all its requests in turn (direct, then
//! Sluice). With more, the requests are cut into rounds that alternate
//! between the paths, so that whatever else the machine does (another
//! tenant of the VM, frequency changes) weighs on both alike: at C=1 the
//! figure that matters is a difference of a few tens of microseconds,
//! smaller than the drift between two runs a few seconds apart.

use std::time::Duration;

use super::args::Spec;
use super::client::{self, Outcome, Plan, Target};
use super::procs::{self, Proc};
use super::report::{Cpu, Phase};

/// One path under test.
pub(crate) struct Path<'a> {
    pub label: &'static str,
    pub target: Target,
    pub plan: Plan,
    /// Sluice's process and port, on the path through it.
    pub sluice: Option<(&'a Proc, u16)>,
    pub mock: &'a Proc,
}

/// What a path measured so far, over its rounds.
#[derive(Default)]
struct Tally {
    outcome: Option<Outcome>,
    cpu: Cpu,
    /// Requests Sluice has counted, warm-up included.
    expected: u64,
    settle_lag: Option<Duration>,
}

fn cpu_of(p: &Proc) -> f64 {
    procs::cpu_seconds(p.pid()).unwrap_or(f64::NAN)
}

fn self_cpu() -> f64 {
    procs::cpu_seconds(std::process::id()).unwrap_or(f64::NAN)
}

impl Path<'_> {
    fn cpu_now(&self) -> Cpu {
        Cpu {
            sluice: self.sluice.map(|(p, _)| cpu_of(p)),
            mock: cpu_of(self.mock),
            client: self_cpu(),
        }
    }

    /// Waits until Sluice has concluded every request sent so far.
    async fn concluded(&self, expected: u64) -> Option<Duration> {
        match self.sluice {
            Some((_, port)) => Some(wait_concluded(port, expected).await),
            None => None,
        }
    }

    async fn warm_up(&self, spec: &Spec, t: &mut Tally) {
        eprintln!("  {}: warm-up ({} requests)", self.label, spec.warmup);
        let w = client::run(self.target.clone(), warmup_plan(spec)).await;
        if w.failed > 0 {
            eprintln!("  {}: warm-up failures: {:?}", self.label, w.errors);
        }
        t.expected += (w.samples.len() + w.failed) as u64;
        self.concluded(t.expected).await;
    }

    /// One measured slice of `requests` requests.
    async fn round(&self, requests: usize, t: &mut Tally) {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = self.cpu_now();
        let plan = Plan {
            requests,
            ..self.plan.clone()
        };
        let outcome = client::run(self.target.clone(), plan).await;
        t.expected += (outcome.samples.len() + outcome.failed) as u64;
        // Settlement, logs and connection teardown of the last requests.
        t.settle_lag = self.concluded(t.expected).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = self.cpu_now();
        t.cpu = Cpu {
            sluice: match (t.cpu.sluice, after.sluice.zip(before.sluice)) {
                (s, Some((a, b))) => Some(s.unwrap_or(0.0) + a - b),
                (s, None) => s,
            },
            mock: t.cpu.mock + after.mock - before.mock,
            client: t.cpu.client + after.client - before.client,
        };
        match &mut t.outcome {
            Some(o) => o.absorb(outcome),
            None => t.outcome = Some(outcome),
        }
    }

    fn phase(&self, t: Tally) -> Phase {
        let outcome = t.outcome.unwrap_or_default();
        let mut p = Phase::new(&outcome, t.cpu);
        p.sluice_peak_rss = self
            .sluice
            .and_then(|(s, _)| procs::status_bytes(s.pid(), "VmHWM"));
        p.mock_peak_rss = procs::status_bytes(self.mock.pid(), "VmHWM");
        p.conclude_lag_s = t.settle_lag.map(|d| d.as_secs_f64());
        eprintln!(
            "  {}: {} ok, {} failed in {:.1} s{}",
            self.label,
            p.ok,
            p.failed,
            p.wall_s,
            t.settle_lag.map_or(String::new(), |d| format!(
                "; Sluice concluded the last of them {:.2} s after the last stream ended",
                d.as_secs_f64()
            ))
        );
        p
    }
}

/// Warms each path up, then runs its `plan.requests` measured requests in
/// `rounds` slices that alternate between the paths; one phase per path.
pub(crate) async fn run(paths: &[Path<'_>], spec: &Spec, rounds: usize) -> Vec<Phase> {
    let rounds = rounds.max(1);
    let mut tallies: Vec<Tally> = paths.iter().map(|_| Tally::default()).collect();
    if rounds == 1 {
        for (path, t) in paths.iter().zip(&mut tallies) {
            path.warm_up(spec, t).await;
            log_start(path, rounds);
            path.round(path.plan.requests, t).await;
        }
    } else {
        for (path, t) in paths.iter().zip(&mut tallies) {
            path.warm_up(spec, t).await;
            log_start(path, rounds);
        }
        for r in 0..rounds {
            for (path, t) in paths.iter().zip(&mut tallies) {
                let n = path.plan.requests / rounds + usize::from(r < path.plan.requests % rounds);
                path.round(n, t).await;
            }
        }
    }
    paths.iter().zip(tallies).map(|(p, t)| p.phase(t)).collect()
}

fn log_start(path: &Path<'_>, rounds: usize) {
    eprintln!(
        "  {}: {} requests, {} clients{}{}",
        path.label,
        path.plan.requests,
        path.plan.concurrency,
        if path.plan.http2 { " (h2c)" } else { "" },
        if rounds > 1 {
            format!(", in {rounds} rounds alternating with the other path")
        } else {
            String::new()
        }
    );
}

fn warmup_plan(spec: &Spec) -> Plan {
    Plan {
        requests: spec.warmup,
        concurrency: spec.concurrency.min(50),
        connect_ramp: Duration::ZERO,
        request_ramp: Duration::ZERO,
        deadline: Duration::from_secs(60),
        reconnect: false,
        http2: false,
    }
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
