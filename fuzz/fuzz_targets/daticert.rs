//! daticert.xml: DatiCert::from_xml, and what it reads written back (to_xml)
//! must read again.
//! Any bytes in, never a panic: pec_milter::fuzz_api::daticert (the same function
//! tests/fuzz_regressions.rs replays tests/fixtures/fuzz/daticert/ through).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pec_milter::fuzz_api::daticert(data));
