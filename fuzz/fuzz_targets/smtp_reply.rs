//! SMTP server replies as the reinjection client reads them (smtp::read_replies).
//! Any bytes in, never a panic: pec_milter::fuzz_api::smtp_reply (the same function
//! tests/fuzz_regressions.rs replays tests/fixtures/fuzz/smtp_reply/ through).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| pec_milter::fuzz_api::smtp_reply(data));
