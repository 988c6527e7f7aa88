//! The sender side's 12 h / 24 h timers (PEC-RULES §2.9) and the state
//! store operations behind them (`tracked`, `once`, `confirm`,
//! `confirmed`, `release`), against both backends: the embedded file
//! store and a real, throwaway `redis-server`.
//!
//! Passes are driven with synthetic times (`Tracker::tick(now)`), except
//! one test that runs the spawned loop with durations of seconds.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use pec_milter::crypto::DigestAlg;
use pec_milter::crypto::pki::Pki;
use pec_milter::crypto::verify::{SignatureStatus, TrustStore, VerifyAt};
use pec_milter::pec::build::Provider;
use pec_milter::pec::{TipoDestinatario, TipoRicevuta};
use pec_milter::roles::outbox::OutboxSender;
use pec_milter::roles::tracking::{Sent, Tracker, TrackerConfig, marker_key, notice_message_id};
use pec_milter::roles::{InjectError, Injector};
use pec_milter::state::embedded::EmbeddedStore;
use pec_milter::state::{EnvelopeRecord, RecipientState, RecipientStatus, StateStore};

use RecipientStatus::{Consegnato, Errore, PresaInCarico};
use Step::{
    Confirmed, FailNext, InjectedSoFar, LeaseOver, OutboxPass, Receipt, SignFails, Status, Tick,
    Tracked,
};
use TipoDestinatario::{Certificato, Esterno};

mod common;
use common::redis::{RedisServer, key_ttl, raw_connection};
use common::{tracked_ids, winners};

// ---------------------------------------------------------------------------
// Fixtures.

const SENDER: &str = "mittente@pec.acme.test";
const DOMAIN: &str = "pec.acme.test";
const RETENTION: u64 = 30 * 86400;

struct TestPki {
    pki: Pki,
    key: Arc<pec_milter::crypto::pem::PemKey>,
    trust: TrustStore,
}

fn pki() -> &'static TestPki {
    static P: OnceLock<TestPki> = OnceLock::new();
    P.get_or_init(|| {
        let pki = Pki::generate("ACME PEC S.p.A.", DOMAIN, 365).expect("pki");
        let key = Arc::new(pki.signing_key().expect("key"));
        let trust = TrustStore::from_pem_bytes(&[&pki.ca_cert_pem]).expect("trust");
        TestPki { pki, key, trust }
    })
}

fn provider() -> Provider {
    Provider {
        name: "ACME PEC S.p.A.".into(),
        domain: DOMAIN.into(),
    }
}

/// One injected message.
#[derive(Debug, Clone)]
struct Injected {
    from: String,
    to: Vec<String>,
    bytes: Vec<u8>,
}

/// Records what is injected; fails the next `fail` calls when asked.
#[derive(Default)]
struct Recorder {
    sent: Mutex<Vec<Injected>>,
    fail: AtomicUsize,
}

impl Recorder {
    fn all(&self) -> Vec<Injected> {
        self.sent.lock().expect("lock").clone()
    }

    fn len(&self) -> usize {
        self.sent.lock().expect("lock").len()
    }

    fn fail_next(&self, n: usize) {
        self.fail.store(n, Ordering::SeqCst);
    }
}

#[async_trait::async_trait]
impl Injector for Recorder {
    async fn inject(&self, from: &str, to: &[String], message: &[u8]) -> Result<(), InjectError> {
        let failing = self
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            return Err("451 4.3.0 reinjection listener down (test)".into());
        }
        // A little latency, so that concurrent passes really overlap.
        tokio::time::sleep(Duration::from_millis(5)).await;
        self.sent.lock().expect("lock").push(Injected {
            from: from.to_owned(),
            to: to.to_vec(),
            bytes: message.to_vec(),
        });
        Ok(())
    }
}

/// The provider key, made to fail its next `n` signatures (HSM gone).
struct FlakyKey {
    fail: AtomicUsize,
}

impl FlakyKey {
    fn fail_next(&self, n: usize) {
        self.fail.store(n, Ordering::SeqCst);
    }
}

impl pec_milter::crypto::SigningKey for FlakyKey {
    fn certificate_der(&self) -> &[u8] {
        pki().key.certificate_der()
    }
    fn chain_der(&self) -> &[Vec<u8>] {
        pki().key.chain_der()
    }
    fn sign(
        &self,
        digest: DigestAlg,
        data: &[u8],
    ) -> Result<Vec<u8>, pec_milter::crypto::CryptoError> {
        if self
            .fail
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(pec_milter::crypto::CryptoError::Sign(
                "token not present (test)".into(),
            ));
        }
        pki().key.sign(digest, data)
    }
}

/// Send what waits in the outbox now (the daemon's outbox pass, no grace).
async fn outbox_pass(store: &Arc<dyn StateStore>, inj: &Arc<Recorder>) -> usize {
    OutboxSender {
        state: store.as_ref(),
        injector: inj.as_ref(),
        grace: Duration::ZERO,
        lease: Duration::from_secs(1),
    }
    .pass(Utc::now())
    .await
    .expect("outbox pass")
}

fn config() -> TrackerConfig {
    TrackerConfig::default()
}

fn tracker(store: &Arc<dyn StateStore>, inj: &Arc<Recorder>, cfg: TrackerConfig) -> Tracker {
    tracker_with_key(store, inj, cfg, Arc::clone(&pki().key) as _)
}

fn tracker_with_key(
    store: &Arc<dyn StateStore>,
    inj: &Arc<Recorder>,
    cfg: TrackerConfig,
    key: Arc<dyn pec_milter::crypto::SigningKey>,
) -> Tracker {
    cfg.validate().expect("valid config");
    Tracker::new(
        Arc::clone(store),
        Arc::clone(inj) as Arc<dyn Injector>,
        provider(),
        key,
        DigestAlg::Sha256,
        cfg,
        RETENTION,
    )
}

/// The send time of the test envelopes: two days ago, whole seconds.
fn t0() -> DateTime<Utc> {
    let now = Utc::now().timestamp();
    Utc.timestamp_opt(now - 2 * 86400, 0)
        .single()
        .expect("time")
}

fn at(t0: DateTime<Utc>, secs: i64) -> DateTime<Utc> {
    t0 + chrono::Duration::seconds(secs)
}

const H: i64 = 3600;

fn record(pec_id: &str, submitted_at: i64, rcpts: &[(&str, TipoDestinatario)]) -> EnvelopeRecord {
    EnvelopeRecord {
        pec_id: pec_id.to_owned(),
        original_msgid: Some("<orig.1@client.example>".to_owned()),
        sender: SENDER.to_owned(),
        subject: "Fattura n° 42".to_owned(),
        recipients: rcpts
            .iter()
            .map(|(a, t)| RecipientState {
                address: (*a).to_owned(),
                tipo: *t,
                status: RecipientStatus::Sent,
                updated_at: submitted_at,
            })
            .collect(),
        ricevuta: TipoRicevuta::Completa,
        submitted_at,
    }
}

/// What the reception point does when a receipt arrives.
async fn receipt(store: &dyn StateStore, pec_id: &str, rcpt: &str, status: RecipientStatus) {
    let mut rec = store
        .get_envelope(pec_id)
        .await
        .expect("get")
        .expect("record");
    for r in rec.recipients.iter_mut() {
        if r.address == rcpt {
            r.status = status;
        }
    }
    store.put_envelope(&rec, RETENTION).await.expect("put");
}

async fn status_of(store: &dyn StateStore, pec_id: &str, rcpt: &str) -> RecipientStatus {
    let rec = store
        .get_envelope(pec_id)
        .await
        .expect("get")
        .expect("record");
    rec.recipients
        .iter()
        .find(|r| r.address == rcpt)
        .expect("recipient")
        .status
}

/// (recipient, finale) of what a pass sent, in order.
fn what(sent: &[Sent]) -> Vec<(String, bool)> {
    sent.iter()
        .map(|s| (s.recipient.clone(), s.finale))
        .collect()
}

/// Check one injected notice: a signed PEC preavviso-errore-consegna
/// about `rcpt` of `pec_id`, to the sender, from the service address.
fn check_notice(msg: &Injected, pec_id: &str, rcpt: &str, finale: bool) {
    assert_eq!(msg.from, format!("posta-certificata@{DOMAIN}"));
    assert_eq!(msg.to, vec![SENDER.to_owned()]);
    let ins = pec_milter::pec::inspect::inspect(&msg.bytes, &pki().trust, VerifyAt::Now)
        .expect("a mail message");
    assert_eq!(ins.kind, "preavviso-errore-consegna");
    assert_eq!(
        ins.signature.status,
        SignatureStatus::Valid,
        "{:?}",
        ins.signature.reason
    );
    assert!(ins.signature.integrity_ok && ins.signature.chain_ok);
    assert_eq!(
        ins.signature.signer_sha1.as_deref(),
        Some(pki().pki.cert_sha1_hex().expect("sha1").as_str())
    );
    let subject = ins.subject.as_deref().unwrap_or_default();
    assert!(
        subject.starts_with("AVVISO DI MANCATA CONSEGNA PER SUP. TEMPO MASSIMO: "),
        "{subject}"
    );
    assert_eq!(
        ins.message_id
            .as_deref()
            .map(|m| m.trim_matches(['<', '>'])),
        Some(notice_message_id(pec_id, rcpt, finale, DOMAIN).as_str())
    );
    assert_eq!(
        ins.riferimento_message_id.as_deref(),
        Some("<orig.1@client.example>")
    );
    assert!(ins.postacert.is_none(), "the original is never included");
    let d = ins.daticert.expect("daticert");
    assert_eq!(d.tipo, "preavviso-errore-consegna");
    assert_eq!(d.consegna.as_deref(), Some(rcpt));
    assert_eq!(d.identificativo, pec_id);
    assert_eq!(d.mittente, SENDER);
    assert_eq!(d.gestore_emittente, "ACME PEC S.p.A.");
    let text = String::from_utf8_lossy(&msg.bytes);
    let hint = if finale { "24 ore" } else { "prime 12 ore" };
    assert!(text.contains(hint), "the text names the deadline ({hint})");
}

// ---------------------------------------------------------------------------
// The store operations.

async fn suite_markers(store: Arc<dyn StateStore>) {
    assert!(store.once("m1", 60).await.expect("once"));
    assert!(!store.once("m1", 60).await.expect("once again"));
    assert!(!store.confirmed("m1").await.expect("confirmed"));
    store.confirm("m1", 60, &[]).await.expect("confirm");
    assert!(store.confirmed("m1").await.expect("confirmed"));
    assert!(!store.once("m1", 60).await.expect("once after confirm"));
    store.release("m1").await.expect("release");
    assert!(!store.confirmed("m1").await.expect("confirmed"));
    assert!(store.once("m1", 60).await.expect("once after release"));
    // Releasing an absent marker is fine; confirming an absent one sets it.
    store.release("never").await.expect("release absent");
    store
        .confirm("c-only", 60, &[])
        .await
        .expect("confirm absent");
    assert!(store.confirmed("c-only").await.expect("confirmed"));
    assert!(!store.once("c-only", 60).await.expect("once"));
    // Awkward keys.
    let long = "z".repeat(3000);
    for key in ["../../x", "a/b\\c", "", "è-😀", &long] {
        assert!(store.once(key, 60).await.expect("odd once"), "{key:.20?}");
        assert!(!store.once(key, 60).await.expect("odd once"), "{key:.20?}");
    }
    // Markers do not clash with claims.
    assert_eq!(
        store.claim("m1", "id", 1, 60).await.expect("claim"),
        pec_milter::state::Claim::New
    );

    // Exactly one winner among concurrent callers.
    let won = winners(20, |_| {
        let store = Arc::clone(&store);
        async move { store.once("race", 60).await.expect("once") }
    })
    .await;
    assert_eq!(won, 1);

    // Expiry: a lease of 1 s is free again after it.
    assert!(store.once("lease", 1).await.expect("once"));
    store.confirm("short-done", 1, &[]).await.expect("confirm");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert!(store.once("lease", 60).await.expect("once after expiry"));
    assert!(!store.confirmed("short-done").await.expect("confirmed"));
}

async fn suite_tracked(store: Arc<dyn StateStore>) {
    let s = &*store;
    assert!(s.tracked(i64::MAX).await.expect("tracked").is_empty());
    let a = record("a@x", 1000, &[("r1@pec.other.it", Certificato)]);
    let b = record(
        "b@x",
        2000,
        &[("r1@pec.other.it", Certificato), ("e@gmail.com", Esterno)],
    );
    let ext = record("ext@x", 500, &[("e@gmail.com", Esterno)]);
    for r in [&a, &b, &ext] {
        s.put_envelope(r, 600).await.expect("put");
    }
    // Esterno only: never tracked.
    assert_eq!(tracked_ids(s).await, ["a@x", "b@x"]);
    let before: Vec<String> = s
        .tracked(1000)
        .await
        .expect("tracked")
        .into_iter()
        .map(|r| r.pec_id)
        .collect();
    assert_eq!(before, ["a@x"], "submitted at or before");
    assert!(s.tracked(999).await.expect("tracked").is_empty());
    assert_eq!(
        s.tracked(1000).await.expect("tracked"),
        vec![a.clone()],
        "the whole record"
    );

    // Presa in carico: still tracked; consegna / errore: not any more.
    receipt(s, "a@x", "r1@pec.other.it", RecipientStatus::PresaInCarico).await;
    assert_eq!(tracked_ids(s).await, ["a@x", "b@x"]);
    receipt(s, "a@x", "r1@pec.other.it", RecipientStatus::Consegnato).await;
    assert_eq!(tracked_ids(s).await, ["b@x"]);
    receipt(s, "b@x", "r1@pec.other.it", RecipientStatus::Errore).await;
    assert!(tracked_ids(s).await.is_empty());
    // Tracked again if a record is written back pending (idempotent index).
    s.put_envelope(&a, 600).await.expect("put");
    s.put_envelope(&a, 600).await.expect("put");
    assert_eq!(tracked_ids(s).await, ["a@x"]);

    // An envelope that expires leaves the index.
    let short = record("short@x", 100, &[("r@pec.other.it", Certificato)]);
    s.put_envelope(&short, 1).await.expect("put");
    assert_eq!(tracked_ids(s).await, ["a@x", "short@x"]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(tracked_ids(s).await, ["a@x"]);
    assert_eq!(s.get_envelope("short@x").await.expect("get"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_markers_and_tracking() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn StateStore> = Arc::new(EmbeddedStore::open(dir.path()).expect("open"));
    suite_markers(Arc::clone(&store)).await;
    suite_tracked(Arc::clone(&store)).await;
    // Two tracked rows are left: a@x and the expired short@x, which the
    // sweep deletes; a@x stays.
    let embedded = EmbeddedStore::open(dir.path()).expect("reopen");
    assert_eq!(embedded.counts().await.expect("counts").tracked, 2);
    embedded.purge_expired().await.expect("purge");
    assert_eq!(embedded.counts().await.expect("counts").tracked, 1);
    assert_eq!(tracked_ids(&embedded).await, ["a@x"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_markers_shared_by_two_stores() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a: Arc<dyn StateStore> = Arc::new(EmbeddedStore::open(dir.path()).expect("open a"));
    let b: Arc<dyn StateStore> = Arc::new(EmbeddedStore::open(dir.path()).expect("open b"));
    for round in 0..5 {
        let key = format!("shared-{round}");
        let won = winners(20, |i| {
            let store = Arc::clone(if i % 2 == 0 { &a } else { &b });
            let key = key.clone();
            async move { store.once(&key, 60).await.expect("once") }
        })
        .await;
        assert_eq!(won, 1, "round {round}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_markers_and_tracking() {
    let server = RedisServer::start();
    let store: Arc<dyn StateStore> = Arc::new(server.store("pec:"));
    suite_markers(Arc::clone(&store)).await;
    suite_tracked(Arc::clone(&store)).await;

    // The key layout: a sorted set scored by the send time.
    let mut raw = raw_connection(&server.url()).await;
    let members: Vec<(String, i64)> = redis::cmd("ZRANGE")
        .arg("pec:tracked")
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query_async(&mut raw)
        .await
        .expect("ZRANGE");
    assert_eq!(members, vec![("a@x".to_owned(), 1000)]);
    let ttl = key_ttl(&mut raw, "pec:once:m1").await;
    assert!((1..=60).contains(&ttl), "marker TTL {ttl}");

    // Another prefix, another namespace.
    let other = server.store("other:");
    assert!(other.tracked(i64::MAX).await.expect("tracked").is_empty());
    assert!(other.once("m1", 60).await.expect("once"));
}

// ---------------------------------------------------------------------------
// The rules of §2.9, for any backend.

/// One step of a scenario on one envelope to one certified recipient.
#[derive(Debug, Clone, Copy)]
enum Step {
    /// A receipt for the recipient arrives (the reception point records it).
    Receipt(RecipientStatus),
    /// The injector fails its next `n` calls.
    FailNext(usize),
    /// The key fails its next `n` signatures.
    SignFails(usize),
    /// The outbox pass runs (no grace) and sends this many.
    OutboxPass(usize),
    /// The outbox pass's lease (1 s, whole seconds in the embedded
    /// store) on an entry it failed to send runs out.
    LeaseOver,
    /// The notice went out but the record was not updated: its marker is
    /// confirmed in the store.
    Confirmed { finale: bool },
    /// A pass at t0 + `secs` sends these notices (their `finale`), in order.
    Tick(i64, &'static [bool]),
    /// The envelope is the one tracked (true), or nothing is (false).
    Tracked(bool),
    /// The recipient's recorded status.
    Status(RecipientStatus),
    /// How many messages the injector holds so far.
    InjectedSoFar(usize),
}

/// A rule of §2.9 as a scenario: `steps` on a fresh envelope `pec_id`, sent
/// at t0 to one certified recipient; `notices` is every message injected
/// meanwhile (its `finale`), in order, each sent exactly once.
struct Scenario {
    rule: &'static str,
    pec_id: &'static str,
    steps: &'static [Step],
    notices: &'static [bool],
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        rule: "nothing ever comes back: the preavviso at 12 h and the final notice \
               at 24 h, each once; then the transaction is over",
        pec_id: "opec-nothing@pec.acme.test",
        steps: &[
            Tick(0, &[]),
            Tick(H, &[]),
            Tick(12 * H - 1, &[]),
            Tick(12 * H, &[false]),
            Tick(12 * H, &[]),
            Tick(13 * H, &[]),
            Tick(24 * H - 1, &[]),
            Tracked(true),
            Tick(24 * H, &[true]),
            Tick(30 * H, &[]),
            Status(Errore),
            Tracked(false),
        ],
        notices: &[false, true],
    },
    Scenario {
        rule: "presa in carico within 12 h, no consegna: only the 24 h notice",
        pec_id: "opec-presa@pec.acme.test",
        steps: &[
            Receipt(PresaInCarico),
            Tick(12 * H, &[]),
            Tick(23 * H, &[]),
            Tracked(true),
            Tick(24 * H, &[true]),
            Tick(25 * H, &[]),
            Status(Errore),
            Tracked(false),
        ],
        notices: &[true],
    },
    Scenario {
        rule: "no presa in carico, consegna between 12 h and 24 h: only the 12 h notice",
        pec_id: "opec-late@pec.acme.test",
        steps: &[
            Tick(12 * H + 30, &[false]),
            Receipt(Consegnato),
            Tracked(false),
            Tick(24 * H, &[]),
            Tick(48 * H, &[]),
            Status(Consegnato),
        ],
        notices: &[false],
    },
    Scenario {
        rule: "consegna within 12 h: no notice at all",
        pec_id: "opec-early@pec.acme.test",
        steps: &[
            Tick(H, &[]),
            Receipt(PresaInCarico),
            Receipt(Consegnato),
            Tracked(false),
            Tick(12 * H, &[]),
            Tick(24 * H, &[]),
            Tick(40 * H, &[]),
            InjectedSoFar(0),
        ],
        notices: &[],
    },
    Scenario {
        rule: "a pass that comes late (the node was down) sends what is due, the \
               preavviso before the final notice",
        pec_id: "opec-latepass@pec.acme.test",
        steps: &[
            Tick(30 * H, &[false, true]),
            Tick(31 * H, &[]),
            Tracked(false),
        ],
        notices: &[false, true],
    },
    Scenario {
        rule: "the injector fails: the notice waits in the outbox, the outbox pass \
               sends it, once, and no pass builds it again; the final notice ends \
               the transaction while it still waits there",
        pec_id: "opec-fail@pec.acme.test",
        steps: &[
            FailNext(1),
            Tick(12 * H, &[false]),
            InjectedSoFar(0),
            Tick(12 * H + 60, &[]),
            OutboxPass(1),
            InjectedSoFar(1),
            OutboxPass(0),
            // The final notice's injection fails twice.
            FailNext(2),
            Tick(24 * H, &[true]),
            Status(Errore),
            Tracked(false),
            OutboxPass(0),
            InjectedSoFar(1),
            OutboxPass(0),
            LeaseOver,
            OutboxPass(1),
            Tick(25 * H, &[]),
            OutboxPass(0),
        ],
        notices: &[false, true],
    },
    Scenario {
        rule: "the key cannot sign: nothing is queued or confirmed, the next pass \
               builds it; while the final notice cannot be signed the recipient \
               stays tracked",
        pec_id: "opec-nokey@pec.acme.test",
        steps: &[
            SignFails(1),
            Tick(12 * H, &[]),
            InjectedSoFar(0),
            OutboxPass(0),
            Tick(12 * H + 60, &[false]),
            SignFails(2),
            Tick(24 * H, &[]),
            Tick(24 * H + 60, &[]),
            Status(RecipientStatus::Sent),
            Tracked(true),
            Tick(24 * H + 120, &[true]),
            Status(Errore),
            Tracked(false),
        ],
        notices: &[false, true],
    },
    Scenario {
        rule: "when the preavviso cannot be signed, the final notice waits for it",
        pec_id: "opec-fail2@pec.acme.test",
        steps: &[
            SignFails(1),
            Tick(30 * H, &[]),
            Tick(30 * H + 60, &[false, true]),
        ],
        notices: &[false, true],
    },
    Scenario {
        rule: "the final notice went out but the record was not updated (a crash or \
               a store failure in between): the next pass finishes the transaction \
               without sending again",
        pec_id: "opec-half@pec.acme.test",
        steps: &[
            Confirmed { finale: false },
            Confirmed { finale: true },
            Tick(25 * H, &[]),
            InjectedSoFar(0),
            Status(Errore),
            Tracked(false),
        ],
        notices: &[],
    },
];

/// Runs one scenario on `store` with a tracker and an injector of its own.
async fn run_scenario(store: &Arc<dyn StateStore>, sc: &Scenario) {
    let inj = Arc::new(Recorder::default());
    let key = Arc::new(FlakyKey {
        fail: AtomicUsize::new(0),
    });
    let t = tracker_with_key(store, &inj, config(), key.clone());
    let t0 = t0();
    let id = sc.pec_id;
    let rcpt = "dest@pec.other.it";
    store
        .put_envelope(
            &record(id, t0.timestamp(), &[(rcpt, Certificato)]),
            RETENTION,
        )
        .await
        .expect("put");
    for (n, step) in sc.steps.iter().enumerate() {
        let ctx = format!("{}: step {n}, {step:?}", sc.rule);
        match *step {
            Receipt(status) => receipt(&**store, id, rcpt, status).await,
            FailNext(k) => inj.fail_next(k),
            SignFails(k) => key.fail_next(k),
            OutboxPass(k) => assert_eq!(outbox_pass(store, &inj).await, k, "{ctx}"),
            LeaseOver => tokio::time::sleep(Duration::from_millis(2100)).await,
            Confirmed { finale } => store
                .confirm(&marker_key(id, rcpt, finale), RETENTION, &[])
                .await
                .expect("confirm"),
            Tick(secs, want) => {
                let sent = t.tick(at(t0, secs)).await.expect("tick");
                let want: Vec<(String, bool)> =
                    want.iter().map(|&f| (rcpt.to_owned(), f)).collect();
                assert_eq!(what(&sent), want, "{ctx}");
                for s in &sent {
                    assert_eq!(s.to, SENDER, "{ctx}");
                    assert_eq!(
                        s.message_id,
                        notice_message_id(id, rcpt, s.finale, DOMAIN),
                        "{ctx}"
                    );
                }
            }
            Tracked(true) => assert_eq!(tracked_ids(&**store).await, [id], "{ctx}"),
            Tracked(false) => assert!(tracked_ids(&**store).await.is_empty(), "{ctx}"),
            Status(want) => assert_eq!(status_of(&**store, id, rcpt).await, want, "{ctx}"),
            InjectedSoFar(k) => assert_eq!(inj.len(), k, "{ctx}"),
        }
    }
    let all = inj.all();
    assert_eq!(
        all.len(),
        sc.notices.len(),
        "{}: each notice exactly once",
        sc.rule
    );
    for (msg, &finale) in all.iter().zip(sc.notices) {
        check_notice(msg, id, rcpt, finale);
    }
}

/// Esterno recipients get no notices; in a mixed envelope only the
/// certified recipients do, and each its own.
async fn case_esterno_and_mixed(store: &Arc<dyn StateStore>) {
    let inj = Arc::new(Recorder::default());
    let t = tracker(store, &inj, config());
    let t0 = t0();
    let ext = "opec-ext@pec.acme.test";
    store
        .put_envelope(
            &record(ext, t0.timestamp(), &[("someone@gmail.com", Esterno)]),
            RETENTION,
        )
        .await
        .expect("put");
    let mixed = "opec-mixed@pec.acme.test";
    let c1 = "uno@pec.other.it";
    let c2 = "Due@PEC.other.it";
    store
        .put_envelope(
            &record(
                mixed,
                t0.timestamp(),
                &[
                    (c1, Certificato),
                    ("someone@gmail.com", Esterno),
                    (c2, Certificato),
                ],
            ),
            RETENTION,
        )
        .await
        .expect("put");
    assert_eq!(tracked_ids(&**store).await, [mixed]);
    // c1 delivered after the preavviso, c2 never: c1 gets only the 12 h
    // notice, c2 both.
    let sent = t.tick(at(t0, 12 * H)).await.expect("tick");
    assert_eq!(
        what(&sent),
        [(c1.to_owned(), false), (c2.to_owned(), false)]
    );
    receipt(&**store, mixed, c1, RecipientStatus::Consegnato).await;
    let sent = t.tick(at(t0, 24 * H)).await.expect("tick");
    assert_eq!(what(&sent), [(c2.to_owned(), true)]);
    assert!(t.tick(at(t0, 36 * H)).await.expect("tick").is_empty());
    assert_eq!(
        status_of(&**store, mixed, c1).await,
        RecipientStatus::Consegnato
    );
    assert_eq!(
        status_of(&**store, mixed, c2).await,
        RecipientStatus::Errore
    );
    assert_eq!(
        status_of(&**store, mixed, "someone@gmail.com").await,
        RecipientStatus::Sent,
        "esterno recipients are left alone"
    );
    assert!(tracked_ids(&**store).await.is_empty());
    let all = inj.all();
    assert_eq!(all.len(), 3);
    check_notice(&all[0], mixed, c1, false);
    check_notice(&all[1], mixed, c2, false);
    check_notice(&all[2], mixed, c2, true);
    // The daticert of a notice lists every recipient with its type.
    let ins = pec_milter::pec::inspect::inspect(&all[0].bytes, &pki().trust, VerifyAt::Now)
        .expect("inspect");
    let d = ins.daticert.expect("daticert");
    let listed: Vec<(String, String)> = d
        .destinatari
        .iter()
        .map(|x| (x.address.clone(), x.tipo.to_string()))
        .collect();
    assert_eq!(
        listed,
        [
            (c1.to_owned(), "certificato".to_owned()),
            ("someone@gmail.com".to_owned(), "esterno".to_owned()),
            (c2.to_owned(), "certificato".to_owned()),
        ]
    );
}

/// Two nodes (two stores on the same backend, two trackers) tick together
/// at the same instants: every notice leaves exactly once.
async fn case_two_nodes(a: &Arc<dyn StateStore>, b: &Arc<dyn StateStore>) {
    let inj = Arc::new(Recorder::default());
    let ta = Arc::new(tracker(a, &inj, config()));
    let tb = Arc::new(tracker(b, &inj, config()));
    let t0 = t0();
    let rcpts = ["x@pec.one.it", "y@pec.two.it", "z@pec.three.it"];
    let mut ids = Vec::new();
    for i in 0..10 {
        let id = format!("opec-multi-{i}@pec.acme.test");
        let with: Vec<(&str, TipoDestinatario)> = rcpts.iter().map(|r| (*r, Certificato)).collect();
        a.put_envelope(&record(&id, t0.timestamp(), &with), RETENTION)
            .await
            .expect("put");
        ids.push(id);
    }
    // Even envelopes: both nodes pass at 12 h then at 24 h; odd ones are
    // delivered to x after the preavviso.
    let mut total = 0;
    for (round, secs) in [12 * H, 12 * H + 60, 24 * H, 24 * H + 60]
        .into_iter()
        .enumerate()
    {
        let now = at(t0, secs);
        let (ra, rb) = tokio::join!(
            {
                let ta = Arc::clone(&ta);
                tokio::spawn(async move { ta.tick(now).await })
            },
            {
                let tb = Arc::clone(&tb);
                tokio::spawn(async move { tb.tick(now).await })
            }
        );
        let sa = ra.expect("task").expect("tick a");
        let sb = rb.expect("task").expect("tick b");
        total += sa.len() + sb.len();
        if round == 1 {
            for id in ids.iter().skip(1).step_by(2) {
                receipt(&**b, id, "x@pec.one.it", RecipientStatus::Consegnato).await;
            }
        }
    }
    let all = inj.all();
    assert_eq!(all.len(), total);
    let mut count: HashMap<String, usize> = HashMap::new();
    for m in &all {
        let ins = pec_milter::pec::inspect::inspect(&m.bytes, &pki().trust, VerifyAt::Now)
            .expect("inspect");
        *count
            .entry(ins.message_id.expect("message id"))
            .or_default() += 1;
    }
    // 10 × 3 preavvisi, and 10 × 2 + 5 final notices.
    assert_eq!(all.len(), 30 + 25, "{count:?}");
    assert!(count.values().all(|&n| n == 1), "duplicates: {count:?}");
    assert_eq!(count.len(), 55);
    assert!(tracked_ids(&**a).await.is_empty());
    assert!(tracked_ids(&**b).await.is_empty());
}

async fn rules_suite(store: Arc<dyn StateStore>) {
    for sc in SCENARIOS {
        run_scenario(&store, sc).await;
    }
    case_esterno_and_mixed(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn StateStore> = Arc::new(EmbeddedStore::open(dir.path()).expect("open"));
    rules_suite(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_rules() {
    let server = RedisServer::start();
    let store: Arc<dyn StateStore> = Arc::new(server.store("pec:"));
    rules_suite(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_two_nodes_send_each_notice_once() {
    let server = RedisServer::start();
    let a: Arc<dyn StateStore> = Arc::new(server.store("pec:"));
    let b: Arc<dyn StateStore> = Arc::new(server.store("pec:"));
    case_two_nodes(&a, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_two_processes_send_each_notice_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a: Arc<dyn StateStore> = Arc::new(EmbeddedStore::open(dir.path()).expect("open a"));
    let b: Arc<dyn StateStore> = Arc::new(EmbeddedStore::open(dir.path()).expect("open b"));
    case_two_nodes(&a, &b).await;
}

/// The timers live in the store: a restarted node does not send again,
/// and sends what comes due.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_restart_does_not_resend() {
    let dir = tempfile::tempdir().expect("tempdir");
    let inj = Arc::new(Recorder::default());
    let t0 = t0();
    let id = "opec-restart@pec.acme.test";
    let rcpt = "dest@pec.other.it";
    {
        let store: Arc<dyn StateStore> = Arc::new(EmbeddedStore::open(dir.path()).expect("open"));
        store
            .put_envelope(
                &record(id, t0.timestamp(), &[(rcpt, Certificato)]),
                RETENTION,
            )
            .await
            .expect("put");
        let t = tracker(&store, &inj, config());
        assert_eq!(t.tick(at(t0, 12 * H)).await.expect("tick").len(), 1);
    }
    {
        let store: Arc<dyn StateStore> = Arc::new(EmbeddedStore::open(dir.path()).expect("reopen"));
        let t = tracker(&store, &inj, config());
        assert!(t.tick(at(t0, 12 * H + 60)).await.expect("tick").is_empty());
        assert_eq!(tracked_ids(&*store).await, [id]);
        assert_eq!(t.tick(at(t0, 24 * H)).await.expect("tick").len(), 1);
    }
    let store: Arc<dyn StateStore> = Arc::new(EmbeddedStore::open(dir.path()).expect("reopen"));
    let t = tracker(&store, &inj, config());
    assert!(t.tick(at(t0, 26 * H)).await.expect("tick").is_empty());
    assert!(tracked_ids(&*store).await.is_empty());
    assert_eq!(inj.len(), 2);
}

/// Real time, short durations, the spawned loop: both notices within a
/// few seconds, then a clean shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawned_loop_with_short_durations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn StateStore> = Arc::new(EmbeddedStore::open(dir.path()).expect("open"));
    let inj = Arc::new(Recorder::default());
    let cfg = TrackerConfig {
        first: Duration::from_secs(1),
        last: Duration::from_secs(2),
        interval: Duration::from_millis(200),
        ..TrackerConfig::default()
    };
    let t = Arc::new(tracker(&store, &inj, cfg));
    let id = "opec-realtime@pec.acme.test";
    let rcpt = "dest@pec.other.it";
    let start = Instant::now();
    store
        .put_envelope(
            &record(id, Utc::now().timestamp(), &[(rcpt, Certificato)]),
            RETENTION,
        )
        .await
        .expect("put");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let handle = Arc::clone(&t).spawn(stopped);

    while inj.len() < 2 && start.elapsed() < Duration::from_secs(6) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = start.elapsed();
    assert_eq!(inj.len(), 2, "both notices after {took:?}");
    assert!(took < Duration::from_secs(4), "took {took:?}");
    let all = inj.all();
    check_notice(&all[0], id, rcpt, false);
    check_notice(&all[1], id, rcpt, true);

    // Nothing more comes, and the loop stops on request.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(inj.len(), 2);
    assert!(tracked_ids(&*store).await.is_empty());
    stop.send(true).expect("send stop");
    tokio::time::timeout(Duration::from_secs(2), handle)
        .await
        .expect("loop stops")
        .expect("task");
}

#[test]
fn config_defaults_and_validation() {
    let d = TrackerConfig::default();
    assert_eq!(d.first, Duration::from_secs(12 * 3600));
    assert_eq!(d.last, Duration::from_secs(24 * 3600));
    assert!(d.validate().is_ok());
    let bad = TrackerConfig {
        first: Duration::from_secs(10),
        last: Duration::from_secs(5),
        ..TrackerConfig::default()
    };
    assert!(bad.validate().is_err());
    let bad = TrackerConfig {
        interval: Duration::ZERO,
        ..TrackerConfig::default()
    };
    assert!(bad.validate().is_err());
    // Deterministic, distinct Message-IDs.
    let a = notice_message_id("opec1.2@pec.acme.test", "x@y.it", false, DOMAIN);
    assert_eq!(
        a,
        notice_message_id("opec1.2@pec.acme.test", "X@Y.it", false, DOMAIN)
    );
    assert!(a.starts_with("preavviso.first.opec1.2."), "{a}");
    assert!(a.ends_with("@pec.acme.test"), "{a}");
    assert_ne!(
        a,
        notice_message_id("opec1.2@pec.acme.test", "x@y.it", true, DOMAIN)
    );
    assert_ne!(
        a,
        notice_message_id("opec1.2@pec.acme.test", "z@y.it", false, DOMAIN)
    );
}
