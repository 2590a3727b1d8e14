//! The committed fuzz corpus, replayed under plain `cargo test`: every seed and every input
//! ever saved to `fuzz/corpus/` keeps passing the same checks the fuzz targets run.

#![allow(clippy::expect_used, clippy::panic)] // A failed check in a test panics on purpose.

#[path = "support/fuzz_checks.rs"]
mod fuzz_checks;

use std::collections::BTreeSet;
use std::fs;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use cassini_protocol::{DecodeError, Frame};
use fuzz_checks::StreamEnd;

/// Every file in `fuzz/corpus/<target>`, in a stable order. Panics if there is none, so that a
/// moved or emptied corpus fails the test instead of passing it vacuously.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(target);
    let mut paths: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("cannot read the corpus {}: {err}", dir.display()))
        .map(|entry| entry.expect("a readable corpus entry").path())
        .filter(|path| path.is_file())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "the corpus {} is empty", dir.display());
    paths
        .into_iter()
        .map(|path| {
            let bytes = fs::read(&path).expect("a readable corpus file");
            (path, bytes)
        })
        .collect()
}

/// Runs `check` on every input of the target's corpus and fails naming every file that failed.
fn replay<T>(target: &str, check: impl Fn(&[u8]) -> T) -> Vec<T> {
    let mut results = Vec::new();
    let mut failed = Vec::new();
    for (path, bytes) in corpus(target) {
        match std::panic::catch_unwind(AssertUnwindSafe(|| check(&bytes))) {
            Ok(result) => results.push(result),
            Err(_) => failed.push(path.display().to_string()),
        }
    }
    assert!(failed.is_empty(), "{target} check failed on {failed:#?}");
    results
}

#[test]
fn frame_decoder_corpus_passes_the_decoder_checks() {
    let outcomes = replay("frame_decoder", fuzz_checks::check_frame_decoder);
    let kinds: BTreeSet<&str> = outcomes
        .iter()
        .flat_map(|outcome| outcome.frames.iter().map(Frame::kind))
        .collect();
    assert!(
        kinds.len() >= 5,
        "the seeds should hold valid frames of several kinds, found {kinds:?}"
    );
    let reached = |ending: &str, wanted: fn(&StreamEnd) -> bool| {
        assert!(
            outcomes.iter().any(|outcome| wanted(&outcome.end)),
            "no seed ends with {ending}"
        );
    };
    let most_headers = outcomes
        .iter()
        .flat_map(|outcome| outcome.frames.iter())
        .filter_map(|frame| match frame {
            Frame::Publish(publish) => Some(publish.headers.len()),
            Frame::Message(delivery) => Some(delivery.headers.len()),
            _ => None,
        })
        .max()
        .unwrap_or(0);
    assert_eq!(
        most_headers,
        cassini_protocol::codec::MAX_DECODED_HEADERS + 1,
        "the seeds should hold a header list longer than the decoder keeps"
    );
    reached(
        "a partial frame",
        |end| matches!(end, StreamEnd::NeedsMore { leftover } if *leftover > 0),
    );
    reached("a frame too large", |end| {
        matches!(end, StreamEnd::Failed(DecodeError::FrameTooLarge { .. }))
    });
    reached("an empty frame", |end| {
        matches!(end, StreamEnd::Failed(DecodeError::EmptyFrame))
    });
    reached("a malformed body", |end| {
        matches!(end, StreamEnd::Failed(DecodeError::Malformed(_)))
    });
    reached("trailing bytes", |end| {
        matches!(end, StreamEnd::Failed(DecodeError::TrailingBytes(_)))
    });
}

#[test]
fn frame_decoder_split_corpus_decodes_the_same_in_chunks_and_whole() {
    replay(
        "frame_decoder_split",
        fuzz_checks::check_frame_decoder_split,
    );
}

#[test]
fn topic_corpus_parses_and_matches_like_the_reference() {
    let matches = replay("topic", fuzz_checks::check_topic);
    assert!(
        matches.contains(&Some(true)) && matches.contains(&Some(false)),
        "the seeds should hold a filter that matches its name and one that does not"
    );
    assert!(
        matches.contains(&None),
        "the seeds should hold invalid topics"
    );
}
