//! [`Resolution`]: the stream of updates a resolver produces, and its status.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::SystemTime;

use futures_core::Stream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::instance::Update;

/// How many updates a resolution buffers before its producer waits for the consumer.
pub(crate) const CAPACITY: usize = 1024;

/// Something that can start resolving: each call gives an independent [`Resolution`].
pub trait Resolve {
    /// Starts resolving. Resolvers that run a background task (etcd, the in-memory registry)
    /// must be called from within a tokio runtime.
    fn resolve(&self) -> Resolution;
}

/// What a resolver reports about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResolverStatus {
    /// The resolver has a live watch (etcd) or needs none (static, in-memory).
    pub connected: bool,
    /// The etcd member currently in use, if any.
    pub endpoint: Option<String>,
    /// The last error, kept after recovery so operators can see what happened.
    pub last_error: Option<String>,
    /// When `last_error` happened.
    pub last_error_at: Option<SystemTime>,
    /// The store revision the current instance set reflects (0 before the first listing).
    pub revision: i64,
    /// How many instances the resolver currently holds.
    pub instances: usize,
    /// How many full listings (first one included) were emitted as [`Update::Reset`].
    pub listings: u64,
    /// Values skipped because they did not decode.
    pub skipped: u64,
    /// How many range requests the last listing took: etcd lists a big prefix in pages of
    /// 1 000 keys, all read at the revision of the first.
    pub listing_pages: u64,
}

/// A live resolution: a [`Stream`] of [`Update`]s (the first is always a [`Update::Reset`])
/// and the resolver's [`ResolverStatus`].
///
/// The stream does not end while the resolver runs: errors are retried inside and reported
/// through [`Resolution::status`], never by emptying the instance set. Dropping the
/// resolution stops the resolver.
#[derive(Debug)]
pub struct Resolution {
    updates: mpsc::Receiver<Update>,
    status: watch::Receiver<ResolverStatus>,
    task: Option<JoinHandle<()>>,
    _keep: Option<Publisher>,
    /// The shared resolution this one subscribes to, kept alive by it.
    _shared: Option<std::sync::Arc<crate::shared::Shared>>,
}

impl Resolution {
    /// A resolution fed by hand: the [`Publisher`] sends updates and status. This is how a
    /// custom resolver produces a `Resolution`.
    pub fn channel() -> (Publisher, Resolution) {
        let (tx, rx) = mpsc::channel(CAPACITY);
        let (status_tx, status_rx) = watch::channel(ResolverStatus::default());
        (
            Publisher {
                updates: tx,
                status: status_tx,
            },
            Resolution {
                updates: rx,
                status: status_rx,
                task: None,
                _keep: None,
                _shared: None,
            },
        )
    }

    /// A subscription to a shared resolution: its updates, the resolver's status, and the
    /// shared state it keeps alive.
    pub(crate) fn fed(
        updates: mpsc::Receiver<Update>,
        status: watch::Receiver<ResolverStatus>,
        shared: std::sync::Arc<crate::shared::Shared>,
    ) -> Self {
        Self {
            updates,
            status,
            task: None,
            _keep: None,
            _shared: Some(shared),
        }
    }

    /// Ties a background task to this resolution: it is aborted when the resolution is dropped.
    pub(crate) fn with_task(mut self, task: JoinHandle<()>) -> Self {
        self.task = Some(task);
        self
    }

    /// Keeps a publisher alive inside the resolution so that the stream never ends.
    pub(crate) fn keeping(mut self, publisher: Publisher) -> Self {
        self._keep = Some(publisher);
        self
    }

    /// The next update, or `None` once the resolver has stopped for good.
    pub async fn next_update(&mut self) -> Option<Update> {
        self.updates.recv().await
    }

    /// The next update if one is already buffered.
    pub fn try_next_update(&mut self) -> Option<Update> {
        self.updates.try_recv().ok()
    }

    /// The resolver's current status.
    pub fn status(&self) -> ResolverStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change: `changed().await` to wait for one.
    pub fn status_watch(&self) -> watch::Receiver<ResolverStatus> {
        self.status.clone()
    }
}

impl Stream for Resolution {
    type Item = Update;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Update>> {
        self.updates.poll_recv(cx)
    }
}

impl Drop for Resolution {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The producing side of a [`Resolution`].
#[derive(Debug)]
pub struct Publisher {
    updates: mpsc::Sender<Update>,
    status: watch::Sender<ResolverStatus>,
}

impl Publisher {
    /// Sends an update, waiting while the consumer's buffer is full. `Err` means the
    /// resolution was dropped and the producer should stop.
    pub async fn send(&self, update: Update) -> Result<(), Closed> {
        self.updates.send(update).await.map_err(|_| Closed)
    }

    /// Sends an update if there is room in the buffer.
    pub(crate) fn try_send(&self, update: Update) -> Result<(), Closed> {
        self.updates.try_send(update).map_err(|_| Closed)
    }

    /// Changes the published status.
    pub fn update_status(&self, f: impl FnOnce(&mut ResolverStatus)) {
        self.status.send_modify(f);
    }

    /// Resolves once the resolution has been dropped.
    pub async fn closed(&self) {
        self.updates.closed().await
    }

    /// A future, independent of this publisher's borrow, that resolves once the resolution
    /// has been dropped.
    pub fn closed_owned(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let updates = self.updates.clone();
        async move { updates.closed().await }
    }

    /// Whether the resolution has been dropped.
    pub fn is_closed(&self) -> bool {
        self.updates.is_closed()
    }
}

/// The [`Resolution`] was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the resolution was dropped")]
pub struct Closed;
