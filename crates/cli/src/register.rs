//! `switchboard register`: registers an instance in etcd, the way a server does, and holds the
//! registration until SIGINT or SIGTERM.
//!
//! It goes through [`Registrar`]: a lease of `--ttl` seconds, the key put with it, a keepalive
//! every TTL/3, the lease re-granted and the key put again when they are lost. On SIGINT or
//! SIGTERM the lease is revoked (the key goes at once) and the command exits 0.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use switchboard_resolver::{Format, Registrar, RegistrarState, RegistrarStatus};
use tokio::signal::unix::{SignalKind, signal};

use crate::{EtcdArgs, parse_format};

#[derive(Debug, Args)]
pub(crate) struct RegisterArgs {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// The service key: `user.rpc` registers `user.rpc/<id>`.
    #[arg(long)]
    key: String,
    /// The instance's address, as clients should dial it (`host:port`).
    #[arg(long, value_name = "HOST:PORT")]
    addr: String,
    /// The lease TTL in seconds (etcd's minimum is 2).
    #[arg(long, default_value_t = 10, value_name = "SECONDS")]
    ttl: u64,
    /// How the value is written: plain (go-zero), etcd-naming (grpc-go), kratos or go-micro.
    #[arg(long, default_value = "plain", value_parser = parse_format)]
    format: Format,
    /// The last segment of the key. Defaults to the lease ID (plain) or the address
    /// (etcd-naming).
    #[arg(long)]
    id: Option<String>,
}

pub(crate) async fn register(args: RegisterArgs) -> Result<()> {
    let config = args.etcd.config()?;
    let timeout = args.etcd.timeout()?;
    let mut registrar = Registrar::new(config, &args.key, &args.addr)?
        .ttl(Duration::from_secs(args.ttl))?
        .format(args.format)
        .register_timeout(timeout);
    if let Some(id) = &args.id {
        registrar = registrar.id(id);
    }
    // Listen before registering, so that a signal during registration is not lost.
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    let registration = registrar
        .register()
        .await
        .with_context(|| format!("registering in etcd at {}", args.etcd.etcd))?;
    let mut status = registration.status_watch();
    let mut shown = status.borrow_and_update().clone();
    announce(&shown, &args.addr, args.ttl)?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            changed = status.changed() => {
                if changed.is_err() {
                    anyhow::bail!("the registrar stopped");
                }
                let now = status.borrow_and_update().clone();
                if now.state == RegistrarState::Registered {
                    if now.key != shown.key || now.lease != shown.lease {
                        // A new lease (and, for lease-ID keys, a new key): say so.
                        announce(&now, &args.addr, args.ttl)?;
                    }
                    shown = now;
                } else if now.state == RegistrarState::Recovering
                    && shown.state != RegistrarState::Recovering
                {
                    eprintln!(
                        "recovering: {}",
                        now.last_error.as_deref().unwrap_or("the registration was lost")
                    );
                    shown.state = now.state;
                }
            }
        }
    }
    let key = registration.status().key.unwrap_or_default();
    registration
        .deregister()
        .await
        .with_context(|| format!("deregistering {key}"))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "deregistered {key}")?;
    out.flush()?;
    Ok(())
}

/// Prints `registered KEY → ADDR (lease ID, ttl S)`.
fn announce(status: &RegistrarStatus, addr: &str, ttl: u64) -> Result<()> {
    let mut out = std::io::stdout().lock();
    let key = status.key.as_deref().unwrap_or("?");
    match status.lease {
        Some(lease) => writeln!(out, "registered {key} → {addr} (lease {lease}, ttl {ttl}s)")?,
        None => writeln!(out, "registered {key} → {addr} (ttl {ttl}s)")?,
    }
    out.flush()?;
    Ok(())
}
