//! The metrics a client emits through the `metrics` facade, rendered by the Prometheus
//! exporter, and its per-instance figures, against real tonic servers on 127.0.0.1: the text
//! parses, the counters match the calls made, and churn leaves no series behind.
//!
//! The recorder is process-wide: the tests here share it, each with a target of its own.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

mod flaky;

use anyhow::{Context, Result, bail};
use flaky::{Flaky, Seen};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use switchboard::balancer::Balancer;
use switchboard::balancer::metrics::render_instances;
use switchboard::resolver::{Instance, Resolution, Update};
use switchboard::{Client, ClientConfig};
use switchboard_testkit::proto::user::GetUserInfoRequest;
use switchboard_testkit::proto::user::user_client::UserClient;
use switchboard_testkit::{ClosedPort, TestServer};
use tonic::Code;

/// One sample: its metric name, labels and value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Parses Prometheus' text format: `# HELP`/`# TYPE` comments, and `name{k="v",…} value`.
fn parse(text: &str) -> Result<Vec<Sample>> {
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(comment) = line.strip_prefix('#') {
            let words: Vec<&str> = comment.split_whitespace().collect();
            if !matches!(words.first(), Some(&"HELP" | &"TYPE")) {
                bail!("unknown comment: {line}");
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').context(line.to_owned())?;
        let value: f64 = value.parse().with_context(|| format!("value of {line}"))?;
        let (name, labels) = match series.split_once('{') {
            None => (series, BTreeMap::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').context(line.to_owned())?;
                let mut labels = BTreeMap::new();
                for pair in body.split("\",").filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once("=\"").context(line.to_owned())?;
                    labels.insert(k.to_owned(), v.trim_end_matches('"').to_owned());
                }
                (name, labels)
            }
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("bad metric name in {line}");
        }
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    Ok(samples)
}

fn sum(samples: &[Sample], name: &str, label: Option<(&str, &str)>) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| label.is_none_or(|(k, v)| s.labels.get(k).map(String::as_str) == Some(v)))
        .map(|s| s.value)
        .sum()
}

/// The process-wide Prometheus recorder, installed once.
fn recorder() -> Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new().install_recorder()?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_text_counts_every_pick_and_result() -> Result<()> {
    let handle = recorder()?;
    let servers = [TestServer::start("a").await?, TestServer::start("b").await?];
    let failing = Flaky {
        name: "c",
        fail_every: Some(1),
        ..Flaky::new(&Arc::new(Seen::default()), 0, Code::Internal)
    }
    .serve()
    .await?;
    let yaml = format!(
        "Endpoints: [{}, {}, {failing}]\nTimeout: 5s\n",
        servers[0].addr(),
        servers[1].addr()
    );
    let client = Client::connect(ClientConfig::from_yaml(&yaml)?).await?;
    client
        .balancer()
        .ready(std::time::Duration::from_secs(10))
        .await?;
    tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while client.balancer().snapshot().in_picker() < 3 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await?;
    let mut users = UserClient::new(client.channel());
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..60 {
        match users.get_user_info(GetUserInfoRequest { id: 1 }).await {
            Ok(_) => ok += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::Internal, "{status:?}");
                failed += 1;
            }
        }
    }
    assert_eq!(
        (ok, failed),
        (40, 20),
        "round-robin over two good and one failing"
    );

    let mut text = handle.render();
    text.push_str(&render_instances(&[client.balancer().snapshot()]));
    let samples = parse(&text)?;
    assert_eq!(
        sum(&samples, "switchboard_picks_total", None),
        60.0,
        "{text}"
    );
    let c = failing.to_string();
    assert_eq!(
        sum(
            &samples,
            "switchboard_instance_calls_started_total",
            Some(("instance", &c))
        ),
        20.0
    );
    assert_eq!(
        sum(
            &samples,
            "switchboard_instance_calls_failed_total",
            Some(("instance", &c))
        ),
        20.0
    );
    assert_eq!(sum(&samples, "switchboard_instance_in_picker", None), 3.0);
    assert_eq!(
        sum(&samples, "switchboard_rpcs_total", Some(("code", "OK"))),
        40.0
    );
    assert_eq!(
        sum(
            &samples,
            "switchboard_rpcs_total",
            Some(("code", "INTERNAL"))
        ),
        20.0
    );
    assert_eq!(
        sum(&samples, "switchboard_rpc_duration_seconds_count", None),
        60.0
    );
    assert_eq!(
        sum(
            &samples,
            "switchboard_subchannels",
            Some(("state", "READY"))
        ),
        3.0
    );
    assert_eq!(sum(&samples, "switchboard_instances", None), 3.0);
    // The breaker saw every call (one in three failing sheds none).
    for (result, n) in [("success", 40.0), ("failure", 20.0), ("drop", 0.0)] {
        assert_eq!(
            sum(
                &samples,
                "switchboard_breaker_requests_total",
                Some(("result", result))
            ),
            n,
            "{result}: {text}"
        );
    }
    assert_eq!(
        sum(
            &samples,
            "switchboard_resolver_updates_total",
            Some(("kind", "reset"))
        ),
        1.0
    );
    assert!(
        sum(
            &samples,
            "switchboard_subchannel_transitions_total",
            Some(("state", "READY"))
        ) >= 3.0
    );
    Ok(())
}

/// 10 000 instance addresses come and go, 100 at a time: the facade's series do not name
/// instances at all, and the per-instance figures list only the live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churned_instances_leave_no_series_behind() -> Result<()> {
    let handle = recorder()?;
    // Every address refuses connections: 127.0.x.y on a port nobody listens on.
    let closed = ClosedPort::new()?;
    let port = closed.addr().port();
    let (publisher, resolution) = Resolution::channel();
    let balancer = Balancer::builder().target("churn").build(resolution)?;
    let live = |round: u32| -> Vec<Instance> {
        (0..100)
            .map(|i| {
                let n = round * 100 + i;
                Instance::new(
                    format!("churn/{n}"),
                    format!("127.0.{}.{}:{port}", 1 + n / 250, 1 + n % 250),
                )
            })
            .collect()
    };
    for round in 0..100 {
        publisher.send(Update::Reset(live(round))).await?;
    }
    // Every update applied and every removed sub-channel gone.
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let s = balancer.snapshot();
            if s.updates_applied == 100 && s.subchannels.len() == 100 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .context("the churn did not settle within 60 s")?;
    let facade = parse(&handle.render())?;
    let churn: Vec<&Sample> = facade
        .iter()
        .filter(|s| s.labels.get("target").map(String::as_str) == Some("churn"))
        .collect();
    assert!(
        churn.iter().all(|s| !s.labels.contains_key("instance")),
        "no facade series names an instance"
    );
    assert!(
        churn.len() < 40,
        "{} facade series for one target: {churn:?}",
        churn.len()
    );
    let instances = parse(&render_instances(&[balancer.snapshot()]))?;
    let named: std::collections::BTreeSet<&str> = instances
        .iter()
        .filter_map(|s| s.labels.get("instance").map(String::as_str))
        .collect();
    assert_eq!(named.len(), 100, "only the live instances are listed");
    assert_eq!(instances.len(), 8 * 100);
    assert!(named.iter().all(|a| a.starts_with("127.0.40.")));
    // Gone with the last instance: nothing left for this target in the gauges.
    publisher.send(Update::Reset(Vec::new())).await?;
    tokio::time::timeout(Duration::from_secs(30), async {
        while !balancer.snapshot().subchannels.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .context("the last instances did not drain within 30 s")?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_zeros_prometheus_false_turns_a_clients_metrics_off() -> Result<()> {
    let handle = recorder()?;
    let (quiet, counted) = (TestServer::start("q").await?, TestServer::start("c").await?);
    for (server, settings) in [
        (&quiet, "Middlewares: {Prometheus: false}\n"),
        (&counted, ""),
    ] {
        let yaml = format!("Endpoints: [{}]\n{settings}", server.addr());
        let client = Client::connect(ClientConfig::from_yaml(&yaml)?).await?;
        let mut users = UserClient::new(client.channel());
        for id in 0..5 {
            users.get_user_info(GetUserInfoRequest { id }).await?;
        }
    }
    let samples = parse(&handle.render())?;
    let of = |server: &TestServer| {
        let addr = server.addr().to_string();
        samples
            .iter()
            .filter(|s| s.labels.get("target").is_some_and(|t| t.contains(&addr)))
            .map(|s| s.name.as_str())
            .collect::<std::collections::BTreeSet<_>>()
    };
    assert!(
        of(&quiet).is_empty(),
        "recorded with Prometheus: false: {:?}",
        of(&quiet)
    );
    let counted_names = of(&counted);
    for name in [
        "switchboard_picks_total",
        "switchboard_rpcs_total",
        "switchboard_instances",
    ] {
        assert!(
            counted_names.contains(name),
            "{name} missing: {counted_names:?}"
        );
    }
    Ok(())
}
