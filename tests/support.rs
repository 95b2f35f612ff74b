//! Helpers shared by the end-to-end tests: follow a resolution into an [`InstanceSet`], read
//! what etcd holds, and wait until the two agree.

use std::time::{Duration, Instant};

pub mod balancing;
pub mod census;
pub mod fleet;
pub mod load;

use anyhow::{Result, anyhow, bail};
use etcd_client::{Client, GetOptions};
use switchboard_resolver::{Format, InstanceSet, Resolution, ResolverStatus, Update};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Generous bound for anything a test awaits: CI shares two busy cores.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Sends the resolver's logs to the test output (`RUST_LOG` overrides the level).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// Applies every update of a resolution to an [`InstanceSet`] and publishes the set.
pub struct Follower {
    set: watch::Receiver<InstanceSet>,
    status: watch::Receiver<ResolverStatus>,
    removals: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl Follower {
    /// Starts following `resolution`.
    pub fn new(mut resolution: Resolution) -> Self {
        let (set_tx, set) = watch::channel(InstanceSet::default());
        let (removed_tx, removals) = watch::channel(0u64);
        let status = resolution.status_watch();
        let task = tokio::spawn(async move {
            while let Some(update) = resolution.next_update().await {
                let removed = match &update {
                    Update::Remove(_) => 1,
                    Update::Reset(_) | Update::Add(_) => 0,
                };
                set_tx.send_modify(|set| {
                    set.apply(update);
                });
                if removed > 0 {
                    removed_tx.send_modify(|n| *n += removed);
                }
            }
        });
        Self {
            set,
            status,
            removals,
            task,
        }
    }

    /// The `(key, addr)` pairs held now.
    pub fn pairs(&self) -> Vec<(String, String)> {
        self.set.borrow().pairs()
    }

    /// The resolver's status.
    pub fn status(&self) -> ResolverStatus {
        self.status.borrow().clone()
    }

    /// How many `Remove` updates were applied so far.
    pub fn removals(&self) -> u64 {
        *self.removals.borrow()
    }

    /// Waits until the held set equals `expected`, for at most `limit`.
    pub async fn wait_for_pairs(
        &self,
        expected: &[(String, String)],
        limit: Duration,
    ) -> Result<Duration> {
        let started = Instant::now();
        let mut set = self.set.clone();
        let got = tokio::time::timeout(limit, set.wait_for(|s| s.pairs() == expected)).await;
        match got {
            Ok(Ok(_)) => Ok(started.elapsed()),
            _ => bail!(
                "resolver did not converge within {limit:?}\n expected {expected:?}\n held     {:?}\n status {:?}",
                self.pairs(),
                self.status()
            ),
        }
    }

    /// Whether the held set changes within `limit` (waits the whole `limit` when it does not).
    pub async fn changes_within(&self, limit: Duration) -> bool {
        let mut set = self.set.clone();
        set.mark_unchanged();
        tokio::time::timeout(limit, set.changed()).await.is_ok()
    }

    /// Waits until the resolver's status satisfies `f`.
    pub async fn wait_status(
        &self,
        limit: Duration,
        f: impl Fn(&ResolverStatus) -> bool,
    ) -> Result<ResolverStatus> {
        let mut status = self.status.clone();
        match tokio::time::timeout(limit, status.wait_for(|s| f(s))).await {
            Ok(Ok(s)) => Ok(s.clone()),
            _ => bail!(
                "resolver status not reached within {limit:?}: {:?}",
                self.status()
            ),
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What etcd holds under `prefix`, decoded with `format` as `(key, addr)` pairs in key order,
/// skipping what does not decode: the set a correct resolver converges to.
pub async fn truth(
    client: &mut Client,
    prefix: &str,
    format: Format,
) -> Result<Vec<(String, String)>> {
    // A big fleet's listing is over gRPC's default 4 MiB message limit.
    let resp = client
        .kv_client()
        .max_decoding_message_size(256 * 1024 * 1024)
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await?;
    let mut pairs = Vec::new();
    for kv in resp.kvs() {
        let key = kv.key_str()?;
        if let Ok(instances) = format.decode(key, kv.value()) {
            pairs.extend(instances.into_iter().map(|i| (i.key, i.addr)));
        }
    }
    pairs.sort();
    Ok(pairs)
}

/// Reads the truth from etcd and waits until the follower holds it; returns how long that
/// took after the read.
pub async fn converge(
    follower: &Follower,
    client: &mut Client,
    prefix: &str,
    limit: Duration,
) -> Result<Duration> {
    // The read itself may meet an election right after a fault: retry it.
    let expected = retry(PATIENCE, || {
        let mut client = client.clone();
        async move { truth(&mut client, prefix, Format::Auto).await }
    })
    .await?;
    follower.wait_for_pairs(&expected, limit).await
}

/// `n` distinct plain registrations: `(prefix/i, 127.0.0.1:(20000+i))`.
pub fn plain_entries(prefix: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            (
                format!("{prefix}/{i:04}"),
                format!("127.0.0.1:{}", 20000 + i),
            )
        })
        .collect()
}

/// A small deterministic pseudo-random sequence for churn (no shared RNG state across tests).
pub struct Lcg(pub u64);

impl Lcg {
    /// The next value below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Runs one churn step on `client`: put or delete one of `keys` keys under `prefix`.
pub async fn churn_step(client: &mut Client, prefix: &str, rng: &mut Lcg, keys: u64) -> Result<()> {
    let k = rng.below(keys);
    let key = format!("{prefix}/k{k:03}");
    if rng.below(3) == 0 {
        client.delete(key, None).await?;
    } else {
        let port = 30000 + rng.below(20000);
        client.put(key, format!("127.0.0.1:{port}"), None).await?;
    }
    Ok(())
}

/// [`churn_step`], retried while the cluster has no leader (after a member was killed).
pub async fn churn_step_retrying(
    client: &mut Client,
    prefix: &str,
    rng: &mut Lcg,
    keys: u64,
) -> Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match churn_step(client, prefix, rng, keys).await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Retries `f` until it succeeds or `limit` passes (for writes during an election).
pub async fn retry<T, F, Fut>(limit: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => {
                return Err(anyhow!("gave up after {limit:?}: {e}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}
