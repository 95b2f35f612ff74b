//! `switchboard`: the operator's command-line tool.
//!
//! ```text
//! switchboard resolve --etcd 127.0.0.1:2379 --key user.rpc            # the instance set, once
//! switchboard resolve --etcd 127.0.0.1:2379 --key user.rpc --watch    # then every change
//! switchboard status --gateway http://127.0.0.1:8888                  # a gateway's balancer
//! switchboard register --etcd 127.0.0.1:2379 --key user.rpc --addr 127.0.0.1:9001  # until ^C
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use switchboard_resolver::{
    Change, EtcdConfig, EtcdResolver, EtcdTls, Format, InstanceSet, Resolution, Resolve, Update,
};

mod register;
mod status;

/// Client-side load balancing for gRPC, driven by etcd.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the instances registered under a key prefix: `KEY ADDR` lines, sorted.
    ///
    /// With --watch, print the initial set and then every change as it is applied:
    /// `+ KEY ADDR` for an instance added (or changed), `- KEY ADDR` for one removed.
    Resolve(ResolveArgs),
    /// Print a gateway's balancer snapshot (`GET URL/debug/switchboard`) as a table: the target
    /// and its state, then one row per sub-channel.
    Status(status::StatusArgs),
    /// Register an instance in etcd and hold the registration (lease keepalive) until SIGINT or
    /// SIGTERM, then deregister.
    ///
    /// Prints `registered KEY → ADDR (lease ID, ttl S)` once registered (again when the lease
    /// is replaced), and `deregistered KEY` at the end.
    Register(register::RegisterArgs),
}

#[derive(Debug, Args)]
struct ResolveArgs {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// The service key: `user.rpc` reads `user.rpc/…`.
    #[arg(long)]
    key: String,
    /// How registration values are encoded.
    #[arg(long, default_value = "auto", value_parser = parse_format)]
    format: Format,
    /// Keep running and print every change.
    #[arg(long)]
    watch: bool,
}

#[derive(Debug, Args)]
struct EtcdArgs {
    /// etcd members, comma-separated (`host:port` or `http(s)://host:port`).
    #[arg(long, value_name = "HOSTS")]
    etcd: String,
    /// Seconds to wait for etcd before giving up.
    #[arg(long, default_value_t = 5.0, value_name = "SECONDS")]
    timeout: f64,
    /// etcd user name (its password from `SWITCHBOARD_ETCD_PASSWORD`, `--password-file` or
    /// `--password`).
    #[arg(long)]
    user: Option<String>,
    /// etcd password; better from the environment (`SWITCHBOARD_ETCD_PASSWORD`) or a file,
    /// which other users cannot read in the process list.
    #[arg(
        long,
        requires = "user",
        env = "SWITCHBOARD_ETCD_PASSWORD",
        hide_env_values = true,
        conflicts_with = "password_file"
    )]
    password: Option<String>,
    /// A file whose first line is the etcd password.
    #[arg(long, value_name = "FILE", requires = "user")]
    password_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify etcd's certificate; turns TLS on.
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS; turns TLS on.
    #[arg(long, value_name = "FILE", requires = "cert_key")]
    cert: Option<PathBuf>,
    /// Client certificate key (PEM) for mutual TLS.
    #[arg(long, value_name = "FILE", requires = "cert")]
    cert_key: Option<PathBuf>,
}

fn parse_format(s: &str) -> Result<Format, String> {
    s.parse().map_err(|e| format!("{e}"))
}

impl EtcdArgs {
    fn timeout(&self) -> Result<Duration> {
        Duration::try_from_secs_f64(self.timeout)
            .ok()
            .filter(|d| !d.is_zero())
            .context("--timeout must be a positive number of seconds")
    }

    /// The password of `--user`: `--password` (or its environment variable), else the first
    /// line of `--password-file`.
    fn password(&self) -> Result<String> {
        if let Some(password) = &self.password {
            return Ok(password.clone());
        }
        let Some(file) = &self.password_file else {
            anyhow::bail!(
                "--user needs a password: SWITCHBOARD_ETCD_PASSWORD, --password-file or --password"
            );
        };
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading the etcd password from {}", file.display()))?;
        Ok(text.lines().next().unwrap_or_default().to_owned())
    }

    fn config(&self) -> Result<EtcdConfig> {
        let timeout = self.timeout()?;
        let mut config = EtcdConfig::from_hosts(&self.etcd)?
            .connect_timeout(timeout.min(Duration::from_secs(3)))
            .request_timeout(timeout.min(Duration::from_secs(5)));
        if let Some(user) = &self.user {
            config = config.user(user, self.password()?);
        }
        if self.cacert.is_some() || self.cert.is_some() {
            let tls = EtcdTls::from_files(
                self.cacert.as_deref(),
                self.cert.as_deref(),
                self.cert_key.as_deref(),
            )?;
            config = config.tls(tls);
        }
        Ok(config)
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Resolve(args) => resolve(args).await,
        Command::Status(args) => status::status(args).await,
        Command::Register(args) => register::register(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn resolve(args: ResolveArgs) -> Result<()> {
    let config = args.etcd.config()?;
    let timeout = args.etcd.timeout()?;
    let resolver = EtcdResolver::new(config, &args.key).format(args.format);
    let mut resolution = resolver.resolve();
    let first = first_listing(&mut resolution, timeout, &args.etcd.etcd).await?;
    let mut set = InstanceSet::default();
    let initial = set.apply(Update::Reset(first));
    let mut out = std::io::stdout().lock();
    if !args.watch {
        for instance in set.iter() {
            writeln!(out, "{} {}", instance.key, instance.addr)?;
        }
        return Ok(());
    }
    print_changes(&mut out, &initial)?;
    drop(out);
    loop {
        let update = tokio::select! {
            u = resolution.next_update() => u,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let Some(update) = update else {
            bail!("the resolver stopped");
        };
        let changes = set.apply(update);
        print_changes(&mut std::io::stdout().lock(), &changes)?;
    }
}

/// Waits for the first listing, or fails naming etcd and the last error.
async fn first_listing(
    resolution: &mut Resolution,
    timeout: Duration,
    hosts: &str,
) -> Result<Vec<switchboard_resolver::Instance>> {
    match tokio::time::timeout(timeout, resolution.next_update()).await {
        Ok(Some(Update::Reset(instances))) => Ok(instances),
        Ok(Some(other)) => bail!("unexpected first update from the resolver: {other:?}"),
        Ok(None) => bail!("the resolver stopped"),
        Err(_) => {
            let why = resolution
                .status()
                .last_error
                .unwrap_or_else(|| "no answer".into());
            bail!("no listing from etcd at {hosts} within {timeout:?}: {why}")
        }
    }
}

fn print_changes(out: &mut impl Write, changes: &[Change]) -> Result<()> {
    for change in changes {
        match change {
            Change::Added(i) | Change::Replaced { new: i, .. } => {
                writeln!(out, "+ {} {}", i.key, i.addr)?
            }
            Change::Removed(i) => writeln!(out, "- {} {}", i.key, i.addr)?,
        }
    }
    out.flush()?;
    Ok(())
}
