//! Every kind of RPC through the client's channel, against real tonic servers on 127.0.0.1:
//! unary, server-streaming, client-streaming and bidi; and a call or stream dropped by its caller
//! is cancelled on the server at once (its HTTP/2 stream reset).

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use switchboard::{Client, ClientConfig, Streaming};
use switchboard_testkit::TestServer;
use switchboard_testkit::proto::user::user_client::UserClient;
use switchboard_testkit::proto::user::{ChatMessage, Chunk, WatchEventsRequest};
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

/// What one kind of call got during a rolling restart.
#[derive(Debug, Default)]
struct Tally {
    served: usize,
    failed: Vec<String>,
}

/// Calls of one kind in a loop until `stop` (at most 10 000), checking each answer.
fn call_loop<F, Fut>(
    stop: &tokio::sync::watch::Receiver<bool>,
    mut call: F,
) -> tokio::task::JoinHandle<Tally>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    let stop = stop.clone();
    tokio::spawn(async move {
        let mut tally = Tally::default();
        for _ in 0..10_000 {
            if *stop.borrow() {
                break;
            }
            match call().await {
                Ok(()) => tally.served += 1,
                Err(e) => tally.failed.push(format!("{e:#}")),
            }
        }
        tally
    })
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
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let u = users.clone();
        kinds.push((
            "unary",
            call_loop(&stop, move || {
                let mut u = u.clone();
                async move {
                    let request = switchboard_testkit::proto::user::GetUserInfoRequest { id: 1 };
                    u.get_user_info(request).await?;
                    Ok(())
                }
            }),
        ));
        let u = users.clone();
        kinds.push((
            "server stream",
            call_loop(&stop, move || {
                let mut u = u.clone();
                async move {
                    let request = WatchEventsRequest {
                        id: 1,
                        count: 5,
                        interval_ms: 20,
                    };
                    let mut events = u.watch_events(request).await?.into_inner();
                    let mut n = 0;
                    while events.message().await?.is_some() {
                        n += 1;
                    }
                    ensure!(n == 5, "{n} events of 5");
                    Ok(())
                }
            }),
        ));
        let u = users.clone();
        kinds.push((
            "client stream",
            call_loop(&stop, move || {
                let mut u = u.clone();
                async move {
                    let (tx, rx) = mpsc::channel(2);
                    tokio::spawn(async move {
                        for _ in 0..50 {
                            if tx.send(Chunk { data: vec![1; 100] }).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    });
                    let summary = u.upload(ReceiverStream::new(rx)).await?.into_inner();
                    ensure!(summary.chunks == 50, "{summary:?}");
                    Ok(())
                }
            }),
        ));
        let u = users.clone();
        kinds.push((
            "1 MiB request",
            call_loop(&stop, move || {
                let mut u = u.clone();
                async move {
                    let chunk = Chunk {
                        data: vec![2; 1 << 20],
                    };
                    let summary = u.upload(tokio_stream::iter([chunk])).await?.into_inner();
                    ensure!(summary.bytes == 1 << 20, "{summary:?}");
                    Ok(())
                }
            }),
        ));
        let u = users.clone();
        kinds.push((
            "bidi",
            call_loop(&stop, move || {
                let mut u = u.clone();
                async move {
                    let (tx, rx) = mpsc::channel(4);
                    let mut echoes = u.chat(ReceiverStream::new(rx)).await?.into_inner();
                    for seq in 0..10u64 {
                        let text = format!("m{seq}");
                        let instance = String::new();
                        tx.send(ChatMessage {
                            seq,
                            text,
                            instance,
                        })
                        .await?;
                        let echo = echoes.message().await?;
                        ensure!(echo.is_some_and(|e| e.seq == seq), "echo {seq}");
                    }
                    Ok(())
                }
            }),
        ));
    }

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
    stop_tx.send_replace(true);
    let mut failures = 0;
    for (kind, task) in kinds {
        let tally = task.await?;
        println!(
            "{kind:>14}: {} served, {} failed {:?}",
            tally.served,
            tally.failed.len(),
            tally.failed.iter().take(3).collect::<Vec<_>>()
        );
        ensure!(tally.served > 0, "no {kind} call was served");
        failures += tally.failed.len();
    }
    ensure!(failures == 0, "{failures} calls failed");
    Ok(())
}
