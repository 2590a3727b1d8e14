//! What a delivery carries reaches the application's message.

use bytes::Bytes;
use cassini_protocol::Delivery;

use super::*;

#[test]
fn a_delivery_keeps_its_id_reply_topic_and_retained_flag() {
    let message = Message::from(Delivery {
        sequence: 4,
        topic: "svc.time".into(),
        headers: vec![("k".into(), "v".into())],
        payload: Bytes::from_static(b"now?"),
        message_id: Some(99),
        reply_to: Some("_INBOX.0123456789abcdef.1".into()),
        retained: true,
        redelivered: false,
    });
    assert_eq!(message.topic(), "svc.time");
    assert_eq!(message.sequence(), 4);
    assert_eq!(message.message_id(), Some(99));
    assert_eq!(message.reply_to(), Some("_INBOX.0123456789abcdef.1"));
    assert!(message.is_retained());
    assert_eq!(message.header("k"), Some("v"));
}

#[test]
fn a_plain_delivery_is_neither_a_request_nor_retained() {
    let message = Message::from(Delivery {
        sequence: 1,
        topic: "a".into(),
        headers: vec![],
        payload: Bytes::new(),
        message_id: None,
        reply_to: None,
        retained: false,
        redelivered: false,
    });
    assert_eq!(message.message_id(), None);
    assert_eq!(message.reply_to(), None);
    assert!(!message.is_retained());
}
