//! The access point (punto di accesso, PEC-RULES §2.2, §2.4, §2.5, §7.4,
//! §11): what happens to a message an authenticated holder submits.
//!
//! [`AccessPoint::process`] takes the submission (SMTP envelope and the
//! message as the holder wrote it) and returns an [`Outcome`] that the
//! milter edge turns into actions: rewrite the message into the signed
//! busta di trasporto, discard it (a non-acceptance notice went to the
//! holder), reject it, or answer a temporary failure. The dependencies
//! (state, antivirus, reinjection, recipient directory) sit behind traits
//! so the same logic serves Postfix and Sendmail and is testable without
//! an MTA.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};

use crate::config::{HolderClass, HoldersConfig};
use crate::crypto::{DigestAlg, SigningKey};
use crate::log::{Event, EventLog, Evento, event_for};
use crate::pec::body::{LongestLine, MAX_LINE};
use crate::pec::build::{
    BuildError, Emission, Provider, Ricevuta, Signer, Transaction, build_ricevuta,
    write_busta_trasporto,
};
use crate::pec::facts::Facts;
use crate::roles::TempFail;
use crate::roles::message::{Original, Outcome, SpooledMessage, Submission};
use crate::roles::outbox::send_queued;
use crate::roles::ports::{Injector, LoginDirectory, RecipientDirectory, Scanner, Verdict};
use crate::rt::off_worker_unless;
use crate::spool::{SpoolOptions, SpoolWriter};
use crate::state::{
    Claim, EnvelopeRecord, OutboxEntry, RecipientState, RecipientStatus, StateStore,
};

/// Who may submit a message with a given `MAIL FROM` (decided at MAIL,
/// and again before anything is signed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A holder of one of our PEC domains, sending as an address its login
    /// owns: the access point takes the message.
    Holder,
    /// `MAIL FROM` in our PEC domains, but the login does not own it:
    /// refused (`553 5.7.1`), nothing signed.
    NotOwner,
    /// `MAIL FROM` outside our PEC domains: not PEC, passes (without the
    /// fields only a provider writes).
    Outsider,
}

/// Everything the access point needs.
pub struct AccessPoint {
    pub provider: Provider,
    pub domains: Vec<String>,
    pub key: Arc<dyn SigningKey>,
    pub digest: DigestAlg,
    pub state: Arc<dyn StateStore>,
    pub scanner: Option<Arc<dyn Scanner>>,
    pub injector: Arc<dyn Injector>,
    pub directory: Arc<dyn RecipientDirectory>,
    pub holders: HoldersConfig,
    /// Where the site keeps its holders (`[holders.ldap]`): asked for the
    /// addresses of a login the `logins` file does not give.
    pub logins: Option<Arc<dyn LoginDirectory>>,
    /// The legal message log: every receipt's event is recorded before
    /// the receipt leaves (and so before the MTA hears the answer).
    pub log: Arc<dyn EventLog>,
    pub max_recipients: usize,
    pub max_product: u64,
    pub quarantine_dir: PathBuf,
    pub retention_secs: u64,
    /// Where envelopes of large originals are written (`[spool]`).
    pub spool: SpoolOptions,
}

impl AccessPoint {
    /// Is this sender one of our holders (the access point applies)?
    pub fn serves(&self, address: &str) -> bool {
        address
            .rsplit_once('@')
            .is_some_and(|(_, d)| self.domains.iter().any(|x| x.eq_ignore_ascii_case(d)))
    }

    /// May the SASL `login` submit with `mail_from`? See [`Admission`].
    /// The login itself and the `logins` file answer first; the holders'
    /// directory only for what they do not give. A directory that cannot
    /// answer is a temporary failure, never an admission.
    pub async fn admit(&self, login: &str, mail_from: &str) -> Result<Admission, TempFail> {
        if !self.serves(mail_from) {
            return Ok(Admission::Outsider);
        }
        if self.holders.owns(login, mail_from) {
            return Ok(Admission::Holder);
        }
        let Some(directory) = &self.logins else {
            return Ok(Admission::NotOwner);
        };
        let (login, address) = (login.trim(), mail_from.trim());
        if login.is_empty() {
            return Ok(Admission::NotOwner);
        }
        let owned = directory.owned_by(login).await?;
        Ok(
            if owned.iter().any(|a| a.trim().eq_ignore_ascii_case(address)) {
                Admission::Holder
            } else {
                Admission::NotOwner
            },
        )
    }

    /// Decide what happens to a submission. `now` is the transaction time
    /// for a new submission (an MTA retry reuses the first one).
    pub async fn process(&self, sub: &Submission, now: DateTime<Utc>) -> Outcome {
        let qid = sub.queue_id.as_deref().unwrap_or("-");
        match self.process_inner(sub, now).await {
            Ok(outcome) => {
                match &outcome {
                    Outcome::Rewrite { pec_id, .. } => tracing::info!(
                        queue_id = qid, pec_id = %pec_id, sender = %sub.mail_from,
                        recipients = sub.rcpts.len(), "accettazione: envelope signed, receipt sent"
                    ),
                    Outcome::Deliver { note } => tracing::info!(
                        queue_id = qid, note = %note, "delivered unchanged"
                    ),
                    Outcome::Discard { pec_id, reason } => tracing::info!(
                        queue_id = qid, pec_id = %pec_id, sender = %sub.mail_from,
                        reason = %reason, "non-accettazione: original not sent"
                    ),
                    Outcome::Reject { code, text, .. } => tracing::info!(
                        queue_id = qid, login = %sub.auth_user, sender = %sub.mail_from,
                        code, text = %text, "rejected"
                    ),
                    Outcome::Tempfail { reason } => tracing::warn!(
                        queue_id = qid, sender = %sub.mail_from, reason = %reason, "temporary failure"
                    ),
                }
                outcome
            }
            Err(e) => {
                tracing::warn!(queue_id = qid, sender = %sub.mail_from, reason = %e, "temporary failure");
                Outcome::Tempfail {
                    reason: e.to_string(),
                }
            }
        }
    }

    async fn process_inner(
        &self,
        sub: &Submission,
        now: DateTime<Utc>,
    ) -> Result<Outcome, TempFail> {
        if sub.mail_from.is_empty() {
            return Ok(Outcome::Reject {
                code: 550,
                xcode: "5.7.1".into(),
                text: "PEC: a holder cannot submit with an empty sender".into(),
            });
        }
        // The sender is what the accettazione certifies: only the login
        // that owns the address may use it (the milter refuses at MAIL
        // already; this holds for any edge).
        if self.admit(&sub.auth_user, &sub.mail_from).await? != Admission::Holder {
            return Ok(Outcome::Reject {
                code: 553,
                xcode: "5.7.1".into(),
                text: not_owner_text(&sub.auth_user, &sub.mail_from),
            });
        }
        // The header is read once: every fact below, and the header the
        // envelope carries (without marker fields), come from this pass.
        let (facts, clean_header) = Facts::read_clean(&sub.message.header);
        if !facts.markers.is_empty() {
            tracing::warn!(
                queue_id = sub.queue_id.as_deref().unwrap_or("-"),
                sender = %sub.mail_from,
                headers = ?facts.markers,
                "holder wrote PEC marker header fields: removed"
            );
        }
        let cleaned = Original {
            header: clean_header,
            body: sub.message.body.clone(),
        };

        // One transaction, one identity: an MTA retry of the same
        // submission finds the claim and reuses its PEC id and time.
        let small = is_small(sub);
        let SubmissionRead { key, longest_line } = {
            let sub = sub.clone();
            off_worker_unless(small, move || read_submission(&sub))
                .await
                .map_err(|e| TempFail::Spool(format!("digest task failed: {e}")))?
                .map_err(|e| TempFail::Spool(format!("reading the spooled message: {e}")))?
        };
        let pec_id = new_pec_id(&self.provider.domain, now);
        let (pec_id, time, receipt_sent) = match self
            .state
            .claim(&key, &pec_id, now.timestamp(), self.retention_secs)
            .await?
        {
            Claim::New => (pec_id, now, false),
            Claim::Existing {
                pec_id,
                submitted_at,
                receipt_sent,
            } => {
                let t = Utc.timestamp_opt(submitted_at, 0).single().unwrap_or(now);
                tracing::info!(pec_id = %pec_id, receipt_sent, "retry of a known submission");
                (pec_id, t, receipt_sent)
            }
        };

        let tx = facts.transaction(pec_id.clone(), &sub.mail_from, |a| self.directory.tipo(a))?;

        // Formal checks and sender policy (PEC-RULES §7.4, §11).
        if let Some(reason) = self
            .formal_problem(sub, &facts, longest_line)
            .or_else(|| self.policy_problem(sub))
        {
            self.notify(
                &tx,
                Ricevuta::NonAccettazione {
                    reason: reason.clone(),
                },
                time,
                &key,
                receipt_sent,
            )
            .await?;
            return Ok(Outcome::Discard { pec_id, reason });
        }

        // Antivirus on what the holder submitted.
        if let Some(scanner) = &self.scanner
            && let Verdict::Infected(virus) = scanner.scan_original(&sub.message).await?
        {
            self.quarantine(&pec_id, &sub.message).await?;
            self.notify(
                &tx,
                Ricevuta::NonAccettazioneVirus {
                    virus: virus.clone(),
                },
                time,
                &key,
                receipt_sent,
            )
            .await?;
            return Ok(Outcome::Discard {
                pec_id,
                reason: format!("virus {virus}"),
            });
        }

        // The signed envelope, then the receipt, then the record. For a
        // large original (file I/O, milliseconds of hashing): off the async
        // workers; a small one costs about one signature, like the receipt.
        // The message log records the accettazione and the busta while the
        // envelope is signed (its sync hidden behind the signature); both
        // must succeed before the receipt leaves.
        let logged = self.log.record(self.acceptance_events(&tx, time));
        let envelope = async {
            let (provider, tx, cleaned) = (self.provider.clone(), tx.clone(), cleaned.clone());
            let (key, digest, spool) = (Arc::clone(&self.key), self.digest, self.spool.clone());
            off_worker_unless(small, move || {
                let signer = Signer {
                    key: key.as_ref(),
                    digest,
                };
                let mut out = SpoolWriter::raw(spool);
                let headers = write_busta_trasporto(
                    &provider,
                    &tx,
                    &cleaned.header,
                    &cleaned.body,
                    time,
                    signer,
                    &mut out,
                )?;
                Ok::<_, BuildError>(SpooledMessage {
                    headers,
                    body: out.finish()?,
                })
            })
            .await
            .map_err(|e| TempFail::Spool(format!("envelope task failed: {e}")))?
            .map_err(TempFail::from)
        };
        let (logged, envelope) = tokio::join!(logged, envelope);
        let envelope = envelope?;
        logged?;
        let inherited = facts.inherited;
        let record = EnvelopeRecord {
            pec_id: pec_id.clone(),
            original_msgid: tx.msgid.clone(),
            sender: sub.mail_from.clone(),
            subject: tx.oggetto.clone(),
            recipients: sub
                .rcpts
                .iter()
                .map(|r| {
                    Ok(RecipientState {
                        address: r.clone(),
                        tipo: self.directory.tipo(r)?,
                        status: RecipientStatus::Sent,
                        updated_at: time.timestamp(),
                    })
                })
                .collect::<Result<Vec<_>, TempFail>>()?,
            ricevuta: tx.ricevuta,
            submitted_at: time.timestamp(),
        };
        // The record, the claim's "receipt handed over" and the receipt
        // itself in the outbox: one durable write (a failure answers 4xx
        // and nothing has left). Then the receipt goes to the MTA; if it
        // cannot, the outbox pass sends it (the submission is accepted:
        // its receipt is safe).
        let outbox = self
            .receipt_entry(&tx, Ricevuta::Accettazione, time, receipt_sent)?
            .into_iter()
            .collect::<Vec<_>>();
        self.state
            .record_acceptance(&key, &record, self.retention_secs, &outbox)
            .await?;
        send_queued(&self.state, self.injector.as_ref(), outbox).await;
        Ok(Outcome::Rewrite {
            pec_id,
            message: envelope,
            inherited,
            keep_message_id: false,
        })
    }

    /// Build, sign and inject a receipt or notice to the holder, once per
    /// submission (`receipt_sent` from the claim).
    async fn notify(
        &self,
        tx: &Transaction,
        ricevuta: Ricevuta<'_>,
        time: DateTime<Utc>,
        key: &str,
        receipt_sent: bool,
    ) -> Result<(), TempFail> {
        // recorded before it leaves (an MTA retry's record is not repeated)
        let event = event_for(
            tx,
            &ricevuta,
            &self.provider.name,
            time,
            &self.receipt_msgid(tx, &ricevuta),
        );
        self.log.record(vec![event]).await?;
        if let Some(entry) = self.receipt_entry(tx, ricevuta, time, receipt_sent)? {
            let outbox = vec![entry];
            self.state
                .mark_receipt_sent(key, &outbox, self.retention_secs)
                .await?;
            send_queued(&self.state, self.injector.as_ref(), outbox).await;
        }
        Ok(())
    }

    /// Build and sign a receipt or notice to the holder, for the outbox,
    /// unless `receipt_sent` (an MTA retry after it was queued).
    fn receipt_entry(
        &self,
        tx: &Transaction,
        ricevuta: Ricevuta<'_>,
        time: DateTime<Utc>,
        receipt_sent: bool,
    ) -> Result<Option<OutboxEntry>, TempFail> {
        if receipt_sent {
            tracing::info!(pec_id = %tx.identificativo, kind = %ricevuta.tipo(), "receipt already queued for this submission: not issued again");
            return Ok(None);
        }
        let emission = Emission {
            time,
            message_id: self.receipt_msgid(tx, &ricevuta),
        };
        let signer = Signer {
            key: self.key.as_ref(),
            digest: self.digest,
        };
        let msg = build_ricevuta(&self.provider, tx, &ricevuta, &emission, signer)?;
        tracing::info!(pec_id = %tx.identificativo, kind = %ricevuta.tipo(), to = %tx.mittente, message_id = %emission.message_id, "receipt signed and queued");
        Ok(Some(OutboxEntry {
            id: emission.message_id,
            from: self.provider.service_address(),
            to: vec![tx.mittente.clone()],
            message: msg.to_bytes(),
            file: None,
            queued_at: Utc::now().timestamp(),
            pec_id: tx.identificativo.clone(),
            kind: ricevuta.tipo().to_string(),
        }))
    }

    /// The Message-ID of our receipt of kind `ricevuta` for `tx`.
    fn receipt_msgid(&self, tx: &Transaction, ricevuta: &Ricevuta<'_>) -> String {
        let local = tx
            .identificativo
            .split('@')
            .next()
            .unwrap_or(&tx.identificativo);
        format!("{}.{}@{}", ricevuta.tipo(), local, self.provider.domain)
    }

    /// The message log's records of an accettazione: the receipt and the
    /// busta di trasporto.
    fn acceptance_events(&self, tx: &Transaction, time: DateTime<Utc>) -> Vec<Event> {
        let r = Ricevuta::Accettazione;
        let acc = event_for(
            tx,
            &r,
            &self.provider.name,
            time,
            &self.receipt_msgid(tx, &r),
        );
        let mut busta = acc.clone();
        busta.event = Evento::BustaTrasporto;
        busta.related = vec![format!("<{}>", tx.identificativo)];
        vec![acc, busta]
    }

    /// PEC-RULES §7.4: From, To, reverse path = From, every forward path
    /// in To/Cc, no Bcc, recipients x size within the limit.
    fn formal_problem(&self, sub: &Submission, f: &Facts, longest_line: u64) -> Option<String> {
        let Some(from) = &f.from else {
            return Some("manca il campo From: con un indirizzo valido".into());
        };
        if f.to.is_empty() {
            return Some("manca il campo To: con almeno un destinatario".into());
        }
        if !from.eq_ignore_ascii_case(&sub.mail_from) {
            return Some(format!(
                "il mittente {} (From:) non corrisponde al mittente SMTP {}",
                from, sub.mail_from
            ));
        }
        if f.bcc_used {
            return Some("destinatari in copia nascosta (Bcc:) non ammessi".into());
        }
        for r in &sub.rcpts {
            if !f.to_cc.iter().any(|a| a.eq_ignore_ascii_case(r)) {
                return Some(format!(
                    "il destinatario {r} non è presente nei campi To: o Cc:"
                ));
            }
        }
        if sub.rcpts.len() > self.max_recipients {
            return Some(format!(
                "troppi destinatari ({} oltre il limite di {})",
                sub.rcpts.len(),
                self.max_recipients
            ));
        }
        let product = sub.message.len().saturating_mul(sub.rcpts.len() as u64);
        if product > self.max_product {
            return Some(format!(
                "dimensione per numero di destinatari ({product} byte) oltre il limite di {} byte",
                self.max_product
            ));
        }
        // RFC 5322 §2.1.1 (the rules are silent): a longer line is broken by
        // the MTAs on the way (Postfix's smtp_line_length_limit), which
        // breaks the envelope's signature at the recipient's provider. An
        // accettazione would certify a transmission that cannot arrive
        // intact; the holder's client must encode such a part (QP, base64).
        if longest_line > MAX_LINE {
            return Some(format!(
                "una riga del messaggio di {longest_line} caratteri supera il limite di {MAX_LINE} \
                 (RFC 5322): il messaggio non arriverebbe integro; usare una codifica \
                 (quoted-printable o base64) per quella parte"
            ));
        }
        None
    }

    /// PEC-RULES §11: a `Upr` holder may write only to `Upa` holders.
    fn policy_problem(&self, sub: &Submission) -> Option<String> {
        if self.holders.class_of(&sub.mail_from) != HolderClass::Upr {
            return None;
        }
        let bad: Vec<&String> = sub
            .rcpts
            .iter()
            .filter(|r| self.holders.class_of(r) != HolderClass::Upa)
            .collect();
        if bad.is_empty() {
            None
        } else {
            Some(format!(
                "il titolare (classe Upr) può scrivere solo a titolari Upa; non ammessi: {}",
                bad.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        }
    }

    /// Keep an infected original (the rules ask for 30 months).
    async fn quarantine(&self, pec_id: &str, message: &Original) -> Result<(), TempFail> {
        crate::keep::keep_original(&self.quarantine_dir, pec_id, &message.header, &message.body)
            .await
            .map(|_| ())
            .map_err(TempFail::Quarantine)
    }
}

/// The reply to a login that sends as an address it does not own.
pub fn not_owner_text(login: &str, mail_from: &str) -> String {
    format!("PEC: the login {login} may not send as {mail_from}")
}

/// Messages up to this size are digested and enveloped on the async
/// worker itself: the work (well under a millisecond, about one RSA
/// signature) costs less than the two thread hand-offs of the blocking pool.
const INLINE_LIMIT: u64 = 64 * 1024;

/// Whether the submitted message is small enough for [`INLINE_LIMIT`] and
/// held in memory (no file I/O).
fn is_small(sub: &Submission) -> bool {
    !sub.message.body.is_on_disk() && sub.message.len() <= INLINE_LIMIT
}

/// What one pass over a submission's bytes gives: its idempotency key
/// (who, to whom, and the exact bytes) and its longest line (the formal
/// check of RFC 5322's 998 characters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmissionRead {
    pub key: String,
    pub longest_line: u64,
}

/// The key and the longest line of a submission, in one pass (read in
/// pieces: blocking I/O for a body on disk).
pub fn read_submission(sub: &Submission) -> std::io::Result<SubmissionRead> {
    let mut rcpts: Vec<String> = sub.rcpts.iter().map(|r| r.to_ascii_lowercase()).collect();
    rcpts.sort();
    let mut h = openssl::sha::Sha256::new();
    h.update(sub.auth_user.as_bytes());
    h.update(&[0]);
    h.update(sub.mail_from.to_ascii_lowercase().as_bytes());
    h.update(&[0]);
    for r in &rcpts {
        h.update(r.as_bytes());
        h.update(&[0]);
    }
    let mut lines = LongestLine::default();
    sub.message.for_each_chunk::<std::io::Error>(|c| {
        h.update(c);
        lines.feed(c);
        Ok(())
    })?;
    Ok(SubmissionRead {
        key: hex::encode(h.finish()),
        longest_line: lines.finish(),
    })
}

/// A new PEC msgid: `pec.<UTC time>.<64 random bits>@<provider domain>`.
pub fn new_pec_id(domain: &str, now: DateTime<Utc>) -> String {
    let mut rnd = [0u8; 8];
    if openssl::rand::rand_bytes(&mut rnd).is_err() {
        // fall back to the clock's nanoseconds: still unique per node in practice
        let n = now.timestamp_subsec_nanos().to_be_bytes();
        rnd[..4].copy_from_slice(&n);
        rnd[4..].copy_from_slice(&std::process::id().to_be_bytes());
    }
    let hex = hex::encode(rnd);
    format!("pec.{}.{hex}@{domain}", now.format("%Y%m%d%H%M%S"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pec_ids_are_unique_and_in_our_domain() {
        let now = Utc::now();
        let a = new_pec_id("pec.demo.test", now);
        let b = new_pec_id("pec.demo.test", now);
        assert_ne!(a, b);
        assert!(a.ends_with("@pec.demo.test") && a.starts_with("pec."));
    }

    #[test]
    fn submission_key_ignores_recipient_order_and_case() {
        let s = |r: Vec<&str>| Submission {
            queue_id: None,
            auth_user: "u".into(),
            mail_from: "a@x".into(),
            rcpts: r.into_iter().map(String::from).collect(),
            message: Original::from_bytes(b"Subject: m\r\n\r\nbody\r\n"),
        };
        let key = |r: Vec<&str>| read_submission(&s(r)).expect("key").key;
        assert_eq!(key(vec!["B@y", "c@y"]), key(vec!["c@y", "b@y"]));
        assert_ne!(key(vec!["b@y"]), key(vec!["c@y"]));
        // The key covers the exact bytes, whether the body is in memory or
        // spooled to disk: header, empty line, body.
        let dir = tempfile::tempdir().expect("tmp");
        let mut w = SpoolWriter::new(SpoolOptions {
            dir: dir.path().to_path_buf(),
            memory_limit: 0,
        });
        w.write(b"bo").expect("spool");
        w.write(b"dy\r\n").expect("spool");
        let mut on_disk = s(vec!["b@y"]);
        on_disk.message.body = w.finish().expect("finish");
        assert!(on_disk.message.body.is_on_disk());
        assert_eq!(
            read_submission(&on_disk).expect("key").key,
            key(vec!["b@y"])
        );
        let mut whole = openssl::sha::Sha256::new();
        whole.update(b"u\0a@x\0b@y\0Subject: m\r\n\r\nbody\r\n");
        assert_eq!(key(vec!["b@y"]), hex::encode(whole.finish()));
    }
}
