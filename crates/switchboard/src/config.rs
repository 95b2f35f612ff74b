//! `ClientConfig`: where a client finds its instances and how it talks to them, read from YAML,
//! TOML or JSON with go-zero's field names (`Etcd: {Hosts, Key, User, Pass, CertFile,
//! CertKeyFile, CACertFile}`, `Endpoints`, `Target`, `NonBlock`, `Timeout` in milliseconds,
//! `KeepaliveTime`) plus switchboard's own. snake_case names are accepted too.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use switchboard_balancer::Policy;
use switchboard_balancer::{FailurePercentageEjection, OutlierDetection, SuccessRateEjection};
use switchboard_resolver::Format;

use crate::duration;
use crate::error::Error;

mod balancing;
mod server;

pub use server::{MethodTimeout, ServerConfig, ServerMiddlewares, ServerTls, StatConf};

pub(crate) use balancing::apply as apply_balancing;
pub use balancing::{LeastRequestSection, LocalitySection, PickFirstSection, RingHashSection};

/// A client's configuration.
///
/// # Examples
///
/// ```
/// let config = switchboard::ClientConfig::from_yaml(
///     "
/// Etcd:
///   Hosts: [127.0.0.1:2379]
///   Key: user.rpc
/// Timeout: 2000
/// Policy: p2c
/// ",
/// )?;
/// assert_eq!(config.timeout, Some(std::time::Duration::from_secs(2)));
/// # Ok::<(), switchboard::Error>(())
/// ```
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Discover instances in etcd.
    #[serde(alias = "etcd")]
    pub etcd: Option<EtcdSection>,
    /// Or a fixed list of `host:port`.
    #[serde(default, alias = "endpoints")]
    pub endpoints: Vec<String>,
    /// Or a target: `direct:///host:port,host:port`, or etcd as go-zero writes it today
    /// (`etcd:///host:port,host:port?key=KEY`, the key URL-encoded) or did before
    /// (`etcd://host:port,host:port/key`); `discov://` is the same as `etcd://`.
    #[serde(alias = "target")]
    pub target: Option<String>,
    /// Return from `Client::connect` at once (`true`, go-zero's default), RPCs waiting for a
    /// READY instance within their deadline; `false`: `connect` waits, at most `DialTimeout`,
    /// until one is READY, and fails otherwise.
    #[serde(default = "yes", alias = "non_block")]
    pub non_block: bool,
    /// Lets [`Client::per_worker`](crate::Client::per_worker) give each runtime worker its own
    /// connections (Envoy's per-worker connection pools): the client's resolution is shared
    /// among them, so one etcd watch feeds them all. `false` by default.
    #[serde(default, alias = "per_worker")]
    pub per_worker: bool,
    /// The default deadline of every unary RPC (milliseconds, or `"2s"`). `0` means none.
    /// Defaults to 2 s, as go-zero, which applies it to unary calls only: streaming RPCs (those
    /// marked [`Streaming`](crate::Streaming), or listed in `StreamingMethods`) get
    /// `StreamTimeout` instead.
    #[serde(
        default = "default_timeout",
        alias = "timeout",
        deserialize_with = "duration::optional"
    )]
    pub timeout: Option<Duration>,
    /// The default deadline of streaming RPCs. None unless set: a stream lasts as long as it
    /// lasts, unless it asks for a deadline (or its method has one in the service config).
    #[serde(
        default,
        alias = "stream_timeout",
        deserialize_with = "duration::optional"
    )]
    pub stream_timeout: Option<Duration>,
    /// The streaming methods, by path: `/package.Service/Method`, or `/package.Service/*` for
    /// every method of a service. Raw tonic clients have no other way to tell the channel that
    /// a call is streaming; a request can also carry the [`Streaming`](crate::Streaming)
    /// extension.
    #[serde(default, alias = "streaming_methods")]
    pub streaming_methods: Vec<String>,
    /// HTTP/2 keepalive ping interval. Defaults to 20 s.
    #[serde(
        default,
        alias = "keepalive_time",
        deserialize_with = "duration::optional"
    )]
    pub keepalive_time: Option<Duration>,
    /// How long a ping may go unanswered. Defaults to 20 s.
    #[serde(
        default,
        alias = "keepalive_timeout",
        deserialize_with = "duration::optional"
    )]
    pub keepalive_timeout: Option<Duration>,
    /// The load-balancing policy: `round_robin` (default), `pick_first`, `p2c`,
    /// `p2c_peak_ewma`, `weighted_round_robin`, `least_request`, `ring_hash`.
    #[serde(default, alias = "policy", deserialize_with = "policy")]
    pub policy: Policy,
    /// How long `Client::connect` waits for a READY instance. Defaults to 3 s.
    #[serde(
        default,
        alias = "dial_timeout",
        deserialize_with = "duration::optional"
    )]
    pub dial_timeout: Option<Duration>,
    /// How long a removed instance's RPCs may take before its connection closes. Defaults to
    /// 30 s.
    #[serde(
        default,
        alias = "drain_timeout",
        deserialize_with = "duration::optional"
    )]
    pub drain_timeout: Option<Duration>,
    /// Whether RPCs wait for a READY instance instead of failing while all have failed.
    #[serde(default, alias = "wait_for_ready")]
    pub wait_for_ready: bool,
    /// Client-side health checking (gRFC A17): the service whose `grpc.health.v1` status to
    /// watch on every connection (`""`: the server as a whole); instances are picked only
    /// while SERVING. Off unless set (here, or by the service config's `healthCheckConfig`).
    #[serde(default, alias = "health_check")]
    pub health_check: Option<String>,
    /// Outlier detection (gRFC A50): off unless set.
    #[serde(default, alias = "outlier_detection")]
    pub outlier_detection: Option<OutlierSection>,
    /// `pick_first`'s connections: one instance at a time, 250 ms apart, only the chosen one
    /// kept unless `KeepWarm`.
    #[serde(default, alias = "pick_first")]
    pub pick_first: Option<PickFirstSection>,
    /// `least_request`'s candidates per pick (2 to 10; 2 by default).
    #[serde(default, alias = "least_request")]
    pub least_request: Option<LeastRequestSection>,
    /// `ring_hash`'s request key (`HashHeader`) and ring.
    #[serde(default, alias = "ring_hash")]
    pub ring_hash: Option<RingHashSection>,
    /// Connect to at most this many instances (random subsetting, gRFC A68); every instance
    /// unless set.
    #[serde(default, alias = "subset_size")]
    pub subset_size: Option<usize>,
    /// Prefer the instances registered in the client's zone.
    #[serde(default, alias = "locality")]
    pub locality: Option<LocalitySection>,
    /// What the `user-agent` of each RPC starts with (`gateway/1.4` sends
    /// `gateway/1.4 grpc-rust-switchboard/VERSION`). Only switchboard's own unless set.
    #[serde(default, alias = "user_agent")]
    pub user_agent: Option<String>,
    /// How many calls may wait at once for a free stream when every instance has reached its
    /// `MAX_CONCURRENT_STREAMS` (1024 unless set); past it a call fails with
    /// RESOURCE_EXHAUSTED.
    #[serde(default, alias = "max_pending_calls")]
    pub max_pending_calls: Option<usize>,
    /// The largest request message an RPC may send, in bytes as sent; no limit unless set
    /// (grpc-go's default). A larger one is not sent: the RPC fails with RESOURCE_EXHAUSTED.
    #[serde(default, alias = "max_request_message_bytes")]
    pub max_request_message_bytes: Option<usize>,
    /// The largest response message an RPC may receive, in bytes as received (4 MiB unless
    /// set, as in grpc-go and tonic). A larger one resets the stream: RESOURCE_EXHAUSTED.
    #[serde(default, alias = "max_response_message_bytes")]
    pub max_response_message_bytes: Option<usize>,
    /// `gzip`: typed clients send their requests compressed with gzip (tonic's). Responses
    /// compressed with gzip are always accepted by typed clients. None unless set.
    #[serde(default, alias = "compression")]
    pub compression: Option<Compression>,
    /// The `:authority` of every RPC, instead of the address of the instance it goes to (as
    /// grpc-go's `WithAuthority`): for servers and proxies that route by it.
    #[serde(default, alias = "authority")]
    pub authority: Option<String>,
    /// Connection backoff; the gRPC spec's by default.
    #[serde(default, alias = "backoff")]
    pub backoff: Option<BackoffSection>,
    /// Retries of RPCs that failed with a retryable status (gRFC A6). On by default: up to 3
    /// attempts of an RPC that failed with UNAVAILABLE; `Retry: {MaxAttempts: 1}` turns it off.
    #[serde(default, alias = "retry")]
    pub retry: Option<RetrySection>,
    /// Hedged RPCs (gRFC A6's `hedgingPolicy`), instead of retries: an RPC not answered within
    /// `HedgingDelay` is sent again, on a new pick, up to `MaxAttempts` at once; the first
    /// answer wins and the others are cancelled. Off unless set; not with `Retry`.
    #[serde(default, alias = "hedging")]
    pub hedging: Option<HedgingSection>,
    /// A gRPC service config, as JSON text: `loadBalancingConfig`, `methodConfig` (per-method
    /// `timeout`, `waitForReady`, `retryPolicy`), `retryThrottling`, `healthCheckConfig`. What
    /// it sets overrides `Policy`, `Timeout`, `WaitForReady` and `Retry`; see
    /// [`crate::service_config`].
    #[serde(default, alias = "service_config")]
    pub service_config: Option<String>,
    /// go-zero's `App`: with `Token`, sent with every RPC as the `app` and `token` metadata,
    /// as go-zero's client sends them, for go-zero servers with `Auth: true`.
    #[serde(default, alias = "app")]
    pub app: Option<String>,
    /// go-zero's `Token` (see [`ClientConfig::app`]); never shown by `Debug`.
    #[serde(default, alias = "token")]
    pub token: Option<Secret>,
    /// go-zero's `BalancerName`: `p2c_ewma` (go-zero's default) is `p2c_peak_ewma`,
    /// `consistent_hash` is `ring_hash`, and any `Policy` name is itself. It sets `Policy`.
    #[serde(default, alias = "balancer_name")]
    pub balancer_name: Option<String>,
    /// go-zero's client `Middlewares`.
    #[serde(default, alias = "middlewares")]
    pub middlewares: Option<MiddlewaresSection>,
    /// TLS to the instances. Without it, only instances registered as secure (kratos'
    /// `grpcs://`, `isSecure=true`) use TLS, trusting the system's CAs.
    #[serde(default, rename = "Tls", alias = "TLS", alias = "tls")]
    pub tls: Option<TlsSection>,
}

/// TLS to the instances (`Tls`): every instance is dialled with TLS except those whose
/// registration says they are not secure (kratos' `grpc://`, `isSecure=false`).
///
/// Each certificate is verified against `ServerName`, which defaults to the service's name
/// from this config: the etcd key (`Etcd.Key`, or the `key` of an `etcd://` target; its last
/// `/`-separated part for path-like keys such as kratos' `/microservices/user`). It is never
/// the host written in a registration: whoever can write to etcd cannot make the client trust
/// another service's certificate. Instances listed in `Endpoints` or a `direct://` target are
/// verified against their own host unless `ServerName` is set.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct TlsSection {
    /// The CA certificates (PEM) to trust. Without it, the system's (`ca-certificates`).
    #[serde(
        default,
        rename = "CACertFile",
        alias = "ca_cert_file",
        alias = "CaFile"
    )]
    pub ca_cert_file: Option<PathBuf>,
    /// A client certificate (PEM), for servers that require mTLS; with `CertKeyFile`.
    #[serde(default, alias = "cert_file")]
    pub cert_file: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[serde(default, alias = "cert_key_file", alias = "KeyFile")]
    pub cert_key_file: Option<PathBuf>,
    /// The name to verify in the servers' certificates (and to send as SNI).
    #[serde(default, alias = "server_name")]
    pub server_name: Option<String>,
    /// Refused: switchboard always verifies the servers' certificates.
    #[serde(default, alias = "insecure_skip_verify")]
    pub insecure_skip_verify: bool,
}

/// A secret of the config (a token): kept as given, never shown by `Debug`.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// A secret holding `value`.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// go-zero's client `Middlewares` (each `true` unless set, as in go-zero).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct MiddlewaresSection {
    /// `Timeout: false` turns the default deadline (`Timeout`) off: a call has only the
    /// deadline it sets itself, or its method's.
    #[serde(default, alias = "timeout")]
    pub timeout: Option<bool>,
    /// go-zero's tracing interceptor, on unless `false`: an RPC made inside a trace carries it
    /// on (`traceparent`, `tracestate`) in a new span; see [`crate::trace`].
    #[serde(default, alias = "trace")]
    pub trace: Option<bool>,
    /// go-zero's call log, on unless `false`: every failed call logged at ERROR (`[RPC] fail`,
    /// with its instance, method, duration and status code), every call slower than 500 ms at
    /// WARN (`[RPC] ok - slowcall`).
    #[serde(default, alias = "duration")]
    pub duration: Option<bool>,
    /// go-zero's Prometheus interceptor: `false` turns this client's metrics off (they go
    /// through the `metrics` facade, to whatever recorder the program installs).
    #[serde(default, alias = "prometheus")]
    pub prometheus: Option<bool>,
    /// go-zero's client breaker, on unless `false`: an adaptive breaker per method (the
    /// client-side throttle of Google's SRE book, with go-zero's constants) that fails a
    /// share of a method's unary calls at once with UNAVAILABLE ("circuit breaker is open")
    /// while more than about 1 in 3 of its recent calls failed with DEADLINE_EXCEEDED,
    /// INTERNAL, UNAVAILABLE, DATA_LOSS, UNIMPLEMENTED or RESOURCE_EXHAUSTED. See
    /// [`switchboard_balancer::breaker`].
    #[serde(default, alias = "breaker")]
    pub breaker: Option<bool>,
}

/// How typed clients compress their requests (`Compression`).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[non_exhaustive]
pub enum Compression {
    /// gzip, as every gRPC implementation has it (`grpc-encoding: gzip`).
    #[serde(alias = "Gzip", alias = "GZIP", rename = "gzip")]
    Gzip,
}

impl Compression {
    /// tonic's encoding.
    pub fn encoding(self) -> tonic::codec::CompressionEncoding {
        match self {
            Self::Gzip => tonic::codec::CompressionEncoding::Gzip,
        }
    }
}

/// go-zero's `Etcd` section. Its `Debug` output leaves the password out.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct EtcdSection {
    /// etcd members, `host:port`.
    #[serde(alias = "hosts")]
    pub hosts: Vec<String>,
    /// The service's key prefix.
    #[serde(alias = "key")]
    pub key: String,
    /// go-zero's `ID`: the lease-independent id a go-zero server registers under
    /// (`Key/ID`); a client reads every key under `Key` and needs none.
    #[serde(default, rename = "ID", alias = "id")]
    pub id: Option<i64>,
    /// User name, for etcd with authentication.
    #[serde(default, alias = "user")]
    pub user: Option<String>,
    /// Password of `user`.
    #[serde(default, alias = "pass")]
    pub pass: Option<String>,
    /// Client certificate (PEM) for etcd with mTLS.
    #[serde(default, alias = "cert_file")]
    pub cert_file: Option<PathBuf>,
    /// Its key.
    #[serde(default, alias = "cert_key_file")]
    pub cert_key_file: Option<PathBuf>,
    /// CA certificate (PEM) of etcd.
    #[serde(default, rename = "CACertFile", alias = "ca_cert_file")]
    pub ca_cert_file: Option<PathBuf>,
    /// go-zero's `InsecureSkipVerify`: refused, verification cannot be turned off.
    #[serde(default, alias = "insecure_skip_verify")]
    pub insecure_skip_verify: bool,
    /// The registration format: `auto` (default), `plain`, `etcd-naming`, `kratos`, `go-micro`.
    #[serde(default, alias = "format", deserialize_with = "format")]
    pub format: Format,
    /// How long the watch may stay quiet before it asks its etcd member for a progress
    /// notification; unanswered for as long again, the watch is re-created on a new connection,
    /// from where it left off. It bounds how late the instance set catches up after the network
    /// to etcd comes back from a silent cut: about twice this plus a second of backoff. At
    /// least 100 ms; defaults to 5 s.
    #[serde(
        default,
        alias = "watch_check_interval",
        deserialize_with = "duration::optional"
    )]
    pub watch_check_interval: Option<Duration>,
}

impl std::fmt::Debug for EtcdSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSection")
            .field("hosts", &self.hosts)
            .field("key", &self.key)
            .field("id", &self.id)
            .field("user", &self.user)
            .field("pass", &self.pass.as_ref().map(|_| "<redacted>"))
            .field("cert_file", &self.cert_file)
            .field("cert_key_file", &self.cert_key_file)
            .field("ca_cert_file", &self.ca_cert_file)
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .field("format", &self.format)
            .field("watch_check_interval", &self.watch_check_interval)
            .finish()
    }
}

/// Connection backoff settings.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct BackoffSection {
    /// First delay. Defaults to 1 s.
    #[serde(default, alias = "initial", deserialize_with = "duration::optional")]
    pub initial: Option<Duration>,
    /// Growth per attempt. Defaults to 1.6.
    #[serde(default, alias = "multiplier")]
    pub multiplier: Option<f64>,
    /// Spread, 0 to 1. Defaults to 0.2.
    #[serde(default, alias = "jitter")]
    pub jitter: Option<f64>,
    /// Cap. Defaults to 120 s.
    #[serde(default, alias = "max", deserialize_with = "duration::optional")]
    pub max: Option<Duration>,
    /// Least time per attempt. Defaults to 20 s.
    #[serde(
        default,
        alias = "min_connect_timeout",
        deserialize_with = "duration::optional"
    )]
    pub min_connect_timeout: Option<Duration>,
}

/// Retry policy (gRFC A6). Every field is optional; see [`ClientConfig::retry`].
///
/// ```
/// let config = switchboard::ClientConfig::from_yaml(
///     "
/// Endpoints: [127.0.0.1:8080]
/// Retry:
///   MaxAttempts: 4
///   InitialBackoff: 50ms
///   RetryableStatusCodes: [UNAVAILABLE, RESOURCE_EXHAUSTED]
///   Throttling: {MaxTokens: 10, TokenRatio: 0.1}
/// ",
/// )?;
/// assert_eq!(config.retry.and_then(|r| r.max_attempts), Some(4));
/// # Ok::<(), switchboard::Error>(())
/// ```
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct RetrySection {
    /// Attempts per RPC, the first one included: `1` turns retries off, more than 5 counts
    /// as 5 (as gRFC A6 says). Defaults to 3.
    #[serde(default, alias = "max_attempts")]
    pub max_attempts: Option<u32>,
    /// Bound of the random delay before the first retry. Defaults to 100 ms.
    #[serde(
        default,
        alias = "initial_backoff",
        deserialize_with = "duration::optional"
    )]
    pub initial_backoff: Option<Duration>,
    /// Cap of that bound as it grows. Defaults to 1 s.
    #[serde(
        default,
        alias = "max_backoff",
        deserialize_with = "duration::optional"
    )]
    pub max_backoff: Option<Duration>,
    /// Growth of the bound per retry. Defaults to 2.
    #[serde(default, alias = "backoff_multiplier")]
    pub backoff_multiplier: Option<f64>,
    /// The status codes worth retrying, by name (`UNAVAILABLE`) or number (`14`). Defaults to
    /// `[UNAVAILABLE]`.
    #[serde(
        default,
        alias = "retryable_status_codes",
        deserialize_with = "status_codes"
    )]
    pub retryable_status_codes: Option<Vec<String>>,
    /// Retry throttling: on by default with gRFC A6's example values, `{MaxTokens: 10,
    /// TokenRatio: 0.1}`, so that a failing fleet gets at most a few retries from each client;
    /// `{MaxTokens: 0}` turns it off.
    #[serde(default, alias = "throttling")]
    pub throttling: Option<ThrottlingSection>,
    /// The most bytes of one RPC's request kept to send it again (by retries, transparent
    /// ones included): 262144 (256 KiB, grpc-go's default) unless set. A request that
    /// outgrows it is sent once; `0` keeps none.
    #[serde(default, alias = "buffer_bytes")]
    pub buffer_bytes: Option<usize>,
}

/// Hedging (gRFC A6's `hedgingPolicy`): the first attempt of an RPC is sent at once, and one
/// more every `HedgingDelay` until one answers or `MaxAttempts` were sent; an attempt failing
/// with one of `NonFatalStatusCodes` sends the next one at once, any other answer ends the RPC
/// and cancels the attempts still running. Throttled as retries are (`Retry.Throttling`, the
/// service config's `retryThrottling`).
///
/// ```
/// let config = switchboard::ClientConfig::from_yaml(
///     "
/// Endpoints: [127.0.0.1:8080, 127.0.0.1:8081]
/// Hedging:
///   MaxAttempts: 2
///   HedgingDelay: 10ms
///   NonFatalStatusCodes: [UNAVAILABLE]
/// ",
/// )?;
/// assert_eq!(config.hedging.and_then(|h| h.max_attempts), Some(2));
/// # Ok::<(), switchboard::Error>(())
/// ```
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct HedgingSection {
    /// Attempts sent at most, the first included: 2 to 5 (more counts as 5).
    #[serde(default, alias = "max_attempts")]
    pub max_attempts: Option<u32>,
    /// The wait before each further attempt: 0 (all at once) unless set.
    #[serde(
        default,
        alias = "hedging_delay",
        deserialize_with = "duration::optional"
    )]
    pub hedging_delay: Option<Duration>,
    /// The statuses after which the next attempt is sent at once instead of ending the RPC;
    /// none unless set.
    #[serde(
        default,
        alias = "non_fatal_status_codes",
        deserialize_with = "status_codes"
    )]
    pub non_fatal_status_codes: Option<Vec<String>>,
}

/// Outlier detection (gRFC A50): every `Interval`, instances whose RPCs fail much more than the
/// others' are not picked for a while. Unset fields take A50's defaults; an empty section
/// turns on success-rate ejection only.
///
/// ```
/// let config = switchboard::ClientConfig::from_yaml(
///     "
/// Endpoints: [127.0.0.1:8080, 127.0.0.1:8081, 127.0.0.1:8082]
/// OutlierDetection:
///   Interval: 1s
///   BaseEjectionTime: 30s
///   MaxEjectionPercent: 34
///   FailurePercentageEjection: {Threshold: 50, MinimumHosts: 3, RequestVolume: 20}
/// ",
/// )?;
/// # Ok::<(), switchboard::Error>(())
/// ```
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct OutlierSection {
    /// How often ejections are decided. Defaults to 10 s.
    #[serde(default, alias = "interval", deserialize_with = "duration::optional")]
    pub interval: Option<Duration>,
    /// How long a first ejection lasts; the n-th lasts n times longer. Defaults to 30 s.
    #[serde(
        default,
        alias = "base_ejection_time",
        deserialize_with = "duration::optional"
    )]
    pub base_ejection_time: Option<Duration>,
    /// The longest ejection. Defaults to 300 s.
    #[serde(
        default,
        alias = "max_ejection_time",
        deserialize_with = "duration::optional"
    )]
    pub max_ejection_time: Option<Duration>,
    /// The largest share of instances ejected at once, in %. Defaults to 10.
    #[serde(default, alias = "max_ejection_percent")]
    pub max_ejection_percent: Option<u32>,
    /// Ejection by success rate, far below the others'. On with its defaults when neither
    /// kind is given.
    #[serde(default, alias = "success_rate_ejection")]
    pub success_rate_ejection: Option<EjectionSection>,
    /// Ejection by failure percentage, above `Threshold`. Off unless given.
    #[serde(default, alias = "failure_percentage_ejection")]
    pub failure_percentage_ejection: Option<EjectionSection>,
}

/// One kind of outlier ejection. `StdevFactor` is for success-rate ejection (default 1900:
/// ejected below mean − 1.9 × stdev), `Threshold` for failure-percentage ejection (default
/// 85 %). `EnforcementPercentage` (default 100) is the chance an outlier is ejected;
/// `MinimumHosts` (default 5) instances with at least `RequestVolume` RPCs in the interval
/// (default 100 for success rate, 50 for failure percentage) are needed to judge.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct EjectionSection {
    /// See above.
    #[serde(default, alias = "stdev_factor")]
    pub stdev_factor: Option<u32>,
    /// See above.
    #[serde(default, alias = "threshold")]
    pub threshold: Option<u32>,
    /// See above.
    #[serde(default, alias = "enforcement_percentage")]
    pub enforcement_percentage: Option<u32>,
    /// See above.
    #[serde(default, alias = "minimum_hosts")]
    pub minimum_hosts: Option<u32>,
    /// See above.
    #[serde(default, alias = "request_volume")]
    pub request_volume: Option<u32>,
}

impl OutlierSection {
    /// The balancer's settings, checked; the error names the field.
    pub fn settings(&self) -> Result<OutlierDetection, Error> {
        let d = OutlierDetection::default();
        let sr = SuccessRateEjection::default();
        let fp = FailurePercentageEjection::default();
        let both_absent =
            self.success_rate_ejection.is_none() && self.failure_percentage_ejection.is_none();
        let success_rate = match (&self.success_rate_ejection, both_absent) {
            (Some(s), _) => {
                if s.threshold.is_some() {
                    return Err(Error::config(
                        "OutlierDetection.SuccessRateEjection.Threshold: belongs to FailurePercentageEjection (use StdevFactor)",
                    ));
                }
                Some(SuccessRateEjection {
                    stdev_factor: s.stdev_factor.unwrap_or(sr.stdev_factor),
                    enforcement_percentage: s
                        .enforcement_percentage
                        .unwrap_or(sr.enforcement_percentage),
                    minimum_hosts: s.minimum_hosts.unwrap_or(sr.minimum_hosts),
                    request_volume: s.request_volume.unwrap_or(sr.request_volume),
                })
            }
            (None, true) => Some(sr),
            (None, false) => None,
        };
        let failure_percentage = match &self.failure_percentage_ejection {
            Some(f) => {
                if f.stdev_factor.is_some() {
                    return Err(Error::config(
                        "OutlierDetection.FailurePercentageEjection.StdevFactor: belongs to SuccessRateEjection",
                    ));
                }
                Some(FailurePercentageEjection {
                    threshold: f.threshold.unwrap_or(fp.threshold),
                    enforcement_percentage: f
                        .enforcement_percentage
                        .unwrap_or(fp.enforcement_percentage),
                    minimum_hosts: f.minimum_hosts.unwrap_or(fp.minimum_hosts),
                    request_volume: f.request_volume.unwrap_or(fp.request_volume),
                })
            }
            None => None,
        };
        let settings = OutlierDetection {
            interval: self.interval.unwrap_or(d.interval),
            base_ejection_time: self.base_ejection_time.unwrap_or(d.base_ejection_time),
            max_ejection_time: self.max_ejection_time.unwrap_or(d.max_ejection_time),
            max_ejection_percent: self.max_ejection_percent.unwrap_or(d.max_ejection_percent),
            success_rate,
            failure_percentage,
        };
        settings.validate().map_err(|e| {
            let field = e
                .replace("interval", "Interval")
                .replace("base_ejection_time", "BaseEjectionTime")
                .replace("max_ejection_percent", "MaxEjectionPercent")
                .replace("success_rate_ejection.", "SuccessRateEjection.")
                .replace("failure_percentage_ejection.", "FailurePercentageEjection.")
                .replace("enforcement_percentage", "EnforcementPercentage")
                .replace("threshold", "Threshold");
            Error::config(format!("OutlierDetection.{field}"))
        })?;
        Ok(settings)
    }
}

/// Retry throttling (gRFC A6): a token bucket per client; failures take a token, successes
/// give back `TokenRatio`, and RPCs are retried only while more than half the tokens remain.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct ThrottlingSection {
    /// Size of the bucket, which starts full: at most 1000; `0` turns throttling off.
    #[serde(alias = "max_tokens")]
    pub max_tokens: f64,
    /// Tokens a success gives back: more than 0; 0.1 unless given.
    #[serde(default = "default_token_ratio", alias = "token_ratio")]
    pub token_ratio: f64,
}

fn default_token_ratio() -> f64 {
    0.1
}

/// A list of status codes, each a name or a number; kept as text and checked by `validated`,
/// whose error names the field.
fn status_codes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Code {
        Number(i64),
        Name(String),
    }
    let codes = Vec::<Code>::deserialize(d)?;
    Ok(Some(
        codes
            .into_iter()
            .map(|c| match c {
                Code::Number(n) => n.to_string(),
                Code::Name(name) => name,
            })
            .collect(),
    ))
}

/// The settings of an empty config file: the 2 s default deadline, and no source of
/// instances.
impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            etcd: None,
            endpoints: Vec::new(),
            target: None,
            non_block: true,
            per_worker: false,
            timeout: default_timeout(),
            stream_timeout: None,
            streaming_methods: Vec::new(),
            keepalive_time: None,
            keepalive_timeout: None,
            policy: Policy::default(),
            dial_timeout: None,
            drain_timeout: None,
            wait_for_ready: false,
            health_check: None,
            outlier_detection: None,
            pick_first: None,
            least_request: None,
            ring_hash: None,
            subset_size: None,
            locality: None,
            user_agent: None,
            max_pending_calls: None,
            max_request_message_bytes: None,
            max_response_message_bytes: None,
            compression: None,
            authority: None,
            backoff: None,
            retry: None,
            hedging: None,
            service_config: None,
            app: None,
            token: None,
            balancer_name: None,
            middlewares: None,
            tls: None,
        }
    }
}

fn default_timeout() -> Option<Duration> {
    Some(Duration::from_secs(2))
}

fn policy<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Policy, D::Error> {
    let name = String::deserialize(d)?;
    name.parse().map_err(serde::de::Error::custom)
}

fn format<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Format, D::Error> {
    let name = String::deserialize(d)?;
    name.parse().map_err(serde::de::Error::custom)
}

/// The etcd members and key of an etcd target, as go-zero writes it: `etcd:///HOSTS?key=KEY`
/// (the key URL-encoded, since go-zero 1.9), or `etcd://HOSTS/KEY` before; `discov://` the
/// same. `None` if `target` is no etcd target; an error if it is a malformed one.
pub(crate) fn etcd_target(target: &str) -> Option<Result<(String, String), Error>> {
    let rest = target
        .strip_prefix("etcd://")
        .or_else(|| target.strip_prefix("discov://"))?;
    let bad = || Error::config(format!("Target: {target:?} is not etcd:///hosts?key=KEY"));
    let parsed = match rest.strip_prefix('/') {
        Some(rest) => {
            let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
            let key = query.split('&').find_map(|pair| pair.strip_prefix("key="));
            // Go's url.QueryEscape: `+` for a space, `%XX` for the rest.
            let key = key.map(|k| k.replace('+', " "));
            let key = key.and_then(|k| {
                let decoded = percent_encoding::percent_decode_str(&k)
                    .decode_utf8()
                    .ok()?;
                Some(decoded.into_owned())
            });
            key.map(|key| (hosts.to_owned(), key))
        }
        None => rest
            .split_once('/')
            .map(|(hosts, key)| (hosts.to_owned(), key.to_owned())),
    };
    Some(
        parsed
            .filter(|(hosts, key)| !hosts.is_empty() && !key.trim().is_empty())
            .ok_or_else(bad),
    )
}

/// Reads the config file at `path` with `parse`, which reads its text by extension (`None`
/// for an extension it does not know: the error lists `known`); errors name the file.
pub(crate) fn read_file<T>(
    path: &Path,
    known: &str,
    parse: impl FnOnce(&str, &str) -> Option<Result<T, Error>>,
) -> Result<T, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::config(format!("cannot read {}: {e}", path.display())))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let parsed = parse(ext, &text).ok_or_else(|| {
        Error::config(format!(
            "{}: unknown config format (use {known})",
            path.display()
        ))
    })?;
    parsed.map_err(|e| Error::config(format!("{}: {e}", path.display())))
}

/// go-zero's default for `NonBlock`.
fn yes() -> bool {
    true
}

/// The PEM file `path` of the `Tls` section's field `what`, or an error naming both.
pub(crate) fn read_tls_file(what: &str, path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path)
        .map_err(|e| Error::config(format!("Tls.{what}: cannot read {}: {e}", path.display())))
}

impl EtcdSection {
    /// Checks what serde cannot: members listed, a key, credentials and TLS files in pairs.
    pub(crate) fn check(&self) -> Result<(), Error> {
        if self.hosts.is_empty() {
            return Err(Error::config("Etcd.Hosts: lists no etcd member"));
        }
        if self.key.trim().is_empty() {
            return Err(Error::config("Etcd.Key: is empty"));
        }
        if self.user.is_some() != self.pass.is_some() {
            return Err(Error::config(
                "Etcd.User and Etcd.Pass: set both or neither",
            ));
        }
        if self.cert_file.is_some() != self.cert_key_file.is_some() {
            return Err(Error::config(
                "Etcd.CertFile and Etcd.CertKeyFile: set both or neither",
            ));
        }
        if self.insecure_skip_verify {
            return Err(Error::config(
                "Etcd.InsecureSkipVerify: not supported; set Etcd.CACertFile to the CA of etcd's certificates",
            ));
        }
        let min = switchboard_resolver::EtcdConfig::MIN_WATCH_CHECK_INTERVAL;
        if let Some(interval) = self.watch_check_interval
            && interval < min
        {
            return Err(Error::config(format!(
                "Etcd.WatchCheckInterval: {interval:?} is shorter than {min:?}"
            )));
        }
        Ok(())
    }
}

impl ClientConfig {
    /// Reads a YAML config and checks it.
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        let config: Self = serde_norway::from_str(text)
            .map_err(|e| Error::config(format!("invalid YAML config: {e}")))?;
        config.validated()
    }

    /// Reads the client section `section` of a larger YAML config and checks it: a go-zero
    /// gateway's config as it is (`Name`, `Host`, `Port`, … and `UserRpc: {Etcd: …}`), read
    /// with `from_yaml_section(text, "UserRpc")`. The rest of the file is not looked at.
    pub fn from_yaml_section(text: &str, section: &str) -> Result<Self, Error> {
        let whole: serde_norway::Value = serde_norway::from_str(text)
            .map_err(|e| Error::config(format!("invalid YAML config: {e}")))?;
        let part = whole
            .get(section)
            .ok_or_else(|| Error::config(format!("no {section} section in the config")))?;
        let config: Self = serde_norway::from_value(part.clone())
            .map_err(|e| Error::config(format!("{section}: {e}")))?;
        config
            .validated()
            .map_err(|e| Error::config(format!("{section}: {e}")))
    }

    /// Reads a TOML config and checks it.
    pub fn from_toml(text: &str) -> Result<Self, Error> {
        let config: Self =
            toml::from_str(text).map_err(|e| Error::config(format!("invalid TOML config: {e}")))?;
        config.validated()
    }

    /// Reads a JSON config and checks it.
    pub fn from_json(text: &str) -> Result<Self, Error> {
        let config: Self = serde_json::from_str(text)
            .map_err(|e| Error::config(format!("invalid JSON config: {e}")))?;
        config.validated()
    }

    /// Reads a config file: YAML (`.yaml`, `.yml`), TOML (`.toml`) or JSON (`.json`).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        read_file(
            path.as_ref(),
            ".yaml, .yml, .toml or .json",
            |ext, text| match ext {
                "yaml" | "yml" => Some(Self::from_yaml(text)),
                "toml" => Some(Self::from_toml(text)),
                "json" => Some(Self::from_json(text)),
                _ => None,
            },
        )
    }

    /// A config over a fixed list of `host:port`.
    pub fn endpoints<I, S>(endpoints: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            ..Self::default()
        }
    }

    /// A config that discovers the instances under `key` in etcd at `hosts`.
    pub fn etcd<I, S>(hosts: I, key: impl Into<String>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            etcd: Some(EtcdSection {
                hosts: hosts.into_iter().map(Into::into).collect(),
                key: key.into(),
                ..EtcdSection::default()
            }),
            ..Self::default()
        }
    }

    /// Checks what serde cannot: one source of instances, non-empty lists, sane numbers. The
    /// error names the field and the problem.
    pub fn validated(self) -> Result<Self, Error> {
        if self.sources() != 1 {
            return Err(Error::config(
                "exactly one of Etcd, Endpoints and Target must be set",
            ));
        }
        self.validated_settings()
    }

    /// How many of Etcd, Endpoints and Target are set.
    pub(crate) fn sources(&self) -> usize {
        usize::from(self.etcd.is_some())
            + usize::from(!self.endpoints.is_empty())
            + usize::from(self.target.is_some())
    }

    /// [`Self::validated`] but for the source of instances.
    pub(crate) fn validated_settings(mut self) -> Result<Self, Error> {
        if self.app.is_some() != self.token.is_some() {
            return Err(Error::config(
                "App and Token: set both or neither (go-zero sends them together)",
            ));
        }
        for (field, value) in [
            ("App", self.app.as_deref()),
            ("Token", self.token.as_ref().map(Secret::expose)),
        ] {
            if value.is_some_and(|v| http::HeaderValue::from_str(v).is_err() || v.is_empty()) {
                return Err(Error::config(format!(
                    "{field}: must be non-empty visible ASCII (it is sent as metadata)"
                )));
            }
        }
        if let Some(name) = &self.balancer_name {
            let policy = match name.as_str() {
                "p2c_ewma" => Policy::P2cPeakEwma,
                "consistent_hash" => Policy::RingHash,
                other => other.parse().map_err(|_| {
                    Error::config(format!(
                        "BalancerName: {other:?} is not a balancer: p2c_ewma, consistent_hash, \
                         round_robin, pick_first, p2c, p2c_peak_ewma, weighted_round_robin, \
                         least_request, ring_hash"
                    ))
                })?,
            };
            if self.policy != Policy::default() && self.policy != policy {
                return Err(Error::config(format!(
                    "BalancerName {name:?} and Policy {} disagree: set one",
                    self.policy
                )));
            }
            self.policy = policy;
        }
        if let Some(etcd) = &self.etcd {
            etcd.check()?;
        }
        if let Some(tls) = &self.tls {
            if tls.cert_file.is_some() != tls.cert_key_file.is_some() {
                return Err(Error::config(
                    "Tls.CertFile and Tls.CertKeyFile: set both or neither",
                ));
            }
            if tls.insecure_skip_verify {
                return Err(Error::config(
                    "Tls.InsecureSkipVerify: not supported; set Tls.CACertFile to the CA of the \
                     instances' certificates, and Tls.ServerName to the name they carry",
                ));
            }
        }
        if let Some(target) = &self.target {
            if !target.starts_with("direct:///") {
                etcd_target(target).unwrap_or_else(|| {
                    Err(Error::config(format!(
                        "Target: {target:?} is neither direct:///host:port,… nor \
                         etcd:///hosts?key=KEY (or etcd://hosts/key, discov://…)"
                    )))
                })?;
            }
        }
        for (field, value) in [
            ("MaxRequestMessageBytes", self.max_request_message_bytes),
            ("MaxResponseMessageBytes", self.max_response_message_bytes),
        ] {
            if value == Some(0) {
                return Err(Error::config(format!("{field}: must be at least 1")));
            }
        }
        if let Some(authority) = &self.authority {
            if authority.parse::<http::uri::Authority>().is_err() {
                return Err(Error::config(format!(
                    "Authority: {authority:?} is not a host or host:port"
                )));
            }
        }
        for (field, value) in [
            ("KeepaliveTime", self.keepalive_time),
            ("KeepaliveTimeout", self.keepalive_timeout),
            ("DialTimeout", self.dial_timeout),
        ] {
            if value.is_some_and(|d| d.is_zero()) {
                return Err(Error::config(format!("{field}: must be positive")));
            }
        }
        if let Some(b) = &self.backoff {
            if b.multiplier.is_some_and(|m| !(1.0..=10.0).contains(&m)) {
                return Err(Error::config(
                    "Backoff.Multiplier: must be between 1 and 10",
                ));
            }
            if b.jitter.is_some_and(|j| !(0.0..=1.0).contains(&j)) {
                return Err(Error::config("Backoff.Jitter: must be between 0 and 1"));
            }
            if b.initial.is_some_and(|d| d.is_zero()) {
                return Err(Error::config("Backoff.Initial: must be positive"));
            }
        }
        crate::retry::RetryPolicy::from_config(self.retry.as_ref())?;
        if let Some(hedging) = &self.hedging {
            if self.retry.is_some() {
                return Err(Error::config(
                    "Retry and Hedging: an RPC is either retried or hedged, not both",
                ));
            }
            crate::retry::RetryPolicy::hedging(hedging)?;
        }
        if let Some(o) = &self.outlier_detection {
            o.settings()?;
        }
        balancing::validate(&self)?;
        for (i, path) in self.streaming_methods.iter().enumerate() {
            let parts: Vec<&str> = path.split('/').collect();
            if !matches!(parts.as_slice(), ["", service, method] if !service.is_empty() && !method.is_empty())
            {
                return Err(Error::config(format!(
                    "StreamingMethods[{i}]: {path:?} is not /package.Service/Method or /package.Service/*"
                )));
            }
        }
        if self.stream_timeout.is_some_and(|d| d.is_zero()) {
            return Err(Error::config(
                "StreamTimeout: must be positive (leave it out for none)",
            ));
        }
        if let Some(text) = &self.service_config {
            crate::service_config::ServiceConfig::parse(text)?;
        }
        Ok(self)
    }

    /// The service's name, for logs and errors: the etcd key, or the endpoints.
    pub fn service_name(&self) -> String {
        if let Some(etcd) = &self.etcd {
            return etcd.key.clone();
        }
        if let Some(target) = &self.target {
            return target.clone();
        }
        self.endpoints.join(",")
    }
}

#[cfg(test)]
mod tests;
