//! The contenders (a direct tonic channel, tonic's balanced channel, switchboard's client) and
//! the closed-loop load that drives them: `C` callers, each sending the next unary RPC as soon
//! as the last one answered, for a bounded time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use hdrhistogram::Histogram;
use switchboard::ClientConfig;
use switchboard::balancer::Balancer;
use switchboard::balancer::Policy;
use switchboard_testkit::proto::user::user_client::UserClient;
use switchboard_testkit::proto::user::{Chunk, GetUserInfoRequest};
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};

use crate::limits::cpu_time;
use crate::peers::{GoClient, HyperConn};

/// No caller sends more RPCs than this in one run, however fast the servers are.
const MAX_RPCS_PER_CALLER: u64 = 20_000_000;

/// How long a switchboard client may take until every sub-channel is READY.
const READY_LIMIT: Duration = Duration::from_secs(30);

/// One way of sending RPCs, cheap to clone (each caller owns a clone, as an application's
/// tasks would).
#[derive(Clone)]
pub(crate) enum Caller {
    /// A tonic `Channel`: direct, or `balance_channel` (whose sender is kept so that the
    /// endpoint set stays as it was set).
    Tonic {
        /// The typed client.
        client: UserClient<Channel>,
        /// `balance_channel`'s sender of endpoint changes.
        _discovery: Option<Arc<tokio::sync::mpsc::Sender<Change<usize, Endpoint>>>>,
    },
    /// switchboard's facade: `Client` and its `Channel`.
    Switchboard(UserClient<switchboard::Channel>, switchboard::Client),
    /// switchboard's facade sending `Rpc`s.
    Facade(UserClient<switchboard::Channel>, Rpc, switchboard::Client),
    /// The balancer under switchboard's facade, alone: no deadline, no retry layer.
    Balancer(UserClient<Balancer>, Rpc, switchboard::Client),
    /// A tonic client over one bare hyper HTTP/2 connection: the floor.
    Hyper(UserClient<HyperConn>),
    /// grpc-go's `ClientConn` in the conformance peer's process, which runs the load itself.
    Go(Arc<GoClient>),
}

/// What an RPC of the load is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rpc {
    /// `GetUserInfo` with a 1-byte request.
    Unary,
    /// `Upload` of `UPLOAD_CHUNKS` chunks of `UPLOAD_CHUNK` bytes: a client stream.
    Upload,
}

/// Chunks of an `Upload` RPC.
pub(crate) const UPLOAD_CHUNKS: usize = 8;

/// Bytes per chunk of an `Upload` RPC.
pub(crate) const UPLOAD_CHUNK: usize = 64;

impl Rpc {
    async fn send<T>(self, client: &mut UserClient<T>) -> Result<String, tonic::Status>
    where
        T: tonic::client::GrpcService<tonic::body::Body>,
        T::Error: Into<tonic::codegen::StdError>,
        T::ResponseBody: tonic::codegen::Body<Data = tonic::codegen::Bytes> + Send + 'static,
        <T::ResponseBody as tonic::codegen::Body>::Error: Into<tonic::codegen::StdError> + Send,
    {
        Ok(match self {
            Self::Unary => {
                client
                    .get_user_info(GetUserInfoRequest { id: 1 })
                    .await?
                    .into_inner()
                    .instance
            }
            Self::Upload => {
                let chunks = (0..UPLOAD_CHUNKS).map(|_| Chunk {
                    data: vec![7; UPLOAD_CHUNK],
                });
                client
                    .upload(tokio_stream::iter(chunks))
                    .await?
                    .into_inner()
                    .instance
            }
        })
    }
}

impl Caller {
    /// A direct tonic `Channel` to `addr`, with tonic's defaults.
    pub(crate) async fn tonic_direct(addr: SocketAddr) -> Result<Self> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .connect()
            .await
            .with_context(|| format!("tonic connecting to {addr}"))?;
        Ok(Self::Tonic {
            client: UserClient::new(channel),
            _discovery: None,
        })
    }

    /// tonic's `Channel::balance_channel` over `addrs`, with tonic's defaults.
    pub(crate) async fn tonic_balance(addrs: &[SocketAddr]) -> Result<Self> {
        let (channel, tx) = Channel::balance_channel(64);
        for (i, addr) in addrs.iter().enumerate() {
            let endpoint = Endpoint::from_shared(format!("http://{addr}"))?;
            tx.send(Change::Insert(i, endpoint))
                .await
                .context("tonic's balance channel closed")?;
        }
        let caller = Self::Tonic {
            client: UserClient::new(channel),
            _discovery: Some(Arc::new(tx)),
        };
        caller.warm(addrs.len()).await?;
        Ok(caller)
    }

    /// A tonic client over one bare hyper HTTP/2 connection to `addr`.
    pub(crate) async fn hyper(addr: SocketAddr) -> Result<Self> {
        let origin = format!("http://{addr}").parse()?;
        let conn = HyperConn::connect(addr).await?;
        Ok(Self::Hyper(UserClient::with_origin(conn, origin)))
    }

    /// switchboard's `Client` over the fixed `addrs`, with the facade's defaults (2 s
    /// deadline, up to 3 attempts on UNAVAILABLE, keepalive 20 s) and `policy`.
    pub(crate) async fn switchboard(addrs: &[SocketAddr], policy: Policy) -> Result<Self> {
        let mut config = ClientConfig::endpoints(addrs.iter().map(ToString::to_string));
        config.policy = policy;
        Self::switchboard_with(config, addrs.len()).await
    }

    /// switchboard's `Client` from `config`, once `ready` sub-channels are READY.
    pub(crate) async fn switchboard_with(config: ClientConfig, ready: usize) -> Result<Self> {
        Self::from_client(switchboard::Client::connect(config).await?, ready).await
    }

    /// A switchboard caller over `client`, once `ready` sub-channels are READY.
    pub(crate) async fn from_client(client: switchboard::Client, ready: usize) -> Result<Self> {
        let deadline = Instant::now() + READY_LIMIT;
        while client.balancer().snapshot().ready() < ready {
            if Instant::now() > deadline {
                bail!("{ready} sub-channels not READY within {READY_LIMIT:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Self::Switchboard(UserClient::new(client.channel()), client))
    }

    /// switchboard's facade from `config` over one server at `addr`, sending `rpc`s.
    pub(crate) async fn facade(config: &str, addr: SocketAddr, rpc: Rpc) -> Result<Self> {
        let yaml = format!("Endpoints: [{addr}]\n{config}");
        let Self::Switchboard(typed, client) =
            Self::switchboard_with(ClientConfig::from_yaml(&yaml)?, 1).await?
        else {
            bail!("switchboard_with made no switchboard caller");
        };
        Ok(Self::Facade(typed, rpc, client))
    }

    /// The balancer under this switchboard caller's facade, alone, sending `rpc`s.
    pub(crate) fn balancer_alone(&self, rpc: Rpc) -> Option<Self> {
        let client = self.client()?.clone();
        Some(Self::Balancer(
            UserClient::new(client.balancer().clone()),
            rpc,
            client,
        ))
    }

    /// The switchboard client, if this is one.
    pub(crate) fn client(&self) -> Option<&switchboard::Client> {
        match self {
            Self::Switchboard(_, c) | Self::Facade(_, _, c) | Self::Balancer(_, _, c) => Some(c),
            Self::Tonic { .. } | Self::Hyper(_) | Self::Go(_) => None,
        }
    }

    /// One unary `GetUserInfo` with a 1-byte request; the name of the instance that answered.
    pub(crate) async fn call(&mut self) -> Result<String, tonic::Status> {
        let request = GetUserInfoRequest { id: 1 };
        let reply = match self {
            Self::Tonic { client, .. } => client.get_user_info(request).await?,
            Self::Switchboard(c, _) => c.get_user_info(request).await?,
            Self::Facade(c, rpc, _) => return rpc.send(c).await,
            Self::Balancer(c, rpc, _) => return rpc.send(c).await,
            Self::Hyper(c) => c.get_user_info(request).await?,
            Self::Go(_) => {
                return Err(tonic::Status::unimplemented(
                    "the grpc-go client runs its own load",
                ));
            }
        };
        Ok(reply.into_inner().instance)
    }

    /// Sends RPCs until `n` distinct instances have answered (at most 5 s).
    async fn warm(&self, n: usize) -> Result<()> {
        let mut me = self.clone();
        let mut seen = std::collections::HashSet::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while seen.len() < n && Instant::now() < deadline {
            if let Ok(name) = me.call().await {
                seen.insert(name);
            }
        }
        if seen.len() < n {
            bail!("only {} of {n} instances answered within 5 s", seen.len());
        }
        Ok(())
    }
}

/// What one run of the load measured.
pub(crate) struct Sample {
    /// Successful RPCs.
    pub(crate) ok: u64,
    /// Failed RPCs.
    pub(crate) errors: u64,
    /// Wall time of the run.
    pub(crate) elapsed: Duration,
    /// Client CPU time (user + system) during the run.
    pub(crate) cpu: Duration,
    /// Latency of successful RPCs, in microseconds.
    pub(crate) latency: Histogram<u64>,
    /// The same, per answering instance, when asked for.
    pub(crate) by_instance: HashMap<String, Histogram<u64>>,
}

impl Sample {
    /// A sample of nothing yet, to add runs into.
    pub(crate) fn empty() -> Self {
        Self {
            ok: 0,
            errors: 0,
            elapsed: Duration::ZERO,
            cpu: Duration::ZERO,
            latency: histogram(),
            by_instance: HashMap::new(),
        }
    }

    /// Successful RPCs per second.
    pub(crate) fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A latency quantile in microseconds.
    pub(crate) fn quantile_us(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64
    }

    /// Client CPU time per successful RPC, in microseconds.
    pub(crate) fn cpu_per_rpc_us(&self) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / self.ok.max(1) as f64
    }
}

/// A histogram of microseconds from 1 µs to 100 s, 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("constant histogram bounds are valid")
}

/// Runs `concurrency` callers on `caller` for `duration`; with `by_instance`, also keeps a
/// histogram per answering instance.
pub(crate) async fn run(
    caller: &Caller,
    concurrency: usize,
    duration: Duration,
    by_instance: bool,
) -> Result<Sample> {
    if let Caller::Go(go) = caller {
        return go.run(concurrency, duration).await;
    }
    let started = Instant::now();
    let until = started + duration;
    let cpu_before = cpu_time();
    let mut tasks = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        let mut me = caller.clone();
        tasks.push(tokio::spawn(async move {
            let mut latency = histogram();
            let mut per: HashMap<String, Histogram<u64>> = HashMap::new();
            let (mut ok, mut errors) = (0u64, 0u64);
            while ok + errors < MAX_RPCS_PER_CALLER {
                let t = Instant::now();
                if t >= until {
                    break;
                }
                match me.call().await {
                    Ok(instance) => {
                        let us = u64::try_from(t.elapsed().as_micros()).unwrap_or(u64::MAX);
                        latency.saturating_record(us);
                        if by_instance {
                            per.entry(instance)
                                .or_insert_with(histogram)
                                .saturating_record(us);
                        }
                        ok += 1;
                    }
                    Err(_) => errors += 1,
                }
            }
            (latency, per, ok, errors)
        }));
    }
    let mut sample = Sample::empty();
    for task in tasks {
        let (latency, per, ok, errors) = task.await?;
        sample.latency.add(&latency)?;
        for (name, h) in per {
            sample
                .by_instance
                .entry(name)
                .or_insert_with(histogram)
                .add(&h)?;
        }
        sample.ok += ok;
        sample.errors += errors;
    }
    sample.elapsed = started.elapsed();
    sample.cpu = cpu_time().saturating_sub(cpu_before);
    Ok(sample)
}
