//! A steady load through a switchboard client's typed stub, as a gateway would send it, with
//! every outcome counted: successes per instance, failures per status code, the slowest call.
//! Also the checks made after each fault: the client holds what etcd holds.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use switchboard::Client;
use switchboard::balancer::{ChannelSnapshot, ConnectivityState};
use switchboard_resolver::Format;
use switchboard_testkit::Etcd;
use switchboard_testkit::proto::user::{GetUserInfoRequest, UserInfo};
use tokio::task::JoinHandle;

use crate::{PATIENCE, retry, truth};

switchboard::typed_client! {
    /// The demo `user.User` service, as a gateway calls it.
    pub struct User(switchboard_testkit::proto::user::user_client::UserClient) {
        get_user_info(GetUserInfoRequest) -> UserInfo;
    }
}

/// The longest a [`Load`] runs, whatever its caller does.
pub const LOAD_LIMIT: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    failed: Mutex<BTreeMap<String, u64>>,
    by_instance: Mutex<BTreeMap<String, u64>>,
    slowest_us: AtomicU64,
}

/// Callers that each send one RPC per period until stopped, or until [`LOAD_LIMIT`] passes or
/// they sent `LOAD_LIMIT / period` calls.
pub struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    tasks: Vec<JoinHandle<()>>,
}

/// What a [`Load`] saw.
#[derive(Clone, Debug)]
pub struct LoadReport {
    /// Calls made.
    pub calls: u64,
    /// Failed calls per status code.
    pub failed: BTreeMap<String, u64>,
    /// Successful calls per instance name.
    pub by_instance: BTreeMap<String, u64>,
    /// The longest call.
    pub slowest: Duration,
}

impl LoadReport {
    /// How many calls failed.
    pub fn failures(&self) -> u64 {
        self.failed.values().sum()
    }
}

impl Load {
    /// Starts `callers` callers on `users`, each calling once per `period` (4 callers every
    /// 10 ms make 400 RPS).
    pub fn start(users: &User, callers: usize, period: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let max_calls = LOAD_LIMIT.as_millis() / period.as_millis().max(1);
        let tasks = (0..callers)
            .map(|i| {
                let (users, stop, tally) = (users.clone(), stop.clone(), tally.clone());
                tokio::spawn(async move {
                    let started = Instant::now();
                    let mut tick = tokio::time::interval(period);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    let mut calls = 0u128;
                    while !stop.load(Ordering::Relaxed)
                        && calls < max_calls
                        && started.elapsed() < LOAD_LIMIT
                    {
                        tick.tick().await;
                        let t0 = Instant::now();
                        let reply = users
                            .get_user_info(GetUserInfoRequest { id: i as i64 })
                            .await;
                        let took = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                        tally.slowest_us.fetch_max(took, Ordering::Relaxed);
                        match reply {
                            Ok(info) => {
                                tally.ok.fetch_add(1, Ordering::Relaxed);
                                *lock(&tally.by_instance).entry(info.instance).or_default() += 1;
                            }
                            Err(status) => {
                                tracing::warn!(%status, "call failed");
                                *lock(&tally.failed)
                                    .entry(format!("{:?}", status.code()))
                                    .or_default() += 1;
                            }
                        }
                        calls += 1;
                    }
                })
            })
            .collect();
        Self { stop, tally, tasks }
    }

    /// Successful calls served by `instance` so far.
    pub fn served_by(&self, instance: &str) -> u64 {
        lock(&self.tally.by_instance)
            .get(instance)
            .copied()
            .unwrap_or(0)
    }

    /// Failed calls so far.
    pub fn failures(&self) -> u64 {
        lock(&self.tally.failed).values().sum()
    }

    /// Waits until `instance` has served `more` calls beyond `since`.
    pub async fn wait_served(&self, instance: &str, since: u64, more: u64) -> Result<()> {
        let start = Instant::now();
        while self.served_by(instance) < since + more {
            if start.elapsed() > PATIENCE {
                bail!(
                    "{instance} served {} calls, not {more} more than {since}, within {PATIENCE:?}",
                    self.served_by(instance)
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Stops the callers and reports.
    pub async fn finish(self) -> Result<LoadReport> {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await?;
        }
        let failed = lock(&self.tally.failed).clone();
        let ok = self.tally.ok.load(Ordering::Relaxed);
        Ok(LoadReport {
            calls: ok + failed.values().sum::<u64>(),
            failed,
            by_instance: lock(&self.tally.by_instance).clone(),
            slowest: Duration::from_micros(self.tally.slowest_us.load(Ordering::Relaxed)),
        })
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `(key, addr)` pairs of every sub-channel the client holds (draining ones included), in
/// key order.
pub fn client_pairs(snapshot: &ChannelSnapshot) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = snapshot
        .subchannels
        .iter()
        .map(|s| (s.key.clone(), s.addr.clone()))
        .collect();
    pairs.sort();
    pairs
}

/// What etcd holds under `prefix` (decoded as a client decodes it), read with a fresh client
/// and retried through elections and restarts.
pub async fn etcd_pairs(etcd: &Etcd, prefix: &str) -> Result<Vec<(String, String)>> {
    retry(PATIENCE, || async {
        let mut client = etcd.client().await?;
        truth(&mut client, prefix, Format::Auto).await
    })
    .await
}

/// Waits until the client holds exactly what etcd holds under `prefix` (no missing, duplicate
/// or ghost sub-channel, none still draining), with every instance listed in `ready` READY;
/// returns the time that took. Reads etcd again while they differ, as etcd may still be
/// changing.
pub async fn converge(
    client: &Client,
    etcd: &Etcd,
    prefix: &str,
    ready: &[String],
    limit: Duration,
) -> Result<Duration> {
    let start = Instant::now();
    let mut expected = etcd_pairs(etcd, prefix).await?;
    let mut last_read = Instant::now();
    loop {
        let snapshot = client.balancer().snapshot();
        let pairs = client_pairs(&snapshot);
        let all_ready = ready.iter().all(|addr| {
            snapshot
                .by_addr(addr)
                .is_some_and(|s| s.state == ConnectivityState::Ready)
        });
        if pairs == expected && all_ready {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            bail!(
                "the client did not converge within {limit:?}\n etcd   {expected:?}\n client {snapshot:#?}"
            );
        }
        if last_read.elapsed() > Duration::from_millis(250) {
            expected = etcd_pairs(etcd, prefix).await?;
            last_read = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Prints the scenario's one-line summary and fails unless no call failed.
pub fn summary(name: &str, report: &LoadReport, converged: Duration) -> Result<()> {
    let line = format!(
        "scenario {name}: {} rpcs, {} failed, converged in {} ms",
        report.calls,
        report.failures(),
        converged.as_millis()
    );
    println!("{line}");
    if report.failures() > 0 {
        bail!("{line}; failures by status code: {:?}", report.failed);
    }
    Ok(())
}
