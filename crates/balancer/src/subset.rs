//! Random subsetting: each client connects to a small, stable subset of the instances.
//!
//! With one sub-channel per instance, `c` clients of a service with `n` instances hold `c × n`
//! connections, and every instance holds one per client. Past a few hundred of each, the
//! connections and their keepalives cost more than the RPCs, and per-connection decisions
//! (outlier ejection, p2c) see too little traffic to mean anything. Subsetting caps each client at
//! `size` instances. go-zero does it with a fresh random shuffle of the instance list on every
//! resolver update, keeping the first 32 (`zrpc/resolver/internal/subset.go`); that spreads
//! connections evenly but deals every client a new subset on every update, so one instance
//! joining or leaving reconnects almost every client.
//!
//! This is gRFC A68's `random_subsetting` instead (grpc-go `balancer/randomsubsetting`):
//! rendezvous hashing (Thaler and Ravishankar, "Using Name-Based Mappings to Increase Hit Rates",
//! IEEE/ACM ToN 6(1), 1998). Each client draws a random `seed` once, when it starts, and keeps it;
//! every instance gets the score XXH64(key, seed), and the client takes the `size` instances with
//! the lowest scores. Because an instance's score depends only on its own key and the client's
//! seed:
//!
//! - **Even spread.** Different seeds rank the instances independently, so each instance is in a
//!   given client's subset with probability `size / n`, and holds about `c × size / n`
//!   connections (binomially distributed: spread narrows as that mean grows).
//! - **Removing a non-member changes nothing.** The `size` lowest scores are the same.
//! - **Removing a member brings in exactly one replacement**: the instance with the next lowest
//!   score. The other members stay.
//! - **Adding an instance evicts at most one**: the new one enters only if its score is below the
//!   highest in the subset, and then replaces that one.
//!
//! So churn costs each affected client one connection, and affects only the clients that had (or
//! now want) the instance, about `c × size / n` of them. A client must not draw a new seed on
//! each update, or it loses all of this.
//!
//! Two differences from A68: the score hashes the instance's stable key (the caller passes the
//! instance keys) rather than its first address, so an instance that moves keeps its place; and
//! the subset is returned in the input order, not in score order, so a policy under it (round-robin
//! from a random start, pick-first) sees the instances in resolver order. Ties between equal
//! scores go to the smaller key, then to the earlier index.
//!
//! # Examples
//!
//! ```
//! use switchboard_balancer::subset::random_subset;
//!
//! let keys: Vec<String> = (0..100).map(|i| format!("user.rpc/{i}")).collect();
//! let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
//! // Drawn at random once per client, e.g. with `rand::random()`.
//! let seed = 0x5EED;
//! let subset = random_subset(&keys, seed, 20);
//! assert_eq!(subset.len(), 20);
//! assert!(subset.is_sorted());
//!
//! // An instance outside the subset leaves: nothing changes.
//! let outsider = (0..100).find(|i| !subset.contains(i)).unwrap_or(0);
//! let mut rest = keys.clone();
//! rest.remove(outsider);
//! let after: Vec<&str> = random_subset(&rest, seed, 20).iter().map(|&i| rest[i]).collect();
//! let before: Vec<&str> = subset.iter().map(|&i| keys[i]).collect();
//! assert_eq!(after, before);
//! ```

use xxhash_rust::xxh64::xxh64;

/// The rendezvous score of the instance `key` for the client `seed`: XXH64 of the key with the
/// seed. Lower scores are preferred.
pub fn score(key: &str, seed: u64) -> u64 {
    xxh64(key.as_bytes(), seed)
}

/// The indexes, ascending, of the `size` endpoints of `keys` that this client (`seed`) connects
/// to: those whose XXH64 of the key with `seed` is lowest. All of them when `size >= keys.len()`,
/// none when `size == 0`. See the [module docs](self).
pub fn random_subset(keys: &[&str], seed: u64, size: usize) -> Vec<usize> {
    if size >= keys.len() {
        return (0..keys.len()).collect();
    }
    if size == 0 {
        return Vec::new();
    }
    let mut scored: Vec<(u64, &str, usize)> = keys
        .iter()
        .enumerate()
        .map(|(i, key)| (score(key, seed), *key, i))
        .collect();
    // `0 < size < len`: the `size` lowest end up in front, in no particular order.
    scored.select_nth_unstable(size - 1);
    let mut chosen: Vec<usize> = scored.iter().take(size).map(|&(_, _, i)| i).collect();
    chosen.sort_unstable();
    chosen
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;

    fn instance_keys(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("user.rpc/{i:04}")).collect()
    }

    fn refs(keys: &[String]) -> Vec<&str> {
        keys.iter().map(String::as_str).collect()
    }

    /// The keys chosen, as a set.
    fn chosen<'k>(keys: &[&'k str], seed: u64, size: usize) -> BTreeSet<&'k str> {
        random_subset(keys, seed, size)
            .into_iter()
            .map(|i| keys[i])
            .collect()
    }

    #[test]
    fn takes_the_lowest_scores_in_input_order() {
        let owned = instance_keys(50);
        let keys = refs(&owned);
        let subset = random_subset(&keys, 77, 10);
        assert_eq!(subset.len(), 10);
        assert!(subset.is_sorted());
        let mut scores: Vec<(u64, usize)> = keys
            .iter()
            .enumerate()
            .map(|(i, k)| (xxh64(k.as_bytes(), 77), i))
            .collect();
        scores.sort_unstable();
        let mut lowest: Vec<usize> = scores[..10].iter().map(|&(_, i)| i).collect();
        lowest.sort_unstable();
        assert_eq!(subset, lowest);
    }

    #[test]
    fn size_at_least_n_takes_all_and_zero_takes_none() {
        let owned = instance_keys(7);
        let keys = refs(&owned);
        let all: Vec<usize> = (0..7).collect();
        assert_eq!(random_subset(&keys, 1, 7), all);
        assert_eq!(random_subset(&keys, 1, 100), all);
        assert_eq!(random_subset(&keys, 1, 0), Vec::<usize>::new());
        assert_eq!(random_subset(&[], 1, 3), Vec::<usize>::new());
    }

    #[test]
    fn does_not_depend_on_the_input_order() {
        let owned = instance_keys(200);
        let mut keys = refs(&owned);
        let forward = chosen(&keys, 5, 20);
        keys.reverse();
        assert_eq!(chosen(&keys, 5, 20), forward);
    }

    #[test]
    fn different_seeds_choose_different_subsets() {
        let owned = instance_keys(1_000);
        let keys = refs(&owned);
        let a = chosen(&keys, 1, 20);
        let b = chosen(&keys, 2, 20);
        assert!(a.intersection(&b).count() < 10, "{a:?} vs {b:?}");
        assert_eq!(a, chosen(&keys, 1, 20));
    }

    #[test]
    fn removing_a_non_member_changes_nothing() {
        let owned = instance_keys(100);
        let keys = refs(&owned);
        let before = chosen(&keys, 9, 20);
        for gone in (0..100).filter(|&i| !before.contains(keys[i])) {
            let mut rest = keys.clone();
            rest.remove(gone);
            assert_eq!(chosen(&rest, 9, 20), before, "removing {}", keys[gone]);
        }
    }

    #[test]
    fn removing_a_member_brings_in_exactly_one_replacement() {
        let owned = instance_keys(100);
        let keys = refs(&owned);
        let before = chosen(&keys, 9, 20);
        for gone in (0..100).filter(|&i| before.contains(keys[i])) {
            let mut rest = keys.clone();
            rest.remove(gone);
            let after = chosen(&rest, 9, 20);
            assert_eq!(after.len(), 20);
            let kept: BTreeSet<&str> = before.intersection(&after).copied().collect();
            assert_eq!(kept.len(), 19, "removing {}", keys[gone]);
            assert!(!after.contains(keys[gone]));
        }
    }

    #[test]
    fn adding_an_instance_evicts_at_most_one() {
        let owned = instance_keys(100);
        let keys = refs(&owned);
        let before = chosen(&keys, 9, 20);
        let mut entered = 0;
        for extra in 0..200 {
            let new = format!("user.rpc/new-{extra}");
            let mut more = keys.clone();
            more.push(&new);
            let after = chosen(&more, 9, 20);
            let evicted = before.difference(&after).count();
            if after.contains(new.as_str()) {
                assert_eq!(evicted, 1, "{new} entered");
                entered += 1;
            } else {
                assert_eq!(after, before, "{new} stayed out");
            }
        }
        // Each enters with probability 20 / 101.
        assert!((20..=70).contains(&entered), "{entered} of 200 entered");
    }

    #[test]
    fn a_hundred_clients_spread_evenly_over_a_thousand_instances() {
        let owned = instance_keys(1_000);
        let keys = refs(&owned);
        let mut connections = vec![0usize; 1_000];
        for seed in 0..100 {
            let subset = random_subset(&keys, seed, 20);
            assert_eq!(subset.len(), 20, "client {seed}");
            for i in subset {
                connections[i] += 1;
            }
        }
        // 2 000 connections, a mean of 2 per instance, binomial: rarely more than 7.
        assert_eq!(connections.iter().sum::<usize>(), 2_000);
        let max = connections.iter().copied().max().unwrap_or(0);
        assert!(max <= 10, "an instance has {max} clients");
        let idle = connections.iter().filter(|&&c| c == 0).count();
        // e^-2 ≈ 13.5% of instances have no client at all.
        assert!(
            (80..=200).contains(&idle),
            "{idle} instances without a client"
        );
    }

    proptest! {
        #[test]
        fn churn_moves_at_most_one_member(
            ids in proptest::collection::btree_set(0u32..100_000, 1..120),
            seed: u64,
            size in 0usize..40,
            pick in any::<prop::sample::Index>(),
            new_id in 100_000u32..200_000,
        ) {
            let owned: Vec<String> = ids.iter().map(|i| format!("10.1.{}.{}:80", i / 256, i % 256)).collect();
            let keys = refs(&owned);
            let before = chosen(&keys, seed, size);
            prop_assert_eq!(before.len(), size.min(keys.len()));

            // Removal.
            let gone = pick.index(keys.len());
            let mut rest = keys.clone();
            rest.remove(gone);
            let after = chosen(&rest, seed, size);
            prop_assert_eq!(after.len(), size.min(rest.len()));
            if before.contains(keys[gone]) {
                prop_assert_eq!(before.difference(&after).count(), 1);
                prop_assert!(after.difference(&before).count() <= 1);
            } else {
                prop_assert_eq!(&after, &before);
            }

            // Addition.
            let new = format!("10.2.0.{new_id}:80");
            let mut more = keys.clone();
            more.push(&new);
            let after = chosen(&more, seed, size);
            prop_assert!(before.difference(&after).count() <= 1);
            let entered: Vec<&&str> = after.difference(&before).collect();
            prop_assert!(entered.is_empty() || entered == [&new.as_str()]);
        }
    }
}
