//! Micro-benchmarks of the frame codec: encoding a publish, decoding it, and encoding the
//! delivery the broker writes per subscriber, at a small and a large payload.
//! Run with `cargo bench -p cassini-protocol --bench codec`.

#![allow(missing_docs)]

use bytes::{Bytes, BytesMut};
use cassini_protocol::codec::{encode_delivery, DeliveryRef, DEFAULT_MAX_FRAME_BYTES};
use cassini_protocol::{encode_frame, Frame, FrameDecoder, Publish};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

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

fn codec(c: &mut Criterion) {
    for size in [64usize, 16 * 1024] {
        let mut group = c.benchmark_group(format!("codec/{size}B"));
        group.throughput(Throughput::Elements(1));
        let frame = publish(size);
        let mut buf = BytesMut::with_capacity(size + 128);
        group.bench_function("encode publish", |b| {
            b.iter(|| {
                buf.clear();
                encode_frame(&frame, &mut buf, DEFAULT_MAX_FRAME_BYTES).ok();
                buf.len()
            })
        });

        let mut encoded = BytesMut::new();
        encode_frame(&frame, &mut encoded, DEFAULT_MAX_FRAME_BYTES).ok();
        let decoder = FrameDecoder::default();
        group.bench_function("decode publish", |b| {
            b.iter_batched(
                || encoded.clone(),
                |mut input| decoder.decode(&mut input).ok().flatten(),
                BatchSize::SmallInput,
            )
        });

        let payload = Bytes::from(vec![0x42; size]);
        let headers = Vec::new();
        let delivery = DeliveryRef {
            sequence: 12_345,
            topic: "sensors.site-7.temperature",
            headers: &headers,
            payload: &payload,
            message_id: None,
            reply_to: None,
            retained: false,
            redelivered: false,
        };
        group.bench_function("encode delivery", |b| {
            b.iter(|| {
                buf.clear();
                encode_delivery(&delivery, &mut buf, DEFAULT_MAX_FRAME_BYTES).ok();
                buf.len()
            })
        });
        group.finish();
    }
}

criterion_group!(benches, codec);
criterion_main!(benches);
