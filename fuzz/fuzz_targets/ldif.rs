//! The providers' index in LDIF: index::ldif::parse, the snapshot, and what
//! ldif::write makes of the entries must parse again.
//! Any bytes in, never a panic: pec_milter::fuzz_api::ldif (the same function
//! tests/fuzz_regressions.rs replays tests/fixtures/fuzz/ldif/ through).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pec_milter::fuzz_api::ldif(data));
