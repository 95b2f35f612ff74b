//! What the example programs share: the generated code of `proto/user.proto`, the `User`
//! service and the gateway's routes.

pub mod gateway;
pub mod service;

/// Package `user`: the demo `User` service, client and server.
#[allow(missing_docs, unreachable_pub, clippy::all, rust_2018_idioms)]
pub mod user {
    tonic::include_proto!("user");
}

/// Parses a command-line duration: `2s`, `1.5s`, `500ms`, or a number of seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let (number, scale) = match text.strip_suffix("ms") {
        Some(n) => (n, 1e-3),
        None => (text.strip_suffix('s').unwrap_or(text), 1.0),
    };
    number
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0 && *v < 1e7)
        .map(|v| std::time::Duration::from_secs_f64(v * scale))
        .ok_or_else(|| format!("{text:?} is not a duration like 2s or 500ms"))
}
