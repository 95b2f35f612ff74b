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
        let mut child = Command::from(switchboard_testkit::child_command(env!(
            "CARGO_BIN_EXE_user-rpc"
        )))
        .args(["--name", name, "--listen", "127.0.0.1:0", "--etcd"])
        .arg(etcd.hosts())
        .args(["--key", "user.rpc", "--grace", "500ms"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
        let stdout = child.stdout.take().context("stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if line.starts_with("registered ") {
                    return Ok(line);
                }
            }
            bail!("{name} exited before registering")
        })
        .await
        .with_context(|| format!("{name} did not register within 30 s"))??;
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let addr = line
            .split_whitespace()
            .nth(1)
            .context("registered ADDR")?
            .to_owned();
        Ok(Self { child, addr })
    }

    pub(crate) fn signal(&self, signal: Signal) -> Result<()> {
        let pid = self.child.id().context("exited")?;
        kill(Pid::from_raw(i32::try_from(pid)?), signal)?;
        Ok(())
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
