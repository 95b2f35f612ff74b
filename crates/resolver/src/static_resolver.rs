//! [`StaticResolver`]: a fixed list of instances, also from a `direct:///h1:p1,h2:p2` target.

use crate::addr::validate;
use crate::error::Error;
use crate::instance::{Instance, Update};
use crate::resolution::{Resolution, Resolve};

/// A resolver over a fixed list of instances: its resolution yields one [`Update::Reset`] and
/// then stays open without further updates.
///
/// # Examples
///
/// ```
/// use switchboard_resolver::{Resolve, StaticResolver, Update};
///
/// # tokio_test_block_on(async {
/// let resolver = StaticResolver::from_target("direct:///10.0.0.1:80,10.0.0.2:80").unwrap();
/// let mut resolution = resolver.resolve();
/// let Some(Update::Reset(instances)) = resolution.next_update().await else { panic!() };
/// assert_eq!(instances.len(), 2);
/// assert_eq!(instances[1].key, "10.0.0.2:80");
/// # });
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
#[derive(Clone, Debug, Default)]
pub struct StaticResolver {
    instances: Vec<Instance>,
}

impl StaticResolver {
    /// A resolver over these instances.
    pub fn new(instances: Vec<Instance>) -> Self {
        Self { instances }
    }

    /// A resolver over `host:port` addresses, each its own key. Fails on an address that is not
    /// `host:port` or on a duplicate.
    pub fn from_addrs<I, S>(addrs: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut instances: Vec<Instance> = Vec::new();
        for addr in addrs {
            let addr = validate(addr.as_ref()).map_err(Error::config)?;
            if instances.iter().any(|i| i.addr == addr) {
                return Err(Error::config(format!("address {addr} is listed twice")));
            }
            instances.push(Instance::new(addr.clone(), addr));
        }
        Ok(Self { instances })
    }

    /// A resolver from a gRPC `direct:///host1:port1,host2:port2` target (also accepted:
    /// `direct://` with nothing before the list, and the bare comma-separated list).
    pub fn from_target(target: &str) -> Result<Self, Error> {
        let list = target
            .strip_prefix("direct:///")
            .or_else(|| target.strip_prefix("direct://"))
            .unwrap_or(target);
        if list.trim().is_empty() {
            return Err(Error::config(format!("target `{target}` lists no address")));
        }
        Self::from_addrs(list.split(',').map(str::trim).filter(|s| !s.is_empty()))
    }

    /// The instances this resolver yields.
    pub fn instances(&self) -> &[Instance] {
        &self.instances
    }
}

impl Resolve for StaticResolver {
    fn resolve(&self) -> Resolution {
        let (publisher, resolution) = Resolution::channel();
        let count = self.instances.len();
        publisher.update_status(|s| {
            s.connected = true;
            s.instances = count;
            s.listings = 1;
        });
        // The buffer is empty, so the first send always fits.
        let _ = publisher.try_send(Update::Reset(self.instances.clone()));
        resolution.keeping(publisher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_targets() {
        assert!(
            StaticResolver::from_target("direct:///")
                .unwrap_err()
                .is_config()
        );
        assert!(StaticResolver::from_target("direct:///a:1,nope").is_err());
        assert!(StaticResolver::from_target("direct:///a:1,a:1").is_err());
        assert_eq!(
            StaticResolver::from_target("a:1, b:2")
                .unwrap()
                .instances()
                .len(),
            2
        );
    }
}
