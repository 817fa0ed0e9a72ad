//! Runs one scenario: its own current-thread tokio runtime (clock paused
//! unless the scenario or the run asks for real time), an in-process mock
//! provider playing the scenario's turns, an in-process Sluice server
//! (`storage: memory`) in front of it, one client request; then the upstream
//! close, the ledger row and the request bodies the mock received.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use sluice_testkit::{Journal, MockProvider, RecordedRequest, Script, ToolResult, Wire};
use tokio::time::Instant;

use super::api::{self, Api};
use super::build::{Clock, Scenario};
use super::client::{self, Response};
use super::pipeline::PipelineSource;
use super::settle;
use crate::compile::Timeouts;
use crate::ledger::report::Row;
use crate::serve::RunningServer;

/// The `X-Request-Id` the client sends, and so the ledger row's id.
pub const REQUEST_ID: &str = "sluice-scenario";

/// How long the runner waits for the last model call's connection to close.
const CLOSE_WAIT: Duration = Duration::from_secs(60);

/// How long it waits when the mock completed the last reply. Sluice then
/// either closed the connection before it reported the ending, or keeps it
/// open for the provider's next call; a short wait tells the two apart, and
/// a scenario on the real clock does not sit out [`CLOSE_WAIT`].
const KEPT_WAIT: Duration = Duration::from_millis(250);

/// Where providers point while the runner only looks for the pipeline.
const PLACEHOLDER_URL: &str = "http://127.0.0.1:9/v1";

/// How scenarios run.
#[derive(Debug, Clone, Copy)]
pub struct RunOptions {
    /// Run every scenario on the real clock.
    pub real_time: bool,
    /// Most real time one scenario may take reading its response.
    pub wall_limit: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            real_time: false,
            wall_limit: Duration::from_secs(30),
        }
    }
}

/// One model call as the mock saw it; times are since the client's request.
#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamCall {
    pub path: String,
    pub body: Value,
    pub received_at: Duration,
    pub events_sent: usize,
    pub bytes_sent: usize,
    pub last_event_at: Option<Duration>,
    /// When Sluice closed the connection, if it did.
    pub closed_at: Option<Duration>,
    pub completed: bool,
    /// Tool results the request carried back to the model.
    pub tool_results: Vec<ToolResult>,
}

/// The instant the upstream should have been closed at, and when it was.
#[derive(Debug, Clone, PartialEq)]
pub struct Closing {
    /// What the reference instant is, e.g. "the idle deadline (5s after the
    /// last upstream event)".
    pub reference: String,
    pub reference_at: Duration,
    /// When the mock saw Sluice close the last call's connection.
    pub closed_at: Option<Duration>,
    /// The mock closed the connection itself (a disconnect fault).
    pub by_mock: bool,
    /// The last call's reply completed and its connection was still open
    /// when the runner stopped waiting: Sluice keeps a connection whose
    /// stream ended cleanly for the provider's next call.
    pub kept_alive: bool,
    /// The reference is a deadline (closing before it is a failure); else
    /// it is when the client saw the ending, which Sluice reports only
    /// after it closed the upstream.
    pub deadline: bool,
}

/// Everything a scenario's expectations are checked against.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    pub response: Response,
    pub upstream: Vec<UpstreamCall>,
    pub closing: Option<Closing>,
    pub ledger: Option<Row>,
    /// Setup or harness problems: the scenario could not be run as written.
    pub problems: Vec<String>,
    /// The wire the mock spoke.
    pub wire: Option<Wire>,
    /// The route the client called.
    pub api: Api,
}

impl Outcome {
    /// The error code the client saw, as its API gives it
    /// ([`api::error_code`]).
    pub fn error_code(&self) -> Option<String> {
        api::error_code(self.api, &self.response)
    }

    /// Sluice's own error code (`timeout.idle`, ...): what the client saw,
    /// but for `/v1/messages`, whose errors carry only Anthropic's type
    /// (`timeout_error`), the ledger row's.
    pub fn sluice_error_code(&self) -> Option<String> {
        match self.api {
            Api::Messages => self.ledger.as_ref().and_then(|r| r.error_code.clone()),
            _ => self.error_code(),
        }
    }
}

/// Runs `scenario` on a runtime of its own, on this thread.
pub fn run(scenario: &Scenario, opts: RunOptions) -> Outcome {
    let real = opts.real_time || scenario.clock == Clock::Real;
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_all();
    // Parks in which loopback traffic had not settled and the clock moved on.
    let unsettled = Arc::new(AtomicUsize::new(0));
    if !real {
        builder.start_paused(true);
        // Before every park (where the paused clock may jump), wait until
        // what the tasks wrote has reached the other ends: see `settle`.
        let unsettled = unsettled.clone();
        builder.on_thread_park(move || settle::wait(&unsettled));
    }
    let rt = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            return Outcome {
                problems: vec![format!("cannot start a tokio runtime: {e}")],
                ..Outcome::default()
            };
        }
    };
    let outcome = rt.block_on(async {
        match tokio::time::timeout(scenario.limit, run_async(scenario, opts, real)).await {
            Ok(o) => o,
            Err(_) => Outcome {
                problems: vec![format!(
                    "the scenario did not finish within its limit of {}",
                    humantime::format_duration(scenario.limit)
                )],
                ..Outcome::default()
            },
        }
    });
    // Connection tasks still parked on the runtime are dropped with it.
    rt.shutdown_background();
    let mut outcome = outcome;
    let n = unsettled.load(Ordering::Relaxed);
    if n > 0 {
        outcome.problems.push(format!(
            "loopback traffic did not settle within {} of real time ({n} times), so virtual time moved on without it: this run may not be reproducible",
            humantime::format_duration(settle::LIMIT)
        ));
    }
    outcome
}

async fn run_async(scenario: &Scenario, opts: RunOptions, real: bool) -> Outcome {
    let mut outcome = Outcome {
        api: scenario.api,
        ..Outcome::default()
    };
    let source = match PipelineSource::read(&scenario.pipelines_dir) {
        Ok(s) => s,
        Err(diags) => {
            outcome.problems = diags.iter().map(ToString::to_string).collect();
            return outcome;
        }
    };
    // Compiled once against a placeholder URL to find the pipeline and the
    // wire its provider speaks: its own, else the scenario's, else OpenAI.
    let replay_wire = scenario.wire.unwrap_or(Wire::OpenAi);
    let probe = match source.catalog(PLACEHOLDER_URL, replay_wire) {
        Ok(c) => c,
        Err(diags) => {
            outcome.problems = diags
                .iter()
                .filter(|d| d.is_error())
                .map(ToString::to_string)
                .collect();
            return outcome;
        }
    };
    let Some(pipeline) = probe.pipelines.get(&scenario.pipeline).cloned() else {
        let known: Vec<&str> = probe.pipelines.keys().map(String::as_str).collect();
        outcome.problems.push(format!(
            "no pipeline named \"{}\" in {}, expected one of: {}",
            scenario.pipeline,
            scenario.pipelines_dir.display(),
            known.join(", ")
        ));
        return outcome;
    };
    let kind = source
        .provider_kind(&pipeline.provider_name)
        .unwrap_or("replay");
    let wire = PipelineSource::wire_of(kind, replay_wire);
    if let Some(w) = scenario.wire
        && w != wire
    {
        outcome.problems.push(format!(
            "pipeline \"{}\" calls provider \"{}\" of kind {kind}, which speaks {wire}, but the scenario's wire is {w}",
            pipeline.name, pipeline.provider_name
        ));
        return outcome;
    }
    outcome.wire = Some(wire);
    let script = Script {
        responses: scenario.turns.iter().map(|t| t.reply(wire)).collect(),
    };
    let mock = match MockProvider::start_paced(script, Arc::new(super::settle::read_by_peer)).await
    {
        Ok(m) => m,
        Err(e) => {
            outcome
                .problems
                .push(format!("cannot start the mock provider: {e}"));
            return outcome;
        }
    };
    let catalog = match source.catalog(&mock.base_url(), wire) {
        Ok(c) => source.with_key(c, &mock.base_url(), wire),
        Err(diags) => {
            outcome.problems = diags.iter().map(ToString::to_string).collect();
            return outcome;
        }
    };
    let timeouts = pipeline.timeouts;
    let server = match RunningServer::start(catalog, SocketAddr::from(([127, 0, 0, 1], 0))).await {
        Ok(s) => s,
        Err(e) => {
            outcome
                .problems
                .push(format!("cannot start the server: {e}"));
            return outcome;
        }
    };
    let ledger = server.ledger();
    let journal = mock.journal();
    let t0 = Instant::now();
    let path = scenario.api.path(&scenario.pipeline);
    let wall_limit = if real {
        opts.wall_limit.max(scenario.limit)
    } else {
        opts.wall_limit
    };
    outcome.response = client::exchange(
        server.addr,
        scenario.api,
        &path,
        &scenario.request,
        &scenario.client,
        t0,
        wall_limit,
    )
    .await;
    if let Some(p) = &outcome.response.problem {
        outcome.problems.push(p.clone());
    }
    // Let the last model call end: Sluice closes it, or the mock does.
    let calls = journal.request_count();
    let mut last_close = None;
    if calls > 0 {
        let last = calls - 1;
        let completed = || {
            journal
                .request(last)
                .is_some_and(|r| r.completed_at.is_some())
        };
        let waited_from = Instant::now();
        // Sluice closes within milliseconds; waiting longer only tells a
        // connection left open from one closed late.
        let bound = CLOSE_WAIT.min(scenario.limit / 2);
        let first = KEPT_WAIT.min(bound);
        let mut closed = journal.wait_closed(last, first).await;
        let mut timed_out = closed.is_none() && waited_from.elapsed() >= first;
        if timed_out && !completed() {
            closed = journal.wait_closed(last, bound - first).await;
            timed_out = closed.is_none() && waited_from.elapsed() >= bound;
        }
        // `wait_closed` answers `None` at once when the mock closed it.
        let by_mock = closed.is_none() && !timed_out;
        let kept_alive = timed_out && completed();
        last_close = journal
            .request(last)
            .map(|rec| (rec, closed, by_mock, kept_alive));
    }
    server.stop().await;
    match ledger.row(REQUEST_ID).await {
        Ok(row) => outcome.ledger = row,
        Err(e) => outcome
            .problems
            .push(format!("cannot read the ledger: {e}")),
    }
    // After the ledger: on `/v1/messages` it names the deadline that fired.
    outcome.closing = last_close.map(|(rec, closed, by_mock, kept_alive)| Closing {
        closed_at: closed.map(|t| t.duration_since(t0)),
        by_mock,
        kept_alive,
        ..reference(&outcome, &rec, timeouts, t0)
    });
    outcome.upstream = calls_of(&journal, t0);
    outcome
}

fn since(t: Instant, t0: Instant) -> Duration {
    t.saturating_duration_since(t0)
}

fn calls_of(journal: &Journal, t0: Instant) -> Vec<UpstreamCall> {
    journal
        .requests()
        .into_iter()
        .map(|r| UpstreamCall {
            tool_results: r.tool_results(),
            closed_at: r.closed_at().map(|t| since(t, t0)),
            completed: r.completed_at.is_some(),
            path: r.path,
            body: r.body,
            received_at: since(r.received_at, t0),
            events_sent: r.events_sent,
            bytes_sent: r.bytes_sent,
            last_event_at: r.last_event_at.map(|t| since(t, t0)),
        })
        .collect()
}

/// The instant that ended the request: the deadline that fired, the client
/// leaving, or else when Sluice reported the ending to the client.
fn reference(outcome: &Outcome, rec: &RecordedRequest, t: Timeouts, t0: Instant) -> Closing {
    let fmt = |d: Duration| humantime::format_duration(d).to_string();
    let code = outcome.sluice_error_code();
    let deadline = outcome.response.disconnected_at.is_none()
        && code.as_deref().is_some_and(|c| c.starts_with("timeout."));
    let (reference, at) = if let Some(left) = outcome.response.disconnected_at {
        ("the client leaving".to_owned(), left)
    } else {
        match code.as_deref() {
            // From the client's request: the call starts a little later,
            // so the real deadline is never before this one.
            Some("timeout.first_token") => (
                format!("the first_token deadline ({})", fmt(t.first_token)),
                t.first_token,
            ),
            Some("timeout.idle") => (
                format!(
                    "the idle deadline ({} after the last upstream event)",
                    fmt(t.idle)
                ),
                rec.idle_deadline(t.idle)
                    .map_or(Duration::ZERO, |d| since(d, t0)),
            ),
            Some("timeout.total") => (format!("the total deadline ({})", fmt(t.total)), t.total),
            Some("timeout.connect") => (
                format!("the connect deadline ({})", fmt(t.connect)),
                t.connect,
            ),
            _ => {
                let reported = api::ending(outcome.api, &outcome.response)
                    .map_or(outcome.response.ended_at, |e| e.at);
                ("Sluice reporting the ending".to_owned(), reported)
            }
        }
    };
    Closing {
        reference,
        reference_at: at,
        closed_at: None,
        by_mock: false,
        kept_alive: false,
        deadline,
    }
}
