//! `gateway`: an HTTP API gateway in front of the `user.rpc` service, the way a go-zero gateway
//! sits in front of its RPC services.
//!
//! ```text
//! gateway --listen 127.0.0.1:8888 --user-rpc etc/user-rpc.yaml
//! gateway --listen 127.0.0.1:8888 --etcd 127.0.0.1:2379 --key user.rpc
//! gateway --listen 127.0.0.1:8888 --user-rpc etc/user-rpc.yaml --workers 0
//! ```
//!
//! By default it runs a worker thread per core, each with a current-thread runtime that
//! accepts on the same socket and calls user.rpc over connections of its own (switchboard's
//! `PerWorker`); `--workers 0` serves from one multi-thread runtime over one client.
//!
//! Routes: `POST /api/user/register` and `POST /api/user/login` (`{"username","password"}`),
//! `GET /api/user/{id}`, `GET /healthz`, `GET /debug/switchboard` (the channel's state and
//! one entry per sub-channel, as JSON), `GET /debug/switchboard/ui` (a live dashboard of it) and
//! `GET /metrics` (switchboard's metrics in Prometheus' text format). gRPC errors become HTTP
//! statuses: UNAVAILABLE → 503, DEADLINE_EXCEEDED → 504, INVALID_ARGUMENT → 400,
//! NOT_FOUND → 404, others → 500.

use std::future::IntoFuture as _;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use metrics_exporter_prometheus::PrometheusBuilder;
use switchboard::{Client, ClientConfig};
use switchboard_examples::gateway::Args;
use tokio::signal::unix::{SignalKind, signal};
use tracing::Instrument as _;

/// How long requests in flight may take after SIGTERM or SIGINT: within `docker stop`'s 10 s.
const DRAIN: Duration = Duration::from_secs(8);

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    // SIGTERM is what `docker stop` and Kubernetes send, to PID 1 in a container, which has no
    // default action for it: without a handler the gateway would be killed after the grace
    // period instead of finishing its requests. Caught from the start, so that one sent while
    // the gateway connects is not lost.
    let mut terminate = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
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
    let mut config = match (&args.user_rpc, &args.etcd) {
        (Some(file), _) => ClientConfig::from_file(file)?,
        (None, Some(hosts)) => {
            // NonBlock by default: the gateway serves (503 on /healthz) until an instance is READY.
            ClientConfig::etcd(hosts.split(','), args.key.clone())
        }
        (None, None) => bail!("give --user-rpc FILE or --etcd HOSTS"),
    };
    let workers = args.workers();
    config.per_worker |= workers > 0;
    let client = tokio::select! {
        client = Client::connect(config) => client.context("connecting to user.rpc")?,
        _ = terminate.recv() => return Ok(()),
        _ = interrupt.recv() => return Ok(()),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let local = listener.local_addr()?;
    tracing::info!(addr = %local, workers, "gateway listening");
    // On stdout, for whoever started it on port 0.
    println!("gateway listening on {local}");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let serving = if workers == 0 {
        let app = switchboard_examples::gateway::router_with_metrics(client, metrics);
        let mut stopped = stopped;
        let serve = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.changed().await;
            })
            .into_future();
        tokio::spawn(async move { serve.await.context("serving HTTP") })
    } else {
        // Each worker accepts on the same socket, on its own thread and runtime, over its own
        // connections to user.rpc.
        let listener = listener.into_std()?;
        let mut threads = Vec::new();
        for i in 0..workers {
            let (listener, client) = (listener.try_clone()?, client.clone());
            let (metrics, mut stopped) = (metrics.clone(), stopped.clone());
            let thread = std::thread::Builder::new()
                .name(format!("gateway-worker-{i}"))
                .spawn(move || -> Result<()> {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    runtime.block_on(async move {
                        let local = client.per_worker()?;
                        let app =
                            switchboard_examples::gateway::router_with_metrics(local, metrics);
                        let listener = tokio::net::TcpListener::from_std(listener)?;
                        axum::serve(listener, app)
                            .with_graceful_shutdown(async move {
                                let _ = stopped.changed().await;
                            })
                            .await
                            .context("serving HTTP")
                    })
                })
                .context("starting a worker thread")?;
            threads.push(thread);
        }
        tokio::task::spawn_blocking(move || {
            for thread in threads {
                match thread.join() {
                    Ok(served) => served?,
                    Err(_) => bail!("a worker thread panicked"),
                }
            }
            Ok(())
        })
    };
    let signal = async {
        let name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!(
            signal = name,
            "stopping: no new connections, finishing the requests in flight"
        );
    };
    tokio::pin!(serving);
    tokio::select! {
        served = &mut serving => return served.context("a worker stopped")?,
        () = signal => {}
    }
    let _ = stop.send(true);
    // Requests in flight get DRAIN to finish (each is bounded by its gRPC deadline anyway).
    tokio::select! {
        served = serving => served.context("a worker stopped")??,
        () = tokio::time::sleep(DRAIN) => tracing::warn!(?DRAIN, "requests still in flight after the drain period; exiting"),
    }
    tracing::info!("gateway stopped");
    Ok(())
}
