//! TLS to instances, with rustls: a custom CA, an optional client certificate (mTLS), ALPN `h2`.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// TLS settings for the connections to instances.
///
/// # Examples
///
/// ```no_run
/// # fn run() -> Result<(), switchboard_balancer::TlsError> {
/// let tls = switchboard_balancer::TlsConfig::new()
///     .ca_pem(&std::fs::read("ca.pem").unwrap_or_default())?
///     .domain("user.internal");
/// # Ok(()) }
/// ```
#[derive(Clone, Debug, Default)]
pub struct TlsConfig {
    roots: Vec<CertificateDer<'static>>,
    /// Whether the system's trusted CAs are trusted too.
    system_roots: bool,
    identity: Option<(Vec<CertificateDer<'static>>, Arc<PrivateKeyDer<'static>>)>,
    domain: Option<String>,
}

/// A TLS setting that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsError(String);

impl TlsConfig {
    /// No trusted CA yet: add one with [`TlsConfig::ca_pem`] or trust the system's with
    /// [`TlsConfig::system_roots`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the system's CA certificates (on Debian, `/etc/ssl/certs`, from the
    /// `ca-certificates` package), read when the first TLS connection is made.
    pub fn system_roots(mut self) -> Self {
        self.system_roots = true;
        self
    }

    /// Trusts the CA certificates in this PEM text.
    pub fn ca_pem(mut self, pem: &[u8]) -> Result<Self, TlsError> {
        let certs = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError(format!("CA certificates: {e}")))?;
        if certs.is_empty() {
            return Err(TlsError("no certificate in the CA PEM".into()));
        }
        self.roots.extend(certs);
        Ok(self)
    }

    /// Presents this client certificate chain and key (PEM), for servers that require mTLS.
    pub fn identity_pem(mut self, cert: &[u8], key: &[u8]) -> Result<Self, TlsError> {
        let chain = CertificateDer::pem_slice_iter(cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError(format!("client certificate: {e}")))?;
        if chain.is_empty() {
            return Err(TlsError(
                "no certificate in the client certificate PEM".into(),
            ));
        }
        let key =
            PrivateKeyDer::from_pem_slice(key).map_err(|e| TlsError(format!("client key: {e}")))?;
        self.identity = Some((chain, Arc::new(key)));
        Ok(self)
    }

    /// The name to verify in the servers' certificates (and to send as SNI) instead of the host
    /// of each instance's address. Defaults to the host.
    pub fn domain(mut self, domain: impl Into<String>) -> Self {
        self.domain = Some(domain.into());
        self
    }

    /// Checks what can be checked before a connection is made (the system's CAs are read
    /// later).
    pub(crate) fn check(&self) -> Result<(), TlsError> {
        if self.roots.is_empty() && !self.system_roots {
            return Err(TlsError(
                "no CA certificate: set one with TlsConfig::ca_pem, or trust the system's with \
                 TlsConfig::system_roots"
                    .into(),
            ));
        }
        if let Some(d) = &self.domain {
            ServerName::try_from(d.clone()).map_err(|e| TlsError(format!("domain {d:?}: {e}")))?;
        }
        Ok(())
    }

    pub(crate) fn build(&self) -> Result<Tls, TlsError> {
        self.check()?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in &self.roots {
            roots
                .add(cert.clone())
                .map_err(|e| TlsError(format!("CA certificate: {e}")))?;
        }
        if self.system_roots {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 && self.roots.is_empty() {
                let why = found
                    .errors
                    .first()
                    .map_or_else(|| "none found".to_owned(), ToString::to_string);
                return Err(TlsError(format!(
                    "no system CA certificate could be read ({why}): install the \
                     `ca-certificates` package, or give a CA file"
                )));
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError(e.to_string()))?
            .with_root_certificates(roots);
        let mut config = match &self.identity {
            Some((chain, key)) => builder
                .with_client_auth_cert(chain.clone(), key.clone_key())
                .map_err(|e| TlsError(format!("client certificate: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        let domain = match &self.domain {
            Some(d) => Some(
                ServerName::try_from(d.clone())
                    .map_err(|e| TlsError(format!("domain {d:?}: {e}")))?,
            ),
            None => None,
        };
        Ok(Tls {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            domain,
        })
    }
}

/// When connections use TLS, and with what settings, built at the first connection that needs
/// them.
#[derive(Debug)]
pub(crate) struct TlsPolicy {
    config: TlsConfig,
    built: std::sync::OnceLock<Result<Tls, String>>,
    /// Every instance not registered as insecure (`true`), or only those registered as
    /// secure.
    all: bool,
}

impl TlsPolicy {
    pub(crate) fn new(config: TlsConfig, all: bool) -> Result<Self, TlsError> {
        let built = std::sync::OnceLock::new();
        // Settings that need no system files are built, and refused, at once; the others are
        // checked now and built at the first connection that needs them.
        if config.system_roots {
            config.check()?;
        } else {
            let _ = built.set(Ok(config.build()?));
        }
        Ok(Self { config, built, all })
    }

    /// The TLS settings for an instance registered as `secure` (or not saying), if it is
    /// dialled with TLS.
    pub(crate) fn of(&self, secure: Option<bool>) -> Option<Result<&Tls, String>> {
        if !secure.unwrap_or(self.all) {
            return None;
        }
        let built = self
            .built
            .get_or_init(|| self.config.build().map_err(|e| e.to_string()));
        Some(built.as_ref().map_err(Clone::clone))
    }
}

/// Built TLS settings, shared by every connection.
#[derive(Clone)]
pub(crate) struct Tls {
    pub(crate) connector: tokio_rustls::TlsConnector,
    pub(crate) domain: Option<ServerName<'static>>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("domain", &self.domain).finish()
    }
}

impl Tls {
    /// The name to verify for an instance at `host`.
    pub(crate) fn server_name(&self, host: &str) -> Result<ServerName<'static>, String> {
        if let Some(domain) = &self.domain {
            return Ok(domain.clone());
        }
        let host = host.trim_start_matches('[').trim_end_matches(']');
        ServerName::try_from(host.to_owned()).map_err(|e| format!("server name {host:?}: {e}"))
    }
}
