//! Outlier detection (gRFC A50) against real tonic servers on 127.0.0.1: an instance that fails
//! half of its RPCs is ejected, gets none while ejected, and returns after the ejection time.

use std::sync::Arc;
use std::time::{Duration, Instant};

mod flaky;

use anyhow::{Context, Result};
use flaky::{Flaky, Seen};
use switchboard::{Client, ClientConfig};
use switchboard_testkit::proto::user::GetUserInfoRequest;
use switchboard_testkit::proto::user::user_client::UserClient;
use tonic::Code;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_failing_half_its_calls_is_ejected_then_returns() -> Result<()> {
    let seen: Vec<Arc<Seen>> = (0..3).map(|_| Arc::new(Seen::default())).collect();
    let bad = Flaky {
        name: "bad",
        fail_every: Some(2),
        ..Flaky::new(&seen[0], 0, Code::Internal)
    };
    let a = Flaky {
        name: "a",
        ..Flaky::new(&seen[1], 0, Code::Internal)
    };
    let b = Flaky {
        name: "b",
        ..Flaky::new(&seen[2], 0, Code::Internal)
    };
    let addrs = [bad.serve().await?, a.serve().await?, b.serve().await?];
    let bad_addr = addrs[0].to_string();
    let yaml = format!(
        "Endpoints: [{}, {}, {}]
Timeout: 5s
OutlierDetection:
  Interval: 500ms
  BaseEjectionTime: 3s
  MaxEjectionPercent: 34
  FailurePercentageEjection: {{Threshold: 30, MinimumHosts: 3, RequestVolume: 5}}
",
        addrs[0], addrs[1], addrs[2]
    );
    let client = Client::connect(ClientConfig::from_yaml(&yaml)?).await?;
    let mut users = UserClient::new(client.channel());
    let ejected = |client: &Client| {
        client
            .balancer()
            .snapshot()
            .by_addr(&bad_addr)
            .is_some_and(|s| s.ejected)
    };
    let calls_to_bad = || seen[0].calls();

    // Calls until it is ejected (a few intervals). An instance is judged on an interval in which
    // each of the three took 5 calls: 30 calls a second, a rate a busy debug build keeps 5 times
    // over.
    let until = Instant::now() + Duration::from_secs(20);
    while !ejected(&client) {
        assert!(Instant::now() < until, "{:?}", client.balancer().snapshot());
        let _ = users.get_user_info(GetUserInfoRequest { id: 1 }).await;
    }
    let ejected_at = Instant::now();
    let before = calls_to_bad();
    // While ejected (3 s), every call goes elsewhere and succeeds: 50 calls, or as many as 1 s
    // holds.
    for _ in 0..50 {
        if ejected_at.elapsed() > Duration::from_secs(1) {
            break;
        }
        users.get_user_info(GetUserInfoRequest { id: 1 }).await?;
    }
    assert!(ejected(&client), "ejected for 3 s");
    assert_eq!(
        calls_to_bad(),
        before,
        "a call reached the ejected instance"
    );

    // Back after the base ejection time.
    tokio::time::timeout(Duration::from_secs(20), async {
        while ejected(&client) {
            let _ = users.get_user_info(GetUserInfoRequest { id: 1 }).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .context("never came back")?;
    let out_for = ejected_at.elapsed();
    assert!(
        out_for >= Duration::from_millis(2500),
        "back after {out_for:?}"
    );
    for _ in 0..9 {
        let _ = users.get_user_info(GetUserInfoRequest { id: 1 }).await;
    }
    assert!(calls_to_bad() > before, "no call after its return");
    Ok(())
}

#[test]
fn outlier_settings_are_checked() {
    let error = ClientConfig::from_yaml(
        "Endpoints: [127.0.0.1:1]\nOutlierDetection: {MaxEjectionPercent: 120}\n",
    )
    .expect_err("over 100 %");
    assert!(
        error
            .to_string()
            .contains("OutlierDetection.MaxEjectionPercent"),
        "{error}"
    );
    let error = ClientConfig::from_yaml(
        "Endpoints: [127.0.0.1:1]\nOutlierDetection: {FailurePercentageEjection: {StdevFactor: 3}}\n",
    )
    .expect_err("wrong kind");
    assert!(error.to_string().contains("StdevFactor"), "{error}");
}
