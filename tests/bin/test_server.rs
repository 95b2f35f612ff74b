//! `test-server --name NAME --port PORT`: a test gRPC server in its own process.
//!
//! Serves `user.User` (replies name the instance `NAME`) and `grpc.health.v1` on
//! `127.0.0.1:PORT` (0 = a free port), prints exactly one line `listening 127.0.0.1:PORT` on
//! stdout once bound, and on SIGTERM (or SIGINT) stops gracefully: it closes the listener,
//! sends every connection a GOAWAY, lets in-flight RPCs finish, and exits 0. Logs go to stderr
//! (`RUST_LOG`, default `warn`). Tests drive it through `switchboard_testkit::ServerProcess`.

use std::io::Write as _;

use anyhow::{Context as _, Result, bail};
use switchboard_testkit::TestServer;
use tokio::signal::unix::{SignalKind, signal};

/// The command line.
struct Args {
    name: String,
    port: u16,
}

fn parse_args() -> Result<Args> {
    let mut name = None;
    let mut port = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--name" => name = Some(value()?),
            "--port" => port = Some(value()?.parse().context("--port takes a port number")?),
            "-h" | "--help" => {
                println!("usage: test-server --name NAME --port PORT");
                std::process::exit(0);
            }
            other => {
                bail!("unknown argument {other:?}; usage: test-server --name NAME --port PORT")
            }
        }
    }
    Ok(Args {
        name: name.context("--name is required")?,
        port: port.unwrap_or(0),
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let args = parse_args()?;
    // Handlers first, so that a SIGTERM right after the `listening` line is not fatal.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let server = TestServer::start_on(&args.name, args.port).await?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening {}", server.addr())?;
        stdout.flush()?;
    }
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    server.shutdown().await;
    Ok(())
}
