//! A gRPC server that answers every request with its response headers and then nothing: no
//! message, no trailers. What a client's deadline must end; and it counts the streams the
//! client cancelled (an HTTP/2 `RST_STREAM`).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Result;
use tokio::net::TcpListener;
use tracing::{Instrument as _, debug, info_span, warn};

/// A gRPC server that answers every request with its response headers and then nothing, and
/// counts the streams the client reset. Stops when dropped.
#[derive(Debug)]
pub struct StallServer {
    addr: SocketAddr,
    counts: Arc<Counts>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Debug, Default)]
struct Counts {
    requests: AtomicUsize,
    cancelled: AtomicUsize,
}

impl StallServer {
    /// Starts it on a free port of 127.0.0.1.
    pub async fn start() -> Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let shared = counts.clone();
        let task = tokio::spawn(
            async move {
                loop {
                    match listener.accept().await {
                        Ok((stream, _)) => {
                            tokio::spawn(serve(stream, shared.clone()));
                        }
                        Err(e) => {
                            warn!(error = %e, "stall server accept failed");
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
            }
            .instrument(info_span!("stall_server", %addr)),
        );
        Ok(Self { addr, counts, task })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many requests it has answered with headers.
    pub fn requests(&self) -> usize {
        self.counts.requests.load(Ordering::Relaxed)
    }

    /// How many of those the client has reset.
    pub fn cancelled(&self) -> usize {
        self.counts.cancelled.load(Ordering::Relaxed)
    }
}

impl Drop for StallServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One connection: headers for every request, then a wait for the client's reset.
async fn serve(stream: tokio::net::TcpStream, counts: Arc<Counts>) {
    let mut connection = match h2::server::handshake(stream).await {
        Ok(c) => c,
        Err(e) => return debug!(error = %e, "stall server handshake failed"),
    };
    while let Some(accepted) = connection.accept().await {
        let Ok((_request, mut respond)) = accepted else {
            return;
        };
        let response = http::Response::builder()
            .header("content-type", "application/grpc")
            .body(())
            .unwrap_or_default();
        let Ok(mut body) = respond.send_response(response, false) else {
            continue;
        };
        counts.requests.fetch_add(1, Ordering::Relaxed);
        let counts = counts.clone();
        tokio::spawn(async move {
            if std::future::poll_fn(|cx| body.poll_reset(cx)).await.is_ok() {
                counts.cancelled.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}
