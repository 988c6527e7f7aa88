//! Fuzz the reader: any bytes in, never a panic. Exercises classification,
//! multipart/signed splitting, daticert.xml parsing, postacert.eml
//! extraction, signature verification on whatever p7s is found, and the
//! ricevuta breve rewriting of whatever parses.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pec_milter::crypto::verify::{TrustStore, VerifyAt};
use pec_milter::pec::{breve, mime, reader};

fn trust() -> &'static TrustStore {
    static T: OnceLock<TrustStore> = OnceLock::new();
    T.get_or_init(|| TrustStore::from_pem_bytes(&[]).expect("empty store"))
}

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = reader::read(data) {
        let _ = pec_milter::pec::inspect::check_signature(&msg, trust(), VerifyAt::SigningTime);
        if let Some(p) = &msg.postacert {
            let _ = reader::read(p);
        }
    }
    let canon = mime::canonicalize_crlf(data);
    let _ = breve::hash_attachments(&canon);
    let _ = pec_milter::pec::DatiCert::from_xml(data);
});
