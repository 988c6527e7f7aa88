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
    #[error("quarantine: {0}")]
    Quarantine(std::io::Error),
    #[error("spool: {0}")]
    Spool(String),
}

/// How long a role keeps trying the state write that follows a receipt it
/// has already injected (a failover of a replicated state store is over in
/// seconds): giving up answers 4xx, and the MTA's retry would send the
/// receipt again. Well inside the MTA's end-of-message timeout (Postfix
/// `milter_content_timeout`, 300 s).
pub const AFTER_RECEIPT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(30);

/// Run the state write `op` (idempotent) again while it fails with
/// [`StateError::Unavailable`](crate::state::StateError::Unavailable),
/// for up to [`AFTER_RECEIPT_PATIENCE`]: for the writes after a receipt
/// has left, where a 4xx means a duplicate receipt.
pub async fn after_receipt<F, Fut>(what: &str, mut op: F) -> Result<(), crate::state::StateError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), crate::state::StateError>>,
{
    let start = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(100);
    loop {
        match op().await {
            Err(crate::state::StateError::Unavailable(cause))
                if start.elapsed() + pause < AFTER_RECEIPT_PATIENCE =>
            {
                tracing::warn!(what, cause = %cause, "state store unavailable after the receipt left: trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(1));
            }
            res => return res,
        }
    }
}
