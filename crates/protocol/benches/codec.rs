//! Micro-benchmarks of the frame codec: encoding and decoding a publish and the delivery the
//! broker writes per subscriber, at a small and a large payload, each by the codec (hand-written
//! for these frames) and by the reference rmp-serde path, so that one run gives their ratio.
//! Run with `cargo bench -p cassini-protocol --bench codec`.

#![allow(missing_docs)]

use bytes::{Bytes, BytesMut};
use cassini_protocol::codec::{reference, DEFAULT_MAX_FRAME_BYTES, LENGTH_PREFIX_BYTES};
use cassini_protocol::{decode_frame, encode_frame, Delivery, Frame, Publish};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn publish(size: usize) -> Frame {
    Frame::Publish(Publish {
        topic: "sensors.site-7.temperature".into(),
        headers: Vec::new(),
        payload: Bytes::from(vec![0x42; size]),
        message_id: None,
        reply_to: None,
        retain: false,
        to_session: None,
        ack: false,
    })
}

fn delivery(size: usize) -> Frame {
    Frame::Message(Delivery {
        sequence: 12_345,
        topic: "sensors.site-7.temperature".into(),
        headers: Vec::new(),
        payload: Bytes::from(vec![0x42; size]),
        message_id: None,
        reply_to: None,
        retained: false,
        redelivered: false,
    })
}

fn codec(c: &mut Criterion) {
    for size in [64usize, 16 * 1024] {
        let mut group = c.benchmark_group(format!("codec/{size}B"));
        group.throughput(Throughput::Elements(1));
        for (name, frame) in [("publish", publish(size)), ("delivery", delivery(size))] {
            let mut buf = BytesMut::with_capacity(size + 128);
            group.bench_function(format!("encode {name}"), |b| {
                b.iter(|| {
                    buf.clear();
                    encode_frame(&frame, &mut buf, DEFAULT_MAX_FRAME_BYTES).ok();
                    buf.len()
                })
            });
            group.bench_function(format!("encode {name} (reference)"), |b| {
                b.iter(|| {
                    buf.clear();
                    reference::encode_frame(&frame, &mut buf, DEFAULT_MAX_FRAME_BYTES).ok();
                    buf.len()
                })
            });

            let mut encoded = BytesMut::new();
            encode_frame(&frame, &mut encoded, DEFAULT_MAX_FRAME_BYTES).ok();
            group.bench_function(format!("decode {name}"), |b| {
                b.iter(|| decode_frame(&encoded, DEFAULT_MAX_FRAME_BYTES).ok())
            });
            let body = &encoded[LENGTH_PREFIX_BYTES..];
            group.bench_function(format!("decode {name} (reference)"), |b| {
                b.iter(|| reference::decode_body(body).ok())
            });
        }
        group.finish();
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
