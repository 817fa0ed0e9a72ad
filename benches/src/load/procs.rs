//! The processes a load run starts (the mock provider and `sluice serve`),
//! what `/proc` says about them, and the resources they need.
//!
//! Every child is held by a [`Proc`] guard: dropping it (normal exit, an
//! early return, or a panic unwinding) stops the process and everything it
//! started (its own process group), SIGTERM first and SIGKILL after a grace
//! period. Children also get `PR_SET_PDEATHSIG`, so a load generator killed
//! with SIGKILL does not leave them behind.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// CLOCK_MONOTONIC in nanoseconds, comparable with the mock's journal.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Clock ticks per second of `/proc/PID/stat` times (`getconf CLK_TCK`).
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as u64 } else { 100 }
}

/// Raises RLIMIT_NOFILE (soft, and hard when allowed) to `want`; children
/// inherit it. Returns the soft limit in force afterwards.
pub fn raise_nofile(want: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit to fill / read.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        if lim.rlim_cur >= want {
            return lim.rlim_cur;
        }
        // Raising the hard limit needs CAP_SYS_RESOURCE; try, then fall back
        // to the hard limit we have.
        let both = libc::rlimit {
            rlim_cur: want,
            rlim_max: want.max(lim.rlim_max),
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &both) != 0 {
            let soft = libc::rlimit {
                rlim_cur: lim.rlim_max.min(want),
                rlim_max: lim.rlim_max,
            };
            libc::setrlimit(libc::RLIMIT_NOFILE, &soft);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// CPU time (user + system, all threads) a process has used so far.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of stat(5); `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / clock_ticks() as f64)
}

/// A `/proc/PID/status` size field (`VmHWM`, `VmRSS`, ...) in bytes.
pub fn status_bytes(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    let kb: u64 = line[field.len() + 1..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// A free TCP port on 127.0.0.1 (bound, read, released).
pub fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A started child process; stopped on drop.
pub struct Proc {
    pub name: &'static str,
    pub(crate) child: Child,
    pub log: Option<PathBuf>,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` if it has already exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let Some(path) = &self.log else {
            return String::new();
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn stop(&mut self) {
        // Each child leads its own process group: signalling the group also
        // reaches what it started (e.g. Sluice under an experiment's wrapper).
        let group = -(self.child.id() as libc::pid_t);
        if self.exited().is_none() {
            // SAFETY: plain kill(2) on our own child's process group.
            unsafe { libc::kill(group, libc::SIGTERM) };
            let until = Instant::now() + Duration::from_secs(5);
            while Instant::now() < until && self.exited().is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            if self.exited().is_none() {
                eprintln!(
                    "{} (pid {}) did not stop within 5 s of SIGTERM: killing it",
                    self.name,
                    self.child.id()
                );
            }
        }
        // Whatever is left of the group (the child itself if it ignored
        // SIGTERM, or a grandchild that outlived a wrapper) gets a moment to
        // finish, then SIGKILL.
        // SAFETY: as above; signal 0 only checks that the group exists.
        let alive = || unsafe { libc::kill(group, 0) } == 0;
        let until = Instant::now() + Duration::from_secs(5);
        while alive() && Instant::now() < until {
            let _ = self.child.try_wait();
            std::thread::sleep(Duration::from_millis(20));
        }
        if alive() {
            // SAFETY: as above.
            unsafe { libc::kill(group, libc::SIGKILL) };
        }
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Spawns `cmd` as a guarded child. Call from the main thread:
/// `PR_SET_PDEATHSIG` fires when the *thread* that forked exits.
pub(crate) fn spawn(
    name: &'static str,
    mut cmd: Command,
    log: Option<PathBuf>,
) -> std::io::Result<Proc> {
    // SAFETY: setpgid and prctl are async-signal-safe; nothing else runs
    // in the hook.
    unsafe {
        cmd.pre_exec(|| {
            libc::setpgid(0, 0);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    Ok(Proc { name, child, log })
}

/// The mock provider process and its control channel.
pub struct Mock {
    pub proc: Proc,
    pub addr: SocketAddr,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

/// How the mock answers.
#[derive(Clone, Debug)]
pub struct MockSpec {
    pub tokens: usize,
    pub gap_ms: f64,
    pub usage: bool,
    pub stall_after: Option<usize>,
    /// Answer in turn with a `lookup_order` call (`{"order_id": 1}`) and
    /// with text, instead of text only.
    pub tool_calls: bool,
}

/// Requests the mock's journal keeps: the cancel workload looks its
/// requests up there after the run.
const MOCK_JOURNAL: usize = 100_000;

impl Mock {
    /// Starts `sluice mock` (`bin` is the `sluice` binary) on a port of
    /// the system's choice, reading its address from the first line of its
    /// stdout; its stdin stays open for journal requests.
    pub fn start(bin: &Path, spec: &MockSpec, log: PathBuf) -> Result<Mock, String> {
        let mut cmd = Command::new(bin);
        // The gap in whole microseconds (sub-microsecond gaps are none).
        let gap_us = (spec.gap_ms * 1000.0).round().max(0.0) as u64;
        cmd.arg("mock")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--tokens")
            .arg(spec.tokens.to_string())
            .arg("--itl")
            .arg(format!("{gap_us}us"))
            .arg("--usage")
            .arg(if spec.usage { "on" } else { "off" })
            .arg("--journal")
            .arg(MOCK_JOURNAL.to_string())
            .arg("--control-stdin");
        if let Some(n) = spec.stall_after {
            cmd.arg("--stall-after").arg(n.to_string());
        }
        if spec.tool_calls {
            // The rotation: a tool call, then the synthesized text.
            let config = log.with_extension("yaml");
            std::fs::write(
                &config,
                "replies:\n  - tool_call: {id: call_soak_1, name: lookup_order, arguments: {order_id: 1}}\n  - {}\n",
            )
            .map_err(|e| format!("{}: {e}", config.display()))?;
            cmd.arg("--config").arg(config);
        }
        let stderr = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut proc = spawn("mock", cmd, Some(log))
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let stdin = proc.child.stdin.take().ok_or("mock stdin")?;
        let mut stdout = BufReader::new(proc.child.stdout.take().ok_or("mock stdout")?);
        let mut line = String::new();
        stdout
            .read_line(&mut line)
            .map_err(|e| format!("reading the mock's address: {e}"))?;
        let addr: SocketAddr = line.trim().parse().map_err(|_| {
            format!(
                "the mock did not print its address (got {line:?}); its log:\n{}",
                proc.log_tail(20)
            )
        })?;
        Ok(Mock {
            proc,
            addr,
            stdin,
            stdout,
        })
    }

    /// The mock's journal: one JSON object per request kept (the mock keeps
    /// the last [`MOCK_JOURNAL`]), in arrival order; `i` is its arrival index.
    pub fn journal(&mut self) -> Result<Vec<serde_json::Value>, String> {
        writeln!(self.stdin, "journal")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("asking the mock for its journal: {e}"))?;
        let mut out = Vec::new();
        loop {
            let mut line = String::new();
            let n = self
                .stdout
                .read_line(&mut line)
                .map_err(|e| format!("reading the mock's journal: {e}"))?;
            if n == 0 {
                return Err("the mock exited while dumping its journal".into());
            }
            let line = line.trim();
            if line == "end" {
                return Ok(out);
            }
            out.push(
                serde_json::from_str(line)
                    .map_err(|e| format!("mock journal line {line:?}: {e}"))?,
            );
        }
    }
}

/// One pipeline served by the bench's Sluice.
pub struct PipelineSpec {
    pub name: &'static str,
    pub first_token: &'static str,
    pub idle: &'static str,
    pub total: &'static str,
}

/// Writes a pipelines directory for `sluice serve`: one OpenAI-compatible
/// provider pointing at the mock, a SQLite ledger, a price for the model
/// and a (huge) daily budget per pipeline, so the ledger, the budgets and
/// the metrics are all on.
///
/// `memory_ledger` and `!budget` are experiments: the in-process ledger
/// instead of SQLite, no budget on the pipelines.
pub fn write_pipelines(
    dir: &Path,
    mock: SocketAddr,
    pipelines: &[PipelineSpec],
    memory_ledger: bool,
    budget: bool,
    key: Option<&str>,
    traces_to: Option<SocketAddr>,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let ledger = if memory_ledger {
        "memory".to_string()
    } else {
        // In a subdirectory: Sluice watches the pipelines directory itself,
        // and a ledger there would wake its watcher on every write.
        format!("sqlite:{}", dir.join("data/ledger.db").display())
    };
    let settings = format!(
        "# Written by the sluice-benches load generator.\n\
         server:\n  listen: 127.0.0.1:0\n  keepalive: 15s\n  shutdown_grace: 1s\n\
         providers:\n  mock:\n    kind: openai\n    base_url: http://{mock}/v1\n\
         storage: {ledger}\n\
         prices:\n  bench-model: {{input: 0.15, output: 0.60}}\n"
    );
    // A key whose limits never refuse: what is measured is their cost.
    let settings = match key {
        Some(secret) => format!(
            "{settings}keys:\n  bench:\n    hash: \"{}\"\n    pipelines: [\"*\"]\n    metrics: true\n    \
             budget: {{daily_usd: 1000000, monthly_usd: 10000000}}\n    \
             rate_limit: {{requests_per_minute: 1000000000, tokens_per_minute: 1000000000000}}\n",
            sluice::auth::format_hash(&sluice::auth::digest(secret))
        ),
        None => settings,
    };
    // Every request traced, with the default batching and queue.
    let settings = match traces_to {
        Some(addr) => format!("{settings}telemetry:\n  endpoint: http://{addr}\n"),
        None => settings,
    };
    std::fs::write(dir.join("settings.yaml"), settings)?;
    for p in pipelines {
        let yaml = format!(
            "name: {name}\n\
             model: {{provider: mock, name: bench-model}}\n\
             limits: {{max_tokens: 1024}}\n\
             timeouts: {{connect: 30s, first_token: {ft}, idle: {idle}, total: {total}}}\n\
             {budget}",
            name = p.name,
            ft = p.first_token,
            idle = p.idle,
            total = p.total,
            budget = if budget {
                "budget: {daily_usd: 1000000}\n"
            } else {
                ""
            },
        );
        std::fs::write(dir.join(format!("{}.yaml", p.name)), yaml)?;
    }
    Ok(())
}

/// `sluice serve DIR --listen 127.0.0.1:PORT`, logging to `log`.
pub fn start_sluice(
    bin: &Path,
    dir: &Path,
    port: u16,
    log: PathBuf,
    level: &str,
    env: &[(String, String)],
    wrap: &[String],
) -> Result<Proc, String> {
    let file = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
    // An experiment's wrapper (e.g. `heaptrack -o FILE`) runs Sluice; /proc
    // figures are then the wrapper's.
    let mut cmd = match wrap.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.envs(env.iter().map(|(k, v)| (k, v)));
    cmd.arg("serve")
        .arg(dir)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("SLUICE_LOG", level)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file);
    spawn("sluice", cmd, Some(log)).map_err(|e| format!("cannot start {}: {e}", bin.display()))
}

/// A temporary directory, removed on drop unless kept.
pub struct TempDir {
    pub path: PathBuf,
    pub keep: bool,
}

impl TempDir {
    pub fn new(tag: &str, keep: bool) -> std::io::Result<TempDir> {
        let path = std::env::temp_dir().join(format!("sluice-load-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(TempDir { path, keep })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}
