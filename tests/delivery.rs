//! The delivery point: the mailbox store's real answer per recipient turns
//! into the right receipt (completa / breve / sintetica for Cc, errore-consegna
//! with no-dest), once per (envelope, recipient), also across retries. The
//! store is the embedded Maildir writer on a temp dir; receipts are recorded.
//!
//! It receipts only genuine envelopes: one whose signature part was removed,
//! one signed by a key the providers' index does not list, one signed by a
//! listed provider for a domain it does not manage are stored as a signed
//! busta di anomalia (`X-VerificaSicurezza: errore`) with no receipt; with
//! no copy of the index loaded, 4xx and nothing stored.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use pec_milter::crypto::DigestAlg;
use pec_milter::crypto::pem::PemKey;
use pec_milter::crypto::verify::{SignatureStatus, VerifyAt};
use pec_milter::index::{IndexSource, ProviderEntry, ProviderIndex, ldif};
use pec_milter::lmtp::maildir::Maildir;
use pec_milter::pec::build::{Provider, Signer, build_busta_trasporto};
use pec_milter::pec::inspect::inspect;
use pec_milter::pec::reader::read;
use pec_milter::pec::{TipoDestinatario, TipoRicevuta};
use pec_milter::roles::delivery::DeliveryPoint;
use pec_milter::roles::outbox::OutboxSender;
use pec_milter::roles::{InjectError, Injector};
use pec_milter::state::embedded::EmbeddedStore;

type Injected = (String, Vec<String>, Vec<u8>);

#[derive(Default)]
struct Recorder(Mutex<Vec<Injected>>, Mutex<bool>);

#[async_trait::async_trait]
impl Injector for Recorder {
    async fn inject(&self, from: &str, to: &[String], message: &[u8]) -> Result<(), InjectError> {
        if *self.1.lock().map_err(|e| e.to_string())? {
            return Err("reinjection down (test)".into());
        }
        self.0.lock().map_err(|e| e.to_string())?.push((
            from.into(),
            to.to_vec(),
            message.to_vec(),
        ));
        Ok(())
    }
}

/// The providers' index of these tests, an LDIF file in `dir`: ACME, the
/// sender's provider (the test PKI's provider certificate, pec.acme.test
/// only); loaded when `load`.
async fn index(dir: &std::path::Path, load: bool) -> Arc<ProviderIndex> {
    let der = pki().pki.cert().expect("cert").to_der().expect("der");
    let entries = [ProviderEntry::for_certificate(
        "ACME PEC S.p.A.",
        der,
        "ricevute@pec.acme.test".into(),
        &["pec.acme.test".into()],
    )];
    let path = dir.join("igpec.ldif");
    std::fs::write(&path, ldif::write(&entries)).expect("write ldif");
    let index = Arc::new(ProviderIndex::new(IndexSource::Ldif(path)));
    if load {
        index.refresh().await.expect("index loads");
    }
    index
}

async fn setup(dir: &std::path::Path) -> (DeliveryPoint, Arc<Recorder>) {
    setup_with(dir, true).await
}

/// The delivery point of provider pec.other.test over a Maildir in `dir`;
/// its providers' index loaded when `load`.
async fn setup_with(dir: &std::path::Path, load: bool) -> (DeliveryPoint, Arc<Recorder>) {
    for user in ["anna.bianchi", "carlo"] {
        std::fs::create_dir_all(dir.join("mail/pec.other.test").join(user)).expect("mailbox");
    }
    let rec = Arc::new(Recorder::default());
    let dp = DeliveryPoint {
        provider: pec_milter::pec::build::Provider {
            name: "Other PEC".into(),
            domain: "pec.other.test".into(),
        },
        key: Arc::new(pki().pki.signing_key().expect("key")),
        digest: DigestAlg::Sha256,
        store: Arc::new(Maildir::new(dir.join("mail"), Some(64 * 1024))),
        state: Arc::new(EmbeddedStore::open(&dir.join("state")).expect("state")),
        injector: rec.clone(),
        // node "dp"; a second delivery point on the same directory (one
        // test has two) writes as "dp-2"
        log: Arc::new(
            ["dp", "dp-2"]
                .iter()
                .find_map(|node| {
                    pec_milter::log::writer::FileLog::open(&pec_milter::log::writer::LogOptions {
                        dir: dir.join("log"),
                        node: node.to_string(),
                    })
                    .ok()
                })
                .expect("message log"),
        ),
        outbox: dir.join("outbox"),
        retention_secs: 3600,
        // receipts over 1 KiB are built in spool files: the file path is
        // what these tests exercise
        spool: pec_milter::spool::SpoolOptions {
            dir: dir.join("spool"),
            memory_limit: 1024,
        },
        trust: pki().trust.clone(),
        verify_at: VerifyAt::Now,
        index: Some(index(dir, load).await),
        metrics: Default::default(),
    };
    (dp, rec)
}

fn envelope(asked: TipoRicevuta) -> Vec<u8> {
    envelope_signed(asked, &pki().key, "pec.acme.test")
}

/// The envelope of [`envelope`] signed with `key` as the provider of
/// `domain` (its `From:` is posta-certificata@`domain`).
fn envelope_signed(asked: TipoRicevuta, key: &PemKey, domain: &str) -> Vec<u8> {
    envelope_for(asked, key, domain, "mario.rossi@pec.acme.test")
}

/// A busta di trasporto signed by `key` as the provider of `domain` (its
/// `From:`), whose daticert names `mittente`.
fn envelope_for(asked: TipoRicevuta, key: &PemKey, domain: &str, mittente: &str) -> Vec<u8> {
    let orig = format!(
        "From: mario.rossi@pec.acme.test\r\nTo: anna.bianchi@pec.other.test, nobody@pec.other.test\r\nCc: carlo@pec.other.test\r\nSubject: Fattura n. 42\r\nMessage-ID: <abc.123@client.example>\r\nX-TipoRicevuta: {asked}\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XYZ\"\r\n\r\n--XYZ\r\nContent-Type: text/plain\r\n\r\nciao\r\n--XYZ\r\nContent-Type: application/pdf; name=\"f.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--XYZ--\r\n"
    );
    let mut tx = transaction(
        "Fattura n. 42",
        &[
            ("anna.bianchi@pec.other.test", TipoDestinatario::Certificato),
            ("nobody@pec.other.test", TipoDestinatario::Certificato),
            ("carlo@pec.other.test", TipoDestinatario::Certificato),
        ],
    );
    tx.ricevuta = asked;
    tx.mittente = mittente.into();
    build_busta_trasporto(
        &Provider {
            domain: domain.into(),
            ..provider()
        },
        &tx,
        orig.as_bytes(),
        when(),
        Signer {
            key,
            digest: DigestAlg::Sha256,
        },
    )
    .expect("envelope")
    .to_bytes()
}

/// (receipt, recipient) that [`rcpts`] get, sorted: two delivered, one
/// unknown (no mailbox).
fn receipts_of_rcpts() -> Vec<(String, String)> {
    [
        ("avvenuta-consegna", "anna.bianchi@pec.other.test"),
        ("avvenuta-consegna", "carlo@pec.other.test"),
        ("errore-consegna", "nobody@pec.other.test"),
    ]
    .iter()
    .map(|(k, r)| (k.to_string(), r.to_string()))
    .collect()
}

fn rcpts() -> Vec<String> {
    [
        "anna.bianchi@pec.other.test",
        "carlo@pec.other.test",
        "nobody@pec.other.test",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `pec_milter_messages_total{role="delivery",outcome}` as `dp` counted it.
fn counted(dp: &DeliveryPoint, outcome: &str) -> u64 {
    let series = format!("pec_milter_messages_total{{role=\"delivery\",outcome=\"{outcome}\"}} ");
    dp.metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix(&series)?.parse().ok())
        .unwrap_or_else(|| panic!("no {series}"))
}

#[tokio::test]
async fn receipts_follow_the_real_delivery_outcome_once() {
    for asked in [
        TipoRicevuta::Completa,
        TipoRicevuta::Breve,
        TipoRicevuta::Sintetica,
    ] {
        let dir = tempfile::tempdir().expect("tmp");
        let (dp, rec) = setup(dir.path()).await;
        let env = envelope(asked);
        let replies = dp
            .handle("posta-certificata@pec.acme.test", &rcpts(), &env)
            .await;
        assert!(replies[0].starts_with("250"), "{replies:?}");
        assert!(replies[1].starts_with("250"), "{replies:?}");
        assert!(
            replies[2].starts_with("250 2.0.0 not stored (550 5.1.1)"),
            "{replies:?}"
        );
        // counted per recipient: the 250 of the errore-consegna is a refusal
        assert_eq!((counted(&dp, "accept"), counted(&dp, "reject")), (2, 1));
        let sent = rec.0.lock().map(|v| v.clone()).unwrap_or_default();
        assert_eq!(sent.len(), 3, "one receipt per recipient");
        let mut kinds = Vec::new();
        for (from, to, msg) in &sent {
            assert_eq!(from, "posta-certificata@pec.other.test");
            assert_eq!(to, &vec!["mario.rossi@pec.acme.test".to_string()]);
            let i = inspect(msg, &pki().trust, VerifyAt::Now).expect("inspect");
            assert_eq!(i.signature.status, SignatureStatus::Valid);
            let d = i.daticert.clone().expect("daticert");
            assert_eq!(d.identificativo, "opec.20261125093015.1234.1@pec.acme.test");
            kinds.push((
                i.kind.clone(),
                d.consegna.clone().unwrap_or_default(),
                d.ricevuta.clone(),
                d.errore.clone(),
                i.postacert.is_some(),
            ));
        }
        let want_primary = (
            "avvenuta-consegna".to_string(),
            "anna.bianchi@pec.other.test".to_string(),
            Some(asked.to_string()),
            "nessuno".to_string(),
            asked != TipoRicevuta::Sintetica,
        );
        assert!(kinds.contains(&want_primary), "{asked}: {kinds:?}");
        // Cc recipients always get sintetica
        assert!(
            kinds.contains(&(
                "avvenuta-consegna".to_string(),
                "carlo@pec.other.test".to_string(),
                Some("sintetica".to_string()),
                "nessuno".to_string(),
                false
            )),
            "{kinds:?}"
        );
        assert!(
            kinds.iter().any(|k| k.0 == "errore-consegna"
                && k.1 == "nobody@pec.other.test"
                && k.3 == "no-dest"),
            "{kinds:?}"
        );
        // the envelope is in the mailbox, byte for byte
        let stored: Vec<_> =
            std::fs::read_dir(dir.path().join("mail/pec.other.test/anna.bianchi/new"))
                .expect("new/")
                .flatten()
                .collect();
        assert_eq!(stored.len(), 1);
        assert_eq!(std::fs::read(stored[0].path()).expect("read"), env);
        // an LMTP retry of the same message: stored again, no new receipt
        dp.handle("posta-certificata@pec.acme.test", &rcpts(), &env)
            .await;
        assert_eq!(rec.0.lock().map(|v| v.len()).unwrap_or(0), 3);
        // each receipt's event in the message log, once
        let mut logged = logged_events(&dir.path().join("log/dp"));
        logged.sort();
        assert_eq!(logged, receipts_of_rcpts(), "{asked}");
    }
}

/// (event, about) of every record in a node's message log.
fn logged_events(node_dir: &std::path::Path) -> Vec<(String, String)> {
    common::logged_events(node_dir)
        .into_iter()
        .map(|e| (e.event.wire().to_string(), e.about.unwrap_or_default()))
        .collect()
}

/// A message log that cannot write (a full disk).
struct FullDisk;

#[async_trait::async_trait]
impl pec_milter::log::EventLog for FullDisk {
    async fn record(
        &self,
        _events: Vec<pec_milter::log::Event>,
    ) -> Result<(), pec_milter::log::LogError> {
        Err(pec_milter::log::LogError::Io {
            path: "log".into(),
            source: std::io::Error::other("No space left on device"),
        })
    }
    async fn ready(&self) -> Result<(), pec_milter::log::LogError> {
        Err(pec_milter::log::LogError::Io {
            path: "log".into(),
            source: std::io::Error::other("the last write failed and 0 bytes are free"),
        })
    }
}

/// The log cannot record (its disk full): nothing is stored and no receipt
/// leaves unrecorded, the recipient gets 451 (the MTA retries); once the
/// log is back, the retry stores it and issues the receipt, once.
#[tokio::test]
async fn no_receipt_without_its_record() {
    let dir = tempfile::tempdir().expect("tmp");
    let (mut dp, rec) = setup(dir.path()).await;
    let good_log = std::mem::replace(&mut dp.log, Arc::new(FullDisk));
    let env = envelope(TipoRicevuta::Completa);
    let one = vec!["anna.bianchi@pec.other.test".to_string()];
    let replies = dp
        .handle("posta-certificata@pec.acme.test", &one, &env)
        .await;
    assert!(replies[0].starts_with("451 4.3.0"), "{replies:?}");
    assert!(
        rec.0.lock().map(|v| v.is_empty()).unwrap_or(false),
        "nothing sent"
    );
    // the log said it could not record: nothing stored either (each MTA
    // retry would otherwise store one more copy)
    let new = dir.path().join("mail/pec.other.test/anna.bianchi/new");
    assert_eq!(std::fs::read_dir(&new).map(|d| d.count()).unwrap_or(0), 0);
    dp.log = good_log;
    let replies = dp
        .handle("posta-certificata@pec.acme.test", &one, &env)
        .await;
    assert!(replies[0].starts_with("250"), "{replies:?}");
    assert_eq!(rec.0.lock().map(|v| v.len()).unwrap_or(0), 1, "one receipt");
    assert_eq!(
        logged_events(&dir.path().join("log/dp")),
        [(
            "avvenuta-consegna".to_string(),
            "anna.bianchi@pec.other.test".to_string()
        )]
    );
}

#[tokio::test]
async fn over_quota_gives_errore_consegna_and_a_failed_injection_waits_in_the_outbox() {
    let dir = tempfile::tempdir().expect("tmp");
    let (dp, rec) = setup(dir.path()).await;
    // fill anna's mailbox past the 64 KiB quota
    let new = dir.path().join("mail/pec.other.test/anna.bianchi/new");
    std::fs::create_dir_all(&new).expect("new");
    std::fs::write(new.join("big"), vec![b'x'; 70 * 1024]).expect("fill");
    if let Ok(mut down) = rec.1.lock() {
        *down = true;
    }
    let env = envelope(TipoRicevuta::Completa);
    let r = dp
        .handle("posta-certificata@pec.acme.test", &rcpts()[..1], &env)
        .await;
    assert!(
        r[0].starts_with("250 2.0.0 not stored (552 5.2.2)"),
        "{r:?}"
    );
    assert!(rec.0.lock().map(|v| v.is_empty()).unwrap_or(false));
    // queued in the state store's outbox; the receipt (over the tests'
    // 1 KiB spool threshold) kept as a synced file the entry names
    let queued = dp.state.outbox_due(i64::MAX, 10).await.expect("outbox");
    assert_eq!(queued.len(), 1, "one receipt queued");
    assert_eq!(queued[0].kind, "errore-consegna");
    let file = queued[0].file.clone().expect("kept as a file");
    assert!(
        queued[0].message.is_empty(),
        "bytes not copied into the store"
    );
    assert!(std::path::Path::new(&file).exists(), "{file}");
    // the old file outbox is not used any more
    assert_eq!(dp.flush_outbox().await, 0);
    if let Ok(mut down) = rec.1.lock() {
        *down = false;
    }
    let pass = OutboxSender {
        state: dp.state.as_ref(),
        injector: dp.injector.as_ref(),
        grace: std::time::Duration::ZERO,
        lease: std::time::Duration::from_secs(5),
    };
    assert_eq!(pass.pass(chrono::Utc::now()).await.expect("pass"), 1);
    assert_eq!(
        pass.pass(chrono::Utc::now()).await.expect("pass"),
        0,
        "once"
    );
    assert!(
        !std::path::Path::new(&file).exists(),
        "file removed once sent"
    );
    assert!(
        dp.state
            .outbox_due(i64::MAX, 10)
            .await
            .expect("outbox")
            .is_empty()
    );
    let sent = rec.0.lock().map(|v| v.clone()).unwrap_or_default();
    assert_eq!(sent.len(), 1);
    let i = inspect(&sent[0].2, &pki().trust, VerifyAt::Now).expect("inspect");
    assert_eq!(i.kind, "errore-consegna");
    assert!(
        i.daticert
            .expect("d")
            .errore_esteso
            .unwrap_or_default()
            .contains("5.2.2")
    );
}

/// A key that signs like the real one, or fails (HSM gone): `left` is how
/// many more signatures it makes before failing (negative: no limit).
struct FlakyKey {
    inner: pec_milter::crypto::PemKey,
    left: std::sync::atomic::AtomicI64,
}

impl pec_milter::crypto::SigningKey for FlakyKey {
    fn certificate_der(&self) -> &[u8] {
        self.inner.certificate_der()
    }
    fn chain_der(&self) -> &[Vec<u8>] {
        self.inner.chain_der()
    }
    fn sign(
        &self,
        digest: DigestAlg,
        data: &[u8],
    ) -> Result<Vec<u8>, pec_milter::crypto::CryptoError> {
        use std::sync::atomic::Ordering;
        if self.left.load(Ordering::SeqCst) == 0 {
            return Err(pec_milter::crypto::CryptoError::Sign(
                "token not present (test)".into(),
            ));
        }
        self.left.fetch_sub(1, Ordering::SeqCst);
        self.inner.sign(digest, data)
    }
}

async fn flaky_setup(
    dir: &std::path::Path,
    left: i64,
) -> (DeliveryPoint, Arc<Recorder>, Arc<FlakyKey>) {
    let (mut dp, rec) = setup(dir).await;
    let key = Arc::new(FlakyKey {
        inner: pki().pki.signing_key().expect("key"),
        left: std::sync::atomic::AtomicI64::new(left),
    });
    dp.key = key.clone();
    (dp, rec, key)
}

fn stored(dir: &std::path::Path, user: &str) -> usize {
    std::fs::read_dir(dir.join("mail/pec.other.test").join(user).join("new"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The key cannot sign (HSM gone): 4xx for every recipient and nothing
/// stored, so Postfix retries; once it signs again, the retry delivers and
/// the receipts leave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_signature_no_delivery_then_the_retry_goes_through() {
    let dir = tempfile::tempdir().expect("tmp");
    let (dp, rec, key) = flaky_setup(dir.path(), 0).await;
    let env = envelope(TipoRicevuta::Completa);
    let r = dp
        .handle("posta-certificata@pec.acme.test", &rcpts(), &env)
        .await;
    nothing_done(&r, dir.path(), &rec);

    key.left.store(-1, std::sync::atomic::Ordering::SeqCst);
    let r = dp
        .handle("posta-certificata@pec.acme.test", &rcpts(), &env)
        .await;
    assert!(r[0].starts_with("250"), "{r:?}");
    assert_eq!(stored(dir.path(), "anna.bianchi"), 1);
    assert_eq!(rec.0.lock().map(|v| v.len()).unwrap_or(0), 3);
}

/// The key fails between the probe and the receipts: the messages are
/// stored (250), the receipts' facts wait in the outbox, and the outbox
/// pass signs and sends each exactly once when the key is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_failing_after_storage_keeps_the_receipts_pending_until_it_signs() {
    let dir = tempfile::tempdir().expect("tmp");
    // one signature: the probe
    let (dp, rec, key) = flaky_setup(dir.path(), 1).await;
    let env = envelope(TipoRicevuta::Completa);
    let r = dp
        .handle("posta-certificata@pec.acme.test", &rcpts(), &env)
        .await;
    assert!(r[0].starts_with("250 "), "{r:?}");
    assert!(r[1].starts_with("250 "), "{r:?}");
    assert!(
        r[2].starts_with("250 2.0.0 not stored (550 5.1.1)"),
        "{r:?}"
    );
    assert_eq!(stored(dir.path(), "anna.bianchi"), 1);
    assert!(rec.0.lock().map(|v| v.is_empty()).unwrap_or(false));
    let pending = || {
        std::fs::read_dir(dir.path().join("outbox"))
            .map(|d| {
                d.flatten()
                    .filter(|e| e.path().extension().is_some_and(|x| x == "pending"))
                    .count()
            })
            .unwrap_or(0)
    };
    assert_eq!(pending(), 3);
    // still down: nothing leaves, nothing is dropped
    assert_eq!(dp.flush_outbox().await, 0);
    assert_eq!(pending(), 3);

    key.left.store(-1, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(dp.flush_outbox().await, 3);
    assert_eq!(pending(), 0);
    assert_eq!(dp.flush_outbox().await, 0);
    let sent = rec.0.lock().map(|v| v.clone()).unwrap_or_default();
    let mut kinds: Vec<(String, String)> = sent
        .iter()
        .map(|(_, to, m)| {
            let i = inspect(m, &pki().trust, VerifyAt::Now).expect("inspect");
            assert_eq!(i.signature.status, SignatureStatus::Valid);
            assert_eq!(to, &vec!["mario.rossi@pec.acme.test".to_string()]);
            let d = i.daticert.expect("daticert");
            (i.kind, d.consegna.unwrap_or_default())
        })
        .collect();
    kinds.sort();
    assert_eq!(kinds, receipts_of_rcpts());
    // An MTA retry of the same delivery does not issue them again.
    let _ = dp
        .handle("posta-certificata@pec.acme.test", &rcpts(), &env)
        .await;
    assert_eq!(rec.0.lock().map(|v| v.len()).unwrap_or(0), 3);
}

// ------------------------------------------------------------------ genuine envelopes only

/// The messages stored for `user`, oldest first.
fn stored_messages(dir: &std::path::Path, user: &str) -> Vec<Vec<u8>> {
    let Ok(rd) = std::fs::read_dir(dir.join("mail/pec.other.test").join(user).join("new")) else {
        return Vec::new();
    };
    let mut files: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect()
}

/// The readable text of a busta di anomalia (its first text/plain part,
/// decoded), by mail-parser.
fn anomaly_text(msg: &[u8]) -> String {
    let parsed = mail_parser::MessageParser::default()
        .parse(msg)
        .expect("parses");
    parsed
        .body_text(0)
        .map(|t| t.into_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn forged_envelopes_are_stored_as_anomalies_and_never_receipted() {
    // a certificate of the same CA (its chain holds) that the index does not list
    let (rogue_cert, rogue_key) = pki()
        .pki
        .issue_leaf("ACME PEC S.p.A.", "pec.acme.test", 30)
        .expect("rogue");
    let rogue = PemKey::from_pem(&rogue_key, &rogue_cert).expect("rogue key");
    let genuine = envelope(TipoRicevuta::Completa);
    let cases = [
        (
            "signature part removed",
            without_signature(&genuine),
            "firma non valida",
        ),
        (
            "signed by a key the index does not list",
            envelope_signed(TipoRicevuta::Completa, &rogue, "pec.acme.test"),
            "il certificato del firmatario non è nell'indice dei gestori",
        ),
        (
            "signed by a listed provider for a domain it does not manage",
            envelope_signed(TipoRicevuta::Completa, &pki().key, "pec.c.test"),
            "il dominio del mittente pec.c.test non è gestito da ACME PEC S.p.A.",
        ),
        (
            "signed by a listed provider on behalf of another provider's holder",
            envelope_for(
                TipoRicevuta::Completa,
                &pki().key,
                "pec.acme.test",
                "giulia@pec.c.test",
            ),
            "il dominio del mittente pec.c.test (daticert) non è gestito da ACME PEC S.p.A.",
        ),
    ];
    for (what, env, why) in cases {
        let dir = tempfile::tempdir().expect("tmp");
        let (dp, rec) = setup(dir.path()).await;
        let replies = dp
            .handle("posta-certificata@pec.acme.test", &rcpts(), &env)
            .await;
        assert!(replies[0].starts_with("250"), "{what}: {replies:?}");
        assert!(replies[1].starts_with("250"), "{what}: {replies:?}");
        // no mailbox: the store's own refusal, no errore-consegna either
        assert!(replies[2].starts_with("550 5.1.1"), "{what}: {replies:?}");
        assert_eq!(
            (
                counted(&dp, "anomaly"),
                counted(&dp, "reject"),
                counted(&dp, "accept")
            ),
            (2, 1, 0),
            "{what}"
        );
        for user in ["anna.bianchi", "carlo"] {
            let stored = stored_messages(dir.path(), user);
            assert_eq!(stored.len(), 1, "{what}: {user}");
            let i = inspect(&stored[0], &pki().trust, VerifyAt::Now).expect("inspect");
            assert_eq!(i.kind, "errore", "{what}: a busta di anomalia");
            assert_eq!(i.verifica_sicurezza.as_deref(), Some("errore"), "{what}");
            assert_eq!(
                i.signature.status,
                SignatureStatus::Valid,
                "{what}: signed by the delivery point's provider"
            );
            assert!(
                i.subject
                    .as_deref()
                    .unwrap_or_default()
                    .starts_with("ANOMALIA MESSAGGIO: "),
                "{what}: {:?}",
                i.subject
            );
            let text = anomaly_text(&stored[0]);
            assert!(text.contains(why), "{what}: {why:?} not in {text:?}");
            // what arrived is carried whole
            let post = read(&stored[0])
                .expect("read")
                .postacert
                .expect("postacert")
                .into_owned();
            assert_eq!(post, env.trim_ascii_end(), "{what}: the carried message");
        }
        assert!(
            rec.0.lock().map(|v| v.is_empty()).unwrap_or(false),
            "{what}: no receipt"
        );
        // nothing waits in the outbox either, and a retry changes nothing
        assert!(
            std::fs::read_dir(dir.path().join("outbox"))
                .map(|d| d.count() == 0)
                .unwrap_or(true),
            "{what}: outbox"
        );
        dp.handle("posta-certificata@pec.acme.test", &rcpts(), &env)
            .await;
        assert!(
            rec.0.lock().map(|v| v.is_empty()).unwrap_or(false),
            "{what}: no receipt on a retry"
        );
    }
}

/// No copy of the providers' index: nothing can be verified, so nothing is
/// stored and every recipient gets 4xx; once the index is loaded, Postfix's
/// retry goes through with its receipts.
#[tokio::test]
async fn without_a_loaded_index_nothing_is_stored_and_nothing_receipted() {
    let dir = tempfile::tempdir().expect("tmp");
    let (dp, rec) = setup_with(dir.path(), false).await;
    let env = envelope(TipoRicevuta::Completa);
    let r = dp
        .handle("posta-certificata@pec.acme.test", &rcpts(), &env)
        .await;
    nothing_done(&r, dir.path(), &rec);
    assert_eq!(counted(&dp, "tempfail"), 3);

    // no index configured at all: the same
    let mut unconfigured = setup_with(dir.path(), true).await.0;
    unconfigured.index = None;
    let r = unconfigured
        .handle("posta-certificata@pec.acme.test", &rcpts(), &env)
        .await;
    assert!(r.iter().all(|l| l.starts_with("451 4.3.0")), "{r:?}");
    assert_eq!(stored(dir.path(), "anna.bianchi"), 0);

    dp.index
        .as_ref()
        .expect("index")
        .refresh()
        .await
        .expect("loads");
    let r = dp
        .handle("posta-certificata@pec.acme.test", &rcpts(), &env)
        .await;
    assert!(r[0].starts_with("250"), "{r:?}");
    assert_eq!(stored(dir.path(), "anna.bianchi"), 1);
    assert_eq!(rec.0.lock().map(|v| v.len()).unwrap_or(0), 3);
}

/// Ordinary mail (no PEC marker field) is stored as it is, without receipt,
/// also before the index is loaded.
#[tokio::test]
async fn ordinary_mail_is_stored_as_it_is_without_receipt() {
    let dir = tempfile::tempdir().expect("tmp");
    let (dp, rec) = setup_with(dir.path(), false).await;
    let plain = b"From: someone@example.org\r\nTo: anna.bianchi@pec.other.test\r\nSubject: ciao\r\nMessage-ID: <p@example.org>\r\n\r\nhello\r\n";
    let r = dp.handle("someone@example.org", &rcpts()[..1], plain).await;
    assert!(r[0].starts_with("250"), "{r:?}");
    assert_eq!(
        stored_messages(dir.path(), "anna.bianchi"),
        vec![plain.to_vec()]
    );
    assert!(rec.0.lock().map(|v| v.is_empty()).unwrap_or(false));
}

/// The delivery point answered 4xx for each of the three recipients of
/// `rcpts()`, stored nothing and injected nothing.
fn nothing_done(replies: &[String], dir: &std::path::Path, rec: &Recorder) {
    assert_eq!(replies.len(), 3);
    assert!(
        replies.iter().all(|l| l.starts_with("451 4.3.0")),
        "{replies:?}"
    );
    assert_eq!(stored(dir, "anna.bianchi"), 0);
    assert_eq!(stored(dir, "carlo"), 0);
    assert!(rec.0.lock().map(|v| v.is_empty()).unwrap_or(false));
}

/// The state store down when a busta di trasporto arrives: its receipts'
/// once-only claims cannot be taken, so nothing is stored (451, the MTA
/// retries) and nothing is sent; with the store back, stored and one
/// receipt.
#[tokio::test]
async fn state_store_down_stores_nothing_and_sends_nothing() {
    let dir = tempfile::tempdir().expect("tmp");
    let (mut dp, rec) = setup(dir.path()).await;
    let good_state = std::mem::replace(&mut dp.state, Arc::new(DownStore));
    let env = envelope(TipoRicevuta::Completa);
    let one = vec!["anna.bianchi@pec.other.test".to_string()];
    let replies = dp
        .handle("posta-certificata@pec.acme.test", &one, &env)
        .await;
    assert!(replies[0].starts_with("451 4.3.0"), "{replies:?}");
    let new = dir.path().join("mail/pec.other.test/anna.bianchi/new");
    let stored = || std::fs::read_dir(&new).map(|d| d.count()).unwrap_or(0);
    assert_eq!(stored(), 0, "nothing stored");
    assert!(
        rec.0.lock().map(|v| v.is_empty()).unwrap_or(false),
        "nothing sent"
    );
    dp.state = good_state;
    let replies = dp
        .handle("posta-certificata@pec.acme.test", &one, &env)
        .await;
    assert!(replies[0].starts_with("250"), "{replies:?}");
    assert_eq!(stored(), 1);
    assert_eq!(rec.0.lock().map(|v| v.len()).unwrap_or(0), 1, "one receipt");
}

/// Stored, but the receipt can be neither injected (listener down) nor
/// kept (the outbox cannot be written): 451, never a 250 with the receipt
/// lost. The MTA's retry stores a second copy (the side that may repeat)
/// and issues the receipt, once.
#[tokio::test]
async fn a_receipt_neither_sent_nor_kept_is_a_temporary_failure() {
    let dir = tempfile::tempdir().expect("tmp");
    let (mut dp, rec) = setup(dir.path()).await;
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"a file").expect("file");
    let good_outbox = std::mem::replace(&mut dp.outbox, blocker.join("outbox"));
    if let Ok(mut down) = rec.1.lock() {
        *down = true;
    }
    let env = envelope(TipoRicevuta::Breve);
    let one = vec!["anna.bianchi@pec.other.test".to_string()];
    let replies = dp
        .handle("posta-certificata@pec.acme.test", &one, &env)
        .await;
    assert!(replies[0].starts_with("451 4.3.0"), "{replies:?}");
    assert!(rec.0.lock().map(|v| v.is_empty()).unwrap_or(false));
    dp.outbox = good_outbox;
    if let Ok(mut down) = rec.1.lock() {
        *down = false;
    }
    let replies = dp
        .handle("posta-certificata@pec.acme.test", &one, &env)
        .await;
    assert!(replies[0].starts_with("250"), "{replies:?}");
    let sent = rec.0.lock().map(|v| v.clone()).unwrap_or_default();
    assert_eq!(sent.len(), 1, "one receipt");
    let i = inspect(&sent[0].2, &pki().trust, VerifyAt::Now).expect("inspect");
    assert_eq!(i.kind, "avvenuta-consegna");
    let new = dir.path().join("mail/pec.other.test/anna.bianchi/new");
    assert_eq!(
        std::fs::read_dir(&new).map(|d| d.count()).unwrap_or(0),
        2,
        "the copy repeats"
    );
}

/// A receipt the MTA took leaves the outbox: its removal runs after the
/// answer (not waited for), and `settle` waits for it; nothing is left
/// for the outbox pass to send again.
#[tokio::test]
async fn a_sent_receipt_leaves_the_outbox_after_the_answer() {
    let dir = tempfile::tempdir().expect("tmp");
    let (dp, rec) = setup(dir.path()).await;
    let env = envelope(TipoRicevuta::Breve);
    let one = vec!["anna.bianchi@pec.other.test".to_string()];
    let replies = dp
        .handle("posta-certificata@pec.acme.test", &one, &env)
        .await;
    assert!(replies[0].starts_with("250"), "{replies:?}");
    assert_eq!(rec.0.lock().map(|v| v.len()).unwrap_or(0), 1, "sent now");
    assert!(
        pec_milter::roles::outbox::settle(std::time::Duration::from_secs(10)).await,
        "removals settle"
    );
    assert!(
        dp.state
            .outbox_due(i64::MAX, 10)
            .await
            .expect("outbox")
            .is_empty(),
        "nothing left in the outbox"
    );
    let pass = OutboxSender {
        state: dp.state.as_ref(),
        injector: dp.injector.as_ref(),
        grace: std::time::Duration::ZERO,
        lease: std::time::Duration::from_secs(5),
    };
    assert_eq!(pass.pass(chrono::Utc::now()).await.expect("pass"), 0);
    assert_eq!(rec.0.lock().map(|v| v.len()).unwrap_or(0), 1, "once");
}
