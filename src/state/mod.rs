//! Per-message state of the PEC transactions, shared by every MTA node:
//! the envelopes sent (for the receipts and the 12 h / 24 h notices to
//! come) and the idempotency claims that keep MTA retries from producing a
//! second acceptance receipt.
//!
//! Two backends behind [`StateStore`]: [`redis::RedisStore`] (production,
//! several nodes share it) and [`embedded::EmbeddedStore`] (one node, one
//! SQLite file, no server).
//!
//! # Tracking (PEC-RULES §2.9)
//!
//! An envelope is *tracked* while one of its `certificato` recipients is
//! still waiting for the outcome ([`EnvelopeRecord::is_tracked`]): status
//! [`RecipientStatus::Sent`] or [`RecipientStatus::PresaInCarico`].
//! [`StateStore::put_envelope`] keeps a tracking index up to date, and
//! [`StateStore::tracked`] lists the tracked envelopes old enough to be
//! looked at by the 12 h / 24 h timers (`crate::roles::tracking`).
//! [`StateStore::once`], [`StateStore::confirm`], [`StateStore::release`]
//! and [`StateStore::confirmed`] are small markers with a lifetime, the
//! building block of "exactly one node sends this notice".
//! [`StateStore::update_envelope`] is the compare-and-set every change of
//! an envelope's recipients goes through (receipts, the final notice), so
//! concurrent writers on any node never lose each other's updates.
//!
//! # The outbox
//!
//! Every receipt and notice the roles issue (the accettazione and its
//! refusals, the presa in carico and the rilevazione-virus, the
//! avvenuta consegna and errore consegna, the 12 h / 24 h notices) is an
//! [`OutboxEntry`] written in the same durable step as the record that
//! says it exists: the claim's "receipt handed over" flag
//! ([`StateStore::record_acceptance`], [`StateStore::mark_receipt_sent`])
//! or the notice's confirmed marker ([`StateStore::confirm`]): one SQLite
//! transaction, one Redis script. The role then hands it to
//! the MTA at once and drops it ([`StateStore::outbox_done`]); what is
//! left (the MTA's listener down, a crash in between) is found by
//! [`StateStore::outbox_due`] and sent by `crate::roles::outbox`. An
//! entry is written at most once per Message-ID (stable, derived from the
//! event), and only once the claim says so can an MTA retry never build it
//! again.

pub mod embedded;
pub mod redis;

use serde::{Deserialize, Serialize};

use crate::pec::{TipoDestinatario, TipoRicevuta};

/// Errors of a state backend. Every one of them means "cannot decide now":
/// the milter answers a temporary failure (4xx).
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state backend unavailable: {0}")]
    Unavailable(String),
    #[error("state backend I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt state record {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

/// Delivery status of one recipient of an envelope, as the sender side
/// knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecipientStatus {
    /// Envelope sent, nothing heard yet.
    Sent,
    PresaInCarico,
    Consegnato,
    Errore,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecipientState {
    pub address: String,
    #[serde(with = "tipo_destinatario")]
    pub tipo: TipoDestinatario,
    pub status: RecipientStatus,
    /// Unix seconds of the last status change.
    pub updated_at: i64,
}

/// One busta di trasporto sent by our access point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvelopeRecord {
    /// PEC msgid (`identificativo`), without angle brackets. The key.
    pub pec_id: String,
    /// The client's Message-ID, with angle brackets.
    pub original_msgid: Option<String>,
    /// The holder (SMTP reverse path).
    pub sender: String,
    pub subject: String,
    pub recipients: Vec<RecipientState>,
    #[serde(with = "tipo_ricevuta")]
    pub ricevuta: TipoRicevuta,
    /// Unix seconds of the transaction time (the single time reference of
    /// the envelope and its acceptance receipt).
    pub submitted_at: i64,
}

impl EnvelopeRecord {
    /// Whether some `certificato` recipient still waits for an outcome
    /// (status [`RecipientStatus::Sent`] or
    /// [`RecipientStatus::PresaInCarico`]): the 12 h / 24 h timers apply
    /// (PEC-RULES §2.9). `esterno` recipients are never tracked.
    pub fn is_tracked(&self) -> bool {
        self.recipients.iter().any(RecipientState::is_pending)
    }
}

impl RecipientState {
    /// A `certificato` recipient without an outcome yet (neither
    /// delivered nor failed).
    pub fn is_pending(&self) -> bool {
        self.tipo == TipoDestinatario::Certificato
            && matches!(
                self.status,
                RecipientStatus::Sent | RecipientStatus::PresaInCarico
            )
    }
}

/// The change [`StateStore::update_envelope`] applies: returns whether
/// it changed the record.
pub type Update<'a> = dyn Fn(&mut EnvelopeRecord) -> bool + Send + Sync + 'a;

/// How many times [`StateStore::update_envelope`] tries its
/// compare-and-set before giving up (each failed try means another writer
/// changed the record in between).
pub const UPDATE_ATTEMPTS: usize = 16;

/// The compare-and-set loop of [`StateStore::update_envelope`], shared by
/// the backends: `read` gives the current record and the version it was
/// read at (absent: `None`), `write` stores a record if the version is
/// still current (`true`) or reports that another writer got in between
/// (`false`).
pub(crate) async fn compare_and_set<V, R, RF, W, WF>(
    pec_id: &str,
    f: &Update<'_>,
    read: R,
    write: W,
) -> Result<Option<EnvelopeRecord>, StateError>
where
    R: Fn() -> RF,
    RF: std::future::Future<Output = Result<Option<(V, EnvelopeRecord)>, StateError>>,
    W: Fn(V, EnvelopeRecord) -> WF,
    WF: std::future::Future<Output = Result<bool, StateError>>,
{
    for attempt in 1..=UPDATE_ATTEMPTS {
        let Some((version, mut rec)) = read().await? else {
            return Ok(None);
        };
        if !f(&mut rec) {
            return Ok(None);
        }
        if write(version, rec.clone()).await? {
            return Ok(Some(rec));
        }
        tracing::debug!(pec_id = %pec_id, attempt, "update_envelope: record changed by another writer, trying again");
    }
    Err(StateError::Unavailable(format!(
        "update_envelope {pec_id}: the record kept changing under {UPDATE_ATTEMPTS} attempts"
    )))
}

/// A message we send (a receipt, a notice), kept until the MTA has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    /// Its Message-ID without angle brackets: stable (derived from the
    /// event), the key of the entry.
    pub id: String,
    /// The SMTP reverse path.
    pub from: String,
    pub to: Vec<String>,
    /// The whole signed message; empty when it is kept in
    /// [`file`](Self::file).
    pub message: Vec<u8>,
    /// A message larger than the role's spool threshold (an avvenuta
    /// consegna completa carries the whole original, up to 100 MB) is not
    /// copied into the store: it is written and synced into the node's
    /// outbox directory first, and the entry names that file. Only the
    /// node that holds the file can send it.
    pub file: Option<String>,
    /// Unix seconds when it was queued.
    pub queued_at: i64,
    /// What it is about (for the log lines): the PEC id and the receipt's
    /// kind (its `X-Ricevuta`).
    pub pec_id: String,
    pub kind: String,
}

#[derive(Serialize, Deserialize)]
struct OutboxHead {
    from: String,
    to: Vec<String>,
    queued_at: i64,
    #[serde(default)]
    pec_id: String,
    #[serde(default)]
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<String>,
}

impl OutboxEntry {
    /// How the backends keep it: one JSON line (reverse path, recipients,
    /// time), then the message's bytes as they are.
    pub fn encode(&self) -> Vec<u8> {
        let head = OutboxHead {
            from: self.from.clone(),
            to: self.to.clone(),
            queued_at: self.queued_at,
            pec_id: self.pec_id.clone(),
            kind: self.kind.clone(),
            file: self.file.clone(),
        };
        // a struct of strings and an integer always serialises
        let mut out = serde_json::to_vec(&head).unwrap_or_default();
        out.push(b'\n');
        out.extend_from_slice(&self.message);
        out
    }

    /// Read back what [`encode`](Self::encode) wrote, for the entry `id`.
    pub fn decode(id: &str, bytes: &[u8]) -> Result<OutboxEntry, StateError> {
        let corrupt = |reason: String| StateError::Corrupt {
            key: format!("outbox {id}"),
            reason,
        };
        let nl = bytes
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| corrupt("no header line".into()))?;
        let (head, message) = bytes.split_at(nl);
        let head: OutboxHead = serde_json::from_slice(head).map_err(|e| corrupt(e.to_string()))?;
        Ok(OutboxEntry {
            id: id.to_string(),
            from: head.from,
            to: head.to,
            message: message.get(1..).unwrap_or_default().to_vec(),
            queued_at: head.queued_at,
            pec_id: head.pec_id,
            kind: head.kind,
            file: head.file,
        })
    }
}

/// What the store holds that an operator watches: messages waiting in the
/// outbox and envelopes still tracked (their 12 h / 24 h notices pending).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Depth {
    pub outbox: u64,
    pub tracked: u64,
}

/// The outcome of claiming an idempotency key for a submission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First time this submission is seen: go on with `pec_id` and `time`
    /// (the values passed in).
    New,
    /// Seen before (an MTA retry): reuse its PEC id and time, so the
    /// envelope is the same; `receipt_sent` tells whether the acceptance
    /// receipt already left.
    Existing {
        pec_id: String,
        submitted_at: i64,
        receipt_sent: bool,
    },
}

/// The state backend. Implementations must be safe to share between
/// tasks and, for Redis, between processes on several nodes: `claim` is
/// atomic (first writer wins).
#[async_trait::async_trait]
pub trait StateStore: Send + Sync {
    /// Atomically claim `key` (a digest of sender, recipients and message
    /// bytes) for a new submission with `pec_id` and `submitted_at`, kept
    /// for `ttl_secs`. If the key exists, return what was stored.
    async fn claim(
        &self,
        key: &str,
        pec_id: &str,
        submitted_at: i64,
        ttl_secs: u64,
    ) -> Result<Claim, StateError>;

    /// Record that the receipts of the claimed message `key` are handed
    /// over: `outbox` (possibly none) kept, in the same write, until
    /// [`outbox_done`](Self::outbox_done) (at most `ttl_secs`). An entry
    /// whose id is already kept is not written again.
    async fn mark_receipt_sent(
        &self,
        key: &str,
        outbox: &[OutboxEntry],
        ttl_secs: u64,
    ) -> Result<(), StateError>;

    /// Store (create or replace) an envelope record, kept for `ttl_secs`,
    /// and add it to the tracking index when it
    /// [is tracked](EnvelopeRecord::is_tracked), remove it otherwise (see
    /// [`tracked`](Self::tracked)).
    async fn put_envelope(&self, rec: &EnvelopeRecord, ttl_secs: u64) -> Result<(), StateError>;

    /// Store the envelope record of the accepted submission `key` (as
    /// [`put_envelope`](Self::put_envelope)) and record that its acceptance
    /// receipt has been handed over with `outbox` (as
    /// [`mark_receipt_sent`](Self::mark_receipt_sent)), in one write where
    /// the backend can: the access point's last state change of a
    /// submission. The default body does the two in turn.
    async fn record_acceptance(
        &self,
        key: &str,
        rec: &EnvelopeRecord,
        ttl_secs: u64,
        outbox: &[OutboxEntry],
    ) -> Result<(), StateError> {
        self.put_envelope(rec, ttl_secs).await?;
        self.mark_receipt_sent(key, outbox, ttl_secs).await
    }
    /// The outbox entries queued at or before `queued_before` (Unix
    /// seconds), oldest first, at most `limit`. The default body (test
    /// fakes without an outbox) has none.
    async fn outbox_due(
        &self,
        queued_before: i64,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StateError> {
        let _ = (queued_before, limit);
        Ok(Vec::new())
    }
    /// How many messages wait in the outbox and how many envelopes are
    /// tracked, counted by the backend without reading them (the metrics'
    /// gauges, read at each scrape). The default body (test fakes) counts
    /// none.
    async fn depth(&self) -> Result<Depth, StateError> {
        Ok(Depth::default())
    }
    /// The MTA has the entry `id`: drop it (absent: not an error).
    async fn outbox_done(&self, id: &str) -> Result<(), StateError> {
        let _ = id;
        Ok(())
    }

    async fn get_envelope(&self, pec_id: &str) -> Result<Option<EnvelopeRecord>, StateError>;

    /// Read-modify-write the envelope `pec_id` as one atomic step against
    /// every other writer (tasks, processes, Redis nodes): `f` gets the
    /// current record and returns whether it changed it. A changed record
    /// is stored (kept for `ttl_secs`, the tracking index updated as by
    /// [`put_envelope`](Self::put_envelope)) only if the stored record is
    /// still the one `f` saw (compare-and-set); if another writer got in
    /// between, `f` runs again on the fresh record, up to
    /// [`UPDATE_ATTEMPTS`] times ([`StateError::Unavailable`] after that:
    /// the caller answers 4xx and its MTA retries).
    ///
    /// Returns the stored record when `f` changed it, `None` when the
    /// envelope is absent or `f` left it as it was.
    ///
    /// `f` may run several times and must only look at its argument. The
    /// default body (for test fakes) is a plain get-then-put, not atomic.
    async fn update_envelope(
        &self,
        pec_id: &str,
        ttl_secs: u64,
        f: &Update<'_>,
    ) -> Result<Option<EnvelopeRecord>, StateError> {
        let Some(mut rec) = self.get_envelope(pec_id).await? else {
            return Ok(None);
        };
        if !f(&mut rec) {
            return Ok(None);
        }
        self.put_envelope(&rec, ttl_secs).await?;
        Ok(Some(rec))
    }

    /// Delete the records that have expired (they are already treated as
    /// absent); how many. The default body, for backends whose records
    /// expire by themselves (Redis), does nothing.
    async fn purge_expired(&self) -> Result<usize, StateError> {
        Ok(0)
    }

    /// A cheap round trip that fails when the backend is unusable.
    async fn ping(&self) -> Result<(), StateError>;

    /// The tracked envelopes ([`EnvelopeRecord::is_tracked`]) submitted at
    /// or before `submitted_before` (Unix seconds), in no particular
    /// order. The index behind it is maintained by
    /// [`put_envelope`](Self::put_envelope); entries whose envelope has
    /// expired or is no longer tracked are dropped on the way.
    ///
    /// The default body (for test fakes) reports the operation as
    /// unsupported.
    async fn tracked(&self, submitted_before: i64) -> Result<Vec<EnvelopeRecord>, StateError> {
        let _ = submitted_before;
        Err(StateError::Unavailable("tracked: not supported".into()))
    }

    /// Take the marker `key` for `ttl_secs` if nobody holds it: `true` for
    /// exactly one caller, across tasks, processes and (Redis) nodes, until
    /// the marker expires or is [`release`](Self::release)d. Marker keys
    /// are a namespace of their own (no clash with claims or envelopes).
    async fn once(&self, key: &str, ttl_secs: u64) -> Result<bool, StateError> {
        let _ = (key, ttl_secs);
        Err(StateError::Unavailable("once: not supported".into()))
    }

    /// Mark `key` as done, kept for `ttl_secs` from now (whether or not
    /// it was held): [`once`](Self::once) keeps failing and
    /// [`confirmed`](Self::confirmed) answers `true` until it expires.
    /// Turns a short lease taken with `once` into a lasting record. The
    /// `outbox` entries (possibly none: the message the marker stands for)
    /// are kept in the same write, as by
    /// [`mark_receipt_sent`](Self::mark_receipt_sent).
    async fn confirm(
        &self,
        key: &str,
        ttl_secs: u64,
        outbox: &[OutboxEntry],
    ) -> Result<(), StateError> {
        let _ = (key, ttl_secs, outbox);
        Err(StateError::Unavailable("confirm: not supported".into()))
    }

    /// Whether `key` was [`confirm`](Self::confirm)ed (and has not
    /// expired). A marker only taken with [`once`](Self::once) is not.
    async fn confirmed(&self, key: &str) -> Result<bool, StateError> {
        let _ = key;
        Err(StateError::Unavailable("confirmed: not supported".into()))
    }

    /// Drop the marker `key` (taken or confirmed): the next
    /// [`once`](Self::once) on it succeeds. Releasing an absent marker is
    /// not an error.
    async fn release(&self, key: &str) -> Result<(), StateError> {
        let _ = key;
        Err(StateError::Unavailable("release: not supported".into()))
    }
}

mod tipo_destinatario {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::pec::TipoDestinatario;

    pub fn serialize<S: Serializer>(t: &TipoDestinatario, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(t.wire())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<TipoDestinatario, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

mod tipo_ricevuta {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::pec::TipoRicevuta;

    pub fn serialize<S: Serializer>(t: &TipoRicevuta, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(t.wire())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<TipoRicevuta, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}
