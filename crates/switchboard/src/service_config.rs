//! gRPC service config: the JSON document of
//! [gRPC's service config](https://github.com/grpc/grpc/blob/master/doc/service_config.md),
//! as grpc-go accepts it, given as text in [`ClientConfig::service_config`].
//!
//! - `loadBalancingConfig: [{"round_robin": {}}, …]`: the first entry naming a known policy
//!   wins (`round_robin`, `pick_first`, `weighted_round_robin`, `p2c`, `p2c_peak_ewma`); the
//!   deprecated `loadBalancingPolicy: "round_robin"` is read when it is absent. Either
//!   overrides `Policy`.
//! - `methodConfig: [{name, timeout, waitForReady, retryPolicy | hedgingPolicy,
//!   maxRequestMessageBytes, maxResponseMessageBytes}]`: per-method settings (`hedgingPolicy:
//!   {maxAttempts, hedgingDelay, nonFatalStatusCodes}` hedges the method's RPCs instead of
//!   retrying them; see [`HedgingSection`]; the message-size limits apply with the client's
//!   `MaxRequestMessageBytes` and `MaxResponseMessageBytes`, the smaller of the two). An RPC
//!   gets those of the entry naming its method (`{"service": "user.User", "method":
//!   "GetUserInfo"}`), else of the one naming its service (`{"service": "user.User"}`), else
//!   of the default one (`{}`); what that entry leaves out comes from the client's `Timeout`,
//!   `WaitForReady` and `Retry`. A method's `timeout` bounds an RPC together with the
//!   caller's own deadline: the shorter one applies. An explicit
//!   [`WaitForReady`](switchboard_balancer::WaitForReady) extension of a request wins over
//!   `waitForReady`.
//! - `retryThrottling: {"maxTokens": 10, "tokenRatio": 0.1}`: the client's retry throttling,
//!   shared by every method (it replaces `Retry.Throttling`).
//! - `healthCheckConfig: {"serviceName": "…"}`: turns on client-side health checking of
//!   that service (gRFC A17), unless the client's `HealthCheck` names one.
//!
//! Durations are proto-JSON ones: `"1.5s"`, `"0.100s"`. Other fields are ignored, as grpc-go
//! ignores them.
//!
//! # Examples
//!
//! ```
//! let config = switchboard::ClientConfig::from_yaml(
//!     r#"
//! Endpoints: [127.0.0.1:8080]
//! ServiceConfig: |
//!   {
//!     "loadBalancingConfig": [{"pick_first": {}}],
//!     "methodConfig": [{
//!       "name": [{"service": "user.User", "method": "GetUserInfo"}],
//!       "timeout": "0.5s",
//!       "retryPolicy": {
//!         "maxAttempts": 4,
//!         "initialBackoff": "0.1s",
//!         "maxBackoff": "1s",
//!         "backoffMultiplier": 2,
//!         "retryableStatusCodes": ["UNAVAILABLE"]
//!       }
//!     }]
//!   }
//! "#,
//! )?;
//! let parsed = switchboard::service_config::ServiceConfig::parse(
//!     config.service_config.as_deref().unwrap_or("{}"),
//! )?;
//! assert_eq!(
//!     parsed.load_balancing_policy,
//!     Some(switchboard::balancer::Policy::PickFirst)
//! );
//! # Ok::<(), switchboard::Error>(())
//! ```
//!
//! [`ClientConfig::service_config`]: crate::ClientConfig::service_config

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use switchboard_balancer::Policy;

use crate::config::{HedgingSection, RetrySection, ThrottlingSection};
use crate::error::Error;
use crate::retry::{self, RetryPolicy, Throttle};

const FIELD: &str = "ServiceConfig";

/// A parsed and checked service config.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// The policy of `loadBalancingConfig` (or of `loadBalancingPolicy`), if either is set.
    pub load_balancing_policy: Option<Policy>,
    /// The entries of `methodConfig`, in order.
    pub method_configs: Vec<MethodConfig>,
    /// `retryThrottling`.
    pub retry_throttling: Option<ThrottlingSection>,
    /// `healthCheckConfig`.
    pub health_check_config: Option<HealthCheckConfig>,
}

/// One entry of `methodConfig`.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct MethodConfig {
    /// The methods it applies to.
    pub names: Vec<MethodName>,
    /// `timeout`: the RPC's deadline.
    pub timeout: Option<Duration>,
    /// `waitForReady`.
    pub wait_for_ready: Option<bool>,
    /// `retryPolicy`, every field set and checked.
    pub retry_policy: Option<RetrySection>,
    /// `hedgingPolicy`, checked (not with `retryPolicy`).
    pub hedging_policy: Option<HedgingSection>,
    /// `maxRequestMessageBytes`: the largest request message (the smaller of it and the
    /// client's `MaxRequestMessageBytes` applies).
    pub max_request_message_bytes: Option<usize>,
    /// `maxResponseMessageBytes`: the largest response message (the smaller of it and the
    /// client's `MaxResponseMessageBytes` applies).
    pub max_response_message_bytes: Option<usize>,
}

/// One `name` of a [`MethodConfig`]: a method, a whole service or (both `None`) every method.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct MethodName {
    /// The fully qualified service, `user.User`.
    pub service: Option<String>,
    /// The method, `GetUserInfo`; only with a service.
    pub method: Option<String>,
}

/// `healthCheckConfig`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthCheckConfig {
    /// `serviceName`: the service whose health to watch (`""`: the server's).
    pub service_name: String,
}

impl ServiceConfig {
    /// Parses and checks a service config's JSON text. The error names the field, as
    /// `ServiceConfig.methodConfig[0].retryPolicy.maxAttempts`.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::config(format!("{FIELD}: invalid JSON: {e}")))?;
        let root = object(&value, FIELD)?;
        let mut config = Self::default();
        if let Some(v) = root.get("loadBalancingConfig") {
            config.load_balancing_policy = Some(load_balancing_config(
                v,
                &format!("{FIELD}.loadBalancingConfig"),
            )?);
        } else if let Some(v) = root.get("loadBalancingPolicy") {
            let path = format!("{FIELD}.loadBalancingPolicy");
            let name = string(v, &path)?;
            let policy = name
                .parse::<Policy>()
                .map_err(|e| Error::config(format!("{path}: {e}")))?;
            config.load_balancing_policy = Some(policy);
        }
        if let Some(v) = root.get("methodConfig") {
            let path = format!("{FIELD}.methodConfig");
            let mut seen: HashMap<MethodName, String> = HashMap::new();
            for (i, entry) in array(v, &path)?.iter().enumerate() {
                let path = format!("{path}[{i}]");
                let method = method_config(entry, &path)?;
                for (j, name) in method.names.iter().enumerate() {
                    let here = format!("{path}.name[{j}]");
                    match seen.entry(name.clone()) {
                        Entry::Occupied(first) => {
                            return Err(Error::config(format!(
                                "{here}: names the same methods as {}",
                                first.get()
                            )));
                        }
                        Entry::Vacant(slot) => {
                            slot.insert(here);
                        }
                    }
                }
                config.method_configs.push(method);
            }
        }
        if let Some(v) = root.get("retryThrottling") {
            let path = format!("{FIELD}.retryThrottling");
            let o = object(v, &path)?;
            let max_tokens = number(
                required(o, "maxTokens", &path)?,
                &format!("{path}.maxTokens"),
            )?;
            if !(max_tokens > 0.0 && max_tokens <= 1000.0) {
                return Err(Error::config(format!(
                    "{path}.maxTokens: must be more than 0 and at most 1000"
                )));
            }
            let token_ratio = number(
                required(o, "tokenRatio", &path)?,
                &format!("{path}.tokenRatio"),
            )?;
            if !(token_ratio.is_finite() && token_ratio > 0.0) {
                return Err(Error::config(format!(
                    "{path}.tokenRatio: must be more than 0"
                )));
            }
            config.retry_throttling = Some(ThrottlingSection {
                max_tokens,
                token_ratio,
            });
        }
        if let Some(v) = root.get("healthCheckConfig") {
            let path = format!("{FIELD}.healthCheckConfig");
            let o = object(v, &path)?;
            let service_name = match o.get("serviceName") {
                None | Some(Value::Null) => String::new(),
                Some(v) => string(v, &format!("{path}.serviceName"))?.to_owned(),
            };
            config.health_check_config = Some(HealthCheckConfig { service_name });
        }
        Ok(config)
    }
}

fn load_balancing_config(value: &Value, path: &str) -> Result<Policy, Error> {
    let entries = array(value, path)?;
    let mut names = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        let here = format!("{path}[{i}]");
        let o = object(entry, &here)?;
        let mut fields = o.iter();
        let (Some((name, config)), None) = (fields.next(), fields.next()) else {
            return Err(Error::config(format!(
                "{here}: must name exactly one policy, as {{\"round_robin\": {{}}}}"
            )));
        };
        object(config, &format!("{here}.{name}"))?;
        if let Some(policy) = Policy::ALL.into_iter().find(|p| p.as_str() == name) {
            return Ok(policy);
        }
        names.push(name.as_str());
    }
    Err(Error::config(format!(
        "{path}: names no supported policy ({names:?}); supported: round_robin, pick_first, \
         weighted_round_robin, p2c, p2c_peak_ewma, least_request, ring_hash"
    )))
}

fn method_config(value: &Value, path: &str) -> Result<MethodConfig, Error> {
    let o = object(value, path)?;
    let mut method = MethodConfig::default();
    if let Some(v) = o.get("name") {
        let names_path = format!("{path}.name");
        for (j, name) in array(v, &names_path)?.iter().enumerate() {
            let here = format!("{names_path}[{j}]");
            let n = object(name, &here)?;
            let part = |key: &str| -> Result<Option<String>, Error> {
                match n.get(key) {
                    None | Some(Value::Null) => Ok(None),
                    Some(v) => {
                        let s = string(v, &format!("{here}.{key}"))?;
                        Ok((!s.is_empty()).then(|| s.to_owned()))
                    }
                }
            };
            let service = part("service")?;
            let method_name = part("method")?;
            if service.is_none() && method_name.is_some() {
                return Err(Error::config(format!("{here}: a method needs its service")));
            }
            for s in service.iter().chain(method_name.iter()) {
                if s.contains('/') {
                    return Err(Error::config(format!("{here}: {s:?} contains '/'")));
                }
            }
            method.names.push(MethodName {
                service,
                method: method_name,
            });
        }
    }
    if let Some(v) = o.get("timeout") {
        let here = format!("{path}.timeout");
        let timeout = duration(v, &here)?;
        if timeout.is_zero() {
            return Err(Error::config(format!("{here}: must be positive")));
        }
        method.timeout = Some(timeout);
    }
    if let Some(v) = o.get("waitForReady") {
        let Value::Bool(b) = v else {
            return Err(Error::config(format!(
                "{path}.waitForReady: must be true or false"
            )));
        };
        method.wait_for_ready = Some(*b);
    }
    for (key, field) in [
        (
            "maxRequestMessageBytes",
            &mut method.max_request_message_bytes,
        ),
        (
            "maxResponseMessageBytes",
            &mut method.max_response_message_bytes,
        ),
    ] {
        if let Some(v) = o.get(key) {
            *field = Some(message_bytes(v, &format!("{path}.{key}"))?);
        }
    }
    if let Some(v) = o.get("retryPolicy") {
        method.retry_policy = Some(retry_policy(v, &format!("{path}.retryPolicy"))?);
    }
    if let Some(v) = o.get("hedgingPolicy") {
        if method.retry_policy.is_some() {
            return Err(Error::config(format!(
                "{path}: has both retryPolicy and hedgingPolicy (one or the other)"
            )));
        }
        method.hedging_policy = Some(hedging_policy(v, &format!("{path}.hedgingPolicy"))?);
    }
    Ok(method)
}

/// A6's `hedgingPolicy`: `maxAttempts` (required, more than 1), `hedgingDelay` (0 s unless
/// given), `nonFatalStatusCodes` (none unless given).
fn hedging_policy(value: &Value, path: &str) -> Result<HedgingSection, Error> {
    let o = object(value, path)?;
    let here = format!("{path}.maxAttempts");
    let max_attempts = required(o, "maxAttempts", path)?
        .as_u64()
        .ok_or_else(|| Error::config(format!("{here}: must be a whole number")))?;
    if max_attempts < 2 {
        return Err(Error::config(format!("{here}: must be more than 1")));
    }
    let hedging_delay = o
        .get("hedgingDelay")
        .map(|v| duration(v, &format!("{path}.hedgingDelay")))
        .transpose()?;
    let non_fatal_status_codes = match o.get("nonFatalStatusCodes") {
        None => None,
        Some(v) => Some(code_names(v, &format!("{path}.nonFatalStatusCodes"))?),
    };
    let section = HedgingSection {
        max_attempts: Some(u32::try_from(max_attempts).unwrap_or(u32::MAX)),
        hedging_delay,
        non_fatal_status_codes,
    };
    RetryPolicy::hedging(&section).map_err(|e| Error::config(format!("{path}: {e}")))?;
    Ok(section)
}

fn retry_policy(value: &Value, path: &str) -> Result<RetrySection, Error> {
    let o = object(value, path)?;
    let here = format!("{path}.maxAttempts");
    let max_attempts = required(o, "maxAttempts", path)?
        .as_u64()
        .ok_or_else(|| Error::config(format!("{here}: must be a whole number")))?;
    if max_attempts < 2 {
        return Err(Error::config(format!("{here}: must be more than 1")));
    }
    let max_attempts = u32::try_from(max_attempts)
        .unwrap_or(u32::MAX)
        .min(retry::MAX_ATTEMPTS);
    let mut backoffs = [Duration::ZERO; 2];
    for (slot, key) in backoffs.iter_mut().zip(["initialBackoff", "maxBackoff"]) {
        let here = format!("{path}.{key}");
        let d = duration(required(o, key, path)?, &here)?;
        if d.is_zero() {
            return Err(Error::config(format!("{here}: must be positive")));
        }
        *slot = d;
    }
    let here = format!("{path}.backoffMultiplier");
    let multiplier = number(required(o, "backoffMultiplier", path)?, &here)?;
    if !(multiplier.is_finite() && multiplier > 0.0) {
        return Err(Error::config(format!("{here}: must be more than 0")));
    }
    let here = format!("{path}.retryableStatusCodes");
    let names = code_names(required(o, "retryableStatusCodes", path)?, &here)?;
    if names.is_empty() {
        return Err(Error::config(format!("{here}: lists no status code")));
    }
    Ok(RetrySection {
        max_attempts: Some(max_attempts),
        initial_backoff: Some(backoffs[0]),
        max_backoff: Some(backoffs[1]),
        backoff_multiplier: Some(multiplier),
        retryable_status_codes: Some(names),
        throttling: None,
        buffer_bytes: None,
    })
}

/// A list of status codes, by name or number, none of them OK.
fn code_names(value: &Value, here: &str) -> Result<Vec<String>, Error> {
    let codes = array(value, here)?;
    let mut names = Vec::with_capacity(codes.len());
    for (k, code) in codes.iter().enumerate() {
        let text = match code {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            _ => String::new(),
        };
        match retry::parse_code(&text) {
            Some(tonic::Code::Ok) => {
                return Err(Error::config(format!("{here}[{k}]: OK is not a failure")));
            }
            Some(_) => names.push(text),
            None => {
                return Err(Error::config(format!(
                    "{here}[{k}]: {code} is not a gRPC status code (UNAVAILABLE, 14, …)"
                )));
            }
        }
    }
    Ok(names)
}

fn object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>, Error> {
    value
        .as_object()
        .ok_or_else(|| Error::config(format!("{path}: must be a JSON object")))
}

fn array<'a>(value: &'a Value, path: &str) -> Result<&'a [Value], Error> {
    value
        .as_array()
        .map(Vec::as_slice)
        .ok_or_else(|| Error::config(format!("{path}: must be a JSON array")))
}

fn string<'a>(value: &'a Value, path: &str) -> Result<&'a str, Error> {
    value
        .as_str()
        .ok_or_else(|| Error::config(format!("{path}: must be a string")))
}

fn number(value: &Value, path: &str) -> Result<f64, Error> {
    value
        .as_f64()
        .ok_or_else(|| Error::config(format!("{path}: must be a number")))
}

/// A message-size limit: a positive integer, as a JSON number or (proto-JSON's `UInt32Value`
/// may be either) a string of digits.
fn message_bytes(value: &Value, path: &str) -> Result<usize, Error> {
    let n = match value {
        Value::String(s) => s.trim().parse::<u64>().ok(),
        v => v.as_u64(),
    };
    match n.and_then(|n| usize::try_from(n).ok()) {
        Some(n) if n > 0 => Ok(n),
        _ => Err(Error::config(format!(
            "{path}: must be a positive number of bytes, not {value}"
        ))),
    }
}

fn required<'a>(o: &'a Map<String, Value>, key: &str, path: &str) -> Result<&'a Value, Error> {
    o.get(key)
        .ok_or_else(|| Error::config(format!("{path}.{key}: is required")))
}

fn duration(value: &Value, path: &str) -> Result<Duration, Error> {
    let text = string(value, path)?;
    parse_duration(text).ok_or_else(|| {
        Error::config(format!(
            "{path}: {text:?} is not a duration like \"1.5s\" (seconds, with an \"s\")"
        ))
    })
}

/// A proto-JSON `google.protobuf.Duration`: seconds with up to nine decimals and an `s`;
/// `None` if malformed or negative.
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let number = text.strip_suffix('s')?;
    let (whole, fraction) = match number.split_once('.') {
        Some((w, f)) => (w, f),
        None => (number, ""),
    };
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() && fraction.is_empty()
        || !digits(whole)
        || !digits(fraction)
        || fraction.len() > 9
        || number.ends_with('.')
    {
        return None;
    }
    let secs: u64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    if secs > 315_576_000_000 {
        return None;
    }
    let nanos: u32 = if fraction.is_empty() {
        0
    } else {
        let scale = 10u32.pow(u32::try_from(9 - fraction.len()).ok()?);
        fraction.parse::<u32>().ok()? * scale
    };
    Some(Duration::new(secs, nanos))
}

/// What applies to the RPCs of one method-config entry.
#[derive(Debug)]
pub(crate) struct MethodSettings {
    /// Their deadline, instead of the client's `Timeout`.
    pub(crate) timeout: Option<Duration>,
    /// Their wait-for-ready, instead of the client's `WaitForReady`.
    pub(crate) wait_for_ready: Option<bool>,
    /// Their retry or hedging policy, instead of the client's `Retry` or `Hedging`.
    pub(crate) retry: Option<Arc<RetryPolicy>>,
    /// Their message-size limits, with the client's.
    pub(crate) max_request_message_bytes: Option<usize>,
    pub(crate) max_response_message_bytes: Option<usize>,
}

/// The method configs by request path, built once per client.
#[derive(Debug, Default)]
pub(crate) struct MethodTable {
    /// `/service/method` and `/service/` (service-wide).
    by_path: HashMap<String, Arc<MethodSettings>>,
    /// The `{}` entry.
    default: Option<Arc<MethodSettings>>,
}

impl MethodTable {
    /// The table of `config`'s method configs, their retry policies sharing `throttle`; `None`
    /// when it has none.
    pub(crate) fn build(
        config: &ServiceConfig,
        throttle: Option<&Arc<Throttle>>,
    ) -> Result<Option<Self>, Error> {
        if config.method_configs.is_empty() {
            return Ok(None);
        }
        let mut table = Self::default();
        for method in &config.method_configs {
            let retry = match (&method.retry_policy, &method.hedging_policy) {
                (_, Some(hedging)) => Some(Arc::new(
                    RetryPolicy::hedging(hedging)?.with_throttle(throttle.cloned()),
                )),
                (None, None) => None,
                // `maxAttempts: 1` turns the client's retries off for these methods.
                (Some(section), None) => Some(Arc::new(
                    RetryPolicy::from_config(Some(section))?
                        .map_or_else(RetryPolicy::off, |p| p.with_throttle(throttle.cloned())),
                )),
            };
            let settings = Arc::new(MethodSettings {
                timeout: method.timeout,
                wait_for_ready: method.wait_for_ready,
                retry,
                max_request_message_bytes: method.max_request_message_bytes,
                max_response_message_bytes: method.max_response_message_bytes,
            });
            for name in &method.names {
                match (&name.service, &name.method) {
                    (Some(service), Some(m)) => {
                        table
                            .by_path
                            .insert(format!("/{service}/{m}"), settings.clone());
                    }
                    (Some(service), None) => {
                        table
                            .by_path
                            .insert(format!("/{service}/"), settings.clone());
                    }
                    (None, _) => table.default = Some(settings.clone()),
                }
            }
        }
        Ok(Some(table))
    }

    /// The settings of the RPC at `path` (`/user.User/GetUserInfo`): its method's, else its
    /// service's, else the default ones. Allocation-free.
    pub(crate) fn lookup(&self, path: &str) -> Option<&MethodSettings> {
        if let Some(s) = self.by_path.get(path) {
            return Some(s);
        }
        if let Some(slash) = path.rfind('/').filter(|&i| i > 0) {
            if let Some(s) = path.get(..=slash).and_then(|p| self.by_path.get(p)) {
                return Some(s);
            }
        }
        self.default.as_deref()
    }
}

#[cfg(test)]
mod tests;
