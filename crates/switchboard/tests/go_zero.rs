//! go-zero's client fields doing what they do in go-zero, against real servers on 127.0.0.1:
//! `App` and `Token` reach a server that authenticates as go-zero's `Auth: true` servers do,
//! `Middlewares: {Timeout: false}` takes the default deadline away, and failed and slow calls
//! are logged as go-zero's duration interceptor logs them unless `Duration: false`.

mod flaky;

use std::sync::{Arc, Mutex};
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

/// Log lines written while `run` runs on this thread (a current-thread runtime runs every task
/// of the test here).
async fn logged<F: std::future::Future<Output = Result<()>>>(run: F) -> Result<String> {
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("not poisoned").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let lines = Lines::default();
    let writer = lines.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let guard = tracing::subscriber::set_default(subscriber);
    run.await?;
    drop(guard);
    let text = String::from_utf8_lossy(&lines.0.lock().expect("not poisoned")).into_owned();
    Ok(text)
}

#[tokio::test]
async fn failed_and_slow_calls_are_logged_as_go_zeros_duration_interceptor_logs_them() -> Result<()>
{
    let seen = Arc::new(flaky::Seen::default());
    let mut server = flaky::Flaky::new(&seen, 1, Code::NotFound);
    server.delay = Duration::from_millis(600);
    let addr = server.serve().await?;
    let calls = |settings: &'static str| async move {
        let client = client(&format!("Endpoints: [{addr}]\nTimeout: 10s\n{settings}")).await?;
        let mut users = UserClient::new(client.channel());
        // Whatever the answers, the log says what they were.
        let _ = users.get_user_info(GetUserInfoRequest { id: 1 }).await;
        let _ = users.get_user_info(GetUserInfoRequest { id: 2 }).await;
        Ok(())
    };
    let text = logged(calls("")).await?;
    let fail = text
        .lines()
        .find(|l| l.contains("[RPC] fail"))
        .unwrap_or_default();
    ensure!(
        fail.contains("ERROR")
            && fail.contains("/user.User/GetUserInfo")
            && fail.contains("NotFound"),
        "{text}"
    );
    let slow = text
        .lines()
        .find(|l| l.contains("[RPC] ok - slowcall"))
        .unwrap_or_default();
    ensure!(
        slow.contains("WARN")
            && slow.contains("/user.User/GetUserInfo")
            && slow.contains(&addr.to_string()),
        "{text}"
    );
    let quiet = logged(calls("Middlewares: {Duration: false}")).await?;
    ensure!(!quiet.contains("[RPC]"), "{quiet}");

    // A call whose first attempt failed and whose retry succeeded did not fail: no log.
    let seen = Arc::new(flaky::Seen::default());
    let addr = flaky::Flaky::new(&seen, 1, Code::Unavailable)
        .serve()
        .await?;
    let retried = logged(async move {
        let client = client(&format!("Endpoints: [{addr}]\n")).await?;
        UserClient::new(client.channel())
            .get_user_info(GetUserInfoRequest { id: 1 })
            .await?;
        Ok(())
    })
    .await?;
    ensure!(seen.calls() == 2, "{} calls", seen.calls());
    ensure!(!retried.contains("[RPC]"), "{retried}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_breaker_sheds_a_failing_methods_calls_and_shows_in_the_snapshot() -> Result<()> {
    // A server whose every GetUserInfo fails with INTERNAL, as an overloaded one might.
    let seen = Arc::new(flaky::Seen::default());
    let addr = flaky::Flaky::new(&seen, u64::MAX, Code::Internal)
        .serve()
        .await?;
    let run = |client: Client| async move {
        let mut users = UserClient::new(client.channel());
        let mut broken = 0;
        for id in 0..200 {
            let failed = users
                .get_user_info(GetUserInfoRequest { id })
                .await
                .expect_err("every call fails");
            if failed.code() == Code::Unavailable
                && failed
                    .message()
                    .starts_with("circuit breaker is open for /user.User/GetUserInfo: ")
                && failed
                    .message()
                    .contains(" failed, the last with Internal: flaky: failing call ")
            {
                broken += 1;
            } else {
                ensure!(failed.code() == Code::Internal, "{failed:?}");
            }
        }
        Ok((broken, client.balancer().snapshot()))
    };

    // On by default, as in go-zero: most calls never reach the server.
    let (broken, snapshot) = run(client(&format!("Endpoints: [{addr}]\n")).await?).await?;
    let sent = seen.calls();
    ensure!(sent + broken == 200, "{sent} sent, {broken} shed");
    ensure!(broken >= 150, "only {broken} of 200 shed");
    let breaker = snapshot.breakers.first().cloned().unwrap_or_else(|| {
        panic!("no breaker in the snapshot: {snapshot:?}");
    });
    ensure!(
        breaker.method == "/user.User/GetUserInfo"
            && breaker.requests == 200
            && breaker.failures == sent
            && breaker.drops == broken
            && breaker.accepts == 0
            && breaker.drop_permille > 900,
        "{breaker:?}"
    );
    let json = serde_json::to_value(&snapshot)?;
    ensure!(
        json["breakers"][0]["drops"] == broken,
        "not in the JSON snapshot: {json}"
    );

    // Middlewares: {Breaker: false} sends every call.
    let seen_before = seen.calls();
    let (broken, snapshot) = run(client(&format!(
        "Endpoints: [{addr}]\nMiddlewares: {{Breaker: false}}\n"
    ))
    .await?)
    .await?;
    ensure!(
        broken == 0 && seen.calls() - seen_before == 200,
        "{broken} shed"
    );
    ensure!(snapshot.breakers.is_empty(), "{snapshot:?}");
    Ok(())
}
