//! Property tests: what the builders write, the reader reads back exactly
//! (Unicode subjects, 1..500 recipients, folded header fields), and the
//! signature holds (issue "Must show" 2d).

mod common;

use common::*;
use pec_milter::crypto::DigestAlg;
use pec_milter::crypto::verify::{SignatureStatus, VerifyAt};
use pec_milter::pec::build::{
    Emission, Ricevuta, Signer, Transaction, build_busta_trasporto, build_ricevuta,
};
use pec_milter::pec::inspect::inspect;
use pec_milter::pec::reader::read;
use pec_milter::pec::{Destinatario, TipoDestinatario, TipoRicevuta};
use proptest::prelude::*;

fn address() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9._-]{0,15}@[a-z0-9][a-z0-9-]{0,12}\\.(test|it|example)"
}

fn destinatari() -> impl Strategy<Value = Vec<Destinatario>> {
    prop::collection::vec(
        (address(), any::<bool>()).prop_map(|(address, c)| Destinatario {
            address,
            tipo: if c {
                TipoDestinatario::Certificato
            } else {
                TipoDestinatario::Esterno
            },
        }),
        1..500,
    )
}

/// Unicode text without control characters (a subject is one line).
fn subject() -> impl Strategy<Value = String> {
    "[^\\p{Cc}\u{FFFE}\u{FFFF}]{0,120}"
}

fn tipo_ricevuta() -> impl Strategy<Value = TipoRicevuta> {
    prop_oneof![
        Just(TipoRicevuta::Completa),
        Just(TipoRicevuta::Breve),
        Just(TipoRicevuta::Sintetica)
    ]
}

/// A To: field folded every three addresses, as clients write long lists.
fn folded_to(dest: &[Destinatario]) -> String {
    let mut s = String::from("To: ");
    for (i, d) in dest.iter().enumerate() {
        if i > 0 {
            s.push(',');
            s.push_str(if i % 3 == 0 { "\r\n\t" } else { " " });
        }
        s.push_str(&d.address);
    }
    s.push_str("\r\n");
    s
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, .. ProptestConfig::default() })]

    #[test]
    fn envelope_and_receipts_read_back_exactly(
        oggetto in subject(),
        dest in destinatari(),
        ricevuta in tipo_ricevuta(),
        sha1 in any::<bool>(),
    ) {
        let digest = if sha1 { DigestAlg::Sha1 } else { DigestAlg::Sha256 };
        let signer = Signer { key: &pki().key, digest };
        let to = folded_to(&dest);
        let subject_field = pec_milter::pec::mime::unstructured_header("Subject", &oggetto);
        let original = format!(
            "From: mario.rossi@pec.acme.test\r\n{to}{subject_field}Message-ID: <p.1@client>\r\nX-TipoRicevuta: {ricevuta}\r\n\r\ncorpo\r\n"
        );
        let tx = Transaction {
            identificativo: "opec.prop.1@pec.acme.test".into(),
            mittente: "mario.rossi@pec.acme.test".into(),
            destinatari: dest.clone(),
            risposte: "mario.rossi@pec.acme.test".into(),
            oggetto: oggetto.clone(),
            msgid: Some("<p.1@client>".into()),
            ricevuta,
        };
        let env = build_busta_trasporto(&provider(), &tx, original.as_bytes(), when(), signer)
            .expect("envelope");
        let bytes = env.to_bytes();
        // folded To: is inherited unchanged
        prop_assert!(bytes.windows(to.len()).any(|w| w == to.as_bytes()));
        let i = inspect(&bytes, &pki().trust, VerifyAt::SigningTime).expect("inspect");
        prop_assert_eq!(i.signature.status, SignatureStatus::Valid);
        prop_assert_eq!(i.kind.as_str(), "posta-certificata");
        let want_tipo = ricevuta.to_string();
        prop_assert_eq!(i.tipo_ricevuta.as_deref(), Some(want_tipo.as_str()));
        let want_subject = format!("POSTA CERTIFICATA: {oggetto}");
        prop_assert_eq!(
            i.subject.as_deref().map(str::trim_end),
            Some(want_subject.trim_end())
        );
        let r = read(&bytes).expect("read");
        let d = r.daticert.expect("daticert").expect("parses");
        prop_assert_eq!(&d.destinatari, &dest);
        prop_assert_eq!(d.oggetto.as_deref(), Some(oggetto.as_str()));
        prop_assert_eq!(d.ricevuta, Some(ricevuta));
        prop_assert_eq!(d.msgid.as_deref(), Some("<p.1@client>"));
        prop_assert_eq!(d.identificativo.as_str(), "opec.prop.1@pec.acme.test");
        let post = r.postacert.expect("postacert");
        let inner = read(&post).expect("inner");
        prop_assert_eq!(inner.message_id.as_deref(), Some("<opec.prop.1@pec.acme.test>"));
        prop_assert_eq!(inner.riferimento_message_id.as_deref(), Some("<p.1@client>"));

        // the acceptance receipt and a delivery receipt about it
        for ric in [
            Ricevuta::Accettazione,
            Ricevuta::AvvenutaConsegna { consegna: dest[0].address.clone(), tipo: ricevuta, original: &post },
        ] {
            let m = build_ricevuta(&provider(), &tx, &ric, &Emission { time: when(), message_id: "r.prop@pec.acme.test".into() }, signer).expect("receipt");
            let b = m.to_bytes();
            let i = inspect(&b, &pki().trust, VerifyAt::SigningTime).expect("inspect");
            prop_assert_eq!(i.signature.status, SignatureStatus::Valid);
            let d = read(&b).expect("read").daticert.expect("d").expect("d");
            prop_assert_eq!(d.tipo, ric.tipo());
            prop_assert_eq!(&d.destinatari, &dest);
            prop_assert_eq!(d.oggetto.as_deref(), Some(oggetto.as_str()));
            prop_assert_eq!(d.mittente.as_str(), "mario.rossi@pec.acme.test");
            prop_assert_eq!(d.gestore_emittente.as_str(), "ACME PEC S.p.A.");
        }
    }
}
