use super::*;

fn headers(pairs: &[(&'static str, &str)]) -> http::HeaderMap {
    pairs
        .iter()
        .map(|(k, v)| {
            (
                HeaderName::from_static(k),
                HeaderValue::from_str(v).unwrap(),
            )
        })
        .collect()
}

#[test]
fn retry_after_reads_ms_seconds_and_dates() {
    let ms = headers(&[("retry-after-ms", "1500"), ("retry-after", "9")]);
    assert_eq!(retry_after(&ms), Some(Duration::from_millis(1500)));
    assert_eq!(
        retry_after(&headers(&[("retry-after", " 7 ")])),
        Some(Duration::from_secs(7))
    );
    // A date in the past means "now".
    assert_eq!(
        retry_after(&headers(&[(
            "retry-after",
            "Sun, 06 Nov 1994 08:49:37 GMT"
        )])),
        Some(Duration::ZERO)
    );
    let future = httpdate_parse("Fri, 01 Jan 2100 00:00:00 GMT").unwrap();
    assert!(future > std::time::SystemTime::now());
    assert_eq!(retry_after(&headers(&[("retry-after", "soon")])), None);
    assert_eq!(retry_after(&headers(&[("retry-after-ms", "-1")])), None);
    assert_eq!(retry_after(&http::HeaderMap::new()), None);
}

#[test]
fn endpoint_joins_paths_and_keeps_the_authority() {
    let e = Endpoint::new(
        &"https://api.anthropic.com/v1/".parse().unwrap(),
        "/messages",
    );
    assert_eq!(
        (e.https, e.host.as_str(), e.port, e.path.as_str()),
        (true, "api.anthropic.com", 443, "/v1/messages")
    );
    let e = Endpoint::new(
        &"http://[::1]:8080/v1".parse().unwrap(),
        "/chat/completions",
    );
    assert_eq!(
        (e.host.as_str(), e.port, e.authority.as_str()),
        ("::1", 8080, "[::1]:8080")
    );
}

#[test]
fn a_webhook_endpoint_keeps_its_query_and_a_post_is_framed_exactly() {
    let e = Endpoint::url(&"http://127.0.0.1:9/hooks/x?token=abc".parse().unwrap());
    assert_eq!(e.path, "/hooks/x?token=abc");
    let req = e.post(
        [(
            HeaderName::from_static("authorization"),
            HeaderValue::from_static("Bearer k"),
        )],
        b"{\"a\":1}".to_vec(),
    );
    assert_eq!(
        String::from_utf8(req.bytes).unwrap(),
        "POST /hooks/x?token=abc HTTP/1.1\r\nhost: 127.0.0.1:9\r\n\
         content-type: application/json\r\naccept: text/event-stream\r\n\
         authorization: Bearer k\r\ncontent-length: 7\r\n\r\n{\"a\":1}"
    );
    let root = Endpoint::url(&"http://example.com".parse().unwrap());
    assert_eq!((root.path.as_str(), root.port), ("/", 80));
}

/// A raw HTTP/1.1 server that answers every request with a chunked SSE
/// stream up to `[DONE]`, then, 1 s later, `tail` (and closes the
/// connection after it when `close` is set). Returns its address and
/// how many connections it accepted.
async fn late_tail_server(
    tail: &'static [u8],
    close: bool,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const EVENTS: &str = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"hi\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0))
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut tmp = [0u8; 4096];
                loop {
                    // The request: its head and a Content-Length body.
                    loop {
                        let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
                        if let Some(end) = text.find("\r\n\r\n") {
                            let len: usize = text[..end]
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .map_or(0, |v| v.trim().parse().unwrap());
                            if buf.len() >= end + 4 + len {
                                buf.drain(..end + 4 + len);
                                break;
                            }
                        }
                        match sock.read(&mut tmp).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&tmp[..n]),
                        }
                    }
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                    let chunk = format!("{:x}\r\n{EVENTS}\r\n", EVENTS.len());
                    let _ = sock.write_all(format!("{head}{chunk}").as_bytes()).await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let _ = sock.write_all(tail).await;
                    if close {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

/// One call read up to `Chunk::End` and dropped there, as `run` does.
async fn call_until_end(endpoint: &Endpoint) {
    use futures_util::StreamExt;
    let req = endpoint.post([], b"{}".to_vec());
    let mut s = endpoint
        .stream(req, Duration::from_secs(1), OpenAiDecoder::new(), |_, _| {
            String::new()
        })
        .await
        .unwrap();
    while let Some(c) = s.next().await {
        if c.unwrap() == Chunk::End {
            return;
        }
    }
    panic!("no end marker");
}

/// Connections the server accepted for two calls 2 s apart, each read up
/// to its end marker; the server sends `tail` 1 s after `[DONE]` (and
/// closes the connection after it when `close` is set).
async fn connections_for_two_calls(tail: &'static [u8], close: bool) -> usize {
    let (addr, accepted) = late_tail_server(tail, close).await;
    let uri = format!("http://{addr}/v1").parse().unwrap();
    let endpoint = Endpoint::new(&uri, "/chat/completions");
    call_until_end(&endpoint).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    call_until_end(&endpoint).await;
    accepted.load(std::sync::atomic::Ordering::SeqCst)
}

#[tokio::test(start_paused = true)]
async fn a_stream_dropped_at_its_end_marker_is_reused_once_the_body_ends() {
    // The body's last chunk comes after the stream was dropped: the pool
    // reads it when it checks the connection out.
    assert_eq!(connections_for_two_calls(b"0\r\n\r\n", false).await, 1);
}

#[tokio::test(start_paused = true)]
async fn a_connection_with_more_than_the_body_end_left_is_not_reused() {
    // After `[DONE]` the server sends more data instead of ending the
    // body: the connection is closed at checkout, not used.
    assert_eq!(
        connections_for_two_calls(b"6\r\n: more\r\n", false).await,
        2
    );
}

#[tokio::test(start_paused = true)]
async fn a_pooled_connection_the_server_closed_is_replaced() {
    // The pool finds the close at checkout; the call never sees it.
    assert_eq!(connections_for_two_calls(b"0\r\n\r\n", true).await, 2);
}

#[test]
fn api_key_header_is_sensitive_and_never_debug_printed() {
    let k = ApiKey {
        key: Some("sk-secret".into()),
        env: Some("KEY".into()),
    };
    let v = k.header("p", "Bearer ").unwrap().unwrap();
    assert!(v.is_sensitive());
    assert_eq!(v, "Bearer sk-secret");
    assert!(!format!("{k:?}").contains("sk-secret"));
    let unset = ApiKey {
        key: None,
        env: Some("KEY".into()),
    };
    assert!(matches!(
        unset.header("p", ""),
        Err(ProviderError::Config(m)) if m.contains("KEY")
    ));
    let none = ApiKey {
        key: None,
        env: None,
    };
    assert!(none.header("p", "").unwrap().is_none());
}

/// An in-stream error whose summary would be cut in the middle of the key:
/// the decoder is asked again with the key scrubbed, so the summary is
/// built from clean text and no piece of the key survives the cut.
#[test]
fn an_in_stream_error_is_summarized_from_scrubbed_data() {
    let key = "sk-proj-Hc7Gf4Js0aPeWn6yB3kVq8Zr1Lx5Tp9Md2";
    let secrets = Secrets::new();
    secrets.add_key(key);
    // 190 characters of message, then the key: a 200-character summary of
    // the raw message would end in "sk-pro...".
    let message = format!("{} {key}", "y".repeat(190));
    let ev = SseEvent {
        event: None,
        data: serde_json::json!({"error": {"message": message}}).to_string(),
        id: None,
    };
    let mut decoder = OpenAiDecoder::new();
    let raw = decoder.decode(&ev, &mut Vec::new()).unwrap_err();
    assert!(raw.to_string().contains("sk-pro"), "{raw}");
    let error = rebuilt_scrubbed(&mut decoder, &ev, raw, &secrets);
    let text = error.to_string();
    assert!(!text.contains("sk-p"), "{text}");
    // Events without a secret keep the decoder's first error untouched.
    let plain = SseEvent {
        event: None,
        data: r#"{"error":{"message":"overloaded"}}"#.into(),
        id: None,
    };
    let first = ProviderError::InStream {
        message: "first".into(),
        kind: None,
    };
    let kept = rebuilt_scrubbed(&mut decoder, &plain, first.clone(), &secrets);
    assert_eq!(kept.to_string(), first.to_string());
}

/// A status body that quotes the key where its summary is cut.
#[test]
fn a_status_body_is_scrubbed_before_it_is_summarized() {
    let key = "sk-ant-api03-Qm4vT9xKp2Lw7RzN5bY1cH8dJ3fG6sA0eU";
    let secrets = Secrets::new();
    secrets.add_key(key);
    let body = format!("{} key {key}", "z".repeat(170));
    let scrubbed = secrets.scrub_bytes(body.as_bytes());
    let summary = super::super::openai_wire::summarize_error_body(500, &scrubbed);
    assert!(!summary.contains("sk-a"), "{summary}");
    let unscrubbed = super::super::openai_wire::summarize_error_body(500, body.as_bytes());
    assert!(
        unscrubbed.contains("sk-a"),
        "the case must cut the key: {unscrubbed}"
    );
}
