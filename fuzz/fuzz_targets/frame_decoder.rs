//! Arbitrary bytes as one stream: `FrameDecoder::decode` until it waits or fails, checked against
//! `decode_frame` at every step, and every decoded frame must encode and decode back equal.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, reason = "each target runs one of the shared checks")]
#[path = "../../crates/protocol/tests/support/fuzz_checks.rs"]
mod fuzz_checks;

fuzz_target!(|input: &[u8]| {
    fuzz_checks::check_frame_decoder(input);
});
