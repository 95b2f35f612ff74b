//! Test support for switchboard: real `etcd` members on free loopback ports.
//!
//! [`Etcd::start`] starts one member, [`Etcd::start_cluster`] a cluster of several; each is a
//! real `etcd` process (from `$ETCD_BIN`, else `etcd` on the `PATH`, else `/usr/bin/etcd`;
//! Debian's package is `etcd-server`). Members can be killed with SIGKILL, frozen with
//! SIGSTOP and thawed with SIGCONT, and restarted on their data directory; the cluster can be
//! compacted. Every process started is killed and reaped when the [`Etcd`] is dropped, whether
//! the test passed or panicked.
//!
//! # Examples
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! let mut etcd = switchboard_testkit::Etcd::start_cluster(3).await?;
//! let mut client = etcd.client().await?;
//! client.put("user.rpc/1", "127.0.0.1:9001", None).await?;
//! let leader = etcd.leader().await?;
//! etcd.kill(leader);
//! # Ok(()) }
//! ```

mod etcd;
mod ports;
mod tls;

pub use etcd::{Etcd, etcdctl_bin};
pub use ports::free_port;
pub use tls::TlsFiles;
