//! Cost of the ledger's per-request work: `open_request` (reserve the
//! worst case on the budget and insert the `pending` row, one transaction)
//! followed by `settle` (real cost replaces the reservation, one
//! transaction), in time per request:
//!
//! - `ledger/reserve_settle/memory`: the in-process store (`storage: memory`).
//! - `ledger/reserve_settle/sqlite`: a SQLite file as `sluice serve` opens it
//!   (WAL, `synchronous = NORMAL`, one connection on the ledger's writer
//!   thread), one request at a time.
//! - `ledger/reserve_settle_x50/sqlite`: 50 requests at once (as at C=50),
//!   time per request; the writer groups waiting operations into one commit.
//!
//! One budget scope (a pipeline's daily budget), as in the load benchmark.
//! Run with `cargo bench -p sluice-benches --bench ledger`.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::ledger::{Admit, Ledger, Opening, Scope, Settlement};

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn opening() -> Opening {
    let id = format!("bench-{}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    Opening {
        request_id: id.clone(),
        id,
        pipeline: "bench".into(),
        provider: "mock".into(),
        model: "bench-model".into(),
        api_key: None,
        team: None,
        rates: Vec::new(),
        reserve_micros: 700,
        scopes: vec![Scope {
            key: "pipeline:bench".into(),
            // Never exhausted: the bench measures admissions.
            limit_micros: i64::MAX / 4,
        }],
    }
}

fn settlement() -> Settlement {
    Settlement {
        status: "ok",
        prompt_tokens: 10,
        completion_tokens: 64,
        cache_read_tokens: 0,
        cache_write_tokens: 0,
        cache_write_1h_tokens: 0,
        estimated: false,
        cost_micros: 40,
        ttft_ms: Some(1),
        duration_ms: 3,
        tool_calls: 0,
        error_code: None,
        provider: "mock".into(),
        model: "bench-model".into(),
        usage_anomaly: None,
    }
}

async fn reserve_settle(ledger: &Ledger) {
    let o = opening();
    let admit = ledger.open_request(&o).await.expect("open");
    assert_eq!(admit, Admit::Admitted);
    black_box(ledger.settle(&o.id, &settlement()).await.expect("settle"));
}

/// A temporary directory for the SQLite file; removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        let dir = std::env::temp_dir().join(format!("sluice-bench-ledger-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Dir(dir)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ledger(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = Dir::new();
    let url = format!("sqlite:{}", dir.0.join("ledger.db").display());
    let sqlite: Arc<Ledger> = rt.block_on(Ledger::open(&url)).expect("sqlite ledger");
    let memory: Arc<Ledger> = rt.block_on(Ledger::open("memory")).expect("memory ledger");
    // Outside the measurements: both stores admit and settle.
    rt.block_on(reserve_settle(&sqlite));
    rt.block_on(reserve_settle(&memory));

    let mut group = c.benchmark_group("ledger");
    group.throughput(Throughput::Elements(1));
    group.bench_function("reserve_settle/memory", |b| {
        b.iter(|| rt.block_on(reserve_settle(&memory)))
    });
    group.bench_function("reserve_settle/sqlite", |b| {
        b.iter(|| rt.block_on(reserve_settle(&sqlite)))
    });
    const AT_ONCE: u64 = 50;
    group.throughput(Throughput::Elements(AT_ONCE));
    group.bench_function("reserve_settle_x50/sqlite", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                rt.block_on(async {
                    let mut set = tokio::task::JoinSet::new();
                    for _ in 0..AT_ONCE {
                        let l = sqlite.clone();
                        set.spawn(async move { reserve_settle(&l).await });
                    }
                    while let Some(r) = set.join_next().await {
                        r.expect("task");
                    }
                });
                total += started.elapsed();
            }
            total
        })
    });
    group.finish();
    rt.block_on(sqlite.close());
}

fn config() -> Criterion {
    // Set here, not per group, so command-line flags still override them.
    Criterion::default()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_secs(1))
        .sample_size(30)
}

criterion_group! {
    name = benches;
    config = config();
    targets = ledger
}
criterion_main!(benches);
