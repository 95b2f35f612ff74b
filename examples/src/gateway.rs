//! The gateway's routes: REST/JSON in front of `user.rpc`, through a typed switchboard client,
//! plus what an operator looks at: the balancer's snapshot as JSON, a live dashboard of it and
//! Prometheus metrics.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::json;
use switchboard::Client;
use tonic::Code;

use crate::user::{
    GetUserInfoRequest, LoginReply, LoginRequest, RegisterReply, RegisterRequest, UserInfo,
};

/// The command line of `gateway`.
#[derive(Parser, Debug)]
#[command(
    name = "gateway",
    about = "An HTTP gateway in front of user.rpc, balanced by switchboard"
)]
pub struct Args {
    /// Address to serve HTTP on.
    #[arg(long, default_value = "127.0.0.1:8888", env = "GATEWAY_LISTEN")]
    pub listen: SocketAddr,
    /// A client config file (YAML, TOML or JSON) for user.rpc.
    #[arg(long, conflicts_with_all = ["etcd", "key"])]
    pub user_rpc: Option<PathBuf>,
    /// etcd members (comma-separated), instead of a config file.
    #[arg(long, env = "ETCD_HOSTS")]
    pub etcd: Option<String>,
    /// The key prefix user.rpc registers under.
    #[arg(long, default_value = "user.rpc")]
    pub key: String,
    /// Worker threads, each with a current-thread runtime, its own share of the HTTP
    /// connections and its own connections to every user.rpc instance (switchboard's
    /// `PerWorker`), so that a request never leaves its thread. Defaults to one per core; `0`
    /// serves from one multi-thread runtime over one client's connections.
    #[arg(long, env = "GATEWAY_WORKERS")]
    pub workers: Option<usize>,
}

impl Args {
    /// The worker threads to run: `--workers`, or one per core.
    pub fn workers(&self) -> usize {
        self.workers
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from))
    }
}

switchboard::typed_client! {
    /// The user.rpc service, as the gateway calls it.
    pub struct User(crate::user::user_client::UserClient) {
        register(RegisterRequest) -> RegisterReply;
        login(LoginRequest) -> LoginReply;
        get_user_info(GetUserInfoRequest) -> UserInfo;
    }
}

#[derive(Clone)]
struct App {
    client: Client,
    users: User,
}

#[derive(Deserialize)]
struct Credentials {
    username: String,
    password: String,
}

/// The dashboard: one page, no external assets, that polls `/debug/switchboard` every second.
const DASHBOARD: &str = include_str!("dashboard.html");

/// The content type of Prometheus' text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The gateway's routes over `client`, a client of `user.rpc`: `POST /api/user/register`,
/// `POST /api/user/login`, `GET /api/user/{id}`, `GET /healthz`, `GET /debug/switchboard` (the
/// balancer's snapshot as JSON) and `GET /debug/switchboard/ui` (a live dashboard of it).
pub fn router(client: Client) -> Router {
    routes(client).with_state(())
}

/// [`router`], plus `GET /metrics`: everything recorded through the `metrics` facade into the
/// Prometheus recorder that `metrics` is the handle of, and the per-instance figures of the
/// client's live sub-channels, in Prometheus' text format.
///
/// # Examples
///
/// ```no_run
/// # async fn run(client: switchboard::Client) -> anyhow::Result<()> {
/// let metrics = metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?;
/// let app = switchboard_examples::gateway::router_with_metrics(client, metrics);
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8888").await?;
/// axum::serve(listener, app).await?;
/// # Ok(()) }
/// ```
pub fn router_with_metrics(client: Client, metrics: PrometheusHandle) -> Router {
    routes(client.clone())
        .route("/metrics", get(render_metrics))
        .with_state((metrics, client))
}

/// Every route but `/metrics`, waiting for the state `/metrics` needs.
fn routes<S: Clone + Send + Sync + 'static>(client: Client) -> Router<S> {
    let users = User::new(&client);
    Router::new()
        .route("/api/user/register", post(register))
        .route("/api/user/login", post(login))
        .route("/api/user/{id}", get(user_info))
        .layer(axum::middleware::from_fn(traced))
        .route("/healthz", get(healthz))
        .route("/debug/switchboard", get(debug))
        .with_state(App { client, users })
        .route("/debug/switchboard/ui", get(dashboard))
}

/// Runs each API request in the W3C trace its `traceparent` names (or a new one), so the RPCs
/// it makes carry the trace on.
async fn traced(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use switchboard::trace::TraceContext;
    let trace = TraceContext::from_headers(request.headers())
        .map_or_else(TraceContext::root, |t| t.child());
    switchboard::trace::scope(trace, next.run(request)).await
}

async fn dashboard() -> Response {
    ([(header::CACHE_CONTROL, "no-cache")], Html(DASHBOARD)).into_response()
}

async fn render_metrics(State((metrics, client)): State<(PrometheusHandle, Client)>) -> Response {
    let mut text = metrics.render();
    text.push_str(&switchboard::balancer::metrics::render_instances(&[client
        .balancer()
        .snapshot()]));
    ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], text).into_response()
}

async fn register(State(app): State<App>, Json(c): Json<Credentials>) -> Response {
    let request = RegisterRequest {
        username: c.username,
        password: c.password,
    };
    match app.users.register(request).await {
        Ok(reply) => Json(json!({"id": reply.id, "instance": reply.instance})).into_response(),
        Err(status) => error(&status),
    }
}

async fn login(State(app): State<App>, Json(c): Json<Credentials>) -> Response {
    let request = LoginRequest {
        username: c.username,
        password: c.password,
    };
    match app.users.login(request).await {
        Ok(reply) => {
            Json(json!({"id": reply.id, "token": reply.token, "instance": reply.instance}))
                .into_response()
        }
        Err(status) => error(&status),
    }
}

async fn user_info(State(app): State<App>, Path(id): Path<i64>) -> Response {
    match app.users.get_user_info(GetUserInfoRequest { id }).await {
        Ok(reply) => {
            Json(json!({"id": reply.id, "username": reply.username, "instance": reply.instance}))
                .into_response()
        }
        Err(status) => error(&status),
    }
}

async fn healthz(State(app): State<App>) -> Response {
    let state = app.client.balancer().state();
    let code = if state == switchboard::balancer::ConnectivityState::Ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({"user.rpc": state.as_str()}))).into_response()
}

async fn debug(State(app): State<App>) -> Response {
    Json(app.client.balancer().snapshot()).into_response()
}

fn error(status: &tonic::Status) -> Response {
    let code = match status.code() {
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::InvalidArgument => StatusCode::BAD_REQUEST,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = json!({"code": format!("{:?}", status.code()), "message": status.message()});
    (code, Json(body)).into_response()
}
