//! Processes a test starts that end with it: each runs through util-linux's
//! `setpriv --pdeathsig KILL` (the kernel sends it SIGKILL when the thread that started it
//! exits, so a test process killed with SIGKILL leaves none of its children behind) and in a
//! process group of its own (a signal to the test's group does not reach it twice).

use std::ffi::OsStr;
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// `setpriv`, if installed (Debian's `util-linux`, on every Debian machine).
fn setpriv() -> Option<&'static PathBuf> {
    static SETPRIV: OnceLock<Option<PathBuf>> = OnceLock::new();
    SETPRIV
        .get_or_init(|| {
            let path = PathBuf::from("/usr/bin/setpriv");
            path.is_file().then_some(path)
        })
        .as_ref()
}

/// A command for `program` that dies with the test that spawns it (see the module's doc);
/// `tokio::process::Command::from` makes it asynchronous. Spawn it from a thread that lives as
/// long as the child should: a runtime's thread, or the test's own.
pub fn child_command(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = match setpriv() {
        Some(setpriv) => {
            let mut cmd = Command::new(setpriv);
            cmd.args(["--pdeathsig", "KILL", "--"]).arg(program);
            cmd
        }
        None => Command::new(program),
    };
    cmd.process_group(0);
    cmd
}

/// Ends the process group of a child started with [`child_command`] when dropped: SIGKILL to
/// the group, so that what the child started in it (Chromium's helpers, a program's own
/// children) ends too, whether the test passed, failed or timed out.
#[derive(Debug)]
pub struct GroupGuard(Option<u32>);

impl GroupGuard {
    /// Guards the group led by `pid` (a child's `id()`; `None` if it already exited).
    pub fn new(pid: Option<u32>) -> Self {
        Self(pid)
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.0.and_then(|pid| i32::try_from(pid).ok()) {
            // ESRCH: the whole group is gone already.
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Spawns `cmd` (logs at `warn`, stdin closed, stdout piped, killed when dropped) and waits, at
/// most 30 s, for the line of its stdout that starts with `prefix` (a program saying where it
/// listens, or that it registered); returns the child and the rest of that line. Its stdout
/// is drained afterwards, so that it never blocks on a full pipe. `name` names it in errors.
pub async fn spawn_until_line(
    mut cmd: tokio::process::Command,
    name: &str,
    prefix: &str,
) -> anyhow::Result<(tokio::process::Child, String)> {
    use anyhow::Context as _;
    use tokio::io::{AsyncBufReadExt as _, BufReader};

    let mut child = cmd
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let stdout = child.stdout.take().context("a stdout pipe")?;
    let mut lines = BufReader::new(stdout).lines();
    let rest = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(rest.to_owned());
            }
        }
        anyhow::bail!("{name} exited before it printed {prefix:?}")
    })
    .await
    .with_context(|| format!("{name} did not print {prefix:?} within 30 s"))??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, rest))
}
