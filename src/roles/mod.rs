//! The three PEC roles and the tracker of the sending side, and what they
//! share: the ports (traits the edges implement, [`ports`]), the messages
//! they take and the decisions they return ([`message`]), and the
//! sender-side record of receipts ([`receipts`]).
//!
//! A role imports the wire format (`pec`), `crypto`, these shared modules
//! and the `state` / `index` traits; never another role, never an edge
//! (`tests/layers.rs` keeps it so).

pub mod access;
pub mod delivery;
pub mod message;
pub mod outbox;
pub mod ports;
pub mod receipts;
pub mod reception;
pub mod tracking;
pub mod verify;

pub use message::{Inbound, Original, Outcome, SpooledMessage, Submission};
pub use ports::{
    BoxError, DirectoryError, InjectError, Injector, LoginDirectory, LoginError, MailboxStore,
    RcptOutcome, RecipientDirectory, ScanError, Scanner, StaticDirectory, Verdict,
};

/// Why a role cannot decide now: a dependency failed. The edge answers
/// 4xx and the MTA retries; nothing is signed on this path.
#[derive(Debug, thiserror::Error)]
pub enum TempFail {
    #[error("state store: {0}")]
    State(#[from] crate::state::StateError),
    #[error("antivirus: {0}")]
    Scan(#[from] ScanError),
    #[error("reinjection: {0}")]
    Inject(#[from] InjectError),
    #[error("signing: {0}")]
    Build(#[from] crate::pec::build::BuildError),
    #[error("recipient directory: {0}")]
    Directory(#[from] DirectoryError),
    #[error("holders' directory: {0}")]
    Logins(#[from] LoginError),
    #[error("message log: {0}")]
    Log(#[from] crate::log::LogError),
    #[error("providers' index not loaded yet")]
    NoIndex,
    /// A provider's chain whose revocation status cannot be told now (no
    /// usable CRL for a distribution point; `crate::crls` fetches it).
    #[error("{0}")]
    Revocation(String),
    #[error("quarantine: {0}")]
    Quarantine(std::io::Error),
    #[error("receipt outbox: {0}")]
    Outbox(std::io::Error),
    #[error("spool: {0}")]
    Spool(String),
}
