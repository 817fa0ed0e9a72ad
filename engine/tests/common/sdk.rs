//! What the SDK tests (`openai_sdk.rs`, `anthropic_sdk.rs`) share: the two
//! provider wires every check runs over, the scripted provider answers
//! (text; text then tool calls, streamed as each provider streams them),
//! a gateway with one mock per pipeline, and running an SDK script.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use sluice::compile::compile_sources;
use sluice::serve::RunningServer;
use sluice_testkit::{MockProvider, Reply, Script};

/// The wires every SDK check runs over: each pipeline `WIRE-…` sits on a
/// provider of that kind in one catalog.
pub const WIRES: [&str; 2] = ["openai", "anthropic"];

pub const WEATHER_ARGS: &str = r#"{"city":"Paris"}"#;

#[allow(unused_imports)]
pub use super::skip::env_or_skip;

/// Call ids as each provider spells them.
pub fn call_id(wire: &str, n: u32) -> String {
    if wire == "openai" {
        format!("call_sdk{n}")
    } else {
        format!("toolu_sdk{n}")
    }
}

/// `words` as text, on `wire`.
pub fn text_reply(wire: &str, words: &[&str]) -> Reply {
    if wire == "openai" {
        Reply::text(words)
    } else {
        Reply::anthropic_text(words)
    }
}

/// One OpenAI stream chunk event carrying `delta`.
fn openai_chunk(delta: Value, finish: Option<&str>) -> String {
    let c = json!({"id": "chatcmpl-sdk", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {c}\n\n")
}

/// One Anthropic event, named by its `type`.
fn anthropic_event(data: Value) -> String {
    format!(
        "event: {}\ndata: {data}\n\n",
        data["type"].as_str().unwrap()
    )
}

/// `text` (may be empty) then `calls` `(id, name, arguments)` on `wire`,
/// every argument text split in 4-byte pieces. Calls follow one another,
/// as both providers stream them: OpenAI finishes index 0 before index 1
/// starts (the SDKs' stream helpers count on it: a call is done when the
/// next index appears), Anthropic gives each call its own `tool_use` block.
pub fn tool_stream(wire: &str, text: &str, calls: &[(&str, &str, &str)]) -> Reply {
    let pieces = |args: &str| -> Vec<String> {
        args.as_bytes()
            .chunks(4)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect()
    };
    let mut out = String::new();
    if wire == "openai" {
        out += &openai_chunk(json!({"role": "assistant", "content": text}), None);
        for (i, (id, name, args)) in calls.iter().enumerate() {
            out += &openai_chunk(
                json!({"tool_calls": [{"index": i, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
                None,
            );
            for piece in pieces(args) {
                out += &openai_chunk(
                    json!({"tool_calls": [{"index": i, "function": {"arguments": piece}}]}),
                    None,
                );
            }
        }
        out += &openai_chunk(json!({}), Some("tool_calls"));
        out += "data: {\"id\":\"chatcmpl-sdk\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"gpt-4o-mini\",\"choices\":[],\"usage\":{\"prompt_tokens\":50,\"completion_tokens\":20,\"total_tokens\":70}}\n\n";
        out += "data: [DONE]\n\n";
    } else {
        out += &anthropic_event(
            json!({"type": "message_start", "message": {"id": "msg_sdk", "type": "message",
            "role": "assistant", "model": "claude-sonnet-4-20250514", "content": [], "stop_reason": null,
            "usage": {"input_tokens": 50, "output_tokens": 1}}}),
        );
        let mut index = 0;
        if !text.is_empty() {
            out += &anthropic_event(
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
            );
            out += &anthropic_event(
                json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
            );
            out += &anthropic_event(json!({"type": "content_block_stop", "index": 0}));
            index = 1;
        }
        for (id, name, args) in calls {
            out += &anthropic_event(json!({"type": "content_block_start", "index": index,
                "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}));
            for p in pieces(args) {
                out += &anthropic_event(json!({"type": "content_block_delta", "index": index,
                    "delta": {"type": "input_json_delta", "partial_json": p}}));
            }
            out += &anthropic_event(json!({"type": "content_block_stop", "index": index}));
            index += 1;
        }
        out += &anthropic_event(
            json!({"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": null},
            "usage": {"output_tokens": 20}}),
        );
        out += &anthropic_event(json!({"type": "message_stop"}));
    }
    Reply::recorded(out)
}

/// One pipeline of a [`Gateway`]: pipeline `name` runs on provider `name`
/// of `kind`, a mock playing `script`, under a `max_tokens` ceiling (200
/// unless set), with `extra` appended to its file (timeouts, say).
pub struct SdkPipeline {
    pub name: String,
    pub kind: &'static str,
    pub script: Script,
    pub ceiling: u32,
    pub extra: String,
}

impl SdkPipeline {
    pub fn new(name: impl Into<String>, kind: &'static str, script: Script) -> Self {
        SdkPipeline {
            name: name.into(),
            kind,
            script,
            ceiling: 200,
            extra: String::new(),
        }
    }

    pub fn ceiling(mut self, max_tokens: u32) -> Self {
        self.ceiling = max_tokens;
        self
    }

    pub fn extra(mut self, yaml: &str) -> Self {
        self.extra = yaml.to_string();
        self
    }
}

/// One mock per pipeline, so each journal holds exactly that pipeline's
/// provider requests.
pub struct Gateway {
    mocks: HashMap<String, MockProvider>,
    pub server: RunningServer,
}

impl Gateway {
    pub async fn start(pipelines: Vec<SdkPipeline>) -> Gateway {
        let mut mocks = HashMap::new();
        let mut settings = String::from("storage: memory\nproviders:\n");
        let mut files = Vec::new();
        for p in pipelines {
            let mock = MockProvider::start(p.script).await.unwrap();
            settings += &format!(
                "  {}: {{kind: {}, base_url: \"{}\"}}\n",
                p.name,
                p.kind,
                mock.base_url()
            );
            files.push((
                PathBuf::from(format!("{}.yaml", p.name)),
                format!(
                    "name: {0}\nmodel: {{provider: {0}, name: the-model}}\nlimits: {{max_tokens: {1}}}\n{2}",
                    p.name, p.ceiling, p.extra
                ),
            ));
            mocks.insert(p.name, mock);
        }
        let catalog = compile_sources(&(PathBuf::from("settings.yaml"), settings), &files)
            .unwrap_or_else(|d| panic!("{d:#?}"));
        let server = RunningServer::start(catalog, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        Gateway { mocks, server }
    }

    /// The request bodies pipeline `name`'s provider received.
    pub fn sent(&self, name: &str) -> Vec<Value> {
        self.mocks[name]
            .journal()
            .requests()
            .into_iter()
            .map(|r| r.body)
            .collect()
    }

    /// The server's root URL (`http://127.0.0.1:PORT`).
    pub fn root(&self) -> String {
        format!("http://{}", self.server.addr)
    }
}

/// Runs `program args…`, bounded, and parses the JSON it prints.
pub async fn run_json(program: &str, args: &[&str]) -> Value {
    let output = tokio::time::timeout(
        Duration::from_secs(180),
        tokio::process::Command::new(program).args(args).output(),
    )
    .await
    .expect("the SDK script finishes")
    .unwrap_or_else(|e| panic!("{program} runs: {e}"));
    assert!(
        output.status.success(),
        "the SDK script failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "the script prints JSON ({e}):\n{}",
            String::from_utf8_lossy(&output.stdout)
        )
    })
}

/// The path of an SDK script under `engine/tests/sdk/`.
pub fn sdk_script(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/sdk")
        .join(name)
        .to_string_lossy()
        .into_owned()
}
