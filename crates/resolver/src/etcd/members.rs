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
/// say what was being done.
pub(crate) async fn bounded<T>(
    limit: Duration,
    what: impl Display,
    fut: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, Error> {
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Error::new(Kind::Unavailable, format!("{what} failed")).with_source(e)),
        Err(_) => Err(Error::new(
            Kind::Timeout,
            format!("{what} timed out after {limit:?}"),
        )),
    }
}
