//! `pick_first`: one endpoint for everything, the first READY in resolver order, and sticky.
//!
//! gRPC's default policy (grpc-go `balancer/pickfirst`, gRFC A62 "pick_first: sticky
//! TRANSIENT_FAILURE and address order randomization"): the channel sends every RPC to one
//! backend, the first in the resolver's order that connects, and keeps using it for as long as it
//! stays READY, even when the resolver later lists another address first. Only when the chosen one
//! leaves READY does the channel move on, again to the first READY in order.
//!
//! The balancer owns the connections and the order of connection attempts; this picker only
//! makes the choice among the endpoints that are READY when it is built. The balancer passes a
//! `sticky` predicate that recognises the endpoint chosen by the previous picker: if that one is
//! still in the READY list it is chosen again, otherwise the first one is. A pick is then a load of
//! a fixed index, with no atomic write at all.

use super::{Pick, Picker};

/// Always the same READY endpoint; see the [module docs](self).
#[derive(Debug)]
pub struct PickFirst<T> {
    ready: Vec<T>,
    chosen: usize,
}

impl<T> PickFirst<T> {
    /// A picker over `ready` (in resolver order) that chooses the first endpoint for which
    /// `sticky` returns `true` (the one picked before, still READY), or else the first endpoint.
    pub fn new(ready: Vec<T>, sticky: impl FnMut(&T) -> bool) -> Self {
        let chosen = ready.iter().position(sticky).unwrap_or(0);
        Self { ready, chosen }
    }

    /// The endpoint every pick returns, or `None` when nothing is READY.
    pub fn chosen(&self) -> Option<&T> {
        self.ready.get(self.chosen)
    }

    /// The READY endpoints this picker was built over, in the order given.
    pub fn endpoints(&self) -> &[T] {
        &self.ready
    }
}

impl<T: Send + Sync> Picker<T> for PickFirst<T> {
    #[inline]
    fn pick(&self) -> Pick<'_, T> {
        self.chosen().map_or(Pick::Queue, Pick::Ready)
    }
}
