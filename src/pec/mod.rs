//! The PEC wire format (PEC-RULES §1 to §6), as pure functions over bytes
//! and facts: time, identifiers and keys come in as arguments.

pub mod body;
pub mod breve;
pub mod build;
pub mod daticert;
pub mod facts;
pub mod inspect;
pub mod kind;
pub mod mime;
pub mod nested;
pub mod reader;

pub use daticert::{DatiCert, Destinatario};
pub use kind::{Errore, MessageKind, Tipo, TipoDestinatario, TipoRicevuta, Trasporto};
