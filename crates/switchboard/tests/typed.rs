//! A gateway-style typed client over the balanced channel.

use std::time::Duration;

use anyhow::Result;
use switchboard::{CallOptions, Client, ClientConfig};
use switchboard_testkit::TestServer;
use switchboard_testkit::proto::user::{
    GetUserInfoRequest, RegisterReply, RegisterRequest, UserInfo,
};
use tonic::Code;

switchboard::typed_client! {
    /// The user.rpc service.
    pub struct User(switchboard_testkit::proto::user::user_client::UserClient) {
        register(RegisterRequest) -> RegisterReply;
        get_user_info(GetUserInfoRequest) -> UserInfo;
    }
}

#[tokio::test]
async fn typed_methods_take_shared_references_and_per_call_options() -> Result<()> {
    let a = TestServer::start("a").await?;
    let config = ClientConfig::endpoints([a.addr().to_string()]);
    let users = User::new(&Client::connect(config).await?);

    // `&self` methods: one client shared by concurrent calls.
    let (x, y) = tokio::join!(
        users.get_user_info(GetUserInfoRequest { id: 7 }),
        users.register(RegisterRequest::default()),
    );
    assert_eq!(x?.instance, "a");
    assert_eq!(y?.instance, "a");

    // A per-call deadline shorter than the server's delay.
    a.set_delay(Duration::from_millis(500));
    let quick = users.with(CallOptions::new().timeout(Duration::from_millis(100)));
    let status = quick
        .get_user_info(GetUserInfoRequest { id: 1 })
        .await
        .expect_err("slower than the deadline");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    // The original keeps the client's default deadline (2 s).
    assert_eq!(
        users
            .get_user_info(GetUserInfoRequest { id: 1 })
            .await?
            .instance,
        "a"
    );

    let options = CallOptions::new()
        .metadata("x-request-id", "42")?
        .wait_for_ready(true);
    assert_eq!(
        users
            .with(options)
            .get_user_info(GetUserInfoRequest { id: 1 })
            .await?
            .instance,
        "a"
    );
    assert!(CallOptions::new().metadata("bad key", "v").is_err());
    assert!(CallOptions::new().metadata("k", "line\nbreak").is_err());
    Ok(())
}
