//! pec-milter: a milter that turns Postfix or Sendmail into a provider of
//! Italian certified email (PEC, Posta Elettronica Certificata).
//!
//! - [`pec`]: the wire format as pure functions (daticert.xml, envelopes,
//!   receipts, reading and classifying any message). No I/O, no clock.
//! - [`crypto`]: the provider's signing key and S/MIME (CMS) signing and
//!   verification.

pub mod crypto;
pub mod inspect;
pub mod pec;
