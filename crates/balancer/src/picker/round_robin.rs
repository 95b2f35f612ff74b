//! `round_robin`: each READY endpoint in turn, starting at a random one.
//!
//! This is grpc-go's `round_robin` picker (`balancer/roundrobin/roundrobin.go`, and gRPC's
//! `doc/load-balancing.md`): the picker holds the READY endpoints and an atomic counter; pick
//! number `k` takes endpoint `(start + k) mod n`. The start is random because the balancer builds
//! a new picker whenever a sub-channel changes state; starting every new picker at index 0 would
//! send a burst to the first endpoint each time (grpc-go's comment says the same). Here the start
//! comes from the `seed` the balancer passes in, so tests can fix it.
//!
//! Picks are spread evenly: over any run of `N` consecutive picks, each of the `n` endpoints
//! serves `N / n` rounded down or up. That holds across threads too, because every pick takes
//! its own counter value with one `fetch_add`.

use std::sync::atomic::{AtomicUsize, Ordering};

use super::rng::{Padded, splitmix64};
use super::{Pick, Picker};

/// Round-robin over the READY endpoints from a random start; see the [module docs](self).
#[derive(Debug)]
pub struct RoundRobin<T> {
    ready: Vec<T>,
    next: Padded<AtomicUsize>,
}

impl<T> RoundRobin<T> {
    /// A picker over `ready` (in resolver order) whose first pick is at an index drawn from
    /// `seed`.
    pub fn new(ready: Vec<T>, seed: u64) -> Self {
        let start = match ready.len() {
            0 => 0,
            // The remainder is below `n`, so it fits a usize.
            n => (splitmix64(seed) % n as u64) as usize,
        };
        Self {
            ready,
            next: Padded(AtomicUsize::new(start)),
        }
    }

    /// The READY endpoints this picker chooses from, in the order given.
    pub fn endpoints(&self) -> &[T] {
        &self.ready
    }
}

impl<T: Send + Sync> Picker<T> for RoundRobin<T> {
    #[inline]
    fn pick(&self) -> Pick<'_, T> {
        let n = self.ready.len();
        if n == 0 {
            return Pick::Queue;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
        self.ready.get(i).map_or(Pick::Queue, Pick::Ready)
    }
}
