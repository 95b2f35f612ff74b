//! Instances that fail: killed, silently dropped, stopped gracefully, or never speaking
//! HTTP/2. The balancer stops picking them, reconnects with backoff, and fails no RPC it
//! could have sent elsewhere.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use switchboard_balancer::{Balancer, ConnectBackoff, ConnectivityState};
use switchboard_resolver::Update;
use switchboard_testkit::{BlackHoleServer, FaultProxy, Http1Server, ServerProcess, TestServer};
use switchboard_tests::balancing::{
    Load, balancer as start_balancer, call, client, instance, send, state_of, wait_ready,
    wait_snapshot,
};
use switchboard_tests::init_tracing;
use tonic::Code;

const T: Duration = Duration::from_secs(10);

fn server_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_test-server"))
}

#[tokio::test]
async fn a_killed_instance_is_skipped_and_reconnected_with_backoff_when_it_returns() -> Result<()> {
    init_tracing();
    let mut procs = Vec::new();
    for name in ["k1", "k2", "k3"] {
        procs.push(ServerProcess::spawn(server_bin(), name, 0).await?);
    }
    let backoff = ConnectBackoff {
        initial: Duration::from_millis(200),
        ..ConnectBackoff::default()
    };
    let (publisher, balancer) = start_balancer(Balancer::builder().backoff(backoff))?;
    let all = procs.iter().map(|p| instance(p.name(), p.addr())).collect();
    send(&publisher, Update::Reset(all)).await?;
    wait_ready(&balancer, 3).await?;

    let load = Load::start(&balancer, 4);
    let victim = procs[0].addr().to_string();
    wait_snapshot(&balancer, "load on k1", |s| {
        s.by_addr(&victim).is_some_and(|c| c.calls_started > 50)
    })
    .await?;
    let port = procs[0].addr().port();
    procs[0].kill();
    let after_error = wait_snapshot(&balancer, "k1 leaves READY", |s| {
        state_of(s, &victim) != Some(ConnectivityState::Ready)
    })
    .await?;
    let started_then = after_error.by_addr(&victim).map_or(0, |c| c.calls_started);

    // While it is down, nothing is picked onto it and it keeps trying with backoff.
    let down = wait_snapshot(&balancer, "k1 retried a few times", |s| {
        s.by_addr(&victim).is_some_and(|c| c.connects >= 3)
    })
    .await?;
    let k1 = down.by_addr(&victim).expect("k1");
    assert_eq!(
        k1.calls_started, started_then,
        "no call was picked onto k1 after its error"
    );
    assert!(k1.last_error.is_some(), "{k1:?}");
    assert_eq!(down.ready(), 2);

    // It comes back on the same port: it is READY again and takes traffic.
    procs[0] = ServerProcess::spawn(server_bin(), "k1", port).await?;
    wait_snapshot(&balancer, "k1 serves again", |s| {
        s.by_addr(&victim).is_some_and(|c| {
            c.state == ConnectivityState::Ready && c.calls_started > started_then + 20
        })
    })
    .await?;
    let (calls, failures) = load.finish().await?;
    // Only the calls in flight on k1 when it died may fail.
    ensure!(failures <= 4, "{failures} of {calls} calls failed");
    Ok(())
}

/// Leaves READY within keepalive interval + timeout + 500 ms of the peer going silent.
async fn silent_peer_leaves_ready(
    balancer: &Balancer,
    addr: &str,
    silenced: Instant,
) -> Result<Duration> {
    wait_snapshot(balancer, "the silent instance leaves READY", |s| {
        state_of(s, addr) != Some(ConnectivityState::Ready)
    })
    .await?;
    Ok(silenced.elapsed())
}

#[tokio::test]
async fn a_silently_dropped_instance_leaves_ready_within_keepalive() -> Result<()> {
    init_tracing();
    let (interval, timeout) = (Duration::from_secs(1), Duration::from_secs(1));
    let bound = interval + timeout + Duration::from_millis(500);
    let builder = Balancer::builder()
        .keepalive(Some(interval))
        .keepalive_timeout(timeout)
        .keepalive_while_idle(true);

    // A proxy that stops forwarding.
    let server = TestServer::start("behind-proxy").await?;
    let other = TestServer::start("other").await?;
    let proxy = FaultProxy::start(server.addr()).await?;
    let (publisher, balancer) = start_balancer(builder.clone())?;
    send(
        &publisher,
        Update::Reset(vec![
            instance("p", proxy.addr()),
            instance("o", other.addr()),
        ]),
    )
    .await?;
    wait_ready(&balancer, 2).await?;
    proxy.pause();
    let took =
        silent_peer_leaves_ready(&balancer, &proxy.addr().to_string(), Instant::now()).await?;
    println!("paused proxy: left READY after {took:?} (bound {bound:?})");
    ensure!(took <= bound, "left READY after {took:?}, bound {bound:?}");
    let mut client = client(&balancer);
    for _ in 0..10 {
        assert_eq!(call(&mut client, T).await?, "other");
    }

    // A process frozen with SIGSTOP.
    let mut frozen = ServerProcess::spawn(server_bin(), "frozen", 0).await?;
    let (publisher2, balancer2) = start_balancer(builder)?;
    send(
        &publisher2,
        Update::Reset(vec![
            instance("f", frozen.addr()),
            instance("o", other.addr()),
        ]),
    )
    .await?;
    wait_ready(&balancer2, 2).await?;
    frozen.stop()?;
    let took =
        silent_peer_leaves_ready(&balancer2, &frozen.addr().to_string(), Instant::now()).await?;
    println!("SIGSTOP: left READY after {took:?} (bound {bound:?})");
    ensure!(took <= bound, "left READY after {took:?}, bound {bound:?}");
    frozen.cont()?;
    Ok(())
}

#[tokio::test]
async fn a_graceful_stop_under_load_fails_no_rpc() -> Result<()> {
    init_tracing();
    let mut servers = Vec::new();
    for name in ["g1", "g2", "g3"] {
        servers.push(TestServer::start(name).await?);
    }
    let (publisher, balancer) = start_balancer(Balancer::builder())?;
    let all = servers
        .iter()
        .map(|s| instance(s.name(), s.addr()))
        .collect();
    send(&publisher, Update::Reset(all)).await?;
    wait_ready(&balancer, 3).await?;

    let load = Load::start(&balancer, 8);
    let leaving = servers.remove(0);
    let addr = leaving.addr().to_string();
    let served = leaving.served();
    switchboard_tests::balancing::wait_until("load on g1", || leaving.served() > served + 100)
        .await?;
    // GOAWAY, in-flight RPCs finish, the listener closes.
    leaving.shutdown().await;
    wait_snapshot(&balancer, "g1 leaves READY", |s| {
        state_of(s, &addr) != Some(ConnectivityState::Ready)
    })
    .await?;
    let others = servers[0].served() + servers[1].served();
    switchboard_tests::balancing::wait_until("load goes on", || {
        servers[0].served() + servers[1].served() > others + 200
    })
    .await?;
    let (calls, failures) = load.finish().await?;
    assert_eq!(failures, 0, "{failures} of {calls} calls failed");
    Ok(())
}

#[tokio::test]
async fn servers_that_do_not_speak_http2_never_become_ready() -> Result<()> {
    init_tracing();
    let hole = BlackHoleServer::start().await?;
    let http1 = Http1Server::start().await?;
    let good = TestServer::start("good").await?;
    let backoff = ConnectBackoff {
        initial: Duration::from_millis(100),
        min_connect_timeout: Duration::from_secs(2),
        ..ConnectBackoff::default()
    };
    let (publisher, balancer) = start_balancer(Balancer::builder().backoff(backoff))?;
    send(
        &publisher,
        Update::Reset(vec![
            instance("hole", hole.addr()),
            instance("http1", http1.addr()),
            instance("good", good.addr()),
        ]),
    )
    .await?;
    wait_ready(&balancer, 1).await?;
    let mut client = client(&balancer);
    for _ in 0..30 {
        assert_eq!(call(&mut client, T).await?, "good");
    }
    let snapshot = wait_snapshot(&balancer, "both bad servers tried twice", |s| {
        s.by_addr(&hole.addr().to_string())
            .is_some_and(|c| c.connects >= 2)
            && s.by_addr(&http1.addr().to_string())
                .is_some_and(|c| c.connects >= 2)
    })
    .await?;
    let h1 = snapshot.by_addr(&http1.addr().to_string()).expect("http1");
    assert!(
        h1.last_error
            .as_deref()
            .is_some_and(|e| e.contains("HTTP/1")),
        "{h1:?}"
    );
    let bh = snapshot.by_addr(&hole.addr().to_string()).expect("hole");
    assert!(
        bh.last_error
            .as_deref()
            .is_some_and(|e| e.contains("timed out")),
        "{bh:?}"
    );
    assert_eq!(snapshot.ready(), 1);

    // Alone, they fail fast calls: UNAVAILABLE naming the cause, or DEADLINE_EXCEEDED
    // while an attempt is in progress; never later than the deadline.
    let (publisher, alone) = start_balancer(Balancer::builder().backoff(backoff))?;
    send(
        &publisher,
        Update::Reset(vec![instance("http1", http1.addr())]),
    )
    .await?;
    wait_snapshot(&alone, "TRANSIENT_FAILURE", |s| {
        s.state == ConnectivityState::TransientFailure
    })
    .await?;
    let status = call(&mut switchboard_tests::balancing::client(&alone), T)
        .await
        .expect_err("never READY");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("HTTP/1"), "{status:?}");

    let (publisher, alone) = start_balancer(Balancer::builder().backoff(backoff))?;
    send(
        &publisher,
        Update::Reset(vec![instance("hole", hole.addr())]),
    )
    .await?;
    let started = Instant::now();
    let status = call(
        &mut switchboard_tests::balancing::client(&alone),
        Duration::from_millis(500),
    )
    .await
    .expect_err("never READY");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Unavailable),
        "{status:?}"
    );
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}
