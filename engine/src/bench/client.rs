//! One benchmark request: its body for the OpenAI Chat Completions or the
//! Anthropic Messages API, sent with Sluice's own provider client
//! (`provider::http`: HTTP/1.1 keep-alive connections, plain or TLS, the
//! same SSE parser and stream decoders the gateway uses), and timed chunk
//! by chunk on tokio's clock (the real one in a run, the paused one in
//! tests, where scripted timings come out exact).

use std::time::Duration;

use futures_util::StreamExt;
use http::{HeaderName, HeaderValue, Uri};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::h2::H2;
use super::metrics::{Answer, CountedBy, Failure, Outcome};
use super::pipeline::PipelineDecoder;
use super::streamed::Streamed;
use super::workload::{Prompt, PromptContent};
use crate::provider::ProviderError;
use crate::provider::anthropic_wire::{self, AnthropicDecoder};
use crate::provider::http::{Decoder, Endpoint};
use crate::provider::openai_wire::{self, OpenAiDecoder};
use crate::provider::secrets::Secrets;

/// Which API the endpoint speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Api {
    /// OpenAI Chat Completions (`…/chat/completions`).
    Chat,
    /// Anthropic Messages (`…/messages`).
    Messages,
    /// Sluice's own pipeline API (`…/v1/pipelines/NAME`): the pipeline is
    /// in the path, so the model is not sent.
    Pipeline,
}

impl Api {
    /// From the URL's path: `…/chat/completions`, `…/messages` or
    /// `…/v1/pipelines/NAME`.
    pub fn detect(path: &str) -> Option<Api> {
        let path = path.trim_end_matches('/');
        if let Some((_, name)) = path.rsplit_once("/v1/pipelines/")
            && !name.is_empty()
            && !name.contains('/')
        {
            Some(Api::Pipeline)
        } else if path.ends_with("/chat/completions") {
            Some(Api::Chat)
        } else if path.ends_with("/messages") {
            Some(Api::Messages)
        } else {
            None
        }
    }

    /// From a URL's path (see [`Api::detect`]); `None` for a URL that does
    /// not parse.
    pub fn of_url(url: &str) -> Option<Api> {
        Api::detect(url.parse::<Uri>().ok()?.path())
    }

    pub fn name(self) -> &'static str {
        match self {
            Api::Chat => "chat",
            Api::Messages => "messages",
            Api::Pipeline => "pipeline",
        }
    }

    /// Its error bodies in words.
    fn summarize(self) -> fn(u16, &[u8]) -> String {
        match self {
            Api::Chat | Api::Pipeline => openai_wire::summarize_error_body,
            Api::Messages => anthropic_wire::summarize_error_body,
        }
    }

    /// The environment variable an API key is read from by default.
    pub fn key_env(self) -> &'static str {
        match self {
            Api::Chat => "OPENAI_API_KEY",
            Api::Messages => "ANTHROPIC_API_KEY",
            Api::Pipeline => "SLUICE_API_KEY",
        }
    }
}

/// Most bytes of a non-streamed answer.
const MAX_ANSWER: usize = 64 << 20;
/// Longest failure message kept.
const MAX_MESSAGE: usize = 300;

/// What `sluice bench` needs to build a [`Target`].
#[derive(Clone, Debug)]
pub struct TargetOptions {
    pub url: String,
    /// `None`: detected from the URL's path.
    pub api: Option<Api>,
    pub model: String,
    pub stream: bool,
    /// `Name: value` headers, sent with every request.
    pub headers: Vec<String>,
    /// Sent as `Authorization: Bearer` (chat, pipeline) or `x-api-key`
    /// (messages).
    pub api_key: Option<String>,
    /// Merged into every request body (e.g. `{"ignore_eos": true}`).
    pub extra_body: Option<Map<String, Value>>,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Idle connections kept for reuse: at least the concurrency.
    pub max_idle: usize,
    /// HTTP/2 without TLS (h2c, prior knowledge), up to
    /// [`super::h2::STREAMS_PER_CONN`] streams per connection; `http://`
    /// only. Otherwise HTTP/1.1, one connection per request in flight.
    pub http2: bool,
}

/// Where requests go and how they are made.
pub struct Target {
    pub api: Api,
    pub model: String,
    pub stream: bool,
    pub timeout: Duration,
    connect_timeout: Duration,
    transport: Transport,
    headers: Vec<(HeaderName, HeaderValue)>,
    extra_body: Option<Map<String, Value>>,
    /// The URL without credentials or query, for reports.
    pub display_url: String,
}

/// How requests travel.
enum Transport {
    /// HTTP/1.1 on Sluice's provider client (keep-alive, plain or TLS).
    H1(Endpoint),
    H2(H2),
}

/// Headers the client writes itself; one given by the user would break
/// the request's framing.
const RESERVED: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "content-type",
    "accept",
    "connection",
];

impl Target {
    pub fn new(o: TargetOptions) -> Result<Target, String> {
        let uri: Uri = o
            .url
            .parse()
            .map_err(|_| format!("invalid URL \"{}\"", redact_url(&o.url)))?;
        match uri.scheme_str() {
            Some("http" | "https") => {}
            _ => {
                return Err(format!(
                    "URL \"{}\" must start with http:// or https://",
                    redact_url(&o.url)
                ));
            }
        }
        if uri.host().is_none() {
            return Err(format!("URL \"{}\" has no host", redact_url(&o.url)));
        }
        let api = match o.api.or_else(|| Api::detect(uri.path())) {
            Some(a) => a,
            None => {
                return Err(format!(
                    "cannot tell the API from the path \"{}\": pass --api chat or --api messages",
                    uri.path()
                ));
            }
        };
        let secrets = Secrets::new();
        let mut headers = Vec::new();
        for h in &o.headers {
            let (name, value) = h.split_once(':').ok_or_else(|| {
                format!(
                    "invalid header \"{}\", expected \"Name: value\"",
                    header_name_only(h)
                )
            })?;
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| format!("invalid header name \"{}\"", name.trim()))?;
            if RESERVED.contains(&name.as_str()) {
                return Err(format!("header \"{name}\" is set by sluice bench itself"));
            }
            let mut value = HeaderValue::from_str(value.trim()).map_err(|_| {
                format!("the value of header \"{name}\" is not a valid header value")
            })?;
            value.set_sensitive(true);
            // A header may carry a credential: never echo it in errors.
            if value.len() >= 8 {
                secrets.add_key(value.to_str().unwrap_or_default());
            }
            headers.push((name, value));
        }
        let has = |headers: &[(HeaderName, HeaderValue)], n: &str| {
            headers.iter().any(|(name, _)| name.as_str() == n)
        };
        if let Some(key) = &o.api_key {
            secrets.add_key(key);
            let (name, value) = match api {
                Api::Chat | Api::Pipeline => ("authorization", format!("Bearer {key}")),
                Api::Messages => ("x-api-key", key.clone()),
            };
            if !has(&headers, name) {
                let mut v = HeaderValue::from_str(&value)
                    .map_err(|_| "the API key is not a valid header value".to_string())?;
                v.set_sensitive(true);
                headers.push((HeaderName::from_static(name), v));
            }
        }
        if api == Api::Messages && !has(&headers, "anthropic-version") {
            headers.push((
                HeaderName::from_static("anthropic-version"),
                HeaderValue::from_static("2023-06-01"),
            ));
        }
        let transport = match o.http2 {
            true => Transport::H2(H2::new(&uri, secrets)?),
            false => Transport::H1(
                Endpoint::url(&uri)
                    .with_secrets(secrets)
                    .with_max_idle(o.max_idle.max(1)),
            ),
        };
        Ok(Target {
            api,
            model: o.model,
            stream: o.stream,
            timeout: o.timeout,
            connect_timeout: o.connect_timeout,
            transport,
            headers,
            extra_body: o.extra_body,
            display_url: redact_url(&o.url),
        })
    }

    /// The JSON body of a request for `p`.
    pub fn body(&self, p: &Prompt) -> Vec<u8> {
        let mut messages: Vec<Value> = Vec::new();
        if let (Api::Chat | Api::Pipeline, Some(system)) = (self.api, &p.system) {
            messages.push(json!({"role": "system", "content": system}));
        }
        match &p.content {
            PromptContent::Text(t) => messages.push(json!({"role": "user", "content": t})),
            PromptContent::Messages(m) => messages.extend(m.iter().cloned()),
        }
        let mut body = Map::new();
        if self.api != Api::Pipeline {
            body.insert("model".into(), json!(self.model));
        }
        body.insert("messages".into(), Value::Array(messages));
        body.insert("stream".into(), json!(self.stream));
        match self.api {
            Api::Chat => {
                body.insert("max_completion_tokens".into(), json!(p.max_tokens));
                if self.stream {
                    // Usage comes in a last chunk only when asked for.
                    body.insert("stream_options".into(), json!({"include_usage": true}));
                }
            }
            Api::Messages => {
                body.insert("max_tokens".into(), json!(p.max_tokens));
                if let Some(system) = &p.system {
                    body.insert("system".into(), json!(system));
                }
            }
            Api::Pipeline => {
                body.insert("max_tokens".into(), json!(p.max_tokens));
            }
        }
        if let Some(extra) = &self.extra_body {
            for (k, v) in extra {
                body.insert(k.clone(), v.clone());
            }
        }
        serde_json::to_vec(&Value::Object(body)).unwrap_or_default()
    }

    /// Sends one request for `p`, meant to go at `scheduled`; chunk times
    /// are bucketed by the second since `epoch` (the step's start).
    pub async fn send(&self, p: &Prompt, scheduled: Instant, epoch: Instant) -> Outcome {
        let body = self.body(p);
        let sent = Instant::now();
        let call = async {
            if self.stream {
                self.streamed(body, scheduled, epoch).await
            } else {
                self.whole(body, scheduled).await
            }
        };
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(Failure {
                cause: "timeout".into(),
                message: format!(
                    "no complete answer within {}",
                    humantime::format_duration(self.timeout)
                ),
            }),
        };
        Outcome {
            scheduled,
            sent,
            ended: Instant::now(),
            result,
        }
    }

    async fn streamed(
        &self,
        body: Vec<u8>,
        t0: Instant,
        epoch: Instant,
    ) -> Result<Answer, Failure> {
        let mut answer = Streamed::new(t0, epoch);
        match &self.transport {
            Transport::H1(endpoint) => {
                let req = endpoint.post(self.headers.iter().cloned(), body);
                let (timeout, summarize) = (self.connect_timeout, self.api.summarize());
                let stream = match self.api {
                    Api::Chat => {
                        endpoint
                            .stream(req, timeout, OpenAiDecoder::new(), summarize)
                            .await
                    }
                    Api::Messages => {
                        endpoint
                            .stream(req, timeout, AnthropicDecoder::new(), summarize)
                            .await
                    }
                    Api::Pipeline => {
                        endpoint
                            .stream(req, timeout, PipelineDecoder::default(), summarize)
                            .await
                    }
                };
                let mut stream = stream.map_err(failure)?;
                while let Some(item) = stream.next().await {
                    if answer.chunk(item.map_err(failure)?) {
                        break;
                    }
                }
                // Dropped at its end marker, the stream's connection goes
                // back to the pool for the next request.
            }
            Transport::H2(h2) => {
                let decoder: Box<dyn Decoder> = match self.api {
                    Api::Chat => Box::new(OpenAiDecoder::new()),
                    Api::Messages => Box::new(AnthropicDecoder::new()),
                    Api::Pipeline => Box::new(PipelineDecoder::default()),
                };
                h2.stream(
                    &self.headers,
                    body,
                    self.connect_timeout,
                    decoder,
                    self.api.summarize(),
                    |c| answer.chunk(c),
                )
                .await
                .map_err(failure)?;
            }
        }
        answer.finish()
    }

    async fn whole(&self, body: Vec<u8>, t0: Instant) -> Result<Answer, Failure> {
        let summarize = self.api.summarize();
        let bytes = match &self.transport {
            Transport::H1(endpoint) => {
                let req = endpoint.post_json(self.headers.iter().cloned(), body);
                endpoint
                    .call(req, self.connect_timeout, MAX_ANSWER, summarize)
                    .await
            }
            Transport::H2(h2) => {
                h2.call(
                    &self.headers,
                    body,
                    self.connect_timeout,
                    MAX_ANSWER,
                    summarize,
                )
                .await
            }
        }
        .map_err(failure)?;
        let end = Instant::now();
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| Failure {
            cause: "protocol".into(),
            message: format!("the answer is not JSON: {e}"),
        })?;
        let (text, usage) = match self.api {
            Api::Chat => {
                let msg = &v["choices"][0]["message"];
                let mut text = String::new();
                for key in ["reasoning_content", "content", "refusal"] {
                    if let Some(t) = msg[key].as_str() {
                        text.push_str(t);
                    }
                }
                for call in msg["tool_calls"].as_array().into_iter().flatten() {
                    text.push_str(call["function"]["name"].as_str().unwrap_or_default());
                    text.push_str(call["function"]["arguments"].as_str().unwrap_or_default());
                }
                let u = &v["usage"];
                let usage = u["completion_tokens"]
                    .as_u64()
                    .map(|c| (u["prompt_tokens"].as_u64(), c));
                (text, usage)
            }
            Api::Messages => {
                let mut text = String::new();
                for block in v["content"].as_array().into_iter().flatten() {
                    for key in ["text", "thinking"] {
                        if let Some(t) = block[key].as_str() {
                            text.push_str(t);
                        }
                    }
                    if block["type"] == "tool_use" {
                        text.push_str(block["name"].as_str().unwrap_or_default());
                        text.push_str(&block["input"].to_string());
                    }
                }
                let u = &v["usage"];
                let usage = u["output_tokens"]
                    .as_u64()
                    .map(|c| (u["input_tokens"].as_u64(), c));
                (text, usage)
            }
            Api::Pipeline => {
                let mut text = String::new();
                for key in ["output", "refusal"] {
                    if let Some(t) = v[key].as_str() {
                        text.push_str(t);
                    }
                }
                for call in v["tool_calls"].as_array().into_iter().flatten() {
                    text.push_str(call["name"].as_str().unwrap_or_default());
                    text.push_str(&call["arguments"].to_string());
                }
                let u = &v["usage"];
                // Sluice's own count (`estimated`) is still the server's.
                let usage = u["completion_tokens"]
                    .as_u64()
                    .map(|c| (u["prompt_tokens"].as_u64(), c));
                (text, usage)
            }
        };
        if text.is_empty() {
            return Err(no_content());
        }
        let (output_tokens, counted_by, prompt_tokens) = match usage {
            Some((p, c)) => (c, CountedBy::Server, p),
            None => (crate::tokens::count(&text), CountedBy::Client, None),
        };
        Ok(Answer {
            ttft: None,
            e2e: end.saturating_duration_since(t0),
            itl: Vec::new(),
            output_tokens,
            counted_by,
            prompt_tokens,
            chunk_seconds: Vec::new(),
        })
    }
}

pub(super) fn no_content() -> Failure {
    Failure {
        cause: "no_content".into(),
        message: "the answer ended without any generated content".into(),
    }
}

/// A provider error as a failure cause (the message is already scrubbed
/// of the key and header values).
fn failure(e: ProviderError) -> Failure {
    let cause = match &e {
        ProviderError::Connect(_) | ProviderError::ConnectTimeout(_) => "connect".to_string(),
        ProviderError::Status { status, .. } => format!("http_{status}"),
        ProviderError::InStream { .. } => "stream_error".into(),
        ProviderError::Truncated => "incomplete".into(),
        ProviderError::Io(_) => "connection".into(),
        ProviderError::Malformed(_) => "protocol".into(),
        ProviderError::Config(_) => "config".into(),
    };
    let mut message = e.to_string();
    if message.len() > MAX_MESSAGE {
        let mut cut = MAX_MESSAGE;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push('…');
    }
    Failure { cause, message }
}

/// `url` without credentials (`user:pass@`) or query (`?key=...`).
pub fn redact_url(url: &str) -> String {
    let url = url.split(['?', '#']).next().unwrap_or_default();
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            let host = authority.rsplit('@').next().unwrap_or_default();
            format!("{scheme}://{host}{path}")
        }
        None => url.to_string(),
    }
}

/// The name part of a header argument, never its value.
fn header_name_only(h: &str) -> &str {
    h.split([':', '=']).next().unwrap_or_default().trim()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(url: &str) -> TargetOptions {
        TargetOptions {
            url: url.into(),
            api: None,
            model: "m".into(),
            stream: true,
            headers: vec![],
            api_key: None,
            extra_body: None,
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            max_idle: 4,
            http2: false,
        }
    }

    #[test]
    fn api_is_detected_from_the_path() {
        assert_eq!(Api::detect("/v1/chat/completions"), Some(Api::Chat));
        assert_eq!(Api::detect("/v1/messages/"), Some(Api::Messages));
        assert_eq!(Api::detect("/v1/pipelines/demo"), Some(Api::Pipeline));
        assert_eq!(Api::detect("/gw/v1/pipelines/demo/"), Some(Api::Pipeline));
        assert_eq!(Api::detect("/v1/pipelines/"), None);
        assert_eq!(Api::detect("/v1/completions"), None);
        let e = Target::new(opts("http://127.0.0.1:1/v1/completions"))
            .err()
            .unwrap();
        assert!(e.contains("--api"), "{e}");
    }

    #[test]
    fn bodies_ask_for_usage_and_the_output_length() {
        let t = Target::new(TargetOptions {
            extra_body: Some(json!({"ignore_eos": true}).as_object().unwrap().clone()),
            ..opts("http://127.0.0.1:1/v1/chat/completions")
        })
        .unwrap();
        let p = Prompt {
            content: PromptContent::Text("hi".into()),
            system: Some("be brief".into()),
            max_tokens: 7,
        };
        let b: Value = serde_json::from_slice(&t.body(&p)).unwrap();
        assert_eq!(b["stream_options"]["include_usage"], true);
        assert_eq!(b["max_completion_tokens"], 7);
        assert_eq!(b["messages"][0]["role"], "system");
        assert_eq!(b["messages"][1]["content"], "hi");
        assert_eq!(b["ignore_eos"], true);
        let t = Target::new(opts("http://127.0.0.1:1/v1/messages")).unwrap();
        let b: Value = serde_json::from_slice(&t.body(&p)).unwrap();
        assert_eq!(b["max_tokens"], 7);
        assert_eq!(b["system"], "be brief");
        assert_eq!(b["messages"].as_array().unwrap().len(), 1);
        assert!(b.get("stream_options").is_none());
    }

    #[test]
    fn bad_headers_and_urls_are_refused_without_echoing_values() {
        let bad = |h: &str| {
            Target::new(TargetOptions {
                headers: vec![h.into()],
                ..opts("http://127.0.0.1:1/v1/chat/completions")
            })
            .err()
            .unwrap()
        };
        let e = bad("Content-Length: 3");
        assert!(e.contains("content-length"), "{e}");
        let e = bad("x-key=sk-secret-value");
        assert!(!e.contains("sk-secret"), "{e}");
        let e = bad("x-key: bad\u{1}value-secret");
        assert!(!e.contains("secret"), "{e}");
        assert_eq!(
            redact_url("https://user:pw@api.example.com/v1/messages?key=s3cret"),
            "https://api.example.com/v1/messages"
        );
        let e = Target::new(opts("ftp://u:pw@host/v1/messages"))
            .err()
            .unwrap();
        assert!(!e.contains("pw"), "{e}");
        // h2c has no TLS.
        let e = Target::new(TargetOptions {
            http2: true,
            ..opts("https://api.example.com/v1/messages")
        })
        .err()
        .unwrap();
        assert!(e.contains("http://"), "{e}");
    }
}
