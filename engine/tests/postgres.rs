//! The ledger and budgets on Postgres, shared by two `sluice serve`
//! processes. Runs when SLUICE_TEST_POSTGRES_URL is set (CI sets it);
//! otherwise each test says it was skipped and passes.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[path = "common/pg.rs"]
mod pg;
#[path = "common/raw.rs"]
mod raw;
#[path = "common/skip.rs"]
mod skip;

use pg::{drop_database, fresh_database, uuid_like};
use sluice::ledger::{Ledger, money};
use sluice_testkit::{MockProvider, Reply, Script};
use sqlx::Connection;

struct Instance {
    child: Child,
    addr: String,
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_instance(dir: &std::path::Path) -> Instance {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", dir.to_str().unwrap(), "--listen", "127.0.0.1:0"])
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .env_remove("SLUICE_LOG")
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    // Owned by the guard at once: a failed start still kills the process.
    let mut instance = Instance {
        child,
        addr: String::new(),
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("sluice starts");
        if let Some(i) = line.find("127.0.0.1:") {
            let rest = &line[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                .unwrap_or(rest.len());
            instance.addr = rest[..end].to_string();
            return instance;
        }
    }
}

fn post(addr: &str) -> u16 {
    post_as(addr, None)
}

/// A request to `chat`, with `key` as its bearer token if given.
fn post_as(addr: &str, key: Option<&str>) -> u16 {
    let auth = key.map(|k| format!("Authorization: Bearer {k}"));
    let headers: Vec<&str> = auth.iter().map(String::as_str).collect();
    let body = r#"{"input":"hi","stream":false}"#;
    raw::status(&raw::exchange(
        addr,
        "POST",
        "/v1/pipelines/chat",
        &headers,
        body,
    ))
}

/// A pipelines directory for the two-instance tests: the ledger at `url`,
/// the mock priced at $1/M prompt and $2/M completion tokens, `extra`
/// appended to the settings, and the pipeline `chat` (max_tokens 100).
fn write_pipelines(dir: &std::path::Path, url: &str, mock: &MockProvider, extra: &str) {
    std::fs::write(
        dir.join("settings.yaml"),
        format!(
            "storage: \"{url}\"\nproviders:\n  mock: {{kind: openai, base_url: \"{}\"}}\nprices:\n  gpt-4o-mini: {{input: 1.0, output: 2.0}}\n{extra}",
            mock.base_url()
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("chat.yaml"),
        "name: chat\nmodel: {provider: mock, name: gpt-4o-mini}\nsystem: Be brief.\nlimits: {max_tokens: 100}\n",
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_on_one_postgres_never_spend_past_a_shared_budget() {
    let Some((admin_url, url, name)) = fresh_database().await else {
        return;
    };
    let mock = MockProvider::start(Script::single(Reply::text(&[" word"; 100])))
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("sluice-pg-{}", uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    // 210 µ$ per request (prompt 10 at $1/M, 100 completion at $2/M); the
    // reservation is ~460 µ$ (it covers the ceiling's guard, 214
    // completion tokens for max_tokens 100). The shared global budget
    // affords 50 reservations at once.
    write_pipelines(
        &dir,
        &url,
        &mock,
        "budgets:\n  global: {daily_usd: 0.0232}\n",
    );
    let a = start_instance(&dir);
    let b = start_instance(&dir);
    let addrs = [a.addr.clone(), b.addr.clone()];
    let mut threads = Vec::new();
    for i in 0..200 {
        let addr = addrs[i % 2].clone();
        threads.push(std::thread::spawn(move || post(&addr)));
    }
    let statuses: Vec<u16> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let admitted = statuses.iter().filter(|s| **s == 200).count();
    let rejected = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(admitted + rejected, 200, "{statuses:?}");
    drop(a);
    drop(b);

    let ledger = Ledger::open(&url).await.unwrap();
    let spend = ledger
        .spend("global", &money::utc_day(money::now_ms()))
        .await
        .unwrap();
    let budget = 23_200;
    println!(
        "postgres, two instances: budget {budget} µ$, spent {} µ$ ({:.1}%), reserved {}, admitted {admitted}, rejected {rejected}",
        spend.spent_micros,
        100.0 * spend.spent_micros as f64 / budget as f64,
        spend.reserved_micros
    );
    assert!(spend.spent_micros <= budget, "overshoot: {spend:?}");
    assert!(admitted >= 50, "only {admitted} admitted");
    assert_eq!(mock.journal().request_count(), admitted);
    let rows = ledger.rows_since(0).await.unwrap();
    assert_eq!(rows.len(), 200);
    assert_eq!(
        rows.iter()
            .filter(|r| r.status == "ok")
            .map(|r| r.cost_micros)
            .sum::<i64>(),
        spend.spent_micros
    );
    ledger.close().await;
    drop_database(&admin_url, &name).await;
    let _ = std::fs::remove_dir_all(dir);
    let _ = PathBuf::new();
}

/// Two instances on one Postgres share one key's rate limit and another
/// key's budget: the pair admits the limit once, not once each, and the
/// budget is never passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_a_keys_rate_limit_and_a_keys_budget() {
    let Some((admin_url, url, name)) = fresh_database().await else {
        return;
    };
    let mock = MockProvider::start(Script::single(Reply::text(&[" word"; 100])))
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("sluice-pg-keys-{}", uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    let hash = |s: &str| sluice::auth::format_hash(&sluice::auth::digest(s));
    let rated = sluice::auth::new_secret().unwrap();
    let budgeted = sluice::auth::new_secret().unwrap();
    write_pipelines(
        &dir,
        &url,
        &mock,
        &format!(
            "keys:\n  rated: {{hash: \"{}\", pipelines: [chat], rate_limit: {{requests_per_minute: 40}}}}\n  budgeted: {{hash: \"{}\", pipelines: [chat], budget: {{daily_usd: 0.0232}}}}\n",
            hash(&rated),
            hash(&budgeted)
        ),
    );
    let a = start_instance(&dir);
    let b = start_instance(&dir);
    let addrs = [a.addr.clone(), b.addr.clone()];
    let started = std::time::Instant::now();
    let mut threads = Vec::new();
    for i in 0..400 {
        let addr = addrs[i % 2].clone();
        let key = if i % 4 < 2 {
            rated.clone()
        } else {
            budgeted.clone()
        };
        threads.push(std::thread::spawn(move || {
            (i % 4 < 2, post_as(&addr, Some(&key)))
        }));
    }
    let results: Vec<(bool, u16)> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let elapsed_ms = started.elapsed().as_millis() as usize;
    drop(a);
    drop(b);
    let count = |rated: bool, status: u16| {
        results
            .iter()
            .filter(|(r, s)| *r == rated && *s == status)
            .count()
    };
    let rated_ok = count(true, 200);
    assert_eq!(rated_ok + count(true, 429), 200, "{results:?}");
    // A bucket of 40 a minute, full at the start: 40 at once, then one per
    // 1.5 s of the run. Each instance counting alone would admit 80.
    let bound = 40 + elapsed_ms * 40 / 60_000;
    println!(
        "postgres, two instances: rate limit 40/min admitted {rated_ok} in {elapsed_ms} ms (bound {bound})"
    );
    assert!(
        (40..=bound).contains(&rated_ok),
        "admitted {rated_ok}, bound {bound}"
    );
    let budget_ok = count(false, 200);
    assert_eq!(budget_ok + count(false, 429), 200);
    let ledger = Ledger::open(&url).await.unwrap();
    let spend = ledger
        .spend("key:budgeted", &money::utc_day(money::now_ms()))
        .await
        .unwrap();
    println!(
        "postgres, two instances: key budget 23200 µ$, spent {} µ$, admitted {budget_ok}",
        spend.spent_micros
    );
    assert!(spend.spent_micros <= 23_200, "overshoot: {spend:?}");
    assert!(budget_ok >= 50, "only {budget_ok} admitted");
    assert_eq!(mock.journal().request_count(), rated_ok + budget_ok);
    ledger.close().await;
    drop_database(&admin_url, &name).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn ledger_semantics_hold_on_postgres() {
    let Some((admin_url, url, name)) = fresh_database().await else {
        return;
    };
    use sluice::ledger::{Admit, Opening, Scope, Settlement};
    let l = Ledger::open(&url).await.unwrap();
    let open = |id: &str, reserve| Opening {
        id: id.into(),
        request_id: id.into(),
        pipeline: "p".into(),
        provider: "x".into(),
        model: "m".into(),
        api_key: None,
        team: None,
        rates: Vec::new(),
        reserve_micros: reserve,
        scopes: vec![Scope {
            key: "global".into(),
            limit_micros: 100,
        }],
    };
    assert_eq!(
        l.open_request(&open("a", 60)).await.unwrap(),
        Admit::Admitted
    );
    assert!(matches!(
        l.open_request(&open("b", 50)).await.unwrap(),
        Admit::Exhausted { .. }
    ));
    let settled = l
        .settle(
            "a",
            &Settlement {
                status: "ok",
                prompt_tokens: 1,
                completion_tokens: 2,
                cache_read_tokens: 0,
                cache_write_tokens: 0,
                cache_write_1h_tokens: 0,
                estimated: false,
                cost_micros: 40,
                ttft_ms: Some(3),
                duration_ms: 4,
                tool_calls: 0,
                error_code: None,
                provider: "x".into(),
                model: "m".into(),
                usage_anomaly: None,
            },
        )
        .await
        .unwrap();
    assert_eq!(settled.spends[0].1.spent_micros, 40);
    assert!(
        l.claim_alert("global", &settled.day, 500_000)
            .await
            .unwrap()
    );
    assert!(
        !l.claim_alert("global", &settled.day, 500_000)
            .await
            .unwrap()
    );
    let row = l.row("a").await.unwrap().unwrap();
    assert_eq!(
        (row.status.as_str(), row.cost_micros, row.ttft_ms),
        ("ok", 40, Some(3))
    );

    // One client request id on two rows; absurd usage on one of them
    // settles within its reservation, the other is settled at shutdown.
    let dup = |row: &str, reserve| Opening {
        request_id: "dup".into(),
        ..open(row, reserve)
    };
    assert_eq!(
        l.open_request(&dup("d1", 30)).await.unwrap(),
        Admit::Admitted
    );
    assert_eq!(
        l.open_request(&dup("d2", 20)).await.unwrap(),
        Admit::Admitted
    );
    let absurd = Settlement {
        status: "ok",
        prompt_tokens: u64::MAX,
        completion_tokens: u64::MAX,
        cache_read_tokens: 0,
        cache_write_tokens: 0,
        cache_write_1h_tokens: 0,
        estimated: false,
        cost_micros: i64::MAX,
        ttft_ms: None,
        duration_ms: 1,
        tool_calls: 0,
        error_code: None,
        provider: "x".into(),
        model: "m".into(),
        usage_anomaly: Some("completion_tokens 18446744073709551615".into()),
    };
    let settled = l.settle("d1", &absurd).await.unwrap();
    assert_eq!(settled.spends[0].1.spent_micros, 40 + 30);
    assert_eq!(l.interrupt_own_pending().await.unwrap(), 1);
    let rows = l.rows_of("dup").await.unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!((rows[0].prompt_tokens, rows[0].cost_micros), (i64::MAX, 30));
    assert!(
        rows[0]
            .usage_anomaly
            .as_deref()
            .unwrap()
            .contains("reservation")
    );
    assert_eq!(
        (rows[1].status.as_str(), rows[1].cost_micros),
        ("interrupted", 20)
    );
    assert_eq!(l.row("dup").await.unwrap().unwrap().id, "d2");
    let spend = l.spend("global", &settled.day).await.unwrap();
    assert_eq!((spend.spent_micros, spend.reserved_micros), (90, 0));
    l.close().await;
    drop_database(&admin_url, &name).await;
}

#[tokio::test]
async fn a_postgres_ledger_from_a_newer_sluice_is_refused_by_name() {
    let Some((admin_url, url, name)) = fresh_database().await else {
        return;
    };
    Ledger::open(&url).await.unwrap().close().await;
    let mut c = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (9999, 'from the future', true, '\\x00', 0)",
    )
    .execute(&mut c)
    .await
    .unwrap();
    c.close().await.unwrap();
    let err = Ledger::open(&url).await.err().expect("refused");
    let msg = err.to_string();
    assert!(
        msg.starts_with("the ledger's schema is at version 9999, newer than this Sluice knows"),
        "{msg}"
    );
    drop_database(&admin_url, &name).await;
}

/// A Postgres server of the test's own (initdb on a temporary directory),
/// so that the test can stop it and start it again under a running Sluice.
struct OwnPostgres {
    bin: PathBuf,
    data: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl OwnPostgres {
    /// `None` (with the reason printed) when the server binaries are not
    /// on this machine.
    fn init() -> Option<OwnPostgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql").ok().and_then(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .filter(|b| b.join("initdb").exists())
                .max()
        });
        let Some(bin) = bin else {
            skip::skipped(
                "Postgres ledger test",
                "SLUICE_TEST_POSTGRES_URL",
                "a Postgres server's URL, with the server binaries (initdb, pg_ctl) in /usr/lib/postgresql/*/bin",
            );
            return None;
        };
        let dir = std::env::temp_dir().join(format!("sluice_pg_{}", uuid_like()));
        let data = dir.join("data");
        std::fs::create_dir_all(&dir).unwrap();
        // Postgres refuses to run as root: the directory goes to `postgres`.
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres", dir.to_str().unwrap()])
                .status()
                .unwrap();
            assert!(ok.success(), "chown the data directory to postgres");
        }
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let pg = OwnPostgres {
            bin,
            data,
            dir,
            port,
        };
        pg.run(
            "initdb",
            &[
                "-D",
                pg.data.to_str().unwrap(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        );
        pg.start();
        Some(pg)
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let exe = self.bin.join(tool);
        let mut cmd = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd.args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn start(&self) {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-o",
                &opts,
                "-l",
                log.to_str().unwrap(),
                "-w",
                "start",
            ],
        );
    }

    fn stop(&self) {
        self.run(
            "pg_ctl",
            &[
                "-D",
                self.data.to_str().unwrap(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = Command::new(if is_root() { "runuser" } else { "true" })
            .args(if is_root() {
                vec!["-u", "postgres", "--"]
            } else {
                vec![]
            })
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", self.data.to_str().unwrap(), "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `GET /readyz`: its status and body.
fn readyz(addr: &str) -> (u16, String) {
    let response = raw::exchange(addr, "GET", "/readyz", &[], "");
    (raw::status(&response), raw::body(&response).to_string())
}

/// Polls `/readyz` until it answers `status`, for at most `within` (real
/// time: a real Postgres server stops and starts), and returns the body.
fn readyz_becomes(addr: &str, status: u16, within: Duration) -> String {
    let t0 = std::time::Instant::now();
    loop {
        let (s, body) = readyz(addr);
        if s == status {
            return body;
        }
        assert!(
            t0.elapsed() < within,
            "/readyz still answers {s} ({body}) after {within:?}, expected {status}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_postgres_server_down_and_back_up() {
    if skip::env_or_skip(
        "SLUICE_TEST_POSTGRES_URL",
        "Postgres ledger test",
        "the URL of a Postgres server, e.g. postgres://postgres@127.0.0.1:5432/postgres",
    )
    .is_none()
    {
        return;
    }
    let Some(pg) = OwnPostgres::init() else {
        return;
    };
    let mock = MockProvider::start(Script::single(Reply::text(&["Hi"])))
        .await
        .unwrap();
    let dir = std::env::temp_dir().join(format!("sluice_readyz_{}", uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    write_pipelines(&dir, &pg.url(), &mock, "");
    let sluice = start_instance(&dir);
    let addr = sluice.addr.clone();
    let ready = tokio::task::spawn_blocking(move || {
        let up = readyz_becomes(&addr, 200, Duration::from_secs(10));
        assert!(up.contains(r#""status":"ready""#), "{up}");
        assert_eq!(post(&addr), 200);

        pg.stop();
        let down = readyz_becomes(&addr, 503, Duration::from_secs(10));
        assert!(
            down.contains("postgres"),
            "the reason names the ledger: {down}"
        );
        // A request meanwhile is refused, not left hanging.
        assert_ne!(post(&addr), 200);

        pg.start();
        readyz_becomes(&addr, 200, Duration::from_secs(20));
        assert_eq!(post(&addr), 200, "served again once Postgres is back");
        pg
    })
    .await
    .unwrap();
    drop(sluice);
    drop(ready);
    let _ = std::fs::remove_dir_all(&dir);
}
