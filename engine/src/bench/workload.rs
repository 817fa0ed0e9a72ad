//! What a benchmark sends and when: the load (closed loop at a
//! concurrency, open loop at a rate with Poisson or constant arrivals),
//! when a step stops, the prompt and output lengths (fixed or drawn from a
//! distribution) and the prompts themselves (synthetic ones of a given
//! length in tokens, or lines of a JSONL file).
//!
//! Everything random comes from one seeded generator (SplitMix64, a few
//! lines here rather than a crate, so that a seed names the same schedule
//! and prompts in every version), so two runs with the same seed send the
//! same requests at the same intended times.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// How requests are issued during one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Load {
    /// `concurrency` clients, each sending its next request when its last
    /// one ended.
    Closed { concurrency: usize },
    /// Requests sent at `rate` per second whatever the server does;
    /// latencies count from each request's intended send time.
    Open { rate: f64, arrivals: Arrivals },
}

impl Load {
    /// `concurrency` or `rate`, as the report names the kind of step.
    pub fn kind(&self) -> &'static str {
        match self {
            Load::Closed { .. } => "concurrency",
            Load::Open { .. } => "rate",
        }
    }

    /// The step's concurrency or rate.
    pub fn value(&self) -> f64 {
        match *self {
            Load::Closed { concurrency } => concurrency as f64,
            Load::Open { rate, .. } => rate,
        }
    }
}

impl fmt::Display for Load {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Load::Closed { concurrency } => write!(f, "concurrency {concurrency}"),
            Load::Open { rate, arrivals } => write!(f, "rate {rate}/s ({arrivals})"),
        }
    }
}

/// When the requests of an open loop are due.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Arrivals {
    /// Exponentially distributed gaps (a Poisson process), as real users
    /// arrive and as vLLM's benchmark sends by default.
    Poisson,
    /// Exactly 1/rate apart.
    Constant,
}

impl fmt::Display for Arrivals {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arrivals::Poisson => "poisson",
            Arrivals::Constant => "constant",
        })
    }
}

/// When a step (or its warm-up) ends: after `requests` requests were
/// sent, or when `duration` has passed since it started, whichever comes
/// first. Requests in flight then are waited for and counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stop {
    pub requests: Option<u64>,
    pub duration: Option<Duration>,
}

impl Stop {
    pub fn is_empty(&self) -> bool {
        self.requests == Some(0) || self.duration == Some(Duration::ZERO)
    }

    /// Nothing to do at all (a warm-up that was not asked for).
    pub fn none() -> Stop {
        Stop {
            requests: Some(0),
            duration: None,
        }
    }
}

/// A length in tokens: fixed, or drawn per request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Lengths {
    Fixed(u32),
    /// Uniform over `lo..=hi`.
    Uniform {
        lo: u32,
        hi: u32,
    },
    /// Normal with this mean and standard deviation, rounded, at least 1.
    Normal {
        mean: f64,
        sd: f64,
    },
}

impl Lengths {
    /// `N`, `LO..HI` (uniform, both included) or `normal:MEAN,SD`.
    pub fn parse(s: &str) -> Result<Lengths, String> {
        let bad = || format!("invalid length \"{s}\", expected N, LO..HI or normal:MEAN,SD");
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("normal:") {
            let (mean, sd) = rest.split_once(',').ok_or_else(bad)?;
            let mean: f64 = mean.trim().parse().map_err(|_| bad())?;
            let sd: f64 = sd.trim().parse().map_err(|_| bad())?;
            if !(mean.is_finite() && sd.is_finite() && mean >= 1.0 && sd >= 0.0) {
                return Err(bad());
            }
            return Ok(Lengths::Normal { mean, sd });
        }
        if let Some((lo, hi)) = s.split_once("..") {
            let lo: u32 = lo.trim().parse().map_err(|_| bad())?;
            let hi: u32 = hi.trim().parse().map_err(|_| bad())?;
            if lo == 0 || hi < lo {
                return Err(bad());
            }
            return Ok(Lengths::Uniform { lo, hi });
        }
        match s.parse::<u32>() {
            Ok(n) if n > 0 => Ok(Lengths::Fixed(n)),
            _ => Err(bad()),
        }
    }

    pub fn draw(&self, rng: &mut Rng) -> u32 {
        match *self {
            Lengths::Fixed(n) => n,
            Lengths::Uniform { lo, hi } => lo + (rng.below(u64::from(hi - lo) + 1) as u32),
            Lengths::Normal { mean, sd } => {
                let v = (mean + sd * rng.standard_normal()).round();
                v.clamp(1.0, f64::from(u32::MAX)) as u32
            }
        }
    }
}

impl fmt::Display for Lengths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Lengths::Fixed(n) => write!(f, "{n}"),
            Lengths::Uniform { lo, hi } => write!(f, "{lo}..{hi}"),
            Lengths::Normal { mean, sd } => write!(f, "normal:{mean},{sd}"),
        }
    }
}

/// SplitMix64: small, fast, and the same sequence for a seed forever.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `0..n` (`n` > 0); the modulo bias is below 2^-40 for
    /// the small `n` used here.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Exponential with mean 1.
    pub fn exponential(&mut self) -> f64 {
        // 1 - unit() is in (0, 1], so the logarithm is finite.
        -(1.0 - self.unit()).ln()
    }

    /// Standard normal (Box-Muller).
    pub fn standard_normal(&mut self) -> f64 {
        let u1 = 1.0 - self.unit();
        let u2 = self.unit();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

/// The gaps between the intended send times of an open loop.
pub struct Schedule {
    rate: f64,
    arrivals: Arrivals,
    rng: Rng,
}

impl Schedule {
    pub fn new(rate: f64, arrivals: Arrivals, seed: u64) -> Schedule {
        Schedule {
            rate,
            arrivals,
            rng: Rng::new(seed ^ 0x5EED_A11F),
        }
    }

    /// The gap before the next request (the first request is due at the
    /// step's start).
    pub fn next_gap(&mut self) -> Duration {
        let mean = 1.0 / self.rate;
        let secs = match self.arrivals {
            Arrivals::Constant => mean,
            Arrivals::Poisson => mean * self.rng.exponential(),
        };
        Duration::from_secs_f64(secs.min(86_400.0))
    }
}

/// One request's input: what to ask and how many tokens to ask for.
#[derive(Clone, Debug, PartialEq)]
pub struct Prompt {
    pub content: PromptContent,
    /// An Anthropic `system` (or, on Chat Completions, a first system
    /// message).
    pub system: Option<String>,
    pub max_tokens: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum PromptContent {
    /// One user message.
    Text(String),
    /// Messages sent as given (each an object with `role` and `content`).
    Messages(Vec<Value>),
}

/// One line of a prompts file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptLine {
    prompt: Option<String>,
    messages: Option<Vec<Value>>,
    system: Option<String>,
    max_tokens: Option<u32>,
}

/// One line of a prompts file, checked.
#[derive(Clone, Debug, PartialEq)]
pub struct FilePrompt {
    pub content: PromptContent,
    pub system: Option<String>,
    /// Replaces the drawn output length when given.
    pub max_tokens: Option<u32>,
}

/// Most lines a prompts file may have, and most bytes it may hold.
const MAX_PROMPT_LINES: usize = 1_000_000;
const MAX_PROMPT_FILE: u64 = 1 << 30;

/// Reads a JSONL prompts file: one object per line with `prompt` (a
/// string) or `messages` (an array of messages), and optionally `system`
/// and `max_tokens`. Blank lines are skipped. A line's `max_tokens`, when
/// given, replaces the drawn output length.
pub fn read_prompts(path: &Path) -> Result<Vec<FilePrompt>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > MAX_PROMPT_FILE {
        return Err(format!("{}: larger than 1 GiB", path.display()));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if out.len() >= MAX_PROMPT_LINES {
            return Err(format!(
                "{}: more than {MAX_PROMPT_LINES} prompts",
                path.display()
            ));
        }
        let at = |m: String| format!("{}:{}: {m}", path.display(), i + 1);
        let p: PromptLine = serde_json::from_str(line).map_err(|e| at(e.to_string()))?;
        let content = match (p.prompt, p.messages) {
            (Some(t), None) => PromptContent::Text(t),
            (None, Some(m)) if !m.is_empty() => {
                if !m
                    .iter()
                    .all(|v| v.get("role").is_some_and(Value::is_string))
                {
                    return Err(at("every message needs a \"role\" string".into()));
                }
                PromptContent::Messages(m)
            }
            (None, Some(_)) => return Err(at("\"messages\" is empty".into())),
            _ => {
                return Err(at(
                    "expected exactly one of \"prompt\" or \"messages\"".into()
                ));
            }
        };
        if p.max_tokens == Some(0) {
            return Err(at("\"max_tokens\" must be at least 1".into()));
        }
        out.push(FilePrompt {
            content,
            system: p.system,
            max_tokens: p.max_tokens,
        });
    }
    if out.is_empty() {
        return Err(format!("{}: no prompts", path.display()));
    }
    Ok(out)
}

/// Where prompts come from.
#[derive(Clone, Debug)]
pub enum PromptSource {
    /// Made up: English words to `prompt_tokens` tokens (o200k).
    Synthetic { prompt_tokens: Lengths },
    /// A prompts file's lines, in order, over and over.
    File(Vec<FilePrompt>),
}

/// Distinct prompts made before a step starts (then used in turn), so
/// that the tokenizer never runs while requests are being timed.
pub const PROMPT_POOL: usize = 512;

/// The prompts of a step, made up front: `count` of them (at most
/// [`PROMPT_POOL`]), each with its output length.
pub fn make_prompts(
    source: &PromptSource,
    output: Lengths,
    count: usize,
    seed: u64,
) -> Vec<Prompt> {
    let mut rng = Rng::new(seed);
    let count = count.clamp(1, PROMPT_POOL);
    match source {
        PromptSource::File(lines) => lines
            .iter()
            .cycle()
            .take(count.min(lines.len()).max(1))
            .map(|line| Prompt {
                content: line.content.clone(),
                system: line.system.clone(),
                max_tokens: line.max_tokens.unwrap_or_else(|| output.draw(&mut rng)),
            })
            .collect(),
        PromptSource::Synthetic { prompt_tokens } => (0..count)
            .map(|_| {
                let n = prompt_tokens.draw(&mut rng);
                Prompt {
                    content: PromptContent::Text(synthetic_text(n, &mut rng)),
                    system: None,
                    max_tokens: output.draw(&mut rng),
                }
            })
            .collect(),
    }
}

/// Common English words; each is one o200k token with its leading space.
const WORDS: &[&str] = &[
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by",
    "on", "not", "he", "this", "are", "or", "his", "from", "at", "which", "but", "have", "an",
    "had", "they", "you", "were", "their", "one", "all", "we", "can", "her", "has", "there",
    "been", "if", "more", "when", "will", "would", "who", "so", "no", "time", "people", "water",
    "river", "light", "house", "world", "story", "answer", "question", "little", "great",
];

/// Text of exactly `tokens` o200k tokens (as [`crate::tokens::count`]
/// counts them), random words so that prompts do not share a prefix a
/// server could cache.
pub fn synthetic_text(tokens: u32, rng: &mut Rng) -> String {
    let want = u64::from(tokens);
    let mut text = String::new();
    // About five bytes a word here; grow until there are enough tokens.
    let mut bytes = tokens as usize * 5;
    loop {
        while text.len() < bytes {
            if !text.is_empty() {
                text.push(' ');
            }
            text.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
        }
        if crate::tokens::count(&text) >= want {
            return crate::tokens::truncate(&text, want);
        }
        bytes *= 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_parse_and_draw_within_bounds() {
        assert_eq!(Lengths::parse("128"), Ok(Lengths::Fixed(128)));
        assert_eq!(
            Lengths::parse("10..20"),
            Ok(Lengths::Uniform { lo: 10, hi: 20 })
        );
        assert_eq!(
            Lengths::parse("normal:100,10"),
            Ok(Lengths::Normal {
                mean: 100.0,
                sd: 10.0
            })
        );
        for bad in ["0", "", "20..10", "x", "normal:1", "normal:-1,2", "0..3"] {
            assert!(Lengths::parse(bad).is_err(), "{bad}");
        }
        let mut rng = Rng::new(7);
        let u = Lengths::Uniform { lo: 10, hi: 12 };
        let drawn: Vec<u32> = (0..200).map(|_| u.draw(&mut rng)).collect();
        assert!(drawn.iter().all(|n| (10..=12).contains(n)));
        for n in 10..=12 {
            assert!(drawn.contains(&n), "{n} never drawn");
        }
    }

    #[test]
    fn poisson_gaps_average_one_over_rate() {
        let mut s = Schedule::new(50.0, Arrivals::Poisson, 1);
        let total: Duration = (0..20_000).map(|_| s.next_gap()).sum();
        let mean = total.as_secs_f64() / 20_000.0;
        assert!((mean - 0.02).abs() < 0.001, "mean gap {mean}");
        let mut c = Schedule::new(4.0, Arrivals::Constant, 1);
        assert_eq!(c.next_gap(), Duration::from_millis(250));
    }

    #[test]
    fn synthetic_prompts_have_the_asked_length() {
        let mut rng = Rng::new(3);
        for n in [1, 7, 128, 1000] {
            let t = synthetic_text(n, &mut rng);
            assert_eq!(crate::tokens::count(&t), u64::from(n), "{n}");
        }
    }

    #[test]
    fn prompt_files_are_checked_line_by_line() {
        let dir = std::env::temp_dir().join(format!("sluice-bench-prompts-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good.jsonl");
        std::fs::write(
            &good,
            "{\"prompt\": \"hi\"}\n\n{\"messages\": [{\"role\": \"user\", \"content\": \"yo\"}], \"max_tokens\": 5}\n",
        )
        .unwrap();
        let lines = read_prompts(&good).unwrap();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1].max_tokens, Some(5));
        let bad = dir.join("bad.jsonl");
        std::fs::write(
            &bad,
            "{\"prompt\": \"hi\"}\n{\"prompt\": \"a\", \"tokens\": 3}\n",
        )
        .unwrap();
        let e = read_prompts(&bad).unwrap_err();
        assert!(e.contains("bad.jsonl:2:") && e.contains("tokens"), "{e}");
        std::fs::write(&bad, "{\"prompt\": \"a\", \"messages\": []}\n").unwrap();
        assert!(read_prompts(&bad).unwrap_err().contains("exactly one"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
