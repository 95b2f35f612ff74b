//! `ring_hash`: consistent hashing on a ring, so that a request key keeps going to the same
//! endpoint while the set of endpoints changes around it.
//!
//! This is gRFC A42's `ring_hash` (grpc-go `balancer/ringhash/ring.go`, itself Envoy's
//! `RingHashLoadBalancer`), built over the READY endpoints. Each endpoint is placed on a ring of
//! 64-bit hashes at many points; a request hash is served by the first point at or after it,
//! wrapping round to the first point of the ring (Karger et al., "Consistent Hashing and Random
//! Trees", STOC 1997).
//!
//! - **Identity.** An endpoint is placed by a stable key (the instance key, which keeps its
//!   place when the endpoint's address or its index in the list changes) and a weight (0 counts
//!   as 1). Keys should be distinct.
//! - **Ring size.** Weights are normalised to sum to 1; let `r` be the smallest. The ring gets
//!   `scale = min(ceil(r × min_ring_size) / r, max_ring_size)` entries in all (rounded up), so
//!   that the lightest endpoint gets a whole number of entries unless the ring would outgrow
//!   `max_ring_size`; the size is then between `min_ring_size` and `max_ring_size`. Endpoints
//!   are taken in key order and each gets its share of `scale`, the fractions carried over to
//!   the next one, as in A42. The arithmetic here is exact (integers,
//!   not floating point), so equal weights get exactly equal numbers of entries.
//! - **Entries.** Entry `i` of the endpoint with key `k` sits at the XXH64 hash (seed 0) of the
//!   string `"{k}_{i}"`, A42's hash, so entries do not depend on the other endpoints, and a
//!   grpc-go client given the same keys and weights builds the same ring (but for its
//!   floating-point rounding of the shares). Entries are sorted by hash, and a pick is a binary
//!   search: `O(log ring_size)`.
//! - **Request hashes.** [`hash_key`] hashes a request key (a header value, a user ID) with the
//!   same XXH64, as A76's `request_hash_header` does. [`Picker::pick`], which has no request key,
//!   uses a random hash, as A42 does for requests without one.
//!
//! **Churn.** When an endpoint leaves, only the keys it served move, each to the next entry on the
//! ring, which spreads them over many endpoints; the others stay put, provided every remaining
//! endpoint keeps its number of entries. With `n` endpoints about `1/n` of the keys move, where
//! `hash % n` would move almost all of them. When it comes back, the same keys return. With equal
//! weights the numbers of entries hold while `ceil(min_ring_size / n)` does not change and
//! `max_ring_size` does not cap the ring: the default 1024 gives 11 entries each to 99, 100 or
//! 101 endpoints, but 4000 gives 40 each to 100 and 41 each to 99, whose extra entries take keys
//! from every endpoint (3% of the keys move instead of 1%), and a capped ring rounds the shares
//! anew. The `policy_figures` example measures both.
//!
//! Unlike A42, the ring holds only READY endpoints (the balancer rebuilds the picker when one
//! leaves READY), so a key whose endpoint fails moves to the next endpoint on the ring at once,
//! and comes back when that endpoint is READY again.
//!
//! # Examples
//!
//! ```
//! use switchboard_balancer::picker::Pick;
//! use switchboard_balancer::picker::ring_hash::{
//!     DEFAULT_MAX_RING_SIZE, DEFAULT_MIN_RING_SIZE, RingHash, hash_key,
//! };
//!
//! let instances = vec!["user.rpc/1", "user.rpc/2", "user.rpc/3"];
//! let ring = RingHash::new(
//!     instances,
//!     7,
//!     |key| (*key, 1),
//!     DEFAULT_MIN_RING_SIZE,
//!     DEFAULT_MAX_RING_SIZE,
//! );
//! let Pick::Ready(first) = ring.pick_hash(hash_key(b"alice")) else { unreachable!() };
//! // The same key always lands on the same instance.
//! for _ in 0..10 {
//!     assert!(matches!(ring.pick_key(b"alice"), Pick::Ready(k) if k == first));
//! }
//! ```

use std::fmt::Write as _;

use xxhash_rust::xxh64::xxh64;

use super::rng::AtomicSplitMix;
use super::{Pick, Picker};

/// The default smallest ring: A42's `min_ring_size` default.
pub const DEFAULT_MIN_RING_SIZE: usize = 1024;

/// The default largest ring: A42's `max_ring_size` default, and gRPC's default client-side cap.
pub const DEFAULT_MAX_RING_SIZE: usize = 4096;

/// The largest ring size accepted (8M, as in A42 and Envoy); larger sizes are treated as this.
pub const RING_SIZE_CAP: usize = 8_388_608;

/// XXH64 with seed 0 of `key`: the hash of a request key for [`RingHash::pick_hash`], and the hash
/// that places the ring's entries.
pub fn hash_key(key: &[u8]) -> u64 {
    xxh64(key, 0)
}

/// Consistent hashing over the READY endpoints; see the [module docs](self).
#[derive(Debug)]
pub struct RingHash<T> {
    ready: Vec<T>,
    /// The ring: entry hashes in ascending order.
    hashes: Box<[u64]>,
    /// The index in `ready` of each entry's endpoint, in the order of `hashes`.
    owners: Box<[usize]>,
    /// The source of hashes for picks without a request key.
    rng: AtomicSplitMix,
}

impl<T> RingHash<T> {
    /// Builds the ring over `ready`. `identity` gives each endpoint's stable key (the instance
    /// key, not its address or index) and weight (0 counts as 1). The ring has between
    /// `min_ring_size` and `max_ring_size` entries (see the [module docs](self)): both are
    /// clamped to `1..=`[`RING_SIZE_CAP`], and `min_ring_size` to at most `max_ring_size`; A42's
    /// defaults are [`DEFAULT_MIN_RING_SIZE`] and [`DEFAULT_MAX_RING_SIZE`]. `seed` fixes the
    /// random hashes of [`Picker::pick`].
    pub fn new(
        ready: Vec<T>,
        seed: u64,
        identity: impl Fn(&T) -> (&str, u32),
        min_ring_size: usize,
        max_ring_size: usize,
    ) -> Self {
        let (min, max) = ring_bounds(min_ring_size, max_ring_size);
        let (hashes, owners) = build_ring(&ready, identity, min, max);
        Self {
            ready,
            hashes,
            owners,
            rng: AtomicSplitMix::new(seed),
        }
    }

    /// The READY endpoints this picker chooses from, in the order given.
    pub fn endpoints(&self) -> &[T] {
        &self.ready
    }

    /// The number of entries on the ring (0 without endpoints).
    pub fn ring_size(&self) -> usize {
        self.hashes.len()
    }

    /// The endpoint of the first ring entry whose hash is `hash` or more, wrapping round to the
    /// first entry; [`Pick::Queue`] without endpoints.
    #[inline]
    pub fn pick_hash(&self, hash: u64) -> Pick<'_, T> {
        let i = match self.hashes.partition_point(|&h| h < hash) {
            i if i == self.hashes.len() => 0,
            i => i,
        };
        self.owners
            .get(i)
            .and_then(|&owner| self.ready.get(owner))
            .map_or(Pick::Queue, Pick::Ready)
    }

    /// [`pick_hash`](Self::pick_hash) of [`hash_key`]`(key)`: the endpoint for a request key.
    #[inline]
    pub fn pick_key(&self, key: &[u8]) -> Pick<'_, T> {
        self.pick_hash(hash_key(key))
    }
}

impl<T: Send + Sync> Picker<T> for RingHash<T> {
    /// The endpoint for a random hash: a request without a key goes anywhere, in proportion to
    /// each endpoint's share of the ring.
    #[inline]
    fn pick(&self) -> Pick<'_, T> {
        self.pick_hash(self.rng.next_u64())
    }
}

/// `(min, max)` clamped to `1 <= min <= max <= RING_SIZE_CAP`.
fn ring_bounds(min_ring_size: usize, max_ring_size: usize) -> (usize, usize) {
    let max = max_ring_size.clamp(1, RING_SIZE_CAP);
    (min_ring_size.clamp(1, max), max)
}

/// The sorted ring hashes and the endpoint of each, for ring sizes `1 <= min <= max`.
fn build_ring<T>(
    ready: &[T],
    identity: impl Fn(&T) -> (&str, u32),
    min: usize,
    max: usize,
) -> (Box<[u64]>, Box<[usize]>) {
    // (key, weight, index in `ready`), in key order: the order in which A42 hands out entries.
    let mut endpoints: Vec<(&str, u128, usize)> = ready
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let (key, weight) = identity(e);
            (key, u128::from(weight.max(1)), i)
        })
        .collect();
    endpoints.sort_unstable_by(|a, b| (a.0, a.2).cmp(&(b.0, b.2)));
    let Some(min_weight) = endpoints.iter().map(|e| e.1).min() else {
        return Default::default();
    };
    let total: u128 = endpoints.iter().map(|e| e.1).sum();
    let (min, max) = (min as u128, max as u128);

    // With normalised weights `w / total`, the smallest is `r = min_weight / total` and A42's
    // scale is `min(ceil(r × min) / r, max)`. Endpoint `i` ends at `ceil(scale × cum_i / total)`
    // where `cum_i` is the sum of the weights up to it; that is `ceil(a × cum_i / b)` with
    // `a / b = scale / total`, in integers.
    let whole = (min_weight * min).div_ceil(total);
    let (a, b) = if whole * total <= max * min_weight {
        (whole, min_weight)
    } else {
        (max, total)
    };

    // The ring's size, at most `max`, which is a usize.
    let size = (a * total).div_ceil(b) as usize;
    let mut entries: Vec<(u64, usize, usize)> = Vec::with_capacity(size);
    let mut entry_name = String::new();
    let (mut cumulative, mut end) = (0u128, 0u128);
    for (rank, &(key, weight, index)) in endpoints.iter().enumerate() {
        cumulative += weight;
        let start = end;
        end = (a * cumulative).div_ceil(b);
        for i in 0..end - start {
            entry_name.clear();
            // Writing to a String cannot fail.
            let _ = write!(entry_name, "{key}_{i}");
            // The rank breaks ties between equal hashes the same way whatever the input order.
            entries.push((hash_key(entry_name.as_bytes()), rank, index));
        }
    }
    entries.sort_unstable();
    let (hashes, owners): (Vec<u64>, Vec<usize>) = entries
        .into_iter()
        .map(|(hash, _, index)| (hash, index))
        .unzip();
    (hashes.into_boxed_slice(), owners.into_boxed_slice())
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    /// An endpoint: its key and weight.
    #[derive(Clone, Debug, PartialEq, Eq)]
    struct Ep {
        key: String,
        weight: u32,
    }

    fn ep(key: impl Into<String>, weight: u32) -> Ep {
        Ep {
            key: key.into(),
            weight,
        }
    }

    /// `n` endpoints of weight 1 keyed `10.0.0.{i}:8080`.
    fn equal(n: usize) -> Vec<Ep> {
        (0..n).map(|i| ep(format!("10.0.0.{i}:8080"), 1)).collect()
    }

    fn ring(ready: Vec<Ep>) -> RingHash<Ep> {
        ring_sized(ready, DEFAULT_MIN_RING_SIZE, DEFAULT_MAX_RING_SIZE)
    }

    fn ring_sized(ready: Vec<Ep>, min: usize, max: usize) -> RingHash<Ep> {
        RingHash::new(ready, 1, |e| (e.key.as_str(), e.weight), min, max)
    }

    /// The key of the endpoint picked for `hash`.
    fn owner(ring: &RingHash<Ep>, hash: u64) -> &str {
        match ring.pick_hash(hash) {
            Pick::Ready(e) => &e.key,
            Pick::Queue | Pick::Fail(_) => panic!("no endpoint for hash {hash:#x}"),
        }
    }

    /// The request keys of the tests, hashed.
    fn request_hashes(n: usize) -> Vec<u64> {
        (0..n)
            .map(|k| hash_key(format!("user-{k}").as_bytes()))
            .collect()
    }

    /// The owner of each request hash.
    fn mapping<'r>(ring: &'r RingHash<Ep>, hashes: &[u64]) -> Vec<&'r str> {
        hashes.iter().map(|&h| owner(ring, h)).collect()
    }

    /// How many ring entries each endpoint key has.
    fn entries_per_key(ring: &RingHash<Ep>) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for &o in ring.owners.iter() {
            *counts.entry(ring.ready[o].key.clone()).or_default() += 1;
        }
        counts
    }

    fn counts_of(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
        pairs.iter().map(|&(k, c)| (k.to_owned(), c)).collect()
    }

    #[test]
    fn hash_key_is_xxh64_with_seed_zero() {
        // Known answers from the xxHash reference implementation.
        assert_eq!(hash_key(b""), 0xEF46_DB37_51D8_E999);
        assert_eq!(hash_key(b"a"), 0xD24E_C4F1_A98C_6E5B);
    }

    #[test]
    fn entries_are_the_hashes_of_key_underscore_index() {
        let ring = ring_sized(vec![ep("a", 1)], 4, 4);
        let mut expected: Vec<u64> = (0..4)
            .map(|i| hash_key(format!("a_{i}").as_bytes()))
            .collect();
        expected.sort_unstable();
        assert_eq!(&*ring.hashes, expected.as_slice());
        assert!(ring.hashes.is_sorted());
    }

    #[test]
    fn equal_weights_get_ceil_min_over_n_entries_each() {
        for n in [1, 3, 7, 10, 99, 100, 101, 1024] {
            let ring = ring(equal(n));
            let per = DEFAULT_MIN_RING_SIZE.div_ceil(n);
            assert_eq!(ring.ring_size(), per * n, "n={n}");
            assert!(entries_per_key(&ring).values().all(|&c| c == per), "n={n}");
        }
    }

    #[test]
    fn weights_3_3_4_get_a42s_ring() {
        let ready = vec![ep("a", 3), ep("b", 3), ep("c", 4)];
        // Smallest share 0.3: ceil(0.3 × 1024) = 308 entries for each lightest, scale
        // 308 / 0.3 = 1026.7, so 1027 entries: 308, 308, then 411 for the rest.
        let counts = entries_per_key(&ring(ready.clone()));
        assert_eq!(counts, counts_of(&[("a", 308), ("b", 308), ("c", 411)]));
        // Capped at 10: 3, 3 and 4 (grpc-go's example in `ring.go`).
        let counts = entries_per_key(&ring_sized(ready, 1024, 10));
        assert_eq!(counts, counts_of(&[("a", 3), ("b", 3), ("c", 4)]));
    }

    #[test]
    fn ring_size_is_capped_at_max() {
        // 5 000 equal endpoints need 5 000 entries but get 4 096: some get none.
        let ring = ring(equal(5_000));
        assert_eq!(ring.ring_size(), DEFAULT_MAX_RING_SIZE);
        // Weights 1 and 10 000: the light one would need 1 024 entries for its own, and gets a
        // share of 0.4 entries instead: rounded up when it comes first in key order (its
        // fraction is carried to the next), down to none when it comes last.
        let ring = ring_sized(vec![ep("a-light", 1), ep("b-heavy", 10_000)], 1024, 4096);
        assert_eq!(ring.ring_size(), 4096);
        assert_eq!(entries_per_key(&ring)["a-light"], 1);
        let ring = ring_sized(vec![ep("z-light", 1), ep("b-heavy", 10_000)], 1024, 4096);
        assert_eq!(ring.ring_size(), 4096);
        assert_eq!(entries_per_key(&ring).get("z-light"), None);
    }

    #[test]
    fn ring_sizes_are_clamped() {
        let ring = ring_sized(equal(3), 0, 0);
        assert_eq!(ring.ring_size(), 1);
        // min above max is lowered to max.
        let ring = ring_sized(equal(3), 3_000, 300);
        assert_eq!(ring.ring_size(), 300);
        assert_eq!(
            ring_bounds(usize::MAX, usize::MAX),
            (RING_SIZE_CAP, RING_SIZE_CAP)
        );
        assert_eq!(ring_bounds(10, usize::MAX), (10, RING_SIZE_CAP));
        assert_eq!(ring_bounds(0, 0), (1, 1));
    }

    #[test]
    fn weight_zero_counts_as_one() {
        let zero = ring(vec![ep("a", 0), ep("b", 1)]);
        let one = ring(vec![ep("a", 1), ep("b", 1)]);
        assert_eq!(zero.hashes, one.hashes);
        assert_eq!(zero.owners, one.owners);
    }

    #[test]
    fn pick_hash_takes_the_first_entry_at_or_after_the_hash_and_wraps() {
        let ring = ring_sized(vec![ep("a", 1), ep("b", 1), ep("c", 1)], 30, 30);
        let key_of = |i: usize| ring.ready[ring.owners[i]].key.as_str();
        let last = ring.ring_size() - 1;
        assert_eq!(owner(&ring, 0), key_of(0));
        for i in 0..=last {
            let h = ring.hashes[i];
            assert_eq!(owner(&ring, h), key_of(i), "exact hash of entry {i}");
            if i > 0 && ring.hashes[i - 1] < h - 1 {
                assert_eq!(owner(&ring, h - 1), key_of(i), "just below entry {i}");
            }
        }
        // Past the last entry: round to the first.
        assert_eq!(owner(&ring, ring.hashes[last] + 1), key_of(0));
        assert_eq!(owner(&ring, u64::MAX), key_of(0));
    }

    #[test]
    fn keys_spread_within_30_percent_over_10_equal_endpoints() {
        let ring = ring(equal(10));
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for key in mapping(&ring, &request_hashes(100_000)) {
            *counts.entry(key).or_default() += 1;
        }
        assert_eq!(counts.len(), 10);
        for (key, &c) in &counts {
            assert!((7_000..=13_000).contains(&c), "{key}: {c} of 100 000");
        }
    }

    #[test]
    fn weight_3_gets_about_three_times_weight_1() {
        let ring = ring(vec![ep("heavy", 3), ep("light", 1)]);
        let keys = mapping(&ring, &request_hashes(100_000));
        let heavy = keys.iter().filter(|&&k| k == "heavy").count() as f64;
        let ratio = heavy / (100_000.0 - heavy);
        assert!((2.5..=3.5).contains(&ratio), "heavy / light = {ratio}");
    }

    #[test]
    fn removing_one_of_100_moves_only_its_keys() {
        let all = equal(100);
        let hashes = request_hashes(100_000);
        let before = ring(all.clone());
        let before_map = mapping(&before, &hashes);
        let gone = all[37].key.clone();
        let mut rest = all.clone();
        rest.remove(37);
        let after = ring(rest);
        let after_map = mapping(&after, &hashes);

        let mut moved = 0;
        let mut receivers = BTreeSet::new();
        for (old, new) in before_map.iter().zip(&after_map) {
            if *old == gone {
                moved += 1;
                receivers.insert(*new);
            } else {
                assert_eq!(old, new, "a key not on the removed endpoint moved");
            }
        }
        // The removed endpoint's keys, about 1%; they spread over the next entries' endpoints.
        assert!((300..=2_500).contains(&moved), "{moved} keys moved");
        assert!(receivers.len() >= 5, "its keys went to {receivers:?}");
        assert!(!receivers.contains(gone.as_str()));

        // Adding it back restores every key's endpoint.
        assert_eq!(mapping(&ring(all), &hashes), before_map);
    }

    #[test]
    fn adding_one_to_100_takes_keys_only_for_itself() {
        let hashes = request_hashes(100_000);
        let before = ring(equal(100));
        let after = ring(equal(101));
        let new = "10.0.0.100:8080";
        let mut taken = 0;
        for (old, now) in mapping(&before, &hashes)
            .iter()
            .zip(mapping(&after, &hashes))
        {
            if *old != now {
                assert_eq!(now, new, "a key moved to an old endpoint");
                taken += 1;
            }
        }
        assert!(
            (300..=2_500).contains(&taken),
            "the new endpoint took {taken} keys"
        );
    }

    #[test]
    fn the_ring_does_not_depend_on_the_input_order() {
        let mut ready: Vec<Ep> = (0..20).map(|i| ep(format!("k{i}"), 1 + i % 4)).collect();
        let forward = ring(ready.clone());
        ready.reverse();
        let backward = ring(ready);
        assert_eq!(forward.hashes, backward.hashes);
        let hashes = request_hashes(10_000);
        assert_eq!(mapping(&forward, &hashes), mapping(&backward, &hashes));
    }

    #[test]
    fn no_endpoints_queues() {
        let ring = ring(Vec::new());
        assert_eq!(ring.ring_size(), 0);
        assert!(matches!(ring.pick_hash(42), Pick::Queue));
        assert!(matches!(ring.pick(), Pick::Queue));
        assert!(ring.endpoints().is_empty());
    }

    #[test]
    fn one_endpoint_takes_everything() {
        let ring = ring(vec![ep("only", 5)]);
        assert_eq!(ring.ring_size(), DEFAULT_MIN_RING_SIZE);
        for h in [0, 1, u64::MAX / 2, u64::MAX] {
            assert_eq!(owner(&ring, h), "only");
        }
        assert!(matches!(ring.pick(), Pick::Ready(e) if e.key == "only"));
    }

    #[test]
    fn pick_key_is_pick_hash_of_hash_key() {
        let ring = ring(equal(10));
        for k in 0..100 {
            let key = format!("session-{k}");
            let (Pick::Ready(a), Pick::Ready(b)) = (
                ring.pick_key(key.as_bytes()),
                ring.pick_hash(hash_key(key.as_bytes())),
            ) else {
                panic!("queued");
            };
            assert_eq!(a, b);
        }
    }

    #[test]
    fn pick_without_a_key_is_random_and_fixed_by_the_seed() {
        let picks = |seed| {
            let ring = RingHash::new(equal(10), seed, |e| (e.key.as_str(), 1), 1024, 4096);
            (0..1_000)
                .map(|_| match ring.pick() {
                    Pick::Ready(e) => e.key.clone(),
                    Pick::Queue | Pick::Fail(_) => panic!("queued"),
                })
                .collect::<Vec<_>>()
        };
        let a = picks(3);
        assert_eq!(a, picks(3));
        assert_ne!(a, picks(4));
        let distinct: BTreeSet<&String> = a.iter().collect();
        assert_eq!(distinct.len(), 10, "1 000 random picks reach all 10");
    }

    proptest! {
        #[test]
        fn ring_size_is_within_bounds_and_every_weight_counts(
            weights in proptest::collection::vec(0u32..1_000, 1..40),
            min in 0usize..5_000,
            max in 0usize..5_000,
        ) {
            let ready: Vec<Ep> =
                weights.iter().enumerate().map(|(i, &w)| ep(format!("k{i}"), w)).collect();
            let ring = ring_sized(ready, min, max);
            let max = max.max(1);
            let min = min.clamp(1, max);
            prop_assert!((min..=max).contains(&ring.ring_size()));
            prop_assert!(ring.hashes.is_sorted());
            // Every endpoint gets its share of A42's scale to within one entry.
            let total: u64 = weights.iter().map(|&w| u64::from(w.max(1))).sum();
            let lightest = weights.iter().map(|&w| u64::from(w.max(1))).min().unwrap_or(1);
            let whole = (lightest * min as u64).div_ceil(total);
            let scale = (whole as f64 * total as f64 / lightest as f64).min(max as f64);
            let counts = entries_per_key(&ring);
            for (i, &w) in weights.iter().enumerate() {
                let share = scale * f64::from(w.max(1)) / total as f64;
                let got = counts.get(format!("k{i}").as_str()).copied().unwrap_or(0) as f64;
                prop_assert!((got - share).abs() < 1.0 + 1e-9, "k{i}: {got} entries, share {share}");
            }
        }

        #[test]
        fn removing_an_equal_endpoint_moves_only_its_keys(
            n in 2usize..64,
            removed in any::<prop::sample::Index>(),
            per in any::<prop::sample::Index>(),
            seed: u64,
        ) {
            // `per < n` entries each both before and after: with a minimum ring of
            // `per × (n - 1)`, `n` endpoints get `ceil(per - per / n) = per` each.
            let per = 1 + per.index(n - 1);
            let all = equal(n);
            let gone = removed.index(n);
            let mut rest = all.clone();
            rest.remove(gone);
            let min = per * (n - 1);
            let (before, after) = (ring_sized(all.clone(), min, 4096), ring_sized(rest, min, 4096));
            prop_assert!(entries_per_key(&before).values().all(|&c| c == per));
            prop_assert!(entries_per_key(&after).values().all(|&c| c == per));
            let rng = AtomicSplitMix::new(seed);
            for _ in 0..500 {
                let h = rng.next_u64();
                let old = owner(&before, h);
                if old != all[gone].key {
                    prop_assert_eq!(old, owner(&after, h));
                }
            }
        }
    }
}
