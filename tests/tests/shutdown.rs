//! Graceful shutdown: every client is told the broker is going away, with the reason and a
//! reconnect hint, then its connection is closed with `SERVER_SHUTTING_DOWN`.

use bytes::BytesMut;
use cassini_e2e::raw::{close_of, hello, read_frame};
use cassini_e2e::{eventually, TestBroker};
use cassini_protocol::{ErrorCode, Frame};

#[tokio::test]
async fn clients_hear_going_away_with_a_reconnect_hint_then_the_close_code() {
    let broker = TestBroker::start().await;
    let (_endpoint, connection) = broker.raw_connection("raw").await;
    let (_welcome, _send, mut recv) = hello(&connection, None).await.expect("welcome");
    let client = broker.client("client").await;

    let shutdown = {
        let handle = broker.broker.clone();
        tokio::spawn(async move { handle.shutdown("maintenance window").await })
    };
    let mut buf = BytesMut::new();
    match read_frame(&mut recv, &mut buf).await {
        Some(Frame::GoingAway(notice)) => {
            assert_eq!(notice.reason, "maintenance window");
            assert_eq!(notice.reconnect_after_ms, 2_000);
        }
        other => panic!("expected GoingAway, got {other:?}"),
    }
    let (code, reason) = close_of(&connection).await;
    assert_eq!(code, ErrorCode::SERVER_SHUTTING_DOWN);
    assert_eq!(reason, "maintenance window");

    let notice = eventually("the client kept the notice", || async {
        client.going_away()
    })
    .await;
    assert_eq!(notice.reason, "maintenance window");
    shutdown.await.expect("shutdown task");
    assert!(!broker.broker.is_running(), "the actor tree stopped");
}
