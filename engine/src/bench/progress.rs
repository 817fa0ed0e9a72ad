//! The live progress bar (indicatif, on stderr; drawn only when stderr is
//! a terminal): requests done out of the step's count (or time out of its
//! duration), with live figures: successes and failures, requests and
//! output tokens per second so far, median TTFT, requests in flight.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

use super::Live;
use super::report::StepReport;
use super::workload::Stop;

/// How often the figures are refreshed.
const TICK: Duration = Duration::from_millis(250);

pub struct Progress {
    bar: Mutex<Option<ProgressBar>>,
    /// Whether the bar counts requests (else milliseconds of the duration).
    by_requests: Mutex<bool>,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    pub fn new() -> Progress {
        Progress {
            bar: Mutex::new(None),
            by_requests: Mutex::new(true),
        }
    }

    /// A new bar for a step (or its warm-up).
    pub fn start(&self, label: &str, stop: Stop) {
        let (len, by_requests) = match (stop.requests, stop.duration) {
            (Some(n), _) => (n, true),
            (None, Some(d)) => (d.as_millis() as u64, false),
            (None, None) => (0, true),
        };
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
        let template = if by_requests {
            "{prefix:>18} [{bar:24}] {pos}/{len} {msg}"
        } else {
            "{prefix:>18} [{bar:24}] {elapsed}/{duration} {msg}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label.to_string());
        *self.by_requests.lock().unwrap_or_else(|e| e.into_inner()) = by_requests;
        if let Some(old) = self
            .bar
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace(bar)
        {
            old.finish_and_clear();
        }
    }

    /// Refreshes the bar from `live` until the returned task is aborted.
    pub fn follow(&self, live: Arc<Live>) -> JoinHandle<()> {
        let bar = self.bar.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let by_requests = *self.by_requests.lock().unwrap_or_else(|e| e.into_inner());
        tokio::spawn(async move {
            let Some(bar) = bar else { return };
            let mut tick = tokio::time::interval(TICK);
            loop {
                tick.tick().await;
                let (done, msg) = {
                    let t = live.tally();
                    let secs = t.epoch.elapsed().as_secs_f64().max(1e-9);
                    let ttft = if t.ttft.count() > 0 {
                        format!(
                            " · TTFT p50 {:.0} ms",
                            t.ttft.percentile(50.0) as f64 / 1000.0
                        )
                    } else {
                        String::new()
                    };
                    let msg = format!(
                        "ok {} failed {} · {:.1} req/s · {:.0} tok/s{ttft} · in flight {}",
                        t.ok,
                        t.failed,
                        t.ok as f64 / secs,
                        t.output_tokens as f64 / secs,
                        live.in_flight.load(Ordering::Relaxed)
                    );
                    (t.ok + t.failed, msg)
                };
                if by_requests {
                    bar.set_position(done);
                } else {
                    bar.set_position(live.tally().epoch.elapsed().as_millis() as u64);
                }
                bar.set_message(msg);
            }
        })
    }

    /// Clears the step's bar and prints its one-line result.
    pub fn finish(&self, r: &StepReport) {
        if let Some(bar) = self.bar.lock().unwrap_or_else(|e| e.into_inner()).take() {
            bar.finish_and_clear();
            bar.println(format!(
                "{}: {} ok, {} failed, {:.2} req/s, {:.1} output tok/s",
                r.label(),
                r.ok,
                r.failed,
                r.request_throughput,
                r.output_throughput
            ));
        }
    }
}
