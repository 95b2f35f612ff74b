//! Errors of building a balancer.

use std::fmt;

/// A balancer could not be built: an invalid option or TLS setting.
#[derive(Debug)]
pub struct Error {
    kind: Kind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Config,
    Tls,
}

impl Error {
    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self {
            kind: Kind::Config,
            message: message.into(),
            source: None,
        }
    }

    #[cfg(feature = "tls")]
    pub(crate) fn tls(e: crate::connect::tls::TlsError) -> Self {
        Self {
            kind: Kind::Tls,
            message: "invalid TLS settings".into(),
            source: Some(Box::new(e)),
        }
    }

    /// An option had an invalid value.
    pub fn is_config(&self) -> bool {
        self.kind == Kind::Config
    }

    /// The TLS settings could not be used.
    pub fn is_tls(&self) -> bool {
        self.kind == Kind::Tls
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
