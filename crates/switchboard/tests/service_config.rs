//! A gRPC service config's per-method settings against real tonic servers on 127.0.0.1.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

mod flaky;

use anyhow::Result;
use flaky::{Flaky, Seen};
use switchboard::{Client, ClientConfig};
use switchboard_testkit::proto::user::user_client::UserClient;
use switchboard_testkit::proto::user::{GetUserInfoRequest, LoginReply, LoginRequest, UserInfo};
use switchboard_testkit::{ClosedPort, TestServer};
use tonic::{Code, Request, Response, Status};

async fn client(addr: SocketAddr, settings: &str) -> Result<UserClient<switchboard::Channel>> {
    let yaml = format!("Endpoints: [{addr}]\n{settings}");
    let client = Client::connect(ClientConfig::from_yaml(&yaml)?).await?;
    Ok(UserClient::new(client.channel()))
}

async fn get(users: &mut UserClient<switchboard::Channel>) -> Result<UserInfo, Status> {
    users
        .get_user_info(GetUserInfoRequest { id: 7 })
        .await
        .map(Response::into_inner)
}

async fn login(users: &mut UserClient<switchboard::Channel>) -> Result<LoginReply, Status> {
    users
        .login(LoginRequest {
            username: "ann".into(),
            password: "secret".into(),
        })
        .await
        .map(Response::into_inner)
}

#[tokio::test]
async fn a_method_timeout_shorter_than_the_clients_fails_only_that_method() -> Result<()> {
    let server = TestServer::start("slow").await?;
    server.set_delay(Duration::from_secs(3));
    let mut users = client(
        server.addr(),
        r#"Timeout: 10s
ServiceConfig: |
  {"methodConfig": [{"name": [{"service": "user.User", "method": "GetUserInfo"}], "timeout": "2s"}]}
"#,
    )
    .await?;

    let status = get(&mut users)
        .await
        .expect_err("past the method's deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // Login keeps the client's 10 s.
    let reply = login(&mut users).await?;
    assert_eq!(reply.token, "token-ann");
    // The caller's own shorter deadline still wins over the method's.
    let mut request = Request::new(GetUserInfoRequest { id: 7 });
    request.set_timeout(Duration::from_millis(50));
    let started = std::time::Instant::now();
    let status = users
        .get_user_info(request)
        .await
        .expect_err("past the caller's deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // Had the method's 2 s been used instead, the call would have taken 2 s at least.
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    Ok(())
}

#[tokio::test]
async fn a_service_wide_timeout_applies_to_every_method_of_the_service() -> Result<()> {
    let server = TestServer::start("slow").await?;
    server.set_delay(Duration::from_millis(400));
    let mut users = client(
        server.addr(),
        r#"Timeout: 5s
ServiceConfig: |
  {"methodConfig": [
    {"name": [{"service": "user.User"}], "timeout": "0.1s"},
    {"name": [{"service": "user.User", "method": "Login"}], "timeout": "3s"}
  ]}
"#,
    )
    .await?;
    let status = get(&mut users)
        .await
        .expect_err("past the service's deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    login(&mut users).await?;
    Ok(())
}

#[tokio::test]
async fn a_method_retry_policy_retries_where_the_client_does_not() -> Result<()> {
    let seen = Arc::new(Seen::default());
    let addr = Flaky::new(&seen, 2, Code::Unavailable).serve().await?;

    // The client alone does not retry.
    let mut plain = client(addr, "Timeout: 5s\nRetry: {MaxAttempts: 1}\n").await?;
    let status = get(&mut plain).await.expect_err("not retried");
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(seen.calls(), 1);

    seen.calls.store(0, Ordering::SeqCst);
    let mut users = client(
        addr,
        r#"Timeout: 5s
Retry: {MaxAttempts: 1}
ServiceConfig: |
  {
    "methodConfig": [{
      "name": [{"service": "user.User", "method": "GetUserInfo"}],
      "retryPolicy": {
        "maxAttempts": 3,
        "initialBackoff": "0.01s",
        "maxBackoff": "0.05s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"]
      }
    }],
    "retryThrottling": {"maxTokens": 10, "tokenRatio": 0.1}
  }
"#,
    )
    .await?;
    let reply = get(&mut users).await?;
    assert_eq!(reply.id, 7);
    assert_eq!(seen.calls(), 3);
    Ok(())
}

#[tokio::test]
async fn wait_for_ready_from_the_method_config_waits_out_the_deadline() -> Result<()> {
    // Nothing listens there: the instance fails to connect.
    let closed = ClosedPort::new()?;
    let addr = closed.addr();
    let mut users = client(
        addr,
        r#"NonBlock: true
Timeout: 5s
Retry: {MaxAttempts: 1}
ServiceConfig: |
  {"methodConfig": [{"name": [{"service": "user.User", "method": "GetUserInfo"}],
    "waitForReady": true, "timeout": "0.3s"}]}
"#,
    )
    .await?;
    // Login fails fast, as the client does not wait for ready...
    let status = login(&mut users).await.expect_err("no instance");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // ...while GetUserInfo waits for a READY instance until its deadline.
    let status = get(&mut users).await.expect_err("no instance");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    Ok(())
}
