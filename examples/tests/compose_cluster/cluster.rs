//! The compose project under test: its commands, the gateway's view of the instances and
//! etcd's, and the images to build from.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use tokio::process::Command;

use crate::support;

pub(crate) fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Runs `cmd` (from `command`) to its end within `limit`; its standard output, or an error with
/// its standard error.
pub(crate) async fn run(cmd: Command, what: &str, limit: Duration) -> Result<String> {
    let output = support::output_within(cmd, what, limit).await?;
    ensure!(
        output.status.success(),
        "{what}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim_end()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A command in its own process group, ended with the test.
pub(crate) fn command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    Command::from(switchboard_testkit::child_command(program))
}

pub(crate) async fn succeeds(program: &str, args: &[&str]) -> bool {
    let mut cmd = command(program);
    cmd.args(args);
    run(cmd, program, Duration::from_secs(60)).await.is_ok()
}

/// `docker compose` (v2) where it answers, else `docker-compose` (v1); `None` without either.
pub(crate) async fn compose_tool() -> Option<Vec<String>> {
    if succeeds("docker", &["compose", "version"]).await {
        Some(vec!["docker".into(), "compose".into()])
    } else if succeeds("docker-compose", &["version"]).await {
        Some(vec!["docker-compose".into()])
    } else {
        None
    }
}

/// One compose project of the repository's docker-compose.yml, taken down when dropped.
pub(crate) struct Cluster {
    pub(crate) tool: Vec<String>,
    pub(crate) project: String,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) port: u16,
    pub(crate) passed: bool,
}

impl Cluster {
    /// The compose tool on this project, with `args`, in a process group of its own; a std
    /// command, for `Drop` to run it without a runtime.
    fn std_command(&self, args: &[&str]) -> std::process::Command {
        let mut cmd = switchboard_testkit::child_command(&self.tool[0]);
        cmd.args(&self.tool[1..])
            .args(["-p", &self.project, "-f", "docker-compose.yml"])
            .args(args)
            .current_dir(root())
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    pub(crate) async fn compose(&self, args: &[&str], limit: Duration) -> Result<String> {
        let what = format!("compose {}", args.join(" "));
        run(Command::from(self.std_command(args)), &what, limit).await
    }

    pub(crate) async fn docker(&self, args: &[&str], limit: Duration) -> Result<String> {
        let mut cmd = command("docker");
        cmd.args(args);
        run(cmd, &format!("docker {}", args.join(" ")), limit).await
    }

    /// The id of `service`'s container.
    pub(crate) async fn container(&self, service: &str) -> Result<String> {
        let out = self
            .compose(&["ps", "-q", service], Duration::from_secs(60))
            .await?;
        let id = out.trim();
        ensure!(!id.is_empty(), "{service} has no container");
        Ok(id.to_owned())
    }

    /// The name of one of the project's networks (`control`, `data`), as compose names it.
    pub(crate) fn network(&self, name: &str) -> String {
        format!("{}_{name}", self.project)
    }

    pub(crate) fn gateway(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The gateway's view: the set of instance addresses it has sub-channels for, and the set
    /// its picker sends to.
    pub(crate) async fn view(&self) -> Result<(BTreeSet<String>, BTreeSet<String>)> {
        let answer = support::get(&self.gateway(), "/debug/switchboard").await?;
        ensure!(
            answer.status == 200,
            "/debug/switchboard: {}",
            answer.status
        );
        let snapshot: Value = serde_json::from_str(&answer.body)?;
        let mut known = BTreeSet::new();
        let mut picked = BTreeSet::new();
        for sub in snapshot["subchannels"]
            .as_array()
            .context("no subchannels")?
        {
            let addr = sub["addr"].as_str().context("addr")?.to_owned();
            if sub["in_picker"].as_bool() == Some(true) {
                picked.insert(addr.clone());
            }
            known.insert(addr);
        }
        Ok((known, picked))
    }

    /// The instances registered in etcd, as `member` (etcd-N) lists them.
    pub(crate) async fn registered(&self, member: &str) -> Result<BTreeSet<String>> {
        let id = self.container(member).await?;
        let out = self
            .docker(
                &[
                    "exec",
                    &id,
                    "etcdctl",
                    "--endpoints=http://127.0.0.1:2379",
                    "get",
                    "--prefix",
                    "user.rpc/",
                    "--print-value-only",
                ],
                Duration::from_secs(30),
            )
            .await?;
        Ok(out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect())
    }

    /// Waits, at most `limit`, until the gateway's view is `expected`: a sub-channel for each
    /// of those instances and no other, all of them picked. Returns how long it took.
    pub(crate) async fn until_view(
        &self,
        expected: &BTreeSet<String>,
        limit: Duration,
    ) -> Result<Duration> {
        self.until_view_is("the expected", limit, || async { Ok(expected.clone()) })
            .await
    }

    /// Waits, at most `limit`, until the gateway's view matches what etcd-3 lists (etcd-3 is
    /// never the member stopped), read again each time. Returns how long it took.
    pub(crate) async fn until_matches_etcd(&self, limit: Duration) -> Result<Duration> {
        self.until_view_is("etcd's", limit, || self.registered("etcd-3"))
            .await
    }

    /// Waits, at most `limit`, until the gateway's view is what `expected` gives (`whose`
    /// names it in the error): every instance of it known and picked, and no other.
    async fn until_view_is<F, Fut>(
        &self,
        whose: &str,
        limit: Duration,
        mut expected: F,
    ) -> Result<Duration>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<BTreeSet<String>>>,
    {
        let start = Instant::now();
        loop {
            let expected = expected().await?;
            let view = self.view().await;
            if let Ok((known, picked)) = &view
                && *known == expected
                && *picked == expected
            {
                return Ok(start.elapsed());
            }
            if start.elapsed() > limit {
                bail!("the gateway's view is {view:?}, not {whose} {expected:?}, after {limit:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let show = |args: &[&str]| {
            let mut cmd = self.std_command(args);
            cmd.stdin(Stdio::null());
            let Ok(mut child) = cmd.spawn() else { return };
            let deadline = Instant::now() + Duration::from_secs(180);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(200));
            }
            let _ = child.kill();
            let _ = child.wait();
        };
        if !self.passed {
            eprintln!("compose_cluster: failed; the services' last lines:");
            show(&["logs", "--no-color", "--tail", "40"]);
        }
        eprintln!("compose_cluster: taking {} down", self.project);
        show(&["down", "-v", "--remove-orphans", "-t", "5"]);
    }
}

/// The image variables `scripts/docker-images.sh` prints (the official images where a registry
/// answers, stand-ins built here where none does).
pub(crate) async fn image_variables() -> Result<Vec<(String, String)>> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("images.env");
    let mut cmd = command("bash");
    cmd.arg(root().join("scripts/docker-images.sh"))
        .arg("--env-file")
        .arg(&file)
        .current_dir(root());
    run(
        cmd,
        "scripts/docker-images.sh",
        Duration::from_secs(60 * 60),
    )
    .await?;
    let text = std::fs::read_to_string(&file)?;
    let variables: Vec<(String, String)> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("export "))
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches(['\'', '"']).to_owned()))
        .collect();
    ensure!(
        variables.iter().any(|(k, _)| k == "ETCD_IMAGE"),
        "no ETCD_IMAGE in {text:?}"
    );
    Ok(variables)
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
