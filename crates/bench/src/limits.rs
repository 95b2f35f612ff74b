//! What the process measures about itself: CPU time (getrusage), resident memory
//! (`/proc/self/status`), and its open-file limit.

use std::time::Duration;

use nix::sys::resource::{Resource, UsageWho, getrlimit, getrusage, setrlimit};

/// User + system CPU time of this process so far (every thread).
pub(crate) fn cpu_time() -> Duration {
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let t = |tv: nix::sys::time::TimeVal| {
                Duration::from_secs(u64::try_from(tv.tv_sec()).unwrap_or(0))
                    + Duration::from_micros(u64::try_from(tv.tv_usec()).unwrap_or(0))
            };
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => Duration::ZERO,
    }
}

/// Reads this process's resident set size from `/proc/self/status`, through a file opened once
/// (so that it still works when every descriptor is taken).
#[derive(Debug)]
pub(crate) struct Rss(Option<std::fs::File>);

impl Rss {
    /// Opens `/proc/self/status`.
    pub(crate) fn open() -> Self {
        Self(std::fs::File::open("/proc/self/status").ok())
    }

    /// `VmRSS` in bytes, or 0 where `/proc` cannot say.
    pub(crate) fn bytes(&mut self) -> u64 {
        use std::io::{Read as _, Seek as _};
        let Some(file) = self.0.as_mut() else {
            return 0;
        };
        let mut text = String::new();
        if file.rewind().is_err() || file.read_to_string(&mut text).is_err() {
            return 0;
        }
        text.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    }
}

/// Open files the benchmark wants: each of 10 000 sub-channels holds its socket and a second
/// handle on it (to shut it down when a drain times out), plus etcd, servers and pipes.
pub(crate) const WANTED_FILES: u64 = 25_000;

/// Raises the soft open-file limit to the hard one, and both to `want` where the process may
/// (a privileged process can raise the hard limit); keeps what it has otherwise.
pub(crate) fn raise_nofile(want: u64) {
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if hard < want && setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
            return;
        }
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// The soft open-file limit now.
pub(crate) fn nofile() -> u64 {
    getrlimit(Resource::RLIMIT_NOFILE).map_or(0, |(soft, _)| soft)
}
