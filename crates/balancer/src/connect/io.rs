//! The byte stream under a sub-channel's HTTP/2 connection: plain TCP or TLS, watched until
//! the server's first frame arrives.
//!
//! An HTTP/2 handshake completes as soon as the client preface is written, so a peer that
//! accepts TCP and never answers (or answers in HTTP/1.1) would look connected. A sub-channel
//! becomes READY only once the server's SETTINGS frame arrived: [`SettingsWatch`] reads the
//! first frame header that passes by and reports what it was.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// Plain TCP or TLS over TCP.
pub(crate) enum Stream {
    Tcp(TcpStream),
    #[cfg(feature = "tls")]
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Stream {
    /// Whether it runs TLS.
    pub(crate) fn is_tls(&self) -> bool {
        match self {
            Stream::Tcp(_) => false,
            #[cfg(feature = "tls")]
            Stream::Tls(_) => true,
        }
    }
}

macro_rules! delegate {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            Stream::Tcp($s) => {
                let $s = Pin::new($s);
                $e
            }
            #[cfg(feature = "tls")]
            Stream::Tls($s) => {
                let $s = Pin::new($s.as_mut());
                $e
            }
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, s => s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Tcp(s) => s.is_write_vectored(),
            #[cfg(feature = "tls")]
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, s => s.poll_shutdown(cx))
    }
}

/// What the first bytes from the server were.
pub(crate) type FirstFrame = Result<(), String>;

/// Passes bytes through and reports, once, whether the server's first frame is SETTINGS. It
/// can also be aborted from outside: every read and write fails from then on, which ends the
/// HTTP/2 connection that owns it (and closes the socket) wherever it runs.
pub(crate) struct SettingsWatch<T> {
    inner: T,
    header: [u8; 9],
    seen: usize,
    report: Option<oneshot::Sender<FirstFrame>>,
    abort: Arc<AbortState>,
}

#[derive(Debug, Default)]
struct AbortState {
    aborted: AtomicBool,
    /// The task reading from the connection, woken by an abort.
    reader: AtomicWaker,
}

/// Aborts the connection of a [`SettingsWatch`].
#[derive(Clone, Debug)]
pub(crate) struct AbortHandle(Arc<AbortState>);

impl AbortHandle {
    pub(crate) fn abort(&self) {
        self.0.aborted.store(true, Ordering::Release);
        self.0.reader.wake();
    }
}

fn aborted() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "connection aborted")
}

impl<T> SettingsWatch<T> {
    pub(crate) fn new(inner: T) -> (Self, oneshot::Receiver<FirstFrame>) {
        let (tx, rx) = oneshot::channel();
        let watch = Self {
            inner,
            header: [0; 9],
            seen: 0,
            report: Some(tx),
            abort: Arc::default(),
        };
        (watch, rx)
    }

    /// A handle that aborts this connection.
    pub(crate) fn abort_handle(&self) -> AbortHandle {
        AbortHandle(self.abort.clone())
    }

    fn is_aborted(&self) -> bool {
        self.abort.aborted.load(Ordering::Acquire)
    }

    fn observe(&mut self, bytes: &[u8]) {
        let Some(report) = self.report.take() else {
            return;
        };
        if bytes.is_empty() {
            let _ = report.send(Err(
                "the server closed the connection before sending HTTP/2 SETTINGS".into(),
            ));
            return;
        }
        let n = bytes.len().min(self.header.len() - self.seen);
        self.header[self.seen..self.seen + n].copy_from_slice(&bytes[..n]);
        self.seen += n;
        if self.seen < self.header.len() {
            self.report = Some(report);
            return;
        }
        let _ = report.send(check_first_frame(&self.header));
    }
}

/// A server's first frame must be a SETTINGS frame (type 4) on stream 0, without ACK (RFC 9113
/// §3.4).
fn check_first_frame(header: &[u8; 9]) -> FirstFrame {
    let kind = header[3];
    let flags = header[4];
    let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
    if kind == 4 && flags & 1 == 0 && stream == 0 {
        return Ok(());
    }
    if header.starts_with(b"HTTP/1.") {
        return Err("the server answered in HTTP/1.x, not HTTP/2 (is it a gRPC server?)".into());
    }
    Err(format!(
        "the server's first bytes are not an HTTP/2 SETTINGS frame: {}",
        header
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    ))
}

impl<T: AsyncRead + Unpin> AsyncRead for SettingsWatch<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.abort.reader.register(cx.waker());
        if this.is_aborted() {
            return Poll::Ready(Err(aborted()));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if this.report.is_some() {
            match &result {
                Poll::Ready(Ok(())) => {
                    let filled = buf.filled();
                    let new = filled[before..].to_vec();
                    this.observe(&new);
                }
                Poll::Ready(Err(e)) => {
                    if let Some(report) = this.report.take() {
                        let _ = report.send(Err(format!("reading the server's SETTINGS: {e}")));
                    }
                }
                Poll::Pending => {}
            }
        }
        result
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SettingsWatch<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.is_aborted() {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.is_aborted() {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    async fn first_frame(bytes: &[u8], chunk: usize) -> FirstFrame {
        let (mut server, client) = tokio::io::duplex(64);
        let (mut watch, rx) = SettingsWatch::new(client);
        let bytes = bytes.to_vec();
        let writer = tokio::spawn(async move {
            for c in bytes.chunks(chunk) {
                server.write_all(c).await?;
                server.flush().await?;
            }
            Ok::<_, io::Error>(server)
        });
        let mut sink = Vec::new();
        let reader = async {
            let mut buf = [0u8; 3];
            loop {
                match watch.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink.extend_from_slice(&buf[..n]),
                }
            }
        };
        let server = writer.await.ok().and_then(Result::ok);
        drop(server);
        reader.await;
        rx.await.unwrap_or_else(|_| Err("no report".into()))
    }

    #[tokio::test]
    async fn a_settings_frame_split_across_reads_is_recognised() {
        let settings = [0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100];
        assert_eq!(first_frame(&settings, 2).await, Ok(()));
    }

    #[tokio::test]
    async fn http1_and_silence_are_not_http2() {
        let http1 = first_frame(b"HTTP/1.1 400 Bad Request\r\n\r\n", 64).await;
        assert!(http1.unwrap_err().contains("HTTP/1.x"));
        let closed = first_frame(b"", 1).await;
        assert!(closed.unwrap_err().contains("closed the connection"));
        let ack = first_frame(&[0, 0, 0, 4, 1, 0, 0, 0, 0], 9).await;
        assert!(ack.unwrap_err().contains("not an HTTP/2 SETTINGS"));
    }
}
