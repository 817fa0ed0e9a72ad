//! A client's `X-Request-Id`, black-box: kept, echoed and logged, but not
//! the ledger row's identity, so that a client retrying with the same id
//! (twice at once, or one after the other) gets its answers and a row each.

mod common;

use common::*;
use http::StatusCode;
use sluice_testkit::{Reply, Script};

const ID: &str = "client-retry-7";

fn request(body: &str) -> http::Request<http_body_util::Full<bytes::Bytes>> {
    let mut req = post_json("/v1/pipelines/chat", body);
    req.headers_mut()
        .insert("x-request-id", ID.parse().unwrap());
    req
}

async fn answered(h: &Harness) -> serde_json::Value {
    let resp = send(h.addr(), request(r#"{"input":"hi","stream":false}"#)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-request-id"], ID);
    let body = body_json(resp).await;
    assert_eq!(body["request_id"], ID, "{body}");
    body
}

#[tokio::test(start_paused = true)]
async fn the_same_request_id_twice_at_once_and_twice_in_a_row_gets_four_answers_and_four_rows() {
    let h = Harness::start(
        Script::single(Reply::text(&["a", " b"]).pace(SECOND / 10)),
        64,
        TIMEOUTS,
    )
    .await;
    // Two at once: both are in flight together (each answer is paced).
    let (one, two) = tokio::join!(answered(&h), answered(&h));
    assert_eq!(
        (one["output"].as_str(), two["output"].as_str()),
        (Some("a b"), Some("a b"))
    );
    // Then two in a row, and a third that is refused before any provider
    // call: it is recorded too.
    answered(&h).await;
    answered(&h).await;
    let refused = send(h.addr(), request(r#"{"stream":false}"#)).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    assert_eq!(refused.headers()["x-request-id"], ID);

    assert_eq!(h.mock.journal().request_count(), 4);
    let rows = h.server.ledger().rows_of(ID).await.unwrap();
    assert_eq!(rows.len(), 5, "{rows:#?}");
    let statuses: Vec<&str> = rows.iter().map(|r| r.status.as_str()).collect();
    assert_eq!(statuses, ["ok", "ok", "ok", "ok", "invalid_request"]);
    let mut ids: Vec<&str> = rows.iter().map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 5, "each row has its own id: {ids:?}");
    assert!(ids.iter().all(|id| *id != ID));
    // A lookup by request id (as `sluice test` does) finds the latest.
    let latest = h.server.ledger().row(ID).await.unwrap().unwrap();
    assert_eq!(latest.status, "invalid_request");
    h.server.stop().await;
}
