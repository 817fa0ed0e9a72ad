//! `sluice-mock`: the testkit's mock provider as a standalone process, for
//! load benchmarks (`benches/src/bin/load.rs`) and manual experiments.
//!
//! ```text
//! sluice-mock [--listen 127.0.0.1:0] [--tokens 64] [--gap-ms 0] [--usage]
//!             [--stall-after N] [--tool-pairs N] [--threads N] [--control-stdin]
//! ```
//!
//! Every request to `…/chat/completions` is answered with a synthesized
//! OpenAI stream ([`Reply::text`]): a role chunk, `--tokens` content chunks
//! of one o200k token each, a `finish_reason: "stop"` chunk, the usage chunk
//! (only with `--usage`) and `data: [DONE]`, with `--gap-ms` milliseconds
//! before each event. `--stall-after N` goes silent forever after N events
//! (until the client closes), to measure how fast a gateway closes its
//! upstream after a deadline or a client disconnect.
//!
//! `--tool-pairs N` scripts N pairs instead: the first request of each pair
//! is answered with a call to `lookup_order` (`{"order_id": 1}`), the second
//! with the text stream above, and requests past the N pairs with text. The
//! script is per request, not per conversation (the mock does not look at
//! the messages), so a gateway's tool loop gets "tool call, then text" only
//! when one conversation runs at a time: the load benchmark's soak drives
//! its tool loops from a single client for that reason. A conversation that
//! stops after the tool call shifts the pairs by one; the next one then gets
//! a plain answer and the one after it is back in step.
//!
//! The first line on stdout is the address it listens on (`127.0.0.1:PORT`).
//! It keeps the last `--journal-limit` requests (default 100,000) in its
//! journal, so a soak of millions of requests holds a bounded log.
//! With `--control-stdin`, it reads commands from stdin: `journal` prints
//! one JSON line per request kept (`i` is its arrival index) (times in CLOCK_MONOTONIC nanoseconds,
//! comparable across processes of the machine) followed by `end`; `quit`
//! or end of input exits, so the mock never outlives the process driving it.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use sluice_testkit::{Fault, Journal, MockProvider, Reply, Script};

/// Words that are one o200k token each (with their leading space), so the
/// gateway's own count matches the usage chunk.
const WORDS: &[&str] = &[
    " the", " quick", " brown", " fox", " jumps", " over", " a", " lazy", " dog", " and", " then",
    " it", " runs", " back", " to", " its", " home", " in", " time", " for", " dinner", " with",
    " friends", " who", " were", " waiting", " at", " table", " under", " old", " tree", " light",
];

struct Args {
    listen: SocketAddr,
    tokens: usize,
    gap: Duration,
    usage: bool,
    stall_after: Option<usize>,
    tool_pairs: Option<usize>,
    threads: Option<usize>,
    journal_limit: usize,
    control_stdin: bool,
}

const USAGE: &str = "usage: sluice-mock [--listen 127.0.0.1:0] [--tokens N] [--gap-ms MS] [--usage] \
[--stall-after N] [--tool-pairs N] [--threads N] [--journal-limit N] [--control-stdin]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        tokens: 64,
        gap: Duration::ZERO,
        usage: false,
        stall_after: None,
        tool_pairs: None,
        threads: None,
        journal_limit: 100_000,
        control_stdin: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--listen" => {
                let v = value("--listen")?;
                args.listen = v.parse().map_err(|e| format!("--listen {v:?}: {e}"))?;
            }
            "--tokens" => {
                let v = value("--tokens")?;
                args.tokens = v.parse().map_err(|e| format!("--tokens {v:?}: {e}"))?;
            }
            "--gap-ms" => {
                let v = value("--gap-ms")?;
                let ms: f64 = v.parse().map_err(|e| format!("--gap-ms {v:?}: {e}"))?;
                if !ms.is_finite() || ms < 0.0 {
                    return Err(format!("--gap-ms must be a number >= 0, found {v}"));
                }
                args.gap = Duration::from_secs_f64(ms / 1000.0);
            }
            "--usage" => args.usage = true,
            "--stall-after" => {
                let v = value("--stall-after")?;
                args.stall_after =
                    Some(v.parse().map_err(|e| format!("--stall-after {v:?}: {e}"))?);
            }
            "--tool-pairs" => {
                let v = value("--tool-pairs")?;
                args.tool_pairs = Some(v.parse().map_err(|e| format!("--tool-pairs {v:?}: {e}"))?);
            }
            "--threads" => {
                let v = value("--threads")?;
                let n: usize = v.parse().map_err(|e| format!("--threads {v:?}: {e}"))?;
                args.threads = Some(n.max(1));
            }
            "--journal-limit" => {
                let v = value("--journal-limit")?;
                let n: usize = v
                    .parse()
                    .map_err(|e| format!("--journal-limit {v:?}: {e}"))?;
                args.journal_limit = n.max(1);
            }
            "--control-stdin" => args.control_stdin = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    // MockProvider binds 127.0.0.1 on a port the system picks.
    if args.listen != SocketAddr::from(([127, 0, 0, 1], 0)) {
        return Err(format!(
            "--listen {}: only 127.0.0.1:0 is supported (the mock binds an ephemeral port on loopback and prints it)",
            args.listen
        ));
    }
    Ok(args)
}

fn reply(args: &Args) -> Reply {
    let words: Vec<&str> = (0..args.tokens).map(|i| WORDS[i % WORDS.len()]).collect();
    let mut reply = Reply::text(&words).pace(args.gap);
    if !args.usage {
        reply = reply.fault(Fault::OmitUsage);
    }
    if let Some(n) = args.stall_after {
        reply = reply.fault(Fault::StallAfter {
            events: n,
            duration: None,
        });
    }
    reply
}

/// The whole script: one reply for every request, or `--tool-pairs` pairs
/// of a tool call and a text reply (see the module's comment).
fn script(args: &Args) -> Script {
    let text = reply(args);
    let Some(pairs) = args.tool_pairs else {
        return Script::single(text);
    };
    let call = Reply::tool_call("call_soak_1", "lookup_order", r#"{"order_id": 1}"#);
    let mut responses = Vec::with_capacity(2 * pairs + 1);
    for _ in 0..pairs {
        responses.push(call.clone());
        responses.push(text.clone());
    }
    // The last reply repeats once the pairs run out: text, never a tool call.
    responses.push(text);
    Script { responses }
}

/// CLOCK_MONOTONIC now, in nanoseconds: the clock `std::time::Instant` reads
/// on Linux, shared by every process of the machine.
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

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("sluice-mock: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.threads {
        rt.worker_threads(n);
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice-mock: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let clock = Clock::new();
    let mock = match rt.block_on(MockProvider::start(script(&args))) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("sluice-mock: cannot listen: {e}");
            return ExitCode::FAILURE;
        }
    };
    mock.journal().keep_last(args.journal_limit);
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{}", mock.addr())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        return ExitCode::FAILURE;
    }
    if !args.control_stdin {
        // Serve until killed.
        drop(stdout);
        rt.block_on(std::future::pending::<()>());
        return ExitCode::SUCCESS;
    }
    let journal = mock.journal();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        match line.trim() {
            "journal" => {
                if dump_journal(&journal, &clock, &mut stdout).is_err() {
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
    drop(mock);
    rt.shutdown_timeout(Duration::from_millis(100));
    ExitCode::SUCCESS
}
