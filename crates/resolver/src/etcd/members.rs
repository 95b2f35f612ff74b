//! One connection to one etcd member at a time, moving to the next member on failure.
//!
//! etcd-client balances requests over every endpoint it is given and fails those that land on a
//! dead member instead of moving on (etcd-client issue 39), and it neither re-creates watches
//! nor lease keepalives. So each client here is connected to a single member; when a request to
//! it fails or hangs past its bound, the caller calls [`Members::fail_over`] and the next call
//! connects to the member that failed longest ago (one that never failed first, in list order
//! after the current one), so a frozen member is not retried before the others. With
//! `require_leader`, a member cut off from its leader fails requests too, and is left the same
//! way.

use std::fmt::Display;
use std::future::Future;
use std::time::{Duration, Instant};

use etcd_client::Client;
use rand::Rng;
use tracing::{debug, info};

use super::config::EtcdConfig;
use crate::error::{Error, Kind};

pub(crate) struct Members {
    config: EtcdConfig,
    index: usize,
    client: Option<Client>,
    /// When each member last failed.
    failed_at: Vec<Option<Instant>>,
}

impl Members {
    /// Starts at a random member, so that many clients spread over the cluster.
    pub(crate) fn new(config: EtcdConfig) -> Self {
        let index = rand::rng().random_range(0..config.endpoints().len());
        let failed_at = vec![None; config.endpoints().len()];
        Self {
            config,
            index,
            client: None,
            failed_at,
        }
    }

    pub(crate) fn config(&self) -> &EtcdConfig {
        &self.config
    }

    /// The member in use (or about to be).
    pub(crate) fn endpoint(&self) -> &str {
        &self.config.endpoints()[self.index]
    }

    /// A client connected to the current member, connecting if needed.
    pub(crate) async fn client(&mut self) -> Result<Client, Error> {
        if let Some(client) = &self.client {
            return Ok(client.clone());
        }
        let endpoint = self.endpoint().to_string();
        // Authentication, when configured, is a request made while connecting.
        let limit = self.config.connect_timeout + self.config.request_timeout;
        let client = bounded(
            limit,
            format!("connecting to etcd member {endpoint}"),
            Client::connect([endpoint.as_str()], Some(self.config.connect_options())),
        )
        .await?;
        debug!(%endpoint, "connected to etcd member");
        self.client = Some(client.clone());
        Ok(client)
    }

    /// Drops the current connection and moves to the next member.
    pub(crate) fn fail_over(&mut self) {
        let from = self.endpoint().to_string();
        self.client = None;
        let n = self.failed_at.len();
        self.failed_at[self.index] = Some(Instant::now());
        // The next member in list order that failed longest ago (`None` sorts first).
        self.index = (1..=n)
            .map(|step| (self.index + step) % n)
            .min_by_key(|i| self.failed_at[*i])
            .unwrap_or(self.index);
        if self.config.endpoints().len() > 1 {
            info!(%from, to = %self.endpoint(), "moving to another etcd member");
        }
    }

    /// Runs one request against etcd within the request timeout.
    pub(crate) async fn request<T>(
        &self,
        what: impl Display,
        fut: impl Future<Output = Result<T, etcd_client::Error>>,
    ) -> Result<T, Error> {
        bounded(
            self.config.request_timeout,
            format!("{what} on etcd member {}", self.endpoint()),
            fut,
        )
        .await
    }
}

/// Awaits `fut` for at most `limit`, turning etcd errors and the timeout into [`Error`]s that
/// say what was being done and what went wrong.
pub(crate) async fn bounded<T>(
    limit: Duration,
    what: impl Display,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            let (kind, why) = classify(&e);
            Err(Error::new(kind, format!("{what} failed: {why}")).with_described_source(e))
        }
        Err(_) => Err(Error::new(
            Kind::Timeout,
            format!("{what} timed out after {limit:?}"),
        )),
    }
}

/// What an etcd client error means, in a few words: what happened on the way (a refused or
/// reset connection, no answer in time, a name that does not resolve, a TLS failure, a message
/// over a size limit), or what etcd itself answered.
///
/// etcd-client reports failures of its own transport as gRPC statuses too (tonic turns a failed
/// connect into `Unavailable` "tcp connect error" and a timeout into `Cancelled` "Timeout
/// expired", with the cause as the status's source); only a status without a source is an
/// answer from etcd.
pub(crate) fn classify(e: &etcd_client::Error) -> (Kind, String) {
    use etcd_client::Error as E;
    use std::error::Error as _;
    use tonic::Code;
    let chain = chain(e);
    let lower = chain.to_lowercase();
    let has = |needles: &[&str]| needles.iter().any(|n| lower.contains(n));
    if has(&["connection refused"]) {
        return (Kind::Unavailable, "connection refused".into());
    }
    if has(&["connection reset", "connectionreset"]) {
        return (Kind::Unavailable, "the connection was reset".into());
    }
    if has(&["broken pipe", "brokenpipe"]) {
        return (
            Kind::Unavailable,
            "the connection was closed (broken pipe)".into(),
        );
    }
    if has(&["decoded message length too large"]) {
        return (
            Kind::Unavailable,
            format!("etcd's response is over the gRPC message size limit ({chain})"),
        );
    }
    if has(&["encoded message length too large", "larger than max"]) {
        return (
            Kind::Unavailable,
            format!("the request is over a gRPC message size limit ({chain})"),
        );
    }
    let from_etcd = match e {
        E::GRpcStatus(status) => status.source().is_none(),
        _ => false,
    };
    if !from_etcd {
        if has(&[
            "timeout expired",
            "timed out",
            "timedout",
            "deadline has elapsed",
            "elapsed",
        ]) {
            return (Kind::Timeout, format!("no answer in time ({chain})"));
        }
        if has(&["dns error", "failed to lookup", "name or service not known"]) {
            return (
                Kind::Unavailable,
                format!("the host name does not resolve ({chain})"),
            );
        }
        if has(&["certificate", "tls", "handshake"]) {
            return (Kind::Unavailable, format!("TLS failed ({chain})"));
        }
    }
    match e {
        E::GRpcStatus(status) if from_etcd => {
            let message = status.message();
            match status.code() {
                Code::DeadlineExceeded => (Kind::Timeout, format!("etcd timed out: {message}")),
                Code::Unauthenticated => (
                    Kind::Unavailable,
                    format!("etcd refused the credentials: {message}"),
                ),
                Code::PermissionDenied => {
                    (Kind::Unavailable, format!("etcd denied access: {message}"))
                }
                Code::ResourceExhausted => (
                    Kind::Unavailable,
                    format!("etcd ran out of a resource: {message}"),
                ),
                Code::Unavailable if message.contains("no leader") => (
                    Kind::Unavailable,
                    "the etcd member has no leader".to_string(),
                ),
                code => (
                    Kind::Unavailable,
                    format!("etcd answered {code:?}: {message}"),
                ),
            }
        }
        E::InvalidArgs(_) | E::InvalidUri(_) | E::InvalidMetadataValue(_) => (Kind::Config, chain),
        _ => (Kind::Unavailable, format!("transport error: {chain}")),
    }
}

/// An error and its sources, joined with `: `.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::{Code, Status};

    fn status(code: Code, message: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(Status::new(code, message))
    }

    /// A status tonic made from a transport failure: the cause is its source.
    fn transport(code: Code, message: &str, cause: std::io::Error) -> etcd_client::Error {
        let mut status = Status::new(code, message);
        status.set_source(std::sync::Arc::new(cause));
        etcd_client::Error::GRpcStatus(status)
    }

    #[test]
    fn errors_say_what_went_wrong() {
        let refused = etcd_client::Error::IoError(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        ));
        assert_eq!(
            classify(&refused),
            (Kind::Unavailable, "connection refused".into())
        );
        let (kind, why) = classify(&status(
            Code::OutOfRange,
            "Error, decoded message length too large: found 6291456 bytes, the limit is: 4194304 bytes",
        ));
        assert_eq!(kind, Kind::Unavailable);
        assert!(
            why.starts_with("etcd's response is over the gRPC message size limit"),
            "{why}"
        );
        // tonic's own failures come as statuses with a source: not answers from etcd.
        let (kind, why) = classify(&transport(
            Code::Cancelled,
            "Timeout expired",
            std::io::Error::new(std::io::ErrorKind::TimedOut, "Timeout expired"),
        ));
        assert_eq!(kind, Kind::Timeout, "{why}");
        assert!(why.starts_with("no answer in time"), "{why}");
        let (kind, why) = classify(&transport(
            Code::Unavailable,
            "tcp connect error",
            std::io::Error::other("dns error: failed to lookup address information"),
        ));
        assert_eq!(kind, Kind::Unavailable);
        assert!(why.starts_with("the host name does not resolve"), "{why}");
        assert_eq!(
            classify(&status(Code::DeadlineExceeded, "context deadline exceeded")).0,
            Kind::Timeout
        );
        let (_, why) = classify(&status(
            Code::Unauthenticated,
            "etcdserver: invalid auth token",
        ));
        assert_eq!(
            why,
            "etcd refused the credentials: etcdserver: invalid auth token"
        );
        let (_, why) = classify(&status(Code::Unavailable, "etcdserver: no leader"));
        assert_eq!(why, "the etcd member has no leader");
        let (_, why) = classify(&status(
            Code::NotFound,
            "etcdserver: requested lease not found",
        ));
        assert_eq!(
            why,
            "etcd answered NotFound: etcdserver: requested lease not found"
        );
    }
}
