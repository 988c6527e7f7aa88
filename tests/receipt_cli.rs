//! `pec-milter receipt`, the QA tool that signs a receipt as a given
//! provider (used by integration/e2e-reception.sh, scenario R): what it
//! prints is a signed receipt whose daticert.xml states the facts given,
//! read back by `pec-milter inspect --json`; wrong combinations are refused.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const ID: &str = "opec.20261125093015.1234.1@pec.demo.test";
const SENDER: &str = "mario.rossi@pec.demo.test";

fn receipt(dir: &Path, args: &[&str]) -> Output {
    let p = &common::pki().pki;
    let (key, cert) = (dir.join("k.pem"), dir.join("c.pem"));
    std::fs::write(&key, &p.key_pem).expect("key");
    std::fs::write(&cert, &p.cert_pem).expect("cert");
    Command::new(env!("CARGO_BIN_EXE_pec-milter"))
        .arg("receipt")
        .arg("--key")
        .arg(&key)
        .arg("--cert")
        .arg(&cert)
        .args(["--gestore", "ACME PEC S.p.A.", "--domain", "pec.acme.test"])
        .args(["--id", ID, "--sender", SENDER])
        .args(args)
        .output()
        .expect("run pec-milter receipt")
}

fn inspect(message: &[u8]) -> Value {
    let f = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(f.path(), message).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_pec-milter"))
        .args(["inspect", "--json", "--trust"])
        .arg(common::pki().ca_file.path())
        .arg(f.path())
        .output()
        .expect("run pec-milter inspect");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn avvenuta_consegna_states_the_facts_given_and_is_signed() {
    let dir = tempfile::tempdir().expect("dir");
    let out = receipt(
        dir.path(),
        &[
            "--kind",
            "avvenuta-consegna",
            "--recipient",
            "giulia.neri@pec.it",
            "--subject",
            "hello",
            "--msgid",
            "<abc@client.test>",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = inspect(&out.stdout);
    assert_eq!(j["kind"], "avvenuta-consegna");
    assert_eq!(j["signature"]["status"], "valid");
    assert_eq!(j["from"], "posta-certificata@pec.acme.test");
    let d = &j["daticert"];
    assert_eq!(d["identificativo"], ID);
    assert_eq!(d["mittente"], SENDER);
    assert_eq!(d["consegna"], "giulia.neri@pec.it");
    assert_eq!(d["gestore_emittente"], "ACME PEC S.p.A.");
    assert_eq!(d["oggetto"], "hello");
    assert_eq!(d["msgid"], "<abc@client.test>");
    assert_eq!(d["destinatari"][0]["tipo"], "certificato");
}

#[test]
fn presa_in_carico_goes_to_the_mail_receipt_and_lists_every_recipient() {
    let dir = tempfile::tempdir().expect("dir");
    let out = receipt(
        dir.path(),
        &[
            "--kind",
            "presa-in-carico",
            "--recipient",
            "a@pec.acme.test,b@pec.acme.test",
            "--mail-receipt",
            "ricevute@pec.demo.test",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let j = inspect(&out.stdout);
    assert_eq!(j["kind"], "presa-in-carico");
    assert_eq!(
        j["daticert"]["ricezione"],
        serde_json::json!(["a@pec.acme.test", "b@pec.acme.test"])
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("To: ricevute@pec.demo.test\r\n"), "{text}");
}

#[test]
fn wrong_combinations_are_refused() {
    let dir = tempfile::tempdir().expect("dir");
    for args in [
        &["--kind", "presa-in-carico", "--recipient", "a@x.test"][..],
        &[
            "--kind",
            "avvenuta-consegna",
            "--recipient",
            "a@x.test,b@x.test",
        ][..],
        &[
            "--kind",
            "errore-consegna",
            "--recipient",
            "a@x.test,b@x.test",
        ][..],
        &["--kind", "accettazione", "--recipient", "a@x.test"][..],
    ] {
        let out = receipt(dir.path(), args);
        assert!(!out.status.success(), "{args:?} accepted");
        assert!(out.stdout.is_empty(), "{args:?} printed a message");
    }
}
