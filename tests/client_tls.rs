//! TLS from a client's config (`Tls`), against real TLS servers registered in a real etcd:
//! certificates are verified against the service's name from the config, never against a
//! registration's host, so an instance holding another service's certificate from the same CA
//! is refused; a client certificate reaches servers that require one; and an instance is
//! dialled with TLS or not as its registration says (kratos' `grpcs://` and `grpc://`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use switchboard::{Client, ClientConfig};
use switchboard_testkit::proto::user::GetUserInfoRequest;
use switchboard_testkit::proto::user::user_client::UserClient;
use switchboard_testkit::{Etcd, TestServer, TlsFiles};
use tokio::net::TcpListener;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

/// A `User` server named `name` on 127.0.0.1 over TLS with this certificate, requiring a
/// client certificate from `client_ca` if given.
async fn tls_server(
    name: &str,
    (cert, key): &(PathBuf, PathBuf),
    client_ca: Option<&Path>,
) -> Result<SocketAddr> {
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(
        std::fs::read(cert)?,
        std::fs::read(key)?,
    ));
    if let Some(ca) = client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(std::fs::read(ca)?));
    }
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = Server::builder()
        .tls_config(tls)?
        .add_service(switchboard_testkit::user_service(name));
    tokio::spawn(
        server.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    Ok(addr)
}

/// Which servers answered `n` calls, sorted.
async fn answers(client: &Client, n: i64) -> Result<Vec<String>> {
    let mut users = UserClient::new(client.channel());
    let mut seen = Vec::new();
    for id in 0..n {
        let reply = users.get_user_info(GetUserInfoRequest { id }).await?;
        seen.push(reply.into_inner().instance);
    }
    seen.sort();
    seen.dedup();
    Ok(seen)
}

async fn wait_for<F: Fn(&switchboard::balancer::ChannelSnapshot) -> bool>(
    client: &Client,
    what: &str,
    done: F,
) -> Result<switchboard::balancer::ChannelSnapshot> {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let snapshot = client.balancer().snapshot();
            if done(&snapshot) {
                return snapshot;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .with_context(|| format!("waiting for {what}: {:?}", client.balancer().snapshot()))
}

/// The error of the instance at `addr` once its connection failed.
async fn refusal(client: &Client, addr: SocketAddr) -> Result<String> {
    let addr = addr.to_string();
    let snapshot = wait_for(client, &format!("{addr} refused"), |s| {
        s.by_addr(&addr).is_some_and(|c| c.last_error.is_some())
    })
    .await?;
    Ok(snapshot
        .by_addr(&addr)
        .and_then(|c| c.last_error.clone())
        .unwrap_or_default())
}

fn hosts(etcd: &Etcd) -> String {
    etcd.endpoint(0).trim_start_matches("http://").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_verified_against_the_service_name_not_the_registered_host() -> Result<()>
{
    let dir = switchboard_testkit::temp_dir("clienttls")?;
    let files = TlsFiles::generate(dir.path())?;
    let user = tls_server("user", &files.issue("user.rpc")?, None).await?;
    // Same CA, another service's certificate: it must not pass for user.rpc.
    let impostor = tls_server("impostor", &files.issue("order.rpc")?, None).await?;
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    kv.put("user.rpc/1", user.to_string(), None).await?;
    kv.put("user.rpc/2", impostor.to_string(), None).await?;

    let yaml = format!(
        "Etcd: {{Hosts: [{}], Key: user.rpc}}\nTls:\n  CACertFile: {}\n",
        hosts(&etcd),
        files.ca.display()
    );
    let client = Client::connect(ClientConfig::from_yaml(&yaml)?).await?;
    let error = refusal(&client, impostor).await?;
    ensure!(
        error.contains("TLS handshake") && error.contains("not valid for name \"user.rpc\""),
        "{error}"
    );
    ensure!(answers(&client, 20).await? == ["user"]);

    // ServerName names the service explicitly: the same config, verified against order.rpc,
    // trusts only the impostor.
    let yaml = format!("{yaml}  ServerName: order.rpc\n");
    let client = Client::connect(ClientConfig::from_yaml(&yaml)?).await?;
    ensure!(answers(&client, 20).await? == ["impostor"]);

    // Without the CA, the system's CAs are trusted, and they did not sign these certificates:
    // no instance is READY.
    let yaml = format!(
        "Etcd: {{Hosts: [{}], Key: user.rpc}}\nNonBlock: true\nTls: {{ServerName: user.rpc}}\n",
        hosts(&etcd)
    );
    let client = Client::connect(ClientConfig::from_yaml(&yaml)?).await?;
    let snapshot = wait_for(&client, "both refused", |s| {
        s.subchannels.len() == 2 && s.subchannels.iter().all(|c| c.last_error.is_some())
    })
    .await?;
    ensure!(snapshot.ready() == 0, "{snapshot:?}");

    // InsecureSkipVerify is refused, saying why.
    let refused = ClientConfig::from_yaml(&format!(
        "Etcd: {{Hosts: [{}], Key: user.rpc}}\nTls: {{InsecureSkipVerify: true}}\n",
        hosts(&etcd)
    ))
    .expect_err("refused");
    ensure!(
        refused
            .to_string()
            .contains("Tls.InsecureSkipVerify: not supported"),
        "{refused}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_the_config_reaches_an_mtls_server() -> Result<()> {
    let dir = switchboard_testkit::temp_dir("clientmtls")?;
    let files = TlsFiles::generate(dir.path())?;
    let server = tls_server("mtls", &files.issue("user.rpc")?, Some(&files.ca)).await?;
    let base = format!(
        "Endpoints: [{server}]\nNonBlock: true\nTls:\n  CACertFile: {}\n  ServerName: user.rpc\n",
        files.ca.display()
    );
    let with = format!(
        "{base}  CertFile: {}\n  CertKeyFile: {}\n",
        files.client_cert.display(),
        files.client_key.display()
    );
    let client = Client::connect(ClientConfig::from_yaml(&with)?).await?;
    ensure!(answers(&client, 5).await? == ["mtls"]);

    // Without the client certificate the server refuses the handshake.
    let client = Client::connect(ClientConfig::from_yaml(&base)?).await?;
    let snapshot = wait_for(&client, "the handshake refused", |s| {
        s.subchannels.iter().any(|c| c.last_error.is_some())
    })
    .await?;
    ensure!(snapshot.ready() == 0, "{snapshot:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kratos_grpcs_instances_use_tls_and_grpc_ones_do_not() -> Result<()> {
    let dir = switchboard_testkit::temp_dir("kratostls")?;
    let files = TlsFiles::generate(dir.path())?;
    let secure = tls_server("secure", &files.issue("user")?, None).await?;
    let plain = TestServer::start("plain").await?;
    let etcd = Etcd::start().await?;
    let mut kv = etcd.client().await?;
    let register = |id: &str, endpoint: String| {
        serde_json::json!({
            "id": id, "name": "user", "version": "v1", "metadata": {},
            "endpoints": [endpoint],
        })
        .to_string()
    };
    kv.put(
        "/microservices/user/a",
        register("a", format!("grpcs://{secure}")),
        None,
    )
    .await?;
    kv.put(
        "/microservices/user/b",
        register("b", format!("grpc://{}", plain.addr())),
        None,
    )
    .await?;
    // Verified against `user`, the service's name from the kratos key.
    let yaml = format!(
        "Etcd: {{Hosts: [{}], Key: /microservices/user, Format: kratos}}\nTls: {{CACertFile: {}}}\n",
        hosts(&etcd),
        files.ca.display()
    );
    let client = Client::connect(ClientConfig::from_yaml(&yaml)?).await?;
    wait_for(&client, "both READY", |s| s.ready() == 2).await?;
    ensure!(answers(&client, 20).await? == ["plain", "secure"]);

    // Without a Tls section, a grpcs:// instance still gets TLS (with the system's CAs, which
    // did not sign its certificate): never plain text.
    let yaml = format!(
        "Etcd: {{Hosts: [{}], Key: /microservices/user, Format: kratos}}\n",
        hosts(&etcd)
    );
    let client = Client::connect(ClientConfig::from_yaml(&yaml)?).await?;
    let error = refusal(&client, secure).await?;
    ensure!(error.contains("TLS handshake"), "{error}");
    ensure!(answers(&client, 10).await? == ["plain"]);
    Ok(())
}

/// A `Server` and a `Client`, both from their configs, over mTLS: the server's `Tls` with a
/// client CA, the client's `Tls` with a client certificate; a client without one is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_config_serves_mtls_to_a_client_config() -> Result<()> {
    let dir = switchboard_testkit::temp_dir("servermtls")?;
    let files = TlsFiles::generate(dir.path())?;
    let (cert, key) = files.issue("user.rpc")?;
    let etcd = Etcd::start().await?;
    let server = switchboard::ServerConfig::from_yaml(&format!(
        "Name: user.rpc
ListenOn: 127.0.0.1:0
Etcd: {{Hosts: [{}], Key: user.rpc}}
Tls:
  CertFile: {}
  CertKeyFile: {}
  CACertFile: {}
",
        hosts(&etcd),
        cert.display(),
        key.display(),
        files.ca.display()
    ))?;
    let serving = switchboard::Server::from_config(&server)?
        .add_service(switchboard_testkit::user_service("served"))
        .serve()
        .await?;
    let client = format!(
        "Etcd: {{Hosts: [{}], Key: user.rpc}}\nNonBlock: true\nTls:\n  CACertFile: {}\n",
        hosts(&etcd),
        files.ca.display()
    );
    let with = format!(
        "{client}  CertFile: {}\n  CertKeyFile: {}\n",
        files.client_cert.display(),
        files.client_key.display()
    );
    let mtls = Client::connect(ClientConfig::from_yaml(&with)?).await?;
    ensure!(answers(&mtls, 5).await? == ["served"]);
    let without = Client::connect(ClientConfig::from_yaml(&client)?).await?;
    let addr: SocketAddr = serving.advertised_addr().parse()?;
    let error = refusal(&without, addr).await?;
    ensure!(!error.is_empty(), "refused without a client certificate");
    ensure!(without.balancer().snapshot().ready() == 0);
    serving.shutdown().await;
    Ok(())
}

/// A TLS `Server` registering in kratos' format writes `grpcs://`, and a client reading the
/// kratos registry dials it with TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_server_registers_as_secure_in_kratos_format() -> Result<()> {
    let dir = switchboard_testkit::temp_dir("kratosreg")?;
    let files = TlsFiles::generate(dir.path())?;
    let (cert, key) = files.issue("user")?;
    let etcd = Etcd::start().await?;
    let serving = switchboard::Server::builder()
        .etcd(
            switchboard::resolver::EtcdConfig::from_hosts(&hosts(&etcd))?,
            "/microservices/user",
        )
        .format(switchboard::resolver::Format::Kratos)
        .listen("127.0.0.1:0".parse()?)
        .tls(&std::fs::read(cert)?, &std::fs::read(key)?, None)
        .add_service(switchboard_testkit::user_service("secure"))
        .serve()
        .await?;
    let mut kv = etcd.client().await?;
    let got = kv
        .get(
            "/microservices/user",
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await?;
    let value = got
        .kvs()
        .first()
        .map(|kv| kv.value_str().unwrap_or_default().to_owned())
        .unwrap_or_default();
    ensure!(
        value.contains(&format!("\"grpcs://{}\"", serving.advertised_addr())),
        "{value}"
    );
    let yaml = format!(
        "Etcd: {{Hosts: [{}], Key: /microservices/user, Format: kratos}}\nTls: {{CACertFile: {}}}\n",
        hosts(&etcd),
        files.ca.display()
    );
    let client = Client::connect(ClientConfig::from_yaml(&yaml)?).await?;
    ensure!(answers(&client, 3).await? == ["secure"]);
    serving.shutdown().await;
    Ok(())
}
