//! The docker-compose cluster, run: the examples image built, the cluster up (three etcd members,
//! three user-rpc instances, the gateway), and under load from this host, five faults, each
//! counted by the HTTP status of every request the load made (goal: none failed):
//!
//! - a: `stop user-rpc-2`, then `start`;
//! - b: `kill -s SIGKILL user-rpc-3`, then `start`;
//! - c: the gateway cut off from etcd's network while one instance leaves and another comes
//!   back: it serves from the last set it saw, and matches etcd within 3 s of reconnecting;
//! - d: an instance cut off silently from the gateway's network (its etcd lease kept alive on
//!   the other): it leaves the picker within the gateway's keepalives (2 s + 2 s);
//! - e: an etcd member stopped and started again, an instance stopped and started meanwhile.
//!
//! Ignored by default (it builds an image: about 11 min on 2 cores from nothing, seconds from
//! Docker's cache). `scripts/test.sh` runs it alone:
//!
//! ```text
//! cargo nextest run -p switchboard-examples --test compose_cluster --run-ignored only --no-capture
//! ```
//!
//! Where no Docker engine answers, or no compose tool is installed, it says so and passes. The
//! cluster is a project of its own (`switchboard-test-PID`), on a free port of 127.0.0.1, and is
//! taken down (`down -v --remove-orphans`) however the test ends.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use tokio::process::Command;

/// The gateway's keepalives, as examples/compose/gateway.yaml sets them.
const KEEPALIVE: Duration = Duration::from_secs(2 + 2);
/// How long after reconnecting to etcd the gateway's view must match etcd's.
const RECONNECTED: Duration = Duration::from_secs(3);
/// How long the gateway is cut off from etcd: longer than the 2 s in which it finds its watch
/// silent (gateway.yaml's `WatchCheckInterval: 1s`), shorter than the 10 s it would take with the
/// default check.
const PARTITION: Duration = Duration::from_secs(6);
/// Concurrent callers of the load, and the most requests one makes in a fault.
const CALLERS: usize = 4;
const MAX_REQUESTS_PER_CALLER: u64 = 20_000;
/// A caller's pause between requests: a few hundred requests a second in all, on 2 shared cores.
const PAUSE: Duration = Duration::from_millis(10);
/// One request of the load: longer than the gateway's deadline (10 s), so the gateway, not this
/// host, decides what fails.
const REQUEST_LIMIT: Duration = Duration::from_secs(15);

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Runs `cmd` (from `command`) to its end within `limit`; its standard output, or an error with
/// its standard error.
async fn run(cmd: Command, what: &str, limit: Duration) -> Result<String> {
    let output = support::output_within(cmd, what, limit).await?;
    ensure!(
        output.status.success(),
        "{what}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim_end()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A command in its own process group, ended with the test.
fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    Command::from(switchboard_testkit::child_command(program))
}

async fn succeeds(program: &str, args: &[&str]) -> bool {
    let mut cmd = command(program);
    cmd.args(args);
    run(cmd, program, Duration::from_secs(60)).await.is_ok()
}

/// `docker compose` (v2) where it answers, else `docker-compose` (v1); `None` without either.
async fn compose_tool() -> Option<Vec<String>> {
    if succeeds("docker", &["compose", "version"]).await {
        Some(vec!["docker".into(), "compose".into()])
    } else if succeeds("docker-compose", &["version"]).await {
        Some(vec!["docker-compose".into()])
    } else {
        None
    }
}

/// One compose project of the repository's docker-compose.yml, taken down when dropped.
struct Cluster {
    tool: Vec<String>,
    project: String,
    env: Vec<(String, String)>,
    port: u16,
    passed: bool,
}

impl Cluster {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = command(&self.tool[0]);
        cmd.args(&self.tool[1..])
            .args(["-p", &self.project, "-f", "docker-compose.yml"])
            .args(args)
            .current_dir(root())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    async fn compose(&self, args: &[&str], limit: Duration) -> Result<String> {
        let what = format!("compose {}", args.join(" "));
        run(self.command(args), &what, limit).await
    }

    async fn docker(&self, args: &[&str], limit: Duration) -> Result<String> {
        let mut cmd = command("docker");
        cmd.args(args);
        run(cmd, &format!("docker {}", args.join(" ")), limit).await
    }

    /// The id of `service`'s container.
    async fn container(&self, service: &str) -> Result<String> {
        let out = self
            .compose(&["ps", "-q", service], Duration::from_secs(60))
            .await?;
        let id = out.trim();
        ensure!(!id.is_empty(), "{service} has no container");
        Ok(id.to_owned())
    }

    /// The name of one of the project's networks (`control`, `data`), as compose names it.
    fn network(&self, name: &str) -> String {
        format!("{}_{name}", self.project)
    }

    fn gateway(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The gateway's view: the set of instance addresses it has sub-channels for, and the set
    /// its picker sends to.
    async fn view(&self) -> Result<(BTreeSet<String>, BTreeSet<String>)> {
        let answer = support::get(&self.gateway(), "/debug/switchboard").await?;
        ensure!(
            answer.status == 200,
            "/debug/switchboard: {}",
            answer.status
        );
        let snapshot: Value = serde_json::from_str(&answer.body)?;
        let mut known = BTreeSet::new();
        let mut picked = BTreeSet::new();
        for sub in snapshot["subchannels"]
            .as_array()
            .context("no subchannels")?
        {
            let addr = sub["addr"].as_str().context("addr")?.to_owned();
            if sub["in_picker"].as_bool() == Some(true) {
                picked.insert(addr.clone());
            }
            known.insert(addr);
        }
        Ok((known, picked))
    }

    /// The instances registered in etcd, as `member` (etcd-N) lists them.
    async fn registered(&self, member: &str) -> Result<BTreeSet<String>> {
        let id = self.container(member).await?;
        let out = self
            .docker(
                &[
                    "exec",
                    &id,
                    "etcdctl",
                    "--endpoints=http://127.0.0.1:2379",
                    "get",
                    "--prefix",
                    "user.rpc/",
                    "--print-value-only",
                ],
                Duration::from_secs(30),
            )
            .await?;
        Ok(out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// Waits, at most `limit`, until the gateway's view is `expected`: a sub-channel for each
    /// of those instances and no other, all of them picked. Returns how long it took.
    async fn until_view(&self, expected: &BTreeSet<String>, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let view = self.view().await;
            if let Ok((known, picked)) = &view
                && known == expected
                && picked == expected
            {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                bail!("the gateway's view is {view:?}, not {expected:?}, after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits, at most `limit`, until the gateway's view matches what etcd-3 lists (etcd-3 is
    /// never the member stopped). Returns how long it took.
    async fn until_matches_etcd(&self, limit: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let registered = self.registered("etcd-3").await?;
            let view = self.view().await;
            if let Ok((known, picked)) = &view
                && *known == registered
                && *picked == registered
            {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                bail!("the gateway's view {view:?} is not etcd's {registered:?} after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let show = |args: &[&str]| {
            let mut cmd = std::process::Command::new(&self.tool[0]);
            cmd.args(&self.tool[1..])
                .args(["-p", &self.project, "-f", "docker-compose.yml"])
                .args(args)
                .current_dir(root())
                .envs(self.env.iter().map(|(k, v)| (k, v)))
                .stdin(Stdio::null());
            let Ok(mut child) = cmd.spawn() else { return };
            let deadline = Instant::now() + Duration::from_secs(180);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = child.kill();
            let _ = child.wait();
        };
        if !self.passed {
            eprintln!("compose_cluster: failed; the services' last lines:");
            show(&["logs", "--no-color", "--tail", "40"]);
        }
        eprintln!("compose_cluster: taking {} down", self.project);
        show(&["down", "-v", "--remove-orphans", "-t", "5"]);
    }
}

/// What the load saw: answers by HTTP status, requests that got no answer in time, requests
/// that could not be made (connection refused or reset), and the instances that answered.
#[derive(Default, Debug)]
struct Counts {
    statuses: BTreeMap<u16, u64>,
    timeouts: u64,
    connection_errors: u64,
    instances: BTreeMap<String, u64>,
}

impl Counts {
    fn requests(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.timeouts + self.connection_errors
    }

    fn failed(&self) -> u64 {
        self.requests() - self.statuses.get(&200).copied().unwrap_or(0)
    }

    fn add(&mut self, other: Counts) {
        for (status, n) in other.statuses {
            *self.statuses.entry(status).or_default() += n;
        }
        for (instance, n) in other.instances {
            *self.instances.entry(instance).or_default() += n;
        }
        self.timeouts += other.timeouts;
        self.connection_errors += other.connection_errors;
    }

    /// `503×2 504×1 timeout×0 conn×0`: the failures, by kind.
    fn failures(&self) -> String {
        let mut parts: Vec<String> = self
            .statuses
            .iter()
            .filter(|(status, _)| **status != 200)
            .map(|(status, n)| format!("{status}×{n}"))
            .collect();
        if self.timeouts > 0 {
            parts.push(format!("timeout×{}", self.timeouts));
        }
        if self.connection_errors > 0 {
            parts.push(format!("conn×{}", self.connection_errors));
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join(" ")
        }
    }
}

async fn call(gateway: &str, n: u64, counts: &mut Counts) {
    match support::get_within(gateway, &format!("/api/user/{n}"), REQUEST_LIMIT).await {
        Ok(answer) => {
            *counts.statuses.entry(answer.status).or_default() += 1;
            if answer.status == 200
                && let Ok(body) = serde_json::from_str::<Value>(&answer.body)
                && let Some(instance) = body["instance"].as_str()
            {
                *counts.instances.entry(instance.to_owned()).or_default() += 1;
            }
        }
        Err(e) if e.chain().any(|e| e.is::<tokio::time::error::Elapsed>()) => {
            counts.timeouts += 1;
        }
        Err(_) => counts.connection_errors += 1,
    }
}

/// Callers looping `GET /api/user/{n}` on the gateway until stopped (or `MAX_REQUESTS_PER_CALLER`).
struct Load {
    stop: Arc<AtomicBool>,
    callers: Vec<tokio::task::JoinHandle<Counts>>,
}

impl Load {
    fn start(gateway: String) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let callers = (0..CALLERS as u64)
            .map(|caller| {
                let (stop, gateway) = (stop.clone(), gateway.clone());
                tokio::spawn(async move {
                    let mut counts = Counts::default();
                    for i in 0..MAX_REQUESTS_PER_CALLER {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        call(
                            &gateway,
                            caller * MAX_REQUESTS_PER_CALLER + i + 1,
                            &mut counts,
                        )
                        .await;
                        tokio::time::sleep(PAUSE).await;
                    }
                    counts
                })
            })
            .collect();
        Self { stop, callers }
    }

    async fn finish(self) -> Result<Counts> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Counts::default();
        for caller in self.callers {
            all.add(caller.await?);
        }
        Ok(all)
    }
}

/// One fault's line of the summary.
struct Fault {
    name: &'static str,
    counts: Counts,
    /// What was timed during it, as `what: time`.
    times: Vec<String>,
}

impl Fault {
    fn print(&self) {
        println!(
            "compose_cluster: fault {}: {} requests, failed: {}{}{}",
            self.name,
            self.counts.requests(),
            self.counts.failures(),
            if self.times.is_empty() { "" } else { "; " },
            self.times.join(", ")
        );
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// Runs `fault` under load; the load goes on for a second after it.
async fn under_load<F>(cluster: &Cluster, name: &'static str, fault: F) -> Result<Fault>
where
    F: std::future::Future<Output = Result<Vec<String>>>,
{
    println!("compose_cluster: fault {name}");
    let load = Load::start(cluster.gateway());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let times = fault.await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let counts = load.finish().await?;
    let fault = Fault {
        name,
        counts,
        times: times?,
    };
    fault.print();
    Ok(fault)
}

/// The image variables `scripts/docker-images.sh` prints (the official images where a registry
/// answers, stand-ins built here where none does).
async fn image_variables() -> Result<Vec<(String, String)>> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("images.env");
    let mut cmd = command("bash");
    cmd.arg(root().join("scripts/docker-images.sh"))
        .arg("--env-file")
        .arg(&file)
        .current_dir(root());
    run(
        cmd,
        "scripts/docker-images.sh",
        Duration::from_secs(60 * 60),
    )
    .await?;
    let text = std::fs::read_to_string(&file)?;
    let variables: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("export "))
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches(['\'', '"']).to_owned()))
        .collect();
    ensure!(
        variables.iter().any(|(k, _)| k == "ETCD_IMAGE"),
        "no ETCD_IMAGE in {text:?}"
    );
    Ok(variables)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

#[tokio::test]
#[ignore = "builds the examples image and runs the docker-compose cluster: minutes; scripts/test.sh runs it"]
async fn the_cluster_serves_through_instance_gateway_and_etcd_faults() -> Result<()> {
    if !succeeds("docker", &["info"]).await {
        println!("compose_cluster: SKIPPED: no Docker engine answers (`docker info` failed)");
        return Ok(());
    }
    let Some(tool) = compose_tool().await else {
        println!(
            "compose_cluster: SKIPPED: neither `docker compose` nor `docker-compose` is installed"
        );
        return Ok(());
    };
    let mut env = image_variables().await?;
    let port = free_port()?;
    env.push(("GATEWAY_PORT".into(), port.to_string()));
    let mut cluster = Cluster {
        tool,
        project: format!("switchboard-test-{}", std::process::id()),
        env,
        port,
        passed: false,
    };
    println!(
        "compose_cluster: {} (project {}), gateway on {}, images {:?}",
        cluster.tool.join(" "),
        cluster.project,
        cluster.gateway(),
        cluster.env
    );
    let minute = Duration::from_secs(60);

    let start = Instant::now();
    cluster
        .compose(&["build", "user-rpc-1"], 45 * minute)
        .await?;
    let build = start.elapsed();
    println!("compose_cluster: image built in {}", secs(build));

    let start = Instant::now();
    cluster.compose(&["up", "-d"], 10 * minute).await?;
    let up = start.elapsed();
    let first = loop {
        if let Ok(answer) = support::get(&cluster.gateway(), "/api/user/1").await
            && answer.status == 200
        {
            break start.elapsed();
        }
        ensure!(
            start.elapsed() < 5 * minute,
            "no 200 from /api/user/1 within 5 min"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!(
        "compose_cluster: `up -d` returned after {}, first 200 after {}",
        secs(up),
        secs(first)
    );
    let all: BTreeSet<String> = (1..=3).map(|i| format!("user-rpc-{i}-data:8080")).collect();
    cluster.until_view(&all, 2 * minute).await?;
    let mut spread = Counts::default();
    for n in 0..60 {
        call(&cluster.gateway(), n, &mut spread).await;
    }
    println!(
        "compose_cluster: 60 requests answered by {:?}",
        spread.instances
    );
    for i in 1..=3 {
        ensure!(
            spread.instances.contains_key(&format!("user-rpc-{i}")),
            "user-rpc-{i} answered none of 60 requests: {spread:?}"
        );
    }
    let mut faults = Vec::new();

    // a: a graceful stop and start.
    faults.push(
        under_load(&cluster, "a (stop, start user-rpc-2)", async {
            cluster.compose(&["stop", "user-rpc-2"], minute).await?;
            let start = Instant::now();
            cluster.compose(&["start", "user-rpc-2"], minute).await?;
            cluster.until_view(&all, minute).await?;
            let back = start.elapsed();
            Ok(vec![format!(
                "back in the picker {} after `start`",
                secs(back)
            )])
        })
        .await?,
    );

    // b: a kill, no deregistration: the default retries absorb the calls it cut.
    faults.push(
        under_load(&cluster, "b (SIGKILL, start user-rpc-3)", async {
            cluster
                .compose(&["kill", "-s", "SIGKILL", "user-rpc-3"], minute)
                .await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let start = Instant::now();
            cluster.compose(&["start", "user-rpc-3"], minute).await?;
            cluster.until_view(&all, 2 * minute).await?;
            let back = start.elapsed();
            Ok(vec![format!(
                "back in the picker {} after `start`",
                secs(back)
            )])
        })
        .await?,
    );

    // c: the gateway cut off from etcd while user-rpc-1 leaves and user-rpc-3 comes back.
    let gateway = cluster.container("gateway").await?;
    let control = cluster.network("control");
    faults.push(
        under_load(&cluster, "c (gateway cut off from etcd)", async {
            cluster.compose(&["stop", "user-rpc-3"], minute).await?;
            let two: BTreeSet<String> = ["user-rpc-1-data:8080", "user-rpc-2-data:8080"]
                .map(str::to_owned)
                .into();
            cluster.until_view(&two, minute).await?;
            cluster
                .docker(&["network", "disconnect", &control, &gateway], minute)
                .await?;
            let cut = Instant::now();
            cluster.compose(&["stop", "user-rpc-1"], minute).await?;
            cluster.compose(&["start", "user-rpc-3"], minute).await?;
            // A partition long enough for the gateway to find its etcd watch silent (within
            // 2 s) and to be trying the members again.
            tokio::time::sleep(PARTITION.saturating_sub(cut.elapsed())).await;
            // Still the last set it saw: user-rpc-3's return is news it cannot have.
            let (known, picked) = cluster.view().await?;
            ensure!(
                known == two,
                "cut off from etcd, the gateway knows {known:?}, not the last set {two:?}"
            );
            ensure!(
                picked.contains("user-rpc-2-data:8080"),
                "cut off from etcd, the gateway picks {picked:?}"
            );
            let registered = cluster.registered("etcd-3").await?;
            cluster
                .docker(&["network", "connect", &control, &gateway], minute)
                .await?;
            let converged = cluster.until_view(&registered, minute).await?;
            ensure!(
                converged <= RECONNECTED,
                "the gateway matched etcd {} after reconnecting, not within {RECONNECTED:?}",
                secs(converged)
            );
            Ok(vec![
                format!("last set kept while cut: {known:?}"),
                format!("matched etcd {} after reconnecting", secs(converged)),
            ])
        })
        .await?,
    );
    cluster.compose(&["start", "user-rpc-1"], minute).await?;
    cluster.until_view(&all, 2 * minute).await?;

    // d: user-rpc-3 cut off silently from the data network, its lease kept on the control one.
    let instance = cluster.container("user-rpc-3").await?;
    let data = cluster.network("data");
    faults.push(
        under_load(&cluster, "d (user-rpc-3 cut off silently)", async {
            let cut = Instant::now();
            cluster
                .docker(&["network", "disconnect", &data, &instance], minute)
                .await?;
            let bound = KEEPALIVE + Duration::from_secs(6);
            let gone = loop {
                let (_, picked) = cluster.view().await?;
                if !picked.contains("user-rpc-3-data:8080") {
                    break cut.elapsed();
                }
                ensure!(
                    cut.elapsed() < bound,
                    "user-rpc-3 still picked {bound:?} after it was cut off"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let registered = cluster.registered("etcd-3").await?;
            ensure!(
                registered.contains("user-rpc-3-data:8080"),
                "user-rpc-3's registration lapsed: {registered:?}"
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
            Ok(vec![format!(
                "out of the picker {} after the cut (keepalives {})",
                secs(gone),
                secs(KEEPALIVE)
            )])
        })
        .await?,
    );
    cluster
        .docker(
            &[
                "network",
                "connect",
                "--alias",
                "user-rpc-3-data",
                &data,
                &instance,
            ],
            minute,
        )
        .await?;
    cluster.compose(&["restart", "user-rpc-3"], minute).await?;
    cluster.until_view(&all, 2 * minute).await?;

    // e: an etcd member lost and back; an instance leaves and returns meanwhile.
    faults.push(
        under_load(&cluster, "e (etcd-1 stopped, started)", async {
            cluster.compose(&["stop", "etcd-1"], minute).await?;
            cluster.compose(&["stop", "user-rpc-2"], minute).await?;
            let left = cluster.until_matches_etcd(minute).await?;
            let start = Instant::now();
            cluster.compose(&["start", "user-rpc-2"], minute).await?;
            cluster.until_view(&all, minute).await?;
            let back = start.elapsed();
            cluster.compose(&["start", "etcd-1"], minute).await?;
            let member = cluster.container("etcd-1").await?;
            let start = Instant::now();
            while cluster
                .docker(
                    &[
                        "exec",
                        &member,
                        "etcdctl",
                        "--endpoints=http://127.0.0.1:2379",
                        "endpoint",
                        "health",
                    ],
                    minute,
                )
                .await
                .is_err()
            {
                ensure!(start.elapsed() < 2 * minute, "etcd-1 not healthy again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(vec![
                format!("user-rpc-2's leaving matched {} after `stop`", secs(left)),
                format!("its return {} after `start`", secs(back)),
                format!("etcd-1 healthy {} after start", secs(start.elapsed())),
            ])
        })
        .await?,
    );

    let ui = support::get(&cluster.gateway(), "/debug/switchboard/ui").await?;
    ensure!(
        ui.status == 200 && ui.content_type.starts_with("text/html"),
        "/debug/switchboard/ui: {} {}",
        ui.status,
        ui.content_type
    );
    let metrics = support::get(&cluster.gateway(), "/metrics").await?;
    ensure!(
        metrics.status == 200
            && metrics
                .body
                .contains("switchboard_instance_calls_started_total"),
        "/metrics: {} {:.200}",
        metrics.status,
        metrics.body
    );

    println!("\ncompose_cluster: summary");
    println!("  image build                 {}", secs(build));
    println!("  up -d to first 200          {}", secs(first));
    println!(
        "  {:<38} {:>8} {:>8}  failures by status",
        "fault", "requests", "failed"
    );
    for fault in &faults {
        println!(
            "  {:<38} {:>8} {:>8}  {}",
            fault.name,
            fault.counts.requests(),
            fault.counts.failed(),
            fault.counts.failures()
        );
        for time in &fault.times {
            println!("  {:<38} {time}", "");
        }
    }
    let failed: u64 = faults.iter().map(|f| f.counts.failed()).sum();
    ensure!(failed == 0, "{failed} requests failed under the faults");
    cluster.passed = true;
    Ok(())
}
