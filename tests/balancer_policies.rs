//! The policies large fleets need, against real tonic servers on 127.0.0.1: ring_hash by a
//! request key, least_request, random subsetting, zone locality, and a policy of one's own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, ensure};
use switchboard_balancer::picker::{
    BuildPicker, Choice, Endpoint, PickByIndex, PickRequest, RequestHash,
};
use switchboard_balancer::{Balancer, Locality, Policy, RingHashOptions};
use switchboard_resolver::{Instance, Update};
use switchboard_testkit::TestServer;
use switchboard_testkit::proto::user::GetUserInfoRequest;
use switchboard_tests::balancing::{
    balance_over, balancer as start_balancer, client, instance, send, servers, wait_ready,
    wait_snapshot,
};
use switchboard_tests::init_tracing;

const T: Duration = Duration::from_secs(10);

/// One call carrying `x-user-id: user` (and a `RequestHash` if given); the instance that
/// served it.
async fn call_as(balancer: &Balancer, user: &str, hash: Option<u64>) -> Result<String> {
    let mut request = tonic::Request::new(GetUserInfoRequest { id: 1 });
    request.set_timeout(T);
    request.metadata_mut().insert("x-user-id", user.parse()?);
    if let Some(hash) = hash {
        request.extensions_mut().insert(RequestHash(hash));
    }
    Ok(client(balancer)
        .get_user_info(request)
        .await?
        .into_inner()
        .instance)
}

#[tokio::test]
async fn ring_hash_keeps_each_key_on_one_instance_and_moves_only_the_keys_of_one_that_leaves()
-> Result<()> {
    init_tracing();
    let servers = servers(&["r1", "r2", "r3", "r4"]).await?;
    let (publisher, balancer) = balance_over(
        Balancer::builder()
            .policy(Policy::RingHash)
            .ring_hash(RingHashOptions {
                hash_header: Some("x-user-id".into()),
                ..RingHashOptions::default()
            }),
        &servers,
    )
    .await?;
    wait_ready(&balancer, 4).await?;

    let users: Vec<String> = (0..60).map(|i| format!("user-{i}")).collect();
    let mut home = BTreeMap::new();
    for user in &users {
        let first = call_as(&balancer, user, None).await?;
        for _ in 0..2 {
            ensure!(
                call_as(&balancer, user, None).await? == first,
                "{user} moved"
            );
        }
        home.insert(user.clone(), first);
    }
    let spread: std::collections::BTreeSet<&String> = home.values().collect();
    ensure!(spread.len() == 4, "60 keys over 4 instances: {home:?}");

    // r2 leaves: its keys move, every other key stays where it was.
    send(&publisher, Update::Remove("r2".into())).await?;
    wait_snapshot(&balancer, "r2 out of the picker", |s| {
        s.in_picker() == 3 && s.subchannels.iter().all(|c| c.key != "r2" || !c.in_picker)
    })
    .await?;
    for user in &users {
        let now = call_as(&balancer, user, None).await?;
        if home[user] == "r2" {
            ensure!(now != "r2", "{user} still on r2");
        } else {
            ensure!(
                now == home[user],
                "{user} moved from {} to {now}",
                home[user]
            );
        }
    }
    // A call option's hash takes precedence over the header.
    let by_option = call_as(&balancer, "user-0", Some(12345)).await?;
    for user in ["user-1", "user-2", "user-3"] {
        ensure!(call_as(&balancer, user, Some(12345)).await? == by_option);
    }
    Ok(())
}

#[tokio::test]
async fn least_request_keeps_calls_away_from_a_slow_instance() -> Result<()> {
    init_tracing();
    let servers = servers(&["fast1", "fast2", "slow"]).await?;
    servers[2].set_delay(Duration::from_millis(200));
    let (_publisher, balancer) = balance_over(
        Balancer::builder()
            .policy(Policy::LeastRequest)
            .least_request_choices(3),
        &servers,
    )
    .await?;
    wait_ready(&balancer, 3).await?;
    // 16 callers, 30 calls each: the slow instance holds its calls for 200 ms, so with three
    // candidates per pick it is almost never the least loaded while calls pile on it.
    let mut callers = Vec::new();
    for i in 0..16 {
        let balancer = balancer.clone();
        callers.push(tokio::spawn(async move {
            for _ in 0..30 {
                call_as(&balancer, &format!("c{i}"), None).await?;
            }
            anyhow::Ok(())
        }));
    }
    for caller in callers {
        caller.await??;
    }
    let (fast, slow) = (
        servers[0].served() + servers[1].served(),
        servers[2].served(),
    );
    ensure!(fast + slow == 480);
    ensure!(slow * 10 < fast, "slow served {slow}, the fast ones {fast}");
    Ok(())
}

#[tokio::test]
async fn subsetting_connects_to_a_subset_and_replaces_a_member_that_leaves() -> Result<()> {
    init_tracing();
    let names = ["s1", "s2", "s3", "s4", "s5", "s6"];
    let servers = servers(&names).await?;
    let (publisher, balancer) =
        balance_over(Balancer::builder().subset_size(Some(2)), &servers).await?;
    let s = wait_ready(&balancer, 2).await?;
    ensure!(s.subchannels.len() == 2, "two sub-channels: {s:?}");
    let mut served = BTreeMap::<String, usize>::new();
    for i in 0..40 {
        *served
            .entry(call_as(&balancer, &i.to_string(), None).await?)
            .or_default() += 1;
    }
    let members: Vec<String> = served.keys().cloned().collect();
    ensure!(
        members.len() == 2,
        "calls go to the two members only: {served:?}"
    );
    let connected = servers.iter().filter(|s| s.connections() > 0).count();
    ensure!(connected == 2, "{connected} servers have a connection");

    // A member leaves: one other instance takes its place; the other member stays.
    send(&publisher, Update::Remove(members[0].clone())).await?;
    let s = wait_snapshot(&balancer, "a new member READY", |s| {
        s.in_picker() == 2 && s.subchannels.iter().all(|c| c.key != members[0])
    })
    .await?;
    let keys: Vec<&str> = s.subchannels.iter().map(|c| c.key.as_str()).collect();
    ensure!(keys.contains(&members[1].as_str()), "{keys:?}");
    Ok(())
}

fn zoned(server: &TestServer, zone: &str) -> Instance {
    instance(server.name(), server.addr())
        .with_metadata([("zone".to_owned(), zone.to_owned())].into())
}

#[tokio::test]
async fn locality_keeps_calls_in_the_zone_and_spills_over_when_it_fails() -> Result<()> {
    init_tracing();
    let mut servers = servers(&["a1", "a2", "b1"]).await?;
    let (publisher, balancer) =
        start_balancer(Balancer::builder().locality(Some(Locality::zone("zone-a"))))?;
    let all = vec![
        zoned(&servers[0], "zone-a"),
        zoned(&servers[1], "zone-a"),
        zoned(&servers[2], "zone-b"),
    ];
    send(&publisher, Update::Reset(all)).await?;
    wait_snapshot(
        &balancer,
        "three READY, the zone's two in the picker",
        |s| s.ready() == 3 && s.in_picker() == 2,
    )
    .await?;
    for i in 0..30 {
        let at = call_as(&balancer, &i.to_string(), None).await?;
        ensure!(at.starts_with('a'), "call {i} left the zone: {at}");
    }
    // Half the zone is gone (below 70 %): calls spill over to zone-b too.
    servers.remove(0).abort();
    wait_snapshot(&balancer, "a2 and b1 in the picker", |s| {
        s.in_picker() == 2 && s.ready() == 2
    })
    .await?;
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..20 {
        seen.insert(call_as(&balancer, &i.to_string(), None).await?);
    }
    ensure!(seen.len() == 2 && seen.contains("b1"), "{seen:?}");
    Ok(())
}

/// A policy of one's own: the shard named by `x-shard` (an index), else the first.
struct ByShard;

struct ShardPicker(usize);

impl PickByIndex for ShardPicker {
    fn pick(&self, request: &PickRequest<'_>) -> Choice {
        if self.0 == 0 {
            return Choice::Queue;
        }
        let shard = request
            .headers
            .get("x-shard")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        match shard {
            Some(i) if i < self.0 => Choice::Index(i),
            Some(i) => Choice::Fail(tonic::Status::invalid_argument(format!("no shard {i}"))),
            None => Choice::Index(0),
        }
    }
}

impl BuildPicker for ByShard {
    fn name(&self) -> &str {
        "by_shard"
    }

    fn build(&self, ready: Vec<Arc<dyn Endpoint>>, _seed: u64) -> Box<dyn PickByIndex> {
        Box::new(ShardPicker(ready.len()))
    }
}

#[tokio::test]
async fn a_policy_of_ones_own_routes_by_metadata() -> Result<()> {
    init_tracing();
    let servers = servers(&["k0", "k1", "k2"]).await?;
    let (_publisher, balancer) =
        balance_over(Balancer::builder().custom_policy(ByShard), &servers).await?;
    wait_ready(&balancer, 3).await?;
    wait_snapshot(&balancer, "three in the picker", |s| s.in_picker() == 3).await?;
    for shard in 0..3 {
        for _ in 0..5 {
            let mut request = tonic::Request::new(GetUserInfoRequest { id: 1 });
            request.set_timeout(T);
            request
                .metadata_mut()
                .insert("x-shard", shard.to_string().parse()?);
            let at = client(&balancer)
                .get_user_info(request)
                .await?
                .into_inner()
                .instance;
            ensure!(at == format!("k{shard}"), "shard {shard} went to {at}");
        }
    }
    let mut request = tonic::Request::new(GetUserInfoRequest { id: 1 });
    request.metadata_mut().insert("x-shard", "7".parse()?);
    let status = client(&balancer)
        .get_user_info(request)
        .await
        .err()
        .map(|s| (s.code(), s.message().to_owned()));
    ensure!(
        status == Some((tonic::Code::InvalidArgument, "no shard 7".into())),
        "{status:?}"
    );
    Ok(())
}
