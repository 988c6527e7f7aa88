//! clamd's reply bytes as the scan client reads them (clamd::scan_reply_over,
//! clamd::ping_reply_over, through clamav-client).
//! Any bytes in, never a panic: pec_milter::fuzz_api::clamd_reply (the same function
//! tests/fuzz_regressions.rs replays tests/fixtures/fuzz/clamd_reply/ through).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pec_milter::fuzz_api::clamd_reply(data));
