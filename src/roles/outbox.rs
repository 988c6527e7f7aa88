//! Sending what the outbox keeps (see "The outbox" in `crate::state`).
//!
//! A role writes its receipts into the outbox in the same durable step as
//! the claim that says they exist, then calls [`send_queued`]: each entry
//! goes to the MTA at once and leaves the outbox. What stays (the MTA's
//! listener down, the process killed in between) is sent by
//! [`OutboxSender::pass`], which the daemon runs every few seconds on every
//! node: it takes only entries older than its grace (longer than one
//! injection may take, so that it never races the role that queued them)
//! and leases each one, so that one node sends it.
//!
//! A message larger than the role's spool threshold (the avvenuta
//! consegna completa of a 100 MB original) is not copied into Redis or
//! SQLite: [`keep_message`] writes and syncs it into the node's outbox
//! directory first, the entry names the file, and [`message_of`] maps it
//! to send it; the file goes once the entry is dropped. Only the node
//! holding the file can send such an entry (another node's pass finds no
//! file, says so and leaves it). A crash between the file and the state
//! write leaves a file no entry names: the MTA's retry builds the receipt
//! again and writes the same file name over it.
//!
//! Which side of a crash may repeat: the one between the MTA accepting an
//! entry and the entry leaving the outbox. A crash there sends that
//! message again, the same bytes with the same Message-ID (the legal log
//! has its event once: it was recorded before the entry was queued). The
//! other side cannot happen: nothing is sent before its entry is durable,
//! and an entry is written once per Message-ID, after which the claim
//! keeps the role from building it again — so a receipt is never lost and
//! never issued twice by the roles themselves.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use chrono::{DateTime, Utc};

use super::ports::Injector;
use crate::keep::keep_with;
use crate::spool::{Spooled, SpooledView};
use crate::state::{OutboxEntry, StateError, StateStore};

/// How long the removal of a sent entry is tried again while the state
/// store cannot write (a failover is over in seconds): a removal given up
/// means the outbox pass sends that message once more.
pub const DONE_PATIENCE: Duration = Duration::from_secs(30);

/// Entries this process has handed to the MTA and is still removing: the
/// pass leaves them alone (it would send them again).
/// Keyed by the store (its address: the roles and the pass of one daemon
/// share one) and the entry's id.
static REMOVING: Mutex<Option<HashSet<(usize, String)>>> = Mutex::new(None);

/// The key of `state` in [`REMOVING`].
fn store_key(state: &dyn StateStore) -> usize {
    std::ptr::from_ref(state).cast::<()>() as usize
}

fn removing(store: usize, id: &str, on: bool) {
    if let Ok(mut set) = REMOVING.lock() {
        let set = set.get_or_insert_with(HashSet::new);
        let key = (store, id.to_string());
        if on {
            set.insert(key);
        } else {
            set.remove(&key);
        }
    }
}

fn is_removing(store: usize, id: &str) -> bool {
    REMOVING
        .lock()
        .map(|s| {
            s.as_ref()
                .is_some_and(|s| s.contains(&(store, id.to_string())))
        })
        .unwrap_or(false)
}

/// Drop the sent entry `id`, trying again for up to [`DONE_PATIENCE`]
/// while the store cannot write. The caller holds an [`InFlight`] for it
/// meanwhile (the pass leaves the entry alone).
async fn done(state: &dyn StateStore, id: &str) -> Result<(), StateError> {
    let start = Instant::now();
    let mut pause = Duration::from_millis(100);
    loop {
        match state.outbox_done(id).await {
            Err(StateError::Unavailable(cause)) if start.elapsed() + pause < DONE_PATIENCE => {
                tracing::warn!(message_id = %id, cause = %cause,
                    "sent, the outbox cannot drop it yet: trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            res => return res,
        }
    }
}

/// Hand `entries` (just queued) to the MTA; each one accepted leaves the
/// outbox. How many were sent now; the rest wait for the outbox pass.
///
/// The removal of a sent entry is not waited for: it runs in a task of
/// its own (the pass leaves the entry alone meanwhile), so that the answer
/// to the MTA does not wait for one more durable write; concurrent
/// removals share the store's group commit. [`settle`] waits for those in
/// flight (the daemon, before it exits).
pub async fn send_queued(
    state: &Arc<dyn StateStore>,
    injector: &dyn Injector,
    entries: Vec<OutboxEntry>,
) -> usize {
    let mut sent = 0;
    for e in entries {
        if inject_one(injector, &e, "receipt injected").await {
            sent += 1;
            let guard = InFlight::new(store_key(state.as_ref()), &e.id);
            let state = Arc::clone(state);
            tokio::spawn(async move {
                finish(state.as_ref(), &e).await;
                drop(guard);
            });
        }
    }
    sent
}

/// Removals started by [`send_queued`] and not finished yet.
static INFLIGHT: AtomicUsize = AtomicUsize::new(0);
static SETTLED: Notify = Notify::const_new();

/// One removal in flight: the pass leaves its entry alone until it is
/// dropped (also when its task is dropped with the runtime).
struct InFlight(usize, String);

impl InFlight {
    fn new(store: usize, id: &str) -> Self {
        removing(store, id, true);
        INFLIGHT.fetch_add(1, Ordering::SeqCst);
        InFlight(store, id.to_string())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        removing(self.0, &self.1, false);
        if INFLIGHT.fetch_sub(1, Ordering::SeqCst) == 1 {
            SETTLED.notify_waiters();
        }
    }
}

/// Wait (at most `patience`) until every removal [`send_queued`] started
/// has finished; whether they all did. An entry whose removal is cut
/// short stays in the outbox: the pass sends it once more.
pub async fn settle(patience: Duration) -> bool {
    let deadline = Instant::now() + patience;
    loop {
        let notified = SETTLED.notified();
        if INFLIGHT.load(Ordering::SeqCst) == 0 {
            return true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || tokio::time::timeout(left, notified).await.is_err() {
            return INFLIGHT.load(Ordering::SeqCst) == 0;
        }
    }
}

/// The bytes of `e`: kept in the entry, or its file in the node's outbox
/// directory mapped read-only (a receipt carrying a 100 MB original is
/// not read into memory).
pub fn message_of(e: &OutboxEntry) -> std::io::Result<SpooledView<'_>> {
    let Some(path) = &e.file else {
        return Ok(SpooledView::Memory(&e.message));
    };
    let file = std::fs::File::open(path)?;
    let len = usize::try_from(file.metadata()?.len()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "outbox file too large to map",
        )
    })?;
    if len == 0 {
        return Ok(SpooledView::Memory(&[]));
    }
    // SAFETY: the file is one of this daemon's outbox files (see
    // `keep_message`): written to a temporary name, synced and renamed,
    // never written again, and removed only once the entry is dropped
    // after the MTA took it; nothing truncates it while the map lives.
    let map = unsafe { crate::spool::Mapped::new(&file, len)? };
    Ok(SpooledView::Mapped(map))
}

/// Keep the large message `body` as the file `dir/<safe id>.msg`
/// (written, synced, renamed), for an entry that names it instead of
/// carrying the bytes. Blocking I/O.
pub fn keep_message(dir: &Path, id: &str, body: &Spooled) -> std::io::Result<PathBuf> {
    keep_with(dir, id, MESSAGE_EXT, |f| {
        body.for_each_chunk::<std::io::Error>(|c| f.write_all(c))
    })
}

/// The extension of the files [`keep_message`] writes.
pub const MESSAGE_EXT: &str = "msg";

/// Inject `e`; whether the MTA has it.
async fn inject_one(injector: &dyn Injector, e: &OutboxEntry, what: &str) -> bool {
    let bytes = match message_of(e) {
        Ok(b) => b,
        Err(err) => {
            // another node's file, or gone: that node's pass sends it
            tracing::warn!(pec_id = %e.pec_id, kind = %e.kind, message_id = %e.id,
                file = ?e.file, error = %err,
                "outbox entry's message file cannot be read here: left for the node that holds it");
            return false;
        }
    };
    let sent = injector.inject(&e.from, &e.to, &bytes).await;
    drop(bytes);
    match sent {
        Ok(()) => {
            tracing::info!(pec_id = %e.pec_id, kind = %e.kind, to = ?e.to, message_id = %e.id, "{what}");
            true
        }
        Err(err) => {
            tracing::warn!(pec_id = %e.pec_id, kind = %e.kind, message_id = %e.id, error = %err,
                "injection failed: the message stays in the outbox and is sent by the outbox pass");
            false
        }
    }
}

/// The MTA has `e`: drop it from the outbox, and its file.
async fn finish(state: &dyn StateStore, e: &OutboxEntry) {
    match done(state, &e.id).await {
        Ok(()) => {
            if let Some(path) = &e.file
                && let Err(err) = std::fs::remove_file(path)
            {
                tracing::warn!(file = %path, error = %err, "sent: its outbox file cannot be removed");
            }
        }
        Err(err) => {
            tracing::warn!(message_id = %e.id, error = %err,
                "sent, but still in the outbox: the outbox pass may send it again (same Message-ID)");
        }
    }
}

/// The daemon's outbox pass.
pub struct OutboxSender<'a> {
    pub state: &'a dyn StateStore,
    pub injector: &'a dyn Injector,
    /// Entries younger than this are left to the role that queued them.
    pub grace: Duration,
    /// How long one node holds an entry it tries; after a failure, the
    /// next try waits as long.
    pub lease: Duration,
}

impl OutboxSender<'_> {
    /// Send every entry queued more than `grace` before `now` (at most
    /// 500 a pass); how many were sent.
    pub async fn pass(&self, now: DateTime<Utc>) -> Result<usize, StateError> {
        let before = now.timestamp() - i64::try_from(self.grace.as_secs()).unwrap_or(i64::MAX);
        let due = self.state.outbox_due(before, 500).await?;
        let mut sent = 0;
        for e in &due {
            if is_removing(store_key(self.state), &e.id) {
                continue; // sent by this process a moment ago
            }
            if !self
                .state
                .once(&format!("outbox:{}", e.id), self.lease.as_secs().max(1))
                .await?
            {
                continue; // another node has it now
            }
            if inject_one(
                self.injector,
                e,
                "receipt injected (outbox pass: it was left waiting)",
            )
            .await
            {
                let _removing = InFlight::new(store_key(self.state), &e.id);
                finish(self.state, e).await;
                sent += 1;
            }
        }
        Ok(sent)
    }
}
