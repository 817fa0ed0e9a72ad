//! A collector that is down or hangs costs requests nothing; its drops
//! are counted.

use super::*;

/// `sluice_trace_spans_dropped_total` summed over its reasons.
async fn dropped(addr: SocketAddr) -> u64 {
    let resp = send(addr, request_with("/metrics", &[], None)).await;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with("sluice_trace_spans_dropped_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A collector that accepts connections and never answers.
fn hanging_collector() -> (String, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        // Bounded: enough for the exports of one test.
        for _ in 0..8 {
            match listener.accept() {
                Ok((c, _)) => conns.push(c),
                Err(_) => break,
            }
        }
        std::thread::sleep(Duration::from_secs(5));
    });
    (format!("http://{addr}"), held)
}

/// Real time: the requests must not wait for an export that hangs for
/// 3 s; the queue fills, and the spans it cannot take are counted.
#[tokio::test]
async fn a_collector_that_hangs_costs_requests_nothing_and_drops_are_counted() {
    let (endpoint, _held) = hanging_collector();
    let mock = MockProvider::start(Script::single(Reply::text(&["fine", " thanks"])))
        .await
        .unwrap();
    let telemetry = ", timeout: 3s, queue_size: 2, batch_size: 1";
    let server = start(&mock, None, &endpoint, telemetry, LIMITS).await;
    let t0 = std::time::Instant::now();
    for _ in 0..6 {
        let events = chat(server.addr, &[]).await;
        assert_eq!(events.last().unwrap().name, "done");
    }
    let took = t0.elapsed();
    assert!(
        took < Duration::from_millis(2500),
        "6 requests took {took:?}"
    );
    // 12 spans: the export thread holds at most 2, the queue 2 more.
    let n = dropped(server.addr).await;
    assert!(n >= 8, "{n} spans counted as dropped");
    server.stop().await;
}

/// Real time: a collector that refuses connections fails each export
/// at once; the requests complete and the lost spans are counted.
#[tokio::test]
async fn a_collector_that_is_down_costs_requests_nothing_and_drops_are_counted() {
    let endpoint = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let mock = MockProvider::start(Script::single(Reply::text(&["fine", " thanks"])))
        .await
        .unwrap();
    let server = start(&mock, None, &endpoint, ", timeout: 200ms", LIMITS).await;
    assert_eq!(dropped(server.addr).await, 0);
    for _ in 0..3 {
        let events = chat(server.addr, &[]).await;
        assert_eq!(events.last().unwrap().name, "done");
    }
    // The export fails within its timeout; bounded wait for the count.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut n = 0;
    while n < 6 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        n = dropped(server.addr).await;
    }
    assert_eq!(n, 6, "every span of the 3 requests counted as dropped");
    server.stop().await;
}
