//! A fleet under load, as the resilience and leak scenarios set it up: instances registered
//! under `svc/`, a client of `svc` over every etcd member with a typed stub, and the checks each
//! scenario ends with (one connection per instance, none once the client is gone).

use std::time::Duration;

use anyhow::Result;
use switchboard::{Client, ClientConfig};
use switchboard_testkit::{Etcd, TestServer};

use crate::census::{server_connections, wait_count};
use crate::load::User;
use crate::{PATIENCE, retry};

/// The service key; instances are `svc/NAME`.
pub const KEY: &str = "svc";
/// The prefix instances are registered under.
pub const PREFIX: &str = "svc/";

/// 4 callers, one call every 10 ms each: 400 RPS.
pub const CALLERS: usize = 4;
/// How often each caller calls.
pub const PERIOD: Duration = Duration::from_millis(10);

/// Tasks and descriptors that may remain above the baseline (a runtime's own bookkeeping).
pub const SLACK: usize = 2;

/// A client of `svc` over every member of `etcd`, with a typed stub.
pub async fn connect(etcd: &Etcd, timeout: Duration) -> Result<(Client, User)> {
    let mut config = ClientConfig::etcd(etcd.endpoints(), KEY);
    config.timeout = Some(timeout);
    config.dial_timeout = Some(PATIENCE);
    config.drain_timeout = Some(Duration::from_secs(5));
    let client = Client::connect(config).await?;
    let users = User::new(&client);
    Ok((client, users))
}

/// Registers `svc/NAME` → `addr` with no lease.
pub async fn put(etcd: &Etcd, name: &str, addr: impl ToString) -> Result<()> {
    let (key, addr) = (format!("{PREFIX}{name}"), addr.to_string());
    retry(PATIENCE, || async {
        etcd.client()
            .await?
            .put(key.as_str(), addr.as_str(), None)
            .await?;
        Ok(())
    })
    .await
}

/// In-process instances `prefix0..prefixN`, registered without a lease.
pub async fn healthy(etcd: &Etcd, prefix: &str, n: usize) -> Result<Vec<TestServer>> {
    let mut servers = Vec::new();
    for i in 0..n {
        let server = TestServer::start(&format!("{prefix}{i}")).await?;
        put(etcd, server.name(), server.addr()).await?;
        servers.push(server);
    }
    Ok(servers)
}

/// Addresses as the client's snapshot shows them.
pub fn addrs<'a>(addrs: impl IntoIterator<Item = std::net::SocketAddr> + 'a) -> Vec<String> {
    addrs.into_iter().map(|a| a.to_string()).collect()
}

/// Checks that each instance at `ports` has exactly one connection, from the client.
pub async fn one_connection_each(ports: &[u16]) -> Result<()> {
    for &port in ports {
        wait_count(&format!("connections to :{port}"), 1, || {
            server_connections(port)
        })
        .await?;
    }
    Ok(())
}

/// Drops the client and checks that every instance's connection closes.
pub async fn drop_client(client: Client, users: User, ports: &[u16]) -> Result<()> {
    drop(users);
    drop(client);
    for &port in ports {
        wait_count(
            &format!("connections to :{port} after the client is gone"),
            0,
            || server_connections(port),
        )
        .await?;
    }
    Ok(())
}
