//! Every kind of RPC through the client's channel, against real tonic servers on 127.0.0.1:
//! unary, server-streaming, client-streaming and bidi; and a call or stream dropped by its caller
//! is cancelled on the server at once (its HTTP/2 stream reset).

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use switchboard::{Client, ClientConfig, Streaming};
use switchboard_testkit::proto::user::user_client::UserClient;
use switchboard_testkit::proto::user::{ChatMessage, Chunk, WatchEventsRequest};
use switchboard_testkit::{MixedLoad, TestServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

async fn client(server: &TestServer) -> Result<Client> {
    let yaml = format!(
        "Endpoints: [{}]\nStreamingMethods: [/user.User/Upload, /user.User/Chat]\n",
        server.addr()
    );
    Ok(Client::connect(ClientConfig::from_yaml(&yaml)?).await?)
}

/// Waits, at most 10 s, until the server has no streaming call open.
async fn all_closed(server: &TestServer) -> Result<()> {
    server.streams_closed(Duration::from_secs(10)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_stream_of_a_thousand_messages_is_summed_up() -> Result<()> {
    let server = TestServer::start("up").await?;
    let client = client(&server).await?;
    let chunks = (0..1000u32).map(|i| Chunk {
        data: vec![7; (i % 100) as usize],
    });
    let expected_bytes: u64 = (0..1000u64).map(|i| i % 100).sum();
    let summary = UserClient::new(client.channel())
        .upload(tokio_stream::iter(chunks))
        .await?
        .into_inner();
    ensure!(
        (summary.chunks, summary.bytes, summary.instance.as_str()) == (1000, expected_bytes, "up"),
        "{summary:?}"
    );
    all_closed(&server).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bidi_echoes_each_message_in_turn_and_a_dropped_chat_is_cancelled() -> Result<()> {
    let server = TestServer::start("chat").await?;
    let client = client(&server).await?;
    let (tx, rx) = mpsc::channel(4);
    let mut echoes = UserClient::new(client.channel())
        .chat(ReceiverStream::new(rx))
        .await?
        .into_inner();
    // One message, then its echo, 100 times: the stream is live both ways.
    for seq in 0..100u64 {
        tx.send(ChatMessage {
            seq,
            text: format!("m{seq}"),
            instance: String::new(),
        })
        .await?;
        let echo = echoes.message().await?;
        ensure!(
            echo.as_ref().is_some_and(|e| e.seq == seq
                && e.text == format!("m{seq}")
                && e.instance == "chat"),
            "{echo:?}"
        );
    }
    ensure!(server.open_streams() == 1);
    // The caller drops the call half-way: the server sees it cancelled.
    drop(echoes);
    drop(tx);
    all_closed(&server).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_server_and_client_streams_are_cancelled_on_the_server() -> Result<()> {
    let server = TestServer::start("s").await?;
    let client = client(&server).await?;
    let mut users = UserClient::new(client.channel());
    // A server stream of 100 events 100 ms apart, dropped after the first.
    let mut request = tonic::Request::new(WatchEventsRequest {
        id: 1,
        count: 100,
        interval_ms: 100,
    });
    request.extensions_mut().insert(Streaming);
    let mut events = users.watch_events(request).await?.into_inner();
    ensure!(events.message().await?.is_some());
    ensure!(server.open_streams() == 1);
    drop(events);
    all_closed(&server).await?;
    // A client stream that never ends, dropped while the server waits for more.
    let (tx, rx) = mpsc::channel(1);
    tx.send(Chunk { data: vec![1; 10] }).await?;
    let upload = tokio::spawn({
        let mut users = users.clone();
        async move { users.upload(ReceiverStream::new(rx)).await }
    });
    let start = Instant::now();
    while server.open_streams() == 0 {
        ensure!(
            start.elapsed() < Duration::from_secs(10),
            "the upload never started"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    upload.abort();
    drop(tx);
    all_closed(&server).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_under_every_kind_of_call_fails_none() -> Result<()> {
    let mut servers = Vec::new();
    for name in ["r1", "r2", "r3"] {
        servers.push(TestServer::start(name).await?);
    }
    let endpoints: Vec<String> = servers.iter().map(|s| s.addr().to_string()).collect();
    let yaml = format!(
        "Endpoints: [{}]\nTimeout: 10s\nStreamTimeout: 10s\n\
         StreamingMethods: [/user.User/Upload, /user.User/Chat, /user.User/WatchEvents]\n\
         Backoff: {{Initial: 50ms, Max: 200ms}}\n",
        endpoints.join(", ")
    );
    let client = Client::connect(ClientConfig::from_yaml(&yaml)?).await?;
    let users = UserClient::new(client.channel());
    let load = MixedLoad::start(&users, 2);

    // Each server in turn stops gracefully (GOAWAY, in-flight calls finish) and starts again
    // on its port; the next one only once the client is READY on it again.
    for i in 0..servers.len() {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let server = servers.remove(i);
        let (name, addr) = (server.name().to_owned(), server.addr());
        server.shutdown().await;
        servers.insert(i, TestServer::start_on(&name, addr.port()).await?);
        let start = Instant::now();
        loop {
            let snapshot = client.balancer().snapshot();
            let ready = snapshot.subchannels.iter().any(|s| {
                s.addr == addr.to_string()
                    && s.state == switchboard::balancer::ConnectivityState::Ready
            });
            if ready {
                break;
            }
            ensure!(
                start.elapsed() < Duration::from_secs(20),
                "{name} not READY again: {snapshot:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    load.stop_expecting_no_failure().await
}
