//! [`Server`]: serve tonic services with `grpc.health.v1`, registered in etcd, and leave
//! without failing a single RPC.
//!
//! A server that simply stops makes its clients fail: they keep sending to it until their
//! resolver sees it gone. [`Serving::shutdown`] (or a SIGTERM / SIGINT with
//! [`Serving::wait_for_signal`]) therefore leaves in the order Kubernetes-style deployments
//! expect:
//!
//! 1. **Deregister**: the etcd lease is revoked, so the key goes at once and every client's
//!    watch sees a DELETE.
//! 2. **NOT_SERVING**: the health status of the server (`""`) and of every service added is
//!    set to NOT_SERVING, for clients and load balancers that check health rather than etcd.
//! 3. **Grace**: the server keeps accepting and serving for the grace period (2 s by default),
//!    while clients move away.
//! 4. **Drain**: the listener is closed (new connections are refused), every connection gets
//!    an HTTP/2 GOAWAY, health `Watch` streams are ended, and in-flight RPCs finish, bounded by
//!    the drain timeout (30 s by default).
//!
//! The address registered is, in this order: the one given with [`Server::advertise`]; the
//! `POD_IP` environment variable with the bound port; when bound to `0.0.0.0` or `[::]`, the
//! first non-loopback IPv4 address of the host's interfaces with the bound port; else the bound
//! address.
//!
//! # Examples
//!
//! ```no_run
//! use std::time::Duration;
//! use switchboard::resolver::{EtcdConfig, Format};
//!
//! # fn user_service() -> tonic_health::pb::health_server::HealthServer<
//! #     impl tonic_health::pb::health_server::Health> { tonic_health::server::health_reporter().1 }
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let running = switchboard::Server::builder()
//!     .etcd(EtcdConfig::from_hosts("127.0.0.1:2379")?, "user.rpc")
//!     .listen("0.0.0.0:8080".parse()?)
//!     .ttl(Duration::from_secs(10))
//!     .format(Format::Plain)
//!     .add_service(user_service()) // e.g. `UserServer::new(MyUser::default())`
//!     .serve()
//!     .await?;
//! println!("serving on {}", running.advertised_addr());
//! running.wait_for_signal().await;
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::future::Future as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use switchboard_resolver::{EtcdConfig, Format, Registrar, Registration};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tower_service::Service;
use tracing::{Instrument as _, info, info_span, warn};

use crate::Error;

mod middleware;
mod shedding;

use middleware::Settings;

/// A gRPC server that registers itself in etcd, serves `grpc.health.v1`, and leaves
/// gracefully. Built like tonic's `Server`: setters, [`Server::add_service`] for each service,
/// then [`Server::serve`].
///
/// # Examples
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use switchboard::resolver::EtcdConfig;
/// let serving = switchboard::Server::builder()
///     .etcd(EtcdConfig::from_hosts("127.0.0.1:2379")?, "user.rpc")
///     .listen("0.0.0.0:8080".parse()?)
///     // .add_service(UserServer::new(service))
///     .serve()
///     .await?;
/// serving.wait_for_signal().await; // SIGTERM: deregister, NOT_SERVING, grace, drain
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Server {
    listen: SocketAddr,
    advertise: Option<String>,
    etcd: Option<(EtcdConfig, String)>,
    ttl: Duration,
    format: Format,
    grace: Duration,
    drain_timeout: Duration,
    routes: RoutesBuilder,
    services: Vec<&'static str>,
    /// The registration's id under the key (go-zero's `Etcd.ID`), instead of the lease's.
    id: Option<i64>,
    health_service: bool,
    settings: Settings,
    /// go-zero's `CpuThreshold`, if shedding is on.
    cpu_threshold: Option<u32>,
    name: Option<String>,
    tls: Option<tonic::transport::ServerTlsConfig>,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            advertise: None,
            etcd: None,
            ttl: Duration::from_secs(10),
            format: Format::Plain,
            grace: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(30),
            routes: RoutesBuilder::default(),
            services: Vec::new(),
            id: None,
            health_service: true,
            settings: Settings::default(),
            cpu_threshold: None,
            name: None,
            tls: None,
        }
    }
}

impl Server {
    /// A server with the defaults below and no services yet.
    pub fn builder() -> Self {
        Self::default()
    }

    /// A server as go-zero's `RpcServerConf` describes it ([`ServerConfig`]): where it
    /// listens, where it registers (with etcd's user and TLS), its per-call deadlines, its
    /// health service, and go-zero's interceptors with their defaults (recover, call log,
    /// metrics, breaker, load shedding above 90% CPU). Add the services, then
    /// [`Server::serve`].
    ///
    /// [`ServerConfig`]: crate::ServerConfig
    pub fn from_config(config: &crate::ServerConfig) -> Result<Self, Error> {
        let mut server = Self::builder().listen(config.listen_on);
        if let Some(etcd) = &config.etcd {
            server = server.etcd(crate::client::etcd_config(etcd)?, etcd.key.clone());
            server.id = etcd.id.filter(|id| *id > 0);
        }
        if let Some(tls) = &config.tls {
            let read = crate::config::read_tls_file;
            let ca = match &tls.ca_cert_file {
                Some(path) => Some(read("CACertFile", path)?),
                None => None,
            };
            server = server.tls(
                &read("CertFile", &tls.cert_file)?,
                &read("CertKeyFile", &tls.cert_key_file)?,
                ca.as_deref(),
            );
        }
        let m = &config.middlewares;
        server.name = config.name.clone();
        server.health_service = config.health;
        server.cpu_threshold = (config.cpu_threshold > 0).then_some(config.cpu_threshold);
        server.settings = Settings {
            timeout: config.timeout,
            method_timeouts: config
                .method_timeouts
                .iter()
                .filter(|t| !t.timeout.is_zero())
                .map(|t| (t.full_method.clone(), t.timeout))
                .collect(),
            recover: m.recover,
            trace: m.trace,
            slow: m.stat.then(|| {
                m.stat_conf
                    .slow_threshold
                    .unwrap_or(crate::client::SLOW_CALL)
            }),
            metrics: m.prometheus,
            breakers: m.breaker.then(|| {
                let name = config.name.as_deref().unwrap_or("server");
                std::sync::Arc::new(switchboard_balancer::breaker::Breakers::new(
                    name,
                    m.prometheus,
                ))
            }),
            shedder: None,
        };
        Ok(server)
    }

    /// Registers the server in etcd under the service `key` (`user.rpc` registers
    /// `user.rpc/<id>`). Without it, nothing is registered.
    pub fn etcd(mut self, config: EtcdConfig, key: impl Into<String>) -> Self {
        self.etcd = Some((config, key.into()));
        self
    }

    /// The address to listen on; port 0 picks a free port. Defaults to `0.0.0.0:8080`.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.listen = addr;
        self
    }

    /// The address registered in etcd (`host:port`, as clients should dial it). Defaults to
    /// `POD_IP` with the bound port, else the first non-loopback IPv4 address of the host when
    /// listening on all addresses, else the bound address.
    pub fn advertise(mut self, addr: impl Into<String>) -> Self {
        self.advertise = Some(addr.into());
        self
    }

    /// How long the server keeps serving after deregistering, so that clients see the DELETE
    /// and move away before connections are drained. Defaults to 2 s.
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// How long in-flight RPCs get to finish once the server stops accepting. Defaults to 30 s.
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// The lease TTL of the registration: how long a crashed server stays registered.
    /// Defaults to 10 s; etcd's minimum is 2 s.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The format of the registration. Defaults to [`Format::Plain`] (go-zero).
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// Serves TLS (ALPN `h2`) with this certificate chain and key (PEM); with `client_ca`
    /// (PEM), only to clients presenting a certificate it signed (mTLS).
    pub fn tls(mut self, cert: &[u8], key: &[u8], client_ca: Option<&[u8]>) -> Self {
        let mut tls = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(cert, key));
        if let Some(ca) = client_ca {
            tls = tls.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        self.tls = Some(tls);
        self
    }

    /// Adds a generated tonic service (`UserServer::new(..)`); its name is also reported by
    /// the health service.
    pub fn add_service<S>(mut self, svc: S) -> Self
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.routes.add_service(svc);
        self.services.push(S::NAME);
        self
    }

    /// Binds, starts serving with every service SERVING, registers in etcd (when configured),
    /// and returns once registered. Fails if the address cannot be bound, the configuration is
    /// invalid, or etcd cannot be reached within 10 s (the server is then stopped).
    pub async fn serve(self) -> Result<Serving, Error> {
        let listener = TcpListener::bind(self.listen).await.map_err(|e| {
            Error::unavailable(format!("cannot listen on {}", self.listen)).with_source(e)
        })?;
        let local_addr = listener.local_addr().map_err(|e| {
            Error::unavailable(format!("cannot read the address bound for {}", self.listen))
                .with_source(e)
        })?;
        let interfaces = if local_addr.ip().is_unspecified() && self.advertise.is_none() {
            interface_addrs()
        } else {
            Vec::new()
        };
        let pod_ip = std::env::var("POD_IP").ok();
        let advertised = advertised_addr(
            self.advertise.as_deref(),
            pod_ip.as_deref(),
            &interfaces,
            local_addr,
        )?;
        let registrar = match self.etcd {
            Some((config, key)) => Some({
                let registrar = Registrar::new(config, &key, &advertised)
                    .and_then(|r| r.ttl(self.ttl))
                    .map_err(resolver_error)?
                    .format(self.format);
                // Clients of formats that say so (kratos' `grpcs://`, go-micro's `secure`)
                // dial it with TLS.
                let registrar = if self.tls.is_some() {
                    registrar.metadata("secure", "true")
                } else {
                    registrar
                };
                match self.id {
                    Some(id) => registrar.id(id.to_string()),
                    None => registrar,
                }
            }),
            None => None,
        };

        let (health, health_service) = tonic_health::server::health_reporter();
        let mut services = vec![""];
        services.extend(self.services);
        for name in &services {
            health
                .set_service_status(name, ServingStatus::Serving)
                .await;
        }
        let mut routes = self.routes;
        if self.health_service {
            routes.add_service(health_service);
        }
        let mut settings = self.settings;
        if let Some(threshold) = self.cpu_threshold {
            let cpu = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
            shedding::sample_cpu(cpu.clone());
            settings.shedder = Some(std::sync::Arc::new(shedding::Shedder::new(
                u64::from(threshold),
                cpu,
            )));
        }
        let layer = middleware::Layer(std::sync::Arc::new(settings));
        let (stop, stopped) = oneshot::channel::<()>();
        let incoming = UntilStopped {
            incoming: Some(TcpIncoming::from(listener).with_nodelay(Some(true))),
            stop: stopped,
        };
        let span = match &self.name {
            Some(name) => info_span!("server", %name, addr = %local_addr),
            None => info_span!("server", addr = %local_addr),
        };
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = self.tls {
            builder = builder.tls_config(tls).map_err(|e| {
                Error::config("invalid TLS certificate or key for the server").with_source(e)
            })?;
        }
        let task = tokio::spawn(
            async move {
                builder
                    .layer(layer)
                    .add_routes(routes.routes())
                    // The end of `incoming` starts the graceful shutdown: tonic drains only
                    // with a shutdown signal, which is otherwise never needed.
                    .serve_with_incoming_shutdown(incoming, std::future::pending())
                    .await
            }
            .instrument(span),
        );
        info!(%local_addr, %advertised, services = ?&services[1..], "serving");

        let registration = match registrar {
            Some(registrar) => match registrar.register().await {
                Ok(registration) => Some(registration),
                Err(e) => {
                    drop(stop);
                    let _ = task.await;
                    return Err(resolver_error(e));
                }
            },
            None => None,
        };
        Ok(Serving {
            local_addr,
            advertised,
            health,
            services,
            registration,
            stop: Some(stop),
            task: Some(task),
            grace: self.grace,
            drain_timeout: self.drain_timeout,
        })
    }
}

/// A running [`Server`]. Dropping it stops accepting and drains at once, without
/// deregistering (the key expires with its lease); [`Serving::shutdown`] leaves gracefully.
#[derive(Debug)]
pub struct Serving {
    local_addr: SocketAddr,
    advertised: String,
    health: HealthReporter,
    services: Vec<&'static str>,
    registration: Option<Registration>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
    grace: Duration,
    drain_timeout: Duration,
}

impl Serving {
    /// The address the server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address registered in etcd (or that would be, without etcd).
    pub fn advertised_addr(&self) -> &str {
        &self.advertised
    }

    /// The health reporter, to change the status of the server (`""`) or of a service.
    pub fn health(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Leaves gracefully: deregisters, sets every health status to NOT_SERVING, waits the
    /// grace period, then stops accepting and waits for in-flight RPCs, at most the drain
    /// timeout. Returns once stopped; failures (etcd unreachable, drain timeout) are logged,
    /// and connections still open after the drain timeout close with the runtime.
    pub async fn shutdown(mut self) {
        if let Some(registration) = self.registration.take() {
            info!(addr = %self.advertised, "deregistering from etcd");
            match registration.deregister().await {
                Ok(()) => info!(addr = %self.advertised, "deregistered from etcd"),
                Err(e) => {
                    warn!(error = %e, "deregistration failed; the key expires with its lease")
                }
            }
        }
        for name in &self.services {
            self.health
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
        info!(services = ?self.services, "health set to NOT_SERVING");
        info!(grace = ?self.grace, "waiting for clients to move away");
        tokio::time::sleep(self.grace).await;

        info!(timeout = ?self.drain_timeout, "no longer accepting; draining in-flight RPCs");
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Health `Watch` streams never end by themselves and would hold their connections open
        // until the drain timeout: removing the statuses ends them.
        for name in &self.services {
            self.health.clear_service_status(name).await;
        }
        let Some(task) = self.task.take() else {
            return;
        };
        match tokio::time::timeout(self.drain_timeout, task).await {
            Ok(Ok(Ok(()))) => info!("drained; server stopped"),
            Ok(Ok(Err(e))) => warn!(error = %e, "server failed while draining"),
            Ok(Err(e)) => warn!(error = %e, "server task failed"),
            Err(_) => warn!(
                timeout = ?self.drain_timeout,
                "drain timeout; stopping with connections still open"
            ),
        }
    }

    /// Waits for SIGTERM or SIGINT, then leaves as [`Serving::shutdown`] does. If the signal
    /// handlers cannot be installed, the error is logged and the server leaves at once.
    pub async fn wait_for_signal(self) {
        match termination_signal().await {
            Ok(signal) => info!(signal, "shutting down"),
            Err(e) => warn!(error = %e, "cannot listen for signals; shutting down"),
        }
        self.shutdown().await;
    }
}

/// Accepted connections until `stop` fires or its sender is dropped; the listener is then
/// closed, so that new connections are refused while the open ones drain.
struct UntilStopped {
    incoming: Option<TcpIncoming>,
    stop: oneshot::Receiver<()>,
}

impl Stream for UntilStopped {
    type Item = io::Result<TcpStream>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.incoming.is_some() && Pin::new(&mut this.stop).poll(cx).is_ready() {
            info!("listener closed");
            this.incoming = None;
        }
        match this.incoming.as_mut() {
            Some(incoming) => Pin::new(incoming).poll_next(cx),
            None => Poll::Ready(None),
        }
    }
}

/// The first SIGTERM or SIGINT.
async fn termination_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

fn resolver_error(e: switchboard_resolver::Error) -> Error {
    if e.is_config() {
        Error::config("invalid etcd registration").with_source(e)
    } else {
        Error::unavailable("cannot register in etcd").with_source(e)
    }
}

/// The addresses of the host's interfaces that are up, in the order the system lists them.
fn interface_addrs() -> Vec<IpAddr> {
    use nix::net::if_::InterfaceFlags;
    match nix::ifaddrs::getifaddrs() {
        Ok(addrs) => addrs
            .filter(|a| a.flags.contains(InterfaceFlags::IFF_UP))
            .filter_map(|a| {
                let addr = a.address?;
                addr.as_sockaddr_in()
                    .map(|v4| IpAddr::V4(v4.ip()))
                    .or_else(|| addr.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip())))
            })
            .collect(),
        Err(e) => {
            warn!(error = %e, "cannot list network interfaces");
            Vec::new()
        }
    }
}

/// The address to register: `explicit`, else `pod_ip` with the bound port, else (bound to all
/// addresses) the first non-loopback IPv4 of `interfaces` with the bound port, else `bound`.
fn advertised_addr(
    explicit: Option<&str>,
    pod_ip: Option<&str>,
    interfaces: &[IpAddr],
    bound: SocketAddr,
) -> Result<String, Error> {
    if let Some(addr) = explicit {
        return Ok(addr.to_owned());
    }
    if let Some(ip) = pod_ip.map(str::trim).filter(|ip| !ip.is_empty()) {
        let ip: IpAddr = ip.parse().map_err(|e| {
            Error::config(format!("POD_IP {ip:?} is not an IP address")).with_source(e)
        })?;
        return Ok(SocketAddr::new(ip, bound.port()).to_string());
    }
    if bound.ip().is_unspecified() {
        let found = interfaces
            .iter()
            .find(|ip| ip.is_ipv4() && !ip.is_loopback() && !ip.is_unspecified());
        if let Some(ip) = found {
            return Ok(SocketAddr::new(*ip, bound.port()).to_string());
        }
    }
    Ok(bound.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|ip| ip.parse().unwrap()).collect()
    }

    const ANY: &str = "0.0.0.0:8080";

    #[test]
    fn explicit_address_wins() {
        let addr = advertised_addr(
            Some("10.0.0.5:9000"),
            Some("10.1.1.1"),
            &ips(&["192.168.1.2"]),
            ANY.parse().unwrap(),
        );
        assert_eq!(addr.unwrap(), "10.0.0.5:9000");
    }

    #[test]
    fn pod_ip_comes_with_the_bound_port() {
        let interfaces = ips(&["192.168.1.2"]);
        let addr = advertised_addr(None, Some("10.1.1.1"), &interfaces, ANY.parse().unwrap());
        assert_eq!(addr.unwrap(), "10.1.1.1:8080");
        let addr = advertised_addr(None, Some("fd00::7"), &interfaces, ANY.parse().unwrap());
        assert_eq!(addr.unwrap(), "[fd00::7]:8080");
    }

    #[test]
    fn an_invalid_pod_ip_is_a_config_error() {
        let err = advertised_addr(None, Some("pod-7"), &[], ANY.parse().unwrap()).unwrap_err();
        assert!(err.is_config(), "{err}");
        assert!(err.to_string().contains("pod-7"), "{err}");
    }

    #[test]
    fn an_empty_pod_ip_is_ignored() {
        let addr = advertised_addr(None, Some(" "), &[], "127.0.0.1:7".parse().unwrap());
        assert_eq!(addr.unwrap(), "127.0.0.1:7");
    }

    #[test]
    fn all_addresses_advertise_the_first_non_loopback_ipv4() {
        let interfaces = ips(&["127.0.0.1", "::1", "fe80::1", "10.2.3.4", "192.168.1.2"]);
        let addr = advertised_addr(None, None, &interfaces, ANY.parse().unwrap());
        assert_eq!(addr.unwrap(), "10.2.3.4:8080");
        let addr = advertised_addr(None, None, &interfaces, "[::]:8080".parse().unwrap());
        assert_eq!(addr.unwrap(), "10.2.3.4:8080");
    }

    #[test]
    fn a_specific_bound_address_is_advertised_as_is() {
        let interfaces = ips(&["10.2.3.4"]);
        let addr = advertised_addr(None, None, &interfaces, "127.0.0.1:9".parse().unwrap());
        assert_eq!(addr.unwrap(), "127.0.0.1:9");
    }

    #[test]
    fn without_interfaces_the_bound_address_is_advertised() {
        let interfaces = ips(&["127.0.0.1", "fe80::1"]);
        let addr = advertised_addr(None, None, &interfaces, ANY.parse().unwrap());
        assert_eq!(addr.unwrap(), ANY);
    }

    #[test]
    fn interfaces_are_listed() {
        // Every host has at least its loopback interface up.
        assert!(interface_addrs().iter().any(|ip| ip.is_loopback()));
    }
}
