//! The reception point's decisions (PEC-RULES §2.3, §2.6, §2.10, §4.3):
//! envelopes signed by another provider listed in the index, tampered or
//! rogue ones, plain mail, viruses, the real Aruba envelopes, and retries.
//! The index is a real LDIF file loaded by ProviderIndex; the scanner and
//! the injector are fakes (the real ones run in integration/).

mod common;

use std::sync::{Arc, Mutex};

use chrono::Utc;
use common::*;
use pec_milter::config::OrdinaryMail;
use pec_milter::crypto::DigestAlg;
use pec_milter::crypto::pem::PemKey;
use pec_milter::crypto::verify::{SignatureStatus, TrustStore, VerifyAt};
use pec_milter::index::{IndexSource, ProviderIndex, ldif};
use pec_milter::pec::build::{Provider, Signer, Transaction};
use pec_milter::pec::inspect::inspect;
use pec_milter::pec::reader::read;
use pec_milter::pec::{TipoDestinatario, TipoRicevuta};
use pec_milter::roles::Inbound;
use pec_milter::roles::reception::ReceptionPoint;
use pec_milter::roles::{InjectError, Injector, Outcome, ScanError, Scanner, Verdict};
use pec_milter::spool::SpoolOptions;
use pec_milter::state::StateStore;
use pec_milter::state::embedded::EmbeddedStore;

struct FakeScanner;

#[async_trait::async_trait]
impl Scanner for FakeScanner {
    async fn scan(&self, message: &[u8]) -> Result<Verdict, ScanError> {
        let needle = b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE";
        Ok(if message.windows(needle.len()).any(|w| w == needle) {
            Verdict::Infected("Eicar-Test-Signature".into())
        } else {
            Verdict::Clean
        })
    }
}

type Injected = (String, Vec<String>, Vec<u8>);

/// Records every injection; `down` makes injections fail (the reinjection
/// listener is down).
#[derive(Default)]
struct Recorder(Mutex<Vec<Injected>>, std::sync::atomic::AtomicBool);

#[async_trait::async_trait]
impl Injector for Recorder {
    async fn inject(&self, from: &str, to: &[String], message: &[u8]) -> Result<(), InjectError> {
        if self.1.load(std::sync::atomic::Ordering::SeqCst) {
            return Err("reinjection listener down (test)".into());
        }
        self.0.lock().map_err(|e| e.to_string())?.push((
            from.into(),
            to.to_vec(),
            message.to_vec(),
        ));
        Ok(())
    }
}

impl Recorder {
    fn set_down(&self, down: bool) {
        self.1.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    fn all(&self) -> Vec<Injected> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// The signer certificate of a real sample, as its signature carries it.
fn sample_signer_pem(name: &str) -> Vec<u8> {
    let raw = std::fs::read(fixtures().join("samples").join(name)).expect("sample");
    let msg = read(&raw).expect("read");
    let v = pec_milter::pec::inspect::check_signature(
        &msg,
        &TrustStore::empty(),
        VerifyAt::SigningTime,
    );
    let der = v.signer_der.expect("signer der");
    openssl::x509::X509::from_der(&der)
        .expect("x509")
        .to_pem()
        .expect("pem")
}

struct Rig {
    rp: ReceptionPoint,
    injected: Arc<Recorder>,
    _dir: tempfile::TempDir,
    state: Arc<dyn StateStore>,
}

/// (event, outcome) of every record in the rig's message log.
fn logged(r: &Rig) -> Vec<(String, String)> {
    logged_events(&r._dir.path().join("log/rx"))
        .into_iter()
        .map(|e| (e.event.wire().to_string(), e.outcome))
        .collect()
}

async fn rig(ordinary: OrdinaryMail, verify_at: VerifyAt, load: bool) -> Rig {
    let dir = tempfile::tempdir().expect("tmp");
    let ldif_path = dir.path().join("igpec.ldif");
    let mut entries = acme_and_b(&["pec.b.test", "mail.pec.b.test"]);
    entries.extend([
        entry(
            "ARUBA PEC S.p.A.",
            &sample_signer_pem("OCA+l10n-italy__l10n_it_pec_messages__message1"),
            &["pec.aruba.it", "pec.it"],
            "ricevute@pec.aruba.it",
        ),
        entry(
            "Sogei S.p.A.",
            &sample_signer_pem(
                "OCA+l10n-italy__l10n_it_fatturapa_pec__POSTA_CERTIFICATA__Invio_File_7339338.txt",
            ),
            // the SDI writes from pec.fatturapa.it, a domain Sogei manages: the
            // daticert mittente of its envelopes is there
            &["pcert.sogei.it", "pec.fatturapa.it"],
            "ricevute@pcert.sogei.it",
        ),
    ]);
    std::fs::write(&ldif_path, ldif::write(&entries)).expect("write ldif");
    let index = Arc::new(ProviderIndex::new(IndexSource::Ldif(ldif_path)));
    if load {
        index.refresh().await.expect("index loads");
    }
    let roots = fixtures().join("roots");
    let trust = TrustStore::from_pem_files(&[
        pki().ca_file.path().to_path_buf(),
        roots.join("Baltimore_CyberTrust_Root.pem"),
        roots.join("Actalis_Authentication_Root_CA.pem"),
    ])
    .expect("trust");
    let mut trust = trust;
    trust.extend(&TrustStore::from_pem_bytes(&[&other().pki.ca_cert_pem]).expect("B's CA"));
    let state: Arc<dyn StateStore> =
        Arc::new(EmbeddedStore::open(&dir.path().join("state")).expect("state"));
    let injected = Arc::new(Recorder::default());
    let rp = ReceptionPoint {
        provider: provider(),
        key: Arc::new(pki().pki.signing_key().expect("key")),
        digest: DigestAlg::Sha256,
        trust,
        verify_at,
        index,
        state: state.clone(),
        scanner: Some(Arc::new(FakeScanner)),
        injector: injected.clone(),
        log: Arc::new(
            pec_milter::log::writer::FileLog::open(&pec_milter::log::writer::LogOptions {
                dir: dir.path().join("log"),
                node: "rx".into(),
            })
            .expect("message log"),
        ),
        ordinary_mail: ordinary,
        quarantine_dir: dir.path().join("quarantine"),
        retention_secs: 3600,
        spool: SpoolOptions {
            dir: dir.path().join("spool"),
            memory_limit: 4096,
        },
    };
    Rig {
        rp,
        injected,
        _dir: dir,
        state,
    }
}

fn inbound(message: Vec<u8>) -> Inbound {
    Inbound {
        queue_id: Some("Q1".into()),
        mail_from: "posta-certificata@pec.b.test".into(),
        rcpts: vec!["mario@pec.acme.test".into()],
        message: on_disk(&message),
    }
}

/// `got` is `want`, byte for byte; on a difference, says where.
fn assert_same_bytes(got: &[u8], want: &[u8], what: &str) {
    if got == want {
        return;
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let around = |b: &[u8]| {
        String::from_utf8_lossy(&b[at.saturating_sub(40)..(at + 40).min(b.len())]).into_owned()
    };
    panic!(
        "{what}: the carried original differs from the received one at byte {at} \
         ({} bytes carried, {} received):\ncarried:  {:?}\nreceived: {:?}",
        got.len(),
        want.len(),
        around(got),
        around(want)
    );
}

fn anomaly_of(o: &Outcome) -> Vec<u8> {
    match o {
        Outcome::Rewrite { message, .. } => message.to_bytes().expect("envelope bytes"),
        other => panic!("expected an anomaly envelope, got {other:?}"),
    }
}

#[tokio::test]
async fn a_correct_envelope_from_another_provider_is_taken_in_charge() {
    let r = rig(OrdinaryMail::Anomaly, VerifyAt::Now, true).await;
    let env = envelope_from_b("ciao", &other().key, "pec.b.test");
    let o = r.rp.process(&inbound(env), Utc::now()).await;
    assert!(matches!(o, Outcome::Deliver { .. }), "{o:?}");
    let sent = r.injected.all();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1, vec!["ricevute@pec.b.test".to_string()]);
    let i = inspect(&sent[0].2, &pki().trust, VerifyAt::Now).expect("inspect");
    assert_eq!(i.kind, "presa-in-carico");
    assert_eq!(i.signature.status, SignatureStatus::Valid);
    let d = i.daticert.expect("daticert");
    assert_eq!(d.identificativo, "opec.b.1@pec.b.test");
    assert_eq!(d.ricezione, vec!["mario@pec.acme.test".to_string()]);
    assert_eq!(d.mittente, "luigi@pec.b.test");
    // an MTA retry of the same envelope bytes: delivered again, one receipt
    let first = inbound(envelope_from_b("retry", &other().key, "pec.b.test"));
    let o1 = r.rp.process(&first, Utc::now()).await;
    let o2 = r.rp.process(&first, Utc::now()).await;
    assert!(matches!(o1, Outcome::Deliver { .. }) && matches!(o2, Outcome::Deliver { .. }));
    assert_eq!(r.injected.all().len(), 2);
    // the presa in carico recorded before it left, once for this PEC id
    let log = logged(&r);
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].0, "presa-in-carico");
    assert!(log[0].1.contains("mario@pec.acme.test"), "{log:?}");
}

/// The reinjection listener down when an envelope arrives: the presa in
/// carico is queued with the claim in one write (so the envelope is
/// delivered, its receipt safe), the MTA's retry issues none again, and
/// the outbox pass sends it once the listener is back: exactly one.
#[tokio::test]
async fn a_presa_in_carico_waits_in_the_outbox_and_leaves_once() {
    use pec_milter::roles::outbox::OutboxSender;
    let r = rig(OrdinaryMail::Anomaly, VerifyAt::Now, true).await;
    let ib = inbound(envelope_from_b("outbox", &other().key, "pec.b.test"));
    r.injected.set_down(true);
    let o = r.rp.process(&ib, Utc::now()).await;
    assert!(matches!(o, Outcome::Deliver { .. }), "{o:?}");
    assert!(r.injected.all().is_empty());
    let waiting = r.state.outbox_due(i64::MAX, 10).await.expect("due");
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0].to, vec!["ricevute@pec.b.test".to_string()]);
    r.injected.set_down(false);
    let o = r.rp.process(&ib, Utc::now()).await;
    assert!(matches!(o, Outcome::Deliver { .. }), "{o:?}");
    assert!(
        r.injected.all().is_empty(),
        "the retry issues nothing again"
    );
    let pass = OutboxSender {
        state: r.state.as_ref(),
        injector: r.injected.as_ref(),
        grace: std::time::Duration::ZERO,
        lease: std::time::Duration::from_secs(60),
    };
    assert_eq!(pass.pass(Utc::now()).await.expect("pass"), 1);
    assert_eq!(pass.pass(Utc::now()).await.expect("pass"), 0);
    let sent = r.injected.all();
    assert_eq!(sent.len(), 1);
    let i = inspect(&sent[0].2, &pki().trust, VerifyAt::Now).expect("inspect");
    assert_eq!(i.kind, "presa-in-carico");
    assert_eq!(i.signature.status, SignatureStatus::Valid);
    assert!(
        r.state
            .outbox_due(i64::MAX, 10)
            .await
            .expect("due")
            .is_empty()
    );
    // its event recorded once, before it was queued
    assert_eq!(logged(&r).len(), 1);
}

#[tokio::test]
async fn tampered_rogue_and_foreign_domain_envelopes_become_anomalies() {
    let r = rig(OrdinaryMail::Anomaly, VerifyAt::Now, true).await;
    // one byte changed in the signed part
    let mut env = envelope_from_b("ciao", &other().key, "pec.b.test");
    let text = String::from_utf8_lossy(&env).into_owned();
    let at = text.find("Messaggio di posta certificata").expect("text");
    env[at] = b'm';
    // signed by a certificate of the same CA that the index does not list
    let (rogue_cert, rogue_key) = other()
        .pki
        .issue_leaf("Beta PEC S.p.A.", "pec.b.test", 30)
        .expect("rogue");
    let rogue = PemKey::from_pem(&rogue_key, &rogue_cert).expect("rogue key");
    // B's key, but From: a domain B does not manage
    let cases = [
        ("altered", env),
        ("rogue", envelope_from_b("ciao", &rogue, "pec.b.test")),
        (
            "domain",
            envelope_from_b("ciao", &other().key, "pec.c.test"),
        ),
    ];
    for (what, msg) in cases {
        let o = r.rp.process(&inbound(msg.clone()), Utc::now()).await;
        let out = anomaly_of(&o);
        let i = inspect(&out, &pki().trust, VerifyAt::Now).expect("inspect");
        assert_eq!(i.kind, "errore", "{what}");
        assert_eq!(i.verifica_sicurezza.as_deref(), Some("errore"), "{what}");
        assert_eq!(
            i.signature.status,
            SignatureStatus::Valid,
            "{what}: our signature"
        );
        assert!(
            i.subject
                .unwrap_or_default()
                .starts_with("ANOMALIA MESSAGGIO: ")
        );
        // the received message is carried whole: the same bytes (CRLF line
        // ends, no trailing blank lines)
        let post = read(&out).expect("r").postacert.expect("postacert");
        let want = pec_milter::pec::mime::canonicalize_crlf(&msg);
        assert_same_bytes(&post, want.trim_ascii_end(), what);
    }
    assert!(r.injected.all().is_empty(), "no take-charge receipt");
    // each anomaly recorded, with why
    let log = logged(&r);
    let kinds: Vec<&str> = log.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(kinds, ["anomalia", "anomalia", "anomalia"], "{log:?}");
    assert!(log[0].1.contains("firma non valida"), "{log:?}");
    assert!(log[1].1.contains("indice dei gestori"), "{log:?}");
    assert!(log[2].1.contains("non è gestito"), "{log:?}");
}

#[tokio::test]
async fn plain_mail_is_wrapped_or_rejected_as_configured() {
    let plain = b"From: someone@example.org\r\nTo: mario@pec.acme.test\r\nSubject: ciao\r\nMessage-ID: <p@example.org>\r\n\r\nhello\r\n".to_vec();
    let r = rig(OrdinaryMail::Anomaly, VerifyAt::Now, true).await;
    let o = r.rp.process(&inbound(plain.clone()), Utc::now()).await;
    let out = anomaly_of(&o);
    let i = inspect(&out, &pki().trust, VerifyAt::Now).expect("inspect");
    assert_eq!(i.kind, "errore");
    assert_eq!(i.verifica_sicurezza, None);
    assert_eq!(i.message_id.as_deref(), Some("<p@example.org>"));
    let r = rig(OrdinaryMail::Reject, VerifyAt::Now, true).await;
    let o = r.rp.process(&inbound(plain), Utc::now()).await;
    assert!(matches!(o, Outcome::Reject { code: 550, .. }), "{o:?}");
}

#[tokio::test]
async fn a_virus_in_an_envelope_is_reported_to_the_sending_provider() {
    let r = rig(OrdinaryMail::Anomaly, VerifyAt::Now, true).await;
    let env = envelope_from_b(
        "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*",
        &other().key,
        "pec.b.test",
    );
    let o = r.rp.process(&inbound(env.clone()), Utc::now()).await;
    assert!(matches!(o, Outcome::Discard { .. }), "{o:?}");
    // An infected envelope is still a correct one (PEC-RULES §7.3): its
    // presa in carico first, then the rilevazione-virus, both to B.
    let sent = r.injected.all();
    assert_eq!(sent.len(), 2);
    for s in &sent {
        assert_eq!(s.1, vec!["ricevute@pec.b.test".to_string()]);
    }
    let first = inspect(&sent[0].2, &pki().trust, VerifyAt::Now).expect("inspect");
    assert_eq!(first.kind, "presa-in-carico");
    // the MTA's retry of the same envelope sends nothing again
    let o = r.rp.process(&inbound(env), Utc::now()).await;
    assert!(matches!(o, Outcome::Discard { .. }), "{o:?}");
    assert_eq!(r.injected.all().len(), 2);
    let i = inspect(&sent[1].2, &pki().trust, VerifyAt::Now).expect("inspect");
    assert_eq!(i.kind, "rilevazione-virus");
    assert_eq!(i.mittente.as_deref(), Some("luigi@pec.b.test"));
    let d = i.daticert.expect("d");
    assert_eq!(d.errore, "virus");
    assert_eq!(d.consegna.as_deref(), Some("mario@pec.acme.test"));
}

#[tokio::test]
async fn the_real_aruba_and_sogei_envelopes_pass_reception_at_their_signing_time() {
    let r = rig(OrdinaryMail::Anomaly, VerifyAt::SigningTime, true).await;
    for (name, receipt) in [
        (
            "OCA+l10n-italy__l10n_it_pec_messages__message1",
            "ricevute@pec.aruba.it",
        ),
        (
            "OCA+l10n-italy__l10n_it_pec_messages__message2",
            "ricevute@pec.aruba.it",
        ),
        (
            "OCA+l10n-italy__l10n_it_fatturapa_pec__POSTA_CERTIFICATA__Invio_File_7339338.txt",
            "ricevute@pcert.sogei.it",
        ),
    ] {
        let raw = std::fs::read(fixtures().join("samples").join(name)).expect("sample");
        let before = r.injected.all().len();
        let o = r.rp.process(&inbound(raw), Utc::now()).await;
        assert!(matches!(o, Outcome::Deliver { .. }), "{name}: {o:?}");
        let sent = r.injected.all();
        assert_eq!(sent.len(), before + 1, "{name}");
        assert_eq!(sent[before].1, vec![receipt.to_string()]);
        assert_eq!(
            read(&sent[before].2).expect("r").kind.wire(),
            "presa-in-carico"
        );
    }
    // checked "now", the 2014 chain has expired: anomaly
    let r = rig(OrdinaryMail::Anomaly, VerifyAt::Now, true).await;
    let raw =
        std::fs::read(fixtures().join("samples/OCA+l10n-italy__l10n_it_pec_messages__message1"))
            .expect("sample");
    let o = r.rp.process(&inbound(raw), Utc::now()).await;
    assert!(matches!(o, Outcome::Rewrite { .. }), "{o:?}");
}

#[tokio::test]
async fn without_a_loaded_index_nothing_is_decided() {
    let r = rig(OrdinaryMail::Anomaly, VerifyAt::Now, false).await;
    let env = envelope_from_b("ciao", &other().key, "pec.b.test");
    let o = r.rp.process(&inbound(env), Utc::now()).await;
    assert!(matches!(o, Outcome::Tempfail { .. }), "{o:?}");
    assert!(r.injected.all().is_empty());
}

#[tokio::test]
async fn a_take_charge_receipt_for_our_envelope_updates_its_state() {
    use pec_milter::pec::build::{Emission, Ricevuta, build_ricevuta};
    use pec_milter::state::{EnvelopeRecord, RecipientState, RecipientStatus};
    let r = rig(OrdinaryMail::Anomaly, VerifyAt::Now, true).await;
    // our envelope opec.20261125093015.1234.1@pec.acme.test to B's holder
    let rec = EnvelopeRecord {
        pec_id: "opec.20261125093015.1234.1@pec.acme.test".into(),
        original_msgid: Some("<abc.123@client.example>".into()),
        sender: "mario.rossi@pec.acme.test".into(),
        subject: "Fattura".into(),
        recipients: vec![RecipientState {
            address: "anna.bianchi@pec.b.test".into(),
            tipo: TipoDestinatario::Certificato,
            status: RecipientStatus::Sent,
            updated_at: 0,
        }],
        ricevuta: TipoRicevuta::Completa,
        submitted_at: 0,
    };
    r.state.put_envelope(&rec, 3600).await.expect("put");
    // B's presa in carico for it
    let tx = transaction(
        "Fattura",
        &[("anna.bianchi@pec.b.test", TipoDestinatario::Certificato)],
    );
    let prov_b = Provider {
        name: "Beta PEC S.p.A.".into(),
        domain: "pec.b.test".into(),
    };
    let pic = build_ricevuta(
        &prov_b,
        &tx,
        &Ricevuta::PresaInCarico {
            mail_receipt: "ricevute@pec.acme.test".into(),
            ricezione: vec!["anna.bianchi@pec.b.test".into()],
        },
        &Emission {
            time: Utc::now(),
            message_id: "pic.1@pec.b.test".into(),
        },
        Signer {
            key: &other().key,
            digest: DigestAlg::Sha256,
        },
    )
    .expect("build")
    .to_bytes();
    let mut ib = inbound(pic);
    ib.rcpts = vec!["ricevute@pec.acme.test".into()];
    let o = r.rp.process(&ib, Utc::now()).await;
    assert!(matches!(o, Outcome::Deliver { .. }), "{o:?}");
    let got = record(&r, "opec.20261125093015.1234.1@pec.acme.test").await;
    assert_eq!(got.recipients[0].status, RecipientStatus::PresaInCarico);
    assert!(r.injected.all().is_empty());
}

#[tokio::test]
async fn a_revoked_provider_certificate_is_refused_per_the_configured_crls() {
    let dir = tempfile::tempdir().expect("tmp");
    for (revoke, expect_ok) in [(false, true), (true, false)] {
        let sub = dir.path().join(if revoke { "revoked" } else { "clean" });
        std::fs::create_dir_all(&sub).expect("dir");
        let crl = crl_for_b(&sub, revoke);
        let mut r = rig(OrdinaryMail::Anomaly, VerifyAt::Now, true).await;
        // B's CA only, with its CRL (every CA in a CRL-checked store needs one)
        r.rp.trust = TrustStore::from_pem_bytes(&[&other().pki.ca_cert_pem])
            .expect("trust")
            .with_crl_files(&[crl])
            .expect("crl loads");
        let env = envelope_from_b("ciao", &other().key, "pec.b.test");
        let o = r.rp.process(&inbound(env), Utc::now()).await;
        if expect_ok {
            assert!(matches!(o, Outcome::Deliver { .. }), "clean CRL: {o:?}");
        } else {
            let out = anomaly_of(&o);
            let i = inspect(&out, &pki().trust, VerifyAt::Now).expect("inspect");
            assert_eq!(i.verifica_sicurezza.as_deref(), Some("errore"));
            let post = String::from_utf8_lossy(&out).into_owned();
            assert!(
                post.contains("revoked") || post.contains("revocat"),
                "reason names the revocation"
            );
        }
    }
}

/// A verified receipt changes the record of a recipient only when its
/// signer serves that recipient: B's avvenuta-consegna about a recipient of
/// a domain B does not manage leaves the record (and so the 12 h / 24 h
/// notices) unchanged; B's receipt about its own recipient is recorded.
#[tokio::test]
async fn a_receipt_about_a_recipient_its_signer_does_not_serve_changes_nothing() {
    use pec_milter::pec::build::{Emission, Ricevuta, build_ricevuta};
    use pec_milter::state::{EnvelopeRecord, RecipientState, RecipientStatus};
    let r = rig(OrdinaryMail::Anomaly, VerifyAt::Now, true).await;
    let recipient = |address: &str| RecipientState {
        address: address.into(),
        tipo: TipoDestinatario::Certificato,
        status: RecipientStatus::Sent,
        updated_at: 0,
    };
    // our envelope to a holder at C (not B's) and one at B
    let rec = EnvelopeRecord {
        pec_id: "opec.20261125093015.1234.1@pec.acme.test".into(),
        original_msgid: Some("<abc.123@client.example>".into()),
        sender: "mario.rossi@pec.acme.test".into(),
        subject: "Fattura".into(),
        recipients: vec![
            recipient("carla@pec.c.test"),
            recipient("anna.bianchi@pec.b.test"),
        ],
        ricevuta: TipoRicevuta::Completa,
        submitted_at: 0,
    };
    r.state.put_envelope(&rec, 3600).await.expect("put");
    let prov_b = Provider {
        name: "Beta PEC S.p.A.".into(),
        domain: "pec.b.test".into(),
    };
    // B's avvenuta-consegna, signed by B, listed in the index: valid
    let consegna = |to: &str, n: u32| {
        let tx = transaction("Fattura", &[(to, TipoDestinatario::Certificato)]);
        build_ricevuta(
            &prov_b,
            &tx,
            &Ricevuta::AvvenutaConsegna {
                consegna: to.into(),
                tipo: TipoRicevuta::Sintetica,
                original: b"",
            },
            &Emission {
                time: Utc::now(),
                message_id: format!("consegna.{n}@pec.b.test"),
            },
            Signer {
                key: &other().key,
                digest: DigestAlg::Sha256,
            },
        )
        .expect("build")
        .to_bytes()
    };
    let status_of = |rec: &EnvelopeRecord, who: &str| {
        rec.recipients
            .iter()
            .find(|x| x.address == who)
            .map(|x| x.status)
    };
    let mut ib = inbound(consegna("carla@pec.c.test", 1));
    ib.rcpts = vec!["mario.rossi@pec.acme.test".into()];
    let o = r.rp.process(&ib, Utc::now()).await;
    // delivered to our holder as it is (it is a valid receipt of B's) ...
    assert!(matches!(o, Outcome::Deliver { .. }), "{o:?}");
    // ... but it does not speak for carla: her record stays as it was
    let got = record(&r, "opec.20261125093015.1234.1@pec.acme.test").await;
    assert_eq!(got, rec, "the record is unchanged");
    assert_eq!(
        status_of(&got, "carla@pec.c.test"),
        Some(RecipientStatus::Sent)
    );
    // still tracked: the 12 h / 24 h notices stay due for her
    assert!(
        tracked_ids(r.state.as_ref()).await.contains(&rec.pec_id),
        "still tracked"
    );

    // B's receipt about its own holder is recorded
    let mut ib = inbound(consegna("anna.bianchi@pec.b.test", 2));
    ib.rcpts = vec!["mario.rossi@pec.acme.test".into()];
    let o = r.rp.process(&ib, Utc::now()).await;
    assert!(matches!(o, Outcome::Deliver { .. }), "{o:?}");
    let got = record(&r, "opec.20261125093015.1234.1@pec.acme.test").await;
    assert_eq!(
        status_of(&got, "anna.bianchi@pec.b.test"),
        Some(RecipientStatus::Consegnato)
    );
    assert_eq!(
        status_of(&got, "carla@pec.c.test"),
        Some(RecipientStatus::Sent)
    );
    assert!(r.injected.all().is_empty());
}

/// B's rilevazione-virus about our envelope: the avviso di mancata
/// consegna per virus is queued in the outbox (with its confirmed marker)
/// before the record changes, so a failed first injection does not lose
/// it (the outbox pass sends it) and neither an MTA retry nor a repeat
/// issues it again.
#[tokio::test]
async fn a_virus_notice_is_not_lost_when_its_first_injection_fails() {
    use pec_milter::pec::build::{Emission, Ricevuta, build_ricevuta};
    use pec_milter::state::{EnvelopeRecord, RecipientState, RecipientStatus};
    let r = rig(OrdinaryMail::Anomaly, VerifyAt::Now, true).await;
    let pec_id = "opec.20261125093015.1234.2@pec.acme.test";
    let rec = EnvelopeRecord {
        pec_id: pec_id.into(),
        original_msgid: Some("<abc.124@client.example>".into()),
        sender: "mario.rossi@pec.acme.test".into(),
        subject: "Fattura".into(),
        recipients: vec![RecipientState {
            address: "anna.bianchi@pec.b.test".into(),
            tipo: TipoDestinatario::Certificato,
            status: RecipientStatus::Sent,
            updated_at: 0,
        }],
        ricevuta: TipoRicevuta::Completa,
        submitted_at: 0,
    };
    r.state.put_envelope(&rec, 3600).await.expect("put");
    let tx = Transaction {
        identificativo: pec_id.into(),
        ..transaction(
            "Fattura",
            &[("anna.bianchi@pec.b.test", TipoDestinatario::Certificato)],
        )
    };
    let prov_b = Provider {
        name: "Beta PEC S.p.A.".into(),
        domain: "pec.b.test".into(),
    };
    let rv = build_ricevuta(
        &prov_b,
        &tx,
        &Ricevuta::RilevazioneVirus {
            mail_receipt: "ricevute@pec.acme.test".into(),
            consegna: "anna.bianchi@pec.b.test".into(),
            virus: "Eicar-Test-Signature".into(),
        },
        &Emission {
            time: Utc::now(),
            message_id: "rv.1@pec.b.test".into(),
        },
        Signer {
            key: &other().key,
            digest: DigestAlg::Sha256,
        },
    )
    .expect("build")
    .to_bytes();
    let mut ib = inbound(rv);
    ib.rcpts = vec!["ricevute@pec.acme.test".into()];
    let status = || async { record(&r, pec_id).await.recipients[0].status };
    // the reinjection listener is down: the avviso is queued in the
    // outbox (with its confirmed marker) before the record changes
    r.injected.set_down(true);
    let o = r.rp.process(&ib, Utc::now()).await;
    assert!(matches!(o, Outcome::Deliver { .. }), "{o:?}");
    assert_eq!(status().await, RecipientStatus::Errore);
    assert!(r.injected.all().is_empty());
    let queued = r.state.outbox_due(i64::MAX, 10).await.expect("outbox");
    assert_eq!(queued.len(), 1, "the avviso waits in the outbox");
    assert_eq!(queued[0].kind, "errore-consegna");
    assert_eq!(queued[0].to, vec!["mario.rossi@pec.acme.test".to_string()]);
    // the MTA retries the rilevazione-virus (its answer was lost): the
    // avviso is not built again
    let o = r.rp.process(&ib, Utc::now()).await;
    assert!(matches!(o, Outcome::Deliver { .. }), "{o:?}");
    assert_eq!(
        r.state
            .outbox_due(i64::MAX, 10)
            .await
            .expect("outbox")
            .len(),
        1
    );
    // the listener back: the outbox pass sends it, once
    r.injected.set_down(false);
    let pass = pec_milter::roles::outbox::OutboxSender {
        state: r.state.as_ref(),
        injector: r.injected.as_ref(),
        grace: std::time::Duration::ZERO,
        lease: std::time::Duration::from_secs(5),
    };
    assert_eq!(pass.pass(Utc::now()).await.expect("pass"), 1);
    assert_eq!(pass.pass(Utc::now()).await.expect("pass"), 0);
    let sent = r.injected.all();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1, vec!["mario.rossi@pec.acme.test".to_string()]);
    let i = inspect(&sent[0].2, &pki().trust, VerifyAt::Now).expect("inspect");
    assert_eq!(i.kind, "errore-consegna");
    assert_eq!(i.daticert.expect("d").errore, "virus");
    // a repeat of the rilevazione-virus changes nothing and sends nothing
    let o = r.rp.process(&ib, Utc::now()).await;
    assert!(matches!(o, Outcome::Deliver { .. }), "{o:?}");
    assert!(
        r.state
            .outbox_due(i64::MAX, 10)
            .await
            .expect("outbox")
            .is_empty()
    );
    assert_eq!(r.injected.all().len(), 1);
}

/// Our envelope record `pec_id`, which must exist.
async fn record(r: &Rig, pec_id: &str) -> pec_milter::state::EnvelopeRecord {
    r.state
        .get_envelope(pec_id)
        .await
        .expect("get")
        .expect("record")
}
