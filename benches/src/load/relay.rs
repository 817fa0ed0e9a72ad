//! A plain TCP relay, the floor for any gateway: it accepts a connection,
//! opens one to the mock, and copies bytes both ways, parsing nothing. At
//! C=1 the benchmark measures it beside Sluice, so the time one more hop
//! costs on this machine (two more socket wake-ups per exchange) is not
//! mistaken for Sluice's own.
//!
//! It runs as `load --relay-to ADDR` in a process of its own, on tokio's
//! multi-threaded runtime like Sluice, and prints its address first.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use super::procs::{self, Proc};

/// Serves the relay until killed (the `--relay-to` mode of the binary).
pub(crate) fn serve(upstream: SocketAddr) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("relay: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        println!("{}", listener.local_addr()?);
        std::io::stdout().flush()?;
        loop {
            let (mut client, _) = listener.accept().await?;
            tokio::spawn(async move {
                let _ = client.set_nodelay(true);
                let Ok(mut server) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = server.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
            });
        }
        #[allow(unreachable_code)]
        Ok::<(), std::io::Error>(())
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A relay process in front of `upstream`.
pub(crate) struct Relay {
    /// Stops when the relay is dropped.
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Relay {
    pub fn start(exe: &Path, upstream: SocketAddr, log: PathBuf) -> Result<Relay, String> {
        let stderr = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = Command::new(exe);
        cmd.arg("--relay-to")
            .arg(upstream.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        let mut proc = procs::spawn("relay", cmd, Some(log))
            .map_err(|e| format!("cannot start the relay: {e}"))?;
        let mut line = String::new();
        let stdout = proc.child.stdout.take().ok_or("relay stdout")?;
        BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| format!("reading the relay's address: {e}"))?;
        let addr = line
            .trim()
            .parse()
            .map_err(|_| format!("the relay did not print its address (got {line:?})"))?;
        Ok(Relay { proc, addr })
    }
}
