//! One resolution followed by several consumers: [`Resolution::share`].
//!
//! A program that keeps one balancer per thread (switchboard's `PerThread` clients, each
//! thread's connections its own) needs each of them fed the same instance set, from one etcd
//! watch rather than one per thread. [`SharedResolution::subscribe`] gives a new
//! [`Resolution`] that starts with a [`Update::Reset`] of the set as it is now (once the
//! resolver has listed it) and then gets every update the resolver sends, in order; its status
//! is the resolver's own.
//!
//! A task applies each update to a copy of the set and passes it to every subscriber. The
//! subscribers keep it alive: it stops, and with it the resolver, once the
//! [`SharedResolution`] and every subscription are dropped.

use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::instance::{InstanceSet, Update};
use crate::resolution::{CAPACITY, Resolution, ResolverStatus};

/// A resolution any number of consumers follow, from [`Resolution::share`]: each
/// [`SharedResolution::subscribe`] gives a [`Resolution`] that starts with a reset to the set as
/// it is now (once the resolver has listed it) and then gets every update, in order, with the
/// resolver's own status. One task applies each update to a copy of the set and passes it on;
/// it stops, and the resolver with it, once this and every subscription are dropped.
#[derive(Clone, Debug)]
pub struct SharedResolution {
    inner: Arc<Shared>,
}

#[derive(Debug)]
pub(crate) struct Shared {
    state: Arc<Mutex<State>>,
    status: watch::Receiver<ResolverStatus>,
    task: JoinHandle<()>,
}

#[derive(Debug, Default)]
struct State {
    /// The set as the resolver's updates so far make it.
    set: InstanceSet,
    /// Whether the resolver's first listing has come.
    listed: bool,
    subscribers: Vec<mpsc::Sender<Update>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Resolution {
    /// Shares this resolution among any number of consumers: see [`SharedResolution`]. Must be
    /// called within a tokio runtime, where its task runs.
    pub fn share(mut self) -> SharedResolution {
        let state = Arc::new(Mutex::new(State::default()));
        let status = self.status_watch();
        let feed = state.clone();
        let task = tokio::spawn(async move {
            while let Some(update) = self.next_update().await {
                let subscribers = {
                    let mut state = feed.lock().unwrap_or_else(PoisonError::into_inner);
                    state.listed |= matches!(update, Update::Reset(_));
                    state.set.apply(update.clone());
                    state.subscribers.retain(|s| !s.is_closed());
                    state.subscribers.clone()
                };
                // Outside the lock: a subscriber that falls behind holds up the others, never
                // a new subscription. One that subscribes now got this update in its reset.
                for subscriber in subscribers {
                    let _ = subscriber.send(update.clone()).await;
                }
            }
            // The resolver stopped for good: the subscribers' streams end too.
            feed.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .subscribers
                .clear();
        });
        SharedResolution {
            inner: Arc::new(Shared {
                state,
                status,
                task,
            }),
        }
    }
}

impl SharedResolution {
    /// A new resolution of the same instances: a reset to the set as it is now (if the
    /// resolver has listed it), then every later update.
    pub fn subscribe(&self) -> Resolution {
        let (tx, rx) = mpsc::channel(CAPACITY);
        let mut state = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if state.listed {
            let now = state.set.iter().cloned().collect();
            // A new channel has room for its first update.
            let _ = tx.try_send(Update::Reset(now));
        }
        state.subscribers.push(tx);
        drop(state);
        Resolution::fed(rx, self.inner.status.clone(), self.inner.clone())
    }

    /// How many subscriptions are live.
    pub fn subscribers(&self) -> usize {
        let state = self
            .inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        state.subscribers.iter().filter(|s| !s.is_closed()).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::Instance;

    async fn next(r: &mut Resolution) -> Update {
        tokio::time::timeout(std::time::Duration::from_secs(5), r.next_update())
            .await
            .expect("an update within 5 s")
            .expect("the stream goes on")
    }

    #[tokio::test]
    async fn every_subscriber_starts_from_the_set_and_follows_every_update() {
        let (publisher, resolution) = Resolution::channel();
        let shared = resolution.share();
        // Subscribed before the first listing: the resolver's own reset comes first.
        let mut early = shared.subscribe();
        let a = Instance::new("a", "127.0.0.1:1");
        let b = Instance::new("b", "127.0.0.1:2");
        publisher
            .send(Update::Reset(vec![a.clone()]))
            .await
            .expect("open");
        publisher.send(Update::Add(b.clone())).await.expect("open");
        assert_eq!(next(&mut early).await, Update::Reset(vec![a.clone()]));
        assert_eq!(next(&mut early).await, Update::Add(b.clone()));
        // Subscribed later: a reset to the set as it is now, then what follows.
        let mut late = shared.subscribe();
        assert_eq!(next(&mut late).await, Update::Reset(vec![a, b]));
        publisher
            .send(Update::Remove("a".into()))
            .await
            .expect("open");
        assert_eq!(next(&mut early).await, Update::Remove("a".into()));
        assert_eq!(next(&mut late).await, Update::Remove("a".into()));
        assert_eq!(shared.subscribers(), 2);
        publisher.update_status(|s| s.instances = 1);
        assert_eq!(late.status().instances, 1);

        // The subscriptions keep the resolver alive; once all are gone, it stops.
        drop((shared, early));
        assert!(!publisher.is_closed());
        drop(late);
        tokio::time::timeout(std::time::Duration::from_secs(5), publisher.closed())
            .await
            .expect("the resolver stopped");
    }
}
