//! Gateways against the direct path: `--via`'s alternating rounds and
//! Sluice's pipeline API.

use super::*;

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
        let order = arrival_order(&[(&direct, 'D'), (&gw3, 'V'), (&gw5, 'W')]);
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
        let pipeline = target_with(TargetOptions {
            model: "ignored".into(),
            headers: vec![],
            api_key: None,
            max_idle: 4,
            ..options(url)
        });
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

/// Requests that do not divide by the rounds: each side still sends
/// exactly `--requests` (3, 2, 2 over three rounds).
#[test]
fn rounds_share_the_requests_exactly() {
    paused(async {
        let mock = MockProvider::start(Script::single(Reply::text(&["a"]).pace(ms(5))))
            .await
            .unwrap();
        let gateway = MockProvider::start(Script::single(Reply::text(&["a"]).pace(ms(5))))
            .await
            .unwrap();
        let url = |m: &MockProvider| target(format!("{}/chat/completions", m.base_url()));
        let p = plan(Load::Closed { concurrency: 1 }, 7);
        let (d, via) =
            bench::run_via(url(&mock), &[url(&gateway)], &["gw".into()], &p, 3, None).await;
        assert_eq!((one(&d).sent, one(&d).ok), (7, 7));
        assert_eq!((one(&via[0]).sent, one(&via[0]).ok), (7, 7));
        let order = arrival_order(&[(&mock, 'D'), (&gateway, 'V')]);
        assert_eq!(order, "DDDVVVDDVVDDVV");
        // No path is sent a prompt another path (or an earlier round) was
        // sent: a prefix cache behind one of them would flatter it.
        let mut prompts = std::collections::BTreeSet::new();
        for m in [&mock, &gateway] {
            for r in m.journal().requests() {
                prompts.insert(r.body["messages"].to_string());
            }
        }
        assert_eq!(prompts.len(), 14);
    });
}
