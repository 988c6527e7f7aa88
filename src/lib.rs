//! pec-milter: a milter that turns Postfix or Sendmail into a provider of
//! Italian certified email (PEC, Posta Elettronica Certificata).
//!
//! - [`pec`]: the wire format as pure functions (daticert.xml, envelopes,
//!   receipts, reading and classifying any message). No I/O, no clock.
//! - [`crypto`]: the provider's signing key and S/MIME (CMS) signing and
//!   verification.
//! - [`access`]: the access point's decisions; [`milter`]: the MTA edge;
//!   [`daemon`]: wiring the configuration to real dependencies.
//! - [`state`], [`av`], [`submit`]: the state store (Redis or embedded),
//!   clamd, and SMTP reinjection, each behind a trait of [`access`].

pub mod clamd;
pub mod config;
pub mod crypto;
pub mod daemon;
pub mod index;
pub mod keep;
pub mod listen;
pub mod lmtp;
pub mod milter;
pub mod pec;
pub mod roles;
pub mod rt;
pub mod smtp;
pub mod spool;
pub mod state;
