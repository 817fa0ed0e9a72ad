//! Incremental `text/event-stream` parser for upstream provider bodies.
//!
//! Follows the WHATWG "parsing an event stream" rules, with one deliberate
//! deviation: [`SseParser::finish`] dispatches an event that the body ended
//! without terminating, where the spec would drop it. Some providers (and
//! recorded bodies) end right after the last `data:` line, and that last event
//! (`message_stop`) carries meaning.
//!
//! Bytes are buffered raw and a line is decoded only once it is complete, so
//! network chunk boundaries (mid-line, mid-CRLF, mid-character) never change
//! what comes out.

/// Longest line accepted, in bytes, excluding its terminator.
pub const MAX_LINE: usize = 1 << 20;

/// Most data one event may accumulate, in bytes. A line limit alone would let
/// an upstream grow the data buffer without bound with many short `data:`
/// lines and no blank line.
pub const MAX_EVENT: usize = 4 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field; `None` when absent or empty (the spec's "message").
    pub event: Option<String>,
    pub data: String,
    /// The last event ID in force, which persists across events per the spec;
    /// `None` while it is empty.
    pub id: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("upstream sse line longer than {max} bytes", max = MAX_LINE)]
    LineTooLong,
    #[error("upstream sse event data longer than {max} bytes", max = MAX_EVENT)]
    EventTooLong,
}

impl From<SseError> for super::ProviderError {
    fn from(err: SseError) -> Self {
        Self::Malformed(err.to_string())
    }
}

#[derive(Debug, Default)]
pub struct SseParser {
    /// Bytes of the current line, not yet terminated.
    line: Vec<u8>,
    /// The previous push ended on CR: a LF opening the next one belongs to it.
    skip_lf: bool,
    /// A line has been processed, so a BOM is no longer at the stream start.
    past_start: bool,
    data: String,
    event: String,
    last_id: String,
    /// Errors are sticky: after one, the byte stream has lost its framing.
    failed: Option<SseError>,
}

impl SseParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes of the body, appending every event they complete.
    /// Events completed before an error are still appended.
    pub fn push(&mut self, mut bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if let Some(err) = self.failed {
            return Err(err);
        }
        if self.skip_lf
            && let Some((&first, rest)) = bytes.split_first()
        {
            self.skip_lf = false;
            if first == b'\n' {
                bytes = rest;
            }
        }
        while let Some(pos) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            let (line, rest) = bytes.split_at(pos);
            let eol = match rest {
                [b'\r', b'\n', ..] => 2,
                [b'\r'] => {
                    self.skip_lf = true;
                    1
                }
                _ => 1,
            };
            let res = if self.line.is_empty() {
                self.complete_line(line, out)
            } else if self.line.len() + line.len() > MAX_LINE {
                Err(SseError::LineTooLong)
            } else {
                // Take the buffer so the line can borrow it while `self`
                // changes, then put it back to keep its capacity.
                let mut buf = std::mem::take(&mut self.line);
                buf.extend_from_slice(line);
                let res = self.complete_line(&buf, out);
                buf.clear();
                self.line = buf;
                res
            };
            if let Err(err) = res {
                return Err(self.fail(err));
            }
            bytes = &rest[eol..];
        }
        if self.line.len() + bytes.len() > MAX_LINE {
            return Err(self.fail(SseError::LineTooLong));
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    /// Ends the body: processes an unterminated last line and dispatches the
    /// pending event even without its closing blank line.
    pub fn finish(&mut self, out: &mut Vec<SseEvent>) {
        if self.failed.is_some() {
            return;
        }
        self.skip_lf = false;
        if !self.line.is_empty() {
            let buf = std::mem::take(&mut self.line);
            // `push` already bounded this line; the data it adds is let
            // through so the last event is never lost to the event limit.
            self.process_line(&buf);
        }
        self.dispatch(out);
    }

    /// Raw bytes held for the current unterminated line.
    pub fn buffered_len(&self) -> usize {
        self.line.len()
    }

    fn fail(&mut self, err: SseError) -> SseError {
        self.failed = Some(err);
        self.line = Vec::new();
        self.data = String::new();
        err
    }

    fn complete_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        if line.len() > MAX_LINE {
            return Err(SseError::LineTooLong);
        }
        if line.is_empty() {
            self.past_start = true;
            self.dispatch(out);
            return Ok(());
        }
        self.process_line(line);
        if self.data.len() > MAX_EVENT {
            return Err(SseError::EventTooLong);
        }
        Ok(())
    }

    fn process_line(&mut self, mut line: &[u8]) {
        if !self.past_start {
            self.past_start = true;
            line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
        }
        if line.is_empty() {
            return;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => return,
            Some(i) => {
                let value = &line[i + 1..];
                (&line[..i], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match name {
            b"data" => {
                self.data.push_str(&String::from_utf8_lossy(value));
                self.data.push('\n');
            }
            b"event" => {
                self.event.clear();
                self.event.push_str(&String::from_utf8_lossy(value));
            }
            b"id" if !value.contains(&0) => {
                self.last_id.clear();
                self.last_id.push_str(&String::from_utf8_lossy(value));
            }
            // `retry` only matters to a reconnecting client; unknown fields
            // are ignored by the spec.
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseEvent>) {
        if self.data.is_empty() {
            self.event.clear();
            return;
        }
        self.data.pop();
        let event = (!self.event.is_empty()).then(|| std::mem::take(&mut self.event));
        out.push(SseEvent {
            event,
            data: std::mem::take(&mut self.data),
            id: (!self.last_id.is_empty()).then(|| self.last_id.clone()),
        });
    }
}

#[cfg(test)]
#[path = "sse_tests.rs"]
mod tests;
