//! go-zero's `RpcServerConf`, read by [`crate::Server::from_config`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::EtcdSection;
use crate::duration;
use crate::error::Error;

/// A server's config, as go-zero's `RpcServerConf` (zrpc) writes it; each field does what it
/// does in go-zero, and fields that cannot be honoured are refused with the reason.
///
/// # Examples
///
/// ```
/// let config = switchboard::ServerConfig::from_yaml(
///     "
/// Name: user.rpc
/// ListenOn: 0.0.0.0:8080
/// Etcd:
///   Hosts: [127.0.0.1:2379]
///   Key: user.rpc
/// Timeout: 3000
/// MethodTimeouts:
///   - FullMethod: /user.User/GetUserInfo
///     Timeout: 500ms
/// ",
/// )?;
/// assert_eq!(config.timeout, Some(std::time::Duration::from_secs(3)));
/// # Ok::<(), switchboard::Error>(())
/// ```
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The service's name (go-zero's `ServiceConf.Name`): the server's log span.
    #[serde(default, alias = "name")]
    pub name: Option<String>,
    /// Where to listen (`0.0.0.0:8080`).
    #[serde(alias = "listen_on")]
    pub listen_on: SocketAddr,
    /// Where to register (`Key/<lease id>`, or `Key/ID` with `ID`), with etcd's user and TLS.
    #[serde(default, alias = "etcd")]
    pub etcd: Option<EtcdSection>,
    /// go-zero's per-call token check against Redis: refused when `true` (see
    /// [`ServerConfig::validated`]).
    #[serde(default, alias = "auth")]
    pub auth: bool,
    /// go-zero's Redis for `Auth`: refused with `Auth`.
    #[serde(default, alias = "redis")]
    pub redis: Option<serde_json::Value>,
    /// go-zero's `StrictControl` for `Auth`: refused when `true`.
    #[serde(default, alias = "strict_control")]
    pub strict_control: bool,
    /// The server's deadline for each call (milliseconds, or `"2s"`; 2 s unless set; `0`:
    /// none): a call still running past it answers DEADLINE_EXCEEDED.
    #[serde(
        default = "default_timeout",
        alias = "timeout",
        deserialize_with = "duration::optional"
    )]
    pub timeout: Option<Duration>,
    /// go-zero's adaptive load shedding: the CPU usage, in thousandths (900 unless set, below
    /// 1000; `0` turns it off), above which calls past what the server can finish are refused
    /// with RESOURCE_EXHAUSTED.
    #[serde(default = "default_cpu_threshold", alias = "cpu_threshold")]
    pub cpu_threshold: u32,
    /// Whether to serve `grpc.health.v1` (on unless `false`).
    #[serde(default = "yes", alias = "health")]
    pub health: bool,
    /// go-zero's server interceptors.
    #[serde(default, alias = "middlewares")]
    pub middlewares: ServerMiddlewares,
    /// Deadlines of their own for some methods.
    #[serde(default, alias = "method_timeouts")]
    pub method_timeouts: Vec<MethodTimeout>,
    /// TLS for the server's clients (switchboard's own section; go-zero sets it in code).
    #[serde(default, rename = "Tls", alias = "TLS", alias = "tls")]
    pub tls: Option<ServerTls>,
    /// go-zero's `ServiceConf` logging (`Log: {ServiceName, Mode, Level, …}`): accepted; a
    /// switchboard program logs through `tracing`, set up by the program.
    #[serde(default, alias = "log")]
    pub log: Option<serde_json::Value>,
    /// go-zero's `ServiceConf.Mode` (`dev`, `test`, `rt`, `pre`, `pro`): accepted; nothing
    /// depends on it here.
    #[serde(default, alias = "mode")]
    pub mode: Option<String>,
    /// go-zero's `ServiceConf.Prometheus` exporter (`Host`, `Port`, `Path`): accepted; the
    /// program installs its `metrics` recorder and serves it.
    #[serde(default, alias = "prometheus")]
    pub prometheus: Option<serde_json::Value>,
    /// go-zero's `ServiceConf.Telemetry` (OpenTelemetry exporter): accepted; spans are
    /// `tracing`'s, exported as the program sets up.
    #[serde(default, alias = "telemetry")]
    pub telemetry: Option<serde_json::Value>,
}

/// The server's TLS (`Tls`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerTls {
    /// The server's certificate chain (PEM).
    #[serde(alias = "cert_file")]
    pub cert_file: std::path::PathBuf,
    /// Its key (PEM).
    #[serde(alias = "cert_key_file", alias = "KeyFile")]
    pub cert_key_file: std::path::PathBuf,
    /// With it, clients must present a certificate this CA (PEM) signed: mTLS.
    #[serde(default, rename = "CACertFile", alias = "ca_cert_file")]
    pub ca_cert_file: Option<std::path::PathBuf>,
}

/// go-zero's server `Middlewares` (each `true` unless set).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerMiddlewares {
    /// go-zero's tracing interceptor: each handler runs in its caller's W3C trace
    /// (`traceparent`), so the RPCs it makes through a switchboard `Channel` continue it.
    #[serde(default = "yes", alias = "trace")]
    pub trace: bool,
    /// A handler that panics answers INTERNAL (`panic: <message>`), logged at ERROR, instead
    /// of breaking its connection.
    #[serde(default = "yes", alias = "recover")]
    pub recover: bool,
    /// Every call logged at DEBUG, and those slower than `StatConf.SlowThreshold` at WARN
    /// (`[RPC] slowcall`).
    #[serde(default = "yes", alias = "stat")]
    pub stat: bool,
    /// The call log's settings.
    #[serde(default, alias = "stat_conf")]
    pub stat_conf: StatConf,
    /// `switchboard_server_requests_total{method,code}` and
    /// `switchboard_server_request_duration_seconds{method}`.
    #[serde(default = "yes", alias = "prometheus")]
    pub prometheus: bool,
    /// An adaptive breaker per method over what this server answers (go-zero's algorithm, the
    /// client's); a refused call answers UNAVAILABLE.
    #[serde(default = "yes", alias = "breaker")]
    pub breaker: bool,
}

impl Default for ServerMiddlewares {
    fn default() -> Self {
        Self {
            trace: true,
            recover: true,
            stat: true,
            stat_conf: StatConf::default(),
            prometheus: true,
            breaker: true,
        }
    }
}

/// go-zero's `StatConf`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct StatConf {
    /// Past this a call is slow (500 ms unless set).
    #[serde(
        default,
        alias = "slow_threshold",
        deserialize_with = "duration::optional"
    )]
    pub slow_threshold: Option<Duration>,
    /// go-zero logs requests' contents except these methods'; switchboard never logs
    /// contents: accepted.
    #[serde(default, alias = "ignore_content_methods")]
    pub ignore_content_methods: Vec<String>,
}

/// One method's deadline (go-zero's `MethodTimeoutConf`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct MethodTimeout {
    /// `/package.Service/Method`.
    #[serde(alias = "full_method")]
    pub full_method: String,
    /// Its deadline; `0`: none.
    #[serde(alias = "timeout", deserialize_with = "duration::required")]
    pub timeout: Duration,
}

fn default_timeout() -> Option<Duration> {
    Some(Duration::from_secs(2))
}

fn default_cpu_threshold() -> u32 {
    900
}

fn yes() -> bool {
    true
}

impl ServerConfig {
    /// Reads a YAML config and checks it.
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        let config: Self = serde_norway::from_str(text)
            .map_err(|e| Error::config(format!("invalid YAML server config: {e}")))?;
        config.validated()
    }

    /// Reads a JSON config and checks it.
    pub fn from_json(text: &str) -> Result<Self, Error> {
        let config: Self = serde_json::from_str(text)
            .map_err(|e| Error::config(format!("invalid JSON server config: {e}")))?;
        config.validated()
    }

    /// Reads a config file: YAML (`.yaml`, `.yml`) or JSON (`.json`).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        super::read_file(
            path.as_ref(),
            ".yaml, .yml or .json",
            |ext, text| match ext {
                "yaml" | "yml" => Some(Self::from_yaml(text)),
                "json" => Some(Self::from_json(text)),
                _ => None,
            },
        )
    }

    /// Checks what serde cannot, and refuses what cannot be honoured: `Auth` (go-zero checks
    /// each call's `app`/`token` against Redis; switchboard has no Redis client), and a
    /// `CpuThreshold` of 1000 or more.
    pub fn validated(mut self) -> Result<Self, Error> {
        if self.auth || self.strict_control {
            return Err(Error::config(
                "Auth: go-zero's token check against Redis is not supported; check the `app` \
                 and `token` metadata in a tonic interceptor of your own, and remove Auth, \
                 StrictControl and Redis",
            ));
        }
        if self.redis.is_some() {
            return Err(Error::config(
                "Redis: used only by go-zero's Auth, which is not supported; remove it",
            ));
        }
        if self.cpu_threshold >= 1000 {
            return Err(Error::config(format!(
                "CpuThreshold: {} is not below 1000 (thousandths of CPU; 0 turns shedding off)",
                self.cpu_threshold
            )));
        }
        if let Some(etcd) = &self.etcd {
            etcd.check()?;
        }
        let mut seen = BTreeMap::new();
        for m in &self.method_timeouts {
            if !m.full_method.starts_with('/') || m.full_method[1..].split('/').count() != 2 {
                return Err(Error::config(format!(
                    "MethodTimeouts: {:?} is not /package.Service/Method",
                    m.full_method
                )));
            }
            if seen.insert(m.full_method.clone(), ()).is_some() {
                return Err(Error::config(format!(
                    "MethodTimeouts: {} is listed twice",
                    m.full_method
                )));
            }
        }
        self.timeout = self.timeout.filter(|t| !t.is_zero());
        Ok(self)
    }
}
