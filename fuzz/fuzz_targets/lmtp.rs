//! An LMTP client's bytes served by our LMTP server (lmtp::server::serve_stream:
//! commands, paths, parameters, DATA) over an in-memory stream.
//! Any bytes in, never a panic: pec_milter::fuzz_api::lmtp (the same function
//! tests/fuzz_regressions.rs replays tests/fixtures/fuzz/lmtp/ through).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pec_milter::fuzz_api::lmtp(data));
