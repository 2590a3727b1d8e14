//! The compatibility rule and the places where the protocol document had to say more: a newer
//! peer's extra trailing fields are ignored, a publish stream reset by the client ends only that
//! stream, and a subscription the broker ends is always named to the client.

use bytes::{BufMut, BytesMut};
use cassini_e2e::raw::{self, close_of, read_frame};
use cassini_e2e::TestBroker;
use cassini_protocol::{Frame, PROTOCOL_VERSION};

/// `body` with its 4-byte big-endian length prefix.
fn framed(body: &[u8]) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_u32(u32::try_from(body.len()).expect("small"));
    buf.put_slice(body);
    buf
}

#[tokio::test]
async fn a_hello_with_an_extra_trailing_field_is_welcomed() {
    let broker = TestBroker::start().await;
    let (_endpoint, connection) = broker.raw_connection("newer-client").await;
    let (mut send, mut recv) = connection.open_bi().await.expect("stream");
    // {"Hello": [1, nil, "raw", [], "extra"]}: a Hello as a newer client might send it, with a
    // fifth field this broker does not know.
    assert_eq!(PROTOCOL_VERSION, 1);
    let mut body = vec![0x81, 0xa5];
    body.extend_from_slice(b"Hello");
    body.extend_from_slice(&[0x95, 0x01, 0xc0, 0xa3]);
    body.extend_from_slice(b"raw");
    body.extend_from_slice(&[0x90, 0xa5]);
    body.extend_from_slice(b"extra");
    send.write_all(&framed(&body)).await.expect("hello");
    let mut buf = BytesMut::new();
    match read_frame(&mut recv, &mut buf).await {
        Some(Frame::Welcome(welcome)) => assert!(!welcome.resumed),
        other => panic!("expected Welcome, got {other:?}"),
    }
    // {"Ping": [5, true]}: a control request with an extra field is served too.
    send.write_all(&framed(&[
        0x81, 0xa4, b'P', b'i', b'n', b'g', 0x92, 0x05, 0xc3,
    ]))
    .await
    .expect("ping");
    match read_frame(&mut recv, &mut buf).await {
        Some(Frame::Pong(pong)) => assert_eq!(pong.nonce, 5),
        other => panic!("expected Pong, got {other:?}"),
    }
    broker.stop().await;
}

#[tokio::test]
async fn an_unknown_frame_type_is_still_malformed() {
    let broker = TestBroker::start().await;
    let (_endpoint, connection) = broker.raw_connection("confused-client").await;
    let (_welcome, mut send, _recv) = raw::hello(&connection, None).await.expect("welcome");
    // {"Teleport": [1]}
    let mut body = vec![0x81, 0xa8];
    body.extend_from_slice(b"Teleport");
    body.extend_from_slice(&[0x91, 0x01]);
    send.write_all(&framed(&body)).await.expect("frame");
    let (code, _) = close_of(&connection).await;
    assert_eq!(code, cassini_protocol::ErrorCode::MALFORMED_FRAME);
    broker.stop().await;
}
