//! The delivery point (punto di consegna, PEC-RULES §2.7, §2.8, §6): the
//! last hop into the mailbox. Postfix delivers the PEC domains over LMTP to
//! pec-milter, which hands each message to the mailbox store (Dovecot LMTP
//! or the embedded Maildir writer) and reads its answer per recipient:
//!
//! - delivered: for a busta di trasporto, the signed `avvenuta-consegna` to
//!   the original sender, of the type the envelope asks for (completa,
//!   breve, sintetica; always sintetica for Cc recipients);
//! - permanent failure: the signed `errore-consegna` with `errore`
//!   (`no-dest` for an unknown user, else `altro`) and `errore-esteso`;
//! - temporary failure: LMTP 4xx, no receipt yet (Postfix retries).
//!
//! Nothing is certified that was not checked: a message carrying PEC
//! marker fields (`X-Trasporto`, `X-Ricevuta`) is verified first, with the
//! reception point's own checks ([`verify_pec`]: signature and chain to
//! `[reception] trust`, signer listed in the providers' index, `From:`
//! domain managed by that provider, daticert and postacert). One that
//! fails is not PEC: it is stored as the reception point would have
//! delivered it, wrapped in a signed busta di anomalia with
//! `X-VerificaSicurezza: errore`, and no receipt is issued (one warning
//! names why). With no copy of the index loaded yet nothing can be
//! verified: 4xx, nothing stored. Ordinary mail is stored as it is, without
//! receipt.
//!
//! A receipt is issued once per (envelope, recipient), also across
//! retries, and never without its once-only claim: a busta di trasporto is
//! stored only while the state store answers (4xx otherwise, nothing
//! stored). Once the mailbox holds the message, the receipt is built,
//! signed, its event recorded, and it is written into the state store's
//! outbox **in the same write that marks the claim issued**
//! ([`StateStore::mark_receipt_sent`]); only then is it handed to the MTA,
//! and if that fails (or the process dies) the outbox pass sends it (see
//! `crate::roles::outbox`). A receipt larger than the spool threshold (an
//! avvenuta consegna completa carries the whole original) is written and
//! synced into `[delivery] outbox` first and the entry names that file.
//! When the receipt cannot be queued (its event not recorded, the store
//! gone since the check), the answer is 4xx: the MTA's retry may store a
//! second copy and issues the receipt once. So the side that may repeat
//! is the mailbox copy (and, as everywhere, a message the MTA took just
//! before a crash, sent again with the same Message-ID), never a receipt
//! built twice; a receipt is never lost.
//!
//! The signature is the one dependency a receipt cannot do without: before
//! a busta di trasporto is stored, the key makes a probe signature, and
//! when it cannot (HSM gone, token locked) every recipient gets 4xx and
//! nothing is stored (Postfix retries). Should the key fail in the instant
//! between that probe and the receipt, the facts of the receipt (the
//! envelope, the recipient, the outcome, the time) are kept in the outbox
//! directory as `<id>.pending` and the receipt is signed and queued by a
//! later outbox pass: never lost, never unsigned.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use hex::encode as hex;

use crate::crypto::verify::{TrustStore, VerifyAt};
use crate::crypto::{self, CryptoError, DigestAlg, SigningKey};
use crate::index::{ProviderEntry, ProviderIndex};
use crate::log::{Event, EventLog, event_anomaly, event_for, event_received};
use crate::metrics::{self, Metrics, Role};
use crate::pec::build::{
    BuildError, Emission, Provider, Ricevuta, Signer, Transaction, receipt_variant, write_ricevuta,
};
use crate::pec::facts::Facts;
use crate::pec::reader::{self, PecMessage};
use crate::pec::{Errore, MessageKind, mime};
use crate::roles::TempFail;
use crate::roles::message::SpooledMessage;
use crate::roles::outbox::{keep_message, send_queued};
use crate::roles::ports::{Injector, MailboxStore, RcptOutcome};
use crate::roles::receipts::record_receipt;
use crate::roles::verify::{Problem, Unverified, anomalia_of, anomaly_envelope, verify_pec};
use crate::rt::off_runtime_if;
use crate::spool::{SpoolOptions, SpoolWriter, Spooled};
use crate::state::{Claim, OutboxEntry, StateStore};

/// Why the key cannot sign now.
#[derive(Debug, thiserror::Error)]
enum ProbeError {
    #[error("{0}")]
    Sign(#[from] CryptoError),
    #[error("signing task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

pub struct DeliveryPoint {
    pub provider: Provider,
    pub key: Arc<dyn SigningKey>,
    pub digest: DigestAlg,
    pub store: Arc<dyn MailboxStore>,
    pub state: Arc<dyn StateStore>,
    pub injector: Arc<dyn Injector>,
    /// The legal message log: a receipt's event is recorded before the
    /// receipt leaves.
    pub log: Arc<dyn EventLog>,
    /// `[delivery] outbox`: the files of large queued receipts and the
    /// facts of receipts waiting for the key (`.pending`).
    pub outbox: PathBuf,
    pub retention_secs: u64,
    /// Where large receipts (an avvenuta consegna completa carries the
    /// whole message) are built (`[spool]`).
    pub spool: SpoolOptions,
    /// Trust anchors (and CRLs) for provider signatures: the reception
    /// point's (`[reception] trust`, `crls`).
    pub trust: TrustStore,
    /// When a provider's certificate chain is checked (`[reception]
    /// verify_at`).
    pub verify_at: VerifyAt,
    /// The providers' index (`[index]`), shared with the reception point.
    /// `None` when none is configured: then nothing carrying PEC marker
    /// fields can be verified, and it is answered 4xx like before the
    /// first copy is loaded.
    pub index: Option<Arc<ProviderIndex>>,
    /// Where each answer (per recipient) and the time it took are counted.
    pub metrics: Arc<Metrics>,
}

/// What a reply line tells the MTA, by its code: `stored` for a 2xx.
fn by_code(reply: &str, stored: metrics::Outcome) -> metrics::Outcome {
    match reply.as_bytes().first() {
        Some(b'2') => stored,
        Some(b'5') => metrics::Outcome::Reject,
        _ => metrics::Outcome::Tempfail,
    }
}

/// What the delivery point found a message to be.
enum Checked {
    /// No PEC marker fields (or not a mail message at all): stored as it
    /// is, no receipt.
    Ordinary,
    /// A genuine PEC message signed by this provider of the index.
    Genuine(ProviderEntry),
    /// Carries PEC marker fields but fails the checks: not PEC.
    Forged(Problem),
    /// Cannot be checked now: no copy of the providers' index.
    NoIndex,
    /// Cannot be checked now: the revocation status of the signer's chain
    /// is unknown (no usable CRL).
    Undecided(String),
}

/// Is `rcpt` a primary (To:) recipient of the envelope? A recipient only
/// in Cc: is not; when the header fields do not tell, it is (PEC-RULES
/// §2.7: treat as primary and include the complete original).
fn is_primary(raw: &[u8], rcpt: &str) -> bool {
    Facts::read(mime::split_header_body(raw).0).is_primary(rcpt)
}

/// `errore` of an avviso di mancata consegna from the store's answer.
fn errore_of(enhanced: &str) -> Errore {
    match enhanced {
        "5.1.1" | "5.1.0" | "5.1.6" => Errore::NoDest,
        "5.1.2" => Errore::NoDominio,
        _ => Errore::Altro,
    }
}

/// A receipt ready to leave.
struct Built {
    /// Its record in the message log.
    event: Event,
    message_id: String,
    to: String,
    tipo: crate::pec::Tipo,
    /// The whole receipt, in memory or a spool file.
    message: Spooled,
}

/// The once-only key of the receipt about (`pec_id`, `rcpt`).
fn once_key(pec_id: &str, rcpt: &str) -> String {
    format!(
        "consegna:{}",
        hex(crypto::digest(
            DigestAlg::Sha256,
            format!("{pec_id}\0{}", rcpt.to_ascii_lowercase()).as_bytes()
        ))
    )
}

/// Outbox entries whose receipt still has to be signed.
const PENDING: &str = "pending";

impl DeliveryPoint {
    /// Can the key sign now? A probe signature, off the async workers.
    async fn can_sign(&self) -> Result<(), ProbeError> {
        let (key, digest) = (Arc::clone(&self.key), self.digest);
        tokio::task::spawn_blocking(move || {
            key.sign(digest, b"pec-milter delivery point: signing probe")
        })
        .await??;
        Ok(())
    }

    /// Over the spool's memory limit (so in a spool file): megabytes to
    /// parse and, for an avvenuta consegna completa, to hash and copy into
    /// another file; that work runs off the async worker.
    fn is_large(&self, message: &[u8]) -> bool {
        message.len() as u64 > self.spool.memory_limit
    }

    /// Deliver and issue the receipts; one LMTP reply line per recipient.
    pub async fn handle(&self, mail_from: &str, rcpts: &[String], message: &[u8]) -> Vec<String> {
        self.handle_inner(mail_from, rcpts, message, None).await
    }

    /// [`handle`](Self::handle) of `message`, the view of `spooled` when
    /// the LMTP server spooled it; each recipient's answer counted.
    async fn handle_inner(
        &self,
        mail_from: &str,
        rcpts: &[String],
        message: &[u8],
        spooled: Option<&Spooled>,
    ) -> Vec<String> {
        let started = std::time::Instant::now();
        let mut tally = Vec::with_capacity(rcpts.len());
        let replies = self
            .replies(mail_from, rcpts, message, spooled, &mut tally)
            .await;
        if tally.len() != replies.len() {
            // an early answer for every recipient (4xx): its code says it
            tally = replies
                .iter()
                .map(|r| by_code(r, metrics::Outcome::Accept))
                .collect();
        }
        for outcome in tally {
            self.metrics.message(Role::Delivery, outcome);
        }
        self.metrics.eom_latency(Role::Delivery, started.elapsed());
        replies
    }

    /// The replies of [`handle_inner`](Self::handle_inner); `tally` gets
    /// what each one tells the MTA where its code does not say it all (a
    /// forged message stored as an anomaly, a permanent failure answered
    /// 250 once its errore-consegna is issued).
    async fn replies(
        &self,
        mail_from: &str,
        rcpts: &[String],
        message: &[u8],
        spooled: Option<&Spooled>,
        tally: &mut Vec<metrics::Outcome>,
    ) -> Vec<String> {
        let now = Utc::now();
        let large = self.is_large(message);
        let msg = off_runtime_if(large, || reader::read(message).ok());
        let entry = match self.check(msg.as_ref(), large) {
            Checked::Ordinary => None,
            Checked::Genuine(entry) => Some(entry),
            Checked::NoIndex => {
                tracing::warn!(recipients = rcpts.len(), message_id = ?msg.as_ref().and_then(|m| m.message_id.as_deref()),
                    "delivery: no copy of the providers' index loaded: a PEC message cannot be verified: nothing stored, 4xx");
                return rcpts
                    .iter()
                    .map(|_| {
                        "451 4.3.0 PEC providers' index not loaded, the message cannot be verified: try again later"
                            .to_string()
                    })
                    .collect();
            }
            Checked::Undecided(why) => {
                tracing::warn!(recipients = rcpts.len(), message_id = ?msg.as_ref().and_then(|m| m.message_id.as_deref()),
                    reason = %why,
                    "delivery: the revocation status of the signer's certificates is unknown: nothing stored, 4xx");
                return rcpts
                    .iter()
                    .map(|_| {
                        "451 4.7.5 PEC signer's revocation status cannot be checked now (no CRL): try again later"
                            .to_string()
                    })
                    .collect();
            }
            Checked::Forged(problem) => {
                return match &msg {
                    Some(m) => {
                        let replies = self
                            .store_anomaly(mail_from, rcpts, message, m, &problem, now)
                            .await;
                        tally.extend(
                            replies
                                .iter()
                                .map(|r| by_code(r, metrics::Outcome::Anomaly)),
                        );
                        replies
                    }
                    // `check` finds a forgery only in a message it read
                    None => rcpts
                        .iter()
                        .map(|_| "451 4.3.0 PEC verification failed, try again later".to_string())
                        .collect(),
                };
            }
        };
        if msg
            .as_ref()
            .is_some_and(|m| m.kind == MessageKind::BustaTrasporto)
        {
            if let Err(e) = self.can_sign().await {
                tracing::warn!(error = %e, recipients = rcpts.len(),
                    "delivery: the key cannot sign receipts now: nothing stored, 4xx");
                return rcpts
                    .iter()
                    .map(|_| {
                        "451 4.3.0 PEC signing unavailable, receipt cannot be issued: try again later"
                            .to_string()
                    })
                    .collect();
            }
            // A receipt is never issued unrecorded: with the log's disk
            // full, storing now would only make each MTA retry store
            // another copy (the receipt's record failing each time).
            if let Err(e) = self.log.ready().await {
                tracing::warn!(error = %e, recipients = rcpts.len(),
                    "delivery: the message log cannot record now: nothing stored, 4xx");
                return rcpts
                    .iter()
                    .map(|_| "451 4.3.0 PEC: message log unavailable, try again later".to_string())
                    .collect();
            }
            // The receipts' once-only claims live in the state store: a
            // receipt is never issued without one, so nothing is stored
            // while it cannot answer.
            if let Err(e) = self.state.ping().await {
                tracing::warn!(error = %e, recipients = rcpts.len(),
                    "delivery: the state store cannot answer: nothing stored, 4xx");
                return rcpts
                    .iter()
                    .map(|_| {
                        "451 4.3.0 PEC state store unavailable, receipt cannot be issued once: try again later"
                            .to_string()
                    })
                    .collect();
            }
        }
        let outcomes = match spooled {
            Some(s) => {
                self.store
                    .deliver_spooled(mail_from, rcpts, s, message)
                    .await
            }
            None => self.store.deliver(mail_from, rcpts, message).await,
        };
        let mut replies = Vec::with_capacity(rcpts.len());
        for (i, rcpt) in rcpts.iter().enumerate() {
            let outcome = outcomes.get(i).cloned().unwrap_or(RcptOutcome::Temporary {
                code: 451,
                enhanced: "4.3.0".into(),
                text: "no answer from the mailbox store".into(),
            });
            // Receipts only about what was verified.
            let issued = match (&msg, &entry) {
                (Some(m), Some(e)) => {
                    match self
                        .after_delivery(m, e, message, rcpt, &outcome, now)
                        .await
                    {
                        Ok(issued) => issued,
                        Err(e) => {
                            // Stored, but its receipt can be neither issued
                            // nor kept (its event not recorded, its claim
                            // not answered, the outbox not written). 4xx:
                            // the MTA retries (the mailbox may then hold a
                            // second copy; the receipt is still issued once:
                            // the side that may repeat is the copy, never
                            // the receipt, which is never lost).
                            tracing::error!(recipient = %rcpt, error = %e,
                                "delivery: stored, but the receipt can be neither issued nor kept: 451, the MTA retries");
                            tally.push(metrics::Outcome::Tempfail);
                            replies.push(match e {
                                TempFail::Log(_) => {
                                    "451 4.3.0 PEC: message log unavailable, try again later".into()
                                }
                                _ => "451 4.3.0 PEC: the receipt cannot be issued now, try again later"
                                    .into(),
                            });
                            continue;
                        }
                    }
                }
                _ => false,
            };
            tracing::info!(recipient = %rcpt, outcome = %outcome.reply_line(), "delivery");
            tally.push(match &outcome {
                RcptOutcome::Delivered => metrics::Outcome::Accept,
                RcptOutcome::Permanent { .. } => metrics::Outcome::Reject,
                RcptOutcome::Temporary { .. } => metrics::Outcome::Tempfail,
            });
            match &outcome {
                // The signed errore-consegna is the sender's answer: a DSN
                // from the MTA as well would reach the sender's provider as
                // ordinary mail and come back as a second, anomaly notice.
                RcptOutcome::Permanent { code, enhanced, .. } if issued => replies.push(format!(
                    "250 2.0.0 not stored ({code} {enhanced}); PEC errore-consegna issued to the sender"
                )),
                _ => replies.push(outcome.reply_line()),
            }
        }
        replies
    }

    /// What `msg` is: ordinary, a genuine PEC message (and its signer), a
    /// forged one (and why), or not checkable now. Verification is CPU
    /// work over the whole message: off the async worker when `large`.
    fn check(&self, msg: Option<&PecMessage<'_>>, large: bool) -> Checked {
        let Some(msg) = msg.filter(|m| m.kind != MessageKind::None) else {
            return Checked::Ordinary;
        };
        let Some(snapshot) = self.index.as_ref().and_then(|i| i.snapshot()) else {
            return Checked::NoIndex;
        };
        match off_runtime_if(large, || {
            verify_pec(msg, &self.trust, self.verify_at, &snapshot)
        }) {
            Ok(entry) => Checked::Genuine(entry),
            Err(Unverified::Problem(problem)) => Checked::Forged(problem),
            Err(Unverified::Undecided(why)) => Checked::Undecided(why),
        }
    }

    /// A message that carries PEC marker fields but is not genuine: stored
    /// as the reception point would have delivered it, in a signed busta di
    /// anomalia with `X-VerificaSicurezza: errore`; no receipt. When the
    /// anomaly envelope cannot be made (the key cannot sign, the spool):
    /// 4xx, nothing stored.
    async fn store_anomaly(
        &self,
        mail_from: &str,
        rcpts: &[String],
        raw: &[u8],
        msg: &PecMessage<'_>,
        problem: &Problem,
        now: DateTime<Utc>,
    ) -> Vec<String> {
        let pec_id = match &msg.daticert {
            Some(Ok(d)) => d.identificativo.clone(),
            _ => "-".to_string(),
        };
        let message_id = msg.message_id.as_deref().unwrap_or("-");
        let anomalia = anomalia_of(Some(msg), mail_from, &problem.reason, true);
        let built = off_runtime_if(self.is_large(raw), || {
            let canon = mime::canonicalize_crlf(raw);
            let (header, body) = mime::split_header_body(&canon);
            let (id, envelope) = anomaly_envelope(
                &self.provider,
                self.signer(),
                self.spool.clone(),
                header,
                body,
                &anomalia,
                now,
            )?;
            Ok::<_, BuildError>((id, envelope.into_spooled(self.spool.clone())?))
        });
        let (id, envelope) = match built {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, pec_id = %pec_id, message_id = %message_id,
                    recipients = %rcpts.join(","), reason = %problem,
                    "delivery: not a genuine PEC message, and its busta di anomalia cannot be made: nothing stored, 4xx");
                return rcpts
                    .iter()
                    .map(|_| {
                        "451 4.3.0 PEC anomaly envelope cannot be made now: try again later"
                            .to_string()
                    })
                    .collect();
            }
        };
        // recorded before it is stored (and so before the MTA hears the answer)
        let event = event_anomaly(
            &anomalia,
            &id,
            msg.message_id.clone(),
            rcpts,
            &self.provider.name,
            now,
        );
        if let Err(e) = self.log.record(vec![event]).await {
            tracing::error!(error = %e, pec_id = %pec_id, "delivery: the message log cannot record the anomaly: nothing stored, 4xx");
            return rcpts
                .iter()
                .map(|_| "451 4.3.0 PEC: message log unavailable, try again later".to_string())
                .collect();
        }
        let view = match envelope.view() {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, pec_id = %pec_id, "delivery: the anomaly envelope cannot be read back from the spool: 4xx");
                return rcpts
                    .iter()
                    .map(|_| {
                        "451 4.3.0 Cannot read the spooled message, try again later".to_string()
                    })
                    .collect();
            }
        };
        let outcomes = self
            .store
            .deliver_spooled(mail_from, rcpts, &envelope, &view)
            .await;
        tracing::warn!(pec_id = %pec_id, message_id = %message_id, kind = %msg.kind,
            recipients = %rcpts.join(","), reason = %problem, anomaly = %id,
            "delivery: not a genuine PEC message: stored as a busta di anomalia (X-VerificaSicurezza: errore), no receipt");
        rcpts
            .iter()
            .enumerate()
            .map(|(i, rcpt)| {
                let outcome = outcomes.get(i).cloned().unwrap_or(RcptOutcome::Temporary {
                    code: 451,
                    enhanced: "4.3.0".into(),
                    text: "no answer from the mailbox store".into(),
                });
                tracing::info!(recipient = %rcpt, outcome = %outcome.reply_line(), anomaly = %id, "delivery");
                outcome.reply_line()
            })
            .collect()
    }

    fn signer(&self) -> Signer<'_> {
        Signer {
            key: self.key.as_ref(),
            digest: self.digest,
        }
    }

    async fn after_delivery(
        &self,
        msg: &PecMessage<'_>,
        signer: &ProviderEntry,
        raw: &[u8],
        rcpt: &str,
        outcome: &RcptOutcome,
        now: DateTime<Utc>,
    ) -> Result<bool, TempFail> {
        match msg.kind {
            MessageKind::BustaTrasporto => {}
            MessageKind::Ricevuta(t) => {
                // A receipt about one of our envelopes (also our own, for a
                // holder of ours writing to a holder of ours).
                if let (RcptOutcome::Delivered, Some(Ok(d))) = (outcome, &msg.daticert) {
                    // every receipt received from another provider, recorded
                    // (once) before it counts (ours were recorded when issued)
                    if !signer.manages(&self.provider.domain) {
                        self.log
                            .record(vec![event_received(
                                d,
                                t,
                                &signer.name,
                                msg.message_id.as_deref(),
                                now,
                            )])
                            .await?;
                    }
                    if let Err(e) =
                        record_receipt(self.state.as_ref(), d, t, signer, now, self.retention_secs)
                            .await
                    {
                        tracing::warn!(error = %e, pec_id = %d.identificativo, "receipt not recorded");
                    }
                }
                return Ok(false);
            }
            _ => return Ok(false),
        }
        let Some(Ok(d)) = &msg.daticert else {
            return Ok(false);
        };
        if matches!(outcome, RcptOutcome::Temporary { .. }) {
            return Ok(false);
        }
        let key = once_key(&d.identificativo, rcpt);
        let sent = match self
            .state
            .claim(
                &key,
                &d.identificativo,
                now.timestamp(),
                self.retention_secs,
            )
            .await
        {
            Ok(Claim::New) => false,
            Ok(Claim::Existing { receipt_sent, .. }) => receipt_sent,
            // Stored, but the state store went away since the check before
            // storing: no receipt without its claim; 4xx (see the caller).
            Err(e) => return Err(e.into()),
        };
        if sent {
            tracing::info!(pec_id = %d.identificativo, recipient = %rcpt, "receipt already issued: not again");
            return Ok(true);
        }
        let built = match off_runtime_if(self.is_large(raw), || {
            self.build(msg, raw, rcpt, outcome, now)
        }) {
            Ok(Some(mut b)) => {
                // the sending provider: the envelope's signer
                b.event.provider = signer.name.clone();
                b
            }
            Ok(None) => return Ok(false),
            Err(e) => {
                // The probe signed a moment ago: keep the facts, sign later.
                tracing::error!(error = %e, pec_id = %d.identificativo, recipient = %rcpt,
                    "receipt could not be signed: its facts are kept in the outbox, signed and sent later");
                pending_put(&self.outbox, &d.identificativo, rcpt, outcome, now, raw)
                    .map_err(TempFail::Outbox)?;
                return Ok(true);
            }
        };
        self.send(&key, &d.identificativo, rcpt, built).await
    }

    /// The receipt for `rcpt` after `outcome`, built and signed; `None`
    /// when none is due (not a busta di trasporto, temporary failure).
    fn build(
        &self,
        msg: &PecMessage<'_>,
        raw: &[u8],
        rcpt: &str,
        outcome: &RcptOutcome,
        now: DateTime<Utc>,
    ) -> Result<Option<Built>, BuildError> {
        if msg.kind != MessageKind::BustaTrasporto {
            return Ok(None);
        }
        let Some(Ok(d)) = &msg.daticert else {
            return Ok(None);
        };
        let tx = Transaction::from_daticert(d);
        let ricevuta = match outcome {
            RcptOutcome::Delivered => {
                let asked = msg.tipo_ricevuta.or(d.ricevuta).unwrap_or_default();
                let tipo = receipt_variant(asked, is_primary(raw, rcpt));
                Ricevuta::AvvenutaConsegna {
                    consegna: rcpt.to_string(),
                    tipo,
                    original: msg.postacert.as_deref().unwrap_or_default(),
                }
            }
            RcptOutcome::Permanent {
                code,
                enhanced,
                text,
            } => Ricevuta::ErroreConsegna {
                consegna: rcpt.to_string(),
                errore: errore_of(enhanced),
                errore_esteso: format!("{code} {enhanced} - {} - {text}", self.provider.name),
            },
            RcptOutcome::Temporary { .. } => return Ok(None),
        };
        let local = d.identificativo.split('@').next().unwrap_or("id");
        let message_id = format!(
            "{}.{local}.{}@{}",
            ricevuta.tipo(),
            hex(crypto::digest(
                DigestAlg::Sha1,
                rcpt.to_ascii_lowercase().as_bytes()
            ))
            .get(..16)
            .unwrap_or("r"),
            self.provider.domain
        );
        let mut out = SpoolWriter::raw(self.spool.clone());
        let headers = write_ricevuta(
            &self.provider,
            &tx,
            &ricevuta,
            &Emission {
                time: now,
                message_id: message_id.clone(),
            },
            self.signer(),
            &mut out,
        )?;
        let message = SpooledMessage {
            headers,
            body: out.finish()?,
        }
        .into_spooled(self.spool.clone())?;
        let event = event_for(&tx, &ricevuta, &self.provider.name, now, &message_id);
        Ok(Some(Built {
            event,
            message_id,
            to: tx.mittente,
            tipo: ricevuta.tipo(),
            message,
        }))
    }

    /// Record a built receipt's event, then queue it in the state store's
    /// outbox in the same write that marks it issued, then hand it to the
    /// MTA (the outbox pass sends it if that fails). An error when its
    /// event cannot be recorded or it cannot be queued: nothing sent.
    async fn send(&self, key: &str, pec_id: &str, rcpt: &str, b: Built) -> Result<bool, TempFail> {
        self.log.record(vec![b.event.clone()]).await?;
        let entry = off_runtime_if(b.message.is_on_disk(), || self.entry(&b)).map_err(|e| {
            tracing::error!(error = %e, pec_id = %pec_id, recipient = %rcpt,
                "receipt cannot be kept for the outbox: not sent, 4xx");
            TempFail::Outbox(e)
        })?;
        if let Err(e) = self
            .state
            .mark_receipt_sent(key, std::slice::from_ref(&entry), self.retention_secs)
            .await
        {
            tracing::error!(error = %e, pec_id = %pec_id, recipient = %rcpt,
                "receipt neither marked nor queued: not sent, 4xx");
            if let Some(path) = &entry.file {
                let _ = std::fs::remove_file(path);
            }
            return Err(e.into());
        }
        tracing::info!(pec_id = %pec_id, recipient = %rcpt, kind = %b.tipo, message_id = %b.message_id,
            to = %b.to, large = entry.file.is_some(), "receipt signed and queued");
        send_queued(&self.state, self.injector.as_ref(), vec![entry]).await;
        Ok(true)
    }

    /// The outbox entry of `b`: its bytes, or (a receipt larger than the
    /// spool threshold, kept on disk) the file in the outbox directory
    /// that holds them. Blocking I/O for a large one.
    fn entry(&self, b: &Built) -> std::io::Result<OutboxEntry> {
        let (message, file) = if b.message.is_on_disk() {
            let path = keep_message(&self.outbox, &b.message_id, &b.message)?;
            (Vec::new(), Some(path.to_string_lossy().into_owned()))
        } else {
            (b.message.to_vec()?, None)
        };
        Ok(OutboxEntry {
            id: b.message_id.clone(),
            from: self.provider.service_address(),
            to: vec![b.to.clone()],
            message,
            file,
            queued_at: Utc::now().timestamp(),
            pec_id: b.event.pec_id.clone(),
            kind: b.tipo.to_string(),
        })
    }

    /// Sign and send the receipts whose facts wait in the outbox
    /// (`*.pending`); returns how many left it.
    async fn flush_pending(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.outbox) else {
            return 0;
        };
        let mut done = 0;
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != PENDING) {
                continue;
            }
            let Ok(data) = std::fs::read(&p) else {
                continue;
            };
            let Some(f) = pending_parse(&data) else {
                tracing::error!(file = %p.display(), "unreadable pending receipt in the outbox: left for the administrator");
                continue;
            };
            let Ok(msg) = reader::read(f.raw) else {
                tracing::error!(file = %p.display(), "pending receipt: the envelope no longer parses: left for the administrator");
                continue;
            };
            match self.build(&msg, f.raw, &f.rcpt, &f.outcome, f.time) {
                Ok(Some(b)) => {
                    match self
                        .send(&once_key(&f.pec_id, &f.rcpt), &f.pec_id, &f.rcpt, b)
                        .await
                    {
                        Ok(true) => {
                            let _ = std::fs::remove_file(&p);
                            done += 1;
                            tracing::info!(file = %p.display(), pec_id = %f.pec_id, recipient = %f.rcpt, "pending receipt signed and sent");
                        }
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, file = %p.display(), "pending receipt cannot be issued now: retried later");
                        }
                    }
                }
                Ok(None) => {
                    let _ = std::fs::remove_file(&p);
                }
                Err(e) => {
                    tracing::warn!(error = %e, file = %p.display(), "pending receipt still cannot be signed: retried later");
                }
            }
        }
        done
    }

    /// Sign and queue the receipts whose facts wait as `.pending` files,
    /// and send the signed `.eml` files an older version of pec-milter
    /// kept in the outbox directory (the state store's outbox holds
    /// everything since); returns how many left.
    pub async fn flush_outbox(&self) -> usize {
        let mut sent = self.flush_pending().await;
        let Ok(entries) = std::fs::read_dir(&self.outbox) else {
            return sent;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "eml") {
                continue;
            }
            let Ok(data) = std::fs::read(&p) else {
                continue;
            };
            // first line: "X-Outbox-To: <addr>\r\n", then the message
            let Some(pos) = data.windows(2).position(|w| w == b"\r\n") else {
                continue;
            };
            let first = String::from_utf8_lossy(&data[..pos]).into_owned();
            let Some(to) = first.strip_prefix("X-Outbox-To: ") else {
                continue;
            };
            let body = &data[pos + 2..];
            if self
                .injector
                .inject(&self.provider.service_address(), &[to.to_string()], body)
                .await
                .is_ok()
            {
                let _ = std::fs::remove_file(&p);
                sent += 1;
                tracing::info!(file = %p.display(), "outbox receipt injected");
            }
        }
        sent
    }
}

/// The facts of a receipt to sign later.
struct Pending<'a> {
    pec_id: String,
    rcpt: String,
    time: DateTime<Utc>,
    outcome: RcptOutcome,
    raw: &'a [u8],
}

/// One line of text for a header of the pending file.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Keep the facts of a receipt in `dir/<pec id>.<rcpt hash>.pending`:
/// `X-Pending-*` lines, an empty line, the envelope as delivered.
fn pending_put(
    dir: &std::path::Path,
    pec_id: &str,
    rcpt: &str,
    outcome: &RcptOutcome,
    time: DateTime<Utc>,
    raw: &[u8],
) -> std::io::Result<()> {
    let outcome_line = match outcome {
        RcptOutcome::Delivered => "delivered".to_string(),
        RcptOutcome::Permanent {
            code,
            enhanced,
            text,
        } => format!("permanent {code} {} {}", one_line(enhanced), one_line(text)),
        RcptOutcome::Temporary { .. } => return Ok(()),
    };
    let head = format!(
        "X-Pending-Pec-Id: {}\r\nX-Pending-Rcpt: {}\r\nX-Pending-Time: {}\r\nX-Pending-Outcome: {outcome_line}\r\n\r\n",
        one_line(pec_id),
        one_line(rcpt),
        time.timestamp()
    );
    let name = format!(
        "{}.{}",
        pec_id,
        hex(crypto::digest(
            DigestAlg::Sha1,
            rcpt.to_ascii_lowercase().as_bytes()
        ))
    );
    // Written as `.pending` in one atomic step: never seen as a signed
    // receipt (`.eml`), never half written.
    crate::keep::keep_with(dir, &name, PENDING, |f| {
        f.write_all(head.as_bytes())?;
        f.write_all(raw)
    })
    .map(|_| ())
}

fn pending_parse(data: &[u8]) -> Option<Pending<'_>> {
    let sep = data.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&data[..sep]).ok()?;
    let raw = &data[sep + 4..];
    let mut pec_id = None;
    let mut rcpt = None;
    let mut time = None;
    let mut outcome = None;
    for line in head.split("\r\n") {
        let (k, v) = line.split_once(": ")?;
        match k {
            "X-Pending-Pec-Id" => pec_id = Some(v.to_string()),
            "X-Pending-Rcpt" => rcpt = Some(v.to_string()),
            "X-Pending-Time" => {
                time = v
                    .parse::<i64>()
                    .ok()
                    .and_then(|t| DateTime::<Utc>::from_timestamp(t, 0))
            }
            "X-Pending-Outcome" => {
                outcome = if v == "delivered" {
                    Some(RcptOutcome::Delivered)
                } else {
                    let rest = v.strip_prefix("permanent ")?;
                    let mut it = rest.splitn(3, ' ');
                    let code = it.next()?.parse().ok()?;
                    let enhanced = it.next()?.to_string();
                    let text = it.next().unwrap_or_default().to_string();
                    Some(RcptOutcome::Permanent {
                        code,
                        enhanced,
                        text,
                    })
                }
            }
            _ => {}
        }
    }
    Some(Pending {
        pec_id: pec_id?,
        rcpt: rcpt?,
        time: time?,
        outcome: outcome?,
        raw,
    })
}

impl DeliveryPoint {
    /// [`handle`](Self::handle) of a message the LMTP server spooled.
    pub async fn handle_spooled(
        &self,
        mail_from: &str,
        rcpts: &[String],
        message: Spooled,
    ) -> Vec<String> {
        // A large message is in a spool file: read it mapped, not copied.
        match message.view() {
            Ok(bytes) => {
                self.handle_inner(mail_from, rcpts, &bytes, Some(&message))
                    .await
            }
            Err(e) => {
                tracing::error!(error = %e, recipients = rcpts.len(), "delivery: cannot read the spooled message: 4xx");
                for _ in rcpts {
                    self.metrics
                        .message(Role::Delivery, metrics::Outcome::Tempfail);
                }
                rcpts
                    .iter()
                    .map(|_| {
                        "451 4.3.0 Cannot read the spooled message, try again later".to_string()
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cc_only_recipients_are_not_primary() {
        let m = b"To: a@x.test\r\nCc: b@x.test, a@x.test\r\n\r\nbody";
        assert!(is_primary(m, "a@x.test"));
        assert!(!is_primary(m, "B@x.test"));
        assert!(is_primary(m, "c@x.test"), "unknown: treated as primary");
    }

    #[test]
    fn errore_from_enhanced_codes() {
        assert_eq!(errore_of("5.1.1"), Errore::NoDest);
        assert_eq!(errore_of("5.2.2"), Errore::Altro);
    }
}
