//! `Serving::wait_for_signal` ends the server on SIGTERM. A test binary of its own: the signal
//! goes to the whole test process, which no other test may share.

use std::time::Duration;

use anyhow::Result;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use switchboard::Server;
use switchboard_testkit::user_service;
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::timeout;

/// A bound for every step that waits for an event.
const LIMIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down() -> Result<()> {
    // Installed first, so that SIGTERM never takes the default action (ending the tests).
    let _keep = signal(SignalKind::terminate())?;
    let running = Server::builder()
        .listen("127.0.0.1:0".parse()?)
        .grace(Duration::ZERO)
        .add_service(user_service("s"))
        .serve()
        .await?;
    let addr = running.local_addr();
    let mut waiting = tokio::spawn(running.wait_for_signal());
    // Repeated: a signal sent before `wait_for_signal` listens is not seen by it.
    let stopped = timeout(LIMIT, async {
        loop {
            kill(Pid::this(), Signal::SIGTERM)?;
            tokio::select! {
                done = &mut waiting => return done.map_err(anyhow::Error::from),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    })
    .await?;
    stopped?;
    tokio::net::TcpStream::connect(addr)
        .await
        .expect_err("connected to a stopped server");
    Ok(())
}
