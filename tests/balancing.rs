//! Helpers for the balancer tests: a balancer fed by hand, typed calls through it, and waits
//! on its snapshot.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use switchboard_balancer::{Balancer, Builder, ChannelSnapshot, ConnectivityState, WaitForReady};
use switchboard_resolver::{Instance, Publisher, Resolution, Update};
use switchboard_testkit::proto::user::user_client::UserClient;
use switchboard_testkit::proto::user::{GetUserInfoRequest, WatchEventsRequest};
use tonic::Status;

use crate::PATIENCE;

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

/// Waits until `n` sub-channels are READY.
pub async fn wait_ready(balancer: &Balancer, n: usize) -> Result<ChannelSnapshot> {
    wait_snapshot(balancer, &format!("{n} READY sub-channels"), |s| {
        s.ready() == n
    })
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
