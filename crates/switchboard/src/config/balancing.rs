//! The config's balancing sections beyond `Policy`: pick_first's connections, least_request's
//! candidates, ring_hash's key, random subsetting and zone locality.

use std::time::Duration;

use serde::Deserialize;
use switchboard_balancer::{Builder, Locality, PickFirstOptions, RingHashOptions};

use super::ClientConfig;
use crate::duration;
use crate::error::Error;

/// `PickFirst: {AttemptDelay, KeepWarm}`: 250 ms and false by default.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct PickFirstSection {
    /// How long an attempt may take before the next instance is tried too.
    #[serde(
        default,
        alias = "attempt_delay",
        deserialize_with = "duration::optional"
    )]
    pub attempt_delay: Option<Duration>,
    /// Keep every instance connected, not only the chosen one.
    #[serde(default, alias = "keep_warm")]
    pub keep_warm: bool,
}

/// `LeastRequest: {ChoiceCount}`: 2 by default, 2 to 10.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct LeastRequestSection {
    /// Random candidates compared per pick.
    #[serde(default, alias = "choice_count")]
    pub choice_count: Option<u32>,
}

/// `RingHash: {HashHeader, EntriesPerWeight, MaxRingSize}`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct RingHashSection {
    /// The metadata entry whose value routes an RPC (gRFC A76's `request_hash_header`).
    #[serde(default, alias = "hash_header")]
    pub hash_header: Option<String>,
    /// Entries on the ring per unit of weight: 100.
    #[serde(default, alias = "entries_per_weight")]
    pub entries_per_weight: Option<usize>,
    /// The largest ring: 2^18 entries.
    #[serde(default, alias = "max_ring_size")]
    pub max_ring_size: Option<usize>,
}

/// `Locality: {Zone, MinHealthyPercent}`: 70 % by default.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
#[non_exhaustive]
pub struct LocalitySection {
    /// The client's zone, as instances name theirs in their registration's `zone` metadata.
    #[serde(alias = "zone")]
    pub zone: String,
    /// The share of the zone's instances, in %, that must be pickable to stay in the zone.
    #[serde(default, alias = "min_healthy_percent")]
    pub min_healthy_percent: Option<u32>,
}

/// Checks the balancing fields of `config`; the error names the field.
pub(crate) fn validate(config: &ClientConfig) -> Result<(), Error> {
    if config.subset_size == Some(0) {
        return Err(Error::config("SubsetSize: must be at least 1"));
    }
    if let Some(n) = config.least_request.as_ref().and_then(|l| l.choice_count) {
        if !(2..=10).contains(&n) {
            return Err(Error::config(format!(
                "LeastRequest.ChoiceCount: {n} is not between 2 and 10"
            )));
        }
    }
    if let Some(l) = &config.locality {
        if l.zone.trim().is_empty() {
            return Err(Error::config("Locality.Zone: is empty"));
        }
        if l.min_healthy_percent.is_some_and(|p| p > 100) {
            return Err(Error::config("Locality.MinHealthyPercent: more than 100"));
        }
    }
    if let Some(r) = &config.ring_hash {
        if r.entries_per_weight == Some(0) || r.max_ring_size == Some(0) {
            return Err(Error::config(
                "RingHash.EntriesPerWeight and RingHash.MaxRingSize: must be at least 1",
            ));
        }
        if let Some(h) = &r.hash_header {
            if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                return Err(Error::config(format!(
                    "RingHash.HashHeader: {h:?} is not a metadata key"
                )));
            }
        }
    }
    if config
        .pick_first
        .as_ref()
        .and_then(|p| p.attempt_delay)
        .is_some_and(|d| d.is_zero())
    {
        return Err(Error::config("PickFirst.AttemptDelay: must be positive"));
    }
    Ok(())
}

/// `builder` with the balancing fields of `config`.
pub(crate) fn apply(config: &ClientConfig, mut builder: Builder) -> Builder {
    if let Some(p) = &config.pick_first {
        let d = PickFirstOptions::default();
        builder = builder.pick_first(PickFirstOptions {
            attempt_delay: p.attempt_delay.unwrap_or(d.attempt_delay),
            keep_warm: p.keep_warm,
        });
    }
    if let Some(n) = config.least_request.as_ref().and_then(|l| l.choice_count) {
        builder = builder.least_request_choices(n);
    }
    if let Some(r) = &config.ring_hash {
        let d = RingHashOptions::default();
        builder = builder.ring_hash(RingHashOptions {
            entries_per_weight: r.entries_per_weight.unwrap_or(d.entries_per_weight),
            max_ring_size: r.max_ring_size.unwrap_or(d.max_ring_size),
            hash_header: r.hash_header.clone(),
        });
    }
    if let Some(l) = &config.locality {
        let mut locality = Locality::zone(l.zone.trim());
        if let Some(p) = l.min_healthy_percent {
            locality.min_healthy_percent = p;
        }
        builder = builder.locality(Some(locality));
    }
    builder.subset_size(config.subset_size)
}
