//! A streamed answer as `sluice bench` measures it, chunk by chunk: when
//! the content chunks arrived (TTFT, the gaps between them, the seconds
//! they fell in), the server's usage, and the text to count tokens with
//! when the server reports none.

use std::time::Duration;

use tokio::time::Instant;

use super::client::no_content;
use super::metrics::{Answer, CountedBy, Failure};
use crate::provider::Chunk;

/// Streamed text kept to count tokens when the server reports no usage;
/// past it the text is counted and dropped (a token cut at the seam is
/// counted twice at most once per 256 KiB).
const TEXT_KEPT: usize = 256 << 10;

/// A streamed answer as its chunks arrive.
pub(super) struct Streamed {
    timing: ChunkTiming,
    text: TextCount,
    usage: Option<(i128, i128)>,
    end: Option<Instant>,
}

impl Streamed {
    pub(super) fn new(t0: Instant, epoch: Instant) -> Streamed {
        Streamed {
            timing: ChunkTiming::new(t0, epoch),
            text: TextCount::default(),
            usage: None,
            end: None,
        }
    }

    /// Takes one chunk as it arrives; true at the end marker.
    pub(super) fn chunk(&mut self, chunk: Chunk) -> bool {
        let now = Instant::now();
        match chunk {
            Chunk::Delta(t) | Chunk::Reasoning(t) | Chunk::Refusal(t) => {
                self.timing.content(now);
                self.text.push(&t);
            }
            Chunk::ToolCallDelta {
                name, arguments, ..
            } if name.is_some() || !arguments.is_empty() => {
                self.timing.content(now);
                self.text.push(name.as_deref().unwrap_or_default());
                self.text.push(&arguments);
            }
            Chunk::Usage(u) => self.usage = Some((u.prompt_tokens, u.completion_tokens)),
            Chunk::End => {
                self.end = Some(now);
                return true;
            }
            _ => {}
        }
        false
    }

    pub(super) fn finish(self) -> Result<Answer, Failure> {
        let Some(end) = self.end else {
            return Err(Failure {
                cause: "incomplete".into(),
                message: "the stream ended without its end marker".into(),
            });
        };
        let Some(ttft) = self.timing.first else {
            return Err(no_content());
        };
        let (output_tokens, counted_by) = match self.usage {
            Some((_, c)) => (clamp(c), CountedBy::Server),
            None => (self.text.finish(), CountedBy::Client),
        };
        Ok(Answer {
            ttft: Some(ttft),
            e2e: end.saturating_duration_since(self.timing.t0),
            itl: self.timing.gaps,
            output_tokens,
            counted_by,
            prompt_tokens: self.usage.map(|(p, _)| clamp(p)),
            chunk_seconds: self.timing.seconds,
        })
    }
}

/// When the content chunks of one answer arrived.
struct ChunkTiming {
    t0: Instant,
    epoch: Instant,
    first: Option<std::time::Duration>,
    last: Option<Instant>,
    gaps: Vec<Duration>,
    seconds: Vec<(u32, u32)>,
}

impl ChunkTiming {
    fn new(t0: Instant, epoch: Instant) -> Self {
        ChunkTiming {
            t0,
            epoch,
            first: None,
            last: None,
            gaps: Vec::new(),
            seconds: Vec::new(),
        }
    }

    fn content(&mut self, now: Instant) {
        match self.last {
            None => self.first = Some(now.saturating_duration_since(self.t0)),
            Some(last) => self.gaps.push(now.saturating_duration_since(last)),
        }
        self.last = Some(now);
        let sec =
            u32::try_from(now.saturating_duration_since(self.epoch).as_secs()).unwrap_or(u32::MAX);
        match self.seconds.last_mut() {
            Some((s, n)) if *s == sec => *n += 1,
            _ => self.seconds.push((sec, 1)),
        }
    }
}

/// Generated text, counted with the tokenizer only if the server reports
/// no usage; bounded (see [`TEXT_KEPT`]).
#[derive(Default)]
struct TextCount {
    text: String,
    counted: u64,
}

impl TextCount {
    fn push(&mut self, t: &str) {
        if self.text.len() + t.len() > TEXT_KEPT {
            self.counted += crate::tokens::count(&self.text);
            self.text.clear();
        }
        self.text.push_str(t);
    }

    fn finish(&self) -> u64 {
        self.counted + crate::tokens::count(&self.text)
    }
}

fn clamp(v: i128) -> u64 {
    v.clamp(0, i128::from(u64::MAX)) as u64
}
