//! Synthesized text replies of any length on either wire, built from events
//! made once: `sluice mock` answers every request with one, so a reply
//! costs a list of shared event buffers and two small formatted events, not
//! one JSON serialization per token.

use std::time::Duration;

use bytes::Bytes;
use serde_json::json;

use crate::anthropic;
use crate::fixture::Wire;
use crate::script::{Body, Reply};
use crate::sse::{self, MOCK_CREATED, MOCK_ID, MOCK_MODEL};
use crate::timing::Timing;

/// Words that are one o200k token each (with their leading space), so a
/// gateway's own count of the text matches the usage the stream reports.
const WORDS: &[&str] = &[
    " the", " quick", " brown", " fox", " jumps", " over", " a", " lazy", " dog", " and", " then",
    " it", " runs", " back", " to", " its", " home", " in", " time", " for", " dinner", " with",
    " friends", " who", " were", " waiting", " at", " table", " under", " old", " tree", " light",
];

/// Numbers written into templates where a count goes, then cut out.
const MARKS: [u64; 3] = [9_111_111_111_111, 9_222_222_222_222, 9_333_333_333_333];

/// A serialized event with numbers to fill in: `MARKS[i]` stands for
/// `values[i]`, wherever serialization put it.
#[derive(Clone, Debug)]
struct Template {
    /// The text around the marks, one more piece than `slots`.
    pieces: Vec<String>,
    /// Which value goes after each piece but the last.
    slots: Vec<usize>,
}

impl Template {
    fn new(event: &[u8]) -> Template {
        let text = String::from_utf8_lossy(event).into_owned();
        let marks: Vec<String> = MARKS.iter().map(u64::to_string).collect();
        let mut found: Vec<(usize, usize)> = marks
            .iter()
            .enumerate()
            .filter_map(|(slot, m)| text.find(m.as_str()).map(|at| (at, slot)))
            .collect();
        found.sort_unstable();
        let (mut pieces, mut slots, mut from) = (Vec::new(), Vec::new(), 0);
        for (at, slot) in found {
            pieces.push(text[from..at].to_owned());
            slots.push(slot);
            from = at + marks[slot].len();
        }
        pieces.push(text[from..].to_owned());
        Template { pieces, slots }
    }

    fn fill(&self, values: &[u64]) -> Bytes {
        let len = self.pieces.iter().map(String::len).sum::<usize>() + 20 * self.slots.len();
        let mut out = String::with_capacity(len);
        let mut numbers = itoa::Buffer::new();
        for (i, piece) in self.pieces.iter().enumerate() {
            out.push_str(piece);
            if let Some(&slot) = self.slots.get(i) {
                out.push_str(numbers.format(values.get(slot).copied().unwrap_or(0)));
            }
        }
        Bytes::from(out)
    }
}

/// What one generated reply looks like (see [`TextGenerator::reply`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TextShape {
    /// Content events, one token each.
    pub tokens: usize,
    /// The reply stops at the request's `max_tokens`: finish `length`
    /// (Anthropic `max_tokens`) instead of `stop` (`end_turn`).
    pub cut: bool,
    /// Prompt (input) tokens reported.
    pub prompt: u64,
    /// Whether usage is reported: OpenAI's usage chunk, Anthropic's
    /// `message_delta.usage` (`message_start` always has its input tokens).
    pub usage: bool,
    /// From the headers to the first token.
    pub ttft: Duration,
    /// Between later events.
    pub itl: Duration,
}

/// The events of one wire.
#[derive(Clone, Debug)]
struct Parts {
    /// One content event per word.
    words: Vec<Bytes>,
    /// OpenAI: the role chunk. Anthropic: the block start and `ping` (after
    /// `message_start`, which is filled in per reply).
    preamble: Vec<Bytes>,
    /// The events ending a reply, normally and cut by `max_tokens`, with
    /// usage (filled in) and without.
    end_stop: Vec<Bytes>,
    end_cut: Vec<Bytes>,
    /// OpenAI: the usage chunk (prompt, completion). Anthropic:
    /// `message_start` (input tokens).
    usage: Template,
    /// Anthropic only: `message_delta` with usage (output tokens), for
    /// `end_turn` and for `max_tokens`.
    delta_stop: Option<Template>,
    delta_cut: Option<Template>,
}

/// Makes synthesized text replies of any length on either wire: one token
/// per content event, the finish, usage, the terminator (see
/// [`TextGenerator::reply`]).
#[derive(Clone, Debug)]
pub struct TextGenerator {
    openai: Parts,
    anthropic: Parts,
}

impl Default for TextGenerator {
    /// Words that are one o200k token each.
    fn default() -> TextGenerator {
        TextGenerator::new(WORDS)
    }
}

impl TextGenerator {
    /// A generator whose content cycles through `words` (one per event;
    /// the default words when empty).
    pub fn new(words: &[&str]) -> TextGenerator {
        let words = if words.is_empty() { WORDS } else { words };
        let message_delta = |stop: &str, usage: bool| {
            let mut v = json!({"type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": null}});
            if usage {
                v["usage"] = json!({ "output_tokens": MARKS[0] });
            }
            anthropic::event("message_delta", &v)
        };
        let block_stop = anthropic::event(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": 0}),
        );
        let message_stop = anthropic::event("message_stop", &json!({"type": "message_stop"}));
        let anthropic_end = |stop: &str| {
            vec![
                block_stop.clone(),
                message_delta(stop, false),
                message_stop.clone(),
            ]
        };
        let done = Bytes::from_static(b"data: [DONE]\n\n");
        let openai_end = |finish: &str| vec![sse::chunk(json!({}), Some(finish)), done.clone()];
        let usage_chunk = sse::data_event(&json!({
            "id": MOCK_ID, "object": "chat.completion.chunk", "created": MOCK_CREATED,
            "model": MOCK_MODEL, "system_fingerprint": null, "choices": [],
            "usage": {"prompt_tokens": MARKS[0], "completion_tokens": MARKS[1], "total_tokens": MARKS[2]},
        }));
        let mut prelude = anthropic::flood_prelude();
        prelude.remove(0);
        TextGenerator {
            openai: Parts {
                words: words.iter().map(|w| sse::content_chunk(w)).collect(),
                preamble: vec![sse::role_chunk()],
                end_stop: openai_end("stop"),
                end_cut: openai_end("length"),
                usage: Template::new(&usage_chunk),
                delta_stop: None,
                delta_cut: None,
            },
            anthropic: Parts {
                words: words.iter().map(|w| anthropic::text_delta(w)).collect(),
                preamble: prelude,
                end_stop: anthropic_end("end_turn"),
                end_cut: anthropic_end("max_tokens"),
                usage: Template::new(&anthropic::message_start_with(MARKS[0])),
                delta_stop: Some(Template::new(&message_delta("end_turn", true))),
                delta_cut: Some(Template::new(&message_delta("max_tokens", true))),
            },
        }
    }

    /// The events a reply on `wire` sends before its first token.
    pub fn preamble_len(&self, wire: Wire) -> usize {
        match wire {
            Wire::OpenAi => 1,
            Wire::Anthropic => 3,
        }
    }

    /// A reply of `tokens` content events on `wire`.
    ///
    /// OpenAI: a role chunk, the content chunks, the finish chunk (`stop`,
    /// or `length` when `cut`), with `usage` a usage-only chunk (`prompt`,
    /// `tokens`), then `data: [DONE]`. Anthropic: `message_start` (input
    /// tokens `prompt`), a text block with one `text_delta` per token and
    /// `ping`, `message_delta` (`end_turn` or `max_tokens`, with `usage`
    /// the output tokens), `message_stop`.
    ///
    /// Timing: the preamble goes with the headers, the first token `ttft`
    /// after them, and every later event `itl` after the one before.
    pub fn reply(&self, wire: Wire, shape: &TextShape) -> Reply {
        let parts = match wire {
            Wire::OpenAi => &self.openai,
            Wire::Anthropic => &self.anthropic,
        };
        let TextShape {
            tokens,
            cut,
            prompt,
            usage,
            ttft,
            itl,
        } = *shape;
        let completion = tokens as u64;
        let mut events = Vec::with_capacity(tokens + 6);
        if wire == Wire::Anthropic {
            events.push(parts.usage.fill(&[prompt]));
        }
        events.extend(parts.preamble.iter().cloned());
        events.extend(parts.words.iter().cycle().take(tokens).cloned());
        let end = if cut { &parts.end_cut } else { &parts.end_stop };
        match wire {
            Wire::OpenAi => {
                events.push(end[0].clone());
                if usage {
                    let total = prompt.saturating_add(completion);
                    events.push(parts.usage.fill(&[prompt, completion, total]));
                }
                events.push(end[1].clone());
            }
            Wire::Anthropic => {
                events.push(end[0].clone());
                let delta = if cut {
                    &parts.delta_cut
                } else {
                    &parts.delta_stop
                };
                match (usage, delta) {
                    (true, Some(t)) => events.push(t.fill(&[completion])),
                    _ => events.push(end[1].clone()),
                }
                events.push(end[2].clone());
            }
        }
        let mut delays = vec![Duration::ZERO; self.preamble_len(wire)];
        delays.push(ttft);
        let mut reply = Reply::from_body(Body::Events(events));
        reply.timing = Some(Timing {
            headers: Duration::ZERO,
            events: delays,
        });
        reply.pace = itl;
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(events: &[Bytes]) -> Vec<serde_json::Value> {
        events.iter().filter_map(|e| sse::event_json(e)).collect()
    }

    fn shape(tokens: usize, cut: bool, prompt: u64, usage: bool) -> TextShape {
        TextShape {
            tokens,
            cut,
            prompt,
            usage,
            ..TextShape::default()
        }
    }

    fn events(r: &Reply) -> &[Bytes] {
        match &r.body {
            Body::Events(e) => e,
            _ => panic!("not events"),
        }
    }

    #[test]
    fn openai_replies_match_the_slow_synthesis() {
        let g = TextGenerator::new(&["a", "b"]);
        let r = g.reply(Wire::OpenAi, &shape(3, false, 10, true));
        assert_eq!(events(&r), sse::synth_text(&["a", "b", "a"]).as_slice());
        let c = sse::completion_from_events(events(&r));
        assert_eq!(c["choices"][0]["message"]["content"], "aba");
        assert_eq!(c["usage"]["total_tokens"], 13);
        let cut = g.reply(Wire::OpenAi, &shape(2, true, 7, false));
        let c = sse::completion_from_events(events(&cut));
        assert_eq!(c["choices"][0]["finish_reason"], "length");
        assert!(c["usage"].is_null(), "{c}");
    }

    #[test]
    fn anthropic_replies_match_the_slow_synthesis() {
        let g = TextGenerator::new(&["a", "b"]);
        let r = g.reply(Wire::Anthropic, &shape(3, false, 10, true));
        assert_eq!(
            texts(events(&r)),
            texts(&anthropic::synth_text(&["a", "b", "a"]))
        );
        let cut = g.reply(Wire::Anthropic, &shape(2, true, 42, false));
        let m = anthropic::message_from_events(events(&cut));
        assert_eq!(m["stop_reason"], "max_tokens");
        assert_eq!(m["content"][0]["text"], "ab");
        assert_eq!(m["usage"]["input_tokens"], 42);
    }

    #[test]
    fn the_first_token_waits_for_ttft_and_the_rest_for_itl() {
        let g = TextGenerator::default();
        let ttft = Duration::from_millis(300);
        let itl = Duration::from_millis(20);
        for wire in [Wire::OpenAi, Wire::Anthropic] {
            let r = g.reply(
                wire,
                &TextShape {
                    ttft,
                    itl,
                    ..shape(4, false, 1, true)
                },
            );
            let pre = g.preamble_len(wire);
            assert_eq!(r.headers_delay(), Duration::ZERO);
            assert!((0..pre).all(|i| r.event_delay(i).is_zero()));
            assert_eq!(r.event_delay(pre), ttft);
            assert_eq!(r.event_delay(pre + 1), itl);
            assert_eq!(r.event_delay(pre + 6), itl);
        }
    }
}
