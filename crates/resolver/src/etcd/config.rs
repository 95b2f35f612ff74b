//! [`EtcdConfig`]: how to reach an etcd cluster.

use std::fmt;
use std::path::Path;
use std::time::Duration;

use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};

use crate::backoff::BackoffConfig;
use crate::error::Error;

/// TLS settings for etcd connections (server CA, client certificate for mutual TLS).
#[derive(Clone, Default)]
pub struct EtcdTls {
    ca_pem: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
    domain: Option<String>,
}

impl fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca", &self.ca_pem.is_some())
            .field("client_identity", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish()
    }
}

impl EtcdTls {
    /// TLS with the system's webpki defaults and no client certificate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts this CA (PEM) for the server certificates.
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// Presents this client certificate and key (PEM) for mutual TLS.
    pub fn identity_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.identity = Some((cert.into(), key.into()));
        self
    }

    /// Checks the server certificate against this name instead of the endpoint's host.
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// Reads the files go-zero's `CACertFile`, `CertFile` and `CertKeyFile` name. The client
    /// certificate and key go together: both or neither.
    pub fn from_files(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Self, Error> {
        let read = |p: &Path| {
            std::fs::read(p).map_err(|e| {
                Error::config(format!("cannot read TLS file {}", p.display())).with_source(e)
            })
        };
        let mut tls = Self::new();
        if let Some(ca) = ca {
            tls = tls.ca_pem(read(ca)?);
        }
        match (cert, key) {
            (Some(c), Some(k)) => tls = tls.identity_pem(read(c)?, read(k)?),
            (None, None) => {}
            _ => {
                return Err(Error::config(
                    "a TLS client certificate needs both the certificate and the key file",
                ));
            }
        }
        Ok(tls)
    }

    fn options(&self) -> TlsOptions {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &self.ca_pem {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        if let Some(domain) = &self.domain {
            tls = tls.domain_name(domain.clone());
        }
        tls
    }
}

/// How to reach an etcd cluster: its members, credentials and the bounds on every wait.
///
/// Each endpoint is a member of the same cluster. Clients talk to one member at a time and move
/// to the next when it fails, hangs or loses its leader, so a dead or stopped member costs one
/// bounded timeout, not an outage.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use switchboard_resolver::EtcdConfig;
///
/// let config = EtcdConfig::new(["127.0.0.1:2379", "127.0.0.1:22379"])
///     .unwrap()
///     .request_timeout(Duration::from_secs(2));
/// assert_eq!(config.endpoints().len(), 2);
/// assert!(EtcdConfig::new(Vec::<String>::new()).unwrap_err().is_config());
/// ```
#[derive(Clone)]
pub struct EtcdConfig {
    endpoints: Vec<String>,
    user: Option<(String, String)>,
    tls: Option<EtcdTls>,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    keepalive: Option<(Duration, Duration)>,
    pub(crate) watch_check: Duration,
    pub(crate) backoff: BackoffConfig,
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("user", &self.user.as_ref().map(|(u, _)| u))
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("keepalive", &self.keepalive)
            .field("watch_check", &self.watch_check)
            .finish()
    }
}

impl EtcdConfig {
    /// The shortest [`watch_check_interval`](Self::watch_check_interval): 100 ms.
    pub const MIN_WATCH_CHECK_INTERVAL: Duration = Duration::from_millis(100);

    /// A configuration for these members (`host:port`, `http://host:port` or
    /// `https://host:port`). Fails when the list is empty or an endpoint is malformed.
    pub fn new<I, S>(endpoints: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut list = Vec::new();
        for e in endpoints {
            let e = e.as_ref().trim();
            if e.is_empty() {
                continue;
            }
            let hostport = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"))
                .unwrap_or(e)
                .trim_end_matches('/');
            crate::addr::validate(hostport)
                .map_err(|why| Error::config(format!("etcd endpoint `{e}`: {why}")))?;
            list.push(e.trim_end_matches('/').to_string());
        }
        if list.is_empty() {
            return Err(Error::config("no etcd endpoint given"));
        }
        Ok(Self {
            endpoints: list,
            user: None,
            tls: None,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            keepalive: Some((Duration::from_secs(10), Duration::from_secs(5))),
            watch_check: Duration::from_secs(5),
            backoff: BackoffConfig::default(),
        })
    }

    /// Parses a comma-separated member list, as `--etcd` and go-zero's `Hosts` give it.
    pub fn from_hosts(hosts: &str) -> Result<Self, Error> {
        Self::new(hosts.split(','))
    }

    /// The members, in the order given.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Authenticates as this etcd user.
    pub fn user(mut self, name: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((name.into(), password.into()));
        self
    }

    /// Connects with TLS. Endpoints without a scheme then use `https`; an `http://` endpoint is
    /// an error at connect time.
    pub fn tls(mut self, tls: EtcdTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Bound on opening a connection to one member. Defaults to 3 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Bound on every unary request (get, put, grant, revoke) and on opening a watch or a
    /// keepalive stream; past it the member is treated as hung and the next one is tried.
    /// Defaults to 5 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// HTTP/2 keepalive towards etcd: a PING every `interval` while streams are open, the
    /// connection dropped if no answer comes within `timeout`. Defaults to 10 s / 5 s; etcd
    /// answers pings more frequent than its `--grpc-keepalive-min-time` (5 s) with GOAWAY.
    pub fn keepalive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.keepalive = Some((interval, timeout));
        self
    }

    /// Turns HTTP/2 keepalive off.
    pub fn no_keepalive(mut self) -> Self {
        self.keepalive = None;
        self
    }

    /// How long a watch may stay quiet before it asks its member for a progress notification;
    /// a watch that then hears nothing for as long again is treated as hung: its connection is
    /// dropped and the watch re-created, from where it left off, on the next member. This finds
    /// a stopped member, or a network cut without a word, faster than keepalive alone, and
    /// bounds how late the instance set catches up once such a network comes back (about
    /// twice this, plus the backoff). Defaults to 5 s; at least 100 ms (shorter is raised).
    pub fn watch_check_interval(mut self, interval: Duration) -> Self {
        self.watch_check = interval.max(Self::MIN_WATCH_CHECK_INTERVAL);
        self
    }

    /// Backoff between attempts after a failure. Defaults to 100 ms × 1.6ⁿ, ±20 %, at most 1 s.
    pub fn backoff(mut self, backoff: BackoffConfig) -> Self {
        self.backoff = backoff;
        self
    }

    pub(crate) fn connect_options(&self) -> ConnectOptions {
        let mut opts = ConnectOptions::new()
            .with_require_leader(true)
            .with_connect_timeout(self.connect_timeout)
            .with_keep_alive_while_idle(false)
            .with_auto_token_refresh(true);
        if let Some((interval, timeout)) = self.keepalive {
            opts = opts.with_keep_alive(interval, timeout);
        }
        if let Some((user, pass)) = &self.user {
            opts = opts.with_user(user.clone(), pass.clone());
        }
        if let Some(tls) = &self.tls {
            opts = opts.with_tls(tls.options());
        }
        opts
    }
}
