//! [`MemoryRegistry`]: an in-process registry with etcd's watch semantics, for embedded use and
//! tests when no etcd is around.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;
use tracing::{Instrument, debug, info_span};

use crate::instance::{Instance, InstanceSet, Update};
use crate::resolution::{Resolution, Resolve};

/// How many changes a slow watcher may fall behind before it re-lists.
const HISTORY: usize = 4096;

/// An in-memory registry of instances keyed like etcd (`prefix/id`).
///
/// Watchers see what an etcd watcher sees: a listing ([`Update::Reset`]) and then every change
/// after it, none lost between the two; a watcher that falls more than a few thousand changes
/// behind re-lists, as an etcd watcher does after a compaction. Clones share the registry.
///
/// # Examples
///
/// ```
/// use switchboard_resolver::{Instance, MemoryRegistry, Update};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let registry = MemoryRegistry::new();
/// registry.put(Instance::new("user.rpc/1", "127.0.0.1:9001"));
/// let mut resolution = registry.resolver("user.rpc").resolve_now();
/// assert!(matches!(resolution.next_update().await, Some(Update::Reset(v)) if v.len() == 1));
/// registry.delete("user.rpc/1");
/// assert_eq!(resolution.next_update().await, Some(Update::Remove("user.rpc/1".into())));
/// # });
/// ```
#[derive(Clone, Debug)]
pub struct MemoryRegistry {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    entries: BTreeMap<String, Instance>,
    revision: i64,
    changes: broadcast::Sender<(i64, Update)>,
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                entries: BTreeMap::new(),
                revision: 1,
                changes: broadcast::channel(HISTORY).0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves the map consistent: every write is one insert
        // or remove. Keep serving rather than poisoning every later caller.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers (or replaces) an instance under its key; returns the new revision.
    pub fn put(&self, instance: Instance) -> i64 {
        let mut inner = self.lock();
        inner.revision += 1;
        let rev = inner.revision;
        inner.entries.insert(instance.key.clone(), instance.clone());
        let _ = inner.changes.send((rev, Update::Add(instance)));
        rev
    }

    /// Removes the instance with this key; returns the new revision, or `None` if it was absent.
    pub fn delete(&self, key: &str) -> Option<i64> {
        let mut inner = self.lock();
        inner.entries.remove(key)?;
        inner.revision += 1;
        let rev = inner.revision;
        let _ = inner.changes.send((rev, Update::Remove(key.to_string())));
        Some(rev)
    }

    /// The instances whose key starts with `prefix`, in key order.
    pub fn list(&self, prefix: &str) -> Vec<Instance> {
        self.lock()
            .entries
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// A resolver for the instances under `prefix` (a `/` is appended when missing, as etcd
    /// resolvers do).
    pub fn resolver(&self, prefix: &str) -> MemoryResolver {
        MemoryResolver {
            registry: self.clone(),
            prefix: crate::etcd::normalize_prefix(prefix),
        }
    }
}

/// A resolver over one prefix of a [`MemoryRegistry`].
#[derive(Clone, Debug)]
pub struct MemoryResolver {
    registry: MemoryRegistry,
    prefix: String,
}

impl MemoryResolver {
    /// Same as [`Resolve::resolve`], without importing the trait.
    pub fn resolve_now(&self) -> Resolution {
        self.resolve()
    }

    fn snapshot(&self) -> (Vec<Instance>, i64, broadcast::Receiver<(i64, Update)>) {
        let inner = self.registry.lock();
        let listing = inner
            .entries
            .range(self.prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&self.prefix))
            .map(|(_, v)| v.clone())
            .collect();
        (listing, inner.revision, inner.changes.subscribe())
    }
}

impl Resolve for MemoryResolver {
    fn resolve(&self) -> Resolution {
        let (publisher, resolution) = Resolution::channel();
        let this = self.clone();
        let span = info_span!("memory_resolver", prefix = %self.prefix);
        let task = tokio::spawn(
            async move {
                'listing: loop {
                    // Listing and subscribing under one lock: no change falls between them.
                    let (listing, revision, mut changes) = this.snapshot();
                    let mut held = InstanceSet::default();
                    held.apply(Update::Reset(listing.clone()));
                    publisher.update_status(|s| {
                        s.connected = true;
                        s.revision = revision;
                        s.instances = held.len();
                        s.listings += 1;
                    });
                    if publisher.send(Update::Reset(listing)).await.is_err() {
                        return;
                    }
                    loop {
                        let (rev, update) = match changes.recv().await {
                            Ok(change) => change,
                            Err(broadcast::error::RecvError::Lagged(n)) => {
                                debug!(missed = n, "fell behind the registry; re-listing");
                                continue 'listing;
                            }
                            Err(broadcast::error::RecvError::Closed) => return,
                        };
                        let key = match &update {
                            Update::Add(i) => &i.key,
                            Update::Remove(k) => k,
                            Update::Reset(_) => continue,
                        };
                        if !key.starts_with(&this.prefix) || held.apply(update.clone()).is_empty() {
                            continue;
                        }
                        publisher.update_status(|s| {
                            s.revision = rev;
                            s.instances = held.len();
                        });
                        if publisher.send(update).await.is_err() {
                            return;
                        }
                    }
                }
            }
            .instrument(span),
        );
        resolution.with_task(task)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(key: &str, port: u16) -> Instance {
        Instance::new(key, format!("127.0.0.1:{port}"))
    }

    #[tokio::test]
    async fn lists_then_follows_its_prefix_only() {
        let registry = MemoryRegistry::new();
        registry.put(inst("svc/a", 1));
        registry.put(inst("svc2/a", 2));
        let mut resolution = registry.resolver("svc").resolve_now();
        assert_eq!(
            resolution.next_update().await,
            Some(Update::Reset(vec![inst("svc/a", 1)]))
        );
        registry.put(inst("svc2/b", 3));
        registry.put(inst("svc/b", 4));
        registry.put(inst("svc/b", 4));
        registry.put(inst("svc/b", 5));
        assert_eq!(registry.delete("svc/zz"), None);
        registry.delete("svc/a");
        assert_eq!(
            resolution.next_update().await,
            Some(Update::Add(inst("svc/b", 4)))
        );
        assert_eq!(
            resolution.next_update().await,
            Some(Update::Add(inst("svc/b", 5)))
        );
        assert_eq!(
            resolution.next_update().await,
            Some(Update::Remove("svc/a".into()))
        );
        let status = resolution.status();
        assert_eq!((status.instances, status.listings), (1, 1));
        assert!(resolution.try_next_update().is_none());
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_re_lists() {
        let registry = MemoryRegistry::new();
        let mut resolution = registry.resolver("svc").resolve_now();
        assert_eq!(resolution.next_update().await, Some(Update::Reset(vec![])));
        // Far more changes than the history holds, while the consumer does not read.
        for i in 0..(HISTORY as u16 * 3) {
            registry.put(inst(&format!("svc/{}", i % 50), 1000 + i));
        }
        let mut set = InstanceSet::default();
        while set.pairs()
            != registry
                .list("svc/")
                .iter()
                .map(|i| (i.key.clone(), i.addr.clone()))
                .collect::<Vec<_>>()
        {
            let update = resolution
                .next_update()
                .await
                .expect("the resolution stays open");
            set.apply(update);
        }
        assert!(
            resolution.status().listings >= 2,
            "{:?}",
            resolution.status()
        );
    }
}
