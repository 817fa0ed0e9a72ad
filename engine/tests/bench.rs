//! `sluice bench` against the testkit's mock with scripted timing, on
//! tokio's paused clock: every figure (TTFT, ITL, TPOT, E2E, tokens,
//! throughput, goodput) is checked exact; open-loop arrivals keep their
//! schedule while the server stalls; failures are reported by cause.
//! One test runs the binary (real clock) for `--json` and `compare`.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use sluice::bench::client::{Api, Target, TargetOptions};
use sluice::bench::metrics::Slo;
use sluice::bench::report::{Stats, StepReport};
use sluice::bench::workload::{Arrivals, Lengths, Load, PromptSource, Stop};
use sluice::bench::{self, Plan};
use sluice_testkit::{Fault, MockProvider, Reply, Script};

mod common;

/// Runs `f` on a current-thread runtime with tokio's clock paused, as
/// `sluice test` does: before every park (where the paused clock jumps),
/// loopback traffic in flight is let reach the other end first (see
/// `sluice::scenario::settle`), so a loaded machine cannot make the clock
/// jump past a chunk that was already written.
fn paused<F: std::future::Future>(f: F) -> F::Output {
    let unsettled = Arc::new(AtomicUsize::new(0));
    let counter = unsettled.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .on_thread_park(move || sluice::scenario::settle::wait(&counter))
        .build()
        .expect("runtime");
    let out = rt.block_on(f);
    assert_eq!(
        unsettled.load(Ordering::Relaxed),
        0,
        "loopback traffic never settled"
    );
    out
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn target(url: String) -> Arc<Target> {
    Arc::new(
        Target::new(TargetOptions {
            url,
            api: None,
            model: "bench-model".into(),
            stream: true,
            headers: vec!["x-team: bench".into()],
            api_key: Some("sk-bench-secret-0123456789".into()),
            extra_body: None,
            timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(5),
            max_idle: 64,
        })
        .expect("target"),
    )
}

fn plan(load: Load, requests: u64) -> Plan {
    Plan {
        steps: vec![load],
        stop: Stop {
            requests: Some(requests),
            duration: None,
        },
        // Tiny prompts: the tokenizer is not what these tests are about.
        prompts: PromptSource::Synthetic {
            prompt_tokens: Lengths::Fixed(4),
        },
        output_tokens: Lengths::Fixed(16),
        ..Plan::default()
    }
}

/// Every sample of the figure equals `v` milliseconds.
#[track_caller]
fn all(s: &Option<Stats>, count: u64, v: f64) {
    let s = s.expect("figure present");
    assert_eq!(s.count, count, "count of {s:?}");
    for (what, got) in [
        ("mean", s.mean),
        ("min", s.min),
        ("p50", s.p50),
        ("p90", s.p90),
        ("p99", s.p99),
        ("max", s.max),
    ] {
        assert_eq!(got, v, "{what} of {s:?}");
    }
}

fn one(steps: &[StepReport]) -> &StepReport {
    assert_eq!(steps.len(), 1);
    &steps[0]
}

/// Chat Completions: 50 ms before the headers, then 20 ms before each of
/// the 8 events (role, 4 words, finish, usage, [DONE]).
#[test]
fn chat_figures_are_exact() {
    paused(async {
        let mock = MockProvider::start(Script::single(
            Reply::text(&["One", " two", " three", " four"])
                .pace(ms(20))
                .fault(Fault::DelayHeaders(ms(50))),
        ))
        .await
        .unwrap();
        let url = format!("{}/chat/completions", mock.base_url());
        let steps = bench::run(target(url), &plan(Load::Closed { concurrency: 2 }, 6), None).await;
        let s = one(&steps);
        assert_eq!((s.sent, s.ok, s.failed), (6, 6, 0));
        // First content chunk: headers (50) + role (20) + first word (20).
        all(&s.ttft_ms, 6, 90.0);
        // Three gaps of 20 ms per answer.
        all(&s.itl_ms, 18, 20.0);
        // [DONE]: 50 + 8 x 20.
        all(&s.e2e_ms, 6, 210.0);
        // (210 - 90) / (4 - 1).
        all(&s.tpot_ms, 6, 40.0);
        all(&s.send_lag_ms, 6, 0.0);
        let tps = s.output_tokens_per_s_per_request.unwrap();
        assert_eq!((tps.min, tps.max), (19.05, 19.05), "4 tokens / 0.21 s");
        assert_eq!(s.output_tokens, 24);
        assert_eq!(s.tokens_counted_by.server, 6);
        assert_eq!(s.tokens_counted_by.client_o200k, 0);
        assert_eq!(s.prompt_tokens, 60, "the mock reports 10 per request");
        // Two clients, three answers of 210 ms each, back to back.
        assert_eq!(s.duration_s, 0.63);
        assert_eq!(s.request_throughput, 6.0 / 0.63);
        assert_eq!(s.output_throughput, 24.0 / 0.63);
        assert_eq!(s.peak_in_flight, 2);
        assert_eq!(s.goodput, None);
        // The per-second series holds every request and token.
        assert_eq!(s.series.len(), 1);
        assert_eq!(s.series[0].ok, 6);
        assert_eq!(s.series[0].output_tokens, 24.0);

        // What was sent: usage asked for, the output length, the key and the
        // header, on reused connections.
        let reqs = mock.journal().requests();
        assert_eq!(reqs.len(), 6);
        let r = &reqs[0];
        assert_eq!(r.body["stream_options"]["include_usage"], true);
        assert_eq!(r.body["max_completion_tokens"], 16);
        assert_eq!(r.body["model"], "bench-model");
        assert_eq!(
            r.header("authorization"),
            Some("Bearer sk-bench-secret-0123456789")
        );
        assert_eq!(r.header("x-team"), Some("bench"));
        let conns: std::collections::BTreeSet<usize> = reqs.iter().map(|r| r.connection).collect();
        assert_eq!(conns.len(), 2, "one keep-alive connection per client");
    });
}

/// Anthropic Messages: 9 events (message_start, block start, ping, three
/// text deltas, block stop, message_delta, message_stop), 10 ms apart.
#[test]
fn messages_figures_are_exact() {
    paused(async {
        let mock = MockProvider::start(Script::single(
            Reply::anthropic_text(&["Un", " deux", " trois"]).pace(ms(10)),
        ))
        .await
        .unwrap();
        let url = format!("{}/messages", mock.base_url());
        let t = target(url);
        assert_eq!(t.api, Api::Messages);
        let steps = bench::run(t, &plan(Load::Closed { concurrency: 1 }, 3), None).await;
        let s = one(&steps);
        assert_eq!((s.ok, s.failed), (3, 0));
        all(&s.ttft_ms, 3, 40.0);
        all(&s.itl_ms, 6, 10.0);
        all(&s.e2e_ms, 3, 90.0);
        all(&s.tpot_ms, 3, 25.0);
        assert_eq!(s.output_tokens, 9);
        assert_eq!(s.tokens_counted_by.server, 3);
        let r = &mock.journal().requests()[0];
        assert_eq!(r.header("x-api-key"), Some("sk-bench-secret-0123456789"));
        assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
        assert_eq!(r.body["max_tokens"], 16);
    });
}

/// Without usage from the server, tokens are counted with o200k, and the
/// report says so.
#[test]
fn tokens_are_counted_by_the_client_without_usage() {
    paused(async {
        let mock = MockProvider::start(Script::single(
            Reply::text(&["Hello", " world", ", again"]).fault(Fault::OmitUsage),
        ))
        .await
        .unwrap();
        let url = format!("{}/chat/completions", mock.base_url());
        let steps = bench::run(target(url), &plan(Load::Closed { concurrency: 1 }, 2), None).await;
        let s = one(&steps);
        assert_eq!(s.ok, 2);
        let per = sluice::tokens::count("Hello world, again");
        assert_eq!(s.output_tokens, 2 * per);
        assert_eq!(
            (s.tokens_counted_by.server, s.tokens_counted_by.client_o200k),
            (0, 2)
        );
        assert_eq!(s.prompt_tokens, 0);
    });
}

/// An open loop keeps its schedule while every answer stalls for 2 s:
/// all requests go out at their times, and the stall is in the latencies.
#[test]
fn open_loop_keeps_its_schedule_when_the_server_stalls() {
    paused(async {
        let mock =
            MockProvider::start(Script::single(Reply::text(&["a", "b"]).pace(ms(10)).fault(
                Fault::StallAfter {
                    events: 2,
                    duration: Some(Duration::from_secs(2)),
                },
            )))
            .await
            .unwrap();
        let url = format!("{}/chat/completions", mock.base_url());
        let mut p = plan(
            Load::Open {
                rate: 10.0,
                arrivals: Arrivals::Constant,
            },
            1000,
        );
        // One second at 10/s: ten requests, although none has ended by then.
        p.stop.duration = Some(Duration::from_secs(1));
        let start = tokio::time::Instant::now();
        let steps = bench::run(target(url), &p, None).await;
        let s = one(&steps);
        assert_eq!((s.sent, s.ok, s.failed), (10, 10, 0));
        let reqs = mock.journal().requests();
        assert_eq!(reqs.len(), 10);
        for (i, r) in reqs.iter().enumerate() {
            assert_eq!(r.received_at - start, ms(100 * i as u64), "request {i}");
        }
        all(&s.send_lag_ms, 10, 0.0);
        // role, "a" (TTFT 20), stall 2 s, "b": the stall shows in ITL and E2E.
        all(&s.ttft_ms, 10, 20.0);
        all(&s.itl_ms, 10, 2010.0);
        // 2 s + 6 events x 10 ms.
        all(&s.e2e_ms, 10, 2060.0);
        assert_eq!(s.peak_in_flight, 10);
        // The last request was due at 0.9 s and ended 2.06 s later.
        assert_eq!(s.duration_s, 2.96);
    });
}

/// With the client capped at one request in flight, requests go late;
/// their latency counts from when they were due (no coordinated omission)
/// and the send lag says how late they went.
#[test]
fn open_loop_latency_counts_from_the_intended_send_time() {
    paused(async {
        let mock = MockProvider::start(Script::single(Reply::text(&["a"]).pace(ms(50))))
            .await
            .unwrap();
        let url = format!("{}/chat/completions", mock.base_url());
        let mut p = plan(
            Load::Open {
                rate: 10.0,
                arrivals: Arrivals::Constant,
            },
            5,
        );
        p.max_in_flight = 1;
        let steps = bench::run(target(url), &p, None).await;
        let s = one(&steps);
        assert_eq!(s.ok, 5);
        // Each answer takes 250 ms (5 events); due every 100 ms, sent every
        // 250: lag 0, 150, 300, 450, 600; E2E from the due time 250 + lag.
        let lag = s.send_lag_ms.unwrap();
        assert_eq!((lag.min, lag.max, lag.mean), (0.0, 600.0, 300.0));
        let e2e = s.e2e_ms.unwrap();
        assert_eq!((e2e.min, e2e.max, e2e.mean), (250.0, 850.0, 550.0));
        assert_eq!(s.peak_in_flight, 1);
    });
}

/// Poisson arrivals: the schedule is the seeded one, whatever the server.
#[test]
fn poisson_arrivals_follow_the_seeded_schedule() {
    paused(async {
        let mock = MockProvider::start(Script::single(Reply::text(&["a"])))
            .await
            .unwrap();
        let url = format!("{}/chat/completions", mock.base_url());
        let p = plan(
            Load::Open {
                rate: 20.0,
                arrivals: Arrivals::Poisson,
            },
            50,
        );
        let start = tokio::time::Instant::now();
        let steps = bench::run(target(url), &p, None).await;
        let got: Vec<Duration> = mock
            .journal()
            .requests()
            .iter()
            .map(|r| r.received_at - start)
            .collect();
        let mut schedule = sluice::bench::workload::Schedule::new(20.0, Arrivals::Poisson, p.seed);
        let mut due = Duration::ZERO;
        for (i, at) in got.iter().enumerate() {
            // tokio's timer wakes on whole milliseconds: at most 1 ms late.
            assert!(
                *at >= due && *at < due + ms(1),
                "request {i}: {at:?} vs {due:?}"
            );
            due += schedule.next_gap();
        }
        assert_eq!(got.len(), 50);
        let lag = steps[0].send_lag_ms.unwrap();
        assert!(lag.max < 1.0 && lag.mean > 0.0, "{lag:?}");
    });
}

/// Each way of failing is counted under its own cause.
#[test]
fn failures_are_reported_by_cause() {
    paused(async {
        let ok = || Reply::text(&["fine"]);
        let script = Script::single(ok().fault(Fault::Status {
            status: 503,
            retry_after: None,
        }))
        .then(ok().fault(Fault::Status {
            status: 429,
            retry_after: Some(1),
        }))
        .then(ok().fault(Fault::ErrorEventAfter(2)))
        .then(ok().fault(Fault::DisconnectAfter {
            events: 2,
            reset: false,
        }))
        .then(ok().fault(Fault::Truncate))
        .then(ok().fault(Fault::MalformedAt(1)))
        .then(ok().fault(Fault::StallAfter {
            events: 1,
            duration: None,
        }))
        .then(Reply::text(&[]))
        .then(ok().fault(Fault::Status {
            status: 503,
            retry_after: None,
        }))
        .then(ok());
        let mock = MockProvider::start(script).await.unwrap();
        let url = format!("{}/chat/completions", mock.base_url());
        let t = Arc::new(
            Target::new(TargetOptions {
                url,
                api: None,
                model: "m".into(),
                stream: true,
                headers: vec![],
                api_key: Some("sk-bench-secret-0123456789".into()),
                extra_body: None,
                timeout: Duration::from_secs(30),
                connect_timeout: Duration::from_secs(5),
                max_idle: 4,
            })
            .unwrap(),
        );
        let steps = bench::run(t, &plan(Load::Closed { concurrency: 1 }, 10), None).await;
        let s = one(&steps);
        assert_eq!((s.sent, s.ok, s.failed), (10, 1, 9));
        let want: Vec<(&str, u64)> = vec![
            ("connection", 1),
            ("http_429", 1),
            ("http_503", 2),
            ("incomplete", 1),
            ("no_content", 1),
            ("protocol", 1),
            ("stream_error", 1),
            ("timeout", 1),
        ];
        let got: Vec<(&str, u64)> = s.failures.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(got, want);
        for msg in s.failure_examples.values() {
            assert!(!msg.contains("sk-bench-secret"), "{msg}");
        }
        // Failed requests feed no latency figure.
        assert_eq!(s.e2e_ms.unwrap().count, 1);

        // Nothing listening: connect errors.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let t = target(format!("http://{closed}/v1/chat/completions"));
        let steps = bench::run(t, &plan(Load::Closed { concurrency: 1 }, 2), None).await;
        let s = one(&steps);
        assert_eq!(s.failures.get("connect"), Some(&2));
        assert!(s.ttft_ms.is_none());
    });
}

/// Goodput counts the requests within every SLO (here TTFT <= 100 ms).
#[test]
fn goodput_counts_requests_within_the_slo() {
    paused(async {
        let fast = Reply::text(&["a", "b"]).pace(ms(40)); // TTFT 80
        let slow = Reply::text(&["a", "b"]).pace(ms(60)); // TTFT 120
        let mock = MockProvider::start(
            Script::single(fast.clone())
                .then(slow.clone())
                .then(fast)
                .then(slow),
        )
        .await
        .unwrap();
        let url = format!("{}/chat/completions", mock.base_url());
        let mut p = plan(Load::Closed { concurrency: 1 }, 4);
        p.slo = Slo::parse("ttft=100ms").unwrap();
        let steps = bench::run(target(url), &p, None).await;
        let s = one(&steps);
        assert_eq!(s.good, Some(2));
        // 2 x 6 x 40 + 2 x 6 x 60 = 1.2 s.
        assert_eq!(s.duration_s, 1.2);
        assert_eq!(s.goodput, Some(2.0 / 1.2));
        let ttft = s.ttft_ms.unwrap();
        assert_eq!((ttft.min, ttft.max, ttft.mean), (80.0, 120.0, 100.0));
    });
}

/// A sweep runs each step after its warm-up; warm-up requests are sent
/// but not counted.
#[test]
fn sweeps_run_each_step_after_its_warmup() {
    paused(async {
        let mock = MockProvider::start(Script::single(Reply::text(&["a", "b"]).pace(ms(5))))
            .await
            .unwrap();
        let url = format!("{}/chat/completions", mock.base_url());
        let mut p = plan(Load::Closed { concurrency: 1 }, 4);
        p.steps = vec![
            Load::Closed { concurrency: 1 },
            Load::Closed { concurrency: 2 },
        ];
        p.warmup = Stop {
            requests: Some(3),
            duration: None,
        };
        let steps = bench::run(target(url), &p, None).await;
        assert_eq!(steps.len(), 2);
        for (s, c) in steps.iter().zip([1.0, 2.0]) {
            assert_eq!((s.load.kind.as_str(), s.load.value), ("concurrency", c));
            assert_eq!((s.sent, s.ok), (4, 4));
            // Six events, 5 ms apart.
            all(&s.e2e_ms, 4, 30.0);
        }
        assert_eq!(mock.journal().requests().len(), 14);
    });
}

/// `--via`: the same workload direct and through two "gateways" (mocks
/// whose headers come 3 and 5 ms later), in alternating rounds; what each
/// gateway adds comes out exact and each side's rounds add up.
#[test]
fn via_alternates_rounds_and_reports_what_each_gateway_adds() {
    paused(async {
        let reply = || Reply::text(&["a", "b", "c", "d"]).pace(ms(10));
        let slower = |by| Script::single(reply().fault(Fault::DelayHeaders(ms(by))));
        let direct = MockProvider::start(Script::single(reply())).await.unwrap();
        let gw3 = MockProvider::start(slower(3)).await.unwrap();
        let gw5 = MockProvider::start(slower(5)).await.unwrap();
        let url = |m: &MockProvider| target(format!("{}/chat/completions", m.base_url()));
        let mut p = plan(Load::Closed { concurrency: 1 }, 8);
        p.warmup = Stop {
            requests: Some(1),
            duration: None,
        };
        let (d, via) = bench::run_via(
            url(&direct),
            &[url(&gw3), url(&gw5)],
            &["gw3".into(), "gw5".into()],
            &p,
            4,
            None,
        )
        .await;
        let d = one(&d);
        assert_eq!((d.sent, d.ok), (8, 8));
        // Role and first word, 10 ms each; the gateways' headers later.
        all(&d.ttft_ms, 8, 20.0);
        all(&d.e2e_ms, 8, 80.0);
        // Four rounds of two requests back to back.
        assert_eq!(d.duration_s, 0.64);
        assert_eq!(d.series.iter().map(|s| s.ok).sum::<u64>(), 8);
        for (v, by) in via.iter().zip([3.0, 5.0]) {
            let v = one(v);
            assert_eq!((v.sent, v.ok), (8, 8));
            all(&v.ttft_ms, 8, 20.0 + by);
            all(&v.e2e_ms, 8, 80.0 + by);
            assert_eq!(v.duration_s, 8.0 * (80.0 + by) / 1000.0);
            let added = bench::Added::between(d, v);
            assert_eq!(added.ttft_p50_ms, Some(by));
            assert_eq!(added.ttft_p99_ms, Some(by));
            assert_eq!(added.itl_p50_ms, Some(0.0));
            assert_eq!(added.e2e_p50_ms, Some(by));
            let ratio = added.request_throughput_ratio.unwrap();
            assert!((ratio - 80.0 / (80.0 + by)).abs() < 1e-9, "{ratio}");
        }

        // Warm-ups, then rounds of two on each side in turn.
        let mut arrivals: Vec<(tokio::time::Instant, char)> = Vec::new();
        for (m, side) in [(&direct, 'D'), (&gw3, 'V'), (&gw5, 'W')] {
            arrivals.extend(m.journal().requests().iter().map(|r| (r.received_at, side)));
        }
        arrivals.sort();
        let order: String = arrivals.iter().map(|a| a.1).collect();
        assert_eq!(order, format!("DVW{}", "DDVVWW".repeat(4)));
    });
}

/// Sluice's own pipeline API as the "gateway" in front of the mock (its
/// events decoded by the bench), against the mock directly: on the paused
/// clock Sluice adds no time, so every figure through it equals the
/// direct one, and its usage event counts the tokens.
#[test]
fn the_pipeline_api_is_timed_like_the_provider_behind_it() {
    paused(async {
        let reply = || Reply::text(&["a", "b", "c", "d"]).pace(ms(10));
        let direct = MockProvider::start(Script::single(reply())).await.unwrap();
        let sluice =
            common::Harness::start(Script::single(reply()), 256, "{first_token: 5s}").await;
        let url = format!("http://{}/v1/pipelines/chat", sluice.addr());
        let pipeline = Arc::new(
            Target::new(TargetOptions {
                url,
                api: None,
                model: "ignored".into(),
                stream: true,
                headers: vec![],
                api_key: None,
                extra_body: None,
                timeout: Duration::from_secs(60),
                connect_timeout: Duration::from_secs(5),
                max_idle: 4,
            })
            .unwrap(),
        );
        assert_eq!(pipeline.api, Api::Pipeline);
        let direct_url = format!("{}/chat/completions", direct.base_url());
        let p = plan(Load::Closed { concurrency: 2 }, 6);
        let (d, via) = bench::run_via(
            target(direct_url),
            &[pipeline],
            &["sluice".into()],
            &p,
            2,
            None,
        )
        .await;
        let (d, v) = (one(&d), one(&via[0]));
        assert_eq!(
            (v.sent, v.ok, v.failed),
            (6, 6, 0),
            "{:?}",
            v.failure_examples
        );
        for s in [d, v] {
            all(&s.ttft_ms, 6, 20.0);
            all(&s.itl_ms, 18, 10.0);
            all(&s.e2e_ms, 6, 80.0);
            assert_eq!(s.output_tokens, 24);
            assert_eq!(s.tokens_counted_by.server, 6);
        }
        let added = bench::Added::between(d, v);
        assert_eq!(
            (added.ttft_p50_ms, added.e2e_p99_ms),
            (Some(0.0), Some(0.0))
        );
        // What Sluice was sent: the pipeline's own body, no model.
        let reqs = sluice.mock.journal().requests();
        assert_eq!(reqs.len(), 6);
        assert_eq!(reqs[0].body["model"], "gpt-4o-mini");
        assert_eq!(reqs[0].body["max_tokens"], 16);
    });
}

/// Interrupted (Ctrl-C) in the middle of a step: nothing more is sent, the
/// request in flight is abandoned at once, and the requests that ended
/// before are reported, the step marked `interrupted`; later steps do not
/// run.
#[test]
fn an_interrupted_run_reports_what_ended_before() {
    paused(async {
        let mock = MockProvider::start(Script::single(
            Reply::text(&["a", "b", "c", "d"]).pace(ms(10)),
        ))
        .await
        .unwrap();
        let url = format!("{}/chat/completions", mock.base_url());
        let mut p = plan(Load::Closed { concurrency: 1 }, 100);
        p.steps.push(Load::Closed { concurrency: 2 });
        let interrupt = p.interrupt.clone();
        let start = tokio::time::Instant::now();
        tokio::spawn(async move {
            // Three answers of 80 ms have ended; the fourth is in flight.
            tokio::time::sleep(ms(250)).await;
            interrupt.cancel();
        });
        let steps = bench::run(target(url), &p, None).await;
        assert_eq!(
            start.elapsed(),
            ms(250),
            "the request in flight is not waited for"
        );
        let s = one(&steps);
        assert!(s.interrupted);
        assert_eq!((s.sent, s.ok, s.failed), (4, 3, 0));
        all(&s.e2e_ms, 3, 80.0);
        assert_eq!(s.duration_s, 0.24);
        assert_eq!(mock.journal().requests().len(), 4);
        let table = sluice::bench::report::render(&sluice::bench::report::Report {
            schema: sluice::bench::report::SCHEMA.into(),
            sluice_version: "0".into(),
            started_at: "t".into(),
            config: Default::default(),
            steps: steps.clone(),
            via: Vec::new(),
        });
        assert!(
            table.contains("4 sent, 3 ok, 0 failed in 0.24 s (interrupted: 1 in flight abandoned)"),
            "{table}"
        );
    });
}

/// The binary on Ctrl-C (SIGINT): the report of what ended is printed and
/// written, and the exit status is 130.
#[test]
fn ctrl_c_writes_the_report_so_far() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mock = rt
        .block_on(MockProvider::start(Script::single(
            Reply::text(&["x", "y"]).pace(ms(20)),
        )))
        .unwrap();
    let json = std::env::temp_dir().join(format!("sluice-bench-int-{}.json", std::process::id()));
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["bench", &format!("{}/chat/completions", mock.base_url())])
        .args([
            "--model",
            "m",
            "-n",
            "100000",
            "--prompt-tokens",
            "4",
            "--quiet",
            "--json",
        ])
        .arg(&json)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once a few answers have ended.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while rt.block_on(async { mock.journal().requests().len() }) < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "no request reached the mock"
        );
        std::thread::sleep(ms(20));
    }
    // SAFETY: kill only sends a signal to the child we started.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGINT) }, 0);
    let o = child.wait_with_output().unwrap();
    assert_eq!(
        o.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let step = &report["steps"][0];
    assert_eq!(step["interrupted"], true);
    assert!(step["ok"].as_u64().unwrap() >= 3, "{step}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("in flight abandoned"));
    let _ = std::fs::remove_file(&json);
}

/// `stream: false`: E2E only, tokens from the answer's usage.
#[test]
fn whole_answers_are_timed_end_to_end() {
    paused(async {
        let mock = MockProvider::start(Script::single(
            Reply::text(&["a", "b", "c"]).fault(Fault::DelayHeaders(ms(300))),
        ))
        .await
        .unwrap();
        let url = format!("{}/chat/completions", mock.base_url());
        let t = Arc::new(
            Target::new(TargetOptions {
                url,
                api: None,
                model: "m".into(),
                stream: false,
                headers: vec![],
                api_key: None,
                extra_body: None,
                timeout: Duration::from_secs(30),
                connect_timeout: Duration::from_secs(5),
                max_idle: 4,
            })
            .unwrap(),
        );
        let steps = bench::run(t, &plan(Load::Closed { concurrency: 1 }, 2), None).await;
        let s = one(&steps);
        assert_eq!(s.ok, 2);
        assert!(s.ttft_ms.is_none() && s.itl_ms.is_none() && s.tpot_ms.is_none());
        all(&s.e2e_ms, 2, 300.0);
        assert_eq!(s.output_tokens, 6);
        let reqs = mock.journal().requests();
        let r = &reqs[0];
        assert_eq!(r.body["stream"], false);
        assert!(r.body.get("stream_options").is_none());
        assert_eq!(r.header("accept"), Some("application/json"));
        assert_eq!(reqs[1].connection, r.connection, "the connection is reused");
    });
}

/// The binary: a run with `--json`, read back by `compare`.
#[test]
fn binary_writes_a_report_that_compare_reads() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mock = rt
        .block_on(MockProvider::start(Script::single(Reply::text(&[
            "x", "y",
        ]))))
        .unwrap();
    let dir = std::env::temp_dir().join(format!("sluice-bench-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let a = dir.join("a.json");
    let run = |out: &std::path::Path, extra: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"));
        cmd.args(["bench", &format!("{}/chat/completions", mock.base_url())])
            .args([
                "--model",
                "m",
                "-n",
                "6",
                "-c",
                "2",
                "--prompt-tokens",
                "8",
                "--quiet",
            ])
            .args(["--slo", "e2e=10s", "--json"])
            .arg(out)
            .args(extra)
            .env("OPENAI_API_KEY", "sk-from-env-0123456789");
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8(o.stdout).unwrap()
    };
    let table = run(&a, &[]);
    assert!(
        table.contains("concurrency 2: 6 sent, 6 ok, 0 failed"),
        "{table}"
    );
    assert!(
        table.contains("TTFT ms") && table.contains("counted by server usage"),
        "{table}"
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&a).unwrap()).unwrap();
    assert_eq!(report["schema"], "sluice-bench/1");
    assert_eq!(report["config"]["api"], "chat");
    assert_eq!(report["steps"][0]["ok"], 6);
    assert_eq!(report["steps"][0]["good"], 6);
    assert!(report["steps"][0]["ttft_ms"]["p99"].is_number());
    assert!(!report.to_string().contains("sk-from-env"));
    let key = rt.block_on(async {
        mock.journal().requests()[0]
            .header("authorization")
            .map(str::to_owned)
    });
    assert_eq!(key.as_deref(), Some("Bearer sk-from-env-0123456789"));

    let b = dir.join("b.json");
    let page = dir.join("b.html");
    run(
        &b,
        &["--output-tokens", "4", "--html", page.to_str().unwrap()],
    );
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(
        html.contains("<svg") && html.contains("TTFT distribution"),
        "{html}"
    );
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["bench", "compare"])
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    assert!(o.status.success());
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(
        out.contains("concurrency 2") && out.contains("B/A"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("ok") && l.trim_end().ends_with("1.000")),
        "{out}"
    );

    // --via: a second mock as the gateway, in two rounds per side.
    let gateway = rt
        .block_on(MockProvider::start(Script::single(Reply::text(&[
            "x", "y",
        ]))))
        .unwrap();
    let c = dir.join("c.json");
    let via_page = dir.join("c.html");
    let table = run(
        &c,
        &[
            "--via",
            &format!("gw={}/chat/completions", gateway.base_url()),
            "--via-model",
            "gw-model",
            "--rounds",
            "2",
            "--html",
            via_page.to_str().unwrap(),
        ],
    );
    assert!(
        table.contains("gw: through http://127.0.0.1:") && table.contains("added by gw"),
        "{table}"
    );
    let report: Value = serde_json::from_str(&std::fs::read_to_string(&c).unwrap()).unwrap();
    assert_eq!(report["steps"][0]["ok"], 6);
    assert_eq!(report["via"][0]["steps"][0]["ok"], 6);
    assert_eq!(report["via"][0]["rounds"], 2);
    assert_eq!(report["via"][0]["model"], "gw-model");
    assert_eq!(report["via"][0]["name"], "gw");
    assert!(report["via"][0]["added"][0]["ttft_p50_ms"].is_number());
    let html = std::fs::read_to_string(&via_page).unwrap();
    assert!(
        html.contains("Added by gw") && html.contains("gw concurrency 2"),
        "{html}"
    );
    let gw_models: Vec<String> = rt.block_on(async {
        gateway
            .journal()
            .requests()
            .iter()
            .map(|r| r.body["model"].as_str().unwrap_or_default().to_owned())
            .collect()
    });
    assert_eq!(gw_models, vec!["gw-model"; 6]);

    // Usage errors exit 2 and say what is wrong.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "bench",
            "http://127.0.0.1:1/v1/chat/completions",
            "--slo",
            "speed=1s",
            "--model",
            "m",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown SLO \"speed\""));
    for (vias, error) in [
        (
            [
                "a=http://127.0.0.1:1/v1/chat/completions",
                "a=http://127.0.0.1:2/v1/chat/completions",
            ],
            "two paths are named \"a\"",
        ),
        (
            [
                "b c=http://127.0.0.1:1/v1/chat/completions",
                "http://127.0.0.1:2/v1/chat/completions",
            ],
            "invalid --via name \"b c\"",
        ),
    ] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "bench",
                "http://127.0.0.1:1/v1/chat/completions",
                "--model",
                "m",
            ])
            .args(["--via", vias[0], "--via", vias[1]])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(stderr.contains(error), "{stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
