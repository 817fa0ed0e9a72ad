//! The server's lifecycle: binding (ledger, descriptor limit, connection
//! cap), the accept loop that hands each connection to hyper under its
//! watchdog, and graceful shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::Version;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use super::conn::{self, ConnState, Watched};
use super::reload::ReloadHandle;
use super::{H1_MAX_BUF, H2_MAX_SEND_BUF, Shared, handle};
use crate::alerts::Alerts;
use crate::compile::Catalog;
use crate::ledger::Ledger;
use crate::metrics::{ConnClosedLabels, Metrics};
use crate::run::RunContext;
use arc_swap::ArcSwap;

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    /// The configuration served now; a reload swaps it.
    live: Arc<ArcSwap<Shared>>,
}

/// Safe by default: with no API key declared, anyone who reaches the port
/// can spend every budget, so Sluice serves only on a loopback address
/// unless `server.allow_unauthenticated: true` says otherwise.
pub(crate) fn exposure_allowed(auth: &crate::auth::Auth, addr: SocketAddr) -> anyhow::Result<()> {
    if auth.required() || addr.ip().is_loopback() || auth.allow_unauthenticated {
        return Ok(());
    }
    anyhow::bail!(
        "refusing to listen on {addr} with no API keys: anyone who can reach it could spend every budget. \
         Declare keys in settings.yaml (`sluice keys new NAME` makes one), listen on a loopback address \
         (127.0.0.1), or set server.allow_unauthenticated: true if something in front of Sluice authenticates"
    )
}

impl Server {
    /// Opens the ledger (recovering requests a dead instance left pending)
    /// and binds `addr` (use port 0 for any free port).
    pub async fn bind(catalog: Catalog, addr: SocketAddr) -> anyhow::Result<Server> {
        exposure_allowed(&catalog.auth, addr)?;
        let ledger = Ledger::open(&catalog.storage)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the ledger: {e}"))?;
        let recovered = ledger.recover_interrupted().await?;
        if recovered > 0 {
            warn!(
                requests = recovered,
                "requests left unfinished by a stopped instance were recorded as interrupted"
            );
        }
        let listener = listen(addr).map_err(|e| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        let limits = catalog.server.connections;
        let nofile = conn::raise_nofile_limit();
        let (max_connections, lowered) =
            conn::connection_cap(limits.max_connections, limits.reserved_connections, nofile);
        if lowered {
            warn!(
                max_connections,
                descriptor_limit = nofile,
                "max_connections lowered to what the descriptor limit allows"
            );
        }
        info!(
            max_connections,
            reserved_connections = limits.reserved_connections,
            descriptor_limit = nofile,
            "connection limits"
        );
        crate::tokens::init();
        let tracker = TaskTracker::new();
        let metrics = Arc::new(Metrics::new());
        let telemetry = match &catalog.telemetry {
            Some(settings) => {
                let t = crate::telemetry::Telemetry::start(settings, &metrics)?;
                info!(service = %settings.service_name, "exporting traces over OTLP/HTTP");
                Some(t)
            }
            None => None,
        };
        let run = Arc::new(RunContext {
            keepalive: catalog.server.keepalive,
            force_stop: CancellationToken::new(),
            tracker: tracker.clone(),
            alerts: Alerts::new(ledger.clone(), catalog.alert_webhook.as_deref(), tracker),
            ledger,
            metrics,
            telemetry,
        });
        let bound = listener.local_addr()?;
        let reloads = Arc::new(super::reload::Status::new(
            &catalog,
            bound,
            run.ledger.now_ms(),
        ));
        Ok(Server {
            listener,
            live: Arc::new(ArcSwap::from_pointee(Shared {
                version: 1,
                pipelines: catalog.pipelines,
                auth: catalog.auth,
                settings: catalog.server,
                run,
                max_connections,
                reloads,
                ready: Default::default(),
            })),
        })
    }

    /// Swaps configurations into this server once it runs.
    pub fn reload_handle(&self) -> ReloadHandle {
        ReloadHandle {
            live: self.live.clone(),
        }
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` resolves, then stops accepting, lets open
    /// streams finish for up to the grace period, ends the rest with an
    /// `error` event, and returns.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Server { listener, live } = self;
        // What does not change on reload: the settings, the request context.
        let shared = live.load_full();
        let limits = shared.settings.connections;
        let mut gate = conn::Gate::new(shared.max_connections, limits.reserved_connections);
        // Tells every connection to finish what is in flight and close.
        let close_connections = CancellationToken::new();
        let connections = TaskTracker::new();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        // Small write buffers: a slow client then holds back its own
        // stream (through the event channel, and so the upstream read)
        // instead of making hyper buffer its events, 400 KB per stream
        // by default. HTTP/1.1's also bounds a request head.
        builder.http1().max_buf_size(H1_MAX_BUF);
        builder.http2().max_send_buf_size(H2_MAX_SEND_BUF);
        // A reserve connection answers one request and closes.
        let mut reserve_builder = builder.clone();
        reserve_builder.http1().keep_alive(false);
        // Tells other instances sharing the ledger that our pending rows
        // are live, not orphans.
        let stop_heartbeat = CancellationToken::new();
        let heartbeat = {
            let ledger = shared.run.ledger.clone();
            let stop = stop_heartbeat.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {
                            if let Err(e) = ledger.heartbeat().await {
                                warn!(error = %e, "ledger heartbeat failed");
                            }
                            // A peer sharing the ledger may have died.
                            match ledger.recover_interrupted().await {
                                Ok(0) => {}
                                Ok(n) => warn!(requests = n, "requests of a stopped instance were recorded as interrupted"),
                                Err(e) => warn!(error = %e, "ledger recovery failed"),
                            }
                        }
                    }
                }
            })
        };
        tokio::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                _ = &mut shutdown => break,
                r = listener.accept() => match r {
                    Ok(v) => v,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, do not spin.
                        warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let ticket = gate.admit();
            let metrics = shared.run.metrics.clone();
            if ticket.is_reserve() {
                metrics.connections_over_capacity.inc();
            }
            metrics.connections_open.inc();
            let state = ConnState::new(ticket.is_reserve());
            let service = {
                let live = live.clone();
                let state = state.clone();
                hyper::service::service_fn(move |req| {
                    // The configuration live when the request arrives serves
                    // it to the end.
                    let shared = live.load_full();
                    let in_flight = state.request_started(req.version() == Version::HTTP_2);
                    // Boxed: hyper keeps a connection's (or an h2 stream's)
                    // service future inline for as long as it lives, and this
                    // one is large; the box is freed once the response starts.
                    let handled: Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(async move {
                        Ok::<_, Infallible>(handle(shared, req, in_flight).await)
                    });
                    handled
                })
            };
            let io = TokioIo::new(Watched::new(tcp, state.clone()));
            let conn = if ticket.is_reserve() {
                &reserve_builder
            } else {
                &builder
            }
            .serve_connection(io, service)
            .into_owned();
            let close = close_connections.clone();
            connections.spawn(async move {
                let ended = conn::watch(
                    conn,
                    |c| c.graceful_shutdown(),
                    &state,
                    &limits,
                    &close,
                    ticket.evicted(),
                )
                .await;
                match ended {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(%peer, error = %e, "connection ended with an error"),
                    Err(why) => {
                        debug!(%peer, reason = ?why, "connection closed");
                        let reason = match why {
                            conn::Closed::HeaderTimeout => Some("header_timeout"),
                            conn::Closed::WriteTimeout => Some("write_timeout"),
                            conn::Closed::Evicted => Some("evicted"),
                            conn::Closed::Done => None,
                        };
                        if let Some(reason) = reason {
                            metrics
                                .connections_closed
                                .get_or_create(&ConnClosedLabels { reason })
                                .inc();
                        }
                    }
                }
                metrics.connections_open.dec();
                drop(ticket);
            });
        }
        drop(listener);
        let grace = shared.settings.shutdown_grace;
        info!(grace = %humantime::format_duration(grace), "shutting down: no new connections, draining open streams");
        shared.run.tracker.close();
        connections.close();
        let drained = tokio::time::timeout(grace, shared.run.tracker.wait())
            .await
            .is_ok();
        if !drained {
            warn!("grace period over: ending the open streams");
            shared.run.force_stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), shared.run.tracker.wait()).await;
        }
        // Streams are over; let connections flush their last bytes.
        close_connections.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), connections.wait()).await;
        stop_heartbeat.cancel();
        let _ = heartbeat.await;
        // Request tasks are over: a row of ours still pending (its settle
        // kept failing) is settled now rather than left to the next start.
        match shared.run.ledger.interrupt_own_pending().await {
            Ok(0) => {}
            Ok(n) => warn!(rows = n, "rows left pending were settled as interrupted"),
            Err(e) => warn!(error = %e, "cannot settle the rows left pending; the next start will"),
        }
        shared.run.ledger.close().await;
        if let Some(t) = shared.run.telemetry.clone() {
            // The last spans, bounded by the export timeout, off the workers.
            let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
        }
        info!("stopped");
    }
}

/// Listens on `addr` with a deep accept queue (the kernel caps it at
/// somaxconn): a burst of clients waits to be accepted instead of having
/// its SYNs dropped and retried a second later.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// A server running in the background (tests and embedding).
pub struct RunningServer {
    pub addr: SocketAddr,
    ledger: Arc<Ledger>,
    reload: ReloadHandle,
    shutdown: CancellationToken,
    join: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    pub async fn start(catalog: Catalog, addr: SocketAddr) -> anyhow::Result<RunningServer> {
        let server = Server::bind(catalog, addr).await?;
        let addr = server.local_addr()?;
        let ledger = server.live.load().run.ledger.clone();
        let reload = server.reload_handle();
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let join = tokio::spawn(async move { server.run(token.cancelled_owned()).await });
        Ok(RunningServer {
            addr,
            ledger,
            reload,
            shutdown,
            join,
        })
    }

    /// Swaps configurations into the running server.
    pub fn reload_handle(&self) -> ReloadHandle {
        self.reload.clone()
    }

    /// The server's ledger, e.g. to read a request's row in tests.
    pub fn ledger(&self) -> Arc<Ledger> {
        self.ledger.clone()
    }

    /// Signals shutdown and waits until the server has stopped.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.join.await;
    }

    pub fn signal_shutdown(&self) {
        self.shutdown.cancel();
    }

    pub async fn wait(self) {
        let _ = self.join.await;
    }
}
