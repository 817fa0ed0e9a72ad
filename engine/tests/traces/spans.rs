//! The span tree and attributes of each kind of request.

use super::*;

#[tokio::test(start_paused = true)]
async fn a_plain_request_is_a_server_span_with_one_client_span_in_the_clients_trace() {
    let collector = Collector::start();
    let mock = MockProvider::start(Script::single(Reply::text(&["fine", " thanks"])))
        .await
        .unwrap();
    let server = start(&mock, None, &collector.endpoint(), "", LIMITS).await;
    let tp = traceparent();
    let events = chat(
        server.addr,
        &[("traceparent", &tp), ("x-request-id", "req-1")],
    )
    .await;
    assert_eq!(events.last().unwrap().name, "done");
    server.stop().await;

    let spans = collector.spans();
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let (root, children) = tree(&spans);
    // The client's trace goes on: same trace id, its span the parent.
    assert_eq!(hex(&root.trace_id), CLIENT_TRACE);
    assert_eq!(hex(&root.parent_span_id), CLIENT_SPAN);
    assert_eq!(root.name, "chat chat");
    assert_eq!(status(&root), SpanStatus::Unset);
    assert_eq!(
        str_attr(&root, "gen_ai.operation.name").as_deref(),
        Some("chat")
    );
    assert_eq!(
        str_attr(&root, "gen_ai.provider.name").as_deref(),
        Some("openai")
    );
    assert_eq!(
        str_attr(&root, "gen_ai.request.model").as_deref(),
        Some("main-model")
    );
    assert_eq!(
        str_attr(&root, "gen_ai.response.model").as_deref(),
        Some("mock-model")
    );
    assert_eq!(int_attr(&root, "gen_ai.request.max_tokens"), Some(64));
    assert_eq!(
        list_attr(&root, "gen_ai.response.finish_reasons"),
        Some(vec!["stop".into()])
    );
    let (input, output) = (
        int_attr(&root, "gen_ai.usage.input_tokens").unwrap(),
        int_attr(&root, "gen_ai.usage.output_tokens").unwrap(),
    );
    assert!(input > 0 && output > 0, "{input} {output}");
    // main-model: $1 in, $2 out per million tokens.
    assert_eq!(
        int_attr(&root, "sluice.cost_micros"),
        Some(input + 2 * output)
    );
    assert_eq!(str_attr(&root, "sluice.pipeline").as_deref(), Some("chat"));
    assert_eq!(
        str_attr(&root, "sluice.request_id").as_deref(),
        Some("req-1")
    );
    assert_eq!(str_attr(&root, "sluice.status").as_deref(), Some("ok"));
    assert!(matches!(
        value_of(&root.attributes, "sluice.time_to_first_token_ms"),
        Some(Value::DoubleValue(ms)) if *ms >= 0.0
    ));
    assert!(str_attr(&root, "error.type").is_none());
    assert!(str_attr(&root, "sluice.key").is_none());

    let call = &children[0];
    assert_eq!(children.len(), 1);
    assert_eq!(kind(call), SpanKind::Client);
    assert_eq!(call.name, "chat main-model");
    assert_eq!(
        str_attr(call, "gen_ai.provider.name").as_deref(),
        Some("openai")
    );
    assert_eq!(
        str_attr(call, "gen_ai.request.model").as_deref(),
        Some("main-model")
    );
    assert_eq!(
        str_attr(call, "gen_ai.response.model").as_deref(),
        Some("mock-model")
    );
    assert_eq!(int_attr(call, "sluice.attempt"), Some(1));
    assert_eq!(int_attr(call, "sluice.fallback"), Some(0));
    assert_eq!(int_attr(call, "gen_ai.usage.output_tokens"), Some(output));
    assert_eq!(
        list_attr(call, "gen_ai.response.finish_reasons"),
        Some(vec!["stop".into()])
    );
    // No content unless asked for.
    for s in [&root, call] {
        assert!(str_attr(s, "gen_ai.input.messages").is_none());
        assert!(str_attr(s, "gen_ai.output.messages").is_none());
    }
    // The provider was sent the call span's context.
    let sent = mock.journal().requests()[0]
        .header("traceparent")
        .map(str::to_string);
    assert_eq!(
        sent,
        Some(format!("00-{CLIENT_TRACE}-{}-01", hex(&call.span_id)))
    );
    let received = collector.received.lock().unwrap();
    assert!(
        received
            .exports
            .iter()
            .all(|(_, s)| s.iter().all(|(svc, _)| svc == "sluice"))
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_without_traceparent_starts_a_trace_and_content_is_captured_when_asked() {
    let collector = Collector::start();
    let mock = MockProvider::start(Script::single(Reply::text(&["fine", " thanks"])))
        .await
        .unwrap();
    let telemetry = ", capture_content: true, service_name: gw, headers: {x-tenant: blue}";
    let server = start(&mock, None, &collector.endpoint(), telemetry, LIMITS).await;
    chat(server.addr, &[]).await;
    server.stop().await;

    let spans = collector.spans();
    let (root, children) = tree(&spans);
    assert!(root.parent_span_id.is_empty(), "a new trace has no parent");
    assert_ne!(hex(&root.trace_id), CLIENT_TRACE);
    let input = str_attr(&children[0], "gen_ai.input.messages").unwrap();
    let input: serde_json::Value = serde_json::from_str(&input).unwrap();
    assert_eq!(
        input,
        serde_json::json!([
            {"role": "system", "parts": [{"type": "text", "content": "Be brief."}]},
            {"role": "user", "parts": [{"type": "text", "content": "hi there"}]},
        ])
    );
    let output = str_attr(&children[0], "gen_ai.output.messages").unwrap();
    let output: serde_json::Value = serde_json::from_str(&output).unwrap();
    assert_eq!(output[0]["parts"][0]["content"], "fine thanks");
    assert_eq!(output[0]["finish_reason"], "stop");
    let received = collector.received.lock().unwrap();
    for (headers, spans) in &received.exports {
        assert_eq!(headers.get("x-tenant").map(String::as_str), Some("blue"));
        assert!(spans.iter().all(|(svc, _)| svc == "gw"));
    }
}

#[tokio::test(start_paused = true)]
async fn retries_and_a_fallback_are_one_client_span_each() {
    let collector = Collector::start();
    let failing = || {
        Reply::text(&["no"]).fault(Fault::Status {
            status: 503,
            retry_after: None,
        })
    };
    let primary = MockProvider::start(Script::single(failing()).then(failing()))
        .await
        .unwrap();
    let backup = MockProvider::start(Script::single(Reply::text(&["from", " backup"])))
        .await
        .unwrap();
    let rest = format!(
        "{LIMITS}retries: {{attempts: 2, backoff: 100ms}}\nfallbacks: [{{provider: backup, name: backup-model}}]\n"
    );
    let server = start(&primary, Some(&backup), &collector.endpoint(), "", &rest).await;
    let events = chat(server.addr, &[]).await;
    assert_eq!(text(&events), "from backup");
    server.stop().await;

    let spans = collector.spans();
    let (root, calls) = tree(&spans);
    // (name, attempt, fallback, error.type, HTTP status) of each call.
    type Call = (
        String,
        Option<i64>,
        Option<i64>,
        Option<String>,
        Option<i64>,
    );
    let seen: Vec<Call> = calls
        .iter()
        .map(|c| {
            (
                c.name.clone(),
                int_attr(c, "sluice.attempt"),
                int_attr(c, "sluice.fallback"),
                str_attr(c, "error.type"),
                int_attr(c, "http.response.status_code"),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                "chat main-model".into(),
                Some(1),
                Some(0),
                Some("upstream".into()),
                Some(503)
            ),
            (
                "chat main-model".into(),
                Some(2),
                Some(0),
                Some("upstream".into()),
                Some(503)
            ),
            ("chat backup-model".into(), Some(1), Some(1), None, None),
        ]
    );
    for failed in &calls[..2] {
        assert_eq!(status(failed), SpanStatus::Error);
    }
    assert_eq!(status(&calls[2]), SpanStatus::Unset);
    assert_eq!(
        str_attr(&calls[2], "sluice.provider").as_deref(),
        Some("backup")
    );
    // The request ended well, answered by the fallback.
    assert_eq!(status(&root), SpanStatus::Unset);
    assert_eq!(str_attr(&root, "sluice.status").as_deref(), Some("ok"));
    assert_eq!(
        str_attr(&root, "gen_ai.response.model").as_deref(),
        Some("mock-model")
    );
    // Each try carried its own span's context upstream.
    let sent: Vec<String> = primary
        .journal()
        .requests()
        .iter()
        .chain(backup.journal().requests().iter())
        .map(|r| r.header("traceparent").unwrap().to_string())
        .collect();
    let expected: Vec<String> = calls
        .iter()
        .map(|c| format!("00-{}-{}-01", hex(&c.trace_id), hex(&c.span_id)))
        .collect();
    assert_eq!(sent, expected);
}

#[tokio::test(start_paused = true)]
async fn a_tool_loop_has_a_span_per_model_call_and_per_tool() {
    let collector = Collector::start();
    let mock = MockProvider::start(
        Script::single(openai_tool_calls(&[(
            "call_a",
            "lookup_order",
            r#"{"order_id": 7}"#,
        )]))
        .then(Reply::text(&["Order", " 7", " is", " delivered", "."])),
    )
    .await
    .unwrap();
    let rest = format!(
        "limits: {{max_tokens: 200}}\ntimeouts: {{first_token: 5s, idle: 5s, total: 60s}}\n{LOOKUP_TOOL}"
    );
    let server = start(&mock, None, &collector.endpoint(), "", &rest).await;
    let events = chat(server.addr, &[]).await;
    assert_eq!(text(&events), "Order 7 is delivered.");
    server.stop().await;

    let spans = collector.spans();
    let (root, children) = tree(&spans);
    let names: Vec<&str> = children.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "chat main-model",
            "execute_tool lookup_order",
            "chat main-model"
        ]
    );
    let (first, tool, second) = (&children[0], &children[1], &children[2]);
    assert_eq!(int_attr(first, "sluice.round"), Some(1));
    assert_eq!(
        list_attr(first, "gen_ai.response.finish_reasons"),
        Some(vec!["tool_calls".into()])
    );
    assert_eq!(int_attr(first, "gen_ai.usage.input_tokens"), Some(50));
    assert_eq!(int_attr(first, "gen_ai.usage.output_tokens"), Some(20));
    assert_eq!(kind(tool), SpanKind::Internal);
    assert_eq!(
        str_attr(tool, "gen_ai.operation.name").as_deref(),
        Some("execute_tool")
    );
    assert_eq!(
        str_attr(tool, "gen_ai.tool.name").as_deref(),
        Some("lookup_order")
    );
    assert_eq!(
        str_attr(tool, "gen_ai.tool.call.id").as_deref(),
        Some("call_a")
    );
    assert_eq!(int_attr(tool, "sluice.tool.rows"), Some(1));
    assert_eq!(status(tool), SpanStatus::Unset);
    // The tool ran after the call that asked for it, before the next.
    assert!(tool.start_time_unix_nano >= first.end_time_unix_nano);
    assert!(second.start_time_unix_nano >= tool.end_time_unix_nano);
    assert_eq!(int_attr(second, "sluice.round"), Some(2));
    assert_eq!(int_attr(second, "sluice.fallback"), Some(0));
    assert_eq!(
        list_attr(second, "gen_ai.response.finish_reasons"),
        Some(vec!["stop".into()])
    );
    assert_eq!(int_attr(&root, "sluice.tool_calls"), Some(1));
    assert_eq!(int_attr(&root, "sluice.rounds"), Some(2));
    let total_in = int_attr(&root, "gen_ai.usage.input_tokens").unwrap();
    assert!(total_in > 50, "both rounds' prompts: {total_in}");
    // The second call carried its own context, not the first's.
    let sent: Vec<String> = mock
        .journal()
        .requests()
        .iter()
        .map(|r| r.header("traceparent").unwrap().to_string())
        .collect();
    assert!(sent[0].contains(&hex(&first.span_id)));
    assert!(sent[1].contains(&hex(&second.span_id)));
}

#[tokio::test(start_paused = true)]
async fn a_timeout_is_an_error_with_sluices_code_on_the_call_and_the_request() {
    let collector = Collector::start();
    let mock = MockProvider::start(Script::single(
        Reply::text(&["late"]).fault(Fault::DelayHeaders(Duration::from_secs(30))),
    ))
    .await
    .unwrap();
    let rest = "limits: {max_tokens: 64}\ntimeouts: {first_token: 2s, total: 20s}\n";
    let server = start(&mock, None, &collector.endpoint(), "", rest).await;
    let (status_code, _, body) = call_with(
        server.addr,
        "/v1/pipelines/chat",
        &[],
        Some(r#"{"input":"hi"}"#),
    )
    .await;
    assert_eq!(status_code, StatusCode::GATEWAY_TIMEOUT, "{body}");
    server.stop().await;

    let spans = collector.spans();
    let (root, calls) = tree(&spans);
    assert_eq!(calls.len(), 1);
    assert_failed(&[&root, &calls[0]], "timeout.first_token");
    assert_eq!(str_attr(&root, "sluice.status").as_deref(), Some("timeout"));
    assert!(str_attr(&root, "gen_ai.response.model").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_client_that_leaves_ends_the_spans_as_client_closed() {
    let collector = Collector::start();
    let mock = MockProvider::start(Script::single(
        Reply::text(&["one", " two", " three"]).fault(Fault::StallAfter {
            events: 2,
            duration: None,
        }),
    ))
    .await
    .unwrap();
    let rest = "limits: {max_tokens: 64}\ntimeouts: {first_token: 5s, idle: 60s, total: 120s}\n";
    let server = start(&mock, None, &collector.endpoint(), "", rest).await;
    let (resp, conn) = send_on_own_connection(
        server.addr,
        post_json("/v1/pipelines/chat", r#"{"input":"hi"}"#),
    )
    .await;
    let mut r = SseReader::new(resp);
    assert_eq!(r.next().await.unwrap().name, "start");
    assert_eq!(r.next().await.unwrap().name, "delta");
    tokio::time::sleep(Duration::from_secs(1)).await;
    drop(r);
    drop(conn);
    assert!(
        mock.journal()
            .wait_for_requests(1, Duration::from_secs(1))
            .await
    );
    server.stop().await;

    let spans = collector.spans();
    let (root, calls) = tree(&spans);
    assert_eq!(calls.len(), 1);
    assert_failed(&[&root, &calls[0]], "client_closed");
    assert_eq!(
        str_attr(&root, "sluice.status").as_deref(),
        Some("client_closed")
    );
    assert_eq!(
        list_attr(&root, "gen_ai.response.finish_reasons"),
        Some(vec!["cancelled".into()])
    );
    // What was generated before the client left is counted.
    assert!(int_attr(&root, "gen_ai.usage.output_tokens").unwrap() > 0);
}
