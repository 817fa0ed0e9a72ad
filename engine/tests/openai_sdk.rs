//! The OpenAI-compatible endpoint proven with a client this project did not
//! write: the official `openai` Python package, installed by `.ci/run` into
//! a virtual environment and named by SLUICE_TEST_OPENAI_PYTHON. Without it
//! the test says it was skipped and passes.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use sluice::compile::compile_sources;
use sluice::serve::RunningServer;
use sluice_testkit::{Fault, MockProvider, Reply, Script};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_python_sdk_streams_and_fails_cleanly() {
    let Ok(python) = std::env::var("SLUICE_TEST_OPENAI_PYTHON") else {
        let _ = writeln!(
            std::io::stderr(),
            "skipped: OpenAI SDK test (set SLUICE_TEST_OPENAI_PYTHON to a python with `openai` installed)"
        );
        return;
    };
    let words = ["Hello", " there", ",", " friend"];
    let chat = MockProvider::start(Script::single(Reply::text(&words)))
        .await
        .unwrap();
    let slow = MockProvider::start(Script::single(Reply::text(&words).fault(
        Fault::StallAfter {
            events: 3,
            duration: None,
        },
    )))
    .await
    .unwrap();
    let settings = (
        PathBuf::from("settings.yaml"),
        format!(
            "storage: memory\nproviders:\n  a: {{kind: openai, base_url: \"{}\"}}\n  b: {{kind: openai, base_url: \"{}\"}}\n",
            chat.base_url(),
            slow.base_url()
        ),
    );
    let pipelines = [
        (PathBuf::from("chat.yaml"), "name: chat\nmodel: {provider: a, name: gpt-4o-mini}\nlimits: {max_tokens: 64}\n".to_string()),
        (
            PathBuf::from("slow.yaml"),
            "name: slow\nmodel: {provider: b, name: gpt-4o-mini}\nlimits: {max_tokens: 64}\ntimeouts: {first_token: 5s, idle: 1s, total: 20s}\n"
                .to_string(),
        ),
    ];
    let catalog = compile_sources(&settings, &pipelines).unwrap_or_else(|d| panic!("{d:#?}"));
    let server = RunningServer::start(catalog, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk/openai_client.py");
    let base = format!("http://{}/v1", server.addr);
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(&python)
            .arg(&script)
            .arg(&base)
            .output(),
    )
    .await
    .expect("the SDK script finishes")
    .expect("python runs");
    assert!(
        output.status.success(),
        "the SDK script failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("the script prints JSON");
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
    assert_eq!(r["models"], serde_json::json!(["chat", "slow"]));
    server.stop().await;
}
