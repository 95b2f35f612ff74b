//! Counting what a test could leak: tokio tasks, file descriptors, resident memory and TCP
//! connections, read from the runtime and from `/proc`.

use std::collections::HashSet;
use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::PATIENCE;

/// What the process holds at one moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Census {
    /// Tasks alive on the current tokio runtime.
    pub tasks: usize,
    /// Open file descriptors (entries of `/proc/self/fd`).
    pub fds: usize,
    /// Resident set size in KiB (`VmRSS` of `/proc/self/status`).
    pub rss_kib: u64,
}

impl Census {
    /// Counts now. Must be called within a tokio runtime.
    pub fn take() -> Result<Self> {
        Ok(Self {
            tasks: tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            fds: std::fs::read_dir("/proc/self/fd")
                .context("reading /proc/self/fd")?
                .count(),
            rss_kib: rss_kib()?,
        })
    }

    /// Waits until the task and descriptor counts are back to `baseline` (each may be at most
    /// `slack` above it), and returns the census then. Tasks and sockets end asynchronously
    /// after their owner is dropped, so this polls for a while before it fails.
    pub async fn settle_to(baseline: Self, slack: usize) -> Result<Self> {
        let start = Instant::now();
        loop {
            let now = Self::take()?;
            if now.tasks <= baseline.tasks + slack && now.fds <= baseline.fds + slack {
                return Ok(now);
            }
            if start.elapsed() > PATIENCE {
                bail!(
                    "not back to the baseline within {PATIENCE:?}: baseline {baseline}, now {now}"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl fmt::Display for Census {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} tasks, {} fds, {:.1} MiB RSS",
            self.tasks,
            self.fds,
            self.rss_kib as f64 / 1024.0
        )
    }
}

/// The resident set size of this process in KiB.
pub fn rss_kib() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/self/status")
}

/// One row of `/proc/net/tcp` or `/proc/net/tcp6`.
struct Socket {
    local_port: u16,
    remote_port: u16,
    established: bool,
    inode: u64,
}

fn sockets() -> Result<Vec<Socket>> {
    let mut rows = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 10 {
                continue;
            }
            let port = |field: &str| {
                field
                    .rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
                    .unwrap_or(0)
            };
            rows.push(Socket {
                local_port: port(fields[1]),
                remote_port: port(fields[2]),
                established: fields[3] == "01",
                inode: fields[9].parse().unwrap_or(0),
            });
        }
    }
    Ok(rows)
}

/// The inodes of this process's sockets.
fn own_socket_inodes() -> Result<HashSet<u64>> {
    let mut inodes = HashSet::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let Ok(link) = std::fs::read_link(entry?.path()) else {
            continue;
        };
        if let Some(inode) = link
            .to_str()
            .and_then(|l| l.strip_prefix("socket:["))
            .and_then(|l| l.strip_suffix(']'))
            .and_then(|l| l.parse().ok())
        {
            inodes.insert(inode);
        }
    }
    Ok(inodes)
}

/// Established TCP connections accepted on `port` of this machine, counted on the server's
/// side (whichever process the server runs in).
pub fn server_connections(port: u16) -> Result<usize> {
    Ok(sockets()?
        .iter()
        .filter(|s| s.established && s.local_port == port)
        .count())
}

/// Established TCP connections from this process to `port`.
pub fn own_connections_to(port: u16) -> Result<usize> {
    let own = own_socket_inodes()?;
    Ok(sockets()?
        .iter()
        .filter(|s| s.established && s.remote_port == port && own.contains(&s.inode))
        .count())
}

/// Waits until `count()` equals `expected`; `what` names it in the error.
pub async fn wait_count(
    what: &str,
    expected: usize,
    count: impl Fn() -> Result<usize>,
) -> Result<()> {
    let start = Instant::now();
    loop {
        let now = count()?;
        if now == expected {
            return Ok(());
        }
        if start.elapsed() > PATIENCE {
            bail!("{what}: {now}, expected {expected}, after {PATIENCE:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Bytes live on the heap now, if this test binary counts them: it installs stats_alloc's
/// counting allocator with
/// `#[global_allocator] static HEAP: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;`.
/// Finer than the resident set, which grows in allocator arenas of several MiB.
pub fn heap_bytes() -> Option<i64> {
    let stats = stats_alloc::INSTRUMENTED_SYSTEM.stats();
    let signed = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    // A reallocation's growth counts as allocated, its shrinking as deallocated.
    (stats.allocations > 0).then(|| signed(stats.bytes_allocated) - signed(stats.bytes_deallocated))
}

/// The growth per cycle of a quantity sampled at several cycles: the slope of the least-squares
/// line through `(cycle, value)`. A leak of N bytes per cycle fits a slope of about N however
/// the samples scatter around it; noise that does not grow with the cycles fits about 0.
pub fn growth_per_cycle(samples: &[(u32, i64)]) -> f64 {
    let n = samples.len() as f64;
    if samples.len() < 2 {
        return 0.0;
    }
    let mean_x = samples.iter().map(|&(x, _)| f64::from(x)).sum::<f64>() / n;
    let mean_y = samples.iter().map(|&(_, y)| y as f64).sum::<f64>() / n;
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for &(x, y) in samples {
        let dx = f64::from(x) - mean_x;
        sxy += dx * (y as f64 - mean_y);
        sxx += dx * dx;
    }
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

#[cfg(test)]
mod tests {
    use super::growth_per_cycle;

    /// Samples every 25 cycles from 100 to 1 000 around 2 MiB: `leak` bytes per cycle, plus
    /// up to ±64 KiB of scatter that does not grow (buffers and calls in flight).
    fn samples(leak: i64) -> Vec<(u32, i64)> {
        let mut rng = crate::Lcg(7);
        (100..=1_000)
            .step_by(25)
            .map(|cycle| {
                let noise = rng.below(128 * 1024) as i64 - 64 * 1024;
                (cycle, (2 << 20) + leak * i64::from(cycle) + noise)
            })
            .collect()
    }

    #[test]
    fn a_kib_per_cycle_stands_out_of_the_scatter() {
        let flat = growth_per_cycle(&samples(0));
        let leaking = growth_per_cycle(&samples(1024));
        assert!(flat.abs() < 256.0, "{flat}");
        assert!((leaking - 1024.0).abs() < 256.0, "{leaking}");
    }
}
