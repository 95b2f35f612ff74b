//! Gateway-style typed clients, like go-zero's `user.NewUser(zrpc.MustNewClient(c.UserRpc))`:
//! a cheap, clonable struct whose methods take `&self` and return the reply message;
//! `with(CallOptions)` gives a copy whose calls carry a deadline, metadata or wait-for-ready.
//!
//! [`typed_client!`](crate::typed_client) builds one over a tonic-generated client.
//!
//! # Examples
//!
//! ```ignore
//! switchboard::typed_client! {
//!     /// The user.rpc service.
//!     pub struct User(user_client::UserClient) {
//!         register(RegisterRequest) -> RegisterReply;
//!         get_user_info(GetUserInfoRequest) -> UserInfo;
//!     }
//! }
//!
//! let users = User::new(&switchboard::Client::connect(config).await?);
//! let info = users.get_user_info(GetUserInfoRequest { id: 1 }).await?;
//! let quick = users.with(CallOptions::new().timeout(Duration::from_millis(300)).metadata("x-user", "42")?);
//! let info = quick.get_user_info(GetUserInfoRequest { id: 1 }).await?;
//! ```

use std::time::Duration;

use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};

/// A request extension: this RPC is streaming (server-, client- or bidi-streaming), so the
/// client's default `Timeout`, which is for unary calls, does not apply to it; `StreamTimeout`
/// does, if set. Its own deadline, or its method's in the service config, applies either way.
///
/// ```
/// let mut request = tonic::Request::new(());
/// request.extensions_mut().insert(switchboard::Streaming);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Streaming;

/// A request extension: no default deadline for this RPC (its own `grpc-timeout`, if it sets
/// one, still applies). See [`CallOptions::no_default_timeout`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoDefaultTimeout;

/// Per-call options of a typed client (see [`typed_client!`](crate::typed_client)).
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    timeout: Option<Duration>,
    no_default_timeout: bool,
    wait_for_ready: Option<bool>,
    metadata: MetadataMap,
}

impl CallOptions {
    /// No options: the client's default deadline, no metadata.
    pub fn new() -> Self {
        Self::default()
    }

    /// This call's deadline, instead of the client's `Timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// No deadline for this call unless [`CallOptions::timeout`] sets one: the client's default
    /// `Timeout` does not apply.
    pub fn no_default_timeout(mut self) -> Self {
        self.no_default_timeout = true;
        self
    }

    /// Whether this call waits for a READY instance instead of failing while all have failed.
    pub fn wait_for_ready(mut self, enabled: bool) -> Self {
        self.wait_for_ready = Some(enabled);
        self
    }

    /// Adds an ASCII metadata entry (a request header). Invalid keys or values are refused.
    pub fn metadata(mut self, key: &str, value: &str) -> Result<Self, tonic::Status> {
        let key: AsciiMetadataKey = key.parse().map_err(|_| {
            tonic::Status::invalid_argument(format!("invalid metadata key {key:?}"))
        })?;
        let value: AsciiMetadataValue = value.parse().map_err(|_| {
            tonic::Status::invalid_argument(format!("invalid metadata value for {key}"))
        })?;
        self.metadata.append(key, value);
        Ok(self)
    }

    /// The request for `message` with these options.
    pub fn request<M>(&self, message: M) -> tonic::Request<M> {
        let mut request = tonic::Request::new(message);
        *request.metadata_mut() = self.metadata.clone();
        if let Some(timeout) = self.timeout {
            request.set_timeout(timeout);
        }
        if self.no_default_timeout {
            request.extensions_mut().insert(NoDefaultTimeout);
        }
        if let Some(w) = self.wait_for_ready {
            request
                .extensions_mut()
                .insert(switchboard_balancer::WaitForReady(w));
        }
        request
    }
}

/// Declares a typed client over a tonic-generated client: `Name::new(&client)`, one `&self`
/// method per unary RPC returning the reply message, and `with(CallOptions)` for a copy whose
/// calls carry those options.
///
/// `Name::over(channel)` builds one over any channel that tonic's clients take: the client's
/// [`Channel`](crate::Channel) wrapped in tower layers or a tonic interceptor, for example;
/// the type is then `Name<ThatChannel>`.
#[macro_export]
macro_rules! typed_client {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident($($client:ident)::+) {
            $( $method:ident($req:ty) -> $reply:ty; )+
        }
    ) => {
        $(#[$meta])*
        $vis struct $name<C = $crate::Channel> {
            inner: $($client)::+<C>,
            options: $crate::CallOptions,
        }

        impl<C: ::std::clone::Clone> ::std::clone::Clone for $name<C> {
            fn clone(&self) -> Self {
                Self {
                    inner: self.inner.clone(),
                    options: self.options.clone(),
                }
            }
        }

        impl<C> ::std::fmt::Debug for $name<C> {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_struct(stringify!($name))
                    .field("options", &self.options)
                    .finish_non_exhaustive()
            }
        }

        impl $name {
            /// A typed client over `client`'s balanced channel, its requests compressed as its
            /// `Compression` says.
            $vis fn new(client: &$crate::Client) -> Self {
                let channel = client.channel();
                let compression = channel.compression();
                let typed = Self::over(channel);
                match compression {
                    Some(c) => typed.send_compressed(c),
                    None => typed,
                }
            }
        }

        impl<C> $name<C>
        where
            C: ::tonic::client::GrpcService<::tonic::body::Body> + ::std::clone::Clone,
            C::Error: ::std::convert::Into<::tonic::codegen::StdError>,
            C::ResponseBody: ::tonic::codegen::Body<Data = ::tonic::codegen::Bytes>
                + ::std::marker::Send
                + 'static,
            <C::ResponseBody as ::tonic::codegen::Body>::Error:
                ::std::convert::Into<::tonic::codegen::StdError> + ::std::marker::Send,
        {
            /// A typed client over `channel`: the client's channel with tower layers or a
            /// tonic interceptor around it, for example.
            ///
            /// Message sizes are left to the channel's limits (`MaxRequestMessageBytes`,
            /// `MaxResponseMessageBytes`), not tonic's own; gzip-compressed responses are
            /// accepted.
            $vis fn over(channel: C) -> Self {
                Self {
                    inner: $($client)::+::new(channel)
                        .max_decoding_message_size(usize::MAX)
                        .max_encoding_message_size(usize::MAX)
                        .accept_compressed(::tonic::codec::CompressionEncoding::Gzip),
                    options: $crate::CallOptions::new(),
                }
            }

            /// This client, its requests compressed with `compression`.
            $vis fn send_compressed(self, compression: $crate::Compression) -> Self {
                Self {
                    inner: self.inner.send_compressed(compression.encoding()),
                    options: self.options,
                }
            }

            /// A copy whose calls carry `options` (deadline, metadata, wait-for-ready).
            $vis fn with(&self, options: $crate::CallOptions) -> Self {
                Self { inner: self.inner.clone(), options }
            }

            $(
                #[doc = concat!("Calls `", stringify!($method), "`: the reply message, or the call's status.")]
                $vis async fn $method(&self, request: $req) -> ::std::result::Result<$reply, ::tonic::Status> {
                    let mut inner = self.inner.clone();
                    inner
                        .$method(self.options.request(request))
                        .await
                        .map(::tonic::Response::into_inner)
                }
            )+
        }
    };
}
