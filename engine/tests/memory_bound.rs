//! What one stream holds is bounded in bytes whatever the upstream sends:
//! a counting allocator measures the heap that Sluice (and the client)
//! allocate on the test's thread while a model streams 16 MB of whitespace
//! as tool arguments, and while it streams arguments far past any ceiling.
//! The mock provider runs on a thread and runtime of its own, so what it
//! prepares for its replies is not counted. This file holds one test.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicIsize, Ordering};

use common::*;
use serde_json::json;
use sluice::compile::compile_sources;
use sluice::serve::RunningServer;
use sluice_testkit::{MockProvider, Reply, Script};

struct Counting;

// Signed: blocks allocated before measuring may be freed while measuring.
static CURRENT: AtomicIsize = AtomicIsize::new(0);
static PEAK: AtomicIsize = AtomicIsize::new(0);

thread_local! {
    /// Set on the test's thread: only its allocations are counted.
    static MEASURED: Cell<bool> = const { Cell::new(false) };
}

fn measured() -> bool {
    MEASURED.try_with(Cell::get).unwrap_or(false)
}

fn grew(n: usize) {
    if measured() {
        let n = n as isize;
        let now = CURRENT.fetch_add(n, Ordering::Relaxed) + n;
        PEAK.fetch_max(now, Ordering::Relaxed);
    }
}

fn shrank(n: usize) {
    if measured() {
        CURRENT.fetch_sub(n as isize, Ordering::Relaxed);
    }
}

// SAFETY: every call is passed on to the system allocator unchanged; the
// counters are only statistics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        shrank(layout.size());
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            shrank(layout.size());
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// One tool call whose arguments are `fragments` events of `piece`.
fn arguments_stream(piece: &str, fragments: usize) -> Reply {
    let chunk = |delta: serde_json::Value, finish: Option<&str>| {
        let body = json!({
            "id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]
        });
        format!("data: {body}\n\n")
    };
    let mut body = chunk(json!({"role": "assistant", "content": null}), None);
    body += &chunk(
        json!({"tool_calls": [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "search", "arguments": "{\"q\": "}}]}),
        None,
    );
    let frag = chunk(
        json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
        None,
    );
    body.reserve(frag.len() * fragments + 200);
    for _ in 0..fragments {
        body += &frag;
    }
    body += &chunk(json!({}), Some("tool_calls"));
    body += "data: [DONE]\n\n";
    Reply::recorded(body)
}

/// Starts the mock on a thread and runtime of its own; returns its base
/// URL and a handle to its journal's request count of bytes sent.
fn mock_elsewhere(reply: Reply) -> (String, std::sync::mpsc::Sender<()>, MockProviderHandle) {
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mock = MockProvider::start(Script::single(reply)).await.unwrap();
            url_tx.send(mock.base_url()).unwrap();
            // Serve until told to stop, then report what was sent.
            let journal = mock.journal().clone();
            tokio::task::spawn_blocking(move || stop_rx.recv())
                .await
                .ok();
            journal
                .requests()
                .iter()
                .map(|r| r.bytes_sent)
                .collect::<Vec<_>>()
        })
    });
    (url_rx.recv().unwrap(), stop_tx, MockProviderHandle(thread))
}

struct MockProviderHandle(std::thread::JoinHandle<Vec<usize>>);

// Real time: the mock runs on another runtime, whose I/O a paused clock
// here would not wait for. Nothing here depends on timing; the deadlines
// (60 s) are far beyond what the streams take.
#[tokio::test]
async fn a_stream_holds_little_whatever_the_model_writes() {
    // 16 MB of whitespace in 4 KB fragments; then arguments in 64-byte
    // fragments, 1.3 MB of them: 50 times what the ceiling lets through.
    let cases = [
        ("16 MB of whitespace", " ".repeat(4096), 4096),
        ("arguments past any ceiling", "abcdefg ".repeat(8), 20_000),
    ];
    for (what, piece, fragments) in cases {
        let (base_url, stop, handle) = mock_elsewhere(arguments_stream(&piece, fragments));
        let settings = (
            PathBuf::from("settings.yaml"),
            format!(
                "storage: memory\nproviders:\n  mock: {{kind: openai, base_url: \"{base_url}\"}}\n"
            ),
        );
        let pipeline = (
            PathBuf::from("chat.yaml"),
            "name: chat\nmodel: {provider: mock, name: gpt-4o-mini}\nlimits: {max_tokens: 4096}\ntimeouts: {first_token: 60s, idle: 60s, total: 120s}\n".to_string(),
        );
        let catalog = compile_sources(&settings, &[pipeline]).unwrap();
        let server = RunningServer::start(catalog, "127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let ask = || async {
            SseReader::new(
                send(
                    server.addr,
                    post_json("/v1/pipelines/chat", "{\"input\":\"go\"}"),
                )
                .await,
            )
            .collect()
            .await
        };
        // A first request warms everything up (tokenizer, pools, buffers).
        let _ = ask().await;
        MEASURED.with(|m| m.set(true));
        let base = CURRENT.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let events = ask().await;
        let peak = PEAK.load(Ordering::Relaxed) - base;
        MEASURED.with(|m| m.set(false));
        assert_eq!(
            find(&events, "error").map(|e| e.data["code"].clone()),
            Some(json!("token_ceiling")),
            "{what}"
        );
        server.stop().await;
        stop.send(()).unwrap();
        let sent = handle.0.join().unwrap();
        eprintln!(
            "{what}: peak heap growth {peak} bytes while the mock sent {} bytes",
            sent[1]
        );
        assert!(
            peak < 2 << 20,
            "{what}: the heap grew by {peak} bytes during one stream"
        );
    }
}
