//! `Client`: a balanced channel built from a [`ClientConfig`], and `Channel`, the clonable
//! handle typed tonic clients run over, which gives every RPC a deadline.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request};
use switchboard_balancer::breaker::Admitted;
use switchboard_balancer::{Balancer, ConnectBackoff, MessageLimits, ResponseFuture, WaitForReady};
use switchboard_resolver::{
    EtcdConfig, EtcdResolver, EtcdTls, Resolution, Resolve, SharedResolution, StaticResolver,
};

use crate::config::{ClientConfig, Compression, ThrottlingSection};
use crate::error::Error;
use crate::retry::{self, RetryPolicy, Throttle};
use crate::service_config::{MethodTable, ServiceConfig};
use crate::typed::{NoDefaultTimeout, Streaming};

/// How long [`Client::connect`] waits for a READY instance unless `DialTimeout` says otherwise.
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(3);

/// A client of one service: the instances its config names, balanced.
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), switchboard::Error> {
/// let config = switchboard::ClientConfig::from_file("etc/user-client.yaml")?;
/// let client = switchboard::Client::connect(config).await?;
/// // let mut users = UserClient::new(client.channel());
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Client {
    channel: Channel,
    /// With `PerWorker`: what [`Client::per_worker`] builds each worker's balancer from.
    workers: Option<Arc<Workers>>,
}

/// The shared resolution and the balancer settings of a `PerWorker` client's workers.
#[derive(Debug)]
struct Workers {
    resolution: SharedResolution,
    builder: switchboard_balancer::Builder,
}

impl Client {
    /// Starts the client. With `NonBlock` (go-zero's default) it returns at once; with
    /// `NonBlock: false` it waits, at most the dial timeout (3 s unless `DialTimeout` is set),
    /// until an instance is READY, and fails otherwise.
    pub async fn connect(config: ClientConfig) -> Result<Self, Error> {
        let non_block = config.non_block;
        let dial_timeout = config.dial_timeout.unwrap_or(DEFAULT_DIAL_TIMEOUT);
        let client = Self::connect_lazy(config)?;
        if !non_block {
            client
                .channel
                .balancer
                .ready(dial_timeout)
                .await
                .map_err(|status| {
                    Error::unavailable(format!(
                        "no READY instance of {} within {dial_timeout:?}",
                        client.channel.balancer.snapshot().target
                    ))
                    .with_source(status)
                })?;
        }
        Ok(client)
    }

    /// Starts the client and returns at once; RPCs wait for a READY instance (within their
    /// deadline).
    pub fn connect_lazy(config: ClientConfig) -> Result<Self, Error> {
        let config = config.validated()?;
        let resolution = resolve(&config)?;
        Self::build(config.service_name(), config, resolution)
    }

    /// A client of the instances `resolution` publishes (any [`Resolve`] implementation: a
    /// registry of your own, or [`switchboard_resolver::MemoryRegistry`] in tests), named
    /// `target`, with `config`'s settings. It returns at once, like
    /// [`Client::connect_lazy`]; `config` must not name a source of instances (`Etcd`,
    /// `Endpoints`, `Target`).
    ///
    /// ```
    /// use switchboard::resolver::{Instance, MemoryRegistry, Resolve};
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), switchboard::Error> {
    /// let registry = MemoryRegistry::new();
    /// registry.put(Instance::new("user.rpc/1", "127.0.0.1:8080"));
    /// let resolution = registry.resolver("user.rpc").resolve();
    /// let client = switchboard::Client::with_resolution(
    ///     "user.rpc",
    ///     switchboard::ClientConfig::default(),
    ///     resolution,
    /// )?;
    /// # drop(client); Ok(()) }
    /// ```
    pub fn with_resolution(
        target: impl Into<String>,
        config: ClientConfig,
        resolution: Resolution,
    ) -> Result<Self, Error> {
        if config.sources() != 0 {
            return Err(Error::config(
                "Etcd, Endpoints and Target: must be empty when the instances are resolved by the caller",
            ));
        }
        Self::build(target.into(), config.validated_settings()?, resolution)
    }

    fn build(target: String, config: ClientConfig, resolution: Resolution) -> Result<Self, Error> {
        let service_config = config
            .service_config
            .as_deref()
            .map(ServiceConfig::parse)
            .transpose()?;
        // One throttling bucket for the client, every method's retry policy included: gRFC
        // A6's example bucket unless configured (`MaxTokens: 0` turns it off).
        let default_throttling = ThrottlingSection {
            max_tokens: 10.0,
            token_ratio: 0.1,
        };
        let throttling = service_config
            .as_ref()
            .and_then(|s| s.retry_throttling.as_ref())
            .or_else(|| config.retry.as_ref().and_then(|r| r.throttling.as_ref()))
            .unwrap_or(&default_throttling);
        let throttling = (throttling.max_tokens > 0.0)
            .then(|| Arc::new(Throttle::new(throttling.max_tokens, throttling.token_ratio)));
        let retry = Arc::new(match &config.hedging {
            Some(hedging) => RetryPolicy::hedging(hedging)?.with_throttle(throttling.clone()),
            None => RetryPolicy::from_config(config.retry.as_ref())?
                .map_or_else(RetryPolicy::off, |p| p.with_throttle(throttling.clone())),
        });
        let methods = match &service_config {
            Some(s) => MethodTable::build(s, throttling.as_ref())?.map(Arc::new),
            None => None,
        };
        let policy = service_config
            .as_ref()
            .and_then(|s| s.load_balancing_policy)
            .unwrap_or(config.policy);
        let health_check = config.health_check.clone().or_else(|| {
            service_config
                .as_ref()
                .and_then(|s| s.health_check_config.as_ref())
                .map(|h| h.service_name.clone())
        });
        let mut builder = Balancer::builder()
            .target(target)
            .policy(policy)
            .wait_for_ready(config.wait_for_ready)
            .health_check(health_check)
            .outlier_detection(
                config
                    .outlier_detection
                    .as_ref()
                    .map(|o| o.settings())
                    .transpose()?,
            );
        builder = crate::config::apply_balancing(&config, builder);
        builder = tls(&config, builder)?;
        if let Some(prefix) = &config.user_agent {
            builder = builder.user_agent(prefix.clone());
        }
        if let Some(max) = config.max_pending_calls {
            builder = builder.max_pending_calls(max);
        }
        let limits = MessageLimits {
            request: config.max_request_message_bytes.unwrap_or(usize::MAX),
            response: config
                .max_response_message_bytes
                .unwrap_or(switchboard_balancer::DEFAULT_MAX_RESPONSE_MESSAGE_BYTES),
        };
        builder = builder
            .max_request_message_bytes(limits.request)
            .max_response_message_bytes(limits.response);
        // go-zero's duration interceptor, on unless turned off, with its 500 ms threshold.
        let call_log = config.middlewares.as_ref().and_then(|m| m.duration) != Some(false);
        if call_log {
            builder = builder.call_log(Some(SLOW_CALL));
        }
        // go-zero's Prometheus interceptor: this client's metrics, on unless turned off.
        if config.middlewares.as_ref().and_then(|m| m.prometheus) == Some(false) {
            builder = builder.metrics(false);
        }
        // go-zero's breaker interceptor: an adaptive breaker per method, on unless turned off.
        let breaker = config.middlewares.as_ref().and_then(|m| m.breaker) != Some(false);
        builder = builder.breaker(breaker);
        if let Some(authority) = &config.authority {
            builder = builder.authority(authority.clone());
        }
        if let Some(k) = config.keepalive_time {
            builder = builder.keepalive(Some(k));
        }
        if let Some(t) = config.keepalive_timeout {
            builder = builder.keepalive_timeout(t);
        }
        if let Some(d) = config.drain_timeout {
            builder = builder.drain_timeout(d);
        }
        if let Some(b) = &config.backoff {
            let d = ConnectBackoff::default();
            builder = builder.backoff(ConnectBackoff {
                initial: b.initial.unwrap_or(d.initial),
                multiplier: b.multiplier.unwrap_or(d.multiplier),
                jitter: b.jitter.unwrap_or(d.jitter),
                max: b.max.unwrap_or(d.max),
                min_connect_timeout: b.min_connect_timeout.unwrap_or(d.min_connect_timeout),
            });
        }
        // go-zero's per-RPC credential: the `app` and `token` metadata.
        let credential = match (&config.app, &config.token) {
            (Some(app), Some(token)) => Some(Arc::new((
                HeaderValue::from_str(app).map_err(|_| Error::config("App: not a header value"))?,
                HeaderValue::from_str(token.expose())
                    .map_err(|_| Error::config("Token: not a header value"))?,
            ))),
            _ => None,
        };
        let timeout = match config.middlewares.as_ref().and_then(|m| m.timeout) {
            Some(false) => None,
            _ => config.timeout.filter(|t| !t.is_zero()),
        };
        // PerWorker: one resolution for the client's balancer and every worker's.
        let (resolution, workers) = if config.per_worker {
            let shared = resolution.share();
            (shared.subscribe(), Some((shared, builder.clone())))
        } else {
            (resolution, None)
        };
        let balancer = builder
            .build(resolution)
            .map_err(|e| Error::config("invalid client settings").with_source(e))?;
        // The workers' balancers share this one's breakers.
        let workers = workers.map(|(resolution, builder)| {
            Arc::new(Workers {
                resolution,
                builder: builder.breakers_of(&balancer),
            })
        });
        Ok(Self {
            workers,
            channel: Channel {
                balancer,
                timeout,
                stream_timeout: config.stream_timeout,
                default_headers: Arc::new(
                    [timeout, config.stream_timeout].map(|t| t.map(timeout_header)),
                ),
                streaming: config.streaming_methods.clone().into(),
                retry,
                methods,
                buffer: config
                    .retry
                    .as_ref()
                    .and_then(|r| r.buffer_bytes)
                    .unwrap_or(retry::DEFAULT_RETRY_BUFFER),
                limits,
                compression: config.compression,
                credential,
                call_log,
                trace: config.middlewares.as_ref().and_then(|m| m.trace) != Some(false),
            },
        })
    }

    /// The channel for typed clients: `UserClient::new(client.channel())`. Cheap to clone.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The balancer under the channel: its state and channelz-like snapshot.
    pub fn balancer(&self) -> &Balancer {
        &self.channel.balancer
    }

    /// A client of the same instances with connections of its own, whose tasks (its balancer,
    /// its sub-channels, their HTTP/2 connections) run on the tokio runtime current at the
    /// call. Called once in each of N current-thread runtimes (a thread per core), each
    /// thread's RPCs are picked, sent and answered on that thread, over connections no other
    /// thread touches: Envoy's per-worker connection pools. On a multi-thread runtime each
    /// call still gives a balancer of its own, but tokio may move its tasks between threads.
    ///
    /// The workers follow the client's resolution (one etcd watch for all, through
    /// [`SharedResolution`]) and share its settings, its retry throttle and its per-method
    /// breakers; each keeps its own sub-channels, their health and their counts, in its own
    /// [`Client::balancer`] snapshot. The client must be built with `PerWorker: true`.
    pub fn per_worker(&self) -> Result<Client, Error> {
        let workers = self.workers.as_ref().ok_or_else(|| {
            Error::config("per_worker: the client was built without PerWorker: true")
        })?;
        let balancer = workers
            .builder
            .clone()
            .build(workers.resolution.subscribe())
            .map_err(|e| Error::config("invalid client settings").with_source(e))?;
        let mut channel = self.channel.clone();
        channel.balancer = balancer;
        Ok(Client {
            channel,
            workers: self.workers.clone(),
        })
    }
}

/// How to reach etcd, from an `Etcd` section: its members, its user, its TLS.
pub(crate) fn etcd_config(etcd: &crate::config::EtcdSection) -> Result<EtcdConfig, Error> {
    let mut etcd_config =
        EtcdConfig::new(&etcd.hosts).map_err(|e| Error::config("Etcd.Hosts").with_source(e))?;
    if let (Some(user), Some(pass)) = (&etcd.user, &etcd.pass) {
        etcd_config = etcd_config.user(user, pass);
    }
    if etcd.ca_cert_file.is_some() || etcd.cert_file.is_some() {
        let tls = EtcdTls::from_files(
            etcd.ca_cert_file.as_deref(),
            etcd.cert_file.as_deref(),
            etcd.cert_key_file.as_deref(),
        )
        .map_err(|e| Error::config("Etcd TLS files").with_source(e))?;
        etcd_config = etcd_config.tls(tls);
    }
    if let Some(interval) = etcd.watch_check_interval {
        etcd_config = etcd_config.watch_check_interval(interval);
    }
    Ok(etcd_config)
}

fn resolve(config: &ClientConfig) -> Result<Resolution, Error> {
    if let Some(etcd) = &config.etcd {
        let etcd_config = etcd_config(etcd)?;
        return Ok(EtcdResolver::new(etcd_config, &etcd.key)
            .format(etcd.format)
            .resolve());
    }
    if let Some(target) = &config.target {
        if let Some(parsed) = crate::config::etcd_target(target) {
            let (hosts, key) = parsed?;
            let etcd_config = EtcdConfig::from_hosts(&hosts)
                .map_err(|e| Error::config("Target: etcd hosts").with_source(e))?;
            return Ok(EtcdResolver::new(etcd_config, &key).resolve());
        }
        return StaticResolver::from_target(target)
            .map(|r| r.resolve())
            .map_err(|e| Error::config("Target").with_source(e));
    }
    StaticResolver::from_addrs(&config.endpoints)
        .map(|r| r.resolve())
        .map_err(|e| Error::config("Endpoints").with_source(e))
}

/// The service's name from the config, to verify the instances' certificates against: the
/// etcd key (its last part if it is a path), or `None` for a static list.
fn service_name(config: &ClientConfig) -> Option<String> {
    let key = match (&config.etcd, &config.target) {
        (Some(etcd), _) => etcd.key.clone(),
        (None, Some(target)) => crate::config::etcd_target(target)?.ok()?.1,
        (None, None) => return None,
    };
    let name = key.trim_matches('/').rsplit('/').next()?.trim();
    (!name.is_empty()).then(|| name.to_owned())
}

/// The TLS of the connections to instances: the `Tls` section's for every instance not
/// registered as insecure; without it, the system's CAs for those registered as secure. Either
/// way, certificates are verified against the service's name, not a registration's host.
fn tls(
    config: &ClientConfig,
    builder: switchboard_balancer::Builder,
) -> Result<switchboard_balancer::Builder, Error> {
    use switchboard_balancer::TlsConfig;
    let name = config
        .tls
        .as_ref()
        .and_then(|t| t.server_name.clone())
        .or_else(|| service_name(config));
    let Some(section) = &config.tls else {
        let tls = TlsConfig::new().system_roots();
        let tls = match name {
            Some(name) => tls.domain(name),
            None => tls,
        };
        return Ok(builder.tls_when_registered(tls));
    };
    let read = crate::config::read_tls_file;
    let mut tls = match &section.ca_cert_file {
        Some(path) => TlsConfig::new()
            .ca_pem(&read("CACertFile", path)?)
            .map_err(|e| {
                Error::config(format!("Tls.CACertFile {}", path.display())).with_source(e)
            })?,
        None => TlsConfig::new().system_roots(),
    };
    if let (Some(cert), Some(key)) = (&section.cert_file, &section.cert_key_file) {
        tls = tls
            .identity_pem(&read("CertFile", cert)?, &read("CertKeyFile", key)?)
            .map_err(|e| Error::config("Tls.CertFile and Tls.CertKeyFile").with_source(e))?;
    }
    if let Some(name) = name {
        tls = tls.domain(name);
    }
    Ok(builder.tls(tls))
}

/// Past this, a successful call is logged as slow (go-zero's threshold, for its clients and its
/// servers' `StatConf.SlowThreshold`).
pub(crate) const SLOW_CALL: Duration = Duration::from_millis(500);

/// What typed clients run over: the balanced channel plus the client's default deadline.
///
/// An RPC without its own deadline gets the default one (`Timeout`), sent to the server as
/// `grpc-timeout`; the time spent waiting for a READY instance counts against it, and when it
/// passes the RPC fails with DEADLINE_EXCEEDED.
///
/// An RPC that fails with a retryable status before the server committed a response is retried
/// on a new pick, within the same deadline, as the client's `Retry` policy says (gRFC A6; see
/// [`crate::config::RetrySection`]).
///
/// A service config's `methodConfig` (see [`crate::service_config`]) changes the deadline,
/// wait-for-ready and retry policy of the methods it names.
#[derive(Clone, Debug)]
pub struct Channel {
    balancer: Balancer,
    timeout: Option<Duration>,
    /// The default deadline of streaming RPCs.
    stream_timeout: Option<Duration>,
    /// `grpc-timeout` of `timeout` and of `stream_timeout`, made once.
    default_headers: Arc<[Option<HeaderValue>; 2]>,
    /// The streaming methods by path (`/svc/*` for a whole service).
    streaming: Arc<[String]>,
    /// Shared by clones, with its throttling bucket.
    retry: Arc<RetryPolicy>,
    /// The service config's per-method settings, if it has any.
    methods: Option<Arc<MethodTable>>,
    /// The most bytes of a request kept to send it again.
    buffer: usize,
    /// The client's message-size limits (the balancer's own).
    limits: MessageLimits,
    /// How typed clients compress their requests.
    compression: Option<Compression>,
    /// go-zero's `App` and `Token`, sent with every RPC.
    credential: Option<Arc<(HeaderValue, HeaderValue)>>,
    /// Whether RPCs that fail without a response are logged (the balancer logs the others).
    call_log: bool,
    /// Whether RPCs carry the caller's trace (`traceparent`).
    trace: bool,
}

/// The header a deadline goes in.
const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// `grpc-timeout` for `t`, in milliseconds (at most the 8 digits gRPC allows).
fn timeout_header(t: Duration) -> HeaderValue {
    let millis = t.as_millis().min(99_999_999);
    HeaderValue::try_from(format!("{millis}m")).unwrap_or(HeaderValue::from_static("99999999m"))
}

/// Asks the breaker of `path`, if its balancer keeps them, whether a unary RPC goes.
fn admit(balancer: &Balancer, path: &str) -> Result<Option<Admitted>, tonic::Status> {
    balancer.breakers().map(|b| b.admit(path)).transpose()
}

/// Tells the breaker the RPC's final status: now if it failed or came trailers-only, when its
/// body ends otherwise.
fn report(
    admitted: Admitted,
    result: &mut Result<
        http::Response<switchboard_balancer::ResponseBody>,
        switchboard_balancer::BoxError,
    >,
) {
    match result {
        Ok(response) => match tonic::Status::from_header_map(response.headers()) {
            Some(status) => admitted.end_with(&status),
            None => response.body_mut().on_end(admitted),
        },
        Err(error) => match error.downcast_ref::<tonic::Status>() {
            Some(status) => admitted.end_with(status),
            None => admitted.end_with(&tonic::Status::unknown(error.to_string())),
        },
    }
}

impl Channel {
    /// How typed clients over this channel compress their requests (`Compression`).
    pub fn compression(&self) -> Option<Compression> {
        self.compression
    }

    /// Whether `uri`'s method is listed in `StreamingMethods`.
    fn is_streaming(&self, uri: &http::Uri) -> bool {
        let path = uri.path();
        self.streaming.iter().any(|m| match m.strip_suffix('*') {
            Some(service) => path.starts_with(service),
            None => path == m,
        })
    }
}

impl tower_service::Service<Request<tonic::body::Body>> for Channel {
    type Response = <Balancer as tower_service::Service<Request<tonic::body::Body>>>::Response;
    type Error = switchboard_balancer::BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.balancer.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<tonic::body::Body>) -> Self::Future {
        let method = self
            .methods
            .as_deref()
            .and_then(|m| m.lookup(request.uri().path()));
        let method_timeout = method.and_then(|m| m.timeout);
        // Unary calls get the client's default deadline, streams the streaming one.
        let extensions = request.extensions();
        let streaming = extensions.get::<Streaming>().is_some() || self.is_streaming(request.uri());
        let (default, default_header) = if extensions.get::<NoDefaultTimeout>().is_some() {
            (None, None)
        } else if streaming {
            (self.stream_timeout, self.default_headers[1].as_ref())
        } else {
            (self.timeout, self.default_headers[0].as_ref())
        };
        // The caller's deadline stands unless the method's is shorter; without either, the
        // default.
        let (timeout, send) = match (
            switchboard_balancer::grpc_timeout(request.headers()),
            method_timeout,
        ) {
            (Some(caller), Some(m)) if m < caller => (Some(m), Some(timeout_header(m))),
            (Some(caller), _) => (Some(caller), None),
            (None, Some(m)) => (Some(m), Some(timeout_header(m))),
            // The client's default, whose header was made once.
            (None, None) => (default, default_header.cloned()),
        };
        if let Some(value) = send {
            request.headers_mut().insert(GRPC_TIMEOUT, value);
        }
        if self.trace {
            crate::trace::propagate(request.headers_mut());
        }
        if let Some(credential) = &self.credential {
            let headers = request.headers_mut();
            if !headers.contains_key("app") {
                headers.insert("app", credential.0.clone());
                headers.insert("token", credential.1.clone());
            }
        }
        if let Some(wait) = method.and_then(|m| m.wait_for_ready) {
            if request.extensions().get::<WaitForReady>().is_none() {
                request.extensions_mut().insert(WaitForReady(wait));
            }
        }
        // A method's message-size limits apply with the client's: the smaller of the two.
        let mut max_request = self.limits.request;
        if let Some(m) = method.filter(|m| {
            m.max_request_message_bytes.is_some() || m.max_response_message_bytes.is_some()
        }) {
            let limits = MessageLimits {
                request: m
                    .max_request_message_bytes
                    .map_or(max_request, |n| n.min(max_request)),
                response: m
                    .max_response_message_bytes
                    .map_or(self.limits.response, |n| n.min(self.limits.response)),
            };
            max_request = limits.request;
            request.extensions_mut().insert(limits);
        }
        // The breaker sees unary RPCs, as go-zero's, once each whatever their retries.
        let admitted = if streaming {
            None
        } else {
            match admit(&self.balancer, request.uri().path()) {
                Ok(admitted) => admitted,
                Err(status) => {
                    let result = Err(status.into());
                    if self.call_log {
                        log_failure(&result, request.uri().path(), Duration::ZERO);
                    }
                    return Box::pin(std::future::ready(result));
                }
            }
        };
        let policy = method
            .and_then(|m| m.retry.clone())
            .unwrap_or_else(|| self.retry.clone());
        let balancer = self.balancer.clone();
        let buffer = self.buffer;
        // One clock read, for the deadline and the call log.
        let now = (timeout.is_some() || self.call_log).then(tokio::time::Instant::now);
        let deadline = timeout.and_then(|t| now?.checked_add(t));
        // No timer here: each attempt carries what is left of the deadline in its
        // `grpc-timeout`, which the balancer enforces from the pick to the trailers, and no
        // retry or hedge starts past it.
        let log = match (self.call_log, now, request.uri().path_and_query()) {
            (true, Some(now), Some(path)) => Some((path.clone(), now)),
            _ => None,
        };
        Box::pin(async move {
            let mut result =
                retry::call(&policy, balancer, request, deadline, buffer, max_request).await;
            if let Some(admitted) = admitted {
                report(admitted, &mut result);
            }
            if let Some((path, started)) = log {
                log_failure(&result, path.path(), started.elapsed());
            }
            result
        })
    }
}

/// Logs an RPC that ended without a response, as go-zero's duration interceptor does
/// (`[RPC] fail` at ERROR): its status, or the status in a trailers-only response.
fn log_failure(
    result: &Result<
        http::Response<switchboard_balancer::ResponseBody>,
        switchboard_balancer::BoxError,
    >,
    method: &str,
    elapsed: Duration,
) {
    match result {
        Ok(response) => {
            let status = response.headers().get(&crate::retry::GRPC_STATUS);
            if let Some(code) = status.filter(|c| c.as_bytes() != b"0") {
                let code = tonic::Code::from_bytes(code.as_bytes());
                tracing::error!(method, ?elapsed, ?code, "[RPC] fail");
            }
        }
        Err(error) => match error.downcast_ref::<tonic::Status>() {
            Some(status) => {
                let code = status.code();
                tracing::error!(
                    method,
                    ?elapsed,
                    ?code,
                    message = status.message(),
                    "[RPC] fail"
                );
            }
            None => tracing::error!(method, ?elapsed, %error, "[RPC] fail"),
        },
    }
}
