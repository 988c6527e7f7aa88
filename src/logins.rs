//! The holders' directory over LDAP (`[holders.ldap]`): which sender
//! addresses a SASL login owns, for sites that keep their holders in a
//! directory rather than in the `[holders] logins` file. It implements the
//! [`LoginDirectory`] port the access point asks at MAIL.
//!
//! One subtree search per login, `filter` with `%s` replaced by the login
//! (RFC 4515-escaped), reading the addresses from `attribute` — the same
//! question Postfix's `ldap_table(5)` asks with `query_filter` and
//! `result_attribute`. Answers (a login the directory does not know
//! included) are kept for `cache`, so a busy holder costs one search per
//! period rather than one per message; a failed search is never kept and
//! never taken as an answer.
//!
//! The cache is a small map with an expiry, written here: it holds at most
//! [`MAX_CACHED`] logins and is emptied of expired ones when full. A cache
//! crate (moka, ...) would bring a scheduler and a dependency tree for
//! what is forty lines.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::ldap::{LdapServer, filter_with};
use crate::roles::ports::{LoginDirectory, LoginError};

/// At most this many logins are cached at once.
pub const MAX_CACHED: usize = 10_000;

/// Where the holders are, and how to ask.
#[derive(Debug, Clone)]
pub struct LdapLogins {
    pub server: LdapServer,
    /// Search base, e.g. `ou=holders,dc=pec,dc=example,dc=it`.
    pub base: String,
    /// The search filter, `%s` standing for the login: `(uid=%s)`.
    pub filter: String,
    /// The attribute holding the addresses the login owns: `mail`.
    pub attribute: String,
}

impl LdapLogins {
    /// The addresses the entries matching `login` list in the attribute,
    /// lowercased. Values that are not UTF-8 are skipped.
    async fn search(&self, login: &str) -> Result<Vec<String>, crate::ldap::LdapError> {
        let filter = filter_with(&self.filter, login);
        let entries = self
            .server
            .search(&self.base, &filter, &[self.attribute.as_str()])
            .await?;
        let wanted = self.attribute.to_ascii_lowercase();
        Ok(entries
            .into_iter()
            .flat_map(|(_, attrs)| attrs)
            .filter(|(name, _)| {
                name.split(';')
                    .next()
                    .is_some_and(|n| n.trim().eq_ignore_ascii_case(&wanted))
            })
            .filter_map(|(_, value)| String::from_utf8(value).ok())
            .map(|v| v.trim().to_ascii_lowercase())
            .filter(|v| !v.is_empty())
            .collect())
    }
}

/// [`LdapLogins`] with its answers kept for a while.
pub struct CachedLogins {
    directory: LdapLogins,
    cache: Mutex<TtlCache>,
}

impl CachedLogins {
    /// Answers are kept for `ttl` (zero: every MAIL asks the server).
    pub fn new(directory: LdapLogins, ttl: Duration) -> Self {
        CachedLogins {
            directory,
            cache: Mutex::new(TtlCache::new(ttl, MAX_CACHED)),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, TtlCache> {
        // A panic elsewhere while holding the lock leaves a map that is
        // still consistent: keep using it.
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl LoginDirectory for CachedLogins {
    async fn owned_by(&self, login: &str) -> Result<Vec<String>, LoginError> {
        let key = login.trim().to_ascii_lowercase();
        if let Some(hit) = self.cache().get(&key, Instant::now()) {
            return Ok(hit.to_vec());
        }
        let found = self
            .directory
            .search(login.trim())
            .await
            .map_err(|e| LoginError(Box::new(e)))?;
        tracing::debug!(login = %key, addresses = ?found, "holders' directory answered");
        self.cache()
            .put(key, Arc::from(found.as_slice()), Instant::now());
        Ok(found)
    }
}

/// login -> (when it was asked, the addresses), bounded.
struct TtlCache {
    ttl: Duration,
    max: usize,
    entries: HashMap<String, (Instant, Arc<[String]>)>,
}

impl TtlCache {
    fn new(ttl: Duration, max: usize) -> Self {
        TtlCache {
            ttl,
            max,
            entries: HashMap::new(),
        }
    }

    fn get(&self, key: &str, now: Instant) -> Option<Arc<[String]>> {
        self.entries
            .get(key)
            .filter(|(at, _)| now.saturating_duration_since(*at) < self.ttl)
            .map(|(_, v)| v.clone())
    }

    fn put(&mut self, key: String, value: Arc<[String]>, now: Instant) {
        if self.ttl.is_zero() || self.max == 0 {
            return;
        }
        if self.entries.len() >= self.max && !self.entries.contains_key(&key) {
            let ttl = self.ttl;
            self.entries
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
            if self.entries.len() >= self.max {
                // Every entry is fresh: start again rather than grow.
                self.entries.clear();
            }
        }
        self.entries.insert(key, (now, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(a: &[&str]) -> Arc<[String]> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_answer_is_kept_for_the_ttl_only() {
        let t0 = Instant::now();
        let mut c = TtlCache::new(Duration::from_secs(60), 10);
        c.put("mrossi".into(), v(&["mario@pec.it"]), t0);
        assert_eq!(
            c.get("mrossi", t0 + Duration::from_secs(59)).as_deref(),
            Some(&["mario@pec.it".to_string()][..])
        );
        assert!(c.get("mrossi", t0 + Duration::from_secs(60)).is_none());
        assert!(c.get("other", t0).is_none());
    }

    #[test]
    fn an_unknown_login_is_kept_too() {
        let t0 = Instant::now();
        let mut c = TtlCache::new(Duration::from_secs(60), 10);
        c.put("nobody".into(), v(&[]), t0);
        assert_eq!(c.get("nobody", t0).map(|a| a.len()), Some(0));
    }

    #[test]
    fn zero_ttl_keeps_nothing() {
        let t0 = Instant::now();
        let mut c = TtlCache::new(Duration::ZERO, 10);
        c.put("mrossi".into(), v(&["mario@pec.it"]), t0);
        assert!(c.get("mrossi", t0).is_none());
    }

    #[test]
    fn the_cache_never_grows_past_its_bound() {
        let t0 = Instant::now();
        let mut c = TtlCache::new(Duration::from_secs(60), 3);
        for i in 0..3 {
            c.put(format!("l{i}"), v(&[]), t0);
        }
        // l0..l2 expired by t1: they make room, the new one stays.
        let t1 = t0 + Duration::from_secs(61);
        c.put("fresh".into(), v(&["a@b"]), t1);
        assert_eq!(c.entries.len(), 1);
        for i in 0..5 {
            c.put(format!("n{i}"), v(&[]), t1);
            assert!(c.entries.len() <= 3, "{}", c.entries.len());
        }
        // Updating a present key at the bound does not drop the others.
        let before = c.entries.len();
        let present = c.entries.keys().next().cloned().expect("one entry");
        c.put(present, v(&["x@y"]), t1);
        assert_eq!(c.entries.len(), before);
    }
}
