//! The MQTT decoder's fuzz corpus (`fuzz/corpus/mqtt_packets`), replayed through the fuzz
//! target's checks, and seeded random mutations of it: no panic, the same packets however the
//! bytes are cut.

#![allow(clippy::expect_used, clippy::panic)] // A failed check in a test panics on purpose.

#[path = "support/fuzz_checks.rs"]
mod fuzz_checks;

use std::fs;
use std::path::Path;

use fuzz_checks::{check_packet_decoder, StreamEnd};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn corpus() -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/mqtt_packets");
    let mut paths: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("cannot read the corpus {}: {err}", dir.display()))
        .map(|entry| entry.expect("a readable corpus entry").path())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "an empty corpus tests nothing");
    paths
        .iter()
        .map(|path| fs::read(path).expect("a readable seed"))
        .collect()
}

#[test]
fn the_corpus_decodes_the_same_however_it_is_cut() {
    let outcomes: Vec<_> = corpus()
        .iter()
        .map(|seed| check_packet_decoder(seed))
        .collect();
    assert!(
        outcomes.iter().any(|outcome| outcome.packets.len() >= 3),
        "the seeds should hold whole sessions of packets"
    );
    assert!(
        outcomes
            .iter()
            .any(|outcome| matches!(outcome.end, StreamEnd::Failed(_))),
        "the seeds should reach a refusal"
    );
}

#[test]
fn mutated_seeds_never_panic_and_decode_the_same_however_cut() {
    let seeds = corpus();
    let mut rng = StdRng::seed_from_u64(0x6d71_7474);
    for _ in 0..3000 {
        let mut input = seeds[rng.random_range(0..seeds.len())].clone();
        for _ in 0..rng.random_range(1..6) {
            if input.is_empty() {
                break;
            }
            let at = rng.random_range(0..input.len());
            match rng.random_range(0..3) {
                0 => input[at] = rng.random(),
                1 => {
                    input.remove(at);
                }
                _ => input.insert(at, rng.random()),
            }
        }
        check_packet_decoder(&input);
    }
}
