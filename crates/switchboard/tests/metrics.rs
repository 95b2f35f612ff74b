//! The metrics a client emits through the `metrics` facade, rendered by the Prometheus
//! exporter, against real tonic servers on 127.0.0.1: the text parses, and the counters
//! match the calls made.
//!
//! The recorder is process-wide: this binary holds this one test, so that no other test records
//! into it or sees it.

use std::collections::BTreeMap;
use std::sync::Arc;

mod flaky;

use anyhow::{Context, Result, bail};
use flaky::{Flaky, Seen};
use metrics_exporter_prometheus::PrometheusBuilder;
use switchboard::{Client, ClientConfig};
use switchboard_testkit::TestServer;
use switchboard_testkit::proto::user::GetUserInfoRequest;
use switchboard_testkit::proto::user::user_client::UserClient;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_text_counts_every_pick_and_result() -> Result<()> {
    let handle = PrometheusBuilder::new().install_recorder()?;
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

    let text = handle.render();
    let samples = parse(&text)?;
    assert_eq!(
        sum(&samples, "switchboard_picks_total", None),
        60.0,
        "{text}"
    );
    let c = failing.to_string();
    assert_eq!(
        sum(&samples, "switchboard_picks_total", Some(("instance", &c))),
        20.0
    );
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
