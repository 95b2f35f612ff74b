//! `user-rpc`: the demo `User` service, a server that registers itself in etcd and leaves
//! gracefully.
//!
//! ```text
//! user-rpc --name user-rpc-1 --listen 0.0.0.0:8080 --etcd 127.0.0.1:2379 --key user.rpc
//! user-rpc --name user-rpc-1 --config etc/user.yaml
//! ```
//!
//! The config file is go-zero's `RpcServerConf`, every field of it (see
//! `switchboard::ServerConfig`):
//!
//! ```yaml
//! Name: user.rpc
//! ListenOn: 0.0.0.0:8080
//! Etcd:
//!   Hosts: [127.0.0.1:2379]
//!   Key: user.rpc
//! Timeout: 2000
//! ```
//!
//! Replies name the instance (`--name`). It serves `user.User` and `grpc.health.v1`,
//! registers `<key>/<leaseID>` → its address (as go-zero does), prints `registered <addr>` once
//! it is, and on SIGTERM or SIGINT deregisters, turns NOT_SERVING, waits `--grace` for clients
//! to see the DELETE, drains its RPCs and exits 0.

use anyhow::{Context as _, Result};
use clap::Parser;
use switchboard_examples::service::Args;
use switchboard_examples::service::UserService;
use switchboard_examples::user::user_server::UserServer;

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let service = UserService::new(&args.name);
    let mut server = args.server()?.add_service(UserServer::new(service));
    if let Some(addr) = &args.advertise {
        server = server.advertise(addr.clone());
    }
    let serving = server.serve().await.context("serving user.rpc")?;
    println!(
        "registered {} (listening on {})",
        serving.advertised_addr(),
        serving.local_addr()
    );
    serving.wait_for_signal().await;
    Ok(())
}
