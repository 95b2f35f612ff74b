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

/// The largest etcd response the resolver accepts: a listing or a watch catch-up of a big fleet
/// (20 000 registrations of ~500 bytes is ~10 MB) is far above gRPC's default 4 MiB limit.
pub(crate) const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;
