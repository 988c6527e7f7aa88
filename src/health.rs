//! Each dependency's state as the daemon last saw it: the state store,
//! clamd, the providers' index, the signing key, the reinjection
//! listener, the message log, the TSA and the CRLs of the providers'
//! distribution points. One log line when a dependency
//! goes down (with why) and one when it is back; never one per call.
//! [`Health::snapshot`] is what the operations endpoint shows
//! (`crate::ops`, `/health`).
//!
//! The ports are watched by wrapping them ([`Observed`]): every call's
//! outcome is the observation, so nothing polls. A failure that is the
//! caller's input, not the dependency (a virus found, a claim that
//! exists), is an `Ok` and counts as up.
//!
//! The registry also carries the daemon's [`Metrics`]: every failed call
//! counts as a dependency error, and the wrapped ports count the receipts
//! and notices queued in the outbox (the state store's writes that keep
//! them) and every message handed to the MTA (the injector), by kind.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};

use crate::crypto::{CryptoError, DigestAlg, KeyKind, SigningKey};
use crate::index::IndexError;
use crate::log::{Event, EventLog, LogError};
use crate::metrics::{Kind, Metrics, Stage};
use crate::roles::message::Original;
use crate::roles::ports::{InjectError, Injector, ScanError, Scanner, Verdict};
use crate::state::{Claim, Depth, EnvelopeRecord, OutboxEntry, StateError, StateStore, Update};

/// What the daemon depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Dependency {
    StateStore,
    Clamd,
    Index,
    SigningKey,
    Reinjection,
    Log,
    Tsa,
    /// The CRLs of the providers' certificates' distribution points.
    Crl,
}

impl Dependency {
    pub const ALL: [Dependency; 8] = [
        Dependency::StateStore,
        Dependency::Clamd,
        Dependency::Index,
        Dependency::SigningKey,
        Dependency::Reinjection,
        Dependency::Log,
        Dependency::Tsa,
        Dependency::Crl,
    ];

    /// Its name in log lines and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Dependency::StateStore => "state-store",
            Dependency::Clamd => "clamd",
            Dependency::Index => "index",
            Dependency::SigningKey => "signing-key",
            Dependency::Reinjection => "reinjection",
            Dependency::Log => "message-log",
            Dependency::Tsa => "tsa",
            Dependency::Crl => "crl",
        }
    }
}

/// A dependency's last known state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Up,
    Down {
        since: DateTime<Utc>,
        reason: String,
    },
}

/// The registry; cloning shares it (and its [`Metrics`]).
#[derive(Debug, Clone, Default)]
pub struct Health {
    states: Arc<Mutex<BTreeMap<Dependency, Status>>>,
    metrics: Arc<Metrics>,
}

impl Health {
    /// The counters the daemon exposes (`[metrics]`).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// `d` answered.
    pub fn up(&self, d: Dependency) {
        let Ok(mut map) = self.states.lock() else {
            return;
        };
        if let Some(Status::Down { since, .. }) = map.insert(d, Status::Up) {
            let secs = (Utc::now() - since).num_seconds();
            tracing::warn!(dependency = d.name(), down_secs = secs, "dependency back");
        }
    }

    /// `d` failed, for `reason`: counted, and logged when it was not down
    /// already. While it stays down, `/health` shows the latest reason
    /// (the cause may change: a refused copy of the index, then another)
    /// and the time it went down.
    pub fn down(&self, d: Dependency, reason: impl Display) {
        self.metrics.dependency_error(d.name());
        let Ok(mut map) = self.states.lock() else {
            return;
        };
        let reason = reason.to_string();
        if let Some(Status::Down { reason: last, .. }) = map.get_mut(&d) {
            *last = reason;
            return;
        }
        tracing::error!(dependency = d.name(), reason = %reason, "dependency down");
        map.insert(
            d,
            Status::Down {
                since: Utc::now(),
                reason,
            },
        );
    }

    /// Record the outcome of one call to `d`.
    pub fn observe<T, E: Display>(&self, d: Dependency, r: &Result<T, E>) {
        match r {
            Ok(_) => self.up(d),
            Err(e) => self.down(d, e),
        }
    }

    /// One load of the providers' index: observed, and a signed copy whose
    /// signature did not verify counted.
    pub fn observe_index(&self, r: &Result<(), &IndexError>) {
        if let Err(e) = r
            && e.is_signature_failure()
        {
            self.metrics.index_signature_failure();
        }
        self.observe(Dependency::Index, r);
    }

    /// The CRL refresher's pass: down while a distribution point has no
    /// usable CRL (naming the first), up when every one has one.
    pub fn observe_crls(&self, unavailable: &[(String, String)]) {
        match unavailable.first() {
            None => self.up(Dependency::Crl),
            Some((_, why)) if unavailable.len() == 1 => self.down(Dependency::Crl, why),
            Some((_, why)) => self.down(
                Dependency::Crl,
                format!(
                    "{why} (and {} more distribution points)",
                    unavailable.len() - 1
                ),
            ),
        }
    }

    /// Every dependency seen so far and its state.
    pub fn snapshot(&self) -> Vec<(Dependency, Status)> {
        self.states
            .lock()
            .map(|m| m.iter().map(|(d, s)| (*d, s.clone())).collect())
            .unwrap_or_default()
    }

    /// Whether `d` is down now.
    pub fn is_down(&self, d: Dependency) -> bool {
        self.states
            .lock()
            .map(|m| matches!(m.get(&d), Some(Status::Down { .. })))
            .unwrap_or(false)
    }
}

/// A port whose calls report to [`Health`].
pub struct Observed<T: ?Sized> {
    pub inner: Arc<T>,
    pub health: Health,
    pub dependency: Dependency,
}

impl<T: ?Sized> Observed<T> {
    pub fn new(inner: Arc<T>, health: &Health, dependency: Dependency) -> Arc<Self> {
        Arc::new(Observed {
            inner,
            health: health.clone(),
            dependency,
        })
    }

    fn seen<R, E: Display>(&self, r: Result<R, E>) -> Result<R, E> {
        self.health.observe(self.dependency, &r);
        r
    }

    /// `r` observed; when it is `Ok`, `outbox` is in the outbox now.
    fn queued<R, E: Display>(&self, r: Result<R, E>, outbox: &[OutboxEntry]) -> Result<R, E> {
        if r.is_ok() {
            for e in outbox {
                self.health
                    .metrics
                    .receipt(Kind::from_wire(&e.kind), Stage::Queued);
            }
        }
        self.seen(r)
    }
}

#[async_trait::async_trait]
impl Injector for Observed<dyn Injector> {
    async fn inject(&self, from: &str, to: &[String], message: &[u8]) -> Result<(), InjectError> {
        let r = self.inner.inject(from, to, message).await;
        if r.is_ok() {
            self.health
                .metrics
                .receipt(Kind::of_message(message), Stage::Injected);
        }
        self.seen(r)
    }
}

#[async_trait::async_trait]
impl Scanner for Observed<dyn Scanner> {
    async fn scan(&self, message: &[u8]) -> Result<Verdict, ScanError> {
        self.seen(self.inner.scan(message).await)
    }
    async fn scan_original(&self, message: &Original) -> Result<Verdict, ScanError> {
        // a body that cannot be read back is ours, not clamd's
        let r = self.inner.scan_original(message).await;
        if !matches!(r, Err(ScanError::Read(_))) {
            self.health.observe(self.dependency, &r);
        }
        r
    }
}

impl SigningKey for Observed<dyn SigningKey> {
    fn certificate_der(&self) -> &[u8] {
        self.inner.certificate_der()
    }
    fn chain_der(&self) -> &[Vec<u8>] {
        self.inner.chain_der()
    }
    fn sign(&self, digest: DigestAlg, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.seen(self.inner.sign(digest, data))
    }
    fn key_kind(&self) -> KeyKind {
        self.inner.key_kind()
    }
}

#[async_trait::async_trait]
impl EventLog for Observed<dyn EventLog> {
    async fn record(&self, events: Vec<Event>) -> Result<(), LogError> {
        self.seen(self.inner.record(events).await)
    }
    async fn ready(&self) -> Result<(), LogError> {
        self.inner.ready().await
    }
}

#[async_trait::async_trait]
impl StateStore for Observed<dyn StateStore> {
    async fn claim(
        &self,
        key: &str,
        pec_id: &str,
        submitted_at: i64,
        ttl_secs: u64,
    ) -> Result<Claim, StateError> {
        self.seen(self.inner.claim(key, pec_id, submitted_at, ttl_secs).await)
    }
    async fn mark_receipt_sent(
        &self,
        key: &str,
        outbox: &[OutboxEntry],
        ttl_secs: u64,
    ) -> Result<(), StateError> {
        self.queued(
            self.inner.mark_receipt_sent(key, outbox, ttl_secs).await,
            outbox,
        )
    }
    async fn put_envelope(&self, rec: &EnvelopeRecord, ttl_secs: u64) -> Result<(), StateError> {
        self.seen(self.inner.put_envelope(rec, ttl_secs).await)
    }
    async fn record_acceptance(
        &self,
        key: &str,
        rec: &EnvelopeRecord,
        ttl_secs: u64,
        outbox: &[OutboxEntry],
    ) -> Result<(), StateError> {
        self.queued(
            self.inner
                .record_acceptance(key, rec, ttl_secs, outbox)
                .await,
            outbox,
        )
    }
    async fn outbox_due(
        &self,
        queued_before: i64,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StateError> {
        self.seen(self.inner.outbox_due(queued_before, limit).await)
    }
    async fn outbox_done(&self, id: &str) -> Result<(), StateError> {
        self.seen(self.inner.outbox_done(id).await)
    }
    async fn depth(&self) -> Result<Depth, StateError> {
        self.seen(self.inner.depth().await)
    }
    async fn get_envelope(&self, pec_id: &str) -> Result<Option<EnvelopeRecord>, StateError> {
        self.seen(self.inner.get_envelope(pec_id).await)
    }
    async fn update_envelope(
        &self,
        pec_id: &str,
        ttl_secs: u64,
        f: &Update<'_>,
    ) -> Result<Option<EnvelopeRecord>, StateError> {
        self.seen(self.inner.update_envelope(pec_id, ttl_secs, f).await)
    }
    async fn purge_expired(&self) -> Result<usize, StateError> {
        self.seen(self.inner.purge_expired().await)
    }
    async fn ping(&self) -> Result<(), StateError> {
        self.seen(self.inner.ping().await)
    }
    async fn tracked(&self, submitted_before: i64) -> Result<Vec<EnvelopeRecord>, StateError> {
        self.seen(self.inner.tracked(submitted_before).await)
    }
    async fn once(&self, key: &str, ttl_secs: u64) -> Result<bool, StateError> {
        self.seen(self.inner.once(key, ttl_secs).await)
    }
    async fn confirm(
        &self,
        key: &str,
        ttl_secs: u64,
        outbox: &[OutboxEntry],
    ) -> Result<(), StateError> {
        self.queued(self.inner.confirm(key, ttl_secs, outbox).await, outbox)
    }
    async fn confirmed(&self, key: &str) -> Result<bool, StateError> {
        self.seen(self.inner.confirmed(key).await)
    }
    async fn release(&self, key: &str) -> Result<(), StateError> {
        self.seen(self.inner.release(key).await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_is_recorded_once_and_the_way_back_too() {
        let h = Health::default();
        assert!(h.snapshot().is_empty());
        h.up(Dependency::Clamd);
        h.down(Dependency::Clamd, "connection refused");
        let first = h.snapshot();
        h.down(Dependency::Clamd, "still refused");
        let again = h.snapshot();
        assert!(h.is_down(Dependency::Clamd));
        match (&first[0].1, &again[0].1) {
            (
                Status::Down { reason, since },
                Status::Down {
                    reason: latest,
                    since: same,
                },
            ) => {
                assert_eq!(reason, "connection refused");
                assert_eq!(latest, "still refused", "the latest reason is shown");
                assert_eq!(since, same, "the time it went down stays");
            }
            _ => panic!("down expected"),
        }
        h.observe::<(), String>(Dependency::Clamd, &Ok(()));
        assert!(!h.is_down(Dependency::Clamd));
        h.observe::<(), String>(Dependency::Log, &Err("disk full".into()));
        let names: Vec<_> = h
            .snapshot()
            .into_iter()
            .map(|(d, s)| (d.name(), matches!(s, Status::Up)))
            .collect();
        assert_eq!(names, [("clamd", true), ("message-log", false)]);
    }

    struct Flaky(std::sync::atomic::AtomicBool);

    #[async_trait::async_trait]
    impl Injector for Flaky {
        async fn inject(&self, _: &str, _: &[String], _: &[u8]) -> Result<(), InjectError> {
            if self.0.load(std::sync::atomic::Ordering::SeqCst) {
                Ok(())
            } else {
                Err(InjectError::from("connection refused"))
            }
        }
    }

    /// The value of the series `name{labels}` in `text` (exact label order).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    #[tokio::test]
    async fn wrapped_ports_count_receipts_queued_and_injected_and_each_failure() {
        let h = Health::default();
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn StateStore> =
            Arc::new(crate::state::embedded::EmbeddedStore::open(dir.path()).expect("store"));
        let store = Observed::new(store, &h, Dependency::StateStore);
        let entry = |id: &str, kind: &str| OutboxEntry {
            id: id.into(),
            from: "a@b".into(),
            to: vec!["c@d".into()],
            message: format!("X-Ricevuta: {kind}\r\n\r\nbody").into_bytes(),
            file: None,
            queued_at: 1,
            pec_id: "p".into(),
            kind: kind.into(),
        };
        let Claim::New = store.claim("k", "p", 1, 60).await.expect("claim") else {
            panic!("a new claim")
        };
        store
            .mark_receipt_sent(
                "k",
                &[
                    entry("1", "presa-in-carico"),
                    entry("2", "rilevazione-virus"),
                ],
                60,
            )
            .await
            .expect("queued");
        store
            .confirm("n", 60, &[entry("3", "preavviso-errore-consegna")])
            .await
            .expect("queued");
        assert_eq!(
            store.depth().await.expect("depth"),
            Depth {
                outbox: 3,
                tracked: 0
            }
        );
        let flaky = Arc::new(Flaky(std::sync::atomic::AtomicBool::new(true)));
        let port: Arc<dyn Injector> = flaky.clone();
        let injector = Observed::new(port, &h, Dependency::Reinjection);
        injector
            .inject("a", &[], &entry("1", "presa-in-carico").message)
            .await
            .expect("sent");
        flaky.0.store(false, std::sync::atomic::Ordering::SeqCst);
        assert!(
            injector
                .inject("a", &[], b"X-Ricevuta: accettazione\r\n\r\n")
                .await
                .is_err()
        );
        assert!(injector.inject("a", &[], b"x").await.is_err());
        let text = h.metrics().encode();
        for (series, want) in [
            (
                "pec_milter_receipts_total{kind=\"presa-in-carico\",stage=\"queued\"}",
                1.0,
            ),
            (
                "pec_milter_receipts_total{kind=\"rilevazione-virus\",stage=\"queued\"}",
                1.0,
            ),
            (
                "pec_milter_receipts_total{kind=\"preavviso-errore-consegna\",stage=\"queued\"}",
                1.0,
            ),
            (
                "pec_milter_receipts_total{kind=\"presa-in-carico\",stage=\"injected\"}",
                1.0,
            ),
            (
                "pec_milter_receipts_total{kind=\"accettazione\",stage=\"injected\"}",
                0.0,
            ),
            (
                "pec_milter_dependency_errors_total{dependency=\"reinjection\"}",
                2.0,
            ),
        ] {
            assert_eq!(sample(&text, series), Some(want), "{series}\n{text}");
        }
    }

    #[tokio::test]
    async fn a_wrapped_port_reports_each_outcome() {
        let h = Health::default();
        let flaky = Arc::new(Flaky(std::sync::atomic::AtomicBool::new(false)));
        let port: Arc<dyn Injector> = flaky.clone();
        let watched = Observed::new(port, &h, Dependency::Reinjection);
        assert!(
            watched.inject("a", &[], b"m").await.is_err(),
            "the error passes through"
        );
        assert!(h.is_down(Dependency::Reinjection));
        flaky.0.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(watched.inject("a", &[], b"m").await.is_ok());
        assert!(!h.is_down(Dependency::Reinjection));
    }
}
