//! The secrets Sluice read from its environment, and scrubbing them from
//! what a provider sends back.
//!
//! A provider (or a proxy in front of one) may quote the request's
//! `Authorization` or `x-api-key` header in an error: a 401 body, a 500
//! page, an in-stream error event; or in what a stream names: the model,
//! a finish reason, a tool call's id. Whatever a provider sends back is
//! scrubbed in `http.rs` before it becomes a [`super::ProviderError`] or
//! one of those names ([`super::Chunk::scrubbed`]), so rejections, logs,
//! ledger rows and the model a client is told only ever see scrubbed text.
//!
//! The threat is an upstream that echoes, not one that hides the key on
//! purpose (that one has the key already). So what is matched is what
//! echoes look like:
//!
//! - the key itself, anywhere, also inside a longer token;
//! - any token (a run of characters without spaces, quotes or brackets)
//!   that shares [`FRAGMENT`] consecutive bytes with a key: a key cut at
//!   either end, or with a few characters changed;
//! - a masked key as providers print it, such as `sk-...abcd` or
//!   `sk-proj-****abcd`: a token of 7 or more bytes that starts with the
//!   key's first 3 bytes and ends with its last 4;
//! - the last token of a text, when it is the start (4 bytes or more) of a
//!   key: a summary cut short in the middle of a key.
//!
//! Other secrets (the alert webhook URL, the storage URL and its password)
//! are phrases: only whole occurrences are scrubbed, because their parts
//! (`https://`, a host name) are ordinary text.
//!
//! Values shorter than [`MIN_SECRET`] bytes are not scrubbed: real keys are
//! 30 bytes or more, and what is shorter is a placeholder such as `EMPTY`
//! or `ollama` (what vLLM's and Ollama's guides tell clients to send), whose
//! scrubbing would only mangle ordinary words in error messages.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{Arc, RwLock};

/// What a secret is replaced with.
pub const REDACTED: &str = "[redacted]";

/// Secrets shorter than this (in bytes) are not scrubbed.
pub const MIN_SECRET: usize = 8;

/// Bytes a token must share with a key, in a row, to be scrubbed.
pub const FRAGMENT: usize = 8;

/// The shortest start of a key scrubbed at the end of a text.
const CUT_PREFIX: usize = 4;

/// The set of secrets, shared: compile adds each one as it reads it, every
/// provider scrubs with the same set.
#[derive(Clone, Default)]
pub struct Secrets(Arc<RwLock<Inner>>);

#[derive(Default)]
struct Inner {
    keys: Vec<Key>,
    phrases: Vec<Vec<u8>>,
}

struct Key {
    value: Vec<u8>,
    /// Every `FRAGMENT`-byte window of `value`, as integers.
    fragments: HashSet<u64>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.read();
        f.debug_struct("Secrets")
            .field("keys", &inner.keys.len())
            .field("phrases", &inner.phrases.len())
            .finish()
    }
}

fn window(bytes: &[u8]) -> u64 {
    let mut w = [0u8; FRAGMENT];
    w.copy_from_slice(&bytes[..FRAGMENT]);
    u64::from_le_bytes(w)
}

impl Secrets {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds an API key: its whole value and its partial echoes are scrubbed.
    pub fn add_key(&self, key: &str) {
        let value = key.trim().as_bytes().to_vec();
        if value.len() < MIN_SECRET {
            return;
        }
        let mut inner = self.0.write().unwrap_or_else(|p| p.into_inner());
        if inner.keys.iter().any(|k| k.value == value) {
            return;
        }
        let fragments = value.windows(FRAGMENT).map(window).collect();
        inner.keys.push(Key { value, fragments });
    }

    /// Adds a secret of which only whole occurrences are scrubbed.
    pub fn add_phrase(&self, phrase: &str) {
        let value = phrase.trim().as_bytes().to_vec();
        if value.len() < MIN_SECRET {
            return;
        }
        let mut inner = self.0.write().unwrap_or_else(|p| p.into_inner());
        if !inner.phrases.contains(&value) {
            inner.phrases.push(value);
        }
    }

    /// Adds a URL that may carry credentials: the whole URL, its password
    /// (`scheme://user:password@host`) and its path with query (where
    /// webhook tokens live).
    pub fn add_url(&self, url: &str) {
        self.add_phrase(url);
        let Some((_, rest)) = url.split_once("://") else {
            return;
        };
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if let Some((userinfo, _)) = authority.rsplit_once('@')
            && let Some((_, password)) = userinfo.split_once(':')
        {
            self.add_phrase(password);
        }
        self.add_phrase(path);
    }

    pub fn is_empty(&self) -> bool {
        let inner = self.read();
        inner.keys.is_empty() && inner.phrases.is_empty()
    }

    /// `text` with every secret and echo of one replaced by [`REDACTED`].
    /// Borrowed when there was nothing to scrub.
    pub fn scrub_bytes<'a>(&self, text: &'a [u8]) -> Cow<'a, [u8]> {
        let inner = self.read();
        if inner.keys.is_empty() && inner.phrases.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out = Cow::Borrowed(text);
        // Longest first, so that a secret containing another goes whole.
        let mut whole: Vec<&[u8]> = inner
            .keys
            .iter()
            .map(|k| k.value.as_slice())
            .chain(inner.phrases.iter().map(Vec::as_slice))
            .collect();
        whole.sort_by_key(|s| std::cmp::Reverse(s.len()));
        for secret in whole {
            if let Some(replaced) = replace_all(&out, secret) {
                out = Cow::Owned(replaced);
            }
        }
        if let Some(replaced) = scrub_tokens(&out, &inner.keys) {
            out = Cow::Owned(replaced);
        }
        out
    }

    /// [`Secrets::scrub_bytes`] of a string. Token boundaries are ASCII, so
    /// replacing whole tokens and whole secrets keeps the text UTF-8.
    pub fn scrub<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.scrub_bytes(text.as_bytes()) {
            Cow::Borrowed(_) => Cow::Borrowed(text),
            Cow::Owned(bytes) => Cow::Owned(
                String::from_utf8(bytes)
                    .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            ),
        }
    }
}

/// `hay` with every occurrence of `needle` replaced, or `None` when there
/// is none.
fn replace_all(hay: &[u8], needle: &[u8]) -> Option<Vec<u8>> {
    let first = find(hay, needle, 0)?;
    let mut out = Vec::with_capacity(hay.len());
    let mut from = 0;
    let mut at = Some(first);
    while let Some(i) = at {
        out.extend_from_slice(&hay[from..i]);
        out.extend_from_slice(REDACTED.as_bytes());
        from = i + needle.len();
        at = find(hay, needle, from);
    }
    out.extend_from_slice(&hay[from..]);
    Some(out)
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// Whether `b` separates tokens: whitespace, quotes, brackets, commas and
/// semicolons. Not `.`, `:`, `*`, `-`, `_`, `/`, `+` or `=`, which keys and
/// masked keys contain.
fn is_separator(b: u8) -> bool {
    b.is_ascii_whitespace()
        || b.is_ascii_control()
        || matches!(
            b,
            b'"' | b'\''
                | b'`'
                | b'<'
                | b'>'
                | b'('
                | b')'
                | b'['
                | b']'
                | b'{'
                | b'}'
                | b','
                | b';'
        )
}

/// A token without the punctuation that ends a sentence or a cut summary.
fn core(token: &[u8]) -> &[u8] {
    let end = token
        .iter()
        .rposition(|b| !matches!(b, b'.' | b':' | b'!' | b'?'))
        .map_or(0, |i| i + 1);
    &token[..end]
}

fn is_echo(token: &[u8], keys: &[Key], last: bool) -> bool {
    let core = core(token);
    keys.iter().any(|k| {
        let v = &k.value;
        let fragment = core.len() >= FRAGMENT
            && core
                .windows(FRAGMENT)
                .any(|w| k.fragments.contains(&window(w)));
        let masked =
            core.len() >= 7 && core.starts_with(&v[..3]) && core.ends_with(&v[v.len() - 4..]);
        let cut = last && core.len() >= CUT_PREFIX && v.starts_with(core);
        fragment || masked || cut
    })
}

/// `text` with each token that echoes a key replaced, or `None` when no
/// token does.
fn scrub_tokens(text: &[u8], keys: &[Key]) -> Option<Vec<u8>> {
    if keys.is_empty() {
        return None;
    }
    let mut tokens = Vec::new();
    let mut start = None;
    for (i, &b) in text.iter().enumerate() {
        match (start, is_separator(b)) {
            (None, false) => start = Some(i),
            (Some(s), true) => {
                tokens.push(s..i);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(s) = start {
        tokens.push(s..text.len());
    }
    let count = tokens.len();
    let echoes: Vec<_> = tokens
        .into_iter()
        .enumerate()
        .filter(|(i, r)| is_echo(&text[r.clone()], keys, *i + 1 == count))
        .map(|(_, r)| r)
        .collect();
    if echoes.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(text.len());
    let mut from = 0;
    for r in echoes {
        out.extend_from_slice(&text[from..r.start]);
        out.extend_from_slice(REDACTED.as_bytes());
        from = r.end;
    }
    out.extend_from_slice(&text[from..]);
    Some(out)
}

#[cfg(test)]
#[path = "secrets_tests.rs"]
mod tests;
