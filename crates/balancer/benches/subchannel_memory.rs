//! The memory of idle READY sub-channels: the process's RSS before and after a balancer
//! connects N sub-channels (N instance keys on one server, which runs in a child process so
//! that its memory is not counted).
//!
//! `cargo bench -p switchboard-balancer --bench subchannel_memory [-- N]` (default 1000).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use switchboard_balancer::Balancer;
use switchboard_resolver::{Instance, Resolution, Update};

const SERVER_ENV: &str = "SWITCHBOARD_MEMORY_BENCH_SERVER";

const MEASURE_ENV: &str = "SWITCHBOARD_MEMORY_BENCH_MEASURE";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    raise_fd_limit();
    if std::env::var_os(SERVER_ENV).is_some() {
        return serve();
    }
    let n: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1000);
    if let Ok(what) = std::env::var(MEASURE_ENV) {
        return measure(&what, n);
    }

    let mut server = Command::new(std::env::current_exe()?)
        .env(SERVER_ENV, "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let mut line = String::new();
    BufReader::new(server.stdout.take().ok_or("no stdout")?).read_line(&mut line)?;
    let addr = line.trim().to_owned();

    println!(
        "| {n} idle connections, each measured in a fresh process | RSS before | RSS after | per connection | connect time |"
    );
    println!("|---|---|---|---|---|");
    let mut result = Ok(());
    for what in ["hyper", "switchboard-batched", "switchboard"] {
        // Each measurement in its own process: memory freed by one is not reused by the next.
        let out = Command::new(std::env::current_exe()?)
            .env(MEASURE_ENV, what)
            .env("SWITCHBOARD_MEMORY_BENCH_ADDR", &addr)
            .arg(n.to_string())
            .stderr(Stdio::inherit())
            .output()?;
        if !out.status.success() {
            result = Err(format!("measuring {what} failed").into());
            break;
        }
        print!("{}", String::from_utf8_lossy(&out.stdout));
    }
    drop(server.stdin.take());
    let _ = server.kill();
    let _ = server.wait();
    result
}

fn measure(what: &str, n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::var("SWITCHBOARD_MEMORY_BENCH_ADDR")?;
    // The multi-thread runtime, unless SWITCHBOARD_RUNTIME=current_thread.
    let runtime = match std::env::var("SWITCHBOARD_RUNTIME").as_deref() {
        Ok("current_thread") => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        _ => tokio::runtime::Runtime::new()?,
    };
    runtime.block_on(async {
        // Warm up: the code and the allocator's first arenas are not what is measured.
        let (warm, warmed) = connect(&addr, 10, "warm", 10).await?;
        drop((warm, warmed));
        drop(bare_hyper(&addr, 10).await?);
        tokio::time::sleep(Duration::from_millis(500)).await;

        let before = rss()?;
        let started = Instant::now();
        let (label, keep): (&str, Box<dyn std::any::Any>) = match what {
            "hyper" => (
                "bare hyper HTTP/2 connections, one at a time (the floor)",
                Box::new(bare_hyper(&addr, n).await?),
            ),
            "switchboard-batched" => (
                "switchboard READY sub-channels, added 10 at a time",
                Box::new(connect(&addr, n, "mem", 10).await?),
            ),
            _ => (
                "switchboard READY sub-channels, all added at once",
                Box::new(connect(&addr, n, "mem", n).await?),
            ),
        };
        let took = started.elapsed();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let after = rss()?;
        let per = after.saturating_sub(before) as f64 / n as f64 / 1024.0;
        println!(
            "| {label} | {:.1} MiB | {:.1} MiB | {per:.1} KiB | {} ms |",
            before as f64 / 1048576.0,
            after as f64 / 1048576.0,
            took.as_millis()
        );
        drop(keep);
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}

/// A balancer over `n` instance keys at `addr`, all READY. `batch` instances are added at a
/// time (all at once for `n`): with smaller batches fewer connection attempts are in flight
/// together, so the peak of transient memory is lower.
async fn connect(
    addr: &str,
    n: usize,
    prefix: &str,
    batch: usize,
) -> Result<(switchboard_resolver::Publisher, Balancer), Box<dyn std::error::Error>> {
    let (publisher, resolution) = Resolution::channel();
    let balancer = Balancer::builder().build(resolution)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut added = 0;
    while added < n {
        let upto = (added + batch.max(1)).min(n);
        for i in added..upto {
            let instance = Instance::new(format!("{prefix}/{i}"), addr);
            publisher
                .send(Update::Add(instance))
                .await
                .map_err(|_| "closed")?;
        }
        added = upto;
        while balancer.snapshot().ready() < added {
            if Instant::now() > deadline {
                let ready = balancer.snapshot().ready();
                return Err(format!("{ready} of {n} READY after 120 s").into());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    Ok((publisher, balancer))
}

/// The server side: a test server, its address on stdout, until stdin closes.
fn serve() -> Result<(), Box<dyn std::error::Error>> {
    let runtime = tokio::runtime::Runtime::new()?;
    let server = runtime.block_on(switchboard_testkit::TestServer::start("memory"))?;
    println!("{}", server.addr());
    std::io::stdout().flush()?;
    let mut sink = String::new();
    while std::io::stdin().read_line(&mut sink)? > 0 {}
    drop(server);
    Ok(())
}

fn rss() -> Result<u64, Box<dyn std::error::Error>> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm.split_whitespace().nth(1).ok_or("statm")?.parse()?;
    Ok(pages * 4096)
}

fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.min(65536), hard);
    }
}

/// The floor: `n` HTTP/2 connections made with hyper's defaults, their tasks spawned, nothing
/// else.
async fn bare_hyper(
    addr: &str,
    n: usize,
) -> Result<
    Vec<hyper::client::conn::http2::SendRequest<tonic::body::Body>>,
    Box<dyn std::error::Error>,
> {
    let mut senders = Vec::with_capacity(n);
    for _ in 0..n {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (sender, conn) =
            hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                .timer(hyper_util::rt::TokioTimer::new())
                .handshake(hyper_util::rt::TokioIo::new(tcp))
                .await?;
        tokio::spawn(conn);
        senders.push(sender);
    }
    Ok(senders)
}
