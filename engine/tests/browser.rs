//! CORS in a real browser: headless Chromium loads a page from another
//! origin than the gateway's (another loopback port), which streams a
//! pipeline with `fetch` and renders each delta as it arrives. The mock
//! provider holds its stream after the first word until the page has
//! shown it (the page reports what its DOM holds, after a frame, to the
//! server it came from), so the page provably renders the first delta
//! before the provider has sent the last. A page from an origin that is
//! not allowed is refused by the browser (its `fetch` fails with a
//! `TypeError`), the gateway logs it, and nothing reaches the provider.
//!
//! Needs `SLUICE_TEST_CHROMIUM` (a Chromium binary, e.g.
//! `/usr/bin/chromium` from Debian's `chromium` package); skipped,
//! saying so, without it.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{api_key, logs, sdk::env_or_skip};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use sluice::compile::compile_sources;
use sluice::serve::RunningServer;
use sluice_testkit::{Fault, Gate, MockProvider, Reply, Script};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// How long a page has to report (Chromium starting on a loaded machine).
const REPORT_WITHIN: Duration = Duration::from_secs(90);
const WORDS: [&str; 4] = ["Hello", " from", " the", " gateway"];

/// The page: streams the pipeline, appends each delta to `#out`, and
/// reports to its own server (same origin) after the first delta has been
/// drawn, at `done`, or when `fetch` fails.
const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>sluice</title></head>
<body><pre id="out"></pre><script>
const report = (what) => fetch('/report', {method: 'POST', body: JSON.stringify(what)});
const drawn = () => new Promise((r) => requestAnimationFrame(() => r()));
(async () => {
  const out = document.getElementById('out');
  try {
    const resp = await fetch(GATEWAY + '/v1/pipelines/chat', {
      method: 'POST',
      headers: {'content-type': 'application/json', 'authorization': 'Bearer ' + KEY,
                'x-request-id': 'browser-page-1'},
      body: JSON.stringify({input: 'hi'}),
    });
    const id = resp.headers.get('x-request-id');
    const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '', deltas = 0;
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buf += value;
      let cut;
      while ((cut = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, cut);
        buf = buf.slice(cut + 2);
        let event = '', data = '';
        for (const line of block.split('\n')) {
          if (line.startsWith('event:')) event = line.slice(6).trim();
          else if (line.startsWith('data:')) data += line.slice(5).trim();
        }
        if (event === 'delta') {
          out.textContent += JSON.parse(data).text;
          deltas += 1;
          if (deltas === 1) {
            await drawn();
            await report({kind: 'first_delta', shown: out.textContent, status: resp.status});
          }
        } else if (event === 'done') {
          await drawn();
          await report({kind: 'done', shown: out.textContent, deltas, request_id: id,
                        finish: JSON.parse(data).finish_reason});
        }
      }
    }
  } catch (e) {
    await report({kind: 'refused', name: e.name, message: String(e.message)});
  }
})();
</script></body></html>
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_an_allowed_origin_streams_deltas_as_they_come_and_another_is_refused() {
    let Some(chromium) = env_or_skip(
        "SLUICE_TEST_CHROMIUM",
        "the browser test",
        "a Chromium binary such as /usr/bin/chromium",
    ) else {
        return;
    };
    logs::capture();

    // Two page servers, two origins; only the first is allowed.
    let allowed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = |l: &TcpListener| format!("http://{}", l.local_addr().unwrap());
    let (allowed_origin, refused_origin) = (origin(&allowed), origin(&refused));

    let gate = Gate::new();
    let mock = MockProvider::start(Script::single(Reply::text(&WORDS).fault(
        // The role chunk and the first word, then nothing until the page
        // has shown that word.
        Fault::HoldAfter {
            events: 2,
            gate: gate.clone(),
        },
    )))
    .await
    .unwrap();
    let key = api_key("page", ", pipelines: [\"*\"]");
    let settings = (
        PathBuf::from("settings.yaml"),
        format!(
            "storage: memory\nserver:\n  cors: {{allowed_origins: [\"{allowed_origin}\"]}}\nproviders:\n  mock: {{kind: openai, base_url: \"{}\"}}\nkeys:\n{}",
            mock.base_url(),
            key.entry
        ),
    );
    let pipeline = (
        PathBuf::from("chat.yaml"),
        "name: chat\nmodel: {provider: mock, name: gpt-4o-mini}\nlimits: {max_tokens: 100}\ntimeouts: {first_token: 60s, idle: 60s, total: 120s}\n".to_string(),
    );
    let catalog = compile_sources(&settings, &[pipeline]).unwrap_or_else(|d| panic!("{d:#?}"));
    let gateway = RunningServer::start(catalog, SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .unwrap();

    let page = PAGE
        .replace("GATEWAY", &format!("'http://{}'", gateway.addr))
        .replace("KEY", &format!("'{}'", key.secret));
    let page = Arc::new(page);
    let (tx, mut reports) = mpsc::unbounded_channel();
    let servers = [
        tokio::spawn(serve_page(allowed, page.clone(), "allowed", tx.clone())),
        tokio::spawn(serve_page(refused, page, "refused", tx)),
    ];

    // The allowed page.
    let browser = Browser::open(&chromium, &allowed_origin);
    let first = browser.next_report(&mut reports, "allowed").await;
    assert_eq!(first["kind"], "first_delta", "{first}");
    assert_eq!(first["shown"], WORDS[0], "{first}");
    assert_eq!(first["status"], 200, "{first}");
    // Shown while the provider has sent two of its eight events (role,
    // four words, finish, usage, [DONE]) and waits.
    let held = mock.journal().request(0).expect("the provider was called");
    assert_eq!(held.events_sent, 2);
    assert!(held.completed_at.is_none());
    gate.open();
    let done = browser.next_report(&mut reports, "allowed").await;
    assert_eq!(done["kind"], "done", "{done}");
    assert_eq!(done["shown"], WORDS.concat(), "{done}");
    assert_eq!(done["deltas"], WORDS.len(), "{done}");
    assert_eq!(done["finish"], "stop", "{done}");
    // Readable because the gateway exposes it.
    assert_eq!(done["request_id"], "browser-page-1", "{done}");
    assert_eq!(mock.journal().request(0).unwrap().events_sent, 8);
    drop(browser);

    // The page of another origin: the browser refuses the preflight's
    // answer, so the request itself is never sent.
    let browser = Browser::open(&chromium, &refused_origin);
    let refusal = browser.next_report(&mut reports, "refused").await;
    assert_eq!(refusal["kind"], "refused", "{refusal}");
    assert_eq!(refusal["name"], "TypeError", "{refusal}");
    drop(browser);
    assert_eq!(mock.journal().request_count(), 1);
    let logged = logs::lines_with(&format!("origin=\"{refused_origin}\""));
    assert!(
        logged
            .iter()
            .any(|l| l.contains("cross-origin preflight refused")),
        "{logged:#?}"
    );
    assert!(logs::lines_with(&format!("origin=\"{allowed_origin}\"")).is_empty());

    for s in servers {
        s.abort();
    }
    gateway.stop().await;
}

/// Serves the page at `/` and passes what it posts to `/report` on, as
/// `(which, report)`.
async fn serve_page(
    listener: TcpListener,
    page: Arc<String>,
    which: &'static str,
    reports: mpsc::UnboundedSender<(&'static str, Value)>,
) {
    let mut conns = tokio::task::JoinSet::new();
    while let Ok((tcp, _)) = listener.accept().await {
        let (page, reports) = (page.clone(), reports.clone());
        let svc = service_fn(move |req: Request<Incoming>| {
            let (page, reports) = (page.clone(), reports.clone());
            async move {
                let (status, body) = match (req.method().as_str(), req.uri().path()) {
                    ("GET", "/") => (StatusCode::OK, Bytes::from(page.to_string())),
                    ("POST", "/report") => {
                        let body = req.into_body().collect().await.map(|b| b.to_bytes());
                        if let Some(v) = body.ok().and_then(|b| serde_json::from_slice(&b).ok()) {
                            let _ = reports.send((which, v));
                        }
                        (StatusCode::NO_CONTENT, Bytes::new())
                    }
                    _ => (StatusCode::NOT_FOUND, Bytes::new()),
                };
                let resp = Response::builder()
                    .status(status)
                    .header("content-type", "text/html; charset=utf-8")
                    .body(Full::new(body))
                    .unwrap();
                Ok::<_, Infallible>(resp)
            }
        });
        conns.spawn(async move {
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// A headless Chromium showing one page, in its own process group and
/// profile directory; killed (the whole group) and cleaned up on drop.
struct Browser {
    child: Child,
    profile: PathBuf,
}

impl Browser {
    fn open(chromium: &str, url: &str) -> Browser {
        use std::os::unix::process::CommandExt;
        let profile = std::env::temp_dir().join(format!(
            "sluice-browser-{}-{}",
            std::process::id(),
            url.rsplit(':').next().unwrap_or("0")
        ));
        std::fs::create_dir_all(&profile).unwrap();
        let log = std::fs::File::create(profile.join("chromium.log")).unwrap();
        let child = Command::new(chromium)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-default-apps",
                "--no-pings",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {chromium}: {e}"));
        Browser { child, profile }
    }

    /// The next report of page `which`, or a failure that shows what
    /// Chromium said.
    async fn next_report(
        &self,
        reports: &mut mpsc::UnboundedReceiver<(&'static str, Value)>,
        which: &str,
    ) -> Value {
        match tokio::time::timeout(REPORT_WITHIN, reports.recv()).await {
            Ok(Some((from, report))) => {
                assert_eq!(from, which, "a report from the wrong page: {report}");
                report
            }
            _ => {
                let log =
                    std::fs::read_to_string(self.profile.join("chromium.log")).unwrap_or_default();
                panic!(
                    "no report from the {which} page within {REPORT_WITHIN:?}; Chromium said:\n{log}"
                )
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The group is Chromium's own (its pid), with its renderers.
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) with a negative pid signals that process group.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
