//! Pickers: which READY sub-channel carries the next RPC.
//!
//! The balancer keeps one sub-channel per instance, and every RPC needs one of those that are
//! READY, chosen in nanoseconds, from any number of threads at once. As in grpc-go (a
//! `balancer.Picker` rebuilt on every `UpdateState`), the choice is split in two:
//!
//! - When the set of READY sub-channels changes, the balancer calls [`Policy::build`] with the
//!   READY endpoints in resolver order and swaps the new [`AnyPicker`] in atomically. A picker
//!   never changes its list afterwards.
//! - Every RPC calls [`Picker::pick`] on the current snapshot. It takes `&self`, is lock-free and
//!   allocation-free (a few relaxed atomics at most), and reads no clock, except `p2c_peak_ewma`,
//!   which reads [`Instant::now`](std::time::Instant::now) once, or takes the time from the caller
//!   through [`AnyPicker::pick_at`].
//!
//! A picker with no endpoints answers [`Pick::Queue`]; the balancer turns that into waiting
//! (wait-for-ready RPCs) or a failure with the last connection error (fail-fast RPCs). The
//! pickers here never answer [`Pick::Fail`]; it exists for pickers that know an RPC must fail.
//!
//! # Policies
//!
//! | [`Policy`] | name | algorithm | source |
//! |---|---|---|---|
//! | [`RoundRobin`] | `round_robin` | each endpoint in turn from a random start | grpc-go `balancer/roundrobin` |
//! | [`PickFirst`] | `pick_first` | the first in resolver order, sticky while READY | grpc-go `balancer/pickfirst`, gRFC A62 |
//! | [`P2c`] | `p2c` | the less loaded of two random endpoints, by in-flight RPCs | Mitzenmacher 2001; tower `balance::p2c` |
//! | [`P2c`] | `p2c_peak_ewma` | the same, by peak-EWMA RTT × (in-flight + 1) | Finagle `P2CPeakEwma`; tower `load::PeakEwma` |
//! | [`WeightedRoundRobin`] | `weighted_round_robin` | round-robin in proportion to the registered weights | gRPC C++ `StaticStrideScheduler`, gRFC A58 |
//! | [`LeastRequest`] | `least_request` | the fewest in flight of `choice_count` (default 2) random endpoints | grpc-go `balancer/leastrequest`, gRFC A48 |
//! | [`RingHash`] | `ring_hash` | consistent hashing of the request's hash ([`PickRequest::hash`]) on a ring | grpc-go `balancer/ringhash`, gRFC A42, A76; go-zero `consistent_hash` |
//!
//! A policy of one's own implements [`BuildPicker`]: it is given the READY endpoints whenever
//! they change and returns a [`PickByIndex`], which sees each RPC's [`PickRequest`] (path,
//! metadata, hash) and chooses an index.
//!
//! Each module ([`round_robin`], [`pick_first`], [`p2c`], [`weighted`], [`ewma`]) explains its
//! algorithm and its source. Randomness is passed in as a `seed` (the round-robins' random start,
//! p2c's generator), so that tests are exact; outside tests it should be fresh and random for
//! every picker built, or every rebuild would start round-robin at the same endpoint. Endpoints
//! expose what the pickers read through [`Endpoint`]; [`PeakEwma`] is the lock-free latency
//! estimator behind [`Endpoint::rtt_estimate`].
//!
//! # Examples
//!
//! ```
//! use std::sync::atomic::{AtomicU64, Ordering};
//! use std::time::Instant;
//!
//! use switchboard_balancer::picker::{Endpoint, Pick, Picker, Policy};
//!
//! struct Backend {
//!     addr: &'static str,
//!     in_flight: AtomicU64,
//! }
//!
//! impl Endpoint for Backend {
//!     fn in_flight(&self) -> u64 {
//!         self.in_flight.load(Ordering::Relaxed)
//!     }
//!     fn weight(&self) -> u32 {
//!         1
//!     }
//!     fn rtt_estimate(&self, _now: Instant) -> Option<f64> {
//!         None
//!     }
//! }
//!
//! let backend = |addr| Backend { addr, in_flight: AtomicU64::new(0) };
//! let ready = vec![backend("10.0.0.1:80"), backend("10.0.0.2:80"), backend("10.0.0.3:80")];
//!
//! // Round-robin: three picks visit all three, whatever the random start.
//! let policy: Policy = "round_robin".parse()?;
//! let picker = policy.build(ready, 7, |_| false);
//! let mut seen: Vec<&str> = (0..3)
//!     .filter_map(|_| match picker.pick() {
//!         Pick::Ready(b) => Some(b.addr),
//!         Pick::Queue | Pick::Fail(_) => None,
//!     })
//!     .collect();
//! seen.sort();
//! assert_eq!(seen, ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]);
//!
//! // Nothing READY: the RPC waits for the next picker.
//! let picker = Policy::P2c.build(Vec::<Backend>::new(), 7, |_| false);
//! assert!(matches!(picker.pick(), Pick::Queue));
//! # Ok::<(), switchboard_balancer::picker::UnknownPolicy>(())
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Instant;

pub mod ewma;
pub mod least_request;
pub mod p2c;
pub mod pick_first;
pub mod ring_hash;
mod rng;
pub mod round_robin;
pub mod weighted;

#[cfg(test)]
mod tests;

pub use ewma::PeakEwma;
pub use least_request::LeastRequest;
pub use p2c::P2c;
pub use pick_first::PickFirst;
pub use ring_hash::RingHash;
pub use round_robin::RoundRobin;
pub use weighted::WeightedRoundRobin;

/// What a picker reads from a READY sub-channel. Implemented by the balancer's ready connections.
pub trait Endpoint: Send + Sync {
    /// RPCs in flight on it now.
    fn in_flight(&self) -> u64;

    /// Relative weight, at least 1 (from the registration metadata). `weighted_round_robin`
    /// treats 0 as 1.
    fn weight(&self) -> u32;

    /// Peak-EWMA round-trip estimate in nanoseconds decayed to `now`; `None` before the first
    /// response. See [`PeakEwma::estimate`].
    fn rtt_estimate(&self, now: Instant) -> Option<f64>;

    /// The [`PeakEwma`] behind [`Endpoint::rtt_estimate`], if it is one. `p2c_peak_ewma` then
    /// compares two endpoints by their [`PeakEwma::key`] rather than decaying both estimates to
    /// the present: no `exp()` and no clock read per pick. Defaults to `None`.
    fn peak_ewma(&self) -> Option<&PeakEwma> {
        None
    }

    /// Its stable identity: the instance's key in the registry, which `ring_hash` places it on
    /// the ring by. Defaults to `""`; endpoints used with `ring_hash` must give distinct keys.
    fn key(&self) -> &str {
        ""
    }

    /// Its `host:port`, for policies that route by address. Defaults to `""`.
    fn addr(&self) -> &str {
        ""
    }
}

/// What a pick may look at of the RPC it is for.
#[derive(Clone, Copy, Debug)]
pub struct PickRequest<'a> {
    /// The RPC's path, `/package.Service/Method`.
    pub path: &'a str,
    /// The request's metadata.
    pub headers: &'a http::HeaderMap,
    /// The request's hash for `ring_hash`: from a [`RequestHash`] extension, else from the
    /// configured header; `None` if neither is there (`ring_hash` then picks at random).
    pub hash: Option<u64>,
    /// When the RPC started.
    pub now: Instant,
}

/// A request extension that sets the hash `ring_hash` routes an RPC by (a call option, as
/// grpc-go's `ringhash.SetRequestHash`). Hash a key with [`ring_hash::hash_key`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHash(pub u64);

/// A policy of one's own: builds a picker over the READY endpoints each time they change.
///
/// ```
/// use std::sync::Arc;
/// use switchboard_balancer::picker::{BuildPicker, Choice, Endpoint, PickByIndex, PickRequest};
///
/// /// Sends each method to the endpoint its path hashes to.
/// struct ByMethod;
///
/// struct Picker(usize);
///
/// impl PickByIndex for Picker {
///     fn pick(&self, request: &PickRequest<'_>) -> Choice {
///         match self.0 {
///             0 => Choice::Queue,
///             n => Choice::Index(request.path.len() % n),
///         }
///     }
/// }
///
/// impl BuildPicker for ByMethod {
///     fn name(&self) -> &str {
///         "by_method"
///     }
///     fn build(&self, ready: Vec<Arc<dyn Endpoint>>, _seed: u64) -> Box<dyn PickByIndex> {
///         Box::new(Picker(ready.len()))
///     }
/// }
/// ```
pub trait BuildPicker: Send + Sync + 'static {
    /// The policy's name, for logs.
    fn name(&self) -> &str;

    /// A picker over `ready`, the READY endpoints in resolver order (their live load can be
    /// read through [`Endpoint`]); `seed` is fresh randomness for this picker. Called on the
    /// balancer's task whenever the READY set changes; picks then run on the RPCs' threads.
    fn build(&self, ready: Vec<Arc<dyn Endpoint>>, seed: u64) -> Box<dyn PickByIndex>;
}

/// A picker built by a [`BuildPicker`]: chooses by index into the list it was built over.
pub trait PickByIndex: Send + Sync {
    /// The choice for one RPC. Called on every RPC: it should not block or allocate.
    fn pick(&self, request: &PickRequest<'_>) -> Choice;
}

/// What a [`PickByIndex`] chooses.
#[derive(Debug)]
pub enum Choice {
    /// The endpoint at this index of the list the picker was built over.
    Index(usize),
    /// None can take the RPC now: it waits for the next picker, or fails if fail-fast.
    Queue,
    /// Fail the RPC with this status.
    Fail(tonic::Status),
}

/// The outcome of one pick.
#[derive(Debug)]
pub enum Pick<'a, T> {
    /// Send the RPC on this endpoint.
    Ready(&'a T),
    /// No endpoint can take it now: wait for the next picker (or fail a fail-fast RPC).
    Queue,
    /// Fail the RPC with this status.
    Fail(tonic::Status),
}

/// Chooses an endpoint for each RPC from a fixed set of READY endpoints.
pub trait Picker<T>: Send + Sync {
    /// Chooses the endpoint for one RPC. Lock-free and allocation-free.
    fn pick(&self) -> Pick<'_, T>;
}

/// A load-balancing policy, by its gRPC service-config name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Policy {
    /// `round_robin`: each READY endpoint in turn from a random start. The default.
    #[default]
    RoundRobin,
    /// `pick_first`: the first READY endpoint in resolver order, kept while it stays READY.
    PickFirst,
    /// `p2c`: the one with fewer RPCs in flight of two random READY endpoints.
    P2c,
    /// `p2c_peak_ewma`: the cheaper of two random READY endpoints by peak-EWMA RTT × (in-flight
    /// + 1).
    P2cPeakEwma,
    /// `weighted_round_robin`: round-robin in proportion to each endpoint's weight.
    WeightedRoundRobin,
    /// `least_request`: the one with fewest RPCs in flight of `choice_count` random READY
    /// endpoints (gRFC A48).
    LeastRequest,
    /// `ring_hash`: consistent hashing of a request key onto a ring of the READY endpoints
    /// (gRFC A42's hash, go-zero's 100 entries per unit of weight), so that a key keeps its
    /// endpoint while others come and go.
    RingHash,
}

impl Policy {
    /// Every policy, in declaration order.
    pub const ALL: [Policy; 7] = [
        Policy::RoundRobin,
        Policy::PickFirst,
        Policy::P2c,
        Policy::P2cPeakEwma,
        Policy::WeightedRoundRobin,
        Policy::LeastRequest,
        Policy::RingHash,
    ];

    /// The policy's name: `round_robin`, `pick_first`, `p2c`, `p2c_peak_ewma`,
    /// `weighted_round_robin`, `least_request` or `ring_hash`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Policy::RoundRobin => "round_robin",
            Policy::PickFirst => "pick_first",
            Policy::P2c => "p2c",
            Policy::P2cPeakEwma => "p2c_peak_ewma",
            Policy::WeightedRoundRobin => "weighted_round_robin",
            Policy::LeastRequest => "least_request",
            Policy::RingHash => "ring_hash",
        }
    }

    /// Builds this policy's picker over the READY endpoints, given in resolver order.
    /// `seed` feeds the picker's random start / random choices (deterministic for tests).
    /// For pick_first, `sticky` tells whether an endpoint is the one picked before: it stays
    /// picked while READY; otherwise the first endpoint in order is picked.
    pub fn build<T: Endpoint>(
        self,
        ready: Vec<T>,
        seed: u64,
        sticky: impl FnMut(&T) -> bool,
    ) -> AnyPicker<T> {
        match self {
            Policy::RoundRobin => AnyPicker::RoundRobin(RoundRobin::new(ready, seed)),
            Policy::PickFirst => AnyPicker::PickFirst(PickFirst::new(ready, sticky)),
            Policy::P2c => AnyPicker::P2c(P2c::new(ready, seed, false)),
            Policy::P2cPeakEwma => AnyPicker::P2c(P2c::new(ready, seed, true)),
            Policy::WeightedRoundRobin => {
                AnyPicker::WeightedRoundRobin(WeightedRoundRobin::new(ready, seed))
            }
            Policy::LeastRequest => AnyPicker::LeastRequest(LeastRequest::new(
                ready,
                seed,
                least_request::DEFAULT_CHOICE_COUNT,
            )),
            Policy::RingHash => AnyPicker::RingHash(RingHash::new(
                ready,
                seed,
                |e| (e.key(), e.weight()),
                ring_hash::DEFAULT_ENTRIES_PER_WEIGHT,
                ring_hash::DEFAULT_MAX_RING_SIZE,
            )),
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Policy {
    type Err = UnknownPolicy;

    /// Parses a policy name. Case, `_` and `-` are ignored, so `round_robin`, `round-robin`,
    /// `RoundRobin` and `ROUND_ROBIN` are all [`Policy::RoundRobin`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        fn significant(name: &str) -> impl Iterator<Item = u8> + '_ {
            name.bytes()
                .filter(|b| !matches!(b, b'_' | b'-'))
                .map(|b| b.to_ascii_lowercase())
        }
        let s = s.trim();
        Policy::ALL
            .into_iter()
            .find(|p| significant(p.as_str()).eq(significant(s)))
            .ok_or_else(|| UnknownPolicy(s.to_owned()))
    }
}

/// A load-balancing policy name that is not one of [`Policy`]'s.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown load-balancing policy {0:?}: expected one of round_robin, pick_first, p2c, \
     p2c_peak_ewma, weighted_round_robin, least_request, ring_hash"
)]
pub struct UnknownPolicy(String);

impl UnknownPolicy {
    /// The name that was not recognised.
    pub fn name(&self) -> &str {
        &self.0
    }
}

/// The picker of any [`Policy`], dispatched by `match` (no virtual call).
#[derive(Debug)]
pub enum AnyPicker<T> {
    /// See [`RoundRobin`].
    RoundRobin(RoundRobin<T>),
    /// See [`PickFirst`].
    PickFirst(PickFirst<T>),
    /// See [`P2c`]; also `p2c_peak_ewma`.
    P2c(P2c<T>),
    /// See [`WeightedRoundRobin`].
    WeightedRoundRobin(WeightedRoundRobin<T>),
    /// See [`LeastRequest`].
    LeastRequest(LeastRequest<T>),
    /// See [`RingHash`].
    RingHash(RingHash<T>),
    /// A picker of a [`BuildPicker`].
    Custom(Custom<T>),
}

/// The picker of a [`BuildPicker`], over the endpoints it was built for.
pub struct Custom<T> {
    ready: Vec<T>,
    picker: Box<dyn PickByIndex>,
}

impl<T> fmt::Debug for Custom<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Custom")
            .field("endpoints", &self.ready.len())
            .finish_non_exhaustive()
    }
}

impl<T: Endpoint + Clone + 'static> Custom<T> {
    /// `policy`'s picker over `ready`.
    pub fn new(policy: &dyn BuildPicker, ready: Vec<T>, seed: u64) -> Self {
        let endpoints = ready
            .iter()
            .map(|e| Arc::new(e.clone()) as Arc<dyn Endpoint>)
            .collect();
        Self {
            picker: policy.build(endpoints, seed),
            ready,
        }
    }
}

impl<T> AnyPicker<T> {
    /// The READY endpoints the picker was built over, in the order given.
    pub fn endpoints(&self) -> &[T] {
        match self {
            AnyPicker::RoundRobin(p) => p.endpoints(),
            AnyPicker::PickFirst(p) => p.endpoints(),
            AnyPicker::P2c(p) => p.endpoints(),
            AnyPicker::WeightedRoundRobin(p) => p.endpoints(),
            AnyPicker::LeastRequest(p) => p.endpoints(),
            AnyPicker::RingHash(p) => p.endpoints(),
            AnyPicker::Custom(p) => &p.ready,
        }
    }

    /// Whether picks look at the request (its hash or metadata): `ring_hash` and custom
    /// policies. The others pick the same whatever the request.
    pub fn reads_request(&self) -> bool {
        matches!(self, AnyPicker::RingHash(_) | AnyPicker::Custom(_))
    }
}

impl<T: Endpoint> AnyPicker<T> {
    /// [`Picker::pick`] with the clock already read: `now` is when the RPC starts. Only
    /// `p2c_peak_ewma` reads the time ([`P2c::pick_at`]); it then saves its one clock read per pick.
    #[inline]
    pub fn pick_at(&self, now: Instant) -> Pick<'_, T> {
        match self {
            AnyPicker::RoundRobin(p) => p.pick(),
            AnyPicker::PickFirst(p) => p.pick(),
            AnyPicker::P2c(p) => p.pick_at(now),
            AnyPicker::WeightedRoundRobin(p) => p.pick(),
            AnyPicker::LeastRequest(p) => p.pick(),
            AnyPicker::RingHash(p) => p.pick(),
            AnyPicker::Custom(p) => p.pick_at(now),
        }
    }

    /// The pick for one RPC, given what the request carries.
    #[inline]
    pub fn pick_for(&self, request: &PickRequest<'_>) -> Pick<'_, T> {
        match self {
            AnyPicker::RingHash(p) => match request.hash {
                Some(hash) => p.pick_hash(hash),
                None => p.pick(),
            },
            AnyPicker::Custom(p) => p.pick_for(request),
            other => other.pick_at(request.now),
        }
    }
}

impl<T> Custom<T> {
    /// A pick for an RPC nothing is known of.
    fn pick_at(&self, now: Instant) -> Pick<'_, T> {
        self.pick_for(&PickRequest {
            path: "",
            headers: &http::HeaderMap::new(),
            hash: None,
            now,
        })
    }

    fn pick_for(&self, request: &PickRequest<'_>) -> Pick<'_, T> {
        match self.picker.pick(request) {
            Choice::Index(i) => self.ready.get(i).map_or(Pick::Queue, Pick::Ready),
            Choice::Queue => Pick::Queue,
            Choice::Fail(status) => Pick::Fail(status),
        }
    }
}

impl<T: Endpoint> Picker<T> for AnyPicker<T> {
    #[inline]
    fn pick(&self) -> Pick<'_, T> {
        match self {
            AnyPicker::RoundRobin(p) => p.pick(),
            AnyPicker::PickFirst(p) => p.pick(),
            AnyPicker::P2c(p) => p.pick(),
            AnyPicker::WeightedRoundRobin(p) => p.pick(),
            AnyPicker::LeastRequest(p) => p.pick(),
            AnyPicker::RingHash(p) => p.pick(),
            AnyPicker::Custom(p) => p.pick_at(Instant::now()),
        }
    }
}
