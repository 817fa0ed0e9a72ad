//! `sluice mock --config FILE`: the flags' settings in YAML, plus a
//! rotation of replies and faults written as in scenario files (see
//! fixtures/scenarios/README.md), checked with the scenario's own code.
//!
//! ```yaml
//! listen: 127.0.0.1:8090
//! ttft: 200ms
//! tokens: 32..256
//! token_rate: 50/s
//! faults:                      # on every reply; `every` or `probability` (0 to 1) to thin them
//!   - stall_after: {events: 5, for: 30s}
//!     probability: 0.05
//! replies:                     # a rotation: each wire takes them in turn
//!   - {}                       # synthesized text as set above (tokens, ttft, itl, usage may be overridden)
//!   - fixture: openai/text_stop.sse
//!   - text: [Hel, lo]
//!     faults: [{status: {code: 429, retry_after: 7}}]
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::args::{self, Dist, FaultRule, Tokens, When};
use crate::config::node::{self, Kind, Node};
use crate::config::{Diagnostic, Pos, Spanned};
use crate::scenario::build::{Cx, Turn};
use crate::scenario::spec::{RawFault, RawToolCall, RawTurn};

/// The file, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMockFile {
    listen: Option<Spanned<String>>,
    threads: Option<Spanned<u64>>,
    journal: Option<Spanned<u64>>,
    seed: Option<Spanned<u64>>,
    ttft: Option<Spanned<String>>,
    tokens: Option<Spanned<Value>>,
    itl: Option<Spanned<String>>,
    token_rate: Option<Spanned<Value>>,
    usage: Option<Spanned<Value>>,
    replay: Option<Spanned<String>>,
    speed: Option<Spanned<f64>>,
    /// Where `fixture:` paths start (default: the file's directory).
    recordings: Option<Spanned<String>>,
    #[serde(default)]
    faults: Vec<Spanned<RawFault>>,
    replies: Option<Spanned<Vec<Spanned<RawReply>>>>,
}

/// One reply of the rotation: synthesized text (no body given, with its
/// own `tokens`, `ttft`, `itl`, `token_rate`, `usage` if wanted) or a
/// scenario turn (`fixture`, `text`, `flood`, `tool_call`, `refusal`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReply {
    tokens: Option<Spanned<Value>>,
    ttft: Option<Spanned<String>>,
    itl: Option<Spanned<String>>,
    token_rate: Option<Spanned<Value>>,
    usage: Option<Spanned<Value>>,
    fixture: Option<Spanned<String>>,
    text: Option<Spanned<Vec<String>>>,
    flood: Option<Spanned<String>>,
    tool_call: Option<Spanned<RawToolCall>>,
    refusal: Option<Spanned<Vec<String>>>,
    pace: Option<Spanned<String>>,
    speed: Option<Spanned<f64>>,
    #[serde(default)]
    faults: Vec<Spanned<RawFault>>,
}

/// The knobs of synthesized text; `None`: not set here.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct SynthKnobs {
    pub tokens: Option<Tokens>,
    pub ttft: Option<Dist<Duration>>,
    pub itl: Option<Dist<Duration>>,
    pub usage: Option<bool>,
}

/// One reply of the rotation, checked.
#[derive(Debug, Clone)]
pub enum ReplySpec {
    /// Synthesized text; unset knobs come from the top level.
    Synth(SynthKnobs),
    /// A scenario turn; `usage: off` strips its usage.
    Turn(Box<Turn>, Option<bool>),
}

/// The file, checked.
#[derive(Debug, Default)]
pub struct FileSettings {
    pub listen: Option<SocketAddr>,
    pub threads: Option<usize>,
    pub journal: Option<usize>,
    pub seed: Option<u64>,
    pub synth: SynthKnobs,
    pub replay: Option<PathBuf>,
    pub speed: Option<f64>,
    pub faults: Vec<FaultRule>,
    pub replies: Vec<ReplySpec>,
}

/// Reads and checks `file`; every problem comes back, sorted.
pub fn load(file: &Path) -> Result<FileSettings, Vec<Diagnostic>> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        vec![Diagnostic::error(
            file,
            Pos::START,
            format!("cannot read mock config: {e}"),
        )]
    })?;
    parse(file, &text)
}

pub fn parse(file: &Path, text: &str) -> Result<FileSettings, Vec<Diagnostic>> {
    let mut cx = Cx::new(file);
    let mut node = match node::parse(text) {
        Ok(n) => n,
        Err((pos, msg)) => {
            cx.error(pos, msg);
            return Err(cx.finish());
        }
    };
    if matches!(node.kind, Kind::Null) {
        cx.error(Pos::START, "mock config is empty");
        return Err(cx.finish());
    }
    // `every` and `probability` sit beside each top-level fault; they are
    // taken out so that the rest reads as a scenario fault.
    let whens = take_whens(&mut node);
    let Some(raw) = cx.read::<RawMockFile>(&node) else {
        return Err(cx.finish());
    };
    let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let settings = settings(&mut cx, raw, whens, &dir);
    if cx.has_errors() {
        return Err(cx.finish());
    }
    Ok(settings)
}

fn settings(cx: &mut Cx, raw: RawMockFile, whens: Vec<WhenAt>, dir: &Path) -> FileSettings {
    let listen = raw.listen.and_then(|l| match l.value.trim().parse() {
        Ok(a) => Some(a),
        Err(_) => {
            cx.error(
                l.pos,
                format!(
                    "invalid listen address \"{}\", expected IP:PORT such as 127.0.0.1:8090",
                    l.value
                ),
            );
            None
        }
    });
    let positive = |cx: &mut Cx, v: Option<Spanned<u64>>, what: &str| {
        v.and_then(|n| {
            if n.value == 0 {
                cx.error(n.pos, format!("{what} must be at least 1, found 0"));
                None
            } else {
                Some(n.value as usize)
            }
        })
    };
    let threads = positive(cx, raw.threads, "threads");
    let journal = positive(cx, raw.journal, "journal");
    let synth = knobs(
        cx,
        raw.tokens.as_ref(),
        raw.ttft.as_ref(),
        raw.itl.as_ref(),
        raw.token_rate.as_ref(),
        raw.usage.as_ref(),
    );
    let speed = raw.speed.and_then(|s| {
        if s.value.is_finite() && s.value > 0.0 {
            Some(s.value)
        } else {
            cx.error(
                s.pos,
                format!("speed must be a number above zero, found {}", s.value),
            );
            None
        }
    });
    let mut faults = Vec::new();
    for (i, f) in raw.faults.iter().enumerate() {
        let when = whens
            .iter()
            .find(|w| w.index == i)
            .map_or(Ok(When::Always), |w| w.when.clone());
        let when = match when {
            Ok(w) => w,
            Err((pos, msg)) => {
                cx.error(pos, msg);
                continue;
            }
        };
        if let Some(fault) = cx.fault(f) {
            faults.push(FaultRule { fault, when });
        }
    }
    let recordings = raw
        .recordings
        .map_or_else(|| dir.to_path_buf(), |r| dir.join(r.value));
    let mut replies = Vec::new();
    if let Some(list) = raw.replies {
        if list.value.is_empty() {
            cx.error(list.pos, "replies is empty, expected at least one reply");
        }
        for r in list.value {
            replies.extend(reply(cx, r, &recordings));
        }
    }
    FileSettings {
        listen,
        threads,
        journal,
        seed: raw.seed.map(|s| s.value),
        synth,
        replay: raw.replay.map(|r| dir.join(r.value)),
        speed,
        faults,
        replies,
    }
}

fn reply(cx: &mut Cx, r: Spanned<RawReply>, recordings: &Path) -> Option<ReplySpec> {
    let pos = r.pos;
    let r = r.value;
    let knobs = knobs(
        cx,
        r.tokens.as_ref(),
        r.ttft.as_ref(),
        r.itl.as_ref(),
        r.token_rate.as_ref(),
        r.usage.as_ref(),
    );
    let has_body = r.fixture.is_some()
        || r.text.is_some()
        || r.flood.is_some()
        || r.tool_call.is_some()
        || r.refusal.is_some();
    if !has_body {
        // Synthesized text: faults, pace and speed still apply.
        if r.pace.is_some() {
            cx.error(
                pos,
                "pace is for fixture, text, flood, tool_call and refusal replies; synthesized text takes itl or token_rate",
            );
        }
        if r.speed.is_some() || !r.faults.is_empty() {
            cx.error(
                pos,
                "speed and faults of synthesized text go at the top level (with every or probability), or write the reply as text: [...]",
            );
        }
        return Some(ReplySpec::Synth(knobs));
    }
    let synth_only = [
        ("tokens", knobs.tokens.is_some()),
        ("ttft", knobs.ttft.is_some()),
        ("itl or token_rate", knobs.itl.is_some()),
    ];
    for (name, given) in synth_only {
        if given {
            cx.error(
                pos,
                format!("{name} only shapes synthesized text (a reply without fixture, text, flood, tool_call or refusal)"),
            );
        }
    }
    let turn = RawTurn {
        fixture: r.fixture,
        text: r.text,
        flood: r.flood,
        tool_call: r.tool_call,
        refusal: r.refusal,
        pace: r.pace,
        speed: r.speed,
        faults: r.faults,
    };
    let mut wire = None;
    let turn = cx.turn(&Spanned::new(turn, pos), recordings, &mut wire)?;
    Some(ReplySpec::Turn(Box::new(turn), knobs.usage))
}

fn knobs(
    cx: &mut Cx,
    tokens: Option<&Spanned<Value>>,
    ttft: Option<&Spanned<String>>,
    itl: Option<&Spanned<String>>,
    token_rate: Option<&Spanned<Value>>,
    usage: Option<&Spanned<Value>>,
) -> SynthKnobs {
    let tokens =
        tokens.and_then(|t| checked(cx, t.pos, "tokens", args::parse_tokens(&scalar(&t.value))));
    let ttft = ttft.and_then(|t| checked(cx, t.pos, "ttft", args::parse_duration_dist(&t.value)));
    let mut itl = itl.and_then(|t| checked(cx, t.pos, "itl", args::parse_duration_dist(&t.value)));
    if let Some(rate) = token_rate {
        if itl.is_some() {
            cx.error(rate.pos, "token_rate: give itl or token_rate, not both");
        } else {
            itl = checked(
                cx,
                rate.pos,
                "token_rate",
                args::parse_rate(&scalar(&rate.value)),
            )
            .map(Dist::Fixed);
        }
    }
    let usage = usage.and_then(|u| match &u.value {
        Value::Bool(b) => Some(*b),
        v => checked(cx, u.pos, "usage", args::parse_on_off(&scalar(v))),
    });
    SynthKnobs {
        tokens,
        ttft,
        itl,
        usage,
    }
}

fn checked<T>(cx: &mut Cx, pos: Pos, what: &str, r: Result<T, String>) -> Option<T> {
    r.map_err(|e| cx.error(pos, format!("{what}: {e}"))).ok()
}

/// A scalar as the text a flag would have.
fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// `every` / `probability` of the top-level fault at `index`.
struct WhenAt {
    index: usize,
    when: Result<When, (Pos, String)>,
}

/// Takes `every` and `probability` out of each mapping under the top-level
/// `faults` key.
fn take_whens(doc: &mut Node) -> Vec<WhenAt> {
    let mut out = Vec::new();
    let Kind::Map(entries) = &mut doc.kind else {
        return out;
    };
    let Some((_, faults)) = entries
        .iter_mut()
        .find(|(k, _)| matches!(&k.kind, Kind::Str(s) if s == "faults"))
    else {
        return out;
    };
    let Kind::Seq(items) = &mut faults.kind else {
        return out;
    };
    for (index, item) in items.iter_mut().enumerate() {
        let Kind::Map(keys) = &mut item.kind else {
            continue;
        };
        let mut taken: Vec<(String, Node)> = Vec::new();
        keys.retain(|(k, v)| match &k.kind {
            Kind::Str(s) if s == "every" || s == "probability" => {
                taken.push((s.clone(), v.clone()));
                false
            }
            _ => true,
        });
        // `- truncate` with `every:` beside it is a mapping `truncate: null`.
        let when = match taken.as_slice() {
            [] => continue,
            [(name, v)] if name == "every" => match v.kind {
                Kind::UInt(n) if n >= 1 => Ok(When::Every(n)),
                Kind::Int(n) if n >= 1 => Ok(When::Every(n as u64)),
                _ => Err((v.pos, "every must be a whole number of at least 1".into())),
            },
            [(_, v)] => match v.kind {
                Kind::Float(p) if (0.0..=1.0).contains(&p) => Ok(When::Probability(p)),
                Kind::UInt(p) if p <= 1 => Ok(When::Probability(p as f64)),
                Kind::Int(p) if (0..=1).contains(&p) => Ok(When::Probability(p as f64)),
                _ => Err((
                    v.pos,
                    "probability must be a number from 0 to 1, such as 0.05".into(),
                )),
            },
            _ => Err((item.pos, "give every or probability, not both".into())),
        };
        out.push(WhenAt { index, when });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_testkit::Fault;

    fn parse_str(text: &str) -> Result<FileSettings, Vec<String>> {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/recorded/mock.yaml");
        parse(&file, text).map_err(|d| d.iter().map(|d| d.to_string()).collect())
    }

    #[test]
    fn a_full_file() {
        let s = parse_str(
            "listen: 127.0.0.1:9000\nthreads: 2\nttft: 100ms..300ms\ntokens: 32..64\n\
             token_rate: 50/s\nusage: off\nseed: 7\n\
             faults:\n  - stall_after: {events: 5, for: 30s}\n    probability: 0.25\n  \
             - truncate: null\n    every: 3\n  - status: {code: 503}\n\
             replies:\n  - {}\n  - {tokens: request, usage: on}\n  - fixture: openai/text_stop.sse\n  \
             - text: [Hel, lo]\n    faults: [{status: {code: 429, retry_after: 7}}]\n",
        )
        .unwrap();
        assert_eq!(s.listen, Some("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(s.threads, Some(2));
        assert_eq!(s.synth.tokens, Some(Tokens::Dist(Dist::Uniform(32, 64))));
        assert_eq!(s.synth.itl, Some(Dist::Fixed(Duration::from_millis(20))));
        assert_eq!(s.synth.usage, Some(false));
        assert_eq!(s.faults.len(), 3);
        assert_eq!(s.faults[0].when, When::Probability(0.25));
        assert_eq!(
            s.faults[1],
            FaultRule {
                fault: Fault::Truncate,
                when: When::Every(3)
            }
        );
        assert_eq!(s.faults[2].when, When::Always);
        assert_eq!(s.replies.len(), 4);
        assert!(matches!(
            &s.replies[1],
            ReplySpec::Synth(k) if k.tokens == Some(Tokens::Request) && k.usage == Some(true)
        ));
        assert!(matches!(&s.replies[3], ReplySpec::Turn(t, None) if t.faults.len() == 1));
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let errs = parse_str(
            "listen: nowhere\ntokens: 9..3\nitl: 5\nbogus: 1\n\
             faults:\n  - stall_after: {events: 5}\n    every: 0\n\
             replies:\n  - fixture: openai/missing.sse\n  - {tokens: 5, text: [a]}\n",
        )
        .unwrap_err();
        let joined = errs.join("\n");
        for want in [
            "mock.yaml:1:9: error: invalid listen address",
            "mock.yaml:2:9: error: tokens: the range",
            "mock.yaml:3:6: error: itl:",
            "mock.yaml:4:1: error: unknown field \"bogus\"",
            "mock.yaml:7:12: error: every must be",
            "fixture \"openai/missing.sse\" is not usable",
            "tokens only shapes synthesized text",
        ] {
            assert!(joined.contains(want), "{want} not in:\n{joined}");
        }
    }
}
