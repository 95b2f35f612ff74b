//! The gateway's operator pages: `/metrics` in Prometheus' text format, and the live dashboard
//! at `/debug/switchboard/ui`, loaded in headless Chromium against a real etcd and real
//! `user-rpc` processes.
//!
//! The browser comes from `CHROME_BIN`, else `chromium` or `chromium-browser` on the `PATH`
//! (`bash scripts/setup.sh --browser` installs Debian's `chromium`). Without one the browser
//! test fails, saying so.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;
use support::{Gateway, UserRpc, get};
use switchboard_testkit::{Etcd, TestServer};
use tokio::process::Command;

/// The bound on every wait in these tests.
const PATIENCE: Duration = Duration::from_secs(30);

/// Sends `n` requests through the gateway; each must succeed.
async fn traffic(gateway: &Gateway, n: i64) -> Result<()> {
    for id in 1..=n {
        let answer = get(&gateway.addr, &format!("/api/user/{id}")).await?;
        if answer.status != 200 {
            bail!("GET /api/user/{id}: {} {}", answer.status, answer.body);
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_gateway_serves_prometheus_metrics_and_the_dashboard_page() -> Result<()> {
    let a = TestServer::start("a").await?;
    let b = TestServer::start("b").await?;
    let dir = switchboard_testkit::temp_dir("gateway")?;
    let config = dir.path().join("user-rpc.yaml");
    std::fs::write(
        &config,
        format!("Endpoints: [{}, {}]\nTimeout: 2000\n", a.addr(), b.addr()),
    )?;
    let config = config.to_str().context("a UTF-8 path")?;
    let gateway = Gateway::start(&["--user-rpc", config]).await?;
    traffic(&gateway, 20).await?;

    let metrics = get(&gateway.addr, "/metrics").await?;
    assert_eq!(metrics.status, 200, "{}", metrics.body);
    assert_eq!(
        metrics.content_type, "text/plain; version=0.0.4; charset=utf-8",
        "Prometheus' text exposition format"
    );
    // Every line is a comment or a sample: `name{labels} value`.
    for line in metrics.body.lines().filter(|l| !l.is_empty()) {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').context("a sample")?;
        let name = series.split('{').next().unwrap_or_default();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "{line}"
        );
    }

    let page = get(&gateway.addr, "/debug/switchboard/ui").await?;
    assert_eq!(page.status, 200);
    assert!(
        page.content_type.starts_with("text/html"),
        "{}",
        page.content_type
    );
    assert!(
        page.body.contains("\"../switchboard\""),
        "polls the snapshot"
    );
    // Self-contained: no external scripts, styles or fonts.
    for external in ["src=\"http", "href=\"http", "url(http", "@import"] {
        assert!(!page.body.contains(external), "{external}");
    }
    Ok(())
}

/// The headless browser: `CHROME_BIN`, else `chromium` or `chromium-browser` on the `PATH`.
fn browser() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("CHROME_BIN").filter(|b| !b.is_empty()) {
        return Some(PathBuf::from(bin));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// What the page shows once loaded: its rows and the aggregate state.
#[derive(Debug)]
struct Page {
    /// `data-state` of each row, by `data-addr`.
    rows: BTreeMap<String, String>,
    /// `data-state` of the aggregate badge.
    aggregate: String,
    /// How many snapshots the page has requested.
    polls: u64,
    /// `data-method` of each breaker row.
    breakers: Vec<String>,
}

/// Loads `url` in headless Chromium, lets it poll for three seconds of its (virtual) time, and
/// reads the rows out of the DOM it ends with.
async fn load(browser: &Path, profile: &Path, url: &str) -> Result<Page> {
    let mut cmd = Command::from(switchboard_testkit::child_command(browser));
    cmd.args([
        "--headless",
        "--disable-gpu",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--virtual-time-budget=3000",
        "--dump-dom",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(url);
    // Chromium's helpers end with it, even when it is cut off.
    let out = support::output_within(cmd, "chromium", Duration::from_secs(60)).await?;
    if !out.status.success() {
        bail!("chromium failed: {}", out.status);
    }
    let dom = String::from_utf8(out.stdout)?;
    Ok(Page {
        rows: tags(&dom, "<tr ")
            .filter_map(|tr| Some((attr(tr, "data-addr")?, attr(tr, "data-state")?)))
            .collect(),
        aggregate: tags(&dom, "<span id=\"aggregate\"")
            .find_map(|tag| attr(tag, "data-state"))
            .unwrap_or_default(),
        polls: tags(&dom, "<body")
            .find_map(|tag| attr(tag, "data-polls")?.parse().ok())
            .unwrap_or(0),
        breakers: tags(&dom, "<tr ")
            .filter_map(|tr| attr(tr, "data-method"))
            .collect(),
    })
}

/// Every start tag in `dom` that begins with `prefix`, up to its `>`.
fn tags<'a>(dom: &'a str, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    dom.match_indices(prefix)
        .filter_map(move |(at, _)| dom[at..].split_once('>').map(|(tag, _)| tag))
}

/// The value of attribute `name` in start tag `tag`.
fn attr(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let len = tag[start..].find('"')?;
    Some(tag[start..start + len].replace("&amp;", "&"))
}

/// Loads the page until `done` holds for it, for at most [`PATIENCE`]; the last page.
async fn load_until(
    browser: &Path,
    profile: &Path,
    url: &str,
    done: impl Fn(&Page) -> bool,
) -> Result<Page> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let page = load(browser, profile, url).await?;
        if done(&page) {
            return Ok(page);
        }
        if Instant::now() > deadline {
            bail!("after {PATIENCE:?} the page still shows {page:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_each_instance_and_a_stopped_one_changes() -> Result<()> {
    // A test that cannot run fails, saying why: a skip reported as a pass would hide it.
    let Some(browser) = browser() else {
        bail!(
            "no headless browser: install Debian's chromium (`bash scripts/setup.sh --browser`) \
             or set CHROME_BIN"
        );
    };
    let started = Instant::now();
    let etcd = Etcd::start().await?;
    let mut instances = Vec::new();
    for name in ["u1", "u2", "u3"] {
        instances.push(UserRpc::start(name, &etcd).await?);
    }
    let gateway = Gateway::start(&["--etcd", &etcd.hosts(), "--key", "user.rpc"]).await?;
    traffic(&gateway, 30).await?;
    let profile = switchboard_testkit::temp_dir("chromium")?;
    let url = format!("http://{}/debug/switchboard/ui", gateway.addr);

    let expected: BTreeMap<String, String> = instances
        .iter()
        .map(|i| (i.addr.clone(), "READY".to_owned()))
        .collect();
    let page = load_until(&browser, profile.path(), &url, |page| page.rows == expected).await?;
    assert_eq!(page.aggregate, "READY", "{page:?}");
    assert!(page.polls >= 2, "the page polls: {page:?}");
    // The client's breaker per method, for the method the traffic called.
    assert_eq!(page.breakers, ["/user.User/GetUserInfo"], "{page:?}");

    // One instance dies (kill -9): its row leaves READY (or goes), the others stay READY.
    let stopped = instances.remove(1);
    stopped.signal(Signal::SIGKILL)?;
    traffic(&gateway, 10).await?;
    let page = load_until(&browser, profile.path(), &url, |page| {
        page.rows
            .get(&stopped.addr)
            .is_none_or(|state| state != "READY")
    })
    .await?;
    for instance in &instances {
        assert_eq!(
            page.rows.get(&instance.addr).map(String::as_str),
            Some("READY"),
            "{page:?}"
        );
    }
    assert_eq!(page.aggregate, "READY", "{page:?}");
    println!("browser test took {:?}", started.elapsed());
    Ok(())
}
