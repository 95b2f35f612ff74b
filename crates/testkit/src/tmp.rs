//! Temporary directories that a killed test cannot leave behind: each is named after the test
//! process that made it (`switchboard-WHAT-PID-…` in the system's temporary directory) and
//! removed when dropped; the next one made removes those of processes that are gone.

use std::io;
use std::path::Path;

use tempfile::TempDir;
use tracing::{debug, info};

/// What every such directory's name starts with.
const PREFIX: &str = "switchboard-";

/// A new temporary directory `switchboard-WHAT-PID-…`, removed when dropped. `what` names its
/// use (letters and digits: `etcd`, `tls`, `config`).
///
/// # Examples
///
/// ```
/// let dir = switchboard_testkit::temp_dir("config")?;
/// std::fs::write(dir.path().join("c.yaml"), "Endpoints: [127.0.0.1:1]")?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn temp_dir(what: &str) -> io::Result<TempDir> {
    if what.is_empty() || !what.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(io::Error::other(format!(
            "a temporary directory's use must be letters and digits, not {what:?}"
        )));
    }
    sweep_stale();
    tempfile::Builder::new()
        .prefix(&format!("{PREFIX}{what}-{}-", std::process::id()))
        .tempdir()
}

/// The test process that made the directory `name`, if it is one of these.
fn owner(name: &str) -> Option<u32> {
    let mut parts = name.strip_prefix(PREFIX)?.splitn(3, '-');
    let what = parts.next()?;
    let pid = parts.next()?;
    parts.next()?;
    what.chars()
        .all(|c| c.is_ascii_alphanumeric())
        .then(|| pid.parse().ok())
        .flatten()
}

/// Removes the directories of test processes that are gone (killed before they could remove
/// their own; what ran in them died with them, see [`crate::child_command`]).
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(owner) else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match std::fs::remove_dir_all(entry.path()) {
            Ok(()) => {
                info!(dir = %entry.path().display(), pid, "removed the directory of a test process that is gone")
            }
            Err(e) => {
                debug!(dir = %entry.path().display(), error = %e, "cannot remove a stale directory")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::owner;

    #[test]
    fn names_tell_their_process() {
        assert_eq!(owner("switchboard-etcd-4242-AbC12"), Some(4242));
        assert_eq!(owner("switchboard-tls-7-x"), Some(7));
        assert_eq!(owner("switchboard-etcd-4242"), None);
        assert_eq!(owner("switchboard-etcd-pid-x"), None);
        assert_eq!(owner("other-etcd-1-x"), None);
    }
}
