//! Per-message state of the PEC transactions, shared by every MTA node:
//! the envelopes sent (for the receipts and the 12 h / 24 h notices to
//! come) and the idempotency claims that keep MTA retries from producing a
//! second acceptance receipt.
//!
//! Two backends behind [`StateStore`]: [`redis::RedisStore`] (production,
//! several nodes share it) and [`embedded::EmbeddedStore`] (one node, files
//! on disk, no server).

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

    /// Record that the acceptance receipt of the claimed submission `key`
    /// has been handed to the MTA.
    async fn mark_receipt_sent(&self, key: &str) -> Result<(), StateError>;

    /// Store (create or replace) an envelope record, kept for `ttl_secs`.
    async fn put_envelope(&self, rec: &EnvelopeRecord, ttl_secs: u64) -> Result<(), StateError>;

    async fn get_envelope(&self, pec_id: &str) -> Result<Option<EnvelopeRecord>, StateError>;

    /// A cheap round trip that fails when the backend is unusable.
    async fn ping(&self) -> Result<(), StateError>;
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
