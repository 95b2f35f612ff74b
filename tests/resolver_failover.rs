//! The resolver survives its etcd member dying or freezing, and etcd going away entirely,
//! without ever losing the instance set.

use std::time::Duration;

use anyhow::Result;
use switchboard_resolver::{EtcdConfig, EtcdResolver, Resolve};
use switchboard_testkit::{Etcd, FaultProxy};
use switchboard_tests::{
    Follower, Lcg, PATIENCE, churn_step_retrying, converge, init_tracing, plain_entries, retry,
};

/// Within 3 s of the last write, the resolver holds what etcd holds.
const CONVERGENCE: Duration = Duration::from_secs(3);

fn watched(etcd: &Etcd, follower: &Follower) -> usize {
    let status = follower.status();
    etcd.index_of(status.endpoint.as_deref().unwrap_or_default())
        .unwrap_or_else(|| panic!("the resolver names a member of the cluster: {status:?}"))
}

/// The member serving the watch is killed during churn; later the member it moved to is frozen
/// with SIGSTOP during churn. Each time the resolver moves to a live member and converges
/// within 3 s of the last write.
#[tokio::test]
async fn killed_then_stopped_member_during_churn() -> Result<()> {
    init_tracing();
    let mut etcd = Etcd::start_cluster(3).await?;
    let config = EtcdConfig::from_hosts(&etcd.hosts())?
        .watch_check_interval(Duration::from_millis(500))
        .connect_timeout(Duration::from_secs(1))
        .request_timeout(Duration::from_secs(2));
    let mut seed = etcd.client().await?;
    for (k, v) in plain_entries("fo", 10) {
        seed.put(k, v, None).await?;
    }
    let follower = Follower::new(EtcdResolver::new(config, "fo").resolve());
    converge(&follower, &mut seed, "fo/", PATIENCE).await?;
    follower.wait_status(PATIENCE, |s| s.connected).await?;
    let mut rng = Lcg(3);

    // Phase 1: kill -9 the watched member in the middle of the churn.
    let killed = watched(&etcd, &follower);
    let writer_member = (0..3).find(|i| *i != killed).expect("three members");
    let mut writer = etcd.client_of(writer_member).await?;
    for step in 0..150 {
        if step == 50 {
            etcd.kill(killed);
        }
        churn_step_retrying(&mut writer, "fo", &mut rng, 30).await?;
    }
    let took = converge(&follower, &mut writer, "fo/", CONVERGENCE).await?;
    let moved_to = watched(&etcd, &follower);
    assert_ne!(moved_to, killed);
    println!("kill -9 of the watched member: converged {took:?} after the last write");
    etcd.restart(killed).await?;

    // Phase 2: SIGSTOP the member the resolver moved to, in the middle of the churn.
    let frozen = moved_to;
    let writer_member = (0..3).find(|i| *i != frozen).expect("three members");
    let mut writer = etcd.client_of(writer_member).await?;
    for step in 0..150 {
        if step == 50 {
            etcd.stop(frozen)?;
        }
        churn_step_retrying(&mut writer, "fo", &mut rng, 30).await?;
    }
    let took = converge(&follower, &mut writer, "fo/", CONVERGENCE).await?;
    follower.wait_status(PATIENCE, |s| s.connected).await?;
    assert_ne!(watched(&etcd, &follower), frozen);
    println!("SIGSTOP of the watched member: converged {took:?} after the last write");
    etcd.cont(frozen)?;
    Ok(())
}

/// etcd is down for 10 s: the resolver keeps the last set (not one change), reports that it is
/// disconnected, and after etcd returns it resumes with a diff, not a flap.
#[tokio::test]
async fn etcd_fully_down_keeps_the_last_set() -> Result<()> {
    init_tracing();
    let mut etcd = Etcd::start().await?;
    let mut writer = etcd.client().await?;
    for (k, v) in plain_entries("down", 5) {
        writer.put(k, v, None).await?;
    }
    let follower =
        Follower::new(EtcdResolver::new(EtcdConfig::from_hosts(&etcd.hosts())?, "down").resolve());
    converge(&follower, &mut writer, "down/", PATIENCE).await?;
    let before = follower.pairs();
    let removals = follower.removals();

    etcd.kill_all();
    follower
        .wait_status(PATIENCE, |s| !s.connected && s.last_error.is_some())
        .await?;
    assert!(
        !follower.changes_within(Duration::from_secs(10)).await,
        "the instance set changed while etcd was down"
    );
    assert_eq!(follower.pairs(), before);

    etcd.restart_all().await?;
    let mut writer = retry(PATIENCE, || etcd.client()).await?;
    writer.put("down/new", "127.0.0.1:29999", None).await?;
    writer.delete("down/0000", None).await?;
    converge(&follower, &mut writer, "down/", PATIENCE).await?;
    follower.wait_status(PATIENCE, |s| s.connected).await?;
    assert_eq!(
        follower.removals(),
        removals + 1,
        "only the deleted instance was removed: resuming is a diff, not a flap"
    );
    Ok(())
}

#[tokio::test]
async fn a_member_that_never_answers_is_reported_as_a_timeout_not_a_refusal() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let proxy = FaultProxy::start(etcd.endpoint(0).parse()?).await?;
    // Silent from the start: connections are accepted and nothing comes back.
    proxy.pause();
    let config = EtcdConfig::from_hosts(&proxy.addr().to_string())?
        .connect_timeout(Duration::from_millis(500))
        .request_timeout(Duration::from_millis(500));
    let follower = Follower::new(EtcdResolver::new(config, "silent.rpc").resolve());
    let status = follower
        .wait_status(PATIENCE, |s| s.last_error.is_some())
        .await?;
    let error = status.last_error.unwrap_or_default();
    println!("a silent member: {error}");
    assert!(
        error.contains("timed out") || error.contains("no answer in time"),
        "{error}"
    );
    assert!(!error.contains("refused"), "{error}");
    assert!(!status.connected);
    Ok(())
}
