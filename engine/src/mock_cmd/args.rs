//! The flags of `sluice mock` and the small languages of their values:
//! distributions (`64`, `32..256`, `request`), rates (`50/s`) and faults
//! with how often they strike (`--stall-after 5:30s@10%`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sluice_testkit::Fault;

/// `sluice mock`: the testkit's mock provider as a standalone server.
#[derive(clap::Args, Debug, Default)]
#[command(after_help = "\
Faults take an optional @N (every Nth request) or @P% (that share of requests, \
drawn with --seed); without one they strike every request. They are repeatable.

Examples:
  sluice mock --ttft 300ms --token-rate 50/s --tokens 32..256
  sluice mock --stall-after 5@10% --status 429:7@20
  sluice mock --replay fixtures/recorded/openai --speed 2
  sluice mock --config mock.yaml")]
pub struct MockArgs {
    /// Address to listen on (default 127.0.0.1:8090; port 0: one the system picks). The address
    /// bound is printed as the first line on stdout.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// A YAML file with the same settings, a rotation of replies and
    /// faults (see docs/mock.md); flags given too win over it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Worker threads (default: one per CPU).
    #[arg(long, value_name = "N", value_parser = positive)]
    pub threads: Option<usize>,
    /// How many recent requests the journal keeps (default 1000).
    #[arg(long, value_name = "N", value_parser = positive)]
    pub journal: Option<usize>,
    /// Time to first token: from the request to the first content event
    /// (a duration, or MIN..MAX drawn per request).
    #[arg(long, value_name = "DUR", value_parser = parse_duration_dist)]
    pub ttft: Option<Dist<Duration>>,
    /// Tokens per reply: N, MIN..MAX (uniform, both included), or `request`
    /// (the request's max_tokens). Replies stop at the request's max_tokens
    /// with finish `length` either way.
    #[arg(long, value_name = "N|MIN..MAX|request", value_parser = parse_tokens)]
    pub tokens: Option<Tokens>,
    /// Inter-token latency: the gap between events after the first token
    /// (a duration, or MIN..MAX drawn per request).
    #[arg(long, value_name = "DUR", value_parser = parse_duration_dist, conflicts_with = "token_rate")]
    pub itl: Option<Dist<Duration>>,
    /// Tokens per second after the first token (`50/s` or `50`): --itl as a rate.
    #[arg(long, value_name = "N/s", value_parser = parse_rate)]
    pub token_rate: Option<Duration>,
    /// Report usage (`on`, the default) or never (`off`). OpenAI streams
    /// carry a usage chunk only when the request sets
    /// stream_options.include_usage, as OpenAI's do.
    #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
    pub usage: Option<bool>,
    /// Replay recorded streams (a .sse file, or a directory of them) with
    /// their .timing sidecars instead of synthesized text; each wire
    /// rotates through its own recordings.
    #[arg(long, value_name = "FILE_OR_DIR")]
    pub replay: Option<PathBuf>,
    /// Play recorded timing (and --itl/--ttft) this many times faster.
    #[arg(long, value_name = "X", value_parser = parse_speed)]
    pub speed: Option<f64>,
    /// Seeds the draws of distributions and @P% faults (default 0), so a
    /// run can be repeated.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Answer with this HTTP status and a provider-shaped error body, and
    /// `Retry-After: SECS` when given: CODE[:SECS][@N|@P%].
    #[arg(long, value_name = "CODE[:SECS]", value_parser = parse_status)]
    pub status: Vec<FaultRule>,
    /// Wait before the response headers: DUR[@N|@P%].
    #[arg(long, value_name = "DUR", value_parser = parse_delay_headers)]
    pub delay_headers: Vec<FaultRule>,
    /// Go silent after N events, for DUR or until the client leaves:
    /// N[:DUR][@N|@P%].
    #[arg(long, value_name = "N[:DUR]", value_parser = parse_stall)]
    pub stall_after: Vec<FaultRule>,
    /// Close the connection after N events, with a FIN or (`:reset`) a
    /// TCP RST: N[:reset][@N|@P%].
    #[arg(long, value_name = "N[:reset]", value_parser = parse_disconnect)]
    pub disconnect_after: Vec<FaultRule>,
    /// Send the provider's in-stream error event after N events and end
    /// the body: N[@N|@P%].
    #[arg(long, value_name = "N", value_parser = parse_error_after)]
    pub error_after: Vec<FaultRule>,
    /// Replace event N (0-based) with a line that is not JSON: N[@N|@P%].
    #[arg(long, value_name = "N", value_parser = parse_malformed)]
    pub malformed_at: Vec<FaultRule>,
    /// End streams without usage and without their terminator ([DONE],
    /// message_stop): [@N|@P%].
    #[arg(long, value_name = "@N|@P%", num_args = 0..=1, default_missing_value = "", value_parser = parse_truncate)]
    pub truncate: Vec<FaultRule>,
    /// Write every event in pieces of at most N bytes (mid-line,
    /// mid-UTF-8): N[@N|@P%].
    #[arg(long, value_name = "N", value_parser = parse_fragment)]
    pub fragment: Vec<FaultRule>,
    /// Read commands from stdin (`journal`, `quit`): for the load benchmark.
    #[arg(long, hide = true)]
    pub control_stdin: bool,
}

impl MockArgs {
    /// Every fault flag, in a fixed order.
    pub fn fault_rules(&self) -> Vec<FaultRule> {
        [
            &self.status,
            &self.delay_headers,
            &self.stall_after,
            &self.disconnect_after,
            &self.error_after,
            &self.malformed_at,
            &self.truncate,
            &self.fragment,
        ]
        .into_iter()
        .flatten()
        .cloned()
        .collect()
    }

    /// The flags that shape synthesized replies, by name, when given.
    pub fn synth_flags(&self) -> Vec<&'static str> {
        let given = [
            ("--ttft", self.ttft.is_some()),
            ("--tokens", self.tokens.is_some()),
            ("--itl", self.itl.is_some()),
            ("--token-rate", self.token_rate.is_some()),
        ];
        given.iter().filter(|g| g.1).map(|g| g.0).collect()
    }
}

/// A value fixed, or drawn per request from `MIN..MAX` (uniform, both ends
/// included).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Dist<T> {
    Fixed(T),
    Uniform(T, T),
}

/// How many tokens a synthesized reply has.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Tokens {
    Dist(Dist<usize>),
    /// The request's `max_tokens` (`max_completion_tokens`), or
    /// [`REQUEST_FALLBACK`] when it sets none.
    Request,
}

/// Tokens of `--tokens request` for a request without `max_tokens`.
pub const REQUEST_FALLBACK: usize = 64;

/// The most tokens one synthesized reply may have.
pub const MAX_TOKENS: usize = 1_000_000;

/// How often a fault strikes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum When {
    Always,
    /// Every Nth model request (the Nth, 2Nth, ...).
    Every(u64),
    /// Each request with this probability (0 to 1).
    Probability(f64),
}

/// A testkit fault and how often it strikes.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultRule {
    pub fault: Fault,
    pub when: When,
}

fn positive(s: &str) -> Result<usize, String> {
    match s.trim().parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(_) => Err(format!("expected a whole number, found {s:?}")),
    }
}

fn count(s: &str, what: &str) -> Result<usize, String> {
    s.trim()
        .parse::<usize>()
        .map_err(|_| format!("expected {what} (a whole number), found {s:?}"))
}

/// A duration such as `250ms`, `1.5s` or `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s)
        .map_err(|_| format!("expected a duration such as 250ms or 2s, found {s:?}"))
}

/// `DUR` or `MIN..MAX`.
pub fn parse_duration_dist(s: &str) -> Result<Dist<Duration>, String> {
    dist(s, parse_duration)
}

fn dist<T: PartialOrd + Copy>(
    s: &str,
    one: impl Fn(&str) -> Result<T, String>,
) -> Result<Dist<T>, String> {
    match s.split_once("..") {
        None => one(s).map(Dist::Fixed),
        Some((lo, hi)) => {
            let hi = hi.strip_prefix('=').unwrap_or(hi);
            let (lo, hi) = (one(lo)?, one(hi)?);
            if lo > hi {
                return Err(format!(
                    "the range {s:?} is empty: its start is above its end"
                ));
            }
            Ok(Dist::Uniform(lo, hi))
        }
    }
}

/// `N`, `MIN..MAX` or `request`.
pub fn parse_tokens(s: &str) -> Result<Tokens, String> {
    if s.trim() == "request" {
        return Ok(Tokens::Request);
    }
    let one = |v: &str| {
        let n = count(v, "a token count")?;
        if n > MAX_TOKENS {
            return Err(format!("{n} tokens is more than the {MAX_TOKENS} allowed"));
        }
        Ok(n)
    };
    dist(s, one)
        .map(Tokens::Dist)
        .map_err(|e| format!("{e}; expected N, MIN..MAX or request"))
}

/// `50/s` or `50` tokens per second: the gap between tokens.
pub fn parse_rate(s: &str) -> Result<Duration, String> {
    let v = s.trim();
    let v = v.strip_suffix("/s").unwrap_or(v);
    match v.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 1e9 => Ok(Duration::from_secs_f64(1.0 / r)),
        _ => Err(format!(
            "expected tokens per second above zero, such as 50/s, found {s:?}"
        )),
    }
}

pub fn parse_on_off(s: &str) -> Result<bool, String> {
    match s.trim() {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(format!("expected on or off, found {s:?}")),
    }
}

pub fn parse_speed(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(format!("expected a number above zero, found {s:?}")),
    }
}

/// Splits `SPEC[@N|@P%]` into the spec and how often it strikes.
fn when(s: &str) -> Result<(&str, When), String> {
    let Some((spec, at)) = s.rsplit_once('@') else {
        return Ok((s.trim(), When::Always));
    };
    let at = at.trim();
    let when = if let Some(p) = at.strip_suffix('%') {
        match p.trim().parse::<f64>() {
            Ok(p) if (0.0..=100.0).contains(&p) => When::Probability(p / 100.0),
            _ => return Err(format!("expected @P% with P from 0 to 100, found @{at}")),
        }
    } else {
        match at.parse::<u64>() {
            Ok(n) if n >= 1 => When::Every(n),
            _ => {
                return Err(format!(
                    "expected @N (every Nth request, N at least 1) or @P%, found @{at}"
                ));
            }
        }
    };
    Ok((spec.trim(), when))
}

fn rule(s: &str, fault: impl Fn(&str) -> Result<Fault, String>) -> Result<FaultRule, String> {
    let (spec, when) = when(s)?;
    Ok(FaultRule {
        fault: fault(spec)?,
        when,
    })
}

/// `CODE[:RETRY_AFTER]`.
pub fn parse_status(s: &str) -> Result<FaultRule, String> {
    rule(s, |spec| {
        let (code, retry) = match spec.split_once(':') {
            Some((c, r)) => (c, Some(r)),
            None => (spec, None),
        };
        let status = match code.trim().parse::<u16>() {
            Ok(c) if (400..=599).contains(&c) => c,
            _ => {
                return Err(format!(
                    "expected an error status from 400 to 599, found {code:?}"
                ));
            }
        };
        let retry_after = retry
            .map(|r| {
                r.trim().parse::<u64>().map_err(|_| {
                    format!("expected Retry-After in whole seconds after the colon, found {r:?}")
                })
            })
            .transpose()?;
        Ok(Fault::Status {
            status,
            retry_after,
        })
    })
}

pub fn parse_delay_headers(s: &str) -> Result<FaultRule, String> {
    rule(s, |spec| parse_duration(spec).map(Fault::DelayHeaders))
}

/// `N[:DUR|:forever]`.
pub fn parse_stall(s: &str) -> Result<FaultRule, String> {
    rule(s, |spec| {
        let (n, d) = match spec.split_once(':') {
            Some((n, d)) => (n, Some(d.trim())),
            None => (spec, None),
        };
        Ok(Fault::StallAfter {
            events: count(n, "an event count")?,
            duration: match d {
                None | Some("forever") => None,
                Some(d) => Some(parse_duration(d)?),
            },
        })
    })
}

/// `N[:reset|:fin]`.
pub fn parse_disconnect(s: &str) -> Result<FaultRule, String> {
    rule(s, |spec| {
        let (n, how) = match spec.split_once(':') {
            Some((n, h)) => (n, Some(h.trim())),
            None => (spec, None),
        };
        let reset = match how {
            None | Some("fin") => false,
            Some("reset") => true,
            Some(other) => return Err(format!("expected :reset or :fin, found :{other}")),
        };
        Ok(Fault::DisconnectAfter {
            events: count(n, "an event count")?,
            reset,
        })
    })
}

pub fn parse_error_after(s: &str) -> Result<FaultRule, String> {
    rule(s, |spec| {
        count(spec, "an event count").map(Fault::ErrorEventAfter)
    })
}

pub fn parse_malformed(s: &str) -> Result<FaultRule, String> {
    rule(s, |spec| {
        count(spec, "an event index").map(Fault::MalformedAt)
    })
}

pub fn parse_truncate(s: &str) -> Result<FaultRule, String> {
    rule(s, |spec| {
        if spec.is_empty() {
            Ok(Fault::Truncate)
        } else {
            Err(format!("takes only @N or @P%, found {spec:?}"))
        }
    })
}

pub fn parse_fragment(s: &str) -> Result<FaultRule, String> {
    rule(s, |spec| positive(spec).map(Fault::Fragment))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        mock: MockArgs,
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn distributions() {
        assert_eq!(parse_tokens("64"), Ok(Tokens::Dist(Dist::Fixed(64))));
        assert_eq!(
            parse_tokens("32..256"),
            Ok(Tokens::Dist(Dist::Uniform(32, 256)))
        );
        assert_eq!(
            parse_tokens("32..=256"),
            Ok(Tokens::Dist(Dist::Uniform(32, 256)))
        );
        assert_eq!(parse_tokens("request"), Ok(Tokens::Request));
        assert_eq!(parse_tokens("0"), Ok(Tokens::Dist(Dist::Fixed(0))));
        for bad in ["", "x", "-1", "9..3", "1..", "1..x", "2000000"] {
            assert!(parse_tokens(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_duration_dist("100ms..1s"),
            Ok(Dist::Uniform(ms(100), ms(1000)))
        );
        assert_eq!(parse_duration_dist("0"), Ok(Dist::Fixed(Duration::ZERO)));
        assert!(parse_duration_dist("1s..100ms").is_err());
        assert!(parse_duration_dist("20").is_err(), "a unit is required");
    }

    #[test]
    fn rates_and_switches() {
        assert_eq!(parse_rate("50/s"), Ok(ms(20)));
        assert_eq!(parse_rate("4"), Ok(ms(250)));
        for bad in ["0", "-3/s", "x/s", "inf", "NaN"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_on_off("off"), Ok(false));
        assert!(parse_on_off("maybe").is_err());
        assert!(parse_speed("0").is_err());
        assert_eq!(parse_speed("2.5"), Ok(2.5));
    }

    #[test]
    fn faults_and_how_often() {
        let stall = |events, duration| Fault::StallAfter { events, duration };
        assert_eq!(
            parse_stall("5"),
            Ok(FaultRule {
                fault: stall(5, None),
                when: When::Always
            })
        );
        assert_eq!(
            parse_stall("5:30s@10%"),
            Ok(FaultRule {
                fault: stall(5, Some(Duration::from_secs(30))),
                when: When::Probability(0.1)
            })
        );
        assert_eq!(
            parse_stall("0:forever@3").map(|r| r.when),
            Ok(When::Every(3))
        );
        assert_eq!(
            parse_status("429:7@20").map(|r| r.fault),
            Ok(Fault::Status {
                status: 429,
                retry_after: Some(7)
            })
        );
        assert_eq!(
            parse_disconnect("3:reset").map(|r| r.fault),
            Ok(Fault::DisconnectAfter {
                events: 3,
                reset: true
            })
        );
        assert_eq!(
            parse_truncate("@4"),
            Ok(FaultRule {
                fault: Fault::Truncate,
                when: When::Every(4)
            })
        );
        assert_eq!(parse_truncate("").map(|r| r.when), Ok(When::Always));
        for (bad, parse) in [
            ("200", parse_status as fn(&str) -> Result<FaultRule, String>),
            ("429:soon", parse_status),
            ("5@0", parse_stall),
            ("5@101%", parse_stall),
            ("5:banana", parse_stall),
            ("x", parse_error_after),
            ("3:slam", parse_disconnect),
            ("0", parse_fragment),
            ("yes", parse_truncate),
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn flags_parse_and_conflict() {
        let cli = Cli::try_parse_from([
            "mock",
            "--tokens",
            "8..16",
            "--token-rate",
            "100/s",
            "--truncate",
            "--stall-after",
            "2@5%",
            "--status",
            "503",
        ])
        .unwrap();
        assert_eq!(cli.mock.token_rate, Some(ms(10)));
        assert_eq!(cli.mock.fault_rules().len(), 3);
        assert_eq!(cli.mock.synth_flags(), ["--tokens", "--token-rate"]);
        let both = Cli::try_parse_from(["mock", "--itl", "5ms", "--token-rate", "9"]);
        assert!(both.is_err());
        let err = Cli::try_parse_from(["mock", "--tokens", "lots"])
            .err()
            .unwrap();
        assert!(err.to_string().contains("--tokens"), "{err}");
        assert_eq!(err.exit_code(), 2);
    }
}
