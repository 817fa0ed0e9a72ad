//! Translation cases as data: every file in `fixtures/translations/` is run
//! through a real server and the testkit's mock provider. A request case
//! checks the body each provider wire received (from the mock's journal)
//! or the 400 a wire that cannot take a field answers; a response case
//! replays an upstream stream and checks what the client sees, streamed
//! and not. The format is in `fixtures/translations/README.md`.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use serde_json::{Value, json};
use sluice::compile::compile_sources;
use sluice::provider::sse::SseParser;
use sluice::serve::RunningServer;
use sluice_testkit::{MockProvider, Reply, Script};

/// Marks a key the provider body must not have.
const ABSENT: &str = "<absent>";

fn cases_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/translations")
}

fn load(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_saphyr::from_str::<Value>(&text)
        .unwrap_or_else(|e| panic!("{}: not a valid case file: {e}", path.display()))
}

async fn serve(mock: &MockProvider, wire: &str) -> RunningServer {
    let settings = (
        PathBuf::from("settings.yaml"),
        format!(
            "storage: memory\nproviders:\n  up: {{kind: {wire}, base_url: \"{}\"}}\n",
            mock.base_url()
        ),
    );
    let pipeline = (
        PathBuf::from("chat.yaml"),
        "name: chat\nmodel: {provider: up, name: the-model}\nlimits: {max_tokens: 200}\n"
            .to_string(),
    );
    let catalog = compile_sources(&settings, &[pipeline]).unwrap_or_else(|d| panic!("{d:#?}"));
    RunningServer::start(catalog, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// Every difference between `want` and `got`, at JSON paths: keys of
/// `want` only (others are not part of the case), `"<absent>"` for a key
/// that must be missing, arrays compared element by element and by length.
fn diff(want: &Value, got: &Value, at: &str, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                let here = format!("{at}.{k}");
                match g.get(k) {
                    None if wv == ABSENT => {}
                    Some(gv) if wv == ABSENT => {
                        out.push(format!("{here}: expected absent, got {gv}"))
                    }
                    None => out.push(format!("{here}: missing, expected {wv}")),
                    Some(gv) => diff(wv, gv, &here, out),
                }
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            if w.len() != g.len() {
                out.push(format!(
                    "{at}: expected {} items, got {}: {got}",
                    w.len(),
                    g.len()
                ));
            }
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                diff(wv, gv, &format!("{at}[{i}]"), out);
            }
        }
        // 0.3 in YAML and 0.3 in the body are the same number.
        (Value::Number(w), Value::Number(g)) if w.as_f64() == g.as_f64() => {}
        _ if want == got => {}
        _ => out.push(format!("{at}: expected {want}, got {got}")),
    }
}

fn check(case: &str, what: &str, want: &Value, got: &Value) {
    let mut out = Vec::new();
    diff(want, got, "", &mut out);
    assert!(
        out.is_empty(),
        "{case}: {what}:\n  {}\nwhole value: {got}",
        out.join("\n  ")
    );
}

/// The client's request of a case, `model` defaulting to the pipeline.
fn client_request(case: &Value) -> Value {
    let mut req = case["request"].clone();
    if req.get("model").is_none() {
        req["model"] = json!("chat");
    }
    req
}

async fn request_case(name: &str, case: &Value, wire: &str) {
    let want = &case[wire];
    let reply = if wire == "anthropic" {
        Reply::anthropic_text(&["ok"])
    } else {
        Reply::text(&["ok"])
    };
    let mock = MockProvider::start(Script::single(reply)).await.unwrap();
    let server = serve(&mock, wire).await;
    let body = client_request(case).to_string();
    let resp = send(server.addr, post_json("/v1/chat/completions", &body)).await;
    let status = resp.status().as_u16();
    let got = body_json(resp).await;
    if let Some(param) = want.get("refused") {
        assert_eq!(
            status, 400,
            "{name}: {wire}: expected a 400, got {status}: {got}"
        );
        assert_eq!(&got["error"]["param"], param, "{name}: {wire}: {got}");
        assert_eq!(
            mock.journal().request_count(),
            0,
            "{name}: {wire}: sent anyway"
        );
    } else {
        assert_eq!(status, 200, "{name}: {wire}: {got}");
        let requests = mock.journal().requests();
        assert_eq!(requests.len(), 1, "{name}: {wire}");
        check(
            name,
            &format!("{wire} provider body"),
            &want["body"],
            &requests[0].body,
        );
    }
    server.stop().await;
}

/// The upstream reply of a response case: a recorded fixture or an inline
/// SSE body.
fn upstream(name: &str, up: &Value) -> Reply {
    match (up["fixture"].as_str(), up["sse"].as_str()) {
        (Some(f), None) => Reply::fixture(f),
        (None, Some(sse)) => Reply::recorded(sse.to_string()),
        _ => panic!("{name}: upstream needs one of fixture, sse"),
    }
}

/// A streamed chat completion folded into the shape of a case's `expect`.
fn fold_stream(body: &[u8]) -> Value {
    let mut parser = SseParser::new();
    let mut events = Vec::new();
    parser.push(body, &mut events).unwrap();
    parser.finish(&mut events);
    let (mut text, mut refusal, mut finish, mut usage) = (String::new(), String::new(), None, None);
    let mut calls: Vec<Value> = Vec::new();
    for e in &events {
        if e.data == "[DONE]" {
            continue;
        }
        let c: Value = serde_json::from_str(&e.data).unwrap();
        assert!(c.get("error").is_none(), "error chunk {c}");
        if let Some(choice) = c["choices"].get(0) {
            let d = &choice["delta"];
            text += d["content"].as_str().unwrap_or("");
            refusal += d["refusal"].as_str().unwrap_or("");
            for piece in d["tool_calls"].as_array().into_iter().flatten() {
                let i = piece["index"].as_u64().unwrap() as usize;
                while calls.len() <= i {
                    calls.push(json!({"id": "", "name": "", "arguments": ""}));
                }
                for (key, from) in [("id", &piece["id"]), ("name", &piece["function"]["name"])] {
                    if let Some(s) = from.as_str() {
                        calls[i][key] = json!(format!("{}{s}", calls[i][key].as_str().unwrap()));
                    }
                }
                let args = calls[i]["arguments"].as_str().unwrap().to_string()
                    + piece["function"]["arguments"].as_str().unwrap_or("");
                calls[i]["arguments"] = json!(args);
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                finish = Some(f.to_string());
            }
        }
        if c["usage"].is_object() {
            usage = Some(c["usage"].clone());
        }
    }
    json!({
        "text": text, "refusal": refusal, "tool_calls": calls,
        "finish_reason": finish, "usage": usage,
    })
}

fn fold_json(v: &Value) -> Value {
    let m = &v["choices"][0]["message"];
    let calls: Vec<Value> = m["tool_calls"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| json!({"id": c["id"], "name": c["function"]["name"], "arguments": c["function"]["arguments"]}))
        .collect();
    json!({
        "text": m["content"].as_str().unwrap_or(""),
        "refusal": m["refusal"].as_str().unwrap_or(""),
        "tool_calls": calls,
        "finish_reason": v["choices"][0]["finish_reason"],
        "usage": v["usage"],
    })
}

async fn response_case(name: &str, case: &Value) {
    let up = &case["upstream"];
    let wire = up["wire"]
        .as_str()
        .unwrap_or_else(|| panic!("{name}: upstream.wire is openai or anthropic"));
    let script = Script::single(upstream(name, up)).then(upstream(name, up));
    let mock = MockProvider::start(script).await.unwrap();
    let server = serve(&mock, wire).await;
    let mut req = client_request(case);
    if req.get("messages").is_none() {
        req["messages"] = json!([{"role": "user", "content": "Go."}]);
    }

    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let resp = send(
        server.addr,
        post_json("/v1/chat/completions", &req.to_string()),
    )
    .await;
    assert_eq!(resp.status(), 200, "{name}");
    use http_body_util::BodyExt;
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    check(
        name,
        "streamed answer",
        &case["expect"],
        &fold_stream(&body),
    );

    req["stream"] = json!(false);
    req.as_object_mut().unwrap().remove("stream_options");
    let resp = send(
        server.addr,
        post_json("/v1/chat/completions", &req.to_string()),
    )
    .await;
    assert_eq!(resp.status(), 200, "{name}");
    check(
        name,
        "json answer",
        &case["expect"],
        &fold_json(&body_json(resp).await),
    );
    server.stop().await;
}

#[tokio::test(start_paused = true)]
async fn every_translation_case() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "only {} cases", files.len());
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let case = load(path);
        let mut ran = 0;
        for wire in ["openai", "anthropic"] {
            if case.get(wire).is_some() {
                request_case(&name, &case, wire).await;
                ran += 1;
            }
        }
        if case.get("upstream").is_some() {
            response_case(&name, &case).await;
            ran += 1;
        }
        assert!(ran > 0, "{name}: neither openai/anthropic nor upstream");
    }
}
