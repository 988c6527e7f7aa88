//! Every kind of PEC message built, signed and checked by independent
//! tools: openssl cms -verify, xmllint against the DTD, Python's email
//! package, and our own reader (PEC-RULES §2; issue "Must show" 2 and 3).

mod common;

use common::*;
use pec_milter::crypto::DigestAlg;
use pec_milter::crypto::verify::{SignatureStatus, VerifyAt};
use pec_milter::pec::build::{
    Anomalia, BuiltMessage, Emission, Ricevuta, Signer, build_busta_anomalia,
    build_busta_trasporto, build_ricevuta, original_msgid,
};
use pec_milter::pec::inspect::inspect;
use pec_milter::pec::reader::read;
use pec_milter::pec::{Errore, MessageKind, Tipo, TipoDestinatario, TipoRicevuta};

fn signer(digest: DigestAlg) -> Signer<'static> {
    Signer {
        key: &pki().key,
        digest,
    }
}

fn emission(id: &str) -> Emission {
    Emission {
        time: when(),
        message_id: id.to_string(),
    }
}

struct Expect {
    kind: &'static str,
    prefix: &'static str,
    tipo: Option<Tipo>,
    errore: Errore,
    postacert: bool,
}

/// The checks every built message must pass.
fn check(msg: &BuiltMessage, e: &Expect) {
    let bytes = msg.to_bytes();
    // a) the independent verifier
    openssl_verify(&bytes, pki().ca_file.path())
        .unwrap_or_else(|err| panic!("{}: openssl cms -verify failed: {err}", e.kind));
    // 7-bit safe signed content (no postacert with 8-bit here)
    assert!(bytes.iter().all(|b| *b < 0x80), "{}: 8-bit bytes", e.kind);
    assert!(
        bytes.split(|b| *b == b'\n').all(|l| l.len() <= 998),
        "{}: over-long line",
        e.kind
    );
    // our reader
    let insp = inspect(&bytes, &pki().trust, VerifyAt::SigningTime).expect("inspect");
    assert_eq!(insp.kind, e.kind);
    assert_eq!(
        insp.signature.status,
        SignatureStatus::Valid,
        "{:?}",
        insp.signature
    );
    assert!(
        insp.subject.as_deref().unwrap_or("").starts_with(e.prefix),
        "{}: subject {:?}",
        e.kind,
        insp.subject
    );
    let msg_read = read(&bytes).expect("read");
    // b) daticert against the DTD
    match e.tipo {
        Some(tipo) => {
            let d = msg_read
                .daticert
                .clone()
                .expect("daticert present")
                .expect("daticert parses");
            assert_eq!(d.tipo, tipo);
            assert_eq!(d.errore, e.errore);
            xmllint_valid(d.to_xml().as_bytes()).expect("daticert valid against the DTD");
            // and the very bytes carried in the message: the daticert.xml
            // part as an independent parser (Python's email) decodes it
            let carried = python_part(&bytes, "daticert.xml");
            xmllint_valid(&carried).unwrap_or_else(|err| {
                panic!(
                    "{}: the carried daticert.xml is not valid against the DTD: {err}\n{}",
                    e.kind,
                    String::from_utf8_lossy(&carried)
                )
            });
        }
        None => assert!(
            msg_read.daticert.is_none(),
            "{}: unexpected daticert",
            e.kind
        ),
    }
    // c) Python's email package
    let py = python_email(&bytes);
    assert_eq!(py["top"], "multipart/signed", "{py}");
    if e.postacert {
        assert_eq!(py["postacert"]["type"], "message/rfc822", "{py}");
        assert!(py["postacert"]["inner_subject"].is_string(), "{py}");
    } else {
        assert!(
            py["postacert"].is_null(),
            "{}: unexpected postacert {py}",
            e.kind
        );
        assert!(msg_read.postacert.is_none());
    }
    if e.tipo.is_some() {
        assert_eq!(py["daticert"], "application/xml");
    }
}

fn tx() -> pec_milter::pec::build::Transaction {
    transaction(
        "Fattura n. 42",
        &[
            ("anna.bianchi@pec.other.test", TipoDestinatario::Certificato),
            ("luca@example.org", TipoDestinatario::Esterno),
        ],
    )
}

#[test]
fn busta_trasporto() {
    let orig = original(
        "Fattura n. 42",
        "anna.bianchi@pec.other.test, luca@example.org",
    );
    let mut t = tx();
    t.msgid = original_msgid(&orig);
    assert_eq!(t.msgid.as_deref(), Some("<abc.123@client.example>"));
    for digest in [DigestAlg::Sha256, DigestAlg::Sha1] {
        let m =
            build_busta_trasporto(&provider(), &t, &orig, when(), signer(digest)).expect("build");
        check(
            &m,
            &Expect {
                kind: "posta-certificata",
                prefix: "POSTA CERTIFICATA: Fattura n. 42",
                tipo: Some(Tipo::PostaCertificata),
                errore: Errore::Nessuno,
                postacert: true,
            },
        );
        let bytes = m.to_bytes();
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("\r\nFrom: \"Per conto di: mario.rossi@pec.acme.test\" <posta-certificata@pec.acme.test>\r\n"));
        assert!(text.contains("\r\nMessage-ID: <opec.20261125093015.1234.1@pec.acme.test>\r\n"));
        assert!(text.contains("\r\nX-Riferimento-Message-ID: <abc.123@client.example>\r\n"));
        assert!(text.contains("\r\nX-TipoRicevuta: completa\r\n"));
        assert!(text.contains("\r\nReply-To: mario.rossi@pec.acme.test\r\n"));
        assert!(text.contains(&format!("micalg=\"{}\"", digest.micalg())));
        // inherited header fields, unchanged
        assert!(
            text.starts_with(
                "Received: from client (client [192.0.2.1])\r\n\tby mx.pec.acme.test;"
            )
        );
        assert!(text.contains("\r\nTo: anna.bianchi@pec.other.test, luca@example.org\r\n"));

        // postacert.eml is the original byte for byte but for the Message-ID
        let r = read(&bytes).expect("read");
        let post = r.postacert.expect("postacert");
        let expected = String::from_utf8_lossy(&orig).replace(
            "Message-ID: <abc.123@client.example>\r\n",
            "Message-ID: <opec.20261125093015.1234.1@pec.acme.test>\r\nX-Riferimento-Message-ID: <abc.123@client.example>\r\n",
        );
        assert_eq!(
            String::from_utf8_lossy(&post),
            expected.trim_end_matches("\r\n")
        );
        let d = r.daticert.expect("d").expect("d");
        assert_eq!(d.ricevuta, Some(TipoRicevuta::Completa));
        assert_eq!(d.msgid.as_deref(), Some("<abc.123@client.example>"));
        assert_eq!(d.identificativo, "opec.20261125093015.1234.1@pec.acme.test");
        assert_eq!(d.destinatari, t.destinatari);
        assert_eq!(
            d.data.format("%d/%m/%Y %H:%M:%S %z").to_string(),
            "25/11/2026 10:30:15 +0100"
        );
    }
}

#[test]
fn busta_trasporto_lf_original_and_8bit_body() {
    // an LF-stored original with 8-bit text: carried unchanged (CRLF) and
    // declared 8bit; the signature still holds for openssl and for us.
    let orig = "From: a@pec.acme.test\nTo: b@pec.other.test\nSubject: caff\u{e8}\nMessage-ID: <x@y>\n\nPerch\u{e9} no.\n".as_bytes();
    let t = transaction(
        "caffè",
        &[("b@pec.other.test", TipoDestinatario::Certificato)],
    );
    let m = build_busta_trasporto(&provider(), &t, orig, when(), signer(DigestAlg::Sha256))
        .expect("build");
    let bytes = m.to_bytes();
    openssl_verify(&bytes, pki().ca_file.path()).expect("openssl verifies");
    let i = inspect(&bytes, &pki().trust, VerifyAt::SigningTime).expect("inspect");
    assert_eq!(i.signature.status, SignatureStatus::Valid);
    assert!(String::from_utf8_lossy(&bytes).contains("Content-Transfer-Encoding: 8bit"));
    let post = read(&bytes).expect("read").postacert.expect("postacert");
    assert!(post.windows(2).all(|w| w != b"\n\n"));
    assert!(String::from_utf8_lossy(&post).contains("Perch\u{e9} no."));
}

#[test]
fn busta_anomalia() {
    let received = b"From: someone@example.org\r\nTo: anna@pec.acme.test\r\nSubject: ciao\r\nMessage-ID: <plain.1@example.org>\r\n\r\nnot PEC\r\n";
    let a = Anomalia {
        mittente: "someone@example.org".into(),
        oggetto: "ciao".into(),
        errore: "messaggio di posta ordinaria".into(),
        sicurezza: false,
    };
    let m = build_busta_anomalia(
        &provider(),
        &a,
        received,
        &emission("anom.1@pec.acme.test"),
        signer(DigestAlg::Sha256),
    )
    .expect("build");
    check(
        &m,
        &Expect {
            kind: "errore",
            prefix: "ANOMALIA MESSAGGIO: ciao",
            tipo: None,
            errore: Errore::Nessuno,
            postacert: true,
        },
    );
    let text = String::from_utf8_lossy(&m.to_bytes()).into_owned();
    // Message-ID kept from what arrived (PEC-RULES §2.3)
    assert!(text.contains("\r\nMessage-ID: <plain.1@example.org>\r\n"));
    assert!(text.contains("\r\nX-Trasporto: errore\r\n"));
    assert_eq!(
        text.matches("Message-ID:").count(),
        2,
        "outer + inside postacert"
    );
}

fn ricevuta_case(r: Ricevuta<'_>, e: Expect) -> BuiltMessage {
    let m = build_ricevuta(
        &provider(),
        &tx(),
        &r,
        &emission("ric.1@pec.acme.test"),
        signer(DigestAlg::Sha256),
    )
    .expect("build");
    check(&m, &e);
    let i = inspect(&m.to_bytes(), &pki().trust, VerifyAt::SigningTime).expect("inspect");
    assert_eq!(
        i.riferimento_message_id.as_deref(),
        Some("<abc.123@client.example>")
    );
    m
}

#[test]
fn accettazione_lists_every_recipient() {
    let m = ricevuta_case(
        Ricevuta::Accettazione,
        Expect {
            kind: "accettazione",
            prefix: "ACCETTAZIONE: Fattura n. 42",
            tipo: Some(Tipo::Accettazione),
            errore: Errore::Nessuno,
            postacert: false,
        },
    );
    let d = read(&m.to_bytes())
        .expect("r")
        .daticert
        .expect("d")
        .expect("d");
    assert_eq!(d.destinatari, tx().destinatari);
    assert_eq!(d.ricevuta, None);
    assert_eq!(d.consegna, None);
    let text = String::from_utf8_lossy(&m.to_bytes()).into_owned();
    assert!(text.contains("\r\nTo: mario.rossi@pec.acme.test\r\n"));
    assert!(text.contains("\r\nFrom: posta-certificata@pec.acme.test\r\n"));
}

#[test]
fn non_accettazione_formal_and_virus() {
    let m = ricevuta_case(
        Ricevuta::NonAccettazione {
            reason: "destinatario in Bcc".into(),
        },
        Expect {
            kind: "non-accettazione",
            prefix: "AVVISO DI NON ACCETTAZIONE: Fattura",
            tipo: Some(Tipo::NonAccettazione),
            errore: Errore::Altro,
            postacert: false,
        },
    );
    assert!(!String::from_utf8_lossy(&m.to_bytes()).contains("X-VerificaSicurezza"));
    let m = ricevuta_case(
        Ricevuta::NonAccettazioneVirus {
            virus: "Eicar-Test-Signature".into(),
        },
        Expect {
            kind: "non-accettazione",
            prefix: "AVVISO DI NON ACCETTAZIONE PER VIRUS: Fattura",
            tipo: Some(Tipo::NonAccettazione),
            errore: Errore::Virus,
            postacert: false,
        },
    );
    let i = inspect(&m.to_bytes(), &pki().trust, VerifyAt::SigningTime).expect("i");
    assert_eq!(i.verifica_sicurezza.as_deref(), Some("errore"));
}

#[test]
fn presa_in_carico_goes_to_the_sending_provider() {
    let m = ricevuta_case(
        Ricevuta::PresaInCarico {
            mail_receipt: "ricevute@pec.other.test".into(),
            ricezione: vec!["anna.bianchi@pec.other.test".into()],
        },
        Expect {
            kind: "presa-in-carico",
            prefix: "PRESA IN CARICO: Fattura",
            tipo: Some(Tipo::PresaInCarico),
            errore: Errore::Nessuno,
            postacert: false,
        },
    );
    let bytes = m.to_bytes();
    assert!(String::from_utf8_lossy(&bytes).contains("\r\nTo: ricevute@pec.other.test\r\n"));
    let d = read(&bytes).expect("r").daticert.expect("d").expect("d");
    assert_eq!(d.ricezione, vec!["anna.bianchi@pec.other.test".to_string()]);
}

#[test]
fn avvenuta_consegna_completa_breve_sintetica() {
    let orig = original("Fattura n. 42", "anna.bianchi@pec.other.test");
    let post =
        pec_milter::pec::build::rewrite_original(&orig, "opec.20261125093015.1234.1@pec.acme.test");
    for (tipo, has_post) in [
        (TipoRicevuta::Completa, true),
        (TipoRicevuta::Breve, true),
        (TipoRicevuta::Sintetica, false),
    ] {
        let m = ricevuta_case(
            Ricevuta::AvvenutaConsegna {
                consegna: "anna.bianchi@pec.other.test".into(),
                tipo,
                original: &post,
            },
            Expect {
                kind: "avvenuta-consegna",
                prefix: "CONSEGNA: Fattura",
                tipo: Some(Tipo::AvvenutaConsegna),
                errore: Errore::Nessuno,
                postacert: has_post,
            },
        );
        let raw = m.to_bytes();
        let r = read(&raw).expect("r");
        let d = r.daticert.clone().expect("d").expect("d");
        assert_eq!(d.ricevuta, Some(tipo));
        assert_eq!(d.consegna.as_deref(), Some("anna.bianchi@pec.other.test"));
        match tipo {
            TipoRicevuta::Completa => assert_eq!(
                r.postacert.as_deref(),
                Some(post.strip_suffix(b"\r\n").unwrap_or(&post))
            ),
            TipoRicevuta::Breve => {
                let p = String::from_utf8_lossy(r.postacert.as_deref().expect("post")).into_owned();
                let b64 =
                    "JVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3RoIDMgMCBSPj4Kc3RyZWFtCg==";
                assert!(!p.contains(b64));
                assert!(p.contains("documento.pdf.hash"));
                assert!(p.contains(&pec_milter::pec::breve::part_hash(b64.as_bytes())));
                assert!(p.contains("Buongiorno, in allegato il documento."));
            }
            TipoRicevuta::Sintetica => assert!(r.postacert.is_none()),
        }
    }
}

#[test]
fn errore_consegna_variants() {
    let m = ricevuta_case(
        Ricevuta::ErroreConsegna {
            consegna: "nessuno@pec.other.test".into(),
            errore: Errore::NoDest,
            errore_esteso: "5.1.1 - utente sconosciuto".into(),
        },
        Expect {
            kind: "errore-consegna",
            prefix: "AVVISO DI MANCATA CONSEGNA: Fattura",
            tipo: Some(Tipo::ErroreConsegna),
            errore: Errore::NoDest,
            postacert: false,
        },
    );
    let d = read(&m.to_bytes())
        .expect("r")
        .daticert
        .expect("d")
        .expect("d");
    assert_eq!(
        d.errore_esteso.as_deref(),
        Some("5.1.1 - utente sconosciuto")
    );
    assert_eq!(d.consegna.as_deref(), Some("nessuno@pec.other.test"));
    ricevuta_case(
        Ricevuta::ErroreConsegnaVirus {
            consegna: "anna.bianchi@pec.other.test".into(),
            virus: "Eicar".into(),
        },
        Expect {
            kind: "errore-consegna",
            prefix: "AVVISO DI MANCATA CONSEGNA PER VIRUS: Fattura",
            tipo: Some(Tipo::ErroreConsegna),
            errore: Errore::Virus,
            postacert: false,
        },
    );
}

#[test]
fn preavviso_12h_and_24h() {
    for finale in [false, true] {
        ricevuta_case(
            Ricevuta::PreavvisoErroreConsegna {
                consegna: "anna.bianchi@pec.other.test".into(),
                finale,
            },
            Expect {
                kind: "preavviso-errore-consegna",
                prefix: "AVVISO DI MANCATA CONSEGNA PER SUP. TEMPO MASSIMO: Fattura",
                tipo: Some(Tipo::PreavvisoErroreConsegna),
                errore: Errore::Altro,
                postacert: false,
            },
        );
    }
}

#[test]
fn rilevazione_virus() {
    let m = ricevuta_case(
        Ricevuta::RilevazioneVirus {
            mail_receipt: "ricevute@pec.other.test".into(),
            consegna: "anna.bianchi@pec.acme.test".into(),
            virus: "Eicar".into(),
        },
        Expect {
            kind: "rilevazione-virus",
            prefix: "PROBLEMA DI SICUREZZA: Fattura",
            tipo: Some(Tipo::RilevazioneVirus),
            errore: Errore::Virus,
            postacert: false,
        },
    );
    let i = inspect(&m.to_bytes(), &pki().trust, VerifyAt::SigningTime).expect("i");
    assert_eq!(i.mittente.as_deref(), Some("mario.rossi@pec.acme.test"));
}

#[test]
fn unicode_subject_is_rfc2047_and_reads_back() {
    let subject = "Perché “così”? ☃ 𝄞 — ok";
    let mut t = tx();
    t.oggetto = subject.into();
    let m = build_ricevuta(
        &provider(),
        &t,
        &Ricevuta::Accettazione,
        &emission("u.1@pec.acme.test"),
        signer(DigestAlg::Sha256),
    )
    .expect("build");
    let bytes = m.to_bytes();
    assert!(bytes.iter().all(|b| *b < 0x80));
    openssl_verify(&bytes, pki().ca_file.path()).expect("verify");
    let i = inspect(&bytes, &pki().trust, VerifyAt::SigningTime).expect("i");
    assert_eq!(
        i.subject.as_deref(),
        Some(format!("ACCETTAZIONE: {subject}").as_str())
    );
    assert_eq!(i.daticert.expect("d").oggetto.as_deref(), Some(subject));
    let py = python_email(&bytes);
    assert_eq!(py["subject"], format!("ACCETTAZIONE: {subject}"));
}

/// Must show 3: one flipped byte anywhere in the signed part breaks it.
#[test]
fn one_flipped_byte_anywhere_in_the_signed_part_fails() {
    let orig = original("Fattura n. 42", "anna.bianchi@pec.other.test");
    let m = build_busta_trasporto(&provider(), &tx(), &orig, when(), signer(DigestAlg::Sha256))
        .expect("build");
    let bytes = m.to_bytes();
    let r = read(&bytes).expect("read");
    let content = r.signed.expect("signed").content;
    let start = bytes
        .windows(content.len())
        .position(|w| w == &content[..])
        .expect("signed part located");
    // every 7th byte of the signed part, plus its first and last byte
    let mut positions: Vec<usize> = (0..content.len()).step_by(7).collect();
    positions.push(content.len() - 1);
    for off in positions {
        let mut bad = bytes.clone();
        let b = bad[start + off];
        // flip to another printable character, keeping line structure
        bad[start + off] = if b == b'\r' || b == b'\n' {
            b' '
        } else if b == b'x' {
            b'y'
        } else {
            b'x'
        };
        let i = inspect(&bad, &pki().trust, VerifyAt::SigningTime);
        if let Ok(i) = i {
            assert_ne!(
                i.signature.status,
                SignatureStatus::Valid,
                "flip at {off} went unnoticed"
            );
        }
    }
}

#[test]
fn signature_from_another_ca_is_not_trusted() {
    let other = pec_milter::crypto::pki::Pki::generate("Rogue", "rogue.test", 30).expect("pki");
    let key = other.signing_key().expect("key");
    let m = build_ricevuta(
        &provider(),
        &tx(),
        &Ricevuta::Accettazione,
        &emission("r.1@pec.acme.test"),
        Signer {
            key: &key,
            digest: DigestAlg::Sha256,
        },
    )
    .expect("build");
    let i = inspect(&m.to_bytes(), &pki().trust, VerifyAt::SigningTime).expect("i");
    assert_eq!(i.signature.status, SignatureStatus::Invalid);
    assert!(i.signature.integrity_ok && !i.signature.chain_ok);
}

#[test]
fn kinds_are_classified_from_the_built_headers() {
    let m = build_ricevuta(
        &provider(),
        &tx(),
        &Ricevuta::Accettazione,
        &emission("k.1@pec.acme.test"),
        signer(DigestAlg::Sha256),
    )
    .expect("build");
    assert_eq!(
        read(&m.to_bytes()).expect("r").kind,
        MessageKind::Ricevuta(Tipo::Accettazione)
    );
}

/// The busta di trasporto built from an original spooled to disk, and
/// written to a spool file, is byte for byte the one built in memory: for
/// 8-bit and binary originals, bare LF / CR, a body without a final line
/// end, an empty body, and a body larger than the read pieces; and it
/// verifies.
#[test]
fn busta_trasporto_spooled_equals_in_memory() {
    use pec_milter::pec::build::write_busta_trasporto;
    use pec_milter::roles::{Original, SpooledMessage};
    use pec_milter::spool::{SpoolOptions, SpoolWriter};
    let dir = tempfile::tempdir().expect("tempdir");
    let disk = SpoolOptions {
        dir: dir.path().to_path_buf(),
        memory_limit: 0,
    };
    let mut big = String::new();
    for i in 0..12_000 {
        big.push_str(&format!("riga {i} del corpo, con un po' di testo\r\n"));
    }
    let originals: Vec<Vec<u8>> = vec![
        b"From: mario.rossi@pec.acme.test\r\nTo: a@pec.acme.test\r\nSubject: s\r\nMessage-ID: <x@y>\r\n\r\nciao\r\n".to_vec(),
        b"From: mario.rossi@pec.acme.test\nTo: a@pec.acme.test\nSubject: lf\n\nbare\nlf\rcr\n\xe8 8-bit".to_vec(),
        b"From: mario.rossi@pec.acme.test\r\nTo: a@pec.acme.test\r\n\r\n".to_vec(),
        format!("From: mario.rossi@pec.acme.test\r\nTo: a@pec.acme.test\r\nSubject: big\r\n\r\n{big}").into_bytes(),
        format!("From: mario.rossi@pec.acme.test\r\nTo: a@pec.acme.test\r\n\r\n{}\r\n", "x".repeat(2000)).into_bytes(),
    ];
    let t = transaction("s", &[("a@pec.acme.test", TipoDestinatario::Certificato)]);
    for orig in &originals {
        let mem = build_busta_trasporto(&provider(), &t, orig, when(), signer(DigestAlg::Sha256))
            .expect("in memory");
        // The original's body spooled to disk in odd pieces, as a milter gets it.
        let split = Original::from_bytes(orig);
        let mut w = SpoolWriter::new(disk.clone());
        let body = split.body.to_vec().expect("body");
        for piece in body.chunks(7777) {
            w.write(piece).expect("spool");
        }
        let on_disk = Original {
            header: split.header.clone(),
            body: w.finish().expect("finish"),
        };
        assert_eq!(on_disk.body.is_on_disk(), !body.is_empty());
        let mut out = SpoolWriter::raw(disk.clone());
        let headers = write_busta_trasporto(
            &provider(),
            &t,
            &on_disk.header,
            &on_disk.body,
            when(),
            signer(DigestAlg::Sha256),
            &mut out,
        )
        .expect("spooled");
        let spooled = SpooledMessage {
            headers,
            body: out.finish().expect("finish"),
        };
        assert!(spooled.body.is_on_disk());
        assert_eq!(spooled.headers, mem.headers);
        assert_eq!(spooled.body.to_vec().expect("read"), mem.body);
        let bytes = spooled.to_bytes().expect("bytes");
        let insp = inspect(&bytes, &pki().trust, VerifyAt::SigningTime).expect("inspect");
        assert_eq!(insp.kind, "posta-certificata");
        assert_eq!(
            insp.signature.status,
            SignatureStatus::Valid,
            "{:?}",
            insp.signature
        );
    }
    // Nothing left behind in the spool directory (unnamed files).
    assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
}

/// The holder's extract of the message log, issued signed: openssl and our
/// own check accept the signature; the text reads back; a changed byte of
/// the text breaks it; a header field cannot be smuggled in.
#[test]
fn a_signed_text_verifies_and_a_changed_byte_does_not() {
    use pec_milter::pec::build::build_signed_text;
    let text =
        "2026-12-07T10:00:00+01:00  accettazione\n  pec id:  opec.1@pec.acme.test\n  città\n";
    let bytes = build_signed_text(
        &provider(),
        "mario@pec.acme.test",
        "Estratto del log dei messaggi",
        text,
        &emission("estratto.1@pec.acme.test"),
        signer(DigestAlg::Sha256),
    )
    .expect("build");
    openssl_verify(&bytes, pki().ca_file.path()).expect("openssl verifies");
    let i = inspect(&bytes, &pki().trust, VerifyAt::SigningTime).expect("inspect");
    assert_eq!(i.signature.status, SignatureStatus::Valid);
    let parsed = mail_parser::MessageParser::default()
        .parse(&bytes)
        .expect("parses");
    assert_eq!(parsed.body_text(0).as_deref(), Some(text));
    // one character of the base64 text changed
    let s = String::from_utf8_lossy(&bytes).into_owned();
    let at = s.find("base64\r\n\r\n").expect("part") + 10;
    let mut bad = bytes.clone();
    bad[at] = if bad[at] == b'A' { b'B' } else { b'A' };
    let i = inspect(&bad, &pki().trust, VerifyAt::SigningTime).expect("inspect");
    assert_ne!(i.signature.status, SignatureStatus::Valid);
    assert!(
        build_signed_text(
            &provider(),
            "x@y\r\nBcc: z@w",
            "s",
            "t",
            &emission("e@x"),
            signer(DigestAlg::Sha256)
        )
        .is_err()
    );
}
