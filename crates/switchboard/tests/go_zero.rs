//! go-zero's client fields doing what they do in go-zero, against real servers on 127.0.0.1:
//! `App` and `Token` reach a server that authenticates as go-zero's `Auth: true` servers do,
//! and `Middlewares: {Timeout: false}` takes the default deadline away.

use std::time::Duration;

use anyhow::{Result, ensure};
use switchboard::{Client, ClientConfig};
use switchboard_testkit::TestServer;
use switchboard_testkit::proto::user::GetUserInfoRequest;
use switchboard_testkit::proto::user::user_client::UserClient;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Status};

/// A server that, like go-zero's authorizing interceptor, refuses calls without the `app` and
/// `token` metadata it expects (go-zero checks them against Redis; here, against one pair).
async fn auth_server() -> Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let check = |request: tonic::Request<()>| -> Result<tonic::Request<()>, Status> {
        let md = request.metadata();
        let value = |key: &str| md.get(key).and_then(|v| v.to_str().ok()).unwrap_or("");
        match (value("app"), value("token")) {
            ("", _) | (_, "") => Err(Status::unauthenticated("missing metadata")),
            ("gateway", "6jKNZbEpYGeUMAifz10gOnmoty3TV") => Ok(request),
            _ => Err(Status::unauthenticated("wrong app or token")),
        }
    };
    let service = tonic::service::interceptor::InterceptedService::new(
        switchboard_testkit::user_service("auth"),
        check,
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    Ok(addr)
}

async fn client(yaml: &str) -> Result<Client> {
    Ok(Client::connect(ClientConfig::from_yaml(yaml)?).await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_and_token_are_sent_as_go_zeros_client_sends_them() -> Result<()> {
    let addr = auth_server().await?;
    let call = |client: Client| async move {
        UserClient::new(client.channel())
            .get_user_info(GetUserInfoRequest { id: 1 })
            .await
    };
    let with = client(&format!(
        "Endpoints: [{addr}]\nApp: gateway\nToken: 6jKNZbEpYGeUMAifz10gOnmoty3TV\n"
    ))
    .await?;
    let reply = call(with).await?.into_inner();
    ensure!(reply.instance == "auth", "{reply:?}");

    let without = client(&format!("Endpoints: [{addr}]\n")).await?;
    let refused = call(without).await.expect_err("no credential");
    ensure!(refused.code() == Code::Unauthenticated, "{refused:?}");
    let wrong = client(&format!(
        "Endpoints: [{addr}]\nApp: gateway\nToken: guess\n"
    ))
    .await?;
    let refused = call(wrong).await.expect_err("wrong token");
    ensure!(
        refused.code() == Code::Unauthenticated && refused.message() == "wrong app or token",
        "{refused:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn middlewares_timeout_false_turns_the_default_deadline_off() -> Result<()> {
    let server = TestServer::start("slow").await?;
    server.set_delay(Duration::from_millis(700));
    let call = |client: Client| async move {
        UserClient::new(client.channel())
            .get_user_info(GetUserInfoRequest { id: 1 })
            .await
    };
    let addr = server.addr();
    let timed = client(&format!("Endpoints: [{addr}]\nTimeout: 300\n")).await?;
    let expired = call(timed)
        .await
        .expect_err("slower than the default deadline");
    ensure!(expired.code() == Code::DeadlineExceeded, "{expired:?}");
    let untimed = client(&format!(
        "Endpoints: [{addr}]\nTimeout: 300\nMiddlewares: {{Timeout: false}}\n"
    ))
    .await?;
    let reply = call(untimed).await?.into_inner();
    ensure!(reply.instance == "slow", "{reply:?}");
    Ok(())
}
