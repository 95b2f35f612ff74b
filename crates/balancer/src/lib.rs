//! Client-side gRPC load balancing: one HTTP/2 sub-channel per instance, gRPC connectivity
//! states, connection backoff, keepalive and pickers.
//!
//! A [`Balancer`] follows a resolver's updates ([`switchboard_resolver::Update`]): each
//! instance gets a sub-channel, one HTTP/2 connection owned through hyper's client connection
//! API over a tokio `TcpStream` (`TCP_NODELAY`, TCP keepalive and `TCP_USER_TIMEOUT` set with
//! socket2), optionally with TLS (rustls, ALPN `h2`). Each sub-channel runs gRPC's
//! connectivity state machine ([`ConnectivityState`]) with the gRPC connection backoff
//! ([`ConnectBackoff`]) and HTTP/2 keepalive. Whenever the set of READY sub-channels changes,
//! a new picker ([`Policy`]) is built and swapped in atomically, so an RPC's pick is one
//! atomic load and a few atomic operations, with no lock, no allocation and no task hop.
//!
//! Every fact about every sub-channel is owned by one synchronous control core (no tokio in
//! it, time and randomness passed in), which turns resolver updates, connection events, health
//! messages and ticks into orders for the sub-channels' tasks and pickers for the channel; the
//! tasks around it only do I/O. Besides the policies of [`Policy`] (round-robin, pick-first one
//! instance at a time, p2c, peak-EWMA, weighted round-robin, least-request, ring-hash), a user's
//! own plugs in through [`picker::BuildPicker`]; random subsetting
//! ([`Builder::subset_size`]) bounds the connections of a client, and [`Locality`] prefers the
//! client's zone.
//!
//! Removed instances leave the picker at once; their RPCs in flight, streams included,
//! finish before the connection closes (bounded by a drain timeout). An instance whose address
//! changes under the same key keeps serving on the old address until the new one is READY.
//! With no READY sub-channel, RPCs wait while some connect, and otherwise fail with
//! UNAVAILABLE naming the last connection error, or wait for one if they are wait-for-ready;
//! none waits past its `grpc-timeout`.
//!
//! [`Balancer`] implements `tower::Service<http::Request<tonic::body::Body>>`, so a generated
//! tonic client runs over it: `UserClient::new(balancer)`.
//!
//! # Examples
//!
//! ```no_run
//! use std::time::Duration;
//! use switchboard_balancer::{Balancer, Policy};
//! use switchboard_resolver::StaticResolver;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let resolver = StaticResolver::from_target("direct:///127.0.0.1:50051,127.0.0.1:50052")?;
//! let channel = Balancer::builder()
//!     .target("user.rpc")
//!     .policy(Policy::RoundRobin)
//!     .build_from(&resolver)?;
//! channel.ready(Duration::from_secs(5)).await?;
//! for sub in channel.snapshot().subchannels {
//!     println!("{} {} {}", sub.addr, sub.state, sub.calls_started);
//! }
//! # Ok(()) }
//! ```

mod backoff;
mod balancer;
pub mod breaker;
mod builder;
mod config;
mod connect;
mod control;
mod error;
pub mod metrics;
pub mod picker;
mod published;
mod snapshot;
mod state;
mod subchannel;
pub mod subset;
mod worker;

pub use backoff::ConnectBackoff;
pub use balancer::{
    Balancer, BoxError, DEFAULT_MAX_RESPONSE_MESSAGE_BYTES, MessageLimits, MessageTooLarge,
    ResponseBody, ResponseFuture, Tried, Unprocessed, WaitForReady, grpc_timeout, is_unprocessed,
    oversized_message, request_too_large,
};
pub use builder::{Builder, DEFAULT_MAX_PENDING_CALLS, RingHashOptions};
#[cfg(feature = "tls")]
pub use connect::tls::{TlsConfig, TlsError};
pub use control::{
    FailurePercentageEjection, Locality, OutlierDetection, PickFirstOptions, SuccessRateEjection,
};
pub use error::Error;
pub use picker::Policy;
pub use snapshot::{ChannelSnapshot, SubchannelSnapshot};
pub use state::{ConnectivityState, Health};
