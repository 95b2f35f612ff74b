//! [`EtcdResolver`]: list, then watch, an etcd prefix, and never miss an event.
//!
//! The algorithm is etcd's own recipe for a consistent cache:
//!
//! 1. `get(prefix)` returns the instances at revision R: emitted as an [`Update::Reset`].
//! 2. `watch(prefix, start_revision = R + 1)` streams every change after it; after each event
//!    the resume revision is its `mod_revision + 1`.
//! 3. A watch that breaks (an error, the end of the stream, a cancellation, a member that stops
//!    answering progress requests) is re-created from the resume revision, on the next member,
//!    after a jittered backoff. Nothing between the old and the new watch is lost.
//! 4. When the resume revision has been compacted away (`canceled` with `compact_revision`),
//!    the resolver lists again and emits a new `Reset`, which consumers diff: instances present
//!    before and after are untouched.
//!
//! Errors never empty the instance set: while etcd is unreachable the consumer keeps what it
//! has, and [`ResolverStatus`](crate::ResolverStatus) says what is wrong.

use std::collections::HashMap;
use std::time::{Instant, SystemTime};

use etcd_client::{GetOptions, KeyValue, WatchOptions};
use tracing::{Instrument, debug, info, info_span, warn};

use super::EtcdConfig;
use super::members::{Members, classify};
use crate::addr::clip;
use crate::backoff::Backoff;
use crate::codec::Format;
use crate::error::{Error, Kind};
use crate::instance::{Instance, Update};
use crate::resolution::{Publisher, Resolution, Resolve};

/// A resolver that follows the instances registered under an etcd prefix.
///
/// # Examples
///
/// ```no_run
/// use switchboard_resolver::{EtcdConfig, EtcdResolver, Resolve, Update};
///
/// # async fn run() -> Result<(), switchboard_resolver::Error> {
/// let config = EtcdConfig::from_hosts("127.0.0.1:2379,127.0.0.1:22379")?;
/// let mut resolution = EtcdResolver::new(config, "user.rpc").resolve();
/// while let Some(update) = resolution.next_update().await {
///     match update {
///         Update::Reset(all) => println!("{} instances", all.len()),
///         Update::Add(i) => println!("+ {} {}", i.key, i.addr),
///         Update::Remove(key) => println!("- {key}"),
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct EtcdResolver {
    config: EtcdConfig,
    prefix: String,
    format: Format,
}

impl EtcdResolver {
    /// A resolver for the service registered under `key`: it watches `key/` (a trailing `/`
    /// is added when missing, so `user.rpc` does not match `user.rpc2/…`).
    pub fn new(config: EtcdConfig, key: &str) -> Self {
        Self {
            config,
            prefix: super::normalize_prefix(key),
            format: Format::Auto,
        }
    }

    /// How registration values are decoded. Defaults to [`Format::Auto`].
    pub fn format(mut self, format: Format) -> Self {
        self.format = format;
        self
    }

    /// The watched prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

impl Resolve for EtcdResolver {
    fn resolve(&self) -> Resolution {
        let (publisher, resolution) = Resolution::channel();
        let span = info_span!("etcd_resolver", prefix = %self.prefix);
        let watcher = Watcher {
            prefix: self.prefix.clone(),
            format: self.format,
            backoff: Backoff::from_entropy(self.config.backoff),
            members: Members::new(self.config.clone()),
            publisher,
            held: HashMap::new(),
            count: 0,
            resume: None,
            failures: 0,
        };
        resolution.with_task(tokio::spawn(watcher.run().instrument(span)))
    }
}

/// Why a watch session ended.
enum Interrupt {
    /// The consumer dropped the resolution.
    Stopped,
    /// The resume revision was compacted: list again, at once, on the same member.
    Compacted(i64),
    /// Anything else: back off, move to another member, resume.
    Failed(Error),
}

impl From<Error> for Interrupt {
    fn from(e: Error) -> Self {
        // etcd answers a read or watch below its compacted revision with OutOfRange,
        // "mvcc: required revision has been compacted": that calls for a listing, not a retry.
        if e.to_string()
            .contains("required revision has been compacted")
        {
            Self::Compacted(0)
        } else {
            Self::Failed(e)
        }
    }
}

struct Watcher {
    prefix: String,
    format: Format,
    backoff: Backoff,
    members: Members,
    publisher: Publisher,
    /// What each etcd key currently decodes to.
    held: HashMap<String, Vec<Instance>>,
    /// Number of instances in `held`.
    count: usize,
    /// Where the next watch starts; `None` means list first.
    resume: Option<i64>,
    /// Failed sessions since the last established watch.
    failures: u32,
}

impl Watcher {
    async fn run(mut self) {
        loop {
            match self.session().await {
                Interrupt::Stopped => return,
                Interrupt::Compacted(compact) => {
                    info!(compact, resume = ?self.resume, "watch revision compacted; listing again");
                    self.resume = None;
                }
                Interrupt::Failed(error) => {
                    let endpoint = self.members.endpoint().to_string();
                    // The first failure of a streak is a warning; repeats are reminders.
                    if self.failures % 20 == 0 {
                        warn!(%endpoint, %error, failures = self.failures + 1, "etcd watch interrupted; keeping the last instance set");
                    } else {
                        debug!(%endpoint, %error, failures = self.failures + 1, "etcd watch still interrupted");
                    }
                    self.failures += 1;
                    self.publisher.update_status(|s| {
                        s.connected = false;
                        s.last_error = Some(error.to_string());
                        s.last_error_at = Some(SystemTime::now());
                    });
                    self.members.fail_over();
                    let delay = self.backoff.next_delay();
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.publisher.closed() => return,
                    }
                }
            }
        }
    }

    async fn session(&mut self) -> Interrupt {
        let closed = self.publisher.closed_owned();
        tokio::select! {
            biased;
            _ = closed => Interrupt::Stopped,
            interrupt = self.watch() => interrupt,
        }
    }

    async fn watch(&mut self) -> Interrupt {
        let client = match self.members.client().await {
            Ok(c) => c,
            Err(e) => return e.into(),
        };
        let endpoint = self.members.endpoint().to_string();
        let resume = match self.resume {
            Some(r) => r,
            None => match self.list(&client, &endpoint).await {
                Ok(r) => r,
                Err(i) => return i,
            },
        };
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(resume);
        let mut watch_client = client
            .watch_client()
            .max_decoding_message_size(super::MAX_RESPONSE_BYTES);
        let stream = self
            .members
            .request(
                format!("watching {}", self.prefix),
                watch_client.watch(self.prefix.as_str(), Some(options)),
            )
            .await;
        let (mut requests, mut responses) = match stream {
            Ok(s) => s.split(),
            Err(e) => return e.into(),
        };
        // A watch that hears nothing for `check` is asked for a progress notification; one that
        // still hears nothing `check` later is dead (its member stopped, or the network between
        // them went silent), and the session ends so that a new connection takes over.
        let check = self.members.config().watch_check;
        let mut heard = tokio::time::Instant::now();
        let mut asked = false;
        loop {
            let quiet_until = heard + if asked { check * 2 } else { check };
            let message = tokio::select! {
                m = responses.message() => m,
                _ = tokio::time::sleep_until(quiet_until) => {
                    if asked {
                        return Error::new(Kind::Timeout, format!(
                            "watch on etcd member {endpoint} silent for {:?}, a progress request unanswered",
                            heard.elapsed()
                        )).into();
                    }
                    let progress = self.members.request("requesting watch progress", requests.request_progress());
                    if let Err(e) = progress.await {
                        return e.into();
                    }
                    asked = true;
                    continue;
                }
            };
            let response = match message {
                Ok(Some(r)) => r,
                Ok(None) => {
                    return Error::new(
                        Kind::Unavailable,
                        format!("etcd member {endpoint} ended the watch"),
                    )
                    .into();
                }
                Err(e) => {
                    let (kind, why) = classify(&e);
                    return Error::new(
                        kind,
                        format!("watch on etcd member {endpoint} broke: {why}"),
                    )
                    .with_described_source(e)
                    .into();
                }
            };
            heard = tokio::time::Instant::now();
            asked = false;
            if response.canceled() {
                if response.compact_revision() > 0 {
                    return Interrupt::Compacted(response.compact_revision());
                }
                return Error::new(
                    Kind::Unavailable,
                    format!(
                        "etcd member {endpoint} canceled the watch: {}",
                        response.cancel_reason()
                    ),
                )
                .into();
            }
            if response.created() {
                info!(%endpoint, revision = resume, after_failures = self.failures, "watching");
                self.failures = 0;
                self.backoff.reset();
                self.publisher.update_status(|s| {
                    s.connected = true;
                    s.endpoint = Some(endpoint.clone());
                });
            }
            if !response.events().is_empty() {
                if let Err(i) = self.apply(response.events()).await {
                    return i;
                }
            }
        }
    }

    /// Lists the prefix, emits the `Reset`, and returns the revision to watch from.
    ///
    /// The listing is paged: [`LIST_PAGE`](super::LIST_PAGE) keys per range request, every page
    /// after the first read at the first one's revision, so that the pages together are one
    /// consistent snapshot however large the fleet is. A page whose revision has been compacted
    /// meanwhile ends the session with `Compacted`, and the listing starts over.
    async fn list(
        &mut self,
        client: &etcd_client::Client,
        endpoint: &str,
    ) -> Result<i64, Interrupt> {
        let mut kv = client
            .kv_client()
            .max_decoding_message_size(super::MAX_RESPONSE_BYTES);
        let started = Instant::now();
        let end = super::prefix_range_end(self.prefix.as_bytes());
        let mut from = self.prefix.as_bytes().to_vec();
        let mut revision = 0;
        let mut held = HashMap::new();
        let mut count = 0;
        let mut skipped = 0;
        let mut pages = 0u32;
        loop {
            let mut options = GetOptions::new()
                .with_range(end.clone())
                .with_limit(super::LIST_PAGE);
            if revision > 0 {
                options = options.with_revision(revision);
            }
            let response = self
                .members
                .request(
                    format!("listing {} (page {})", self.prefix, pages + 1),
                    kv.get(from.clone(), Some(options)),
                )
                .await?;
            pages += 1;
            if revision == 0 {
                revision = response.header().map_or(0, |h| h.revision());
            }
            for kv in response.kvs() {
                if let Some(instances) = self.decode(kv) {
                    count += instances.len();
                    held.insert(kv.key_str().unwrap_or_default().to_string(), instances);
                } else {
                    skipped += 1;
                }
            }
            match response.kvs().last() {
                Some(last) if response.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => break,
            }
        }
        self.held = held;
        self.count = count;
        let mut all: Vec<Instance> = self.held.values().flatten().cloned().collect();
        all.sort_unstable_by(|a, b| a.key.cmp(&b.key));
        info!(%endpoint, revision, instances = all.len(), skipped, pages, elapsed = ?started.elapsed(), "listed");
        self.publisher.update_status(|s| {
            s.endpoint = Some(endpoint.to_string());
            s.revision = revision;
            s.instances = count;
            s.listings += 1;
            s.skipped += skipped;
            s.listing_pages = u64::from(pages);
        });
        self.publisher
            .send(Update::Reset(all))
            .await
            .map_err(|_| Interrupt::Stopped)?;
        self.resume = Some(revision + 1);
        Ok(revision + 1)
    }

    /// Decodes one registration; logs and returns `None` when it does not decode.
    fn decode(&self, kv: &KeyValue) -> Option<Vec<Instance>> {
        let Ok(key) = kv.key_str() else {
            warn!(key = %clip(&String::from_utf8_lossy(kv.key())), "skipping registration: key is not UTF-8");
            return None;
        };
        match self.format.decode(key, kv.value()) {
            Ok(instances) => Some(instances),
            Err(e) => {
                warn!(key = %clip(key), reason = %e, "skipping registration that does not decode");
                None
            }
        }
    }

    async fn apply(&mut self, events: &[etcd_client::Event]) -> Result<(), Interrupt> {
        let mut skipped = 0;
        let mut last = None;
        for event in events {
            let Some(kv) = event.kv() else { continue };
            last = Some(kv.mod_revision());
            // `Event::event_type` panics on a type it does not know; read the raw value.
            let kind = event.0.r#type;
            let Ok(key) = kv.key_str() else {
                warn!("skipping event on a key that is not UTF-8");
                continue;
            };
            let now = match kind {
                0 => match self.decode(kv) {
                    Some(instances) => instances,
                    None => {
                        skipped += 1;
                        Vec::new()
                    }
                },
                1 => Vec::new(),
                other => {
                    warn!(key = %clip(key), kind = other, "skipping watch event of unknown type");
                    continue;
                }
            };
            let before = if now.is_empty() {
                self.held.remove(key).unwrap_or_default()
            } else {
                self.held
                    .insert(key.to_string(), now.clone())
                    .unwrap_or_default()
            };
            self.count = self.count + now.len() - before.len();
            for gone in before
                .iter()
                .filter(|b| !now.iter().any(|n| n.key == b.key))
            {
                debug!(key = %gone.key, addr = %gone.addr, "instance removed");
                self.publisher
                    .send(Update::Remove(gone.key.clone()))
                    .await
                    .map_err(|_| Interrupt::Stopped)?;
            }
            for instance in now.into_iter().filter(|n| !before.contains(n)) {
                debug!(key = %instance.key, addr = %instance.addr, "instance added");
                self.publisher
                    .send(Update::Add(instance))
                    .await
                    .map_err(|_| Interrupt::Stopped)?;
            }
        }
        if let Some(revision) = last {
            self.resume = Some(revision + 1);
            let count = self.count;
            self.publisher.update_status(|s| {
                s.revision = revision;
                s.instances = count;
                s.skipped += skipped;
            });
        }
        Ok(())
    }
}
