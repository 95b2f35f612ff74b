//! A request body recorded as it is sent, so that another attempt can send it again: the
//! bytes of a client stream (or of a request not complete at once) are kept, up to a limit,
//! while the first attempt sends them; a retry replays them and then goes on reading the
//! caller's stream, as gRFC A6's retry buffer does.
//!
//! The caller's body is read by whichever attempt needs its next frame first; every attempt
//! replays what was read before. Once the RPC is committed (a response arrived) or the bytes
//! outgrow the limit, nothing more is recorded, only the attempt that holds the RPC reads on,
//! and the record is dropped once that attempt has sent it: no other attempt can be made.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tonic::Status;
use tonic::body::Body;

/// The record of one RPC's request body, shared by its attempts.
#[derive(Clone)]
pub(crate) struct Tape {
    inner: Arc<Mutex<Record>>,
    waiters: Arc<Waiters>,
}

struct Record {
    /// The data frames read so far, while the RPC can still be replayed.
    data: Vec<Bytes>,
    len: usize,
    limit: usize,
    /// The caller's body, until it ends or fails.
    source: Option<Body>,
    trailers: Option<HeaderMap>,
    failed: Option<Status>,
    /// The attempt that holds the RPC once it can no longer be replayed.
    owner: Option<u32>,
}

/// The wakers of the attempts waiting for the caller's next frame: all are woken when it comes.
#[derive(Default)]
struct Waiters(Mutex<Vec<Waker>>);

impl Wake for Waiters {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        let wakers = std::mem::take(&mut *lock(&self.0));
        for waker in wakers {
            waker.wake();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Tape {
    /// A record of `source`, whose first frames `head` (of `len` bytes, within `limit`) were
    /// already read.
    pub(crate) fn new(head: Vec<Bytes>, len: usize, source: Body, limit: usize) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Record {
                data: head,
                len,
                limit,
                source: Some(source),
                trailers: None,
                failed: None,
                owner: None,
            })),
            waiters: Arc::default(),
        }
    }

    /// The body attempt number `attempt` sends.
    pub(crate) fn body(&self, attempt: u32) -> Body {
        Body::new(Replay {
            tape: self.clone(),
            attempt,
            pos: 0,
            done: false,
        })
    }

    /// Whether another attempt can still send the whole request.
    pub(crate) fn replayable(&self) -> bool {
        lock(&self.inner).owner.is_none()
    }

    /// The attempt that holds the RPC, once it can no longer be replayed.
    pub(crate) fn owner(&self) -> Option<u32> {
        lock(&self.inner).owner
    }

    /// The RPC is `attempt`'s: nothing more is recorded, that attempt alone reads on, and
    /// the record goes once it has sent it.
    pub(crate) fn commit(&self, attempt: u32) {
        let mut record = lock(&self.inner);
        if record.owner.is_none() {
            record.owner = Some(attempt);
        }
    }
}

/// What one attempt sends: the record, then the caller's body.
struct Replay {
    tape: Tape,
    attempt: u32,
    /// The next recorded frame to send.
    pos: usize,
    done: bool,
}

impl HttpBody for Replay {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        let mut record = lock(&this.tape.inner);
        match record.owner {
            Some(owner) if owner != this.attempt => {
                this.done = true;
                return Poll::Ready(Some(Err(Status::cancelled(
                    "the request is committed to another attempt",
                ))));
            }
            Some(_) => {
                // The holder sends the rest of the record, then lets it go.
                if let Some(data) = record.data.get(this.pos) {
                    this.pos += 1;
                    return Poll::Ready(Some(Ok(Frame::data(data.clone()))));
                }
                if !record.data.is_empty() {
                    record.data = Vec::new();
                    this.pos = 0;
                }
            }
            None => {
                if let Some(data) = record.data.get(this.pos) {
                    this.pos += 1;
                    return Poll::Ready(Some(Ok(Frame::data(data.clone()))));
                }
            }
        }
        if let Some(status) = &record.failed {
            this.done = true;
            return Poll::Ready(Some(Err(status.clone())));
        }
        let Some(source) = record.source.as_mut() else {
            this.done = true;
            return Poll::Ready(record.trailers.clone().map(|t| Ok(Frame::trailers(t))));
        };
        {
            let mut waiting = lock(&this.tape.waiters.0);
            if !waiting.iter().any(|w| w.will_wake(cx.waker())) {
                waiting.push(cx.waker().clone());
            }
        }
        let waker = Waker::from(this.tape.waiters.clone());
        let polled = Pin::new(source).poll_frame(&mut Context::from_waker(&waker));
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                record.source = None;
                this.done = true;
                this.tape.waiters.wake_by_ref();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(status))) => {
                record.source = None;
                record.failed = Some(status.clone());
                this.done = true;
                this.tape.waiters.wake_by_ref();
                Poll::Ready(Some(Err(status)))
            }
            Poll::Ready(Some(Ok(frame))) => {
                let frame = match frame.into_data() {
                    Ok(data) => {
                        if record.owner.is_none() {
                            record.len += data.len();
                            if record.len > record.limit {
                                // Outgrown: the RPC is this attempt's from now on.
                                record.owner = Some(this.attempt);
                                record.data = Vec::new();
                            } else {
                                record.data.push(data.clone());
                                this.pos = record.data.len();
                            }
                        }
                        Frame::data(data)
                    }
                    Err(frame) => {
                        if let Some(trailers) = frame.trailers_ref() {
                            record.trailers = Some(trailers.clone());
                            record.source = None;
                            this.done = true;
                        }
                        frame
                    }
                };
                // Other attempts waiting for this frame replay it.
                this.tape.waiters.wake_by_ref();
                Poll::Ready(Some(Ok(frame)))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        if self.done {
            return true;
        }
        let record = lock(&self.tape.inner);
        record.source.is_none()
            && record.failed.is_none()
            && record.trailers.is_none()
            && record.owner.is_none()
            && self.pos >= record.data.len()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    fn streamed() -> (mpsc::Sender<Result<Frame<Bytes>, Status>>, Body) {
        let (tx, rx) = mpsc::channel(16);
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        (tx, Body::new(http_body_util::StreamBody::new(stream)))
    }

    async fn next(body: &mut Body) -> Option<Bytes> {
        body.frame().await?.ok()?.into_data().ok()
    }

    #[tokio::test]
    async fn a_retry_replays_what_was_sent_then_reads_on() {
        let (tx, source) = streamed();
        let tape = Tape::new(vec![Bytes::from_static(b"a")], 1, source, 100);
        let mut first = tape.body(0);
        assert_eq!(next(&mut first).await.as_deref(), Some(&b"a"[..]));
        tx.send(Ok(Frame::data(Bytes::from_static(b"b"))))
            .await
            .unwrap();
        assert_eq!(next(&mut first).await.as_deref(), Some(&b"b"[..]));
        drop(first);

        let mut second = tape.body(1);
        assert_eq!(next(&mut second).await.as_deref(), Some(&b"a"[..]));
        assert_eq!(next(&mut second).await.as_deref(), Some(&b"b"[..]));
        tx.send(Ok(Frame::data(Bytes::from_static(b"c"))))
            .await
            .unwrap();
        drop(tx);
        assert_eq!(next(&mut second).await.as_deref(), Some(&b"c"[..]));
        assert!(second.frame().await.is_none());
        assert!(tape.replayable());
        let mut third = tape.body(2);
        let mut all = Vec::new();
        while let Some(data) = next(&mut third).await {
            all.extend_from_slice(&data);
        }
        assert_eq!(all, b"abc");
    }

    #[tokio::test]
    async fn outgrowing_the_limit_commits_to_the_attempt_that_read_it() {
        let (tx, source) = streamed();
        let tape = Tape::new(Vec::new(), 0, source, 4);
        let mut first = tape.body(0);
        tx.send(Ok(Frame::data(Bytes::from_static(b"abc"))))
            .await
            .unwrap();
        assert!(next(&mut first).await.is_some());
        assert!(tape.replayable());
        tx.send(Ok(Frame::data(Bytes::from_static(b"de"))))
            .await
            .unwrap();
        assert!(next(&mut first).await.is_some());
        assert!(!tape.replayable(), "5 bytes outgrow a limit of 4");
        let mut second = tape.body(1);
        let error = second.frame().await.unwrap().unwrap_err();
        assert_eq!(error.code(), tonic::Code::Cancelled);
    }

    #[tokio::test]
    async fn a_committed_rpc_keeps_no_record() {
        let (tx, source) = streamed();
        let tape = Tape::new(vec![Bytes::from_static(b"a")], 1, source, 100);
        let mut first = tape.body(0);
        assert!(next(&mut first).await.is_some());
        tape.commit(0);
        assert!(!tape.replayable());
        tx.send(Ok(Frame::data(Bytes::from_static(b"b"))))
            .await
            .unwrap();
        assert_eq!(next(&mut first).await.as_deref(), Some(&b"b"[..]));
        assert!(lock(&tape.inner).data.is_empty());
    }

    #[tokio::test]
    async fn two_attempts_reading_at_once_both_get_every_frame() {
        let (tx, source) = streamed();
        let tape = Tape::new(Vec::new(), 0, source, 100);
        let (mut a, mut b) = (tape.body(0), tape.body(1));
        let reader_a = tokio::spawn(async move { next(&mut a).await });
        let reader_b = tokio::spawn(async move { next(&mut b).await });
        tokio::task::yield_now().await;
        tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
            .await
            .unwrap();
        assert_eq!(reader_a.await.unwrap().as_deref(), Some(&b"x"[..]));
        assert_eq!(reader_b.await.unwrap().as_deref(), Some(&b"x"[..]));
    }
}
