//! Transparent retries (gRFC A6): an RPC that reached a server which did not process it — the
//! server refused its stream, or went away below its stream id — is sent again once without
//! counting as an attempt, even with retries off. The servers here speak HTTP/2 through `h2`
//! (and raw frames for the GOAWAY) on 127.0.0.1, so that they can refuse streams on purpose.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Result;
use bytes::Bytes;
use h2::Reason;
use switchboard::{Client, ClientConfig};
use switchboard_testkit::proto::user::GetUserInfoRequest;
use switchboard_testkit::proto::user::user_client::UserClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tonic::Code;

/// An HTTP/2 server that refuses its first `refuse` streams with `REFUSED_STREAM` and answers
/// the others with an empty gRPC message; with `goaway_first`, its first connection sends a
/// GOAWAY with last stream id 0 as soon as a request's HEADERS arrive.
#[derive(Default)]
struct Scripted {
    refuse: AtomicUsize,
    goaway_first: bool,
    connections: AtomicUsize,
    /// Streams sent a GOAWAY below their id.
    went_away: AtomicUsize,
    /// The `grpc-previous-rpc-attempts` of every stream that arrived, refused ones included.
    streams: Mutex<Vec<Option<String>>>,
    /// The request bytes of every stream answered.
    received: Mutex<Vec<usize>>,
}

impl Scripted {
    fn refusing(refuse: usize) -> Arc<Self> {
        Arc::new(Self {
            refuse: AtomicUsize::new(refuse),
            ..Self::default()
        })
    }

    fn going_away() -> Arc<Self> {
        Arc::new(Self {
            goaway_first: true,
            ..Self::default()
        })
    }

    fn streams(&self) -> Vec<Option<String>> {
        self.streams.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn received(&self) -> Vec<usize> {
        self.received.lock().map(|s| s.clone()).unwrap_or_default()
    }

    async fn serve(self: &Arc<Self>) -> Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let this = self.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let n = this.connections.fetch_add(1, Ordering::SeqCst);
                let this = this.clone();
                tokio::spawn(async move {
                    if this.goaway_first && n == 0 {
                        this.go_away(socket).await;
                    } else {
                        this.clone().answer(socket).await;
                    }
                });
            }
        });
        Ok(addr)
    }

    async fn answer(self: Arc<Self>, socket: TcpStream) {
        let Ok(mut connection) = h2::server::handshake(socket).await else {
            return;
        };
        while let Some(Ok((request, mut respond))) = connection.accept().await {
            let previous = request
                .headers()
                .get("grpc-previous-rpc-attempts")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if let Ok(mut streams) = self.streams.lock() {
                streams.push(previous);
            }
            let refused = self
                .refuse
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if refused {
                respond.send_reset(Reason::REFUSED_STREAM);
                continue;
            }
            // The whole request, then the answer, while the connection reads on.
            let this = self.clone();
            tokio::spawn(async move {
                let mut body = request.into_body();
                let mut received = 0;
                while let Some(Ok(data)) = body.data().await {
                    received += data.len();
                    let _ = body.flow_control().release_capacity(data.len());
                }
                if let Ok(mut all) = this.received.lock() {
                    all.push(received);
                }
                let response = http::Response::builder()
                    .header("content-type", "application/grpc")
                    .body(())
                    .unwrap_or_default();
                let Ok(mut send) = respond.send_response(response, false) else {
                    return;
                };
                // One empty message: a default `UserInfo`.
                let _ = send.send_data(Bytes::from_static(&[0; 5]), false);
                let mut trailers = http::HeaderMap::new();
                trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                let _ = send.send_trailers(trailers);
            });
        }
    }

    /// Speaks just enough HTTP/2 to be READY, then sends GOAWAY (last stream id 0, NO_ERROR)
    /// when the first HEADERS frame arrives, and waits for the client to close.
    async fn go_away(&self, mut socket: TcpStream) {
        const SETTINGS: [u8; 9] = [0, 0, 0, 4, 0, 0, 0, 0, 0];
        const GOAWAY: [u8; 17] = [0, 0, 8, 7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        if socket.write_all(&SETTINGS).await.is_err() {
            return;
        }
        let mut preface = [0u8; 24];
        if socket.read_exact(&mut preface).await.is_err() {
            return;
        }
        loop {
            let mut header = [0u8; 9];
            if socket.read_exact(&mut header).await.is_err() {
                return;
            }
            let len =
                usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
            let mut payload = vec![0u8; len];
            if socket.read_exact(&mut payload).await.is_err() {
                return;
            }
            // SETTINGS without ACK: acknowledge it.
            if header[3] == 4 && header[4] & 1 == 0 {
                let ack = [0, 0, 0, 4, 1, 0, 0, 0, 0];
                if socket.write_all(&ack).await.is_err() {
                    return;
                }
            }
            if header[3] == 1 {
                self.went_away.fetch_add(1, Ordering::SeqCst);
                if socket.write_all(&GOAWAY).await.is_err() {
                    return;
                }
                break;
            }
        }
        // The client closes the connection once it has no stream left on it.
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), socket.read_to_end(&mut rest)).await;
    }
}

async fn client(addr: SocketAddr, settings: &str) -> Result<UserClient<switchboard::Channel>> {
    let yaml = format!("Endpoints: [{addr}]\nTimeout: 10s\n{settings}");
    let client = Client::connect(ClientConfig::from_yaml(&yaml)?).await?;
    Ok(UserClient::new(client.channel()))
}

#[tokio::test]
async fn a_refused_stream_is_sent_again_even_with_retries_off() -> Result<()> {
    let server = Scripted::refusing(1);
    let mut users = client(server.serve().await?, "Retry: {MaxAttempts: 1}").await?;

    users.get_user_info(GetUserInfoRequest { id: 7 }).await?;
    // The second send is no retry attempt.
    assert_eq!(server.streams(), [None, None]);
    Ok(())
}

#[tokio::test]
async fn only_one_transparent_retry_then_the_refusal_counts_as_an_attempt() -> Result<()> {
    let server = Scripted::refusing(2);
    let mut users = client(server.serve().await?, "Retry: {MaxAttempts: 1}").await?;

    let status = users
        .get_user_info(GetUserInfoRequest { id: 7 })
        .await
        .expect_err("refused twice, with retries off");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(server.streams().len(), 2);

    // With retries on, the second refusal is the first attempt, retried as the policy says.
    let server = Scripted::refusing(2);
    let mut users = client(
        server.serve().await?,
        "Retry: {MaxAttempts: 2, InitialBackoff: 10ms}",
    )
    .await?;
    users.get_user_info(GetUserInfoRequest { id: 7 }).await?;
    assert_eq!(server.streams(), [None, None, Some("1".into())]);
    Ok(())
}

#[tokio::test]
async fn a_stream_above_a_goaway_is_sent_again_on_a_new_connection() -> Result<()> {
    let server = Scripted::going_away();
    let mut users = client(server.serve().await?, "Retry: {MaxAttempts: 1}").await?;

    users.get_user_info(GetUserInfoRequest { id: 7 }).await?;
    assert_eq!(server.went_away.load(Ordering::SeqCst), 1);
    assert_eq!(server.connections.load(Ordering::SeqCst), 2);
    assert_eq!(
        server.streams(),
        [None],
        "served once, on the second connection"
    );
    Ok(())
}

#[tokio::test]
async fn refused_client_streams_and_large_requests_are_sent_again_whole() -> Result<()> {
    use switchboard_testkit::proto::user::Chunk;
    // A client stream whose messages come one at a time, refused once: its messages are
    // replayed on the second stream, then the rest follows.
    let server = Scripted::refusing(1);
    let channel = Client::connect(ClientConfig::from_yaml(&format!(
        "Endpoints: [{}]\nTimeout: 10s\nRetry: {{MaxAttempts: 1}}\n",
        server.serve().await?
    ))?)
    .await?
    .channel();
    let mut users = UserClient::new(channel);
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tokio::spawn(async move {
        for _ in 0..100 {
            if tx.send(Chunk { data: vec![1; 95] }).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    // `UploadSummary` decodes from the server's empty message.
    users
        .upload(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?;
    // 100 messages of 5 + 2 + 95 bytes.
    assert_eq!(server.received(), [100 * 102]);
    assert_eq!(server.streams(), [None, None]);

    // One 1 MiB message, above the retry buffer: whole at once, so sent again too.
    let server = Scripted::refusing(1);
    let mut users = client(server.serve().await?, "Retry: {MaxAttempts: 1}").await?;
    let chunk = Chunk {
        data: vec![3; 1 << 20],
    };
    users.upload(tokio_stream::iter([chunk])).await?;
    assert_eq!(server.received().len(), 1);
    assert!(server.received()[0] > 1 << 20, "{:?}", server.received());
    Ok(())
}
