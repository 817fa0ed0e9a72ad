//! The OpenAI-compatible endpoint proven with clients this project did not
//! write: the official `openai` Python package (SLUICE_TEST_OPENAI_PYTHON, a
//! python with `openai` and `pydantic`) and the `openai` npm package
//! (SLUICE_TEST_OPENAI_NODE, `engine/tests/sdk/node` after `npm ci`), both
//! installed by `.ci/run`. The SDK helper checks run over an OpenAI-wire and
//! an Anthropic-wire provider. Without the variables the tests say they were
//! skipped and pass.

mod common;

use common::sdk::*;
use serde_json::{Value, json};
use sluice_testkit::{Fault, Reply, Script};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_python_sdk_streams_and_fails_cleanly() {
    let Some(python) = env_or_skip(
        "SLUICE_TEST_OPENAI_PYTHON",
        "OpenAI SDK test",
        "a python with `openai` installed",
    ) else {
        return;
    };
    let words = ["Hello", " there", ",", " friend"];
    let gw = Gateway::start(vec![
        SdkPipeline::new("chat", "openai", Script::single(Reply::text(&words))).ceiling(64),
        SdkPipeline::new(
            "slow",
            "openai",
            Script::single(Reply::text(&words).fault(Fault::StallAfter {
                events: 3,
                duration: None,
            })),
        )
        .ceiling(64)
        .extra("timeouts: {first_token: 5s, idle: 1s, total: 20s}\n"),
    ])
    .await;
    let base = format!("{}/v1", gw.root());
    let r = run_json(&python, &[&sdk_script("openai_client.py"), &base]).await;
    println!("openai SDK results: {r:#}");
    assert_eq!(r["non_streaming"]["text"], "Hello there, friend");
    assert_eq!(r["non_streaming"]["finish_reason"], "stop");
    assert_eq!(r["non_streaming"]["object"], "chat.completion");
    assert_eq!(r["non_streaming"]["usage"]["completion_tokens"], 4);
    assert_eq!(r["streaming"]["text"], "Hello there, friend");
    assert_eq!(r["streaming"]["finish_reason"], "stop");
    assert_eq!(r["streaming"]["usage"]["prompt_tokens"], 10);
    assert_eq!(r["streaming"]["usage"]["total_tokens"], 14);
    assert_eq!(r["mid_stream_timeout"]["raised"], "APIError");
    assert!(
        r["mid_stream_timeout"]["message"]
            .as_str()
            .unwrap()
            .contains("silent")
    );
    assert_eq!(r["mid_stream_timeout"]["text"], "Hello there");
    assert_eq!(r["unknown_model"]["raised"], "NotFoundError");
    assert_eq!(r["unknown_model"]["status"], 404);
    assert_eq!(r["unknown_model"]["code"], "model_not_found");
    assert_eq!(r["models"], json!(["chat", "slow"]));
    gw.server.stop().await;
}

const TIME_ARGS: &str = r#"{"zone":"Europe/Paris"}"#;
const REPORT: [&str; 4] = [
    r#"{"city":"Paris","#,
    r#""temperature_c":21,"#,
    r#""conditions":["sunny","#,
    r#""light wind"]}"#,
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_helpers_work_over_both_wires() {
    let Some(python) = env_or_skip(
        "SLUICE_TEST_OPENAI_PYTHON",
        "OpenAI SDK helpers test",
        "a python with `openai` and `pydantic` installed",
    ) else {
        return;
    };
    let mut pipelines = Vec::new();
    for wire in WIRES {
        let (a, b) = (call_id(wire, 1), call_id(wire, 2));
        pipelines.push(SdkPipeline::new(
            format!("{wire}-stream"),
            wire,
            Script::single(tool_stream(
                wire,
                "Let me check.",
                &[
                    (&a, "get_weather", WEATHER_ARGS),
                    (&b, "get_time", TIME_ARGS),
                ],
            )),
        ));
        pipelines.push(SdkPipeline::new(
            format!("{wire}-parse"),
            wire,
            Script::single(text_reply(wire, &REPORT)),
        ));
        pipelines.push(SdkPipeline::new(
            format!("{wire}-tools"),
            wire,
            Script::single(tool_stream(wire, "", &[(&a, "get_weather", WEATHER_ARGS)]))
                .then(text_reply(wire, &["It is sunny", " in Paris."])),
        ));
    }
    let gw = Gateway::start(pipelines).await;
    let script = sdk_script("openai_tools.py");
    let base = format!("{}/v1", gw.root());
    let mut args = vec![script.as_str(), base.as_str()];
    args.extend(WIRES);
    let r = run_json(&python, &args).await;
    println!("openai SDK helper results: {r:#}");

    for wire in WIRES {
        let (a, b) = (call_id(wire, 1), call_id(wire, 2));
        let w = &r[wire];

        // 1. The stream helper assembled the streamed calls into exactly
        // what the provider sent, and parsed each into its Pydantic model.
        let s = &w["stream"];
        assert_eq!(s["content"], "Let me check.", "{wire}");
        assert_eq!(s["finish_reason"], "tool_calls", "{wire}");
        assert_eq!(
            s["tool_calls"],
            json!([
                {"id": a, "type": "function", "name": "get_weather", "arguments": WEATHER_ARGS,
                 "parsed_type": "GetWeather", "parsed": {"city": "Paris"}},
                {"id": b, "type": "function", "name": "get_time", "arguments": TIME_ARGS,
                 "parsed_type": "GetTime", "parsed": {"zone": "Europe/Paris"}},
            ]),
            "{wire}"
        );
        // Arguments arrived in pieces (4 bytes each upstream), not at once.
        assert!(
            s["argument_deltas"]["0"].as_u64().unwrap() >= 4,
            "{wire}: {s}"
        );
        assert!(
            s["argument_deltas"]["1"].as_u64().unwrap() >= 4,
            "{wire}: {s}"
        );
        assert_eq!(
            s["done_events"],
            json!([
                {"index": 0, "name": "get_weather", "arguments": WEATHER_ARGS, "parsed_type": "GetWeather"},
                {"index": 1, "name": "get_time", "arguments": TIME_ARGS, "parsed_type": "GetTime"},
            ]),
            "{wire}"
        );
        let sent = gw.sent(&format!("{wire}-stream"));
        assert_eq!(sent.len(), 1, "{wire}");
        if wire == "openai" {
            assert_eq!(sent[0]["tools"][0]["function"]["name"], "get_weather");
            assert_eq!(sent[0]["tools"][0]["function"]["strict"], true);
            assert_eq!(
                sent[0]["tools"][1]["function"]["parameters"]["required"],
                json!(["zone"])
            );
        } else {
            assert_eq!(sent[0]["tools"][0]["name"], "get_weather");
            assert_eq!(
                sent[0]["tools"][1]["input_schema"]["required"],
                json!(["zone"])
            );
        }

        // 2. `.parse()` with a Pydantic response_format.
        let p = &w["parse"];
        let sent = gw.sent(&format!("{wire}-parse"));
        if wire == "openai" {
            assert_eq!(p["raised"], Value::Null, "{p}");
            assert_eq!(p["parsed_type"], "CityReport");
            assert_eq!(
                p["parsed"],
                json!({"city": "Paris", "temperature_c": 21, "conditions": ["sunny", "light wind"]})
            );
            assert_eq!(p["content"], REPORT.concat());
            assert_eq!(p["finish_reason"], "stop");
            assert_eq!(sent.len(), 1);
            let format = &sent[0]["response_format"];
            assert_eq!(format["type"], "json_schema", "{format}");
            assert_eq!(format["json_schema"]["name"], "CityReport");
            assert_eq!(format["json_schema"]["strict"], true);
            assert_eq!(
                format["json_schema"]["schema"]["required"],
                json!(["city", "temperature_c", "conditions"])
            );
            assert_eq!(
                format["json_schema"]["schema"]["additionalProperties"],
                false
            );
        } else {
            // Anthropic Messages has no json_schema: refused by name before
            // any call, raised as the SDK's own BadRequestError.
            assert_eq!(p["raised"], "BadRequestError", "{p}");
            assert_eq!(p["status"], 400);
            assert_eq!(p["param"], "response_format");
            assert!(p["message"].as_str().unwrap().contains("Anthropic"), "{p}");
        }

        // 3. The full round trip: the call, the local function's result
        // sent back as a `tool` message, the answer.
        let t = &w["round_trip"];
        assert_eq!(t["first_finish_reason"], "tool_calls", "{wire}");
        assert_eq!(
            t["call"],
            json!({"id": a, "name": "get_weather", "arguments": WEATHER_ARGS})
        );
        assert_eq!(t["answer"], "It is sunny in Paris.", "{wire}");
        assert_eq!(t["answer_finish_reason"], "stop", "{wire}");
        let result = t["result_sent"].as_str().unwrap();
        assert!(result.contains("\"temperature_c\": 21"), "{result}");
        let sent = gw.sent(&format!("{wire}-tools"));
        assert_eq!(sent.len(), 2, "{wire}");
        let second = sent[1]["messages"].as_array().unwrap();
        if wire == "openai" {
            assert_eq!(second.len(), 3, "{second:#?}");
            assert_eq!(second[1]["role"], "assistant");
            assert_eq!(
                second[1]["tool_calls"],
                json!([{"id": a, "type": "function", "function": {"name": "get_weather", "arguments": WEATHER_ARGS}}])
            );
            assert_eq!(
                second[2],
                json!({"role": "tool", "tool_call_id": a, "content": result})
            );
        } else {
            assert_eq!(second.len(), 3, "{second:#?}");
            assert_eq!(second[1]["role"], "assistant");
            assert_eq!(
                second[1]["content"],
                json!([{"type": "tool_use", "id": a, "name": "get_weather", "input": {"city": "Paris"}}])
            );
            assert_eq!(
                second[2],
                json!({"role": "user", "content": [{"type": "tool_result", "tool_use_id": a, "content": result}]})
            );
        }

        // 4. Errors raised as the SDK's own exception types.
        let e = &w["errors"];
        assert_eq!(e["unknown_field"]["raised"], "BadRequestError", "{e}");
        assert_eq!(e["unknown_field"]["status"], 400);
        assert_eq!(e["unknown_field"]["param"], "frobnicate");
        assert_eq!(e["unknown_model"]["raised"], "NotFoundError", "{e}");
        assert_eq!(e["unknown_model"]["status"], 404);
        assert_eq!(e["unknown_model"]["code"], "model_not_found");
        if wire == "anthropic" {
            assert_eq!(e["unsupported_param"]["raised"], "BadRequestError");
            assert_eq!(e["unsupported_param"]["param"], "seed");
        }
        // What was refused never reached a provider: one call for the
        // one accepted parse, none on Anthropic.
        let parse_calls = gw.sent(&format!("{wire}-parse")).len();
        assert_eq!(parse_calls, usize::from(wire == "openai"), "{wire}");
    }
    gw.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_node_sdk_streams_tool_calls_over_both_wires() {
    let Some(dir) = env_or_skip(
        "SLUICE_TEST_OPENAI_NODE",
        "OpenAI Node SDK test",
        "engine/tests/sdk/node after `npm ci` there",
    ) else {
        return;
    };
    let mut pipelines = Vec::new();
    for wire in WIRES {
        let (a, b) = (call_id(wire, 1), call_id(wire, 2));
        pipelines.push(SdkPipeline::new(
            format!("{wire}-node"),
            wire,
            Script::single(tool_stream(
                wire,
                "Let me check.",
                &[
                    (&a, "get_weather", WEATHER_ARGS),
                    (&b, "get_time", TIME_ARGS),
                ],
            )),
        ));
    }
    let gw = Gateway::start(pipelines).await;
    let script = format!("{dir}/openai_client.mjs");
    let base = format!("{}/v1", gw.root());
    let mut args = vec![script.as_str(), base.as_str()];
    args.extend(WIRES);
    let r = run_json("node", &args).await;
    println!("openai Node SDK results: {r:#}");

    for wire in WIRES {
        let (a, b) = (call_id(wire, 1), call_id(wire, 2));
        let w = &r[wire];
        let expected = json!([
            {"id": a, "name": "get_weather", "arguments": WEATHER_ARGS},
            {"id": b, "name": "get_time", "arguments": TIME_ARGS},
        ]);

        // Chunk by chunk: each call opens with one piece carrying its id,
        // type and name, then argument pieces with neither, in order.
        let c = &w["chunks"];
        assert_eq!(c["content"], "Let me check.", "{wire}");
        assert_eq!(c["finish_reasons"], json!(["tool_calls"]), "{wire}");
        assert_eq!(c["assembled"], expected, "{wire}");
        let pieces = c["pieces"].as_array().unwrap();
        for (index, id) in [(0, &a), (1, &b)] {
            let mine: Vec<&Value> = pieces.iter().filter(|p| p["index"] == index).collect();
            assert!(mine.len() >= 5, "{wire}: {mine:#?}");
            assert_eq!(mine[0]["id"], json!(id), "{wire}");
            assert_eq!(mine[0]["type"], "function", "{wire}");
            assert!(
                mine[1..]
                    .iter()
                    .all(|p| p.get("id").is_none() && p["function"].get("name").is_none())
            );
        }
        assert_eq!(c["usage"]["total_tokens"], 70, "{wire}");

        // Assembled by the SDK's own stream helper.
        let h = &w["helper"];
        assert_eq!(h["content"], "Let me check.", "{wire}");
        assert_eq!(h["finish_reason"], "tool_calls", "{wire}");
        let calls: Vec<Value> = h["tool_calls"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| json!({"id": c["id"], "name": c["name"], "arguments": c["arguments"]}))
            .collect();
        assert_eq!(Value::from(calls), expected, "{wire}");
        assert_eq!(h["tool_calls"][0]["parsed"], json!({"city": "Paris"}));
        assert_eq!(
            h["tool_calls"][1]["parsed"],
            json!({"zone": "Europe/Paris"})
        );
        assert_eq!(h["done_events"][1]["name"], "get_time", "{wire}");

        let u = &w["unknown_field"];
        assert_eq!(u["is_bad_request"], true, "{wire}: {u}");
        assert_eq!(u["status"], 400);
        assert_eq!(u["param"], "frobnicate");
        // Two streams reached the provider; the refused request did not.
        assert_eq!(gw.sent(&format!("{wire}-node")).len(), 2, "{wire}");
    }
    gw.server.stop().await;
}
