//! `sluice bench` against the testkit's mock with scripted timing, on
//! tokio's paused clock (the shared helpers are here):
//! - `figures`: every figure (TTFT, ITL, TPOT, E2E, tokens, throughput,
//!   goodput) checked exact; open-loop arrivals keep their schedule while
//!   the server stalls; failures reported by cause; an interrupted run;
//! - `via`: gateways measured against the direct path in alternating
//!   rounds, Sluice's pipeline API among them;
//! - `cli`: the binary (real clock): `--json`, `--html`, `--via`,
//!   `compare`, usage errors, Ctrl-C.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use sluice::bench::client::{Api, Target, TargetOptions};
use sluice::bench::metrics::Slo;
use sluice::bench::report::{Stats, StepReport};
use sluice::bench::workload::{Arrivals, Lengths, Load, PromptSource, Stop};
use sluice::bench::{self, Plan};
use sluice_testkit::{Fault, MockProvider, Reply, Script};

mod cli;
#[path = "../common/mod.rs"]
mod common;
mod connections;
mod figures;
mod via;

/// Runs `f` on a current-thread runtime with tokio's clock paused, as
/// `sluice test` does: before every park (where the paused clock jumps),
/// loopback traffic in flight is let reach the other end first (see
/// `sluice::scenario::settle`), so a loaded machine cannot make the clock
/// jump past a chunk that was already written.
fn paused<F: std::future::Future>(f: F) -> F::Output {
    let unsettled = Arc::new(AtomicUsize::new(0));
    let counter = unsettled.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .on_thread_park(move || sluice::scenario::settle::wait(&counter))
        .build()
        .expect("runtime");
    let out = rt.block_on(f);
    assert_eq!(
        unsettled.load(Ordering::Relaxed),
        0,
        "loopback traffic never settled"
    );
    out
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A streaming target with a model, a header and a key (which the tests
/// check are sent); tests that need other options change these.
fn options(url: String) -> TargetOptions {
    TargetOptions {
        url,
        api: None,
        model: "bench-model".into(),
        stream: true,
        headers: vec!["x-team: bench".into()],
        api_key: Some("sk-bench-secret-0123456789".into()),
        extra_body: None,
        timeout: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(5),
        max_idle: 64,
        http2: false,
    }
}

fn target_with(o: TargetOptions) -> Arc<Target> {
    Arc::new(Target::new(o).expect("target"))
}

fn target(url: String) -> Arc<Target> {
    target_with(options(url))
}

/// The order in which the mocks received their requests, each mock named
/// by its letter.
fn arrival_order(mocks: &[(&MockProvider, char)]) -> String {
    let mut arrivals: Vec<(tokio::time::Instant, char)> = Vec::new();
    for (m, side) in mocks {
        arrivals.extend(
            m.journal()
                .requests()
                .iter()
                .map(|r| (r.received_at, *side)),
        );
    }
    arrivals.sort();
    arrivals.iter().map(|a| a.1).collect()
}

/// A real-clock runtime for the tests that run the binary beside a mock.
fn real_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn plan(load: Load, requests: u64) -> Plan {
    Plan {
        steps: vec![load],
        stop: Stop {
            requests: Some(requests),
            duration: None,
        },
        // Tiny prompts: the tokenizer is not what these tests are about.
        prompts: PromptSource::Synthetic {
            prompt_tokens: Lengths::Fixed(4),
        },
        output_tokens: Lengths::Fixed(16),
        ..Plan::default()
    }
}

/// Every sample of the figure equals `v` milliseconds.
#[track_caller]
fn all(s: &Option<Stats>, count: u64, v: f64) {
    let s = s.expect("figure present");
    assert_eq!(s.count, count, "count of {s:?}");
    for (what, got) in [
        ("mean", s.mean),
        ("min", s.min),
        ("p50", s.p50),
        ("p90", s.p90),
        ("p99", s.p99),
        ("max", s.max),
    ] {
        assert_eq!(got, v, "{what} of {s:?}");
    }
}

fn one(steps: &[StepReport]) -> &StepReport {
    assert_eq!(steps.len(), 1);
    &steps[0]
}
