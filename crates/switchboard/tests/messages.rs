//! What the channel does to messages, against real tonic servers on 127.0.0.1: size limits
//! both ways, from the config and per method from the service config; gzip compression; and
//! the `:authority` override.

use std::time::Duration;

use anyhow::{Result, bail, ensure};
use switchboard::{Client, ClientConfig};
use switchboard_testkit::TestServer;
use switchboard_testkit::proto::user::user_client::UserClient;
use switchboard_testkit::proto::user::{
    ChatMessage, Chunk, LoginReply, LoginRequest, WatchEventsRequest,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

switchboard::typed_client! {
    struct Users(switchboard_testkit::proto::user::user_client::UserClient) {
        login(LoginRequest) -> LoginReply;
    }
}

async fn client(server: &TestServer, settings: &str) -> Result<Client> {
    let yaml = format!(
        "Endpoints: [{}]\nStreamingMethods: [/user.User/*]\nStreamTimeout: 20s\n{settings}",
        server.addr()
    );
    Ok(Client::connect(ClientConfig::from_yaml(&yaml)?).await?)
}

/// A tonic client over the channel that leaves message sizes to it.
fn raw(client: &Client) -> UserClient<switchboard::Channel> {
    UserClient::new(client.channel())
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

fn login(username: String) -> LoginRequest {
    LoginRequest {
        username,
        password: String::new(),
    }
}

/// Waits, at most 10 s, until the server has no streaming call open.
async fn all_closed(server: &TestServer) -> Result<()> {
    server.streams_closed(Duration::from_secs(10)).await
}

fn expect_exhausted<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    says: &str,
) -> Result<()> {
    match result {
        Err(status) if status.code() == Code::ResourceExhausted => {
            ensure!(status.message().contains(says), "{status:?}");
            Ok(())
        }
        other => bail!("expected RESOURCE_EXHAUSTED ({says}), got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_messages_over_the_limit_are_not_sent_and_streams_carrying_one_are_reset()
-> Result<()> {
    let server = TestServer::start("limits").await?;
    let limits = client(&server, "MaxRequestMessageBytes: 65536\nRetry: {RetryableStatusCodes: [UNAVAILABLE, RESOURCE_EXHAUSTED]}\n").await?;
    let users = Users::new(&limits);

    // Within the limit, then over it: the large one never reaches the server, and is not
    // retried even though RESOURCE_EXHAUSTED is retryable here.
    users.login(login("a".repeat(60_000))).await?;
    let served = server.served();
    expect_exhausted(
        users.login(login("a".repeat(70_000))).await,
        "larger than the limit of 65536 bytes",
    )?;
    ensure!(
        server.served() == served,
        "the server got the oversized call"
    );

    // A client stream whose fourth message is over the limit: the stream is reset and the
    // call fails with RESOURCE_EXHAUSTED.
    let (tx, rx) = mpsc::channel(8);
    let call = tokio::spawn({
        let mut c = raw(&limits);
        async move { c.upload(ReceiverStream::new(rx)).await }
    });
    for size in [1000, 1000, 1000, 100_000] {
        if tx
            .send(Chunk {
                data: vec![1; size],
            })
            .await
            .is_err()
        {
            break;
        }
    }
    let result = tokio::time::timeout(Duration::from_secs(10), call).await??;
    expect_exhausted(result, "request message of 100004 bytes")?;
    drop(tx);
    all_closed(&server).await?;

    // A method's lower limit from the service config: Login is held to 1 KiB, never sent;
    // other methods keep the client's limit.
    let config = r#"MaxRequestMessageBytes: 65536
ServiceConfig: |
  {"methodConfig": [{"name": [{"service": "user.User", "method": "Login"}],
                     "maxRequestMessageBytes": 1024}]}
"#;
    let limited = client(&server, config).await?;
    let users = Users::new(&limited);
    users.login(login("b".repeat(900))).await?;
    let served = server.served();
    expect_exhausted(
        users.login(login("b".repeat(2000))).await,
        "larger than the limit of 1024 bytes",
    )?;
    ensure!(
        server.served() == served,
        "the server got the oversized call"
    );
    let summary = raw(&limited)
        .upload(tokio_stream::iter([Chunk {
            data: vec![3; 60_000],
        }]))
        .await?
        .into_inner();
    ensure!(summary.bytes == 60_000, "{summary:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_messages_over_the_limit_reset_the_stream_and_methods_can_lower_it() -> Result<()>
{
    let server = TestServer::start("limits").await?;

    // The default, grpc-go's 4 MiB: a 5 MiB echo is refused, and a typed client (which
    // leaves sizes to the channel) is refused by the channel, not by tonic.
    let plain = client(&server, "").await?;
    let echo = |text: String| {
        tokio_stream::iter([ChatMessage {
            seq: 1,
            text,
            instance: String::new(),
        }])
    };
    let mut chat = raw(&plain)
        .chat(echo("x".repeat(5 << 20)))
        .await?
        .into_inner();
    expect_exhausted(
        chat.message().await,
        "larger than the limit of 4194304 bytes",
    )?;
    drop(chat);
    all_closed(&server).await?;
    let users = Users::new(&plain);
    let token = users.login(login("y".repeat(3 << 20))).await?.token;
    ensure!(token.len() == (3 << 20) + "token-".len());

    // A larger client limit, and a method's lower one from the service config.
    let config = r#"MaxResponseMessageBytes: 8388608
ServiceConfig: |
  {"methodConfig": [{"name": [{"service": "user.User", "method": "Chat"}],
                     "maxResponseMessageBytes": 1024}]}
"#;
    let limited = client(&server, config).await?;
    let token = Users::new(&limited)
        .login(login("z".repeat(5 << 20)))
        .await?
        .token;
    ensure!(token.len() == (5 << 20) + "token-".len());
    let mut chat = raw(&limited)
        .chat(echo("x".repeat(2000)))
        .await?
        .into_inner();
    expect_exhausted(chat.message().await, "larger than the limit of 1024 bytes")?;
    drop(chat);
    all_closed(&server).await?;
    // Other methods keep the client's limit.
    let mut events = raw(&limited)
        .watch_events(WatchEventsRequest {
            id: 1,
            count: 3,
            interval_ms: 1,
        })
        .await?
        .into_inner();
    let mut n = 0;
    while events.message().await?.is_some() {
        n += 1;
    }
    ensure!(n == 3);
    all_closed(&server).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_compresses_requests_and_responses_and_the_authority_can_be_set() -> Result<()> {
    let server = TestServer::start("gzip").await?;

    let plain = client(&server, "").await?;
    Users::new(&plain).login(login("p".into())).await?;
    let seen = server.last_login().unwrap_or_default();
    ensure!(seen.encoding.is_none(), "{seen:?}");
    ensure!(seen.authority == server.addr().to_string(), "{seen:?}");

    let gzip = client(&server, "Compression: gzip\nAuthority: user.rpc.internal\n").await?;
    // 2 MiB of one letter: compressed both ways, far below the 1 MiB limit on the wire.
    let limited = client(
        &server,
        "Compression: gzip\nMaxRequestMessageBytes: 1048576\nMaxResponseMessageBytes: 1048576\n",
    )
    .await?;
    let reply = Users::new(&gzip).login(login("g".repeat(2 << 20))).await?;
    ensure!(reply.token.len() == (2 << 20) + "token-".len() && reply.instance == "gzip");
    let seen = server.last_login().unwrap_or_default();
    ensure!(seen.encoding.as_deref() == Some("gzip"), "{seen:?}");
    ensure!(seen.authority == "user.rpc.internal", "{seen:?}");
    Users::new(&limited)
        .login(login("g".repeat(2 << 20)))
        .await?;

    // Bad settings are refused with what is wrong.
    let bad = ClientConfig::from_yaml(&format!(
        "Endpoints: [{}]\nCompression: zstd\n",
        server.addr()
    ));
    ensure!(
        bad.as_ref()
            .is_err_and(|e| format!("{e:#}").contains("gzip")),
        "{bad:?}"
    );
    for (yaml, says) in [
        ("Authority: \"a b\"", "Authority"),
        ("MaxRequestMessageBytes: 0", "MaxRequestMessageBytes"),
    ] {
        let error =
            match ClientConfig::from_yaml(&format!("Endpoints: [{}]\n{yaml}\n", server.addr())) {
                Err(e) => Some(format!("{e:#}")),
                Ok(config) => Client::connect(config)
                    .await
                    .err()
                    .map(|e| format!("{e:#}")),
            };
        ensure!(
            error.as_ref().is_some_and(|e| e.contains(says)),
            "{yaml}: {error:?}"
        );
    }
    Ok(())
}
