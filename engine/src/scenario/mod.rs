//! Fault scenarios: `sluice test` and `sluice record`.
//!
//! A scenario file (YAML) names a pipeline, the upstream replies per model
//! call (recorded streams or synthesized ones, with timing and faults), the
//! client's request, and the outcome Sluice must produce. The runner plays
//! each scenario on its own current-thread tokio runtime with the clock
//! paused, an in-process [`sluice_testkit::MockProvider`] standing in for
//! the pipeline's provider, and an in-process server with an in-memory
//! ledger, so a 60 s stall takes no real time and every run is the same.
//!
//! - [`spec`]: raw shapes of a scenario file (unknown keys are
//!   `file:line:col` errors); [`build`]: checks them into a [`Scenario`].
//! - [`api`]: the route a scenario calls (`pipeline`, `chat_completions`,
//!   `messages`) and what its events mean to the expectations.
//! - [`pipeline`]: compiles a pipelines directory pointed at the mock.
//! - [`runner`] and [`client`]: run one scenario; [`check`]: compare.
//! - [`settle`]: the paused clock waits for loopback traffic in flight.
//! - [`report`]: progress, failures, `N passed, M failed`, JUnit XML.
//! - [`record`]: the recording proxy of `sluice record`.

pub mod api;
pub mod build;
pub mod check;
pub mod client;
pub mod pipeline;
pub mod record;
pub mod report;
pub mod runner;
pub mod settle;
pub mod spec;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

pub use build::{Clock, Defaults, Scenario};
pub use check::Mismatch;
pub use report::ScenarioResult;
pub use runner::{Outcome, RunOptions};

/// The `*.yaml`/`*.yml` files under `path` (recursively, sorted), or
/// `path` itself when it is a file.
pub fn discover(path: &Path) -> io::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let p = entry?.path();
            if p.is_dir() {
                dirs.push(p);
            } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Loads, runs and checks one scenario file.
pub fn run_file(file: &Path, defaults: &Defaults, opts: RunOptions) -> ScenarioResult {
    let started = Instant::now();
    let name = file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let scenario = match build::load(file, defaults) {
        Ok(s) => s,
        Err(diags) => {
            return ScenarioResult {
                name,
                file: file.to_path_buf(),
                description: None,
                failures: diags.iter().map(ToString::to_string).collect(),
                summary: "invalid scenario".into(),
                clock_time: None,
                wall: started.elapsed(),
            };
        }
    };
    let outcome = runner::run(&scenario, opts);
    ScenarioResult {
        name,
        file: file.to_path_buf(),
        description: scenario.description.clone(),
        failures: check::check(&scenario.expect, &outcome)
            .iter()
            .map(ToString::to_string)
            .collect(),
        summary: summary(&outcome),
        clock_time: (outcome.response.status != 0).then_some(outcome.response.ended_at),
        wall: started.elapsed(),
    }
}

/// A few words on an outcome, for progress lines.
pub fn summary(o: &Outcome) -> String {
    let r = &o.response;
    if r.status == 0 {
        return "did not run".into();
    }
    let mut s = format!("{}", r.status);
    if let Some(w) = o.wire {
        s = format!("{w}: {s}");
    }
    if r.events.is_empty() {
        if let Some(code) = o.error_code() {
            s.push_str(&format!(" {code}"));
        }
    } else {
        s.push_str(&format!(" stream, {} events", r.events.len()));
        if let Some(code) = o.error_code() {
            s.push_str(&format!(", {code}"));
        }
        if let Some(f) = api::finish_reason(o.api, r) {
            s.push_str(&format!(", {f}"));
        }
    }
    if let Some(c) = &o.closing {
        if let Some(at) = c.closed_at {
            s.push_str(&format!(
                ", upstream closed +{}ms",
                at.saturating_sub(c.reference_at).as_millis()
            ));
        } else if c.kept_alive {
            s.push_str(", upstream kept for reuse");
        }
    }
    s
}

/// Runs `files` on `jobs` threads (each scenario on its own runtime),
/// calling `on_done` as each finishes; returns the results in file order.
pub fn run_all(
    files: &[PathBuf],
    defaults: &Defaults,
    opts: RunOptions,
    jobs: usize,
    mut on_done: impl FnMut(usize, &ScenarioResult),
) -> Vec<ScenarioResult> {
    let next = AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel::<(usize, ScenarioResult)>();
    let mut results: Vec<Option<ScenarioResult>> = vec![None; files.len()];
    std::thread::scope(|scope| {
        for _ in 0..jobs.clamp(1, files.len().max(1)) {
            let tx = tx.clone();
            let next = &next;
            scope.spawn(move || {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(file) = files.get(i) else { break };
                    let r = guarded(file, defaults, opts);
                    if tx.send((i, r)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut done = 0;
        for (i, r) in rx {
            done += 1;
            on_done(done, &r);
            results[i] = Some(r);
        }
    });
    results.into_iter().flatten().collect()
}

/// [`run_file`], with a panic reported as the scenario's failure.
fn guarded(file: &Path, defaults: &Defaults, opts: RunOptions) -> ScenarioResult {
    let started = Instant::now();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        run_file(file, defaults, opts)
    }))
    .unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "unknown panic".into());
        ScenarioResult {
            name: file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default(),
            file: file.to_path_buf(),
            description: None,
            failures: vec![format!("the runner panicked: {msg}")],
            summary: "panicked".into(),
            clock_time: None,
            wall: started.elapsed(),
        }
    })
}

/// What `sluice test` was asked to do.
#[derive(Debug, Clone)]
pub struct TestCommand {
    pub path: PathBuf,
    pub defaults: Defaults,
    pub run: RunOptions,
    pub jobs: usize,
    pub junit: Option<PathBuf>,
}

/// `sluice test`: runs every scenario under `cmd.path`, prints progress and
/// failures to `out`, writes JUnit XML if asked. Ok(true) when all passed.
pub fn test_command(cmd: &TestCommand, out: &mut impl Write) -> io::Result<bool> {
    let started = Instant::now();
    let files = discover(&cmd.path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot read scenarios at {}: {e}", cmd.path.display()),
        )
    })?;
    writeln!(
        out,
        "running {} scenario(s) from {} ({} at a time, {} clock)",
        files.len(),
        cmd.path.display(),
        cmd.jobs,
        if cmd.run.real_time { "real" } else { "virtual" }
    )?;
    let total = files.len();
    let mut write_err = None;
    let results = run_all(&files, &cmd.defaults, cmd.run, cmd.jobs, |done, r| {
        if let Err(e) =
            writeln!(out, "{}", report::progress_line(done, total, r)).and_then(|()| out.flush())
        {
            write_err.get_or_insert(e);
        }
    });
    if let Some(e) = write_err {
        return Err(e);
    }
    let wall = started.elapsed();
    if let Some(path) = &cmd.junit {
        let suite = cmd.path.display().to_string();
        let xml = report::junit_xml(&suite, &results, wall);
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        std::fs::write(path, xml).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot write junit report {}: {e}", path.display()),
            )
        })?;
    }
    if results.is_empty() {
        writeln!(out, "no scenario files (*.yaml) in {}", cmd.path.display())?;
    }
    report::write_summary(out, &results)?;
    Ok(results.iter().all(ScenarioResult::passed) && !results.is_empty())
}
