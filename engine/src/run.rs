//! Running one request: call the provider, enforce the deadlines and the
//! token ceiling, and turn the upstream chunks into client [`Event`]s.
//!
//! A request runs in its own task. Until the first upstream chunk arrives
//! nothing has been sent to the client, so a failure is still an HTTP
//! status ([`Admission::Rejected`]); from the first chunk on, the task
//! *commits* ([`Admission::Streaming`]) and every failure becomes an `error`
//! event followed by `done`.
//!
//! Cancellation is by ownership: the upstream stream owns its connection,
//! and this task drops it the moment a deadline fires, the ceiling is
//! crossed, the client goes away (the event channel or the admission
//! channel closes) or the server is forced to stop.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, warn};

use crate::compile::Pipeline;
use crate::provider::{
    Chunk, ChunkStream, FinishReason, Message, ProviderError, ProviderRequest, Role, Usage,
};
use crate::tokens;

/// Capacity of the per-request event channel. Small on purpose: a slow
/// client slows the upstream read instead of growing a buffer.
const EVENT_BUFFER: usize = 16;

/// What a client asked for, validated.
#[derive(Debug, Clone)]
pub struct RunRequest {
    pub request_id: String,
    pub messages: Vec<Message>,
    pub max_tokens: Option<u32>,
}

/// Error codes of the `error` event and of error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ErrorCode {
    #[serde(rename = "timeout.connect")]
    TimeoutConnect,
    #[serde(rename = "timeout.first_token")]
    TimeoutFirstToken,
    #[serde(rename = "timeout.idle")]
    TimeoutIdle,
    #[serde(rename = "timeout.total")]
    TimeoutTotal,
    #[serde(rename = "upstream")]
    Upstream,
    #[serde(rename = "upstream_rate_limited")]
    UpstreamRateLimited,
    #[serde(rename = "token_ceiling")]
    TokenCeiling,
    #[serde(rename = "shutdown")]
    Shutdown,
    #[serde(rename = "internal")]
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TimeoutConnect => "timeout.connect",
            Self::TimeoutFirstToken => "timeout.first_token",
            Self::TimeoutIdle => "timeout.idle",
            Self::TimeoutTotal => "timeout.total",
            Self::Upstream => "upstream",
            Self::UpstreamRateLimited => "upstream_rate_limited",
            Self::TokenCeiling => "token_ceiling",
            Self::Shutdown => "shutdown",
            Self::Internal => "internal",
        }
    }

    pub fn is_timeout(self) -> bool {
        matches!(
            self,
            Self::TimeoutConnect | Self::TimeoutFirstToken | Self::TimeoutIdle | Self::TimeoutTotal
        )
    }
}

/// Token usage as reported to the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct UsageReport {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// True when counted by Sluice's tokenizer because the provider gave none.
    pub estimated: bool,
}

/// One thing to tell the client.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Start {
        request_id: String,
        pipeline: String,
        provider: String,
        model: String,
    },
    Delta(String),
    Usage(UsageReport),
    Error {
        code: ErrorCode,
        message: String,
    },
    Done {
        finish_reason: String,
    },
    /// Nothing happened for a while; keeps proxies from closing the stream.
    KeepAlive,
}

/// A failure before anything was sent to the client.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub code: ErrorCode,
    pub message: String,
    /// The provider's HTTP status, when it answered with one.
    pub upstream_status: Option<u16>,
    pub retry_after: Option<Duration>,
}

/// The outcome of the first phase of a request.
#[derive(Debug)]
pub enum Admission {
    Streaming(mpsc::Receiver<Event>),
    Rejected(Rejection),
}

/// Shared by all requests of a server.
#[derive(Clone)]
pub struct RunContext {
    pub keepalive: Duration,
    /// Cancelled when open streams must end now (shutdown grace is over).
    pub force_stop: CancellationToken,
    pub tracker: tokio_util::task::TaskTracker,
}

/// Starts a request in its own task; the receiver resolves once the request
/// is admitted (first upstream chunk) or rejected. Dropping the receiver
/// before that cancels the request.
pub fn spawn(
    cx: &RunContext,
    pipeline: Arc<Pipeline>,
    req: RunRequest,
) -> oneshot::Receiver<Admission> {
    let (tx, rx) = oneshot::channel();
    // Its own root span with the request id, so every line of the run (in
    // JSON logs too, which show only the innermost span) names the request.
    let span = tracing::info_span!(parent: None, "request", id = %req.request_id, pipeline = %pipeline.name);
    let cx2 = cx.clone();
    cx.tracker
        .spawn(async move { run(cx2, pipeline, req, tx).await }.instrument(span));
    rx
}

/// How a request ended, for the log line (and, later, the ledger).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Timeout,
    ClientClosed,
    UpstreamError,
    Ceiling,
    Interrupted,
    Internal,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Timeout => "timeout",
            Self::ClientClosed => "client_closed",
            Self::UpstreamError => "upstream_error",
            Self::Ceiling => "ceiling",
            Self::Interrupted => "interrupted",
            Self::Internal => "internal",
        }
    }
}

struct Tally {
    started: Instant,
    first_token_at: Option<Instant>,
    completion_counted: u64,
    provider_usage: Option<Usage>,
    prompt: Vec<Message>,
}

impl Tally {
    fn usage(&self) -> UsageReport {
        match self.provider_usage {
            Some(u) => UsageReport {
                prompt_tokens: u.prompt_tokens,
                completion_tokens: u.completion_tokens,
                total_tokens: u.prompt_tokens + u.completion_tokens,
                estimated: false,
            },
            None => {
                let prompt = tokens::count_prompt(&self.prompt);
                UsageReport {
                    prompt_tokens: prompt,
                    completion_tokens: self.completion_counted,
                    total_tokens: prompt + self.completion_counted,
                    estimated: true,
                }
            }
        }
    }

    fn log_end(&self, status: Status, finish: &str, error: Option<ErrorCode>) {
        let usage = self.usage();
        let ttft_ms = self
            .first_token_at
            .map(|t| t.duration_since(self.started).as_secs_f64() * 1000.0);
        info!(
            status = status.as_str(),
            finish_reason = finish,
            error = error.map(ErrorCode::as_str),
            prompt_tokens = usage.prompt_tokens,
            completion_tokens = usage.completion_tokens,
            estimated = usage.estimated,
            ttft_ms,
            duration_ms = self.started.elapsed().as_secs_f64() * 1000.0,
            "request finished"
        );
    }
}

fn rejection_for(e: &ProviderError) -> Rejection {
    let (code, upstream_status, retry_after) = match e {
        ProviderError::ConnectTimeout(_) => (ErrorCode::TimeoutConnect, None, None),
        ProviderError::Status {
            status: 429,
            retry_after,
            ..
        } => (ErrorCode::UpstreamRateLimited, Some(429), *retry_after),
        ProviderError::Status {
            status,
            retry_after,
            ..
        } => (ErrorCode::Upstream, Some(*status), *retry_after),
        ProviderError::Config(_) => (ErrorCode::Internal, None, None),
        _ => (ErrorCode::Upstream, None, None),
    };
    let message = match e {
        // Configuration problems are ours, not the client's: keep the
        // detail in the log.
        ProviderError::Config(_) => {
            "the provider of this pipeline is not configured correctly".into()
        }
        other => other.to_string(),
    };
    Rejection {
        code,
        message,
        upstream_status,
        retry_after,
    }
}

async fn run(
    cx: RunContext,
    pipeline: Arc<Pipeline>,
    req: RunRequest,
    mut admit: oneshot::Sender<Admission>,
) {
    let t = pipeline.timeouts;
    let started = Instant::now();
    let total_deadline = started + t.total;
    let first_deadline = (started + t.first_token).min(total_deadline);

    let mut prompt = Vec::with_capacity(req.messages.len() + 1);
    if let Some(system) = &pipeline.system {
        prompt.push(Message {
            role: Role::System,
            content: system.clone(),
        });
    }
    prompt.extend(req.messages);
    let max_tokens = req
        .max_tokens
        .map_or(pipeline.max_tokens, |m| m.min(pipeline.max_tokens));
    let preq = ProviderRequest {
        model: pipeline.model.clone(),
        messages: prompt.clone(),
        temperature: pipeline.temperature,
        max_tokens,
        connect_timeout: t.connect.min(t.first_token),
    };
    let mut tally = Tally {
        started,
        first_token_at: None,
        completion_counted: 0,
        provider_usage: None,
        prompt,
    };
    debug!(model = %pipeline.model, max_tokens, "calling provider");

    // Phase 1: nothing sent yet. Wait for the first chunk.
    let first = async {
        let mut stream = pipeline.provider.call(preq).await?;
        match stream.next().await {
            Some(Ok(chunk)) => Ok((stream, chunk)),
            Some(Err(e)) => Err(e),
            None => Err(ProviderError::Truncated),
        }
    };
    let phase1 = tokio::select! {
        biased;
        _ = admit.closed() => {
            tally.log_end(Status::ClientClosed, "cancelled", None);
            return;
        }
        _ = cx.force_stop.cancelled() => Err(Rejection {
            code: ErrorCode::Shutdown,
            message: "the server is shutting down".into(),
            upstream_status: None,
            retry_after: None,
        }),
        r = tokio::time::timeout_at(first_deadline, first) => match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                warn!(error = %e, source = ?e.source_kind(), "provider call failed before the first token");
                Err(rejection_for(&e))
            }
            Err(_) => Err(Rejection {
                code: ErrorCode::TimeoutFirstToken,
                message: format!("no token from the provider within {}", humantime::format_duration(t.first_token)),
                upstream_status: None,
                retry_after: None,
            }),
        },
    };
    let (stream, first_chunk) = match phase1 {
        Ok(v) => v,
        Err(rejection) => {
            let status = if rejection.code.is_timeout() {
                Status::Timeout
            } else {
                Status::UpstreamError
            };
            tally.log_end(status, "error", Some(rejection.code));
            let _ = admit.send(Admission::Rejected(rejection));
            return;
        }
    };
    tally.first_token_at = Some(Instant::now());

    // Phase 2: committed.
    let (tx, rx) = mpsc::channel(EVENT_BUFFER);
    if admit.send(Admission::Streaming(rx)).is_err() {
        tally.log_end(Status::ClientClosed, "cancelled", None);
        return;
    }
    let mut out = Out {
        tx,
        total_deadline,
        keepalive: cx.keepalive,
    };
    let start = Event::Start {
        request_id: req.request_id.clone(),
        pipeline: pipeline.name.clone(),
        provider: pipeline.provider_name.clone(),
        model: pipeline.model.clone(),
    };
    let ending = match out.send(start).await {
        Err(()) => Ending::ClientClosed,
        Ok(()) => {
            stream_body(
                &cx,
                &pipeline,
                stream,
                first_chunk,
                max_tokens,
                &mut out,
                &mut tally,
                t.idle,
            )
            .await
        }
    };
    // The upstream stream was dropped inside `stream_body`: the provider
    // connection is closed before the client hears the ending.
    match ending {
        Ending::ClientClosed => tally.log_end(Status::ClientClosed, "cancelled", None),
        Ending::Finished(reason) => {
            let _ = out.send(Event::Usage(tally.usage())).await;
            let _ = out
                .send(Event::Done {
                    finish_reason: reason.clone(),
                })
                .await;
            tally.log_end(Status::Ok, &reason, None);
        }
        Ending::Failed {
            code,
            message,
            finish,
        } => {
            let status = match code {
                c if c.is_timeout() => Status::Timeout,
                ErrorCode::TokenCeiling => Status::Ceiling,
                ErrorCode::Shutdown => Status::Interrupted,
                ErrorCode::Internal => Status::Internal,
                _ => Status::UpstreamError,
            };
            let _ = out.send(Event::Usage(tally.usage())).await;
            let _ = out.send(Event::Error { code, message }).await;
            let _ = out
                .send(Event::Done {
                    finish_reason: finish.to_string(),
                })
                .await;
            tally.log_end(status, finish, Some(code));
        }
    }
}

enum Ending {
    Finished(String),
    Failed {
        code: ErrorCode,
        message: String,
        finish: &'static str,
    },
    ClientClosed,
}

/// The client side of the stream: sends events, bounded by the total
/// deadline, and emits keep-alives while nothing else is sent.
struct Out {
    tx: mpsc::Sender<Event>,
    total_deadline: Instant,
    keepalive: Duration,
}

impl Out {
    /// Err when the client is gone (or so slow that the total deadline
    /// passed while we waited for it).
    async fn send(&mut self, ev: Event) -> Result<(), ()> {
        match tokio::time::timeout_at(
            self.total_deadline + Duration::from_secs(1),
            self.tx.send(ev),
        )
        .await
        {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn stream_body(
    cx: &RunContext,
    pipeline: &Pipeline,
    mut stream: ChunkStream,
    first: Chunk,
    max_tokens: u32,
    out: &mut Out,
    tally: &mut Tally,
    idle: Duration,
) -> Ending {
    let max_tokens = u64::from(max_tokens);
    let mut finish: Option<FinishReason> = None;
    let mut next = Some(first);
    let mut last_chunk_at = Instant::now();
    let mut keepalive_at = Instant::now() + out.keepalive;
    loop {
        let chunk = match next.take() {
            Some(c) => c,
            None => {
                let idle_deadline = last_chunk_at + idle;
                let deadline = idle_deadline.min(out.total_deadline);
                tokio::select! {
                    biased;
                    _ = out.tx.closed() => return Ending::ClientClosed,
                    _ = cx.force_stop.cancelled() => {
                        drop(stream);
                        return Ending::Failed {
                            code: ErrorCode::Shutdown,
                            message: "the server is shutting down".into(),
                            finish: "error",
                        };
                    }
                    _ = tokio::time::sleep_until(deadline) => {
                        drop(stream);
                        if let Some(reason) = finish {
                            // The answer is complete; only the usage chunk
                            // or the terminator is missing.
                            debug!("upstream silent after finishing; usage will be estimated");
                            return Ending::Finished(reason.as_str().to_string());
                        }
                        let (code, what, d) = if deadline == out.total_deadline {
                            (ErrorCode::TimeoutTotal, "the request", pipeline.timeouts.total)
                        } else {
                            (ErrorCode::TimeoutIdle, "the provider was silent for", idle)
                        };
                        let message = if code == ErrorCode::TimeoutTotal {
                            format!("{what} took longer than {}", humantime::format_duration(d))
                        } else {
                            format!("{what} {}", humantime::format_duration(d))
                        };
                        return Ending::Failed { code, message, finish: "error" };
                    }
                    _ = tokio::time::sleep_until(keepalive_at) => {
                        if out.send(Event::KeepAlive).await.is_err() {
                            return Ending::ClientClosed;
                        }
                        keepalive_at = Instant::now() + out.keepalive;
                        continue;
                    }
                    item = stream.next() => match item {
                        Some(Ok(c)) => c,
                        Some(Err(ProviderError::Truncated)) | None if finish.is_some() => {
                            debug!("upstream ended without usage or terminator after finishing");
                            return Ending::Finished(finish.map(|f| f.as_str().to_string()).unwrap_or_default());
                        }
                        None => {
                            return Ending::Failed {
                                code: ErrorCode::Upstream,
                                message: ProviderError::Truncated.to_string(),
                                finish: "error",
                            };
                        }
                        Some(Err(e)) => {
                            drop(stream);
                            warn!(error = %e, source = ?e.source_kind(), "provider stream failed");
                            return Ending::Failed {
                                code: ErrorCode::Upstream,
                                message: e.to_string(),
                                finish: "error",
                            };
                        }
                    },
                }
            }
        };
        last_chunk_at = Instant::now();
        match chunk {
            Chunk::Delta(text) => {
                if finish.is_some() {
                    continue;
                }
                let n = tokens::count(&text);
                if tally.completion_counted + n > max_tokens {
                    // The provider went past max_tokens: stop it here.
                    drop(stream);
                    let allowed = max_tokens - tally.completion_counted;
                    if allowed > 0 {
                        let cut = tokens::truncate(&text, allowed);
                        tally.completion_counted += tokens::count(&cut);
                        if !cut.is_empty() && out.send(Event::Delta(cut)).await.is_err() {
                            return Ending::ClientClosed;
                        }
                    }
                    warn!(
                        max_tokens,
                        "provider streamed past the token ceiling; stream cut"
                    );
                    return Ending::Failed {
                        code: ErrorCode::TokenCeiling,
                        message: format!(
                            "the provider went past the ceiling of {max_tokens} completion tokens; the stream was cut"
                        ),
                        finish: "length",
                    };
                }
                tally.completion_counted += n;
                if out.send(Event::Delta(text)).await.is_err() {
                    return Ending::ClientClosed;
                }
                keepalive_at = Instant::now() + out.keepalive;
            }
            Chunk::ToolCallDelta { .. } => {
                debug!("ignoring a tool call: this pipeline declares no tools");
            }
            Chunk::Finish(reason) => finish = Some(reason),
            Chunk::Usage(u) => tally.provider_usage = Some(u),
            Chunk::End => {
                drop(stream);
                return match finish {
                    Some(reason) => Ending::Finished(reason.as_str().to_string()),
                    None => Ending::Failed {
                        code: ErrorCode::Upstream,
                        message: "the provider ended the stream without a finish reason".into(),
                        finish: "error",
                    },
                };
            }
        }
    }
}
