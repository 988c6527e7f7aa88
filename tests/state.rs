//! The state stores: one behavioural suite run against both backends
//! (the embedded file store and a real, throwaway `redis-server`), plus
//! backend-specific tests (several nodes / processes, Redis going away and
//! coming back, corrupt records, restarts).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pec_milter::pec::{TipoDestinatario, TipoRicevuta};
use pec_milter::state::embedded::EmbeddedStore;
use pec_milter::state::redis::{RedisOptions, RedisStore, SentinelOptions};
use pec_milter::state::{
    Claim, EnvelopeRecord, OutboxEntry, RecipientState, RecipientStatus, StateError, StateStore,
};

mod common;
use common::redis::{RedisServer, key_ttl, raw_connection};
use common::{free_port, tracked_ids, winners};

// ---------------------------------------------------------------------------
// The behavioural suite, for any backend.

fn envelope(pec_id: &str, n_recipients: usize) -> EnvelopeRecord {
    let statuses = [
        RecipientStatus::Sent,
        RecipientStatus::PresaInCarico,
        RecipientStatus::Consegnato,
        RecipientStatus::Errore,
    ];
    EnvelopeRecord {
        pec_id: pec_id.to_owned(),
        original_msgid: Some("<orig.1@client.example>".to_owned()),
        sender: "mittente@pec.example.it".to_owned(),
        subject: "Fattura n° 42 — «perché» àèìòù € 日本語 😀 \"quoted\" \\ \n tab\t".to_owned(),
        recipients: (0..n_recipients)
            .map(|i| RecipientState {
                address: format!("destinatario{i}@dominio-{}.it", i % 7),
                tipo: if i % 3 == 0 {
                    TipoDestinatario::Esterno
                } else {
                    TipoDestinatario::Certificato
                },
                status: statuses[i % statuses.len()],
                updated_at: 1_700_000_000 + i64::try_from(i).expect("small"),
            })
            .collect(),
        ricevuta: TipoRicevuta::Sintetica,
        submitted_at: 1_700_000_000,
    }
}

fn existing(pec_id: &str, submitted_at: i64, receipt_sent: bool) -> Claim {
    Claim::Existing {
        pec_id: pec_id.to_owned(),
        submitted_at,
        receipt_sent,
    }
}

async fn suite_claims(store: &dyn StateStore) {
    store.ping().await.expect("ping");

    let c = store.claim("k1", "id-1", 1000, 60).await.expect("claim");
    assert_eq!(c, Claim::New);
    // A retry: the first id and time win, the new ones are ignored.
    let c = store.claim("k1", "id-2", 2000, 60).await.expect("claim");
    assert_eq!(c, existing("id-1", 1000, false));

    store.mark_receipt_sent("k1", &[], 60).await.expect("mark");
    let c = store.claim("k1", "id-3", 3000, 60).await.expect("claim");
    assert_eq!(c, existing("id-1", 1000, true));
    // Idempotent.
    store
        .mark_receipt_sent("k1", &[], 60)
        .await
        .expect("mark again");
    let c = store.claim("k1", "id-3", 3000, 60).await.expect("claim");
    assert_eq!(c, existing("id-1", 1000, true));

    let c = store.claim("k2", "id-4", 4000, 60).await.expect("claim");
    assert_eq!(c, Claim::New);
    let c = store.claim("k2", "id-5", 5000, 60).await.expect("claim");
    assert_eq!(c, existing("id-4", 4000, false));

    // Marking an unknown (or expired) claim is not an error.
    store
        .mark_receipt_sent("never-claimed", &[], 60)
        .await
        .expect("mark unknown");

    // Awkward keys: path separators, dots, Unicode, very long.
    let long = "z".repeat(5000);
    for key in ["../../etc/passwd", "a/b\\c", ".", "", "chiave-è-😀", &long] {
        let c = store.claim(key, "id-odd", 7, 60).await.expect("claim odd");
        assert_eq!(c, Claim::New, "key {key:.40?}");
        let c = store
            .claim(key, "id-other", 8, 60)
            .await
            .expect("claim odd");
        assert_eq!(c, existing("id-odd", 7, false), "key {key:.40?}");
    }
}

async fn suite_envelopes(store: &dyn StateStore) {
    let rec = envelope("opec-1.20240101@pec.example.it", 500);
    store.put_envelope(&rec, 60).await.expect("put");
    let got = store.get_envelope(&rec.pec_id).await.expect("get");
    assert_eq!(got.as_ref(), Some(&rec));

    // Replace.
    let mut rec2 = rec.clone();
    rec2.recipients[0].status = RecipientStatus::Consegnato;
    rec2.original_msgid = None;
    store.put_envelope(&rec2, 60).await.expect("put again");
    let got = store.get_envelope(&rec.pec_id).await.expect("get");
    assert_eq!(got, Some(rec2));

    // Odd ids.
    let odd = envelope("../odd/ìd@x", 1);
    store.put_envelope(&odd, 60).await.expect("put odd");
    assert_eq!(
        store.get_envelope(&odd.pec_id).await.expect("get odd"),
        Some(odd)
    );

    assert_eq!(store.get_envelope("missing@x").await.expect("get"), None);
}

async fn suite_concurrent_claims(store: Arc<dyn StateStore>) {
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..20 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let id = format!("conc-id-{i}");
            let c = store.claim("conc", &id, i, 60).await.expect("claim");
            (id, i, c)
        });
    }
    let mut winners = Vec::new();
    let mut others = Vec::new();
    while let Some(res) = tasks.join_next().await {
        let (id, t, c) = res.expect("task");
        match c {
            Claim::New => winners.push((id, t)),
            Claim::Existing { .. } => others.push(c),
        }
    }
    assert_eq!(winners.len(), 1, "exactly one New: {winners:?}");
    let (id, t) = &winners[0];
    for c in others {
        assert_eq!(c, existing(id, *t, false));
    }
}

async fn suite_expiry(store: &dyn StateStore) {
    let c = store.claim("short", "id-a", 1, 1).await.expect("claim");
    assert_eq!(c, Claim::New);
    let c = store.claim("long", "id-l", 1, 600).await.expect("claim");
    assert_eq!(c, Claim::New);
    let rec = envelope("short-lived@x", 3);
    store.put_envelope(&rec, 1).await.expect("put");
    assert_eq!(
        store.get_envelope(&rec.pec_id).await.expect("get"),
        Some(rec.clone())
    );

    tokio::time::sleep(Duration::from_millis(2100)).await;

    assert_eq!(store.get_envelope(&rec.pec_id).await.expect("get"), None);
    // Marking an expired claim does not bring it back.
    store
        .mark_receipt_sent("short", &[], 60)
        .await
        .expect("mark expired");
    let c = store.claim("short", "id-b", 2, 60).await.expect("claim");
    assert_eq!(c, Claim::New, "an expired claim is absent");
    let c = store.claim("short", "id-c", 3, 60).await.expect("claim");
    assert_eq!(c, existing("id-b", 2, false));
    let c = store.claim("long", "id-x", 2, 60).await.expect("claim");
    assert_eq!(c, existing("id-l", 1, false));
}

/// A second store on the same backend, as another process would open it.
type OpenOther = Arc<dyn Fn() -> Box<dyn StateStore> + Send + Sync>;

fn pending_envelope(pec_id: &str, n: usize) -> EnvelopeRecord {
    let mut rec = envelope(pec_id, n);
    for r in &mut rec.recipients {
        r.tipo = TipoDestinatario::Certificato;
        r.status = RecipientStatus::Sent;
    }
    rec
}

/// `f` for update_envelope: recipient `i` becomes `status` if pending.
fn set_status(i: usize, status: RecipientStatus) -> impl Fn(&mut EnvelopeRecord) -> bool {
    move |rec: &mut EnvelopeRecord| {
        let r = &mut rec.recipients[i];
        if r.is_pending() {
            r.status = status;
            r.updated_at += 1;
            true
        } else {
            false
        }
    }
}

/// update_envelope is a compare-and-set: a write by another process
/// between its read and its write is kept, and `f` runs again on it.
async fn suite_updates(store: Arc<dyn StateStore>, open_other: OpenOther) {
    let rec = pending_envelope("cas-1@pec.example.it", 3);
    store.put_envelope(&rec, 60).await.expect("put");
    let now = 1_900_000_000;
    assert!(
        store
            .tracked(now)
            .await
            .expect("tracked")
            .iter()
            .any(|r| r.pec_id == rec.pec_id)
    );

    let calls = std::sync::atomic::AtomicUsize::new(0);
    let id = rec.pec_id.clone();
    let f = |r: &mut EnvelopeRecord| {
        if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
            // Another process records a delivery of recipient 1 right
            // between our read and our write.
            let open_other = Arc::clone(&open_other);
            let id = id.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime");
                rt.block_on(async {
                    let other = open_other();
                    let mut cur = other.get_envelope(&id).await.expect("get").expect("some");
                    cur.recipients[1].status = RecipientStatus::Consegnato;
                    other.put_envelope(&cur, 60).await.expect("put other");
                });
            })
            .join()
            .expect("interfering writer");
        }
        set_status(0, RecipientStatus::Errore)(r)
    };
    let got = store
        .update_envelope(&rec.pec_id, 60, &f)
        .await
        .expect("update")
        .expect("changed");
    assert_eq!(
        calls.load(std::sync::atomic::Ordering::SeqCst),
        2,
        "the first write must fail its compare-and-set and f run again"
    );
    assert_eq!(got.recipients[0].status, RecipientStatus::Errore);
    assert_eq!(
        got.recipients[1].status,
        RecipientStatus::Consegnato,
        "the other writer's update is kept"
    );
    assert_eq!(got.recipients[2].status, RecipientStatus::Sent);
    let stored = store.get_envelope(&rec.pec_id).await.expect("get");
    assert_eq!(stored.as_ref(), Some(&got));

    // f changes nothing → nothing written, None.
    let none = store
        .update_envelope(&rec.pec_id, 60, &set_status(0, RecipientStatus::Consegnato))
        .await
        .expect("update");
    assert_eq!(none, None);
    assert_eq!(
        store.get_envelope(&rec.pec_id).await.expect("get").as_ref(),
        Some(&got)
    );
    // Absent envelope → None.
    assert_eq!(
        store
            .update_envelope("absent@x", 60, &set_status(0, RecipientStatus::Errore))
            .await
            .expect("update absent"),
        None
    );
    assert_eq!(store.get_envelope("absent@x").await.expect("get"), None);

    // The last pending recipient settled → out of the tracking index.
    store
        .update_envelope(&rec.pec_id, 60, &set_status(2, RecipientStatus::Consegnato))
        .await
        .expect("update")
        .expect("changed");
    assert!(
        !store
            .tracked(now)
            .await
            .expect("tracked")
            .iter()
            .any(|r| r.pec_id == rec.pec_id),
        "a settled envelope is no longer tracked"
    );

    // Many writers at once, on two stores, each settling its own
    // recipient: no update is lost.
    let n = 12;
    let rec = pending_envelope("cas-2@pec.example.it", n);
    store.put_envelope(&rec, 60).await.expect("put");
    let other: Arc<dyn StateStore> = Arc::from(open_other());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let s = if i % 2 == 0 {
            Arc::clone(&store)
        } else {
            Arc::clone(&other)
        };
        let id = rec.pec_id.clone();
        tasks.spawn(async move {
            s.update_envelope(&id, 60, &set_status(i, RecipientStatus::Consegnato))
                .await
                .expect("update")
                .expect("changed")
        });
    }
    while let Some(res) = tasks.join_next().await {
        res.expect("task");
    }
    let stored = store
        .get_envelope(&rec.pec_id)
        .await
        .expect("get")
        .expect("some");
    let settled = stored
        .recipients
        .iter()
        .filter(|r| r.status == RecipientStatus::Consegnato)
        .count();
    assert_eq!(settled, n, "lost updates: {stored:?}");
}

/// `record_acceptance`: the envelope stored and the claim's flag set by
/// one call, the same as `put_envelope` + `mark_receipt_sent`; repeatable;
/// no claim (expired) is not an error and brings none back.
async fn suite_acceptance(store: &dyn StateStore) {
    assert_eq!(
        store.claim("acc", "acc-1@x", 10, 60).await.expect("claim"),
        Claim::New
    );
    let rec = pending_envelope("acc-1@x", 3);
    store
        .record_acceptance("acc", &rec, 60, &[])
        .await
        .expect("record_acceptance");
    assert_eq!(
        store.claim("acc", "other@x", 11, 60).await.expect("claim"),
        existing("acc-1@x", 10, true)
    );
    assert_eq!(
        store.get_envelope("acc-1@x").await.expect("get"),
        Some(rec.clone())
    );
    let tracked = store.tracked(i64::MAX).await.expect("tracked");
    assert!(
        tracked.iter().any(|r| r.pec_id == "acc-1@x"),
        "a pending envelope is tracked"
    );
    // Again (an MTA retry after the receipt left): same state.
    store
        .record_acceptance("acc", &rec, 60, &[])
        .await
        .expect("record_acceptance again");
    assert_eq!(
        store.claim("acc", "other@x", 12, 60).await.expect("claim"),
        existing("acc-1@x", 10, true)
    );
    // A settled envelope is stored but not tracked.
    let mut settled = envelope("acc-2@x", 1);
    settled.recipients[0].status = RecipientStatus::Consegnato;
    store
        .record_acceptance("never-claimed", &settled, 60, &[])
        .await
        .expect("record_acceptance without a claim");
    assert_eq!(
        store.get_envelope("acc-2@x").await.expect("get"),
        Some(settled)
    );
    assert!(
        !store
            .tracked(i64::MAX)
            .await
            .expect("tracked")
            .iter()
            .any(|r| r.pec_id == "acc-2@x")
    );
    assert_eq!(
        store
            .claim("never-claimed", "n@x", 1, 60)
            .await
            .expect("claim"),
        Claim::New,
        "record_acceptance creates no claim"
    );
}

fn outbox_entry(id: &str, queued_at: i64, body: &[u8]) -> OutboxEntry {
    OutboxEntry {
        id: id.to_owned(),
        from: "posta-certificata@pec.example.it".to_owned(),
        to: vec![
            "mittente@pec.example.it".to_owned(),
            "altro@pec.example.it".to_owned(),
        ],
        message: body.to_vec(),
        file: None,
        queued_at,
        pec_id: format!("pec.{id}"),
        kind: "accettazione".to_owned(),
    }
}

/// The outbox: entries written with the claim's flag (both calls) or a
/// notice's confirmed marker, read back byte for byte (binary, with newlines and NULs), oldest first,
/// only those old enough, once per id (a second write of the same id
/// keeps the first), and gone once done.
async fn suite_outbox(store: &dyn StateStore) {
    let body = b"X-Ricevuta: accettazione\r\n\r\n\x00\xff\nbinary\r\n".to_vec();
    assert_eq!(
        store
            .claim("ob1", "pec.ob1@x", 1_700_000_000, 60)
            .await
            .expect("claim"),
        Claim::New
    );
    store
        .mark_receipt_sent("ob1", &[outbox_entry("r.ob1@x", 100, &body)], 60)
        .await
        .expect("mark with outbox");
    assert_eq!(
        store
            .claim("ob1", "other", 0, 60)
            .await
            .expect("claim again"),
        existing("pec.ob1@x", 1_700_000_000, true),
        "the flag is set by the same write"
    );
    assert_eq!(
        store
            .claim("ob2", "pec.ob2@x", 1_700_000_001, 60)
            .await
            .expect("claim"),
        Claim::New
    );
    store
        .record_acceptance(
            "ob2",
            &envelope("pec.ob2@x", 2),
            60,
            &[outbox_entry("r.ob2@x", 50, b"second")],
        )
        .await
        .expect("acceptance with outbox");
    // the same id again (a retry that got this far): the first stays
    store
        .mark_receipt_sent("ob1", &[outbox_entry("r.ob1@x", 10, b"changed")], 60)
        .await
        .expect("mark again");
    assert_eq!(
        store.depth().await.expect("depth").outbox,
        2,
        "the outbox's depth counts each id once"
    );
    let due = store.outbox_due(i64::MAX, 10).await.expect("due");
    assert_eq!(
        due,
        vec![
            outbox_entry("r.ob2@x", 50, b"second"),
            outbox_entry("r.ob1@x", 100, &body)
        ]
    );
    assert_eq!(
        store.outbox_due(99, 10).await.expect("due").len(),
        1,
        "only old enough"
    );
    assert_eq!(
        store.outbox_due(i64::MAX, 1).await.expect("due").len(),
        1,
        "the limit"
    );
    store.outbox_done("r.ob2@x").await.expect("done");
    store
        .outbox_done("r.ob2@x")
        .await
        .expect("done twice is fine");
    let due = store.outbox_due(i64::MAX, 10).await.expect("due");
    assert_eq!(
        due.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["r.ob1@x"]
    );
    store.outbox_done("r.ob1@x").await.expect("done");
    assert!(
        store
            .outbox_due(i64::MAX, 10)
            .await
            .expect("due")
            .is_empty()
    );
    // A notice: its marker confirmed with its entry in the same write; an
    // entry naming a file (a large receipt) keeps the name, not bytes.
    let mut large = outbox_entry("preavviso.first.ob3@x", 70, b"");
    large.file = Some("/var/spool/pec-milter/outbox/preavviso.first.ob3_x.msg".into());
    store
        .confirm("notice:ob3", 60, std::slice::from_ref(&large))
        .await
        .expect("confirm with outbox");
    assert!(store.confirmed("notice:ob3").await.expect("confirmed"));
    assert!(!store.once("notice:ob3", 60).await.expect("once"));
    assert_eq!(
        store.outbox_due(i64::MAX, 10).await.expect("due"),
        vec![large.clone()]
    );
    assert_eq!(store.depth().await.expect("depth").outbox, 1);
    store
        .outbox_done("preavviso.first.ob3@x")
        .await
        .expect("done");
    assert!(
        store
            .outbox_due(i64::MAX, 10)
            .await
            .expect("due")
            .is_empty()
    );
    assert_eq!(store.depth().await.expect("depth").outbox, 0);
    // a tracked envelope counts, one with every outcome known does not
    let before = store.depth().await.expect("depth").tracked;
    store
        .put_envelope(&pending_envelope("pec.depth@x", 1), 60)
        .await
        .expect("put");
    assert_eq!(store.depth().await.expect("depth").tracked, before + 1);
    store
        .update_envelope(
            "pec.depth@x",
            60,
            &set_status(0, RecipientStatus::Consegnato),
        )
        .await
        .expect("update");
    assert_eq!(store.depth().await.expect("depth").tracked, before);
}

async fn behaviour_suite(store: Arc<dyn StateStore>, open_other: OpenOther) {
    suite_claims(&*store).await;
    suite_outbox(&*store).await;
    suite_acceptance(&*store).await;
    suite_envelopes(&*store).await;
    suite_concurrent_claims(Arc::clone(&store)).await;
    suite_updates(Arc::clone(&store), open_other).await;
    suite_expiry(&*store).await;
}

// ---------------------------------------------------------------------------
// Embedded.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_behaviour() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("state");
    let store = EmbeddedStore::open(&path).expect("open");
    let open_other: OpenOther =
        Arc::new(move || Box::new(EmbeddedStore::open(&path).expect("open other")));
    behaviour_suite(Arc::new(store), open_other).await;
}

/// Two stores on one backend (`across`: two processes, two nodes): 20
/// concurrent claims of a key, half on each, give exactly one New, five
/// times over; and what one writes, the other reads.
async fn two_stores_share_claims(a: &Arc<dyn StateStore>, b: &Arc<dyn StateStore>, across: &str) {
    for round in 0..5 {
        let key = format!("shared-{round}");
        let new = winners(20, |i| {
            let store = Arc::clone(if i % 2 == 0 { a } else { b });
            let key = key.clone();
            let at = i64::try_from(i).expect("small");
            async move {
                store
                    .claim(&key, &format!("id-{i}"), at, 60)
                    .await
                    .expect("claim")
                    == Claim::New
            }
        })
        .await;
        assert_eq!(new, 1, "round {round}: exactly one New across {across}");
    }
    let rec = envelope("shared@x", 2);
    a.put_envelope(&rec, 60).await.expect("put");
    assert_eq!(b.get_envelope("shared@x").await.expect("get"), Some(rec));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_two_processes_share_claims() {
    let dir = tempfile::tempdir().expect("tempdir");
    let a: Arc<dyn StateStore> = Arc::new(EmbeddedStore::open(dir.path()).expect("open a"));
    let b: Arc<dyn StateStore> = Arc::new(EmbeddedStore::open(dir.path()).expect("open b"));
    two_stores_share_claims(&a, &b, "both stores").await;
}

/// The database of a store directory, opened beside the store (as an
/// admin's `sqlite3` would).
fn raw_db(dir: &Path) -> rusqlite::Connection {
    let c = rusqlite::Connection::open(dir.join(pec_milter::state::embedded::DB_FILE))
        .expect("open the database");
    c.busy_timeout(Duration::from_secs(5))
        .expect("busy timeout");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_corrupt_records_are_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    assert_eq!(
        store.claim("ck", "id", 1, 60).await.expect("claim"),
        Claim::New
    );
    let db = raw_db(dir.path());
    db.execute(
        "UPDATE claims SET submitted_at = 'not a number' WHERE key = 'ck'",
        [],
    )
    .expect("corrupt it");
    match store.claim("ck", "id", 1, 60).await {
        Err(StateError::Corrupt { key, .. }) => assert_eq!(key, "ck"),
        other => panic!("expected Corrupt, got {other:?}"),
    }

    let rec = envelope("env-corrupt@x", 1);
    store.put_envelope(&rec, 60).await.expect("put");
    db.execute(
        "UPDATE envelopes SET record = '{ not json' WHERE pec_id = 'env-corrupt@x'",
        [],
    )
    .expect("corrupt it");
    match store.get_envelope("env-corrupt@x").await {
        Err(StateError::Corrupt { key, .. }) => assert_eq!(key, "env-corrupt@x"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // A row holding another envelope's record is corrupt too.
    let other = serde_json::to_string(&envelope("someone-else@x", 1)).expect("json");
    db.execute(
        "UPDATE envelopes SET record = ?1 WHERE pec_id = 'env-corrupt@x'",
        [other],
    )
    .expect("swap it");
    match store.get_envelope("env-corrupt@x").await {
        Err(StateError::Corrupt { key, reason }) => {
            assert_eq!(key, "env-corrupt@x");
            assert!(reason.contains("someone-else@x"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // A failed job leaves the others of its batch alone, and the store
    // goes on.
    assert_eq!(
        store.claim("fine", "id", 1, 60).await.expect("claim"),
        Claim::New
    );
    assert_eq!(store.purge_expired().await.expect("purge"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_survives_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rec = envelope("persist@x", 10);
    {
        let store = EmbeddedStore::open(dir.path()).expect("open");
        assert_eq!(
            store.claim("pk", "id-p", 42, 600).await.expect("claim"),
            Claim::New
        );
        store.mark_receipt_sent("pk", &[], 60).await.expect("mark");
        store.put_envelope(&rec, 600).await.expect("put");
    }
    let store = EmbeddedStore::open(dir.path()).expect("reopen");
    assert_eq!(
        store.claim("pk", "id-q", 43, 600).await.expect("claim"),
        existing("id-p", 42, true)
    );
    assert_eq!(
        store.get_envelope("persist@x").await.expect("get"),
        Some(rec)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_purge_expired() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = EmbeddedStore::open(dir.path()).expect("open");
    store.claim("a", "id-a", 1, 1).await.expect("claim");
    store.claim("b", "id-b", 1, 600).await.expect("claim");
    store
        .put_envelope(&pending_envelope("e1@x", 1), 1)
        .await
        .expect("put");
    store
        .put_envelope(&envelope("e2@x", 1), 600)
        .await
        .expect("put");
    store.once("m", 1).await.expect("once");
    assert_eq!(store.purge_expired().await.expect("purge"), 0);
    let counts = store.counts().await.expect("counts");
    assert_eq!((counts.claims, counts.envelopes, counts.marks), (2, 2, 1));
    assert_eq!(counts.tracked, 1);

    tokio::time::sleep(Duration::from_millis(2100)).await;
    // Expired rows are absent before the sweep deletes them.
    assert_eq!(store.get_envelope("e1@x").await.expect("get"), None);
    assert!(store.tracked(i64::MAX).await.expect("tracked").is_empty());
    assert_eq!(store.purge_expired().await.expect("purge"), 3);
    let counts = store.counts().await.expect("counts");
    assert_eq!(
        (
            counts.claims,
            counts.envelopes,
            counts.tracked,
            counts.marks
        ),
        (1, 1, 0, 0)
    );
    assert_eq!(store.purge_expired().await.expect("purge"), 0);
    assert_eq!(
        store.claim("b", "id", 2, 60).await.expect("claim"),
        existing("id-b", 1, false)
    );
    assert!(store.get_envelope("e2@x").await.expect("get").is_some());
}

/// Group commit: many concurrent operations share transactions, and every
/// one of them gets its own answer (200 claims of 100 keys: one New each).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_concurrent_jobs_each_get_their_answer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn StateStore> = Arc::new(EmbeddedStore::open(dir.path()).expect("open"));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200i64 {
        let store = Arc::clone(&store);
        tasks.spawn(async move {
            let key = format!("g-{}", i % 100);
            let c = store
                .claim(&key, &format!("id-{i}"), i, 60)
                .await
                .expect("claim");
            (key, i, c)
        });
    }
    let mut new = std::collections::HashMap::new();
    let mut seen = Vec::new();
    while let Some(res) = tasks.join_next().await {
        let (key, i, c) = res.expect("task");
        match c {
            Claim::New => assert!(new.insert(key, i).is_none(), "two New"),
            Claim::Existing { .. } => seen.push((key, c)),
        }
    }
    assert_eq!(new.len(), 100);
    for (key, c) in seen {
        let i = new[&key];
        assert_eq!(c, existing(&format!("id-{i}"), i, false));
    }
}

/// A directory of the earlier file layout is imported once, and its
/// files set aside.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_imports_the_earlier_file_layout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    for sub in ["claims", "envelopes", "tracked", "marks"] {
        std::fs::create_dir_all(d.join(sub)).expect("mkdir");
    }
    let far = 4_000_000_000i64;
    std::fs::write(
        d.join("claims/k-6f6c64"),
        format!(
            r#"{{"key":"old","pec_id":"old-1@x","submitted_at":7,"receipt_sent":true,"expires_at":{far}}}"#
        ),
    )
    .expect("write");
    let rec = pending_envelope("old-env@x", 2);
    std::fs::write(
        d.join("envelopes/k-1"),
        serde_json::to_vec(&serde_json::json!({"expires_at": far, "record": rec})).expect("json"),
    )
    .expect("write");
    std::fs::write(
        d.join("tracked/k-1"),
        br#"{"pec_id":"old-env@x","submitted_at":1700000000}"#,
    )
    .expect("write");
    std::fs::write(
        d.join("marks/k-2"),
        format!(r#"{{"key":"mk","done":true,"expires_at":{far}}}"#),
    )
    .expect("write");
    std::fs::write(d.join("marks/k-3"), b"{ broken").expect("write");
    std::fs::write(d.join(".lock.3"), b"").expect("write");

    let store = EmbeddedStore::open(d).expect("open");
    assert_eq!(
        store.claim("old", "new@x", 9, 60).await.expect("claim"),
        existing("old-1@x", 7, true)
    );
    assert_eq!(
        store.get_envelope("old-env@x").await.expect("get"),
        Some(rec.clone())
    );
    assert_eq!(tracked_ids(&store).await, ["old-env@x"]);
    assert!(store.confirmed("mk").await.expect("confirmed"));
    for sub in ["claims", "envelopes", "tracked", "marks"] {
        assert!(!d.join(sub).exists(), "{sub}/ moved away");
        assert!(d.join("imported-files").join(sub).is_dir(), "{sub}/ kept");
    }
    assert!(
        d.join("imported-files/marks/k-3").exists(),
        "unreadable file kept"
    );
    assert!(!d.join(".lock.3").exists());
    drop(store);
    // Once: reopening imports nothing again and keeps what is there.
    let store = EmbeddedStore::open(d).expect("reopen");
    assert_eq!(store.counts().await.expect("counts").claims, 1);
}

// ---------------------------------------------------------------------------
// Redis.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_behaviour() {
    let server = RedisServer::start();
    let store = server.store("pec:");
    let url = server.url();
    let open_other: OpenOther =
        Arc::new(move || Box::new(RedisStore::connect(&url, "pec:").expect("connect other")));
    behaviour_suite(Arc::new(store), open_other).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_key_layout_and_corrupt_values() {
    let server = RedisServer::start();
    let store = server.store("t1:");
    store.claim("k", "id", 5, 100).await.expect("claim");
    store
        .put_envelope(&envelope("e@x", 1), 100)
        .await
        .expect("put");

    let mut raw = raw_connection(&server.url()).await;
    let ttl = key_ttl(&mut raw, "t1:claim:k").await;
    assert!((1..=100).contains(&ttl), "claim TTL {ttl}");
    store.mark_receipt_sent("k", &[], 60).await.expect("mark");
    let ttl = key_ttl(&mut raw, "t1:claim:k").await;
    assert!(
        (1..=100).contains(&ttl),
        "mark_receipt_sent kept the TTL: {ttl}"
    );
    let ttl = key_ttl(&mut raw, "t1:env:e@x").await;
    assert!((1..=100).contains(&ttl), "envelope TTL {ttl}");

    // Another prefix is another namespace.
    let other = server.store("t2:");
    assert_eq!(
        other.claim("k", "id2", 6, 100).await.expect("claim"),
        Claim::New
    );

    let _: () = redis::cmd("SET")
        .arg("t1:claim:bad")
        .arg("garbage{")
        .query_async(&mut raw)
        .await
        .expect("SET");
    match store.claim("bad", "id", 1, 60).await {
        Err(StateError::Corrupt { key, .. }) => assert_eq!(key, "bad"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    let _: () = redis::cmd("SET")
        .arg("t1:env:bad@x")
        .arg("[1,2]")
        .query_async(&mut raw)
        .await
        .expect("SET");
    match store.get_envelope("bad@x").await {
        Err(StateError::Corrupt { key, .. }) => assert_eq!(key, "bad@x"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_two_nodes_share_claims() {
    let server = RedisServer::start();
    let a: Arc<dyn StateStore> = Arc::new(server.store("pec:"));
    let b: Arc<dyn StateStore> = Arc::new(server.store("pec:"));
    two_stores_share_claims(&a, &b, "both nodes").await;
    a.mark_receipt_sent("shared-0", &[], 60)
        .await
        .expect("mark");
    match b.claim("shared-0", "x", 0, 60).await.expect("claim") {
        Claim::Existing { receipt_sent, .. } => assert!(receipt_sent),
        Claim::New => panic!("node b lost node a's claim"),
    }
}

/// Retry `op` until it succeeds, for up to `limit`.
async fn eventually<F, Fut, T>(limit: Duration, mut op: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StateError>>,
{
    let start = Instant::now();
    loop {
        match op().await {
            Ok(v) => return v,
            Err(e) if start.elapsed() < limit => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("still failing after {limit:?}: {e}"),
        }
    }
}

/// Run `op`, assert it fails with Unavailable within 5 s.
async fn assert_unavailable<T: std::fmt::Debug>(
    what: &str,
    op: impl std::future::Future<Output = Result<T, StateError>>,
) {
    let start = Instant::now();
    let res = tokio::time::timeout(Duration::from_secs(10), op)
        .await
        .unwrap_or_else(|_| panic!("{what}: hung for 10 s"));
    let took = start.elapsed();
    eprintln!("{what}: {res:?} after {took:?}");
    assert!(
        matches!(res, Err(StateError::Unavailable(_))),
        "{what}: expected Unavailable, got {res:?}"
    );
    assert!(took < Duration::from_secs(5), "{what}: took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stop_and_restart() {
    let mut server = RedisServer::start();
    let store = server.store("pec:");
    assert_eq!(
        store.claim("before", "id", 1, 60).await.expect("claim"),
        Claim::New
    );

    server.stop();
    assert_unavailable("claim", store.claim("during", "id", 1, 60)).await;
    assert_unavailable("mark", store.mark_receipt_sent("before", &[], 60)).await;
    assert_unavailable("put", store.put_envelope(&envelope("d@x", 1), 60)).await;
    assert_unavailable("get", store.get_envelope("d@x")).await;
    assert_unavailable("ping", store.ping()).await;
    // Still failing fast after a while (not stuck in reconnection).
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_unavailable("ping later", store.ping()).await;

    server.restart();
    // The same instance recovers by itself (the data is gone: the server
    // persists nothing).
    let c = eventually(Duration::from_secs(5), || {
        store.claim("after", "id-a", 2, 60)
    })
    .await;
    assert_eq!(c, Claim::New);
    assert_eq!(
        store.claim("after", "id-b", 3, 60).await.expect("claim"),
        existing("id-a", 2, false)
    );
    store.ping().await.expect("ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_connect_is_lazy() {
    assert!(RedisStore::connect("not a url", "pec:").is_err());

    // Nothing listens on the port yet: connect succeeds, operations fail
    // fast, and work once the server is up.
    let port = free_port();
    let store = RedisStore::connect(&format!("redis://127.0.0.1:{port}/"), "pec:")
        .expect("lazy connect while Redis is down");
    assert_unavailable("ping", store.ping()).await;
    assert_unavailable("claim", store.claim("k", "id", 1, 60)).await;

    let _server = RedisServer::start_on(port);
    eventually(Duration::from_secs(5), || store.ping()).await;
    assert_eq!(
        store.claim("k", "id", 1, 60).await.expect("claim"),
        Claim::New
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_hung_server_times_out() {
    let server = RedisServer::start();
    let store = server
        .store("pec:")
        .with_timeout(Duration::from_millis(500));
    assert_eq!(store.timeout(), Duration::from_millis(500));
    store.ping().await.expect("ping");

    // SIGSTOP: the TCP connection stays up, the server never answers.
    server.signal("STOP");
    let start = Instant::now();
    let res = store.claim("hung", "id", 1, 60).await;
    let took = start.elapsed();
    server.signal("CONT");
    assert!(
        matches!(res, Err(StateError::Unavailable(_))),
        "expected Unavailable, got {res:?}"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");

    // And it works again once the server answers.
    eventually(Duration::from_secs(5), || store.ping()).await;
    let c = eventually(Duration::from_secs(5), || store.claim("hung2", "id", 1, 60)).await;
    assert_eq!(c, Claim::New);
}

// ---------------------------------------------------------------------------
// Redis with replicas (WAIT) and Sentinel.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_behaviour_waiting_for_a_replica() {
    let primary = RedisServer::start();
    let replica = RedisServer::replica_of(primary.port);
    replica.wait_in_sync().await;
    let url = primary.url();
    let open = move || {
        RedisStore::connect(&url, "pec:")
            .expect("connect")
            .with_wait(1, Duration::from_millis(1000))
            .with_timeout(Duration::from_secs(3))
    };
    let open2 = open.clone();
    let open_other: OpenOther = Arc::new(move || Box::new(open2()));
    behaviour_suite(Arc::new(open()), open_other).await;
    // What the store wrote is on the replica.
    let mut raw = raw_connection(&replica.url()).await;
    let n: i64 = redis::cmd("DBSIZE")
        .query_async(&mut raw)
        .await
        .expect("DBSIZE");
    assert!(n > 10, "replica holds {n} keys");
}

/// With `wait_replicas` = 1 and no replica, a write is not reported done
/// (Unavailable: the milter answers 4xx) although the primary took it;
/// reads work. Once a replica is there, the same call tried again finds
/// its own earlier write: the claim is `New` (the same PEC id), the `once`
/// marker is its own, and another caller still sees them taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_unacknowledged_writes_are_unavailable_and_retry_finds_them() {
    let primary = RedisServer::start();
    let store = primary
        .store("pec:")
        .with_wait(1, Duration::from_millis(150))
        .with_timeout(Duration::from_millis(800));
    assert_unavailable("claim", store.claim("w", "id-w", 7, 600)).await;
    assert_unavailable("put", store.put_envelope(&envelope("w@x", 2), 600)).await;
    assert_unavailable("confirm", store.confirm("done", 600, &[])).await;
    assert_unavailable(
        "update",
        store.update_envelope("w@x", 600, &set_status(1, RecipientStatus::Consegnato)),
    )
    .await;
    let res = store.get_envelope("w@x").await.expect("reads work");
    assert!(res.is_some(), "the primary took the write");
    store.ping().await.expect("ping");

    let replica = RedisServer::replica_of(primary.port);
    replica.wait_in_sync().await;
    // The same submission tried again: its own claim, so New.
    assert_eq!(
        store.claim("w", "id-w", 7, 600).await.expect("claim"),
        Claim::New
    );
    // Anyone else: Existing with that PEC id.
    assert_eq!(
        store.claim("w", "id-other", 8, 600).await.expect("claim"),
        existing("id-w", 7, false)
    );
    assert!(store.once("m", 600).await.expect("once"));
    assert!(
        !store
            .once("m", 600)
            .await
            .expect("once again: another taker")
    );
    // The compare-and-set that was not acknowledged had landed.
    let rec = store
        .get_envelope("w@x")
        .await
        .expect("get")
        .expect("there");
    assert_eq!(rec.recipients[1].status, RecipientStatus::Consegnato);
}

async fn sentinel_knows_replica(sentinel: &RedisServer, name: &str) {
    let mut raw = raw_connection(&sentinel.url()).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let replicas: Vec<redis::Value> = redis::cmd("SENTINEL")
            .arg("REPLICAS")
            .arg(name)
            .query_async(&mut raw)
            .await
            .expect("SENTINEL REPLICAS");
        if !replicas.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the sentinel never saw the replica"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn sentinel_store(sentinels: &[&RedisServer], wait: u32) -> RedisStore {
    RedisStore::open(RedisOptions {
        // with sentinels, only the database of the URL is used
        url: "redis://not-used.invalid:1/0".into(),
        prefix: "pec:".into(),
        password: None,
        sentinel: Some(SentinelOptions {
            sentinels: sentinels.iter().map(|s| s.addr()).collect(),
            master_name: "pec".into(),
            password: None,
        }),
        wait_replicas: wait,
        wait_timeout: Duration::from_millis(300),
        timeout: Some(Duration::from_secs(3)),
    })
    .expect("open (lazy)")
}

/// The store finds the primary through Sentinel, follows a `SENTINEL
/// FAILOVER` by itself and keeps every acknowledged write; a sentinel list
/// with nobody behind it is Unavailable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_sentinel_follows_a_failover() {
    // Nobody there: lazy open, then Unavailable.
    let nobody = RedisStore::open(RedisOptions {
        url: "redis://x/0".into(),
        prefix: "pec:".into(),
        sentinel: Some(SentinelOptions {
            sentinels: vec![("127.0.0.1".into(), free_port())],
            master_name: "pec".into(),
            password: None,
        }),
        ..RedisOptions::default()
    })
    .expect("lazy");
    assert_unavailable("ping without sentinels", nobody.ping()).await;

    let primary = RedisServer::start();
    let replica = RedisServer::replica_of(primary.port);
    replica.wait_in_sync().await;
    let sentinel = RedisServer::sentinel(primary.port, "pec");
    sentinel_knows_replica(&sentinel, "pec").await;

    let store = sentinel_store(&[&sentinel], 1);
    assert_eq!(store.current_primary(), None, "lazy");
    assert_eq!(
        store.claim("before", "id-b", 1, 600).await.expect("claim"),
        Claim::New
    );
    store
        .put_envelope(&envelope("b@x", 1), 600)
        .await
        .expect("put");
    assert_eq!(
        store.current_primary(),
        Some(format!("127.0.0.1:{}", primary.port))
    );

    // (-NOGOODSLAVE until the sentinel has heard from the replica itself)
    let mut raw = raw_connection(&sentinel.url()).await;
    let start = Instant::now();
    loop {
        let res: redis::RedisResult<redis::Value> = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg("pec")
            .query_async(&mut raw)
            .await;
        match res {
            Ok(_) => break,
            Err(e) if start.elapsed() < Duration::from_secs(20) => {
                eprintln!("SENTINEL FAILOVER: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("SENTINEL FAILOVER: {e}"),
        }
    }
    // Keep working through the switch: every answer is Ok or Unavailable,
    // and the store ends up on the promoted replica.
    let want = format!("127.0.0.1:{}", replica.port);
    let start = Instant::now();
    let mut n = 0;
    while store.current_primary().as_deref() != Some(want.as_str()) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "still on {:?}",
            store.current_primary()
        );
        match store.claim(&format!("during-{n}"), "id", 2, 600).await {
            Ok(Claim::New) => n += 1,
            Ok(other) => panic!("a fresh key claimed as {other:?}"),
            Err(StateError::Unavailable(_)) => {}
            Err(e) => panic!("{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // What was acknowledged before and during the switch is on the new
    // primary (reads through the store, and a raw look at the node).
    assert_eq!(
        eventually(Duration::from_secs(20), || store
            .claim("before", "x", 9, 600))
        .await,
        existing("id-b", 1, false)
    );
    assert!(store.get_envelope("b@x").await.expect("get").is_some());
    for i in 0..n {
        assert_eq!(
            store
                .claim(&format!("during-{i}"), "y", 3, 600)
                .await
                .expect("claim"),
            existing("id", 2, false),
            "during-{i}"
        );
    }
    let mut new_primary = raw_connection(&replica.url()).await;
    let role: Vec<redis::Value> = redis::cmd("ROLE")
        .query_async(&mut new_primary)
        .await
        .expect("ROLE");
    assert_eq!(
        role.first(),
        Some(&redis::Value::BulkString(b"master".to_vec()))
    );
    let exists: i64 = redis::cmd("EXISTS")
        .arg("pec:claim:before")
        .query_async(&mut new_primary)
        .await
        .expect("EXISTS");
    assert_eq!(exists, 1);
}
