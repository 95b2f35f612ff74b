//! What the example programs' tests share.

// Each test binary uses part of it.
#![allow(dead_code)]

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use switchboard_testkit::Etcd;
use tokio::process::{Child, Command};

/// A `user-rpc` process, killed when dropped.
pub(crate) struct UserRpc {
    pub(crate) child: Child,
    /// The address it registered.
    pub(crate) addr: String,
}

impl UserRpc {
    pub(crate) async fn start(name: &str, etcd: &Etcd) -> Result<Self> {
        let mut cmd = Command::from(switchboard_testkit::child_command(env!(
            "CARGO_BIN_EXE_user-rpc"
        )));
        cmd.args(["--name", name, "--listen", "127.0.0.1:0", "--etcd"])
            .arg(etcd.hosts())
            .args(["--key", "user.rpc", "--grace", "500ms"]);
        let (child, addr) = spawn_until_word(cmd, name, "registered ").await?;
        Ok(Self { child, addr })
    }

    /// Starts `user-rpc --config FILE`, FILE holding `yaml`.
    pub(crate) async fn start_with_config(
        name: &str,
        yaml: &str,
    ) -> Result<(Self, tempfile::TempDir)> {
        let dir = switchboard_testkit::temp_dir("userrpc")?;
        let path = dir.path().join("user.yaml");
        std::fs::write(&path, yaml)?;
        let mut cmd = Command::from(switchboard_testkit::child_command(env!(
            "CARGO_BIN_EXE_user-rpc"
        )));
        cmd.args(["--name", name, "--config"])
            .arg(&path)
            .args(["--grace", "500ms"]);
        let (child, addr) = spawn_until_word(cmd, name, "registered ").await?;
        Ok((Self { child, addr }, dir))
    }

    pub(crate) fn signal(&self, signal: Signal) -> Result<()> {
        let pid = self.child.id().context("exited")?;
        kill(Pid::from_raw(i32::try_from(pid)?), signal)?;
        Ok(())
    }
}

/// Spawns `cmd` and waits for its line that starts with `prefix`; returns the child and the
/// first word after the prefix (an address it bound, as it says).
async fn spawn_until_word(cmd: Command, name: &str, prefix: &str) -> Result<(Child, String)> {
    let (child, rest) = switchboard_testkit::spawn_until_line(cmd, name, prefix).await?;
    let word = rest
        .split_whitespace()
        .next()
        .with_context(|| format!("{prefix}WORD, not {prefix}{rest:?}"))?
        .to_owned();
    Ok((child, word))
}

/// The `gateway` program on a port of its choosing, healthy, killed when dropped.
pub(crate) struct Gateway {
    pub(crate) child: Child,
    /// `127.0.0.1:PORT`, where it listens.
    pub(crate) addr: String,
}

impl Gateway {
    /// Starts `gateway --listen 127.0.0.1:0 ARGS…`, reads the address it bound from its output
    /// and waits, at most 30 s, until `/healthz` answers 200.
    pub(crate) async fn start(args: &[&str]) -> Result<Self> {
        let mut cmd = Command::from(switchboard_testkit::child_command(env!(
            "CARGO_BIN_EXE_gateway"
        )));
        cmd.args(["--listen", "127.0.0.1:0"]).args(args);
        let (child, addr) = spawn_until_word(cmd, "gateway", "gateway listening on ").await?;
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            match get(&addr, "/healthz").await {
                Ok(answer) if answer.status == 200 => break,
                _ if std::time::Instant::now() > deadline => {
                    bail!("the gateway is not healthy after 30 s")
                }
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        Ok(Self { child, addr })
    }
}

/// Runs `cmd` (a command from `child_command`) to its end, with its output captured, for at
/// most `limit`; `name` names it in errors. Its process group is killed whether it finished,
/// failed or was cut off, so that what it started (a program's children, Chromium's helpers)
/// ends with it.
pub(crate) async fn output_within(
    mut cmd: Command,
    name: &str,
    limit: Duration,
) -> Result<std::process::Output> {
    let run = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let _group = switchboard_testkit::GroupGuard::new(run.id());
    let output = tokio::time::timeout(limit, run.wait_with_output())
        .await
        .with_context(|| format!("{name} did not finish within {limit:?}"))??;
    Ok(output)
}

/// An HTTP answer: status, content type, body.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) content_type: String,
    pub(crate) body: String,
}

pub(crate) async fn get(addr: &str, path: &str) -> Result<Answer> {
    get_within(addr, path, Duration::from_secs(10)).await
}

/// `GET path` on a new connection to `addr`, answered within `limit`.
pub(crate) async fn get_within(addr: &str, path: &str, limit: Duration) -> Result<Answer> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let request = hyper::Request::get(path)
            .header("host", "gateway")
            .body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(hyper::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = response.into_body().collect().await?.to_bytes();
        Ok(Answer {
            status,
            content_type,
            body: String::from_utf8(body.to_vec())?,
        })
    };
    tokio::time::timeout(limit, exchange)
        .await
        .with_context(|| format!("GET {path}: no answer within {limit:?}"))?
}
