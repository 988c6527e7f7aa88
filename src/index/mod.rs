//! The providers' index (IGPEC, *Indice dei Gestori PEC*; PEC-RULES §5).
//!
//! Every PEC provider keeps a local copy of the central LDAP directory
//! `o=postacert`: one `provider` entry per provider
//! (`providerName=<name>,o=postacert`) and optional secondary operating
//! environments (`providerUnit=<unit>,providerName=<name>,o=postacert`). The
//! milter needs two lookups from it:
//!
//! - **recipient type** at acceptance: is the domain of an address listed in
//!   some entry's `managedDomains`? (`certificato` / `esterno`; an exact,
//!   case-insensitive domain match, subdomains are not implied);
//! - **origin of an inbound signature** (PEC-RULES §4.3): SHA-1 of the signer
//!   certificate, searched case-insensitively in `providerCertificateHash`,
//!   then the DER byte-compared with one of that entry's
//!   `providerCertificate;binary` values.
//!
//! The copy comes from an LDIF file ([`ldif`]) or an LDAP server ([`ldap`]).
//! [`IndexSnapshot`] is one immutable, loaded copy; [`ProviderIndex`] holds
//! the last good one and refreshes it on a schedule or on demand, never
//! replacing a good copy by a failed or empty load.

pub mod ldap;
pub mod ldif;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use crate::crypto::verify::TrustStore;
use crate::crypto::{DigestAlg, digest};
use crate::pec::TipoDestinatario;

/// One `provider` entry of the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderEntry {
    /// The entry's distinguished name, as the source gave it.
    pub dn: String,
    /// `providerName`.
    pub name: String,
    /// `providerUnit`: set on the entry of a secondary operating environment.
    pub unit: Option<String>,
    /// `providerCertificateHash` values, normalised to uppercase hex.
    pub cert_hashes: Vec<String>,
    /// `providerCertificate;binary` values (DER).
    pub certificates: Vec<Vec<u8>>,
    /// `mailReceipt`: the provider's service mailbox.
    pub mail_receipt: String,
    /// `managedDomains`, lowercase.
    pub managed_domains: Vec<String>,
}

impl ProviderEntry {
    /// The entry of one provider with one certificate (DER), as our own
    /// tools write it (`index-entry`, `init-demo`): `providerName=NAME,
    /// o=postacert`, the certificate and its hash, the domains lowercased.
    pub fn for_certificate(
        name: &str,
        der: Vec<u8>,
        mail_receipt: String,
        domains: &[String],
    ) -> ProviderEntry {
        ProviderEntry {
            dn: format!("providerName={name},o=postacert"),
            name: name.to_string(),
            unit: None,
            cert_hashes: vec![certificate_hash(&der)],
            certificates: vec![der],
            mail_receipt,
            managed_domains: domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
        }
    }

    /// Whether `domain` is one of this entry's `managedDomains` (exact,
    /// case-insensitive; PEC-RULES §4.3 step 5 checks the `From:` domain
    /// with this).
    pub fn manages(&self, domain: &str) -> bool {
        let d = normalise_domain(domain);
        self.managed_domains.contains(&d)
    }
}

/// Errors of the providers' index.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An LDIF document is malformed or an entry lacks a mandatory attribute.
    #[error("LDIF line {line}: {reason}")]
    Ldif {
        /// 1-based line number (of the offending line, or of the entry's `dn:`).
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The LDAP server could not be reached or answered with an error.
    #[error("LDAP: {0}")]
    Ldap(String),
    /// No usable copy: the source yielded no provider, or nothing was loaded
    /// yet. A good index is never replaced by an empty one.
    #[error("empty providers' index: {0}")]
    Empty(String),
    /// The source did not answer within its timeout.
    #[error("the providers' index source did not answer in time")]
    Timeout,
    /// The signed index (`.p7m`) does not verify against `[index]
    /// signed_by` (tampered, not a SignedData); the two cases in plain
    /// words are [`NotSigned`](Self::NotSigned) and
    /// [`UntrustedSigner`](Self::UntrustedSigner).
    #[error("signature of {path}: {reason}")]
    Signature {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A plain LDIF where `[index] signed_by` expects the signed `.p7m`.
    #[error(
        "{}: a plain LDIF, not signed ([index] signed_by expects the signed .p7m as published)",
        path.display()
    )]
    NotSigned {
        /// The file.
        path: PathBuf,
    },
    /// The signed index's signer does not chain to `[index] signed_by`.
    #[error(
        "{}: the signer does not chain to [index] signed_by ({detail})",
        path.display()
    )]
    UntrustedSigner {
        /// The file.
        path: PathBuf,
        /// OpenSSL's detail (`certificate verify error: unable to get
        /// local issuer certificate`, ...).
        detail: String,
    },
}

impl IndexError {
    /// Whether this is a signed index refused for its signature (tampered,
    /// not signed, an untrusted signer): what
    /// `pec_milter_index_signature_failures_total` counts.
    pub fn is_signature_failure(&self) -> bool {
        matches!(
            self,
            IndexError::Signature { .. }
                | IndexError::NotSigned { .. }
                | IndexError::UntrustedSigner { .. }
        )
    }
}

/// Lowercase, trimmed, without a trailing dot.
fn normalise_domain(domain: &str) -> String {
    let d = domain.trim();
    let d = d.strip_suffix('.').unwrap_or(d);
    d.to_ascii_lowercase()
}

/// The base name of an attribute description, lowercase, without options
/// (`providerCertificate;binary` → `providercertificate`).
fn attr_base(name: &str) -> String {
    name.split(';')
        .next()
        .unwrap_or(name)
        .trim()
        .to_ascii_lowercase()
}

/// Builds a [`ProviderEntry`] from the attributes of one entry (names as the
/// source gave them, any case, options allowed; values raw). Errors name the
/// problem; callers add the entry's position.
pub(crate) fn entry_from_attrs(
    dn: &str,
    attrs: &[(String, Vec<u8>)],
) -> Result<ProviderEntry, String> {
    let mut name = Vec::new();
    let mut unit = Vec::new();
    let mut cert_hashes = Vec::new();
    let mut certificates = Vec::new();
    let mut mail_receipt = Vec::new();
    let mut managed_domains = Vec::new();
    for (attr, value) in attrs {
        let base = attr_base(attr);
        let text =
            || String::from_utf8(value.clone()).map_err(|_| format!("{attr}: value is not UTF-8"));
        match base.as_str() {
            "providername" => name.push(text()?.trim().to_string()),
            "providerunit" => unit.push(text()?.trim().to_string()),
            "providercertificatehash" => cert_hashes.push(text()?.trim().to_ascii_uppercase()),
            "providercertificate" => certificates.push(value.clone()),
            "mailreceipt" => mail_receipt.push(text()?.trim().to_string()),
            "manageddomains" => managed_domains.push(normalise_domain(&text()?)),
            _ => {}
        }
    }
    let single = |values: &mut Vec<String>, attr: &str| -> Result<Option<String>, String> {
        match values.len() {
            0 => Ok(None),
            1 => Ok(values.pop()),
            n => Err(format!("{attr} is single-valued but has {n} values")),
        }
    };
    let name = single(&mut name, "providerName")?
        .ok_or_else(|| "missing mandatory attribute providerName".to_string())?;
    let unit = single(&mut unit, "providerUnit")?;
    let mail_receipt = single(&mut mail_receipt, "mailReceipt")?
        .ok_or_else(|| "missing mandatory attribute mailReceipt".to_string())?;
    if cert_hashes.is_empty() {
        return Err("missing mandatory attribute providerCertificateHash".into());
    }
    if certificates.is_empty() {
        return Err("missing mandatory attribute providerCertificate".into());
    }
    if managed_domains.is_empty() {
        return Err("missing mandatory attribute managedDomains".into());
    }
    Ok(ProviderEntry {
        dn: dn.to_string(),
        name,
        unit,
        cert_hashes,
        certificates,
        mail_receipt,
        managed_domains,
    })
}

/// Uppercase hex SHA-1 of a certificate's DER (the `providerCertificateHash` form).
pub fn certificate_hash(der: &[u8]) -> String {
    hex::encode_upper(digest(DigestAlg::Sha1, der))
}

/// One immutable copy of the index.
#[derive(Debug)]
pub struct IndexSnapshot {
    entries: Vec<ProviderEntry>,
    /// lowercase domain → index in `entries`
    by_domain: HashMap<String, usize>,
    /// uppercase hash → indexes in `entries`
    by_hash: HashMap<String, Vec<usize>>,
    loaded_at: SystemTime,
    source: String,
}

impl IndexSnapshot {
    /// A snapshot of `entries` loaded from `source` (a description for the
    /// logs). Refuses an empty list ([`IndexError::Empty`]). A domain listed
    /// by two entries belongs to the first one (a warning is logged).
    pub fn new(entries: Vec<ProviderEntry>, source: String) -> Result<Self, IndexError> {
        if entries.is_empty() {
            return Err(IndexError::Empty(format!("{source} lists no provider")));
        }
        let mut by_domain: HashMap<String, usize> = HashMap::new();
        let mut by_hash: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, e) in entries.iter().enumerate() {
            for d in &e.managed_domains {
                let d = normalise_domain(d);
                match by_domain.get(&d).and_then(|&first| entries.get(first)) {
                    Some(owner) => {
                        if owner.name.eq_ignore_ascii_case(&e.name) {
                            tracing::debug!(domain = %d, first = %owner.dn, again = %e.dn,
                                "domain listed twice by the same provider");
                        } else {
                            tracing::warn!(domain = %d, kept = %owner.dn, ignored = %e.dn,
                                "providers' index: domain listed by two providers; keeping the first");
                        }
                    }
                    None => {
                        by_domain.insert(d, i);
                    }
                }
            }
            for h in &e.cert_hashes {
                let list = by_hash.entry(h.trim().to_ascii_uppercase()).or_default();
                if !list.contains(&i) {
                    list.push(i);
                }
            }
            for der in &e.certificates {
                if !e.cert_hashes.iter().any(|h| *h == certificate_hash(der)) {
                    tracing::warn!(dn = %e.dn, sha1 = %certificate_hash(der),
                        "providers' index: a providerCertificate has no matching providerCertificateHash in its entry");
                }
            }
        }
        Ok(IndexSnapshot {
            entries,
            by_domain,
            by_hash,
            loaded_at: SystemTime::now(),
            source,
        })
    }

    /// All entries, in source order.
    pub fn providers(&self) -> &[ProviderEntry] {
        &self.entries
    }

    /// When this copy was loaded.
    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    /// Where this copy came from (file path or LDAP URL and base).
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The entry listing `domain` in `managedDomains`: exact match,
    /// case-insensitive; subdomains are NOT implied.
    pub fn provider_for_domain(&self, domain: &str) -> Option<&ProviderEntry> {
        self.by_domain
            .get(&normalise_domain(domain))
            .and_then(|&i| self.entries.get(i))
    }

    /// Whether `domain` is a PEC domain (listed by some provider).
    pub fn is_certified(&self, domain: &str) -> bool {
        self.provider_for_domain(domain).is_some()
    }

    /// The entry owning a signer certificate: the SHA-1 of `der` matched
    /// case-insensitively against `providerCertificateHash`, then `der`
    /// byte-compared with one of that entry's certificates. An entry that
    /// lists the hash but none of whose certificates equals `der` does not
    /// own it (`None`, logged).
    pub fn provider_for_certificate(&self, der: &[u8]) -> Option<&ProviderEntry> {
        let hash = certificate_hash(der);
        let candidates = self.by_hash.get(&hash)?;
        let found = candidates
            .iter()
            .filter_map(|&i| self.entries.get(i))
            .find(|e| e.certificates.iter().any(|c| c.as_slice() == der));
        if found.is_none() {
            let dns: Vec<&str> = candidates
                .iter()
                .filter_map(|&i| self.entries.get(i))
                .map(|e| e.dn.as_str())
                .collect();
            tracing::warn!(sha1 = %hash, entries = ?dns,
                "providers' index: certificate hash listed, but no listed certificate equals the signer's");
        }
        found
    }
}

/// Where the index is loaded from.
#[derive(Debug, Clone)]
pub enum IndexSource {
    /// A local LDIF file (the published directory, or an export of it).
    Ldif(PathBuf),
    /// The directory as published (PEC-RULES §5.1): a `.p7m` file, a CMS
    /// SignedData enveloping the LDIF (DER, PEM or base64), taken only
    /// when its signature verifies and its signer chains to `signed_by`.
    SignedLdif {
        /// The file.
        path: PathBuf,
        /// The trust anchors of its signer (`[index] signed_by`).
        signed_by: TrustStore,
    },
    /// An LDAP server.
    Ldap(ldap::LdapSource),
}

impl IndexSource {
    /// A description for logs and [`IndexSnapshot::source`].
    pub fn describe(&self) -> String {
        match self {
            IndexSource::Ldif(path) => format!("LDIF file {}", path.display()),
            IndexSource::SignedLdif { path, .. } => format!("signed LDIF file {}", path.display()),
            IndexSource::Ldap(src) => src.describe(),
        }
    }

    /// Loads the entries (no emptiness check here; see [`IndexSnapshot::new`]).
    pub async fn load(&self) -> Result<Vec<ProviderEntry>, IndexError> {
        match self {
            IndexSource::Ldif(path) => {
                let p = path.clone();
                match tokio::task::spawn_blocking(move || ldif::load(&p)).await {
                    Ok(r) => r,
                    Err(e) => Err(IndexError::Io {
                        path: path.clone(),
                        source: std::io::Error::other(format!("reading task failed: {e}")),
                    }),
                }
            }
            IndexSource::SignedLdif { path, signed_by } => {
                let (p, trust) = (path.clone(), signed_by.clone());
                match tokio::task::spawn_blocking(move || ldif::load_signed(&p, &trust)).await {
                    Ok(r) => r,
                    Err(e) => Err(IndexError::Io {
                        path: path.clone(),
                        source: std::io::Error::other(format!("reading task failed: {e}")),
                    }),
                }
            }
            IndexSource::Ldap(src) => src.load().await,
        }
    }
}

/// At most this long before the first retry while no copy of the index is
/// loaded ([`RefreshSchedule::new`]: `[index] refresh` when shorter).
pub const FIRST_RETRY: Duration = Duration::from_secs(60);

/// At most this long between retries while no copy of the index is loaded
/// (`[index] refresh` when shorter): as the CRL downloads, a minute
/// doubling up to an hour.
pub const MAX_RETRY: Duration = Duration::from_secs(3600);

/// When a refresher ([`ProviderIndex::spawn_refresher_scheduled`]) loads
/// the index.
///
/// - While a copy is in use: every [`every`](Self::every) (`[index]
///   refresh`) after the last attempt, whether it worked or not (a failed
///   refresh keeps the copy in use, which keeps serving).
/// - While NO copy is loaded (the reception point answers 4xx): sooner,
///   [`first_retry`](Self::first_retry) after the last attempt, the wait
///   doubling after each failed attempt up to
///   [`max_retry`](Self::max_retry); once a copy loads, `every` again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefreshSchedule {
    /// Between loads while a copy is in use.
    pub every: Duration,
    /// The first wait while no copy is loaded.
    pub first_retry: Duration,
    /// The longest wait while no copy is loaded.
    pub max_retry: Duration,
}

impl RefreshSchedule {
    /// Every `every` (at least one second, at most 30 years: tokio's
    /// bound on a timer); without a copy, the first retry after
    /// `min(every, FIRST_RETRY)`, doubling up to `min(every, MAX_RETRY)`.
    pub fn new(every: Duration) -> Self {
        // `now + every` with `[index] refresh = 9223372036854775807`
        // overflowed (a panic in the refresher, after its first load).
        let every = every
            .max(Duration::from_secs(1))
            .min(Duration::from_secs(30 * 365 * 86400));
        RefreshSchedule {
            every,
            first_retry: FIRST_RETRY.min(every),
            max_retry: MAX_RETRY.min(every),
        }
    }

    /// The same, its first retry without a copy after `first_retry` (at
    /// least 10 ms, at most `max_retry`).
    pub fn with_first_retry(self, first_retry: Duration) -> Self {
        RefreshSchedule {
            first_retry: first_retry
                .max(Duration::from_millis(10))
                .min(self.max_retry),
            ..self
        }
    }

    /// The wait after `retry` when the attempt after it failed too, no
    /// copy loaded: doubled, at most `max_retry`.
    pub fn next_retry(&self, retry: Duration) -> Duration {
        retry.saturating_mul(2).min(self.max_retry)
    }
}

/// The attempts to load, for the refresher's schedule and the logs.
#[derive(Debug, Default)]
struct Attempts {
    /// When the last attempt ended.
    last: Option<tokio::time::Instant>,
    /// Attempts that failed in a row while no copy was loaded.
    failed_without_copy: u32,
}

/// The live index: the last good snapshot, refreshed on a schedule and on
/// demand. Reads are cheap (an `Arc` clone under a read lock).
#[derive(Debug)]
pub struct ProviderIndex {
    /// Replaced by a reload of the configuration when only what
    /// [`IndexSource::describe`] does not show changed (a bind password).
    source: RwLock<IndexSource>,
    current: RwLock<Option<Arc<IndexSnapshot>>>,
    /// One refresh at a time, so that swaps happen in load order.
    refreshing: tokio::sync::Mutex<()>,
    attempts: Mutex<Attempts>,
}

impl ProviderIndex {
    /// An index reading from `source`; empty until the first successful
    /// [`refresh`](Self::refresh).
    pub fn new(source: IndexSource) -> Self {
        ProviderIndex {
            source: RwLock::new(source),
            current: RwLock::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            attempts: Mutex::new(Attempts::default()),
        }
    }

    /// Where this index loads from.
    pub fn index_source(&self) -> IndexSource {
        self.source
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Load from `source` from the next refresh on (a reload of the
    /// configuration: the same place, its bind password read again). The
    /// copy in use stays.
    pub fn set_source(&self, source: IndexSource) {
        *self.source.write().unwrap_or_else(|e| e.into_inner()) = source;
    }

    fn describe(&self) -> String {
        self.index_source().describe()
    }

    /// Loads a new copy from the source; on success it replaces the current
    /// one, on failure (unreadable, malformed, empty, timeout) the current
    /// copy stays and the error is returned.
    pub async fn refresh(&self) -> Result<(), IndexError> {
        self.refresh_counted().await.0
    }

    /// [`refresh`](Self::refresh), and how many attempts had failed in a
    /// row with no copy loaded before this one.
    async fn refresh_counted(&self) -> (Result<(), IndexError>, u32) {
        let _guard = self.refreshing.lock().await;
        let result = self.load_and_swap().await;
        let loaded = self.snapshot().is_some();
        let mut attempts = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        attempts.last = Some(tokio::time::Instant::now());
        let before = attempts.failed_without_copy;
        attempts.failed_without_copy = match (&result, loaded) {
            (Err(_), false) => before.saturating_add(1),
            _ => 0,
        };
        (result, before)
    }

    async fn load_and_swap(&self) -> Result<(), IndexError> {
        let source = self.index_source();
        let entries = source.load().await?;
        let snapshot = IndexSnapshot::new(entries, source.describe())?;
        let snapshot = Arc::new(snapshot);
        let mut cur = self.current.write().unwrap_or_else(|e| e.into_inner());
        *cur = Some(snapshot);
        Ok(())
    }

    /// How long ago the last attempt to load ended; `None` before the first.
    fn since_last_attempt(&self) -> Option<Duration> {
        self.attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last
            .map(|t| t.elapsed())
    }

    /// The current copy; `None` before the first successful load.
    pub fn snapshot(&self) -> Option<Arc<IndexSnapshot>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Age of the current copy; `None` before the first successful load.
    pub fn age(&self) -> Option<Duration> {
        self.snapshot()
            .map(|s| s.loaded_at().elapsed().unwrap_or(Duration::ZERO))
    }

    /// The recipient type of `address` (`local@domain`, angle brackets
    /// allowed): `Certificato` when its domain is in the index, `Esterno`
    /// otherwise. Without a loaded index this is an error, never a guess.
    pub fn tipo_destinatario(&self, address: &str) -> Result<TipoDestinatario, IndexError> {
        let snapshot = self
            .snapshot()
            .ok_or_else(|| IndexError::Empty("the providers' index is not loaded yet".into()))?;
        let address = address.trim().trim_start_matches('<').trim_end_matches('>');
        let domain = address.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
        Ok(if !domain.is_empty() && snapshot.is_certified(domain) {
            TipoDestinatario::Certificato
        } else {
            TipoDestinatario::Esterno
        })
    }

    /// Refreshes and logs the outcome (info with the provider count on
    /// success; warn with the age of the copy still in use on failure).
    pub async fn refresh_logged(&self) -> Result<(), IndexError> {
        self.refresh_logged_retrying(None).await
    }

    /// [`refresh_logged`](Self::refresh_logged); a failure with no copy
    /// loaded names `retry_in`, when the next attempt comes, and a load
    /// after such failures says how many there were.
    async fn refresh_logged_retrying(&self, retry_in: Option<Duration>) -> Result<(), IndexError> {
        let (result, failed_before) = self.refresh_counted().await;
        let source = self.describe();
        match &result {
            Ok(()) => {
                let count = self.snapshot().map(|s| s.providers().len()).unwrap_or(0);
                if failed_before == 0 {
                    tracing::info!(source = %source, providers = count,
                        "providers' index loaded");
                } else {
                    tracing::info!(source = %source, providers = count,
                        failed_attempts = failed_before,
                        "providers' index loaded; the first copy, after failed attempts");
                }
            }
            Err(e) => match (self.age(), retry_in) {
                (Some(age), _) => tracing::warn!(source = %source, error = %e,
                    age_secs = age.as_secs(),
                    "providers' index refresh failed; keeping the previous copy"),
                (None, Some(retry_in)) => tracing::warn!(source = %source, error = %e,
                    failed_attempts = failed_before.saturating_add(1), retry_in = ?retry_in,
                    "providers' index refresh failed; no copy loaded yet"),
                (None, None) => tracing::warn!(source = %source, error = %e,
                    "providers' index refresh failed; no copy loaded yet"),
            },
        }
        result
    }

    /// Spawns a task that refreshes every `interval` (at least one second)
    /// and whenever `trigger` is notified (use `Notify::notify_one`, which
    /// is never lost, e.g. on SIGHUP); while no copy is loaded, sooner
    /// ([`RefreshSchedule::new`]). If nothing is loaded yet it refreshes
    /// at once, or when an attempt was made already, its first retry after
    /// that one. Each outcome is logged. Abort the handle to stop it.
    pub fn spawn_refresher(
        self: Arc<Self>,
        interval: Duration,
        trigger: Arc<tokio::sync::Notify>,
    ) -> tokio::task::JoinHandle<()> {
        self.spawn_refresher_reporting(interval, trigger, |_| {})
    }

    /// [`spawn_refresher`](Self::spawn_refresher), telling `report` each
    /// outcome (the daemon's dependency health).
    pub fn spawn_refresher_reporting(
        self: Arc<Self>,
        interval: Duration,
        trigger: Arc<tokio::sync::Notify>,
        report: impl Fn(Result<(), &IndexError>) + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        self.spawn_refresher_scheduled(RefreshSchedule::new(interval), trigger, report)
    }

    /// The refresher on `schedule`: while a copy is in use, a load every
    /// `schedule.every` after the last attempt (a failure keeps the copy
    /// and the schedule); while none is, at once when no attempt was made
    /// yet, else `schedule.first_retry` after the last attempt, the wait
    /// doubling after each failure up to `max_retry`. `trigger` loads at once
    /// whatever the schedule. Each attempt is logged once (warn for a
    /// failure, with `retry_in` while no copy is loaded; info for a load)
    /// and told to `report`.
    pub fn spawn_refresher_scheduled(
        self: Arc<Self>,
        schedule: RefreshSchedule,
        trigger: Arc<tokio::sync::Notify>,
        report: impl Fn(Result<(), &IndexError>) + Send + Sync + 'static,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            // the wait after the next attempt if it fails with no copy
            let mut retry = schedule.first_retry;
            let mut wait = match (self.snapshot().is_some(), self.since_last_attempt()) {
                (true, _) => schedule.every,
                (false, None) => Duration::ZERO,
                // the attempt just made (the daemon's first load, a
                // reload) counts as the first of the retries
                (false, Some(ago)) => {
                    let wait = retry.saturating_sub(ago);
                    retry = schedule.next_retry(retry);
                    wait
                }
            };
            loop {
                if !wait.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = trigger.notified() => {
                            tracing::info!(source = %self.describe(),
                                "providers' index: refresh requested");
                        }
                    }
                }
                let result = self.refresh_logged_retrying(Some(retry)).await;
                if self.snapshot().is_some() {
                    wait = schedule.every;
                    retry = schedule.first_retry;
                } else {
                    wait = retry;
                    retry = schedule.next_retry(retry);
                }
                report(result.as_ref().map(|_| ()));
            }
        })
    }
}
