//! What the example programs share: the generated code of `proto/user.proto`.

/// Package `user`: the demo `User` service, client and server.
#[allow(missing_docs, unreachable_pub, clippy::all, rust_2018_idioms)]
pub mod user {
    tonic::include_proto!("user");
}
