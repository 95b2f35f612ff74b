//! Real etcd members for tests.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use etcd_client::{
    Certificate, Client, CompactionOptions, ConnectOptions, GetOptions, Identity, TlsOptions,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;
use tracing::{debug, info};

use crate::ports::free_port;
use crate::tls::TlsFiles;

/// How long a member gets to start serving.
const START_LIMIT: Duration = Duration::from_secs(60);

/// One or more real etcd members on 127.0.0.1, ended when dropped.
#[derive(Debug)]
pub struct Etcd {
    bin: PathBuf,
    dir: TempDir,
    members: Vec<Member>,
    token: String,
    tls: Option<TlsFiles>,
    client_options: ConnectOptions,
}

#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    stopped: bool,
    tls: bool,
}

impl Member {
    fn client_url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
}

/// Finds the etcd binary: `$ETCD_BIN`, `etcd` on the `PATH`, or `/usr/bin/etcd`.
fn etcd_bin() -> Result<PathBuf> {
    find_bin("ETCD_BIN", "etcd").ok_or_else(|| {
        anyhow!(
            "etcd not found: install it with `apt-get install etcd-server` (Debian) \
             or set ETCD_BIN to the etcd binary"
        )
    })
}

/// Finds etcdctl: `$ETCDCTL_BIN`, `etcdctl` on the `PATH`, or `/usr/bin/etcdctl`.
pub fn etcdctl_bin() -> Result<PathBuf> {
    find_bin("ETCDCTL_BIN", "etcdctl").ok_or_else(|| {
        anyhow!(
            "etcdctl not found: install it with `apt-get install etcd-client` (Debian) \
             or set ETCDCTL_BIN"
        )
    })
}

fn find_bin(var: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .chain([PathBuf::from("/usr/bin").join(name)])
        .find(|p| p.is_file())
}

impl Etcd {
    /// Starts a single member and waits until it serves.
    pub async fn start() -> Result<Self> {
        Self::start_cluster(1).await
    }

    /// Starts a cluster of `n` members and waits until it has a leader and every member
    /// serves. Retries with other ports if one was taken meanwhile.
    pub async fn start_cluster(n: usize) -> Result<Self> {
        Self::start_with(n, None).await
    }

    /// Starts a single member that serves clients over TLS only and requires client
    /// certificates signed by the same CA.
    pub async fn start_tls(tls: TlsFiles) -> Result<Self> {
        Self::start_with(1, Some(tls)).await
    }

    async fn start_with(n: usize, tls: Option<TlsFiles>) -> Result<Self> {
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start(n, tls.clone()).await {
                Ok(etcd) => return Ok(etcd),
                Err(e) => {
                    debug!(error = %e, "etcd did not start; trying other ports");
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("etcd did not start")))
    }

    async fn try_start(n: usize, tls: Option<TlsFiles>) -> Result<Self> {
        let bin = etcd_bin()?;
        // Named after this process, so that a later run can tell a dead run's directory.
        let dir = crate::temp_dir("etcd")?;
        let mut members = Vec::new();
        for i in 0..n {
            members.push(Member {
                name: format!("m{i}"),
                client_port: free_port()?,
                peer_port: free_port()?,
                child: None,
                stopped: false,
                tls: tls.is_some(),
            });
        }
        let token = format!(
            "switchboard-{}-{}",
            std::process::id(),
            dir.path()
                .file_name()
                .map(|s| s.to_string_lossy())
                .unwrap_or_default()
        );
        let client_options = client_options(tls.as_ref())?;
        let mut etcd = Self {
            bin,
            dir,
            members,
            token,
            tls,
            client_options,
        };
        for i in 0..n {
            etcd.spawn(i, "new")?;
        }
        for i in 0..n {
            etcd.wait_serving(i).await?;
        }
        info!(endpoints = ?etcd.endpoints(), "etcd started");
        Ok(etcd)
    }

    fn spawn(&mut self, i: usize, state: &str) -> Result<()> {
        let cluster = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let m = &self.members[i];
        let data = self.dir.path().join(&m.name);
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_path(i))?;
        let mut cmd = crate::child_command(&self.bin);
        if let Some(tls) = &self.tls {
            cmd.arg("--cert-file")
                .arg(&tls.server_cert)
                .arg("--key-file")
                .arg(&tls.server_key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca)
                .arg("--client-cert-auth");
        }
        let child = cmd
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &m.client_url()])
            .args(["--advertise-client-urls", &m.client_url()])
            .args(["--listen-peer-urls", &m.peer_url()])
            .args(["--initial-advertise-peer-urls", &m.peer_url()])
            .args(["--initial-cluster", &cluster])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &self.token])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .env_remove("ETCD_NAME")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        debug!(member = %m.name, pid = child.id(), "etcd member spawned");
        self.members[i].child = Some(child);
        self.members[i].stopped = false;
        Ok(())
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir
            .path()
            .join(format!("{}.log", self.members[i].name))
    }

    fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(self.log_path(i)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    async fn wait_serving(&mut self, i: usize) -> Result<()> {
        let deadline = Instant::now() + START_LIMIT;
        let endpoint = self.endpoint(i);
        loop {
            if let Some(child) = self.members[i].child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.members[i].child = None;
                bail!(
                    "etcd member {} exited with {status} while starting:\n{}",
                    self.members[i].name,
                    self.log_tail(i)
                );
            }
            if let Ok(mut client) = probe(&endpoint, &self.client_options).await {
                // The port was free when picked, not held: whoever answers there must be this
                // member, not a neighbour's etcd that took the port first.
                let peer_url = self.members[i].peer_url();
                if let Ok(members) = client.member_list().await {
                    if members
                        .members()
                        .iter()
                        .any(|m| m.peer_urls().contains(&peer_url))
                    {
                        return Ok(());
                    }
                    bail!(
                        "another etcd answers on {endpoint}, where member {} should listen",
                        self.members[i].name
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd member {} did not serve within {START_LIMIT:?}:\n{}",
                    self.members[i].name,
                    self.log_tail(i)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are no members (never, once started).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// `127.0.0.1:port` of member `i`'s client URL.
    pub fn endpoint(&self, i: usize) -> String {
        format!("127.0.0.1:{}", self.members[i].client_port)
    }

    /// Every member's client endpoint.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// The endpoints comma-separated, as `--etcd` and go-zero's `Hosts` take them.
    pub fn hosts(&self) -> String {
        self.endpoints().join(",")
    }

    /// Index of the member with this endpoint (`host:port`, with or without `http://`).
    pub fn index_of(&self, endpoint: &str) -> Option<usize> {
        let endpoint = endpoint.trim_start_matches("http://");
        self.endpoints().iter().position(|e| e == endpoint)
    }

    /// Whether member `i` runs and is not stopped.
    pub fn is_live(&self, i: usize) -> bool {
        self.members[i].child.is_some() && !self.members[i].stopped
    }

    /// Kills member `i` with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
            info!(member = %self.members[i].name, "etcd member killed");
        }
        self.members[i].stopped = false;
    }

    /// Freezes member `i` with SIGSTOP: its sockets stay open and nothing answers.
    pub fn stop(&mut self, i: usize) -> Result<()> {
        self.signal(i, Signal::SIGSTOP)?;
        self.members[i].stopped = true;
        info!(member = %self.members[i].name, "etcd member stopped");
        Ok(())
    }

    /// Thaws member `i` with SIGCONT.
    pub fn cont(&mut self, i: usize) -> Result<()> {
        self.signal(i, Signal::SIGCONT)?;
        self.members[i].stopped = false;
        info!(member = %self.members[i].name, "etcd member continued");
        Ok(())
    }

    fn signal(&self, i: usize, signal: Signal) -> Result<()> {
        let child = self.members[i]
            .child
            .as_ref()
            .ok_or_else(|| anyhow!("member {i} is not running"))?;
        let pid = i32::try_from(child.id())?;
        kill(Pid::from_raw(pid), signal)?;
        Ok(())
    }

    /// Starts member `i` again on its data directory (after [`Etcd::kill`]) and waits until it
    /// serves.
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        self.kill(i);
        self.spawn(i, "existing")?;
        self.wait_serving(i).await?;
        info!(member = %self.members[i].name, "etcd member restarted");
        Ok(())
    }

    /// Kills every member (etcd fully down) without removing their data.
    pub fn kill_all(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }

    /// Restarts every member that is not running and waits until the cluster serves.
    pub async fn restart_all(&mut self) -> Result<()> {
        for i in 0..self.members.len() {
            if self.members[i].child.is_none() {
                self.spawn(i, "existing")?;
            }
        }
        for i in 0..self.members.len() {
            self.wait_serving(i).await?;
        }
        Ok(())
    }

    /// A client connected to the first live member that answers (requests need a leader).
    pub async fn client(&self) -> Result<Client> {
        let mut last = None;
        for i in (0..self.members.len()).filter(|i| self.is_live(*i)) {
            match probe(&self.endpoint(i), &self.client_options).await {
                Ok(client) => return Ok(client),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow!("no live etcd member")))
    }

    /// A client connected to member `i` only.
    pub async fn client_of(&self, i: usize) -> Result<Client> {
        probe(&self.endpoint(i), &self.client_options).await
    }

    /// Compacts the store at its current revision (physically) and returns that revision.
    pub async fn compact(&self) -> Result<i64> {
        let mut client = self.client().await?;
        let revision = client
            .get("\0", Some(GetOptions::new().with_count_only()))
            .await?
            .header()
            .map(|h| h.revision())
            .ok_or_else(|| anyhow!("no header in etcd's answer"))?;
        client
            .compact(revision, Some(CompactionOptions::new().with_physical()))
            .await?;
        info!(revision, "etcd compacted");
        Ok(revision)
    }

    /// The index of the current leader.
    pub async fn leader(&self) -> Result<usize> {
        let deadline = Instant::now() + START_LIMIT;
        loop {
            for i in (0..self.members.len()).filter(|i| self.is_live(*i)) {
                if let Ok(mut client) = probe(&self.endpoint(i), &self.client_options).await
                    && let Ok(status) = client.status().await
                    && status.header().map(|h| h.member_id()) == Some(status.leader())
                {
                    return Ok(i);
                }
            }
            if Instant::now() > deadline {
                bail!("no etcd member is the leader");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Runs `etcdctl` against every live member with `args`, returning its standard output.
    pub fn etcdctl(&self, args: &[&str]) -> Result<String> {
        let live: Vec<String> = (0..self.members.len())
            .filter(|i| self.is_live(*i))
            .map(|i| self.endpoint(i))
            .collect();
        etcdctl(&live.join(","), args)
    }

    /// The directory holding data and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Runs `etcdctl --endpoints=ENDPOINTS ARGS…` (API v3) and returns its standard output.
fn etcdctl(endpoints: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(etcdctl_bin()?)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(["--dial-timeout=5s", "--command-timeout=10s"])
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        bail!(
            "etcdctl {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// Options for the test's own clients: short bounds, `require_leader`, and the client
/// certificate when the members serve TLS. Built once per cluster.
fn client_options(tls: Option<&TlsFiles>) -> Result<ConnectOptions> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(3))
        .with_require_leader(true);
    if let Some(tls) = tls {
        let pem = |p: &Path| std::fs::read(p);
        options = options.with_tls(
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(pem(&tls.ca)?))
                .identity(Identity::from_pem(
                    pem(&tls.client_cert)?,
                    pem(&tls.client_key)?,
                )),
        );
    }
    Ok(options)
}

/// Connects to one member and checks that it serves linearizable reads (so it has a leader).
async fn probe(endpoint: &str, options: &ConnectOptions) -> Result<Client> {
    let options = options.clone();
    let attempt = async {
        let mut client = Client::connect([endpoint], Some(options)).await?;
        client
            .get("\0", Some(GetOptions::new().with_count_only()))
            .await?;
        Ok::<_, anyhow::Error>(client)
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .map_err(|_| anyhow!("etcd member {endpoint} did not answer within 5 s"))?
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for m in &mut self.members {
            if let Some(mut child) = m.child.take() {
                // SIGKILL ends a stopped process too.
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
