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
//! A receipt is issued once per (envelope, recipient), also across
//! retries. If the receipt cannot be injected right away, it is kept in an
//! outbox on disk and retried: the message is already in the mailbox, so
//! answering 4xx would deliver it twice.

use std::path::PathBuf;
use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::access::Injector;
use crate::crypto::verify::hex_lower as hex;
use crate::crypto::{self, DigestAlg, SigningKey};
use crate::lmtp::server::LmtpHandler;
use crate::lmtp::{MailboxStore, RcptOutcome};
use crate::pec::build::{
    Emission, Provider, Ricevuta, Signer, Transaction, build_ricevuta, receipt_variant,
};
use crate::pec::reader::{self, PecMessage};
use crate::pec::{Errore, MessageKind, mime};
use crate::reception::record_receipt;
use crate::state::{Claim, StateStore};

pub struct DeliveryPoint {
    pub provider: Provider,
    pub key: Arc<dyn SigningKey>,
    pub digest: DigestAlg,
    pub store: Arc<dyn MailboxStore>,
    pub state: Arc<dyn StateStore>,
    pub injector: Arc<dyn Injector>,
    pub outbox: PathBuf,
    pub retention_secs: u64,
}

/// Is `rcpt` a primary (To:) recipient of the envelope? A recipient only
/// in Cc: is not; when the header fields do not tell, it is (PEC-RULES
/// §2.7: treat as primary and include the complete original).
fn is_primary(raw: &[u8], rcpt: &str) -> bool {
    let (head, _) = mime::split_header_body(raw);
    let fields = mime::header_fields(head);
    let in_field = |name: &str| {
        fields
            .iter()
            .filter(|f| f.is(name))
            .flat_map(|f| mime::addr_list(&f.unfolded()))
            .any(|a| a.eq_ignore_ascii_case(rcpt))
    };
    !in_field("Cc") || in_field("To")
}

/// `errore` of an avviso di mancata consegna from the store's answer.
fn errore_of(enhanced: &str) -> Errore {
    match enhanced {
        "5.1.1" | "5.1.0" | "5.1.6" => Errore::NoDest,
        "5.1.2" => Errore::NoDominio,
        _ => Errore::Altro,
    }
}

impl DeliveryPoint {
    /// Deliver and issue the receipts; one LMTP reply line per recipient.
    pub async fn handle(&self, mail_from: &str, rcpts: &[String], message: &[u8]) -> Vec<String> {
        let now = Utc::now();
        let outcomes = self.store.deliver(mail_from, rcpts, message).await;
        let msg = reader::read(message).ok();
        let mut replies = Vec::with_capacity(rcpts.len());
        for (i, rcpt) in rcpts.iter().enumerate() {
            let outcome = outcomes.get(i).cloned().unwrap_or(RcptOutcome::Temporary {
                code: 451,
                enhanced: "4.3.0".into(),
                text: "no answer from the mailbox store".into(),
            });
            let issued = match &msg {
                Some(m) => self.after_delivery(m, message, rcpt, &outcome, now).await,
                None => false,
            };
            tracing::info!(recipient = %rcpt, outcome = %outcome.reply_line(), "delivery");
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

    async fn after_delivery(
        &self,
        msg: &PecMessage,
        raw: &[u8],
        rcpt: &str,
        outcome: &RcptOutcome,
        now: DateTime<Utc>,
    ) -> bool {
        match msg.kind {
            MessageKind::BustaTrasporto => {}
            MessageKind::Ricevuta(t) => {
                // A receipt about one of our envelopes (also our own, for a
                // holder of ours writing to a holder of ours).
                if let (RcptOutcome::Delivered, Some(Ok(d))) = (outcome, &msg.daticert)
                    && let Err(e) =
                        record_receipt(self.state.as_ref(), d, t, now, self.retention_secs).await
                {
                    tracing::warn!(error = %e, pec_id = %d.identificativo, "receipt not recorded");
                }
                return false;
            }
            _ => return false,
        }
        let Some(Ok(d)) = &msg.daticert else {
            return false;
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
            RcptOutcome::Temporary { .. } => return false,
        };
        let key = format!(
            "consegna:{}",
            hex(&crypto::digest(
                DigestAlg::Sha256,
                format!("{}\0{}", d.identificativo, rcpt.to_ascii_lowercase()).as_bytes()
            ))
        );
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
            Err(e) => {
                // Delivered, but the state store is down: issue the receipt
                // anyway (a missing legal receipt is worse than a possible
                // duplicate on a later retry).
                tracing::warn!(error = %e, "state store down: receipt sent without the once-only claim");
                false
            }
        };
        if sent {
            tracing::info!(pec_id = %d.identificativo, recipient = %rcpt, "receipt already issued: not again");
            return true;
        }
        let local = d.identificativo.split('@').next().unwrap_or("id");
        let id = format!(
            "{}.{local}.{}@{}",
            ricevuta.tipo(),
            hex(&crypto::digest(
                DigestAlg::Sha1,
                rcpt.to_ascii_lowercase().as_bytes()
            ))
            .get(..16)
            .unwrap_or("r"),
            self.provider.domain
        );
        let signer = Signer {
            key: self.key.as_ref(),
            digest: self.digest,
        };
        let built = match build_ricevuta(
            &self.provider,
            &tx,
            &ricevuta,
            &Emission {
                time: now,
                message_id: id.clone(),
            },
            signer,
        ) {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                tracing::error!(error = %e, pec_id = %d.identificativo, recipient = %rcpt, "receipt could not be signed: kept for retry is impossible without a signature; logged");
                return false;
            }
        };
        let to = vec![tx.mittente.clone()];
        match self
            .injector
            .inject(&self.provider.service_address(), &to, &built)
            .await
        {
            Ok(()) => {
                tracing::info!(pec_id = %d.identificativo, recipient = %rcpt, kind = %ricevuta.tipo(), message_id = %id, to = %tx.mittente, "receipt injected");
            }
            Err(e) => {
                tracing::warn!(error = %e, pec_id = %d.identificativo, "receipt injection failed: kept in the outbox");
                if let Err(e) = outbox_put(&self.outbox, &id, &to[0], &built) {
                    tracing::error!(error = %e, pec_id = %d.identificativo, "receipt could not be kept in the outbox");
                    return false;
                }
            }
        }
        if let Err(e) = self.state.mark_receipt_sent(&key).await {
            tracing::warn!(error = %e, "receipt sent but not marked");
        }
        true
    }

    /// Retry the receipts kept in the outbox; returns how many left.
    pub async fn flush_outbox(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.outbox) else {
            return 0;
        };
        let mut sent = 0;
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

fn outbox_put(dir: &std::path::Path, id: &str, to: &str, message: &[u8]) -> std::io::Result<()> {
    let first = format!("X-Outbox-To: {to}\r\n");
    crate::keep::keep_sync(dir, id, &[first.as_bytes(), message]).map(|_| ())
}

#[async_trait::async_trait]
impl LmtpHandler for DeliveryPoint {
    async fn deliver(&self, mail_from: &str, rcpts: &[String], message: Vec<u8>) -> Vec<String> {
        self.handle(mail_from, rcpts, &message).await
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
