//! Interop with real Go peers, built from Debian's grpc-go 1.33 and etcd 3.4 packages
//! (`conformance/go/switchboard-peer`): switchboard against grpc-go servers configured the ways
//! fleets run them, against instances that etcd's own `endpoints.Manager` registered, and the
//! other way round, a grpc-go `ClientConn` over etcd's naming resolver with `round_robin` calling
//! Rust servers that switchboard registered. Every kind of RPC (unary, server-streaming,
//! client-streaming, bidi) goes through switchboard's channel to a grpc-go server, and a server
//! or client stream the caller drops, a bidi call whose response the caller drops, or a call
//! whose deadline passes, is seen cancelled there; gzip-compressed calls are decoded there; a
//! rolling restart of grpc-go servers under every kind of call, 1 MiB requests among them, fails
//! none.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use etcd_client::GetOptions;
use switchboard::balancer::{ConnectivityState, Health};
use switchboard::{Client, ClientConfig, Server};
use switchboard_resolver::{EtcdConfig, Format, Registrar};
use switchboard_testkit::proto::user::user_client::UserClient;
use switchboard_testkit::proto::user::{
    ChatMessage, Chunk, GetUserInfoRequest, UserInfo, WatchEventsRequest,
};
use switchboard_testkit::{
    Etcd, MixedLoad, ServerProcess, TestServer, child_command, go_client_follows_a_leave, go_conn,
    go_peak, go_peer_bin, user_service,
};
use switchboard_tests::{PATIENCE, init_tracing};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;

/// A grpc-go server process (`switchboard-peer`) named `name`, with extra flags.
async fn go_server(name: &str, args: &[&str]) -> Result<ServerProcess> {
    ServerProcess::spawn_with(&go_peer_bin().await?, name, 0, args).await
}

/// A grpc-go server process whose output a test reads line by line: what the server saw
/// (`open Chat`, `cancelled Chat`, `deadline GetUserInfo`, …); killed when dropped.
struct WatchedGoServer {
    addr: SocketAddr,
    child: tokio::process::Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line read so far, for error messages.
    seen: Vec<String>,
}

impl WatchedGoServer {
    /// Starts `switchboard-peer serve --name NAME --port 0 ARGS…` and waits until it listens.
    async fn start(name: &str, args: &[&str]) -> Result<Self> {
        let bin = go_peer_bin().await?;
        let mut child = tokio::process::Command::from(child_command(&bin))
            .args(["serve", "--name", name, "--port", "0"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let stdout = child.stdout.take().context("a stdout pipe")?;
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child,
            lines,
            seen: Vec::new(),
        };
        let listening = server
            .line(|l| l.starts_with("listening "), PATIENCE)
            .await?;
        server.addr = listening["listening ".len()..]
            .parse()
            .with_context(|| format!("{listening:?}"))?;
        Ok(server)
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Reads lines until one `matches`, at most `limit` in all, and returns it.
    async fn line(&mut self, matches: impl Fn(&str) -> bool, limit: Duration) -> Result<String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, self.lines.recv()).await {
                Ok(Some(line)) => {
                    self.seen.push(line.clone());
                    if matches(&line) {
                        return Ok(line);
                    }
                }
                Ok(None) => bail!("the Go server exited; it printed {:?}", self.seen),
                Err(_) => bail!(
                    "not within {limit:?}; the Go server printed {:?}",
                    self.seen
                ),
            }
        }
    }

    /// Waits, at most `limit`, until it prints `expected`.
    async fn expect(&mut self, expected: &str, limit: Duration) -> Result<()> {
        self.line(|l| l == expected, limit)
            .await
            .with_context(|| format!("waiting for {expected:?}"))?;
        Ok(())
    }

    /// Kills it with SIGKILL and reaps it.
    async fn end(mut self) -> Result<()> {
        self.child.kill().await.context("killing the Go server")
    }
}

/// A switchboard client over fixed endpoints, with extra YAML settings.
async fn static_client(addrs: &[SocketAddr], settings: &str) -> Result<Client> {
    let endpoints: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    let timeout = if settings.contains("Timeout: ") {
        ""
    } else {
        "Timeout: 10s\n"
    };
    let yaml = format!(
        "Endpoints: [{}]\nNonBlock: true\n{timeout}{settings}",
        endpoints.join(", ")
    );
    Ok(Client::connect(ClientConfig::from_yaml(&yaml)?).await?)
}

/// Waits until the client's snapshot satisfies `ok`.
async fn until(client: &Client, what: &str, ok: impl Fn(&Client) -> bool) -> Result<()> {
    let deadline = Instant::now() + PATIENCE;
    while !ok(client) {
        if Instant::now() > deadline {
            bail!(
                "{what}: not within {PATIENCE:?}: {:?}",
                client.balancer().snapshot()
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

fn ready_count(client: &Client) -> usize {
    client.balancer().snapshot().ready()
}

/// `n` calls in sequence: who served each, and the server's detail (`conn=C peak=K`).
async fn calls(client: &Client, n: usize) -> Result<Vec<(String, String)>> {
    let mut users = UserClient::new(client.channel());
    let mut served = Vec::with_capacity(n);
    for id in 0..n {
        let request = GetUserInfoRequest { id: id as i64 };
        let reply = users.get_user_info(request).await?.into_inner();
        served.push((reply.instance, reply.username));
    }
    Ok(served)
}

/// Calls until each of `names` has served one call (at most 1000 calls).
async fn served_by_all(client: &Client, names: &[&str]) -> Result<()> {
    let mut seen = BTreeSet::new();
    for _ in 0..1000 {
        let (instance, _) = calls(client, 1).await?.remove(0);
        seen.insert(instance);
        if names.iter().all(|n| seen.contains(*n)) {
            return Ok(());
        }
    }
    bail!("1000 calls reached only {seen:?} of {names:?}")
}

fn tally(served: &[(String, String)]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for (instance, _) in served {
        *counts.entry(instance.clone()).or_default() += 1;
    }
    counts
}

/// Callers calling until stopped (at most `most` calls each), collecting what each call got.
struct CallLoop {
    stop: Arc<AtomicBool>,
    tasks: JoinSet<Vec<Result<(String, String), tonic::Status>>>,
}

impl CallLoop {
    fn start(client: &Client, callers: usize, most: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = JoinSet::new();
        for caller in 0..callers {
            let mut users = UserClient::new(client.channel());
            let stop = stop.clone();
            tasks.spawn(async move {
                let mut results = Vec::new();
                while !stop.load(Ordering::Relaxed) && results.len() < most {
                    let request = GetUserInfoRequest { id: caller as i64 };
                    results.push(
                        users
                            .get_user_info(request)
                            .await
                            .map(|r| r.into_inner())
                            .map(|r| (r.instance, r.username)),
                    );
                }
                results
            });
        }
        Self { stop, tasks }
    }

    /// Stops the callers; returns the calls served and the failures.
    async fn stop(self) -> Result<(Vec<(String, String)>, Vec<tonic::Status>)> {
        self.stop.store(true, Ordering::Relaxed);
        self.stop_when_done().await
    }

    /// Waits until every caller made its calls; returns the calls served and the failures.
    async fn stop_when_done(mut self) -> Result<(Vec<(String, String)>, Vec<tonic::Status>)> {
        let (mut served, mut failed) = (Vec::new(), Vec::new());
        while let Some(results) = self.tasks.join_next().await {
            for result in results? {
                match result {
                    Ok(s) => served.push(s),
                    Err(status) => failed.push(status),
                }
            }
        }
        Ok((served, failed))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_registered_by_etcds_endpoints_manager_are_called_and_followed_out() -> Result<()>
{
    init_tracing();
    let etcd = Etcd::start().await?;
    let hosts = etcd.hosts();
    let mut servers = Vec::new();
    // g3 is killed later and leaves when its lease expires: a short TTL for it alone.
    for (name, ttl) in [("g1", "10"), ("g2", "10"), ("g3", "2")] {
        let register = ["--etcd", &hosts, "--target", "user.rpc", "--lease-ttl", ttl];
        servers.push(go_server(name, &register).await?);
    }

    // What etcd's own code wrote: `TARGET/ADDR` → its JSON with a null Metadata.
    let mut kv = etcd.client().await?;
    let listed = kv
        .get("user.rpc/", Some(GetOptions::new().with_prefix()))
        .await?;
    let written: BTreeSet<(String, String)> = listed
        .kvs()
        .iter()
        .map(|kv| Ok((kv.key_str()?.to_string(), kv.value_str()?.to_string())))
        .collect::<Result<_>>()?;
    let expected: BTreeSet<(String, String)> = servers
        .iter()
        .map(|s| {
            (
                format!("user.rpc/{}", s.addr()),
                format!(r#"{{"Op":0,"Addr":"{}","Metadata":null}}"#, s.addr()),
            )
        })
        .collect();
    assert_eq!(written, expected);

    let yaml = format!("Etcd:\n  Hosts: [{hosts}]\n  Key: user.rpc\nTimeout: 10s\n");
    let client = Client::connect(ClientConfig::from_yaml(&yaml)?).await?;
    until(&client, "three READY, in the picker", |c| {
        ready_count(c) == 3 && c.balancer().snapshot().in_picker() == 3
    })
    .await?;
    // The snapshot is written before the picker is published: wait until calls reach all three.
    served_by_all(&client, &["g1", "g2", "g3"]).await?;
    let counts = tally(&calls(&client, 300).await?);
    println!("300 calls over etcd-naming registrations: {counts:?}");
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(
        counts.values().all(|n| (99..=101).contains(n)),
        "{counts:?}"
    );

    // g2 leaves as an etcd-naming server does (DeleteEndpoint, revoke, GracefulStop), then g3
    // dies and its key goes with its lease: calls go on, and none fails.
    let load = CallLoop::start(&client, 4, 100_000);
    let g2 = servers[1].addr().to_string();
    servers[1].terminate().await?;
    until(&client, "g2 gone", |c| {
        c.balancer().snapshot().by_addr(&g2).is_none()
    })
    .await?;
    let g3 = servers[2].addr().to_string();
    servers[2].kill();
    until(&client, "g3's lease expired", |c| {
        c.balancer().snapshot().by_addr(&g3).is_none()
    })
    .await?;
    let (served, failed) = load.stop().await?;
    println!(
        "during the leave and the kill: {} calls, {} failed",
        served.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    let after = tally(&calls(&client, 20).await?);
    assert_eq!(after.keys().collect::<Vec<_>>(), ["g1"], "{after:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_go_server_with_max_connection_age_loses_no_call() -> Result<()> {
    init_tracing();
    let server = go_server(
        "aged",
        &[
            "--max-connection-age",
            "300ms",
            "--max-connection-age-grace",
            "10s",
        ],
    )
    .await?;
    let client = static_client(&[server.addr()], "").await?;
    until(&client, "READY", |c| ready_count(c) == 1).await?;

    // Calls for 3 s: grpc-go sends GOAWAY every ~300 ms (±10 % jitter).
    let load = CallLoop::start(&client, 4, 20_000);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (served, failed) = load.stop().await?;
    let conns: BTreeSet<u64> = served.iter().filter_map(|(_, d)| go_conn(d)).collect();
    let snapshot = client.balancer().snapshot();
    println!(
        "MaxConnectionAge 300 ms, 3 s of calls: {} served, {} failed, over {} connections ({} connects)",
        served.len(),
        failed.len(),
        conns.len(),
        snapshot.subchannels[0].connects
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert!(conns.len() >= 3, "calls came over connections {conns:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_grpc_go_servers_under_every_kind_of_call_fails_none() -> Result<()> {
    init_tracing();
    let bin = go_peer_bin().await?;
    let mut servers = Vec::new();
    for name in ["g1", "g2", "g3"] {
        servers.push(ServerProcess::spawn_with(&bin, name, 0, &[]).await?);
    }
    let addrs: Vec<SocketAddr> = servers.iter().map(ServerProcess::addr).collect();
    let client = static_client(
        &addrs,
        "StreamTimeout: 10s\n\
         StreamingMethods: [/user.User/Upload, /user.User/Chat, /user.User/WatchEvents]\n\
         Backoff: {Initial: 50ms, Max: 200ms}\n",
    )
    .await?;
    until(&client, "READY", |c| ready_count(c) == 3).await?;
    let load = MixedLoad::start(&UserClient::new(client.channel()), 2);

    // Each server in turn gets SIGTERM (grpc-go's GracefulStop: GOAWAY, the calls in flight
    // finish), then starts again on its port; the next one only once the client is READY on it.
    for server in &mut servers {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (name, addr) = (server.name().to_owned(), server.addr());
        let status = server.terminate().await?;
        ensure!(status.success(), "{name} exited with {status}");
        *server = ServerProcess::spawn_with(&bin, &name, addr.port(), &[]).await?;
        let addr = addr.to_string();
        until(&client, "READY again", |c| {
            c.balancer()
                .snapshot()
                .by_addr(&addr)
                .is_some_and(|s| s.state == ConnectivityState::Ready)
        })
        .await?;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.stop_expecting_no_failure().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_go_server_not_serving_gets_no_call_until_it_serves() -> Result<()> {
    init_tracing();
    let up = go_server("up", &[]).await?;
    let down = go_server("down", &["--not-serving"]).await?;
    // Wait-for-ready: a call made before the picker has a healthy instance waits for one.
    let client = static_client(
        &[up.addr(), down.addr()],
        "HealthCheck: user.User\nWaitForReady: true\n",
    )
    .await?;
    let health = |addr: SocketAddr| {
        move |c: &Client| {
            c.balancer()
                .snapshot()
                .by_addr(&addr.to_string())
                .map(|s| (s.state, s.health))
        }
    };
    let (up_health, down_health) = (health(up.addr()), health(down.addr()));
    until(&client, "health known", |c| {
        up_health(c) == Some((ConnectivityState::Ready, Health::Serving))
            && down_health(c) == Some((ConnectivityState::Ready, Health::NotServing))
            && c.balancer().snapshot().in_picker() == 1
    })
    .await?;
    let counts = tally(&calls(&client, 40).await?);
    assert_eq!(counts.get("down"), None, "{counts:?}");
    assert_eq!(counts.get("up"), Some(&40), "{counts:?}");

    // SIGUSR1: grpc-go's health server says SERVING, on the Watch stream switchboard holds.
    down.flip_health()?;
    until(&client, "down serving", |c| {
        down_health(c).map(|h| h.1) == Some(Health::Serving)
    })
    .await?;
    served_by_all(&client, &["up", "down"]).await?;
    let counts = tally(&calls(&client, 40).await?);
    assert_eq!(counts.get("down"), Some(&20), "{counts:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_go_server_allowing_one_stream_serves_every_call_of_eight_callers() -> Result<()> {
    init_tracing();
    let server = go_server(
        "narrow",
        &["--max-concurrent-streams", "1", "--delay", "20ms"],
    )
    .await?;
    let client = static_client(&[server.addr()], "").await?;
    until(&client, "READY", |c| ready_count(c) == 1).await?;

    let load = CallLoop::start(&client, 8, 10);
    let (served, failed) = load.stop_when_done().await?;
    let peak = served.iter().filter_map(|(_, d)| go_peak(d)).max();
    println!(
        "MAX_CONCURRENT_STREAMS 1, 8 callers: {} served, {} failed, server peak {peak:?}",
        served.len(),
        failed.len()
    );
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(served.len(), 80);
    assert_eq!(peak, Some(1), "the server had more than one call at once");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_pings_from_grpc_go_doubles_the_keepalive_interval() -> Result<()> {
    init_tracing();
    // grpc-go's enforcement policy: pings at most every 1.5 s while calls are open, else
    // GOAWAY ENHANCE_YOUR_CALM "too_many_pings" after three strikes. A 1 s interval breaks it
    // within a call of 8 s (about 4 s in); doubled to 2 s, it holds.
    let server = go_server(
        "strict",
        &["--keepalive-min-time", "1500ms", "--delay", "5s"],
    )
    .await?;
    let client = static_client(
        &[server.addr()],
        "KeepaliveTime: 1s\nKeepaliveTimeout: 20s\nTimeout: 30s\n",
    )
    .await?;
    until(&client, "READY", |c| ready_count(c) == 1).await?;

    // The first call's connection is closed under it (grpc-go closes the connection with the
    // GOAWAY); the default retry policy sends it again on the next connection.
    let served = calls(&client, 2).await?;
    let snapshot = client.balancer().snapshot();
    let sub = &snapshot.subchannels[0];
    println!(
        "calls {served:?}; connects {}; last error {:?}",
        sub.connects, sub.last_error
    );
    let error = sub.last_error.clone().unwrap_or_default();
    ensure!(
        error.contains("too_many_pings") || error.to_lowercase().contains("calm"),
        "the server's GOAWAY is not the last error: {error:?}"
    );
    // Both calls ended over the second connection: the doubled interval was not refused.
    let conns: Vec<Option<u64>> = served.iter().map(|(_, d)| go_conn(d)).collect();
    assert_eq!(conns, [Some(2), Some(2)]);
    assert_eq!(sub.connects, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_go_client_over_etcd_naming_calls_switchboard_servers_and_follows_one_out()
-> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let mut serving = Vec::new();
    for name in ["r1", "r2"] {
        let server = Server::builder()
            .etcd(EtcdConfig::from_hosts(&etcd.hosts())?, "user.rpc")
            .format(Format::EtcdNaming)
            .listen("127.0.0.1:0".parse()?)
            .grace(Duration::from_secs(3))
            .ttl(Duration::from_secs(5))
            .add_service(user_service(name))
            .serve()
            .await?;
        serving.push(server);
    }
    // r1 leaves as `Server` does: deregister, NOT_SERVING, a 3 s grace during which it still
    // serves, then drain. The Go client follows the DELETE, not a closed listener.
    let r1 = serving.remove(0);
    let followed =
        go_client_follows_a_leave(&etcd.hosts(), "user.rpc", &["r1", "r2"], "r2", async move {
            r1.shutdown().await;
            Ok(())
        })
        .await?;
    println!("switchboard::Server r1 left: {}", followed.summary);
    assert!(
        !followed.leave_done_first,
        "the client moved only once r1 had stopped serving"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_go_client_over_etcd_naming_calls_instances_of_the_registrar_and_follows_one_out()
-> Result<()> {
    init_tracing();
    let etcd = Etcd::start().await?;
    let servers = [
        TestServer::start("r1").await?,
        TestServer::start("r2").await?,
    ];
    let mut registrations = Vec::new();
    for server in &servers {
        // Metadata too: grpc-go 1.33 hashes an address's metadata, so switchboard must not
        // write a JSON object there.
        let registration = Registrar::new(
            EtcdConfig::from_hosts(&etcd.hosts())?,
            "user.rpc",
            &server.addr().to_string(),
        )?
        .format(Format::EtcdNaming)
        .metadata("weight", "3")
        .metadata("zone", "a")
        .register()
        .await?;
        registrations.push(registration);
    }
    // r1's server keeps serving: only following the DELETE moves the client.
    let r1 = registrations.remove(0);
    let followed =
        go_client_follows_a_leave(&etcd.hosts(), "user.rpc", &["r1", "r2"], "r2", async move {
            r1.deregister().await.context("deregistering r1")
        })
        .await?;
    println!("Registrar r1 left: {}", followed.summary);
    Ok(())
}

/// A grpc-go server stream of 5 events 1 s apart: under the client's 2 s default, which is for
/// unary calls, it completes when the method is listed as streaming (grpc-go honours a
/// `grpc-timeout`, so the unary default sent with it would have ended it at 2 s); with its own
/// 1 s deadline it ends with DEADLINE_EXCEEDED at 1 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_go_server_stream_outlives_the_unary_default_and_ends_at_its_own_deadline()
-> Result<()> {
    init_tracing();
    let server = go_server("go-stream", &[]).await?;
    let client = static_client(
        &[server.addr()],
        "Timeout: 2s\nStreamingMethods: [/user.User/*]\n",
    )
    .await?;
    client.balancer().ready(PATIENCE).await?;
    let watch = |deadline: Option<Duration>| {
        let mut users = UserClient::new(client.channel());
        async move {
            let mut request = tonic::Request::new(WatchEventsRequest {
                id: 1,
                count: 5,
                interval_ms: 1000,
            });
            if let Some(d) = deadline {
                request.set_timeout(d);
            }
            let started = Instant::now();
            let mut stream = users.watch_events(request).await?.into_inner();
            let mut events = 0;
            let code = loop {
                match stream.message().await {
                    Ok(Some(_)) => events += 1,
                    Ok(None) => break tonic::Code::Ok,
                    Err(status) => break status.code(),
                }
            };
            anyhow::Ok((events, code, started.elapsed()))
        }
    };
    let (events, code, took) = watch(None).await?;
    ensure!(
        (events, code) == (5, tonic::Code::Ok),
        "{events} events, {code:?}"
    );
    ensure!(took >= Duration::from_secs(4), "{took:?}");
    let (events, code, took) = watch(Some(Duration::from_secs(1))).await?;
    ensure!(
        code == tonic::Code::DeadlineExceeded,
        "{events} events, {code:?}"
    );
    ensure!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    Ok(())
}

/// `callers` callers making `each` calls: what each call got and how long it took, and how
/// long they all took.
async fn timed_calls(
    client: &Client,
    callers: usize,
    each: usize,
) -> Result<(Vec<(String, String)>, Vec<Duration>, Duration)> {
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for caller in 0..callers {
        let mut users = UserClient::new(client.channel());
        tasks.spawn(async move {
            let mut results = Vec::with_capacity(each);
            for _ in 0..each {
                let begun = Instant::now();
                let reply = users
                    .get_user_info(GetUserInfoRequest { id: caller as i64 })
                    .await
                    .map(|r| r.into_inner());
                results.push((reply, begun.elapsed()));
            }
            results
        });
    }
    let (mut served, mut took) = (Vec::new(), Vec::new());
    while let Some(results) = tasks.join_next().await {
        for (reply, elapsed) in results? {
            let reply = reply?;
            served.push((reply.instance, reply.username));
            took.push(elapsed);
        }
    }
    took.sort();
    Ok((served, took, started.elapsed()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_policy_sends_calls_around_a_grpc_go_server_allowing_one_stream() -> Result<()> {
    init_tracing();
    // Two grpc-go servers answering in 200 ms (SWITCHBOARD_NARROW_DELAY_MS sets another call
    // time: 20 ms measures what a busy 2-core machine can hold to the millisecond, not
    // the behaviour); one allows a single stream at a time.
    let delay_ms: u64 = std::env::var("SWITCHBOARD_NARROW_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let delay = Duration::from_millis(delay_ms);
    const CALLERS: usize = 32;
    let delay_flag = format!("{delay_ms}ms");
    let narrow = go_server(
        "narrow",
        &["--max-concurrent-streams", "1", "--delay", &delay_flag],
    )
    .await?;
    let free = go_server("free", &["--delay", &delay_flag]).await?;
    // About 1.6 s of calls per run at any call time.
    let each = ((8 * 200 / delay_ms.max(1)) as usize).max(8);
    // What the free server alone can serve, measured: every caller always busy there.
    let alone = static_client(&[free.addr()], "").await?;
    until(&alone, "READY", |c| ready_count(c) == 1).await?;
    let (served, _, elapsed) = timed_calls(&alone, CALLERS, each).await?;
    let room = served.len() as f64 / elapsed.as_secs_f64();
    println!(
        "the free server alone: {room:.0} RPS ({:.2}× {CALLERS} callers ÷ {delay:?})",
        room * delay.as_secs_f64() / CALLERS as f64
    );
    drop(alone);
    for policy in [
        "round_robin",
        "p2c",
        "p2c_peak_ewma",
        "least_request",
        "weighted_round_robin",
        "ring_hash",
    ] {
        let client = static_client(
            &[narrow.addr(), free.addr()],
            &format!("Policy: {policy}\n"),
        )
        .await?;
        until(&client, "both READY", |c| ready_count(c) == 2).await?;
        let (served, took, elapsed) = timed_calls(&client, CALLERS, each).await?;
        let rps = served.len() as f64 / elapsed.as_secs_f64();
        let p99 = took[took.len() * 99 / 100];
        let counts = tally(&served);
        let peak = served
            .iter()
            .filter(|(instance, _)| instance == "narrow")
            .filter_map(|(_, detail)| go_peak(detail))
            .max();
        println!(
            "{policy:>20}: {rps:6.0} RPS ({:.2}× the free server's room), p99 {p99:?}, \
             {counts:?}, narrow peak {peak:?}",
            rps / room
        );
        assert!(peak.unwrap_or(0) <= 1, "{policy}: narrow peak {peak:?}");
        assert!(
            rps >= 0.9 * room,
            "{policy}: {rps:.0} RPS, below 0.9× the {room:.0} the free server alone served"
        );
        assert!(p99 < 2 * delay, "{policy}: p99 {p99:?}");
        assert_eq!(client.balancer().snapshot().pending_calls, 0);
    }
    Ok(())
}

/// The process's resident memory, in KiB.
fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_waiting_for_a_full_grpc_go_server_are_bounded_and_leave_at_their_deadline()
-> Result<()> {
    init_tracing();
    // One stream allowed, held by a call the server answers only after a minute.
    let server = go_server("full", &["--max-concurrent-streams", "1", "--delay", "60s"]).await?;
    // The queue's bound alone: the breaker would shed calls once the first ones are refused.
    let client = static_client(
        &[server.addr()],
        "Timeout: 90s\nMaxPendingCalls: 64\nMiddlewares: {Breaker: false}\n",
    )
    .await?;
    until(&client, "READY", |c| ready_count(c) == 1).await?;
    let holder = tokio::spawn({
        let mut users = UserClient::new(client.channel());
        async move { users.get_user_info(GetUserInfoRequest { id: 1 }).await }
    });
    until(&client, "the stream taken", |c| {
        c.balancer().snapshot().subchannels[0].in_flight == 1
    })
    .await?;

    // Past MaxPendingCalls, a call fails at once with RESOURCE_EXHAUSTED; the waiting ones
    // leave at their deadline with DEADLINE_EXCEEDED.
    let mut waiting = JoinSet::new();
    for id in 0..80 {
        let mut users = UserClient::new(client.channel());
        waiting.spawn(async move {
            let mut request = tonic::Request::new(GetUserInfoRequest { id });
            request.set_timeout(Duration::from_secs(3));
            let started = Instant::now();
            let status = users.get_user_info(request).await.err();
            (status.map(|s| s.code()), started.elapsed())
        });
    }
    let mut codes = BTreeMap::new();
    while let Some(joined) = waiting.join_next().await {
        let (code, took) = joined?;
        match code {
            Some(tonic::Code::ResourceExhausted) => {
                assert!(took < Duration::from_secs(2), "refused after {took:?}")
            }
            Some(tonic::Code::DeadlineExceeded) => {
                assert!(took >= Duration::from_secs(3), "left after {took:?}")
            }
            other => bail!("{other:?} after {took:?}"),
        }
        *codes.entry(format!("{code:?}")).or_insert(0) += 1;
    }
    println!("80 calls beside a full server, at most 64 waiting: {codes:?}");
    assert_eq!(codes.get("Some(ResourceExhausted)"), Some(&16));
    assert_eq!(codes.get("Some(DeadlineExceeded)"), Some(&64));

    // 100 000 calls of 1 ms that expire while they wait: none stays queued, memory stays flat.
    let expire = |total: usize| {
        let mut tasks = JoinSet::new();
        for caller in 0..32 {
            let mut users = UserClient::new(client.channel());
            tasks.spawn(async move {
                let mut codes = BTreeMap::new();
                for _ in 0..total / 32 {
                    let mut request = tonic::Request::new(GetUserInfoRequest { id: caller });
                    request.set_timeout(Duration::from_millis(1));
                    let code = users.get_user_info(request).await.err().map(|s| s.code());
                    *codes.entry(format!("{code:?}")).or_insert(0usize) += 1;
                }
                codes
            });
        }
        tasks
    };
    let mut warm = expire(3_200);
    while let Some(done) = warm.join_next().await {
        done?;
    }
    let before = rss_kib();
    let started = Instant::now();
    let mut tasks = expire(100_000);
    let mut codes: BTreeMap<String, usize> = BTreeMap::new();
    while let Some(done) = tasks.join_next().await {
        for (code, n) in done? {
            *codes.entry(code).or_insert(0) += n;
        }
    }
    let after = rss_kib();
    let snapshot = client.balancer().snapshot();
    println!(
        "100 000 calls expired while queued in {:?}: {codes:?}; RSS {before} KiB -> {after} KiB; \
         {} still waiting",
        started.elapsed(),
        snapshot.pending_calls
    );
    assert_eq!(codes.get("Some(DeadlineExceeded)"), Some(&100_000));
    assert_eq!(snapshot.pending_calls, 0);
    assert!(
        after < before + 16 * 1024,
        "resident memory grew from {before} KiB to {after} KiB"
    );
    assert_eq!(snapshot.subchannels[0].in_flight, 1, "only the holder");
    holder.abort();
    Ok(())
}

/// The streaming methods: the unary default `Timeout` does not apply to them.
const STREAMS: &str =
    "StreamingMethods: [/user.User/WatchEvents, /user.User/Upload, /user.User/Chat]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_go_server_echoes_a_bidi_chat_and_counts_a_client_stream_of_1000_messages()
-> Result<()> {
    init_tracing();
    let server = WatchedGoServer::start("go-kinds", &[]).await?;
    let client = static_client(&[server.addr()], STREAMS).await?;
    client.balancer().ready(PATIENCE).await?;
    let mut users = UserClient::new(client.channel());

    // One message, then its echo, 100 times: the call is live both ways. grpc-go sends its
    // response headers with the first message, and tonic's `chat` returns once it has them:
    // the first message goes before.
    let message = |seq: u64| ChatMessage {
        seq,
        text: format!("message {seq}"),
        instance: String::new(),
    };
    let (tx, rx) = mpsc::channel(4);
    tx.send(message(1)).await?;
    let mut echoes = users.chat(ReceiverStream::new(rx)).await?.into_inner();
    for seq in 1..=100u64 {
        if seq > 1 {
            tx.send(message(seq)).await?;
        }
        let text = format!("message {seq}");
        let echo = tokio::time::timeout(PATIENCE, echoes.message())
            .await
            .with_context(|| format!("no echo of message {seq}"))??
            .with_context(|| format!("the chat ended before the echo of message {seq}"))?;
        ensure!(
            (echo.seq, echo.text.as_str(), echo.instance.as_str()) == (seq, &*text, "go-kinds"),
            "message {seq} echoed as {echo:?}"
        );
    }
    // The client's stream ends: so does the server's, with OK.
    drop(tx);
    let end = tokio::time::timeout(PATIENCE, echoes.message()).await??;
    ensure!(end.is_none(), "after the last echo: {end:?}");

    let chunks = (0..1000u64).map(|i| Chunk {
        data: vec![7; (i % 100) as usize],
    });
    let expected_bytes: u64 = (0..1000u64).map(|i| i % 100).sum();
    let summary = users.upload(tokio_stream::iter(chunks)).await?.into_inner();
    println!("100 chat messages echoed in turn; upload of 1000 chunks: {summary:?}");
    ensure!(
        (summary.chunks, summary.bytes, summary.instance.as_str())
            == (1000, expected_bytes, "go-kinds"),
        "{summary:?}"
    );
    server.end().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_stream_to_a_grpc_go_server_cancels_it_there() -> Result<()> {
    init_tracing();
    let limit = Duration::from_secs(10);
    let mut server = WatchedGoServer::start("go-drop", &[]).await?;
    let client = static_client(&[server.addr()], STREAMS).await?;
    client.balancer().ready(PATIENCE).await?;
    let mut users = UserClient::new(client.channel());

    // A server stream of 100 events 1 s apart, dropped after the first.
    let request = WatchEventsRequest {
        id: 1,
        count: 100,
        interval_ms: 1000,
    };
    let mut events = users.watch_events(request).await?.into_inner();
    let first = tokio::time::timeout(PATIENCE, events.message()).await??;
    ensure!(first.is_some_and(|e| (e.seq, e.instance.as_str()) == (1, "go-drop")));
    let dropped = Instant::now();
    drop(events);
    server.expect("cancelled WatchEvents", limit).await?;
    println!(
        "WatchEvents dropped: the server saw it cancelled after {:?}",
        dropped.elapsed()
    );

    // A client stream dropped while the server waits for more.
    let (tx, rx) = mpsc::channel(1);
    tx.send(Chunk { data: vec![1; 10] }).await?;
    let upload = tokio::spawn({
        let mut users = users.clone();
        async move { users.upload(ReceiverStream::new(rx)).await }
    });
    server.expect("open Upload", limit).await?;
    let dropped = Instant::now();
    upload.abort();
    server.expect("cancelled Upload", limit).await?;
    println!(
        "Upload dropped: the server saw it cancelled after {:?}",
        dropped.elapsed()
    );
    drop(tx);
    server.end().await
}

/// A bidi call whose caller drops the response stream is cancelled on the server at once,
/// whether the caller still holds its sender or drops it right after: the balancer ends the
/// request body with `CANCEL` when the response goes, so the stream is reset rather than left
/// open behind a live sender, or ended cleanly (END_STREAM) before the reset. hyper alone (and
/// so tonic's own channel) resets a stream only when the response future is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_a_bidi_chat_to_a_grpc_go_server_cancels_it_there() -> Result<()> {
    init_tracing();
    let mut server = WatchedGoServer::start("go-drop", &[]).await?;
    let client = static_client(&[server.addr()], STREAMS).await?;
    client.balancer().ready(PATIENCE).await?;
    let mut users = UserClient::new(client.channel());
    for round in 0..20 {
        // grpc-go answers the call's headers with its first message: that goes first.
        let (tx, rx) = mpsc::channel(4);
        tx.send(ChatMessage {
            seq: 1,
            text: "hello".into(),
            instance: String::new(),
        })
        .await?;
        let mut echoes = users.chat(ReceiverStream::new(rx)).await?.into_inner();
        let echo = tokio::time::timeout(PATIENCE, echoes.message()).await??;
        ensure!(echo.is_some_and(|e| e.instance == "go-drop"));
        // The caller stops listening, keeping its sender (even rounds) or dropping it right
        // after: either way the call is over, and the server must see it cancelled.
        drop(echoes);
        let kept = if round % 2 == 1 {
            drop(tx);
            None
        } else {
            Some(tx)
        };
        // A clean end of the client's stream ("ended Chat") would be a failure.
        let seen = server
            .line(
                |l| l == "cancelled Chat" || l == "ended Chat",
                Duration::from_secs(10),
            )
            .await?;
        ensure!(
            seen == "cancelled Chat",
            "round {round} (sender {}): the server saw {seen:?}",
            if kept.is_some() { "kept" } else { "dropped" }
        );
        drop(kept);
    }
    server.end().await
}

switchboard::typed_client! {
    struct GoUsers(switchboard_testkit::proto::user::user_client::UserClient) {
        get_user_info(GetUserInfoRequest) -> UserInfo;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_client_with_gzip_compression_is_understood_by_grpc_go() -> Result<()> {
    init_tracing();
    let mut server = WatchedGoServer::start("go-gzip", &[]).await?;
    let client = static_client(&[server.addr()], "Compression: gzip\n").await?;
    client.balancer().ready(PATIENCE).await?;
    let reply = GoUsers::new(&client)
        .get_user_info(GetUserInfoRequest { id: 7 })
        .await?;
    ensure!(reply.id == 7 && reply.instance == "go-gzip", "{reply:?}");
    // grpc-go saw the request compressed, decoded it, and answered in kind.
    server
        .expect("compressed /user.User/GetUserInfo gzip", PATIENCE)
        .await?;
    server.end().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_call_to_a_grpc_go_server_that_stalls_after_its_headers_ends_at_its_deadline()
-> Result<()> {
    init_tracing();
    let mut server = WatchedGoServer::start("go-stall", &["--stall"]).await?;
    let client = static_client(&[server.addr()], "").await?;
    client.balancer().ready(PATIENCE).await?;
    let mut users = UserClient::new(client.channel());

    let deadline = Duration::from_millis(500);
    let mut request = tonic::Request::new(GetUserInfoRequest { id: 1 });
    request.set_timeout(deadline);
    let started = Instant::now();
    let outcome = users.get_user_info(request).await;
    let took = started.elapsed();
    let status = outcome.err().context("a stalled server cannot answer")?;
    println!(
        "grpc-go: headers, then nothing: {:?} after {took:?}",
        status.code()
    );
    ensure!(status.code() == tonic::Code::DeadlineExceeded, "{status:?}");
    ensure!(
        took >= deadline && took <= deadline + Duration::from_millis(100),
        "ended after {took:?}, for a deadline of {deadline:?}"
    );
    // grpc-go honours the grpc-timeout the call carried: its context ends either way.
    let seen = server
        .line(
            |l| l == "cancelled GetUserInfo" || l == "deadline GetUserInfo",
            Duration::from_secs(10),
        )
        .await?;
    println!("the server: {seen}");
    server.end().await
}
