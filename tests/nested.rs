//! PEC messages inside other messages (issue 18): our own signed receipts
//! and envelopes (the test PKI) forwarded as `message/rfc822`, re-wrapped
//! by a mailing list (an outer `multipart/mixed` with a footer, the
//! subject prefixed "[lista] "), saved as a base64 `.eml` inside a forward
//! (two deep), forged (a byte of the signed content changed), and signed
//! opaquely (`application/pkcs7-mime`). `pec-milter verify` and `inspect
//! --json` through the real binary: found, verified, the path shown; the
//! library's walk for what the binary cannot show (nothing copied, the
//! reception point's reader unchanged).

mod common;

use std::path::Path;
use std::process::{Command, Output};

use base64::Engine;
use common::*;
use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::pkey::PKey;
use openssl::stack::Stack;
use openssl::x509::X509;
use pec_milter::crypto::DigestAlg;
use pec_milter::crypto::verify::{SignatureStatus, VerifyAt};
use pec_milter::pec::build::{
    Emission, Ricevuta, Signer, build_busta_trasporto, build_ricevuta, original_msgid,
};
use pec_milter::pec::inspect::inspect;
use pec_milter::pec::mime::{base64_lines, header_fields, split_header_body};
use pec_milter::pec::nested::{self, FoundAs};
use pec_milter::pec::reader::read;
use pec_milter::pec::{MessageKind, TipoDestinatario};
use serde_json::Value;

// ---------------------------------------------------------------------------
// Fixtures, built from our own signed messages.

fn signer() -> Signer<'static> {
    Signer {
        key: &pki().key,
        digest: DigestAlg::Sha256,
    }
}

fn tx() -> pec_milter::pec::build::Transaction {
    transaction(
        "Fattura n. 42",
        &[("anna.bianchi@pec.other.test", TipoDestinatario::Certificato)],
    )
}

/// A ricevuta di accettazione, signed by the test provider.
fn accettazione() -> Vec<u8> {
    build_ricevuta(
        &provider(),
        &tx(),
        &Ricevuta::Accettazione,
        &Emission {
            time: when(),
            message_id: "acc.1@pec.acme.test".into(),
        },
        signer(),
    )
    .expect("build")
    .to_bytes()
}

/// A busta di trasporto, signed by the test provider.
fn envelope() -> Vec<u8> {
    let orig = original("Fattura n. 42", "anna.bianchi@pec.other.test");
    let mut t = tx();
    t.msgid = original_msgid(&orig);
    build_busta_trasporto(&provider(), &t, &orig, when(), signer())
        .expect("build")
        .to_bytes()
}

/// `inner` forwarded as an attachment (`message/rfc822`, part 2 after a
/// text part), as a mail client does.
fn forward(inner: &[u8], subject: &str) -> Vec<u8> {
    forward_all(&[inner], subject)
}

/// Several messages forwarded in one mail: parts 2, 3, ...
fn forward_all(inner: &[&[u8]], subject: &str) -> Vec<u8> {
    let mut m = format!(
        "From: Anna Bianchi <anna@example.org>\r\nTo: luca@example.org\r\nSubject: {subject}\r\n\
         Message-ID: <fwd.1@example.org>\r\nDate: Thu, 26 Nov 2026 11:00:00 +0100\r\n\
         MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"fwd-b\"\r\n\r\n\
         This is a multi-part message in MIME format.\r\n\
         --fwd-b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nTi inoltro la ricevuta.\r\n"
    )
    .into_bytes();
    for i in inner {
        m.extend_from_slice(
            b"--fwd-b\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n",
        );
        m.extend_from_slice(i);
        m.extend_from_slice(b"\r\n");
    }
    m.extend_from_slice(b"--fwd-b--\r\n");
    m
}

/// What a mailing-list manager (Mailman's footer) makes of `msg`: the
/// header fields stay outside, the subject prefixed; the body becomes an
/// outer `multipart/mixed` whose part 1 is the original entity (its
/// `Content-*` fields and body, untouched) and part 2 a text footer.
/// The boundary is made of the prefix's letters (a list's own).
fn rewrap(msg: &[u8], prefix: &str) -> Vec<u8> {
    let list: String = prefix.chars().filter(char::is_ascii_alphabetic).collect();
    let boundary = format!("===============_{list}_==");
    let (head, body) = split_header_body(msg);
    let mut outer = Vec::new();
    let mut inner = Vec::new();
    for f in header_fields(head) {
        if f.name.to_ascii_lowercase().starts_with("content-") {
            inner.extend_from_slice(f.raw);
        } else if f.is("Subject") {
            outer.extend_from_slice(format!("Subject: {prefix}{}\r\n", f.unfolded()).as_bytes());
        } else {
            outer.extend_from_slice(f.raw);
        }
    }
    outer.extend_from_slice(
        format!(
            "List-Id: Lista di prova <{list}.example.org>\r\n\
             Content-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n--{boundary}\r\n"
        )
        .as_bytes(),
    );
    outer.extend_from_slice(&inner);
    outer.extend_from_slice(b"\r\n");
    outer.extend_from_slice(body);
    outer.extend_from_slice(
        format!(
            "\r\n--{boundary}\r\nContent-Type: text/plain; charset=\"us-ascii\"\r\n\
             Content-Transfer-Encoding: 7bit\r\nContent-Disposition: inline\r\n\r\n\
             _______________________________________________\r\n\
             {list} mailing list -- {list}@example.org\r\n\
             --{boundary}--\r\n"
        )
        .as_bytes(),
    );
    outer
}

/// `inner` saved as a file `inoltro.eml` (base64, application/octet-stream)
/// and attached to another mail, as part 2.
fn saved_as_eml(inner: &[u8], subject: &str) -> Vec<u8> {
    let mut m = format!(
        "From: Luca <luca@example.org>\r\nTo: ufficio@example.org\r\nSubject: {subject}\r\n\
         Message-ID: <eml.1@example.org>\r\nMIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"eml-b\"\r\n\r\n\
         --eml-b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nEcco il messaggio salvato.\r\n\
         --eml-b\r\nContent-Type: application/octet-stream; name=\"inoltro.eml\"\r\n\
         Content-Disposition: attachment; filename=\"inoltro.eml\"\r\n\
         Content-Transfer-Encoding: base64\r\n\r\n"
    )
    .into_bytes();
    m.extend_from_slice(base64_lines(inner).as_bytes());
    m.extend_from_slice(b"--eml-b--\r\n");
    m
}

/// `msg` with one byte of its signed content changed ("Fattura n. 42"
/// becomes "n. 43" in the readable text, not in the unsigned Subject).
fn forged(msg: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(msg).into_owned();
    let body_at = text.find("\r\n\r\n").expect("header end");
    let at = body_at
        + text[body_at..]
            .find("Fattura n. 42")
            .expect("the subject in the signed text");
    let mut out = msg.to_vec();
    out[at + "Fattura n. 4".len()] = b'3';
    out
}

/// `msg`'s signed content signed again opaquely: `application/pkcs7-mime`
/// signed-data with the content inside, the header fields kept.
fn opaque(msg: &[u8]) -> Vec<u8> {
    let m = read(msg).expect("read");
    let content = m.signed.expect("signed").content.into_owned();
    let p = &pki().pki;
    let cert = X509::from_pem(&p.cert_pem).expect("cert");
    let key = PKey::private_key_from_pem(&p.key_pem).expect("key");
    let certs = Stack::new().expect("stack");
    let cms = CmsContentInfo::sign(
        Some(&cert),
        Some(&key),
        Some(&certs),
        Some(&content),
        CMSOptions::BINARY,
    )
    .expect("sign");
    let der = cms.to_der().expect("der");
    let (head, _) = split_header_body(msg);
    let mut out = Vec::new();
    for f in header_fields(head) {
        if !f.name.to_ascii_lowercase().starts_with("content-") {
            out.extend_from_slice(f.raw);
        }
    }
    out.extend_from_slice(
        b"Content-Type: application/pkcs7-mime; smime-type=signed-data; name=\"smime.p7m\"\r\n\
          Content-Disposition: attachment; filename=\"smime.p7m\"\r\n\
          Content-Transfer-Encoding: base64\r\n\r\n",
    );
    out.extend_from_slice(base64_lines(&der).as_bytes());
    out
}

// ---------------------------------------------------------------------------
// The binary.

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pec-milter"))
}

fn file(dir: &Path, name: &str, data: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("write");
    p.to_string_lossy().into_owned()
}

fn verify(path: &str, all: bool) -> Output {
    let mut c = bin();
    c.arg("verify").arg("--trust").arg(pki().ca_file.path());
    if all {
        c.arg("--all");
    }
    c.arg(path).output().expect("run pec-milter verify")
}

fn inspect_json(path: &str) -> Value {
    let out = bin()
        .args(["inspect", "--json", "--trust"])
        .arg(pki().ca_file.path())
        .arg(path)
        .output()
        .expect("run pec-milter inspect");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The one nested PEC message of `j`, checked: where, and verified.
fn only_nested<'a>(j: &'a Value, path: &str, found_as: &str, outer: &str) -> &'a Value {
    let list = j["nested"].as_array().expect("nested list");
    assert_eq!(list.len(), 1, "{j}");
    let n = &list[0];
    assert_eq!(n["path"], path, "{n}");
    assert_eq!(n["found_as"], found_as, "{n}");
    assert_eq!(n["outer_subject"], outer, "{n}");
    assert_eq!(n["signature"]["status"], "valid", "{n}");
    assert_eq!(n["signature"]["chain_ok"], true);
    assert_eq!(n["signature"]["integrity_ok"], true);
    assert!(n.get("nested").is_none(), "a flat list: {n}");
    assert!(j.get("nested_truncated").is_none(), "{j}");
    n
}

// ---------------------------------------------------------------------------

#[test]
fn a_forwarded_accettazione_is_found_and_verified() {
    let dir = tempfile::tempdir().expect("dir");
    let subject = "Fwd: ACCETTAZIONE: Fattura n. 42";
    let f = file(dir.path(), "fwd.eml", &forward(&accettazione(), subject));

    let j = inspect_json(&f);
    // the forward itself is ordinary mail
    assert_eq!(j["kind"], "none");
    assert_eq!(j["signature"]["status"], "missing");
    let n = only_nested(&j, "2", "message/rfc822", subject);
    assert_eq!(n["depth"], 1);
    assert_eq!(n["kind"], "accettazione");
    assert_eq!(n["subject"], "ACCETTAZIONE: Fattura n. 42");
    assert_eq!(n["daticert"]["tipo"], "accettazione");
    assert_eq!(
        n["daticert"]["identificativo"],
        "opec.20261125093015.1234.1@pec.acme.test"
    );

    let out = verify(&f, false);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "{f} part 2 (accettazione, message/rfc822 in \"{subject}\"): signature valid; signer"
        )),
        "{stdout}"
    );
    // one found: nothing to choose, nothing said
    assert!(
        !text(&out.stderr).contains("--all"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(verify(&f, true).status.code(), Some(0));

    // the text output names it too
    let out = bin()
        .args(["inspect", "--trust"])
        .arg(pki().ca_file.path())
        .arg(&f)
        .output()
        .expect("inspect");
    let t = text(&out.stdout);
    assert!(
        t.contains(&format!(
            "nested:      part 2 (message/rfc822, in \"{subject}\")"
        )),
        "{t}"
    );
    assert!(t.contains("  kind:        accettazione"), "{t}");
}

#[test]
fn an_envelope_rewrapped_by_a_mailing_list_is_found_and_verified() {
    let dir = tempfile::tempdir().expect("dir");
    let env = envelope();
    let listed = rewrap(&env, "[lista] ");
    // the fixture is what a list makes: multipart/mixed [multipart/signed, text/plain]
    let py = python_email(&listed);
    assert_eq!(py["top"], "multipart/mixed");
    assert_eq!(py["types"][1], "multipart/signed");
    assert_eq!(
        py["types"].as_array().expect("types").last(),
        Some(&Value::from("text/plain"))
    );
    assert_eq!(py["subject"], "[lista] POSTA CERTIFICATA: Fattura n. 42");
    let f = file(dir.path(), "lista.eml", &listed);

    let j = inspect_json(&f);
    // the outer message carries the marker fields, not the signature
    assert_eq!(j["kind"], "posta-certificata");
    let subject = "[lista] POSTA CERTIFICATA: Fattura n. 42";
    let n = only_nested(&j, "1", "rewrapped", subject);
    assert_eq!(n["depth"], 0);
    assert_eq!(n["kind"], "posta-certificata");
    assert_eq!(n["subject"], subject);
    assert_eq!(n["daticert"]["tipo"], "posta-certificata");
    assert_eq!(n["postacert"]["subject"], "Fattura n. 42");

    let out = verify(&f, false);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!(
            "{f} part 1 (posta-certificata, rewrapped in \"{subject}\"): signature valid"
        )),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(verify(&f, true).status.code(), Some(0));

    // the envelope itself, as before: no part, nothing nested
    let e = file(dir.path(), "envelope.eml", &env);
    let out = verify(&e, false);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).starts_with(&format!("{e}: signature valid")),
        "{}",
        text(&out.stdout)
    );
    let j = inspect_json(&e);
    assert_eq!(j["signature"]["status"], "valid");
    assert_eq!(j["nested"], Value::Array(Vec::new()));

    // a list that re-wraps a forward of it: the path goes through both
    let f2 = file(
        dir.path(),
        "lista-fwd.eml",
        &rewrap(&forward(&listed, "Fwd: dalla lista"), "[altra] "),
    );
    let j = inspect_json(&f2);
    only_nested(&j, "1/2/1", "rewrapped", subject);
}

#[test]
fn a_receipt_nested_two_deep_is_found_and_verified() {
    let dir = tempfile::tempdir().expect("dir");
    // the forward of the accettazione, saved as a base64 .eml attached to
    // another mail: the receipt is part 2 of the message at part 2
    let fwd_subject = "Fwd: ACCETTAZIONE: Fattura n. 42";
    let msg = saved_as_eml(
        &forward(&accettazione(), fwd_subject),
        "La ricevuta, salvata",
    );
    let f = file(dir.path(), "salvata.eml", &msg);

    let j = inspect_json(&f);
    assert_eq!(j["kind"], "none");
    assert_eq!(j["subject"], "La ricevuta, salvata");
    let n = only_nested(&j, "2/2", "message/rfc822", fwd_subject);
    assert_eq!(n["depth"], 2);
    assert_eq!(n["kind"], "accettazione");

    let out = verify(&f, false);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("{f} part 2/2 (accettazione")),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(verify(&f, true).status.code(), Some(0));

    // the .eml file itself, attached directly: found as such
    let g = file(
        dir.path(),
        "eml.eml",
        &saved_as_eml(&accettazione(), "una ricevuta"),
    );
    let j = inspect_json(&g);
    only_nested(&j, "2", "eml-attachment", "una ricevuta");
}

#[test]
fn a_forged_nested_receipt_fails_and_its_path_is_named() {
    let dir = tempfile::tempdir().expect("dir");
    let subject = "Fwd: ACCETTAZIONE: Fattura n. 42";
    let bad = forged(&accettazione());
    let f = file(dir.path(), "forged.eml", &forward(&bad, subject));

    let out = verify(&f, false);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "{f} part 2 (accettazione, message/rfc822 in \"{subject}\"): not verified:"
        )),
        "{err}"
    );
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
    let j = inspect_json(&f);
    let n = &j["nested"][0];
    assert_eq!(n["path"], "2");
    assert_eq!(n["signature"]["status"], "invalid");
    assert_eq!(n["signature"]["integrity_ok"], false);

    // forged two deep and re-wrapped: the same
    let g = file(
        dir.path(),
        "forged2.eml",
        &saved_as_eml(&forward(&bad, subject), "salvata"),
    );
    let out = verify(&g, true);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("part 2/2 (accettazione"),
        "{}",
        text(&out.stderr)
    );
    let h = file(
        dir.path(),
        "forged3.eml",
        &rewrap(&forged(&envelope()), "[lista] "),
    );
    let out = verify(&h, false);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains(&format!("{h} part 1 (posta-certificata, rewrapped")),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn several_found_the_first_is_verified_unless_all() {
    let dir = tempfile::tempdir().expect("dir");
    let good = accettazione();
    let bad = forged(&accettazione());

    // valid first, forged second: without --all the first, and the choice said
    let f = file(
        dir.path(),
        "two.eml",
        &forward_all(&[&good, &bad], "Fwd: due ricevute"),
    );
    let out = verify(&f, false);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains(&format!(
            "{f}: 2 PEC messages found (part 2, part 3); verified the first in document order (part 2); --all verifies every one"
        )),
        "{err}"
    );
    // --all: every one, and which failed
    let out = verify(&f, true);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("{f} part 3 (accettazione")), "{err}");
    assert!(
        err.contains(&format!("{f}: 1 of 2 PEC messages not verified: part 3")),
        "{err}"
    );
    assert!(text(&out.stdout).contains(&format!("{f} part 2 (accettazione")));

    // forged first: without --all it fails
    let g = file(
        dir.path(),
        "two-bad.eml",
        &forward_all(&[&bad, &good], "Fwd: due"),
    );
    assert_eq!(verify(&g, false).status.code(), Some(1));

    // both valid, --all: every one said
    let h = file(
        dir.path(),
        "two-good.eml",
        &forward_all(&[&good, &envelope()], "Fwd: due"),
    );
    let out = verify(&h, true);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("{h}: all 2 PEC messages verified")));
    let j = inspect_json(&h);
    let paths: Vec<&str> = j["nested"]
        .as_array()
        .expect("nested")
        .iter()
        .map(|n| n["path"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(paths, ["2", "3"]);
    assert_eq!(j["nested"][1]["kind"], "posta-certificata");

    // an envelope forwarding a receipt: the envelope is the one verified
    // without --all; the receipt inside its postacert.eml is found too
    let orig = forward(&good, "Fwd: la ricevuta");
    let mut t = tx();
    t.msgid = original_msgid(&orig);
    let env = build_busta_trasporto(&provider(), &t, &orig, when(), signer())
        .expect("build")
        .to_bytes();
    let e = file(dir.path(), "env-fwd.eml", &env);
    let out = verify(&e, false);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with(&format!("{e}: signature valid")));
    assert!(
        text(&out.stderr).contains("(the message itself, part 1/"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(verify(&e, true).status.code(), Some(0));
}

#[test]
fn ordinary_mail_and_garbage_keep_their_answers() {
    let dir = tempfile::tempdir().expect("dir");
    // no PEC message anywhere: the input's own (missing) signature
    let f = file(dir.path(), "plain.eml", &original("ciao", "a@example.org"));
    let out = verify(&f, false);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("not verified") && err.contains("no PEC message found"),
        "{err}"
    );
    let j = inspect_json(&f);
    assert_eq!(j["nested"], Value::Array(Vec::new()));
    let g = file(dir.path(), "garbage", b"\x00\xff no header");
    assert_eq!(verify(&g, true).status.code(), Some(1));
}

#[test]
fn an_opaque_signature_is_opened_by_the_tools_only() {
    let op = opaque(&accettazione());
    // the reception point's reader: not PEC-signed (PEC-RULES §1.2), as before
    let m = read(&op).expect("read");
    assert_eq!(
        m.kind,
        MessageKind::Ricevuta(pec_milter::pec::Tipo::Accettazione)
    );
    assert!(m.signed.is_none() && m.daticert.is_none());
    // inspect opens it, forwarded or not
    let top = inspect(&op, &pki().trust, VerifyAt::SigningTime).expect("inspect");
    assert_eq!(
        top.signature.status,
        SignatureStatus::Valid,
        "{:?}",
        top.signature
    );
    assert_eq!(
        top.signature.protocol.as_deref(),
        Some("application/pkcs7-mime")
    );
    assert_eq!(
        top.daticert.as_ref().map(|d| d.tipo.as_str()),
        Some("accettazione")
    );
    let fwd = forward(&op, "Fwd: opaca");
    let i = inspect(&fwd, &pki().trust, VerifyAt::SigningTime).expect("inspect");
    let n = &i.nested.as_ref().expect("nested")[0];
    assert_eq!(n.path, "2");
    assert_eq!(n.inspection.signature.status, SignatureStatus::Valid);
    assert_eq!(
        n.inspection
            .daticert
            .as_ref()
            .map(|d| d.identificativo.as_str()),
        Some("opec.20261125093015.1234.1@pec.acme.test")
    );
    // a byte of the structure changed: not valid
    let text = String::from_utf8_lossy(&op).into_owned();
    let b64_at = text.find("\r\n\r\n").expect("body") + 4;
    let der = base64::engine::general_purpose::STANDARD
        .decode(text[b64_at..].replace("\r\n", ""))
        .expect("b64");
    let inner_at = der
        .windows(b"Fattura n. 42".len())
        .position(|w| w == b"Fattura n. 42")
        .expect("content inside");
    let mut bad = der.clone();
    bad[inner_at] = b'f';
    let mut op_bad = op[..b64_at].to_vec();
    op_bad.extend_from_slice(base64_lines(&bad).as_bytes());
    let i = inspect(
        &forward(&op_bad, "Fwd"),
        &pki().trust,
        VerifyAt::SigningTime,
    )
    .expect("inspect");
    let n = &i.nested.as_ref().expect("nested")[0];
    assert_eq!(n.inspection.signature.status, SignatureStatus::Invalid);
    assert!(!n.inspection.signature.integrity_ok);
}

#[test]
fn the_walk_reads_forwarded_parts_where_they_lie() {
    // CRLF input, 7bit message/rfc822: the signed content found is a slice
    // of the input, not a copy
    let raw = forward(&envelope(), "Fwd: busta");
    let range = raw.as_ptr_range();
    let mut seen = 0;
    let walked = nested::walk(&raw, |f| {
        seen += 1;
        assert_eq!(f.found_as, FoundAs::Attached);
        let s = f.message.signed.as_ref().expect("signed");
        assert!(matches!(s.content, std::borrow::Cow::Borrowed(_)));
        assert!(range.contains(&s.content.as_ptr()), "copied");
        let p = f.message.postacert.as_ref().expect("postacert");
        assert!(range.contains(&p.as_ptr()), "postacert copied");
    })
    .expect("walk");
    assert_eq!((seen, walked.found, walked.stopped), (1, 1, None));
    // and LF line ends read the same
    let lf: Vec<u8> = raw.iter().copied().filter(|&b| b != b'\r').collect();
    let i = inspect(&lf, &pki().trust, VerifyAt::SigningTime).expect("inspect");
    let n = &i.nested.as_ref().expect("nested")[0];
    assert_eq!(
        (n.path.as_str(), n.inspection.signature.status),
        ("2", SignatureStatus::Valid)
    );
}
