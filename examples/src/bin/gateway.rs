//! `gateway`: an HTTP API gateway in front of the `user.rpc` service, the way a go-zero gateway
//! sits in front of its RPC services.
//!
//! ```text
//! gateway --listen 127.0.0.1:8888 --user-rpc etc/user-rpc.yaml
//! gateway --listen 127.0.0.1:8888 --etcd 127.0.0.1:2379 --key user.rpc
//! ```
//!
//! Routes: `POST /api/user/register` and `POST /api/user/login` (`{"username","password"}`),
//! `GET /api/user/{id}`, `GET /healthz`, and `GET /debug/switchboard` (the channel's state and
//! one entry per sub-channel, as JSON). gRPC errors become HTTP statuses: UNAVAILABLE → 503,
//! DEADLINE_EXCEEDED → 504, INVALID_ARGUMENT → 400, NOT_FOUND → 404, others → 500.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context as _, Result, bail};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use serde::Deserialize;
use serde_json::json;
use switchboard::{Client, ClientConfig};
use switchboard_examples::user::{
    GetUserInfoRequest, LoginReply, LoginRequest, RegisterReply, RegisterRequest, UserInfo,
};
use tonic::Code;

#[derive(Parser, Debug)]
#[command(about = "An HTTP gateway in front of user.rpc, balanced by switchboard")]
struct Args {
    /// Address to serve HTTP on.
    #[arg(long, default_value = "127.0.0.1:8888", env = "GATEWAY_LISTEN")]
    listen: SocketAddr,
    /// A client config file (YAML, TOML or JSON) for user.rpc.
    #[arg(long, conflicts_with_all = ["etcd", "key"])]
    user_rpc: Option<PathBuf>,
    /// etcd members (comma-separated), instead of a config file.
    #[arg(long, env = "ETCD_HOSTS")]
    etcd: Option<String>,
    /// The key prefix user.rpc registers under.
    #[arg(long, default_value = "user.rpc")]
    key: String,
}

switchboard::typed_client! {
    /// The user.rpc service, as the gateway calls it.
    struct User(switchboard_examples::user::user_client::UserClient) {
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

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
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
    let users = User::new(&client);
    let app = Router::new()
        .route("/api/user/register", post(register))
        .route("/api/user/login", post(login))
        .route("/api/user/{id}", get(user_info))
        .route("/healthz", get(healthz))
        .route("/debug/switchboard", get(debug))
        .with_state(App { client, users });
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
