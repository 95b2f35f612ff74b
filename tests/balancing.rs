//! Helpers for the balancer tests: a balancer fed by hand, typed calls through it, and waits
//! on its snapshot.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use switchboard_balancer::{Balancer, Builder, ChannelSnapshot, ConnectivityState, WaitForReady};
use switchboard_resolver::{Instance, Publisher, Resolution, Update};
use switchboard_testkit::TestServer;
use switchboard_testkit::proto::user::user_client::UserClient;
use switchboard_testkit::proto::user::{GetUserInfoRequest, WatchEventsRequest};
use tokio::task::JoinHandle;
use tonic::Status;

use crate::PATIENCE;

/// The deadline of each call of a [`Load`].
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A balancer whose instances are set by hand through the returned publisher.
pub fn balancer(builder: Builder) -> Result<(Publisher, Balancer)> {
    let (publisher, resolution) = Resolution::channel();
    let balancer = builder.seed(7).build(resolution)?;
    Ok((publisher, balancer))
}

/// An instance `key` at `addr`.
pub fn instance(key: &str, addr: impl ToString) -> Instance {
    Instance::new(key, addr.to_string())
}

/// Sends `update` to the balancer.
pub async fn send(publisher: &Publisher, update: Update) -> Result<()> {
    if publisher.send(update).await.is_err() {
        bail!("the balancer is gone");
    }
    Ok(())
}

/// Test servers named `names`, each on a free port of 127.0.0.1.
pub async fn servers(names: &[&str]) -> Result<Vec<TestServer>> {
    let mut out = Vec::new();
    for name in names {
        out.push(TestServer::start(name).await?);
    }
    Ok(out)
}

/// A balancer from `builder`, given `servers` as its instances (keyed by their names).
pub async fn balance_over(
    builder: Builder,
    servers: &[TestServer],
) -> Result<(Publisher, Balancer)> {
    let (publisher, balancer) = balancer(builder)?;
    let all = servers
        .iter()
        .map(|s| instance(s.name(), s.addr()))
        .collect();
    send(&publisher, Update::Reset(all)).await?;
    Ok((publisher, balancer))
}

/// A typed client over the balancer.
pub fn client(balancer: &Balancer) -> UserClient<Balancer> {
    UserClient::new(balancer.clone())
}

/// One unary call with a deadline; the instance that served it.
pub async fn call(client: &mut UserClient<Balancer>, timeout: Duration) -> Result<String, Status> {
    call_with(client, timeout, None).await
}

/// One unary call with a deadline and, optionally, wait-for-ready set.
pub async fn call_with(
    client: &mut UserClient<Balancer>,
    timeout: Duration,
    wait_for_ready: Option<bool>,
) -> Result<String, Status> {
    let mut request = tonic::Request::new(GetUserInfoRequest { id: 1 });
    request.set_timeout(timeout);
    if let Some(w) = wait_for_ready {
        request.extensions_mut().insert(WaitForReady(w));
    }
    // The balancer bounds the wait for an instance; this bounds a server that never answers.
    match tokio::time::timeout(
        timeout + Duration::from_secs(5),
        client.get_user_info(request),
    )
    .await
    {
        Ok(reply) => reply.map(|r| r.into_inner().instance),
        Err(_) => Err(Status::deadline_exceeded("the test's own bound passed")),
    }
}

/// Opens a server-streaming call of `count` events, `interval` apart.
pub async fn watch_events(
    client: &mut UserClient<Balancer>,
    count: u32,
    interval: Duration,
) -> Result<tonic::Streaming<switchboard_testkit::proto::user::Event>, Status> {
    let request = WatchEventsRequest {
        id: 1,
        count,
        interval_ms: interval.as_millis() as u32,
    };
    Ok(client.watch_events(request).await?.into_inner())
}

/// Waits until `check` holds for the balancer's snapshot, and returns that snapshot.
pub async fn wait_snapshot(
    balancer: &Balancer,
    what: &str,
    check: impl Fn(&ChannelSnapshot) -> bool,
) -> Result<ChannelSnapshot> {
    let start = Instant::now();
    loop {
        let snapshot = balancer.snapshot();
        if check(&snapshot) {
            return Ok(snapshot);
        }
        if start.elapsed() > PATIENCE {
            bail!("{what}: not within {PATIENCE:?}; last snapshot {snapshot:#?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Waits until `n` sub-channels are READY and the published picker sends RPCs to all of them
/// (a sub-channel's state is written before the picker follows it).
pub async fn wait_ready(balancer: &Balancer, n: usize) -> Result<ChannelSnapshot> {
    wait_snapshot(
        balancer,
        &format!("{n} READY sub-channels in the picker"),
        |s| s.ready() == n && s.in_picker() == n,
    )
    .await
}

/// The state of the sub-channel at `addr`, if there is one.
pub fn state_of(snapshot: &ChannelSnapshot, addr: impl ToString) -> Option<ConnectivityState> {
    snapshot.by_addr(&addr.to_string()).map(|s| s.state)
}

/// Waits until `check` holds, polling every few milliseconds.
pub async fn wait_until(what: &str, check: impl Fn() -> bool) -> Result<()> {
    let start = Instant::now();
    while !check() {
        if start.elapsed() > PATIENCE {
            bail!("{what}: not within {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Callers that call in a loop until stopped (at most 20 000 calls each), counting failures.
pub struct Load {
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicUsize>,
    tasks: Vec<JoinHandle<usize>>,
}

impl Load {
    /// Starts `callers` callers on `balancer`.
    pub fn start(balancer: &Balancer, callers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicUsize::new(0));
        let tasks = (0..callers)
            .map(|_| {
                let (balancer, stop, failures) = (balancer.clone(), stop.clone(), failures.clone());
                tokio::spawn(async move {
                    let mut client = client(&balancer);
                    let mut calls = 0;
                    while !stop.load(Ordering::Relaxed) && calls < 20_000 {
                        if let Err(status) = call(&mut client, CALL_TIMEOUT).await {
                            tracing::warn!(%status, "call failed");
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                        calls += 1;
                    }
                    calls
                })
            })
            .collect();
        Self {
            stop,
            failures,
            tasks,
        }
    }

    /// Stops the callers; returns (calls, failures).
    pub async fn finish(self) -> Result<(usize, usize)> {
        self.stop.store(true, Ordering::Relaxed);
        let mut calls = 0;
        for task in self.tasks {
            calls += task.await?;
        }
        Ok((calls, self.failures.load(Ordering::Relaxed)))
    }
}
