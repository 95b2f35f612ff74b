//! What a resolver produces: instances, the updates that change a set of them, and the set itself.

use std::collections::BTreeMap;
use std::collections::btree_map::Entry;

/// One addressable instance of a service, as decoded from its registration.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Instance {
    /// Identity of the instance: the etcd key of its registration (or, when one registration
    /// describes several endpoints, that key followed by `#` and the endpoint's id).
    pub key: String,
    /// `host:port` to connect to. The host is an IPv4 address, a bracketed IPv6 address or a
    /// DNS name; the port is never 0.
    pub addr: String,
    /// Relative weight for weighted pickers, from the `weight` metadata entry. Defaults to 1.
    pub weight: u32,
    /// Free-form metadata carried by the registration (version, zone, …), flattened to strings.
    pub metadata: BTreeMap<String, String>,
}

impl Instance {
    /// An instance with weight 1 and no metadata.
    pub fn new(key: impl Into<String>, addr: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            addr: addr.into(),
            weight: 1,
            metadata: BTreeMap::new(),
        }
    }

    /// Sets the metadata and derives the weight from its `weight` entry (1 when absent or not a
    /// positive integer).
    pub fn with_metadata(mut self, metadata: BTreeMap<String, String>) -> Self {
        self.weight = metadata
            .get("weight")
            .and_then(|w| w.trim().parse::<u32>().ok())
            .filter(|w| *w > 0)
            .unwrap_or(1);
        self.metadata = metadata;
        self
    }
}

/// A change to an instance set, as a resolver emits it.
///
/// The first listing and every re-listing (after a compaction, say) is a [`Update::Reset`]; the
/// consumer diffs it against what it holds, so instances present before and after keep their
/// connections. [`InstanceSet::apply`] does that diff.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// The complete set of instances: everything not in it is gone.
    Reset(Vec<Instance>),
    /// An instance appeared, or the instance with this key changed (its address, say).
    Add(Instance),
    /// The instance with this key is gone.
    Remove(String),
}

/// What applying an [`Update`] changed in an [`InstanceSet`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new key.
    Added(Instance),
    /// A known key whose instance changed (address, weight or metadata).
    Replaced {
        /// What the key described before.
        old: Instance,
        /// What it describes now.
        new: Instance,
    },
    /// A key that is gone, with the instance it described.
    Removed(Instance),
}

/// The current instances of a service, keyed by [`Instance::key`], kept up to date by applying
/// [`Update`]s.
///
/// # Examples
///
/// ```
/// use switchboard_resolver::{Change, Instance, InstanceSet, Update};
///
/// let mut set = InstanceSet::default();
/// set.apply(Update::Reset(vec![Instance::new("svc/1", "10.0.0.1:80"), Instance::new("svc/2", "10.0.0.2:80")]));
/// // A re-listing is a diff: only what changed is reported.
/// let changes = set.apply(Update::Reset(vec![Instance::new("svc/2", "10.0.0.2:80")]));
/// assert_eq!(changes, vec![Change::Removed(Instance::new("svc/1", "10.0.0.1:80"))]);
/// assert_eq!(set.len(), 1);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InstanceSet {
    instances: BTreeMap<String, Instance>,
}

impl InstanceSet {
    /// Applies `update` and returns what changed, in key order for a reset. Applying an update
    /// that changes nothing returns nothing.
    pub fn apply(&mut self, update: Update) -> Vec<Change> {
        match update {
            Update::Add(instance) => self.insert(instance).into_iter().collect(),
            Update::Remove(key) => self
                .instances
                .remove(&key)
                .map(Change::Removed)
                .into_iter()
                .collect(),
            Update::Reset(instances) => {
                let mut next: BTreeMap<String, Instance> = BTreeMap::new();
                for instance in instances {
                    next.insert(instance.key.clone(), instance);
                }
                let mut changes = Vec::new();
                let old = std::mem::take(&mut self.instances);
                for (key, instance) in old {
                    if !next.contains_key(&key) {
                        changes.push(Change::Removed(instance));
                    } else {
                        self.instances.insert(key, instance);
                    }
                }
                for instance in next.into_values() {
                    changes.extend(self.insert(instance));
                }
                changes
            }
        }
    }

    fn insert(&mut self, instance: Instance) -> Option<Change> {
        match self.instances.entry(instance.key.clone()) {
            Entry::Vacant(slot) => {
                slot.insert(instance.clone());
                Some(Change::Added(instance))
            }
            Entry::Occupied(mut slot) if *slot.get() != instance => {
                let old = slot.insert(instance.clone());
                Some(Change::Replaced { old, new: instance })
            }
            Entry::Occupied(_) => None,
        }
    }

    /// The instance with this key.
    pub fn get(&self, key: &str) -> Option<&Instance> {
        self.instances.get(key)
    }

    /// Number of instances.
    pub fn len(&self) -> usize {
        self.instances.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// The instances in key order.
    pub fn iter(&self) -> impl Iterator<Item = &Instance> {
        self.instances.values()
    }

    /// `(key, addr)` pairs in key order: the form the tests and the CLI compare.
    pub fn pairs(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|i| (i.key.clone(), i.addr.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inst(key: &str, addr: &str) -> Instance {
        Instance::new(key, addr)
    }

    #[test]
    fn reset_is_a_diff() {
        let mut set = InstanceSet::default();
        let first = set.apply(Update::Reset(vec![inst("a", "h:1"), inst("b", "h:2")]));
        assert_eq!(first.len(), 2);
        let changes = set.apply(Update::Reset(vec![
            inst("b", "h:2"),
            inst("c", "h:3"),
            inst("a", "h:9"),
        ]));
        assert_eq!(
            changes,
            vec![
                Change::Replaced {
                    old: inst("a", "h:1"),
                    new: inst("a", "h:9")
                },
                Change::Added(inst("c", "h:3")),
            ]
        );
        assert!(
            set.apply(Update::Reset(set.iter().cloned().collect()))
                .is_empty()
        );
    }

    #[test]
    fn add_and_remove() {
        let mut set = InstanceSet::default();
        assert_eq!(
            set.apply(Update::Add(inst("a", "h:1"))),
            vec![Change::Added(inst("a", "h:1"))]
        );
        assert!(set.apply(Update::Add(inst("a", "h:1"))).is_empty());
        assert!(set.apply(Update::Remove("zz".into())).is_empty());
        assert_eq!(
            set.apply(Update::Remove("a".into())),
            vec![Change::Removed(inst("a", "h:1"))]
        );
        assert!(set.is_empty());
    }

    #[test]
    fn weight_comes_from_metadata() {
        let meta = |w: &str| BTreeMap::from([("weight".to_string(), w.to_string())]);
        assert_eq!(inst("a", "h:1").with_metadata(meta("7")).weight, 7);
        assert_eq!(inst("a", "h:1").with_metadata(meta("0")).weight, 1);
        assert_eq!(inst("a", "h:1").with_metadata(meta("x")).weight, 1);
    }
}
