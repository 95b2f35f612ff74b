use http_body_util::BodyExt as _;

use super::*;
use crate::ClientConfig;

fn policy(yaml: &str) -> Result<Option<RetryPolicy>, Error> {
    let config = ClientConfig::from_yaml(&format!("Endpoints: [127.0.0.1:1]\n{yaml}"))?;
    RetryPolicy::from_config(config.retry.as_ref())
}

fn unavailable() -> Outcome {
    Outcome::Status(Code::Unavailable, Pushback::Absent)
}

#[test]
fn defaults_retry_unavailable_three_times_with_growing_random_backoff() {
    let p = policy("").expect("valid").expect("on by default");
    assert_eq!(p.max_attempts, 3);
    let mut a = Attempts::new(&p);
    assert_eq!(
        a.after(unavailable(), 0.5),
        Next::Retry(Duration::from_millis(50))
    );
    assert_eq!(
        a.after(unavailable(), 0.5),
        Next::Retry(Duration::from_millis(100))
    );
    assert_eq!(a.after(unavailable(), 0.5), Next::Done(Done::Exhausted));

    let mut a = Attempts::new(&p);
    let other = Outcome::Status(Code::InvalidArgument, Pushback::Absent);
    assert_eq!(a.after(other, 0.5), Next::Done(Done::NotRetryable));
    let mut a = Attempts::new(&p);
    assert_eq!(
        a.after(Outcome::Committed, 0.5),
        Next::Done(Done::Succeeded)
    );
    let ok = Outcome::Status(Code::Ok, Pushback::Absent);
    assert_eq!(a.after(ok, 0.5), Next::Done(Done::Succeeded));
    assert_eq!(a.after(Outcome::Other, 0.5), Next::Done(Done::NotRetryable));
}

#[test]
fn the_backoff_bound_grows_by_the_multiplier_up_to_the_cap() {
    let p = policy(
        "Retry: {MaxAttempts: 9, InitialBackoff: 100ms, MaxBackoff: 500ms, BackoffMultiplier: 3}",
    )
    .expect("valid")
    .expect("on");
    assert_eq!(p.max_attempts, MAX_ATTEMPTS, "capped as A6 says");
    let mut a = Attempts::new(&p);
    let delays: Vec<_> = (0..5).map(|_| a.after(unavailable(), 1.0)).collect();
    let ms = Duration::from_millis;
    assert_eq!(
        delays,
        [
            Next::Retry(ms(100)),
            Next::Retry(ms(300)),
            Next::Retry(ms(500)),
            Next::Retry(ms(500)),
            Next::Done(Done::Exhausted)
        ]
    );
    let mut a = Attempts::new(&p);
    assert_eq!(a.after(unavailable(), 0.0), Next::Retry(Duration::ZERO));
}

#[test]
fn pushback_sets_the_delay_and_restarts_the_backoff_or_stops() {
    let p = policy("Retry: {MaxAttempts: 5}")
        .expect("valid")
        .expect("on");
    let mut a = Attempts::new(&p);
    assert_eq!(
        a.after(unavailable(), 1.0),
        Next::Retry(Duration::from_millis(100))
    );
    assert_eq!(
        a.after(unavailable(), 1.0),
        Next::Retry(Duration::from_millis(200))
    );
    let wait = Outcome::Status(Code::Unavailable, Pushback::Wait(Duration::from_secs(7)));
    assert_eq!(a.after(wait, 0.0), Next::Retry(Duration::from_secs(7)));
    assert_eq!(
        a.after(unavailable(), 1.0),
        Next::Retry(Duration::from_millis(100))
    );

    let mut a = Attempts::new(&p);
    let stop = Outcome::Status(Code::Unavailable, Pushback::Stop);
    assert_eq!(a.after(stop, 0.5), Next::Done(Done::PushbackStop));

    let mut headers = HeaderMap::new();
    assert_eq!(Pushback::of(&headers), Pushback::Absent);
    for (value, expected) in [
        ("250", Pushback::Wait(Duration::from_millis(250))),
        ("-1", Pushback::Stop),
        ("soon", Pushback::Stop),
    ] {
        headers.insert(PUSHBACK, HeaderValue::from_static(value));
        assert_eq!(Pushback::of(&headers), expected, "{value}");
    }
}

#[test]
fn throttling_stops_retries_at_half_the_tokens_and_successes_refill() {
    let p = policy("Retry: {MaxAttempts: 5, Throttling: {MaxTokens: 4, TokenRatio: 0.5}}")
        .expect("valid")
        .expect("on");
    // 4 tokens: the first failure leaves 3 (> 2, retried), the second 2 (throttled).
    let mut a = Attempts::new(&p);
    assert!(matches!(a.after(unavailable(), 0.0), Next::Retry(_)));
    assert_eq!(a.after(unavailable(), 0.0), Next::Done(Done::Throttled));
    // A non-retryable failure takes no token; three successes give 1.5 back: 3.5 tokens,
    // and a failure leaves 2.5.
    let mut a = Attempts::new(&p);
    let other = Outcome::Status(Code::NotFound, Pushback::Absent);
    assert_eq!(a.after(other, 0.0), Next::Done(Done::NotRetryable));
    for _ in 0..3 {
        p.account(Outcome::Committed);
    }
    let mut a = Attempts::new(&p);
    assert!(matches!(a.after(unavailable(), 0.0), Next::Retry(_)));
    // Successes never overfill the bucket.
    for _ in 0..100 {
        p.account(Outcome::Committed);
    }
    assert_eq!(
        p.throttle
            .as_ref()
            .map(|t| t.tokens.load(Ordering::Relaxed)),
        Some(4000)
    );
}

#[test]
fn the_retry_section_reads_names_numbers_and_snake_case() {
    let p = policy(
        "retry:\n  max_attempts: 4\n  initial_backoff: 0.05s\n  max_backoff: 2000\n  backoff_multiplier: 1.5\n  retryable_status_codes: [unavailable, 8, ABORTED]\n",
    )
    .expect("valid")
    .expect("on");
    assert_eq!(p.max_attempts, 4);
    assert_eq!(p.initial_backoff, Duration::from_millis(50));
    assert_eq!(p.max_backoff, Duration::from_secs(2));
    assert_eq!(p.multiplier, 1.5);
    for code in [Code::Unavailable, Code::ResourceExhausted, Code::Aborted] {
        assert!(p.retries(code), "{code:?}");
    }
    assert!(!p.retries(Code::Internal));
    let json = ClientConfig::from_json(
        r#"{"Endpoints": ["127.0.0.1:1"], "Retry": {"RetryableStatusCodes": ["INTERNAL", 14]}}"#,
    )
    .expect("valid");
    let p = RetryPolicy::from_config(json.retry.as_ref())
        .expect("valid")
        .expect("on");
    assert!(p.retries(Code::Internal) && p.retries(Code::Unavailable));
    assert!(
        policy("Retry: {MaxAttempts: 1}").expect("valid").is_none(),
        "1 turns it off"
    );
}

#[test]
fn invalid_retry_settings_are_refused_naming_the_field() {
    for (yaml, field) in [
        ("Retry: {MaxAttempts: 0}", "Retry.MaxAttempts"),
        ("Retry: {InitialBackoff: 0}", "Retry.InitialBackoff"),
        ("Retry: {MaxBackoff: 0s}", "Retry.MaxBackoff"),
        ("Retry: {BackoffMultiplier: 0}", "Retry.BackoffMultiplier"),
        ("Retry: {BackoffMultiplier: -2}", "Retry.BackoffMultiplier"),
        (
            "Retry: {RetryableStatusCodes: []}",
            "Retry.RetryableStatusCodes",
        ),
        (
            "Retry: {RetryableStatusCodes: [UNAVAILBLE]}",
            "\"UNAVAILBLE\"",
        ),
        ("Retry: {RetryableStatusCodes: [17]}", "\"17\""),
        (
            "Retry: {RetryableStatusCodes: [OK]}",
            "Retry.RetryableStatusCodes",
        ),
        (
            "Retry: {Throttling: {MaxTokens: -1, TokenRatio: 1}}",
            "Retry.Throttling.MaxTokens",
        ),
        (
            "Retry: {Throttling: {MaxTokens: 1001, TokenRatio: 1}}",
            "Retry.Throttling.MaxTokens",
        ),
        (
            "Retry: {Throttling: {MaxTokens: 10, TokenRatio: 0}}",
            "Retry.Throttling.TokenRatio",
        ),
    ] {
        let error = policy(yaml).expect_err(yaml);
        assert!(error.is_config(), "{yaml}: {error}");
        assert!(error.to_string().contains(field), "{yaml}: {error}");
    }
    let error = policy("Retry: {MaxTries: 3}").expect_err("unknown field");
    assert!(error.to_string().contains("MaxTries"), "{error}");
}

#[tokio::test]
async fn a_complete_small_body_is_kept_whole_and_an_open_one_is_recorded() {
    let body = Body::new(Full::new(Bytes::from_static(b"hello")));
    match buffer(body, 16).await {
        Buffered::Whole(bytes) => assert_eq!(bytes, "hello"),
        _ => panic!("a complete body within the limit"),
    }
    // One large message: whole, whatever the limit.
    let large = Bytes::from(vec![7u8; 100]);
    match buffer(Body::new(Full::new(large.clone())), 16).await {
        Buffered::Whole(bytes) => assert_eq!(bytes, large),
        _ => panic!("one frame, whole"),
    }
    // Many ready frames past the limit: a stream, sent once.
    let frames = (0..10).map(|_| Ok::<_, Status>(Frame::data(Bytes::from(vec![7u8; 10]))));
    let stream = http_body_util::StreamBody::new(tokio_stream::iter(frames));
    match buffer(Body::new(stream), 16).await {
        Buffered::Once(body) => {
            let read = body.collect().await.expect("readable").to_bytes();
            assert_eq!(read, vec![7u8; 100]);
        }
        _ => panic!("over the limit"),
    }
    // A body whose next frame is not ready (a client stream waiting for its caller).
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Status>>(4);
    tx.send(Ok(Frame::data(Bytes::from_static(b"first"))))
        .await
        .expect("open");
    let stream = http_body_util::StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    match buffer(Body::new(stream), 1024).await {
        Buffered::Open { head, len, rest } => {
            assert_eq!((head.len(), len), (1, 5));
            tx.send(Ok(Frame::data(Bytes::from_static(b"+second"))))
                .await
                .expect("open");
            drop(tx);
            let body = Tape::new(head, len, rest, 1024).body(0);
            let read = body.collect().await.expect("readable").to_bytes();
            assert_eq!(read, "first+second");
        }
        _ => panic!("not complete"),
    }
}
