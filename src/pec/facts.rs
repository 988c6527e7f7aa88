//! The facts the rules read from a message's header block, parsed once:
//! sender and recipients for the formal checks (PEC-RULES §7.4), what the
//! transaction and the daticert carry (§1.6, §3.2), which fields an
//! envelope inherits (§1.5) and which only a provider may write (§2.12).

use crate::pec::Destinatario;
use crate::pec::build::Transaction;
use crate::pec::kind::{TipoDestinatario, TipoRicevuta};
use crate::pec::mime::{self, header_fields};

/// Header fields only a provider may write: removed from what a holder
/// submits, so a holder can never forge a receipt (PEC-RULES §2.12).
pub const PEC_MARKER_HEADERS: &[&str] = &[
    "X-Trasporto",
    "X-Ricevuta",
    "X-VerificaSicurezza",
    "X-Riferimento-Message-ID",
    "X-Mittente",
];

/// What only a provider writes, for mail that is not a holder's PEC
/// submission: the marker fields and `X-TipoRicevuta` (a holder chooses
/// the receipt kind with it; anyone else has no receipt to choose).
pub const PROVIDER_ONLY_HEADERS: &[&str] = &[
    "X-Trasporto",
    "X-Ricevuta",
    "X-VerificaSicurezza",
    "X-Riferimento-Message-ID",
    "X-Mittente",
    "X-TipoRicevuta",
];

/// What one header block says, read in one pass over its fields.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// The `From:` address; `None` when missing, unparsable or repeated.
    pub from: Option<String>,
    /// `To:` addresses, in order.
    pub to: Vec<String>,
    /// `To:` then `Cc:` addresses, in order of the fields.
    pub to_cc: Vec<String>,
    /// `Cc:` addresses.
    pub cc: Vec<String>,
    /// A non-empty `Bcc:` is present.
    pub bcc_used: bool,
    /// The `Reply-To:` address.
    pub reply_to: Option<String>,
    /// The subject, RFC 2047 words decoded ("" when missing).
    pub subject: String,
    /// The first non-empty `Message-ID:` without control characters, with
    /// angle brackets.
    pub msgid: Option<String>,
    /// `X-TipoRicevuta:` (completa when missing or unknown).
    pub ricevuta: TipoRicevuta,
    /// Names of the PEC marker fields present, as written.
    pub markers: Vec<String>,
    /// How many fields an envelope built around this header copies
    /// ([`is_inherited`] without the Message-ID).
    pub inherited: usize,
    /// The same with the Message-ID (the busta di anomalia keeps it).
    pub inherited_with_msgid: usize,
}

impl Facts {
    /// Read a header block (the fields, with or without the empty line
    /// that ends them).
    pub fn read(header: &[u8]) -> Facts {
        Self::read_into(header, None)
    }

    /// [`read`](Self::read), and the header block without the PEC marker
    /// fields in the same pass: every other well-formed field byte for
    /// byte, each ending in a line end (what an envelope carries of a
    /// holder's submission).
    pub fn read_clean(header: &[u8]) -> (Facts, Vec<u8>) {
        let mut clean = Vec::with_capacity(header.len());
        let f = Self::read_into(header, Some(&mut clean));
        (f, clean)
    }

    fn read_into(header: &[u8], mut clean: Option<&mut Vec<u8>>) -> Facts {
        let mut f = Facts::default();
        let mut from_count = 0;
        for h in header_fields(header) {
            let marker = PEC_MARKER_HEADERS.iter().any(|m| h.is(m));
            if let Some(out) = clean.as_deref_mut()
                && !marker
            {
                out.extend_from_slice(h.raw);
                if !h.raw.ends_with(b"\n") {
                    out.extend_from_slice(b"\r\n");
                }
            }
            if is_inherited(h.name, false) {
                f.inherited += 1;
            }
            if is_inherited(h.name, true) {
                f.inherited_with_msgid += 1;
            }
            if marker {
                f.markers.push(h.name.to_string());
                continue;
            }
            if h.is("From") {
                from_count += 1;
                f.from = mime::addr_spec(&h.unfolded());
            } else if h.is("To") {
                let l = mime::addr_list(&h.unfolded());
                f.to.extend(l.iter().cloned());
                f.to_cc.extend(l);
            } else if h.is("Cc") {
                let l = mime::addr_list(&h.unfolded());
                f.cc.extend(l.iter().cloned());
                f.to_cc.extend(l);
            } else if h.is("Bcc") {
                if !h.unfolded().trim().is_empty() {
                    f.bcc_used = true;
                }
            } else if h.is("Reply-To") {
                f.reply_to = mime::addr_spec(&h.unfolded());
            } else if h.is("Subject") {
                f.subject = mime::decode_words(&h.unfolded());
            } else if h.is("Message-ID") && f.msgid.is_none() {
                let v = h.unfolded();
                // Hostile input (tests/hostile.rs, a NUL inside a holder's
                // Message-ID): a value that cannot stand in a header field
                // made the envelope and every notice fail to build, a 4xx
                // for ever; it is no msgid (as an empty one is not).
                if !v.is_empty() && !v.contains(|c: char| c.is_control()) {
                    f.msgid = Some(if v.starts_with('<') {
                        v
                    } else {
                        format!("<{v}>")
                    });
                }
            } else if h.is("X-TipoRicevuta") {
                f.ricevuta = h.unfolded().parse().unwrap_or_default();
            }
        }
        if from_count > 1 {
            f.from = None;
        }
        f
    }

    /// Is `rcpt` a primary (`To:`) recipient? A recipient only in `Cc:` is
    /// not; when the fields do not tell, it is (PEC-RULES §2.7: treat as
    /// primary and include the complete original).
    pub fn is_primary(&self, rcpt: &str) -> bool {
        let has = |l: &[String]| l.iter().any(|a| a.eq_ignore_ascii_case(rcpt));
        !has(&self.cc) || has(&self.to)
    }

    /// The transaction these facts describe: the PEC id, the sender (the
    /// SMTP reverse path, which the formal checks tie to `From:`) and every
    /// `To:` / `Cc:` recipient typed by `tipo` (whose error stops it: a
    /// type is never guessed).
    pub fn transaction<E>(
        &self,
        identificativo: String,
        mittente: &str,
        mut tipo: impl FnMut(&str) -> Result<TipoDestinatario, E>,
    ) -> Result<Transaction, E> {
        let mut destinatari = Vec::with_capacity(self.to_cc.len());
        for a in &self.to_cc {
            destinatari.push(Destinatario {
                address: a.clone(),
                tipo: tipo(a)?,
            });
        }
        Ok(Transaction {
            identificativo,
            mittente: mittente.to_string(),
            destinatari,
            risposte: self
                .reply_to
                .clone()
                .unwrap_or_else(|| mittente.to_string()),
            oggetto: self.subject.clone(),
            msgid: self.msgid.clone(),
            ricevuta: self.ricevuta,
        })
    }
}

/// Is this an original header field an envelope keeps (PEC-RULES §1.5;
/// the busta di anomalia also keeps the Message-ID, §2.3)?
pub fn is_inherited(name: &str, keep_message_id: bool) -> bool {
    ["Received", "Return-Path", "To", "Cc", "Reply-To"]
        .iter()
        .any(|n| n.eq_ignore_ascii_case(name))
        || (keep_message_id && name.eq_ignore_ascii_case("Message-ID"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_headers_are_removed_and_the_rest_kept() {
        let h = b"From: a@x\r\nX-Ricevuta: accettazione\r\nx-trasporto: errore\r\n\tfolded\r\nSubject: s\r\n";
        let (f, clean) = Facts::read_clean(h);
        assert_eq!(clean, b"From: a@x\r\nSubject: s\r\n".to_vec());
        assert_eq!(f, Facts::read(h));
        assert_eq!(
            f.markers,
            vec!["X-Ricevuta".to_string(), "x-trasporto".to_string()]
        );
    }

    #[test]
    fn one_pass_reads_every_fact() {
        let h = b"Received: x\r\nFrom: A <a@x>\r\nTo: b@y, c@y\r\nCc: d@y\r\nReply-To: r@x\r\nSubject: =?UTF-8?Q?caf=C3=A8?=\r\nMessage-ID: id@x\r\nX-TipoRicevuta: breve\r\n";
        let f = Facts::read(h);
        assert_eq!(f.from.as_deref(), Some("a@x"));
        assert_eq!(f.to, vec!["b@y", "c@y"]);
        assert_eq!(f.to_cc, vec!["b@y", "c@y", "d@y"]);
        assert_eq!(f.reply_to.as_deref(), Some("r@x"));
        assert_eq!(f.subject, "cafè");
        assert_eq!(f.msgid.as_deref(), Some("<id@x>"));
        assert_eq!(f.ricevuta, TipoRicevuta::Breve);
        // Received, To, Cc, Reply-To; with the Message-ID one more
        assert_eq!((f.inherited, f.inherited_with_msgid), (4, 5));
        assert!(f.is_primary("B@y") && !f.is_primary("d@y") && f.is_primary("z@y"));
        assert!(!f.bcc_used);
        assert!(Facts::read(b"Bcc: e@y\r\n").bcc_used);
        assert_eq!(Facts::read(b"From: a@x\r\nFrom: b@x\r\n").from, None);
    }
}
