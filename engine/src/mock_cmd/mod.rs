//! `sluice mock`: the testkit's mock provider as a standalone server, for
//! measuring a gateway or an application against a provider whose timing,
//! length, usage and faults are known.
//!
//! - [`args`]: the flags and the syntax of their values.
//! - [`config`]: the same settings from a YAML file, with a rotation of
//!   replies and faults written as in scenario files.
//! - [`responder`]: what each request gets, and the counters behind
//!   `GET /mock/stats`.
//!
//! This module merges flags over the file over the defaults, starts the
//! testkit's server on the address asked, prints that address, and serves
//! until SIGINT or SIGTERM (or, for the load benchmark, the end of stdin),
//! then prints a summary with the CPU time per request.

pub mod args;
pub mod config;
pub mod responder;

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use sluice_testkit::{Journal, MockProvider, Recording, Reply, Wire};

pub use args::MockArgs;
use args::{Dist, Tokens};
use config::{FileSettings, ReplySpec};
use responder::{Answers, Entry, MockResponder, Synth};

/// The address when none is given.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8090";
/// Requests the journal keeps when not told.
pub const DEFAULT_JOURNAL: usize = 1000;

/// Everything `sluice mock` needs to run, checked.
#[derive(Debug)]
pub struct MockPlan {
    pub listen: SocketAddr,
    pub threads: Option<usize>,
    pub journal: usize,
    pub answers: Answers,
    pub control_stdin: bool,
}

/// Merges the flags over the config file over the defaults. `Err`: the
/// messages to print (usage errors: exit 2).
pub fn plan(args: &MockArgs) -> Result<MockPlan, Vec<String>> {
    let file = match &args.config {
        Some(path) => {
            config::load(path).map_err(|d| d.iter().map(ToString::to_string).collect::<Vec<_>>())?
        }
        None => FileSettings::default(),
    };
    let mut errors = Vec::new();
    let replay = args.replay.clone().or(file.replay.clone());
    if replay.is_some() {
        let mut knobs = args.synth_flags();
        if args.config.is_some() && file.synth.tokens.is_some() {
            knobs.push("tokens (in the config)");
        }
        if !knobs.is_empty() {
            errors.push(format!(
                "{} shape synthesized text and have no effect with --replay (recordings keep their own length and timing)",
                knobs.join(", ")
            ));
        }
        if !file.replies.is_empty() {
            errors
                .push("--replay and the config's replies both say what to answer; give one".into());
        }
    }
    let usage = args.usage.or(file.synth.usage).unwrap_or(true);
    let synth = Synth {
        tokens: args
            .tokens
            .or(file.synth.tokens)
            .unwrap_or(Tokens::Dist(Dist::Fixed(64))),
        ttft: args
            .ttft
            .or(file.synth.ttft)
            .unwrap_or(Dist::Fixed(Duration::ZERO)),
        itl: args
            .itl
            .or(args.token_rate.map(Dist::Fixed))
            .or(file.synth.itl)
            .unwrap_or(Dist::Fixed(Duration::ZERO)),
        usage,
    };
    let speed = args.speed.or(file.speed).unwrap_or(1.0);
    let entries = match &replay {
        Some(path) => match replay_entries(path, usage) {
            Ok(e) => e,
            Err(e) => {
                errors.push(e);
                Vec::new()
            }
        },
        None if file.replies.is_empty() => vec![Entry::Synth(synth.clone())],
        None => file
            .replies
            .iter()
            .map(|r| entry(r, &synth, usage))
            .collect(),
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut faults = file.faults;
    faults.extend(args.fault_rules());
    let listen = args
        .listen
        .or(file.listen)
        .unwrap_or_else(|| DEFAULT_LISTEN.parse().unwrap_or_else(|_| unreachable!()));
    Ok(MockPlan {
        listen,
        threads: args.threads.or(file.threads),
        journal: args.journal.or(file.journal).unwrap_or(DEFAULT_JOURNAL),
        answers: Answers {
            entries,
            faults,
            seed: args.seed.or(file.seed).unwrap_or(0),
            speed,
        },
        control_stdin: args.control_stdin,
    })
}

fn entry(spec: &ReplySpec, synth: &Synth, usage: bool) -> Entry {
    match spec {
        ReplySpec::Synth(k) => Entry::Synth(Synth {
            tokens: k.tokens.unwrap_or(synth.tokens),
            ttft: k.ttft.unwrap_or(synth.ttft),
            itl: k.itl.unwrap_or(synth.itl),
            usage: k.usage.unwrap_or(usage),
        }),
        ReplySpec::Turn(turn, own_usage) => {
            let recorded = match &turn.body {
                crate::scenario::build::TurnBody::Recording(r) => Some(r.wire),
                _ => None,
            };
            let on = |w: Wire| (recorded.is_none() || recorded == Some(w)).then(|| turn.reply(w));
            Entry::Fixed {
                openai: on(Wire::OpenAi),
                anthropic: on(Wire::Anthropic),
                usage: own_usage.unwrap_or(usage),
            }
        }
    }
}

/// The recordings at `path` (a file, or every `*.sse` under a directory),
/// each played on its own wire with its timing.
fn replay_entries(path: &Path, usage: bool) -> Result<Vec<Entry>, String> {
    let mut files = Vec::new();
    if path.is_dir() {
        collect_sse(path, &mut files).map_err(|e| format!("--replay {}: {e}", path.display()))?;
        files.sort();
        if files.is_empty() {
            return Err(format!(
                "--replay {}: no .sse recordings in this directory",
                path.display()
            ));
        }
    } else {
        files.push(path.to_path_buf());
    }
    let mut entries = Vec::with_capacity(files.len());
    for f in files {
        let rec = Recording::load(&f).map_err(|e| format!("--replay: {e}"))?;
        let reply: Reply = rec.reply();
        let (openai, anthropic) = match rec.wire {
            Wire::OpenAi => (Some(reply), None),
            Wire::Anthropic => (None, Some(reply)),
        };
        entries.push(Entry::Fixed {
            openai,
            anthropic,
            usage,
        });
    }
    Ok(entries)
}

fn collect_sse(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            collect_sse(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "sse") {
            out.push(p);
        }
    }
    Ok(())
}

/// `sluice mock`: exit 0 after a signal (or the end of stdin with
/// `--control-stdin`), 2 on a bad flag or config, 1 if it cannot listen.
pub fn run(args: &MockArgs) -> ExitCode {
    let plan = match plan(args) {
        Ok(p) => p,
        Err(errors) => {
            for e in errors {
                eprintln!("error: {e}");
            }
            return ExitCode::from(2);
        }
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = plan.threads {
        rt.worker_threads(n);
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = rt.block_on(serve(plan));
    // Connections still open (a stalled stream) are not waited for.
    rt.shutdown_timeout(Duration::from_millis(100));
    code
}

async fn serve(plan: MockPlan) -> ExitCode {
    let stop = Stop::listen();
    let responder = Arc::new(MockResponder::new(plan.answers));
    let mock = match MockProvider::serve(plan.listen, responder.clone()).await {
        Ok(m) => m,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", plan.listen);
            return ExitCode::FAILURE;
        }
    };
    let journal = mock.journal();
    journal.keep_last(plan.journal);
    {
        let mut out = std::io::stdout().lock();
        if writeln!(out, "{}", mock.addr())
            .and_then(|()| out.flush())
            .is_err()
        {
            return ExitCode::FAILURE;
        }
    }
    eprintln!(
        "sluice mock: listening on http://{addr}/v1 (POST /v1/chat/completions, POST /v1/messages; GET /mock/stats)",
        addr = mock.addr()
    );
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    if plan.control_stdin {
        let journal = journal.clone();
        // Blocking reads of stdin: a thread of its own, which ends with
        // the process.
        std::thread::spawn(move || {
            control(&journal);
            let _ = done_tx.send(());
        });
    } else {
        drop(done_tx);
    }
    stop.wait(done_rx).await;
    drop(mock);
    eprintln!("{}", responder.stats.summary());
    ExitCode::SUCCESS
}

/// SIGINT and SIGTERM, listened for from before the address is printed,
/// so that a signal sent as soon as the mock answers is not missed.
struct Stop {
    int: Option<tokio::signal::unix::Signal>,
    term: Option<tokio::signal::unix::Signal>,
}

impl Stop {
    fn listen() -> Stop {
        use tokio::signal::unix::{SignalKind, signal};
        Stop {
            int: signal(SignalKind::interrupt()).ok(),
            term: signal(SignalKind::terminate()).ok(),
        }
    }

    /// Returns on SIGINT, SIGTERM or when `done` fires.
    async fn wait(mut self, done: tokio::sync::oneshot::Receiver<()>) {
        async fn recv(s: &mut Option<tokio::signal::unix::Signal>) {
            match s {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        }
        tokio::select! {
            () = recv(&mut self.int) => {}
            () = recv(&mut self.term) => {}
            Ok(()) = done => {}
        }
    }
}

/// `--control-stdin`: `journal` prints one JSON line per request kept,
/// then `end`; `quit` or the end of input stops the mock, so it never
/// outlives the process driving it.
fn control(journal: &Journal) {
    let clock = Clock::new();
    let mut stdout = std::io::stdout().lock();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        match line.trim() {
            "journal" => {
                if dump_journal(journal, &clock, &mut stdout).is_err() {
                    break;
                }
            }
            "quit" => break,
            "" => {}
            other => {
                let _ = writeln!(stdout, "error: unknown command {other:?}");
                let _ = stdout.flush();
            }
        }
    }
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock `std::time::Instant`
/// reads on Linux, shared by every process of the machine.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Converts the journal's instants to CLOCK_MONOTONIC nanoseconds.
struct Clock {
    base: tokio::time::Instant,
    base_ns: u64,
}

impl Clock {
    fn new() -> Clock {
        Clock {
            base: tokio::time::Instant::now(),
            base_ns: monotonic_ns(),
        }
    }

    fn ns(&self, t: Option<tokio::time::Instant>) -> serde_json::Value {
        match t {
            Some(t) if t >= self.base => {
                serde_json::json!(self.base_ns + (t - self.base).as_nanos() as u64)
            }
            Some(t) => serde_json::json!(self.base_ns - (self.base - t).as_nanos() as u64),
            None => serde_json::Value::Null,
        }
    }
}

/// One JSON line per request kept (`i`: its arrival index; times in
/// CLOCK_MONOTONIC nanoseconds, comparable across the machine's
/// processes), then `end`.
fn dump_journal(journal: &Journal, clock: &Clock, out: &mut impl Write) -> std::io::Result<()> {
    let first = journal.first_kept();
    for (i, r) in (first..).zip(journal.requests().iter()) {
        let line = serde_json::json!({
            "i": i,
            "connection": r.connection,
            "events_sent": r.events_sent,
            "bytes_sent": r.bytes_sent,
            "received_at_ns": clock.ns(Some(r.received_at)),
            "headers_sent_at_ns": clock.ns(r.headers_sent_at),
            "last_event_at_ns": clock.ns(r.last_event_at),
            "client_closed_at_ns": clock.ns(r.client_closed_at),
            "completed_at_ns": clock.ns(r.completed_at),
            "connection_closed_at_ns": clock.ns(r.connection_closed_at),
            "max_tokens": r.body.get("max_tokens"),
        });
        writeln!(out, "{line}")?;
    }
    writeln!(out, "end")?;
    out.flush()
}
