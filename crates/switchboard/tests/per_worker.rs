//! `PerWorker`: each of several current-thread runtimes gets its own connections to every
//! instance from one client, all following the same etcd watch, against a real etcd and real
//! tonic servers.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use switchboard::balancer::ConnectivityState;
use switchboard::{Client, ClientConfig};
use switchboard_testkit::proto::user::GetUserInfoRequest;
use switchboard_testkit::proto::user::user_client::UserClient;
use switchboard_testkit::{Etcd, TestServer};
use tokio::sync::{mpsc, oneshot};

/// How long a change may take to reach every worker.
const PATIENCE: Duration = Duration::from_secs(20);

/// What a worker is asked to do, on its own thread.
enum Ask {
    /// Make this many calls; answer who served them.
    Calls(usize, oneshot::Sender<Result<BTreeMap<String, usize>>>),
    /// Answer the READY sub-channels' addresses and the calls each has started.
    Snapshot(oneshot::Sender<Vec<(String, u64)>>),
}

/// A thread with a current-thread runtime and its own `per_worker` client.
struct Worker {
    asks: mpsc::UnboundedSender<Ask>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl Worker {
    fn start(client: &Client) -> Result<Self> {
        let client = client.clone();
        let (asks, mut inbox) = mpsc::unbounded_channel::<Ask>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let local = client.per_worker()?;
                let mut users = UserClient::new(local.channel());
                while let Some(ask) = inbox.recv().await {
                    match ask {
                        Ask::Calls(n, reply) => {
                            let mut served = BTreeMap::new();
                            let mut result = Ok(());
                            for id in 0..n {
                                match users
                                    .get_user_info(GetUserInfoRequest { id: id as i64 })
                                    .await
                                {
                                    Ok(r) => {
                                        *served.entry(r.into_inner().instance).or_insert(0) += 1
                                    }
                                    Err(e) => {
                                        result = Err(anyhow::anyhow!("call {id}: {e}"));
                                        break;
                                    }
                                }
                            }
                            let _ = reply.send(result.map(|()| served));
                        }
                        Ask::Snapshot(reply) => {
                            let snapshot = local.balancer().snapshot();
                            let ready = snapshot
                                .subchannels
                                .iter()
                                .filter(|s| s.state == ConnectivityState::Ready)
                                .map(|s| (s.addr.clone(), s.calls_started))
                                .collect();
                            let _ = reply.send(ready);
                        }
                    }
                }
                Ok(())
            })
        });
        Ok(Self {
            asks,
            thread: Some(thread),
        })
    }

    async fn calls(&self, n: usize) -> Result<BTreeMap<String, usize>> {
        let (tx, rx) = oneshot::channel();
        self.asks
            .send(Ask::Calls(n, tx))
            .ok()
            .context("the worker stopped")?;
        tokio::time::timeout(PATIENCE, rx).await??
    }

    async fn ready(&self) -> Result<Vec<(String, u64)>> {
        let (tx, rx) = oneshot::channel();
        self.asks
            .send(Ask::Snapshot(tx))
            .ok()
            .context("the worker stopped")?;
        Ok(tokio::time::timeout(PATIENCE, rx).await??)
    }

    /// Waits until this worker's READY sub-channels are exactly `addrs`.
    async fn until_ready(&self, addrs: &[String]) -> Result<()> {
        let started = Instant::now();
        loop {
            let mut ready: Vec<String> = self.ready().await?.into_iter().map(|r| r.0).collect();
            ready.sort();
            if ready == addrs {
                return Ok(());
            }
            if started.elapsed() > PATIENCE {
                bail!("READY {ready:?}, expected {addrs:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the inbox ends the worker's loop; its runtime and client go with the thread.
        let (closed, _) = mpsc::unbounded_channel();
        self.asks = closed;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn register(etcd: &Etcd, key: &str, server: &TestServer) -> Result<()> {
    let mut kv = etcd.client().await?;
    kv.put(key, server.addr().to_string(), None).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_worker_has_its_own_connections_and_follows_the_same_instances() -> Result<()> {
    let etcd = Etcd::start().await?;
    let servers = [
        TestServer::start("a").await?,
        TestServer::start("b").await?,
        TestServer::start("c").await?,
    ];
    register(&etcd, "user.rpc/a", &servers[0]).await?;
    register(&etcd, "user.rpc/b", &servers[1]).await?;
    let yaml = format!(
        "Etcd: {{Hosts: [{}], Key: user.rpc}}\nPerWorker: true\n",
        etcd.endpoints().join(", ")
    );
    let client = Client::connect(ClientConfig::from_yaml(&yaml)?).await?;
    let workers = [Worker::start(&client)?, Worker::start(&client)?];
    let mut two: Vec<String> = servers[..2].iter().map(|s| s.addr().to_string()).collect();
    two.sort();
    for w in &workers {
        w.until_ready(&two).await?;
    }

    // Each worker's calls go over its own connections: every server holds one from the
    // client's own balancer and one from each worker.
    for (i, w) in workers.iter().enumerate() {
        let served = w.calls(40).await?;
        ensure!(
            served.get("a") == Some(&20) && served.get("b") == Some(&20),
            "worker {i}: {served:?}"
        );
        let started: u64 = w.ready().await?.iter().map(|r| r.1).sum();
        ensure!(started == 40, "worker {i} counted {started} calls");
    }
    for s in &servers[..2] {
        ensure!(
            s.connections() == 3,
            "{} holds {} connections",
            s.name(),
            s.connections()
        );
    }
    // The breakers are the client's, for every worker.
    let breakers = client.balancer().snapshot().breakers;
    let requests: u64 = breakers.iter().map(|b| b.requests).sum();
    ensure!(
        requests == 80,
        "the breakers saw {requests} calls: {breakers:?}"
    );
    ensure!(client.balancer().snapshot().subchannels.len() == 2);

    // A PUT and a DELETE in etcd reach every worker, from the one watch.
    register(&etcd, "user.rpc/c", &servers[2]).await?;
    let mut three: Vec<String> = servers.iter().map(|s| s.addr().to_string()).collect();
    three.sort();
    for w in &workers {
        w.until_ready(&three).await?;
        let served = w.calls(30).await?;
        ensure!(served.get("c") == Some(&10), "{served:?}");
    }
    etcd.client().await?.delete("user.rpc/a", None).await?;
    let mut rest: Vec<String> = servers[1..].iter().map(|s| s.addr().to_string()).collect();
    rest.sort();
    for w in &workers {
        w.until_ready(&rest).await?;
        let served = w.calls(20).await?;
        ensure!(!served.contains_key("a"), "{served:?}");
    }
    Ok(())
}

#[tokio::test]
async fn per_worker_needs_the_setting() -> Result<()> {
    let client = Client::connect(ClientConfig::from_yaml("Endpoints: [127.0.0.1:1]\n")?).await?;
    let error = client.per_worker().expect_err("not PerWorker");
    ensure!(error.to_string().contains("PerWorker: true"), "{error}");
    Ok(())
}
