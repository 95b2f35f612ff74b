//! `ring_hash`: consistent hashing on a ring, so that a request key keeps going to the same
//! endpoint while the set of endpoints changes around it.
//!
//! Each READY endpoint is placed on a ring of 64-bit hashes at many points; a request hash is
//! served by the first point at or after it, wrapping round to the first point of the ring
//! (Karger et al., "Consistent Hashing and Random Trees", STOC 1997). The points and the pick are
//! gRFC A42's `ring_hash` (grpc-go `balancer/ringhash/ring.go`); how many points an endpoint gets
//! is go-zero's `consistent_hash` (`core/hash/consistenthash.go`): a fixed number per unit of
//! weight, whatever the other endpoints, so that churn moves only the keys it must.
//!
//! - **Identity.** An endpoint is placed by a stable key (the instance key, which keeps its
//!   place when the endpoint's address or its index in the list changes) and a weight (0 counts
//!   as 1). Keys should be distinct.
//! - **Ring size.** An endpoint of weight `w` gets `w × entries_per_weight` entries
//!   ([`DEFAULT_ENTRIES_PER_WEIGHT`] = 100, go-zero's replicas), counted for it alone. Only when
//!   the sum of these over all endpoints exceeds `max_ring_size` ([`DEFAULT_MAX_RING_SIZE`] =
//!   2^18, which 2 622 endpoints of weight 1 exceed) is the ring capped: an endpoint then gets
//!   `ceil(w × max_ring_size / W)` entries, `W` being the sum of the weights, so that every
//!   endpoint keeps at least one and the ring has from `max_ring_size` to
//!   `max_ring_size + n − 1` entries for `n` endpoints. The arithmetic is exact (integers, not
//!   floating point), so equal weights get exactly equal numbers of entries.
//! - **Entries.** Entry `i` of the endpoint with key `k` sits at the XXH64 hash (seed 0) of the
//!   string `"{k}_{i}"`, A42's hash, so an endpoint's entries do not depend on the other
//!   endpoints. Entries are sorted by hash (equal hashes, vanishingly rare, in key order), and a
//!   pick is a binary search: `O(log ring_size)`. A grpc-go client puts entry `i` of an endpoint
//!   at the same hash, but gives each endpoint a share of a ring of A42's size (1024 to 4096
//!   entries by default) instead, so it does not send a key to the same endpoint.
//! - **Request hashes.** [`hash_key`] hashes a request key (a header value, a user ID) with the
//!   same XXH64, as A76's `request_hash_header` does. [`Picker::pick`], which has no request key,
//!   uses a random hash, as A42 does for requests without one.
//!
//! **Spread.** An endpoint's share of the keys is the sum of the ring arcs that end at its
//! entries; with `e` entries each, its standard deviation is about `1/√e` of the mean: about 10%
//! at the default 100 entries per weight. In measurements the emptiest and the fullest of 10
//! equal endpoints were within about ±20% of the mean, of 100 within about ±40% (a standard
//! deviation of 11%). More entries per weight spread the keys more evenly (400 halve the
//! deviation), at 16 bytes an entry and a slightly deeper search. Weights multiply the entries
//! too: 3 endpoints of weight 1000 reach the default cap, a ring of 4 MiB that takes about
//! 25 ms to build (a quarter of the 0.1 s measured for 2^20 entries, optimised build), on every
//! change of the READY endpoints. Fleets larger than the cap get capped rings (below) or,
//! better, subsetting first.
//!
//! **Churn.** While the ring is not capped, remapping is minimal: when an endpoint leaves,
//! exactly the keys it served move, each to the endpoint of the next entry on the ring, which
//! spreads them over many endpoints, and no other key moves; when an endpoint joins, it takes
//! keys for itself only, and one that comes back gets back exactly the keys it had. With `n`
//! equal endpoints about `1/n` of the keys move, where `hash % n` would move almost all of them.
//! (A42 scales the whole ring to between `min_ring_size` and `max_ring_size` entries and shares it
//! out, so every endpoint's number of entries changes with `n`, and keys of the endpoints that
//! stay move too.) A capped ring gives up minimal remapping: the counts depend on `W`, and a
//! leave or join that changes `ceil(w × max_ring_size / W)` adds or removes entries of the
//! endpoints that stay, which moves some of their keys too. The `policy_figures` example
//! measures the spread and the churn of both.
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
//!     DEFAULT_ENTRIES_PER_WEIGHT, DEFAULT_MAX_RING_SIZE, RingHash, hash_key,
//! };
//!
//! let instances = vec!["user.rpc/1", "user.rpc/2", "user.rpc/3"];
//! let ring = RingHash::new(
//!     instances,
//!     7,
//!     |key| (*key, 1),
//!     DEFAULT_ENTRIES_PER_WEIGHT,
//!     DEFAULT_MAX_RING_SIZE,
//! );
//! assert_eq!(ring.ring_size(), 300);
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

/// The default number of ring entries per unit of weight: go-zero's replicas per node.
pub const DEFAULT_ENTRIES_PER_WEIGHT: usize = 100;

/// The default largest ring, 2^18 entries (4 MiB): above it the entries are scaled down.
pub const DEFAULT_MAX_RING_SIZE: usize = 1 << 18;

/// The largest `max_ring_size` accepted (8M, as in A42 and Envoy); larger sizes are treated as
/// this.
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
    /// key, not its address or index) and weight (0 counts as 1). Each endpoint gets
    /// `weight × entries_per_weight` entries unless their sum exceeds `max_ring_size`, which
    /// scales them down (see the [module docs](self)); `entries_per_weight` is raised to at
    /// least 1 and `max_ring_size` clamped to `1..=`[`RING_SIZE_CAP`]. The defaults are
    /// [`DEFAULT_ENTRIES_PER_WEIGHT`] and [`DEFAULT_MAX_RING_SIZE`]. `seed` fixes the random
    /// hashes of [`Picker::pick`].
    pub fn new(
        ready: Vec<T>,
        seed: u64,
        identity: impl Fn(&T) -> (&str, u32),
        entries_per_weight: usize,
        max_ring_size: usize,
    ) -> Self {
        let (per_weight, max) = ring_params(entries_per_weight, max_ring_size);
        let (hashes, owners) = build_ring(&ready, identity, per_weight, max);
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

/// `(entries_per_weight, max_ring_size)` clamped to `entries_per_weight >= 1` and
/// `1 <= max_ring_size <= RING_SIZE_CAP`.
fn ring_params(entries_per_weight: usize, max_ring_size: usize) -> (usize, usize) {
    (
        entries_per_weight.max(1),
        max_ring_size.clamp(1, RING_SIZE_CAP),
    )
}

/// The sorted ring hashes and the endpoint of each, for `per_weight >= 1` and
/// `1 <= max <= RING_SIZE_CAP`.
fn build_ring<T>(
    ready: &[T],
    identity: impl Fn(&T) -> (&str, u32),
    per_weight: usize,
    max: usize,
) -> (Box<[u64]>, Box<[usize]>) {
    // (key, weight, index in `ready`), in key order, which breaks ties between equal hashes.
    let mut endpoints: Vec<(&str, u128, usize)> = ready
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let (key, weight) = identity(e);
            (key, u128::from(weight.max(1)), i)
        })
        .collect();
    endpoints.sort_unstable_by(|a, b| (a.0, a.2).cmp(&(b.0, b.2)));
    // Weights are u32s, and there are at most usize::MAX of them: their sum fits in a u128.
    let total: u128 = endpoints.iter().map(|e| e.1).sum();
    let (per_weight, max) = (per_weight as u128, max as u128);
    let capped = total.saturating_mul(per_weight) > max;
    // The entries of an endpoint of weight `w`: its own unless the ring is capped. Either way at
    // most `max` (as `w <= total`), which is a usize.
    let count = |weight: u128| -> usize {
        if capped {
            (weight * max).div_ceil(total) as usize
        } else {
            (weight * per_weight) as usize
        }
    };

    let size = endpoints.iter().map(|e| count(e.1)).sum();
    let mut entries: Vec<(u64, usize, usize)> = Vec::with_capacity(size);
    let mut entry_name = String::new();
    for (rank, &(key, weight, index)) in endpoints.iter().enumerate() {
        for i in 0..count(weight) {
            entry_name.clear();
            // Writing to a String cannot fail.
            let _ = write!(entry_name, "{key}_{i}");
            // The rank breaks ties between equal hashes by key, whatever the input order and
            // whichever other endpoints there are.
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
        ring_sized(ready, DEFAULT_ENTRIES_PER_WEIGHT, DEFAULT_MAX_RING_SIZE)
    }

    fn ring_sized(ready: Vec<Ep>, per_weight: usize, max: usize) -> RingHash<Ep> {
        RingHash::new(ready, 1, |e| (e.key.as_str(), e.weight), per_weight, max)
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

    /// How many of the request hashes each endpoint key gets.
    fn keys_per_endpoint(ring: &RingHash<Ep>, hashes: &[u64]) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for key in mapping(ring, hashes) {
            *counts.entry(key.to_owned()).or_default() += 1;
        }
        counts
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

    /// Checks that taking `ready[gone]` out of `ready` moves exactly the keys it served, and that
    /// putting it back (last in the list) gives every key its endpoint again.
    fn assert_minimal_remapping(ready: &[Ep], gone: usize, hashes: &[u64]) {
        let before = ring(ready.to_vec());
        let before_map = mapping(&before, hashes);
        let mut rest = ready.to_vec();
        let gone = rest.remove(gone);
        let after = ring(rest.clone());
        let after_map = mapping(&after, hashes);

        let mut moved = 0;
        for (old, new) in before_map.iter().zip(&after_map) {
            if *old == gone.key {
                assert_ne!(*new, gone.key);
                moved += 1;
            } else {
                assert_eq!(old, new, "a key of {old} moved when {} left", gone.key);
            }
        }
        assert!(moved > 0, "{} had no keys", gone.key);

        rest.push(gone);
        assert_eq!(mapping(&ring(rest), hashes), before_map, "after a return");
    }

    /// Checks that adding `new` to `ready` moves keys to `new` only.
    fn assert_join_takes_keys_only_for_itself(ready: &[Ep], new: Ep, hashes: &[u64]) -> usize {
        let before = ring(ready.to_vec());
        let before_map = mapping(&before, hashes);
        let mut more = ready.to_vec();
        more.push(new.clone());
        let after = ring(more);
        let mut taken = 0;
        for (old, now) in before_map.iter().zip(mapping(&after, hashes)) {
            if *old != now {
                assert_eq!(now, new.key, "a key of {old} moved to an old endpoint");
                taken += 1;
            } else {
                assert_ne!(now, new.key);
            }
        }
        taken
    }

    #[test]
    fn hash_key_is_xxh64_with_seed_zero() {
        // Known answers from the xxHash reference implementation.
        assert_eq!(hash_key(b""), 0xEF46_DB37_51D8_E999);
        assert_eq!(hash_key(b"a"), 0xD24E_C4F1_A98C_6E5B);
    }

    #[test]
    fn entries_are_the_hashes_of_key_underscore_index() {
        let ring = ring_sized(vec![ep("a", 1)], 4, DEFAULT_MAX_RING_SIZE);
        let mut expected: Vec<u64> = (0..4)
            .map(|i| hash_key(format!("a_{i}").as_bytes()))
            .collect();
        expected.sort_unstable();
        assert_eq!(&*ring.hashes, expected.as_slice());
        assert!(ring.hashes.is_sorted());
    }

    #[test]
    fn each_endpoint_gets_weight_times_entries_per_weight() {
        for n in [1, 3, 7, 10, 99, 100, 101, 1024] {
            let ring = ring(equal(n));
            assert_eq!(ring.ring_size(), DEFAULT_ENTRIES_PER_WEIGHT * n, "n={n}");
            assert!(
                entries_per_key(&ring)
                    .values()
                    .all(|&c| c == DEFAULT_ENTRIES_PER_WEIGHT),
                "n={n}"
            );
        }
        let ready = vec![ep("a", 3), ep("b", 3), ep("c", 4), ep("d", 0)];
        let counts = entries_per_key(&ring(ready.clone()));
        assert_eq!(
            counts,
            counts_of(&[("a", 300), ("b", 300), ("c", 400), ("d", 100)])
        );
        let counts = entries_per_key(&ring_sized(ready, 7, DEFAULT_MAX_RING_SIZE));
        assert_eq!(
            counts,
            counts_of(&[("a", 21), ("b", 21), ("c", 28), ("d", 7)])
        );
    }

    #[test]
    fn a_capped_ring_scales_every_endpoint_down_but_keeps_it_on_the_ring() {
        // 100 × 100 entries > 4 096: ceil(4 096 / 100) = 41 each.
        let ring_100 = ring_sized(equal(100), DEFAULT_ENTRIES_PER_WEIGHT, 4096);
        assert_eq!(ring_100.ring_size(), 4100);
        assert!(entries_per_key(&ring_100).values().all(|&c| c == 41));
        // 5 000 endpoints on a ring of at most 4 096: one entry each, none left out.
        let ring_5000 = ring_sized(equal(5_000), DEFAULT_ENTRIES_PER_WEIGHT, 4096);
        assert_eq!(ring_5000.ring_size(), 5_000);
        // Weights 3, 3 and 4 capped at 10: 3, 3 and 4 (grpc-go's example in `ring.go`).
        let ready = vec![ep("a", 3), ep("b", 3), ep("c", 4)];
        let counts = entries_per_key(&ring_sized(ready, DEFAULT_ENTRIES_PER_WEIGHT, 10));
        assert_eq!(counts, counts_of(&[("a", 3), ("b", 3), ("c", 4)]));
        // Weights 1 and 10 000: the light one keeps one entry wherever its key sorts, the heavy
        // one gets ceil(10 000 × 4 096 / 10 001) = 4 096.
        for light in ["a-light", "z-light"] {
            let ready = vec![ep(light, 1), ep("m-heavy", 10_000)];
            let counts = entries_per_key(&ring_sized(ready, DEFAULT_ENTRIES_PER_WEIGHT, 4096));
            assert_eq!(counts, counts_of(&[(light, 1), ("m-heavy", 4096)]));
        }
    }

    #[test]
    fn a_capped_ring_still_spreads_keys_but_remaps_more() {
        let hashes = request_hashes(100_000);
        let all = equal(100);
        let capped = |ready: Vec<Ep>| ring_sized(ready, DEFAULT_ENTRIES_PER_WEIGHT, 4096);
        let before = capped(all.clone());
        let counts = keys_per_endpoint(&before, &hashes);
        assert_eq!(counts.len(), 100);
        // 41 entries each: a standard deviation of about 16% of the mean (1 000) per endpoint.
        for (key, &c) in &counts {
            assert!((400..=1_600).contains(&c), "{key}: {c} of 100 000");
        }

        // 99 left: ceil(4 096 / 99) = 42 entries each, so every endpoint gains one, and takes
        // keys from the others as well as from the one that left.
        let gone = &all[37].key;
        let mut rest = all.clone();
        rest.remove(37);
        let after = capped(rest);
        assert_eq!(after.ring_size(), 99 * 42);
        let (mut of_gone, mut of_others) = (0, 0);
        for (old, new) in mapping(&before, &hashes)
            .iter()
            .zip(mapping(&after, &hashes))
        {
            if old == gone {
                of_gone += 1;
            } else if *old != new {
                of_others += 1;
            }
        }
        assert!(of_gone > 0);
        assert!(
            (100..=5_000).contains(&of_others),
            "{of_others} keys of the 99 others moved"
        );
    }

    #[test]
    fn ring_params_are_clamped() {
        assert_eq!(ring_params(0, 0), (1, 1));
        assert_eq!(ring_params(100, usize::MAX), (100, RING_SIZE_CAP));
        assert_eq!(ring_params(usize::MAX, 10), (usize::MAX, 10));
        // A ring of at most 1 entry still has every endpoint, once.
        let ring = ring_sized(equal(3), 0, 0);
        assert_eq!(ring.ring_size(), 3);
        let ring = ring_sized(vec![ep("a", 1)], usize::MAX, 50);
        assert_eq!(ring.ring_size(), 50);
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
        let ready = vec![ep("a", 1), ep("b", 1), ep("c", 1)];
        let ring = ring_sized(ready, 10, DEFAULT_MAX_RING_SIZE);
        assert_eq!(ring.ring_size(), 30);
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
        // 100 entries each: a standard deviation of about 10% of the mean per endpoint.
        let counts = keys_per_endpoint(&ring(equal(10)), &request_hashes(100_000));
        assert_eq!(counts.len(), 10);
        for (key, &c) in &counts {
            assert!((7_000..=13_000).contains(&c), "{key}: {c} of 100 000");
        }
    }

    #[test]
    fn weight_3_gets_about_three_times_weight_1() {
        let counts = keys_per_endpoint(
            &ring(vec![ep("heavy", 3), ep("light", 1)]),
            &request_hashes(100_000),
        );
        let ratio = counts["heavy"] as f64 / counts["light"] as f64;
        assert!((2.5..=3.5).contains(&ratio), "heavy / light = {ratio}");
    }

    #[test]
    fn removing_any_one_of_4_moves_exactly_its_keys() {
        let hashes = request_hashes(100_000);
        let all = equal(4);
        for gone in 0..4 {
            assert_minimal_remapping(&all, gone, &hashes);
        }
        let weighted = vec![ep("a", 1), ep("b", 2), ep("c", 3), ep("d", 0)];
        for gone in 0..4 {
            assert_minimal_remapping(&weighted, gone, &hashes);
        }
    }

    #[test]
    fn removing_one_of_100_moves_exactly_its_keys_to_many_others() {
        let hashes = request_hashes(100_000);
        let all = equal(100);
        for gone in [0, 37, 99] {
            assert_minimal_remapping(&all, gone, &hashes);
        }
        // The keys of the one that left spread over the endpoints of the next entries.
        let before = ring(all.clone());
        let mut rest = all.clone();
        rest.remove(37);
        let after = ring(rest);
        let receivers: BTreeSet<&str> = mapping(&before, &hashes)
            .iter()
            .zip(mapping(&after, &hashes))
            .filter(|(old, _)| **old == all[37].key)
            .map(|(_, new)| new)
            .collect();
        assert!(receivers.len() >= 30, "its keys went to {receivers:?}");
    }

    #[test]
    fn adding_one_takes_keys_only_for_itself() {
        let hashes = request_hashes(100_000);
        let taken = assert_join_takes_keys_only_for_itself(&equal(4), ep("new", 1), &hashes);
        assert!(
            (12_000..=28_000).contains(&taken),
            "took {taken} of 100 000"
        );
        let taken = assert_join_takes_keys_only_for_itself(&equal(100), ep("new", 1), &hashes);
        assert!((500..=1_500).contains(&taken), "took {taken} of 100 000");
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
        assert_eq!(ring.ring_size(), 5 * DEFAULT_ENTRIES_PER_WEIGHT);
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
            let ring = RingHash::new(
                equal(10),
                seed,
                |e| (e.key.as_str(), 1),
                DEFAULT_ENTRIES_PER_WEIGHT,
                DEFAULT_MAX_RING_SIZE,
            );
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
        fn entries_are_weight_times_per_weight_unless_capped(
            weights in proptest::collection::vec(0u32..1_000, 1..40),
            per_weight in 0usize..300,
            max in 0usize..50_000,
        ) {
            let ready: Vec<Ep> =
                weights.iter().enumerate().map(|(i, &w)| ep(format!("k{i}"), w)).collect();
            let ring = ring_sized(ready, per_weight, max);
            let (per_weight, max) = (per_weight.max(1), max.max(1));
            prop_assert!(ring.hashes.is_sorted());
            let weights: Vec<usize> = weights.iter().map(|&w| w.max(1) as usize).collect();
            let total: usize = weights.iter().sum();
            let capped = total * per_weight > max;
            if capped {
                prop_assert!((max..max + weights.len()).contains(&ring.ring_size()));
            } else {
                prop_assert_eq!(ring.ring_size(), total * per_weight);
            }
            let counts = entries_per_key(&ring);
            for (i, &w) in weights.iter().enumerate() {
                let expected = if capped { (w * max).div_ceil(total) } else { w * per_weight };
                prop_assert_eq!(counts[format!("k{i}").as_str()], expected, "k{}", i);
            }
        }

        #[test]
        fn leaving_and_coming_back_moves_only_the_keys_of_the_one_that_left(
            weights in proptest::collection::vec(0u32..5, 2..40),
            removed in any::<prop::sample::Index>(),
            per_weight in 1usize..50,
            seed: u64,
        ) {
            let all: Vec<Ep> =
                weights.iter().enumerate().map(|(i, &w)| ep(format!("k{i}"), w)).collect();
            let gone = removed.index(all.len());
            let mut rest = all.clone();
            let gone = rest.remove(gone);
            let sized = |ready| ring_sized(ready, per_weight, DEFAULT_MAX_RING_SIZE);
            let (before, after) = (sized(all.clone()), sized(rest.clone()));
            rest.push(gone.clone());
            let back = sized(rest);
            let rng = AtomicSplitMix::new(seed);
            for _ in 0..500 {
                let h = rng.next_u64();
                let old = owner(&before, h);
                if old != gone.key {
                    prop_assert_eq!(old, owner(&after, h));
                }
                prop_assert_eq!(old, owner(&back, h));
            }
        }
    }
}
