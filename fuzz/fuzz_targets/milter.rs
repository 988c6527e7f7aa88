//! The milter's header and body callbacks turned into the message and its
//! facts (milter::read_callbacks); the input is split at NUL bytes.
//! Any bytes in, never a panic: pec_milter::fuzz_api::milter (the same function
//! tests/fuzz_regressions.rs replays tests/fixtures/fuzz/milter/ through).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pec_milter::fuzz_api::milter(data));
