//! Recorded streams on disk: loading a body with its timing sidecar, and
//! checking that it is a valid SSE stream of its wire format.
//!
//! [`Recording::load`] reports the first problem of a file as a
//! [`FixtureError`] (`file:line: error: ...`); [`validate_dir`] checks every
//! `*.sse` file under a folder and reports all bad ones.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use bytes::Bytes;
use serde_json::Value;

use crate::script::{Body, Reply};
use crate::sse;
use crate::timing::Timing;

/// A provider wire format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Wire {
    /// OpenAI-compatible chat completions: `data:` chunks, then `[DONE]`.
    OpenAi,
    /// Anthropic Messages: named events whose data `type` repeats the name.
    Anthropic,
}

impl Wire {
    pub fn as_str(self) -> &'static str {
        match self {
            Wire::OpenAi => "openai",
            Wire::Anthropic => "anthropic",
        }
    }

    /// The route a client posts to under a base URL.
    pub fn route(self) -> &'static str {
        match self {
            Wire::OpenAi => "/chat/completions",
            Wire::Anthropic => "/messages",
        }
    }

    /// The wire named by a path: a component `openai` or `anthropic`.
    pub fn from_path(path: &Path) -> Option<Wire> {
        path.components().rev().find_map(|c| match c {
            Component::Normal(s) if s == "openai" => Some(Wire::OpenAi),
            Component::Normal(s) if s == "anthropic" => Some(Wire::Anthropic),
            _ => None,
        })
    }
}

impl fmt::Display for Wire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A bad fixture: the file, the 1-based line (0 when the whole file is at
/// fault) and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixtureError {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

impl fmt::Display for FixtureError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            0 => write!(f, "{}: error: {}", self.file.display(), self.message),
            n => write!(f, "{}:{n}: error: {}", self.file.display(), self.message),
        }
    }
}

impl std::error::Error for FixtureError {}

/// A recorded stream body, split into events, with its timing if recorded.
#[derive(Clone, Debug)]
pub struct Recording {
    pub path: PathBuf,
    pub wire: Wire,
    /// The events, byte for byte (see [`Reply::recorded`]).
    pub events: Vec<Bytes>,
    /// From the `NAME.timing` sidecar, when there is one.
    pub timing: Option<Timing>,
}

impl Recording {
    /// Reads `path` and its `path.timing` sidecar (if present) and checks
    /// both. The wire format comes from the path (`openai/`, `anthropic/`)
    /// or else from the first event (`message_start` means Anthropic).
    pub fn load(path: &Path) -> Result<Recording, FixtureError> {
        let bytes = std::fs::read(path).map_err(|e| FixtureError {
            file: path.to_path_buf(),
            line: 0,
            message: format!("cannot read recorded stream: {e}"),
        })?;
        let mut rec = Recording::parse(path, &bytes, Wire::from_path(path))?;
        let sidecar = Timing::sidecar_path(path);
        match std::fs::read_to_string(&sidecar) {
            Ok(text) => rec.set_timing(&sidecar, &text)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(FixtureError {
                    file: sidecar,
                    line: 0,
                    message: format!("cannot read timing file: {e}"),
                });
            }
        }
        Ok(rec)
    }

    /// Checks `bytes` as a stream of `wire` (detected when `None`); `path`
    /// only names the file in errors.
    pub fn parse(path: &Path, bytes: &[u8], wire: Option<Wire>) -> Result<Recording, FixtureError> {
        let err = |line: usize, message: String| FixtureError {
            file: path.to_path_buf(),
            line,
            message,
        };
        if let Err(e) = std::str::from_utf8(bytes) {
            let line = 1 + bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
            return Err(err(line, "recorded stream is not valid UTF-8".into()));
        }
        let events = sse::split_events(bytes);
        if events.is_empty() {
            return Err(err(0, "recorded stream has no events".into()));
        }
        let mut parsed = Vec::with_capacity(events.len());
        let mut line = 1;
        for ev in &events {
            let text = String::from_utf8_lossy(ev);
            parsed.push(parse_event(&text, line).map_err(|(l, m)| err(l, m))?);
            line += text.matches('\n').count();
        }
        let wire = wire.unwrap_or_else(|| {
            if parsed[0].name.as_deref() == Some("message_start") {
                Wire::Anthropic
            } else {
                Wire::OpenAi
            }
        });
        for ev in &parsed {
            check_wire(wire, ev).map_err(|m| err(ev.line, m))?;
        }
        Ok(Recording {
            path: path.to_path_buf(),
            wire,
            events,
            timing: None,
        })
    }

    /// Parses a timing file's text and checks that it has one delay per
    /// event; `file` names the sidecar in errors.
    pub fn set_timing(&mut self, file: &Path, text: &str) -> Result<(), FixtureError> {
        let timing = Timing::parse(text).map_err(|e| FixtureError {
            file: file.to_path_buf(),
            line: e.line,
            message: e.message,
        })?;
        if timing.events.len() != self.events.len() {
            let last = text.lines().count().max(1);
            return Err(FixtureError {
                file: file.to_path_buf(),
                line: last,
                message: format!(
                    "timing has {} event delays but {} has {} events, expected one delay per event",
                    timing.events.len(),
                    self.path.display(),
                    self.events.len()
                ),
            });
        }
        self.timing = Some(timing);
        Ok(())
    }

    /// A reply that plays this recording with its timing (if any).
    pub fn reply(&self) -> Reply {
        let mut reply = Reply::from_events(self.events.clone());
        reply.timing = self.timing.clone();
        reply
    }

    /// The body bytes: the events joined (a last event that lacked its
    /// blank line on disk has it here).
    pub fn body(&self) -> Vec<u8> {
        self.events.concat()
    }
}

impl From<&Recording> for Reply {
    fn from(r: &Recording) -> Reply {
        r.reply()
    }
}

/// Checks every `*.sse` file under `dir` (recursively) with its sidecar.
/// Returns how many files were good and the errors of the bad ones.
pub fn validate_dir(dir: &Path) -> (usize, Vec<FixtureError>) {
    let mut files = Vec::new();
    let mut errors = Vec::new();
    collect(dir, &mut files, &mut errors);
    files.sort();
    let mut ok = 0;
    for f in files {
        match Recording::load(&f) {
            Ok(_) => ok += 1,
            Err(e) => errors.push(e),
        }
    }
    (ok, errors)
}

fn collect(dir: &Path, files: &mut Vec<PathBuf>, errors: &mut Vec<FixtureError>) {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            errors.push(FixtureError {
                file: dir.to_path_buf(),
                line: 0,
                message: format!("cannot read fixtures directory: {e}"),
            });
            return;
        }
    };
    for entry in entries.flatten() {
        let p = entry.path();
        if p.is_dir() {
            collect(&p, files, errors);
        } else if p.extension().is_some_and(|e| e == "sse") {
            files.push(p);
        } else if p.extension().is_some_and(|e| e == "timing") {
            let body = p.with_extension("");
            if !body.is_file() {
                errors.push(FixtureError {
                    file: p,
                    line: 0,
                    message: format!("timing file without its recorded stream {}", body.display()),
                });
            }
        }
    }
}

/// One event's fields, with the line it starts on.
struct Parsed {
    line: usize,
    name: Option<String>,
    data: Option<String>,
    data_line: usize,
}

fn parse_event(text: &str, first_line: usize) -> Result<Parsed, (usize, String)> {
    let mut ev = Parsed {
        line: first_line,
        name: None,
        data: None,
        data_line: first_line,
    };
    let mut started = false;
    for (i, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        let n = first_line + i;
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        if !started {
            ev.line = n;
            started = true;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "event" => ev.name = Some(value.to_owned()),
            "data" => match &mut ev.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => {
                    ev.data = Some(value.to_owned());
                    ev.data_line = n;
                }
            },
            "id" | "retry" => {}
            other => {
                return Err((
                    n,
                    format!(
                        "unknown SSE field \"{other}\", expected one of \"event\", \"data\", \"id\", \"retry\" or a \":\" comment"
                    ),
                ));
            }
        }
    }
    Ok(ev)
}

fn check_wire(wire: Wire, ev: &Parsed) -> Result<(), String> {
    let Some(data) = ev.data.as_deref() else {
        // A comment-only block (keep-alive) carries nothing to check.
        return match &ev.name {
            Some(n) => Err(format!("event \"{n}\" has no data line")),
            None => Ok(()),
        };
    };
    match wire {
        Wire::OpenAi => {
            if data.trim() == "[DONE]" {
                return Ok(());
            }
            let v: Value = serde_json::from_str(data)
                .map_err(|e| format!("openai chunk data is not JSON: {e}"))?;
            let ok = v.get("choices").is_some_and(Value::is_array)
                || v.get("usage").is_some_and(Value::is_object)
                || v.get("error").is_some_and(Value::is_object);
            if ok {
                Ok(())
            } else {
                Err("openai chunk has no \"choices\", \"usage\" or \"error\", expected a chat.completion.chunk".into())
            }
        }
        Wire::Anthropic => {
            let v: Value = serde_json::from_str(data)
                .map_err(|e| format!("anthropic event data is not JSON: {e}"))?;
            let kind = v.get("type").and_then(Value::as_str).ok_or_else(|| {
                "anthropic event data has no \"type\", expected e.g. {\"type\": \"message_start\", ...}"
                    .to_owned()
            })?;
            const KNOWN: &[&str] = &[
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop",
                "ping",
                "error",
            ];
            if !KNOWN.contains(&kind) {
                return Err(format!(
                    "unknown anthropic event type \"{kind}\", expected one of {}",
                    KNOWN.join(", ")
                ));
            }
            match ev.name.as_deref() {
                Some(name) if name != kind => Err(format!(
                    "event name \"{name}\" does not match its data type \"{kind}\""
                )),
                _ => Ok(()),
            }
        }
    }
}

impl Reply {
    /// Loads a recorded stream with its timing sidecar, checking both (see
    /// [`Recording::load`]).
    pub fn recording(path: impl AsRef<Path>) -> Result<Reply, FixtureError> {
        Recording::load(path.as_ref()).map(|r| r.reply())
    }

    pub(crate) fn from_events(events: Vec<Bytes>) -> Reply {
        Reply::from_body(Body::Events(events))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str, wire: Option<Wire>) -> Result<Recording, FixtureError> {
        Recording::parse(Path::new("x.sse"), body.as_bytes(), wire)
    }

    #[test]
    fn detects_the_wire_and_counts_events() {
        let r = parse("data: {\"choices\":[]}\n\ndata: [DONE]\n\n", None).unwrap();
        assert_eq!((r.wire, r.events.len()), (Wire::OpenAi, 2));
        let r = parse(
            "event: message_start\ndata: {\"type\":\"message_start\"}\n\nevent: ping\ndata: {\"type\": \"ping\"}",
            None,
        )
        .unwrap();
        assert_eq!((r.wire, r.events.len()), (Wire::Anthropic, 2));
    }

    #[test]
    fn bad_events_are_reported_with_their_line() {
        let e = parse("data: {\"choices\":[]}\n\n\ndata: {oops\n\n", None).unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        assert!(
            e.to_string()
                .starts_with("x.sse:4: error: openai chunk data is not JSON")
        );
        let e = parse(
            "event: ping\ndata: {\"type\":\"ping\"}\n\nevent: ping\ndata: {\"type\":\"pong\"}\n\n",
            Some(Wire::Anthropic),
        )
        .unwrap_err();
        assert_eq!(e.line, 4);
        let e = parse("data: [DONE]\n\nretry: 5\nbogus: 1\n\n", None).unwrap_err();
        assert_eq!(e.line, 4);
        assert!(e.message.contains("unknown SSE field \"bogus\""));
    }

    #[test]
    fn timing_must_have_one_delay_per_event() {
        let mut r = parse("data: [DONE]\n\n", None).unwrap();
        let e = r
            .set_timing(Path::new("x.sse.timing"), "headers 1\n5\n6\n")
            .unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("2 event delays"), "{e}");
        r.set_timing(Path::new("x.sse.timing"), "7\n").unwrap();
        assert_eq!(r.reply().timing.unwrap().events.len(), 1);
    }

    #[test]
    fn the_recorded_fixtures_are_valid() {
        let (ok, errors) = validate_dir(&crate::fixtures_dir());
        assert!(errors.is_empty(), "{errors:?}");
        assert!(ok >= 5);
    }
}
