//! The Go conformance peer: real grpc-go servers and an etcd-naming grpc-go client, for interop
//! tests.
//!
//! `conformance/go/switchboard-peer` is built from Debian's packages alone (`golang-go`,
//! `golang-google-grpc-dev` = grpc-go 1.33, `golang-etcd-server-dev` = etcd 3.4's clientv3 and
//! its `naming/endpoints` and `naming/resolver`) in GOPATH mode, into `target/go/`, the first
//! time a test asks for it and whenever its sources are newer than the binary.
//!
//! - As a server, it is started like the `test-server` binary, with [`ServerProcess`]:
//!   `switchboard-peer --name N --port P [flags]` serves `user.User` (`GetUserInfo`,
//!   `WatchEvents`, `Upload`, `Chat`; gzip accepted) and `grpc.health.v1`, prints
//!   `listening 127.0.0.1:P` and then what it sees (`cancelled METHOD`, `compressed …`: the list
//!   is in `main.go`), and leaves gracefully on SIGTERM. Each reply's `username` is `conn=C peak=K`: the server's number for the connection
//!   the call came over and the most calls it has had in flight at once. Flags:
//!   `--max-connection-age D`, `--max-connection-age-grace D`, `--max-concurrent-streams N`,
//!   `--keepalive-min-time D` (enforcement policy, `PermitWithoutStream: false`), `--not-serving`
//!   (SIGUSR1 flips it: [`ServerProcess::flip_health`]), `--delay D`, `--stall` (`GetUserInfo`
//!   sends its headers and then nothing), and `--etcd HOSTS --target T
//!   [--lease-ttl S]`: register with etcd's own `endpoints.Manager` under `T/ADDR`, with a lease
//!   kept alive, deleted and revoked on SIGTERM.
//! - As a client, [`GoClient`] runs `switchboard-peer call`: a grpc-go `ClientConn` on
//!   `etcd:///TARGET` through etcd's naming resolver, with `round_robin`, calling `GetUserInfo`.
//!
//! [`ServerProcess`]: crate::ServerProcess
//! [`ServerProcess::flip_health`]: crate::ServerProcess::flip_health

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{OnceCell, mpsc};
use tracing::{debug, info};

/// Where Debian's Go packages put their sources.
const DEBIAN_GOPATH: &str = "/usr/share/gocode";

/// How long a `go build` of the peer may take (a cold build on two busy cores is ~30 s).
const BUILD_LIMIT: Duration = Duration::from_secs(300);

/// How long the client gets to resolve and connect, and to print its summary when stopped.
const CLIENT_LIMIT: Duration = Duration::from_secs(60);

static BINARY: OnceCell<PathBuf> = OnceCell::const_new();

/// The peer's sources, in the repository.
fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../conformance/go/switchboard-peer")
}

/// Where the binary goes: `go/` in the cargo target directory of the running test (found from
/// its own path, `TARGET/PROFILE/deps/NAME`), else in the workspace's `target/`.
fn output_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let deps = exe.ancestors().find(|a| a.ends_with("deps"))?;
            Some(deps.parent()?.parent()?.to_path_buf())
        })
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
        .join("go")
}

/// The peer's binary, built if it is missing or older than its sources.
///
/// `SWITCHBOARD_GO_PEER` names a binary built elsewhere. Sources are found in Debian's
/// `/usr/share/gocode`, then in `$GOPATH` if set.
pub async fn go_peer_bin() -> Result<PathBuf> {
    BINARY.get_or_try_init(build).await.cloned()
}

async fn build() -> Result<PathBuf> {
    if let Some(bin) = std::env::var_os("SWITCHBOARD_GO_PEER") {
        return Ok(PathBuf::from(bin));
    }
    let sources = source_dir();
    let out = output_dir();
    let bin = out.join("switchboard-peer");
    let newest_source = std::fs::read_dir(&sources)
        .with_context(|| format!("reading {}", sources.display()))?
        .filter_map(|e| e.ok()?.metadata().ok()?.modified().ok())
        .max()
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let built = std::fs::metadata(&bin).and_then(|m| m.modified()).ok();
    if built.is_some_and(|b| b >= newest_source) {
        return Ok(bin);
    }
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    // Several test processes may build at once: each writes its own file and renames it.
    let partial = out.join(format!("switchboard-peer.{}.partial", std::process::id()));
    let gopath = match std::env::var("GOPATH") {
        Ok(own) if !own.is_empty() => format!("{DEBIAN_GOPATH}:{own}"),
        _ => DEBIAN_GOPATH.to_string(),
    };
    info!(sources = %sources.display(), "building the Go conformance peer");
    let mut command = Command::new("go");
    command
        .args(["build", "-o"])
        .arg(&partial)
        .arg(".")
        .current_dir(&sources)
        .env("GOPATH", &gopath)
        .env("GO111MODULE", "off")
        .env("GOFLAGS", "")
        .env("GOCACHE", out.join("cache"))
        .kill_on_drop(true);
    let output = match tokio::time::timeout(BUILD_LIMIT, command.output()).await {
        Err(_) => bail!("building the Go conformance peer took over {BUILD_LIMIT:?}"),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "`go` not found: the Go conformance peer builds from Debian's golang-go, \
             golang-google-grpc-dev and golang-etcd-server-dev (`bash scripts/setup.sh --go` \
             installs them)"
        ),
        Ok(Err(e)) => return Err(e).context("running go build"),
        Ok(Ok(output)) => output,
    };
    if !output.status.success() {
        let _ = std::fs::remove_file(&partial);
        bail!(
            "go build of {} failed ({}), with GOPATH={gopath} GO111MODULE=off; are \
             golang-google-grpc-dev and golang-etcd-server-dev installed \
             (`bash scripts/setup.sh --go`)?\n{}",
            sources.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    std::fs::rename(&partial, &bin)
        .with_context(|| format!("moving the peer to {}", bin.display()))?;
    Ok(bin)
}

/// One call the Go client made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GoCall {
    /// Served.
    Ok {
        /// The instance that served it.
        instance: String,
        /// What the server put in the reply's `username` (`conn=C peak=K` for a Go server).
        detail: String,
    },
    /// Failed.
    Error {
        /// grpc-go's name of the status code, such as `Unavailable`.
        code: String,
        /// The status message.
        message: String,
    },
}

/// A grpc-go client on `etcd:///TARGET` through etcd's naming resolver with `round_robin`,
/// calling `GetUserInfo` in a loop; killed and reaped when dropped.
#[derive(Debug)]
pub struct GoClient {
    child: Child,
    pid: u32,
    lines: mpsc::UnboundedReceiver<String>,
}

impl GoClient {
    /// Starts `switchboard-peer call --etcd HOSTS --target TARGET ARGS…` and waits until its
    /// channel is READY. `ARGS` may set `--count N` (default: until stopped), `--interval D`
    /// and `--timeout D` (each call's deadline, 2 s by default).
    pub async fn start(etcd_hosts: &str, target: &str, args: &[&str]) -> Result<Self> {
        let bin = go_peer_bin().await?;
        let mut child = Command::from(crate::child_command(&bin))
            .args(["call", "--etcd", etcd_hosts, "--target", target])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("the Go client exited at once"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout pipe"))?;
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                debug!(line, "go client");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut client = Self { child, pid, lines };
        let first = client.line(CLIENT_LIMIT).await?;
        if first != "ready" {
            bail!("the Go client printed {first:?} instead of \"ready\"");
        }
        info!(pid, target, "go client ready");
        Ok(client)
    }

    async fn line(&mut self, limit: Duration) -> Result<String> {
        match tokio::time::timeout(limit, self.lines.recv()).await {
            Ok(Some(line)) => Ok(line),
            Ok(None) => {
                let status = self.child.wait().await?;
                bail!("the Go client exited ({status}) (its stderr is in the test output)")
            }
            Err(_) => bail!("the Go client printed nothing for {limit:?}"),
        }
    }

    /// The next call's outcome, waiting at most `limit` for it.
    pub async fn next_call(&mut self, limit: Duration) -> Result<GoCall> {
        let line = self.line(limit).await?;
        parse_call(&line).ok_or_else(|| anyhow!("the Go client printed {line:?}"))
    }

    /// The next `n` calls' outcomes, waiting at most `limit` for each.
    pub async fn take(&mut self, n: usize, limit: Duration) -> Result<Vec<GoCall>> {
        let mut calls = Vec::with_capacity(n);
        for _ in 0..n {
            calls.push(self.next_call(limit).await?);
        }
        Ok(calls)
    }

    /// Reads calls until `run` calls in a row were served by `instance`, and returns every call
    /// read; fails after `most` calls.
    pub async fn until_only(
        &mut self,
        instance: &str,
        run: usize,
        most: usize,
        limit: Duration,
    ) -> Result<Vec<GoCall>> {
        let mut calls = Vec::new();
        let mut streak = 0;
        while streak < run {
            if calls.len() >= most {
                bail!("no run of {run} calls served by {instance} in {most} calls: {calls:?}");
            }
            let call = self.next_call(limit).await?;
            streak = match &call {
                GoCall::Ok { instance: i, .. } if i == instance => streak + 1,
                _ => 0,
            };
            calls.push(call);
        }
        Ok(calls)
    }

    /// Stops it with SIGTERM and returns the calls it made that [`GoClient::next_call`] has not
    /// returned, and its summary line (`done ok=N errors=M`).
    pub async fn stop(mut self) -> Result<(Vec<GoCall>, String)> {
        kill(Pid::from_raw(i32::try_from(self.pid)?), Signal::SIGTERM)?;
        let mut calls = Vec::new();
        loop {
            let line = self.line(CLIENT_LIMIT).await?;
            if line.starts_with("done ") {
                let _ = tokio::time::timeout(CLIENT_LIMIT, self.child.wait()).await;
                return Ok((calls, line));
            }
            calls.push(parse_call(&line).ok_or_else(|| anyhow!("the Go client printed {line:?}"))?);
        }
    }
}

/// What [`go_client_follows_a_leave`] saw.
#[derive(Debug)]
pub struct Followed {
    /// Calls, counts and the client's summary line, to print.
    pub summary: String,
    /// Whether the leave had finished when the client was calling `staying` alone: `false`
    /// means the client followed while the leaving instance still served (during its grace).
    pub leave_done_first: bool,
}

/// Runs a grpc-go client over etcd's naming resolver on `target`: 100 calls without an error,
/// until every one of `instances` has served, then runs `leave` (which makes all but `staying`
/// leave) while the client keeps calling; the client must follow to `staying` alone (50 calls
/// in a row), still without an error.
pub async fn go_client_follows_a_leave<F>(
    etcd_hosts: &str,
    target: &str,
    instances: &[&str],
    staying: &str,
    leave: F,
) -> Result<Followed>
where
    F: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let patience = Duration::from_secs(30);
    let mut go = GoClient::start(etcd_hosts, target, &["--interval", "5ms"]).await?;
    let mut before = go.take(100, patience).await?;
    // round_robin reaches every READY address; some may still be connecting at first.
    let served = |calls: &[GoCall], name: &str| {
        calls
            .iter()
            .any(|c| matches!(c, GoCall::Ok { instance, .. } if instance == name))
    };
    while let Some(missing) = instances.iter().find(|i| !served(&before, i)) {
        if before.len() >= 2000 {
            bail!("{missing} served none of {} calls", before.len());
        }
        before.push(go.next_call(patience).await?);
    }
    if let Some(failed) = before.iter().find(|c| matches!(c, GoCall::Error { .. })) {
        bail!("a call failed before the leave: {failed:?}");
    }
    let leaving = tokio::spawn(leave);
    let after = go.until_only(staying, 50, 20_000, patience).await?;
    let leave_done_first = leaving.is_finished();
    leaving.await.context("the leave panicked")??;
    let (tail, summary) = go.stop().await?;
    if let Some(failed) = after
        .iter()
        .chain(&tail)
        .find(|c| matches!(c, GoCall::Error { .. }))
    {
        bail!("a call failed after the leave began: {failed:?}");
    }
    if let Some(stray) = tail
        .iter()
        .find(|c| !matches!(c, GoCall::Ok { instance, .. } if instance == staying))
    {
        bail!("a call after the leave went elsewhere: {stray:?}");
    }
    Ok(Followed {
        summary: format!(
            "{} calls reached {instances:?}; after the leave began, {} calls until 50 in a row went to {staying}; {summary}",
            before.len(),
            after.len()
        ),
        leave_done_first,
    })
}

fn parse_call(line: &str) -> Option<GoCall> {
    let (word, rest) = line.split_once(' ')?;
    let (first, second) = rest.split_once(' ').unwrap_or((rest, ""));
    match word {
        "ok" => Some(GoCall::Ok {
            instance: first.to_string(),
            detail: second.to_string(),
        }),
        "error" => Some(GoCall::Error {
            code: first.to_string(),
            message: second.to_string(),
        }),
        _ => None,
    }
}

/// The `conn=C` number from a Go server's reply detail.
pub fn go_conn(detail: &str) -> Option<u64> {
    go_field(detail, "conn")
}

/// The `peak=K` number from a Go server's reply detail: the most calls it had in flight.
pub fn go_peak(detail: &str) -> Option<u64> {
    go_field(detail, "peak")
}

fn go_field(detail: &str, name: &str) -> Option<u64> {
    detail
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse() {
        assert_eq!(
            parse_call("ok g1 conn=2 peak=1"),
            Some(GoCall::Ok {
                instance: "g1".into(),
                detail: "conn=2 peak=1".into()
            })
        );
        assert_eq!(
            parse_call("error Unavailable connection refused"),
            Some(GoCall::Error {
                code: "Unavailable".into(),
                message: "connection refused".into()
            })
        );
        assert_eq!(parse_call("ready"), None);
        assert_eq!(go_conn("conn=2 peak=1"), Some(2));
        assert_eq!(go_peak("conn=2 peak=17"), Some(17));
        assert_eq!(go_peak("conn=2"), None);
    }
}
