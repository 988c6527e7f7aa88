//! Every input kept for a fuzz target (tests/fixtures/fuzz/<target>/:
//! what the fuzzer crashed on, `crash-*`, and a few seeds, `seed-*`; see
//! tests/fixtures/fuzz/SOURCES.md) goes through the same function as the
//! fuzz target (`pec_milter::fuzz_api`) and must not panic.

use std::path::Path;

use pec_milter::fuzz_api::TARGETS;

#[test]
fn fuzzer_inputs_do_not_panic() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    for (target, call) in TARGETS {
        let dir = root.join(target);
        let mut inputs: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.expect("entry").path())
            .filter(|p| p.is_file())
            .collect();
        inputs.sort();
        assert!(
            !inputs.is_empty(),
            "no regression inputs for fuzz target {target} in {}",
            dir.display()
        );
        for p in inputs {
            let data = std::fs::read(&p).expect("read");
            // A panic names the file in the test's output.
            eprintln!("{target}: {}", p.display());
            call(&data);
        }
    }
}

/// Every fuzz target has its regression directory and every directory its
/// target (a new target cannot be added without inputs, nor one dropped
/// with its findings left unreplayed).
#[test]
fn every_target_has_its_directory() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    let mut dirs: Vec<String> = std::fs::read_dir(&root)
        .expect("fixtures/fuzz")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.is_dir())
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut targets: Vec<String> = TARGETS.iter().map(|(t, _)| t.to_string()).collect();
    targets.sort();
    assert_eq!(dirs, targets);
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fuzz_targets");
    for t in &targets {
        assert!(
            fuzz.join(format!("{t}.rs")).is_file(),
            "fuzz/fuzz_targets/{t}.rs is missing"
        );
    }
}
