//! Building a [`Balancer`]: its options, with their defaults.

use std::sync::Arc;
use std::time::Duration;

use switchboard_resolver::{Resolution, Resolve};
use tokio::sync::oneshot;
use tracing::Instrument;

use crate::backoff::ConnectBackoff;
use crate::balancer::{Balancer, Handle, MessageLimits};
use crate::config::Config;
use crate::connect::{ConnectOptions, HttpConnector};
use crate::control::{self, Core, CustomPolicy, Locality, OutlierDetection, PickFirstOptions};
use crate::error::Error;
use crate::picker::{BuildPicker, Policy};
use crate::published::Published;
use crate::subchannel::Settings;
use crate::worker::Worker;

/// Options of a [`Balancer`], set like tonic's `Endpoint`: each setter says its default.
///
/// # Examples
///
/// ```no_run
/// use std::time::Duration;
/// use switchboard_balancer::{Balancer, Policy};
/// use switchboard_resolver::StaticResolver;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let resolver = StaticResolver::from_target("direct:///127.0.0.1:50051,127.0.0.1:50052")?;
/// let balancer = Balancer::builder()
///     .target("user.rpc")
///     .policy(Policy::P2c)
///     .keepalive(Some(Duration::from_secs(10)))
///     .build_from(&resolver)?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Builder {
    target: String,
    policy: Policy,
    backoff: ConnectBackoff,
    keepalive: Option<Duration>,
    keepalive_timeout: Duration,
    keepalive_while_idle: bool,
    tcp_keepalive: Option<Duration>,
    drain_timeout: Duration,
    wait_for_ready: bool,
    rtt_decay: Duration,
    metrics: bool,
    initial_stream_window: Option<u32>,
    initial_connection_window: Option<u32>,
    /// The TLS settings, and whether every instance not registered insecure uses them.
    #[cfg(feature = "tls")]
    tls: Option<(crate::connect::tls::TlsConfig, bool)>,
    seed: Option<u64>,
    health_check: Option<String>,
    outlier_detection: Option<OutlierDetection>,
    pick_first: PickFirstOptions,
    choice_count: u32,
    ring_hash: RingHashOptions,
    custom: Option<CustomPolicy>,
    subset_size: Option<usize>,
    locality: Option<Locality>,
    user_agent: Option<String>,
    max_pending: usize,
    limits: MessageLimits,
    authority: Option<String>,
    slow_call: Option<Duration>,
    breaker: bool,
    /// Another balancer's breakers, shared ([`Builder::breakers_of`]).
    shared_breakers: Option<Arc<crate::breaker::Breakers>>,
}

/// How many calls wait at most for a free stream when every instance's peer has reached its
/// `MAX_CONCURRENT_STREAMS` (as Envoy's `max_pending_requests`); see
/// [`Builder::max_pending_calls`].
pub const DEFAULT_MAX_PENDING_CALLS: usize = 1024;

/// `ring_hash`'s options; see [`Builder::ring_hash`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingHashOptions {
    /// The entries on the ring per unit of weight: 100, as go-zero's `consistent_hash`.
    pub entries_per_weight: usize,
    /// The largest ring: 2^18 entries; above it the entries are scaled down and remapping is no
    /// longer minimal.
    pub max_ring_size: usize,
    /// The metadata entry whose value is hashed to route an RPC (gRFC A76's
    /// `request_hash_header`), e.g. `x-user-id`. A [`RequestHash`](crate::picker::RequestHash)
    /// extension on a request takes precedence; an RPC with neither goes to a random endpoint.
    pub hash_header: Option<String>,
}

impl Default for RingHashOptions {
    fn default() -> Self {
        Self {
            entries_per_weight: crate::picker::ring_hash::DEFAULT_ENTRIES_PER_WEIGHT,
            max_ring_size: crate::picker::ring_hash::DEFAULT_MAX_RING_SIZE,
            hash_header: None,
        }
    }
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            target: "the service".into(),
            policy: Policy::RoundRobin,
            backoff: ConnectBackoff::default(),
            keepalive: Some(Duration::from_secs(20)),
            keepalive_timeout: Duration::from_secs(20),
            keepalive_while_idle: false,
            tcp_keepalive: Some(Duration::from_secs(20)),
            drain_timeout: Duration::from_secs(30),
            wait_for_ready: false,
            rtt_decay: Duration::from_secs(10),
            metrics: true,
            initial_stream_window: None,
            initial_connection_window: None,
            #[cfg(feature = "tls")]
            tls: None,
            seed: None,
            health_check: None,
            outlier_detection: None,
            pick_first: PickFirstOptions::default(),
            choice_count: crate::picker::least_request::DEFAULT_CHOICE_COUNT,
            ring_hash: RingHashOptions::default(),
            custom: None,
            subset_size: None,
            locality: None,
            user_agent: None,
            max_pending: DEFAULT_MAX_PENDING_CALLS,
            limits: MessageLimits::default(),
            authority: None,
            slow_call: None,
            breaker: false,
            shared_breakers: None,
        }
    }
}

impl Balancer {
    /// Options for a new balancer.
    pub fn builder() -> Builder {
        Builder::default()
    }
}

impl Builder {
    /// The name of what is balanced, used in logs and error messages (an etcd prefix or a
    /// service name). Defaults to "the service".
    pub fn target(mut self, target: impl Into<String>) -> Self {
        self.target = target.into();
        self
    }

    /// How each RPC picks a sub-channel. Defaults to [`Policy::RoundRobin`].
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }

    /// Connection backoff. Defaults to the gRPC spec's: 1 s, ×1.6, ±0.2, at most 120 s, at
    /// least 20 s per attempt.
    pub fn backoff(mut self, backoff: ConnectBackoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The HTTP/2 PING interval: a connection on which no frame arrived for this long is
    /// pinged. `None` turns keepalive off. Defaults to 20 s (go-zero's default).
    pub fn keepalive(mut self, interval: Option<Duration>) -> Self {
        self.keepalive = interval;
        self
    }

    /// How long a PING may stay unanswered before the connection is closed (also the socket's
    /// `TCP_USER_TIMEOUT` while keepalive is on). Defaults to 20 s.
    pub fn keepalive_timeout(mut self, timeout: Duration) -> Self {
        self.keepalive_timeout = timeout;
        self
    }

    /// Whether to ping connections that have no RPC in flight. Defaults to false (servers
    /// with grpc-go's default policy answer such pings with GOAWAY `too_many_pings`).
    pub fn keepalive_while_idle(mut self, enabled: bool) -> Self {
        self.keepalive_while_idle = enabled;
        self
    }

    /// TCP keepalive idle time and probe interval. `None` turns it off. Defaults to 20 s.
    pub fn tcp_keepalive(mut self, idle: Option<Duration>) -> Self {
        self.tcp_keepalive = idle;
        self
    }

    /// How long a removed instance's RPCs in flight may take before its connection is closed
    /// anyway. Defaults to 30 s.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Whether RPCs wait for a READY instance when every instance is in TRANSIENT_FAILURE
    /// (gRPC's wait-for-ready), instead of failing at once with UNAVAILABLE. A request can
    /// override it with a [`WaitForReady`](crate::WaitForReady) extension. Either way an RPC
    /// never waits past its deadline (`grpc-timeout`). Defaults to false.
    pub fn wait_for_ready(mut self, enabled: bool) -> Self {
        self.wait_for_ready = enabled;
        self
    }

    /// The decay time of the peak-EWMA latency estimate used by [`Policy::P2cPeakEwma`].
    /// Defaults to 10 s.
    pub fn rtt_decay(mut self, decay: Duration) -> Self {
        self.rtt_decay = decay;
        self
    }

    /// HTTP/2 initial stream window. Defaults to hyper's (2 MiB).
    pub fn initial_stream_window_size(mut self, size: Option<u32>) -> Self {
        self.initial_stream_window = size;
        self
    }

    /// HTTP/2 initial connection window. Defaults to hyper's (5 MiB).
    pub fn initial_connection_window_size(mut self, size: Option<u32>) -> Self {
        self.initial_connection_window = size;
        self
    }

    /// Connects with TLS to every instance, except those whose registration says they are
    /// not secure (metadata `secure=false`: kratos' `grpc://` endpoints, `isSecure=false`).
    /// Defaults to plain TCP.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: crate::connect::tls::TlsConfig) -> Self {
        self.tls = Some((tls, true));
        self
    }

    /// Connects with TLS only to the instances whose registration says they are secure
    /// (metadata `secure=true`: kratos' `grpcs://` endpoints, `isSecure=true`), and with plain
    /// TCP to the others. Without this or [`Builder::tls`], an instance registered as secure
    /// never connects: its sub-channel's error says why.
    #[cfg(feature = "tls")]
    pub fn tls_when_registered(mut self, tls: crate::connect::tls::TlsConfig) -> Self {
        self.tls = Some((tls, false));
        self
    }

    /// Checks the health of every READY connection with `grpc.health.v1.Health/Watch` for
    /// `service` (`""`: the server as a whole), and picks it only while SERVING (gRFC A17).
    /// Servers without the health service count as healthy. Defaults to off.
    pub fn health_check(mut self, service: Option<String>) -> Self {
        self.health_check = service;
        self
    }

    /// Ejects instances whose RPCs fail much more than the others' for a while (gRFC A50).
    /// Defaults to off.
    pub fn outlier_detection(mut self, settings: Option<OutlierDetection>) -> Self {
        self.outlier_detection = settings;
        self
    }

    /// Seeds every random choice (picker start, p2c, backoff jitter), for reproducible tests.
    /// Defaults to a seed from the OS.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// How [`Policy::PickFirst`] connects: one instance at a time, the next after a failure
    /// or after [`PickFirstOptions::attempt_delay`], and only to the chosen one unless
    /// [`PickFirstOptions::keep_warm`]. Defaults to gRFC A61's 250 ms, not kept warm.
    pub fn pick_first(mut self, options: PickFirstOptions) -> Self {
        self.pick_first = options;
        self
    }

    /// How many random READY instances [`Policy::LeastRequest`] compares per RPC: 2 to 10
    /// (gRFC A48's bounds; out-of-range values are clamped). Defaults to 2.
    pub fn least_request_choices(mut self, choice_count: u32) -> Self {
        self.choice_count = choice_count;
        self
    }

    /// [`Policy::RingHash`]'s ring size and the metadata entry it routes by.
    pub fn ring_hash(mut self, options: RingHashOptions) -> Self {
        self.ring_hash = options;
        self
    }

    /// A policy of one's own, in place of [`Builder::policy`]: see
    /// [`BuildPicker`](crate::picker::BuildPicker).
    pub fn custom_policy(mut self, policy: impl BuildPicker) -> Self {
        self.custom = Some(CustomPolicy(Arc::new(policy)));
        self
    }

    /// Connects to at most `size` instances, chosen by random subsetting (gRFC A68): stable
    /// under churn, spread evenly across clients. `None` (the default) connects to every
    /// instance.
    pub fn subset_size(mut self, size: Option<usize>) -> Self {
        self.subset_size = size;
        self
    }

    /// Prefers the instances registered in the client's zone, spilling over to the others when
    /// too few of them can take RPCs. Defaults to none.
    pub fn locality(mut self, locality: Option<Locality>) -> Self {
        self.locality = locality;
        self
    }

    /// What the `user-agent` of requests that carry none starts with, as grpc-go's
    /// `WithUserAgent`: `"gateway/1.4"` sends `gateway/1.4 grpc-rust-switchboard/VERSION`.
    /// Defaults to none: `grpc-rust-switchboard/VERSION`.
    pub fn user_agent(mut self, prefix: impl Into<String>) -> Self {
        self.user_agent = Some(prefix.into());
        self
    }

    /// How many calls may wait at once for a free stream (1024 unless set).
    ///
    /// A call never goes to a connection whose peer already has its `MAX_CONCURRENT_STREAMS`
    /// open while another READY instance has room: it goes to the least busy one that has.
    /// When none has, it waits in a queue (in order, woken as streams free up), until its
    /// deadline; past `max` waiting calls, a call fails at once with RESOURCE_EXHAUSTED. A call
    /// that is cancelled or expires leaves the queue at once.
    pub fn max_pending_calls(mut self, max: usize) -> Self {
        self.max_pending = max;
        self
    }

    /// The largest gRPC message an RPC may send, in bytes as sent (after compression); no
    /// limit unless set. A larger one is not sent: the RPC fails with RESOURCE_EXHAUSTED. The
    /// [`MessageLimits`] request extension overrides it per RPC.
    pub fn max_request_message_bytes(mut self, max: usize) -> Self {
        self.limits.request = max;
        self
    }

    /// The largest gRPC message an RPC may receive, in bytes as received (4 MiB unless set,
    /// as in grpc-go). A larger one resets the stream: the RPC fails with RESOURCE_EXHAUSTED.
    /// The [`MessageLimits`] request extension overrides it per RPC.
    pub fn max_response_message_bytes(mut self, max: usize) -> Self {
        self.limits.response = max;
        self
    }

    /// The `:authority` every RPC carries, as grpc-go's `WithAuthority`, instead of the
    /// address of the instance it goes to: for servers or proxies that route by it. It does
    /// not change the name TLS verifies.
    pub fn authority(mut self, authority: impl Into<String>) -> Self {
        self.authority = Some(authority.into());
        self
    }

    /// Logs the end of every call whose response came (its headers without a status), as
    /// go-zero's duration interceptor does: failed at ERROR (`[RPC] fail`, with its instance,
    /// method, duration and status code), succeeded but slower than `threshold` at WARN
    /// (`[RPC] ok - slowcall`); go-zero's threshold is 500 ms. A call that fails before a
    /// response (a status alone, or no answer) is not logged here: its caller may send it again
    /// and knows the outcome (`switchboard::Channel` logs it). Off unless set.
    pub fn call_log(mut self, threshold: Option<Duration>) -> Self {
        self.slow_call = threshold;
        self
    }

    /// Keeps an adaptive breaker per method ([`crate::breaker`]: go-zero's, the client-side
    /// throttle of Google's SRE book), shown in [`crate::ChannelSnapshot::breakers`]. The
    /// balancer itself sends every call: its caller asks [`Balancer::breakers`] before an RPC
    /// and reports its final status, as switchboard's `Channel` does for unary RPCs. Off unless
    /// set.
    pub fn breaker(mut self, enabled: bool) -> Self {
        self.breaker = enabled;
        self
    }

    /// Shares `other`'s per-method breakers, if it keeps them, instead of keeping its own:
    /// balancers of the same service in one process (one per runtime worker, say) then throttle
    /// together, as one client would, and each one's snapshot shows them.
    pub fn breakers_of(mut self, other: &Balancer) -> Self {
        self.shared_breakers = other.shared_breakers();
        self
    }

    /// Whether the balancer records its metrics through the `metrics` facade (on unless
    /// turned off): picks, results, durations, sub-channel states, instances, resolver updates.
    /// The per-instance figures [`crate::metrics::render_instances`] renders from snapshots
    /// are there either way.
    pub fn metrics(mut self, enabled: bool) -> Self {
        self.metrics = enabled;
        self
    }

    /// Starts the balancer on `resolver`'s instances. Must be called within a tokio runtime.
    pub fn build_from(self, resolver: &impl Resolve) -> Result<Balancer, Error> {
        self.build(resolver.resolve())
    }

    /// Starts the balancer on a resolution's updates. Must be called within a tokio runtime.
    pub fn build(self, resolution: Resolution) -> Result<Balancer, Error> {
        let options = ConnectOptions {
            keepalive_timeout: self.keepalive_timeout,
            keepalive_while_idle: self.keepalive_while_idle,
            tcp_keepalive: self.tcp_keepalive,
            initial_stream_window: self.initial_stream_window,
            initial_connection_window: self.initial_connection_window,
            #[cfg(feature = "tls")]
            tls: self
                .tls
                .clone()
                .map(|(config, all)| crate::connect::tls::TlsPolicy::new(config, all).map(Arc::new))
                .transpose()
                .map_err(Error::tls)?,
        };
        if let Some(o) = &self.outlier_detection {
            o.validate()
                .map_err(|e| Error::config(format!("outlier detection: {e}")))?;
        }
        if self.keepalive.is_some_and(|k| k.is_zero()) {
            return Err(Error::config("the keepalive interval must be positive"));
        }
        if self.subset_size == Some(0) {
            return Err(Error::config("the subset size must be at least 1"));
        }
        let hash_header = self
            .ring_hash
            .hash_header
            .as_deref()
            .map(|h| {
                http::HeaderName::from_bytes(h.as_bytes())
                    .map_err(|_| Error::config(format!("ring_hash: {h:?} is not a metadata key")))
            })
            .transpose()?;
        let ours = concat!("grpc-rust-switchboard/", env!("CARGO_PKG_VERSION"));
        let user_agent = match &self.user_agent {
            Some(prefix) => http::HeaderValue::from_str(&format!("{prefix} {ours}"))
                .map_err(|_| Error::config(format!("user agent {prefix:?}: not a header value")))?,
            None => http::HeaderValue::from_static(ours),
        };
        let authority = self
            .authority
            .as_deref()
            .map(|a| {
                a.parse::<http::uri::Authority>()
                    .map_err(|e| Error::config(format!("authority {a:?}: {e}")))
            })
            .transpose()?;
        if self.limits.request == 0 || self.limits.response == 0 {
            return Err(Error::config("message size limits must be at least 1 byte"));
        }
        let connector = HttpConnector::new(options);
        let (inner, close) = self.spawn(resolution, connector);
        Ok(Balancer::new(Arc::new(Handle {
            inner,
            wait_for_ready: self.wait_for_ready,
            track_rtt: self.policy == Policy::P2cPeakEwma && self.custom.is_none(),
            hash_header,
            user_agent,
            max_pending: self.max_pending,
            limits: self.limits,
            authority,
            slow_call: self.slow_call,
            breakers: self.shared_breakers.clone().or_else(|| {
                self.breaker
                    .then(|| Arc::new(crate::breaker::Breakers::new(&self.target, self.metrics)))
            }),
            _close: close,
        })))
    }

    /// Starts the worker with any connector.
    pub(crate) fn spawn<C: crate::connect::Connector>(
        &self,
        resolution: Resolution,
        connector: C,
    ) -> (Arc<Published<C::Sender>>, oneshot::Sender<()>) {
        let control = Arc::new(control::Config {
            target: self.target.clone(),
            policy: self.policy,
            drain_timeout: self.drain_timeout,
            health_checked: self.health_check.is_some(),
            outlier: self.outlier_detection.clone(),
            pick_first: self.pick_first,
            choice_count: self.choice_count,
            ring: (
                self.ring_hash.entries_per_weight,
                self.ring_hash.max_ring_size,
            ),
            custom: self.custom.clone(),
            subset_size: self.subset_size,
            locality: self.locality.clone(),
        });
        let config = Arc::new(Config {
            control: control.clone(),
            backoff: self.backoff,
            subchannel: Settings {
                keepalive: self.keepalive,
                drain_timeout: self.drain_timeout,
                health_check: self.health_check.clone(),
            },
            rtt_decay: self.rtt_decay,
            metrics: self.metrics,
        });
        let seed = self.seed.unwrap_or_else(rand::random);
        let core = Arc::new(std::sync::Mutex::new(Core::new(
            control,
            seed,
            tokio::time::Instant::now().into_std(),
        )));
        let published = Arc::new(Published::new(self.target.clone()));
        published.set_view(core.clone());
        let (close_tx, close_rx) = oneshot::channel();
        let worker = Worker::new(
            core,
            published.clone(),
            Arc::new(connector),
            config,
            resolution.status_watch(),
        );
        let span = tracing::info_span!("balancer", target = %self.target);
        tokio::spawn(worker.run(resolution, close_rx).instrument(span));
        (published, close_tx)
    }
}
