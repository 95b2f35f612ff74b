//! `user-rpc`: the demo `User` service, a server that registers itself in etcd and leaves
//! gracefully.
//!
//! ```text
//! user-rpc --name user-rpc-1 --listen 0.0.0.0:8080 --etcd 127.0.0.1:2379 --key user.rpc
//! user-rpc --name user-rpc-1 --config etc/user.yaml
//! ```
//!
//! The config file has go-zero's `RpcServerConf` fields:
//!
//! ```yaml
//! Name: user.rpc
//! ListenOn: 0.0.0.0:8080
//! Etcd:
//!   Hosts: [127.0.0.1:2379]
//!   Key: user.rpc
//! ```
//!
//! Replies name the instance (`--name`). It serves `user.User` and `grpc.health.v1`,
//! registers `<key>/<leaseID>` → its address (as go-zero does), prints `registered <addr>` once
//! it is, and on SIGTERM or SIGINT deregisters, turns NOT_SERVING, waits `--grace` for clients
//! to see the DELETE, drains its RPCs and exits 0.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;
use switchboard::Server;
use switchboard::resolver::EtcdConfig;
use switchboard_examples::service::UserService;
use switchboard_examples::user::user_server::UserServer;

#[derive(Parser, Debug)]
#[command(about = "The demo user.rpc service, registered in etcd")]
struct Args {
    /// A go-zero-style server config (YAML): `ListenOn`, `Etcd: {Hosts, Key}`.
    #[arg(long, conflicts_with_all = ["listen", "etcd", "key"])]
    config: Option<std::path::PathBuf>,
    /// The instance's name, carried by every reply.
    #[arg(long, env = "INSTANCE_NAME", default_value = "user-rpc")]
    name: String,
    /// Address to serve on (port 0: a free one).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// etcd members, comma-separated.
    #[arg(long, env = "ETCD_HOSTS")]
    etcd: Option<String>,
    /// The key prefix to register under.
    #[arg(long)]
    key: Option<String>,
    /// The address clients should dial (default: POD_IP, else the first non-loopback address).
    #[arg(long)]
    advertise: Option<String>,
    /// How long to wait, after deregistering, for clients to see it (`2s`, `500ms`).
    #[arg(long, default_value = "2s", value_parser = switchboard_examples::parse_duration)]
    grace: Duration,
}

/// go-zero's `RpcServerConf`, the fields this server uses.
#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServerConfig {
    listen_on: SocketAddr,
    etcd: EtcdSection,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct EtcdSection {
    hosts: Vec<String>,
    key: String,
}

/// Where to listen, which etcd, and which key: from the config file, or the flags.
fn settings(args: &Args) -> Result<(SocketAddr, String, String)> {
    if let Some(path) = &args.config {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config: ServerConfig = serde_norway::from_str(&text)
            .with_context(|| format!("{}: not a server config", path.display()))?;
        return Ok((
            config.listen_on,
            config.etcd.hosts.join(","),
            config.etcd.key,
        ));
    }
    Ok((
        args.listen
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 8080))),
        args.etcd.clone().unwrap_or_else(|| "127.0.0.1:2379".into()),
        args.key.clone().unwrap_or_else(|| "user.rpc".into()),
    ))
}

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
    let (listen, etcd, key) = settings(&args)?;
    let service = UserService::new(&args.name);
    let mut server = Server::builder()
        .etcd(EtcdConfig::from_hosts(&etcd)?, key)
        .listen(listen)
        .grace(args.grace)
        .add_service(UserServer::new(service));
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
