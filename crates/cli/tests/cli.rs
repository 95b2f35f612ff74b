//! The `switchboard` command as an operator runs it: `resolve` prints what other clients
//! (etcdctl) registered, in every format; `register` holds a registration that `resolve` sees
//! until SIGTERM; `status` prints a gateway's balancer snapshot.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use axum::Router;
use axum::routing::get;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use switchboard_testkit::proto::user::RegisterRequest;
use switchboard_testkit::proto::user::user_client::UserClient;
use switchboard_testkit::{ClosedPort, Etcd, TestServer};

const PATIENCE: Duration = Duration::from_secs(30);

fn switchboard() -> Command {
    let mut cmd = switchboard_testkit::child_command(env!("CARGO_BIN_EXE_switchboard"));
    cmd.env("RUST_LOG", "error").stdin(Stdio::null());
    cmd
}

/// Registrations as Go services write them: `(key, value, addr)`.
fn registrations() -> Vec<(String, String, String)> {
    vec![
        ("plain/7587869245623241230".into(), "127.0.0.1:9001".into(), "127.0.0.1:9001".into()),
        ("plain/7587869245623241299".into(), "127.0.0.1:9002".into(), "127.0.0.1:9002".into()),
        (
            "naming/127.0.0.1:9003".into(),
            r#"{"Op":0,"Addr":"127.0.0.1:9003","Metadata":null}"#.into(),
            "127.0.0.1:9003".into(),
        ),
        (
            "/microservices/hello/5f1c".into(),
            r#"{"id":"5f1c","name":"hello","version":"v1","metadata":null,"endpoints":["http://127.0.0.1:8004","grpc://127.0.0.1:9004?isSecure=false"]}"#.into(),
            "127.0.0.1:9004".into(),
        ),
        (
            "/micro/registry/greeter/greeter-ab".into(),
            r#"{"name":"greeter","version":"latest","metadata":{},"nodes":[{"id":"greeter-ab","address":"127.0.0.1:9005","metadata":{}}]}"#.into(),
            "127.0.0.1:9005".into(),
        ),
    ]
}

#[tokio::test]
async fn resolve_once_prints_sorted_lines_for_every_format() -> Result<()> {
    let etcd = Etcd::start().await?;
    for (key, value, _) in registrations() {
        etcd.etcdctl(&["put", &key, &value])?;
    }
    etcd.etcdctl(&["put", "plain/garbage", "not an address"])?;
    let cases = [
        (
            "plain",
            "plain",
            vec![
                "plain/7587869245623241230 127.0.0.1:9001",
                "plain/7587869245623241299 127.0.0.1:9002",
            ],
        ),
        (
            "naming",
            "etcd-naming",
            vec!["naming/127.0.0.1:9003 127.0.0.1:9003"],
        ),
        (
            "/microservices/hello",
            "kratos",
            vec!["/microservices/hello/5f1c 127.0.0.1:9004"],
        ),
        (
            "/micro/registry/greeter",
            "go-micro",
            vec!["/micro/registry/greeter/greeter-ab 127.0.0.1:9005"],
        ),
    ];
    for (prefix, format, expected) in cases {
        for format in ["auto", format] {
            let out = switchboard()
                .args([
                    "resolve",
                    "--etcd",
                    &etcd.hosts(),
                    "--key",
                    prefix,
                    "--format",
                    format,
                ])
                .output()?;
            assert!(
                out.status.success(),
                "{prefix} {format}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let stdout = String::from_utf8(out.stdout)?;
            assert_eq!(
                stdout.lines().collect::<Vec<_>>(),
                expected,
                "{prefix} {format}"
            );
        }
    }
    Ok(())
}

/// Reads the lines a child prints, on a thread, so the test can wait for them with a bound.
struct Lines {
    child: Child,
    rx: mpsc::Receiver<String>,
}

impl Lines {
    fn spawn(mut cmd: Command) -> Result<Self> {
        let mut child = cmd.stdout(Stdio::piped()).spawn()?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self { child, rx })
    }

    /// The next `n` lines, in any order, sorted.
    fn next(&self, n: usize) -> Result<Vec<String>> {
        let deadline = Instant::now() + PATIENCE;
        let mut lines = Vec::new();
        while lines.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(line) => lines.push(line),
                Err(_) => bail!("expected {n} lines, got {lines:?}"),
            }
        }
        lines.sort();
        Ok(lines)
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn resolve_watch_prints_each_update() -> Result<()> {
    let etcd = Etcd::start().await?;
    let regs = registrations();
    etcd.etcdctl(&["put", &regs[0].0, &regs[0].1])?;
    let mut cmd = switchboard();
    cmd.args([
        "resolve",
        "--etcd",
        &etcd.hosts(),
        "--key",
        "plain",
        "--watch",
    ]);
    let watch = Lines::spawn(cmd)?;
    assert_eq!(
        watch.next(1)?,
        ["+ plain/7587869245623241230 127.0.0.1:9001"]
    );

    etcd.etcdctl(&["put", &regs[1].0, &regs[1].1])?;
    assert_eq!(
        watch.next(1)?,
        ["+ plain/7587869245623241299 127.0.0.1:9002"]
    );
    etcd.etcdctl(&["put", &regs[1].0, "127.0.0.1:9010"])?;
    assert_eq!(
        watch.next(1)?,
        ["+ plain/7587869245623241299 127.0.0.1:9010"]
    );
    etcd.etcdctl(&["del", &regs[0].0])?;
    assert_eq!(
        watch.next(1)?,
        ["- plain/7587869245623241230 127.0.0.1:9001"]
    );

    // Every format, in one watch under one prefix.
    let mut cmd = switchboard();
    cmd.args([
        "resolve",
        "--etcd",
        &etcd.hosts(),
        "--key",
        "mixed",
        "--watch",
    ]);
    let mixed = Lines::spawn(cmd)?;
    let mut expected = Vec::new();
    for (i, (_, value, addr)) in regs.iter().enumerate() {
        let key = format!("mixed/{i}");
        etcd.etcdctl(&["put", &key, value])?;
        expected.push(format!("+ {key} {addr}"));
    }
    assert_eq!(mixed.next(expected.len())?, expected);
    Ok(())
}

#[test]
fn unreachable_etcd_fails_within_the_timeout() -> Result<()> {
    let closed = ClosedPort::new()?;
    let port = closed.port();
    let started = Instant::now();
    let out = switchboard()
        .args([
            "resolve",
            "--etcd",
            &format!("127.0.0.1:{port}"),
            "--key",
            "x",
            "--timeout",
            "2",
        ])
        .output()?;
    assert!(!out.status.success());
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    let stderr = String::from_utf8(out.stderr)?;
    assert!(
        stderr.contains(&format!(
            "no listing from etcd at 127.0.0.1:{port} within 2s"
        )),
        "{stderr}"
    );
    // What went wrong, not only that something did.
    assert!(stderr.contains("connection refused"), "{stderr}");
    assert!(out.stdout.is_empty());

    let bad = switchboard()
        .args(["resolve", "--etcd", "", "--key", "x"])
        .output()?;
    assert!(!bad.status.success());
    assert!(String::from_utf8(bad.stderr)?.contains("no etcd endpoint"));
    let bad = switchboard()
        .args([
            "resolve",
            "--etcd",
            "127.0.0.1:2379",
            "--key",
            "x",
            "--format",
            "xml",
        ])
        .output()?;
    assert!(!bad.status.success());
    assert!(String::from_utf8(bad.stderr)?.contains("unknown registration format"));
    Ok(())
}

#[tokio::test]
async fn resolve_takes_the_etcd_password_from_the_environment_or_a_file() -> Result<()> {
    let etcd = Etcd::start().await?;
    let mut admin = etcd.client().await?;
    admin.user_add("root", "s3cret", None).await?;
    admin.user_grant_role("root", "root").await?;
    admin.auth_enable().await?;
    let mut root = etcd_client::Client::connect(
        [etcd.endpoint(0)],
        Some(etcd_client::ConnectOptions::new().with_user("root", "s3cret")),
    )
    .await?;
    root.put("auth.rpc/1", "127.0.0.1:9500", None).await?;
    let dir = switchboard_testkit::temp_dir("clipassword")?;
    let (right, wrong) = (dir.path().join("right"), dir.path().join("wrong"));
    std::fs::write(&right, "s3cret\n")?;
    std::fs::write(&wrong, "guess\n")?;
    let resolve = |extra: &[&str], env: Option<&str>| -> Result<(bool, String, String)> {
        let mut cmd = switchboard();
        cmd.args([
            "resolve",
            "--etcd",
            &etcd.hosts(),
            "--key",
            "auth.rpc",
            "--timeout",
            "3",
        ])
        .args(extra)
        .env_remove("SWITCHBOARD_ETCD_PASSWORD");
        if let Some(password) = env {
            cmd.env("SWITCHBOARD_ETCD_PASSWORD", password);
        }
        let out = cmd.output()?;
        Ok((
            out.status.success(),
            String::from_utf8(out.stdout)?,
            String::from_utf8(out.stderr)?,
        ))
    };
    let listed = "auth.rpc/1 127.0.0.1:9500\n";
    let file = right.to_string_lossy();
    let (ok, out, err) = resolve(&["--user", "root", "--password-file", &file], None)?;
    assert!(ok && out == listed, "{out} {err}");
    let (ok, out, err) = resolve(&["--user", "root"], Some("s3cret"))?;
    assert!(ok && out == listed, "{out} {err}");
    let (ok, _, err) = resolve(&["--user", "root"], None)?;
    assert!(!ok && err.contains("--user needs a password"), "{err}");
    let file = wrong.to_string_lossy();
    let (ok, _, err) = resolve(&["--user", "root", "--password-file", &file], None)?;
    assert!(!ok && err.contains("authentication failed"), "{err}");
    // Neither password shows in what it printed.
    assert!(!err.contains("guess") && !err.contains("s3cret"), "{err}");
    Ok(())
}

/// `switchboard resolve --key KEY` against `etcd`: its `KEY ADDR` lines.
fn resolved(etcd: &Etcd, key: &str) -> Result<Vec<String>> {
    let out = switchboard()
        .args(["resolve", "--etcd", &etcd.hosts(), "--key", key])
        .output()?;
    if !out.status.success() {
        bail!("resolve: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .map(str::to_owned)
        .collect())
}

/// Waits, up to [`PATIENCE`], until the child exits; its exit status.
fn wait_exit(child: &mut Child) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() > deadline {
            bail!("the process did not exit within {PATIENCE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn terminate(child: &Child) -> Result<()> {
    kill(Pid::from_raw(i32::try_from(child.id())?), Signal::SIGTERM)?;
    Ok(())
}

#[tokio::test]
async fn register_holds_the_registration_until_sigterm() -> Result<()> {
    let etcd = Etcd::start().await?;
    let mut cmd = switchboard();
    cmd.args([
        "register",
        "--etcd",
        &etcd.hosts(),
        "--key",
        "user.rpc",
        "--addr",
        "127.0.0.1:9001",
        "--ttl",
        "2",
    ]);
    let mut register = Lines::spawn(cmd)?;
    let line = register.next(1)?.remove(0);
    // `registered user.rpc/<lease> → 127.0.0.1:9001 (lease <lease>, ttl 2s)`: go-zero's key.
    let (key, rest) = line
        .strip_prefix("registered ")
        .and_then(|l| l.split_once(" → "))
        .with_context(|| format!("unexpected first line: {line:?}"))?;
    let lease = key
        .strip_prefix("user.rpc/")
        .context("key under user.rpc/")?;
    assert_eq!(rest, format!("127.0.0.1:9001 (lease {lease}, ttl 2s)"));
    assert_eq!(
        resolved(&etcd, "user.rpc")?,
        [format!("{key} 127.0.0.1:9001")]
    );

    // Kept alive past two TTLs: still there, under the same key.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        assert_eq!(
            resolved(&etcd, "user.rpc")?,
            [format!("{key} 127.0.0.1:9001")]
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    terminate(&register.child)?;
    let status = wait_exit(&mut register.child)?;
    assert!(status.success(), "{status}");
    assert_eq!(register.next(1)?, [format!("deregistered {key}")]);
    // Gone at once (the lease was revoked), not after the TTL.
    assert_eq!(resolved(&etcd, "user.rpc")?, Vec::<String>::new());

    // grpc-go's format, with its address as the key; SIGINT works too.
    let mut cmd = switchboard();
    cmd.args([
        "register",
        "--etcd",
        &etcd.hosts(),
        "--key",
        "greeter",
        "--addr",
        "127.0.0.1:9002",
        "--format",
        "etcd-naming",
    ]);
    let mut register = Lines::spawn(cmd)?;
    let line = register.next(1)?.remove(0);
    assert!(
        line.starts_with("registered greeter/127.0.0.1:9002 → 127.0.0.1:9002 (lease ")
            && line.ends_with(", ttl 10s)"),
        "{line}"
    );
    let value = etcd.etcdctl(&["get", "greeter/127.0.0.1:9002", "--print-value-only"])?;
    let value: serde_json::Value = serde_json::from_str(value.trim())?;
    assert_eq!(value["Addr"], "127.0.0.1:9002", "{value}");
    assert_eq!(value["Op"], 0, "{value}");
    kill(
        Pid::from_raw(i32::try_from(register.child.id())?),
        Signal::SIGINT,
    )?;
    assert!(wait_exit(&mut register.child)?.success());
    assert_eq!(resolved(&etcd, "greeter")?, Vec::<String>::new());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_go_client_over_etcd_naming_follows_what_register_holds() -> Result<()> {
    let etcd = Etcd::start().await?;
    let servers = [
        TestServer::start("r1").await?,
        TestServer::start("r2").await?,
    ];
    let mut held = Vec::new();
    for server in &servers {
        let addr = server.addr().to_string();
        let mut cmd = switchboard();
        cmd.args(["register", "--etcd", &etcd.hosts(), "--key", "user.rpc"])
            .args(["--addr", &addr, "--format", "etcd-naming"]);
        let register = Lines::spawn(cmd)?;
        let line = register.next(1)?.remove(0);
        assert!(line.starts_with("registered user.rpc/"), "{line}");
        held.push(register);
    }
    // grpc-go's round_robin over etcd's own naming resolver (Debian's grpc-go 1.33 and etcd
    // 3.4): every call succeeds, and once r1's `register` gets SIGTERM, every call goes to r2.
    let mut r1 = held.remove(0);
    let followed = switchboard_testkit::go_client_follows_a_leave(
        &etcd.hosts(),
        "user.rpc",
        &["r1", "r2"],
        "r2",
        async move {
            terminate(&r1.child)?;
            let status = wait_exit(&mut r1.child)?;
            anyhow::ensure!(status.success(), "register exited with {status}");
            Ok(())
        },
    )
    .await?;
    println!("`switchboard register` r1 left: {}", followed.summary);
    Ok(())
}

#[test]
fn register_fails_clearly_on_bad_input_and_unreachable_etcd() -> Result<()> {
    let closed = ClosedPort::new()?;
    let port = closed.port();
    let etcd = format!("127.0.0.1:{port}");
    let run = |args: &[&str]| -> Result<(bool, String)> {
        let out = switchboard()
            .args(["register", "--etcd", &etcd, "--key", "svc"])
            .args(args)
            .output()?;
        Ok((out.status.success(), String::from_utf8(out.stderr)?))
    };
    let started = Instant::now();
    let (ok, stderr) = run(&["--addr", "127.0.0.1:9001", "--timeout", "2"])?;
    assert!(!ok);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(
        stderr.contains(&format!("registering in etcd at 127.0.0.1:{port}"))
            && stderr.contains("could not register within 2s"),
        "{stderr}"
    );
    let (ok, stderr) = run(&["--addr", "nowhere"])?;
    assert!(
        !ok && stderr.contains("address: `nowhere` has no port"),
        "{stderr}"
    );
    let (ok, stderr) = run(&["--addr", "127.0.0.1:9001", "--ttl", "1"])?;
    assert!(
        !ok && stderr.contains("below etcd's minimum of 2s"),
        "{stderr}"
    );
    Ok(())
}

/// An HTTP server on 127.0.0.1 with `app`'s routes; stops when the test's runtime does.
async fn serve(app: Router) -> Result<String> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}"))
}

/// `switchboard status --gateway URL [extra…]`, run off the test's runtime.
async fn status(url: &str, extra: &[&str]) -> Result<(bool, String, String)> {
    let mut cmd = tokio::process::Command::from(switchboard_testkit::child_command(env!(
        "CARGO_BIN_EXE_switchboard"
    )));
    cmd.args(["status", "--gateway", url])
        .args(extra)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    let out = tokio::time::timeout(PATIENCE, cmd.output()).await??;
    Ok((
        out.status.success(),
        String::from_utf8(out.stdout)?,
        String::from_utf8(out.stderr)?,
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_prints_a_balancers_snapshot_as_a_table() -> Result<()> {
    let a = TestServer::start("a").await?;
    let b = TestServer::start("b").await?;
    let yaml = format!("Endpoints: [{}, {}]\n", a.addr(), b.addr());
    let client = switchboard::Client::connect(switchboard::ClientConfig::from_yaml(&yaml)?).await?;
    let deadline = Instant::now() + PATIENCE;
    while client.balancer().snapshot().ready() < 2 {
        if Instant::now() > deadline {
            bail!("not READY: {:?}", client.balancer().snapshot());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut users = UserClient::new(client.channel());
    for _ in 0..4 {
        users.register(RegisterRequest::default()).await?;
    }
    // What the gateway serves at /debug/switchboard.
    let balancer = client.clone();
    let url = serve(Router::new().route(
        "/debug/switchboard",
        get(move || {
            let snapshot = balancer.balancer().snapshot();
            async move { axum::Json(snapshot) }
        }),
    ))
    .await?;

    let (ok, stdout, stderr) = status(&url, &[]).await?;
    assert!(ok, "{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines[0],
        format!("target: {},{}", a.addr(), b.addr()),
        "{stdout}"
    );
    assert_eq!(lines[1], "state:  READY", "{stdout}");
    let header: Vec<&str> = lines[3].split("  ").filter(|c| !c.is_empty()).collect();
    assert_eq!(
        header.iter().map(|c| c.trim()).collect::<Vec<_>>(),
        [
            "KEY",
            "ADDR",
            "STATE",
            "HEALTH",
            "EJECTED",
            "IN-FLIGHT",
            "STARTED",
            "SUCCEEDED",
            "FAILED",
            "CONNECTS",
            "LAST ERROR"
        ],
        "{stdout}"
    );
    // Columns are aligned: every row's address starts where the header's does.
    let addr_column = lines[3].find("ADDR").context("ADDR")?;
    let mut started = 0;
    let mut addrs = Vec::new();
    for line in &lines[4..] {
        let addr = line.get(addr_column..).unwrap_or_default();
        let cells: Vec<&str> = addr.split_whitespace().collect();
        addrs.push(cells[0].to_owned());
        assert_eq!(cells[1], "READY", "{stdout}");
        started += cells[5].parse::<u64>()?;
        assert_eq!(cells[5], cells[6], "every call succeeded: {stdout}");
        assert_eq!(cells[7], "0", "{stdout}");
    }
    addrs.sort();
    let mut expected = vec![a.addr().to_string(), b.addr().to_string()];
    expected.sort();
    assert_eq!(addrs, expected, "{stdout}");
    assert_eq!(lines.len(), 6, "{stdout}");
    assert_eq!(started, 4, "{stdout}");

    let (ok, stdout, stderr) = status(&url, &["--json"]).await?;
    assert!(ok, "{stderr}");
    let json: serde_json::Value = serde_json::from_str(&stdout)?;
    assert_eq!(json["state"], "READY");
    assert_eq!(
        json["subchannels"].as_array().map(Vec::len),
        Some(2),
        "{json}"
    );
    Ok(())
}

#[tokio::test]
async fn status_shows_health_and_ejection_and_fails_on_garbage() -> Result<()> {
    let snapshot = r#"{"target":"user.rpc","state":"TRANSIENT_FAILURE","subchannels":[
        {"key":"user.rpc/1","addr":"127.0.0.1:9001","state":"TRANSIENT_FAILURE",
         "health":"NOT_SERVING","ejected":true,"weight":1,"calls_started":7,
         "calls_succeeded":3,"calls_failed":4,"in_flight":0,"connects":5,
         "last_state_change_ms":1,"last_error":"connecting to 127.0.0.1:9001: refused"},
        {"key":"user.rpc/2","addr":"127.0.0.1:9002","state":"IDLE","weight":1,
         "calls_started":0,"calls_succeeded":0,"calls_failed":0,"in_flight":0,
         "connects":0,"last_state_change_ms":1,"last_error":null}]}"#;
    let url = serve(
        Router::new()
            .route("/debug/switchboard", get(move || async move { snapshot }))
            .route(
                "/garbage/debug/switchboard",
                get(|| async { "<html>hello</html>" }),
            ),
    )
    .await?;
    let (ok, stdout, stderr) = status(&url, &[]).await?;
    assert!(ok, "{stderr}");
    let rows: Vec<Vec<&str>> = stdout
        .lines()
        .skip(4)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        [
            "user.rpc/1",
            "127.0.0.1:9001",
            "TRANSIENT_FAILURE",
            "NOT_SERVING",
            "yes",
            "0",
            "7",
            "3",
            "4",
            "5",
            "connecting",
            "to",
            "127.0.0.1:9001:",
            "refused"
        ],
        "{stdout}"
    );
    // A gateway whose snapshot has no health or ejection yet: `-`.
    assert_eq!(
        rows[1],
        [
            "user.rpc/2",
            "127.0.0.1:9002",
            "IDLE",
            "-",
            "-",
            "0",
            "0",
            "0",
            "0",
            "0",
            "-"
        ],
        "{stdout}"
    );
    let (ok, stdout, _) = status(&url, &["--json"]).await?;
    assert!(ok);
    assert_eq!(stdout.trim_end(), snapshot);

    let (ok, stdout, stderr) = status(&format!("{url}/garbage"), &[]).await?;
    assert!(!ok && stdout.is_empty());
    assert!(
        stderr.contains("did not answer a switchboard snapshot") && stderr.contains("<html>hello"),
        "{stderr}"
    );
    let (ok, _, stderr) = status(&format!("{url}/nothing"), &[]).await?;
    assert!(!ok && stderr.contains("404 Not Found"), "{stderr}");
    let closed = ClosedPort::new()?;
    let port = closed.port();
    let (ok, _, stderr) = status(&format!("127.0.0.1:{port}"), &[]).await?;
    assert!(
        !ok && stderr.contains(&format!(
            "cannot get the snapshot from the gateway at http://127.0.0.1:{port}/debug/switchboard"
        )) && stderr.contains("Connection refused"),
        "{stderr}"
    );
    let (ok, _, stderr) = status("https://127.0.0.1:1", &[]).await?;
    assert!(
        !ok && stderr.contains("only http:// is supported"),
        "{stderr}"
    );
    Ok(())
}
