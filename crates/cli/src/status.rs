//! `switchboard status`: a gateway's balancer snapshot (`GET /debug/switchboard`), as a table.
//!
//! The snapshot is the channelz-like JSON that `switchboard::balancer::ChannelSnapshot`
//! serialises to. Fields that older gateways do not send (`health`, `ejected`) show as `-`.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use http_body_util::{BodyExt, Empty};
use hyper::Uri;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use serde::Deserialize;

/// The path the gateway serves its snapshot on, below the URL given.
const SNAPSHOT_PATH: &str = "/debug/switchboard";

/// The largest snapshot read; a bigger answer is not a snapshot.
const MAX_BODY: usize = 64 << 20;

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// The gateway's base URL: `http://127.0.0.1:8888` (or `127.0.0.1:8888`).
    #[arg(long, value_name = "URL")]
    gateway: String,
    /// Print the snapshot's JSON as the gateway sent it.
    #[arg(long)]
    json: bool,
    /// Seconds to wait for the gateway before giving up.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    timeout: f64,
}

/// A balanced channel's snapshot, as the gateway serialises it.
#[derive(Debug, Deserialize)]
struct Snapshot {
    target: String,
    state: String,
    subchannels: Vec<Subchannel>,
}

/// One sub-channel of a [`Snapshot`].
#[derive(Debug, Deserialize)]
struct Subchannel {
    key: String,
    addr: String,
    state: String,
    #[serde(default)]
    health: Option<String>,
    #[serde(default)]
    ejected: Option<bool>,
    in_flight: u64,
    calls_started: u64,
    calls_succeeded: u64,
    calls_failed: u64,
    connects: u64,
    #[serde(default)]
    last_error: Option<String>,
}

pub(crate) async fn status(args: StatusArgs) -> Result<()> {
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .ok()
        .filter(|d| !d.is_zero())
        .context("--timeout must be a positive number of seconds")?;
    let url = snapshot_url(&args.gateway)?;
    let body = tokio::time::timeout(timeout, fetch(&url))
        .await
        .map_err(|_| anyhow::anyhow!("no answer from the gateway at {url} within {timeout:?}"))?
        .with_context(|| format!("cannot get the snapshot from the gateway at {url}"))?;
    let snapshot: Snapshot = serde_json::from_slice(&body).with_context(|| {
        format!(
            "the gateway at {url} did not answer a switchboard snapshot (it sent {:?})",
            preview(&body)
        )
    })?;
    let mut out = std::io::stdout().lock();
    if args.json {
        out.write_all(&body)?;
        if !body.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
    } else {
        out.write_all(table(&snapshot).as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

/// The snapshot's URL below the gateway's base URL.
fn snapshot_url(gateway: &str) -> Result<Uri> {
    let base = gateway.trim().trim_end_matches('/');
    let base = if base.contains("://") {
        base.to_owned()
    } else {
        format!("http://{base}")
    };
    let url: Uri = format!("{base}{SNAPSHOT_PATH}").parse().with_context(|| {
        format!("--gateway {gateway:?} is not a URL like http://127.0.0.1:8888")
    })?;
    match url.scheme_str() {
        Some("http") => {}
        Some(other) => bail!("--gateway {gateway:?}: only http:// is supported, not {other}://"),
        None => bail!("--gateway {gateway:?} is not a URL like http://127.0.0.1:8888"),
    }
    if url.host().is_none_or(str::is_empty) {
        bail!("--gateway {gateway:?} has no host");
    }
    Ok(url)
}

/// GETs `url` over HTTP/1.1 and returns the body of a 200 answer.
async fn fetch(url: &Uri) -> Result<Bytes> {
    let host = url.host().context("no host")?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host, port)).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let path = url.path_and_query().map_or(SNAPSHOT_PATH, |p| p.as_str());
    let authority = url.authority().map_or(host, |a| a.as_str());
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::ACCEPT, "application/json")
        .body(Empty::<Bytes>::new())?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = http_body_util::Limited::new(response.into_body(), MAX_BODY)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
        .to_bytes();
    if !status.is_success() {
        bail!("it answered {status}: {:?}", preview(&body));
    }
    Ok(body)
}

/// The start of a body, for error messages.
fn preview(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut preview: String = text.chars().take(120).collect();
    if text.chars().count() > 120 {
        preview.push('…');
    }
    preview
}

/// The snapshot as text: the target and its state, then an aligned table of sub-channels.
fn table(snapshot: &Snapshot) -> String {
    let mut text = format!(
        "target: {}\nstate:  {}\n\n",
        snapshot.target, snapshot.state
    );
    if snapshot.subchannels.is_empty() {
        text.push_str("(no sub-channels)\n");
        return text;
    }
    let header = [
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
        "LAST ERROR",
    ];
    let mut rows = vec![header.map(str::to_owned).to_vec()];
    for sub in &snapshot.subchannels {
        rows.push(vec![
            sub.key.clone(),
            sub.addr.clone(),
            sub.state.clone(),
            sub.health.clone().unwrap_or_else(|| "-".into()),
            sub.ejected
                .map_or("-", |e| if e { "yes" } else { "no" })
                .to_owned(),
            sub.in_flight.to_string(),
            sub.calls_started.to_string(),
            sub.calls_succeeded.to_string(),
            sub.calls_failed.to_string(),
            sub.connects.to_string(),
            sub.last_error
                .as_deref()
                .map_or_else(|| "-".to_owned(), one_line),
        ]);
    }
    let mut widths = vec![0; header.len()];
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = width - cell.chars().count();
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// `text` on one line: control characters (newlines in an error chain) become spaces.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_with_or_without_a_scheme() {
        let url = |s: &str| snapshot_url(s).map(|u| u.to_string());
        assert_eq!(
            url("127.0.0.1:8888").ok().as_deref(),
            Some("http://127.0.0.1:8888/debug/switchboard")
        );
        assert_eq!(
            url("http://127.0.0.1:8888/").ok().as_deref(),
            Some("http://127.0.0.1:8888/debug/switchboard")
        );
        assert_eq!(
            url("http://127.0.0.1:8888/edge").ok().as_deref(),
            Some("http://127.0.0.1:8888/edge/debug/switchboard")
        );
        assert!(url("https://127.0.0.1:8888").is_err());
        assert!(url("").is_err());
    }

    #[test]
    fn the_table_is_aligned_and_marks_absent_fields() -> Result<()> {
        let snapshot: Snapshot = serde_json::from_str(
            r#"{"target":"user.rpc","state":"READY","subchannels":[
              {"key":"user.rpc/1","addr":"127.0.0.1:9001","state":"READY","weight":1,
               "calls_started":10,"calls_succeeded":9,"calls_failed":1,"in_flight":0,
               "connects":1,"last_state_change_ms":0,"last_error":null},
              {"key":"user.rpc/22","addr":"127.0.0.1:9002","state":"TRANSIENT_FAILURE",
               "health":"NOT_SERVING","ejected":true,"weight":1,"calls_started":3,
               "calls_succeeded":0,"calls_failed":3,"in_flight":2,"connects":4,
               "last_state_change_ms":0,"last_error":"connection refused\nretrying"}]}"#,
        )?;
        let text = table(&snapshot);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "target: user.rpc");
        assert_eq!(lines[1], "state:  READY");
        assert_eq!(
            lines[3],
            "KEY          ADDR            STATE              HEALTH       EJECTED  IN-FLIGHT  STARTED  SUCCEEDED  FAILED  CONNECTS  LAST ERROR"
        );
        assert_eq!(
            lines[4],
            "user.rpc/1   127.0.0.1:9001  READY              -            -        0          10       9          1       1         -"
        );
        assert_eq!(
            lines[5],
            "user.rpc/22  127.0.0.1:9002  TRANSIENT_FAILURE  NOT_SERVING  yes      2          3        0          3       4         connection refused retrying"
        );
        Ok(())
    }
}
