//! Per-event timing of a recorded stream, kept beside the body in a sidecar
//! file `NAME.timing` (e.g. `openai/text_stop.sse.timing`).
//!
//! The body stays byte-exact in its own file; the sidecar is plain text, one
//! value per line, in milliseconds (fractions allowed, e.g. `12.5`):
//!
//! ```text
//! # sluice timing v1: milliseconds before each event of text_stop.sse
//! headers 182
//! 0
//! 41.25
//! 38
//! ```
//!
//! - `headers N` (optional, first value line): time from the request to the
//!   response headers.
//! - then one line per SSE event of the body, in order: the delay before that
//!   event is sent (the first one counts from the headers).
//! - blank lines and lines starting with `#` are ignored.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// When each event of a recorded stream was sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Timing {
    /// From the request to the response headers.
    pub headers: Duration,
    /// Before each event: the first counts from the headers, the others from
    /// the previous event.
    pub events: Vec<Duration>,
}

/// A problem in a timing file: the 1-based line and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimingError {
    pub line: usize,
    pub message: String,
}

impl Timing {
    /// A timing with the same delay before every one of `events` events.
    pub fn uniform(events: usize, delay: Duration) -> Timing {
        Timing {
            headers: Duration::ZERO,
            events: vec![delay; events],
        }
    }

    /// The sidecar path of a body: `body` with `.timing` appended.
    pub fn sidecar_path(body: &Path) -> PathBuf {
        let mut name = body.as_os_str().to_owned();
        name.push(".timing");
        PathBuf::from(name)
    }

    /// Parses a timing file (see the module docs).
    pub fn parse(text: &str) -> Result<Timing, TimingError> {
        let mut timing = Timing::default();
        let mut seen_value = false;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |message: String| TimingError {
                line: i + 1,
                message,
            };
            if let Some(rest) = line.strip_prefix("headers") {
                if seen_value {
                    return Err(err(
                        "the headers delay must come before the event delays".into()
                    ));
                }
                timing.headers = parse_ms(rest.trim()).map_err(err)?;
            } else {
                timing.events.push(parse_ms(line).map_err(err)?);
            }
            seen_value = true;
        }
        Ok(timing)
    }

    /// The file text for this timing; `body_name` goes into the comment.
    pub fn render(&self, body_name: &str) -> String {
        let mut out = format!(
            "# sluice timing v1: milliseconds before each event of {body_name}\n\
             # (the first after the response headers)\nheaders {}\n",
            format_ms(self.headers)
        );
        for d in &self.events {
            out.push_str(&format_ms(*d));
            out.push('\n');
        }
        out
    }

    /// Every delay divided by `speed` (2.0 plays twice as fast).
    pub fn scaled(&self, speed: f64) -> Timing {
        Timing {
            headers: scale(self.headers, speed),
            events: self.events.iter().map(|d| scale(*d, speed)).collect(),
        }
    }

    /// The sum of the header delay and every event delay.
    pub fn total(&self) -> Duration {
        self.headers + self.events.iter().sum::<Duration>()
    }
}

/// `d / speed`, for a speed that is finite and above zero (else `d`).
pub(crate) fn scale(d: Duration, speed: f64) -> Duration {
    if speed.is_finite() && speed > 0.0 && speed != 1.0 {
        Duration::from_secs_f64(d.as_secs_f64() / speed)
    } else {
        d
    }
}

fn parse_ms(s: &str) -> Result<Duration, String> {
    let ms: f64 = s
        .parse()
        .map_err(|_| format!("invalid delay \"{s}\", expected milliseconds such as 40 or 12.5"))?;
    if !(0.0..=86_400_000.0).contains(&ms) {
        return Err(format!(
            "invalid delay \"{s}\", expected milliseconds between 0 and 86400000"
        ));
    }
    Ok(Duration::from_micros((ms * 1000.0).round() as u64))
}

/// Milliseconds with up to three decimals, trailing zeros dropped.
fn format_ms(d: Duration) -> String {
    let micros = d.as_micros();
    let (ms, frac) = (micros / 1000, micros % 1000);
    if frac == 0 {
        ms.to_string()
    } else {
        format!("{ms}.{frac:03}").trim_end_matches('0').to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_fractions_and_comments() {
        let t = Timing {
            headers: Duration::from_micros(182_500),
            events: vec![
                Duration::ZERO,
                Duration::from_millis(41),
                Duration::from_micros(1_250),
            ],
        };
        let text = t.render("x.sse");
        assert!(text.contains("headers 182.5\n0\n41\n1.25\n"), "{text}");
        assert_eq!(Timing::parse(&text).unwrap(), t);
        assert_eq!(t.total(), Duration::from_micros(224_750));
    }

    #[test]
    fn errors_name_the_line() {
        let e = Timing::parse("# c\n10\n\nabc\n").unwrap_err();
        assert_eq!(e.line, 4);
        assert!(e.message.contains("invalid delay \"abc\""), "{}", e.message);
        let e = Timing::parse("10\nheaders 5\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert_eq!(Timing::parse("-1").unwrap_err().line, 1);
    }

    #[test]
    fn speed_divides_every_delay() {
        let t = Timing::uniform(3, Duration::from_millis(40)).scaled(2.0);
        assert_eq!(t.events, vec![Duration::from_millis(20); 3]);
        assert_eq!(
            Timing::sidecar_path(Path::new("a/b.sse")),
            PathBuf::from("a/b.sse.timing")
        );
    }
}
