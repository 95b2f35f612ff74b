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
use tokio::io::{AsyncBufReadExt, BufReader};
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
        let (child, addr) = spawn_until_line(cmd, name, "registered ").await?;
        Ok(Self { child, addr })
    }

    pub(crate) fn signal(&self, signal: Signal) -> Result<()> {
        let pid = self.child.id().context("exited")?;
        kill(Pid::from_raw(i32::try_from(pid)?), signal)?;
        Ok(())
    }
}

/// Spawns `cmd` (quiet logs, stdout piped, killed when dropped) and waits, at most 30 s, for
/// the line of its stdout that starts with `prefix`; returns the child and the word after the
/// prefix (an address it bound, as it says). Its stdout is drained after that.
async fn spawn_until_line(mut cmd: Command, name: &str, prefix: &str) -> Result<(Child, String)> {
    let mut child = cmd
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = child.stdout.take().context("stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(rest.to_owned());
            }
        }
        bail!("{name} exited before it printed {prefix:?}")
    })
    .await
    .with_context(|| format!("{name} did not print {prefix:?} within 30 s"))??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let word = line
        .split_whitespace()
        .next()
        .with_context(|| format!("{prefix}WORD, not {line:?}"))?
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
        let (child, addr) = spawn_until_line(cmd, "gateway", "gateway listening on ").await?;
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

/// An HTTP answer: status, content type, body.
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) content_type: String,
    pub(crate) body: String,
}

pub(crate) async fn get(addr: &str, path: &str) -> Result<Answer> {
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
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .with_context(|| format!("GET {path}: no answer within 10 s"))?
}
