//! Calls of every kind in loops, checking each answer: the load a rolling restart runs under.
//!
//! [`MixedLoad::start`] runs, over any channel a tonic client takes, `loops` callers of each kind
//! of `user.User` call: unary `GetUserInfo`, a server stream of 5 `WatchEvents` 20 ms apart, a
//! client stream of 50 `Upload` chunks 1 ms apart, one 1 MiB `Upload` chunk, and a bidi `Chat` of
//! 10 echoes in turn. [`MixedLoad::stop`] stops them and tells, per kind, the calls served and
//! how the others failed. tonic servers (`TestServer`) and the grpc-go peer answer alike.

use std::time::Duration;

use anyhow::{Result, ensure};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tonic::body::Body;
use tonic::client::GrpcService;
use tonic::codegen::{Body as HttpBody, Bytes, StdError};

use crate::proto::user::user_client::UserClient;
use crate::proto::user::{ChatMessage, Chunk, GetUserInfoRequest, WatchEventsRequest};

/// The most calls one caller makes, whatever the test's length.
const MOST_CALLS: usize = 10_000;

/// A channel that tonic's generated clients run over: what [`MixedLoad`] calls through.
pub trait UserChannel:
    GrpcService<
        Body,
        Error: Into<StdError>,
        ResponseBody: HttpBody<Data = Bytes, Error: Into<StdError> + Send> + Send + 'static,
    >
{
}

impl<T> UserChannel for T where
    T: GrpcService<
            Body,
            Error: Into<StdError>,
            ResponseBody: HttpBody<Data = Bytes, Error: Into<StdError> + Send> + Send + 'static,
        >
{
}

/// What the callers of one kind of call got.
#[derive(Debug, Default)]
pub struct KindTally {
    /// The kind: `unary`, `server stream`, `client stream`, `1 MiB request` or `bidi`.
    pub kind: &'static str,
    /// Calls answered in full and right.
    pub served: usize,
    /// How each other call failed.
    pub failed: Vec<String>,
}

impl std::fmt::Display for KindTally {
    /// `kind: N served, M failed [the first three failures]`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:>14}: {} served, {} failed {:?}",
            self.kind,
            self.served,
            self.failed.len(),
            self.failed.iter().take(3).collect::<Vec<_>>()
        )
    }
}

/// Callers of every kind of `user.User` call, in loops, checking each answer: the load a
/// rolling restart runs under. [`MixedLoad::start`] runs, over any channel a tonic client
/// takes, callers of unary `GetUserInfo`, a server stream of 5 `WatchEvents` 20 ms apart, a
/// client stream of 50 `Upload` chunks 1 ms apart, one 1 MiB `Upload` chunk, and a bidi `Chat`
/// of 10 echoes in turn. tonic servers (`TestServer`) and the grpc-go peer answer alike.
#[derive(Debug)]
pub struct MixedLoad {
    stop: watch::Sender<bool>,
    callers: Vec<JoinHandle<KindTally>>,
}

impl MixedLoad {
    /// Starts `loops` callers of each kind over clones of `users`.
    pub fn start<T>(users: &UserClient<T>, loops: usize) -> Self
    where
        T: UserChannel + Clone + Send + Sync + 'static,
        T::Future: Send,
    {
        let (stop, stopped) = watch::channel(false);
        let mut callers = Vec::new();
        for _ in 0..loops {
            let u = users.clone();
            callers.push(caller("unary", &stopped, move || unary(u.clone())));
            let u = users.clone();
            callers.push(caller("server stream", &stopped, move || {
                server_stream(u.clone())
            }));
            let u = users.clone();
            callers.push(caller("client stream", &stopped, move || {
                client_stream(u.clone())
            }));
            let u = users.clone();
            callers.push(caller("1 MiB request", &stopped, move || {
                large_request(u.clone())
            }));
            let u = users.clone();
            callers.push(caller("bidi", &stopped, move || bidi(u.clone())));
        }
        Self { stop, callers }
    }

    /// Stops the callers and prints what each kind got; fails unless every kind had calls
    /// served and none failed.
    pub async fn stop_expecting_no_failure(self) -> Result<()> {
        let mut failures = 0;
        for tally in self.stop().await? {
            println!("{tally}");
            ensure!(tally.served > 0, "no {} call was served", tally.kind);
            failures += tally.failed.len();
        }
        ensure!(failures == 0, "{failures} calls failed");
        Ok(())
    }

    /// Stops the callers once their calls in progress end; per kind, in the order started.
    pub async fn stop(self) -> Result<Vec<KindTally>> {
        self.stop.send_replace(true);
        let mut tallies: Vec<KindTally> = Vec::new();
        for task in self.callers {
            let tally = task.await?;
            match tallies.iter_mut().find(|t| t.kind == tally.kind) {
                Some(t) => {
                    t.served += tally.served;
                    t.failed.extend(tally.failed);
                }
                None => tallies.push(tally),
            }
        }
        Ok(tallies)
    }
}

/// Calls of `kind` in a loop until `stop` (at most [`MOST_CALLS`]).
fn caller<F, Fut>(
    kind: &'static str,
    stop: &watch::Receiver<bool>,
    mut call: F,
) -> JoinHandle<KindTally>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<()>> + Send,
{
    let stop = stop.clone();
    tokio::spawn(async move {
        let mut tally = KindTally {
            kind,
            ..KindTally::default()
        };
        for _ in 0..MOST_CALLS {
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

async fn unary<T: UserChannel>(mut users: UserClient<T>) -> Result<()> {
    users.get_user_info(GetUserInfoRequest { id: 1 }).await?;
    Ok(())
}

async fn server_stream<T: UserChannel>(mut users: UserClient<T>) -> Result<()> {
    let request = WatchEventsRequest {
        id: 1,
        count: 5,
        interval_ms: 20,
    };
    let mut events = users.watch_events(request).await?.into_inner();
    let mut n = 0;
    while events.message().await?.is_some() {
        n += 1;
    }
    ensure!(n == 5, "{n} events of 5");
    Ok(())
}

async fn client_stream<T: UserChannel>(mut users: UserClient<T>) -> Result<()> {
    let (tx, rx) = mpsc::channel(2);
    tokio::spawn(async move {
        for _ in 0..50 {
            if tx.send(Chunk { data: vec![1; 100] }).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let summary = users.upload(ReceiverStream::new(rx)).await?.into_inner();
    ensure!(summary.chunks == 50 && summary.bytes == 5000, "{summary:?}");
    Ok(())
}

async fn large_request<T: UserChannel>(mut users: UserClient<T>) -> Result<()> {
    let chunk = Chunk {
        data: vec![2; 1 << 20],
    };
    let summary = users
        .upload(tokio_stream::iter([chunk]))
        .await?
        .into_inner();
    ensure!(summary.bytes == 1 << 20, "{summary:?}");
    Ok(())
}

async fn bidi<T: UserChannel>(mut users: UserClient<T>) -> Result<()> {
    let message = |seq: u64| ChatMessage {
        seq,
        text: format!("m{seq}"),
        instance: String::new(),
    };
    // The first message goes before the response headers are awaited: a grpc-go server sends
    // its headers with its first message, not before.
    let (tx, rx) = mpsc::channel(4);
    tx.send(message(0)).await?;
    let mut echoes = users.chat(ReceiverStream::new(rx)).await?.into_inner();
    for seq in 0..10u64 {
        if seq > 0 {
            tx.send(message(seq)).await?;
        }
        let echo = echoes.message().await?;
        ensure!(echo.is_some_and(|e| e.seq == seq), "echo {seq}");
    }
    Ok(())
}
