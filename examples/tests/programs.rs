//! The example programs, run as a user would run them, against test servers on 127.0.0.1.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use switchboard_testkit::TestServer;
use tokio::process::Command;

#[tokio::test]
async fn loadgen_reports_rate_latency_errors_and_cpu() -> Result<()> {
    let a = TestServer::start("a").await?;
    let b = TestServer::start("b").await?;
    let endpoints = format!("{},{}", a.addr(), b.addr());
    let run = |method: &'static str| {
        Command::from(switchboard_testkit::child_command(env!(
            "CARGO_BIN_EXE_loadgen"
        )))
        .args([
            "--endpoints",
            &endpoints,
            "--concurrency",
            "4",
            "--duration",
            "1s",
        ])
        .args(["--method", method])
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
    };
    let out =
        tokio::time::timeout(Duration::from_secs(60), run("/user.User/GetUserInfo")).await??;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout)?;
    let last = stdout.lines().last().unwrap_or_default();
    let fields: Vec<&str> = last
        .split(' ')
        .map(|f| f.split('=').next().unwrap_or(""))
        .collect();
    assert_eq!(
        fields,
        ["rps", "p50_us", "p99_us", "errors", "cpu_us_per_rpc"],
        "{stdout}"
    );
    assert!(last.contains(" errors=0 "), "{stdout}");
    assert!(a.served() > 0 && b.served() > 0, "both instances served");

    let out = tokio::time::timeout(Duration::from_secs(60), run("/user.User/Nope")).await??;
    let stdout = String::from_utf8(out.stdout)?;
    assert!(
        stdout
            .lines()
            .next()
            .unwrap_or_default()
            .starts_with("error Unimplemented: "),
        "{stdout}"
    );
    Ok(())
}

async fn get(addr: &str, path: &str) -> Result<(u16, serde_json::Value)> {
    let answer = support::get(addr, path).await?;
    Ok((answer.status, serde_json::from_str(&answer.body)?))
}

/// A `gateway` process with a client config file, healthy.
struct Gateway {
    child: tokio::process::Child,
    addr: String,
    _config: tempfile::TempDir,
}

impl Gateway {
    /// Starts `gateway --user-rpc FILE` with `yaml` in FILE and waits until `/healthz` is 200.
    async fn start(yaml: &str) -> Result<Self> {
        let dir = switchboard_testkit::temp_dir("gateway")?;
        let config = dir.path().join("user-rpc.yaml");
        std::fs::write(&config, yaml)?;
        let config = config.to_str().context("a UTF-8 path")?;
        let support::Gateway { child, addr } =
            support::Gateway::start(&["--user-rpc", config]).await?;
        Ok(Self {
            child,
            addr,
            _config: dir,
        })
    }
}

#[tokio::test]
async fn the_gateway_turns_http_into_balanced_grpc_calls() -> Result<()> {
    let a = TestServer::start("a").await?;
    let b = TestServer::start("b").await?;
    let gateway = Gateway::start(&format!(
        "Endpoints: [{}, {}]\nTimeout: 2000\n",
        a.addr(),
        b.addr()
    ))
    .await?;
    let addr = gateway.addr.clone();
    let mut instances = std::collections::BTreeSet::new();
    for id in 1..=10 {
        let (status, body) = get(&addr, &format!("/api/user/{id}")).await?;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["id"], id);
        instances.insert(body["instance"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(instances.len(), 2, "{instances:?}");
    let (status, debug) = get(&addr, "/debug/switchboard").await?;
    assert_eq!(status, 200);
    assert_eq!(debug["state"], "READY");
    assert_eq!(
        debug["subchannels"].as_array().map(Vec::len),
        Some(2),
        "{debug}"
    );

    // An instance that stops: the gateway goes on answering from the other.
    a.abort();
    for id in 1..=10 {
        let (status, body) = get(&addr, &format!("/api/user/{id}")).await?;
        assert_eq!(status, 200, "{body}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_finishes_its_requests_and_exits_on_sigterm() -> Result<()> {
    let slow = TestServer::start("slow").await?;
    slow.set_delay(Duration::from_millis(1500));
    let mut gateway =
        Gateway::start(&format!("Endpoints: [{}]\nTimeout: 10s\n", slow.addr())).await?;
    let addr = gateway.addr.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    let served = slow.served();
    let in_flight = tokio::spawn({
        let addr = addr.clone();
        async move { get(&addr, "/api/user/7").await }
    });
    // SIGTERM once the request is at the server, not before.
    while slow.served() == served && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = gateway
        .child
        .id()
        .ok_or_else(|| anyhow::anyhow!("the gateway exited early"))?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid)?),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let signalled = Instant::now();
    let (status, body) = in_flight.await??;
    assert_eq!(status, 200, "the request in flight was cut: {body}");
    assert_eq!(body["id"], 7);
    let exit = tokio::time::timeout(Duration::from_secs(30), gateway.child.wait()).await??;
    println!(
        "gateway exited {exit} {:?} after SIGTERM",
        signalled.elapsed()
    );
    assert!(exit.success(), "{exit}");
    assert!(
        tokio::net::TcpStream::connect(&addr).await.is_err(),
        "the gateway still listens"
    );
    Ok(())
}

/// Runs the demo with `--registry REGISTRY` and returns its output, checking it exits 0.
async fn demo(registry: &str) -> Result<String> {
    let mut cmd = Command::from(switchboard_testkit::child_command(env!(
        "CARGO_BIN_EXE_demo"
    )));
    cmd.args(["--registry", registry]);
    // On a timeout or a failure, the demo's etcd, instances and gateway end with it.
    let output = support::output_within(cmd, "the demo", Duration::from_secs(120)).await?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    if !output.status.success() {
        bail!(
            "demo --registry {registry} failed: {}\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(stdout)
}

/// Each instance's total in the demo's summary.
fn served(stdout: &str, instance: &str) -> Option<u64> {
    stdout.lines().find_map(|l| {
        l.trim()
            .strip_prefix(&format!("{instance}: "))?
            .strip_suffix(" requests")?
            .parse()
            .ok()
    })
}

#[tokio::test]
async fn the_demo_moves_traffic_with_no_failed_request() -> Result<()> {
    let stdout = demo("etcd").await?;
    assert!(stdout.contains(", 0 failed"), "{stdout}");
    for instance in ["user-rpc-1", "user-rpc-2", "user-rpc-3", "user-rpc-4"] {
        assert!(
            served(&stdout, instance).is_some_and(|n| n > 0),
            "{instance}: {stdout}"
        );
    }
    assert!(
        stdout.contains("OK: traffic followed etcd live"),
        "{stdout}"
    );
    assert!(!stdout.contains("IN-MEMORY"), "{stdout}");
    Ok(())
}

#[tokio::test]
async fn without_etcd_the_demo_says_loudly_it_runs_in_memory() -> Result<()> {
    let stdout = demo("memory").await?;
    assert!(
        stdout.contains("THIS RUN USES AN IN-MEMORY REGISTRY, NOT ETCD"),
        "{stdout}"
    );
    assert!(stdout.contains(", 0 failed"), "{stdout}");
    for instance in ["user-rpc-1", "user-rpc-2", "user-rpc-3", "user-rpc-4"] {
        assert!(
            served(&stdout, instance).is_some_and(|n| n > 0),
            "{instance}: {stdout}"
        );
    }
    Ok(())
}

/// `user-rpc --config` reads go-zero's `RpcServerConf` as goctl writes it, with `Etcd.ID`
/// and the server's own deadlines: it registers under `Key/ID`; `Auth` is refused with the
/// reason. (What each field does is tested on `Server::from_config` in `server_config.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_rpc_reads_a_go_zero_server_config() -> Result<()> {
    let etcd = switchboard_testkit::Etcd::start().await?;
    let yaml = format!(
        "Name: user.rpc
ListenOn: 127.0.0.1:0
Etcd:
  Hosts:
  - {}
  Key: user.rpc
  ID: 42
Timeout: 2000
MethodTimeouts:
  - FullMethod: /user.User/WatchEvents
    Timeout: 1s
",
        etcd.hosts()
    );
    let (server, _dir) = support::UserRpc::start_with_config("configured", &yaml).await?;
    let mut kv = etcd.client().await?;
    let got = kv.get("user.rpc/42", None).await?;
    let value = got
        .kvs()
        .first()
        .map(|kv| kv.value_str().unwrap_or_default().to_owned());
    if value.as_deref() != Some(server.addr.as_str()) {
        bail!("registered {value:?}, not {}", server.addr);
    }
    // A bad config is refused with the reason, and the program exits non-zero.
    let dir = switchboard_testkit::temp_dir("badconf")?;
    let path = dir.path().join("user.yaml");
    std::fs::write(&path, "ListenOn: 127.0.0.1:0\nAuth: true\n")?;
    let out = Command::from(switchboard_testkit::child_command(env!(
        "CARGO_BIN_EXE_user-rpc"
    )))
    .arg("--config")
    .arg(&path)
    .stdin(Stdio::null())
    .output()
    .await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success()
        || !stderr.contains("Auth: go-zero's token check against Redis is not supported")
    {
        bail!("{:?}: {stderr}", out.status);
    }
    Ok(())
}
