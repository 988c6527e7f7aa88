//! [`RedisStore`]: the production state store, one Redis shared by every
//! MTA node.
//!
//! # Keys
//!
//! - `<prefix>claim:<key>`: JSON `{"pec_id", "submitted_at",
//!   "receipt_sent"}`, created with `SET NX EX ttl` (first writer wins,
//!   across nodes) and updated with `SET ... XX KEEPTTL` (Redis >= 6.0).
//! - `<prefix>env:<pec_id>`: the JSON [`EnvelopeRecord`], `SET ... EX ttl`.
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
use redis::{Cmd, FromRedisValue, Value};
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use super::{Claim, EnvelopeRecord, StateError, StateStore};

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
    /// (`SET NX`, `SET XX`, `GET`).
    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> Result<T, StateError> {
        const PAUSES_MS: [u64; 3] = [50, 150, 400];
        let mut attempt = 0;
        loop {
            let mut conn = self.manager().await?;
            match cmd.query_async(&mut conn).await {
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

    async fn get_bytes(&self, key: &str) -> Result<Option<Vec<u8>>, StateError> {
        self.query(redis::cmd("GET").arg(key)).await
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

    async fn mark_receipt_sent(&self, key: &str) -> Result<(), StateError> {
        self.bounded("mark_receipt_sent", self.mark_inner(key))
            .await
    }

    async fn put_envelope(&self, rec: &EnvelopeRecord, ttl_secs: u64) -> Result<(), StateError> {
        let rkey = self.envelope_key(&rec.pec_id);
        let value = to_json(&rec.pec_id, rec)?;
        self.bounded("put_envelope", async {
            let _: Value = self
                .query(
                    redis::cmd("SET")
                        .arg(&rkey)
                        .arg(value)
                        .arg("EX")
                        .arg(ttl_secs.max(1)),
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn get_envelope(&self, pec_id: &str) -> Result<Option<EnvelopeRecord>, StateError> {
        let rkey = self.envelope_key(pec_id);
        self.bounded("get_envelope", async {
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
            Ok(Some(rec))
        })
        .await
    }

    async fn ping(&self) -> Result<(), StateError> {
        self.bounded("ping", async {
            let _: Value = self.query(&redis::cmd("PING")).await?;
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
