//! `switchboard resolve` prints what other clients (etcdctl) registered, in every format.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use switchboard_testkit::{Etcd, free_port};

const PATIENCE: Duration = Duration::from_secs(30);

fn switchboard() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_switchboard"));
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
    let port = free_port()?;
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
        stderr.contains(&format!("cannot reach etcd at 127.0.0.1:{port} within 2s")),
        "{stderr}"
    );
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
