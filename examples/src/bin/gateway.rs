//! `gateway`: an HTTP API gateway in front of the `user.rpc` service, the way a go-zero gateway
//! sits in front of its RPC services.
//!
//! ```text
//! gateway --listen 127.0.0.1:8888 --user-rpc etc/user-rpc.yaml
//! gateway --listen 127.0.0.1:8888 --etcd 127.0.0.1:2379 --key user.rpc
//! ```
//!
//! Routes: `POST /api/user/register` and `POST /api/user/login` (`{"username","password"}`),
//! `GET /api/user/{id}`, `GET /healthz`, `GET /debug/switchboard` (the channel's state and
//! one entry per sub-channel, as JSON), `GET /debug/switchboard/ui` (a live dashboard of it) and
//! `GET /metrics` (switchboard's metrics in Prometheus' text format). gRPC errors become HTTP
//! statuses: UNAVAILABLE → 503, DEADLINE_EXCEEDED → 504, INVALID_ARGUMENT → 400,
//! NOT_FOUND → 404, others → 500.

use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use metrics_exporter_prometheus::PrometheusBuilder;
use switchboard::{Client, ClientConfig};
use switchboard_examples::gateway::Args;
use tracing::Instrument as _;

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    // The recorder behind the `metrics` facade that switchboard reports through, installed
    // before the client exists so that nothing it records is lost.
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .context("installing the Prometheus recorder")?;
    let upkeep = metrics.clone();
    tokio::spawn(
        async move {
            // Histograms are drained into their summaries here rather than on every scrape.
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                tracing::trace!("metrics upkeep");
                upkeep.run_upkeep();
            }
        }
        .instrument(tracing::info_span!("metrics_upkeep")),
    );
    let config = match (&args.user_rpc, &args.etcd) {
        (Some(file), _) => ClientConfig::from_file(file)?,
        (None, Some(hosts)) => {
            let mut config = ClientConfig::etcd(hosts.split(','), args.key.clone());
            config.non_block = true;
            config
        }
        (None, None) => bail!("give --user-rpc FILE or --etcd HOSTS"),
    };
    let client = Client::connect(config)
        .await
        .context("connecting to user.rpc")?;
    let app = switchboard_examples::gateway::router_with_metrics(client, metrics);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
