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
//!   value `held`), [`StateStore::confirm`] (`SET ... EX`, value `done`,
//!   with its outbox entries in one script), [`StateStore::release`]
//!   (`DEL`).
//!
//! A TTL of 0 is treated as 1 second (Redis refuses `EX 0`).
//!
//! # Connection and failures
//!
//! [`RedisStore::connect`] and [`RedisStore::open`] are **lazy**: they
//! only parse the URL and never talk to Redis, so the daemon starts even
//! when Redis is down (a start-up check can call [`StateStore::ping`]). The
//! first operation opens the connection; until Redis is reachable every
//! operation fails with [`StateError::Unavailable`] (the milter answers 4xx
//! and the MTA retries), and the store recovers by itself when Redis comes
//! back.
//!
//! On one address, reconnection is done by
//! [`redis::aio::ConnectionManager`]: when the connection drops it
//! reconnects in the background (a few quick attempts with a short
//! back-off, each bounded by a connection timeout), and when those fail the
//! next operation starts another round.
//!
//! Every operation of the store (which may be two or three Redis commands)
//! is bounded by a timeout ([`DEFAULT_TIMEOUT`], see
//! [`RedisStore::with_timeout`]); past it the operation fails with
//! [`StateError::Unavailable`], so a hung Redis never blocks the milter.
//! Every Redis error (refused connection, dropped connection, timeout,
//! error reply) is reported as [`StateError::Unavailable`] with its cause;
//! a value that is not the JSON we wrote is [`StateError::Corrupt`].
//!
//! # Redis Sentinel and failovers
//!
//! With [`SentinelOptions`] the store asks the sentinels which node is the
//! primary (`SENTINEL MASTERS`, then `ROLE` on the node named, which must
//! answer `master`: the store never uses a node that says it is a
//! replica), and keeps one multiplexed connection to it. It asks again
//! when a try fails at the connection level (Sentinel closes the clients of
//! a node it demotes), when a node answers `READONLY`, `MASTERDOWN`,
//! `LOADING`, `TRYAGAIN`, `NOREPLICAS` or `UNBLOCKED`, when a write is not
//! acknowledged by the replicas (below), and at the first operation after
//! [`SENTINEL_REFRESH`] (so an old primary that still takes connections is
//! left within about a second of the sentinels naming another one). Each
//! failed try is made again after a short pause while the operation's
//! timeout allows; after it, [`StateError::Unavailable`] (4xx to the MTA,
//! which retries later). A routine refresh that reaches no sentinel keeps
//! the primary in use.
//!
//! **Acknowledged writes.** Redis replicates asynchronously: a write the
//! primary has answered can still be lost when a replica that had not
//! received it is promoted, and an old primary that Sentinel has not
//! demoted yet takes writes that are thrown away when it is. So with
//! `wait_replicas = n > 0` (the default with Sentinel) every write is sent
//! together with `WAIT n wait_timeout` on the same connection, and counts
//! as done only when `n` replicas acknowledged it; otherwise the store
//! looks the primary up again and repeats the write. Repeating is safe
//! because every write is idempotent and *finds its own earlier try*:
//! the claim script answers [`Claim::New`] when the key holds exactly the
//! value this call wrote (the PEC id is random), the `once` marker holds a
//! random token of its taker, the compare-and-set of `update_envelope`
//! also succeeds when the key already holds the new value, and the other
//! writes (`record_acceptance`, `put_envelope`, `mark_receipt_sent`,
//! `confirm`, `release`) set absolute values. A script that finds a value
//! written by someone else writes it again unchanged, so that the `WAIT`
//! after it also vouches for what it read.
//!
//! What is guaranteed across a failover (one Sentinel-promoted replica at a
//! time, `wait_replicas` >= 1, the replica that acknowledged being the one
//! promoted, which is what Sentinel picks among replicas of equal priority
//! by replication offset; with several replicas set `wait_replicas` to
//! their number for a strict guarantee):
//!
//! - an operation that answered `Ok` is on the new primary: no claim,
//!   `receipt_sent` mark, envelope record, receipt status or once-only
//!   marker that the milter acted on is lost, so an MTA retry never gets a
//!   second PEC id (no second acceptance receipt) and a timer notice
//!   confirmed once is never sent again by another node;
//! - an operation that could not be made durable answers
//!   [`StateError::Unavailable`] (4xx): the MTA retries, and the retry
//!   finds either nothing (the write was lost: as if never made) or the
//!   write (kept);
//! - receipts are queued in the outbox by the same waited write that
//!   sets the claim's `receipt_sent` (`record_acceptance`,
//!   `mark_receipt_sent`) and sent only after it answered `Ok`: a failover
//!   that loses that write (answered 4xx) loses the receipt with it,
//!   nothing has left, and the MTA's retry issues it once;
//! - reads (`get_envelope`, `tracked`, `confirmed`) are not waited for: in
//!   the second or so before the store leaves an old primary they can be
//!   stale; every decision taken on them goes through a waited write
//!   (`once`, the compare-and-set) before it has an effect.
//!
//! The price: with `n` replicas required, writes stop (4xx) while fewer are
//! connected to the primary, e.g. with one replica from a failover until
//! the old primary is back as a replica. Run two replicas to stay writable
//! through one failover.
//!
//! Every write costs one `WAIT` more in its round trip (the replica's
//! acknowledgement). Measured on loopback (debug build, 8 tasks, claim +
//! mark_receipt_sent): about 30,000 writes/s with `WAIT 1` against
//! 30,000-50,000 without, i.e. tens of microseconds a write, nothing next
//! to the signature a submission costs. In `integration/e2e-sentinel.sh` a
//! `SENTINEL FAILOVER` stops writes for about 11 s (until the old primary
//! is a replica again; the submissions in flight wait, the new ones get
//! 4xx), a SIGKILL of the primary for about 3 s (promotion) plus the
//! restart of the killed node.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::sentinel::{Sentinel, SentinelNodeConnectionInfo};
use redis::{
    AsyncConnectionConfig, Cmd, ConnectionAddr, ErrorKind, FromRedisValue, IntoConnectionInfo,
    RedisError, ServerErrorKind, Value,
};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use super::{Claim, Depth, EnvelopeRecord, OutboxEntry, StateError, StateStore};

/// Default bound of one store operation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// Bound of one TCP connection attempt (and handshake) to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Reconnection attempts per round, after the first one.
const RECONNECT_RETRIES: usize = 2;
const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(50);
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);
/// With Sentinel: how long a primary found through the sentinels is used
/// before they are asked again (a failover the connection did not notice,
/// e.g. an old primary not yet demoted, is seen within this).
pub const SENTINEL_REFRESH: Duration = Duration::from_secs(1);
/// Pauses between the tries of one request after a connection-level
/// failure, a failover reply or a write the replicas did not acknowledge
/// (the whole operation stays bounded by the store's timeout).
const RETRY_PAUSES_MS: [u64; 7] = [20, 50, 100, 200, 300, 400, 500];

/// How to reach the primary through Redis Sentinel.
#[derive(Clone, Default)]
pub struct SentinelOptions {
    /// The sentinels, `(host, port)`.
    pub sentinels: Vec<(String, u16)>,
    /// The name they monitor the primary under.
    pub master_name: String,
    /// The sentinels' own password, if they ask for one.
    pub password: Option<String>,
}

impl std::fmt::Debug for SentinelOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelOptions")
            .field("sentinels", &self.sentinels)
            .field("master_name", &self.master_name)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Everything [`RedisStore::open`] needs.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// `redis://[user:password@]host[:port][/db]`; with `sentinel`, only
    /// the database number and the credentials are used.
    pub url: String,
    /// Every key is prefixed by it (e.g. `"pec:"`).
    pub prefix: String,
    /// The data nodes' password, instead of the URL's.
    pub password: Option<String>,
    /// Find the primary through these sentinels.
    pub sentinel: Option<SentinelOptions>,
    /// Writes wait (`WAIT`) for this many replicas, at most `wait_timeout`
    /// each try; 0 = do not wait.
    pub wait_replicas: u32,
    pub wait_timeout: Duration,
    /// Bound of one store operation; `None` = [`DEFAULT_TIMEOUT`].
    pub timeout: Option<Duration>,
}

/// State store on a Redis server shared by several nodes. Cheap to clone
/// (clones share the connection).
#[derive(Clone)]
pub struct RedisStore {
    target: Arc<Target>,
    prefix: String,
    timeout: Duration,
    /// Replicas every write waits for, and how long one try waits.
    wait: Option<(u32, Duration)>,
}

/// Where the primary is.
enum Target {
    /// One address: a connection manager reconnects to it. Built on first
    /// use (it spawns a task, so it needs the runtime).
    Direct {
        client: redis::Client,
        conn: OnceCell<ConnectionManager>,
    },
    /// Whatever node the sentinels name primary now.
    Sentinel(SentinelTarget),
}

struct SentinelTarget {
    /// Also serialises the look-ups: one at a time, the others take its
    /// result.
    sentinel: tokio::sync::Mutex<Sentinel>,
    master_name: String,
    /// Database and credentials of the data nodes.
    node: SentinelNodeConnectionInfo,
    current: std::sync::Mutex<Option<Primary>>,
    generations: AtomicU64,
}

/// The primary in use and our connection to it.
#[derive(Clone)]
struct Primary {
    conn: MultiplexedConnection,
    addr: String,
    /// Tells connections apart: a failure on generation `g` makes the next
    /// request look the primary up again unless another one already did.
    generation: u64,
    checked: Instant,
}

/// The try that failed on a connection to the primary: ask the sentinels
/// again, and open a new connection if `reconnect` (the connection itself
/// failed) or the primary moved.
#[derive(Clone, Copy)]
struct Failed {
    generation: u64,
    reconnect: bool,
}

/// A connection for one request, and its generation (Sentinel only).
enum Conn {
    Managed(ConnectionManager),
    Primary(MultiplexedConnection, u64),
}

impl Conn {
    fn generation(&self) -> Option<u64> {
        match self {
            Conn::Managed(_) => None,
            Conn::Primary(_, g) => Some(*g),
        }
    }

    async fn query(&mut self, cmd: &Cmd) -> Result<Value, RedisError> {
        match self {
            Conn::Managed(c) => cmd.query_async(c).await,
            Conn::Primary(c, _) => cmd.query_async(c).await,
        }
    }

    async fn query_pipe(&mut self, pipe: &redis::Pipeline) -> Result<Vec<Value>, RedisError> {
        match self {
            Conn::Managed(c) => pipe.query_async(c).await,
            Conn::Primary(c, _) => pipe.query_async(c).await,
        }
    }
}

/// Why one try of a request failed.
enum Failure {
    /// Worth another try, on the primary found again: the connection
    /// failed or dropped (`reconnect`), the node is not (or no longer) a
    /// writable primary, or the replicas did not acknowledge a write.
    Again { cause: String, reconnect: bool },
    /// An answer that another try would repeat.
    Final(String),
}

fn classify(e: &RedisError) -> Failure {
    let failover = e.is_io_error()
        || e.is_connection_refusal()
        || e.is_connection_dropped()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::ReadOnly
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::BusyLoading
            )
        )
        // min-replicas-to-write refused the write; a blocked WAIT cut off
        // by a role change
        || matches!(e.code(), Some("NOREPLICAS" | "UNBLOCKED" | "READONLY"));
    if failover {
        Failure::Again {
            cause: e.to_string(),
            reconnect: e.is_io_error()
                || e.is_connection_refusal()
                || e.is_connection_dropped()
                || e.is_timeout(),
        }
    } else {
        Failure::Final(e.to_string())
    }
}

impl SentinelTarget {
    fn current(&self) -> Option<Primary> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_current(&self, p: &Primary) {
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(p.clone());
    }

    /// The primary to use: the one in use while it is fresh (checked
    /// within [`SENTINEL_REFRESH`]) and no try failed on it (`failed`),
    /// else the one the
    /// sentinels name now (the redis crate asks them in turn, skips a
    /// sentinel that does not know the name or sees it down, and checks
    /// with `ROLE` that the node is a primary). A routine refresh that
    /// reaches no sentinel keeps the primary in use; a failed connection
    /// with no sentinel to ask is [`StateError::Unavailable`].
    async fn primary(&self, failed: Option<Failed>) -> Result<Primary, StateError> {
        let usable =
            |p: &Primary| failed.is_none_or(|f| !f.reconnect || f.generation != p.generation);
        let fresh = |p: &Primary| {
            failed.is_none_or(|f| f.generation != p.generation)
                && p.checked.elapsed() < SENTINEL_REFRESH
        };
        if let Some(p) = self.current().filter(fresh) {
            return Ok(p);
        }
        let mut sentinel = self.sentinel.lock().await;
        // Another request may have looked it up while this one waited.
        let cur = self.current();
        if let Some(p) = cur.clone().filter(fresh) {
            return Ok(p);
        }
        let client = match sentinel
            .async_master_for(&self.master_name, Some(&self.node))
            .await
        {
            Ok(c) => c,
            Err(e) => {
                if let Some(mut p) = cur.filter(usable) {
                    tracing::warn!(master = %self.master_name, error = %e, primary = %p.addr,
                        "Redis Sentinel: no sentinel answered; keeping the primary in use");
                    p.checked = Instant::now();
                    self.set_current(&p);
                    return Ok(p);
                }
                return Err(StateError::Unavailable(format!(
                    "Redis Sentinel: no primary for {:?}: {e}",
                    self.master_name
                )));
            }
        };
        let addr = client.get_connection_info().addr().to_string();
        if let Some(mut p) = cur.clone().filter(|p| usable(p) && p.addr == addr) {
            p.checked = Instant::now();
            self.set_current(&p);
            return Ok(p);
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(None);
        let conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| {
                StateError::Unavailable(format!("Redis primary {addr} (from Sentinel): {e}"))
            })?;
        let p = Primary {
            conn,
            addr,
            generation: self.generations.fetch_add(1, Ordering::Relaxed) + 1,
            checked: Instant::now(),
        };
        match cur {
            Some(old) if old.addr != p.addr => tracing::warn!(master = %self.master_name,
                from = %old.addr, to = %p.addr, "Redis Sentinel: the primary moved; following it"),
            Some(_) => tracing::info!(master = %self.master_name, primary = %p.addr,
                "Redis Sentinel: connected to the primary again"),
            None => tracing::info!(master = %self.master_name, primary = %p.addr,
                "Redis Sentinel: primary found"),
        }
        self.set_current(&p);
        Ok(p)
    }
}

impl std::fmt::Debug for RedisStore {
    // The connection info may hold a password: keep it out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut d = f.debug_struct("RedisStore");
        d.field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .field("wait", &self.wait);
        if let Target::Sentinel(s) = self.target.as_ref() {
            d.field("master_name", &s.master_name);
        }
        d.finish_non_exhaustive()
    }
}

/// How many envelopes one `MGET` of [`StateStore::tracked`] fetches.
const TRACKED_BATCH: usize = 200;
/// Value of a marker taken with `once`: this prefix and a random token
/// of the taker (so that a try again finds its own marker).
const MARK_HELD: &str = "held:";
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
/// the key still holds exactly the value read, or already the new value
/// (a try again of a write whose answer was lost or not acknowledged by
/// the replicas: written again, so that `WAIT` covers it); returns 1 then,
/// else 0.
const CAS_ENVELOPE_SCRIPT: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur ~= ARGV[1] and cur ~= ARGV[2] then
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

/// The outbox part of [`ACCEPTANCE_SCRIPT`] and [`MARK_SCRIPT`]: keep `n`
/// entries, each once (`SET NX`), indexed by time in the outbox set.
/// KEYS[k0] is the set, KEYS[k0 + i] entry i's key; ARGV[a0] is n,
/// ARGV[a0 + 1] the time, ARGV[a0 + 2] the TTL, then n ids, then n values.
/// And their shared claim step, `mark_claim(k)`: the claim KEYS[k] gets
/// `receipt_sent` (its TTL kept; an expired claim is not brought back,
/// 0), always written so that `WAIT` covers it (1).
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
local function mark_claim(k)
  local raw = redis.call('GET', KEYS[k])
  if not raw then
    return 0
  end
  local claim = cjson.decode(raw)
  claim.receipt_sent = true
  redis.call('SET', KEYS[k], cjson.encode(claim), 'KEEPTTL')
  return 1
end
"
    };
}

/// [`StateStore::mark_receipt_sent`]: the outbox entries (possibly none)
/// and the claim's flag in one step. KEYS: the claim, the outbox set, the
/// entries; ARGV from 1: as [`outbox_lua`]. Sets the claim's
/// `receipt_sent` keeping its TTL (an expired claim is not brought back);
/// 1 when the claim was there, else 0. Always writes a present claim, so
/// that `WAIT` covers it; running it twice leaves the same keys.
const MARK_SCRIPT: &str = concat!(
    outbox_lua!(),
    r"
put_outbox(2, 1)
return mark_claim(1)
"
);

/// [`StateStore::confirm`]: the marker `KEYS[1]` set to `ARGV[1]` for
/// `ARGV[2]` seconds and the outbox entries (possibly none; `KEYS[2]` the
/// set, then the entries; ARGV from 3 as [`outbox_lua`]) in one step.
const CONFIRM_SCRIPT: &str = concat!(
    outbox_lua!(),
    r"
put_outbox(2, 3)
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"
);

/// [`StateStore::outbox_done`]: `KEYS[1]` the entry, `KEYS[2]` the
/// outbox set, `ARGV[1]` the id. Both go in one step, so that the set
/// never names an entry that was sent (which would read as expired).
const OUTBOX_DONE_SCRIPT: &str = r"
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
return 1
";

/// [`StateStore::record_acceptance`] in one step: `KEYS[1]` the envelope,
/// `KEYS[2]` the tracked set, `KEYS[3]` the claim, `KEYS[4]` the outbox
/// set, then the outbox entries; `ARGV` = the envelope value, its TTL, `1`
/// when tracked (else `0`), its `submitted_at`, its PEC id, then the
/// outbox's (see [`outbox_lua`]). Sets the claim's `receipt_sent` (keeping
/// its TTL; a claim that has expired is not brought back) and always
/// writes a present claim, so that `WAIT` covers it. Returns 1 when the
/// claim was there, else 0. Running it twice leaves the same keys.
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
return mark_claim(3)
"
);

/// [`StateStore::claim`]: `KEYS[1]` the claim, `ARGV` = the new value, its
/// TTL. Absent: writes it and returns 1. Present with exactly the new value
/// (our own earlier try): returns 1. Present with another value: returns
/// that value. A present claim is written again unchanged (`KEEPTTL`), so
/// that the `WAIT` after the script also covers a claim that was read.
const CLAIM_SCRIPT: &str = r"
local old = redis.call('GET', KEYS[1])
if old then
  redis.call('SET', KEYS[1], old, 'KEEPTTL')
  if old == ARGV[1] then
    return 1
  end
  return old
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
";

/// [`StateStore::put_envelope`]: `KEYS[1]` the envelope, `KEYS[2]` the
/// tracked set; `ARGV` = the value, its TTL, `1` when tracked (else `0`),
/// its `submitted_at`, its PEC id.
const PUT_ENVELOPE_SCRIPT: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
else
  redis.call('ZREM', KEYS[2], ARGV[5])
end
return 1
";

/// [`StateStore::once`]: `KEYS[1]` the marker; `ARGV` = this taker's
/// value, the TTL. Absent: taken (1). Holding this taker's value (its own
/// earlier try): taken again, written unchanged (1). Else 0.
const ONCE_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
if v == ARGV[1] then
  redis.call('SET', KEYS[1], v, 'KEEPTTL')
  return 1
end
return 0
";

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
    /// by `prefix` (e.g. `"pec:"`). [`open`](Self::open) has every option.
    ///
    /// Lazy: this does not connect (see the [module documentation](self)),
    /// so it succeeds while Redis is down; it fails only for an invalid
    /// URL. It needs no Tokio runtime: the connection manager is built on
    /// the first operation.
    pub fn connect(url: &str, prefix: &str) -> Result<Self, StateError> {
        Self::open(RedisOptions {
            url: url.to_owned(),
            prefix: prefix.to_owned(),
            ..RedisOptions::default()
        })
    }

    /// A store as `options` say: one Redis at `url`, or the primary that
    /// `options.sentinel` names. Lazy as [`connect`](Self::connect): it
    /// talks to no sentinel and no Redis, and fails only for an invalid
    /// URL or an empty list of sentinels.
    pub fn open(options: RedisOptions) -> Result<Self, StateError> {
        // The error of an invalid URL does not echo the URL (and so no
        // password) back.
        let bad_url = |e: RedisError| StateError::Unavailable(format!("invalid Redis URL: {e}"));
        let info = options
            .url
            .as_str()
            .into_connection_info()
            .map_err(bad_url)?;
        let mut settings = info.redis_settings().clone();
        if let Some(pw) = &options.password {
            settings = settings.set_password(pw);
        }
        let target = match options.sentinel {
            None => Target::Direct {
                client: redis::Client::open(info.set_redis_settings(settings)).map_err(bad_url)?,
                conn: OnceCell::new(),
            },
            Some(s) => {
                let sentinels = s
                    .sentinels
                    .iter()
                    .map(|(host, port)| {
                        let info =
                            ConnectionAddr::Tcp(host.clone(), *port).into_connection_info()?;
                        Ok(match &s.password {
                            Some(pw) => info.set_redis_settings(
                                redis::RedisConnectionInfo::default().set_password(pw),
                            ),
                            None => info,
                        })
                    })
                    .collect::<Result<Vec<_>, RedisError>>()
                    .map_err(|e| StateError::Unavailable(format!("Redis Sentinel: {e}")))?;
                let sentinel = Sentinel::build(sentinels)
                    .map_err(|e| StateError::Unavailable(format!("Redis Sentinel: {e}")))?;
                Target::Sentinel(SentinelTarget {
                    sentinel: tokio::sync::Mutex::new(sentinel),
                    master_name: s.master_name,
                    node: SentinelNodeConnectionInfo::default().set_redis_connection_info(settings),
                    current: std::sync::Mutex::new(None),
                    generations: AtomicU64::new(0),
                })
            }
        };
        Ok(Self {
            target: Arc::new(target),
            prefix: options.prefix,
            timeout: options.timeout.unwrap_or(DEFAULT_TIMEOUT),
            wait: (options.wait_replicas > 0)
                .then_some((options.wait_replicas, options.wait_timeout)),
        })
    }

    /// Bound every operation by `timeout` instead of [`DEFAULT_TIMEOUT`].
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Make every write wait for `replicas` replicas (`WAIT`), at most
    /// `timeout` per try; 0 = do not wait.
    #[must_use]
    pub fn with_wait(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait = (replicas > 0).then_some((replicas, timeout));
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

    /// The primary in use (`host:port`) when Sentinel found one; `None`
    /// for a store on one address or before the first operation.
    pub fn current_primary(&self) -> Option<String> {
        match self.target.as_ref() {
            Target::Direct { .. } => None,
            Target::Sentinel(s) => s
                .current
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .map(|p| p.addr.clone()),
        }
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

    /// A connection to the primary. `failed`: the generation whose
    /// connection just failed (Sentinel: look the primary up again unless
    /// another request already did).
    async fn connection(&self, failed: Option<Failed>) -> Result<Conn, StateError> {
        match self.target.as_ref() {
            Target::Direct { client, conn } => {
                let m = conn
                    .get_or_try_init(|| async {
                        let config = ConnectionManagerConfig::new()
                            .set_connection_timeout(Some(CONNECT_TIMEOUT))
                            // Bounded by our own per-operation timeout instead.
                            .set_response_timeout(None)
                            .set_number_of_retries(RECONNECT_RETRIES)
                            .set_min_delay(RECONNECT_MIN_DELAY)
                            .set_max_delay(RECONNECT_MAX_DELAY);
                        ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(
                            |e| StateError::Unavailable(format!("Redis connection manager: {e}")),
                        )
                    })
                    .await?;
                Ok(Conn::Managed(m.clone()))
            }
            Target::Sentinel(s) => {
                let p = s.primary(failed).await?;
                Ok(Conn::Primary(p.conn, p.generation))
            }
        }
    }

    /// Send one command. A try that fails at the connection level
    /// (refused, dropped, I/O), meets a node that is not a writable primary
    /// (`READONLY`, `MASTERDOWN`, `LOADING`, ...; with Sentinel the primary
    /// is then looked up again) or, for a `durable` write, is not
    /// acknowledged by the replicas within the wait, is tried again after a
    /// short pause; the whole operation stays bounded by the store's
    /// timeout. Trying again is safe: every write the store sends is
    /// idempotent or guarded (`SET NX`, `GET`, `DEL`, and scripts that find
    /// their own earlier write and write it again, see the
    /// [module documentation](self)).
    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StateError> {
        self.request(cmd, false).await
    }

    /// [`query`](Self::query) for a write that must survive a failover:
    /// followed by `WAIT` for the configured replicas.
    async fn write<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StateError> {
        self.request(cmd, true).await
    }

    async fn request<T: FromRedisValue>(&self, cmd: &Cmd, durable: bool) -> Result<T, StateError> {
        let wait = if durable { self.wait } else { None };
        let mut failed = None;
        let mut attempt = 0;
        loop {
            let mut conn = self.connection(failed).await?;
            let res = match wait {
                None => conn.query(cmd).await.map_err(|e| classify(&e)),
                Some((n, t)) => {
                    // The write and its WAIT in one pipeline: on the same
                    // connection, so WAIT covers the write.
                    let mut pipe = redis::pipe();
                    pipe.add_command(cmd.clone())
                        .cmd("WAIT")
                        .arg(n)
                        .arg(u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1));
                    match conn.query_pipe(&pipe).await {
                        Ok(mut vals) if vals.len() == 2 => {
                            let acks = vals.pop().and_then(|v| i64::from_redis_value(v).ok());
                            match acks {
                                Some(a) if a >= i64::from(n) => {
                                    Ok(vals.pop().unwrap_or(Value::Nil))
                                }
                                a => Err(Failure::Again {
                                    cause: format!(
                                        "the write reached {} of the {n} replicas asked for within \
                                         {t:?} (not acknowledged: it could be lost in a failover)",
                                        a.unwrap_or(0)
                                    ),
                                    reconnect: false,
                                }),
                            }
                        }
                        Ok(vals) => Err(Failure::Final(format!(
                            "unexpected reply of {} values to a write and its WAIT",
                            vals.len()
                        ))),
                        Err(e) => Err(classify(&e)),
                    }
                }
            };
            match res {
                Ok(v) => {
                    return T::from_redis_value(v)
                        .map_err(|e| StateError::Unavailable(format!("Redis: {e}")));
                }
                Err(Failure::Again { cause, reconnect }) if attempt < RETRY_PAUSES_MS.len() => {
                    tracing::debug!(attempt, cause = %cause, "Redis: trying again");
                    failed = conn.generation().map(|g| Failed {
                        generation: g,
                        reconnect,
                    });
                    tokio::time::sleep(Duration::from_millis(RETRY_PAUSES_MS[attempt])).await;
                    attempt += 1;
                }
                Err(Failure::Again { cause, .. } | Failure::Final(cause)) => {
                    return Err(StateError::Unavailable(format!("Redis: {cause}")));
                }
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
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(CLAIM_SCRIPT)
            .arg(1)
            .arg(&rkey)
            .arg(&value)
            .arg(ttl_secs.max(1));
        match self.write::<Value>(&cmd).await? {
            Value::Int(1) => Ok(Claim::New),
            Value::BulkString(bytes) => {
                let old: ClaimValue = from_json(key, &rkey, &bytes)?;
                Ok(Claim::Existing {
                    pec_id: old.pec_id,
                    submitted_at: old.submitted_at,
                    receipt_sent: old.receipt_sent,
                })
            }
            other => Err(StateError::Unavailable(format!(
                "Redis claim {rkey}: unexpected reply {other:?}"
            ))),
        }
    }

    /// One round trip: [`MARK_SCRIPT`].
    async fn mark_inner(
        &self,
        key: &str,
        outbox: &[OutboxEntry],
        ttl_secs: u64,
    ) -> Result<(), StateError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(MARK_SCRIPT)
            .arg(2 + outbox.len())
            .arg(self.claim_key(key))
            .arg(self.outbox_key());
        for e in outbox {
            cmd.arg(self.outbox_entry_key(&e.id));
        }
        self.outbox_args(&mut cmd, outbox, ttl_secs);
        let found: i64 = self.write(&cmd).await?;
        if found == 0 {
            tracing::warn!(key, "mark_receipt_sent: no claim (expired?)");
        }
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
        self.bounded("mark_receipt_sent", self.mark_inner(key, outbox, ttl_secs))
            .await
    }

    async fn put_envelope(&self, rec: &EnvelopeRecord, ttl_secs: u64) -> Result<(), StateError> {
        let value = to_json(&rec.pec_id, rec)?;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(PUT_ENVELOPE_SCRIPT)
            .arg(2)
            .arg(self.envelope_key(&rec.pec_id))
            .arg(self.tracked_key())
            .arg(value)
            .arg(ttl_secs.max(1))
            .arg(if rec.is_tracked() { "1" } else { "0" })
            .arg(rec.submitted_at)
            .arg(&rec.pec_id);
        self.bounded("put_envelope", async {
            let _: Value = self.write(&cmd).await?;
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
        let found: i64 = self.bounded("record_acceptance", self.write(&cmd)).await?;
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

    /// `ZCARD` of the outbox set and of the tracked set: an upper bound,
    /// as members whose key expired stay in a set until the outbox pass
    /// or [`tracked`](StateStore::tracked) meets them.
    async fn depth(&self) -> Result<Depth, StateError> {
        self.bounded("depth", async {
            let outbox: u64 = self
                .query(redis::cmd("ZCARD").arg(self.outbox_key()))
                .await?;
            let tracked: u64 = self
                .query(redis::cmd("ZCARD").arg(self.tracked_key()))
                .await?;
            Ok(Depth { outbox, tracked })
        })
        .await
    }

    async fn outbox_done(&self, id: &str) -> Result<(), StateError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(OUTBOX_DONE_SCRIPT)
            .arg(2)
            .arg(self.outbox_entry_key(id))
            .arg(self.outbox_key())
            .arg(id);
        self.bounded("outbox_done", async {
            let _: Value = self.write(&cmd).await?;
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
                let written: i64 = self.bounded("update_envelope", self.write(&cmd)).await?;
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
        let mut token = [0u8; 12];
        openssl::rand::rand_bytes(&mut token)
            .map_err(|e| StateError::Unavailable(format!("once: no random token: {e}")))?;
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(ONCE_SCRIPT)
            .arg(1)
            .arg(&rkey)
            .arg(format!("{MARK_HELD}{}", hex::encode(token)))
            .arg(ttl_secs.max(1));
        self.bounded("once", async {
            let taken: i64 = self.write(&cmd).await?;
            Ok(taken == 1)
        })
        .await
    }

    async fn confirm(
        &self,
        key: &str,
        ttl_secs: u64,
        outbox: &[OutboxEntry],
    ) -> Result<(), StateError> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(CONFIRM_SCRIPT)
            .arg(2 + outbox.len())
            .arg(self.once_key(key))
            .arg(self.outbox_key());
        for e in outbox {
            cmd.arg(self.outbox_entry_key(&e.id));
        }
        cmd.arg(MARK_DONE).arg(ttl_secs.max(1));
        self.outbox_args(&mut cmd, outbox, ttl_secs);
        self.bounded("confirm", async {
            let _: Value = self.write(&cmd).await?;
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
            let _: Value = self.write(redis::cmd("DEL").arg(&rkey)).await?;
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
