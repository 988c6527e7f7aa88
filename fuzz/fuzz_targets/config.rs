//! The configuration file (Config::parse) and the other configuration texts.
//! Any bytes in, never a panic: pec_milter::fuzz_api::config (the same function
//! tests/fuzz_regressions.rs replays tests/fixtures/fuzz/config/ through).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pec_milter::fuzz_api::config(data));
