//! [`EmbeddedStore`]: the state of a single node, kept as small JSON files
//! in a local directory. No server needed.
//!
//! # Layout
//!
//! ```text
//! <dir>/.lock.0 .. .lock.15    advisory locks (flock), one per key shard
//! <dir>/claims/<name>         one idempotency claim per file
//! <dir>/envelopes/<name>      one envelope record per file
//! <dir>/tracked/<name>        index entry of a tracked envelope (same <name>)
//! <dir>/marks/<name>          one marker of `once` / `confirm` per file
//! <dir>/*/.tmp-*              files being written (removed by purge_expired)
//! ```
//!
//! `<name>` is `k-` followed by the lowercase hex of the key (claim key or
//! PEC id) when the key is at most 100 bytes long, otherwise `s-` followed
//! by the hex SHA-256 of the key: a safe file name for any key, never
//! longer than 202 bytes. Every record also stores its own key, checked on
//! reading.
//!
//! # Atomicity
//!
//! Every record is written to a temporary file in the same directory,
//! fsynced, then moved into place (rename for replacements, hard link for
//! claims, which fails if the name exists: first writer wins), and the
//! directory is fsynced. Readers never see a half-written record.
//!
//! Every write runs under the writer locks of its key's shard (16 shards,
//! by an FNV-1a hash of the claim key, PEC id or marker key, the same in
//! every process): a [`tokio::sync::Mutex`] (one per shard and store, so
//! that at most one blocking thread per shard waits for the lock) and an
//! exclusive `flock` on `<dir>/.lock.<shard>`, which serialises the
//! check-and-create of `claim` across processes on the same host. Writes
//! of different shards run in parallel, so the fsyncs of concurrent
//! submissions overlap and the file system commits them together; the
//! sweeps (`purge_expired`, dropping stale index entries) take every shard.
//! Every process sharing a directory must run the same version (an older
//! one locks `<dir>/.lock`).
//!
//! [`StateStore::update_envelope`] is a compare-and-set: the record is
//! read and changed without the locks, then written under them only if the
//! file still holds the record read (else it starts again).
//!
//! # Expiry
//!
//! Every record carries `expires_at` (Unix seconds, `now + ttl`, with
//! `now` rounded down); a record is expired once the current Unix second
//! is past `expires_at`, so it lives at least `ttl` seconds. Expired
//! records are treated as absent and deleted lazily when met;
//! [`EmbeddedStore::purge_expired`] sweeps the whole directory. A TTL of 0
//! is treated as 1 second.
//!
//! # Tracking index
//!
//! `tracked/` holds one small file (`{"pec_id", "submitted_at"}`) per
//! envelope that [is tracked](EnvelopeRecord::is_tracked).
//! `put_envelope` writes the entry *before* the envelope when the record
//! is tracked and removes it *after* writing the envelope when it is not,
//! so after a crash the index holds at most extra entries, never misses
//! one; [`StateStore::tracked`] checks every entry against its envelope
//! and drops the extra ones (as does `purge_expired`).
//!
//! Cost: `tracked` lists the index directory and reads every entry (a few
//! dozen bytes each), then reads the envelopes of the entries old enough:
//! linear in the number of envelopes waiting for an outcome, not in the
//! number stored. Fine for one node and thousands of pending envelopes;
//! use Redis beyond that.
//!
//! # Markers
//!
//! `once` creates `marks/<name>` under the writer locks (expired markers
//! are replaced), `confirm` rewrites it as done with a new expiry,
//! `release` deletes it. The writer locks make `once` first-writer-wins
//! across the processes of one host.
//!
//! All file I/O runs on Tokio's blocking pool, never on the async workers.
//! The directory must be on a local POSIX file system (hard links and
//! `flock`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, OwnedMutexGuard};

use super::{Claim, EnvelopeRecord, StateError, StateStore};

const CLAIMS: &str = "claims";
const ENVELOPES: &str = "envelopes";
const TRACKED: &str = "tracked";
const MARKS: &str = "marks";
/// Lock files `.lock.0` .. `.lock.15`: one per shard of the keys.
const LOCK_FILE: &str = ".lock";
/// Writers of different shards run in parallel (their fsyncs overlap and
/// the file system commits them together); writers of one shard exclude
/// each other.
const SHARDS: usize = 16;
const TMP_PREFIX: &str = ".tmp-";
/// Keys up to this many bytes are hex-encoded as they are; longer ones are
/// hashed.
const MAX_PLAIN_KEY: usize = 100;

/// Single-node state store on the local file system. See the
/// [module documentation](self) for the layout and guarantees.
#[derive(Debug)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
    /// Serialise the writers of one shard inside the process.
    writers: Arc<Vec<Arc<Mutex<()>>>>,
}

#[derive(Debug)]
struct Inner {
    dir: PathBuf,
    /// Open handles of `<dir>/.lock.<shard>`, flocked by writers. Each
    /// store has its own open file descriptions, so two stores (or two
    /// processes) on the same directory exclude each other.
    lock_files: Vec<File>,
}

/// The shard of a key (claim key, PEC id, marker key): FNV-1a, the same
/// in every process.
fn shard(key: &str) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % SHARDS as u64) as usize
}

/// A claim file.
#[derive(Debug, Serialize, Deserialize)]
struct ClaimFile {
    key: String,
    pec_id: String,
    submitted_at: i64,
    receipt_sent: bool,
    expires_at: i64,
}

/// An envelope file (write side, borrowing the record).
#[derive(Serialize)]
struct EnvelopeFileRef<'a> {
    expires_at: i64,
    record: &'a EnvelopeRecord,
}

/// An envelope file (read side).
#[derive(Deserialize)]
struct EnvelopeFile {
    expires_at: i64,
    record: EnvelopeRecord,
}

/// An index entry of a tracked envelope.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
struct TrackedEntry {
    pec_id: String,
    submitted_at: i64,
}

/// A marker of `once` / `confirm`.
#[derive(Debug, Serialize, Deserialize)]
struct MarkFile {
    key: String,
    done: bool,
    expires_at: i64,
}

/// Just the expiry of any record, for the sweep.
#[derive(Deserialize)]
struct ExpiryOnly {
    expires_at: i64,
}

impl EmbeddedStore {
    /// Open (creating it if needed) the store in `dir`.
    ///
    /// This does a little blocking file I/O (creating directories, opening
    /// the lock file): call it at start-up, or from a blocking context.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        fs::create_dir_all(dir.join(CLAIMS))?;
        fs::create_dir_all(dir.join(ENVELOPES))?;
        fs::create_dir_all(dir.join(TRACKED))?;
        fs::create_dir_all(dir.join(MARKS))?;
        let mut lock_files = Vec::with_capacity(SHARDS);
        for n in 0..SHARDS {
            lock_files.push(
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(false)
                    .open(dir.join(format!("{LOCK_FILE}.{n}")))?,
            );
        }
        Ok(Self {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                lock_files,
            }),
            writers: Arc::new((0..SHARDS).map(|_| Arc::new(Mutex::new(()))).collect()),
        })
    }

    /// The directory of the store.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// Delete every expired record (and any temporary file left behind by
    /// a crash). Returns how many records were deleted. Unreadable records
    /// are left in place (and logged).
    pub async fn purge_expired(&self) -> Result<usize, StateError> {
        self.write_locked_all(|inner| inner.purge_expired()).await
    }

    /// Run `f` on the blocking pool, without the writer locks.
    async fn blocking<T, F>(&self, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StateError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StateError::Unavailable(format!("embedded store task failed: {e}")))?
    }

    /// Run `f` on the blocking pool holding both writer locks of the shard
    /// of `key` (the in-process mutex and the cross-process flock). The
    /// mutex guard moves into the blocking task, so it is held until `f` is
    /// done even if the caller is cancelled.
    async fn write_locked<T, F>(&self, key: &str, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StateError> + Send + 'static,
    {
        let n = shard(key);
        let guard: OwnedMutexGuard<()> = Arc::clone(&self.writers[n]).lock_owned().await;
        self.blocking(move |inner| {
            let _guard = guard;
            let _flock = FlockGuard::lock(&inner.lock_files[n])?;
            f(inner)
        })
        .await
    }

    /// [`write_locked`](Self::write_locked) holding every shard (taken in
    /// order, so two such callers cannot deadlock): for the sweeps that
    /// touch records of any key and the temporary files of every writer.
    async fn write_locked_all<T, F>(&self, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, StateError> + Send + 'static,
    {
        let mut guards: Vec<OwnedMutexGuard<()>> = Vec::with_capacity(SHARDS);
        for w in self.writers.iter() {
            guards.push(Arc::clone(w).lock_owned().await);
        }
        self.blocking(move |inner| {
            let _guards = guards;
            let mut flocks = Vec::with_capacity(SHARDS);
            for f in &inner.lock_files {
                flocks.push(FlockGuard::lock(f)?);
            }
            f(inner)
        })
        .await
    }
}

#[async_trait::async_trait]
impl StateStore for EmbeddedStore {
    async fn claim(
        &self,
        key: &str,
        pec_id: &str,
        submitted_at: i64,
        ttl_secs: u64,
    ) -> Result<Claim, StateError> {
        let rec = ClaimFile {
            key: key.to_owned(),
            pec_id: pec_id.to_owned(),
            submitted_at,
            receipt_sent: false,
            expires_at: 0,
        };
        self.write_locked(key, move |inner| inner.claim(rec, ttl_secs))
            .await
    }

    async fn mark_receipt_sent(&self, key: &str) -> Result<(), StateError> {
        let k = key.to_owned();
        self.write_locked(key, move |inner| inner.mark_receipt_sent(&k))
            .await
    }

    async fn put_envelope(&self, rec: &EnvelopeRecord, ttl_secs: u64) -> Result<(), StateError> {
        let (entry, tracked, bytes) = envelope_bytes(rec, ttl_secs)?;
        self.write_locked(&rec.pec_id, move |inner| {
            inner.write_envelope(&entry, tracked, &bytes)
        })
        .await
    }

    /// A compare-and-set loop: read the record, apply `f`, then, under the
    /// writer locks, write it only if the file still holds the record read
    /// (compared as records).
    async fn update_envelope(
        &self,
        pec_id: &str,
        ttl_secs: u64,
        f: &super::Update<'_>,
    ) -> Result<Option<EnvelopeRecord>, StateError> {
        let read = || async {
            Ok(self
                .get_envelope(pec_id)
                .await?
                .map(|old| (old.clone(), old)))
        };
        let write = |old: EnvelopeRecord, rec: EnvelopeRecord| async move {
            let (entry, tracked, bytes) = envelope_bytes(&rec, ttl_secs)?;
            let id = pec_id.to_owned();
            self.write_locked(pec_id, move |inner| {
                match inner.read_envelope(&id, now_secs())? {
                    Lookup::Live(cur) if *cur == old => {
                        inner.write_envelope(&entry, tracked, &bytes)?;
                        Ok(true)
                    }
                    _ => Ok(false),
                }
            })
            .await
        };
        super::compare_and_set(pec_id, f, read, write).await
    }

    async fn get_envelope(&self, pec_id: &str) -> Result<Option<EnvelopeRecord>, StateError> {
        let id = pec_id.to_owned();
        let found = self
            .blocking(move |inner| inner.read_envelope(&id, now_secs()))
            .await?;
        match found {
            Lookup::Live(rec) => Ok(Some(*rec)),
            Lookup::Absent => Ok(None),
            Lookup::Expired => {
                // Delete it, unless a writer replaced it in the meantime.
                let id = pec_id.to_owned();
                self.write_locked(pec_id, move |inner| {
                    let now = now_secs();
                    match inner.read_envelope(&id, now)? {
                        Lookup::Expired => {
                            remove_if_exists(&inner.envelope_path(&id))?;
                            Ok(None)
                        }
                        Lookup::Live(rec) => Ok(Some(*rec)),
                        Lookup::Absent => Ok(None),
                    }
                })
                .await
            }
        }
    }

    async fn tracked(&self, submitted_before: i64) -> Result<Vec<EnvelopeRecord>, StateError> {
        let (live, stale) = self
            .blocking(move |inner| inner.scan_tracked(submitted_before, now_secs()))
            .await?;
        if !stale.is_empty() {
            // Best effort: what is not dropped now is dropped next time.
            let dropped = self
                .write_locked_all(move |inner| inner.drop_stale(&stale, now_secs()))
                .await;
            if let Err(e) = dropped {
                tracing::warn!(error = %e, "tracked: cannot drop stale index entries");
            }
        }
        Ok(live)
    }

    async fn once(&self, key: &str, ttl_secs: u64) -> Result<bool, StateError> {
        let k = key.to_owned();
        self.write_locked(key, move |inner| inner.once(&k, ttl_secs))
            .await
    }

    async fn confirm(&self, key: &str, ttl_secs: u64) -> Result<(), StateError> {
        let mark = MarkFile {
            key: key.to_owned(),
            done: true,
            expires_at: expires_at(now_secs(), ttl_secs),
        };
        self.write_locked(key, move |inner| inner.write_mark(&mark, false))
            .await
    }

    async fn confirmed(&self, key: &str) -> Result<bool, StateError> {
        let key = key.to_owned();
        self.blocking(move |inner| {
            Ok(inner
                .read_mark(&key)?
                .is_some_and(|m| m.done && !is_expired(m.expires_at, now_secs())))
        })
        .await
    }

    async fn release(&self, key: &str) -> Result<(), StateError> {
        let k = key.to_owned();
        self.write_locked(key, move |inner| {
            remove_if_exists(&inner.mark_path(&k))?;
            sync_dir(&inner.dir.join(MARKS))?;
            Ok(())
        })
        .await
    }

    async fn ping(&self) -> Result<(), StateError> {
        self.blocking(|inner| {
            for sub in [CLAIMS, ENVELOPES, TRACKED, MARKS] {
                let meta = fs::metadata(inner.dir.join(sub))?;
                if !meta.is_dir() {
                    return Err(StateError::Unavailable(format!(
                        "{} is not a directory",
                        inner.dir.join(sub).display()
                    )));
                }
            }
            Ok(())
        })
        .await
    }
}

enum Lookup<T> {
    Live(Box<T>),
    Expired,
    Absent,
}

impl Inner {
    fn claim_path(&self, key: &str) -> PathBuf {
        self.dir.join(CLAIMS).join(file_name(key))
    }

    fn envelope_path(&self, pec_id: &str) -> PathBuf {
        self.dir.join(ENVELOPES).join(file_name(pec_id))
    }

    fn tracked_path(&self, pec_id: &str) -> PathBuf {
        self.dir.join(TRACKED).join(file_name(pec_id))
    }

    fn mark_path(&self, key: &str) -> PathBuf {
        self.dir.join(MARKS).join(file_name(key))
    }

    /// Write the index entry unless the same one is there. The caller
    /// holds the writer locks.
    fn add_tracked(&self, entry: &TrackedEntry) -> Result<(), StateError> {
        let path = self.tracked_path(&entry.pec_id);
        if let Some(bytes) = read_if_exists(&path)?
            && serde_json::from_slice::<TrackedEntry>(&bytes).is_ok_and(|old| old == *entry)
        {
            return Ok(());
        }
        let bytes = serde_json::to_vec(entry).map_err(|e| StateError::Corrupt {
            key: entry.pec_id.clone(),
            reason: format!("cannot serialise index entry: {e}"),
        })?;
        write_replace(&self.dir.join(TRACKED), &path, &bytes)?;
        Ok(())
    }

    /// Read the index (no lock needed: every file appears whole). Returns
    /// the tracked envelopes submitted at or before `before`, and the PEC
    /// ids of entries whose envelope is absent, expired or no longer
    /// tracked.
    fn scan_tracked(
        &self,
        before: i64,
        now: i64,
    ) -> Result<(Vec<EnvelopeRecord>, Vec<String>), StateError> {
        let mut live = Vec::new();
        let mut stale = Vec::new();
        for entry in fs::read_dir(self.dir.join(TRACKED))? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            // Removed since listed: no longer tracked.
            let Some(bytes) = read_if_exists(&path)? else {
                continue;
            };
            let idx: TrackedEntry = match serde_json::from_slice(&bytes) {
                Ok(idx) => idx,
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "tracked: unreadable index entry skipped");
                    continue;
                }
            };
            if idx.submitted_at > before {
                continue;
            }
            match self.read_envelope(&idx.pec_id, now) {
                Ok(Lookup::Live(rec)) if rec.is_tracked() => live.push(*rec),
                Ok(_) => stale.push(idx.pec_id),
                Err(e) => {
                    tracing::warn!(pec_id = %idx.pec_id, error = %e, "tracked: unreadable envelope skipped");
                }
            }
        }
        Ok((live, stale))
    }

    /// Remove the index entries of `ids` whose envelope is (still) absent,
    /// expired or untracked (an unreadable envelope keeps its entry). The caller holds the writer locks.
    fn drop_stale(&self, ids: &[String], now: i64) -> Result<usize, StateError> {
        let mut dropped = 0;
        for id in ids {
            let stale = match self.read_envelope(id, now) {
                Ok(Lookup::Live(rec)) => !rec.is_tracked(),
                Ok(Lookup::Expired | Lookup::Absent) => true,
                // Unreadable: left in place (and reported by `tracked`).
                Err(_) => false,
            };
            if stale {
                remove_if_exists(&self.tracked_path(id))?;
                dropped += 1;
            }
        }
        if dropped > 0 {
            sync_dir(&self.dir.join(TRACKED))?;
        }
        Ok(dropped)
    }

    fn read_mark(&self, key: &str) -> Result<Option<MarkFile>, StateError> {
        let path = self.mark_path(key);
        let Some(bytes) = read_if_exists(&path)? else {
            return Ok(None);
        };
        let mark: MarkFile = serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
            key: key.to_owned(),
            reason: format!("{}: {e}", path.display()),
        })?;
        if mark.key != key {
            return Err(StateError::Corrupt {
                key: key.to_owned(),
                reason: format!("{} holds the marker {:?}", path.display(), mark.key),
            });
        }
        Ok(Some(mark))
    }

    /// Write a marker: exclusively (first writer wins) or replacing. The
    /// caller holds the writer locks.
    fn write_mark(&self, mark: &MarkFile, exclusive: bool) -> Result<(), StateError> {
        let bytes = serde_json::to_vec(mark).map_err(|e| StateError::Corrupt {
            key: mark.key.clone(),
            reason: format!("cannot serialise marker: {e}"),
        })?;
        let dir = self.dir.join(MARKS);
        let path = self.mark_path(&mark.key);
        if exclusive {
            write_exclusive(&dir, &path, &bytes)?;
        } else {
            write_replace(&dir, &path, &bytes)?;
        }
        Ok(())
    }

    /// The check-and-create of `once`; the caller holds the writer locks.
    fn once(&self, key: &str, ttl_secs: u64) -> Result<bool, StateError> {
        let now = now_secs();
        match self.read_mark(key) {
            Ok(Some(m)) if !is_expired(m.expires_at, now) => return Ok(false),
            Ok(Some(_)) => remove_if_exists(&self.mark_path(key))?,
            Ok(None) => {}
            // An unreadable marker would block the key for ever: replace it.
            Err(StateError::Corrupt { reason, .. }) => {
                tracing::warn!(key, reason = %reason, "once: unreadable marker replaced");
                remove_if_exists(&self.mark_path(key))?;
            }
            Err(e) => return Err(e),
        }
        let mark = MarkFile {
            key: key.to_owned(),
            done: false,
            expires_at: expires_at(now, ttl_secs),
        };
        match self.write_mark(&mark, true) {
            Ok(()) => Ok(true),
            // Someone not holding the lock got there first: they win.
            Err(StateError::Io(e)) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Read a claim file; `None` if there is none.
    fn read_claim(&self, key: &str) -> Result<Option<ClaimFile>, StateError> {
        let path = self.claim_path(key);
        let Some(bytes) = read_if_exists(&path)? else {
            return Ok(None);
        };
        let rec: ClaimFile = serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
            key: key.to_owned(),
            reason: format!("{}: {e}", path.display()),
        })?;
        if rec.key != key {
            return Err(StateError::Corrupt {
                key: key.to_owned(),
                reason: format!("{} holds the claim of key {:?}", path.display(), rec.key),
            });
        }
        Ok(Some(rec))
    }

    /// Write an envelope file (`bytes` from [`envelope_bytes`]) and keep
    /// the tracking index in step; the caller holds the writer locks.
    /// Index first when adding, last when removing: a crash leaves an
    /// extra entry at worst (see the module documentation).
    fn write_envelope(
        &self,
        entry: &TrackedEntry,
        tracked: bool,
        bytes: &[u8],
    ) -> Result<(), StateError> {
        if tracked {
            self.add_tracked(entry)?;
        }
        let dir = self.dir.join(ENVELOPES);
        write_replace(&dir, &dir.join(file_name(&entry.pec_id)), bytes)?;
        if !tracked {
            remove_if_exists(&self.tracked_path(&entry.pec_id))?;
        }
        Ok(())
    }

    fn read_envelope(&self, pec_id: &str, now: i64) -> Result<Lookup<EnvelopeRecord>, StateError> {
        let path = self.envelope_path(pec_id);
        let Some(bytes) = read_if_exists(&path)? else {
            return Ok(Lookup::Absent);
        };
        let file: EnvelopeFile =
            serde_json::from_slice(&bytes).map_err(|e| StateError::Corrupt {
                key: pec_id.to_owned(),
                reason: format!("{}: {e}", path.display()),
            })?;
        if file.record.pec_id != pec_id {
            return Err(StateError::Corrupt {
                key: pec_id.to_owned(),
                reason: format!(
                    "{} holds the envelope {:?}",
                    path.display(),
                    file.record.pec_id
                ),
            });
        }
        if is_expired(file.expires_at, now) {
            Ok(Lookup::Expired)
        } else {
            Ok(Lookup::Live(Box::new(file.record)))
        }
    }

    /// The check-and-create; the caller holds the writer locks.
    fn claim(&self, mut rec: ClaimFile, ttl_secs: u64) -> Result<Claim, StateError> {
        let now = now_secs();
        let path = self.claim_path(&rec.key);
        match self.read_claim(&rec.key)? {
            Some(old) if !is_expired(old.expires_at, now) => return Ok(existing(old)),
            Some(_) => remove_if_exists(&path)?,
            None => {}
        }
        rec.expires_at = expires_at(now, ttl_secs);
        let bytes = serde_json::to_vec(&rec).map_err(|e| StateError::Corrupt {
            key: rec.key.clone(),
            reason: format!("cannot serialise claim: {e}"),
        })?;
        let dir = self.dir.join(CLAIMS);
        match write_exclusive(&dir, &path, &bytes) {
            Ok(()) => Ok(Claim::New),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                // Someone not holding the lock got there first: they win.
                match self.read_claim(&rec.key)? {
                    Some(old) => Ok(existing(old)),
                    None => Err(StateError::Unavailable(format!(
                        "claim {} appeared and vanished while claiming",
                        path.display()
                    ))),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The caller holds the writer locks.
    fn mark_receipt_sent(&self, key: &str) -> Result<(), StateError> {
        let Some(mut rec) = self.read_claim(key)? else {
            tracing::warn!(key, "mark_receipt_sent: no claim (expired?)");
            return Ok(());
        };
        if is_expired(rec.expires_at, now_secs()) {
            tracing::warn!(key, "mark_receipt_sent: the claim has expired");
            return Ok(());
        }
        if rec.receipt_sent {
            return Ok(());
        }
        rec.receipt_sent = true;
        let bytes = serde_json::to_vec(&rec).map_err(|e| StateError::Corrupt {
            key: key.to_owned(),
            reason: format!("cannot serialise claim: {e}"),
        })?;
        let dir = self.dir.join(CLAIMS);
        write_replace(&dir, &self.claim_path(key), &bytes)?;
        Ok(())
    }

    /// The caller holds the writer locks, so every temporary file found is
    /// a leftover of a crash.
    fn purge_expired(&self) -> Result<usize, StateError> {
        let now = now_secs();
        let mut purged = 0;
        for sub in [CLAIMS, ENVELOPES, MARKS] {
            for entry in fs::read_dir(self.dir.join(sub))? {
                let entry = entry?;
                let path = entry.path();
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if name.starts_with(TMP_PREFIX) {
                    remove_if_exists(&path)?;
                    continue;
                }
                if name.starts_with('.') || !entry.file_type()?.is_file() {
                    continue;
                }
                let Some(bytes) = read_if_exists(&path)? else {
                    continue;
                };
                match serde_json::from_slice::<ExpiryOnly>(&bytes) {
                    Ok(rec) if is_expired(rec.expires_at, now) => {
                        remove_if_exists(&path)?;
                        purged += 1;
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "unreadable state record left in place");
                    }
                }
            }
        }
        self.purge_tracked(now)?;
        Ok(purged)
    }

    /// The sweep of the index: temporary files and entries whose envelope
    /// is gone, expired or untracked (not counted: they are not records).
    fn purge_tracked(&self, now: i64) -> Result<(), StateError> {
        let mut stale = Vec::new();
        for entry in fs::read_dir(self.dir.join(TRACKED))? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with(TMP_PREFIX) {
                remove_if_exists(&path)?;
                continue;
            }
            if name.starts_with('.') || !entry.file_type()?.is_file() {
                continue;
            }
            let Some(bytes) = read_if_exists(&path)? else {
                continue;
            };
            match serde_json::from_slice::<TrackedEntry>(&bytes) {
                Ok(idx) => stale.push(idx.pec_id),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "unreadable index entry left in place");
                }
            }
        }
        self.drop_stale(&stale, now)?;
        Ok(())
    }
}

/// The file of an envelope record kept `ttl_secs` from now, its index
/// entry, and whether it is tracked.
fn envelope_bytes(
    rec: &EnvelopeRecord,
    ttl_secs: u64,
) -> Result<(TrackedEntry, bool, Vec<u8>), StateError> {
    let file = EnvelopeFileRef {
        expires_at: expires_at(now_secs(), ttl_secs),
        record: rec,
    };
    let bytes = serde_json::to_vec(&file).map_err(|e| StateError::Corrupt {
        key: rec.pec_id.clone(),
        reason: format!("cannot serialise envelope: {e}"),
    })?;
    let entry = TrackedEntry {
        pec_id: rec.pec_id.clone(),
        submitted_at: rec.submitted_at,
    };
    Ok((entry, rec.is_tracked(), bytes))
}

fn existing(rec: ClaimFile) -> Claim {
    Claim::Existing {
        pec_id: rec.pec_id,
        submitted_at: rec.submitted_at,
        receipt_sent: rec.receipt_sent,
    }
}

/// Holds an exclusive `flock` until dropped.
struct FlockGuard<'a>(&'a File);

impl<'a> FlockGuard<'a> {
    fn lock(file: &'a File) -> io::Result<Self> {
        file.lock()?;
        Ok(Self(file))
    }
}

impl Drop for FlockGuard<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.0.unlock() {
            tracing::warn!(error = %e, "cannot unlock the embedded state store lock");
        }
    }
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn expires_at(now: i64, ttl_secs: u64) -> i64 {
    now.saturating_add(i64::try_from(ttl_secs.max(1)).unwrap_or(i64::MAX))
}

fn is_expired(expires_at: i64, now: i64) -> bool {
    now > expires_at
}

/// A file name safe for any key; see the module documentation.
fn file_name(key: &str) -> String {
    if key.len() <= MAX_PLAIN_KEY {
        format!("k-{}", crate::crypto::verify::hex_lower(key.as_bytes()))
    } else {
        format!(
            "s-{}",
            crate::crypto::verify::hex_lower(&openssl::sha::sha256(key.as_bytes()))
        )
    }
}

fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, StateError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn remove_if_exists(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Write `bytes` to a new temporary file in `dir`, fsynced. Returns its
/// path; the caller moves it into place.
fn write_temp(dir: &Path, bytes: &[u8]) -> io::Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .subsec_nanos();
    let tmp = dir.join(format!(
        "{TMP_PREFIX}{}-{}-{nanos}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    match write_new_file(&tmp, bytes) {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn write_new_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = OpenOptions::new().write(true).create_new(true).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Atomically create or replace `path` with `bytes`.
fn write_replace(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = write_temp(dir, bytes)?;
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

/// Atomically create `path` with `bytes`, failing with `AlreadyExists` if
/// it exists (`link(2)` is exclusive like `O_CREAT|O_EXCL`, and the file
/// is complete when its name appears).
fn write_exclusive(dir: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = write_temp(dir, bytes)?;
    let linked = fs::hard_link(&tmp, path);
    let _ = fs::remove_file(&tmp);
    linked?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_the_same_in_every_process_and_spread() {
        // FNV-1a: fixed values (another process, another build, must agree)
        assert_eq!(shard(""), 5);
        assert_eq!(shard("a"), 12);
        assert_eq!(shard("pec.20261202.1@pec.demo.test"), 4);
        assert_eq!(shard("consegna:ab"), 6);
        let used: std::collections::HashSet<usize> =
            (0..200).map(|i| shard(&format!("k{i}"))).collect();
        assert_eq!(used.len(), SHARDS);
    }

    #[test]
    fn file_names_are_safe_for_any_key() {
        assert_eq!(file_name(""), "k-");
        assert_eq!(file_name("a/b"), "k-612f62");
        let long = "x".repeat(1000);
        let name = file_name(&long);
        assert!(name.starts_with("s-"));
        assert_eq!(name.len(), 2 + 64);
        let max = "é".repeat(MAX_PLAIN_KEY / 2);
        assert!(file_name(&max).len() <= 2 + 2 * MAX_PLAIN_KEY);
        assert_ne!(file_name("ab"), file_name("ba"));
    }

    #[test]
    fn expiry_keeps_records_at_least_ttl() {
        assert_eq!(expires_at(10, 0), 11);
        assert!(!is_expired(expires_at(10, 1), 11));
        assert!(is_expired(expires_at(10, 1), 12));
    }
}
