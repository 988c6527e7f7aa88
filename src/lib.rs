//! pec-milter: a milter that turns Postfix or Sendmail into a provider of
//! Italian certified email (PEC, Posta Elettronica Certificata).
//!
//! - [`pec`]: the wire format as pure functions (daticert.xml, envelopes,
//!   receipts, reading and classifying any message). No I/O, no clock.
//! - [`crypto`]: the provider's signing key and S/MIME (CMS) signing and
//!   verification.
//! - [`roles`]: the access, reception and delivery points and the 12 h /
//!   24 h tracker, deciding over the ports of [`roles::ports`].
//! - The edges, each implementing ports or serving roles: [`milter`] (the
//!   MTA), [`lmtp`] (mailbox delivery), [`smtp`] (reinjection), [`clamd`]
//!   and [`clamd_limits`] (its configuration's size limits), [`logins`]
//!   (the holders kept in LDAP).
//! - [`state`], [`index`], [`log`]: the state store (Redis or embedded),
//!   the providers' index and the legal message log; [`config`];
//!   [`daemon`]: the composition root; [`reload`]: the configuration in
//!   force, swapped whole on reload; `fuzz_api`: what the fuzz targets
//!   call (hidden).
//! - [`ops`]: the operations endpoint (`/metrics`, `/health`) over
//!   [`health`] and the counters of [`metrics`].
//! - Support: [`spool`], [`keep`], [`rt`], [`listen`], [`ldap`], [`metrics`],
//!   [`logging`] (the daemon's diagnostics), [`crls`] (the CRLs of the
//!   providers' distribution points, fetched and kept fresh).
//!
//! README "Architecture" gives the arrows allowed; `tests/layers.rs` keeps
//! them.

pub mod clamd;
pub mod clamd_limits;
pub mod config;
pub mod crls;
pub mod crypto;
pub mod daemon;
#[doc(hidden)]
pub mod fuzz_api;
pub mod health;
pub mod index;
pub mod keep;
pub mod ldap;
pub mod listen;
pub mod lmtp;
pub mod log;
pub mod logging;
pub mod logins;
pub mod metrics;
pub mod milter;
pub mod ops;
pub mod pec;
pub mod reload;
pub mod roles;
pub mod rt;
pub mod smtp;
pub mod spool;
pub mod state;
