//! Each figure exact on the paused clock, loads, failures, interruption.

use super::*;

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
        let t = target_with(TargetOptions {
            model: "m".into(),
            headers: vec![],
            timeout: Duration::from_secs(30),
            max_idle: 4,
            ..options(url)
        });
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
        let t = target_with(TargetOptions {
            model: "m".into(),
            stream: false,
            headers: vec![],
            api_key: None,
            timeout: Duration::from_secs(30),
            max_idle: 4,
            ..options(url)
        });
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
