//! The load from this host: callers of the gateway, their answers counted by status, a fault
//! run under it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;

use crate::cluster::Cluster;
use crate::support;

/// Concurrent callers of the load, and the most requests one makes in a fault.
const CALLERS: usize = 4;
const MAX_REQUESTS_PER_CALLER: u64 = 20_000;
/// A caller's pause between requests: a few hundred requests a second in all, on 2 shared cores.
const PAUSE: Duration = Duration::from_millis(10);
/// One request of the load: longer than the gateway's deadline (10 s), so the gateway, not this
/// host, decides what fails.
const REQUEST_LIMIT: Duration = Duration::from_secs(15);

/// What the load saw: answers by HTTP status, requests that got no answer in time, requests
/// that could not be made (connection refused or reset), and the instances that answered.
#[derive(Default, Debug)]
pub(crate) struct Counts {
    pub(crate) statuses: BTreeMap<u16, u64>,
    pub(crate) timeouts: u64,
    pub(crate) connection_errors: u64,
    pub(crate) instances: BTreeMap<String, u64>,
}

impl Counts {
    pub(crate) fn requests(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.timeouts + self.connection_errors
    }

    pub(crate) fn failed(&self) -> u64 {
        self.requests() - self.statuses.get(&200).copied().unwrap_or(0)
    }

    pub(crate) fn add(&mut self, other: Counts) {
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        for (instance, n) in other.instances {
            *self.instances.entry(instance).or_default() += n;
        }
        self.timeouts += other.timeouts;
        self.connection_errors += other.connection_errors;
    }

    /// `503×2 504×1 timeout×0 conn×0`: the failures, by kind.
    pub(crate) fn failures(&self) -> String {
        let mut parts: Vec<String> = self
            .statuses
            .iter()
            .filter(|(status, _)| **status != 200)
            .map(|(status, n)| format!("{status}×{n}"))
            .collect();
        if self.timeouts > 0 {
            parts.push(format!("timeout×{}", self.timeouts));
        }
        if self.connection_errors > 0 {
            parts.push(format!("conn×{}", self.connection_errors));
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(" ")
        }
    }
}

pub(crate) async fn call(gateway: &str, n: u64, counts: &mut Counts) {
    match support::get_within(gateway, &format!("/api/user/{n}"), REQUEST_LIMIT).await {
        Ok(answer) => {
            *counts.statuses.entry(answer.status).or_default() += 1;
            if answer.status == 200
                && let Ok(body) = serde_json::from_str::<Value>(&answer.body)
                && let Some(instance) = body["instance"].as_str()
            {
                *counts.instances.entry(instance.to_owned()).or_default() += 1;
            }
        }
        Err(e) if e.chain().any(|e| e.is::<tokio::time::error::Elapsed>()) => {
            counts.timeouts += 1;
        }
        Err(_) => counts.connection_errors += 1,
    }
}

/// Callers looping `GET /api/user/{n}` on the gateway until stopped (or `MAX_REQUESTS_PER_CALLER`).
pub(crate) struct Load {
    stop: Arc<AtomicBool>,
    callers: Vec<tokio::task::JoinHandle<Counts>>,
}

impl Load {
    pub(crate) fn start(gateway: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let callers = (0..CALLERS as u64)
            .map(|caller| {
                let (stop, gateway) = (stop.clone(), gateway.clone());
                tokio::spawn(async move {
                    let mut counts = Counts::default();
                    for i in 0..MAX_REQUESTS_PER_CALLER {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        call(
                            &gateway,
                            caller * MAX_REQUESTS_PER_CALLER + i + 1,
                            &mut counts,
                        )
                        .await;
                        tokio::time::sleep(PAUSE).await;
                    }
                    counts
                })
            })
            .collect();
        Self { stop, callers }
    }

    pub(crate) async fn finish(self) -> Result<Counts> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Counts::default();
        for caller in self.callers {
            all.add(caller.await?);
        }
        Ok(all)
    }
}

/// One fault's line of the summary.
pub(crate) struct Fault {
    pub(crate) name: &'static str,
    pub(crate) counts: Counts,
    /// What was timed during it, as `what: time`.
    pub(crate) times: Vec<String>,
}

impl Fault {
    pub(crate) fn print(&self) {
        println!(
            "compose_cluster: fault {}: {} requests, failed: {}{}{}",
            self.name,
            self.counts.requests(),
            self.counts.failures(),
            if self.times.is_empty() { "" } else { "; " },
            self.times.join(", ")
        );
    }
}

pub(crate) fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Runs `fault` under load; the load goes on for a second after it.
pub(crate) async fn under_load<F>(cluster: &Cluster, name: &'static str, fault: F) -> Result<Fault>
where
    F: std::future::Future<Output = Result<Vec<String>>>,
{
    println!("compose_cluster: fault {name}");
    let load = Load::start(cluster.gateway());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let times = fault.await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let counts = load.finish().await?;
    let fault = Fault {
        name,
        counts,
        times: times?,
    };
    fault.print();
    Ok(fault)
}
