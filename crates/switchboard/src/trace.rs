//! W3C Trace Context (`traceparent`, `tracestate`) across RPCs, as go-zero's `Trace`
//! middlewares carry it: a client sends the caller's trace on, and a server runs each handler
//! in the trace its caller sent, so the calls a handler makes continue it.
//!
//! - **Client** ([`crate::Channel`], `Middlewares.Trace`, on by default): an RPC made inside a
//!   trace ([`TraceContext::current`]) whose request has no `traceparent` gets one: that trace
//!   with a new span id (the RPC's). `tracestate` goes along. Outside any trace it sends none, as
//!   go-zero's client with no tracer set up: traces start at entry points and servers.
//! - **Server** ([`crate::Server::from_config`], `Middlewares.Trace`): a call's handler runs
//!   in [`scope`] with the trace of its `traceparent` (a new span id, the server's), or a new
//!   trace if it has none or an invalid one.
//! - **A program's own entry point** (an HTTP gateway, say) puts the trace of its own request
//!   in scope with [`TraceContext::from_headers`] and [`scope`].
//!
//! This is propagation only: spans are `tracing`'s, and exporting them (OpenTelemetry, …) is
//! the program's to set up; the ids are in the server's call log (`trace_id`).
//!
//! # Examples
//!
//! ```
//! # async fn run() {
//! let incoming = http::HeaderMap::new(); // the gateway's HTTP request headers
//! let trace = switchboard::trace::TraceContext::from_headers(&incoming)
//!     .unwrap_or_else(switchboard::trace::TraceContext::root);
//! switchboard::trace::scope(trace, async {
//!     // RPCs made here through a switchboard Channel carry the trace on.
//! })
//! .await;
//! # }
//! ```

use std::future::Future;

use http::{HeaderMap, HeaderName, HeaderValue};

tokio::task_local! {
    static CURRENT: TraceContext;
}

/// A position in a trace: its id, the current span's id, its flags, and the vendors' state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace's id (16 bytes, not all zero).
    pub trace_id: [u8; 16],
    /// The current span's id (8 bytes, not all zero): the parent of the RPCs made from here.
    pub span_id: [u8; 8],
    /// The trace flags (`01`: sampled).
    pub flags: u8,
    /// `tracestate`, passed on unchanged.
    pub state: Option<HeaderValue>,
}

fn nonzero<const N: usize>() -> [u8; N] {
    loop {
        let bytes: [u8; N] = rand::random();
        if bytes.iter().any(|b| *b != 0) {
            return bytes;
        }
    }
}

fn hex(bytes: &[u8], out: &mut String) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

/// `bytes` in lowercase hex.
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(2 * bytes.len());
    hex(bytes, &mut out);
    out
}

fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != 2 * N || !text.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
    }
    out.iter().any(|b| *b != 0).then_some(out)
}

impl TraceContext {
    /// A new trace, sampled.
    pub fn root() -> Self {
        // One draw for both ids.
        let ids: [u8; 24] = nonzero();
        let (mut trace_id, mut span_id) = ([0; 16], [0; 8]);
        trace_id.copy_from_slice(&ids[..16]);
        span_id.copy_from_slice(&ids[16..]);
        if trace_id == [0; 16] {
            trace_id = nonzero();
        }
        if span_id == [0; 8] {
            span_id = nonzero();
        }
        Self {
            trace_id,
            span_id,
            flags: 1,
            state: None,
        }
    }

    /// The same trace, in a new span (a child of this one).
    pub fn child(&self) -> Self {
        Self {
            span_id: nonzero(),
            ..self.clone()
        }
    }

    /// The trace of these headers (`traceparent`, `tracestate`), if they carry a valid one
    /// (version `00`, or a later version read as `00` says to).
    pub fn from_headers(headers: &HeaderMap) -> Option<Self> {
        let parent = headers.get(&TRACEPARENT)?.to_str().ok()?.trim();
        let mut parts = parent.split('-');
        let version = parts.next()?;
        let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
        let rest = parts.next();
        if version.len() != 2 || version == "ff" || (version == "00" && rest.is_some()) {
            return None;
        }
        unhex::<1>(version).or((version == "00").then_some([0]))?;
        if flags.len() != 2 {
            return None;
        }
        Some(Self {
            trace_id: unhex(trace)?,
            span_id: unhex(span)?,
            flags: u8::from_str_radix(flags, 16).ok()?,
            state: headers.get(&TRACESTATE).cloned(),
        })
    }

    /// The `traceparent` value: `00-<trace id>-<span id>-<flags>`.
    pub fn traceparent(&self) -> String {
        let mut out = String::with_capacity(55);
        out.push_str("00-");
        hex(&self.trace_id, &mut out);
        out.push('-');
        hex(&self.span_id, &mut out);
        out.push('-');
        hex(&[self.flags], &mut out);
        out
    }

    /// The trace id in hex, as logs show it.
    pub fn trace_id_hex(&self) -> String {
        to_hex(&self.trace_id)
    }

    /// The trace the current task runs in, if any ([`scope`]).
    pub fn current() -> Option<Self> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Writes this context into `headers`.
    pub fn inject(&self, headers: &mut HeaderMap) {
        if let Ok(v) = HeaderValue::from_str(&self.traceparent()) {
            headers.insert(TRACEPARENT, v);
        }
        if let Some(state) = &self.state {
            headers.insert(TRACESTATE, state.clone());
        }
    }
}

/// Runs `future` in the trace `context`: RPCs it makes through a switchboard `Channel` carry
/// the trace on.
pub async fn scope<F: Future>(context: TraceContext, future: F) -> F::Output {
    CURRENT.scope(context, future).await
}

/// For the client: gives a request without `traceparent` the current trace's child. Outside
/// any trace it sends none, as go-zero's client does with no tracer set up: a trace starts
/// where a program's entry point or a server starts it.
pub(crate) fn propagate(headers: &mut HeaderMap) {
    // Inside a trace, unless the caller set its own.
    let Ok(context) =
        CURRENT.try_with(|current| (!headers.contains_key(&TRACEPARENT)).then(|| current.child()))
    else {
        return;
    };
    if let Some(context) = context {
        context.inject(headers);
    }
}

/// The W3C headers, named once.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(parent: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_str(parent).expect("ascii"));
        h
    }

    #[test]
    fn traceparent_reads_and_writes_as_w3c_says() {
        let h = headers("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let context = TraceContext::from_headers(&h).expect("valid");
        assert_eq!(context.flags, 1);
        assert_eq!(
            context.traceparent(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        // A later version with more fields is read as version 00.
        let h = headers("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra");
        assert!(TraceContext::from_headers(&h).is_some());
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert_eq!(TraceContext::from_headers(&headers(bad)), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn a_request_gets_the_current_traces_child_and_none_outside_a_trace() {
        let mut h = HeaderMap::new();
        propagate(&mut h);
        assert!(h.is_empty(), "{h:?}");
        assert_eq!(TraceContext::root().flags, 1);
        let parent = TraceContext {
            flags: 0,
            state: Some(HeaderValue::from_static("vendor=1")),
            ..TraceContext::root()
        };
        let sent = scope(parent.clone(), async {
            let mut h = HeaderMap::new();
            propagate(&mut h);
            h
        })
        .await;
        let child = TraceContext::from_headers(&sent).expect("propagated");
        assert_eq!(child.trace_id, parent.trace_id);
        assert_ne!(child.span_id, parent.span_id);
        assert_eq!((child.flags, child.state), (0, parent.state.clone()));
        // A caller's own traceparent stands, inside a trace too.
        let mut own = headers("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        propagate(&mut own);
        let own = scope(parent, async move {
            propagate(&mut own);
            own
        })
        .await;
        assert_eq!(
            own["traceparent"],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
    }
}
