//! `/v1/messages` proven with a client this project did not write: the
//! official `anthropic` Python package, over an OpenAI-wire and an
//! Anthropic-wire provider. It runs when SLUICE_TEST_ANTHROPIC_PYTHON names
//! a python with `anthropic` installed (`.ci/run` installs it in the same
//! virtual environment as the `openai` package and sets both variables);
//! without it the test says it was skipped and passes.

mod common;

use common::sdk::*;
use serde_json::json;
use sluice_testkit::{Fault, Reply, Script};

const PREAMBLE: &str = "Let me check.";
const WORDS: [&str; 4] = ["Hello", " there", ",", " friend"];
const ANSWER: [&str; 2] = ["It is sunny", " in Paris."];

/// The model each wire's mock names in its answers.
fn provider_model(wire: &str) -> &'static str {
    if wire == "openai" {
        "mock-model"
    } else {
        "mock-claude"
    }
}

/// Text, then one get_weather call on `wire`, its arguments streamed 4
/// bytes at a time.
fn tool_call(wire: &str) -> Reply {
    tool_stream(
        wire,
        PREAMBLE,
        &[(&call_id(wire, 1), "get_weather", WEATHER_ARGS)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_anthropic_python_sdk_over_both_wires() {
    let Some(python) = env_or_skip(
        "SLUICE_TEST_ANTHROPIC_PYTHON",
        "Anthropic SDK test",
        "a python with `anthropic` installed",
    ) else {
        return;
    };
    let mut pipelines = Vec::new();
    for wire in WIRES {
        pipelines.push(SdkPipeline::new(
            format!("{wire}-text"),
            wire,
            Script::single(text_reply(wire, &WORDS)),
        ));
        let round = Script::single(tool_call(wire))
            .then(text_reply(wire, &ANSWER))
            .then(tool_call(wire))
            .then(text_reply(wire, &ANSWER));
        pipelines.push(SdkPipeline::new(format!("{wire}-tools"), wire, round));
        // The provider's own in-stream error after two words: OpenAI's
        // `data: {"error": …}`, Anthropic's `event: error`.
        let after = if wire == "openai" { 3 } else { 5 };
        pipelines.push(SdkPipeline::new(
            format!("{wire}-fail"),
            wire,
            Script::single(text_reply(wire, &WORDS).fault(Fault::ErrorEventAfter(after))),
        ));
    }
    pipelines.push(
        SdkPipeline::new(
            "anthropic-thinking",
            "anthropic",
            Script::single(Reply::fixture("anthropic/thinking.sse")),
        )
        // Room for Anthropic's smallest thinking budget (1024).
        .ceiling(1500),
    );
    let gw = Gateway::start(pipelines).await;

    let script = sdk_script("anthropic_client.py");
    let base = gw.root();
    let mut args = vec![script.as_str(), base.as_str()];
    args.extend(WIRES);
    let r = run_json(&python, &args).await;
    println!("anthropic SDK results: {r:#}");

    for wire in WIRES {
        let w = &r[wire];

        // 1. messages.create: a Message with the text, stop reason, the
        // provider's usage and the model the provider named.
        let c = &w["text"]["create"];
        assert_eq!(c["type"], "Message", "{wire}");
        assert_eq!(c["text"], WORDS.concat(), "{wire}");
        assert_eq!(c["stop_reason"], "end_turn", "{wire}");
        assert_eq!(c["model"], provider_model(wire), "{wire}");
        assert_eq!(
            c["usage"],
            json!({"input_tokens": 10, "output_tokens": 4,
                   "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}),
            "{wire}"
        );
        // The SDK read the request id from the `request-id` header, and
        // the message id is built from it.
        let request_id = c["request_id"].as_str().unwrap();
        assert_eq!(c["id"], format!("msg_{request_id}"), "{wire}");

        // 2. messages.stream: the text events in order, and the final
        // message equal to the non-streaming one.
        let t = &w["text"];
        assert_eq!(t["text_events"], json!(WORDS), "{wire}");
        assert_eq!(t["final_text"], WORDS.concat(), "{wire}");
        assert_eq!(t["streamed"], t["whole"], "{wire}");
        assert_eq!(
            t["whole"]["content"],
            json!([{"type": "text", "text": WORDS.concat()}]),
            "{wire}"
        );
        let sent = gw.sent(&format!("{wire}-text"));
        // create, stream, count_tokens (never sent on), the refused bodies
        // (never sent on).
        assert_eq!(sent.len(), 2, "{wire}: {sent:#?}");

        // 3. The tool round trip, streamed and whole: the SDK parsed the
        // input into a dict, the tool_result went back, the answer is text.
        for key in ["round_trip_streamed", "round_trip_whole"] {
            let rt = &w[key];
            assert_eq!(rt["first_stop_reason"], "tool_use", "{wire} {key}");
            assert_eq!(
                rt["first_blocks"],
                json!(["text", "tool_use"]),
                "{wire} {key}"
            );
            assert_eq!(
                rt["call"],
                json!({"id": call_id(wire, 1), "name": "get_weather", "input": {"city": "Paris"}, "input_type": "dict"}),
                "{wire} {key}"
            );
            assert_eq!(rt["answer"], ANSWER.concat(), "{wire} {key}");
            assert_eq!(rt["answer_stop_reason"], "end_turn", "{wire} {key}");
        }
        // The streamed call's input arrived in pieces (4 bytes upstream).
        let pieces = w["round_trip_streamed"]["input_json_events"]
            .as_array()
            .unwrap();
        assert!(pieces.len() >= 4, "{wire}: {pieces:?}");
        let joined: String = pieces.iter().map(|p| p.as_str().unwrap()).collect();
        assert_eq!(joined, WEATHER_ARGS, "{wire}");
        let result = w["round_trip_whole"]["result_sent"].as_str().unwrap();
        assert!(result.contains("\"temperature_c\": 21"), "{result}");
        let sent = gw.sent(&format!("{wire}-tools"));
        assert_eq!(sent.len(), 4, "{wire}");
        for second in [&sent[1], &sent[3]] {
            let messages = second["messages"].as_array().unwrap();
            assert_eq!(messages.len(), 3, "{wire}: {messages:#?}");
            if wire == "openai" {
                assert_eq!(second["tools"][0]["function"]["name"], "get_weather");
                assert_eq!(
                    messages[1],
                    json!({"role": "assistant", "content": PREAMBLE, "tool_calls": [{"id": call_id(wire, 1),
                        "type": "function", "function": {"name": "get_weather", "arguments": WEATHER_ARGS}}]}),
                    "{wire}"
                );
                assert_eq!(
                    messages[2],
                    json!({"role": "tool", "tool_call_id": call_id(wire, 1), "content": result}),
                    "{wire}"
                );
            } else {
                assert_eq!(second["tools"][0]["name"], "get_weather");
                assert_eq!(
                    messages[1],
                    json!({"role": "assistant", "content": [{"type": "text", "text": PREAMBLE},
                        {"type": "tool_use", "id": call_id(wire, 1),
                        "name": "get_weather", "input": {"city": "Paris"}}]}),
                    "{wire}"
                );
                assert_eq!(
                    messages[2],
                    json!({"role": "user", "content": [{"type": "tool_result",
                        "tool_use_id": call_id(wire, 1), "content": result}]}),
                    "{wire}"
                );
            }
        }

        // 4. Errors as the SDK's own types.
        let e = &w["errors"];
        let m = &e["unknown_model"];
        assert_eq!(m["raised"], "NotFoundError", "{wire}: {m}");
        assert_eq!(m["status"], 404);
        assert_eq!(m["error"]["type"], "not_found_error");
        assert!(
            m["message"]
                .as_str()
                .unwrap()
                .contains(&format!("\"{wire}-nope\"")),
            "{m}"
        );
        assert!(m["request_id"].as_str().is_some_and(|s| !s.is_empty()));
        for (key, field) in [
            ("unknown_field", "frobnicate"),
            ("missing_max_tokens", "max_tokens"),
        ] {
            let b = &e[key];
            assert_eq!(b["raised"], "BadRequestError", "{wire}: {b}");
            assert_eq!(b["status"], 400);
            assert_eq!(b["error"]["type"], "invalid_request_error");
            assert!(
                b["error"]["message"]
                    .as_str()
                    .unwrap()
                    .starts_with(&format!("{field}:")),
                "{b}"
            );
        }
        // A failure after the stream started: the SDK raises the `error`
        // event as an APIStatusError (its status is the stream's 200),
        // after the words that came before it.
        let f = &w["failure"];
        assert_eq!(f["raised"], "APIStatusError", "{wire}: {f}");
        assert_eq!(f["is_api_status_error"], true);
        assert_eq!(f["status"], 200);
        assert_eq!(f["text_before"], json!(["Hello", " there"]), "{wire}");
        assert!(
            f["error"]["type"]
                .as_str()
                .is_some_and(|t| t.ends_with("_error")),
            "{f}"
        );
        assert_eq!(gw.sent(&format!("{wire}-fail")).len(), 1, "{wire}");

        // count_tokens: Sluice's estimate, a positive number.
        assert!(
            w["count_tokens"]["input_tokens"].as_u64().unwrap() > 0,
            "{wire}"
        );
    }

    // 5. Thinking: the signed thinking block a provider streamed is in the
    // SDK's final message, signature and all, streamed and whole alike.
    let th = &r["thinking"];
    let recorded = th["streamed"]["content"].as_array().unwrap();
    // The SDK's own typed block (its text block type is a parsed variant).
    assert_eq!(th["block_types"][0], "ThinkingBlock", "{th}");
    assert_eq!(recorded[0]["type"], "thinking");
    assert_eq!(
        recorded[0]["signature"],
        "ErUBCkYIARgCIkACJWxzySUOJzOlZ8WFdgQSbeQA3H1i5rfkKLV9eC4HN6Jcnrlw1NcnPRIPaTs9jLF3rllsfoidjZapJ+5MLwjVEgzTfQ6r9tDZvyBP0nEaDHWRqRWP7CoPOc+ksSIwSlxHzaMbnyXGoiNmCj9thC3N6EDMpemJPx3UZqDtrgmKZgQMMzNzNsh9IxgvtuYKKh1PxXUmWexqlckSVETQj3LbHLK/nwEK+bz0+2b/pA=="
    );
    assert!(
        recorded[0]["thinking"]
            .as_str()
            .unwrap()
            .starts_with("The user has simply said \"hey\""),
        "{th}"
    );
    assert!(
        recorded[1]["text"]
            .as_str()
            .unwrap()
            .starts_with("Hello! I'm Assistant")
    );
    assert_eq!(th["streamed"]["model"], "claude-3-7-sonnet-20250219");
    assert_eq!(th["streamed"]["usage"]["output_tokens"], 104);
    assert_eq!(th["streamed"]["usage"]["input_tokens"], 778);
    assert_eq!(th["streamed"], th["whole"]);
    let kinds = th["event_kinds"].as_array().unwrap();
    assert!(kinds.contains(&json!("thinking")), "{kinds:?}");
    assert!(kinds.contains(&json!("signature")), "{kinds:?}");
    let sent = gw.sent("anthropic-thinking");
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[0]["max_tokens"], 1400);
    // The next turn gave the SDK's thinking block back as it came: the
    // provider received it, signature and all, before the text.
    let assistant = &sent[2]["messages"][1];
    assert_eq!(assistant["role"], "assistant");
    assert_eq!(
        assistant["content"],
        json!([
            {"type": "thinking", "thinking": recorded[0]["thinking"], "signature": recorded[0]["signature"]},
            {"type": "text", "text": recorded[1]["text"]},
        ])
    );
    assert_eq!(
        sent[0]["thinking"],
        json!({"type": "enabled", "budget_tokens": 1024})
    );
    // A budget that does not fit under the pipeline's ceiling (1500) is
    // refused before any call (sent.len() above), naming the field.
    let over = &th["over_ceiling"];
    assert_eq!(over["raised"], "BadRequestError", "{over}");
    let text = over["error"]["message"].as_str().unwrap();
    assert!(
        text.starts_with("thinking.budget_tokens:") && text.contains("(1500)"),
        "{over}"
    );
    gw.server.stop().await;
}
