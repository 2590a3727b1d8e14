//! Sessions outlive a dropped connection, are resumed only by the identity that created them,
//! and expire when nobody comes back.

use std::time::Duration;

use cassini_broker::BrokerConfig;
use cassini_e2e::raw::{close_of, hello};
use cassini_e2e::TestBroker;
use cassini_protocol::{ErrorCode, SessionId};
use cassini_quic::server::ServerOptions;

async fn broker_with_expiry(expiry: Duration) -> TestBroker {
    let mut config = BrokerConfig::default();
    config.sessions.expiry = expiry;
    TestBroker::start_with(config, ServerOptions::default()).await
}

/// Opens a session as `name`, then drops the connection without a goodbye.
async fn abandoned_session(broker: &TestBroker, name: &str) -> SessionId {
    let (endpoint, connection) = broker.raw_connection(name).await;
    let (welcome, _send, _recv) = hello(&connection, None).await.expect("welcome");
    assert!(!welcome.resumed);
    assert_eq!(welcome.identity, name);
    connection.close(quinn::VarInt::from_u32(99), b"vanishing");
    endpoint.wait_idle().await;
    broker
        .wait_for_stats("connection gone", |s| s.connections == 0)
        .await;
    welcome.session_id
}

#[tokio::test]
async fn the_same_identity_resumes_its_session() {
    let broker = broker_with_expiry(Duration::from_secs(60)).await;
    let id = abandoned_session(&broker, "edge-1").await;
    assert_eq!(
        broker.stats().await.sessions,
        1,
        "the session outlives its connection"
    );
    let (_endpoint, connection) = broker.raw_connection("edge-1").await;
    let (welcome, _send, _recv) = hello(&connection, Some(id)).await.expect("welcome");
    assert!(welcome.resumed);
    assert_eq!(welcome.session_id, id);
    assert_eq!(broker.stats().await.sessions, 1);
    broker.stop().await;
}

#[tokio::test]
async fn another_identity_cannot_resume_a_session() {
    let broker = broker_with_expiry(Duration::from_secs(60)).await;
    let id = abandoned_session(&broker, "owner").await;
    let (_endpoint, thief) = broker.raw_connection("thief").await;
    assert!(hello(&thief, Some(id)).await.is_none());
    let (code, _) = close_of(&thief).await;
    assert_eq!(code, ErrorCode::SESSION_IDENTITY_MISMATCH);
    let (_endpoint, owner) = broker.raw_connection("owner").await;
    let (welcome, _send, _recv) = hello(&owner, Some(id)).await.expect("owner resumes");
    assert!(
        welcome.resumed,
        "the refused attempt left the session untouched"
    );
    broker.stop().await;
}

#[tokio::test]
async fn an_unknown_session_is_refused() {
    let broker = broker_with_expiry(Duration::from_secs(60)).await;
    let (_endpoint, connection) = broker.raw_connection("edge").await;
    assert!(hello(&connection, Some(SessionId([9; 16]))).await.is_none());
    let (code, _) = close_of(&connection).await;
    assert_eq!(code, ErrorCode::SESSION_NOT_FOUND);
    broker.stop().await;
}

#[tokio::test]
async fn a_newer_connection_takes_the_session_over() {
    let broker = broker_with_expiry(Duration::from_secs(60)).await;
    let (_first_endpoint, first) = broker.raw_connection("edge").await;
    let (welcome, _send, _recv) = hello(&first, None).await.expect("welcome");
    let (_second_endpoint, second) = broker.raw_connection("edge").await;
    let (resumed, _send2, _recv2) = hello(&second, Some(welcome.session_id))
        .await
        .expect("takeover");
    assert!(resumed.resumed);
    let (code, _) = close_of(&first).await;
    assert_eq!(code, ErrorCode::SESSION_TAKEN_OVER);
    broker
        .wait_for_stats("one connection, one session", |s| {
            s.connections == 1 && s.sessions == 1
        })
        .await;
    assert!(
        second.close_reason().is_none(),
        "the newer connection is not closed back"
    );
    broker.stop().await;
}

#[tokio::test]
async fn a_detached_session_expires() {
    let broker = broker_with_expiry(Duration::from_millis(200)).await;
    abandoned_session(&broker, "gone").await;
    broker
        .wait_for_stats("session expired", |s| s.sessions == 0 && s.subscribers == 0)
        .await;
    broker.stop().await;
}
