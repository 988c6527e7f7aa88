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

use crate::config::{Config, HolderClass, HoldersConfig};
use crate::crypto::{self, DigestAlg, SigningKey};
use crate::pec::build::{
    BuildError, Emission, Original, Provider, Ricevuta, Signer, SpooledMessage, Transaction,
    build_busta_trasporto_spooled, build_ricevuta,
};
use crate::pec::mime::{self, header_fields, split_header_body};
use crate::pec::{Destinatario, TipoDestinatario, TipoRicevuta};
use crate::spool::{SpoolOptions, SpoolWriter};
use crate::state::{Claim, EnvelopeRecord, RecipientState, RecipientStatus, StateStore};

/// Header fields only a provider may write: removed from what a holder
/// submits, so a holder can never forge a receipt (PEC-RULES §2.12).
pub const PEC_MARKER_HEADERS: &[&str] = &[
    "X-Trasporto",
    "X-Ricevuta",
    "X-VerificaSicurezza",
    "X-Riferimento-Message-ID",
    "X-Mittente",
];

/// The antivirus verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    Infected(String),
}

/// Scans a message. An error means "cannot tell": the MTA retries later.
#[async_trait::async_trait]
pub trait Scanner: Send + Sync {
    async fn scan(&self, message: &[u8]) -> Result<Verdict, String>;

    /// Scan a message whose body may be on disk. The default reads it
    /// into memory and calls [`scan`](Self::scan); a real scanner streams
    /// it (clamd INSTREAM).
    async fn scan_original(&self, message: &Original) -> Result<Verdict, String> {
        let bytes = message
            .to_vec()
            .map_err(|e| format!("reading the spooled message: {e}"))?;
        self.scan(&bytes).await
    }
}

/// Injects a generated message back into the MTA (byte-exact).
#[async_trait::async_trait]
pub trait Injector: Send + Sync {
    async fn inject(&self, from: &str, to: &[String], message: &[u8]) -> Result<(), String>;
}

/// Tells `certificato` from `esterno` recipients. An error means the
/// answer is unknown now (never guess "esterno").
pub trait RecipientDirectory: Send + Sync {
    fn tipo(&self, address: &str) -> Result<TipoDestinatario, String>;
}

/// A fixed list of certified domains from the configuration (until the
/// providers' index fills this in).
#[derive(Debug, Clone)]
pub struct StaticDirectory {
    domains: Vec<String>,
}

impl StaticDirectory {
    pub fn new(domains: &[String]) -> Self {
        StaticDirectory {
            domains: domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
        }
    }
}

impl RecipientDirectory for StaticDirectory {
    fn tipo(&self, address: &str) -> Result<TipoDestinatario, String> {
        let domain = address
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        Ok(if self.domains.contains(&domain) {
            TipoDestinatario::Certificato
        } else {
            TipoDestinatario::Esterno
        })
    }
}

/// One submission as the MTA hands it over at end of message.
#[derive(Debug, Clone)]
pub struct Submission {
    /// MTA queue id, for logs.
    pub queue_id: Option<String>,
    /// `{auth_authen}`: the authenticated holder.
    pub auth_user: String,
    /// SMTP reverse path, without angle brackets.
    pub mail_from: String,
    /// SMTP forward paths, without angle brackets.
    pub rcpts: Vec<String>,
    /// The message as submitted: header fields and body (CRLF), the body
    /// in memory or spooled to disk.
    pub message: Original,
}

/// What the MTA must do with the submission.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Replace the message by a built one (busta di trasporto or busta
    /// di anomalia): delete the header fields of the original that it does
    /// not inherit (see [`is_inherited`]; `keep_message_id` for the
    /// anomaly envelope), add its own ones (`message.headers[inherited..]`),
    /// replace the body. Recipients unchanged.
    Rewrite {
        pec_id: String,
        /// The envelope; its body may be a spool file (a large original).
        message: SpooledMessage,
        /// How many of `message.headers` were copied from the original.
        inherited: usize,
        keep_message_id: bool,
    },
    /// Deliver the message as it is.
    Deliver { note: String },
    /// Not sent: a non-acceptance notice went to the holder.
    Discard { pec_id: String, reason: String },
    /// Refuse at SMTP level (5xx).
    Reject {
        code: u16,
        xcode: String,
        text: String,
    },
    /// Cannot decide now (a dependency failed): 4xx, the client retries.
    Tempfail { reason: String },
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
    pub max_recipients: usize,
    pub max_product: u64,
    pub quarantine_dir: PathBuf,
    pub retention_secs: u64,
    /// Where envelopes of large originals are written (`[spool]`).
    pub spool: SpoolOptions,
}

#[derive(Debug, thiserror::Error)]
enum Temp {
    #[error("state store: {0}")]
    State(#[from] crate::state::StateError),
    #[error("antivirus: {0}")]
    Scan(String),
    #[error("reinjection: {0}")]
    Inject(String),
    #[error("signing: {0}")]
    Build(#[from] BuildError),
    #[error("recipient directory: {0}")]
    Directory(String),
    #[error("quarantine: {0}")]
    Quarantine(String),
    #[error("spool: {0}")]
    Spool(String),
}

impl AccessPoint {
    /// Build an access point from the configuration and its dependencies.
    #[allow(clippy::too_many_arguments)]
    pub fn from_config(
        cfg: &Config,
        key: Arc<dyn SigningKey>,
        state: Arc<dyn StateStore>,
        scanner: Option<Arc<dyn Scanner>>,
        injector: Arc<dyn Injector>,
        directory: Arc<dyn RecipientDirectory>,
    ) -> AccessPoint {
        AccessPoint {
            provider: Provider {
                name: cfg.provider.name.clone(),
                domain: cfg.provider.domain.clone(),
            },
            domains: cfg.provider.domains.clone(),
            key,
            digest: cfg.provider.digest,
            state,
            scanner,
            injector,
            directory,
            holders: cfg.holders.clone(),
            max_recipients: cfg.limits.max_recipients,
            max_product: cfg.limits.max_product,
            quarantine_dir: cfg.quarantine.dir.clone(),
            retention_secs: cfg.state.retention.as_secs(),
            spool: cfg.spool.options(),
        }
    }

    /// Is this sender one of our holders (the access point applies)?
    pub fn serves(&self, address: &str) -> bool {
        address
            .rsplit_once('@')
            .is_some_and(|(_, d)| self.domains.iter().any(|x| x.eq_ignore_ascii_case(d)))
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
                        queue_id = qid, sender = %sub.mail_from, code, text = %text, "rejected"
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

    async fn process_inner(&self, sub: &Submission, now: DateTime<Utc>) -> Result<Outcome, Temp> {
        if sub.mail_from.is_empty() {
            return Ok(Outcome::Reject {
                code: 550,
                xcode: "5.7.1".into(),
                text: "PEC: a holder cannot submit with an empty sender".into(),
            });
        }
        let (cleaned_head, removed) = strip_marker_headers(&head_message(&sub.message.header));
        let cleaned = Original {
            header: split_header_body(&cleaned_head).0.to_vec(),
            body: sub.message.body.clone(),
        };
        if !removed.is_empty() {
            tracing::warn!(
                queue_id = sub.queue_id.as_deref().unwrap_or("-"),
                sender = %sub.mail_from,
                headers = ?removed,
                "holder wrote PEC marker header fields: removed"
            );
        }
        let facts = Facts::read(&cleaned_head, &sub.mail_from);

        // One transaction, one identity: an MTA retry of the same
        // submission finds the claim and reuses its PEC id and time.
        let small = is_small(sub);
        let key = {
            let sub = sub.clone();
            off_worker_unless(small, move || submission_key(&sub))
                .await
                .map_err(|e| Temp::Spool(format!("digest task failed: {e}")))?
                .map_err(|e| Temp::Spool(format!("reading the spooled message: {e}")))?
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

        let mut destinatari = Vec::with_capacity(facts.to_cc.len());
        for a in &facts.to_cc {
            destinatari.push(Destinatario {
                address: a.clone(),
                tipo: self.directory.tipo(a).map_err(Temp::Directory)?,
            });
        }
        let tx = Transaction {
            identificativo: pec_id.clone(),
            mittente: sub.mail_from.clone(),
            destinatari,
            risposte: facts
                .reply_to
                .clone()
                .unwrap_or_else(|| sub.mail_from.clone()),
            oggetto: facts.subject.clone(),
            msgid: facts.msgid.clone(),
            ricevuta: facts.ricevuta,
        };

        // Formal checks and sender policy (PEC-RULES §7.4, §11).
        if let Some(reason) = self.formal_problem(sub, &facts) {
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
        if let Some(reason) = self.policy_problem(sub) {
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
            && let Verdict::Infected(virus) = scanner
                .scan_original(&sub.message)
                .await
                .map_err(Temp::Scan)?
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
        let envelope = {
            let (provider, tx, cleaned) = (self.provider.clone(), tx.clone(), cleaned.clone());
            let (key, digest, out) = (
                Arc::clone(&self.key),
                self.digest,
                SpoolWriter::raw(self.spool.clone()),
            );
            off_worker_unless(small, move || {
                let signer = Signer {
                    key: key.as_ref(),
                    digest,
                };
                build_busta_trasporto_spooled(&provider, &tx, &cleaned, time, signer, out)
            })
            .await
            .map_err(|e| Temp::Spool(format!("envelope task failed: {e}")))??
        };
        let inherited = inherited_count(&cleaned_head, false);
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
                        tipo: self.directory.tipo(r).map_err(Temp::Directory)?,
                        status: RecipientStatus::Sent,
                        updated_at: time.timestamp(),
                    })
                })
                .collect::<Result<Vec<_>, Temp>>()?,
            ricevuta: tx.ricevuta,
            submitted_at: time.timestamp(),
        };
        // The receipt, then the record and the claim's "receipt sent" in
        // one write. A failure of that write after the injection answers
        // 4xx and the MTA's retry sends the receipt again: the one window
        // for a duplicate, a single write wide.
        self.send_receipt(&tx, Ricevuta::Accettazione, time, receipt_sent)
            .await?;
        self.state
            .record_acceptance(&key, &record, self.retention_secs)
            .await?;
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
    ) -> Result<(), Temp> {
        if self.send_receipt(tx, ricevuta, time, receipt_sent).await? {
            self.state.mark_receipt_sent(key).await?;
        }
        Ok(())
    }

    /// Build, sign and inject a receipt or notice to the holder unless
    /// `receipt_sent`; whether it was sent now.
    async fn send_receipt(
        &self,
        tx: &Transaction,
        ricevuta: Ricevuta<'_>,
        time: DateTime<Utc>,
        receipt_sent: bool,
    ) -> Result<bool, Temp> {
        if receipt_sent {
            tracing::info!(pec_id = %tx.identificativo, kind = %ricevuta.tipo(), "receipt already sent for this submission: not sent again");
            return Ok(false);
        }
        let local = tx
            .identificativo
            .split('@')
            .next()
            .unwrap_or(&tx.identificativo);
        let emission = Emission {
            time,
            message_id: format!("{}.{}@{}", ricevuta.tipo(), local, self.provider.domain),
        };
        let signer = Signer {
            key: self.key.as_ref(),
            digest: self.digest,
        };
        let msg = build_ricevuta(&self.provider, tx, &ricevuta, &emission, signer)?;
        self.injector
            .inject(
                &self.provider.service_address(),
                std::slice::from_ref(&tx.mittente),
                &msg.to_bytes(),
            )
            .await
            .map_err(Temp::Inject)?;
        tracing::info!(pec_id = %tx.identificativo, kind = %ricevuta.tipo(), to = %tx.mittente, message_id = %emission.message_id, "receipt injected");
        Ok(true)
    }

    /// PEC-RULES §7.4: From, To, reverse path = From, every forward path
    /// in To/Cc, no Bcc, recipients x size within the limit.
    fn formal_problem(&self, sub: &Submission, f: &Facts) -> Option<String> {
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
    async fn quarantine(&self, pec_id: &str, message: &Original) -> Result<(), Temp> {
        crate::keep::keep_original(&self.quarantine_dir, pec_id, message)
            .await
            .map(|_| ())
            .map_err(Temp::Quarantine)
    }
}

/// What the access point reads from the original's header fields.
#[derive(Debug, Clone, Default)]
struct Facts {
    from: Option<String>,
    to: Vec<String>,
    to_cc: Vec<String>,
    bcc_used: bool,
    reply_to: Option<String>,
    subject: String,
    msgid: Option<String>,
    ricevuta: TipoRicevuta,
}

impl Facts {
    fn read(message: &[u8], _mail_from: &str) -> Facts {
        let (head, _) = split_header_body(message);
        let fields = header_fields(head);
        let mut f = Facts::default();
        let mut from_count = 0;
        for h in &fields {
            let v = h.unfolded();
            if h.is("From") {
                from_count += 1;
                f.from = mime::addr_spec(&v);
            } else if h.is("To") {
                let l = mime::addr_list(&v);
                f.to.extend(l.iter().cloned());
                f.to_cc.extend(l);
            } else if h.is("Cc") {
                f.to_cc.extend(mime::addr_list(&v));
            } else if h.is("Bcc") {
                if !v.trim().is_empty() {
                    f.bcc_used = true;
                }
            } else if h.is("Reply-To") {
                f.reply_to = mime::addr_spec(&v);
            } else if h.is("Subject") {
                f.subject = mime::decode_words(&v);
            } else if h.is("Message-ID") && f.msgid.is_none() && !v.is_empty() {
                f.msgid = Some(if v.starts_with('<') {
                    v
                } else {
                    format!("<{v}>")
                });
            } else if h.is("X-TipoRicevuta") {
                f.ricevuta = v.parse().unwrap_or_default();
            }
        }
        if from_count > 1 {
            f.from = None;
        }
        f
    }
}

/// Remove the PEC marker header fields a holder may have written. Returns
/// the cleaned message and the names removed.
pub fn strip_marker_headers(message: &[u8]) -> (Vec<u8>, Vec<String>) {
    let (head, body) = split_header_body(message);
    let fields = header_fields(head);
    let mut removed = Vec::new();
    let mut out = Vec::with_capacity(message.len());
    for f in &fields {
        if PEC_MARKER_HEADERS.iter().any(|m| f.is(m)) {
            removed.push(f.name.to_string());
        } else {
            out.extend_from_slice(f.raw);
            if !f.raw.ends_with(b"\n") {
                out.extend_from_slice(b"\r\n");
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    (out, removed)
}

/// Is this an original header field an envelope keeps (PEC-RULES §1.5;
/// the busta di anomalia also keeps the Message-ID, §2.3)?
pub fn is_inherited(name: &str, keep_message_id: bool) -> bool {
    ["Received", "Return-Path", "To", "Cc", "Reply-To"]
        .iter()
        .any(|n| n.eq_ignore_ascii_case(name))
        || (keep_message_id && name.eq_ignore_ascii_case("Message-ID"))
}

/// How many header fields of `message` an envelope built around it copies.
pub fn inherited_count(message: &[u8], keep_message_id: bool) -> usize {
    let (head, _) = split_header_body(message);
    header_fields(head)
        .iter()
        .filter(|f| is_inherited(f.name, keep_message_id))
        .count()
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

/// Run `f` here when `inline`, else on the blocking pool.
async fn off_worker_unless<T, F>(inline: bool, f: F) -> Result<T, tokio::task::JoinError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    if inline {
        Ok(f())
    } else {
        tokio::task::spawn_blocking(f).await
    }
}

/// The idempotency key of a submission: who, to whom, and the exact bytes
/// (read in pieces: blocking I/O for a body on disk).
pub fn submission_key(sub: &Submission) -> std::io::Result<String> {
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
    sub.message.for_each_chunk::<std::io::Error>(|c| {
        h.update(c);
        Ok(())
    })?;
    Ok(crypto::verify::hex_lower(&h.finish()))
}

/// A header block as a message with an empty body, for the helpers that
/// take a whole message.
fn head_message(header: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(header.len() + 2);
    m.extend_from_slice(header);
    m.extend_from_slice(b"\r\n");
    m
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
    let hex = crypto::verify::hex_lower(&rnd);
    format!("pec.{}.{hex}@{domain}", now.format("%Y%m%d%H%M%S"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_headers_are_removed_and_the_rest_kept() {
        let m = b"From: a@x\r\nX-Ricevuta: accettazione\r\nx-trasporto: errore\r\n\tfolded\r\nSubject: s\r\n\r\nbody\r\n";
        let (out, removed) = strip_marker_headers(m);
        assert_eq!(out, b"From: a@x\r\nSubject: s\r\n\r\nbody\r\n".to_vec());
        assert_eq!(
            removed,
            vec!["X-Ricevuta".to_string(), "x-trasporto".to_string()]
        );
    }

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
        let key = |r: Vec<&str>| submission_key(&s(r)).expect("key");
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
        assert_eq!(submission_key(&on_disk).expect("key"), key(vec!["b@y"]));
        let mut whole = openssl::sha::Sha256::new();
        whole.update(b"u\0a@x\0b@y\0Subject: m\r\n\r\nbody\r\n");
        assert_eq!(key(vec!["b@y"]), crypto::verify::hex_lower(&whole.finish()));
    }
}
