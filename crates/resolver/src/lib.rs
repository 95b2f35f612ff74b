//! Service discovery for switchboard: the live set of a service's instances, from etcd.
//!
//! Services register their instances under a key prefix in etcd (`user.rpc/…`), in whatever
//! format their framework writes (go-zero, grpc-go's etcd naming, kratos, go-micro; see
//! [`Format`]). A resolver turns that prefix into a [`Resolution`]: a stream of [`Update`]s
//! (`Reset`, `Add`, `Remove`) that a load balancer applies to its sub-channels, and a
//! [`ResolverStatus`] that says whether the resolver is connected and what it last saw.
//!
//! - [`EtcdResolver`]: list, then watch, with resume after any break, re-listing after a
//!   compaction, and failover between etcd members. The last known instances are kept while
//!   etcd is unreachable.
//! - [`StaticResolver`]: a fixed list (`direct:///10.0.0.1:80,10.0.0.2:80`).
//! - [`MemoryRegistry`]: an in-process registry with the same watch semantics.
//! - [`Registrar`]: the server side; registers an instance with a lease and keeps it there.
//!
//! # Examples
//!
//! ```no_run
//! use switchboard_resolver::{EtcdConfig, EtcdResolver, InstanceSet, Resolve};
//!
//! # async fn run() -> Result<(), switchboard_resolver::Error> {
//! let config = EtcdConfig::from_hosts("127.0.0.1:2379")?;
//! let mut resolution = EtcdResolver::new(config, "user.rpc").resolve();
//! let mut set = InstanceSet::default();
//! while let Some(update) = resolution.next_update().await {
//!     for change in set.apply(update) {
//!         println!("{change:?}");
//!     }
//! }
//! # Ok(()) }
//! ```

mod addr;
mod backoff;
pub mod codec;
mod error;
mod etcd;
mod instance;
mod memory;
mod resolution;
mod shared;
mod static_resolver;

pub use backoff::BackoffConfig;
pub use codec::{DecodeError, Format, UnknownFormat};
pub use error::Error;
pub use etcd::{
    EtcdConfig, EtcdResolver, EtcdTls, Registrar, RegistrarState, RegistrarStatus, Registration,
};
pub use instance::{Change, Instance, InstanceSet, Update};
pub use memory::{MemoryRegistry, MemoryResolver};
pub use resolution::{Closed, Publisher, Resolution, Resolve, ResolverStatus};
pub use shared::SharedResolution;
pub use static_resolver::StaticResolver;
