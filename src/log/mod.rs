//! The legal message log (PEC-RULES §7.1, §11): one record per event of
//! every message, on disk before the MTA hears the answer, hash-chained so
//! that a changed, deleted, inserted or reordered record is detected.
//!
//! - [`Event`]: what the roles record (the fields §7.1 names);
//! - [`EventLog`]: the port the roles write through; an error means "not
//!   recorded": the role answers 4xx and the MTA retries;
//! - [`chain`]: the line format and its hash chain, pure;
//! - [`writer::FileLog`]: one node's files, group commit (one `fdatasync`
//!   for every record waiting), rotation at local midnight, an MTA retry's
//!   event recorded once;
//! - [`verify`] and [`extract`]: what `pec-milter log verify` / `log
//!   extract` do over any number of nodes' directories.
//!
//! Each node writes its own chain in its own directory (`DIR/NODE/`):
//! nothing is locked across nodes.

pub mod chain;
pub mod extract;
pub mod retain;
pub mod seal;
pub mod verify;
pub mod writer;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::pec::Tipo;
use crate::pec::build::{Anomalia, Ricevuta, Transaction};
use crate::pec::daticert::DatiCert;

/// Why an event could not be recorded. The message is not accepted
/// without its record: the edge answers 4xx.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("message log I/O on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("message log {path}: {reason}")]
    Corrupt { path: String, reason: String },
    #[error("the message log writer has stopped")]
    Stopped,
    /// The failure of the batch this caller's events were in, as the
    /// writer saw it (every caller of that batch gets it).
    #[error("{0}")]
    Batch(String),
}

/// The kinds of event, by their wire names where the rules name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Evento {
    /// A holder's submission accepted: accettazione issued.
    Accettazione,
    /// Refused at the access point (formal checks, policy): the cause in
    /// `outcome`.
    NonAccettazione,
    /// Refused at the access point for a virus.
    NonAccettazioneVirus,
    /// The busta di trasporto signed and handed to the MTA.
    BustaTrasporto,
    /// Presa in carico issued by our reception point.
    PresaInCarico,
    /// A busta di anomalia made of a message that is not correct PEC.
    Anomalia,
    /// Avvenuta consegna issued by our delivery point (kind in
    /// `outcome`: completa, breve, sintetica).
    AvvenutaConsegna,
    /// Errore di consegna issued by our delivery point.
    ErroreConsegna,
    /// Rilevazione virus issued by our reception point.
    RilevazioneVirus,
    /// Mancata consegna per virus issued to our holder.
    MancataConsegnaVirus,
    /// 12 h notice to our holder.
    PreavvisoErroreConsegna,
    /// 24 h notice to our holder.
    MancataConsegna,
    /// A receipt or notice of another provider (or ours) received for one
    /// of our envelopes (its `X-Ricevuta` in `outcome`).
    RicevutaRicevuta,
    /// First record of a file: links it to its predecessor.
    Apertura,
    /// Last record of a file (rotation, `log seal`).
    Chiusura,
}

impl Evento {
    /// The wire name (`accettazione`, `presa-in-carico`, ...).
    pub fn wire(self) -> &'static str {
        match self {
            Evento::Accettazione => "accettazione",
            Evento::NonAccettazione => "non-accettazione",
            Evento::NonAccettazioneVirus => "non-accettazione-virus",
            Evento::BustaTrasporto => "busta-trasporto",
            Evento::PresaInCarico => "presa-in-carico",
            Evento::Anomalia => "anomalia",
            Evento::AvvenutaConsegna => "avvenuta-consegna",
            Evento::ErroreConsegna => "errore-consegna",
            Evento::RilevazioneVirus => "rilevazione-virus",
            Evento::MancataConsegnaVirus => "mancata-consegna-virus",
            Evento::PreavvisoErroreConsegna => "preavviso-errore-consegna",
            Evento::MancataConsegna => "mancata-consegna",
            Evento::RicevutaRicevuta => "ricevuta-ricevuta",
            Evento::Apertura => "apertura",
            Evento::Chiusura => "chiusura",
        }
    }
}

/// One recipient and its tipo (`certificato` / `esterno`) as the
/// transaction knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Destinatario {
    pub address: String,
    pub tipo: String,
}

/// One event of one message: the fields of PEC-RULES §7.1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub event: Evento,
    /// The transaction's time (the one time value of the transaction).
    pub time: DateTime<Utc>,
    /// The PEC id (`X-Riferimento-Message-ID` of its receipts).
    pub pec_id: String,
    /// The original's Message-ID, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub msgid: Option<String>,
    /// Message-IDs of the messages this event produced or concerns
    /// (receipts, envelope, anomaly).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub related: Vec<String>,
    pub sender: String,
    pub recipients: Vec<Destinatario>,
    pub subject: String,
    /// The sending provider (its name).
    pub provider: String,
    /// "ok", or the cause / error / receipt kind.
    pub outcome: String,
    /// Which recipient this event is about, when it is about one (a
    /// consegna, a receipt received): part of the key an MTA retry is
    /// recognised by.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub about: Option<String>,
}

impl Event {
    /// What identifies this event across MTA retries: the same event of
    /// the same message about the same recipient is recorded once.
    pub fn key(&self) -> String {
        format!(
            "{}\u{1f}{}\u{1f}{}",
            self.pec_id,
            self.event.wire(),
            self.about.as_deref().unwrap_or("").to_ascii_lowercase()
        )
    }
}

/// Where the roles record their events. `record` returns once every event
/// is on disk (or was already recorded by an earlier attempt of the same
/// message); an error means nothing can be assumed recorded.
#[async_trait::async_trait]
pub trait EventLog: Send + Sync {
    async fn record(&self, events: Vec<Event>) -> Result<(), LogError>;
    /// Whether a record could be written now, asked before an action that
    /// cannot be undone once done (the delivery point storing a message):
    /// an error when the log knows it cannot (its last write failed and
    /// its disk is still full). The default: ready.
    async fn ready(&self) -> Result<(), LogError> {
        Ok(())
    }
}

/// A log that records nothing (the message log switched off: tests and
/// tools that build a role without one).
#[derive(Debug, Default, Clone, Copy)]
pub struct NoLog;

#[async_trait::async_trait]
impl EventLog for NoLog {
    async fn record(&self, _events: Vec<Event>) -> Result<(), LogError> {
        Ok(())
    }
}

/// The event of a receipt or notice we issue for `tx` (its Message-ID
/// `receipt_msgid`), by the provider named `provider`.
pub fn event_for(
    tx: &Transaction,
    ricevuta: &Ricevuta<'_>,
    provider: &str,
    time: DateTime<Utc>,
    receipt_msgid: &str,
) -> Event {
    let (event, about, outcome) = match ricevuta {
        Ricevuta::Accettazione => (Evento::Accettazione, None, "ok".to_string()),
        Ricevuta::NonAccettazione { reason } => (Evento::NonAccettazione, None, reason.clone()),
        Ricevuta::NonAccettazioneVirus { virus } => {
            (Evento::NonAccettazioneVirus, None, format!("virus {virus}"))
        }
        Ricevuta::PresaInCarico { ricezione, .. } => (
            Evento::PresaInCarico,
            None,
            format!("ricezione: {}", ricezione.join(", ")),
        ),
        Ricevuta::AvvenutaConsegna { consegna, tipo, .. } => (
            Evento::AvvenutaConsegna,
            Some(consegna.clone()),
            tipo.wire().to_string(),
        ),
        Ricevuta::ErroreConsegna {
            consegna,
            errore,
            errore_esteso,
        } => (
            Evento::ErroreConsegna,
            Some(consegna.clone()),
            format!("{}: {errore_esteso}", errore.wire()),
        ),
        Ricevuta::ErroreConsegnaVirus { consegna, virus } => (
            Evento::MancataConsegnaVirus,
            Some(consegna.clone()),
            format!("virus {virus}"),
        ),
        Ricevuta::PreavvisoErroreConsegna { consegna, finale } => (
            if *finale {
                Evento::MancataConsegna
            } else {
                Evento::PreavvisoErroreConsegna
            },
            Some(consegna.clone()),
            "ok".to_string(),
        ),
        Ricevuta::RilevazioneVirus {
            consegna, virus, ..
        } => (
            Evento::RilevazioneVirus,
            Some(consegna.clone()),
            format!("virus {virus}"),
        ),
    };
    Event {
        event,
        time,
        pec_id: tx.identificativo.clone(),
        msgid: tx.msgid.clone(),
        related: vec![format!("<{receipt_msgid}>")],
        sender: tx.mittente.clone(),
        recipients: tx
            .destinatari
            .iter()
            .map(|d| Destinatario {
                address: d.address.clone(),
                tipo: d.tipo.wire().to_string(),
            })
            .collect(),
        subject: tx.oggetto.clone(),
        provider: provider.to_string(),
        outcome,
        about,
    }
}

/// The event of a busta di anomalia we made (`anomaly_id`) of a message
/// for `recipients` (its original Message-ID `msgid`).
pub fn event_anomaly(
    anomalia: &Anomalia,
    anomaly_id: &str,
    msgid: Option<String>,
    recipients: &[String],
    provider: &str,
    time: DateTime<Utc>,
) -> Event {
    Event {
        event: Evento::Anomalia,
        time,
        pec_id: anomaly_id.to_string(),
        msgid,
        related: vec![format!("<{anomaly_id}>")],
        sender: anomalia.mittente.clone(),
        recipients: recipients
            .iter()
            .map(|a| Destinatario {
                address: a.clone(),
                tipo: "certificato".into(),
            })
            .collect(),
        subject: anomalia.oggetto.clone(),
        provider: provider.to_string(),
        outcome: anomalia.errore.clone(),
        about: None,
    }
}

/// The event of a receipt received about one of our envelopes: `tipo`
/// signed by the provider named `signer`, its own Message-ID
/// `receipt_msgid`.
pub fn event_received(
    d: &DatiCert,
    tipo: Tipo,
    signer: &str,
    receipt_msgid: Option<&str>,
    time: DateTime<Utc>,
) -> Event {
    let about = d.consegna.clone().unwrap_or_else(|| signer.to_string());
    Event {
        event: Evento::RicevutaRicevuta,
        time,
        pec_id: d.identificativo.clone(),
        msgid: d.msgid.clone(),
        related: receipt_msgid.map(String::from).into_iter().collect(),
        sender: d.mittente.clone(),
        recipients: d
            .destinatari
            .iter()
            .map(|x| Destinatario {
                address: x.address.clone(),
                tipo: x.tipo.wire().to_string(),
            })
            .collect(),
        subject: d.oggetto.clone().unwrap_or_default(),
        provider: signer.to_string(),
        outcome: tipo.wire().to_string(),
        // one record per receipt: its kind and whom it is about
        about: Some(format!("{} {about}", tipo.wire())),
    }
}
