//! Deadlines to the last byte, against real tonic servers on 127.0.0.1 and a server that sends
//! its response headers and then nothing: a deadline ends the whole call, response body and
//! trailers included, and resets its HTTP/2 stream (the server sees the cancellation); the
//! default `Timeout` is for unary calls, so streams outlive it; a call can opt out of it.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use switchboard::{CallOptions, Client, ClientConfig, Streaming};
use switchboard_testkit::proto::user::user_client::UserClient;
use switchboard_testkit::proto::user::{GetUserInfoRequest, WatchEventsRequest};
use switchboard_testkit::{StallServer, TestServer};
use tonic::Code;

async fn client(addr: impl std::fmt::Display, settings: &str) -> Result<Client> {
    let yaml = format!("Endpoints: [{addr}]\n{settings}");
    Ok(Client::connect(ClientConfig::from_yaml(&yaml)?).await?)
}

/// Waits, at most 10 s, until `check` holds.
async fn eventually(what: &str, check: impl Fn() -> bool) -> Result<()> {
    let start = Instant::now();
    while !check() {
        if start.elapsed() > Duration::from_secs(10) {
            bail!("{what}: not within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Reads a `WatchEvents` stream of 5 events 1 s apart to its end: the events received, and the
/// status it ended with (OK if it ended normally), and when.
async fn watch(
    client: &Client,
    streaming: bool,
    timeout: Option<Duration>,
) -> Result<(usize, Code, Duration)> {
    let mut request = tonic::Request::new(WatchEventsRequest {
        id: 1,
        count: 5,
        interval_ms: 1000,
    });
    if streaming {
        request.extensions_mut().insert(Streaming);
    }
    if let Some(t) = timeout {
        request.set_timeout(t);
    }
    let started = Instant::now();
    let mut users = UserClient::new(client.channel());
    let mut stream = match users.watch_events(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return Ok((0, status.code(), started.elapsed())),
    };
    let mut events = 0;
    let code = loop {
        match stream.message().await {
            Ok(Some(_)) => events += 1,
            Ok(None) => break Code::Ok,
            Err(status) => break status.code(),
        }
    };
    Ok((events, code, started.elapsed()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_outlive_the_default_timeout_which_is_for_unary_calls() -> Result<()> {
    let server = TestServer::start("s").await?;
    let marked = client(server.addr(), "Timeout: 2s\n").await?;
    let listed = client(
        server.addr(),
        "Timeout: 2s\nStreamingMethods: [/user.User/WatchEvents]\n",
    )
    .await?;
    // A 4 s stream, marked streaming by its request or by the config: it completes.
    let (by_request, by_config, unmarked) = tokio::join!(
        watch(&marked, true, None),
        watch(&listed, false, None),
        watch(&marked, false, None),
    );
    for (how, (events, code, took)) in [("request", by_request?), ("config", by_config?)] {
        ensure!(
            (events, code) == (5, Code::Ok),
            "marked by {how}: {events} events, {code:?} after {took:?}"
        );
        ensure!(took >= Duration::from_secs(4), "{took:?}");
    }
    // A stream the channel cannot know of gets the unary default, as a unary call would.
    let (events, code, took) = unmarked?;
    ensure!(code == Code::DeadlineExceeded, "{events} events, {code:?}");
    ensure!(
        took >= Duration::from_secs(2) && took < Duration::from_millis(2500),
        "{took:?}"
    );
    eventually("the server's streams ended", || server.open_streams() == 0).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadline_ends_a_stream_mid_way_and_the_server_sees_it_cancelled() -> Result<()> {
    let server = TestServer::start("s").await?;
    let client = client(server.addr(), "StreamTimeout: 1500ms\n").await?;
    // The stream's own deadline, 1 s: two events (at 0 s and 1 s, give or take), then
    // DEADLINE_EXCEEDED at 1 s, from the client (tonic's server does not enforce it).
    let (events, code, took) = watch(&client, true, Some(Duration::from_secs(1))).await?;
    ensure!(code == Code::DeadlineExceeded, "{events} events, {code:?}");
    ensure!((1..=2).contains(&events), "{events} events");
    ensure!(
        took >= Duration::from_secs(1) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    eventually("the server's stream cancelled", || {
        server.open_streams() == 0
    })
    .await?;
    // Without one, `StreamTimeout` applies.
    let (_, code, took) = watch(&client, true, None).await?;
    ensure!(code == Code::DeadlineExceeded, "{code:?}");
    ensure!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(2),
        "{took:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_call_whose_server_stalls_after_its_headers_ends_at_its_deadline() -> Result<()> {
    let stall = StallServer::start().await?;
    let client = client(stall.addr(), "").await?;
    let deadline = Duration::from_millis(500);
    let mut request = tonic::Request::new(GetUserInfoRequest { id: 1 });
    request.set_timeout(deadline);
    let started = Instant::now();
    let status = UserClient::new(client.channel())
        .get_user_info(request)
        .await
        .err()
        .context("a stalled server cannot answer")?;
    let took = started.elapsed();
    println!("headers, then nothing: {:?} after {took:?}", status.code());
    ensure!(status.code() == Code::DeadlineExceeded, "{status:?}");
    ensure!(
        took >= deadline && took < deadline + Duration::from_millis(100),
        "{took:?}"
    );
    ensure!(
        stall.requests() == 1,
        "not retried: {} requests",
        stall.requests()
    );
    eventually("the server saw the stream reset", || stall.cancelled() == 1).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_can_opt_out_of_the_default_deadline() -> Result<()> {
    let server = TestServer::start("slow").await?;
    server.set_delay(Duration::from_millis(1500));
    let client = client(server.addr(), "Timeout: 1s\n").await?;
    let mut users = UserClient::new(client.channel());
    let status = users
        .get_user_info(GetUserInfoRequest { id: 1 })
        .await
        .err()
        .context("1.5 s is past the 1 s default")?;
    ensure!(status.code() == Code::DeadlineExceeded, "{status:?}");
    let request = CallOptions::new()
        .no_default_timeout()
        .request(GetUserInfoRequest { id: 1 });
    let reply = users.get_user_info(request).await?.into_inner();
    ensure!(reply.instance == "slow");
    Ok(())
}
