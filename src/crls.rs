//! The CRLs of the providers' certificates' distribution points, kept
//! fresh (PEC-RULES §4.3 step 3: "any CRL cache must have an update
//! interval that keeps the data current").
//!
//! [`CrlCache`] is the [`CrlSource`] the reception point's trust store asks
//! (`crate::crypto::crl::check_chain`). It learns a distribution point
//! (an `http://` / `https://` URL and the certificate that issues its CRL)
//! from the certificates of the providers' index once it is loaded, and
//! from every chain it is asked about; then:
//!
//! - it downloads the CRL (`ureq`, blocking, on tokio's blocking pool) and
//!   takes it only when it parses, is issued by that certificate (name and
//!   signature) and is not older than the copy it holds;
//! - it keeps it in memory and, when `dir` is set, on disk (`<name>.crl`,
//!   DER, and `<name>.json`: the URL and the issuer), written atomically,
//!   read back at the next start (each file verified again);
//! - it downloads it again before its nextUpdate (a tenth of its validity
//!   before, between a minute and an hour), at the latest `refresh` after
//!   the last download, after a failure again in a minute, doubling up to
//!   an hour;
//! - when a download fails it keeps the last good copy: in use until its
//!   nextUpdate, then `grace` longer; one warning when a distribution point
//!   starts failing (not one per try), one line when it is back, every
//!   failure counted (`pec_milter_crl_fetch_failures_total`).
//!
//! A distribution point without a usable CRL (never obtained, or past
//! nextUpdate + `grace`) makes the chain's status unknown: the roles answer
//! 4xx rather than certify a provider that may be revoked (README,
//! "Revocation").

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use openssl::x509::X509;

use crate::crypto::crl::{Crl, CrlLookup, CrlSource, distribution_points};
use crate::metrics::Metrics;

/// The largest CRL downloaded (a big CA's CRL is a few MB).
const MAX_CRL: u64 = 64 << 20;
/// The first pause after a failed download; doubled up to [`RETRY_MAX`].
const RETRY_FIRST: Duration = Duration::from_secs(60);
const RETRY_MAX: Duration = Duration::from_secs(3600);
/// The longest sleep of the refresher (it also wakes when a distribution
/// point is learnt).
const IDLE: Duration = Duration::from_secs(3600);

/// Errors of the CRL cache.
#[derive(Debug, thiserror::Error)]
pub enum CrlError {
    /// The download failed (connection, timeout, HTTP status, size).
    #[error("{url}: download failed: {reason}")]
    Fetch { url: String, reason: String },
    /// What was downloaded is not taken: not a CRL, not issued by the
    /// distribution point's issuer, older than the copy held.
    #[error("{url}: CRL refused: {reason}")]
    Refused { url: String, reason: String },
    /// The cache directory could not be written or read.
    #[error("CRL cache {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// How the cache fetches and keeps (`[reception]`: `crl_cache`,
/// `crl_timeout`, `crl_refresh`, `crl_grace`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrlOptions {
    /// Download at all (`fetch_crls`): off, the refresher downloads
    /// nothing (a reload may turn it on again).
    pub fetch: bool,
    /// The directory of the copies on disk; `None`: memory only.
    pub dir: Option<PathBuf>,
    /// The timeout of one download.
    pub timeout: Duration,
    /// The longest time between two downloads of one CRL.
    pub refresh: Duration,
    /// How long past its nextUpdate the last good copy stays usable.
    pub grace: Duration,
}

impl Default for CrlOptions {
    fn default() -> Self {
        CrlOptions {
            fetch: true,
            dir: None,
            timeout: Duration::from_secs(10),
            refresh: Duration::from_secs(86400),
            grace: Duration::from_secs(86400),
        }
    }
}

/// One distribution point.
struct Entry {
    /// The certificate that issues its CRL.
    issuer: X509,
    /// The last good copy.
    crl: Option<Arc<Crl>>,
    /// When the next download is due.
    due: SystemTime,
    /// Failed downloads since the last good one.
    failures: u32,
    /// The last failure, for the words of a lookup.
    last_error: Option<String>,
    /// The copy in use is past its nextUpdate and that was said.
    warned_stale: bool,
}

impl Entry {
    fn new(issuer: X509, due: SystemTime) -> Entry {
        Entry {
            issuer,
            crl: None,
            due,
            failures: 0,
            last_error: None,
            warned_stale: false,
        }
    }
}

/// The distribution points' CRLs; share it as an `Arc`.
pub struct CrlCache {
    entries: RwLock<BTreeMap<String, Entry>>,
    options: RwLock<CrlOptions>,
    wake: tokio::sync::Notify,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for CrlCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CrlCache")
            .field("options", &self.options())
            .finish_non_exhaustive()
    }
}

/// When the CRL `crl`, downloaded at `now`, is to be downloaded again.
fn due_after(crl: &Crl, now: SystemTime, refresh: Duration) -> SystemTime {
    let mut due = now + refresh;
    if let Some(next) = crl.next_update() {
        let validity = next
            .duration_since(crl.this_update())
            .unwrap_or(Duration::ZERO);
        let margin = (validity / 10).clamp(Duration::from_secs(60), Duration::from_secs(3600));
        due = due.min(next.checked_sub(margin).unwrap_or(next));
    }
    // never a loop of downloads of a CRL issued about to expire
    due.max(now + RETRY_FIRST)
}

fn retry_after(failures: u32) -> Duration {
    RETRY_FIRST
        .saturating_mul(1u32 << failures.saturating_sub(1).min(6))
        .min(RETRY_MAX)
}

/// The file name of a distribution point's copy: a digest of its URL.
fn file_stem(url: &str) -> String {
    hex::encode(&openssl::sha::sha256(url.as_bytes())[..16])
}

fn same_certificate(a: &X509, b: &X509) -> bool {
    match (a.to_der(), b.to_der()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

fn rfc3339(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// What `<name>.json` says of a copy on disk.
#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    url: String,
    /// The issuer certificate, PEM.
    issuer: String,
}

impl CrlCache {
    /// An empty cache counting into `metrics`.
    pub fn new(options: CrlOptions, metrics: Arc<Metrics>) -> CrlCache {
        CrlCache {
            entries: RwLock::new(BTreeMap::new()),
            options: RwLock::new(options),
            wake: tokio::sync::Notify::new(),
            metrics,
        }
    }

    /// The options in force.
    pub fn options(&self) -> CrlOptions {
        self.options
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// New options (a reload): from the next download on. A new directory
    /// is read now (its copies join those held).
    pub fn configure(&self, options: CrlOptions) {
        let old = self.options();
        let dir_changed = options.dir != old.dir || (options.fetch && !old.fetch);
        *self.options.write().unwrap_or_else(|e| e.into_inner()) = options;
        if dir_changed {
            self.load_dir();
        }
        self.wake.notify_one();
    }

    /// Read the copies kept in the directory (at start): each one whose
    /// CRL parses and verifies against its issuer is held, to be
    /// downloaded again when due. Returns how many were read; what cannot
    /// be read is logged and skipped.
    pub fn load_dir(&self) -> usize {
        let options = self.options();
        let (true, Some(dir)) = (options.fetch, options.dir) else {
            return 0;
        };
        let listing = match std::fs::read_dir(&dir) {
            Ok(l) => l,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return 0,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "CRL cache: directory not readable; starting without copies");
                return 0;
            }
        };
        let mut read = 0;
        for item in listing.flatten() {
            let path = item.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            match self.load_one(&path) {
                Ok(url) => {
                    tracing::info!(url = %url, file = %path.display(), "CRL cache: copy read from disk");
                    read += 1;
                }
                Err(reason) => {
                    tracing::warn!(file = %path.display(), reason = %reason, "CRL cache: copy on disk skipped");
                }
            }
        }
        read
    }

    fn load_one(&self, meta_path: &Path) -> Result<String, String> {
        let text = std::fs::read_to_string(meta_path).map_err(|e| e.to_string())?;
        let meta: Meta = serde_json::from_str(&text).map_err(|e| e.to_string())?;
        let issuer = X509::from_pem(meta.issuer.as_bytes()).map_err(|e| e.to_string())?;
        let crl_path = meta_path.with_extension("crl");
        let bytes = std::fs::read(&crl_path).map_err(|e| format!("{}: {e}", crl_path.display()))?;
        let crl = Crl::parse(&bytes).map_err(|e| e.to_string())?;
        crl.verify_issuer(&issuer).map_err(|e| e.to_string())?;
        let fetched = std::fs::metadata(&crl_path)
            .and_then(|m| m.modified())
            .unwrap_or(crl.this_update());
        let refresh = self.options().refresh;
        let due = due_after(&crl, fetched, refresh);
        let mut map = self.entries.write().unwrap_or_else(|e| e.into_inner());
        let entry = map
            .entry(meta.url.clone())
            .or_insert_with(|| Entry::new(issuer.clone(), due));
        let newer = entry
            .crl
            .as_ref()
            .is_none_or(|held| held.this_update() < crl.this_update());
        if newer {
            entry.issuer = issuer;
            entry.crl = Some(Arc::new(crl));
            entry.due = due;
        }
        drop(map);
        self.wake.notify_one();
        Ok(meta.url)
    }

    /// Take note of the distribution point `url`, whose CRL `issuer`
    /// issues: fetched at once by the refresher. Known already: nothing.
    pub fn want(&self, url: &str, issuer: &X509) {
        let mut map = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(url) {
            return;
        }
        tracing::info!(url = %url, issuer = %crate::crypto::verify::name_to_string(issuer.subject_name()),
            "CRL distribution point learnt; fetching its CRL");
        map.insert(
            url.to_string(),
            Entry::new(issuer.clone(), SystemTime::now()),
        );
        drop(map);
        self.wake.notify_one();
    }

    /// Learn the distribution points of `certs` (the providers' index:
    /// known before their first message), each with its issuer when it is
    /// among `anchors` or the issuers known already. A certificate whose
    /// issuer is not known yet is learnt from its first chain instead.
    pub fn learn(&self, certs: &[X509], anchors: &[X509]) -> usize {
        let known: Vec<X509> = {
            let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
            map.values().map(|e| e.issuer.clone()).collect()
        };
        let mut learnt = 0;
        for cert in certs {
            let urls = distribution_points(cert);
            if urls.is_empty() {
                continue;
            }
            let issuer = anchors.iter().chain(known.iter()).find(|i| {
                i.subject_name()
                    .try_cmp(cert.issuer_name())
                    .is_ok_and(|o| o.is_eq())
                    && i.public_key()
                        .ok()
                        .is_some_and(|k| cert.verify(&k).unwrap_or(false))
            });
            match issuer {
                Some(issuer) => {
                    for url in &urls {
                        self.want(url, issuer);
                        learnt += 1;
                    }
                }
                None => tracing::debug!(
                    subject = %crate::crypto::verify::name_to_string(cert.subject_name()),
                    "CRL: the issuer of a listed certificate is not known yet; its CRL is fetched at its first message"
                ),
            }
        }
        learnt
    }

    /// The distribution points known.
    pub fn urls(&self) -> Vec<String> {
        let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
        map.keys().cloned().collect()
    }

    /// The age (since its thisUpdate) of the oldest CRL in use; `None`
    /// when none is held.
    pub fn oldest_age(&self) -> Option<Duration> {
        let now = SystemTime::now();
        let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
        map.values()
            .filter_map(|e| e.crl.as_ref())
            .map(|c| {
                now.duration_since(c.this_update())
                    .unwrap_or(Duration::ZERO)
            })
            .max()
    }

    /// The distribution points without a usable CRL now, with why.
    pub fn unavailable(&self) -> Vec<(String, String)> {
        let now = SystemTime::now();
        let grace = self.options().grace;
        let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .filter_map(|(url, e)| match usable(url, e, now, grace) {
                Ok(_) => None,
                Err(why) => Some((url.clone(), why)),
            })
            .collect()
    }

    /// How long until the next download is due (at most [`IDLE`]).
    fn next_wait(&self) -> Duration {
        let now = SystemTime::now();
        let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
        map.values()
            .map(|e| e.due.duration_since(now).unwrap_or(Duration::ZERO))
            .min()
            .unwrap_or(IDLE)
            .min(IDLE)
    }

    /// Download every CRL that is due; the number of downloads that failed.
    pub async fn refresh_due(&self) -> usize {
        if !self.options().fetch {
            return 0;
        }
        let now = SystemTime::now();
        let due: Vec<(String, X509)> = {
            let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
            map.iter()
                .filter(|(_, e)| e.due <= now)
                .map(|(u, e)| (u.clone(), e.issuer.clone()))
                .collect()
        };
        let mut failed = 0;
        for (url, issuer) in due {
            if self.refresh_one(&url, &issuer).await.is_err() {
                failed += 1;
            }
        }
        failed
    }

    /// Download the CRL of `url` now (whether due or not), the outcome
    /// logged and counted.
    pub async fn refresh_one(&self, url: &str, issuer: &X509) -> Result<(), CrlError> {
        let options = self.options();
        let (u, timeout) = (url.to_string(), options.timeout);
        let fetched = match tokio::task::spawn_blocking(move || http_get(&u, timeout)).await {
            Ok(r) => r,
            Err(e) => Err(CrlError::Fetch {
                url: url.to_string(),
                reason: format!("download task failed: {e}"),
            }),
        };
        let result = fetched.and_then(|bytes| self.take(url, issuer, &bytes, &options));
        let now = SystemTime::now();
        match &result {
            Ok(crl) => {
                let mut map = self.entries.write().unwrap_or_else(|e| e.into_inner());
                let entry = map
                    .entry(url.to_string())
                    .or_insert_with(|| Entry::new(issuer.clone(), now));
                let was_failing = entry.failures > 0;
                entry.crl = Some(crl.clone());
                entry.due = due_after(crl, now, options.refresh);
                entry.failures = 0;
                entry.last_error = None;
                entry.warned_stale = false;
                let due = entry.due;
                drop(map);
                tracing::info!(url = %url, this_update = %rfc3339(crl.this_update()),
                    next_update = %crl.next_update().map(rfc3339).unwrap_or_else(|| "-".into()),
                    next_download = %rfc3339(due), back_after_failures = was_failing,
                    "CRL fetched");
            }
            Err(e) => {
                self.metrics.crl_fetch_failure();
                let mut map = self.entries.write().unwrap_or_else(|e| e.into_inner());
                let entry = map
                    .entry(url.to_string())
                    .or_insert_with(|| Entry::new(issuer.clone(), now));
                entry.failures = entry.failures.saturating_add(1);
                entry.last_error = Some(e.to_string());
                entry.due = now + retry_after(entry.failures);
                let first = entry.failures == 1;
                let held = entry.crl.clone();
                let past_next = held.as_ref().is_some_and(|c| c.expired_at(now));
                let say_stale = past_next && !entry.warned_stale;
                if say_stale {
                    entry.warned_stale = true;
                }
                let retry = entry.due;
                let failures = entry.failures;
                drop(map);
                match held {
                    Some(crl) if first || say_stale => {
                        let usable_until = crl.next_update().map(|n| rfc3339(n + options.grace));
                        tracing::warn!(url = %url, error = %e,
                            this_update = %rfc3339(crl.this_update()),
                            next_update = %crl.next_update().map(rfc3339).unwrap_or_else(|| "-".into()),
                            usable_until = %usable_until.unwrap_or_else(|| "-".into()),
                            retry = %rfc3339(retry),
                            "CRL download failed; the last good copy stays in use")
                    }
                    None if first => {
                        tracing::warn!(url = %url, error = %e, retry = %rfc3339(retry),
                        "CRL download failed and no copy is held: messages signed by certificates of this distribution point are answered 4xx until it is fetched")
                    }
                    _ => tracing::debug!(url = %url, error = %e, failures,
                        retry = %rfc3339(retry), "CRL download failed again"),
                }
            }
        }
        result.map(|_| ())
    }

    /// Check `bytes` downloaded from `url` and keep them (memory by the
    /// caller, disk here).
    fn take(
        &self,
        url: &str,
        issuer: &X509,
        bytes: &[u8],
        options: &CrlOptions,
    ) -> Result<Arc<Crl>, CrlError> {
        let refused = |reason: String| CrlError::Refused {
            url: url.to_string(),
            reason,
        };
        let crl = Crl::parse(bytes).map_err(|e| refused(e.to_string()))?;
        crl.verify_issuer(issuer)
            .map_err(|e| refused(e.to_string()))?;
        let held = {
            let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
            map.get(url).and_then(|e| e.crl.clone())
        };
        if let Some(held) = held
            && crl.this_update() < held.this_update()
        {
            return Err(refused(format!(
                "older (thisUpdate {}) than the copy held ({})",
                rfc3339(crl.this_update()),
                rfc3339(held.this_update())
            )));
        }
        if let Some(dir) = &options.dir
            && let Err(e) = store(dir, url, issuer, &crl)
        {
            // the copy in memory serves; the next start fetches it again
            tracing::warn!(url = %url, error = %e, "CRL cache: the copy cannot be kept on disk");
        }
        Ok(Arc::new(crl))
    }

    /// The refresher: downloads what is due, sleeping until the next one
    /// is (or a distribution point is learnt), until `stop` changes.
    /// `report` hears, after each pass, the distribution points without a
    /// usable CRL (empty: every one has one).
    pub fn spawn(
        self: Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
        report: impl Fn(&[(String, String)]) + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                let wait = self.next_wait();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = self.wake.notified() => {}
                    _ = stop.changed() => break,
                }
                self.refresh_due().await;
                report(&self.unavailable());
            }
        })
    }
}

/// The copy of `e` usable at `now`, or why none is.
fn usable(
    url: &str,
    e: &Entry,
    now: SystemTime,
    grace: Duration,
) -> Result<(Arc<Crl>, bool), String> {
    let Some(crl) = &e.crl else {
        return Err(match &e.last_error {
            Some(err) => format!("no CRL obtained from {url} ({err})"),
            None => format!("no CRL obtained yet from {url} (being fetched)"),
        });
    };
    match crl.next_update() {
        Some(next) if now > next + grace => Err(format!(
            "the CRL of {url} expired at {} and no newer one could be fetched{}",
            rfc3339(next),
            e.last_error
                .as_ref()
                .map(|err| format!(" ({err})"))
                .unwrap_or_default()
        )),
        Some(next) => Ok((crl.clone(), now > next)),
        None => Ok((crl.clone(), false)),
    }
}

impl CrlSource for CrlCache {
    fn lookup(&self, url: &str, issuer: &X509) -> CrlLookup {
        let now = SystemTime::now();
        let grace = self.options().grace;
        {
            let map = self.entries.read().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = map.get(url) {
                return match usable(url, e, now, grace) {
                    Err(why) => CrlLookup::Unavailable(why),
                    Ok((crl, stale)) => {
                        if same_certificate(&e.issuer, issuer) || crl.verify_issuer(issuer).is_ok()
                        {
                            CrlLookup::Usable { crl, stale }
                        } else {
                            CrlLookup::Unavailable(format!(
                                "the CRL of {url} is not issued by {}",
                                crate::crypto::verify::name_to_string(issuer.subject_name())
                            ))
                        }
                    }
                };
            }
        }
        self.want(url, issuer);
        CrlLookup::Unavailable(format!("no CRL obtained yet from {url} (being fetched)"))
    }
}

/// Keep `crl` of `url` in `dir`: `<stem>.crl` (DER), then `<stem>.json`.
fn store(dir: &Path, url: &str, issuer: &X509, crl: &Crl) -> Result<(), CrlError> {
    let io = |source: std::io::Error| CrlError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let stem = file_stem(url);
    crate::keep::keep_with(dir, &stem, "crl", |f| f.write_all(crl.der())).map_err(io)?;
    let issuer_pem = issuer
        .to_pem()
        .map_err(|e| io(std::io::Error::other(e.to_string())))?;
    let meta = Meta {
        url: url.to_string(),
        issuer: String::from_utf8_lossy(&issuer_pem).into_owned(),
    };
    let json = serde_json::to_vec_pretty(&meta).map_err(|e| io(std::io::Error::other(e)))?;
    crate::keep::keep_with(dir, &stem, "json", |f| f.write_all(&json)).map_err(io)?;
    Ok(())
}

/// GET `url` (http or https through the system's OpenSSL and CA store),
/// the body of a 200 answer, at most [`MAX_CRL`] bytes.
fn http_get(url: &str, timeout: Duration) -> Result<Vec<u8>, CrlError> {
    let fail = |reason: String| CrlError::Fetch {
        url: url.to_string(),
        reason,
    };
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::NativeTls)
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .build();
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into();
    let mut resp = agent.get(url).call().map_err(|e| fail(e.to_string()))?;
    let status = resp.status();
    if status != 200 {
        return Err(fail(format!("HTTP {status}")));
    }
    let mut body = Vec::new();
    resp.body_mut()
        .as_reader()
        .take(MAX_CRL + 1)
        .read_to_end(&mut body)
        .map_err(|e| fail(e.to_string()))?;
    if body.len() as u64 > MAX_CRL {
        return Err(fail(format!("larger than {MAX_CRL} bytes")));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_up_to_an_hour() {
        assert_eq!(retry_after(1), Duration::from_secs(60));
        assert_eq!(retry_after(2), Duration::from_secs(120));
        assert_eq!(retry_after(7), Duration::from_secs(3600));
        assert_eq!(retry_after(u32::MAX), Duration::from_secs(3600));
    }

    #[test]
    fn the_next_download_comes_before_next_update() {
        let pki = crate::crypto::Pki::generate("Alfa", "pec.alfa.test", 30).expect("pki");
        let now = SystemTime::now();
        let day = Duration::from_secs(86400);
        let der = pki.crl(&[], now, now + day).expect("crl");
        let crl = Crl::parse(&der).expect("parse");
        let due = due_after(&crl, now, Duration::from_secs(7 * 86400));
        let next = crl.next_update().expect("next");
        assert!(
            due < next && due >= next - Duration::from_secs(3600),
            "{due:?}"
        );
        // a shorter refresh wins
        let due = due_after(&crl, now, Duration::from_secs(600));
        assert!(due <= now + Duration::from_secs(601));
    }

    #[tokio::test]
    async fn nothing_is_downloaded_when_fetching_is_off() {
        let cache = CrlCache::new(
            CrlOptions {
                fetch: false,
                ..CrlOptions::default()
            },
            Arc::new(Metrics::new()),
        );
        let pki = crate::crypto::Pki::generate("Alfa", "pec.alfa.test", 30).expect("pki");
        cache.want("http://127.0.0.1:9/alfa.crl", &pki.ca_cert().expect("ca"));
        assert_eq!(cache.refresh_due().await, 0, "no download tried");
        assert_eq!(cache.unavailable().len(), 1, "and no copy");
        assert!(
            !cache
                .metrics
                .encode()
                .contains("crl_fetch_failures_total 1")
        );
    }
}
