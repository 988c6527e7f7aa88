//! [`EmbeddedStore`]: the state of a single node in one SQLite database
//! file, `<dir>/state.sqlite`. No server needed.
//!
//! # Durability and group commit
//!
//! The database runs in WAL mode with `synchronous = FULL`: a transaction
//! is on disk (the WAL fsynced) before its callers hear that it is done.
//! Every operation of a store goes to one writer thread as a job. The
//! thread takes every job waiting, runs them in one transaction (each
//! under its own savepoint, so a failed job leaves no half change) and
//! commits once: concurrent submissions share one fsync instead of paying
//! one each. A job's answer is delivered only after the commit; if the
//! commit fails, every job of the batch gets [`StateError::Unavailable`]
//! (the milter answers 4xx and the MTA retries).
//!
//! An access-point submission costs two jobs: [`StateStore::claim`] and
//! [`StateStore::record_acceptance`] (the envelope record and the "receipt
//! sent" flag of its claim, written together).
//!
//! # Several processes
//!
//! Processes on one host may open the same directory: SQLite's file locks
//! serialise their write transactions (a writer waits up to
//! [`BUSY_TIMEOUT`] for another process's transaction, then the batch fails
//! with `Unavailable`), and `claim` / `once` are check-and-set inside a
//! write transaction, so the first writer wins across processes too. The
//! directory must be on a local file system (SQLite's WAL needs shared
//! memory between the processes).
//!
//! # Schema (`PRAGMA user_version` = 1)
//!
//! ```text
//! claims    (key PK, pec_id, submitted_at, receipt_sent, expires_at)
//! envelopes (pec_id PK, record JSON, tracked, submitted_at, expires_at)
//!           + partial index on submitted_at WHERE tracked = 1
//! marks     (key PK, done, expires_at)
//! ```
//!
//! `tracked` is [`EnvelopeRecord::is_tracked`] of the stored record, set on
//! every write, so [`StateStore::tracked`] is an index range scan: linear in
//! the envelopes waiting for an outcome, not in those stored.
//!
//! # Expiry
//!
//! Every row carries `expires_at` (Unix seconds, `now + ttl`, with `now`
//! rounded down); a row is expired once the current Unix second is past
//! `expires_at`, so it lives at least `ttl` seconds. Expired rows are
//! treated as absent; [`EmbeddedStore::purge_expired`] deletes them (the
//! daemon runs it every hour). A TTL of 0 is treated as 1 second.
//!
//! # Earlier versions
//!
//! Versions before 0.1.1 kept one JSON file per record in `claims/`,
//! `envelopes/`, `tracked/` and `marks/`. [`EmbeddedStore::open`] imports
//! such files once, in one transaction, and moves those directories into
//! `<dir>/imported-files/`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};
use serde::Deserialize;
use tokio::sync::oneshot;

use super::{Claim, Depth, EnvelopeRecord, OutboxEntry, StateError, StateStore};

/// The database file inside the store directory.
pub const DB_FILE: &str = "state.sqlite";
/// How long a write transaction waits for another process's.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// At most this many jobs share one transaction.
const MAX_BATCH: usize = 256;
const SCHEMA_VERSION: i64 = 1;
/// The directories of the file layout of earlier versions.
const LEGACY_DIRS: [&str; 4] = ["claims", "envelopes", "tracked", "marks"];
const IMPORTED_DIR: &str = "imported-files";
/// The lock files `.lock.0` .. `.lock.15` of the file layout.
const LEGACY_LOCK_SHARDS: usize = 16;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY,
    pec_id TEXT NOT NULL,
    submitted_at INTEGER NOT NULL,
    receipt_sent INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS claims_expiry ON claims (expires_at);
CREATE TABLE IF NOT EXISTS envelopes (
    pec_id TEXT PRIMARY KEY,
    record TEXT NOT NULL,
    tracked INTEGER NOT NULL,
    submitted_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS envelopes_tracked ON envelopes (submitted_at) WHERE tracked = 1;
CREATE INDEX IF NOT EXISTS envelopes_expiry ON envelopes (expires_at);
CREATE TABLE IF NOT EXISTS marks (
    key TEXT PRIMARY KEY,
    done INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT NOT NULL UNIQUE,
    queued_at INTEGER NOT NULL,
    entry BLOB NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_queued ON outbox (queued_at);
";

/// Rows of each table, expired ones included (for tests and `inspect`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counts {
    pub claims: u64,
    pub envelopes: u64,
    pub tracked: u64,
    pub marks: u64,
    pub outbox: u64,
}

/// One operation for the writer thread: runs against the connection
/// inside the batch's transaction and returns what delivers its answer
/// once the commit's outcome is known.
/// It gets `Err(why)` instead of the connection when the transaction could
/// not begin.
type Job = Box<dyn FnOnce(Result<&Connection, &str>) -> Deliver + Send>;
/// Delivers a job's answer: `None` if the commit succeeded, else why not.
type Deliver = Box<dyn FnOnce(Option<&str>) + Send>;

/// Single-node state store in SQLite. See the [module documentation](self).
#[derive(Debug)]
pub struct EmbeddedStore {
    dir: PathBuf,
    jobs: mpsc::Sender<Job>,
}

impl EmbeddedStore {
    /// Open (creating it if needed) the store in `dir`, importing the
    /// files of an earlier version's layout if there are any, and start
    /// its writer thread (which ends when the store is dropped).
    ///
    /// This does blocking file I/O: call it at start-up, or from a
    /// blocking context.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        fs::create_dir_all(dir)?;
        let mut conn = open_db(&dir.join(DB_FILE))?;
        import_legacy(&mut conn, dir)?;
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("pec-state".into())
            .spawn(move || writer(conn, rx))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            jobs,
        })
    }

    /// The directory of the store.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Delete every expired row. Returns how many were deleted.
    pub async fn purge_expired(&self) -> Result<usize, StateError> {
        StateStore::purge_expired(self).await
    }

    /// How many rows each table holds, expired ones included.
    pub async fn counts(&self) -> Result<Counts, StateError> {
        self.run(|c| {
            let count = |sql: &str| -> Result<u64, StateError> {
                let n: i64 = c.prepare_cached(sql)?.query_row([], |r| r.get(0))?;
                Ok(u64::try_from(n).unwrap_or(0))
            };
            Ok(Counts {
                claims: count("SELECT count(*) FROM claims")?,
                envelopes: count("SELECT count(*) FROM envelopes")?,
                tracked: count("SELECT count(*) FROM envelopes WHERE tracked = 1")?,
                marks: count("SELECT count(*) FROM marks")?,
                outbox: count("SELECT count(*) FROM outbox")?,
            })
        })
        .await
    }

    /// Run `f` on the writer thread inside the next batch's transaction;
    /// its answer once the batch is committed.
    async fn run<T, F>(&self, f: F) -> Result<T, StateError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StateError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<Result<T, StateError>>();
        let job: Job = Box::new(move |conn: Result<&Connection, &str>| {
            let result = match conn {
                Ok(conn) => in_savepoint(conn, f),
                Err(why) => Err(StateError::Unavailable(format!(
                    "embedded state store: cannot begin a transaction: {why}"
                ))),
            };
            Box::new(move |commit_error: Option<&str>| {
                let answer = match (commit_error, result) {
                    (Some(why), Ok(_)) => Err(StateError::Unavailable(format!(
                        "embedded state store: commit failed: {why}"
                    ))),
                    (_, r) => r,
                };
                // The caller may have gone away (cancelled): nothing to do.
                let _ = tx.send(answer);
            }) as Deliver
        });
        self.jobs.send(job).map_err(|_| {
            StateError::Unavailable("embedded state store: writer thread has stopped".into())
        })?;
        rx.await.map_err(|_| {
            StateError::Unavailable("embedded state store: writer thread dropped a job".into())
        })?
    }
}

/// Run `f` under a savepoint: rolled back if it fails, so a failed job
/// leaves nothing behind in the batch's transaction.
fn in_savepoint<T>(
    conn: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, StateError>,
) -> Result<T, StateError> {
    // Outside a transaction (SQLite rolled the batch's back after an I/O
    // error) a savepoint would commit on its own: refuse, the batch fails.
    if conn.is_autocommit() {
        return Err(StateError::Unavailable(
            "embedded state store: the batch's transaction was rolled back".into(),
        ));
    }
    conn.execute_batch("SAVEPOINT job")?;
    // A bug that panics in one operation fails that operation (its changes
    // rolled back below), not the writer thread and the whole store.
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn))).unwrap_or_else(|_| {
            tracing::error!("embedded state store: an operation panicked; answered as unavailable");
            Err(StateError::Unavailable(
                "embedded state store: the operation failed (panic)".into(),
            ))
        });
    if result.is_err() {
        conn.execute_batch("ROLLBACK TO job")?;
    }
    conn.execute_batch("RELEASE job")?;
    result
}

/// The writer thread: batches of jobs, one transaction and one commit
/// each, until every sender is gone.
fn writer(conn: Connection, rx: mpsc::Receiver<Job>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let size = batch.len();
        if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
            let why = e.to_string();
            tracing::warn!(error = %why, jobs = size, "embedded state store: cannot begin a transaction");
            // Run nothing; answer every job with the error.
            for job in batch {
                job(Err(&why))(None);
            }
            continue;
        }
        let delivers: Vec<Deliver> = batch.into_iter().map(|job| job(Ok(&conn))).collect();
        let commit = conn.execute_batch("COMMIT").map_err(|e| e.to_string());
        if let Err(why) = &commit {
            tracing::warn!(error = %why, jobs = size, "embedded state store: commit failed");
            let _ = conn.execute_batch("ROLLBACK");
        }
        let why = commit.err();
        for deliver in delivers {
            deliver(why.as_deref());
        }
    }
}

fn open_db(path: &Path) -> Result<Connection, StateError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // WAL: one fsync per commit, readers never block the writer.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StateError::Unavailable(format!(
            "{}: cannot switch to WAL mode (got {mode}): is it on a local file system?",
            path.display()
        )));
    }
    conn.execute_batch("PRAGMA synchronous = FULL;")?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StateError::Unavailable(format!(
            "{}: schema version {version} is newer than this pec-milter's ({SCHEMA_VERSION})",
            path.display()
        )));
    }
    conn.execute_batch(&format!(
        "BEGIN IMMEDIATE; {SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
    ))?;
    Ok(conn)
}

impl From<rusqlite::Error> for StateError {
    fn from(e: rusqlite::Error) -> Self {
        StateError::Unavailable(format!("embedded state store: {e}"))
    }
}

/// A column that does not hold what the schema says: a corrupt row.
fn corrupt(key: &str, e: impl std::fmt::Display) -> StateError {
    StateError::Corrupt {
        key: key.to_owned(),
        reason: e.to_string(),
    }
}

/// Row reading errors: type mismatches are corruption, the rest I/O.
fn row_error(key: &str, e: rusqlite::Error) -> StateError {
    match e {
        rusqlite::Error::InvalidColumnType(..)
        | rusqlite::Error::FromSqlConversionFailure(..)
        | rusqlite::Error::IntegralValueOutOfRange(..) => corrupt(key, e),
        e => e.into(),
    }
}

/// A live claim of `key`, if any.
fn live_claim(c: &Connection, key: &str, now: i64) -> Result<Option<Claim>, StateError> {
    let row = c
        .prepare_cached(
            "SELECT pec_id, submitted_at, receipt_sent FROM claims WHERE key = ?1 AND expires_at >= ?2",
        )?
        .query_row(params![key, now], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, bool>(2)?,
            ))
        })
        .optional()
        .map_err(|e| row_error(key, e))?;
    Ok(
        row.map(|(pec_id, submitted_at, receipt_sent)| Claim::Existing {
            pec_id,
            submitted_at,
            receipt_sent,
        }),
    )
}

/// The live envelope `pec_id` as stored (JSON) and parsed.
fn live_envelope(
    c: &Connection,
    pec_id: &str,
    now: i64,
) -> Result<Option<(String, EnvelopeRecord)>, StateError> {
    let raw: Option<String> = c
        .prepare_cached("SELECT record FROM envelopes WHERE pec_id = ?1 AND expires_at >= ?2")?
        .query_row(params![pec_id, now], |r| r.get(0))
        .optional()
        .map_err(|e| row_error(pec_id, e))?;
    let Some(raw) = raw else { return Ok(None) };
    let rec = parse_envelope(pec_id, &raw)?;
    Ok(Some((raw, rec)))
}

fn parse_envelope(pec_id: &str, raw: &str) -> Result<EnvelopeRecord, StateError> {
    let rec: EnvelopeRecord = serde_json::from_str(raw).map_err(|e| corrupt(pec_id, e))?;
    if rec.pec_id != pec_id {
        return Err(corrupt(
            pec_id,
            format!("the row holds the envelope {:?}", rec.pec_id),
        ));
    }
    Ok(rec)
}

/// Create or replace the envelope row of `rec`.
fn upsert_envelope(
    c: &Connection,
    rec: &EnvelopeRecord,
    json: &str,
    expires: i64,
) -> Result<(), StateError> {
    c.prepare_cached(
        "INSERT INTO envelopes (pec_id, record, tracked, submitted_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (pec_id) DO UPDATE SET record = excluded.record,
           tracked = excluded.tracked, submitted_at = excluded.submitted_at,
           expires_at = excluded.expires_at",
    )?
    .execute(params![
        rec.pec_id,
        json,
        rec.is_tracked(),
        rec.submitted_at,
        expires
    ])?;
    Ok(())
}

/// Set the "receipt sent" flag of the live claim `key` (warn if none).
fn set_receipt_sent(c: &Connection, key: &str, now: i64) -> Result<(), StateError> {
    let n = c
        .prepare_cached("UPDATE claims SET receipt_sent = 1 WHERE key = ?1 AND expires_at >= ?2")?
        .execute(params![key, now])?;
    if n == 0 {
        tracing::warn!(key, "mark_receipt_sent: no live claim (expired?)");
    }
    Ok(())
}

/// Keep `entries` (an id already kept is left as it is).
fn put_outbox(
    c: &Connection,
    entries: &[(String, i64, Vec<u8>)],
    expires: i64,
) -> Result<(), StateError> {
    let mut insert = c.prepare_cached(
        "INSERT OR IGNORE INTO outbox (id, queued_at, entry, expires_at) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for (id, queued_at, bytes) in entries {
        insert.execute(params![id, queued_at, bytes, expires])?;
    }
    Ok(())
}

fn encoded(outbox: &[OutboxEntry]) -> Vec<(String, i64, Vec<u8>)> {
    outbox
        .iter()
        .map(|e| (e.id.clone(), e.queued_at, e.encode()))
        .collect()
}

fn envelope_json(rec: &EnvelopeRecord) -> Result<String, StateError> {
    serde_json::to_string(rec)
        .map_err(|e| corrupt(&rec.pec_id, format!("cannot serialise envelope: {e}")))
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
        let (key, pec_id) = (key.to_owned(), pec_id.to_owned());
        self.run(move |c| {
            let now = now_secs();
            if let Some(existing) = live_claim(c, &key, now)? {
                return Ok(existing);
            }
            c.prepare_cached(
                "INSERT OR REPLACE INTO claims (key, pec_id, submitted_at, receipt_sent, expires_at)
                 VALUES (?1, ?2, ?3, 0, ?4)",
            )?
            .execute(params![key, pec_id, submitted_at, expires_at(now, ttl_secs)])?;
            Ok(Claim::New)
        })
        .await
    }

    async fn mark_receipt_sent(
        &self,
        key: &str,
        outbox: &[OutboxEntry],
        ttl_secs: u64,
    ) -> Result<(), StateError> {
        let (key, entries) = (key.to_owned(), encoded(outbox));
        self.run(move |c| {
            let now = now_secs();
            put_outbox(c, &entries, expires_at(now, ttl_secs))?;
            set_receipt_sent(c, &key, now)
        })
        .await
    }

    async fn put_envelope(&self, rec: &EnvelopeRecord, ttl_secs: u64) -> Result<(), StateError> {
        let json = envelope_json(rec)?;
        let rec = rec.clone();
        self.run(move |c| upsert_envelope(c, &rec, &json, expires_at(now_secs(), ttl_secs)))
            .await
    }

    /// The envelope row and the claim's flag in one job, so one
    /// transaction (and, shared with the batch, one fsync).
    async fn record_acceptance(
        &self,
        key: &str,
        rec: &EnvelopeRecord,
        ttl_secs: u64,
        outbox: &[OutboxEntry],
    ) -> Result<(), StateError> {
        let json = envelope_json(rec)?;
        let (key, rec, entries) = (key.to_owned(), rec.clone(), encoded(outbox));
        self.run(move |c| {
            let now = now_secs();
            upsert_envelope(c, &rec, &json, expires_at(now, ttl_secs))?;
            put_outbox(c, &entries, expires_at(now, ttl_secs))?;
            set_receipt_sent(c, &key, now)
        })
        .await
    }

    async fn outbox_due(
        &self,
        queued_before: i64,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StateError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows: Vec<(String, Vec<u8>)> = self
            .run(move |c| {
                let mut q = c.prepare_cached(
                    "SELECT id, entry FROM outbox WHERE queued_at <= ?1 AND expires_at >= ?2
                     ORDER BY queued_at LIMIT ?3",
                )?;
                let rows = q
                    .query_map(params![queued_before, now_secs(), limit], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows)
            })
            .await?;
        rows.iter()
            .map(|(id, bytes)| OutboxEntry::decode(id, bytes))
            .collect()
    }

    /// Two counts over indexed columns: the outbox's rows and the
    /// envelopes' partial index of the tracked ones (expired rows left out).
    async fn depth(&self) -> Result<Depth, StateError> {
        self.run(|c| {
            let now = now_secs();
            let count = |sql: &str| -> Result<u64, StateError> {
                let n: i64 = c.prepare_cached(sql)?.query_row([now], |r| r.get(0))?;
                Ok(u64::try_from(n).unwrap_or(0))
            };
            Ok(Depth {
                outbox: count("SELECT count(*) FROM outbox WHERE expires_at >= ?1")?,
                tracked: count(
                    "SELECT count(*) FROM envelopes WHERE tracked = 1 AND expires_at >= ?1",
                )?,
            })
        })
        .await
    }

    async fn outbox_done(&self, id: &str) -> Result<(), StateError> {
        let id = id.to_owned();
        self.run(move |c| {
            c.prepare_cached("DELETE FROM outbox WHERE id = ?1")?
                .execute([id])?;
            Ok(())
        })
        .await
    }

    async fn get_envelope(&self, pec_id: &str) -> Result<Option<EnvelopeRecord>, StateError> {
        let id = pec_id.to_owned();
        Ok(self
            .run(move |c| live_envelope(c, &id, now_secs()))
            .await?
            .map(|(_, rec)| rec))
    }

    /// A compare-and-set loop: read the stored JSON with the record, apply
    /// `f`, then write only if the row still holds that JSON.
    async fn update_envelope(
        &self,
        pec_id: &str,
        ttl_secs: u64,
        f: &super::Update<'_>,
    ) -> Result<Option<EnvelopeRecord>, StateError> {
        let read = || async {
            let id = pec_id.to_owned();
            self.run(move |c| live_envelope(c, &id, now_secs())).await
        };
        let write = |old: String, rec: EnvelopeRecord| async move {
            let json = envelope_json(&rec)?;
            self.run(move |c| {
                let now = now_secs();
                let n = c
                    .prepare_cached(
                        "UPDATE envelopes SET record = ?1, tracked = ?2, expires_at = ?3
                         WHERE pec_id = ?4 AND record = ?5 AND expires_at >= ?6",
                    )?
                    .execute(params![
                        json,
                        rec.is_tracked(),
                        expires_at(now, ttl_secs),
                        rec.pec_id,
                        old,
                        now
                    ])?;
                Ok(n == 1)
            })
            .await
        };
        super::compare_and_set(pec_id, f, read, write).await
    }

    async fn tracked(&self, submitted_before: i64) -> Result<Vec<EnvelopeRecord>, StateError> {
        self.run(move |c| {
            let now = now_secs();
            let mut stmt = c.prepare_cached(
                "SELECT pec_id, record FROM envelopes
                 WHERE tracked = 1 AND submitted_at <= ?1 AND expires_at >= ?2",
            )?;
            let rows = stmt.query_map(params![submitted_before, now], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
            })?;
            let mut live = Vec::new();
            for row in rows {
                let (id, raw) = match row {
                    Ok(row) => row,
                    Err(e) => {
                        tracing::warn!(error = %e, "tracked: unreadable row skipped");
                        continue;
                    }
                };
                match parse_envelope(&id, &raw) {
                    Ok(rec) if rec.is_tracked() => live.push(rec),
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(pec_id = %id, error = %e, "tracked: unreadable envelope skipped");
                    }
                }
            }
            Ok(live)
        })
        .await
    }

    async fn once(&self, key: &str, ttl_secs: u64) -> Result<bool, StateError> {
        let key = key.to_owned();
        self.run(move |c| {
            let now = now_secs();
            // Insert, or take over an expired marker; a live one wins.
            let n = c
                .prepare_cached(
                    "INSERT INTO marks (key, done, expires_at) VALUES (?1, 0, ?2)
                     ON CONFLICT (key) DO UPDATE SET done = 0, expires_at = excluded.expires_at
                     WHERE marks.expires_at < ?3",
                )?
                .execute(params![key, expires_at(now, ttl_secs), now])?;
            Ok(n == 1)
        })
        .await
    }

    async fn confirm(
        &self,
        key: &str,
        ttl_secs: u64,
        outbox: &[OutboxEntry],
    ) -> Result<(), StateError> {
        let (key, entries) = (key.to_owned(), encoded(outbox));
        self.run(move |c| {
            let now = now_secs();
            // the entries live as long as the marker that says they exist
            put_outbox(c, &entries, expires_at(now, ttl_secs))?;
            c.prepare_cached(
                "INSERT OR REPLACE INTO marks (key, done, expires_at) VALUES (?1, 1, ?2)",
            )?
            .execute(params![key, expires_at(now, ttl_secs)])?;
            Ok(())
        })
        .await
    }

    async fn confirmed(&self, key: &str) -> Result<bool, StateError> {
        let key = key.to_owned();
        self.run(move |c| {
            let done: Option<bool> = c
                .prepare_cached("SELECT done FROM marks WHERE key = ?1 AND expires_at >= ?2")?
                .query_row(params![key, now_secs()], |r| r.get(0))
                .optional()
                .map_err(|e| row_error(&key, e))?;
            Ok(done == Some(true))
        })
        .await
    }

    async fn release(&self, key: &str) -> Result<(), StateError> {
        let key = key.to_owned();
        self.run(move |c| {
            c.prepare_cached("DELETE FROM marks WHERE key = ?1")?
                .execute([key])?;
            Ok(())
        })
        .await
    }

    async fn purge_expired(&self) -> Result<usize, StateError> {
        self.run(|c| {
            let now = now_secs();
            let mut n = 0;
            for table in ["claims", "envelopes", "marks"] {
                n += c
                    .prepare_cached(&format!("DELETE FROM {table} WHERE expires_at < ?1"))?
                    .execute([now])?;
            }
            let unsent = c
                .prepare_cached("DELETE FROM outbox WHERE expires_at < ?1")?
                .execute([now])?;
            if unsent > 0 {
                tracing::error!(
                    unsent,
                    "outbox: messages never handed to the MTA within the retention expired"
                );
            }
            Ok(n + unsent)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StateError> {
        self.run(|c| {
            let one: i64 = c.query_row("SELECT 1", [], |r| r.get(0))?;
            if one == 1 {
                Ok(())
            } else {
                Err(StateError::Unavailable(
                    "embedded state store: SELECT 1 answered otherwise".into(),
                ))
            }
        })
        .await
    }
}

// ---------------------------------------------------------------------------
// Import of the file layout of earlier versions.

#[derive(Deserialize)]
struct LegacyClaim {
    key: String,
    pec_id: String,
    submitted_at: i64,
    receipt_sent: bool,
    expires_at: i64,
}

#[derive(Deserialize)]
struct LegacyEnvelope {
    expires_at: i64,
    record: EnvelopeRecord,
}

#[derive(Deserialize)]
struct LegacyMark {
    key: String,
    done: bool,
    expires_at: i64,
}

/// Import the records of the one-file-per-record layout (if `dir` has
/// any of its directories) in one transaction, then move the directories
/// into `<dir>/imported-files/` so that this runs once. Unreadable files
/// are left there and logged.
fn import_legacy(conn: &mut Connection, dir: &Path) -> Result<(), StateError> {
    let present: Vec<&str> = LEGACY_DIRS
        .iter()
        .copied()
        .filter(|d| dir.join(d).is_dir())
        .collect();
    if present.is_empty() {
        return Ok(());
    }
    let mut tally = Tally::default();
    let tx = conn.transaction()?;
    import_dir(dir, "claims", &mut tally, |c: LegacyClaim| {
        tx.execute(
            "INSERT OR REPLACE INTO claims VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                c.key,
                c.pec_id,
                c.submitted_at,
                c.receipt_sent,
                c.expires_at
            ],
        )?;
        Ok(())
    })?;
    import_dir(dir, "envelopes", &mut tally, |e: LegacyEnvelope| {
        let json = envelope_json(&e.record)?;
        upsert_envelope(&tx, &e.record, &json, e.expires_at)
    })?;
    import_dir(dir, "marks", &mut tally, |m: LegacyMark| {
        tx.execute(
            "INSERT OR REPLACE INTO marks VALUES (?1, ?2, ?3)",
            params![m.key, m.done, m.expires_at],
        )?;
        Ok(())
    })?;
    tx.commit()?;
    let dest = dir.join(IMPORTED_DIR);
    fs::create_dir_all(&dest)?;
    for d in present {
        fs::rename(dir.join(d), dest.join(d))?;
    }
    for n in 0..LEGACY_LOCK_SHARDS {
        let _ = fs::remove_file(dir.join(format!(".lock.{n}")));
    }
    tracing::info!(
        dir = %dir.display(),
        imported = tally.imported,
        skipped = tally.skipped,
        "embedded state store: records of the earlier file layout imported into {DB_FILE}; the files are in {IMPORTED_DIR}/"
    );
    Ok(())
}

/// Records imported and files left in place by [`import_dir`].
#[derive(Default)]
struct Tally {
    imported: usize,
    skipped: usize,
}

/// Parse every record file of `dir/sub` (one at a time) as a `T` and hand
/// it to `insert`; a file that does not parse is left in place and logged.
fn import_dir<T: serde::de::DeserializeOwned>(
    dir: &Path,
    sub: &str,
    tally: &mut Tally,
    mut insert: impl FnMut(T) -> Result<(), StateError>,
) -> Result<(), StateError> {
    let path = dir.join(sub);
    if !path.is_dir() {
        return Ok(());
    }
    for entry in fs::read_dir(&path)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with('.') || !entry.file_type()?.is_file() {
            continue;
        }
        match serde_json::from_slice::<T>(&fs::read(entry.path())?) {
            Ok(rec) => {
                insert(rec)?;
                tally.imported += 1;
            }
            Err(e) => {
                tally.skipped += 1;
                tracing::warn!(path = %entry.path().display(), kind = sub, error = %e, "import: unreadable record left in place");
            }
        }
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A panicking operation fails alone: rolled back, answered as
    /// unavailable, and the store goes on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_job_fails_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = EmbeddedStore::open(dir.path()).expect("open");
        let res: Result<(), StateError> = store
            .run(|c| {
                c.execute("INSERT INTO marks VALUES ('half', 0, 9999999999)", [])?;
                panic!("a bug in an operation")
            })
            .await;
        assert!(matches!(res, Err(StateError::Unavailable(_))), "{res:?}");
        assert!(!store.confirmed("half").await.expect("confirmed"));
        assert!(
            store.once("half", 60).await.expect("once"),
            "its insert was rolled back"
        );
        assert_eq!(store.counts().await.expect("counts").marks, 1);
    }

    #[test]
    fn expiry_keeps_records_at_least_ttl() {
        assert_eq!(expires_at(10, 0), 11);
        assert!(expires_at(10, 1) >= 11);
        assert_eq!(expires_at(i64::MAX - 1, u64::MAX), i64::MAX);
    }
}
