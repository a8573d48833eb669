//! Every fuzz target's seed corpus (`fuzz/corpus/TARGET/`) and every input
//! a fuzzer found a crash with (`fuzz/regressions/TARGET/`), replayed as
//! ordinary tests on the stable toolchain. A crash the fuzzer finds is
//! fixed and its input added to `fuzz/regressions/TARGET/`, so it stays
//! fixed.

use std::path::Path;

use vswitch_core::fuzzing::TARGETS;

fn replay(dir: &Path, run: fn(&[u8])) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    let mut n = 0;
    for e in entries.flatten() {
        let data = std::fs::read(e.path()).expect("read an input");
        let outcome = std::panic::catch_unwind(|| run(&data));
        assert!(outcome.is_ok(), "{} fails", e.path().display());
        n += 1;
    }
    n
}

#[test]
fn every_seed_and_every_past_crash_passes() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    for (name, run) in TARGETS {
        let seeds = replay(&fuzz.join("corpus").join(name), *run);
        assert!(seeds > 0, "fuzz target {name} has no seed corpus in fuzz/corpus/{name}");
        replay(&fuzz.join("regressions").join(name), *run);
        assert!(fuzz.join("fuzz_targets").join(format!("{name}.rs")).exists(), "fuzz/fuzz_targets/{name}.rs");
    }
}
