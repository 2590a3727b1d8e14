//! Arbitrary UTF-8 as a filter and a name (split at the first newline): parsing never panics,
//! accepts exactly the documented rules, and matching agrees with a reference matcher.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, reason = "each target runs one of the shared checks")]
#[path = "../../crates/protocol/tests/support/fuzz_checks.rs"]
mod fuzz_checks;

fuzz_target!(|input: &[u8]| {
    fuzz_checks::check_topic(input);
});
