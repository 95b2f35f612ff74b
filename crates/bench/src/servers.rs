//! Test servers in a child process, pinned to their own core where the machine allows it.
//!
//! The benchmark binary re-executes itself as `switchboard-bench serve NAME[:DELAY_MS] …`: that
//! process runs one [`TestServer`] per name (the `user.User` service of `proto/user.proto`,
//! each on its own thread with a current-thread runtime), the named ones delaying every reply
//! by `DELAY_MS`, prints `listening ADDR ADDR …` once bound, and exits when its stdin closes,
//! so that it never outlives the benchmark. It is started under `taskset -c 1` when `taskset`
//! works here, while the benchmark pins itself to core 0.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use switchboard_testkit::TestServer;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

/// How long a server process gets to print its addresses.
const START_LIMIT: Duration = Duration::from_secs(20);

/// How long a SIGKILLed or SIGSTOPped process gets to get there.
const SIGNAL_LIMIT: Duration = Duration::from_secs(5);

/// Where the benchmark and its servers run.
#[derive(Clone, Debug)]
pub(crate) struct Placement {
    /// This binary, re-executed in `serve` mode.
    exe: std::path::PathBuf,
    /// Whether servers start under `taskset -c 1` (and the benchmark is pinned to core 0).
    pub(crate) pinned: bool,
    /// The cores the machine lets this process use, before pinning.
    pub(crate) cores: usize,
}

impl Placement {
    /// Pins this thread (hence every thread started after it) to core 0, when the machine has
    /// two cores or more and `taskset -c 1` works for the servers; otherwise leaves both to
    /// the scheduler. Call it first thing in `main`.
    pub(crate) fn pin_self() -> Result<Self> {
        let exe = std::env::current_exe().context("locating the benchmark binary")?;
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let taskset = cores >= 2
            && std::process::Command::new("taskset")
                .args(["-c", "1", "true"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        let pinned = taskset && pin_current_thread(0).is_ok();
        Ok(Self { exe, pinned, cores })
    }

    /// Lets this thread (hence every thread started after it) run on every core again; the
    /// placement of what starts next, servers unpinned too.
    pub(crate) fn unpin_self(&self) -> Result<Self> {
        if self.pinned {
            let mut set = nix::sched::CpuSet::new();
            for core in 0..self.cores {
                set.set(core)?;
            }
            nix::sched::sched_setaffinity(Pid::from_raw(0), &set)?;
        }
        Ok(Self {
            pinned: false,
            ..self.clone()
        })
    }

    /// Starts a server process serving `servers` (name, reply delay).
    pub(crate) async fn spawn(&self, servers: &[(&str, Duration)]) -> Result<ServerGroup> {
        let specs: Vec<String> = servers
            .iter()
            .map(|(name, delay)| format!("{name}:{}", delay.as_millis()))
            .collect();
        let mut command = if self.pinned {
            let mut c = Command::new("taskset");
            c.args(["-c", "1"]).arg(&self.exe);
            c
        } else {
            Command::new(&self.exe)
        };
        let mut child = command
            .arg("serve")
            .args(&specs)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting a server process")?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("server process exited at once"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout pipe"))?;
        let mut lines = BufReader::new(stdout).lines();
        let line = match tokio::time::timeout(START_LIMIT, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            other => {
                let _ = child.start_kill();
                let _ = child.wait().await;
                bail!("server process printed no address: {other:?}");
            }
        };
        let addrs = line
            .strip_prefix("listening ")
            .ok_or_else(|| anyhow!("unexpected first line {line:?}"))?
            .split_whitespace()
            .map(|a| a.parse().with_context(|| format!("bad address {a:?}")))
            .collect::<Result<Vec<SocketAddr>>>()?;
        if addrs.len() != servers.len() {
            bail!(
                "server process listens on {addrs:?}, expected {}",
                servers.len()
            );
        }
        Ok(ServerGroup {
            addrs,
            names: servers.iter().map(|(n, _)| (*n).to_owned()).collect(),
            pid,
            child: Some(child),
            stopped: false,
        })
    }
}

impl Placement {
    /// Moves every child process named `name` (every thread of it) to core 1 with
    /// `taskset -a -p`, when pinned: etcd is a server too. Returns how many were moved.
    pub(crate) fn pin_children(&self, name: &str) -> usize {
        if !self.pinned {
            return 0;
        }
        let me = std::process::id().to_string();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return 0;
        };
        let mut moved = 0;
        for entry in entries.flatten() {
            let pid = entry.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // `PID (COMM) STATE PPID …`
            let Some((head, rest)) = stat.rsplit_once(')') else {
                continue;
            };
            let comm = head.split_once('(').map_or("", |(_, c)| c);
            let ppid = rest.split_whitespace().nth(1).unwrap_or("");
            if comm == name && ppid == me && self.pin_pid(&pid) {
                moved += 1;
            }
        }
        moved
    }

    /// Moves process `pid` (every thread of it) to core 1 with `taskset -a -p`, when pinned;
    /// whether it moved.
    pub(crate) fn pin_pid(&self, pid: &str) -> bool {
        self.pinned
            && std::process::Command::new("taskset")
                .args(["-a", "-p", "-c", "1", pid])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    }
}

/// Pins the calling thread to one core.
fn pin_current_thread(core: usize) -> Result<()> {
    let mut set = nix::sched::CpuSet::new();
    set.set(core)?;
    nix::sched::sched_setaffinity(Pid::from_raw(0), &set)?;
    Ok(())
}

/// A server process, SIGKILLed and reaped when dropped.
#[derive(Debug)]
pub(crate) struct ServerGroup {
    addrs: Vec<SocketAddr>,
    names: Vec<String>,
    pid: u32,
    child: Option<Child>,
    stopped: bool,
}

impl ServerGroup {
    /// The address of each server, in the order they were asked for.
    pub(crate) fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The address of the server named `name`.
    pub(crate) fn addr_of(&self, name: &str) -> Result<SocketAddr> {
        self.names
            .iter()
            .position(|n| n == name)
            .map(|i| self.addrs[i])
            .ok_or_else(|| anyhow!("no server named {name}"))
    }

    /// `host:port` of every server.
    pub(crate) fn addr_strings(&self) -> Vec<String> {
        self.addrs.iter().map(ToString::to_string).collect()
    }

    /// SIGKILL: every connection is reset, new ones are refused.
    pub(crate) fn kill9(&mut self) -> Result<()> {
        self.signal(Signal::SIGKILL)?;
        let deadline = Instant::now() + SIGNAL_LIMIT;
        if let Some(child) = self.child.as_mut() {
            while child.try_wait()?.is_none() {
                if Instant::now() > deadline {
                    bail!("server process {} outlived SIGKILL", self.pid);
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        }
        self.child = None;
        self.stopped = false;
        Ok(())
    }

    /// SIGSTOP: sockets stay open and nothing answers. Returns once every thread stopped.
    pub(crate) fn stop(&mut self) -> Result<()> {
        self.signal(Signal::SIGSTOP)?;
        self.stopped = true;
        let deadline = Instant::now() + SIGNAL_LIMIT;
        while !all_threads_stopped(self.pid)? {
            if Instant::now() > deadline {
                bail!("server process {} did not stop", self.pid);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        Ok(())
    }

    fn signal(&self, signal: Signal) -> Result<()> {
        if self.child.is_none() {
            bail!("server process {} is gone", self.pid);
        }
        kill(Pid::from_raw(i32::try_from(self.pid)?), signal)?;
        Ok(())
    }
}

impl Drop for ServerGroup {
    fn drop(&mut self) {
        if self.child.is_some() {
            if self.stopped {
                let _ = self.signal(Signal::SIGCONT);
            }
            let _ = self.kill9();
        }
    }
}

/// Whether every thread of process `pid` is stopped, as `/proc/PID/task/*/stat` says.
fn all_threads_stopped(pid: u32) -> Result<bool> {
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let stat = std::fs::read_to_string(task?.path().join("stat"))?;
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        if !matches!(state, Some('T' | 't')) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// `serve NAME[:DELAY_MS] …`: runs the servers until stdin closes.
pub(crate) fn serve(specs: &[String]) -> Result<()> {
    crate::limits::raise_nofile(crate::limits::WANTED_FILES);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let servers = runtime.block_on(async {
        let mut servers = Vec::new();
        for spec in specs {
            let (name, delay) = spec.split_once(':').unwrap_or((spec, "0"));
            let delay: u64 = delay
                .parse()
                .with_context(|| format!("bad delay in {spec:?}"))?;
            let server = TestServer::start(name).await?;
            server.set_delay(Duration::from_millis(delay));
            servers.push(server);
        }
        Ok::<_, anyhow::Error>(servers)
    })?;
    let addrs: Vec<String> = servers.iter().map(|s| s.addr().to_string()).collect();
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening {}", addrs.join(" "))?;
        stdout.flush()?;
    }
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink)? > 0 {
        sink.clear();
    }
    drop(servers);
    Ok(())
}
