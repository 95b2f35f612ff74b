//! [`Registrar`]: how a server keeps its registration in etcd alive, and removes it.
//!
//! The registration is a key under the service prefix, attached to a lease:
//!
//! - **Granting**: a lease of `ttl` (10 s by default) is granted and the key put with it.
//! - **Registered**: a keepalive is sent every `ttl / 3` on the registrar's own timer (etcd
//!   leaves the timing to the client). An answer with TTL 0 means the lease is gone (revoked,
//!   or expired while etcd was unreachable): a new one is granted and the key put again. A
//!   keepalive that is not answered in time, a broken stream or a failed request moves to the
//!   next etcd member and resumes with the same lease, which is still alive if less than a TTL
//!   has passed. A DELETE of the key by someone else is answered by putting it back.
//! - **Deregistering** ([`Registration::deregister`]): the lease is revoked (so the key goes at
//!   once), or, if that fails, the key is deleted. Servers do this *before* they stop accepting
//!   connections, so that clients move away while the server can still answer.
//!
//! None of this ever gives up: errors are retried with a capped backoff and reported through
//! [`RegistrarStatus`].
//!
//! Metrics (through the `metrics` facade, labels `prefix` and `addr`):
//! `switchboard_registrar_registered` (gauge, 1 while registered),
//! `switchboard_registrar_registrations_total` and `switchboard_registrar_interruptions_total`
//! (counters).

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use etcd_client::{Client, PutOptions, WatchOptions};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{Instrument, debug, info, info_span, warn};

use super::EtcdConfig;
use super::members::Members;
use crate::addr::validate;
use crate::backoff::Backoff;
use crate::codec::Format;
use crate::error::{Error, Kind};

/// The smallest lease TTL etcd grants.
const MIN_TTL: Duration = Duration::from_secs(2);

/// Registers one server instance under a service prefix and keeps it registered.
///
/// # Examples
///
/// ```no_run
/// use switchboard_resolver::{EtcdConfig, Format, Registrar};
///
/// # async fn run() -> Result<(), switchboard_resolver::Error> {
/// let config = EtcdConfig::from_hosts("127.0.0.1:2379")?;
/// let registration = Registrar::new(config, "user.rpc", "10.0.0.7:8080")?
///     .format(Format::EtcdNaming)
///     .register()
///     .await?;
/// println!("registered as {:?}", registration.status().key);
/// // … serve …
/// registration.deregister().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Registrar {
    config: EtcdConfig,
    prefix: String,
    addr: String,
    ttl: Duration,
    format: Format,
    id: Option<String>,
    metadata: BTreeMap<String, String>,
    register_timeout: Duration,
}

/// Where a registration stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RegistrarState {
    /// Not registered yet.
    #[default]
    Registering,
    /// The key is in etcd and its lease is kept alive.
    Registered,
    /// Something failed; the registration is being restored.
    Recovering,
    /// The registration was removed on purpose.
    Deregistered,
}

/// What a [`Registration`] reports about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistrarStatus {
    /// Where the registration stands.
    pub state: RegistrarState,
    /// The key currently registered (it changes with the lease for go-zero's default keys).
    pub key: Option<String>,
    /// The current lease.
    pub lease: Option<i64>,
    /// The etcd member in use.
    pub endpoint: Option<String>,
    /// The last error, kept after recovery.
    pub last_error: Option<String>,
    /// When `last_error` happened.
    pub last_error_at: Option<SystemTime>,
    /// How many times the key was put (the first registration included).
    pub puts: u64,
    /// How many leases were granted (the first one included).
    pub grants: u64,
}

impl Registrar {
    /// A registrar for the instance at `addr` (`host:port`, as clients should dial it) under
    /// the service `key` (`user.rpc` registers `user.rpc/<id>`).
    pub fn new(config: EtcdConfig, key: &str, addr: &str) -> Result<Self, Error> {
        let addr = validate(addr).map_err(|why| Error::config(format!("address: {why}")))?;
        if key.trim().trim_matches('/').is_empty() {
            return Err(Error::config("the service key is empty"));
        }
        Ok(Self {
            config,
            prefix: super::normalize_prefix(key),
            addr,
            ttl: Duration::from_secs(10),
            format: Format::Plain,
            id: None,
            metadata: BTreeMap::new(),
            register_timeout: Duration::from_secs(10),
        })
    }

    /// The lease TTL, rounded up to whole seconds. Defaults to 10 s; etcd's minimum is 2 s.
    pub fn ttl(mut self, ttl: Duration) -> Result<Self, Error> {
        if ttl < MIN_TTL {
            return Err(Error::config(format!(
                "lease TTL {ttl:?} is below etcd's minimum of {MIN_TTL:?}"
            )));
        }
        self.ttl = ttl;
        Ok(self)
    }

    /// The format written, so that clients of that kind discover this instance. Defaults to
    /// [`Format::Plain`] (go-zero); [`Format::EtcdNaming`] serves grpc-go's etcd resolvers.
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// The last segment of the key. Defaults to the lease ID in decimal (what go-zero writes)
    /// for the plain format and to the address for etcd naming (what grpc-go writes).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Adds a metadata entry (`weight`, `version`, `zone`, …) to formats that carry metadata:
    /// kratos and go-micro. Plain has no room for it, and etcd naming writes `Metadata: null`,
    /// as etcd's own `endpoints.Manager` does: grpc-go clients of that kind panic on an object
    /// there (see [`Format::encode`]).
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// How long [`Registrar::register`] waits for the first registration. Defaults to 10 s.
    pub fn register_timeout(mut self, timeout: Duration) -> Self {
        self.register_timeout = timeout;
        self
    }

    /// Registers and returns once the key is in etcd, or fails after the register timeout
    /// with the last error. Must be called within a tokio runtime.
    pub async fn register(self) -> Result<Registration, Error> {
        let limit = self.register_timeout;
        let registration = self.register_lazy();
        let mut status = registration.status_watch();
        let registered = tokio::time::timeout(
            limit,
            status.wait_for(|s| s.state == RegistrarState::Registered),
        )
        .await;
        match registered {
            Ok(Ok(_)) => Ok(registration),
            _ => {
                let why = registration
                    .status()
                    .last_error
                    .unwrap_or_else(|| "no answer from etcd".into());
                Err(Error::new(
                    Kind::Timeout,
                    format!("could not register within {limit:?}: {why}"),
                ))
            }
        }
    }

    /// Starts registering in the background and returns at once; the registration appears
    /// as soon as etcd can be reached. Must be called within a tokio runtime.
    pub fn register_lazy(self) -> Registration {
        let (status_tx, status_rx) = watch::channel(RegistrarStatus::default());
        let (stop_tx, stop_rx) = oneshot::channel();
        let span = info_span!("registrar", prefix = %self.prefix, addr = %self.addr);
        let keeper = Keeper {
            members: Members::new(self.config.clone()),
            backoff: Backoff::from_entropy(self.config.backoff),
            status: status_tx,
            lease: None,
            key: None,
            registrar: self,
        };
        let task = tokio::spawn(keeper.run(stop_rx).instrument(span));
        Registration {
            status: status_rx,
            stop: Some(stop_tx),
            task,
        }
    }
}

type StopReply = oneshot::Sender<Result<(), Error>>;

/// A live registration. Dropping it stops the keepalive (the key then expires with its lease);
/// [`Registration::deregister`] removes the key at once.
#[derive(Debug)]
pub struct Registration {
    status: watch::Receiver<RegistrarStatus>,
    stop: Option<oneshot::Sender<StopReply>>,
    task: JoinHandle<()>,
}

impl Registration {
    /// The registration's current status.
    pub fn status(&self) -> RegistrarStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn status_watch(&self) -> watch::Receiver<RegistrarStatus> {
        self.status.clone()
    }

    /// Removes the registration: revokes the lease (the key goes with it) or, if that fails,
    /// deletes the key, trying each etcd member once. Bounded by the request timeout per
    /// member.
    pub async fn deregister(mut self) -> Result<(), Error> {
        let (reply_tx, reply_rx) = oneshot::channel();
        let stop = self
            .stop
            .take()
            .ok_or_else(|| Error::new(Kind::Closed, "already stopped"))?;
        stop.send(reply_tx)
            .map_err(|_| Error::new(Kind::Closed, "the registrar task has stopped"))?;
        reply_rx
            .await
            .map_err(|_| Error::new(Kind::Closed, "the registrar task has stopped"))?
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.task.abort();
        }
    }
}

/// Why a registered cycle ended.
enum Lost {
    /// The lease is gone: grant a new one, on the same member.
    Lease(String),
    /// The member failed or hung: move to the next one and resume with the same lease.
    Member(Error),
}

impl From<Error> for Lost {
    fn from(e: Error) -> Self {
        Self::Member(e)
    }
}

struct Keeper {
    registrar: Registrar,
    members: Members,
    backoff: Backoff,
    status: watch::Sender<RegistrarStatus>,
    lease: Option<i64>,
    key: Option<String>,
}

impl Keeper {
    async fn run(mut self, stop: oneshot::Receiver<StopReply>) {
        let reply = tokio::select! {
            reply = stop => reply.ok(),
            never = self.keep_registered() => match never {},
        };
        let result = self.deregister().await;
        self.metric_registered(false);
        self.status.send_modify(|s| {
            s.state = RegistrarState::Deregistered;
            s.key = None;
            s.lease = None;
        });
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    }

    async fn keep_registered(&mut self) -> std::convert::Infallible {
        loop {
            let lost = match self.cycle().await {
                Ok(never) => match never {},
                Err(lost) => lost,
            };
            let why = match lost {
                Lost::Lease(why) => {
                    self.lease = None;
                    why
                }
                Lost::Member(e) => {
                    self.members.fail_over();
                    e.to_string()
                }
            };
            warn!(error = %why, "registration interrupted; restoring it");
            self.metric_registered(false);
            metrics::counter!(
                "switchboard_registrar_interruptions_total",
                "prefix" => self.registrar.prefix.clone(),
                "addr" => self.registrar.addr.clone(),
            )
            .increment(1);
            self.status.send_modify(|s| {
                s.state = RegistrarState::Recovering;
                s.last_error = Some(why);
                s.last_error_at = Some(SystemTime::now());
            });
            tokio::time::sleep(self.backoff.next_delay()).await;
        }
    }

    /// `switchboard_registrar_registered`: 1 while the registration is in etcd.
    fn metric_registered(&self, registered: bool) {
        metrics::gauge!(
            "switchboard_registrar_registered",
            "prefix" => self.registrar.prefix.clone(),
            "addr" => self.registrar.addr.clone(),
        )
        .set(if registered { 1.0 } else { 0.0 });
    }

    fn key_for(&self, lease: i64) -> String {
        let id = match (&self.registrar.id, self.registrar.format) {
            (Some(id), _) => id.clone(),
            (None, Format::EtcdNaming) => self.registrar.addr.clone(),
            (None, _) => lease.to_string(),
        };
        format!("{}{id}", self.registrar.prefix)
    }

    fn value(&self, key: &str) -> String {
        let r = &self.registrar;
        let name = r
            .prefix
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default();
        let id = key.rsplit('/').next().unwrap_or_default();
        r.format.encode(name, id, &r.addr, &r.metadata)
    }

    /// Establishes the registration and keeps it; returns only when something is lost.
    async fn cycle(&mut self) -> Result<std::convert::Infallible, Lost> {
        let client = self.members.client().await?;
        let endpoint = self.members.endpoint().to_string();
        let ttl_secs = self.registrar.ttl.as_secs_f64().ceil() as i64;
        let mut leases = client.lease_client();
        let lease = match self.lease {
            Some(lease) => lease,
            None => {
                let granted = self
                    .members
                    .request("granting a lease", leases.grant(ttl_secs, None))
                    .await?;
                let lease = granted.id();
                info!(lease, ttl = ttl_secs, %endpoint, "lease granted");
                self.lease = Some(lease);
                self.status.send_modify(|s| s.grants += 1);
                lease
            }
        };
        let (mut keeper, mut acks) = self
            .members
            .request("opening the lease keepalive", leases.keep_alive(lease))
            .await?;
        // One keepalive first: a resumed lease may have expired while etcd was away.
        self.members
            .request("sending a lease keepalive", keeper.keep_alive())
            .await?;
        let ack = self
            .members
            .request("keeping the lease alive", acks.message())
            .await?;
        match ack {
            Some(a) if a.ttl() > 0 => {}
            Some(_) => {
                return Err(Lost::Lease(format!(
                    "lease {lease:x} expired or was revoked"
                )));
            }
            None => {
                return Err(Error::new(Kind::Unavailable, "lease keepalive stream ended").into());
            }
        }

        let key = self.key_for(lease);
        let value = self.value(&key);
        let mut kv = client.kv_client();
        let current = self
            .members
            .request(format!("reading {key}"), kv.get(key.as_str(), None))
            .await?;
        let ours = current
            .kvs()
            .first()
            .is_some_and(|kv| kv.value() == value.as_bytes() && kv.lease() == lease);
        let mut revision = current.header().map_or(0, |h| h.revision());
        if !ours {
            revision = self.put(&mut kv, &key, &value, lease).await?;
        }
        self.key = Some(key.clone());
        self.backoff.reset();
        info!(%key, lease, %endpoint, "registered");
        self.metric_registered(true);
        metrics::counter!(
            "switchboard_registrar_registrations_total",
            "prefix" => self.registrar.prefix.clone(),
            "addr" => self.registrar.addr.clone(),
        )
        .increment(1);
        self.status.send_modify(|s| {
            s.state = RegistrarState::Registered;
            s.key = Some(key.clone());
            s.lease = Some(lease);
            s.endpoint = Some(endpoint.clone());
        });

        let mut watch_client = client.watch_client();
        let watch = self
            .members
            .request(
                format!("watching {key}"),
                watch_client.watch(
                    key.as_str(),
                    Some(WatchOptions::new().with_start_revision(revision + 1)),
                ),
            )
            .await?;
        let (_watch_requests, mut events) = watch.split();
        let period = self.registrar.ttl / 3;
        let ack_limit = period.min(self.members.config().request_timeout);
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut awaiting: Option<Instant> = None;
        loop {
            tokio::select! {
                _ = ticker.tick() => {
                    if let Some(since) = awaiting.filter(|t| t.elapsed() >= ack_limit) {
                        return Err(Error::new(Kind::Timeout, format!(
                            "etcd member {endpoint} did not answer a lease keepalive for {:?}", since.elapsed()
                        )).into());
                    }
                    self.members
                        .request("sending a lease keepalive", keeper.keep_alive())
                        .await?;
                    awaiting.get_or_insert_with(Instant::now);
                }
                ack = acks.message() => match ack {
                    Ok(Some(a)) if a.ttl() > 0 => {
                        debug!(lease, ttl = a.ttl(), "lease kept alive");
                        awaiting = None;
                    }
                    Ok(Some(_)) => return Err(Lost::Lease(format!("lease {lease:x} expired or was revoked"))),
                    Ok(None) => return Err(Error::new(Kind::Unavailable, "lease keepalive stream ended").into()),
                    Err(e) => return Err(Error::new(Kind::Unavailable, "lease keepalive stream broke").with_source(e).into()),
                },
                event = events.message() => match event {
                    Ok(Some(resp)) => {
                        if resp.canceled() {
                            return Err(Error::new(Kind::Unavailable, format!(
                                "etcd canceled the watch on {key}: {}", resp.cancel_reason()
                            )).into());
                        }
                        // Only a DELETE (type 1) takes the registration away.
                        if resp.events().iter().any(|e| e.0.r#type == 1) {
                            warn!(%key, "registration deleted by someone else; putting it back");
                            self.put(&mut kv, &key, &value, lease).await?;
                        }
                    }
                    Ok(None) => return Err(Error::new(Kind::Unavailable, format!("etcd ended the watch on {key}")).into()),
                    Err(e) => return Err(Error::new(Kind::Unavailable, format!("watch on {key} broke")).with_source(e).into()),
                },
            }
        }
    }

    async fn put(
        &mut self,
        kv: &mut etcd_client::KvClient,
        key: &str,
        value: &str,
        lease: i64,
    ) -> Result<i64, Lost> {
        let put = self
            .members
            .request(
                format!("putting {key}"),
                kv.put(key, value, Some(PutOptions::new().with_lease(lease))),
            )
            .await;
        match put {
            Ok(r) => {
                self.status.send_modify(|s| s.puts += 1);
                Ok(r.header().map_or(0, |h| h.revision()))
            }
            Err(e) if format!("{e:?}").contains("lease not found") => Err(Lost::Lease(format!(
                "lease {lease:x} not found when putting {key}"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    async fn deregister(&mut self) -> Result<(), Error> {
        let Some(lease) = self.lease else {
            return Ok(());
        };
        let key = self.key.clone();
        let mut last = None;
        for _ in 0..self.members.config().endpoints().len() {
            match self.remove(lease, key.as_deref()).await {
                Ok(()) => {
                    info!(?key, lease, "deregistered");
                    return Ok(());
                }
                Err(e) => {
                    warn!(error = %e, "deregistration failed on this etcd member");
                    last = Some(e);
                    self.members.fail_over();
                }
            }
        }
        Err(last
            .unwrap_or_else(|| Error::new(Kind::Unavailable, "no etcd member to deregister on")))
    }

    async fn remove(&mut self, lease: i64, key: Option<&str>) -> Result<(), Error> {
        let client: Client = self.members.client().await?;
        let revoked = self
            .members
            .request("revoking the lease", client.lease_client().revoke(lease))
            .await;
        match (revoked, key) {
            (Ok(_), _) => Ok(()),
            (Err(e), _) if format!("{e:?}").contains("lease not found") => match key {
                Some(key) => self.delete(&client, key).await,
                None => Ok(()),
            },
            (Err(e), Some(key)) => {
                warn!(error = %e, "revoking the lease failed; deleting the key instead");
                self.delete(&client, key).await
            }
            (Err(e), None) => Err(e),
        }
    }

    async fn delete(&self, client: &Client, key: &str) -> Result<(), Error> {
        self.members
            .request(
                format!("deleting {key}"),
                client.kv_client().delete(key, None),
            )
            .await
            .map(drop)
    }
}
