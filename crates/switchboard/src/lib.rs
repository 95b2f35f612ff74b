//! switchboard: service-discovery-aware gRPC load balancing for tonic.
//!
//! A [`ClientConfig`] (YAML, TOML or JSON, with go-zero's field names) says where a service's
//! instances are: in etcd under a key prefix, in a fixed list, or in a target URI. A
//! [`Client`] follows them with a resolver, keeps one HTTP/2 sub-channel per instance with
//! the balancer, and hands typed tonic clients a [`Channel`] that gives every RPC a deadline.
//!
//! # Examples
//!
//! ```no_run
//! # async fn run() -> Result<(), switchboard::Error> {
//! let config = switchboard::ClientConfig::from_yaml(
//!     "
//! Etcd:
//!   Hosts: [127.0.0.1:2379]
//!   Key: user.rpc
//! Timeout: 2000
//! ",
//! )?;
//! let client = switchboard::Client::connect(config).await?;
//! // let mut users = UserClient::new(client.channel());
//! println!("{:?}", client.balancer().snapshot());
//! # Ok(()) }
//! ```

mod client;
pub mod config;
mod duration;
mod error;
mod retry;
mod server;
pub mod service_config;
pub mod trace;
mod typed;

pub use client::{Channel, Client, DEFAULT_DIAL_TIMEOUT};
pub use config::{ClientConfig, Compression, Secret, ServerConfig};
pub use error::Error;
pub use retry::DEFAULT_RETRY_BUFFER;
pub use server::{Server, Serving};
pub use switchboard_balancer as balancer;
pub use switchboard_resolver as resolver;
pub use typed::{CallOptions, NoDefaultTimeout, Streaming};
