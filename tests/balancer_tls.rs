//! Sub-channels over TLS: a custom CA, a client certificate for servers that require one,
//! ALPN h2.

use std::time::Duration;

use anyhow::Result;
use switchboard_balancer::{Balancer, ConnectBackoff, ConnectivityState, TlsConfig};
use switchboard_resolver::Update;
use switchboard_testkit::TlsFiles;
use switchboard_tests::balancing::{
    balancer as start_balancer, instance, send, wait_ready, wait_snapshot,
};
use switchboard_tests::init_tracing;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// A `grpc.health.v1` server on 127.0.0.1 that requires TLS with a client certificate.
async fn mtls_server(files: &TlsFiles) -> Result<(std::net::SocketAddr, oneshot::Sender<()>)> {
    let identity = Identity::from_pem(
        std::fs::read(&files.server_cert)?,
        std::fs::read(&files.server_key)?,
    );
    let tls = ServerTlsConfig::new()
        .identity(identity)
        .client_ca_root(Certificate::from_pem(std::fs::read(&files.ca)?));
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let server = Server::builder().tls_config(tls)?.add_service(health);
    tokio::spawn(server.serve_with_incoming_shutdown(
        tokio_stream::wrappers::TcpListenerStream::new(listener),
        async {
            let _ = stopped.await;
        },
    ));
    Ok((addr, stop))
}

async fn check(balancer: &Balancer) -> Result<(), tonic::Status> {
    let mut client = HealthClient::new(balancer.clone());
    let mut request = tonic::Request::new(HealthCheckRequest::default());
    request.set_timeout(Duration::from_secs(10));
    client.check(request).await.map(drop)
}

#[tokio::test]
async fn mutual_tls_with_a_custom_ca() -> Result<()> {
    init_tracing();
    let dir = switchboard_testkit::temp_dir("tls")?;
    let files = TlsFiles::generate(dir.path())?;
    let (addr, _stop) = mtls_server(&files).await?;
    let ca = std::fs::read(&files.ca)?;

    let tls = TlsConfig::new().ca_pem(&ca)?.identity_pem(
        &std::fs::read(&files.client_cert)?,
        &std::fs::read(&files.client_key)?,
    )?;
    let (publisher, balancer) = start_balancer(Balancer::builder().tls(tls))?;
    send(&publisher, Update::Reset(vec![instance("tls/1", addr)])).await?;
    wait_ready(&balancer, 1).await?;
    for _ in 0..5 {
        check(&balancer).await?;
    }
    assert_eq!(balancer.snapshot().subchannels[0].calls_succeeded, 5);

    // Without a client certificate the server refuses the handshake: never READY, and calls
    // fail with UNAVAILABLE naming the cause.
    let backoff = ConnectBackoff {
        initial: Duration::from_millis(100),
        ..ConnectBackoff::default()
    };
    let no_identity = TlsConfig::new().ca_pem(&ca)?;
    let (publisher, refused) =
        start_balancer(Balancer::builder().tls(no_identity).backoff(backoff))?;
    send(&publisher, Update::Reset(vec![instance("tls/1", addr)])).await?;
    let snapshot = wait_snapshot(&refused, "the handshake fails", |s| {
        s.state == ConnectivityState::TransientFailure
    })
    .await?;
    assert_eq!(snapshot.ready(), 0);
    let status = check(&refused).await.expect_err("no client certificate");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    // A CA that did not sign the server's certificate: the client refuses it.
    let wrong_ca = TlsConfig::new().ca_pem(&std::fs::read(&files.client_cert)?)?;
    let (publisher, distrusted) =
        start_balancer(Balancer::builder().tls(wrong_ca).backoff(backoff))?;
    send(&publisher, Update::Reset(vec![instance("tls/1", addr)])).await?;
    let snapshot = wait_snapshot(&distrusted, "the certificate is refused", |s| {
        s.subchannels.iter().any(|c| c.last_error.is_some())
    })
    .await?;
    let error = snapshot.subchannels[0]
        .last_error
        .clone()
        .unwrap_or_default();
    assert!(error.contains("TLS handshake"), "{error}");
    Ok(())
}

#[test]
fn a_tls_config_without_a_ca_is_refused() {
    let (_publisher, resolution) = switchboard_resolver::Resolution::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let _guard = runtime.enter();
    let error = Balancer::builder()
        .tls(TlsConfig::new())
        .build(resolution)
        .expect_err("no CA");
    assert!(error.is_tls(), "{error}");
    assert!(error.to_string().contains("no CA certificate"), "{error}");
    assert!(TlsConfig::new().ca_pem(b"not a certificate").is_err());
}
