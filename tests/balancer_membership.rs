//! Instances coming and going: removal drains streams, address changes move traffic without
//! failures, re-listings keep connections, and no instance fails or waits as gRPC says.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use switchboard_balancer::{Balancer, ConnectivityState};
use switchboard_resolver::Update;
use switchboard_testkit::{ClosedPort, TestServer};
use switchboard_tests::balancing::{
    Load, balancer as start_balancer, call, call_with, client, instance, send, wait_ready,
    wait_snapshot, wait_until, watch_events,
};
use switchboard_tests::init_tracing;
use tonic::Code;

const T: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_removed_instance_finishes_its_stream_then_its_connection_closes() -> Result<()> {
    init_tracing();
    let a = TestServer::start("a").await?;
    let b = TestServer::start("b").await?;
    let (publisher, balancer) = start_balancer(Balancer::builder())?;
    send(
        &publisher,
        Update::Reset(vec![instance("a", a.addr()), instance("b", b.addr())]),
    )
    .await?;
    wait_ready(&balancer, 2).await?;

    // Open a stream on whichever instance the picker gives, then remove that instance.
    let mut client = client(&balancer);
    let mut stream = watch_events(&mut client, 10, Duration::from_millis(100)).await?;
    let first = stream.message().await?.expect("a first event");
    let (gone, stays) = if first.instance == "a" {
        (&a, &b)
    } else {
        (&b, &a)
    };
    send(&publisher, Update::Remove(gone.name().to_string())).await?;
    let removed_addr = gone.addr().to_string();
    wait_snapshot(&balancer, "removed instance leaves the picker", |s| {
        s.by_addr(&removed_addr)
            .is_none_or(|c| c.state == ConnectivityState::Shutdown || c.in_flight == 1)
    })
    .await?;

    // New calls go to the other instance only, while the stream goes on.
    let served_before = gone.served();
    for _ in 0..20 {
        assert_eq!(call(&mut client, T).await?, stays.name());
    }
    let mut seqs = vec![first.seq];
    while let Some(event) = stream.message().await? {
        assert_eq!(event.instance, gone.name());
        seqs.push(event.seq);
    }
    assert_eq!(seqs.len(), 10, "the stream completed: {seqs:?}");
    assert_eq!(
        gone.served(),
        served_before,
        "no new call reached the removed instance"
    );

    // Then its connection closes and its sub-channel is gone.
    wait_until("the removed instance's connection closes", || {
        gone.connections() == 0
    })
    .await?;
    wait_snapshot(&balancer, "the sub-channel is gone", |s| {
        s.by_addr(&removed_addr).is_none()
    })
    .await?;
    assert_eq!(stays.connections(), 1);
    Ok(())
}

#[tokio::test]
async fn a_stream_outliving_the_drain_timeout_is_cut_and_the_connection_closed() -> Result<()> {
    init_tracing();
    let a = TestServer::start("a").await?;
    let drain = Duration::from_millis(300);
    let (publisher, balancer) = start_balancer(Balancer::builder().drain_timeout(drain))?;
    send(&publisher, Update::Reset(vec![instance("a", a.addr())])).await?;
    wait_ready(&balancer, 1).await?;

    // A stream of 100 events a second apart: it would outlive the drain by far.
    let mut client = client(&balancer);
    let mut stream = watch_events(&mut client, 100, Duration::from_secs(1)).await?;
    stream.message().await?.expect("a first event");
    let removed = Instant::now();
    send(&publisher, Update::Remove("a".into())).await?;
    let end = loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            other => break other,
        }
    };
    let cut_after = removed.elapsed();
    ensure!(end.is_err(), "the stream was cut, not completed: {end:?}");
    ensure!(
        cut_after >= drain,
        "cut after {cut_after:?}, before the drain timeout"
    );
    ensure!(cut_after < T, "cut after {cut_after:?}");
    wait_until("the connection closes", || a.connections() == 0).await?;
    wait_snapshot(&balancer, "the sub-channel is gone", |s| {
        s.subchannels.is_empty()
    })
    .await?;
    Ok(())
}

/// An instance moved to an address that never comes up: its old connection serves on, but
/// not past the drain timeout, and then it is gone for good (SHUTDOWN, never reconnecting to
/// the old address, which another service may have by then).
#[tokio::test]
async fn a_moved_instance_whose_new_address_never_answers_leaves_its_old_one_within_the_drain_timeout()
-> Result<()> {
    init_tracing();
    let drain_timeout = Duration::from_secs(2);
    let old = TestServer::start("old").await?;
    let nowhere = ClosedPort::new()?;
    let (publisher, balancer) = start_balancer(Balancer::builder().drain_timeout(drain_timeout))?;
    send(
        &publisher,
        Update::Reset(vec![instance("svc/1", old.addr())]),
    )
    .await?;
    wait_ready(&balancer, 1).await?;
    let mut users = client(&balancer);
    assert_eq!(call(&mut users, T).await?, "old");

    let moved = Instant::now();
    send(&publisher, Update::Add(instance("svc/1", nowhere.addr()))).await?;
    // Until the drain timeout, calls still reach the old address.
    wait_snapshot(&balancer, "the move applied", |s| s.updates_applied == 2).await?;
    assert_eq!(call(&mut users, T).await?, "old");
    // Then its connection closes, and its sub-channel is gone, not reconnecting.
    wait_until("the old connection closes", || old.connections() == 0).await?;
    let closed_after = moved.elapsed();
    let old_addr = old.addr().to_string();
    let snapshot = wait_snapshot(&balancer, "the old sub-channel is gone", |s| {
        s.by_addr(&old_addr).is_none()
    })
    .await?;
    println!(
        "the old connection closed {closed_after:?} after the move (drain timeout {drain_timeout:?})"
    );
    assert!(
        closed_after < drain_timeout + Duration::from_secs(8),
        "closed {closed_after:?} after the move, the drain timeout being {drain_timeout:?}"
    );
    assert_eq!(snapshot.subchannels.len(), 1, "{snapshot:#?}");
    assert_ne!(snapshot.subchannels[0].state, ConnectivityState::Ready);
    assert_eq!(old.connections(), 0, "the old address was connected again");
    // No instance is READY: fail-fast calls fail.
    let status = call(&mut users, T).await.expect_err("nothing is READY");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    Ok(())
}

#[tokio::test]
async fn an_address_change_under_the_same_key_moves_traffic_without_failures() -> Result<()> {
    init_tracing();
    let old = TestServer::start("old").await?;
    let new = TestServer::start("new").await?;
    let (publisher, balancer) = start_balancer(Balancer::builder())?;
    send(
        &publisher,
        Update::Reset(vec![instance("svc/1", old.addr())]),
    )
    .await?;
    wait_ready(&balancer, 1).await?;

    let load = Load::start(&balancer, 4);
    wait_until("load reaches the old address", || old.served() > 20).await?;
    send(&publisher, Update::Add(instance("svc/1", new.addr()))).await?;
    wait_until("load reaches the new address", || new.served() > 20).await?;
    wait_until("the old connection closes", || old.connections() == 0).await?;
    let old_served = old.served();
    wait_until("more load on the new address", || new.served() > 200).await?;
    let (calls, failures) = load.finish().await?;
    assert_eq!(failures, 0, "{failures} of {calls} calls failed");
    assert_eq!(
        old.served(),
        old_served,
        "nothing reached the old address once it closed"
    );
    let snapshot = balancer.snapshot();
    assert_eq!(snapshot.subchannels.len(), 1, "{snapshot:#?}");
    assert_eq!(snapshot.subchannels[0].addr, new.addr().to_string());
    Ok(())
}

#[tokio::test]
async fn a_reset_keeps_the_connections_of_unchanged_instances() -> Result<()> {
    init_tracing();
    let a = TestServer::start("a").await?;
    let b = TestServer::start("b").await?;
    let c = TestServer::start("c").await?;
    let (publisher, balancer) = start_balancer(Balancer::builder())?;
    send(
        &publisher,
        Update::Reset(vec![instance("a", a.addr()), instance("b", b.addr())]),
    )
    .await?;
    wait_ready(&balancer, 2).await?;
    send(
        &publisher,
        Update::Reset(vec![instance("b", b.addr()), instance("c", c.addr())]),
    )
    .await?;
    let snapshot = wait_snapshot(&balancer, "a removed, c READY", |s| {
        s.by_addr(&a.addr().to_string()).is_none() && s.ready() == 2
    })
    .await?;
    let b_sub = snapshot.by_addr(&b.addr().to_string()).expect("b is kept");
    assert_eq!(b_sub.connects, 1, "b kept its connection: {snapshot:#?}");
    assert_eq!(b.connections(), 1);
    wait_until("a's connection closes", || a.connections() == 0).await?;
    Ok(())
}

#[tokio::test]
async fn without_instances_calls_fail_fast_or_wait_for_ready_until_their_deadline() -> Result<()> {
    init_tracing();
    let (publisher, balancer) = start_balancer(Balancer::builder().target("user.rpc"))?;
    send(&publisher, Update::Reset(Vec::new())).await?;
    wait_snapshot(&balancer, "TRANSIENT_FAILURE", |s| {
        s.state == ConnectivityState::TransientFailure
    })
    .await?;
    let mut client = client(&balancer);

    let status = call(&mut client, T).await.expect_err("no instance");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("no instances of user.rpc"),
        "{status:?}"
    );

    let started = Instant::now();
    let status = call_with(&mut client, Duration::from_millis(300), Some(true))
        .await
        .expect_err("no instance");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    let waited = started.elapsed();
    ensure!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(5),
        "waited {waited:?} for a 300 ms deadline"
    );

    // A wait-for-ready call is served as soon as an instance is READY.
    let server = TestServer::start("late").await?;
    let mut waiting = {
        let mut client = client.clone();
        tokio::spawn(async move { call_with(&mut client, T * 3, Some(true)).await })
    };
    // It waits (neither served nor failed) while there is no instance…
    let early = tokio::time::timeout(Duration::from_millis(300), &mut waiting).await;
    assert!(early.is_err(), "the call did not wait: {early:?}");
    // …and is served by the instance that comes.
    send(&publisher, Update::Add(instance("late", server.addr()))).await?;
    assert_eq!(waiting.await??, "late");
    Ok(())
}
