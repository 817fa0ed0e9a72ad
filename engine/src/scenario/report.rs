//! What `sluice test` prints: a progress line per scenario as it finishes,
//! each failure with the expected and the actual outcome, the closing line
//! `N passed, M failed`, and JUnit XML for CI systems.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::path::PathBuf;
use std::time::Duration;

/// The result of one scenario file.
#[derive(Debug, Clone)]
pub struct ScenarioResult {
    pub name: String,
    pub file: PathBuf,
    pub description: Option<String>,
    /// One line per expectation not met (or per problem in the file).
    pub failures: Vec<String>,
    /// A few words on what happened, e.g. `502 upstream` or `200 stream, 33 events, stop`.
    pub summary: String,
    /// Time on the scenario's clock, when it ran.
    pub clock_time: Option<Duration>,
    pub wall: Duration,
}

impl ScenarioResult {
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.1}ms")
    } else {
        format!("{ms:.0}ms")
    }
}

/// `[ 3/28] ok   name  (summary; 5s on the clock, 12ms)`.
pub fn progress_line(done: usize, total: usize, r: &ScenarioResult) -> String {
    let width = total.to_string().len();
    let verdict = if r.passed() { "ok  " } else { "FAIL" };
    let clock = r
        .clock_time
        .map(|c| format!("{} on the clock, ", humantime::format_duration(round_ms(c))))
        .unwrap_or_default();
    format!(
        "[{done:>width$}/{total}] {verdict} {}  ({}; {clock}{} wall)",
        r.name,
        r.summary,
        ms(r.wall)
    )
}

fn round_ms(d: Duration) -> Duration {
    Duration::from_millis(d.as_millis() as u64)
}

/// Every failure in detail, then the closing line.
pub fn write_summary(out: &mut impl Write, results: &[ScenarioResult]) -> io::Result<()> {
    let failed: Vec<&ScenarioResult> = results.iter().filter(|r| !r.passed()).collect();
    if !failed.is_empty() {
        writeln!(out)?;
        writeln!(out, "failures:")?;
        for r in &failed {
            writeln!(out)?;
            writeln!(out, "FAIL {} ({})", r.name, r.file.display())?;
            if let Some(d) = &r.description {
                writeln!(out, "  {d}")?;
            }
            for f in &r.failures {
                writeln!(out, "  - {f}")?;
            }
        }
        writeln!(out)?;
    }
    writeln!(
        out,
        "{} passed, {} failed",
        results.len() - failed.len(),
        failed.len()
    )
}

/// JUnit XML: one `testsuite` named `suite`, one `testcase` per scenario,
/// a `failure` element for each one that failed.
pub fn junit_xml(suite: &str, results: &[ScenarioResult], wall: Duration) -> String {
    let failures = results.iter().filter(|r| !r.passed()).count();
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    let _ = writeln!(
        x,
        "<testsuites name=\"sluice test\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" time=\"{:.3}\">",
        results.len(),
        wall.as_secs_f64()
    );
    let _ = writeln!(
        x,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\" time=\"{:.3}\">",
        escape(suite),
        results.len(),
        wall.as_secs_f64()
    );
    for r in results {
        let _ = write!(
            x,
            "    <testcase name=\"{}\" classname=\"{}\" file=\"{}\" time=\"{:.3}\"",
            escape(&r.name),
            escape(&suite.replace(['/', '\\'], ".")),
            escape(&r.file.display().to_string()),
            r.wall.as_secs_f64()
        );
        if r.passed() {
            x.push_str(" />\n");
            continue;
        }
        x.push_str(">\n");
        let first = r.failures.first().map(String::as_str).unwrap_or("failed");
        let _ = writeln!(
            x,
            "      <failure message=\"{}\" type=\"scenario\">{}</failure>",
            escape(first),
            escape(&r.failures.join("\n"))
        );
        let _ = writeln!(x, "      <system-out>{}</system-out>", escape(&r.summary));
        x.push_str("    </testcase>\n");
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

/// Escapes text for XML content and attributes, dropping characters XML
/// 1.0 does not allow.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\n' => out.push_str("&#10;"),
            '\t' | '\r' => {
                let _ = write!(out, "&#{};", ch as u32);
            }
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(name: &str, failures: &[&str]) -> ScenarioResult {
        ScenarioResult {
            name: name.into(),
            file: PathBuf::from(format!("s/{name}.yaml")),
            description: None,
            failures: failures.iter().map(|s| s.to_string()).collect(),
            summary: "200 stream".into(),
            clock_time: Some(Duration::from_secs(5)),
            wall: Duration::from_millis(3),
        }
    }

    #[test]
    fn summary_ends_with_the_counts() {
        let mut out = Vec::new();
        let rs = [
            result("a", &[]),
            result("b", &["status: expected 502, actual 200"]),
        ];
        write_summary(&mut out, &rs).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("FAIL b (s/b.yaml)\n  - status: expected 502, actual 200\n"));
        assert!(text.ends_with("\n1 passed, 1 failed\n"), "{text}");
        assert!(progress_line(2, 10, &rs[1]).starts_with("[ 2/10] FAIL b  (200 stream; 5s on"));
    }

    #[test]
    fn escaping_covers_markup_and_control_characters() {
        assert_eq!(
            escape("a<b>&\"'\n\u{1}"),
            "a&lt;b&gt;&amp;&quot;&apos;&#10;"
        );
    }
}
