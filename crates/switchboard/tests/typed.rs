//! A gateway-style typed client over the balanced channel.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use switchboard::{CallOptions, Client, ClientConfig};
use switchboard_testkit::TestServer;
use switchboard_testkit::proto::user::{
    GetUserInfoRequest, RegisterReply, RegisterRequest, UserInfo,
};
use tonic::Code;

switchboard::typed_client! {
    /// The user.rpc service.
    pub struct User(switchboard_testkit::proto::user::user_client::UserClient) {
        register(RegisterRequest) -> RegisterReply;
        get_user_info(GetUserInfoRequest) -> UserInfo;
    }
}

#[tokio::test]
async fn typed_methods_take_shared_references_and_per_call_options() -> Result<()> {
    let a = TestServer::start("a").await?;
    let config = ClientConfig::endpoints([a.addr().to_string()]);
    let users = User::new(&Client::connect(config).await?);

    // `&self` methods: one client shared by concurrent calls.
    let (x, y) = tokio::join!(
        users.get_user_info(GetUserInfoRequest { id: 7 }),
        users.register(RegisterRequest::default()),
    );
    assert_eq!(x?.instance, "a");
    assert_eq!(y?.instance, "a");

    // A per-call deadline shorter than the server's delay.
    a.set_delay(Duration::from_millis(500));
    let quick = users.with(CallOptions::new().timeout(Duration::from_millis(100)));
    let status = quick
        .get_user_info(GetUserInfoRequest { id: 1 })
        .await
        .expect_err("slower than the deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // The original keeps the client's default deadline (2 s).
    assert_eq!(
        users
            .get_user_info(GetUserInfoRequest { id: 1 })
            .await?
            .instance,
        "a"
    );

    let options = CallOptions::new()
        .metadata("x-request-id", "42")?
        .wait_for_ready(true);
    assert_eq!(
        users
            .with(options)
            .get_user_info(GetUserInfoRequest { id: 1 })
            .await?
            .instance,
        "a"
    );
    assert!(CallOptions::new().metadata("bad key", "v").is_err());
    assert!(CallOptions::new().metadata("k", "line\nbreak").is_err());
    Ok(())
}

/// A typed client over the client's channel wrapped in a tower layer and a tonic interceptor:
/// the interceptor adds an auth token (or refuses the call), the layer sees every request with
/// the token on it (a stand-in for a tracing layer).
#[tokio::test]
async fn a_typed_client_runs_over_an_interceptor_and_a_tower_layer() -> Result<()> {
    use tonic::service::interceptor::InterceptedService;

    let a = TestServer::start("a").await?;
    let client = Client::connect(ClientConfig::endpoints([a.addr().to_string()])).await?;
    let tokens: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen = tokens.clone();
    let traced = tower::ServiceBuilder::new()
        .map_request(move |request: http::Request<tonic::body::Body>| {
            let token = request.headers().get("authorization");
            let token = token.and_then(|t| t.to_str().ok()).unwrap_or("none");
            seen.lock().expect("not poisoned").push(token.to_owned());
            request
        })
        .service(client.channel());
    let auth = |mut request: tonic::Request<()>| {
        request
            .metadata_mut()
            .insert("authorization", "Bearer secret".parse().expect("ASCII"));
        Ok(request)
    };
    let users = User::over(InterceptedService::new(traced, auth));
    let reply = users.get_user_info(GetUserInfoRequest { id: 3 }).await?;
    assert_eq!((reply.id, reply.instance.as_str()), (3, "a"));
    assert_eq!(*tokens.lock().expect("not poisoned"), ["Bearer secret"]);
    // Per-call options still apply through the layers.
    a.set_delay(Duration::from_millis(300));
    let status = users
        .with(CallOptions::new().timeout(Duration::from_millis(50)))
        .get_user_info(GetUserInfoRequest { id: 3 })
        .await
        .expect_err("slower than the deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");

    // An interceptor that refuses: the call never reaches the channel.
    let served = a.served();
    let refusing = User::over(InterceptedService::new(
        client.channel(),
        |_: tonic::Request<()>| Err(tonic::Status::unauthenticated("no token")),
    ));
    let status = refusing
        .get_user_info(GetUserInfoRequest { id: 3 })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(a.served(), served);
    Ok(())
}

/// Every RPC carries a `user-agent`: switchboard's own, after the config's `UserAgent` if set.
#[tokio::test]
async fn calls_carry_a_user_agent() -> Result<()> {
    let a = TestServer::start("a").await?;
    let ours = concat!("grpc-rust-switchboard/", env!("CARGO_PKG_VERSION"));
    for (settings, expected) in [
        (String::new(), ours.to_owned()),
        (
            "UserAgent: gateway/1.4\n".to_owned(),
            format!("gateway/1.4 {ours}"),
        ),
    ] {
        let yaml = format!("Endpoints: [{}]\n{settings}", a.addr());
        let users = User::new(&Client::connect(ClientConfig::from_yaml(&yaml)?).await?);
        users.get_user_info(GetUserInfoRequest { id: 1 }).await?;
        assert_eq!(a.last_user_agent().as_deref(), Some(expected.as_str()));
    }
    Ok(())
}
