//! Fuzzing on stable Rust: proptest generators, structure-aware where the
//! input has a structure, for every parser that reads bytes Sluice does not
//! control. Each property asserts what must hold for *any* input: no panic,
//! errors are values, memory stays within the parser's limits, and (for the
//! incremental parsers) any split of the bytes gives the same result.
//!
//! Budget: every property runs [`cases`] cases, 32 by default so that
//! `cargo test --workspace` stays fast. `SLUICE_FUZZ_CASES=N` runs N per
//! property (the costly ones, marked by their `weight`, a fraction of it);
//! CI runs a larger bounded budget (`.ci/run`), and a long session is
//! `SLUICE_FUZZ_CASES=200000 cargo test -p sluice --test fuzz`.
//!
//! Regressions are kept two ways. proptest writes the seed of any failure to
//! `engine/tests/fuzz/<module>.proptest-regressions` (next to the module,
//! see [`config`]) and replays it first on every later run: commit those
//! files. And every file under `fixtures/fuzz/<target>/` is replayed through
//! the same checks by `corpus::*` tests, whatever the generators become: a
//! crash found once is added there as a file.
//!
//! Run in debug builds on purpose: arithmetic overflow panics there, so a
//! wrapping sum on hostile numbers is found, where `--release` would hide it.

#[path = "fuzz/config.rs"]
mod config;
#[path = "fuzz/corpus.rs"]
mod corpus;
#[path = "fuzz/h1.rs"]
mod h1;
#[path = "fuzz/json.rs"]
mod json;
#[path = "fuzz/request.rs"]
mod request;
#[path = "fuzz/server.rs"]
mod server;
#[path = "fuzz/sse.rs"]
mod sse;
#[path = "fuzz/wire.rs"]
mod wire;

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestError, TestRunner};

/// Cases per property when `SLUICE_FUZZ_CASES` is unset.
const DEFAULT_CASES: u32 = 32;

/// Cases for a property whose cases cost about `weight` cheap ones.
pub fn cases(weight: u32) -> u32 {
    let base = std::env::var("SLUICE_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .unwrap_or(DEFAULT_CASES);
    (base / weight.max(1)).max(4)
}

/// The runner configuration: `cases(weight)` cases, failures persisted next
/// to `source` (the module's `file!()`). proptest's default,
/// `SourceParallel`, looks for a `lib.rs`/`main.rs` above the file and,
/// finding none under `tests/`, falls back to `WithSource` after a warning:
/// it is named here so the place is certain.
pub fn config(source: &'static str, weight: u32) -> Config {
    Config {
        cases: cases(weight),
        source_file: Some(source),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        max_shrink_iters: 2048,
        ..Config::default()
    }
}

/// Runs `test` on values of `strategy` and panics with the minimal failing
/// input, as `proptest!` does. Used instead of the macro where a property
/// needs state around the runner (a runtime, a server).
pub fn check<S: Strategy>(
    source: &'static str,
    weight: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S::Value: std::fmt::Debug,
{
    let mut runner = TestRunner::new(config(source, weight));
    match runner.run(&strategy, test) {
        Ok(()) => {}
        Err(TestError::Fail(why, input)) => {
            panic!("fuzz case failed: {why}\nminimal input: {input:#?}")
        }
        Err(TestError::Abort(why)) => panic!("fuzz run aborted: {why}"),
    }
}
