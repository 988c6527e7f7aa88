//! The sender side's 12 h / 24 h timers (PEC-RULES §2.9): the preavviso
//! and the avviso di mancata consegna per superamento dei tempi massimi.
//!
//! For every `certificato` recipient of an envelope our access point sent
//! (an [`EnvelopeRecord`] in the state store):
//!
//! - [`TrackerConfig::first`] (12 h) after sending, still
//!   [`RecipientStatus::Sent`] (neither presa in carico nor consegna) →
//!   the preavviso (`finale = false`) to the sender;
//! - [`TrackerConfig::last`] (24 h) after sending, still without an outcome
//!   (status `Sent` or `PresaInCarico`) → the final notice (`finale =
//!   true`), the recipient is set to [`RecipientStatus::Errore`] and
//!   tracking stops for it.
//!
//! `esterno` recipients get no such notices. The timers are not timers in
//! memory: every [`TrackerConfig::interval`] a [`Tracker::tick`] asks the
//! store for the envelopes still tracked ([`StateStore::tracked`]) and sends
//! what is due, so they survive restarts and work the same on every node.
//!
//! # Exactly once, and never lost
//!
//! Each notice has a marker key in the store,
//! `notice:<pec_id>:<recipient, lowercase>:<first|last>`, used in two
//! phases:
//!
//! 1. [`StateStore::confirmed`] → already sent: nothing to do.
//! 2. [`StateStore::once`] with a short lease ([`TrackerConfig::lease`],
//!    10 min): exactly one node (or task) wins and sends; the others skip
//!    it for now.
//! 3. The winner builds and signs the notice, records its event in the
//!    message log, then [confirms](StateStore::confirm) the marker for the
//!    retention time **together with the signed notice as an outbox
//!    entry**, in one write (see "The outbox" in `crate::state`). Only
//!    then is it handed to the MTA ([`send_queued`]); if that fails, or
//!    the process dies first, the outbox pass sends it later. On a failure
//!    before the confirmation it [releases](StateStore::release) the
//!    marker, and the next pass, on any node, tries again.
//!
//! So a notice is never lost (it is durable before anything is sent) and
//! never built twice (once confirmed, every pass skips it). The side that
//! may repeat is the outbox's: a crash between the MTA taking the notice
//! and its removal from the outbox sends the same bytes once more, with
//! the same deterministic Message-ID
//! (`preavviso.<first|last>.<local part of the PEC id>.<hash of the
//! recipient>@<our domain>`). A node that crashes between claim and
//! confirmation only delays the notice until the lease expires; its event
//! may then be recorded a second time, which the log keeps once.
//!
//! The final notice ends the recipient's transaction: the record is read
//! again, the recipient set to `Errore` and the record written back, which
//! drops it from the tracking index once nothing is pending. If that write
//! fails, the next pass finds the `last` marker confirmed and finishes the
//! job without sending again.
//!
//! The record update is a compare-and-set
//! ([`StateStore::update_envelope`]), as is the reception point's
//! (`reception::record_receipt`): an avvenuta consegna recorded in the very
//! same instant is never overwritten by `Errore` (that recipient is no
//! longer pending when the update runs again), nor the reverse.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::crypto::{DigestAlg, SigningKey};
use crate::log::{EventLog, NoLog, event_for};
use crate::pec::Destinatario;
use crate::pec::build::{Emission, Provider, Ricevuta, Signer, Transaction, build_ricevuta};
use crate::roles::outbox::send_queued;
use crate::roles::ports::Injector;
use crate::state::{
    EnvelopeRecord, OutboxEntry, RecipientState, RecipientStatus, StateError, StateStore,
};

/// When the notices are due and how often the store is scanned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrackerConfig {
    /// Age of the envelope at which the preavviso is due (12 h).
    pub first: Duration,
    /// Age at which the final notice is due (24 h; the rules allow it from
    /// 22 h on). Must not be shorter than `first`.
    pub last: Duration,
    /// How often [`Tracker::spawn`] runs a pass (e.g. 60 s). A notice
    /// leaves at most this long after it is due.
    pub interval: Duration,
    /// How long a node holds a notice it is building before another node
    /// may try again (see the [module documentation](self)): longer than
    /// signing, recording and queueing one notice can take.
    pub lease: Duration,
}

impl Default for TrackerConfig {
    fn default() -> Self {
        TrackerConfig {
            first: Duration::from_secs(12 * 3600),
            last: Duration::from_secs(24 * 3600),
            interval: Duration::from_secs(60),
            lease: Duration::from_secs(600),
        }
    }
}

impl TrackerConfig {
    /// Check the durations: all non-zero, `last >= first`.
    pub fn validate(&self) -> Result<(), String> {
        if self.first.is_zero() || self.last.is_zero() {
            return Err("tracker: first and last must be longer than zero".into());
        }
        if self.last < self.first {
            return Err(format!(
                "tracker: last ({:?}) is shorter than first ({:?})",
                self.last, self.first
            ));
        }
        if self.interval.is_zero() {
            return Err("tracker: interval must be longer than zero".into());
        }
        if self.lease < Duration::from_secs(2) {
            return Err("tracker: lease must be at least 2 s".into());
        }
        Ok(())
    }
}

/// A notice sent by a pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// The envelope's PEC id.
    pub pec_id: String,
    /// The recipient the notice is about (daticert `consegna`).
    pub recipient: String,
    /// `false`: the 12 h preavviso; `true`: the 24 h final notice.
    pub finale: bool,
    /// Message-ID of the notice, without angle brackets.
    pub message_id: String,
    /// Where it went (the envelope's sender).
    pub to: String,
}

/// What happened to one notice in a pass.
enum Step {
    /// Signed and queued now (handed to the MTA at once, or by the outbox pass).
    Sent(Sent),
    /// Sent before (confirmed marker).
    Done,
    /// Another node or task is building it now.
    Busy,
    /// Could not be queued now (signing, log or store failure); retried later.
    Failed,
}

/// The sender side's tracker: see the [module documentation](self).
pub struct Tracker {
    state: Arc<dyn StateStore>,
    injector: Arc<dyn Injector>,
    provider: Provider,
    key: Arc<dyn SigningKey>,
    digest: DigestAlg,
    cfg: TrackerConfig,
    retention_secs: u64,
    log: Arc<dyn EventLog>,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("provider", &self.provider)
            .field("cfg", &self.cfg)
            .field("retention_secs", &self.retention_secs)
            .finish_non_exhaustive()
    }
}

impl Tracker {
    /// A tracker signing its notices as `provider` with `key`, injecting
    /// them through `injector`. `retention_secs` is the lifetime of the
    /// envelope records it writes back and of its "sent" markers (the
    /// `[state] retention` of the access point).
    pub fn new(
        state: Arc<dyn StateStore>,
        injector: Arc<dyn Injector>,
        provider: Provider,
        key: Arc<dyn SigningKey>,
        digest: DigestAlg,
        cfg: TrackerConfig,
        retention_secs: u64,
    ) -> Self {
        Tracker {
            state,
            injector,
            provider,
            key,
            digest,
            cfg,
            retention_secs,
            log: Arc::new(NoLog),
        }
    }

    /// Record every notice's event in `log` before it leaves (without
    /// one, nothing is recorded).
    pub fn with_log(mut self, log: Arc<dyn EventLog>) -> Self {
        self.log = log;
        self
    }

    pub fn config(&self) -> &TrackerConfig {
        &self.cfg
    }

    /// One pass at time `now`: every notice due is sent (see the
    /// [module documentation](self)). Returns the notices this call sent.
    ///
    /// Only a failure to list the tracked envelopes is an error; a failure
    /// on one envelope (store, signing, injection) is logged, leaves its
    /// notices for the next pass, and does not stop the others.
    pub async fn tick(&self, now: DateTime<Utc>) -> Result<Vec<Sent>, StateError> {
        let first = secs(self.cfg.first);
        let due = self
            .state
            .tracked(now.timestamp().saturating_sub(first))
            .await?;
        let mut sent = Vec::new();
        for rec in &due {
            if let Err(e) = self.envelope(rec, now, &mut sent).await {
                tracing::warn!(pec_id = %rec.pec_id, error = %e, "timers: envelope left for the next pass");
            }
        }
        Ok(sent)
    }

    /// Run [`tick`](Self::tick) every `interval` until `shutdown` turns
    /// `true` (or its sender is dropped). A pass in progress is finished
    /// first.
    pub fn spawn(
        self: Arc<Self>,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let period = self.cfg.interval.max(Duration::from_millis(10));
            let mut ticker = tokio::time::interval(period);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                if *shutdown.borrow_and_update() {
                    break;
                }
                tokio::select! {
                    _ = ticker.tick() => match self.tick(Utc::now()).await {
                        Ok(sent) if !sent.is_empty() => {
                            tracing::info!(notices = sent.len(), "timers: pass done");
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "timers: pass failed, retried at the next interval"),
                    },
                    changed = shutdown.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                }
            }
            tracing::info!("timers: stopped");
        })
    }

    /// The notices due for one envelope.
    async fn envelope(
        &self,
        rec: &EnvelopeRecord,
        now: DateTime<Utc>,
        sent: &mut Vec<Sent>,
    ) -> Result<(), StateError> {
        let age = now.timestamp().saturating_sub(rec.submitted_at);
        let mut finished = Vec::new();
        for r in rec.recipients.iter().filter(|r| r.is_pending()) {
            // The preavviso goes first; the final notice waits for it.
            let mut first_settled = true;
            if age >= secs(self.cfg.first) && r.status == RecipientStatus::Sent {
                match self.notice(rec, r, false, now).await? {
                    Step::Sent(s) => sent.push(s),
                    Step::Done => {}
                    Step::Busy | Step::Failed => first_settled = false,
                }
            }
            if first_settled && age >= secs(self.cfg.last) {
                match self.notice(rec, r, true, now).await? {
                    Step::Sent(s) => {
                        sent.push(s);
                        finished.push(r.address.clone());
                    }
                    Step::Done => finished.push(r.address.clone()),
                    Step::Busy | Step::Failed => {}
                }
            }
        }
        if !finished.is_empty() {
            self.finish(&rec.pec_id, &finished, now).await?;
        }
        Ok(())
    }

    /// One notice, claimed, sent, confirmed (or released).
    async fn notice(
        &self,
        rec: &EnvelopeRecord,
        r: &RecipientState,
        finale: bool,
        now: DateTime<Utc>,
    ) -> Result<Step, StateError> {
        let key = marker_key(&rec.pec_id, &r.address, finale);
        if self.state.confirmed(&key).await? {
            // Every pass meets the preavviso again until the final notice
            // is due: debug, not info.
            tracing::debug!(key = %key, "timers: notice already sent (confirmed marker), skipped");
            return Ok(Step::Done);
        }
        if !self
            .state
            .once(&key, self.cfg.lease.as_secs().max(1))
            .await?
        {
            // Someone holds it; it may have been confirmed meanwhile.
            return Ok(if self.state.confirmed(&key).await? {
                tracing::debug!(key = %key, "timers: notice already sent (confirmed marker), skipped");
                Step::Done
            } else {
                tracing::info!(key = %key, "timers: notice being sent by another node or task, skipped for now");
                Step::Busy
            });
        }
        let keep = self
            .retention_secs
            .max(self.cfg.last.as_secs().saturating_mul(2));
        let built = match self.build(rec, &r.address, finale, now).await {
            Ok(b) => b,
            Err(why) => {
                tracing::warn!(pec_id = %rec.pec_id, recipient = %r.address, finale, reason = %why,
                    "timers: notice not built, retried at the next pass");
                self.release(&key).await;
                return Ok(Step::Failed);
            }
        };
        let (sent, entry) = built;
        // The notice exists from here on: the marker confirmed and the
        // signed message in the outbox, in one write.
        if let Err(e) = self
            .state
            .confirm(&key, keep, std::slice::from_ref(&entry))
            .await
        {
            tracing::warn!(pec_id = %rec.pec_id, recipient = %r.address, finale, error = %e,
                "timers: notice signed but neither confirmed nor queued: not sent, retried at the next pass");
            self.release(&key).await;
            return Ok(Step::Failed);
        }
        tracing::info!(pec_id = %sent.pec_id, recipient = %sent.recipient, finale, to = %sent.to,
            message_id = %sent.message_id, key = %key, "timers: preavviso-errore-consegna signed and queued");
        send_queued(&self.state, self.injector.as_ref(), vec![entry]).await;
        Ok(Step::Sent(sent))
    }

    /// Give the lease on `key` back, so that the next pass tries again.
    async fn release(&self, key: &str) {
        if let Err(e) = self.state.release(key).await {
            tracing::warn!(key = %key, error = %e,
                "timers: cannot release the notice: retried when its lease expires");
        }
    }

    /// Build and sign one notice and record its event: what was sent, and
    /// the outbox entry that carries it.
    async fn build(
        &self,
        rec: &EnvelopeRecord,
        recipient: &str,
        finale: bool,
        now: DateTime<Utc>,
    ) -> Result<(Sent, OutboxEntry), String> {
        let tx = transaction(rec);
        let message_id = notice_message_id(&rec.pec_id, recipient, finale, &self.provider.domain);
        let emission = Emission {
            time: now,
            message_id: message_id.clone(),
        };
        let ricevuta = Ricevuta::PreavvisoErroreConsegna {
            consegna: recipient.to_owned(),
            finale,
        };
        let event = event_for(&tx, &ricevuta, &self.provider.name, now, &message_id);
        let kind = ricevuta.tipo().to_string();
        let provider = self.provider.clone();
        let key = Arc::clone(&self.key);
        let digest = self.digest;
        // Signing is CPU work (or an HSM round trip): off the async workers.
        let bytes = tokio::task::spawn_blocking(move || {
            let signer = Signer {
                key: key.as_ref(),
                digest,
            };
            build_ricevuta(&provider, &tx, &ricevuta, &emission, signer).map(|m| m.to_bytes())
        })
        .await
        .map_err(|e| format!("signing task failed: {e}"))?
        .map_err(|e| format!("building the notice: {e}"))?;
        // recorded before it can leave (an event recorded twice, after a
        // crash before the marker was confirmed, is kept once by the log)
        self.log
            .record(vec![event])
            .await
            .map_err(|e| format!("message log: {e}"))?;
        let entry = OutboxEntry {
            id: message_id.clone(),
            from: self.provider.service_address(),
            to: vec![rec.sender.clone()],
            message: bytes,
            file: None,
            queued_at: now.timestamp(),
            pec_id: rec.pec_id.clone(),
            kind,
        };
        Ok((
            Sent {
                pec_id: rec.pec_id.clone(),
                recipient: recipient.to_owned(),
                finale,
                message_id,
                to: rec.sender.clone(),
            },
            entry,
        ))
    }

    /// The transaction is over for `recipients`: set them to `Errore` in
    /// the current record and write it back (which untracks the envelope
    /// when nothing is pending any more).
    async fn finish(
        &self,
        pec_id: &str,
        recipients: &[String],
        now: DateTime<Utc>,
    ) -> Result<(), StateError> {
        let at = now.timestamp();
        let update = |rec: &mut EnvelopeRecord| {
            let mut changed = false;
            for r in rec.recipients.iter_mut() {
                if r.is_pending()
                    && recipients
                        .iter()
                        .any(|a| a.eq_ignore_ascii_case(&r.address))
                {
                    r.status = RecipientStatus::Errore;
                    r.updated_at = at;
                    changed = true;
                }
            }
            changed
        };
        // Compare-and-set: a receipt recorded at the same instant is never
        // overwritten (a recipient delivered meanwhile stays delivered).
        if let Some(rec) = self
            .state
            .update_envelope(pec_id, self.retention_secs, &update)
            .await?
        {
            tracing::info!(pec_id = %pec_id, recipients = ?recipients, tracked = rec.is_tracked(),
                "timers: transaction over with a negative outcome");
        }
        Ok(())
    }
}

/// The facts of the transaction, from the record.
fn transaction(rec: &EnvelopeRecord) -> Transaction {
    Transaction {
        identificativo: rec.pec_id.clone(),
        mittente: rec.sender.clone(),
        destinatari: rec
            .recipients
            .iter()
            .map(|r| Destinatario {
                address: r.address.clone(),
                tipo: r.tipo,
            })
            .collect(),
        risposte: rec.sender.clone(),
        oggetto: rec.subject.clone(),
        msgid: rec.original_msgid.clone(),
        ricevuta: rec.ricevuta,
    }
}

/// The store marker of one notice.
pub fn marker_key(pec_id: &str, recipient: &str, finale: bool) -> String {
    format!(
        "notice:{pec_id}:{}:{}",
        recipient.to_ascii_lowercase(),
        which(finale)
    )
}

/// The deterministic Message-ID (without angle brackets) of a notice:
/// `preavviso.<first|last>.<local part of the PEC id>.<32 hex digits of
/// the SHA-256 of the lowercase recipient>@<domain>`.
pub fn notice_message_id(pec_id: &str, recipient: &str, finale: bool, domain: &str) -> String {
    let local = pec_id.split('@').next().unwrap_or(pec_id);
    let digest = openssl::sha::sha256(recipient.to_ascii_lowercase().as_bytes());
    let hash = hex::encode(&digest[..16]);
    format!("preavviso.{}.{local}.{hash}@{domain}", which(finale))
}

fn which(finale: bool) -> &'static str {
    if finale { "last" } else { "first" }
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}
