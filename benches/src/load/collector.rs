//! `--tracing on`: an OTLP/HTTP collector that accepts every export and
//! discards it, on a thread (and current-thread runtime) of its own in the
//! load generator, so that what is measured is what exporting costs Sluice.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// What the collectors of this process received so far.
pub struct Received {
    pub exports: AtomicU64,
    pub bytes: AtomicU64,
}

pub static RECEIVED: Received = Received {
    exports: AtomicU64::new(0),
    bytes: AtomicU64::new(0),
};

pub struct Collector {
    pub addr: SocketAddr,
}

impl Collector {
    /// Listens on 127.0.0.1:0; the thread lives as long as the process.
    pub fn start() -> std::io::Result<Collector> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name("otlp-collector".into())
            .spawn(move || {
                rt.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    loop {
                        let Ok((tcp, _)) = listener.accept().await else {
                            continue;
                        };
                        tokio::spawn(async move {
                            let service = hyper::service::service_fn(move |req| {
                                let counts = &RECEIVED;
                                async move {
                                    let body: http::Request<hyper::body::Incoming> = req;
                                    let n = match body.into_body().collect().await {
                                        Ok(b) => b.to_bytes().len() as u64,
                                        Err(_) => 0,
                                    };
                                    counts.exports.fetch_add(1, Ordering::Relaxed);
                                    counts.bytes.fetch_add(n, Ordering::Relaxed);
                                    let mut resp = http::Response::new(Full::new(Bytes::new()));
                                    resp.headers_mut().insert(
                                        http::header::CONTENT_TYPE,
                                        http::HeaderValue::from_static("application/x-protobuf"),
                                    );
                                    Ok::<_, std::convert::Infallible>(resp)
                                }
                            });
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(tcp), service)
                                .await;
                        });
                    }
                })
            })?;
        Ok(Collector { addr })
    }
}
