//! Which instances a client connects to and prefers: random subsetting (gRFC A68) and zone
//! locality.
//!
//! **Subsetting.** With a subset size, the core connects to at most that many instances: those
//! with the lowest rendezvous scores for this client's seed (see [`crate::subset`]), kept
//! incrementally as instances come and go — an instance that joins enters only if it scores
//! below the highest member, evicting that one; a member that leaves is replaced by the best
//! non-member; nothing else moves. Each client draws its seed once at random, so the subsets
//! spread evenly across clients.
//!
//! **Locality.** With a zone, the picker uses only the instances whose registration names that
//! zone (metadata `zone`, as kratos and go-micro registrations carry it, or
//! `topology.kubernetes.io/zone`) while enough of them can take RPCs — at least one, and at least
//! [`Locality::min_healthy_percent`] % of the zone's instances. Below that it spills over to
//! every instance, so a zone that is too small or failing never strands the traffic.

use std::collections::BTreeSet;

use switchboard_resolver::Instance;

use crate::subset::score;

/// Locality preference; see [`Builder::locality`](crate::Builder::locality).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Locality {
    /// The client's zone: instances registered with the same `zone` are preferred.
    pub zone: String,
    /// The share of the zone's instances, in %, that must be pickable for RPCs to stay in
    /// the zone: 70 (Envoy's default panic threshold). One pickable instance is always needed.
    pub min_healthy_percent: u32,
}

impl Locality {
    /// Prefer `zone`, spilling over below 70 % of its instances pickable.
    pub fn zone(zone: impl Into<String>) -> Self {
        Self {
            zone: zone.into(),
            min_healthy_percent: 70,
        }
    }

    /// Whether RPCs stay in the zone with `pickable` of its `total` instances pickable.
    pub(crate) fn stays_local(&self, pickable: usize, total: usize) -> bool {
        pickable > 0 && pickable * 100 >= total * self.min_healthy_percent.min(100) as usize
    }
}

/// The zone a registration names: `zone`, else `topology.kubernetes.io/zone`.
pub(crate) fn zone(instance: &Instance) -> Option<String> {
    ["zone", "topology.kubernetes.io/zone"]
        .iter()
        .find_map(|k| instance.metadata.get(*k))
        .filter(|z| !z.is_empty())
        .cloned()
}

/// The instances a client connects to when subsetting, by (score, key).
#[derive(Debug)]
pub(crate) struct Subset {
    size: usize,
    seed: u64,
    members: BTreeSet<(u64, String)>,
    others: BTreeSet<(u64, String)>,
}

impl Subset {
    pub(crate) fn new(size: usize, seed: u64) -> Self {
        Self {
            size,
            seed,
            members: BTreeSet::new(),
            others: BTreeSet::new(),
        }
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.members
            .contains(&(score(key, self.seed), key.to_owned()))
    }

    /// A new instance.
    pub(crate) fn insert(&mut self, key: &str) {
        let entry = (score(key, self.seed), key.to_owned());
        if self.members.len() < self.size {
            self.members.insert(entry);
            return;
        }
        match self.members.last() {
            Some(last) if entry < *last => {
                if let Some(evicted) = self.members.pop_last() {
                    self.others.insert(evicted);
                }
                self.members.insert(entry);
            }
            _ => {
                self.others.insert(entry);
            }
        }
    }

    /// An instance left: if it was a member, the best of the others takes its place.
    pub(crate) fn remove(&mut self, key: &str) {
        let entry = (score(key, self.seed), key.to_owned());
        if !self.members.remove(&entry) {
            self.others.remove(&entry);
            return;
        }
        if let Some(next) = self.others.pop_first() {
            self.members.insert(next);
        }
    }

    /// The members' keys.
    pub(crate) fn members(&self) -> impl Iterator<Item = &str> {
        self.members.iter().map(|(_, k)| k.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subset::random_subset;

    #[test]
    fn the_incremental_subset_is_random_subset_of_the_current_instances() {
        let mut subset = Subset::new(5, 42);
        let mut live: Vec<String> = Vec::new();
        // Join 40, then leave every third, then rejoin some: after each step the members are
        // exactly `random_subset` of the live keys.
        let steps = (0..40)
            .map(|i| (true, i))
            .chain((0..40).step_by(3).map(|i| (false, i)))
            .chain((0..40).step_by(6).map(|i| (true, i)));
        for (join, i) in steps {
            let key = format!("svc/{i}");
            if join {
                subset.insert(&key);
                live.push(key);
            } else {
                subset.remove(&key);
                live.retain(|k| *k != key);
            }
            let keys: Vec<&str> = live.iter().map(String::as_str).collect();
            let mut want: Vec<&str> = random_subset(&keys, 42, 5)
                .into_iter()
                .map(|i| keys[i])
                .collect();
            want.sort();
            let mut got: Vec<&str> = subset.members.iter().map(|(_, k)| k.as_str()).collect();
            got.sort();
            assert_eq!(got, want);
        }
    }

    #[test]
    fn locality_stays_while_enough_of_the_zone_is_pickable() {
        let l = Locality::zone("a");
        assert!(l.stays_local(7, 10));
        assert!(!l.stays_local(6, 10));
        assert!(!l.stays_local(0, 0), "no local instance: spill over");
        assert!(l.stays_local(1, 1));
    }
}
