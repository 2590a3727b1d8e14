//! A reply command's output becomes the reply; failures, hangs and floods become a reason.

#![allow(clippy::panic)] // A failed expectation in a test panics on purpose.

use super::*;

const LIMIT: usize = 1024;

#[test]
fn the_request_goes_in_and_the_output_comes_out() {
    let outcome = run("tr a-z A-Z", b"hello", LIMIT, TIME_LIMIT);
    assert_eq!(outcome, Outcome::Success(b"HELLO".to_vec()));
}

#[test]
fn a_failing_command_is_reported_with_what_it_printed() {
    match run("echo partial; exit 3", b"", LIMIT, TIME_LIMIT) {
        Outcome::Failed { reason, output } => {
            assert!(reason.contains("exit status: 3"), "{reason}");
            assert_eq!(output, b"partial\n");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn a_command_that_runs_too_long_is_killed_at_the_limit() {
    let started = Instant::now();
    match run("sleep 3", b"", LIMIT, Duration::from_millis(300)) {
        Outcome::Failed { reason, .. } => assert!(reason.contains("killed after 0.3s"), "{reason}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_background_process_holding_the_output_open_does_not_hang_the_reply() {
    let started = Instant::now();
    match run(
        "sleep 3 & echo started",
        b"",
        LIMIT,
        Duration::from_millis(300),
    ) {
        Outcome::Failed { reason, .. } => assert!(reason.contains("did not end"), "{reason}"),
        other => panic!("expected a failure, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn output_over_the_payload_limit_is_cut_and_reported() {
    match run("head -c 5000 /dev/zero", b"", LIMIT, TIME_LIMIT) {
        Outcome::Failed { reason, output } => {
            assert!(reason.contains("maximum payload of 1024 bytes"), "{reason}");
            assert_eq!(output.len(), LIMIT);
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn a_command_that_ignores_its_input_still_succeeds() {
    let input = vec![b'x'; 1 << 20];
    assert_eq!(
        run("echo ok", &input, LIMIT, TIME_LIMIT),
        Outcome::Success(b"ok\n".to_vec())
    );
}
