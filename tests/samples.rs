//! The real and synthetic sample messages (tests/fixtures/samples, see its
//! SOURCES.md) through the `pec-milter` binary: `verify` accepts every
//! provider-signed one, `inspect --json` states the kind and the daticert
//! facts of each (issue "Must show" 1).

mod common;

use std::process::{Command, Output};

use serde_json::Value;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pec-milter"))
}

fn sample(name: &str) -> String {
    common::fixtures()
        .join("samples")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn roots() -> Vec<String> {
    let r = common::fixtures().join("roots");
    vec![
        "--trust".into(),
        r.join("Baltimore_CyberTrust_Root.pem")
            .to_string_lossy()
            .into_owned(),
        "--trust".into(),
        r.join("Actalis_Authentication_Root_CA.pem")
            .to_string_lossy()
            .into_owned(),
    ]
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run pec-milter")
}

fn inspect_json(name: &str) -> Value {
    let out = run(bin()
        .arg("inspect")
        .arg("--json")
        .args(roots())
        .arg(sample(name)));
    assert!(
        out.status.success(),
        "inspect {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

const SIGNED: &[&str] = &[
    "OCA+l10n-italy__l10n_it_pec_messages__message1",
    "OCA+l10n-italy__l10n_it_pec_messages__message2",
    "OCA+l10n-italy__l10n_it_pec_messages__message2_accettazione",
    "OCA+l10n-italy__l10n_it_pec_messages__message2_consegna",
    "OCA+l10n-italy__l10n_it_fatturapa_pec__POSTA_CERTIFICATA__Invio_File_7339338.txt",
];

#[test]
fn every_provider_signed_sample_verifies() {
    for s in SIGNED {
        let out = run(bin().arg("verify").args(roots()).arg(sample(s)));
        assert!(
            out.status.success(),
            "verify {s}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // also from standard input
        let data = std::fs::read(sample(s)).expect("read");
        let mut child = bin()
            .arg("verify")
            .args(roots())
            .arg("-")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("spawn");
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&data)
            .expect("write");
        assert!(child.wait().expect("wait").success(), "verify - {s}");
    }
}

#[test]
fn chains_fail_today_but_hold_at_signing_time() {
    // The 2014 Aruba certificate expired in 2017: checked "now" it fails,
    // with the reason on stderr; at the signing time it holds.
    let s = sample("OCA+l10n-italy__l10n_it_pec_messages__message2_accettazione");
    let out = run(bin().args(["verify", "--at", "now"]).args(roots()).arg(&s));
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not verified"), "{err}");
    // and with a trust anchor that is not the chain's root it fails too
    let other = common::pki();
    let out = run(bin()
        .args(["verify", "--trust"])
        .arg(other.ca_file.path())
        .arg(&s));
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn flipped_byte_in_a_real_sample_fails() {
    let path = sample("OCA+l10n-italy__l10n_it_pec_messages__message2_consegna");
    let mut data = std::fs::read(&path).expect("read");
    let text = String::from_utf8_lossy(&data).into_owned();
    let at = text
        .find("il messaggio con Oggetto")
        .expect("text in the signed part");
    data[at] = b'I';
    let tmp = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(tmp.path(), &data).expect("write");
    let out = run(bin().arg("verify").args(roots()).arg(tmp.path()));
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not verified"));
}

fn dest(v: &Value) -> Vec<(String, String)> {
    v["daticert"]["destinatari"]
        .as_array()
        .expect("destinatari")
        .iter()
        .map(|d| {
            (
                d["address"].as_str().unwrap_or("").to_string(),
                d["tipo"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn pair(a: &str, t: &str) -> Vec<(String, String)> {
    vec![(a.to_string(), t.to_string())]
}

#[test]
fn aruba_accettazione_facts() {
    let v = inspect_json("OCA+l10n-italy__l10n_it_pec_messages__message2_accettazione");
    assert_eq!(v["kind"], "accettazione");
    assert_eq!(v["subject"], "ACCETTAZIONE: test private");
    assert_eq!(v["signature"]["status"], "valid");
    assert_eq!(
        v["signature"]["signer_sha1"],
        "AAA71BFD2DBC9FE67AA23C9F33AAF3316DF1AA66"
    );
    assert!(
        v["signature"]["signer_subject"]
            .as_str()
            .unwrap_or("")
            .contains("Posta Certificata ARUBA PEC")
    );
    let d = &v["daticert"];
    assert_eq!(d["tipo"], "accettazione");
    assert_eq!(d["errore"], "nessuno");
    assert_eq!(d["mittente"], "l.battistini@pec.it");
    assert_eq!(dest(&v), pair("thinkstudio@pec.it", "certificato"));
    assert_eq!(d["oggetto"], "test private");
    assert_eq!(d["gestore_emittente"], "ARUBA PEC S.p.A.");
    assert_eq!(d["data"]["giorno"], "14/11/2014");
    assert_eq!(d["data"]["ora"], "18:26:32");
    assert_eq!(d["data"]["zona"], "+0100");
    assert_eq!(
        d["identificativo"],
        "opec275.20141114182632.23219.07.1.48@pec.aruba.it"
    );
    assert_eq!(
        d["msgid"],
        "<1415985992.182905912399292.346704098667155-openerp-private@elbati-Vostro-3550>"
    );
    assert!(d["ricevuta"].is_null());
    assert!(d["consegna"].is_null());
    assert!(v["postacert"].is_null());
}

#[test]
fn aruba_consegna_facts() {
    let v = inspect_json("OCA+l10n-italy__l10n_it_pec_messages__message2_consegna");
    assert_eq!(v["kind"], "avvenuta-consegna");
    assert_eq!(v["signature"]["status"], "valid");
    assert_eq!(v["signature"]["digest"], "sha1");
    let d = &v["daticert"];
    assert_eq!(d["tipo"], "avvenuta-consegna");
    assert_eq!(d["ricevuta"], "completa");
    assert_eq!(d["consegna"], "thinkstudio@pec.it");
    assert_eq!(
        d["identificativo"],
        "opec275.20141114182632.23219.07.1.48@pec.aruba.it"
    );
    // the completa receipt carries the original
    assert!(v["postacert"]["bytes"].as_u64().unwrap_or(0) > 1000);
}

#[test]
fn aruba_envelopes_facts() {
    let v = inspect_json("OCA+l10n-italy__l10n_it_pec_messages__message1");
    assert_eq!(v["kind"], "posta-certificata");
    assert_eq!(v["tipo_ricevuta"], "completa"); // written X-Tiporicevuta
    assert_eq!(v["signature"]["status"], "valid");
    let d = &v["daticert"];
    assert_eq!(d["tipo"], "posta-certificata");
    assert_eq!(d["mittente"], "thinkstudio@pec.it");
    assert_eq!(dest(&v), pair("l.battistini@pec.it", "certificato"));
    assert_eq!(d["oggetto"], "Re: archetipo");
    assert_eq!(d["data"]["giorno"], "07/11/2014");
    assert_eq!(
        d["identificativo"],
        "opec275.20141107165200.03048.08.1.17@pec.aruba.it"
    );
    assert_eq!(d["ricevuta"], "completa");
    assert!(v["postacert"]["bytes"].as_u64().unwrap_or(0) > 0);

    // message2 has no X-TipoRicevuta; its daticert says completa
    let v = inspect_json("OCA+l10n-italy__l10n_it_pec_messages__message2");
    assert_eq!(v["kind"], "posta-certificata");
    assert!(v["tipo_ricevuta"].is_null());
    assert_eq!(v["daticert"]["ricevuta"], "completa");
    assert_eq!(v["daticert"]["data"]["giorno"], "27/11/2014");
    assert_eq!(v["signature"]["status"], "valid");
}

#[test]
fn sogei_breve_envelope_facts() {
    let v = inspect_json(
        "OCA+l10n-italy__l10n_it_fatturapa_pec__POSTA_CERTIFICATA__Invio_File_7339338.txt",
    );
    assert_eq!(v["kind"], "posta-certificata");
    assert_eq!(v["signature"]["status"], "valid");
    assert!(
        v["signature"]["signer_subject"]
            .as_str()
            .unwrap_or("")
            .contains("Sogei")
    );
    let d = &v["daticert"];
    assert_eq!(d["mittente"], "sdi03@pec.fatturapa.it");
    assert_eq!(d["gestore_emittente"], "Sogei SpA");
    assert_eq!(d["ricevuta"], "breve");
    assert_eq!(
        d["identificativo"],
        "opec288.20181208122618.17535.2665.1.3@pcert.sogei.it"
    );
    assert_eq!(d["data"]["giorno"], "08/12/2018");
}

#[test]
fn synthetic_samples_parse_without_a_valid_signature() {
    let cases = [
        (
            "biagioT+java-pec-parser__accettazione.eml",
            "accettazione",
            "accettazione",
            "nessuno",
        ),
        (
            "biagioT+java-pec-parser__consegna.eml",
            "errore-consegna",
            "errore-consegna",
            "no-dest",
        ),
        (
            "danzipie+go-pec__accettazione.eml",
            "accettazione",
            "accettazione",
            "nessuno",
        ),
        (
            "danzipie+go-pec__consegna.eml",
            "errore-consegna",
            "errore-consegna",
            "no-dest",
        ),
        (
            "danzipie+go-pec__email_2.eml",
            "avvenuta-consegna",
            "avvenuta-consegna",
            "nessuno",
        ),
        (
            "danzipie+go-pec__email_3.eml",
            "posta-certificata",
            "posta-certificata",
            "nessuno",
        ),
    ];
    for (file, kind, tipo, errore) in cases {
        let v = inspect_json(file);
        assert_eq!(v["kind"], kind, "{file}");
        let st = v["signature"]["status"].as_str().unwrap_or("");
        assert!(st == "missing" || st == "invalid", "{file}: {st}");
        assert!(v["signature"]["reason"].is_string(), "{file}");
        assert_eq!(v["daticert"]["tipo"], tipo, "{file}");
        assert_eq!(v["daticert"]["errore"], errore, "{file}");
        // and verify refuses them with exit 1, not an error exit
        let out = run(bin().arg("verify").args(roots()).arg(sample(file)));
        assert_eq!(out.status.code(), Some(1), "{file}");
    }
    let v = inspect_json("biagioT+java-pec-parser__consegna.eml");
    assert_eq!(
        v["daticert"]["errore_esteso"],
        "5.1.1 - FAKE Pec S.p.A. - indirizzo non valido"
    );
    let v = inspect_json("danzipie+go-pec__email_2.eml");
    assert_eq!(v["signature"]["micalg"], "sha-256");
    assert_eq!(v["signature"]["protocol"], "application/pkcs7-signature");
}

#[test]
fn several_files_print_one_json_object_each() {
    let out = run(bin()
        .args(["inspect", "--json"])
        .args(roots())
        .arg(sample(SIGNED[0]))
        .arg(sample(SIGNED[2])));
    assert!(out.status.success());
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["kind"], "accettazione");
}

#[test]
fn garbage_input_is_an_error_exit_not_a_crash() {
    let tmp = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(tmp.path(), b"\x00\xff\xfe garbage without headers").expect("write");
    let out = run(bin()
        .args(["inspect", "--json"])
        .args(roots())
        .arg(tmp.path()));
    assert_eq!(out.status.code(), Some(1));
    let out = run(bin().arg("verify").args(roots()).arg(tmp.path()));
    assert_eq!(out.status.code(), Some(1));
}
