//! Arbitrary bytes fed to the decoder in chunks chosen by the input's first bytes: the frames,
//! and how the stream ends, must be the same as when the stream is decoded in one piece.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, reason = "each target runs one of the shared checks")]
#[path = "../../crates/protocol/tests/support/fuzz_checks.rs"]
mod fuzz_checks;

fuzz_target!(|input: &[u8]| {
    fuzz_checks::check_frame_decoder_split(input);
});
