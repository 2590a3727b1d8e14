//! Arbitrary bytes as an MQTT connection's packets (the first byte picks the version, the second
//! how the bytes arrive): the gateway's decoder never panics and reads the same packets however
//! the bytes are cut.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, reason = "the target runs one of the shared checks")]
#[path = "../../crates/mqtt/tests/support/fuzz_checks.rs"]
mod fuzz_checks;

fuzz_target!(|input: &[u8]| {
    fuzz_checks::check_packet_decoder(input);
});
