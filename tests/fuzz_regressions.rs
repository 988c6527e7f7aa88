//! Every input the fuzzer ever crashed on goes through the same calls as
//! the fuzz target and must not panic (tests/fixtures/fuzz/SOURCES.md).

use pec_milter::crypto::verify::{TrustStore, VerifyAt};
use pec_milter::pec::{DatiCert, breve, mime, reader};

#[test]
fn fuzzer_findings_do_not_panic() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    let trust = TrustStore::from_pem_bytes(&[]).expect("empty store");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("fixtures/fuzz") {
        let p = e.expect("entry").path();
        if !p
            .file_name()
            .is_some_and(|f| f.to_string_lossy().starts_with("crash-"))
        {
            continue;
        }
        let data = std::fs::read(&p).expect("read");
        if let Ok(msg) = reader::read(&data) {
            let _ = pec_milter::pec::inspect::check_signature(&msg, &trust, VerifyAt::SigningTime);
            if let Some(post) = &msg.postacert {
                let _ = reader::read(post);
            }
        }
        let _ = breve::hash_attachments(&mime::canonicalize_crlf(&data));
        let _ = DatiCert::from_xml(&data);
        n += 1;
    }
    assert!(n >= 1, "no regression inputs found in {}", dir.display());
}
