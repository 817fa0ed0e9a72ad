//! The span processor: finished spans wait in a bounded queue and a thread
//! of their own exports them in batches. (The SDK's batch processor keeps
//! its count of dropped spans to itself; Sluice must show it.)
//!
//! Ending a span only takes a mutex for a push: when the queue is full the
//! span is dropped and counted, so request tasks never wait for the
//! collector. The export thread wakes when a batch is full, when the
//! batch delay has passed, or for a flush or shutdown, and runs each
//! export on a current-thread runtime of its own, bounded by the export
//! timeout; spans of an export that fails or times out are counted too.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tracing::{info, warn};

use super::TraceSettings;
use crate::metrics::DropLabels;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the export thread is asked to do, and how far it got.
#[derive(Default)]
struct Wake {
    /// Export now (a batch is full, or a flush was asked for).
    now: bool,
    stop: bool,
    flushes_asked: u64,
    flushes_done: u64,
    exited: bool,
}

struct Queue {
    spans: Mutex<Vec<SpanData>>,
    capacity: usize,
    batch_size: usize,
    wake: Mutex<Wake>,
    /// Wakes the export thread.
    work: Condvar,
    /// Wakes those waiting for a flush or the thread's end.
    done: Condvar,
    queue_full: Counter,
    export_failed: Counter,
}

pub(super) struct BatchProcessor {
    queue: Arc<Queue>,
    timeout: Duration,
}

impl std::fmt::Debug for BatchProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchProcessor")
            .field("capacity", &self.queue.capacity)
            .field("batch_size", &self.queue.batch_size)
            .finish_non_exhaustive()
    }
}

impl BatchProcessor {
    pub(super) fn start<E: SpanExporter + 'static>(
        mut exporter: E,
        resource: &Resource,
        settings: &TraceSettings,
        dropped: Family<DropLabels, Counter>,
    ) -> anyhow::Result<BatchProcessor> {
        exporter.set_resource(resource);
        // One at a time: the family's guard lives to the end of a statement.
        let queue_full = dropped
            .get_or_create(&DropLabels {
                reason: "queue_full",
            })
            .clone();
        let export_failed = dropped
            .get_or_create(&DropLabels {
                reason: "export_failed",
            })
            .clone();
        let queue = Arc::new(Queue {
            spans: Mutex::new(Vec::with_capacity(settings.queue_size)),
            capacity: settings.queue_size,
            batch_size: settings.batch_size,
            wake: Mutex::new(Wake::default()),
            work: Condvar::new(),
            done: Condvar::new(),
            queue_full,
            export_failed,
        });
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (q, delay, timeout) = (queue.clone(), settings.batch_delay, settings.timeout);
        std::thread::Builder::new()
            .name("sluice-traces".into())
            .spawn(move || export_loop(&q, &exporter, &runtime, delay, timeout))?;
        Ok(BatchProcessor {
            queue,
            timeout: settings.timeout,
        })
    }

    /// Asks the thread for `what` and waits until `done` says it happened
    /// (or the thread ended), at most `within`.
    fn wait_for(
        &self,
        within: Duration,
        ask: impl FnOnce(&mut Wake) -> u64,
        done: impl Fn(&Wake, u64) -> bool,
    ) -> OTelSdkResult {
        let deadline = Instant::now() + within;
        let mut w = lock(&self.queue.wake);
        let target = ask(&mut w);
        w.now = true;
        self.queue.work.notify_one();
        while !done(&w, target) && !w.exited {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(OTelSdkError::Timeout(within));
            }
            w = self
                .queue
                .done
                .wait_timeout(w, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        Ok(())
    }
}

impl SpanProcessor for BatchProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let mut spans = lock(&self.queue.spans);
        if spans.len() >= self.queue.capacity {
            drop(spans);
            self.queue.queue_full.inc();
            return;
        }
        spans.push(span);
        let full_batch = spans.len() == self.queue.batch_size;
        drop(spans);
        if full_batch {
            lock(&self.queue.wake).now = true;
            self.queue.work.notify_one();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.wait_for(
            self.timeout + Duration::from_secs(1),
            |w| {
                w.flushes_asked += 1;
                w.flushes_asked
            },
            |w, target| w.flushes_done >= target,
        )
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.wait_for(
            timeout,
            |w| {
                w.stop = true;
                0
            },
            |w, _| w.exited,
        )
    }
}

fn export_loop<E: SpanExporter>(
    queue: &Queue,
    exporter: &E,
    runtime: &tokio::runtime::Runtime,
    delay: Duration,
    timeout: Duration,
) {
    // Whatever happens here (a panic included), those waiting learn the
    // thread is gone.
    struct Exited<'a>(&'a Queue);
    impl Drop for Exited<'_> {
        fn drop(&mut self) {
            lock(&self.0.wake).exited = true;
            self.0.done.notify_all();
        }
    }
    let _exited = Exited(queue);
    // Swapped with the queue each round, so neither allocates again.
    let mut taken: Vec<SpanData> = Vec::with_capacity(queue.capacity);
    let mut failing = false;
    loop {
        let (stop, flushes) = {
            let mut w = lock(&queue.wake);
            if !w.now && !w.stop {
                w = queue
                    .work
                    .wait_timeout(w, delay)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0;
            }
            w.now = false;
            (w.stop, w.flushes_asked)
        };
        std::mem::swap(&mut *lock(&queue.spans), &mut taken);
        while !taken.is_empty() {
            let n = taken.len().min(queue.batch_size);
            let batch: Vec<SpanData> = taken.drain(..n).collect();
            let result = runtime
                .block_on(async { tokio::time::timeout(timeout, exporter.export(batch)).await });
            match result {
                Ok(Ok(())) => {
                    if failing {
                        info!("traces are exported again");
                    }
                    failing = false;
                }
                Ok(Err(e)) => {
                    queue.export_failed.inc_by(n as u64);
                    if !failing {
                        warn!(error = %e, spans = n, "traces could not be exported; they are dropped and counted (sluice_trace_spans_dropped_total) until an export succeeds");
                    }
                    failing = true;
                }
                Err(_) => {
                    queue.export_failed.inc_by(n as u64);
                    if !failing {
                        warn!(timeout = %humantime::format_duration(timeout), spans = n, "a trace export timed out; its spans are dropped and counted (sluice_trace_spans_dropped_total)");
                    }
                    failing = true;
                }
            }
        }
        {
            let mut w = lock(&queue.wake);
            w.flushes_done = flushes;
            queue.done.notify_all();
        }
        if stop {
            break;
        }
    }
    let _ = exporter.shutdown();
}
