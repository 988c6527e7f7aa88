//! Builders for every message a provider emits (PEC-RULES §2): the busta di
//! trasporto, the busta di anomalia, and every ricevuta / avviso.
//!
//! Pure functions: the time, the identifiers and the key come in as
//! arguments, so every output is reproducible byte for byte. The signed
//! part is canonical CRLF and 7-bit except for the original message inside
//! `postacert.eml`, which is carried unchanged (declared `8bit` or `binary`
//! when it is not 7-bit, see README "Design choices").

use std::borrow::Cow;
use std::io::Write;

use chrono::{DateTime, Utc};

use crate::crypto::{self, CryptoError, DigestAlg, SigningKey};
use crate::pec::body::Body;
use crate::pec::breve;
use crate::pec::daticert::{DatiCert, Destinatario, rome_time};
use crate::pec::kind::{Errore, Tipo, TipoDestinatario, TipoRicevuta};
use crate::pec::mime::{self, base64_lines, canonicalize_crlf, header_fields, split_header_body};

/// Errors while building a message.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("signing failed: {0}")]
    Sign(#[from] CryptoError),
    #[error("invalid input: {0}")]
    Input(String),
    /// Reading the carried body or writing the output failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Who we are: the provider (gestore) that emits and signs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provider {
    /// `gestore-emittente` in daticert.xml, e.g. `ACME PEC S.p.A.`.
    pub name: String,
    /// The provider's mail domain: the service address is
    /// `posta-certificata@<domain>`.
    pub domain: String,
}

impl Provider {
    pub fn service_address(&self) -> String {
        format!("posta-certificata@{}", self.domain)
    }
}

/// The facts of one PEC transaction, shared by the envelope and every
/// receipt about it (PEC-RULES §1.6, §3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The PEC msgid, without angle brackets.
    pub identificativo: String,
    /// Original sender (SMTP reverse path = `From:` address).
    pub mittente: String,
    /// Every `To:` and `Cc:` recipient with its type.
    pub destinatari: Vec<Destinatario>,
    /// The original `Reply-To:`, or the sender when there was none.
    pub risposte: String,
    /// The original subject, decoded.
    pub oggetto: String,
    /// The client's Message-ID, with angle brackets.
    pub msgid: Option<String>,
    /// The delivery receipt type asked for.
    pub ricevuta: TipoRicevuta,
}

impl Transaction {
    /// The transaction facts a received daticert.xml carries (for the
    /// receipts a reception or delivery point issues about it).
    pub fn from_daticert(d: &DatiCert) -> Transaction {
        Transaction {
            identificativo: d.identificativo.clone(),
            mittente: d.mittente.clone(),
            destinatari: d.destinatari.clone(),
            risposte: d.risposte.clone(),
            oggetto: d.oggetto.clone().unwrap_or_default(),
            msgid: d.msgid.clone(),
            ricevuta: d.ricevuta.unwrap_or_default(),
        }
    }
}

/// How to sign.
#[derive(Clone, Copy)]
pub struct Signer<'a> {
    pub key: &'a dyn SigningKey,
    pub digest: DigestAlg,
}

/// The time and identity of the message being built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Emission {
    /// Event time: `Date:`, daticert `data`, the text, the signing time.
    pub time: DateTime<Utc>,
    /// Message-ID of this message, without angle brackets. For a busta di
    /// trasporto it is the `identificativo`.
    pub message_id: String,
}

/// A built message: its header fields (each complete with its CRLF) and its
/// body. `to_bytes` gives the whole message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltMessage {
    pub headers: Vec<String>,
    pub body: Vec<u8>,
}

impl BuiltMessage {
    pub fn to_bytes(&self) -> Vec<u8> {
        let hlen: usize = self.headers.iter().map(String::len).sum();
        let mut out = Vec::with_capacity(hlen + 2 + self.body.len());
        for h in &self.headers {
            out.extend_from_slice(h.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// Receipts and notices (everything but the two envelopes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ricevuta<'a> {
    /// Ricevuta di accettazione (§2.4), to the sender.
    Accettazione,
    /// Avviso di non accettazione for a formal exception (§2.5).
    NonAccettazione { reason: String },
    /// Avviso di non accettazione per virus (§2.5).
    NonAccettazioneVirus { virus: String },
    /// Ricevuta di presa in carico (§2.6), to the sending provider's
    /// `mailReceipt`, covering `ricezione` recipients.
    PresaInCarico {
        mail_receipt: String,
        ricezione: Vec<String>,
    },
    /// Ricevuta di avvenuta consegna (§2.7) for `consegna`. `original` is
    /// the original message as carried in the envelope's `postacert.eml`;
    /// `tipo` is the variant for this recipient (see [`receipt_variant`]).
    AvvenutaConsegna {
        consegna: String,
        tipo: TipoRicevuta,
        original: &'a [u8],
    },
    /// Avviso di mancata consegna (§2.8).
    ErroreConsegna {
        consegna: String,
        errore: Errore,
        errore_esteso: String,
    },
    /// Avviso di mancata consegna per virus (§2.11).
    ErroreConsegnaVirus { consegna: String, virus: String },
    /// Preavviso (12 h, `finale = false`) or avviso (24 h, `finale = true`)
    /// di mancata consegna per superamento dei tempi massimi (§2.9).
    PreavvisoErroreConsegna { consegna: String, finale: bool },
    /// Avviso di rilevazione virus (§2.10), to the sending provider.
    RilevazioneVirus {
        mail_receipt: String,
        consegna: String,
        virus: String,
    },
}

impl Ricevuta<'_> {
    pub fn tipo(&self) -> Tipo {
        match self {
            Ricevuta::Accettazione => Tipo::Accettazione,
            Ricevuta::NonAccettazione { .. } | Ricevuta::NonAccettazioneVirus { .. } => {
                Tipo::NonAccettazione
            }
            Ricevuta::PresaInCarico { .. } => Tipo::PresaInCarico,
            Ricevuta::AvvenutaConsegna { .. } => Tipo::AvvenutaConsegna,
            Ricevuta::ErroreConsegna { .. } | Ricevuta::ErroreConsegnaVirus { .. } => {
                Tipo::ErroreConsegna
            }
            Ricevuta::PreavvisoErroreConsegna { .. } => Tipo::PreavvisoErroreConsegna,
            Ricevuta::RilevazioneVirus { .. } => Tipo::RilevazioneVirus,
        }
    }

    /// The subject prefix (PEC-RULES §2.1).
    pub fn subject_prefix(&self) -> &'static str {
        match self {
            Ricevuta::Accettazione => "ACCETTAZIONE: ",
            Ricevuta::NonAccettazione { .. } => "AVVISO DI NON ACCETTAZIONE: ",
            Ricevuta::NonAccettazioneVirus { .. } => "AVVISO DI NON ACCETTAZIONE PER VIRUS: ",
            Ricevuta::PresaInCarico { .. } => "PRESA IN CARICO: ",
            Ricevuta::AvvenutaConsegna { .. } => "CONSEGNA: ",
            Ricevuta::ErroreConsegna { .. } => "AVVISO DI MANCATA CONSEGNA: ",
            Ricevuta::ErroreConsegnaVirus { .. } => "AVVISO DI MANCATA CONSEGNA PER VIRUS: ",
            Ricevuta::PreavvisoErroreConsegna { .. } => {
                "AVVISO DI MANCATA CONSEGNA PER SUP. TEMPO MASSIMO: "
            }
            Ricevuta::RilevazioneVirus { .. } => "PROBLEMA DI SICUREZZA: ",
        }
    }

    fn errore(&self) -> Errore {
        match self {
            Ricevuta::NonAccettazione { .. } => Errore::Altro,
            Ricevuta::NonAccettazioneVirus { .. }
            | Ricevuta::ErroreConsegnaVirus { .. }
            | Ricevuta::RilevazioneVirus { .. } => Errore::Virus,
            Ricevuta::ErroreConsegna { errore, .. } => *errore,
            Ricevuta::PreavvisoErroreConsegna { .. } => Errore::Altro,
            _ => Errore::Nessuno,
        }
    }

    fn virus_flag(&self) -> bool {
        matches!(
            self,
            Ricevuta::NonAccettazioneVirus { .. } | Ricevuta::ErroreConsegnaVirus { .. }
        )
    }
}

/// The delivery receipt variant for one recipient (PEC-RULES §2.7): Cc
/// recipients always get `sintetica`; primary (or undecidable) ones get
/// what the sender asked for.
pub fn receipt_variant(asked: TipoRicevuta, primary: bool) -> TipoRicevuta {
    if primary {
        asked
    } else {
        TipoRicevuta::Sintetica
    }
}

fn daticert(
    provider: &Provider,
    tx: &Transaction,
    tipo: Tipo,
    errore: Errore,
    time: DateTime<Utc>,
) -> DatiCert {
    DatiCert {
        tipo,
        errore,
        mittente: tx.mittente.clone(),
        destinatari: tx.destinatari.clone(),
        risposte: tx.risposte.clone(),
        oggetto: Some(tx.oggetto.clone()),
        gestore_emittente: provider.name.clone(),
        data: rome_time(time),
        identificativo: tx.identificativo.clone(),
        msgid: tx.msgid.clone(),
        ricevuta: None,
        consegna: None,
        ricezione: Vec::new(),
        errore_esteso: None,
    }
}

fn date_header(time: DateTime<Utc>) -> String {
    format!("Date: {}\r\n", rome_time(time).to_rfc2822())
}

fn when(time: DateTime<Utc>) -> String {
    let t = rome_time(time);
    format!(
        "Il giorno {} alle ore {} ({})",
        t.format("%d/%m/%Y"),
        t.format("%H:%M:%S"),
        t.format("%z")
    )
}

fn kind_label(t: TipoDestinatario) -> &'static str {
    match t {
        TipoDestinatario::Certificato => "posta certificata",
        TipoDestinatario::Esterno => "posta ordinaria",
    }
}

fn recipient_lines(tx: &Transaction) -> String {
    let mut s = String::new();
    for d in &tx.destinatari {
        s.push_str(&format!("{} (\"{}\")\n", d.address, kind_label(d.tipo)));
    }
    s
}

/// The readable text of a receipt (Italian, as real providers write it).
fn receipt_text(r: &Ricevuta<'_>, tx: &Transaction, time: DateTime<Utc>) -> String {
    let w = when(time);
    let ogg = &tx.oggetto;
    let m = &tx.mittente;
    let id = &tx.identificativo;
    match r {
        Ricevuta::Accettazione => format!(
            "Ricevuta di accettazione\n\n{w} il messaggio\n\"{ogg}\" proveniente da \"{m}\"\ned indirizzato a:\n{}è stato accettato dal sistema ed inoltrato.\nIdentificativo messaggio: {id}\n\nL'allegato daticert.xml contiene informazioni di servizio sulla trasmissione.\n",
            recipient_lines(tx)
        ),
        Ricevuta::NonAccettazione { reason } => format!(
            "Avviso di non accettazione\n\n{w} nel messaggio\n\"{ogg}\" proveniente da \"{m}\"\ned indirizzato a:\n{}è stato rilevato un problema che ne impedisce l'accettazione\na causa di {reason}.\nIl messaggio non è stato accettato.\nIdentificativo messaggio: {id}\n",
            recipient_lines(tx)
        ),
        Ricevuta::NonAccettazioneVirus { virus } => format!(
            "Avviso di non accettazione per virus\n\n{w} nel messaggio\n\"{ogg}\" proveniente da \"{m}\"\ned indirizzato a:\n{}è stato rilevato un problema di sicurezza ({virus}).\nIl messaggio non è stato accettato.\nIdentificativo messaggio: {id}\n",
            recipient_lines(tx)
        ),
        Ricevuta::PresaInCarico { ricezione, .. } => format!(
            "Ricevuta di presa in carico\n\n{w} il messaggio\n\"{ogg}\" proveniente da \"{m}\"\ned indirizzato a:\n{}è stato accettato dal sistema.\nIdentificativo messaggio: {id}\n",
            ricezione
                .iter()
                .map(|r| format!("{r}\n"))
                .collect::<String>()
        ),
        Ricevuta::AvvenutaConsegna { consegna, tipo, .. } => {
            let note = match tipo {
                TipoRicevuta::Completa => {
                    "Il messaggio originale è incluso in allegato (postacert.eml).\n"
                }
                TipoRicevuta::Breve => {
                    "Il messaggio originale è incluso in allegato (postacert.eml), con gli allegati sostituiti dalla loro impronta (SHA-1).\n"
                }
                TipoRicevuta::Sintetica => "",
            };
            format!(
                "Ricevuta di avvenuta consegna\n\n{w} il messaggio\n\"{ogg}\" proveniente da \"{m}\"\ned indirizzato a \"{consegna}\"\nè stato correttamente consegnato al destinatario.\nIdentificativo messaggio: {id}\n{note}"
            )
        }
        Ricevuta::ErroreConsegna {
            consegna,
            errore_esteso,
            ..
        } => format!(
            "Avviso di mancata consegna\n\n{w} nel messaggio\n\"{ogg}\" proveniente da \"{m}\"\ne destinato all'utente \"{consegna}\"\nè stato rilevato il seguente errore: {errore_esteso}\nIl messaggio è stato rifiutato dal sistema.\nIdentificativo messaggio: {id}\n"
        ),
        Ricevuta::ErroreConsegnaVirus { consegna, virus } => format!(
            "Avviso di mancata consegna per virus\n\n{w} nel messaggio\n\"{ogg}\" proveniente da \"{m}\"\ne destinato all'utente \"{consegna}\"\nè stato rilevato un problema di sicurezza ({virus}).\nIl messaggio non è stato consegnato.\nIdentificativo messaggio: {id}\n"
        ),
        Ricevuta::PreavvisoErroreConsegna { consegna, finale } => {
            if *finale {
                format!(
                    "Avviso di mancata consegna per superamento dei tempi massimi\n\n{w} il messaggio\n\"{ogg}\" proveniente da \"{m}\"\ned indirizzato a \"{consegna}\"\nnon è stato consegnato nelle 24 ore successive al suo invio.\nLa transazione è considerata conclusa con esito negativo.\nIdentificativo messaggio: {id}\n"
                )
            } else {
                format!(
                    "Preavviso di mancata consegna\n\n{w} il messaggio\n\"{ogg}\" proveniente da \"{m}\"\ned indirizzato a \"{consegna}\"\nnon è stato consegnato nelle prime 12 ore successive al suo invio.\nIl sistema invierà un ulteriore avviso se nelle successive 12 ore\nnon riceverà conferma della consegna.\nIdentificativo messaggio: {id}\n"
                )
            }
        }
        Ricevuta::RilevazioneVirus {
            consegna, virus, ..
        } => format!(
            "Avviso di rilevazione virus\n\n{w} nel messaggio\n\"{ogg}\" proveniente da \"{m}\"\ne destinato all'utente \"{consegna}\"\nè stato rilevato un problema di sicurezza ({virus}).\nIl messaggio non è stato inoltrato e la trasmissione non può essere completata.\nIdentificativo messaggio: {id}\n"
        ),
    }
}

/// A text/plain part: ISO-8859-1 when the text fits, else UTF-8;
/// quoted-printable.
fn text_part(text: &str) -> Vec<u8> {
    let (charset, bytes) = match mime::to_latin1(text) {
        Some(b) => ("iso-8859-1", b),
        None => ("utf-8", text.as_bytes().to_vec()),
    };
    let mut out = format!(
        "Content-Type: text/plain; charset=\"{charset}\"\r\nContent-Disposition: inline\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    )
    .into_bytes();
    out.extend_from_slice(mime::quoted_printable(&bytes).as_bytes());
    out
}

fn daticert_part(d: &DatiCert) -> Vec<u8> {
    let mut out = b"Content-Type: application/xml; name=\"daticert.xml\"\r\nContent-Disposition: inline; filename=\"daticert.xml\"\r\nContent-Transfer-Encoding: base64\r\n\r\n".to_vec();
    let b64 = base64_lines(d.to_xml().as_bytes());
    out.extend_from_slice(b64.trim_end_matches("\r\n").as_bytes());
    out
}

fn check_header_value(what: &str, v: &str) -> Result<(), BuildError> {
    if v.contains(['\r', '\n', '\0']) {
        return Err(BuildError::Input(format!("{what} contains a line break")));
    }
    Ok(())
}

fn angle(id: &str) -> String {
    let t = id.trim();
    if t.starts_with('<') && t.ends_with('>') {
        t.to_string()
    } else {
        format!("<{t}>")
    }
}

/// Build and sign a receipt or notice about `tx`, in memory.
pub fn build_ricevuta(
    provider: &Provider,
    tx: &Transaction,
    ricevuta: &Ricevuta<'_>,
    emission: &Emission,
    signer: Signer<'_>,
) -> Result<BuiltMessage, BuildError> {
    let mut body = Vec::new();
    let headers = write_ricevuta(provider, tx, ricevuta, emission, signer, &mut body)?;
    Ok(BuiltMessage { headers, body })
}

/// [`build_ricevuta`] with the body written to `out` (any `io::Write`: the
/// daemon passes a spool file); returns the header fields. An avvenuta
/// consegna completa of a 100 MB message carries it whole, streamed from
/// `original` (which may be a mapped spool file) into `out`.
pub fn write_ricevuta<W: Write + ?Sized>(
    provider: &Provider,
    tx: &Transaction,
    ricevuta: &Ricevuta<'_>,
    emission: &Emission,
    signer: Signer<'_>,
    out: &mut W,
) -> Result<Vec<String>, BuildError> {
    check_header_value("message id", &emission.message_id)?;
    check_header_value("sender", &tx.mittente)?;
    let time = emission.time;
    let mut d = daticert(provider, tx, ricevuta.tipo(), ricevuta.errore(), time);
    let to = match ricevuta {
        Ricevuta::PresaInCarico { mail_receipt, .. }
        | Ricevuta::RilevazioneVirus { mail_receipt, .. } => mail_receipt.clone(),
        _ => tx.mittente.clone(),
    };
    check_header_value("recipient", &to)?;
    let mut postacert: Option<Cow<'_, [u8]>> = None;
    match ricevuta {
        Ricevuta::AvvenutaConsegna {
            consegna,
            tipo,
            original,
        } => {
            d.ricevuta = Some(*tipo);
            d.consegna = Some(consegna.clone());
            postacert = match tipo {
                TipoRicevuta::Completa => Some(canonicalize_crlf(original)),
                TipoRicevuta::Breve => Some(Cow::Owned(breve::hash_attachments(
                    &canonicalize_crlf(original),
                ))),
                TipoRicevuta::Sintetica => None,
            };
        }
        Ricevuta::ErroreConsegna {
            consegna,
            errore_esteso,
            ..
        } => {
            d.consegna = Some(consegna.clone());
            d.errore_esteso = Some(errore_esteso.clone());
        }
        Ricevuta::ErroreConsegnaVirus { consegna, virus }
        | Ricevuta::RilevazioneVirus {
            consegna, virus, ..
        } => {
            d.consegna = Some(consegna.clone());
            d.errore_esteso = Some(virus.clone());
        }
        Ricevuta::PreavvisoErroreConsegna { consegna, .. } => {
            d.consegna = Some(consegna.clone());
        }
        Ricevuta::PresaInCarico { ricezione, .. } => {
            d.ricezione = ricezione.clone();
        }
        Ricevuta::NonAccettazione { reason } => d.errore_esteso = Some(reason.clone()),
        Ricevuta::NonAccettazioneVirus { virus } => d.errore_esteso = Some(virus.clone()),
        Ricevuta::Accettazione => {}
    }

    let text = text_part(&receipt_text(ricevuta, tx, time));
    let daticert = daticert_part(&d);
    let seed = format!("{}/{}", emission.message_id, ricevuta.tipo());
    let ct = signed_envelope_body(
        &seed,
        &[&text, &daticert],
        postacert.as_deref().map(|eml| (&[][..], eml)),
        &[],
        time,
        signer,
        out,
    )?;

    let mut headers = Vec::new();
    headers.push(format!("X-Ricevuta: {}\r\n", ricevuta.tipo()));
    if ricevuta.virus_flag() {
        headers.push("X-VerificaSicurezza: errore\r\n".to_string());
    }
    if let Ricevuta::RilevazioneVirus { .. } = ricevuta {
        headers.push(format!("X-Mittente: {}\r\n", tx.mittente));
    }
    headers.push(date_header(time));
    headers.push(mime::unstructured_header(
        "Subject",
        &format!("{}{}", ricevuta.subject_prefix(), tx.oggetto),
    ));
    headers.push(format!("From: {}\r\n", provider.service_address()));
    headers.push(format!("To: {to}\r\n"));
    headers.push(format!("Message-ID: {}\r\n", angle(&emission.message_id)));
    if let Some(m) = &tx.msgid {
        check_header_value("msgid", m)?;
        headers.push(format!("X-Riferimento-Message-ID: {}\r\n", angle(m)));
    }
    headers.push("MIME-Version: 1.0\r\n".to_string());
    headers.push(ct);
    Ok(headers)
}

/// The original with the Message-ID handling of PEC-RULES §1.6: its
/// `Message-ID:` becomes the PEC msgid and the client's value moves to
/// `X-Riferimento-Message-ID:`; everything else byte for byte (CRLF).
pub fn rewrite_original(original: &[u8], identificativo: &str) -> Vec<u8> {
    let canon = canonicalize_crlf(original);
    let (head, body) = split_header_body(&canon);
    let mut out = Vec::with_capacity(canon.len() + 200);
    let new_id = format!("Message-ID: {}\r\n", angle(identificativo));
    let mut done = false;
    for f in header_fields(head) {
        if f.is("Message-ID") && !done {
            out.extend_from_slice(new_id.as_bytes());
            out.extend_from_slice(
                format!("X-Riferimento-Message-ID:{}\r\n", as_str(f.value)).as_bytes(),
            );
            done = true;
        } else if f.is("Message-ID") {
            // a second Message-ID field is dropped: one identity per message
        } else {
            out.extend_from_slice(f.raw);
        }
    }
    if !done {
        out.extend_from_slice(new_id.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

fn as_str(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

/// The original Message-ID of a message, with angle brackets.
pub fn original_msgid(original: &[u8]) -> Option<String> {
    let (head, _) = split_header_body(original);
    mime::header_value(&header_fields(head), "Message-ID")
        .filter(|v| !v.is_empty())
        .map(|v| angle(&v))
}

/// Header fields an envelope keeps from the original (PEC-RULES §1.5).
fn inherited(original: &[u8], keep_message_id: bool) -> (Vec<&[u8]>, bool) {
    let (head, _) = split_header_body(original);
    let mut has_reply_to = false;
    let mut out = Vec::new();
    for f in header_fields(head) {
        let keep = f.is("Received")
            || f.is("Return-Path")
            || f.is("To")
            || f.is("Cc")
            || (keep_message_id && f.is("Message-ID"));
        if f.is("Reply-To") {
            has_reply_to = true;
            out.push(f.raw);
        } else if keep {
            out.push(f.raw);
        }
    }
    (out, has_reply_to)
}

fn raw_fields_to_strings(fields: Vec<&[u8]>) -> Vec<String> {
    fields
        .into_iter()
        .map(|r| {
            let mut s = String::from_utf8_lossy(r).into_owned();
            if !s.ends_with("\r\n") {
                s.push_str("\r\n");
            }
            s
        })
        .collect()
}

/// Build and sign the busta di trasporto (PEC-RULES §2.2) around
/// `original`, the message as the holder submitted it, in memory. `tx.msgid`
/// should be [`original_msgid`] of it. Same bytes as
/// [`write_busta_trasporto`].
pub fn build_busta_trasporto(
    provider: &Provider,
    tx: &Transaction,
    original: &[u8],
    time: DateTime<Utc>,
    signer: Signer<'_>,
) -> Result<BuiltMessage, BuildError> {
    let canon = canonicalize_crlf(original);
    let (header, body) = split_header_body(&canon);
    let mut out = Vec::new();
    let headers = write_busta_trasporto(provider, tx, header, body, time, signer, &mut out)?;
    Ok(BuiltMessage { headers, body: out })
}

/// Where the `postacert.eml` part ends: the original's rewritten header
/// (with the empty line) and how much of the body it carries, the final
/// CRLF of the original being dropped (it becomes the CRLF before the next
/// boundary).
fn eml_extent<B: Body + ?Sized>(eml_head: &[u8], body: &B) -> Result<(usize, u64), BuildError> {
    if body.is_empty() {
        return Ok((eml_head.len().saturating_sub(2), 0));
    }
    if body.ends_with(b"\r\n")? {
        return Ok((eml_head.len(), body.len() - 2));
    }
    Ok((eml_head.len(), body.len()))
}

/// [`transfer_encoding`] over pieces, in order.
#[derive(Default)]
struct TeScan {
    col: usize,
    eight: bool,
    binary: bool,
}

impl TeScan {
    fn feed(&mut self, data: &[u8]) {
        if self.binary {
            return;
        }
        for &b in data {
            match b {
                0 => {
                    self.binary = true;
                    return;
                }
                b'\n' => self.col = 0,
                _ => {
                    self.col += 1;
                    if self.col > 998 {
                        self.binary = true;
                        return;
                    }
                    if b >= 0x80 {
                        self.eight = true;
                    }
                }
            }
        }
    }

    fn result(&self) -> &'static str {
        if self.binary {
            "binary"
        } else if self.eight {
            "8bit"
        } else {
            "7bit"
        }
    }
}

/// Which of `needles` occur in `body[..end]` (one pass; matches across
/// the pieces are found).
fn body_contains<B: Body + ?Sized>(
    body: Option<&B>,
    end: u64,
    needles: &[Vec<u8>],
) -> Result<Vec<bool>, BuildError> {
    let mut found = vec![false; needles.len()];
    let Some(body) = body else {
        return Ok(found);
    };
    let keep = needles
        .iter()
        .map(Vec::len)
        .max()
        .unwrap_or(1)
        .saturating_sub(1);
    let mut carry: Vec<u8> = Vec::new();
    body.for_range::<BuildError>(0, end, |piece| {
        let mut window = std::mem::take(&mut carry);
        window.extend_from_slice(piece);
        for (i, n) in needles.iter().enumerate() {
            if !found[i] && contains(&window, n) {
                found[i] = true;
            }
        }
        let from = window.len().saturating_sub(keep);
        carry = window.split_off(from);
        Ok(())
    })?;
    Ok(found)
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    // The needles start with "--": look at each '-' only.
    let first = needle[0];
    let mut i = 0;
    while i + needle.len() <= hay.len() {
        match hay[i..=hay.len() - needle.len()]
            .iter()
            .position(|&b| b == first)
        {
            Some(p) => {
                let at = i + p;
                if &hay[at..at + needle.len()] == needle {
                    return true;
                }
                i = at + 1;
            }
            None => return false,
        }
    }
    false
}

fn boundary_text(seed: &str, level: u8, n: u32) -> String {
    let h = crypto::digest(DigestAlg::Sha1, format!("{seed}/{level}/{n}").as_bytes());
    let hex: String = h.iter().take(12).map(|b| format!("{b:02X}")).collect();
    format!("----=_PEC_{level}_{hex}")
}

/// The two boundaries of the busta di trasporto (level 1: multipart/signed,
/// level 2: multipart/mixed), the same as [`boundary`] chooses: the first
/// candidate of each level whose delimiter occurs in none of `small` nor in
/// `body[..end]`.
fn envelope_boundaries<B: Body + ?Sized>(
    seed: &str,
    small: &[&[u8]],
    body: Option<&B>,
    end: u64,
) -> Result<(String, String), BuildError> {
    let mut n = [0u32; 2];
    let mut done: [Option<String>; 2] = [None, None];
    // Each round is one pass over the body; a delimiter found in an
    // original is a one-in-2^96 event unless crafted, and the candidates
    // depend on the PEC id, which the holder does not know in advance.
    for _round in 0..64 {
        let mut cands: Vec<(usize, String)> = Vec::new();
        for lvl in 0..2 {
            if done[lvl].is_none() {
                let b = boundary_text(seed, lvl as u8 + 1, n[lvl]);
                cands.push((lvl, b));
            }
        }
        if cands.is_empty() {
            break;
        }
        let needles: Vec<Vec<u8>> = cands
            .iter()
            .map(|(_, b)| format!("--{b}").into_bytes())
            .collect();
        let in_body = body_contains(body, end, &needles)?;
        for (((lvl, b), needle), hit) in cands.into_iter().zip(&needles).zip(in_body) {
            if hit || small.iter().any(|p| contains(p, needle)) {
                n[lvl] += 1;
            } else {
                done[lvl] = Some(b);
            }
        }
    }
    match done {
        [Some(b1), Some(b2)] => Ok((b1, b2)),
        _ => Err(BuildError::Input(
            "the original contains every candidate MIME boundary".into(),
        )),
    }
}

/// Writes the output and hashes what belongs to the signed entity.
struct Sink<'a, W: Write + ?Sized> {
    out: &'a mut W,
    hasher: &'a mut crypto::ContentHasher,
}

impl<W: Write + ?Sized> Sink<'_, W> {
    fn signed(&mut self, data: &[u8]) -> Result<(), BuildError> {
        self.hasher.update(data)?;
        self.out.write_all(data)?;
        Ok(())
    }
}

/// [`build_busta_trasporto`] of an original held as its header block
/// (without the empty line) and a body read in pieces (memory or spool
/// file), the envelope's body written to `out`; returns the header fields.
/// The original is read three times (encoding and boundary checks, then
/// hashing and copying) and never held whole in memory. Blocking I/O for
/// bodies on disk: call it off the async workers.
pub fn write_busta_trasporto<B: Body + ?Sized, W: Write + ?Sized>(
    provider: &Provider,
    tx: &Transaction,
    header: &[u8],
    body: &B,
    time: DateTime<Utc>,
    signer: Signer<'_>,
    out: &mut W,
) -> Result<Vec<String>, BuildError> {
    check_header_value("identificativo", &tx.identificativo)?;
    check_header_value("sender", &tx.mittente)?;
    let header = canonicalize_crlf(header);
    let mut head_msg = header.to_vec();
    head_msg.extend_from_slice(b"\r\n");
    let eml_head = rewrite_original(&head_msg, &tx.identificativo);

    let mut d = daticert(provider, tx, Tipo::PostaCertificata, Errore::Nessuno, time);
    d.ricevuta = Some(tx.ricevuta);
    let text = format!(
        "Messaggio di posta certificata\n\n{} il messaggio\n\"{}\" è stato inviato da \"{}\"\nindirizzato a:\n{}Il messaggio originale è incluso in allegato.\nIdentificativo messaggio: {}\n",
        when(time),
        tx.oggetto,
        tx.mittente,
        tx.destinatari
            .iter()
            .map(|d| format!("{}\n", d.address))
            .collect::<String>(),
        tx.identificativo
    );
    let ct = signed_envelope_body(
        &tx.identificativo,
        &[&text_part(&text)],
        Some((&eml_head, body)),
        &[&daticert_part(&d)],
        time,
        signer,
        out,
    )?;

    let (keep, has_reply_to) = inherited(&head_msg, false);
    let mut headers = raw_fields_to_strings(keep);
    headers.push("X-Trasporto: posta-certificata\r\n".to_string());
    headers.push(date_header(time));
    headers.push(mime::unstructured_header(
        "Subject",
        &format!("POSTA CERTIFICATA: {}", tx.oggetto),
    ));
    headers.push(from_per_conto_di(&tx.mittente, provider));
    if !has_reply_to {
        headers.push(format!("Reply-To: {}\r\n", tx.mittente));
    }
    headers.push(format!("Message-ID: {}\r\n", angle(&tx.identificativo)));
    if let Some(m) = &tx.msgid {
        check_header_value("msgid", m)?;
        headers.push(format!("X-Riferimento-Message-ID: {}\r\n", angle(m)));
    }
    headers.push(format!("X-TipoRicevuta: {}\r\n", tx.ricevuta));
    headers.push("MIME-Version: 1.0\r\n".to_string());
    headers.push(ct);
    Ok(headers)
}

/// The body of a signed PEC message (busta di trasporto, busta di
/// anomalia, receipts), streamed into `out`: `multipart/signed` around a
/// `multipart/mixed` of the parts `before`, the attached message as
/// `postacert.eml` when there is one (`eml`: its header block with the
/// empty line, then its body) and the parts `after`; then the CMS
/// signature of that entity. Returns the `Content-Type` header field.
fn signed_envelope_body<B: Body + ?Sized, W: Write + ?Sized>(
    seed: &str,
    before: &[&[u8]],
    eml: Option<(&[u8], &B)>,
    after: &[&[u8]],
    time: DateTime<Utc>,
    signer: Signer<'_>,
    out: &mut W,
) -> Result<String, BuildError> {
    let (eml_head, body, body_end) = match eml {
        Some((head, body)) => {
            let (head_len, body_end) = eml_extent(head, body)?;
            (&head[..head_len], Some(body), body_end)
        }
        None => (&[][..], None, 0),
    };
    let mut cte = "7bit";
    let mut msg_head = String::new();
    if let Some(body) = body {
        let mut te = TeScan::default();
        te.feed(eml_head);
        body.for_range::<BuildError>(0, body_end, |c| {
            te.feed(c);
            Ok(())
        })?;
        cte = te.result();
        msg_head = format!(
            "Content-Type: message/rfc822; name=\"postacert.eml\"\r\nContent-Disposition: inline; filename=\"postacert.eml\"\r\nContent-Transfer-Encoding: {cte}\r\n\r\n"
        );
    }
    let mut small: Vec<&[u8]> = before.to_vec();
    small.extend_from_slice(&[msg_head.as_bytes(), eml_head]);
    small.extend_from_slice(after);
    let (b1, b2) = envelope_boundaries(seed, &small, body, body_end)?;

    let mut hasher = crypto::ContentHasher::new(signer.digest)?;
    let mut sink = Sink {
        out: &mut *out,
        hasher: &mut hasher,
    };
    sink.out
        .write_all(format!("This is an S/MIME signed message\r\n\r\n--{b1}\r\n").as_bytes())?;
    let mut entity_head = format!("Content-Type: multipart/mixed; boundary=\"{b2}\"\r\n");
    if cte != "7bit" {
        entity_head.push_str(&format!("Content-Transfer-Encoding: {cte}\r\n"));
    }
    entity_head.push_str("\r\nThis is a multi-part message in MIME format.\r\n");
    let sep = format!("\r\n--{b2}\r\n");
    sink.signed(entity_head.as_bytes())?;
    for p in before {
        sink.signed(sep.as_bytes())?;
        sink.signed(p)?;
    }
    if let Some(body) = body {
        sink.signed(sep.as_bytes())?;
        sink.signed(msg_head.as_bytes())?;
        sink.signed(eml_head)?;
        body.for_range::<BuildError>(0, body_end, |c| sink.signed(c))?;
    }
    for p in after {
        sink.signed(sep.as_bytes())?;
        sink.signed(p)?;
    }
    sink.signed(format!("\r\n--{b2}--\r\n").as_bytes())?;

    let digest = hasher.finish()?;
    let p7s = crypto::cms_sign::sign_detached(signer.key, signer.digest, &digest, time.into())?;
    out.write_all(format!("\r\n--{b1}\r\nContent-Type: application/x-pkcs7-signature; name=\"smime.p7s\"\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"smime.p7s\"\r\n\r\n").as_bytes())?;
    out.write_all(base64_lines(&p7s).as_bytes())?;
    out.write_all(format!("--{b1}--\r\n").as_bytes())?;

    let ct = format!(
        "Content-Type: multipart/signed; protocol=\"application/x-pkcs7-signature\";\r\n micalg=\"{}\"; boundary=\"{b1}\"\r\n",
        signer.digest.micalg()
    );
    Ok(ct)
}

/// A plain text signed by the provider (S/MIME `multipart/signed`, the
/// text as a base64 `text/plain; charset=UTF-8` part): what the provider
/// issues that is not a PEC message, e.g. the holder's extract of the
/// message log. `to` is the holder's address; ASCII `subject`.
pub fn build_signed_text(
    provider: &Provider,
    to: &str,
    subject: &str,
    text: &str,
    emission: &Emission,
    signer: Signer<'_>,
) -> Result<Vec<u8>, BuildError> {
    if !subject.is_ascii() || subject.contains(['\r', '\n']) || to.contains(['\r', '\n', '<', '>'])
    {
        return Err(BuildError::Input(
            "subject or address not fit for a header".into(),
        ));
    }
    let entity = format!(
        "Content-Type: text/plain; charset=UTF-8\r\nContent-Transfer-Encoding: base64\r\n\r\n{}",
        base64_lines(text.as_bytes())
    );
    // the signed content ends before the CRLF that precedes the boundary
    let signed = entity.trim_end_matches("\r\n");
    let p7s = crypto::cms_sign::sign_content(
        signer.key,
        signer.digest,
        signed.as_bytes(),
        emission.time.into(),
    )?;
    let b = format!(
        "----=_PEC_X_{}",
        hex::encode_upper(&crypto::digest(DigestAlg::Sha1, emission.message_id.as_bytes())[..12])
    );
    let mut out = String::new();
    out.push_str(&format!(
        "From: {} <{}>\r\n",
        mime::quote_display_name(&provider.name),
        provider.service_address()
    ));
    out.push_str(&format!("To: <{to}>\r\nSubject: {subject}\r\n"));
    out.push_str(&date_header(emission.time));
    out.push_str(&format!(
        "Message-ID: <{}>\r\nMIME-Version: 1.0\r\n",
        emission.message_id
    ));
    out.push_str(&format!(
        "Content-Type: multipart/signed; protocol=\"application/x-pkcs7-signature\";\r\n micalg=\"{}\"; boundary=\"{b}\"\r\n\r\n",
        signer.digest.micalg()
    ));
    out.push_str(&format!(
        "This is an S/MIME signed message\r\n\r\n--{b}\r\n{signed}\r\n--{b}\r\n"
    ));
    out.push_str("Content-Type: application/x-pkcs7-signature; name=\"smime.p7s\"\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"smime.p7s\"\r\n\r\n");
    out.push_str(&base64_lines(&p7s));
    out.push_str(&format!("--{b}--\r\n"));
    Ok(out.into_bytes())
}

fn from_per_conto_di(sender: &str, provider: &Provider) -> String {
    let display = format!("Per conto di: {sender}");
    if display.is_ascii() {
        format!(
            "From: {} <{}>\r\n",
            mime::quote_display_name(&display),
            provider.service_address()
        )
    } else {
        let enc = mime::unstructured_header("X", &display);
        let word = enc.trim_start_matches("X: ").trim_end().replace("\r\n", "");
        format!("From: {word}\r\n <{}>\r\n", provider.service_address())
    }
}

/// Facts about a received message that is wrapped in a busta di anomalia.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anomalia {
    /// The original sender (`From:` address of what arrived).
    pub mittente: String,
    /// The original subject, decoded.
    pub oggetto: String,
    /// A short description of the error, e.g. "firma non valida".
    pub errore: String,
    /// The message failed the provider signature checks: mark the envelope
    /// `X-VerificaSicurezza: errore`.
    pub sicurezza: bool,
}

/// Build and sign the busta di anomalia (PEC-RULES §2.3) around
/// `received`, in memory. No daticert.xml; the received message is
/// attached whole as `postacert.eml`. Same bytes as
/// [`write_busta_anomalia`].
pub fn build_busta_anomalia(
    provider: &Provider,
    anomalia: &Anomalia,
    received: &[u8],
    emission: &Emission,
    signer: Signer<'_>,
) -> Result<BuiltMessage, BuildError> {
    let canon = canonicalize_crlf(received);
    let (header, body) = split_header_body(&canon);
    let mut out = Vec::new();
    let headers =
        write_busta_anomalia(provider, anomalia, header, body, emission, signer, &mut out)?;
    Ok(BuiltMessage { headers, body: out })
}

/// [`build_busta_anomalia`] of a received message held as header block and
/// body, the envelope's body streamed into `out` (as
/// [`write_busta_trasporto`]; blocking I/O for bodies on disk); returns the
/// header fields.
pub fn write_busta_anomalia<B: Body + ?Sized, W: Write + ?Sized>(
    provider: &Provider,
    anomalia: &Anomalia,
    header: &[u8],
    body: &B,
    emission: &Emission,
    signer: Signer<'_>,
    out: &mut W,
) -> Result<Vec<String>, BuildError> {
    check_header_value("sender", &anomalia.mittente)?;
    let time = emission.time;
    let mut head_msg = canonicalize_crlf(header).into_owned();
    head_msg.extend_from_slice(b"\r\n");
    let text = format!(
        "Anomalia nel messaggio\n\n{} è stato ricevuto\nil messaggio \"{}\" proveniente da \"{}\".\nI dati non sono stati certificati per il seguente errore:\n{}\nIl messaggio originale è incluso in allegato.\n",
        when(time),
        anomalia.oggetto,
        anomalia.mittente,
        anomalia.errore
    );
    let seed = format!("{}/anomalia", emission.message_id);
    let ct = signed_envelope_body(
        &seed,
        &[&text_part(&text)],
        Some((&head_msg, body)),
        &[],
        time,
        signer,
        out,
    )?;

    let (keep, has_reply_to) = inherited(&head_msg, true);
    let had_message_id = original_msgid(&head_msg).is_some();
    let mut headers = raw_fields_to_strings(keep);
    headers.push("X-Trasporto: errore\r\n".to_string());
    if anomalia.sicurezza {
        headers.push("X-VerificaSicurezza: errore\r\n".to_string());
    }
    headers.push(date_header(time));
    headers.push(mime::unstructured_header(
        "Subject",
        &format!("ANOMALIA MESSAGGIO: {}", anomalia.oggetto),
    ));
    headers.push(from_per_conto_di(&anomalia.mittente, provider));
    if !has_reply_to {
        headers.push(format!("Reply-To: {}\r\n", anomalia.mittente));
    }
    if !had_message_id {
        headers.push(format!("Message-ID: {}\r\n", angle(&emission.message_id)));
    }
    headers.push("MIME-Version: 1.0\r\n".to_string());
    headers.push(ct);
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substring_search() {
        assert!(contains(b"--a--b", b"--b"));
        assert!(contains(b"--b", b"--b"));
        assert!(contains(b"x---b", b"--b"));
        assert!(!contains(b"--a--", b"--b"));
        assert!(!contains(b"-", b"--b"));
        assert!(!contains(b"", b"--b"));
        assert!(contains(b"anything", b""));
    }

    #[test]
    fn a_boundary_found_in_the_body_moves_to_the_next_candidate() {
        let seed = "id@x";
        let first2 = boundary_text(seed, 2, 0);
        let first1 = boundary_text(seed, 1, 0);
        // The level-2 candidate straddles two of the body's read pieces.
        let body = format!(
            "{}\r\n--{first2}\r\nmore",
            "x".repeat(crate::pec::body::CHUNK - 12)
        );
        let (b1, b2) = envelope_boundaries(seed, &[b"small"], Some(body.as_bytes()), u64::MAX)
            .expect("boundaries");
        assert_eq!(b1, first1);
        assert_eq!(b2, boundary_text(seed, 2, 1));
        // the same choice with no body at all: the first candidates
        let none = envelope_boundaries::<[u8]>(seed, &[b"small"], None, 0).expect("boundaries");
        assert_eq!(none, (first1, first2));
    }
}
