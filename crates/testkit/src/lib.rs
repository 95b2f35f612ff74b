//! Test support for switchboard: real `etcd` members, test gRPC servers and a fault proxy, all
//! on free loopback ports.
//!
//! - [`Etcd::start`] starts one member, [`Etcd::start_cluster`] a cluster of several; each is a
//!   real `etcd` process (from `$ETCD_BIN`, else `etcd` on the `PATH`, else `/usr/bin/etcd`;
//!   Debian's package is `etcd-server`). Members can be killed with SIGKILL, frozen with
//!   SIGSTOP and thawed with SIGCONT, and restarted on their data directory; the cluster can be
//!   compacted. Every process started is killed and reaped when the [`Etcd`] is dropped,
//!   whether the test passed or panicked.
//! - [`TestServer`] serves the demo `user.User` service of `proto/user.proto` (generated in
//!   [`proto::user`]) and `grpc.health.v1` in-process; every reply names the instance. It counts
//!   RPCs and open connections, delays replies on demand, flips its health status, and stops
//!   either gracefully (GOAWAY, drain) or at once (every connection dropped).
//!   [`BlackHoleServer`] accepts connections and never answers; [`Http1Server`] answers
//!   HTTP/1.1 400 and closes.
//! - [`ServerProcess`] runs the same server as a separate process (the `test-server` binary of
//!   the `switchboard-tests` package) for SIGKILL, SIGSTOP/SIGCONT and SIGTERM.
//! - [`go_peer_bin`] builds the Go conformance peer (grpc-go servers with `MaxConnectionAge`,
//!   `MaxConcurrentStreams`, keepalive enforcement, health, and etcd's own `endpoints.Manager`
//!   registration), run with [`ServerProcess`]; [`GoClient`] is a grpc-go client over etcd's
//!   naming resolver with `round_robin`.
//! - [`FaultProxy`] forwards TCP to a server and can pause (a silently dropped peer), resume,
//!   and reset every connection with RST.
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
//!
//! ```no_run
//! # async fn run() -> anyhow::Result<()> {
//! use switchboard_testkit::{FaultProxy, TestServer};
//!
//! let server = TestServer::start("a").await?;
//! let proxy = FaultProxy::start(server.addr()).await?;
//! // Register proxy.addr() in etcd; then make the instance go silent:
//! proxy.pause();
//! # Ok(()) }
//! ```

mod child;
mod etcd;
mod go_peer;
mod mixed;
mod ports;
mod process;
pub mod proto;
mod proxy;
mod server;
mod stall;
mod tls;
mod tmp;

pub use child::{GroupGuard, child_command, spawn_until_line};
pub use etcd::{Etcd, etcdctl_bin};
pub use go_peer::{
    Followed, GoCall, GoClient, go_client_follows_a_leave, go_conn, go_peak, go_peer_bin,
};
pub use mixed::{KindTally, MixedLoad, UserChannel};
pub use ports::{ClosedPort, free_port};
pub use process::ServerProcess;
pub use proxy::FaultProxy;
pub use server::{BlackHoleServer, Http1Server, LoginSeen, TestServer, user_service};
pub use stall::StallServer;
pub use tls::TlsFiles;
pub use tmp::temp_dir;
