//! What a fleet does to a gateway's client, under a steady load through the typed client:
//! deploys, crashes, etcd failures, compaction, servers that never speak HTTP/2, garbage in the
//! registry. (An instance flapping a thousand times, with its leak check, is in `leaks.rs`.)
//!
//! After each scenario: no RPC failed (failures are counted per status code), the client holds
//! exactly what etcd holds, each instance has one connection and none is left once the client
//! is dropped, and the process is back to its tokio task and file-descriptor counts. Each
//! scenario prints `scenario NAME: N rpcs, 0 failed, converged in X ms`.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use switchboard::Client;
use switchboard::balancer::ConnectivityState;
use switchboard_testkit::{BlackHoleServer, Etcd, Http1Server, ServerProcess, TestServer};
use switchboard_tests::census::{Census, own_connections_to};
use switchboard_tests::fleet::{
    CALLERS, KEY, PERIOD, PREFIX, SLACK, addrs, connect, drop_client, healthy, one_connection_each,
    put,
};
use switchboard_tests::load::{Load, User, client_pairs, converge, etcd_pairs, summary};
use switchboard_tests::{Lcg, PATIENCE, init_tracing, retry};

fn test_server() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_test-server"))
}

/// A `test-server` process that registers itself as `svc/NAME` in `etcd`.
async fn registered(etcd: &Etcd, name: &str, port: u16, grace_ms: u32) -> Result<ServerProcess> {
    let hosts = etcd.hosts();
    let grace = grace_ms.to_string();
    let args = [
        "--etcd",
        &hosts,
        "--key",
        KEY,
        "--ttl",
        "3",
        "--grace-ms",
        &grace,
    ];
    ServerProcess::spawn_with(test_server(), name, port, &args).await
}

/// The member whose client port this process has a connection to: the one the client's
/// resolver watches (the test holds no etcd connection of its own while this runs). Polls
/// until exactly one member has one, three times in a row.
async fn watched_member(etcd: &Etcd) -> Result<usize> {
    let start = Instant::now();
    let mut seen = Vec::new();
    loop {
        let mut members = Vec::new();
        for i in 0..etcd.len() {
            let port: u16 = etcd
                .endpoint(i)
                .rsplit_once(':')
                .context("endpoint")?
                .1
                .parse()?;
            if own_connections_to(port)? > 0 {
                members.push(i);
            }
        }
        if members.len() == 1 {
            seen.push(members[0]);
            if seen.len() >= 3 && seen[seen.len() - 3..].iter().all(|m| *m == members[0]) {
                return Ok(members[0]);
            }
        } else {
            seen.clear();
        }
        if start.elapsed() > PATIENCE {
            bail!("cannot tell which etcd member the client watches: {members:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// etcd, three servers `a`, `b` and `c` registered in it by themselves, and a client that
/// holds all three; the census taken before the servers started.
struct Three {
    etcd: Etcd,
    baseline: Census,
    servers: Vec<ServerProcess>,
    /// The servers' addresses, as the client must hold them.
    ready: Vec<String>,
    ports: Vec<u16>,
    client: Client,
    users: User,
}

impl Three {
    async fn start() -> Result<Self> {
        let etcd = Etcd::start().await?;
        let baseline = Census::take()?;
        let mut servers = Vec::new();
        for name in ["a", "b", "c"] {
            servers.push(registered(&etcd, name, 0, 500).await?);
        }
        let ready = addrs(servers.iter().map(|s| s.addr()));
        let ports: Vec<u16> = servers.iter().map(|s| s.addr().port()).collect();
        let (client, users) = connect(&etcd, Duration::from_secs(2)).await?;
        converge(&client, &etcd, PREFIX, &ready, PATIENCE).await?;
        Ok(Self {
            etcd,
            baseline,
            servers,
            ready,
            ports,
            client,
            users,
        })
    }
}

/// 1. Every instance, one at a time: SIGTERM (deregister, grace, GOAWAY, drain), start again
///    on the same port, register again. No call fails; each takes traffic again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart() -> Result<()> {
    init_tracing();
    let Three {
        etcd,
        baseline,
        mut servers,
        ready,
        ports,
        client,
        users,
    } = Three::start().await?;

    let load = Load::start(&users, CALLERS, PERIOD);
    let mut slowest = Duration::ZERO;
    let mut rss = Vec::new();
    for server in &mut servers {
        let (name, port) = (server.name().to_owned(), server.addr().port());
        let status = server.terminate().await?;
        ensure!(status.success(), "{name} exited with {status}");
        let restarted = Instant::now();
        *server = registered(&etcd, &name, port, 500).await?;
        converge(&client, &etcd, PREFIX, &ready, PATIENCE).await?;
        slowest = slowest.max(restarted.elapsed());
        let served = load.served_by(&name);
        load.wait_served(&name, served, 20).await?;
        rss.push(Census::take()?.rss_kib);
    }
    let report = load.finish().await?;
    converge(&client, &etcd, PREFIX, &ready, PATIENCE).await?;
    one_connection_each(&ports).await?;
    println!(
        "rolling restart: RSS {} KiB after the first restart, {} KiB after the last",
        rss[0],
        rss[rss.len() - 1]
    );
    drop_client(client, users, &ports).await?;
    drop(servers);
    Census::settle_to(baseline, SLACK).await?;
    summary("rolling-restart", &report, slowest)
}

/// 2. kill -9 of an instance, started again on the same port at once: default retries hide
///    the calls in flight on it; it takes traffic again once it has registered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_and_restart_on_the_same_port() -> Result<()> {
    init_tracing();
    let Three {
        etcd,
        baseline,
        mut servers,
        ready,
        ports,
        client,
        users,
    } = Three::start().await?;

    let load = Load::start(&users, CALLERS, PERIOD);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let port = servers[1].addr().port();
    servers[1].kill();
    let killed = Instant::now();
    servers[1] = registered(&etcd, "b", port, 500).await?;
    let served = load.served_by("b");
    load.wait_served("b", served, 20).await?;
    let converged = converge(&client, &etcd, PREFIX, &ready, PATIENCE).await?;
    let took = killed.elapsed().max(converged);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = load.finish().await?;
    for name in ["a", "b", "c"] {
        ensure!(
            report.by_instance.get(name).copied().unwrap_or(0) > 0,
            "{name} served nothing: {report:?}"
        );
    }
    one_connection_each(&ports).await?;
    drop_client(client, users, &ports).await?;
    drop(servers);
    Census::settle_to(baseline, SLACK).await?;
    summary("kill-9-restart", &report, took)
}

/// Instances `cN` joining and leaving until `stop` (at most 60 steps): each step starts one
/// (it registers itself) and, while more than two run, SIGTERMs the oldest. Returns those
/// still running and when the last step ended.
async fn churn(
    hosts: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<(Vec<ServerProcess>, Instant)> {
    let mut running: Vec<ServerProcess> = Vec::new();
    let mut last = Instant::now();
    for step in 0..60 {
        if *stop.borrow() {
            break;
        }
        let name = format!("c{step}");
        let args = [
            "--etcd",
            &hosts,
            "--key",
            KEY,
            "--ttl",
            "3",
            "--grace-ms",
            "200",
        ];
        running.push(ServerProcess::spawn_with(test_server(), &name, 0, &args).await?);
        if running.len() > 2 {
            let mut oldest = running.remove(0);
            oldest.terminate().await?;
        }
        last = Instant::now();
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    Ok((running, last))
}

/// The `(key, addr)` pairs `etcd` should hold: the healthy instances and the churn survivors.
fn expected_pairs(healthy: &[TestServer], churned: &[ServerProcess]) -> Vec<(String, String)> {
    let mut pairs: Vec<(String, String)> = healthy
        .iter()
        .map(|s| (format!("{PREFIX}{}", s.name()), s.addr().to_string()))
        .chain(
            churned
                .iter()
                .map(|s| (format!("{PREFIX}{}", s.name()), s.addr().to_string())),
        )
        .collect();
    pairs.sort();
    pairs
}

/// Waits until etcd and the client hold `expected`; returns how long after etcd the client
/// did (zero if it was first), and when it did.
async fn converged_after_etcd(
    client: &Client,
    etcd: &Etcd,
    expected: &[(String, String)],
) -> Result<(Duration, Instant)> {
    let start = Instant::now();
    let (mut in_etcd, mut in_client) = (None, None);
    while in_etcd.is_none() || in_client.is_none() {
        if in_client.is_none() && client_pairs(&client.balancer().snapshot()) == expected {
            in_client = Some(Instant::now());
        }
        if in_etcd.is_none() && etcd_pairs(etcd, PREFIX).await? == expected {
            in_etcd = Some(Instant::now());
        }
        if start.elapsed() > PATIENCE {
            bail!(
                "not converged within {PATIENCE:?}: etcd {:?}, client {:?}, expected {expected:?}",
                etcd_pairs(etcd, PREFIX).await?,
                client_pairs(&client.balancer().snapshot())
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (in_etcd, in_client) = (in_etcd.unwrap_or(start), in_client.unwrap_or(start));
    Ok((in_client.saturating_duration_since(in_etcd), in_client))
}

/// 3. A 3-member cluster: the leader killed (-9) during instance churn, then, once it is back,
///    the member the client watches. No call fails; the client holds what etcd holds within
///    3 s of the last change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_leader_and_watched_member_killed_during_churn() -> Result<()> {
    init_tracing();
    let mut etcd = Etcd::start_cluster(3).await?;
    let baseline = Census::take()?;
    let healthy = healthy(&etcd, "h", 3).await?;
    let ready = addrs(healthy.iter().map(|s| s.addr()));
    let ports: Vec<u16> = healthy.iter().map(|s| s.addr().port()).collect();
    let (client, users) = connect(&etcd, Duration::from_secs(2)).await?;
    converge(&client, &etcd, PREFIX, &ready, PATIENCE).await?;

    let load = Load::start(&users, CALLERS, PERIOD);
    let (stop_churn, stop) = tokio::sync::watch::channel(false);
    let churn = tokio::spawn(churn(etcd.hosts(), stop));
    tokio::time::sleep(Duration::from_millis(800)).await;
    let leader = etcd.leader().await?;
    etcd.kill(leader);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    etcd.restart(leader).await?;
    let watched = watched_member(&etcd).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    etcd.kill(watched);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_churn.send_replace(true);
    let (churned, last_step) = churn.await??;
    let expected = expected_pairs(&healthy, &churned);
    let (behind_etcd, in_client) = converged_after_etcd(&client, &etcd, &expected).await?;
    let after_last_change = in_client.saturating_duration_since(last_step);
    ensure!(
        behind_etcd <= Duration::from_secs(3),
        "the client converged {behind_etcd:?} after etcd (leader {leader}, watched {watched})"
    );
    let mut live = ready.clone();
    live.extend(churned.iter().map(|s| s.addr().to_string()));
    converge(&client, &etcd, PREFIX, &live, PATIENCE).await?;
    let report = load.finish().await?;
    // The survivors leave; the client follows.
    for mut server in churned {
        server.terminate().await?;
    }
    converge(&client, &etcd, PREFIX, &ready, PATIENCE).await?;
    one_connection_each(&ports).await?;
    drop_client(client, users, &ports).await?;
    drop(healthy);
    Census::settle_to(baseline, SLACK).await?;
    println!(
        "etcd-member-kills: the client matched etcd {} ms after etcd had the last change",
        behind_etcd.as_millis()
    );
    summary("etcd-member-kills", &report, after_last_change)
}

/// 4. etcd entirely down for 20 s under load: the instances keep serving; an instance started
///    meanwhile registers (its registrar retries) and the client has it within 3 s of etcd's
///    return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_down_for_twenty_seconds() -> Result<()> {
    init_tracing();
    let mut etcd = Etcd::start().await?;
    let baseline = Census::take()?;
    let healthy = healthy(&etcd, "h", 3).await?;
    let ready = addrs(healthy.iter().map(|s| s.addr()));
    let ports: Vec<u16> = healthy.iter().map(|s| s.addr().port()).collect();
    let (client, users) = connect(&etcd, Duration::from_secs(2)).await?;
    converge(&client, &etcd, PREFIX, &ready, PATIENCE).await?;

    let load = Load::start(&users, CALLERS, PERIOD);
    etcd.kill_all();
    let down = Instant::now();
    let mut late = registered(&etcd, "late", 0, 200).await?;
    let late_key = format!("{PREFIX}late");
    let late_addr = late.addr().to_string();
    tokio::time::sleep(Duration::from_secs(20).saturating_sub(down.elapsed())).await;
    let snapshot = client.balancer().snapshot();
    ensure!(
        client_pairs(&snapshot).len() == 3 && snapshot.ready() == 3,
        "etcd's absence changed the instance set: {snapshot:#?}"
    );
    ensure!(load.failures() == 0, "calls failed while etcd was down");
    etcd.restart_all().await?;
    let back = Instant::now();
    let visible = loop {
        let snapshot = client.balancer().snapshot();
        if snapshot
            .subchannels
            .iter()
            .any(|s| s.key == late_key && s.addr == late_addr)
        {
            break back.elapsed();
        }
        if back.elapsed() > PATIENCE {
            bail!("the instance registered while etcd was down never appeared: {snapshot:#?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    let mut live = ready.clone();
    live.push(late_addr.clone());
    converge(&client, &etcd, PREFIX, &live, PATIENCE).await?;
    load.wait_served("late", 0, 20).await?;
    let report = load.finish().await?;
    ensure!(
        visible <= Duration::from_secs(3),
        "the instance registered while etcd was down appeared {visible:?} after etcd's return"
    );
    late.terminate().await?;
    converge(&client, &etcd, PREFIX, &ready, PATIENCE).await?;
    one_connection_each(&ports).await?;
    drop_client(client, users, &ports).await?;
    drop(healthy);
    drop(late);
    Census::settle_to(baseline, SLACK).await?;
    summary("etcd-down-20s", &report, visible)
}

/// Applies `ops` in order (a put where there is a value, a delete where there is none), each
/// retried through an election.
async fn write_all(writer: &etcd_client::Client, ops: &[(String, Option<String>)]) -> Result<()> {
    for (key, value) in ops {
        retry(PATIENCE, || {
            let mut writer = writer.clone();
            async move {
                match value {
                    Some(v) => {
                        writer.put(key.as_str(), v.as_str(), None).await?;
                    }
                    None => {
                        writer.delete(key.as_str(), None).await?;
                    }
                }
                Ok(())
            }
        })
        .await?;
    }
    Ok(())
}

/// 5. The member the client watches frozen while instances come, go and move, and the store
///    is compacted past the client's revision; then killed. The client re-lists and holds
///    exactly what etcd holds: nothing twice, nothing deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_while_the_watch_is_down() -> Result<()> {
    init_tracing();
    let mut etcd = Etcd::start_cluster(3).await?;
    let baseline = Census::take()?;
    let mut servers = healthy(&etcd, "h", 6).await?;
    let (client, users) = connect(&etcd, Duration::from_secs(2)).await?;
    converge(
        &client,
        &etcd,
        PREFIX,
        &addrs(servers.iter().map(|s| s.addr())),
        PATIENCE,
    )
    .await?;
    let watched = watched_member(&etcd).await?;
    let other = (0..3).find(|i| *i != watched).context("three members")?;
    let writer = etcd.client_of(other).await?;

    let load = Load::start(&users, CALLERS, PERIOD);
    tokio::time::sleep(Duration::from_millis(300)).await;
    etcd.stop(watched)?;
    // h0 and h1 leave, h2 moves to a new server, n0 and n1 join: all unseen by the client.
    // (If the frozen member led the cluster, the writes wait for the next election.)
    let moved = TestServer::start("h2-moved").await?;
    let mut ops = vec![
        (format!("{PREFIX}h0"), None),
        (format!("{PREFIX}h1"), None),
        (format!("{PREFIX}h2"), Some(moved.addr().to_string())),
    ];
    for name in ["n0", "n1"] {
        let server = TestServer::start(name).await?;
        ops.push((format!("{PREFIX}{name}"), Some(server.addr().to_string())));
        servers.push(server);
    }
    servers.push(moved);
    for i in 0..40 {
        ops.push((format!("{PREFIX}h3"), Some(servers[3].addr().to_string())));
        if i % 10 == 0 {
            ops.push((format!("{PREFIX}gone{i}"), Some("127.0.0.1:1".into())));
            ops.push((format!("{PREFIX}gone{i}"), None));
        }
    }
    write_all(&writer, &ops).await?;
    etcd.compact().await?;
    etcd.kill(watched);
    let killed = Instant::now();
    let live: Vec<String> = servers
        .iter()
        .filter(|s| !["h0", "h1", "h2"].contains(&s.name()))
        .map(|s| s.addr().to_string())
        .collect();
    converge(&client, &etcd, PREFIX, &live, PATIENCE).await?;
    let converged = killed.elapsed();
    let snapshot = client.balancer().snapshot();
    let keys: Vec<&str> = snapshot
        .subchannels
        .iter()
        .map(|s| s.key.as_str())
        .collect();
    let mut unique = keys.clone();
    unique.sort_unstable();
    unique.dedup();
    ensure!(
        unique.len() == keys.len(),
        "an instance is held twice: {keys:?}"
    );
    ensure!(
        !keys
            .iter()
            .any(|k| k.ends_with("/h0") || k.ends_with("/h1") || k.contains("gone")),
        "a deleted instance is still held: {keys:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = load.finish().await?;
    let ports: Vec<u16> = servers
        .iter()
        .filter(|s| live.contains(&s.addr().to_string()))
        .map(|s| s.addr().port())
        .collect();
    one_connection_each(&ports).await?;
    drop(writer);
    drop_client(client, users, &ports).await?;
    drop(servers);
    Census::settle_to(baseline, SLACK).await?;
    summary("compaction-watch-down", &report, converged)
}

/// 6. One instance accepts TCP and never answers, another answers HTTP/1.1: neither is ever
///    READY, no call outlives its deadline, and the two healthy instances serve everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_that_never_speak_http2() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let baseline = Census::take()?;
    let servers = healthy(&etcd, "h", 2).await?;
    let black_hole = BlackHoleServer::start().await?;
    let http1 = Http1Server::start().await?;
    put(&etcd, "black-hole", black_hole.addr()).await?;
    put(&etcd, "http1", http1.addr()).await?;
    let ready = addrs(servers.iter().map(|s| s.addr()));
    let ports: Vec<u16> = servers.iter().map(|s| s.addr().port()).collect();
    let deadline = Duration::from_secs(1);
    let (client, users) = connect(&etcd, deadline).await?;
    let converged = converge(&client, &etcd, PREFIX, &ready, PATIENCE).await?;

    let load = Load::start(&users, CALLERS, PERIOD);
    let bad = [black_hole.addr().to_string(), http1.addr().to_string()];
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(4) {
        let snapshot = client.balancer().snapshot();
        for addr in &bad {
            let state = snapshot.by_addr(addr).map(|s| s.state);
            ensure!(
                state.is_some() && state != Some(ConnectivityState::Ready),
                "{addr} is {state:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let report = load.finish().await?;
    ensure!(
        report.slowest <= deadline + Duration::from_millis(500),
        "a call took {:?}, past its deadline of {deadline:?}",
        report.slowest
    );
    ensure!(
        black_hole.accepted() > 0 && http1.accepted() > 0,
        "the client never tried them"
    );
    for name in ["h0", "h1"] {
        ensure!(
            report.by_instance.get(name).copied().unwrap_or(0) > 0,
            "{name} served nothing"
        );
    }
    one_connection_each(&ports).await?;
    drop_client(client, users, &ports).await?;
    drop((servers, black_hole, http1));
    Census::settle_to(baseline, SLACK).await?;
    summary("never-http2", &report, converged)
}

/// What garbage writers put under the prefix: undecodable values, bad addresses, and valid
/// registrations of addresses where nothing listens.
fn garbage(rng: &mut Lcg) -> Vec<u8> {
    match rng.below(14) {
        0 => Vec::new(),
        1 => b"{".to_vec(),
        2 => vec![0xff, 0xfe, 0x00, 0x80],
        3 => b"not an address".to_vec(),
        4 => b"127.0.0.1:99999".to_vec(),
        5 => b"[::1".to_vec(),
        6 => br#"{"Addr":5}"#.to_vec(),
        7 => br#"{"Op":0,"Addr":"","Metadata":null}"#.to_vec(),
        8 => br#"{"endpoints":["grpc://:0","http://x"],"metadata":{"weight":"-1"}}"#.to_vec(),
        9 => br#"{"nodes":[{"address":null},{"address":"::::"}]}"#.to_vec(),
        10 => br#"{"endpoints":"grpc://127.0.0.1:2"}"#.to_vec(),
        11 => b"127.0.0.1:1".to_vec(),
        12 => br#"{"Op":0,"Addr":"127.0.0.1:3"}"#.to_vec(),
        _ if rng.below(20) == 0 => vec![b'x'; 1 << 20],
        _ => br#"[1,2,3]"#.to_vec(),
    }
}

/// 7. Garbage registrations appearing and disappearing under the prefix as fast as etcd
///    takes them, for 3 s: no panic, no failed call, the healthy instances' connections
///    untouched, and the client ends holding what etcd holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_registrations_at_a_high_rate() -> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let baseline = Census::take()?;
    let servers = healthy(&etcd, "h", 3).await?;
    let ready = addrs(servers.iter().map(|s| s.addr()));
    let ports: Vec<u16> = servers.iter().map(|s| s.addr().port()).collect();
    let (client, users) = connect(&etcd, Duration::from_secs(2)).await?;
    converge(&client, &etcd, PREFIX, &ready, PATIENCE).await?;
    let connects = |client: &Client| -> Vec<(String, u64)> {
        let snapshot = client.balancer().snapshot();
        ready
            .iter()
            .map(|a| (a.clone(), snapshot.by_addr(a).map_or(0, |s| s.connects)))
            .collect()
    };
    let before = connects(&client);

    let load = Load::start(&users, CALLERS, PERIOD);
    let mut writer = etcd.client().await?;
    let mut rng = Lcg(2026);
    let start = Instant::now();
    let mut writes = 0u64;
    while start.elapsed() < Duration::from_secs(3) && writes < 20_000 {
        let key = format!("{PREFIX}g{:02}", rng.below(24));
        if rng.below(3) == 0 {
            writer.delete(key, None).await?;
        } else {
            writer.put(key, garbage(&mut rng), None).await?;
        }
        writes += 1;
        if writes.is_multiple_of(64) {
            let snapshot = client.balancer().snapshot();
            for addr in &ready {
                let state = snapshot.by_addr(addr).map(|s| s.state);
                ensure!(
                    state == Some(ConnectivityState::Ready),
                    "{addr} is {state:?} under garbage"
                );
            }
        }
    }
    let converged_from = Instant::now();
    converge(&client, &etcd, PREFIX, &ready, PATIENCE).await?;
    let converged = converged_from.elapsed();
    ensure!(
        connects(&client) == before,
        "a healthy instance reconnected: {before:?} → {:?}",
        connects(&client)
    );
    let report = load.finish().await?;
    // The garbage goes; the client is back to the healthy three.
    writer
        .delete(
            format!("{PREFIX}g"),
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await?;
    converge(&client, &etcd, PREFIX, &ready, PATIENCE).await?;
    ensure!(
        client_pairs(&client.balancer().snapshot()).len() == 3,
        "garbage left behind"
    );
    println!("{writes} garbage writes in {:?}", converged_from - start);
    one_connection_each(&ports).await?;
    drop(writer);
    drop_client(client, users, &ports).await?;
    drop(servers);
    Census::settle_to(baseline, SLACK).await?;
    summary("garbage-registrations", &report, converged)
}
