//! `Client` from a config against a real etcd and real servers on 127.0.0.1.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Result;
use switchboard::{Client, ClientConfig};
use switchboard_testkit::proto::user::GetUserInfoRequest;
use switchboard_testkit::proto::user::user_client::UserClient;
use switchboard_testkit::{Etcd, FaultProxy, TestServer};
use tonic::Code;

#[tokio::test]
async fn a_client_from_an_etcd_config_serves_every_instance_with_a_default_deadline() -> Result<()>
{
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let servers = [
        TestServer::start("u1").await?,
        TestServer::start("u2").await?,
        TestServer::start("u3").await?,
    ];
    for (i, s) in servers.iter().enumerate() {
        kv.put(format!("user.rpc/{i}"), s.addr().to_string(), None)
            .await?;
    }
    let yaml = format!(
        "Etcd:\n  Hosts: [{}]\n  Key: user.rpc\nTimeout: 300\n",
        etcd.endpoint(0).trim_start_matches("http://")
    );
    let client = Client::connect(ClientConfig::from_yaml(&yaml)?).await?;
    let mut users = UserClient::new(client.channel());
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = BTreeSet::new();
    while seen.len() < 3 && Instant::now() < deadline {
        seen.insert(
            users
                .get_user_info(GetUserInfoRequest { id: 1 })
                .await?
                .into_inner()
                .instance,
        );
    }
    assert_eq!(
        seen,
        BTreeSet::from(["u1".into(), "u2".into(), "u3".into()])
    );

    // The default deadline (300 ms) applies to a call that sets none.
    for s in &servers {
        s.set_delay(Duration::from_secs(2));
    }
    let started = Instant::now();
    let status = users
        .get_user_info(GetUserInfoRequest { id: 1 })
        .await
        .expect_err("slower than the deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    // A call's own deadline wins.
    let mut request = tonic::Request::new(GetUserInfoRequest { id: 1 });
    request.set_timeout(Duration::from_secs(10));
    assert!(users.get_user_info(request).await.is_ok());
    Ok(())
}

#[tokio::test]
async fn connect_returns_at_once_as_go_zero_and_waits_for_a_ready_instance_with_non_block_false()
-> Result<()> {
    let yaml = "Endpoints: [127.0.0.1:1]\nDialTimeout: 300ms\nBackoff: {Initial: 50ms}\n";
    let started = Instant::now();
    let error = Client::connect(ClientConfig::from_yaml(&format!(
        "{yaml}NonBlock: false\n"
    ))?)
    .await
    .expect_err("nothing listens on port 1");
    assert!(error.is_unavailable(), "{error}");
    assert!(error.to_string().contains("no READY instance"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // go-zero's default: NonBlock true; the RPC says what went wrong.
    let lazy = Client::connect(ClientConfig::from_yaml(yaml)?).await?;
    let mut users = UserClient::new(lazy.channel());
    let status = users
        .get_user_info(GetUserInfoRequest { id: 1 })
        .await
        .expect_err("no instance");
    assert!(
        matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded),
        "{status:?}"
    );
    Ok(())
}

#[tokio::test]
async fn go_zeros_etcd_targets_old_and_new_resolve_through_etcd() -> Result<()> {
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let server = TestServer::start("t1").await?;
    kv.put("svc/user.rpc/1", server.addr().to_string(), None)
        .await?;
    let hosts = etcd.endpoint(0).trim_start_matches("http://").to_owned();
    // go-zero today (the key URL-encoded), before, and its discov:// alias.
    for target in [
        format!("etcd:///{hosts}?key=svc%2Fuser.rpc"),
        format!("etcd://{hosts}/svc/user.rpc"),
        format!("discov:///{hosts}?key=svc/user.rpc"),
    ] {
        let yaml = format!("Target: \"{target}\"\n");
        let client = Client::connect(ClientConfig::from_yaml(&yaml)?).await?;
        let reply = UserClient::new(client.channel())
            .get_user_info(GetUserInfoRequest { id: 1 })
            .await?
            .into_inner();
        assert_eq!(reply.instance, "t1", "{target}");
    }
    for bad in ["etcd:///h:1", "etcd:///?key=k", "k8s://ns/svc:8080"] {
        let error = ClientConfig::from_yaml(&format!("Target: \"{bad}\"\n"))
            .expect_err(bad)
            .to_string();
        assert!(error.contains("Target"), "{bad}: {error}");
    }
    Ok(())
}

/// Waits, at most 30 s, until the client's picker holds `addr` and nothing else.
async fn until_only_picked(client: &Client, addr: SocketAddr) {
    let want = BTreeSet::from([addr.to_string()]);
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let picked: BTreeSet<String> = client
            .balancer()
            .snapshot()
            .subchannels
            .into_iter()
            .filter(|s| s.in_picker)
            .map(|s| s.addr)
            .collect();
        if picked == want {
            return;
        }
        assert!(Instant::now() < until, "{:?}", client.balancer().snapshot());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// etcd cut off without a word, the watch's connection lost for good (as when the network comes
/// back under a new address): the client serves the last set meanwhile, and once etcd answers
/// again its set catches up within about twice `Etcd.WatchCheckInterval`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_cut_off_silently_catches_up_within_twice_the_watch_check_interval() -> Result<()> {
    const CHECK: Duration = Duration::from_secs(1);
    let etcd = Etcd::start().await?;
    let proxy = FaultProxy::start(etcd.endpoint(0).trim_start_matches("http://").parse()?).await?;
    let mut kv = etcd.client().await?;
    let (old, new) = (
        TestServer::start("old").await?,
        TestServer::start("new").await?,
    );
    kv.put("cut.rpc/1", old.addr().to_string(), None).await?;
    let yaml = format!(
        "Etcd:\n  Hosts: [{}]\n  Key: cut.rpc\n  WatchCheckInterval: {}ms\nTimeout: 5s\n",
        proxy.addr(),
        CHECK.as_millis()
    );
    let client = Client::connect(ClientConfig::from_yaml(&yaml)?).await?;
    let mut users = UserClient::new(client.channel());
    until_only_picked(&client, old.addr()).await;

    // The network to etcd drops: the watch's connection goes silent for good, and new ones hang
    // until it returns. Meanwhile the instance set changes.
    proxy.pause();
    proxy.strand();
    kv.put("cut.rpc/2", new.addr().to_string(), None).await?;
    kv.delete("cut.rpc/1", None).await?;
    // For half a check interval the client serves the set it had.
    let cut = Instant::now();
    while cut.elapsed() < CHECK / 2 {
        let reply = users.get_user_info(GetUserInfoRequest { id: 1 }).await?;
        assert_eq!(reply.into_inner().instance, "old");
    }

    proxy.resume();
    let back = Instant::now();
    until_only_picked(&client, new.addr()).await;
    let took = back.elapsed();
    println!(
        "etcd silent for {:?}: the set caught up {took:?} after it answered again (check {CHECK:?})",
        back - cut
    );
    // Twice the check, a backoff of 1 s at most, and room for a busy machine; with the default
    // check (5 s) it takes about 10 s.
    assert!(took < CHECK * 2 + Duration::from_secs(3), "{took:?}");
    let reply = users.get_user_info(GetUserInfoRequest { id: 1 }).await?;
    assert_eq!(reply.into_inner().instance, "new");
    Ok(())
}
