//! How the clients connect: a ramp that starts them one after another, and
//! HTTP/2 without TLS (h2c) with many streams per connection.

use super::*;

/// Four clients over a 400 ms ramp: client k sends its first request at
/// k × 100 ms, and its latency counts from then, not from the step's start.
#[test]
fn a_ramp_starts_the_clients_one_after_another() {
    paused(async {
        let mock = MockProvider::start(Script::single(Reply::text(&["a", "b"]).pace(ms(100))))
            .await
            .unwrap();
        let url = format!("{}/chat/completions", mock.base_url());
        let p = Plan {
            ramp: ms(400),
            ..plan(Load::Closed { concurrency: 4 }, 8)
        };
        let s = bench::run(target(url), &p, None).await;
        let s = one(&s);
        assert_eq!((s.sent, s.ok), (8, 8));
        // role, a: the first word 200 ms after the request, whenever its
        // client started.
        all(&s.ttft_ms, 8, 200.0);
        all(&s.send_lag_ms, 8, 0.0);
        let reqs = mock.journal().requests();
        let t0 = reqs[0].received_at;
        let mut at: Vec<u128> = reqs
            .iter()
            .map(|r| (r.received_at - t0).as_millis())
            .collect();
        at.sort_unstable();
        // An answer takes 600 ms (role, a, b, finish, usage, [DONE]), longer
        // than the ramp: every client sends one request as it starts, and
        // its second when its first has ended.
        assert_eq!(at, [0, 100, 200, 300, 600, 700, 800, 900]);
        // The last client starts at 300 ms and ends its second answer at
        // 1.5 s.
        assert_eq!(s.duration_s, 1.5);
    });
}

/// `sluice_connections_open` of a Sluice server, read on a connection of
/// its own (which counts itself).
async fn connections_open(addr: std::net::SocketAddr) -> u64 {
    use http_body_util::BodyExt;
    let req = http::Request::get(format!("http://{addr}/metrics"))
        .header("host", addr.to_string())
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let resp = common::send(addr, req).await;
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    let line = text
        .lines()
        .find(|l| l.starts_with("sluice_connections_open "))
        .expect("the gauge");
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// 150 concurrent streams to Sluice over h2c: two connections (100 streams
/// on the first), every figure as exact as over HTTP/1.1.
#[test]
fn h2c_carries_many_streams_per_connection() {
    paused(async {
        let reply = || Reply::text(&["a", "b", "c", "d"]).pace(ms(10));
        let sluice =
            common::Harness::start(Script::single(reply()), 256, "{first_token: 5s}").await;
        let url = format!("http://{}/v1/pipelines/chat", sluice.addr());
        let h2 = target_with(TargetOptions {
            headers: vec![],
            api_key: None,
            http2: true,
            ..options(url)
        });
        let s = bench::run(
            h2.clone(),
            &plan(Load::Closed { concurrency: 150 }, 300),
            None,
        )
        .await;
        let s = one(&s);
        assert_eq!(
            (s.sent, s.ok, s.failed),
            (300, 300, 0),
            "{:?}",
            s.failure_examples
        );
        all(&s.ttft_ms, 300, 20.0);
        all(&s.itl_ms, 900, 10.0);
        all(&s.e2e_ms, 300, 80.0);
        assert_eq!(s.peak_in_flight, 150);
        assert_eq!(s.output_tokens, 1200);
        // Both connections stay open for the next step; the third is the
        // one that reads the gauge.
        assert_eq!(connections_open(sluice.addr()).await, 3);
    });
}

/// A server that speaks only HTTP/1.1 (the mock) cannot answer h2c: every
/// request fails, by cause, and none is counted as an answer.
#[test]
fn h2c_to_an_http1_server_fails_by_cause() {
    paused(async {
        let mock = MockProvider::start(Script::single(Reply::text(&["a"])))
            .await
            .unwrap();
        let url = format!("{}/chat/completions", mock.base_url());
        let h2 = target_with(TargetOptions {
            http2: true,
            ..options(url)
        });
        let s = bench::run(h2, &plan(Load::Closed { concurrency: 2 }, 4), None).await;
        let s = one(&s);
        assert_eq!((s.sent, s.ok, s.failed), (4, 0, 4));
        assert_eq!(s.failures.values().sum::<u64>(), 4, "{:?}", s.failures);
        assert!(
            s.failures
                .keys()
                .all(|c| c == "connect" || c == "connection"),
            "{:?}",
            s.failure_examples
        );
        // No request body was taken for one.
        assert!(mock.journal().requests().is_empty());
    });
}
