//! The reception point (punto di ricezione, PEC-RULES §2.3, §2.6, §2.10,
//! §4.3, §7.3): what happens to a message that arrives unauthenticated for
//! one of our PEC domains.
//!
//! - A correct busta di trasporto (signature valid, chain to our trust
//!   anchors, signer listed in the providers' index, `From:` domain managed
//!   by that provider, daticert and postacert present): the signed
//!   `presa-in-carico` goes to the sending provider's `mailReceipt` and the
//!   envelope is delivered as is. A virus inside: `rilevazione-virus` per
//!   recipient to the sending provider, the envelope quarantined, not
//!   delivered.
//! - A correct receipt or notice: delivered as is; the sender-side record
//!   of our envelope is updated per recipient, for the recipients whose
//!   domain its signer manages.
//! - Anything claiming to be PEC that fails a check: a signed busta di
//!   anomalia with `X-VerificaSicurezza: errore`.
//! - Ordinary mail: a busta di anomalia, or a rejection (configuration).
//! - A check that cannot be made now (index not loaded, clamd or state
//!   store down, no usable CRL for a distribution point of the signer's
//!   chain): 4xx.
//!
//! The checks are [`verify_pec`], the delivery point's too; the anomaly
//! envelope is [`anomaly_envelope`], built the same way there.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use hex::encode as hex;

use crate::config::OrdinaryMail;
use crate::crypto::verify::{TrustStore, VerifyAt};
use crate::crypto::{self, DigestAlg, SigningKey};
use crate::index::{ProviderEntry, ProviderIndex};
use crate::log::{Event, EventLog, event_anomaly, event_for, event_received};
use crate::pec::build::{Emission, Provider, Ricevuta, Signer, Transaction, build_ricevuta};
use crate::pec::facts::Facts;
use crate::pec::reader::{self, PecMessage};
use crate::pec::{MessageKind, Tipo, mime};
use crate::roles::TempFail;
use crate::roles::message::{Inbound, Original, Outcome};
use crate::roles::outbox::send_queued;
use crate::roles::ports::{Injector, Scanner, Verdict};
use crate::roles::receipts::{record_receipt, would_change};
use crate::roles::verify::{Unverified, anomalia_of, anomaly_envelope, digest_message, verify_pec};
use crate::rt::off_runtime_if;
use crate::spool::SpoolOptions;
use crate::state::{Claim, OutboxEntry, StateError, StateStore};

/// How long one task holds a notice it is issuing (building, signing,
/// recording, queueing) before another may try.
const NOTICE_LEASE_SECS: u64 = 60;

/// The reception point: what it verifies against and what it signs with.
pub struct ReceptionPoint {
    pub provider: Provider,
    pub key: Arc<dyn SigningKey>,
    pub digest: DigestAlg,
    pub trust: TrustStore,
    pub verify_at: VerifyAt,
    pub index: Arc<ProviderIndex>,
    pub state: Arc<dyn StateStore>,
    pub scanner: Option<Arc<dyn Scanner>>,
    pub injector: Arc<dyn Injector>,
    /// The legal message log: a receipt's event is recorded before it
    /// leaves.
    pub log: Arc<dyn EventLog>,
    pub ordinary_mail: OrdinaryMail,
    pub quarantine_dir: PathBuf,
    pub retention_secs: u64,
    /// Where anomaly envelopes of large messages are written (`[spool]`).
    pub spool: SpoolOptions,
}

impl ReceptionPoint {
    pub async fn process(&self, inbound: &Inbound, now: DateTime<Utc>) -> Outcome {
        let qid = inbound.queue_id.as_deref().unwrap_or("-");
        let outcome = match self.process_inner(inbound, now).await {
            Ok(o) => o,
            Err(e) => Outcome::Tempfail {
                reason: e.to_string(),
            },
        };
        match &outcome {
            Outcome::Rewrite { pec_id, .. } => tracing::info!(
                queue_id = qid, sender = %inbound.mail_from, id = %pec_id,
                "reception: wrapped in a busta di anomalia"
            ),
            Outcome::Deliver { note } => tracing::info!(
                queue_id = qid, sender = %inbound.mail_from, note = %note, "reception: delivered"
            ),
            Outcome::Discard { pec_id, reason } => tracing::info!(
                queue_id = qid, sender = %inbound.mail_from, pec_id = %pec_id,
                reason = %reason, "reception: not delivered"
            ),
            Outcome::Reject { code, text, .. } => tracing::info!(
                queue_id = qid, sender = %inbound.mail_from, code, text = %text, "reception: rejected"
            ),
            Outcome::Tempfail { reason } => tracing::warn!(
                queue_id = qid, sender = %inbound.mail_from, reason = %reason,
                "reception: temporary failure"
            ),
        }
        outcome
    }

    async fn process_inner(
        &self,
        inbound: &Inbound,
        now: DateTime<Utc>,
    ) -> Result<Outcome, TempFail> {
        let body = inbound
            .message
            .body
            .view()
            .map_err(|e| TempFail::Spool(format!("reading the spooled message: {e}")))?;
        // A body on disk is megabytes to parse, hash and verify: off the
        // async worker.
        let large = inbound.message.body.is_on_disk();
        let msg = match off_runtime_if(large, || reader::read_parts(&inbound.message.header, &body))
        {
            Ok(m) => m,
            Err(e) => {
                return self
                    .ordinary(inbound, None, now, &format!("messaggio non leggibile: {e}"))
                    .await;
            }
        };
        if msg.kind == MessageKind::None {
            return self
                .ordinary(inbound, Some(&msg), now, "messaggio di posta ordinaria")
                .await;
        }

        // It claims to be PEC: every check must hold (PEC-RULES §4.3).
        let snapshot = self.index.snapshot().ok_or(TempFail::NoIndex)?;
        let verified = off_runtime_if(large, || {
            verify_pec(&msg, &self.trust, self.verify_at, &snapshot)
        });
        let entry = match verified {
            Ok(entry) => entry,
            // Genuine in every other respect, its chain's revocation
            // unknown: no presa in carico and no anomaly until it is known.
            Err(Unverified::Undecided(why)) => return Err(TempFail::Revocation(why)),
            Err(Unverified::Problem(problem)) => {
                // Not from a provider (bad signature, signer not listed):
                // that is ordinary mail, refused when the policy says so.
                // Signed by a listed provider but not conformant: always an
                // anomaly envelope (PEC-RULES §4.3).
                if !problem.signer_listed && self.ordinary_mail == OrdinaryMail::Reject {
                    return Ok(Outcome::Reject {
                        code: 550,
                        xcode: "5.7.1".into(),
                        text: format!("PEC: messaggio non accettato: {problem}"),
                    });
                }
                return self
                    .anomaly(inbound, &msg, now, &problem.reason, true)
                    .await;
            }
        };

        match msg.kind {
            MessageKind::BustaTrasporto => self.envelope(inbound, &msg, &entry, now).await,
            MessageKind::Ricevuta(t) => {
                self.receipt(&msg, t, &entry, now).await?;
                Ok(Outcome::Deliver {
                    note: format!("{t} from {}", entry.name),
                })
            }
            _ => Ok(Outcome::Deliver {
                note: format!("{} from {}", msg.kind, entry.name),
            }),
        }
    }

    /// Ordinary mail (`msg`: what could be read of it): scanned, then
    /// wrapped or refused.
    async fn ordinary(
        &self,
        inbound: &Inbound,
        msg: Option<&PecMessage<'_>>,
        now: DateTime<Utc>,
        why: &str,
    ) -> Result<Outcome, TempFail> {
        if let Some(s) = &self.scanner
            && let Verdict::Infected(v) = s.scan_original(&inbound.message).await?
        {
            return Ok(Outcome::Reject {
                code: 554,
                xcode: "5.7.1".into(),
                text: format!("virus {v} found"),
            });
        }
        if self.ordinary_mail == OrdinaryMail::Reject {
            return Ok(Outcome::Reject {
                code: 550,
                xcode: "5.7.1".into(),
                text: "PEC mailbox: only certified mail is accepted".into(),
            });
        }
        self.anomaly_raw(inbound, msg, now, why, false).await
    }

    async fn anomaly(
        &self,
        inbound: &Inbound,
        msg: &PecMessage<'_>,
        now: DateTime<Utc>,
        why: &str,
        sicurezza: bool,
    ) -> Result<Outcome, TempFail> {
        self.anomaly_raw(inbound, Some(msg), now, why, sicurezza)
            .await
    }

    async fn anomaly_raw(
        &self,
        inbound: &Inbound,
        msg: Option<&PecMessage<'_>>,
        now: DateTime<Utc>,
        why: &str,
        sicurezza: bool,
    ) -> Result<Outcome, TempFail> {
        let anomalia = anomalia_of(msg, &inbound.mail_from, why, sicurezza);
        // A body on disk means file I/O and hashing of megabytes: off the
        // async worker.
        let (id, built) = off_runtime_if(inbound.message.body.is_on_disk(), || {
            anomaly_envelope(
                &self.provider,
                self.signer(),
                self.spool.clone(),
                &inbound.message.header,
                &inbound.message.body,
                &anomalia,
                now,
            )
        })?;
        let head = mime::canonicalize_crlf(&inbound.message.header);
        let facts = Facts::read(&head);
        // recorded before the MTA hears the answer
        self.log
            .record(vec![event_anomaly(
                &anomalia,
                &id,
                facts.msgid.clone(),
                &inbound.rcpts,
                &self.provider.name,
                now,
            )])
            .await?;
        Ok(Outcome::Rewrite {
            pec_id: id,
            message: built,
            inherited: facts.inherited_with_msgid,
            keep_message_id: true,
        })
    }

    fn signer(&self) -> Signer<'_> {
        Signer {
            key: self.key.as_ref(),
            digest: self.digest,
        }
    }

    /// A correct busta di trasporto: presa in carico, or rilevazione virus.
    async fn envelope(
        &self,
        inbound: &Inbound,
        msg: &PecMessage<'_>,
        entry: &ProviderEntry,
        now: DateTime<Utc>,
    ) -> Result<Outcome, TempFail> {
        let Some(Ok(d)) = &msg.daticert else {
            return self
                .anomaly(inbound, msg, now, "daticert.xml assente", true)
                .await;
        };
        let tx = Transaction::from_daticert(d);
        let key = off_runtime_if(inbound.message.body.is_on_disk(), || inbound_key(inbound))?;
        let (time, sent) = match self
            .state
            .claim(
                &key,
                &d.identificativo,
                now.timestamp(),
                self.retention_secs,
            )
            .await?
        {
            Claim::New => (now, false),
            Claim::Existing {
                submitted_at,
                receipt_sent,
                ..
            } => (
                DateTime::from_timestamp(submitted_at, 0).unwrap_or(now),
                receipt_sent,
            ),
        };
        let local = d.identificativo.split('@').next().unwrap_or("id");
        let rcpt_hash = &hex(crypto::digest(
            DigestAlg::Sha1,
            inbound.rcpts.join(",").to_ascii_lowercase().as_bytes(),
        ))[..12];

        // The envelope is correct (its checks passed): the presa in carico
        // is due whatever it carries (PEC-RULES §7.3); a virus inside then
        // stops it here with a rilevazione-virus per recipient.
        let virus = match &self.scanner {
            Some(scanner) => {
                let verdict = match msg.postacert.as_deref() {
                    Some(content) => scanner.scan(content).await,
                    None => scanner.scan_original(&inbound.message).await,
                };
                match verdict.map_err(TempFail::Scan)? {
                    Verdict::Infected(virus) => Some(virus),
                    Verdict::Clean => None,
                }
            }
            None => None,
        };
        if virus.is_some() {
            self.quarantine(&d.identificativo, &inbound.message).await?;
        }
        if sent {
            tracing::info!(pec_id = %d.identificativo, "presa-in-carico already sent for this envelope: not sent again");
        } else {
            let ric = Ricevuta::PresaInCarico {
                mail_receipt: entry.mail_receipt.clone(),
                ricezione: inbound.rcpts.clone(),
            };
            let id = format!(
                "presa-in-carico.{local}.{rcpt_hash}@{}",
                self.provider.domain
            );
            // Every notice signed, recorded, then queued with the claim's
            // "sent" in one durable write, then handed to the MTA (what it
            // cannot take now, the outbox pass sends): an MTA retry finds
            // them queued and issues none again.
            let mut outbox = Vec::new();
            let mut events = Vec::new();
            let (e, ev) = self.build(&tx, &ric, time, id, &entry.mail_receipt, &entry.name)?;
            outbox.push(e);
            events.push(ev);
            if let Some(virus) = &virus {
                for r in &inbound.rcpts {
                    let ric = Ricevuta::RilevazioneVirus {
                        mail_receipt: entry.mail_receipt.clone(),
                        consegna: r.clone(),
                        virus: virus.clone(),
                    };
                    let id = format!(
                        "rilevazione-virus.{local}.{rcpt_hash}.{}@{}",
                        hex(r.as_bytes()).get(..16).unwrap_or("r"),
                        self.provider.domain
                    );
                    let (e, ev) =
                        self.build(&tx, &ric, time, id, &entry.mail_receipt, &entry.name)?;
                    outbox.push(e);
                    events.push(ev);
                }
            }
            self.log.record(events).await?;
            self.state
                .mark_receipt_sent(&key, &outbox, self.retention_secs)
                .await?;
            for e in &outbox {
                tracing::info!(pec_id = %e.pec_id, kind = %e.kind, to = ?e.to, message_id = %e.id, "receipt signed and queued");
            }
            send_queued(&self.state, self.injector.as_ref(), outbox).await;
        }
        if let Some(virus) = virus {
            return Ok(Outcome::Discard {
                pec_id: d.identificativo.clone(),
                reason: format!(
                    "virus {virus}: presa-in-carico and rilevazione-virus sent to {}",
                    entry.mail_receipt
                ),
            });
        }
        Ok(Outcome::Deliver {
            note: format!(
                "busta di trasporto {} from {}",
                d.identificativo, entry.name
            ),
        })
    }

    /// Build and sign `ric` as an outbox entry, with its event (about a
    /// message sent by `sending`, a provider's name).
    fn build(
        &self,
        tx: &Transaction,
        ric: &Ricevuta<'_>,
        time: DateTime<Utc>,
        message_id: String,
        to: &str,
        sending: &str,
    ) -> Result<(OutboxEntry, Event), TempFail> {
        let built = build_ricevuta(
            &self.provider,
            tx,
            ric,
            &Emission {
                time,
                message_id: message_id.clone(),
            },
            self.signer(),
        )?;
        let event = event_for(tx, ric, sending, time, &message_id);
        Ok((
            OutboxEntry {
                id: message_id,
                from: self.provider.service_address(),
                to: vec![to.to_string()],
                message: built.to_bytes(),
                file: None,
                queued_at: Utc::now().timestamp(),
                pec_id: tx.identificativo.clone(),
                kind: ric.tipo().to_string(),
            },
            event,
        ))
    }

    /// Issue the notice `ric` (about a message sent by `sending`, a
    /// provider's name) once: built and signed, its event recorded, then
    /// queued in the outbox in the same write that confirms its marker
    /// (`notice:<its Message-ID>`), then handed to the MTA (what it cannot
    /// take now, the outbox pass sends). An MTA retry of what caused it
    /// finds the marker confirmed and issues nothing again; one being
    /// issued by another task or node right now gives 4xx (the MTA
    /// retries, and then finds it confirmed).
    async fn send_once(
        &self,
        tx: &Transaction,
        ric: &Ricevuta<'_>,
        time: DateTime<Utc>,
        message_id: String,
        to: &str,
        sending: &str,
    ) -> Result<(), TempFail> {
        let marker = format!("notice:{message_id}");
        if self.state.confirmed(&marker).await? {
            tracing::info!(pec_id = %tx.identificativo, kind = %ric.tipo(), message_id = %message_id,
                "notice already queued: not issued again");
            return Ok(());
        }
        if !self.state.once(&marker, NOTICE_LEASE_SECS).await? {
            return Err(TempFail::State(StateError::Unavailable(format!(
                "{marker}: being issued by another task or node"
            ))));
        }
        let queued = async {
            let (entry, event) = self.build(tx, ric, time, message_id, to, sending)?;
            self.log.record(vec![event]).await?;
            self.state
                .confirm(&marker, self.retention_secs, std::slice::from_ref(&entry))
                .await?;
            Ok::<_, TempFail>(entry)
        }
        .await;
        let entry = match queued {
            Ok(e) => e,
            Err(e) => {
                if let Err(r) = self.state.release(&marker).await {
                    tracing::warn!(marker = %marker, error = %r, "notice marker not released: retried when its lease expires");
                }
                return Err(e);
            }
        };
        tracing::info!(pec_id = %entry.pec_id, kind = %entry.kind, to = ?entry.to, message_id = %entry.id, "receipt signed and queued");
        send_queued(&self.state, self.injector.as_ref(), vec![entry]).await;
        Ok(())
    }

    /// A correct receipt about one of our envelopes: update its record.
    async fn receipt(
        &self,
        msg: &PecMessage<'_>,
        tipo: Tipo,
        signer: &ProviderEntry,
        now: DateTime<Utc>,
    ) -> Result<(), TempFail> {
        let Some(Ok(d)) = &msg.daticert else {
            return Ok(());
        };
        // Every receipt received about one of ours, recorded first.
        self.log
            .record(vec![event_received(
                d,
                tipo,
                &signer.name,
                msg.message_id.as_deref(),
                now,
            )])
            .await?;
        // The sending side's answer to a rilevazione-virus (PEC-RULES
        // §2.11): queued (once) before the record changes, so that a
        // failure in between (4xx, the MTA retries the receipt) never
        // loses it and a retry never issues it twice.
        if tipo == Tipo::RilevazioneVirus
            && let Some(c) = &d.consegna
            && let Some(rec) = self.state.get_envelope(&d.identificativo).await?
            && would_change(&rec, d, tipo, signer)
        {
            let tx = Transaction {
                mittente: rec.sender.clone(),
                ..Transaction::from_daticert(d)
            };
            let ric = Ricevuta::ErroreConsegnaVirus {
                consegna: c.clone(),
                virus: d.errore_esteso.clone().unwrap_or_else(|| "virus".into()),
            };
            let local = rec.pec_id.split('@').next().unwrap_or("id");
            let id = format!(
                "errore-consegna-virus.{local}.{}@{}",
                hex(c.as_bytes()).get(..16).unwrap_or("r"),
                self.provider.domain
            );
            self.send_once(&tx, &ric, now, id, &rec.sender, &self.provider.name)
                .await?;
        }
        record_receipt(
            self.state.as_ref(),
            d,
            tipo,
            signer,
            now,
            self.retention_secs,
        )
        .await?;
        Ok(())
    }

    async fn quarantine(&self, id: &str, message: &Original) -> Result<(), TempFail> {
        crate::keep::keep_original(
            &self.quarantine_dir,
            &format!("in-{id}"),
            &message.header,
            &message.body,
        )
        .await
        .map(|_| ())
        .map_err(TempFail::Quarantine)
    }
}

/// The state key of an inbound envelope: its recipients (any order, any
/// case) and its bytes, hashed as they are read (a body on disk in
/// pieces: blocking reads from the page cache, where it has just been
/// written).
fn inbound_key(inbound: &Inbound) -> Result<String, TempFail> {
    let mut rcpts: Vec<String> = inbound
        .rcpts
        .iter()
        .map(|r| r.to_ascii_lowercase())
        .collect();
    rcpts.sort();
    let mut prefix = b"inbound\0".to_vec();
    for r in &rcpts {
        prefix.extend_from_slice(r.as_bytes());
        prefix.push(0);
    }
    Ok(hex(digest_message(
        &prefix,
        &inbound.message.header,
        &inbound.message.body,
    )?))
}
