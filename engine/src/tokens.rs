//! Token counting with a real tokenizer (o200k_base, the encoding of the
//! gpt-4o family), used where the provider reports no usage and to enforce
//! the completion ceiling while the stream runs. Counts from here are
//! estimates for models with other tokenizers, and are reported as such.
//!
//! The vocabulary comes from `tiktoken-rs`, but it is kept here in a form
//! of its own: tiktoken's `CoreBPE` holds two hash maps of 200,000 small
//! heap vectors, a sorted copy of them and a regex per thread, about 40 MB
//! resident for the whole life of the process. [`Vocabulary`] holds every
//! token's bytes back to back and an open-addressing table of ranks, about
//! 4 MB. The split pattern is tiktoken's (`O200K_BASE_PAT_STR`); merging is
//! byte-pair encoding: the adjacent pair whose joined bytes have the lowest
//! rank is merged first, the leftmost on ties, until no pair is a token.
//! Tests check that counts equal tiktoken's own.

use std::collections::BinaryHeap;
use std::sync::OnceLock;

use crate::provider::{Message, Part};

static BPE: OnceLock<Option<Bpe>> = OnceLock::new();

/// Loads the tokenizer; call at start-up so the first request does not pay
/// for it. Later calls are free.
pub fn init() {
    bpe();
}

fn bpe() -> Option<&'static Bpe> {
    BPE.get_or_init(|| match Bpe::o200k() {
        Ok(b) => Some(b),
        Err(e) => {
            tracing::error!(error = %e, "cannot load the o200k tokenizer; falling back to a byte estimate");
            None
        }
    })
    .as_ref()
}

/// Tokens in `text`.
pub fn count(text: &str) -> u64 {
    match bpe() {
        Some(b) => b.count(text),
        // About four bytes per token in English text.
        None => text.len().div_ceil(4) as u64,
    }
}

/// The longest prefix of `text` that holds at most `max` tokens.
pub fn truncate(text: &str, max: u64) -> String {
    let mut end = match bpe() {
        Some(b) => b.prefix_len(text, max),
        None => (max as usize).saturating_mul(4).min(text.len()),
    };
    // A token may end inside a multi-byte character: keep whole ones.
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

/// Prompt tokens of a chat, as OpenAI counts them for chat models: the
/// content plus a few tokens of framing per message and for the reply.
/// Blocks for as long as the text takes: on a request path, use
/// [`count_prompt_off_worker`].
pub fn count_prompt(messages: &[Message]) -> u64 {
    messages
        .iter()
        .map(|m| {
            let parts = m.content.iter().fold(4u64, |n, p| {
                n.saturating_add(match p {
                    Part::Text(t) => count(t),
                    Part::Image { .. } => IMAGE_TOKENS,
                    Part::Thinking { text, .. } => count(text),
                    // Opaque to us; the provider decrypts and counts it.
                    Part::RedactedThinking(data) => (data.len() / 4) as u64,
                })
            });
            m.tool_calls.iter().fold(parts, |n, c| {
                n.saturating_add(count(&c.name))
                    .saturating_add(count(&c.arguments))
                    .saturating_add(4)
            })
        })
        .fold(3, u64::saturating_add)
}

/// Tokens an image is counted as in a prompt estimate: about what the
/// largest image costs on Claude (1.15 megapixels, ~1,600 tokens) and
/// more than on GPT-4o at high detail (1,105 for 2048×768). A provider's
/// own usage, when it reports one, is what is billed.
pub const IMAGE_TOKENS: u64 = 1_600;

/// The most prompt tokens one image may cost: GPT-4o mini bills an image
/// at 2,833 tokens plus 5,667 per 512-pixel tile (48,169 for the
/// largest), far past other models' (about 1,600). Reservations assume
/// it, so that a budget holds whatever model answers; the estimate and
/// `max_total_tokens` use [`IMAGE_TOKENS`].
pub const IMAGE_TOKENS_BOUND: u64 = 50_000;

/// Prompt tokens the tool definitions add (name, description, schema).
pub fn count_tools(tools: &[crate::provider::ToolSpec]) -> u64 {
    tools.iter().fold(0u64, |n, t| {
        let schema = serde_json::to_string(&t.parameters).unwrap_or_default();
        n.saturating_add(count(&t.name))
            .saturating_add(count(&t.description))
            .saturating_add(count(&schema))
            .saturating_add(8)
    })
}

/// Bytes of text a message carries (what counting it costs).
fn message_bytes(m: &Message) -> usize {
    let parts = m.content.iter().fold(0usize, |n, p| {
        n.saturating_add(match p {
            Part::Text(t) | Part::Thinking { text: t, .. } => t.len(),
            Part::Image { .. } | Part::RedactedThinking(_) => 0,
        })
    });
    m.tool_calls
        .iter()
        .fold(parts, |n, c| n.saturating_add(c.arguments.len()))
}

/// Prompts up to this many bytes are counted where they are (a few
/// microseconds); longer ones on the blocking pool.
const INLINE_PROMPT_BYTES: usize = 16 << 10;

/// At most this many long prompts are counted at once, so that a burst of
/// huge prompts queues here instead of taking every blocking thread.
static COUNTING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

/// [`count_prompt`] without stalling an async worker: a long prompt (a
/// megabyte of text takes the tokenizer most of a second) is counted on
/// the blocking pool, at most two at a time, while health checks and
/// other streams go on. Under a paused test clock a running blocking task
/// keeps the clock from jumping, so deadlines stay exact.
pub async fn count_prompt_off_worker(messages: &[Message]) -> u64 {
    count_request_off_worker(messages, &[]).await
}

/// [`count_prompt`] plus [`count_tools`], off the async workers when the
/// text is long (a client may bring 128 tools with long descriptions).
pub async fn count_request_off_worker(
    messages: &[Message],
    tools: &[crate::provider::ToolSpec],
) -> u64 {
    let tool_bytes: usize = tools
        .iter()
        .map(|t| t.name.len() + t.description.len() + t.parameters.to_string().len())
        .sum();
    let bytes: usize = messages.iter().map(message_bytes).sum::<usize>() + tool_bytes;
    let count = |m: &[Message], t: &[crate::provider::ToolSpec]| {
        count_prompt(m).saturating_add(count_tools(t))
    };
    if bytes <= INLINE_PROMPT_BYTES {
        return count(messages, tools);
    }
    let _pending = PendingCount::new();
    let Ok(_permit) = COUNTING.acquire().await else {
        return count(messages, tools);
    };
    let (owned, owned_tools) = (messages.to_vec(), tools.to_vec());
    match tokio::task::spawn_blocking(move || count(&owned, &owned_tools)).await {
        Ok(n) => n,
        // The counting thread panicked or the runtime is shutting down:
        // a byte count is an upper bound (a token is at least one byte).
        Err(_) => u64::try_from(bytes).unwrap_or(u64::MAX),
    }
}

/// Long prompts waiting to be counted or being counted off the workers.
static PENDING_COUNTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// How many long prompts are waiting to be counted or being counted on
/// the blocking pool now.
pub fn prompts_being_counted() -> usize {
    PENDING_COUNTS.load(std::sync::atomic::Ordering::Relaxed)
}

struct PendingCount;

impl PendingCount {
    fn new() -> Self {
        PENDING_COUNTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        PendingCount
    }
}

impl Drop for PendingCount {
    fn drop(&mut self) {
        PENDING_COUNTS.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Counts `text` unless it holds more than `limit` tokens, in work bounded
/// by `limit` rather than by the length of `text`: counting stops at the
/// first piece past the limit, and a piece too long to fit (a token is at
/// most [`max_token_bytes`] long) is not merged at all.
pub fn count_within(text: &str, limit: u64) -> Option<u64> {
    match bpe() {
        Some(b) => b.count_within(text, limit),
        None => Some(text.len().div_ceil(4) as u64).filter(|&n| n <= limit),
    }
}

/// Tokens of a text split before its last piece (see [`count_split`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitCount {
    /// Tokens of everything before the last piece.
    pub head: u64,
    /// Where the last piece starts.
    pub tail_start: usize,
    /// Tokens of the last piece.
    pub tail_tokens: u64,
}

/// Counts `text` (like [`count_within`], None past `limit`), keeping the
/// count of its last piece apart: text appended later may still join that
/// piece, while the pieces before it are final. One pass over the text.
pub fn count_split(text: &str, limit: u64) -> Option<SplitCount> {
    match bpe() {
        Some(b) => b.count_split(text, limit),
        None => {
            let n = text.len().div_ceil(4) as u64;
            (n <= limit).then_some(SplitCount {
                head: n,
                tail_start: text.len(),
                tail_tokens: 0,
            })
        }
    }
}

/// The most completion tokens Sluice lets a model call generate, by its
/// own count, before it cuts the stream, for a call sent `max_tokens`.
///
/// The provider enforces `max_tokens` itself, by its own tokenizer; this
/// is the safety net for a provider that does not. Sluice counts with
/// o200k, which is not every model's tokenizer, so the net sits above
/// `max_tokens`: half as much again and 64 tokens, so that an answer the
/// provider delivered within `max_tokens` is not cut for counting
/// differently. o200k is among the most compact tokenizers on natural
/// text (other models' tokenizers need as many or more tokens for the same
/// text, which keeps Sluice's count below theirs); where a model's
/// tokenizer is more compact, on some scripts, the difference is well
/// within the margin. Reservations use the same bound, so a cut stream
/// settled at Sluice's count never costs more than was reserved.
pub fn completion_guard(max_tokens: u64) -> u64 {
    max_tokens.saturating_add(max_tokens / 2).saturating_add(64)
}

/// An upper bound of what a provider will count for a prompt we counted as
/// `counted`: our tokenizer may differ from the model's, so 10% and a few
/// tokens more. Reservations and the request token budget rely on it.
pub fn prompt_bound(counted: u64) -> u64 {
    counted.saturating_add(counted / 10).saturating_add(16)
}

/// A rank: a token's number, and its merge priority (lower merges first).
type Rank = u32;
const EMPTY: u32 = u32::MAX;

/// Every token's bytes, looked up by bytes.
struct Vocabulary {
    /// The bytes of rank 0, then rank 1, and so on.
    bytes: Vec<u8>,
    /// The length of the longest token, in bytes.
    max_len: usize,
    /// Where each rank's bytes start in `bytes`, and one more: the end.
    starts: Vec<u32>,
    /// Ranks by the hash of their bytes (linear probing); `EMPTY` is free.
    table: Vec<u32>,
}

impl Vocabulary {
    /// From the tokens of ranks 0, 1, 2... in order.
    fn new<'a>(tokens: impl Iterator<Item = &'a [u8]>) -> Self {
        let mut bytes = Vec::new();
        let mut starts = vec![0u32];
        let mut max_len = 0;
        for t in tokens {
            max_len = max_len.max(t.len());
            bytes.extend_from_slice(t);
            starts.push(bytes.len() as u32);
        }
        bytes.shrink_to_fit();
        starts.shrink_to_fit();
        let n = starts.len() - 1;
        // At most half full, so probes stay short.
        let mut table = vec![EMPTY; (2 * n).next_power_of_two().max(2)];
        let mask = table.len() - 1;
        for rank in 0..n as Rank {
            let token = &bytes[starts[rank as usize] as usize..starts[rank as usize + 1] as usize];
            let mut slot = hash(token) as usize & mask;
            while table[slot] != EMPTY {
                slot = (slot + 1) & mask;
            }
            table[slot] = rank;
        }
        Vocabulary {
            bytes,
            max_len,
            starts,
            table,
        }
    }

    fn token(&self, rank: Rank) -> &[u8] {
        let r = rank as usize;
        &self.bytes[self.starts[r] as usize..self.starts[r + 1] as usize]
    }

    fn rank(&self, piece: &[u8]) -> Option<Rank> {
        let mask = self.table.len() - 1;
        let mut slot = hash(piece) as usize & mask;
        loop {
            match self.table[slot] {
                EMPTY => return None,
                r if self.token(r) == piece => return Some(r),
                _ => slot = (slot + 1) & mask,
            }
        }
    }
}

/// FNV-1a: short keys, no need to resist chosen collisions (the keys are
/// the fixed vocabulary; lookups of other bytes just miss).
fn hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

struct Bpe {
    vocab: Vocabulary,
    split: fancy_regex::Regex,
}

impl Bpe {
    /// o200k_base, read out of tiktoken's `CoreBPE`, which is then dropped.
    fn o200k() -> Result<Self, String> {
        let core = tiktoken_rs::o200k_base().map_err(|e| e.to_string())?;
        // Ordinary ranks are 0.. without gaps; the first rank that does not
        // decode ends them (special tokens are not split out of text here).
        let mut tokens = Vec::new();
        for rank in 0.. {
            match core.decode_bytes(&[rank]) {
                Ok(t) => tokens.push(t),
                Err(_) => break,
            }
        }
        if tokens.len() < 256 {
            return Err(format!("the vocabulary has only {} tokens", tokens.len()));
        }
        drop(core);
        let vocab = Vocabulary::new(tokens.iter().map(Vec::as_slice));
        drop(tokens);
        release_freed_memory();
        let split =
            fancy_regex::Regex::new(tiktoken_rs::O200K_BASE_PAT_STR).map_err(|e| e.to_string())?;
        Ok(Bpe { vocab, split })
    }

    fn count(&self, text: &str) -> u64 {
        let mut n = 0u64;
        self.pieces(text, |piece| {
            n += self.piece_tokens(piece);
            true
        });
        n
    }

    fn piece_tokens(&self, piece: &[u8]) -> u64 {
        match self.vocab.rank(piece) {
            Some(_) => 1,
            None => self.merge(piece).len() as u64 - 1,
        }
    }

    fn count_within(&self, text: &str, limit: u64) -> Option<u64> {
        let mut n = 0u64;
        let mut over = false;
        self.pieces(text, |piece| {
            // A piece of L bytes holds at least L / max_len tokens: one
            // that cannot fit is not worth merging.
            let least = piece.len().div_ceil(self.vocab.max_len.max(1)) as u64;
            if n.saturating_add(least) > limit {
                over = true;
                return false;
            }
            n += self.piece_tokens(piece);
            over = n > limit;
            !over
        });
        (!over).then_some(n)
    }

    fn count_split(&self, text: &str, limit: u64) -> Option<SplitCount> {
        let mut head = 0u64;
        let mut last: Option<(usize, u64)> = None;
        let mut over = false;
        self.pieces(text, |piece| {
            let least = piece.len().div_ceil(self.vocab.max_len.max(1)) as u64;
            let before = head + last.map_or(0, |(_, n)| n);
            if before.saturating_add(least) > limit {
                over = true;
                return false;
            }
            if let Some((_, n)) = last {
                head += n;
            }
            let n = self.piece_tokens(piece);
            // Pieces are slices of `text`.
            last = Some((piece.as_ptr() as usize - text.as_ptr() as usize, n));
            over = before + n > limit;
            !over
        });
        if over {
            return None;
        }
        let (tail_start, tail_tokens) = last.unwrap_or((text.len(), 0));
        Some(SplitCount {
            head,
            tail_start,
            tail_tokens,
        })
    }

    /// Bytes of `text` that its first `max` tokens cover.
    fn prefix_len(&self, text: &str, max: u64) -> usize {
        let mut left = max;
        let mut end = 0;
        self.pieces(text, |piece| {
            if self.vocab.rank(piece).is_some() {
                if left == 0 {
                    return false;
                }
                left -= 1;
                end += piece.len();
                return true;
            }
            let bounds = self.merge(piece);
            let tokens = bounds.len() as u64 - 1;
            if tokens <= left {
                left -= tokens;
                end += piece.len();
                return true;
            }
            end += bounds[left as usize];
            left = 0;
            false
        });
        end
    }

    /// Calls `each` with every piece of `text` in order, until it returns
    /// false. A piece the pattern cannot match (its backtracking limit) is
    /// taken whole from there on.
    fn pieces(&self, text: &str, mut each: impl FnMut(&[u8]) -> bool) {
        let mut at = 0;
        for m in self.split.find_iter(text) {
            let Ok(m) = m else { break };
            at = m.end();
            if !each(m.as_str().as_bytes()) {
                return;
            }
        }
        if at < text.len() {
            each(&text.as_bytes()[at..]);
        }
    }

    /// Byte-pair merging of a piece that is not a token itself: the
    /// boundaries of its tokens, from 0 to `piece.len()`.
    ///
    /// Parts form a linked list over the piece's byte offsets; a heap holds
    /// every adjacent pair that is a token, lowest rank (then leftmost)
    /// first. A popped pair is merged unless either part changed since it
    /// was pushed. O(n log n), so a long piece cannot stall a request.
    fn merge(&self, piece: &[u8]) -> Vec<usize> {
        let len = piece.len();
        // next[i]: start of the part after the part starting at i (len at
        // the end); prev likewise. Parts are alive while start[i] holds.
        let mut next: Vec<usize> = (1..=len).collect();
        let mut prev: Vec<usize> = (0..len).map(|i| i.wrapping_sub(1)).collect();
        let mut alive = vec![true; len];
        let mut heap = BinaryHeap::new();
        // The rank of the part at `start` joined with the one after it.
        let pair = |start: usize, next: &[usize]| -> Option<Rank> {
            let mid = next[start];
            (mid < len).then(|| self.vocab.rank(&piece[start..next[mid]]))?
        };
        for i in 0..len.saturating_sub(1) {
            if let Some(r) = pair(i, &next) {
                heap.push(std::cmp::Reverse((r, i, next[i + 1])));
            }
        }
        while let Some(std::cmp::Reverse((_, start, end))) = heap.pop() {
            let mid = next[start];
            // Stale: a part of this pair was merged into another since.
            if !alive[start] || mid >= len || next[mid] != end {
                continue;
            }
            alive[mid] = false;
            next[start] = end;
            if end < len {
                prev[end] = start;
            }
            if let Some(r) = pair(start, &next) {
                heap.push(std::cmp::Reverse((r, start, next[next[start]])));
            }
            let before = prev[start];
            if before < len
                && let Some(r) = pair(before, &next)
            {
                heap.push(std::cmp::Reverse((r, before, end)));
            }
        }
        let mut bounds = Vec::new();
        let mut i = 0;
        while i < len {
            bounds.push(i);
            i = next[i];
        }
        bounds.push(len);
        bounds
    }
}

/// Gives the heap pages that loading freed back to the system: without it
/// glibc keeps the tokenizer's 40 MB of small allocations resident.
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
#[path = "tokens_tests.rs"]
mod tests;
