//! Test gRPC servers in their own process, for faults a process suffers: SIGKILL, SIGSTOP and
//! SIGCONT, SIGTERM.
//!
//! The binary is the `test-server` of the `switchboard-tests` package
//! (`env!("CARGO_BIN_EXE_test-server")` in its tests): `test-server --name NAME --port PORT`
//! runs a [`TestServer`](crate::TestServer) on `127.0.0.1:PORT` (0 = a free port), prints
//! `listening 127.0.0.1:PORT` once bound, and stops gracefully on SIGTERM.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tracing::{Instrument as _, debug, info, info_span, warn};

/// How long a server process gets to print its address.
const START_LIMIT: Duration = Duration::from_secs(30);

/// How long a SIGTERMed server process gets to drain and exit.
const TERMINATE_LIMIT: Duration = Duration::from_secs(30);

/// How long dropping or killing waits for a SIGKILLed process to be reaped.
const REAP_LIMIT: Duration = Duration::from_secs(10);

/// A `test-server` process on 127.0.0.1, killed and reaped when dropped.
///
/// # Examples
///
/// ```no_run
/// # async fn run(bin: &std::path::Path) -> anyhow::Result<()> {
/// use switchboard_testkit::ServerProcess;
///
/// let mut server = ServerProcess::spawn(bin, "a", 0).await?;
/// server.stop()?; // frozen: connections stay open, nothing answers
/// server.cont()?;
/// server.kill(); // gone: connections close, new ones are refused
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct ServerProcess {
    name: String,
    addr: SocketAddr,
    pid: u32,
    child: Option<Child>,
    stopped: bool,
}

impl ServerProcess {
    /// Starts `bin --name NAME --port PORT` (0 = a free port) and waits, at most 30 s, until it
    /// prints the address it listens on.
    pub async fn spawn(bin: &Path, name: &str, port: u16) -> Result<Self> {
        Self::spawn_with(bin, name, port, &[]).await
    }

    /// [`ServerProcess::spawn`] with more arguments after `--name` and `--port` (such as
    /// `--etcd HOSTS --key KEY`, with which it registers itself).
    pub async fn spawn_with(bin: &Path, name: &str, port: u16, args: &[&str]) -> Result<Self> {
        let mut child = Command::from(crate::child_command(bin))
            .args(["--name", name, "--port", &port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("{} exited at once", bin.display()))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout pipe"))?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(START_LIMIT, lines.next_line()).await;
        let addr = match first {
            Ok(Ok(Some(line))) => parse_listening(&line),
            Ok(Ok(None)) => Err(anyhow!("it closed its stdout")),
            Ok(Err(e)) => Err(anyhow!("reading its stdout: {e}")),
            Err(_) => Err(anyhow!("it printed nothing within {START_LIMIT:?}")),
        };
        let addr = match addr {
            Ok(addr) => addr,
            Err(e) => {
                let _ = child.start_kill();
                let status = child.wait().await;
                bail!("server process {name} did not start ({status:?}): {e}");
            }
        };
        // Keep its stdout drained so that it never blocks on a full pipe.
        tokio::spawn(
            async move {
                while let Ok(Some(line)) = lines.next_line().await {
                    debug!(line, "server process output");
                }
            }
            .instrument(info_span!("server_process", name, pid)),
        );
        info!(name, pid, %addr, "server process listening");
        Ok(Self {
            name: name.to_owned(),
            addr,
            pid,
            child: Some(child),
            stopped: false,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its name, which every reply carries as `instance`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether it runs and is not stopped.
    pub fn is_live(&self) -> bool {
        self.child.is_some() && !self.stopped
    }

    /// Kills it with SIGKILL and reaps it: its connections close and new ones are refused.
    /// Does nothing if it is already gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL ends a stopped process too.
            let _ = child.start_kill();
            reap(&mut child);
            info!(name = %self.name, pid = self.pid, "server process killed");
        }
        self.stopped = false;
    }

    /// Freezes it with SIGSTOP: its sockets stay open and nothing answers. Returns once every
    /// thread of it has stopped (a signal is delivered asynchronously: a running process could
    /// otherwise still answer an RPC sent right after `kill` returned).
    pub fn stop(&mut self) -> Result<()> {
        self.signal(Signal::SIGSTOP)?;
        self.stopped = true;
        wait_stopped(self.pid)?;
        info!(name = %self.name, pid = self.pid, "server process stopped");
        Ok(())
    }

    /// Thaws it with SIGCONT.
    pub fn cont(&mut self) -> Result<()> {
        self.signal(Signal::SIGCONT)?;
        self.stopped = false;
        info!(name = %self.name, pid = self.pid, "server process continued");
        Ok(())
    }

    /// Sends SIGUSR1, on which the Go conformance peer flips its health between SERVING and
    /// NOT_SERVING.
    pub fn flip_health(&self) -> Result<()> {
        self.signal(Signal::SIGUSR1)
    }

    /// Sends SIGTERM (after SIGCONT if stopped) and waits, at most 30 s, until it has drained
    /// and exited; kills it if it has not. Returns its exit status.
    pub async fn terminate(&mut self) -> Result<ExitStatus> {
        if self.stopped {
            self.cont()?;
        }
        self.signal(Signal::SIGTERM)?;
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("server process {} is not running", self.name))?;
        match tokio::time::timeout(TERMINATE_LIMIT, child.wait()).await {
            Ok(status) => {
                let status = status?;
                info!(name = %self.name, pid = self.pid, %status, "server process terminated");
                Ok(status)
            }
            Err(_) => {
                let _ = child.start_kill();
                reap(&mut child);
                bail!(
                    "server process {} did not exit within {TERMINATE_LIMIT:?} of SIGTERM",
                    self.name
                )
            }
        }
    }

    fn signal(&self, signal: Signal) -> Result<()> {
        if self.child.is_none() {
            bail!("server process {} is not running", self.name);
        }
        let pid = i32::try_from(self.pid)?;
        kill(Pid::from_raw(pid), signal)?;
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.stopped {
            let _ = self.signal(Signal::SIGCONT);
        }
        self.kill();
    }
}

/// Waits (blocking, briefly) until every thread of process `pid` is stopped, as
/// `/proc/PID/task/*/stat` shows it.
fn wait_stopped(pid: u32) -> Result<()> {
    let deadline = Instant::now() + REAP_LIMIT;
    while !all_threads_stopped(pid)? {
        if Instant::now() > deadline {
            bail!("process {pid} did not stop within {REAP_LIMIT:?} of SIGSTOP");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(())
}

fn all_threads_stopped(pid: u32) -> Result<bool> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .with_context(|| format!("reading /proc/{pid}/task"))?;
    for task in tasks {
        let stat = std::fs::read_to_string(task?.path().join("stat"))?;
        // `TID (COMM) STATE …`, where COMM may hold spaces and parentheses.
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        if !matches!(state, Some('T' | 't')) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Parses `listening HOST:PORT`.
fn parse_listening(line: &str) -> Result<SocketAddr> {
    let addr = line
        .trim()
        .strip_prefix("listening ")
        .ok_or_else(|| anyhow!("unexpected first line {line:?}"))?;
    addr.parse()
        .with_context(|| format!("unexpected address in {line:?}"))
}

/// Waits (blocking, briefly: the process was sent SIGKILL) until `child` has exited.
fn reap(child: &mut Child) {
    let deadline = Instant::now() + REAP_LIMIT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => return,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                warn!(pid = ?child.id(), "server process not reaped within {REAP_LIMIT:?}");
                return;
            }
            Err(e) => {
                debug!(error = %e, "cannot reap the server process");
                return;
            }
        }
    }
}
