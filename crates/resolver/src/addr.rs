//! Validation of `host:port` addresses found in registrations.

use std::net::{Ipv6Addr, SocketAddr};

/// Checks that `addr` is `host:port` with a usable host and a non-zero port, and returns it in
/// canonical form (surrounding white space removed).
///
/// Hosts may be IPv4 addresses, bracketed IPv6 addresses or DNS names (letters, digits, `-`,
/// `_` and `.`, at most 253 characters), as gRPC's `dns` and `ipv4`/`ipv6` targets accept.
pub(crate) fn validate(addr: &str) -> Result<String, String> {
    let addr = addr.trim();
    if addr.is_empty() {
        return Err("empty address".into());
    }
    if let Ok(sock) = addr.parse::<SocketAddr>() {
        if sock.port() == 0 {
            return Err(format!("port 0 in `{}`", clip(addr)));
        }
        return Ok(addr.to_string());
    }
    let (host, port) = addr
        .rsplit_once(':')
        .ok_or_else(|| format!("`{}` has no port", clip(addr)))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("bad port in `{}`", clip(addr)))?;
    if port == 0 {
        return Err(format!("port 0 in `{}`", clip(addr)));
    }
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        inner
            .parse::<Ipv6Addr>()
            .map_err(|_| format!("bad IPv6 host in `{}`", clip(addr)))?;
        return Ok(addr.to_string());
    }
    let dns_ok = !host.is_empty()
        && host.len() <= 253
        && !host.starts_with(['.', '-'])
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !dns_ok {
        return Err(format!("bad host in `{}`", clip(addr)));
    }
    Ok(addr.to_string())
}

/// The first 64 characters of `s`, for error messages about inputs of any size.
pub(crate) fn clip(s: &str) -> String {
    const MAX: usize = 64;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let head: String = s.chars().take(MAX).collect();
        format!("{head}… ({} bytes)", s.len())
    }
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn accepts_real_addresses() {
        for a in [
            "127.0.0.1:8080",
            "[::1]:80",
            "user-rpc-1:9000",
            "svc.ns.svc.cluster.local:443",
            " 10.0.0.1:1 ",
        ] {
            assert!(validate(a).is_ok(), "{a}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for a in [
            "",
            "host",
            ":80",
            "host:0",
            "host:99999",
            "host:port",
            "ho st:80",
            "[zz]:80",
            "::1:80:",
            "{\"a\":1}",
            "-a:1",
        ] {
            assert!(validate(a).is_err(), "{a}");
        }
    }
}
