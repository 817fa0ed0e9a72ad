//! Expectations against what happened: one [`Mismatch`] per expectation
//! not met, with the expected and the actual value in words.

use std::time::Duration;

use serde_json::Value;
use sluice_testkit::lookup;

use super::api;
use super::build::{Expect, LedgerExpect};
use super::runner::Outcome;

/// One expectation that was not met.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The expectation's key, e.g. `status` or `ledger.status`.
    pub what: String,
    pub expected: String,
    pub actual: String,
}

impl std::fmt::Display for Mismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: expected {}, actual {}",
            self.what, self.expected, self.actual
        )
    }
}

struct Checker {
    out: Vec<Mismatch>,
}

impl Checker {
    fn differ(&mut self, what: &str, expected: impl Into<String>, actual: impl Into<String>) {
        self.out.push(Mismatch {
            what: what.to_owned(),
            expected: expected.into(),
            actual: actual.into(),
        });
    }

    fn eq<T: PartialEq + std::fmt::Debug>(&mut self, what: &str, expected: &T, actual: &T) {
        if expected != actual {
            self.differ(what, format!("{expected:?}"), format!("{actual:?}"));
        }
    }

    /// For optional text: `"x"` or `none`.
    fn opt(&mut self, what: &str, expected: &Option<String>, actual: &Option<String>) {
        if expected != actual {
            let show =
                |v: &Option<String>| v.as_ref().map_or("none".to_owned(), |s| format!("{s:?}"));
            self.differ(what, show(expected), show(actual));
        }
    }

    fn paths(&mut self, what: &str, expected: &[(String, Value)], actual: Option<&Value>) {
        for (path, want) in expected {
            let got = actual.and_then(|v| lookup(v, path));
            if got != Some(want) {
                self.differ(
                    &format!("{what}.{path}"),
                    want.to_string(),
                    got.map_or_else(|| "nothing".to_owned(), Value::to_string),
                );
            }
        }
    }
}

/// Every expectation of `e` that `o` does not meet; empty when it passes.
pub fn check(e: &Expect, o: &Outcome) -> Vec<Mismatch> {
    let mut c = Checker { out: Vec::new() };
    for p in &o.problems {
        c.differ("run", "the scenario to run to its end", p.clone());
    }
    let r = &o.response;
    if r.status == 0 {
        return c.out;
    }
    if let Some(s) = e.status {
        c.eq("status", &s, &r.status);
    }
    if let Some(code) = &e.error {
        c.opt("error", code, &o.error_code());
    }
    if let Some(f) = &e.finish_reason {
        let actual = api::finish_reason(o.api, r);
        c.opt("finish_reason", &Some(f.clone()), &actual);
    }
    let names: Vec<String> = r.events.iter().map(|ev| ev.name.clone()).collect();
    if let Some(want) = &e.events {
        c.eq("events", want, &names);
    }
    if let Some(want) = &e.events_contain {
        let missing: Vec<&String> = want.iter().filter(|n| !names.contains(n)).collect();
        if !missing.is_empty() {
            c.differ(
                "events_contain",
                format!("{want:?}"),
                format!("{names:?} (missing {missing:?})"),
            );
        }
    }
    for (name, n) in &e.event_counts {
        let got = names.iter().filter(|x| *x == name).count() as u64;
        c.eq(&format!("event_counts.{name}"), n, &got);
    }
    if let Some(t) = &e.text {
        c.eq("text", t, &api::text(o.api, r));
    }
    if let Some(t) = &e.refusal {
        c.opt("refusal", &Some(t.clone()), &api::refusal(o.api, r));
    }
    if !e.usage.is_empty() {
        c.paths("usage", &e.usage, api::usage(o.api, r));
    }
    for (name, want) in &e.headers {
        let got = r.header(name).map(str::to_owned);
        c.opt(&format!("headers.{name}"), &Some(want.clone()), &got);
    }
    c.paths("body", &e.body, r.body.as_ref());
    if let Some(l) = &e.ledger {
        ledger(&mut c, l, o);
    }
    if let Some(bound) = e.upstream_closed_within {
        closed_within(&mut c, bound, o);
    }
    if !e.upstream_request.is_empty() {
        let last = o.upstream.last().map(|u| &u.body);
        c.paths("upstream_request", &e.upstream_request, last);
    }
    if let Some(n) = e.upstream_calls {
        c.eq("upstream_calls", &n, &(o.upstream.len() as u64));
    }
    if let Some(max) = e.upstream_events_at_most {
        let sent = o.upstream.last().map_or(0, |u| u.events_sent as u64);
        if sent > max {
            c.differ(
                "upstream_events_at_most",
                format!("at most {max} events"),
                format!("{sent} events"),
            );
        }
    }
    if e.tool_results_sent.is_some() || e.tool_result_contains.is_some() {
        tool_results(&mut c, e, o);
    }
    if e.secret_absent == Some(true) {
        secret_absent(&mut c, o);
    }
    c.out
}

/// The mock's API key (or the part after `Bearer `) in anything the client
/// received or the ledger recorded.
fn secret_absent(c: &mut Checker, o: &Outcome) {
    let key = super::pipeline::SCENARIO_API_KEY;
    let r = &o.response;
    let mut places = Vec::new();
    if r.headers
        .iter()
        .any(|(k, v)| k.contains(key) || v.contains(key))
    {
        places.push("a response header");
    }
    if r.body.as_ref().is_some_and(|b| b.to_string().contains(key)) {
        places.push("the response body");
    }
    if r.events.iter().any(|e| e.data.to_string().contains(key)) {
        places.push("an SSE event");
    }
    if o.ledger
        .as_ref()
        .is_some_and(|row| format!("{row:?}").contains(key))
    {
        places.push("the ledger row");
    }
    if !places.is_empty() {
        c.differ(
            "secret_absent",
            "the API key nowhere in the response or the ledger",
            format!("the API key in {}", places.join(", ")),
        );
    }
}

fn tool_results(c: &mut Checker, e: &Expect, o: &Outcome) {
    let results = o
        .upstream
        .last()
        .map(|u| u.tool_results.clone())
        .unwrap_or_default();
    if let Some(n) = e.tool_results_sent {
        c.eq("tool_results_sent", &n, &(results.len() as u64));
    }
    if let Some(text) = &e.tool_result_contains
        && !results.iter().any(|r| r.content.contains(text.as_str()))
    {
        let sent: Vec<&str> = results.iter().map(|r| r.content.as_str()).collect();
        c.differ(
            "tool_result_contains",
            format!("a tool result containing {text:?}"),
            format!("{sent:?}"),
        );
    }
}

fn ledger(c: &mut Checker, l: &LedgerExpect, o: &Outcome) {
    let Some(row) = &o.ledger else {
        c.differ("ledger", "a ledger row", "no row for the request");
        return;
    };
    if let Some(s) = &l.status {
        c.eq("ledger.status", s, &row.status);
    }
    if let Some(n) = l.prompt_tokens {
        c.eq("ledger.prompt_tokens", &n, &row.prompt_tokens);
    }
    if let Some(n) = l.completion_tokens {
        c.eq("ledger.completion_tokens", &n, &row.completion_tokens);
    }
    if let Some(b) = l.estimated {
        c.eq("ledger.estimated", &b, &row.estimated);
    }
    if let Some(code) = &l.error_code {
        c.opt("ledger.error_code", code, &row.error_code);
    }
    if l.cost_within_reservation == Some(true)
        && !(0..=row.reserved_micros).contains(&row.cost_micros)
    {
        c.differ(
            "ledger.cost_within_reservation",
            format!(
                "a cost from 0 to the reservation ({} µ$)",
                row.reserved_micros
            ),
            format!("{} µ$", row.cost_micros),
        );
    }
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

fn closed_within(c: &mut Checker, bound: Duration, o: &Outcome) {
    const WHAT: &str = "upstream_closed_within";
    let Some(cl) = &o.closing else {
        c.differ(WHAT, "an upstream call", "no call reached the mock");
        return;
    };
    let expected = format!(
        "the upstream closed within {} after {} at {}",
        ms(bound),
        cl.reference,
        ms(cl.reference_at)
    );
    match cl.closed_at {
        None if cl.by_mock => c.differ(WHAT, expected, "the mock closed the connection itself"),
        None if cl.kept_alive => c.differ(
            WHAT,
            expected,
            "the reply completed and Sluice kept the connection open for reuse",
        ),
        None => c.differ(WHAT, expected, "the upstream connection was never closed"),
        Some(at) if cl.deadline && at < cl.reference_at => c.differ(
            WHAT,
            expected,
            format!("closed at {}, {} early", ms(at), ms(cl.reference_at - at)),
        ),
        Some(at) if at > cl.reference_at + bound => c.differ(
            WHAT,
            expected,
            format!("closed at {}, {} late", ms(at), ms(at - cl.reference_at)),
        ),
        Some(_) => {}
    }
}
