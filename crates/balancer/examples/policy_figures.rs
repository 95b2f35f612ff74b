//! Figures for random subsetting and `ring_hash`: how evenly they spread connections and keys,
//! and how much moves when one instance leaves or joins.
//!
//! Run with `cargo run --release -p switchboard-balancer --example policy_figures`. It prints two
//! Markdown tables, computed with fixed seeds (the same figures on every run):
//!
//! - **Subsetting**: 100 clients of a service with 1 000 instances, each client connected to 20
//!   ([`random_subset`], gRFC A68's rendezvous hashing, each client with its own random seed),
//!   against go-zero's subsetting (a fresh random shuffle of the instances on every update, keeping
//!   the first 20) and against every client connecting to every instance. The RPC load of an
//!   instance assumes each client sends the same number of RPCs, spread evenly over its subset.
//!   Churn is averaged over 100 instances leaving (one at a time) and 100 instances joining.
//! - **Ring hash**: 100 instances of weight 1 and 100 000 random request keys ([`RingHash`]: A42's
//!   ring with go-zero's fixed entries per instance), with the default settings and with a ring
//!   that `max_ring_size` caps (so that each instance's number of entries depends on how many
//!   there are), against `hash % n`. Churn is averaged over each of the 100 instances leaving
//!   and 100 new instances joining (one at a time).

use std::collections::BTreeSet;
use std::time::Instant;

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use switchboard_balancer::picker::Pick;
use switchboard_balancer::picker::ring_hash::{
    DEFAULT_ENTRIES_PER_WEIGHT, DEFAULT_MAX_RING_SIZE, RingHash, hash_key,
};
use switchboard_balancer::subset::random_subset;

const INSTANCES: usize = 1_000;
const CLIENTS: usize = 100;
const SUBSET: usize = 20;
/// Instances that leave (and, separately, join) one at a time, for the churn figures.
const CHURN_SAMPLES: usize = 100;

const RING_INSTANCES: usize = 100;
const KEYS: usize = 100_000;
/// The `max_ring_size` of each ring compared, all with the default entries per weight (100): the
/// default, and one that 100 instances exceed.
const MAX_RING_SIZES: [usize; 2] = [DEFAULT_MAX_RING_SIZE, 4096];

fn main() {
    let started = Instant::now();
    subsetting();
    println!();
    ring_hash();
    println!();
    println!("(computed in {:.2} s)", started.elapsed().as_secs_f64());
}

/// How a client chooses its instances from the current list of keys.
trait Chooser {
    /// The keys this client connects to.
    fn choose<'k>(&mut self, client: usize, keys: &[&'k str]) -> BTreeSet<&'k str>;
}

/// A68: the lowest XXH64 scores under the client's own seed, drawn once.
struct Rendezvous {
    seeds: Vec<u64>,
}

impl Chooser for Rendezvous {
    fn choose<'k>(&mut self, client: usize, keys: &[&'k str]) -> BTreeSet<&'k str> {
        random_subset(keys, self.seeds[client], SUBSET)
            .into_iter()
            .map(|i| keys[i])
            .collect()
    }
}

/// go-zero: a fresh shuffle on every update, then the first `SUBSET`.
struct Shuffle {
    rng: SmallRng,
}

impl Chooser for Shuffle {
    fn choose<'k>(&mut self, _client: usize, keys: &[&'k str]) -> BTreeSet<&'k str> {
        let mut keys = keys.to_vec();
        keys.shuffle(&mut self.rng);
        keys.into_iter().take(SUBSET).collect()
    }
}

/// Every instance.
struct FullMesh;

impl Chooser for FullMesh {
    fn choose<'k>(&mut self, _client: usize, keys: &[&'k str]) -> BTreeSet<&'k str> {
        keys.iter().copied().collect()
    }
}

/// The figures of one way of choosing.
struct SubsetFigures {
    per_client: (usize, usize),
    per_instance: Summary,
    /// Instances no client connects to.
    idle: usize,
    busiest_load: f64,
    leave: Churn,
    join: Churn,
}

/// Churn averaged over the samples.
#[derive(Default)]
struct Churn {
    /// Clients that open a connection, or close one other than to the instance that left.
    clients: f64,
    /// Connections opened plus connections closed, in all clients.
    connections: f64,
}

fn subsetting() {
    let owned: Vec<String> = (0..INSTANCES)
        .map(|i| format!("user.rpc/10.1.{}.{}:8080", i / 256, i % 256))
        .collect();
    let keys: Vec<&str> = owned.iter().map(String::as_str).collect();
    let mut seeds = SmallRng::seed_from_u64(1);
    let rendezvous = Rendezvous {
        seeds: (0..CLIENTS).map(|_| seeds.random()).collect(),
    };
    let shuffle = Shuffle {
        rng: SmallRng::seed_from_u64(2),
    };

    let columns = [
        subset_figures(&keys, rendezvous),
        subset_figures(&keys, shuffle),
        subset_figures(&keys, FullMesh),
    ];

    println!(
        "Subsetting: {CLIENTS} clients, {INSTANCES} instances, subset {SUBSET} \
         (churn averaged over {CHURN_SAMPLES} instances leaving, {CHURN_SAMPLES} joining)"
    );
    println!();
    println!(
        "| | rendezvous subset (A68, `random_subset`) | go-zero shuffle | every client to every instance |"
    );
    println!("|---|---|---|---|");
    let row = |name: &str, cell: &dyn Fn(&SubsetFigures) -> String| {
        let cells: Vec<String> = columns.iter().map(cell).collect();
        println!("| {name} | {} |", cells.join(" | "));
    };
    row("connections per client (min / max)", &|f| {
        format!("{} / {}", f.per_client.0, f.per_client.1)
    });
    row("connections in all", &|f| {
        format!("{:.0}", f.per_instance.mean * INSTANCES as f64)
    });
    row("connections per instance (min / mean / max)", &|f| {
        format!(
            "{} / {:.1} / {}",
            f.per_instance.min, f.per_instance.mean, f.per_instance.max
        )
    });
    row("instances with no client", &|f| format!("{}", f.idle));
    row("connections per instance, standard deviation", &|f| {
        format!("{:.2}", f.per_instance.sd)
    });
    row("RPC load on the busiest instance / mean", &|f| {
        format!("{:.2}×", f.busiest_load)
    });
    row(
        "one instance leaves: clients that open a connection",
        &|f| format!("{:.2}", f.leave.clients),
    );
    row("one instance leaves: connections closed + opened", &|f| {
        format!("{:.1}", f.leave.connections)
    });
    row(
        "one instance joins: clients that open or close a connection",
        &|f| format!("{:.2}", f.join.clients),
    );
    row("one instance joins: connections closed + opened", &|f| {
        format!("{:.1}", f.join.connections)
    });
}

fn subset_figures(keys: &[&str], mut chooser: impl Chooser) -> SubsetFigures {
    let sets: Vec<BTreeSet<&str>> = (0..CLIENTS).map(|c| chooser.choose(c, keys)).collect();
    let sizes: Vec<usize> = sets.iter().map(BTreeSet::len).collect();
    let per_client = (
        sizes.iter().copied().min().unwrap_or(0),
        sizes.iter().copied().max().unwrap_or(0),
    );
    let connections: Vec<usize> = keys
        .iter()
        .map(|k| sets.iter().filter(|s| s.contains(k)).count())
        .collect();
    // Each client sends load 1, a share 1 / |set| to each member.
    let loads: Vec<f64> = keys
        .iter()
        .map(|k| {
            sets.iter()
                .filter(|s| s.contains(k))
                .map(|s| 1.0 / s.len() as f64)
                .sum()
        })
        .collect();
    let mean_load = CLIENTS as f64 / keys.len() as f64;
    let busiest_load = loads.iter().copied().fold(0.0, f64::max) / mean_load;

    let mut leave = Churn::default();
    for gone in (0..keys.len()).step_by(keys.len() / CHURN_SAMPLES) {
        let mut rest = keys.to_vec();
        let gone = rest.remove(gone);
        for (client, before) in sets.iter().enumerate() {
            let after = chooser.choose(client, &rest);
            let mut kept = before.clone();
            kept.remove(gone);
            if after != kept {
                leave.clients += 1.0;
            }
            leave.connections += before.symmetric_difference(&after).count() as f64;
        }
    }
    let mut join = Churn::default();
    for extra in 0..CHURN_SAMPLES {
        let new = format!("user.rpc/10.2.0.{extra}:8080");
        let mut more = keys.to_vec();
        more.push(&new);
        for (client, before) in sets.iter().enumerate() {
            let after = chooser.choose(client, &more);
            if &after != before {
                join.clients += 1.0;
            }
            join.connections += before.symmetric_difference(&after).count() as f64;
        }
    }
    for churn in [&mut leave, &mut join] {
        churn.clients /= CHURN_SAMPLES as f64;
        churn.connections /= CHURN_SAMPLES as f64;
    }

    SubsetFigures {
        per_client,
        per_instance: Summary::of(&connections),
        idle: connections.iter().filter(|&&c| c == 0).count(),
        busiest_load,
        leave,
        join,
    }
}

/// Min, mean, max and standard deviation of counts.
struct Summary {
    min: usize,
    mean: f64,
    max: usize,
    sd: f64,
}

impl Summary {
    fn of(counts: &[usize]) -> Self {
        let n = counts.len().max(1) as f64;
        let mean = counts.iter().sum::<usize>() as f64 / n;
        let variance = counts
            .iter()
            .map(|&c| (c as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        Self {
            min: counts.iter().copied().min().unwrap_or(0),
            mean,
            max: counts.iter().copied().max().unwrap_or(0),
            sd: variance.sqrt(),
        }
    }
}

/// Where each request hash goes (an instance number) with the given instances.
type Placement = dyn Fn(&[usize], &[u64]) -> Vec<usize>;

/// The figures of one way of placing keys.
struct RingFigures {
    per_instance: Summary,
    entries: Option<usize>,
    /// Mean and largest share of keys moved when one instance leaves.
    leave: (f64, f64),
    /// Mean and largest share of keys moved when one instance leaves, among those that were not
    /// on it.
    leave_others: (f64, f64),
    /// Mean and largest share of keys moved when one instance joins.
    join: (f64, f64),
    /// Mean and largest share of keys moved when one instance joins, to an instance other than
    /// the new one.
    join_others: (f64, f64),
}

fn ring_hash() {
    let mut rng = SmallRng::seed_from_u64(3);
    let hashes: Vec<u64> = (0..KEYS)
        .map(|_| hash_key(format!("session-{:016x}", rng.random::<u64>()).as_bytes()))
        .collect();

    let ring_of = |max: usize| {
        move |instances: &[usize], hashes: &[u64]| -> Vec<usize> {
            let ring = ring(instances, max);
            hashes
                .iter()
                .map(|&h| match ring.pick_hash(h) {
                    Pick::Ready(&(i, _)) => i,
                    Pick::Queue | Pick::Fail(_) => usize::MAX,
                })
                .collect()
        }
    };
    let modulo = |instances: &[usize], hashes: &[u64]| -> Vec<usize> {
        hashes
            .iter()
            // The remainder is below the length, a usize.
            .map(|&h| instances[(h % instances.len() as u64) as usize])
            .collect()
    };
    let all: Vec<usize> = (0..RING_INSTANCES).collect();
    let mut columns: Vec<RingFigures> = MAX_RING_SIZES
        .iter()
        .map(|&max| ring_figures(&hashes, &ring_of(max), Some(ring(&all, max).ring_size())))
        .collect();
    columns.push(ring_figures(&hashes, &modulo, None));

    println!(
        "Ring hash: {RING_INSTANCES} instances of weight 1, {KEYS} random keys \
         (churn: each instance leaving in turn, {RING_INSTANCES} new ones joining in turn)"
    );
    println!();
    println!(
        "| | `ring_hash`, default (100 entries per weight, max 2^18) \
         | `ring_hash`, capped (100 entries per weight, max 4096) | `hash % n` |"
    );
    println!("|---|---|---|---|");
    let row = |name: &str, cell: &dyn Fn(&RingFigures) -> String| {
        let cells: Vec<String> = columns.iter().map(cell).collect();
        println!("| {name} | {} |", cells.join(" | "));
    };
    row("ring entries (per instance)", &|f| match f.entries {
        Some(e) => format!("{e} ({:.2})", e as f64 / RING_INSTANCES as f64),
        None => "–".to_owned(),
    });
    row("keys per instance (min / mean / max)", &|f| {
        format!(
            "{} / {:.0} / {}",
            f.per_instance.min, f.per_instance.mean, f.per_instance.max
        )
    });
    row("keys per instance, standard deviation", &|f| {
        format!("{:.0}", f.per_instance.sd)
    });
    let moved = |(mean, max): (f64, f64)| {
        format!(
            "{:.0} ({:.2}%), at most {:.0} ({:.2}%)",
            mean * KEYS as f64,
            mean * 100.0,
            max * KEYS as f64,
            max * 100.0
        )
    };
    row("one instance leaves: keys remapped (ideal 1%)", &|f| {
        moved(f.leave)
    });
    row(
        "one instance leaves: keys of the others remapped (ideal 0)",
        &|f| moved(f.leave_others),
    );
    row("one instance joins: keys remapped (ideal 0.99%)", &|f| {
        moved(f.join)
    });
    row(
        "one instance joins: keys remapped to an old instance (ideal 0)",
        &|f| moved(f.join_others),
    );
    println!();
    println!(
        "By default each instance has 100 entries whatever the others, so only the keys of the \
         instance that leaves or joins move. Capped at 4096, each instance has \
         ceil(4096 / n) entries: 41 for 100 or 101 instances, so a join still moves only the \
         new instance's keys, but 42 for the 99 left after a leave, and their extra entries \
         take keys from one another."
    );
}

/// The ring over the given instances (numbers, keyed by [`instance_key`]), all of weight 1.
fn ring(instances: &[usize], max_ring_size: usize) -> RingHash<(usize, String)> {
    RingHash::new(
        instances.iter().map(|&i| (i, instance_key(i))).collect(),
        0,
        |(_, key)| (key.as_str(), 1),
        DEFAULT_ENTRIES_PER_WEIGHT,
        max_ring_size,
    )
}

fn instance_key(i: usize) -> String {
    format!("user.rpc/10.0.{}.{}:8080", i / 256, i % 256)
}

fn ring_figures(hashes: &[u64], place: &Placement, entries: Option<usize>) -> RingFigures {
    let all: Vec<usize> = (0..RING_INSTANCES).collect();
    let before = place(&all, hashes);
    let mut counts = vec![0; RING_INSTANCES];
    for &i in &before {
        counts[i] += 1;
    }
    // The share of keys moved, and the share moved between instances other than `except`.
    let share_moved = |after: &[usize], except: usize| {
        let moved = |pair: &(&usize, &usize)| pair.0 != pair.1;
        let others = |pair: &(&usize, &usize)| *pair.0 != except && *pair.1 != except;
        let pairs = || before.iter().zip(after);
        let share = |count: usize| count as f64 / hashes.len() as f64;
        (
            share(pairs().filter(moved).count()),
            share(pairs().filter(moved).filter(others).count()),
        )
    };
    // The mean and largest of the shares moved, and of those moved between other instances.
    let summarise = |shares: &[(f64, f64)]| {
        let n = shares.len() as f64;
        let mean_max = |values: &mut dyn Iterator<Item = f64>| {
            let (sum, max) = values.fold((0.0, 0.0f64), |(s, m), v| (s + v, m.max(v)));
            (sum / n, max)
        };
        (
            mean_max(&mut shares.iter().map(|s| s.0)),
            mean_max(&mut shares.iter().map(|s| s.1)),
        )
    };

    let leaves: Vec<(f64, f64)> = (0..RING_INSTANCES)
        .map(|gone| {
            let rest: Vec<usize> = all.iter().copied().filter(|&i| i != gone).collect();
            share_moved(&place(&rest, hashes), gone)
        })
        .collect();
    let joins: Vec<(f64, f64)> = (0..RING_INSTANCES)
        .map(|extra| {
            let mut more = all.clone();
            more.push(RING_INSTANCES + extra);
            share_moved(&place(&more, hashes), RING_INSTANCES + extra)
        })
        .collect();
    let (leave, leave_others) = summarise(&leaves);
    let (join, join_others) = summarise(&joins);
    RingFigures {
        per_instance: Summary::of(&counts),
        entries,
        leave,
        leave_others,
        join,
        join_others,
    }
}
