//! What wraps a request body on its way out: message-size limits (the gRPC messages an RPC
//! sends and receives, read off their 5-byte length prefixes as the bytes go by, and refused
//! with RESOURCE_EXHAUSTED past a limit, as grpc-go's `MaxCallSendMsgSize` and
//! `MaxCallRecvMsgSize` do), and the cancellation of a stream whose response was dropped.

use std::future::Future as _;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Status;

/// The largest response message an RPC takes unless configured: 4 MiB, as in grpc-go and tonic.
pub const DEFAULT_MAX_RESPONSE_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// A request extension: the largest gRPC message, in bytes as sent on the wire, that this RPC
/// may send and receive, overriding the balancer's
/// [`Builder::max_request_message_bytes`](crate::Builder::max_request_message_bytes) and
/// [`Builder::max_response_message_bytes`](crate::Builder::max_response_message_bytes).
///
/// A request message over its limit is not sent: the RPC fails with RESOURCE_EXHAUSTED (and a
/// stream already open is reset). A response message over its limit resets the stream, and the
/// RPC ends with RESOURCE_EXHAUSTED.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MessageLimits {
    /// The largest request message.
    pub request: usize,
    /// The largest response message.
    pub response: usize,
}

impl Default for MessageLimits {
    /// No limit on requests, 4 MiB on responses (grpc-go's defaults).
    fn default() -> Self {
        Self {
            request: usize::MAX,
            response: DEFAULT_MAX_RESPONSE_MESSAGE_BYTES,
        }
    }
}

/// The length of the first message in `bytes` (whole gRPC frames) longer than `limit`, if any.
///
/// ```
/// use switchboard_balancer::oversized_message;
///
/// let frame = |len: usize| [&[0u8][..], &(len as u32).to_be_bytes(), &vec![7; len]].concat();
/// let body = [frame(3), frame(10)].concat();
/// assert_eq!(oversized_message(&body, 10), None);
/// assert_eq!(oversized_message(&body, 9), Some(10));
/// ```
pub fn oversized_message(bytes: &[u8], limit: usize) -> Option<usize> {
    let mut frames = Frames::default();
    frames.feed(bytes, limit).err()
}

/// The message too large to send, as the RPC's status, with [`MessageTooLarge`] as its source.
pub fn request_too_large(len: usize, limit: usize) -> Status {
    let mut status = Status::resource_exhausted(format!(
        "request message of {len} bytes is larger than the limit of {limit} bytes"
    ));
    status.set_source(Arc::new(MessageTooLarge));
    status
}

/// The source of the [`Status`] of an RPC that failed because one of its own request messages
/// was over its limit: it was not sent, and sending it again would fail the same way, so it is
/// never retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageTooLarge;

impl std::fmt::Display for MessageTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a request message was over its size limit")
    }
}

impl std::error::Error for MessageTooLarge {}

/// Reads the length prefixes of the gRPC messages in a stream of bytes.
#[derive(Debug, Default)]
pub(crate) struct Frames {
    /// The bytes of the current prefix read so far.
    prefix: [u8; 5],
    have: u8,
    /// The bytes of the current message still to come.
    remaining: usize,
}

impl Frames {
    /// Reads `data`, the next bytes of the stream; the error is the length of a message longer
    /// than `limit`.
    pub(crate) fn feed(&mut self, mut data: &[u8], limit: usize) -> Result<(), usize> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let skip = self.remaining.min(data.len());
                self.remaining -= skip;
                data = &data[skip..];
                continue;
            }
            let take = (5 - usize::from(self.have)).min(data.len());
            let start = usize::from(self.have);
            self.prefix[start..start + take].copy_from_slice(&data[..take]);
            self.have += take as u8;
            data = &data[take..];
            if self.have == 5 {
                self.have = 0;
                let len = u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]) as usize;
                if len > limit {
                    return Err(len);
                }
                self.remaining = len;
            }
        }
        Ok(())
    }
}

/// The status an RPC failed with because of its request body, shared with its response.
pub(crate) type Tripped = Arc<OnceLock<Status>>;

/// A request body whose messages are checked against a limit: the first one over it ends the
/// body with RESOURCE_EXHAUSTED (hyper then resets the stream), and the RPC's response takes
/// that status.
pub(crate) struct Checked {
    inner: tonic::body::Body,
    frames: Frames,
    limit: usize,
    tripped: Tripped,
}

impl Checked {
    pub(crate) fn new(inner: tonic::body::Body, limit: usize, tripped: Tripped) -> Self {
        Self {
            inner,
            frames: Frames::default(),
            limit,
            tripped,
        }
    }
}

impl HttpBody for Checked {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                if let Err(len) = this.frames.feed(data.chunk(), this.limit) {
                    let status = request_too_large(len, this.limit);
                    let _ = this.tripped.set(status.clone());
                    return Poll::Ready(Some(Err(status)));
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A streaming request body that ends with `CANCEL` once its RPC's response is dropped (the
/// caller gave up on the call): hyper then resets the HTTP/2 stream with `CANCEL`, and the
/// server sees the call cancelled at once, even while the caller still holds the sending half
/// or has just closed it. Without it, a dropped response leaves the stream open for as long
/// as the request stream stays open, and a request stream closed first reaches the server as
/// a clean end before the reset.
pub(crate) struct Guarded {
    inner: tonic::body::Body,
    /// Fires (with an error) when the response's guard is dropped.
    alive: tokio::sync::oneshot::Receiver<()>,
}

impl Guarded {
    /// `inner`, and the guard the response keeps.
    pub(crate) fn new(inner: tonic::body::Body) -> (Self, tokio::sync::oneshot::Sender<()>) {
        let (guard, alive) = tokio::sync::oneshot::channel();
        (Self { inner, alive }, guard)
    }
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if Pin::new(&mut this.alive).poll(cx).is_ready() {
            // hyper resets the stream with the reason of an h2 error among the sources.
            let mut status = Status::cancelled("the call was dropped by its caller");
            status.set_source(Arc::new(h2::Error::from(h2::Reason::CANCEL)));
            return Poll::Ready(Some(Err(status)));
        }
        Pin::new(&mut this.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize) -> Vec<u8> {
        let mut f = vec![0u8];
        f.extend_from_slice(&(len as u32).to_be_bytes());
        f.extend(std::iter::repeat_n(1u8, len));
        f
    }

    #[test]
    fn prefixes_split_anywhere_are_read() {
        let stream: Vec<u8> = [frame(0), frame(3), frame(300), frame(2)].concat();
        // Every split of the stream into two chunks, and byte by byte.
        for at in 0..stream.len() {
            let mut f = Frames::default();
            assert_eq!(f.feed(&stream[..at], 300), Ok(()));
            assert_eq!(f.feed(&stream[at..], 300), Ok(()));
            let mut f = Frames::default();
            let fed = f
                .feed(&stream[..at], 299)
                .and_then(|()| f.feed(&stream[at..], 299));
            assert_eq!(fed, Err(300), "split at {at}");
        }
        let mut f = Frames::default();
        let over = stream
            .iter()
            .find_map(|b| f.feed(std::slice::from_ref(b), 100).err());
        assert_eq!(over, Some(300));
    }

    #[test]
    fn the_default_limits_are_grpc_gos() {
        let d = MessageLimits::default();
        assert_eq!(d.request, usize::MAX);
        assert_eq!(d.response, 4 << 20);
    }
}
