//! Any message through the reader: classification, multipart/signed splitting,
//! daticert.xml, postacert.eml, signature checking, ricevuta breve, and the
//! walk for PEC messages nested inside (forwarded, .eml, re-wrapped, opaque).
//! Any bytes in, never a panic: pec_milter::fuzz_api::reader (the same function
//! tests/fuzz_regressions.rs replays tests/fixtures/fuzz/reader/ through).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pec_milter::fuzz_api::reader(data));
