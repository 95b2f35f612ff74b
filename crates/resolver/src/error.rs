//! The resolver's error type: opaque, with checks for what callers act on.

use std::error::Error as StdError;
use std::fmt;

type BoxError = Box<dyn StdError + Send + Sync>;

/// An error from a resolver, the registrar or their configuration.
///
/// Inspect it with [`Error::is_config`], [`Error::is_timeout`] and [`Error::is_unavailable`];
/// [`std::error::Error::source`] gives the underlying cause (an etcd or transport error).
pub struct Error {
    kind: Kind,
    message: String,
    source: Option<BoxError>,
    /// The message already says what the source means: `Display` leaves the source out (it
    /// stays available through `source()`).
    described: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A configuration or argument that cannot work.
    Config,
    /// A bounded wait ran out.
    Timeout,
    /// etcd could not be reached or refused the request.
    Unavailable,
    /// The background task is gone.
    Closed,
}

impl Error {
    pub(crate) fn new(kind: Kind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
            described: false,
        }
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::new(Kind::Config, message)
    }

    pub(crate) fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// Attaches the source that the message already describes: `Display` shows the message
    /// alone.
    pub(crate) fn with_described_source(mut self, source: impl Into<BoxError>) -> Self {
        self.described = true;
        self.with_source(source)
    }

    /// The configuration or an argument is invalid; retrying will not help.
    pub fn is_config(&self) -> bool {
        self.kind == Kind::Config
    }

    /// A bounded wait (connect, request, registration) ran out.
    pub fn is_timeout(&self) -> bool {
        self.kind == Kind::Timeout
    }

    /// etcd could not be reached or answered with an error.
    pub fn is_unavailable(&self) -> bool {
        self.kind == Kind::Unavailable
    }

    /// The background task the handle talked to has stopped.
    pub fn is_closed(&self) -> bool {
        self.kind == Kind::Closed
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind).field("message", &self.message);
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = self.source.as_ref().filter(|_| !self.described) {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}
