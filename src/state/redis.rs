//! [`RedisStore`]: the production state store, one Redis shared by every
//! MTA node.
//!
//! # Keys
//!
//! - `<prefix>claim:<key>`: JSON `{"pec_id", "submitted_at",
//!   "receipt_sent"}`, created with `SET NX EX ttl` (first writer wins,
//!   across nodes) and updated with `SET ... XX KEEPTTL` (Redis >= 6.0).
//! - `<prefix>env:<pec_id>`: the JSON [`EnvelopeRecord`], `SET ... EX ttl`.
//! - `<prefix>tracked`: sorted set of the tracked envelopes (member the
//!   PEC id, score `submitted_at`). [`StateStore::put_envelope`] writes the
//!   envelope and adds it (`ZADD`) or removes it (`ZREM`) in one
//!   `MULTI`/`EXEC` transaction, so the index never disagrees with the
//!   record; [`StateStore::tracked`] is a `ZRANGEBYSCORE` followed by
//!   `MGET`s of the envelopes, and drops (with a script that checks the
//!   envelope key is still absent) the members whose envelope expired.
//!   [`StateStore::update_envelope`] is a compare-and-set: `GET` the
//!   value, change the record, then a script writes the new value (and
//!   updates the index) only if the key still holds the value read.
//! - `<prefix>once:<key>`: the markers of [`StateStore::once`] (`SET NX EX`,
//!   value `held`), [`StateStore::confirm`] (`SET ... EX`, value `done`),
//!   [`StateStore::release`] (`DEL`).
//!
//! A TTL of 0 is treated as 1 second (Redis refuses `EX 0`).
//!
//! # Connection and failures
//!
//! [`RedisStore::connect`] is **lazy**: it only parses the URL and never
//! talks to Redis, so the daemon starts even when Redis is down (a
//! start-up check can call [`StateStore::ping`]). The first operation
//! opens the connection; until Redis is reachable every operation fails
//! with [`StateError::Unavailable`] (the milter answers 4xx and the MTA
//! retries), and the store recovers by itself when Redis comes back.
//!
//! Reconnection is done by [`redis::aio::ConnectionManager`]: when the
//! connection drops it reconnects in the background (a few quick attempts
//! with a short back-off, each bounded by a connection timeout), and when
//! those fail the next operation starts another round.
//!
//! Every operation of the store (which may be two or three Redis commands)
//! is bounded by a timeout ([`DEFAULT_TIMEOUT`], see
//! [`RedisStore::with_timeout`]); past it the operation fails with
//! [`StateError::Unavailable`], so a hung Redis never blocks the milter.
//! Every Redis error (refused connection, dropped connection, timeout,
//! error reply) is reported as [`StateError::Unavailable`] with its cause;
//! a value that is not the JSON we wrote is [`StateError::Corrupt`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Cmd, FromRedisValue, Pipeline, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use super::{Claim, EnvelopeRecord, OutboxEntry, StateError, StateStore};

/// Default bound of one store operation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Bound of one TCP connection attempt (and handshake) to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Reconnection attempts per round, after the first one.
const RECONNECT_RETRIES: usize = 2;
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(50);
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);
/// How many times `claim` retries when the key expires between its failed
/// `SET NX` and its `GET`.
const CLAIM_ATTEMPTS: usize = 3;

/// State store on a Redis server shared by several nodes. Cheap to clone
/// (clones share the connection).
#[derive(Clone)]
pub struct RedisStore {
    client: redis::Client,
    /// Built on first use (it spawns a task, so it needs the runtime).
    conn: Arc<OnceCell<ConnectionManager>>,
    prefix: String,
    timeout: Duration,
}

impl std::fmt::Debug for RedisStore {
    // The connection info may hold a password: keep it out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// How many envelopes one `MGET` of [`StateStore::tracked`] fetches.
const TRACKED_BATCH: usize = 200;
/// Value of a marker taken with `once`.
const MARK_HELD: &str = "held";
/// Value of a confirmed marker.
const MARK_DONE: &str = "done";

/// Drops the members of the tracked set (`KEYS[1]`) whose envelope key
/// (`KEYS[i + 1]`, member `ARGV[i]`) does not exist, atomically with the
/// check: an envelope written again in the meantime keeps its entry.
const DROP_EXPIRED_SCRIPT: &str = r"
local n = 0
for i, m in ipairs(ARGV) do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 then
    n = n + redis.call('ZREM', KEYS[1], m)
  end
end
return n
";

/// The compare-and-set of [`StateStore::update_envelope`]: `KEYS[1]` the
/// envelope, `KEYS[2]` the tracked set; `ARGV` = the value read, the new
/// value, the TTL, `1` when the new record is tracked (else `0`), its
/// `submitted_at`, its PEC id. Writes (and updates the index) only when
/// the key still holds exactly the value read; returns 1 then, else 0.
const CAS_ENVELOPE_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
if ARGV[4] == '1' then
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[6])
else
  redis.call('ZREM', KEYS[2], ARGV[6])
end
return 1
";

/// [`StateStore::record_acceptance`] in one step: `KEYS[1]` the envelope,
/// `KEYS[2]` the tracked set, `KEYS[3]` the claim; `ARGV` = the envelope
/// value, its TTL, `1` when tracked (else `0`), its `submitted_at`, its PEC
/// id. Sets the claim's `receipt_sent` (keeping its TTL; a claim that has
/// expired is not brought back). Returns 1 when the claim was there, else 0.
/// Running it twice leaves the same keys.
/// The outbox part of [`ACCEPTANCE_SCRIPT`] and [`MARK_SCRIPT`]: keep `n`
/// entries, each once (`SET NX`), indexed by time in the outbox set.
/// KEYS[k0] is the set, KEYS[k0 + i] entry i's key; ARGV[a0] is n,
/// ARGV[a0 + 1] the time, ARGV[a0 + 2] the TTL, then n ids, then n values.
macro_rules! outbox_lua {
    () => {
        r"
local function put_outbox(k0, a0)
  local n = tonumber(ARGV[a0])
  for i = 1, n do
    if redis.call('SET', KEYS[k0 + i], ARGV[a0 + 2 + n + i], 'EX', ARGV[a0 + 2], 'NX') then
      redis.call('ZADD', KEYS[k0], ARGV[a0 + 1], ARGV[a0 + 2 + i])
    end
  end
end
"
    };
}

/// `mark_receipt_sent`: the outbox entries and the claim's flag in one
/// step. KEYS: the claim, the outbox set, the entries; ARGV from 1: as
/// [`outbox_lua`]. Returns 0 when the claim is gone (expired).
const MARK_SCRIPT: &str = concat!(
    outbox_lua!(),
    r"
put_outbox(2, 1)
local raw = redis.call('GET', KEYS[1])
if not raw then
  return 0
end
local claim = cjson.decode(raw)
if not claim.receipt_sent then
  claim.receipt_sent = true
  redis.call('SET', KEYS[1], cjson.encode(claim), 'KEEPTTL')
end
return 1
"
);

const ACCEPTANCE_SCRIPT: &str = concat!(
    outbox_lua!(),
    r"
put_outbox(4, 6)
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
else
  redis.call('ZREM', KEYS[2], ARGV[5])
end
local raw = redis.call('GET', KEYS[3])
if not raw then
  return 0
end
local claim = cjson.decode(raw)
if not claim.receipt_sent then
  claim.receipt_sent = true
  redis.call('SET', KEYS[3], cjson.encode(claim), 'KEEPTTL')
end
return 1
"
);

/// One request: a command or a pipeline.
#[derive(Clone, Copy)]
enum Req<'a> {
    Cmd(&'a Cmd),
    Pipe(&'a Pipeline),
}

/// The value of a claim key.
#[derive(Debug, Serialize, Deserialize)]
struct ClaimValue {
    pec_id: String,
    submitted_at: i64,
    receipt_sent: bool,
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://[user:password@]host[:port][/db]`,
    /// `rediss://` is not enabled in this build), with every key prefixed
    /// by `prefix` (e.g. `"pec:"`).
    ///
    /// Lazy: this does not connect (see the [module documentation](self)),
    /// so it succeeds while Redis is down; it fails only for an invalid
    /// URL. It needs no Tokio runtime: the connection manager is built on
    /// the first operation.
    pub fn connect(url: &str, prefix: &str) -> Result<Self, StateError> {
        // The error of an invalid URL does not echo the URL (and so no
        // password) back.
        let client = redis::Client::open(url)
            .map_err(|e| StateError::Unavailable(format!("invalid Redis URL: {e}")))?;
        Ok(Self {
            client,
            conn: Arc::new(OnceCell::new()),
            prefix: prefix.to_owned(),
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Bound every operation by `timeout` instead of [`DEFAULT_TIMEOUT`].
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The bound of one operation.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn claim_key(&self, key: &str) -> String {
        format!("{}claim:{key}", self.prefix)
    }

    fn envelope_key(&self, pec_id: &str) -> String {
        format!("{}env:{pec_id}", self.prefix)
    }

    fn tracked_key(&self) -> String {
        format!("{}tracked", self.prefix)
    }

    fn outbox_key(&self) -> String {
        format!("{}outbox", self.prefix)
    }

    fn outbox_entry_key(&self, id: &str) -> String {
        format!("{}outbox:{id}", self.prefix)
    }

    /// The keys and arguments of [`outbox_lua`] for `outbox` (the set's
    /// key is the caller's).
    fn outbox_args(&self, cmd: &mut Cmd, outbox: &[OutboxEntry], ttl_secs: u64) {
        let at = outbox.iter().map(|e| e.queued_at).max().unwrap_or(0);
        cmd.arg(outbox.len()).arg(at).arg(ttl_secs.max(1));
        for e in outbox {
            cmd.arg(&e.id);
        }
        for e in outbox {
            cmd.arg(e.encode());
        }
    }

    fn once_key(&self, key: &str) -> String {
        format!("{}once:{key}", self.prefix)
    }

    /// Run one store operation within the timeout.
    async fn bounded<T>(
        &self,
        op: &str,
        fut: impl Future<Output = Result<T, StateError>>,
    ) -> Result<T, StateError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Err(StateError::Unavailable(cause))) => {
                Err(StateError::Unavailable(format!("{op}: {cause}")))
            }
            Ok(res) => res,
            Err(_) => Err(StateError::Unavailable(format!(
                "Redis {op}: no answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// The connection manager, built on first use.
    async fn manager(&self) -> Result<ConnectionManager, StateError> {
        self.conn
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    // Bounded by our own per-operation timeout instead.
                    .set_response_timeout(None)
                    .set_number_of_retries(RECONNECT_RETRIES)
                    .set_min_delay(RECONNECT_MIN_DELAY)
                    .set_max_delay(RECONNECT_MAX_DELAY);
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
                    .map_err(|e| StateError::Unavailable(format!("Redis connection manager: {e}")))
            })
            .await
            .cloned()
    }

    /// Send one command. A connection-level failure (refused, dropped,
    /// I/O) is retried a few times after short pauses, so that a Redis that
    /// has just come back is used at once instead of failing the message;
    /// the whole operation stays bounded by the store's timeout. Retrying
    /// is safe: every command the store sends is idempotent or guarded
    /// (`SET NX`, `SET XX`, `GET`, `DEL`, `ZADD`/`ZREM` in `MULTI`). A
    /// `SET NX` of [`StateStore::once`] whose reply was lost answers
    /// `false` on the retry: the marker is then nobody's until it expires
    /// (a delay, never a duplicate).
    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StateError> {
        self.request(Req::Cmd(cmd)).await
    }

    /// [`query`](Self::query) for a pipeline (or `MULTI`/`EXEC`
    /// transaction); every pipeline the store sends is idempotent.
    async fn query_pipe<T: FromRedisValue>(&self, pipe: &Pipeline) -> Result<T, StateError> {
        self.request(Req::Pipe(pipe)).await
    }

    async fn request<T: FromRedisValue>(&self, req: Req<'_>) -> Result<T, StateError> {
        const PAUSES_MS: [u64; 3] = [50, 150, 400];
        let mut attempt = 0;
        loop {
            let mut conn = self.manager().await?;
            let res = match req {
                Req::Cmd(cmd) => cmd.query_async(&mut conn).await,
                Req::Pipe(pipe) => pipe.query_async(&mut conn).await,
            };
            match res {
                Ok(v) => return Ok(v),
                Err(e)
                    if attempt < PAUSES_MS.len()
                        && (e.is_io_error()
                            || e.is_connection_refusal()
                            || e.is_connection_dropped()) =>
                {
                    tokio::time::sleep(Duration::from_millis(PAUSES_MS[attempt])).await;
                    attempt += 1;
                }
                Err(e) => return Err(StateError::Unavailable(format!("Redis: {e}"))),
            }
        }
    }

    /// The envelope `pec_id`: its value as stored and the record, within
    /// the store's timeout (`op` names the operation in errors). A key
    /// holding another envelope is [`StateError::Corrupt`].
    async fn envelope_raw(
        &self,
        op: &str,
        pec_id: &str,
    ) -> Result<Option<(Vec<u8>, EnvelopeRecord)>, StateError> {
        let rkey = self.envelope_key(pec_id);
        self.bounded(op, async {
            let Some(bytes) = self.get_bytes(&rkey).await? else {
                return Ok(None);
            };
            let rec: EnvelopeRecord = from_json(pec_id, &rkey, &bytes)?;
            if rec.pec_id != pec_id {
                return Err(StateError::Corrupt {
                    key: pec_id.to_owned(),
                    reason: format!("Redis key {rkey} holds the envelope {:?}", rec.pec_id),
                });
            }
            Ok(Some((bytes, rec)))
        })
        .await
    }

    async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.query(redis::cmd("GET").arg(key)).await
    }

    /// One batch of [`StateStore::tracked`]: the envelopes of `ids` that
    /// are tracked, and the ids whose envelope is gone.
    async fn tracked_batch(
        &self,
        ids: &[String],
    ) -> Result<(Vec<EnvelopeRecord>, Vec<String>), StateError> {
        let keys: Vec<String> = ids.iter().map(|id| self.envelope_key(id)).collect();
        let values: Vec<Option<Vec<u8>>> = self.query(redis::cmd("MGET").arg(&keys)).await?;
        let mut live = Vec::new();
        let mut gone = Vec::new();
        for ((id, rkey), value) in ids.iter().zip(&keys).zip(values) {
            let Some(bytes) = value else {
                gone.push(id.clone());
                continue;
            };
            match from_json::<EnvelopeRecord>(id, rkey, &bytes) {
                Ok(rec) if rec.pec_id != *id => {
                    tracing::warn!(key = %rkey, holds = %rec.pec_id, "tracked: envelope key holds another envelope; skipped");
                }
                // put_envelope keeps the index in step with the record, so
                // an untracked record here was written by a concurrent
                // put_envelope that also removed it from the index.
                Ok(rec) if rec.is_tracked() => live.push(rec),
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(key = %rkey, error = %e, "tracked: unreadable envelope skipped");
                }
            }
        }
        Ok((live, gone))
    }

    /// Drop from the tracked set the ids whose envelope key is (still)
    /// absent.
    async fn drop_expired(&self, ids: &[String]) -> Result<(), StateError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(DROP_EXPIRED_SCRIPT)
            .arg(ids.len() + 1)
            .arg(self.tracked_key());
        for id in ids {
            cmd.arg(self.envelope_key(id));
        }
        cmd.arg(ids);
        let dropped: i64 = self.query(&cmd).await?;
        if dropped > 0 {
            tracing::debug!(dropped, "tracked: expired envelopes dropped from the index");
        }
        Ok(())
    }

    async fn claim_inner(
        &self,
        key: &str,
        pec_id: &str,
        submitted_at: i64,
        ttl_secs: u64,
    ) -> Result<Claim, StateError> {
        let rkey = self.claim_key(key);
        let value = to_json(
            key,
            &ClaimValue {
                pec_id: pec_id.to_owned(),
                submitted_at,
                receipt_sent: false,
            },
        )?;
        for _ in 0..CLAIM_ATTEMPTS {
            let set: Value = self
                .query(
                    redis::cmd("SET")
                        .arg(&rkey)
                        .arg(&value)
                        .arg("NX")
                        .arg("EX")
                        .arg(ttl_secs.max(1)),
                )
                .await?;
            if !matches!(set, Value::Nil) {
                return Ok(Claim::New);
            }
            if let Some(bytes) = self.get_bytes(&rkey).await? {
                let old: ClaimValue = from_json(key, &rkey, &bytes)?;
                return Ok(Claim::Existing {
                    pec_id: old.pec_id,
                    submitted_at: old.submitted_at,
                    receipt_sent: old.receipt_sent,
                });
            }
            // Expired between SET and GET: try again.
        }
        Err(StateError::Unavailable(format!(
            "Redis claim {rkey}: the key kept expiring while claiming"
        )))
    }

    async fn mark_inner(&self, key: &str) -> Result<(), StateError> {
        let rkey = self.claim_key(key);
        let Some(bytes) = self.get_bytes(&rkey).await? else {
            tracing::warn!(key, "mark_receipt_sent: no claim (expired?)");
            return Ok(());
        };
        let mut claim: ClaimValue = from_json(key, &rkey, &bytes)?;
        if claim.receipt_sent {
            return Ok(());
        }
        claim.receipt_sent = true;
        let value = to_json(key, &claim)?;
        // XX: never resurrect a claim that expired in the meantime; the
        // only change ever made to a claim is this one, so a concurrent
        // writer writes the same value.
        let _: Value = self
            .query(
                redis::cmd("SET")
                    .arg(&rkey)
                    .arg(value)
                    .arg("XX")
                    .arg("KEEPTTL"),
            )
            .await?;
        Ok(())
    }
}

#[async_trait::async_trait]
impl StateStore for RedisStore {
    async fn claim(
        &self,
        key: &str,
        pec_id: &str,
        submitted_at: i64,
        ttl_secs: u64,
    ) -> Result<Claim, StateError> {
        self.bounded(
            "claim",
            self.claim_inner(key, pec_id, submitted_at, ttl_secs),
        )
        .await
    }

    async fn mark_receipt_sent(
        &self,
        key: &str,
        outbox: &[OutboxEntry],
        ttl_secs: u64,
    ) -> Result<(), StateError> {
        if outbox.is_empty() {
            return self
                .bounded("mark_receipt_sent", self.mark_inner(key))
                .await;
        }
        // One round trip: [`MARK_SCRIPT`].
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(MARK_SCRIPT)
            .arg(2 + outbox.len())
            .arg(self.claim_key(key))
            .arg(self.outbox_key());
        for e in outbox {
            cmd.arg(self.outbox_entry_key(&e.id));
        }
        self.outbox_args(&mut cmd, outbox, ttl_secs);
        let found: i64 = self.bounded("mark_receipt_sent", self.query(&cmd)).await?;
        if found == 0 {
            tracing::warn!(key, "mark_receipt_sent: no claim (expired?)");
        }
        Ok(())
    }

    async fn put_envelope(&self, rec: &EnvelopeRecord, ttl_secs: u64) -> Result<(), StateError> {
        let rkey = self.envelope_key(&rec.pec_id);
        let value = to_json(&rec.pec_id, rec)?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("SET")
            .arg(&rkey)
            .arg(value)
            .arg("EX")
            .arg(ttl_secs.max(1))
            .ignore();
        if rec.is_tracked() {
            pipe.cmd("ZADD")
                .arg(self.tracked_key())
                .arg(rec.submitted_at)
                .arg(&rec.pec_id)
                .ignore();
        } else {
            pipe.cmd("ZREM")
                .arg(self.tracked_key())
                .arg(&rec.pec_id)
                .ignore();
        }
        self.bounded("put_envelope", async {
            let _: Value = self.query_pipe(&pipe).await?;
            Ok(())
        })
        .await
    }

    /// One round trip: [`ACCEPTANCE_SCRIPT`].
    async fn record_acceptance(
        &self,
        key: &str,
        rec: &EnvelopeRecord,
        ttl_secs: u64,
        outbox: &[OutboxEntry],
    ) -> Result<(), StateError> {
        let value = to_json(&rec.pec_id, rec)?;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(ACCEPTANCE_SCRIPT)
            .arg(4 + outbox.len())
            .arg(self.envelope_key(&rec.pec_id))
            .arg(self.tracked_key())
            .arg(self.claim_key(key))
            .arg(self.outbox_key());
        for e in outbox {
            cmd.arg(self.outbox_entry_key(&e.id));
        }
        cmd.arg(value)
            .arg(ttl_secs.max(1))
            .arg(if rec.is_tracked() { "1" } else { "0" })
            .arg(rec.submitted_at)
            .arg(&rec.pec_id);
        self.outbox_args(&mut cmd, outbox, ttl_secs);
        let found: i64 = self.bounded("record_acceptance", self.query(&cmd)).await?;
        if found == 0 {
            tracing::warn!(key, "record_acceptance: no claim (expired?)");
        }
        Ok(())
    }

    async fn outbox_due(
        &self,
        queued_before: i64,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>, StateError> {
        let ids: Vec<String> = self
            .bounded(
                "outbox_due",
                self.query(
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(self.outbox_key())
                        .arg("-inf")
                        .arg(queued_before)
                        .arg("LIMIT")
                        .arg(0)
                        .arg(limit),
                ),
            )
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.outbox_entry_key(id)).collect();
        let values: Vec<Option<Vec<u8>>> = self
            .bounded("outbox_due", self.query(redis::cmd("MGET").arg(&keys)))
            .await?;
        let mut out = Vec::new();
        let mut gone = Vec::new();
        for (id, value) in ids.iter().zip(values) {
            match value {
                Some(bytes) => out.push(OutboxEntry::decode(id, &bytes)?),
                None => gone.push(id.clone()),
            }
        }
        if !gone.is_empty() {
            tracing::error!(
                unsent = gone.len(),
                "outbox: messages never handed to the MTA within the retention expired"
            );
            let _: Value = self
                .bounded(
                    "outbox_due",
                    self.query(redis::cmd("ZREM").arg(self.outbox_key()).arg(&gone)),
                )
                .await?;
        }
        Ok(out)
    }

    async fn outbox_done(&self, id: &str) -> Result<(), StateError> {
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("DEL")
            .arg(self.outbox_entry_key(id))
            .ignore()
            .cmd("ZREM")
            .arg(self.outbox_key())
            .arg(id)
            .ignore();
        self.bounded("outbox_done", async {
            let _: Value = self.query_pipe(&pipe).await?;
            Ok(())
        })
        .await
    }

    async fn get_envelope(&self, pec_id: &str) -> Result<Option<EnvelopeRecord>, StateError> {
        Ok(self
            .envelope_raw("get_envelope", pec_id)
            .await?
            .map(|(_, rec)| rec))
    }

    /// A compare-and-set loop: `GET` the raw value, apply `f` to the
    /// record, write with [`CAS_ENVELOPE_SCRIPT`] against the raw value
    /// read. Each try is bounded by the store's timeout. A try whose reply
    /// was lost and is retried by [`request`](Self::request) finds its own
    /// write and runs `f` once more on it (which then changes nothing):
    /// the record is right, the call answers `None`.
    async fn update_envelope(
        &self,
        pec_id: &str,
        ttl_secs: u64,
        f: &super::Update<'_>,
    ) -> Result<Option<EnvelopeRecord>, StateError> {
        let rkey = self.envelope_key(pec_id);
        let read = || self.envelope_raw("update_envelope", pec_id);
        let write = |old: Vec<u8>, rec: EnvelopeRecord| {
            let rkey = &rkey;
            async move {
                let value = to_json(pec_id, &rec)?;
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(CAS_ENVELOPE_SCRIPT)
                    .arg(2)
                    .arg(rkey)
                    .arg(self.tracked_key())
                    .arg(old)
                    .arg(value)
                    .arg(ttl_secs.max(1))
                    .arg(if rec.is_tracked() { "1" } else { "0" })
                    .arg(rec.submitted_at)
                    .arg(pec_id);
                let written: i64 = self.bounded("update_envelope", self.query(&cmd)).await?;
                Ok(written == 1)
            }
        };
        super::compare_and_set(pec_id, f, read, write).await
    }

    async fn ping(&self) -> Result<(), StateError> {
        self.bounded("ping", async {
            let _: Value = self.query(&redis::cmd("PING")).await?;
            Ok(())
        })
        .await
    }

    /// Each Redis round trip (the `ZRANGEBYSCORE`, each `MGET` of
    /// [`TRACKED_BATCH`] envelopes, each clean-up) is bounded by the
    /// store's timeout on its own, so a long index does not time out as a
    /// whole.
    async fn tracked(&self, submitted_before: i64) -> Result<Vec<EnvelopeRecord>, StateError> {
        let ids: Vec<String> = self
            .bounded(
                "tracked",
                self.query(
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(self.tracked_key())
                        .arg("-inf")
                        .arg(submitted_before),
                ),
            )
            .await?;
        let mut out = Vec::new();
        for chunk in ids.chunks(TRACKED_BATCH) {
            let (live, gone) = self.bounded("tracked", self.tracked_batch(chunk)).await?;
            out.extend(live);
            if !gone.is_empty() {
                // Best effort: a failed clean-up is retried on the next call.
                if let Err(e) = self.bounded("tracked", self.drop_expired(&gone)).await {
                    tracing::warn!(error = %e, "tracked: cannot drop expired envelopes from the index");
                }
            }
        }
        Ok(out)
    }

    async fn once(&self, key: &str, ttl_secs: u64) -> Result<bool, StateError> {
        let rkey = self.once_key(key);
        self.bounded("once", async {
            let set: Value = self
                .query(
                    redis::cmd("SET")
                        .arg(&rkey)
                        .arg(MARK_HELD)
                        .arg("NX")
                        .arg("EX")
                        .arg(ttl_secs.max(1)),
                )
                .await?;
            Ok(!matches!(set, Value::Nil))
        })
        .await
    }

    async fn confirm(&self, key: &str, ttl_secs: u64) -> Result<(), StateError> {
        let rkey = self.once_key(key);
        self.bounded("confirm", async {
            let _: Value = self
                .query(
                    redis::cmd("SET")
                        .arg(&rkey)
                        .arg(MARK_DONE)
                        .arg("EX")
                        .arg(ttl_secs.max(1)),
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn confirmed(&self, key: &str) -> Result<bool, StateError> {
        let rkey = self.once_key(key);
        self.bounded("confirmed", async {
            let value = self.get_bytes(&rkey).await?;
            Ok(value.as_deref() == Some(MARK_DONE.as_bytes()))
        })
        .await
    }

    async fn release(&self, key: &str) -> Result<(), StateError> {
        let rkey = self.once_key(key);
        self.bounded("release", async {
            let _: Value = self.query(redis::cmd("DEL").arg(&rkey)).await?;
            Ok(())
        })
        .await
    }
}

fn to_json<T: Serialize>(key: &str, value: &T) -> Result<String, StateError> {
    serde_json::to_string(value).map_err(|e| StateError::Corrupt {
        key: key.to_owned(),
        reason: format!("cannot serialise: {e}"),
    })
}

fn from_json<T: for<'de> Deserialize<'de>>(
    key: &str,
    rkey: &str,
    bytes: &[u8],
) -> Result<T, StateError> {
    serde_json::from_slice(bytes).map_err(|e| StateError::Corrupt {
        key: key.to_owned(),
        reason: format!("Redis key {rkey}: {e}"),
    })
}
