//! `sluice bench`: a load generator for OpenAI Chat Completions and
//! Anthropic Messages streaming endpoints (Sluice itself, a provider, any
//! compatible server), usable from the command line and from Rust.
//!
//! - [`client`]: one request, sent and timed chunk by chunk.
//! - [`workload`]: loads (closed loop, open loop), stops, lengths,
//!   prompts, the seeded generator.
//! - [`metrics`]: what a request measured and a step's aggregation (HDR
//!   histograms, failures by cause, goodput, per-second series, CPU).
//! - [`report`]: the JSON report and the table; [`html`]: the same as one
//!   page of SVG plots; [`compare`]: two reports
//!   side by side; [`progress`]: the live progress bar; [`command`]: the
//!   command line.
//!
//! A run is a list of steps (one per concurrency or rate of a sweep); each
//! step runs its warm-up (not measured), then its measured part, and ends
//! when its requests are sent and every one of them has ended.
//!
//! ```no_run
//! # async fn demo() -> Result<(), String> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use sluice::bench::{self, Plan, client::{Target, TargetOptions}, workload::*};
//! let target = Arc::new(Target::new(TargetOptions {
//!     url: "http://127.0.0.1:8080/v1/chat/completions".into(),
//!     api: None,
//!     model: "demo".into(),
//!     stream: true,
//!     headers: vec![],
//!     api_key: None,
//!     extra_body: None,
//!     timeout: Duration::from_secs(60),
//!     connect_timeout: Duration::from_secs(5),
//!     max_idle: 16,
//!     http2: false,
//! })?);
//! let plan = Plan {
//!     steps: vec![Load::Closed { concurrency: 16 }],
//!     stop: Stop { requests: Some(500), duration: None },
//!     ..Plan::default()
//! };
//! let steps = bench::run(target, &plan, None).await;
//! println!("{:.1} tokens/s", steps[0].output_throughput);
//! # Ok(()) }
//! ```

pub mod client;
pub mod command;
pub mod compare;
mod h2;
pub mod html;
pub mod metrics;
mod pipeline;
pub mod progress;
pub mod report;
mod streamed;
pub mod workload;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use client::Target;
pub use h2::STREAMS_PER_CONN;
use metrics::{Slo, Tally};
use progress::Progress;
pub use report::Added;
use report::{StepLoad, StepReport};
use workload::{Lengths, Load, Prompt, PromptSource, Schedule, Stop};

/// What to run.
#[derive(Clone, Debug)]
pub struct Plan {
    /// One step per concurrency or rate.
    pub steps: Vec<Load>,
    /// When each step's measured part ends.
    pub stop: Stop,
    /// Each step's warm-up, at the step's load; not measured.
    pub warmup: Stop,
    pub prompts: PromptSource,
    pub output_tokens: Lengths,
    pub slo: Slo,
    pub seed: u64,
    /// An open loop's cap on requests in flight (memory and sockets): a
    /// request due while the cap is reached is sent late, and its latency
    /// still counts from when it was due.
    pub max_in_flight: usize,
    /// A closed loop's clients start one after another over this time
    /// (client k of C at k/C of it), so that thousands of them do not
    /// connect at once; each client's first request counts from its start.
    pub ramp: Duration,
    /// Cancelled (Ctrl-C): nothing more is sent, requests in flight are
    /// abandoned, and the steps measured so far are returned, the last one
    /// marked `interrupted`.
    pub interrupt: CancellationToken,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            steps: vec![Load::Closed { concurrency: 1 }],
            stop: Stop {
                requests: Some(100),
                duration: None,
            },
            warmup: Stop::none(),
            prompts: PromptSource::Synthetic {
                prompt_tokens: Lengths::Fixed(128),
            },
            output_tokens: Lengths::Fixed(128),
            slo: Slo::default(),
            seed: 0,
            max_in_flight: 10_000,
            ramp: Duration::ZERO,
            interrupt: CancellationToken::new(),
        }
    }
}

/// A step's figures as they come in (read by the progress bar).
pub struct Live {
    tally: Mutex<Tally>,
    pub sent: AtomicU64,
    pub in_flight: AtomicU64,
    peak_in_flight: AtomicU64,
}

impl Live {
    fn new(epoch: Instant, slo: Slo) -> Live {
        Live {
            tally: Mutex::new(Tally::new(epoch, slo)),
            sent: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            peak_in_flight: AtomicU64::new(0),
        }
    }

    /// A poisoned lock only means a task panicked while adding; the tally
    /// stays usable.
    pub fn tally(&self) -> MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends one request and adds what it measured; a request still in
    /// flight when `interrupt` fires is abandoned, not counted.
    async fn send(
        &self,
        target: &Target,
        p: &Prompt,
        scheduled: Instant,
        epoch: Instant,
        interrupt: &CancellationToken,
    ) {
        self.sent.fetch_add(1, Ordering::Relaxed);
        let n = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        self.peak_in_flight.fetch_max(n, Ordering::Relaxed);
        let o = tokio::select! {
            biased;
            () = interrupt.cancelled() => None,
            o = target.send(p, scheduled, epoch) => Some(o),
        };
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(o) = o {
            self.tally().add(&o);
        }
    }
}

/// Runs every step of `plan` against `target`, one after the other.
pub async fn run(target: Arc<Target>, plan: &Plan, progress: Option<&Progress>) -> Vec<StepReport> {
    let mut reports = Vec::new();
    for (i, load) in plan.steps.iter().enumerate() {
        let step = Step::new(plan, i, *load, 0);
        if !plan.warmup.is_empty() {
            step.phase(&target, plan, progress, "warm-up", plan.warmup, 0)
                .await;
        }
        if plan.interrupt.is_cancelled() {
            break;
        }
        let measured = step
            .measure(&target, plan, progress, "", plan.stop, 0)
            .await;
        reports.push(measured.report(*load, progress, plan));
        if plan.interrupt.is_cancelled() {
            break;
        }
    }
    reports
}

/// Runs every step of `plan` against `direct` and through each of `via`
/// (gateways in front of the same kind of endpoint) in `rounds`
/// alternating rounds (direct, then each gateway in turn), each round of a
/// side taking its share of the step's requests or time, so that whatever
/// else the machine does weighs on every side alike. Returns the direct
/// steps and each gateway's, every round of a side merged into one;
/// `names` label the gateways on the progress bar.
pub async fn run_via(
    direct: Arc<Target>,
    via: &[Arc<Target>],
    names: &[String],
    plan: &Plan,
    rounds: u32,
    progress: Option<&Progress>,
) -> (Vec<StepReport>, Vec<Vec<StepReport>>) {
    let rounds = rounds.max(1);
    // Round r's share: the requests split as evenly as they go (the first
    // `n % rounds` rounds take one more), the duration in equal parts.
    let share = |r: u32| Stop {
        requests: plan.stop.requests.map(|n| {
            let rounds = u64::from(rounds);
            n / rounds + u64::from(u64::from(r - 1) < n % rounds)
        }),
        duration: plan.stop.duration.map(|d| d / rounds),
    };
    let targets: Vec<(&Arc<Target>, String)> = std::iter::once((&direct, "direct".to_string()))
        .chain(via.iter().enumerate().map(|(i, t)| {
            let name = names
                .get(i)
                .cloned()
                .unwrap_or_else(|| format!("via {}", i + 1));
            (t, name)
        }))
        .collect();
    let mut out: Vec<Vec<StepReport>> = vec![Vec::new(); targets.len()];
    for (i, load) in plan.steps.iter().enumerate() {
        let steps: Vec<Step> = (0..targets.len())
            .map(|side| Step::new(plan, i, *load, side))
            .collect();
        if !plan.warmup.is_empty() {
            for ((target, name), step) in targets.iter().zip(&steps) {
                let label = format!("{name} warm-up");
                step.phase(target, plan, progress, &label, plan.warmup, 0)
                    .await;
            }
        }
        let mut sides: Vec<Option<Measured>> = targets.iter().map(|_| None).collect();
        'rounds: for r in 1..=rounds {
            for ((side, (target, name)), step) in sides.iter_mut().zip(&targets).zip(&steps) {
                if plan.interrupt.is_cancelled() {
                    break 'rounds;
                }
                let label = format!("{name} round {r}/{rounds}");
                // Each round goes on where the side's last one stopped.
                let offset = side
                    .as_ref()
                    .map_or(0, |m| m.live.sent.load(Ordering::Relaxed));
                let m = step
                    .measure(target, plan, progress, &label, share(r), offset)
                    .await;
                match side {
                    None => *side = Some(m),
                    Some(all) => all.absorb(&m),
                }
            }
        }
        // Interrupted before every side measured a round: the step has
        // nothing to compare.
        if sides.iter().any(Option::is_none) {
            break;
        }
        for (reports, side) in out.iter_mut().zip(sides.into_iter().flatten()) {
            reports.push(side.report(*load, progress, plan));
        }
        if plan.interrupt.is_cancelled() {
            break;
        }
    }
    let direct_steps = out.remove(0);
    (direct_steps, out)
}

/// One step of a plan: its load, and the prompts every phase of it sends.
struct Step {
    load: Load,
    prompts: Arc<Vec<Prompt>>,
    seed: u64,
}

/// A measured phase: its figures and the client's CPU over it.
struct Measured {
    live: Arc<Live>,
    /// User and system CPU; `None` when getrusage failed.
    cpu: Option<(Duration, Duration)>,
    wall: Duration,
}

impl Step {
    /// Step `i` of `plan`; `side` (0 but for `--via`'s gateways) draws
    /// prompts of its own, so that no path is sent what another path just
    /// sent (a prefix cache behind a gateway would make it look faster).
    fn new(plan: &Plan, i: usize, load: Load, side: usize) -> Step {
        let seed = plan
            .seed
            .wrapping_add(i as u64)
            .wrapping_add((side as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let count = plan
            .stop
            .requests
            .map_or(workload::PROMPT_POOL, |n| n as usize);
        let prompts = Arc::new(workload::make_prompts(
            &plan.prompts,
            plan.output_tokens,
            count,
            seed,
        ));
        Step {
            load,
            prompts,
            seed,
        }
    }

    /// Runs a phase of the step (a warm-up or a measured run) with the
    /// progress bar following it, its requests taking the prompts from
    /// `offset` on; `label` follows the load's name on the progress bar.
    async fn phase(
        &self,
        target: &Arc<Target>,
        plan: &Plan,
        progress: Option<&Progress>,
        label: &str,
        stop: Stop,
        offset: u64,
    ) -> Arc<Live> {
        let label = if label.is_empty() {
            self.load.to_string()
        } else {
            format!("{} {label}", self.load)
        };
        if let Some(p) = progress {
            p.start(&label, stop);
        }
        let live = Arc::new(Live::new(Instant::now(), plan.slo));
        let ticker = progress.map(|p| p.follow(live.clone()));
        drive(target, self, stop, &live, plan, offset).await;
        if let Some(t) = ticker {
            t.abort();
        }
        live
    }

    /// A phase whose figures count, with the client's CPU over it.
    async fn measure(
        &self,
        target: &Arc<Target>,
        plan: &Plan,
        progress: Option<&Progress>,
        label: &str,
        stop: Stop,
        offset: u64,
    ) -> Measured {
        let before = metrics::cpu_times();
        let wall = std::time::Instant::now();
        let live = self
            .phase(target, plan, progress, label, stop, offset)
            .await;
        let wall = wall.elapsed();
        let after = metrics::cpu_times();
        let cpu = match (before, after) {
            (Some((u0, s0)), Some((u1, s1))) => {
                Some((u1.saturating_sub(u0), s1.saturating_sub(s0)))
            }
            _ => None,
        };
        Measured { live, cpu, wall }
    }
}

impl Measured {
    fn absorb(&mut self, later: &Measured) {
        self.live.tally().absorb(&later.live.tally());
        self.live
            .sent
            .fetch_add(later.live.sent.load(Ordering::Relaxed), Ordering::Relaxed);
        self.live.peak_in_flight.fetch_max(
            later.live.peak_in_flight.load(Ordering::Relaxed),
            Ordering::Relaxed,
        );
        self.cpu = self
            .cpu
            .zip(later.cpu)
            .map(|((u0, s0), (u1, s1))| (u0 + u1, s0 + s1));
        self.wall += later.wall;
    }

    fn report(&self, load: Load, progress: Option<&Progress>, plan: &Plan) -> StepReport {
        let cpu = metrics::cpu_report(Some((Duration::ZERO, Duration::ZERO)), self.cpu, self.wall);
        let live = &self.live;
        let mut report = live.tally().report(
            live.sent.load(Ordering::Relaxed),
            live.peak_in_flight.load(Ordering::Relaxed),
            cpu,
        );
        report.load = StepLoad {
            kind: load.kind().into(),
            value: load.value(),
        };
        report.interrupted = plan.interrupt.is_cancelled();
        if let Some(p) = progress {
            p.finish(&report);
        }
        report
    }
}

/// Sends the requests of one step (or warm-up) and waits for all of them.
/// The step's epoch (`live`'s tally) is its start.
async fn drive(
    target: &Arc<Target>,
    step: &Step,
    stop: Stop,
    live: &Arc<Live>,
    plan: &Plan,
    offset: u64,
) {
    let (load, prompts, seed) = (step.load, &step.prompts, step.seed);
    let interrupt = &plan.interrupt;
    if stop.is_empty() || prompts.is_empty() {
        return;
    }
    let epoch = live.tally().epoch;
    let deadline = stop.duration.map(|d| epoch + d);
    let limit = stop.requests.unwrap_or(u64::MAX);
    match load {
        Load::Closed { concurrency } => {
            let next = Arc::new(AtomicU64::new(0));
            let mut clients = JoinSet::new();
            let concurrency = concurrency.max(1);
            for k in 0..concurrency {
                let start = epoch + plan.ramp.mul_f64(k as f64 / concurrency as f64);
                let (target, prompts, live, next, interrupt) = (
                    target.clone(),
                    prompts.clone(),
                    live.clone(),
                    next.clone(),
                    interrupt.clone(),
                );
                clients.spawn(async move {
                    tokio::select! {
                        biased;
                        () = interrupt.cancelled() => return,
                        () = tokio::time::sleep_until(start) => {}
                    }
                    loop {
                        let now = Instant::now();
                        if deadline.is_some_and(|d| now >= d) || interrupt.is_cancelled() {
                            break;
                        }
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= limit {
                            break;
                        }
                        let p = &prompts[((offset + i) % prompts.len() as u64) as usize];
                        live.send(&target, p, now, epoch, &interrupt).await;
                    }
                });
            }
            while clients.join_next().await.is_some() {}
        }
        Load::Open { rate, arrivals } => {
            // Each request is due at its scheduled time, whatever happened
            // to the ones before: the schedule never waits for the server.
            let mut schedule = Schedule::new(rate, arrivals, seed);
            let permits = Arc::new(tokio::sync::Semaphore::new(plan.max_in_flight.max(1)));
            let mut requests = JoinSet::new();
            let mut due = epoch;
            let mut i = 0u64;
            while i < limit && deadline.is_none_or(|d| due < d) {
                tokio::select! {
                    biased;
                    () = interrupt.cancelled() => break,
                    () = tokio::time::sleep_until(due) => {}
                }
                // At the cap, this waits: the request goes late, and its
                // lateness is part of its latency.
                let Ok(permit) = permits.clone().acquire_owned().await else {
                    break;
                };
                let (target, prompts, live, interrupt) = (
                    target.clone(),
                    prompts.clone(),
                    live.clone(),
                    interrupt.clone(),
                );
                let p = ((offset + i) % prompts.len() as u64) as usize;
                let scheduled = due;
                requests.spawn(async move {
                    live.send(&target, &prompts[p], scheduled, epoch, &interrupt)
                        .await;
                    drop(permit);
                });
                // Finished tasks are reaped as we go, so a long run holds
                // only the requests in flight.
                while requests.try_join_next().is_some() {}
                i += 1;
                due += schedule.next_gap();
            }
            while requests.join_next().await.is_some() {}
        }
    }
}
