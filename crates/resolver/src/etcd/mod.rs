//! Everything that talks to etcd: its configuration, member failover, the resolver and the
//! registrar.

mod config;
mod members;
mod registrar;
mod resolver;

pub use config::{EtcdConfig, EtcdTls};
pub use registrar::{Registrar, RegistrarState, RegistrarStatus, Registration};
pub use resolver::EtcdResolver;

/// The watch prefix for a service key: `user.rpc` watches `user.rpc/`, as go-zero, kratos and
/// grpc-go's etcd naming resolver do, so that `user.rpc` does not also match `user.rpc2/…`.
pub(crate) fn normalize_prefix(key: &str) -> String {
    let key = key.trim();
    if key.ends_with('/') {
        key.to_string()
    } else {
        format!("{key}/")
    }
}

/// How many keys one page of a listing asks for: a listing of a big fleet is a series of range
/// requests at one revision, each well under any message limit (1000 values of a few KiB).
pub(crate) const LIST_PAGE: i64 = 1000;

/// The end of the range of keys that start with `prefix` (etcd's `clientv3.GetPrefixRangeEnd`):
/// the prefix with its last byte below 0xff incremented and the rest dropped; `\0` (every key)
/// when all bytes are 0xff.
pub(crate) fn prefix_range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The largest etcd response the resolver accepts: a listing or a watch catch-up of a big fleet
/// (20 000 registrations of ~500 bytes is ~10 MB) is far above gRPC's default 4 MiB limit.
pub(crate) const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::prefix_range_end;

    #[test]
    fn range_ends_follow_etcd() {
        assert_eq!(prefix_range_end(b"user.rpc/"), b"user.rpc0");
        assert_eq!(prefix_range_end(b"a\xff"), b"b");
        assert_eq!(prefix_range_end(b"\xff\xff"), b"\0");
    }
}
