//! Load in the background while a scenario changes the world under it (a PUT, a DELETE, a
//! SIGKILL, a SIGSTOP): callers that keep sending RPCs and mark, in nanoseconds since the
//! load started, the failures and the RPCs that one watched instance answered.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;
use tokio::task::JoinHandle;

use crate::load::Caller;

/// No background load runs longer than this.
const LIMIT: Duration = Duration::from_secs(300);

/// No background caller sends more RPCs than this.
const MAX_RPCS_PER_CALLER: u64 = 50_000_000;

/// What the callers mark; times are nanoseconds since [`Background::start`].
#[derive(Debug)]
pub(crate) struct Marks {
    /// Successful RPCs.
    pub(crate) ok: AtomicU64,
    /// Failed RPCs.
    pub(crate) errors: AtomicU64,
    /// When the last failed RPC ended.
    pub(crate) last_error_end: AtomicU64,
    /// When the first RPC answered by the watched instance ended (`u64::MAX`: none yet).
    pub(crate) first_watched_end: AtomicU64,
    /// When the last RPC answered by the watched instance started (0: none yet).
    pub(crate) last_watched_start: AtomicU64,
    stop: AtomicBool,
}

/// Callers running in the background.
pub(crate) struct Background {
    started: Instant,
    marks: Arc<Marks>,
    tasks: Vec<JoinHandle<()>>,
}

impl Background {
    /// Starts `concurrency` callers on `caller`, watching the instance named `watched`.
    pub(crate) fn start(caller: &Caller, concurrency: usize, watched: &str) -> Self {
        let started = Instant::now();
        let marks = Arc::new(Marks {
            ok: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            last_error_end: AtomicU64::new(0),
            first_watched_end: AtomicU64::new(u64::MAX),
            last_watched_start: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let watched: Arc<str> = watched.into();
        let tasks = (0..concurrency)
            .map(|_| {
                let mut me = caller.clone();
                let marks = marks.clone();
                let watched = watched.clone();
                tokio::spawn(async move {
                    let now = || nanos(started.elapsed());
                    for _ in 0..MAX_RPCS_PER_CALLER {
                        if marks.stop.load(Ordering::Relaxed) || started.elapsed() > LIMIT {
                            break;
                        }
                        let start = now();
                        match me.call().await {
                            Ok(instance) => {
                                marks.ok.fetch_add(1, Ordering::Relaxed);
                                if *instance == *watched {
                                    marks.last_watched_start.fetch_max(start, Ordering::Relaxed);
                                    marks.first_watched_end.fetch_min(now(), Ordering::Relaxed);
                                }
                            }
                            Err(_) => {
                                marks.errors.fetch_add(1, Ordering::Relaxed);
                                marks.last_error_end.fetch_max(now(), Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        Self {
            started,
            marks,
            tasks,
        }
    }

    /// The marks so far.
    pub(crate) fn marks(&self) -> &Marks {
        &self.marks
    }

    /// Nanoseconds since the load started.
    pub(crate) fn now(&self) -> u64 {
        nanos(self.started.elapsed())
    }

    /// Stops the callers (each after its RPC in flight, which its deadline bounds) and waits
    /// for them.
    pub(crate) async fn stop(mut self) -> Result<()> {
        self.marks.stop.store(true, Ordering::Relaxed);
        for task in std::mem::take(&mut self.tasks) {
            task.await?;
        }
        Ok(())
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.marks.stop.store(true, Ordering::Relaxed);
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// A duration in nanoseconds, saturating.
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}
