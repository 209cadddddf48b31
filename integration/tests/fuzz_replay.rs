//! The fuzz targets in every test run: the kept corpus (`integration/fuzz/corpus/<target>`,
//! crashes found by campaigns among it, kept as regression cases) replayed, and a bounded
//! number of structured-random cases per target (mutations of valid encodings, and random
//! bytes). A panic names the target and the input, written to a file to replay.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

use actormesh_integration::fuzz::{seeds, Cases, TARGETS};

/// Mutations per seed, and random inputs, per target.
const MUTATIONS: usize = 1_500;
const RANDOM: usize = 300;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut out: Vec<(String, Vec<u8>)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.path().display().to_string(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Runs `f` on `input`; on a panic, keeps the input and fails naming it.
fn run(target: &str, what: &str, f: fn(&[u8]), input: &[u8]) {
    if catch_unwind(AssertUnwindSafe(|| f(input))).is_err() {
        let file =
            std::env::temp_dir().join(format!("am-fuzz-crash-{target}-{}", std::process::id()));
        std::fs::write(&file, input).unwrap();
        panic!(
            "fuzz target {target} panicked on {what}; the input is in {}",
            file.display()
        );
    }
}

#[test]
fn every_target_survives_its_corpus_and_bounded_random_cases() {
    // The panics caught above would print their messages; keep the run quiet.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut counts = Vec::new();
    for (i, (name, f)) in TARGETS.iter().enumerate() {
        let seeds = seeds(name);
        assert!(!seeds.is_empty(), "target {name} has no seed");
        let mut n = 0;
        for (path, input) in corpus(name) {
            run(name, &path, *f, &input);
            n += 1;
        }
        let mut cases = Cases::new(0x5eed_0000 + i as u64);
        for seed in &seeds {
            run(name, "a seed", *f, seed);
            for k in 0..MUTATIONS {
                let input = cases.mutate(seed);
                run(name, &format!("mutation {k} of a seed"), *f, &input);
            }
            n += 1 + MUTATIONS;
        }
        for k in 0..RANDOM {
            let input = cases.bytes(256);
            run(name, &format!("random input {k}"), *f, &input);
        }
        counts.push((name, n + RANDOM));
    }
    std::panic::set_hook(hook);
    eprintln!("fuzz replay: {counts:?}");
}
