//! `pec-milter run`: wire the configuration to real dependencies (signing
//! key, state store, clamd, reinjection) and serve the milter until
//! SIGTERM / SIGINT; SIGHUP reloads the configuration ([`crate::reload`]).
//!
//! What lives as long as the process (the listeners, and [`Shared`]: the
//! state store, the message log, the dependency health) is built once here;
//! everything else is one [`Generation`] of the configuration, built by
//! [`crate::reload`] and swapped whole on reload. The background tasks
//! read the current generation at each pass.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::clamd::{Clamd, ClamdAddress};
use crate::config::{Config, IndexSourceKind, MailboxStoreKind, SigningBackend, StateBackend};
use crate::crls::CrlCache;
use crate::crypto::crl::CrlSource;
use crate::crypto::pem::PemKey;
use crate::crypto::pkcs11::{PinSource, Pkcs11Key, Pkcs11Options};
use crate::crypto::pki::Pki;
use crate::crypto::verify::TrustStore;
use crate::crypto::x509_of;
use crate::crypto::{CryptoError, SigningKey};
use crate::health::{Dependency, Health, Observed};
use crate::index::ldap::LdapSource;
use crate::index::{IndexSource, ProviderEntry, ProviderIndex};
use crate::ldap::LdapServer;
use crate::lmtp::client::LmtpClient;
use crate::lmtp::maildir::Maildir;
use crate::lmtp::server::LmtpHandler;
use crate::log::seal::{SealError, Tsa, read_pems, unsealed};
use crate::log::writer::{FileLog, LogOptions};
use crate::log::{EventLog, LogError, NoLog};
use crate::logins::{CachedLogins, LdapLogins};
use crate::milter::{self, MilterListener, Roles};
use crate::pec::TipoDestinatario;
use crate::pec::build::Provider;
use crate::reload::{Current, Generation, Reloader};
use crate::roles::StaticDirectory;
use crate::roles::access::AccessPoint;
use crate::roles::delivery::DeliveryPoint;
use crate::roles::reception::ReceptionPoint;
use crate::roles::tracking::{Tracker, TrackerConfig};
use crate::roles::{
    DirectoryError, Injector, LoginDirectory, MailboxStore, RecipientDirectory, Scanner,
};
use crate::smtp::Submitter;
use crate::spool::Spooled;
use crate::state::StateStore;
use crate::state::embedded::EmbeddedStore;
use crate::state::redis::{RedisOptions, RedisStore, SentinelOptions};

/// Connections to the reinjection listener kept for the next receipt.
const REINJECTION_KEPT: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("signing key: {0}")]
    Key(#[from] CryptoError),
    #[error("trust anchors ([reception] trust, crls): {0}")]
    Trust(CryptoError),
    #[error("the index signer's trust anchors ([index] signed_by): {0}")]
    IndexTrust(CryptoError),
    #[error("configuration: {0}")]
    Pkcs11Config(String),
    #[error("cannot write the demo identity in {path}: {source}")]
    Demo {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("state store: {0}")]
    State(#[from] crate::state::StateError),
    #[error("clamd.address {0:?} is not tcp:HOST:PORT or unix:/PATH")]
    Clamd(String),
    #[error("milter listener {spec}: {source}")]
    Listen {
        spec: String,
        #[source]
        source: std::io::Error,
    },
    #[error("milter: {0}")]
    Milter(std::io::Error),
    #[error("message log: {0}")]
    Log(#[from] LogError),
    #[error("message log seal: {0}")]
    Seal(SealError),
    #[error("cannot listen for SIGHUP: {0}")]
    Signal(std::io::Error),
    #[error("operations endpoint: {0}")]
    Ops(#[from] crate::ops::OpsError),
    #[error("{key} {path}: {source}")]
    Password {
        key: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// The providers' index answers certificato / esterno; with no copy loaded
/// yet it answers an error (a temporary failure), never "esterno".
struct IndexDirectory(Arc<ProviderIndex>);

impl RecipientDirectory for IndexDirectory {
    fn tipo(&self, address: &str) -> Result<TipoDestinatario, DirectoryError> {
        self.0
            .tipo_destinatario(address)
            .map_err(|e| DirectoryError(Box::new(e)))
    }
}

/// Create the demo identity (a test CA and a provider certificate for the
/// configured domain) next to the configured key, unless the key exists.
/// Returns true when it was created.
pub fn init_demo(cfg: &Config) -> Result<bool, DaemonError> {
    let key = &cfg.signing.key;
    if key.exists() && cfg.signing.cert.exists() {
        return Ok(false);
    }
    let pki = Pki::generate(&cfg.provider.name, &cfg.provider.domain, 3650)?;
    let write = |p: &Path, data: &[u8], private: bool| -> Result<(), DaemonError> {
        let err = |source| DaemonError::Demo {
            path: p.display().to_string(),
            source,
        };
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        std::fs::write(p, data).map_err(err)?;
        if private {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        }
        Ok(())
    };
    write(key, &pki.key_pem, true)?;
    write(&cfg.signing.cert, &pki.cert_pem, false)?;
    let ca = cfg
        .signing
        .cert
        .parent()
        .unwrap_or(Path::new("."))
        .join("ca.pem");
    write(&ca, &pki.ca_cert_pem, false)?;
    // A demo providers' index listing our own demo provider, so that the
    // reception point accepts what our own access point signs.
    let mut domains: Vec<String> = cfg
        .provider
        .domains
        .iter()
        .map(|d| d.to_ascii_lowercase())
        .collect();
    if !domains.contains(&cfg.provider.domain.to_ascii_lowercase()) {
        domains.push(cfg.provider.domain.to_ascii_lowercase());
    }
    let der = pki.cert()?.to_der().map_err(CryptoError::from)?;
    let entry = ProviderEntry::for_certificate(
        &cfg.provider.name,
        der,
        provider(cfg).service_address(),
        &domains,
    );
    if cfg.index.source == IndexSourceKind::Ldif && !cfg.index.ldif.exists() {
        write(
            &cfg.index.ldif,
            crate::index::ldif::write(&[entry]).as_bytes(),
            false,
        )?;
    }
    tracing::warn!(
        key = %key.display(), cert = %cfg.signing.cert.display(), ca = %ca.display(),
        "created a DEMO provider identity (test CA): never use it for real PEC traffic"
    );
    Ok(true)
}

/// Worker threads of the runtime: `[milter] workers`, 0 = number of CPUs.
pub fn worker_threads(cfg: &Config) -> usize {
    if cfg.milter.workers == 0 {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    } else {
        cfg.milter.workers
    }
}

/// The PKCS#11 options of `[signing.pkcs11]` (checked by `Config::load`).
/// `pool_size = 0` becomes one session per worker thread.
pub fn pkcs11_options(cfg: &Config) -> Result<Pkcs11Options, DaemonError> {
    let Some(p) = &cfg.signing.pkcs11 else {
        return Err(DaemonError::Pkcs11Config(
            "signing.pkcs11: backend = \"pkcs11\" needs a [signing.pkcs11] table".into(),
        ));
    };
    let pin = match (&p.pin_file, &p.pin_env) {
        (Some(f), _) => PinSource::File(f.clone()),
        (None, Some(v)) => PinSource::Env(v.clone()),
        (None, None) => {
            return Err(DaemonError::Pkcs11Config(
                "signing.pkcs11.pin_file: give pin_file or pin_env".into(),
            ));
        }
    };
    let mut opts = Pkcs11Options::new(p.module.clone(), p.token_label.clone(), pin);
    opts.key_label = p.key_label.clone();
    opts.key_id = match &p.key_id {
        Some(id) => Some(p.key_id_bytes().ok_or_else(|| {
            DaemonError::Pkcs11Config(format!("signing.pkcs11.key_id: {id:?} is not hex"))
        })?),
        None => None,
    };
    opts.cert_file = p.cert_file.clone();
    opts.chain_file = cfg.signing.chain.clone();
    opts.pool_size = if p.pool_size == 0 {
        worker_threads(cfg)
    } else {
        p.pool_size
    };
    Ok(opts)
}

/// Load the signing key named by the configuration: PEM files (creating the
/// demo identity first when `init_demo` says so) or a PKCS#11 token.
///
/// A PKCS#11 key that cannot be used now (module, token, PIN, key,
/// certificate, test signature) is an error here: the daemon refuses to
/// start with a broken HSM configuration. Once running, a token that goes
/// away makes signatures fail (4xx to the MTA) until it is back.
pub fn load_key(cfg: &Config) -> Result<Arc<dyn SigningKey>, DaemonError> {
    match cfg.signing.backend {
        SigningBackend::Pem => {
            if cfg.signing.init_demo {
                init_demo(cfg)?;
            }
            let key = PemKey::from_files(
                &cfg.signing.key,
                &cfg.signing.cert,
                cfg.signing.chain.as_deref(),
            )?;
            Ok(Arc::new(key))
        }
        SigningBackend::Pkcs11 => {
            let opts = pkcs11_options(cfg)?;
            let key = Pkcs11Key::open(opts).map_err(CryptoError::from)?;
            Ok(Arc::new(key))
        }
    }
}

/// Open the configured state store.
pub fn open_state(cfg: &Config) -> Result<Arc<dyn StateStore>, DaemonError> {
    Ok(match cfg.state.backend {
        StateBackend::Embedded => Arc::new(EmbeddedStore::open(&cfg.state.path)?),
        StateBackend::Redis => Arc::new(RedisStore::open(redis_options(cfg)?)?),
    })
}

/// The Redis store's options from `[state]` (passwords read from their
/// files).
pub fn redis_options(cfg: &Config) -> Result<RedisOptions, DaemonError> {
    let st = &cfg.state;
    let sentinel = if st.sentinels.is_empty() {
        None
    } else {
        Some(SentinelOptions {
            sentinels: st
                .sentinels
                .iter()
                .filter_map(|s| crate::config::parse_host_port(s))
                .collect(),
            master_name: st.master_name.clone(),
            password: read_password(
                "state.sentinel_password_file",
                st.sentinel_password_file.as_deref(),
            )?,
        })
    };
    Ok(RedisOptions {
        url: st.url.clone(),
        prefix: st.prefix.clone(),
        password: read_password("state.password_file", st.password_file.as_deref())?,
        sentinel,
        wait_replicas: st.replicas_to_wait(),
        wait_timeout: st.wait_timeout,
        timeout: Some(st.timeout),
    })
}

/// The providers' index named by the configuration, if any (not loaded yet).
pub fn provider_index(cfg: &Config) -> Result<Option<Arc<ProviderIndex>>, DaemonError> {
    Ok(index_source(cfg)?.map(|source| Arc::new(ProviderIndex::new(source))))
}

/// Where the configuration's providers' index loads from, if it has one
/// (the bind password read from its file).
pub fn index_source(cfg: &Config) -> Result<Option<IndexSource>, DaemonError> {
    Ok(Some(match cfg.index.source {
        IndexSourceKind::None => return Ok(None),
        IndexSourceKind::Ldif if cfg.index.signed_by.is_empty() => {
            IndexSource::Ldif(cfg.index.ldif.clone())
        }
        IndexSourceKind::Ldif => IndexSource::SignedLdif {
            path: cfg.index.ldif.clone(),
            signed_by: TrustStore::from_pem_files(&cfg.index.signed_by)
                .map_err(DaemonError::IndexTrust)?,
        },
        IndexSourceKind::Ldap => {
            let password =
                read_password("index.password_file", cfg.index.password_file.as_deref())?;
            IndexSource::Ldap(LdapSource {
                server: LdapServer {
                    url: cfg.index.url.clone(),
                    bind_dn: cfg.index.bind_dn.clone(),
                    password,
                    timeout: cfg.index.timeout,
                },
                base: cfg.index.base.clone(),
            })
        }
    }))
}

/// A bind password from its file (trailing newline removed), if one is named.
fn read_password(key: &'static str, path: Option<&Path>) -> Result<Option<String>, DaemonError> {
    path.map(|p| {
        std::fs::read_to_string(p)
            .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
            .map_err(|source| DaemonError::Password {
                key,
                path: p.display().to_string(),
                source,
            })
    })
    .transpose()
}

/// The holders' directory of `[holders.ldap]`, if the site keeps its
/// holders there (asked at MAIL, answers cached).
pub fn holders_directory(cfg: &Config) -> Result<Option<Arc<dyn LoginDirectory>>, DaemonError> {
    let Some(l) = &cfg.holders.ldap else {
        return Ok(None);
    };
    let directory = LdapLogins {
        server: LdapServer {
            url: l.url.clone(),
            bind_dn: l.bind_dn.clone(),
            password: read_password("holders.ldap.password_file", l.password_file.as_deref())?,
            timeout: l.timeout,
        },
        base: l.base.clone(),
        filter: l.filter.clone(),
        attribute: l.attribute.clone(),
    };
    Ok(Some(Arc::new(CachedLogins::new(directory, l.cache))))
}

/// The legal message log of `[log]`: this node's files under `dir/NODE/`,
/// opened (and the last one checked) before any mail is taken.
pub fn message_log(cfg: &Config) -> Result<Option<FileLog>, DaemonError> {
    if !cfg.log.enabled {
        tracing::warn!("[log] enabled = false: NO legal message log is kept (not for a provider)");
        return Ok(None);
    }
    let opts = LogOptions {
        dir: cfg.log.dir.clone(),
        node: cfg.log.node_name(),
    };
    let log = FileLog::open(&opts)?;
    tracing::info!(dir = %log.node_dir().display(), "message log: this node's records");
    Ok(Some(log))
}

/// The TSA of `[log]`, if `tsa_url` is set (its trust anchors read now:
/// a reload with unreadable ones is refused).
pub fn tsa(cfg: &Config) -> Result<Option<Arc<Tsa>>, DaemonError> {
    if !cfg.log.enabled {
        return Ok(None);
    }
    if cfg.log.tsa_url.is_empty() {
        return Ok(None);
    }
    let trust = read_pems(&cfg.log.tsa_trust).map_err(DaemonError::Seal)?;
    Ok(Some(Arc::new(
        Tsa::new(cfg.log.tsa_url.clone(), cfg.log.tsa_timeout, &trust)
            .map_err(DaemonError::Seal)?,
    )))
}

/// The seal of the closed log files: every `seal_retry` (doubled after a
/// failure, up to an hour or `seal_retry` if longer), when `now` is
/// notified and after a reload, each closed file without its `.tsr` is
/// timestamped by the TSA of the current generation (none: nothing is
/// sealed). Mail never waits for it.
/// SIGUSR1 closes the current file at once and seals it (`log seal`).
fn spawn_sealer(
    current: &Current,
    log: FileLog,
    health: Health,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let now = Arc::new(tokio::sync::Notify::new());
    {
        let (log, now) = (log.clone(), now.clone());
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::user_defined1()) {
                Ok(mut usr1) => {
                    while usr1.recv().await.is_some() {
                        match log.seal().await {
                            Ok(f) => {
                                tracing::info!(file = %f.display(), "SIGUSR1: message log file closed, to be sealed now")
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "SIGUSR1: the message log file could not be closed")
                            }
                        }
                        now.notify_one();
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot listen for SIGUSR1"),
            }
        });
    }
    let node_dir = log.node_dir().to_path_buf();
    let mut generations = current.subscribe();
    tokio::spawn(async move {
        let mut wait = Duration::ZERO;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = now.notified() => {}
                changed = generations.changed() => if changed.is_err() { break },
                _ = stop.changed() => break,
            }
            let g = generations.borrow_and_update().clone();
            let first = g.cfg.log.seal_retry;
            let Some(tsa) = g.tsa.clone() else {
                // no TSA configured: nothing to do until a reload names one
                wait = Duration::from_secs(3600);
                continue;
            };
            drop(g);
            let dir = node_dir.clone();
            // On failure: why, and how many closed files still wait.
            let result = tokio::task::spawn_blocking(move || {
                let files = unsealed(&dir).map_err(|e| (e, 0))?;
                let total = files.len();
                for (done, f) in files.iter().enumerate() {
                    tsa.seal(f).map_err(|e| (e, total - done))?;
                }
                Ok::<_, (SealError, usize)>(())
            })
            .await;
            wait = match result {
                Ok(Ok(())) => {
                    health.metrics().seal_pass(Ok(()));
                    health.up(Dependency::Tsa);
                    first
                }
                Ok(Err((e, waiting))) => {
                    health.metrics().seal_pass(Err(waiting));
                    health.down(
                        Dependency::Tsa,
                        format!("{e} ({waiting} closed files wait)"),
                    );
                    let next = next_seal_wait(wait, first);
                    tracing::error!(error = %e, files_waiting = waiting, retry_in = ?next,
                        "message log: SEAL FAILED (RFC 3161): the closed files wait for their timestamp; mail keeps flowing");
                    next
                }
                Err(e) => {
                    tracing::error!(error = %e, "message log: the seal task failed");
                    first
                }
            };
        }
    });
}

/// What lives as long as the process, whatever reloads: the state store,
/// the legal message log and the dependency health. Changing `[state]`
/// (but `retention`) or `[log] enabled`, `dir`, `node` needs a restart.
#[derive(Clone)]
pub struct Shared {
    pub state: Arc<dyn StateStore>,
    /// The legal message log (`[log]`).
    pub log: Arc<dyn EventLog>,
    /// The same, as files to seal (`None` when the log is off).
    pub log_files: Option<FileLog>,
    /// Each dependency's state, as the calls find it.
    pub health: Health,
    /// The CRLs of the providers' distribution points (`[reception]
    /// fetch_crls`): kept across reloads, its options set again by each.
    pub crls: Arc<CrlCache>,
}

/// Open what lives as long as the process: the message log (its last file
/// checked), the state store and the CRL cache (its copies on disk read).
pub fn shared(cfg: &Config) -> Result<Shared, DaemonError> {
    let health = Health::default();
    let log_files = message_log(cfg)?;
    let state: Arc<dyn StateStore> =
        Observed::new(open_state(cfg)?, &health, Dependency::StateStore);
    let log: Arc<dyn EventLog> = match &log_files {
        Some(f) => {
            let files: Arc<dyn EventLog> = Arc::new(f.clone());
            Observed::new(files, &health, Dependency::Log)
        }
        None => Arc::new(NoLog),
    };
    let crls = Arc::new(CrlCache::new(
        cfg.reception.crl_options(),
        health.metrics().clone(),
    ));
    crls.load_dir();
    Ok(Shared {
        state,
        log,
        log_files,
        health,
        crls,
    })
}

/// The sealer's pause after a failure: the last one doubled, at least
/// `first` ([log] seal_retry), at most an hour, or `first` when that is
/// longer. (`(wait * 2).clamp(first, 1 h)` panicked, killing the sealer,
/// at the first TSA failure with a `seal_retry` over an hour.)
fn next_seal_wait(wait: Duration, first: Duration) -> Duration {
    const MOST: Duration = Duration::from_secs(3600);
    wait.saturating_mul(2).min(MOST.max(first)).max(first)
}

/// The dependencies every role shares.
pub struct Deps {
    pub key: Arc<dyn SigningKey>,
    pub state: Arc<dyn StateStore>,
    pub scanner: Option<Arc<dyn Scanner>>,
    pub injector: Arc<dyn Injector>,
    /// `[holders.ldap]`, for the access point.
    pub logins: Option<Arc<dyn LoginDirectory>>,
    /// The legal message log (`[log]`).
    pub log: Arc<dyn EventLog>,
    /// The same, as files to seal (`None` when the log is off).
    pub log_files: Option<FileLog>,
    /// Each dependency's state, as the calls above find it.
    pub health: Health,
    /// The CRL cache of the process.
    pub crls: Arc<CrlCache>,
}

/// Open the signing key, clamd and the reinjection client of `cfg`, over
/// the state store and message log of `shared`. Blocking (files, the
/// PKCS#11 token): at start and in a reload, off the async workers.
pub fn deps(cfg: &Config, shared: &Shared) -> Result<Deps, DaemonError> {
    let health = shared.health.clone();
    let key: Arc<dyn SigningKey> = Observed::new(load_key(cfg)?, &health, Dependency::SigningKey);
    let scanner: Option<Arc<dyn Scanner>> = if cfg.clamd.enabled {
        let addr: ClamdAddress = cfg
            .clamd
            .address
            .parse()
            .map_err(|_| DaemonError::Clamd(cfg.clamd.address.clone()))?;
        let clamd: Arc<dyn Scanner> = Arc::new(Clamd::new(addr, cfg.clamd.timeout));
        Some(Observed::new(clamd, &health, Dependency::Clamd))
    } else {
        None
    };
    // Receipts come in bursts (one per submission, per delivery): keep a
    // few connections to the reinjection listener for 30 s (Postfix's
    // smtpd_timeout is 300 s) instead of connecting, greeting and EHLO-ing
    // for each one.
    let submitter: Arc<dyn Injector> = Arc::new(
        Submitter::new(
            cfg.reinjection.address.clone(),
            cfg.reinjection.helo.clone(),
            cfg.reinjection.timeout,
        )
        .with_reuse(REINJECTION_KEPT, Duration::from_secs(30)),
    );
    let injector: Arc<dyn Injector> = Observed::new(submitter, &health, Dependency::Reinjection);
    Ok(Deps {
        key,
        state: shared.state.clone(),
        scanner,
        injector,
        logins: holders_directory(cfg)?,
        log: shared.log.clone(),
        log_files: shared.log_files.clone(),
        health,
        crls: shared.crls.clone(),
    })
}

/// What a configuration leaves out, said once when it comes into force
/// (at start, after a reload): a refused reload says nothing of it.
pub fn announce(cfg: &Config) {
    if !cfg.clamd.enabled {
        tracing::warn!("clamd.enabled = false: submissions are NOT scanned for viruses");
    }
    // clamd's StreamMaxLength (clamd.conf read again) against the largest
    // message of this configuration
    crate::clamd_limits::check(cfg);
    if cfg.index.source == IndexSourceKind::None {
        tracing::warn!(
            "no providers' index ([index] source = \"none\"): inbound mail passes untouched"
        );
        if !cfg.delivery.listen.is_empty() {
            tracing::warn!(
                "no providers' index ([index] source = \"none\"): the delivery point cannot verify PEC \
                 messages and answers them 4xx (ordinary mail is stored); configure [index]"
            );
        }
    }
    if let Some(l) = &cfg.holders.ldap {
        tracing::info!(url = %l.url, base = %l.base, filter = %l.filter, attribute = %l.attribute,
            cache = ?l.cache, "holders' logins: LDAP");
    }
    if cfg.log.enabled && cfg.log.tsa_url.is_empty() {
        tracing::warn!(
            "[log] tsa_url is empty: closed log files are chained but NOT sealed (RFC 3161) until a TSA is configured"
        );
    }
}

/// Who we are, as every role and tool signs: built here, once.
pub fn provider(cfg: &Config) -> Provider {
    Provider {
        name: cfg.provider.name.clone(),
        domain: cfg.provider.domain.clone(),
    }
}

/// The access point of `cfg` over its dependencies.
pub fn access_point(cfg: &Config, d: &Deps, directory: Arc<dyn RecipientDirectory>) -> AccessPoint {
    AccessPoint {
        provider: provider(cfg),
        domains: cfg.provider.domains.clone(),
        key: d.key.clone(),
        digest: cfg.provider.digest,
        state: d.state.clone(),
        scanner: d.scanner.clone(),
        injector: d.injector.clone(),
        directory,
        holders: cfg.holders.clone(),
        logins: d.logins.clone(),
        log: d.log.clone(),
        max_recipients: cfg.limits.max_recipients,
        max_product: cfg.limits.max_product,
        quarantine_dir: cfg.quarantine.dir.clone(),
        retention_secs: cfg.state.retention.as_secs(),
        spool: cfg.spool.options(),
    }
}

/// The trust anchors provider signatures are checked against: `[reception]
/// trust` (empty: the system store) with the CRLs of `crls` and, when
/// `fetch_crls`, those of the certificates' distribution points held by
/// `crl_cache`. The reception point and the delivery point verify against
/// the same store.
pub fn trust_store(cfg: &Config, crl_cache: &Arc<CrlCache>) -> Result<TrustStore, DaemonError> {
    let trust = if cfg.reception.trust.is_empty() {
        TrustStore::system()
    } else {
        TrustStore::from_pem_files(&cfg.reception.trust)
    };
    let trust = trust
        .and_then(|t| t.with_crl_files(&cfg.reception.crls))
        .map_err(DaemonError::Trust)?;
    Ok(if cfg.reception.fetch_crls {
        let source: Arc<dyn CrlSource> = crl_cache.clone();
        trust.with_crl_source(source)
    } else {
        trust
    })
}

/// The delivery point, when `[delivery] listen` is set. It verifies what
/// carries PEC marker fields as the reception point does: against the same
/// trust store, `verify_at` and providers' `index`.
pub fn delivery_point(
    cfg: &Config,
    d: &Deps,
    index: Option<Arc<ProviderIndex>>,
) -> Result<Option<DeliveryPoint>, DaemonError> {
    if cfg.delivery.listen.is_empty() {
        return Ok(None);
    }
    let store: Arc<dyn MailboxStore> = match cfg.delivery.store {
        MailboxStoreKind::Maildir => Arc::new(Maildir::new(
            cfg.delivery.maildir.clone(),
            cfg.delivery.quota,
        )),
        MailboxStoreKind::Lmtp => Arc::new(LmtpClient::new(
            cfg.delivery.lmtp.clone(),
            cfg.reinjection.helo.clone(),
            cfg.delivery.timeout,
        )),
    };
    Ok(Some(DeliveryPoint {
        provider: provider(cfg),
        key: d.key.clone(),
        digest: cfg.provider.digest,
        store,
        state: d.state.clone(),
        injector: d.injector.clone(),
        log: d.log.clone(),
        outbox: cfg.delivery.outbox.clone(),
        retention_secs: cfg.state.retention.as_secs(),
        spool: cfg.spool.options(),
        trust: trust_store(cfg, &d.crls)?,
        verify_at: cfg.reception.verify_at,
        index,
        metrics: d.health.metrics().clone(),
    }))
}

/// Build the roles (access point, and reception point when there is a
/// providers' index) from the configuration.
pub fn roles(
    cfg: &Config,
    index: Option<Arc<ProviderIndex>>,
    d: &Deps,
) -> Result<Roles, DaemonError> {
    let directory: Arc<dyn RecipientDirectory> = match &index {
        Some(i) => Arc::new(IndexDirectory(i.clone())),
        None => Arc::new(StaticDirectory::new(&cfg.recipients.certified_domains)),
    };
    let reception = match index {
        None => None,
        Some(index) => {
            let trust = trust_store(cfg, &d.crls)?;
            Some(ReceptionPoint {
                provider: provider(cfg),
                key: d.key.clone(),
                digest: cfg.provider.digest,
                trust,
                verify_at: cfg.reception.verify_at,
                index,
                state: d.state.clone(),
                scanner: d.scanner.clone(),
                injector: d.injector.clone(),
                log: d.log.clone(),
                ordinary_mail: cfg.reception.ordinary_mail,
                quarantine_dir: cfg.quarantine.dir.clone(),
                retention_secs: cfg.state.retention.as_secs(),
                spool: cfg.spool.options(),
            })
        }
    };
    Ok(Roles {
        access: access_point(cfg, d, directory),
        reception,
        metrics: d.health.metrics().clone(),
    })
}

/// The delivery point of the current generation, taken per transaction:
/// the LMTP server hands each message over whole at the end of DATA, so a
/// transaction is delivered on the one configuration it found then.
struct CurrentDelivery(Current);

#[async_trait::async_trait]
impl LmtpHandler for CurrentDelivery {
    async fn deliver(&self, mail_from: &str, rcpts: &[String], message: Spooled) -> Vec<String> {
        let g = self.0.get();
        match &g.delivery {
            Some(dp) => dp.handle_spooled(mail_from, rcpts, message).await,
            None => rcpts
                .iter()
                .map(|_| "451 4.3.0 PEC delivery point not configured, try again later".to_string())
                .collect(),
        }
    }
}

/// A started daemon: its first generation built, its listeners bound, its
/// background tasks running; [`Daemon::serve`] serves the milter.
pub struct Daemon {
    reloader: Arc<Reloader>,
    current: Current,
    listener: MilterListener,
    milter_config: indymilter::Config,
    stop_tx: tokio::sync::watch::Sender<bool>,
    timers_task: tokio::task::JoinHandle<()>,
    lmtp_task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Daemon {
    /// Open what lives as long as the process, build the first generation
    /// of `cfg` (read from `path`, which a reload reads again), bind the
    /// listeners and start the background tasks.
    pub async fn start(path: &Path, cfg: Config) -> Result<Daemon, DaemonError> {
        let shared = shared(&cfg)?;
        let current = Current::new(crate::reload::first(cfg, &shared)?);
        let g = current.get();
        let cfg = &g.cfg;
        announce(cfg);
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        // `/metrics` and `/health`, bound once: over the health and metrics
        // and the state store that every generation shares, and the index
        // and dependencies of the generation in force at each request.
        let view = {
            let current = current.clone();
            Box::new(move || {
                let g = current.get();
                crate::ops::View {
                    index: g.index.clone(),
                    configured: crate::ops::configured_dependencies(&g.cfg),
                    crls: g.cfg.reception.fetch_crls.then(|| g.deps.crls.clone()),
                }
            })
        };
        crate::ops::spawn(
            cfg,
            shared.health.clone(),
            shared.state.clone(),
            view,
            stop_rx.clone(),
        )
        .await?;
        if let Some(files) = &shared.log_files {
            spawn_sealer(
                &current,
                files.clone(),
                shared.health.clone(),
                stop_rx.clone(),
            );
            // Retention: at start, then once a day.
            retain(g.clone()).await;
            spawn_every_generation(
                &current,
                stop_rx.clone(),
                |_| Duration::from_secs(86400),
                retain,
            );
        }
        let timers_task = spawn_tracker(&current, stop_rx.clone());
        // Expired state rows are ignored as soon as they expire; this hourly
        // sweep gives their space back (a no-op on Redis, where keys expire by
        // themselves).
        let state = shared.state.clone();
        spawn_every(Duration::from_secs(3600), stop_rx.clone(), move || {
            let state = state.clone();
            async move {
                match state.purge_expired().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, "state store: expired records deleted"),
                    Err(e) => {
                        tracing::warn!(error = %e, "state store: sweep of expired records failed")
                    }
                }
            }
        });
        // The outbox pass: receipts queued but not handed to the MTA (its
        // listener down, a crash in between) are sent from here, once.
        spawn_every_generation(
            &current,
            stop_rx.clone(),
            |g| g.cfg.reinjection.outbox_interval,
            |g: Arc<Generation>| async move {
                let grace = g.cfg.reinjection.outbox_grace;
                let sender = crate::roles::outbox::OutboxSender {
                    state: g.deps.state.as_ref(),
                    injector: g.deps.injector.as_ref(),
                    grace,
                    lease: grace,
                };
                match sender.pass(chrono::Utc::now()).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(sent = n, "outbox pass: messages left waiting sent")
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "outbox pass: state store unavailable (tried again next pass)")
                    }
                }
            },
        );
        let mut lmtp_task = None;
        if g.delivery.is_some() {
            let listener = crate::lmtp::server::bind(&cfg.delivery.listen)
                .await
                .map_err(|source| DaemonError::Listen {
                    spec: cfg.delivery.listen.clone(),
                    source,
                })?;
            // receipts waiting for the key (`.pending`) are signed and queued
            // every minute, and `.eml` files an older version left are sent
            spawn_every_generation(
                &current,
                stop_rx.clone(),
                |_| Duration::from_secs(60),
                |g: Arc<Generation>| async move {
                    if let Some(dp) = &g.delivery {
                        dp.flush_outbox().await;
                    }
                },
            );
            let mut stop = stop_rx.clone();
            // Bound once: `[delivery] listen`, `max_size` and the spool of
            // DATA being received need a restart.
            let config = crate::lmtp::server::ServerConfig {
                spool: cfg.spool.options(),
                ..crate::lmtp::server::ServerConfig::new(cfg.delivery.max_size)
            };
            tracing::info!(listen = %cfg.delivery.listen, store = ?cfg.delivery.store, "delivery point (LMTP) ready");
            let handler: Arc<dyn LmtpHandler> = Arc::new(CurrentDelivery(current.clone()));
            lmtp_task = Some(tokio::spawn(async move {
                crate::lmtp::server::serve_with(listener, handler, config, async move {
                    let _ = stop.changed().await;
                })
                .await
            }));
        }
        if let Some(index) = &g.index {
            // First load now (a failure is logged; the reception point answers
            // 4xx until a copy is loaded), then on schedule and on reload;
            // while no copy is loaded the refresher retries sooner (a minute
            // after this attempt, doubling up to an hour; the refresh when
            // shorter).
            let first = index.refresh_logged().await;
            shared.health.observe_index(&first.as_ref().map(|_| ()));
            learn_crls(&g);
        }
        spawn_index_refresher(&current, shared.health.clone(), stop_rx.clone());
        // The CRLs of the distribution points learnt (from the index above,
        // from the chains of the messages), fetched and kept fresh.
        {
            let health = shared.health.clone();
            let current = current.clone();
            shared
                .crls
                .clone()
                .spawn(stop_rx.clone(), move |unavailable| {
                    if current.get().cfg.reception.fetch_crls {
                        health.observe_crls(unavailable);
                    }
                });
        }
        let listener = MilterListener::bind_config(&cfg.milter)
            .await
            .map_err(|source| DaemonError::Listen {
                spec: cfg.milter.listen.clone(),
                source,
            })?;
        tracing::info!(
            listen = %listener.local_description(),
            provider = %cfg.provider.name,
            domains = ?cfg.provider.domains,
            state = ?cfg.state.backend,
            "pec-milter ready"
        );
        let milter_config = indymilter::Config {
            connection_timeout: cfg.milter.connection_timeout,
            ..Default::default()
        };
        drop(g);
        Ok(Daemon {
            reloader: Arc::new(Reloader::new(path.to_path_buf(), shared, current.clone())),
            current,
            listener,
            milter_config,
            stop_tx,
            timers_task,
            lmtp_task,
        })
    }

    /// Where the milter listens (`inet:HOST:PORT` as bound, or `unix:/PATH`).
    pub fn milter_address(&self) -> String {
        self.listener.local_description()
    }

    /// What reloads the configuration (SIGHUP calls it).
    pub fn reloader(&self) -> Arc<Reloader> {
        self.reloader.clone()
    }

    /// The generation in force.
    pub fn current(&self) -> Current {
        self.current.clone()
    }

    /// Serve the milter until `shutdown` completes; then stop the
    /// background tasks (a pass of the timers in progress finishes,
    /// bounded) and the LMTP server (its transactions in progress finish).
    pub async fn serve(self, shutdown: impl Future) -> Result<(), DaemonError> {
        let served = milter::serve(
            self.listener,
            self.current.roles_source(),
            self.milter_config,
            shutdown,
        )
        .await;
        let _ = self.stop_tx.send(true);
        // A pass of the timers in progress finishes (its notices injected and
        // marked) before the process exits; bounded, as a stop must be.
        if tokio::time::timeout(Duration::from_secs(30), self.timers_task)
            .await
            .is_err()
        {
            tracing::warn!("timers: the pass in progress did not finish within 30 s of the stop");
        }
        if let Some(t) = self.lmtp_task
            && let Ok(Err(e)) = t.await
        {
            tracing::warn!(error = %e, "LMTP server stopped with an error");
        }
        // Sent receipts still being dropped from the outbox: waited for, so
        // that a clean stop sends nothing twice.
        if !crate::roles::outbox::settle(crate::roles::outbox::DONE_PATIENCE).await {
            tracing::warn!(
                "outbox: sent messages still in the outbox at the stop: the outbox pass sends them once more after the restart (same Message-ID)"
            );
        }
        served.map_err(DaemonError::Milter)?;
        tracing::info!("pec-milter stopped");
        Ok(())
    }
}

/// Serve the milter until SIGTERM or SIGINT; SIGHUP reloads the
/// configuration file `path` (never stopping the daemon, whatever it says).
pub async fn run(path: &Path, cfg: Config) -> Result<(), DaemonError> {
    use tokio::signal::unix::{SignalKind, signal};
    // First of all: from here on SIGHUP never ends the process (its default
    // action), also while the daemon is starting (it is then taken after).
    let hup = signal(SignalKind::hangup()).map_err(DaemonError::Signal)?;
    let daemon = Daemon::start(path, cfg).await?;
    spawn_reload_on_hup(hup, daemon.reloader());
    daemon.serve(shutdown_signal()).await
}

/// Each SIGHUP reloads the configuration (several arriving during one
/// reload make one more after it). A reload that fails, panics included,
/// leaves the running configuration serving.
fn spawn_reload_on_hup(mut hup: tokio::signal::unix::Signal, reloader: Arc<Reloader>) {
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!(config = %reloader.path().display(), "SIGHUP: reloading the configuration");
            let r = reloader.clone();
            if let Err(e) = tokio::spawn(async move { r.reload_logged().await }).await {
                tracing::error!(error = %e,
                    "reload refused: the reload failed; the running configuration keeps serving");
            }
        }
    });
}

/// The retention of `[log]`: log files (with their seals) and quarantined
/// messages older than `retention_months` removed.
async fn retain(g: Arc<Generation>) {
    let (log_dir, quarantine, months) = (
        g.cfg.log.dir.clone(),
        g.cfg.quarantine.dir.clone(),
        g.cfg.log.retention_months,
    );
    drop(g);
    let today = crate::log::writer::local_date(chrono::Utc::now());
    let cut = crate::log::retain::cutoff(today, months);
    match tokio::task::spawn_blocking(move || {
        crate::log::retain::retain(&log_dir, &quarantine, cut, false)
    })
    .await
    {
        Ok(Ok(removed)) if !removed.is_empty() => {
            tracing::info!(removed = removed.len(), %cut, "retention: files older than the period removed")
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::error!(error = %e, "retention: failed (retried tomorrow)")
        }
        Err(e) => tracing::error!(error = %e, "retention: task failed"),
    }
}

/// The 12 h / 24 h tracker of the current generation (`[timers]`). At a
/// reload the tracker of the old generation is told to stop (its pass in
/// progress finishes) and one of the new starts: their notices are
/// once-only as between nodes, so two passes at once send nothing twice.
/// At the stop, the pass in progress finishes before the task ends.
fn spawn_tracker(
    current: &Current,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let mut generations = current.subscribe();
    tokio::spawn(async move {
        loop {
            let g = generations.borrow_and_update().clone();
            let (tx, rx) = tokio::sync::watch::channel(false);
            let task = tracker(&g).map(|t| Arc::new(t).spawn(rx));
            drop(g);
            let stopping = tokio::select! {
                changed = generations.changed() => changed.is_err(),
                _ = stop.changed() => true,
            };
            let _ = tx.send(true);
            if stopping {
                if let Some(t) = task {
                    let _ = t.await;
                }
                break;
            }
        }
    })
}

/// The tracker of a generation, when `[timers] enabled`.
fn tracker(g: &Generation) -> Option<Tracker> {
    let cfg = &g.cfg;
    cfg.timers.enabled.then(|| {
        Tracker::new(
            g.deps.state.clone(),
            g.deps.injector.clone(),
            provider(cfg),
            g.deps.key.clone(),
            cfg.provider.digest,
            TrackerConfig {
                first: cfg.timers.first,
                last: cfg.timers.last,
                interval: cfg.timers.interval,
                ..TrackerConfig::default()
            },
            cfg.state.retention.as_secs(),
        )
        .with_log(g.deps.log.clone())
    })
}

/// The providers' index of the current generation refreshed every
/// `[index] refresh` (a reload loads it first, then its refresher
/// replaces the old one's); while no copy is loaded, retried after
/// `min(refresh, 1 min)`, doubling up to `min(refresh, 1 h)`
/// ([`crate::index::RefreshSchedule`]).
fn spawn_index_refresher(
    current: &Current,
    health: Health,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut generations = current.subscribe();
    tokio::spawn(async move {
        loop {
            let g = generations.borrow_and_update().clone();
            let task = g.index.clone().map(|index| {
                let health = health.clone();
                let generation = Arc::downgrade(&g);
                index.spawn_refresher_reporting(
                    g.cfg.index.refresh,
                    Arc::new(tokio::sync::Notify::new()),
                    move |r| {
                        health.observe_index(&r);
                        if r.is_ok()
                            && let Some(g) = generation.upgrade()
                        {
                            learn_crls(&g);
                        }
                    },
                )
            });
            drop(g);
            let ended = tokio::select! {
                changed = generations.changed() => changed.is_err(),
                _ = stop.changed() => true,
            };
            if let Some(t) = task {
                t.abort();
            }
            if ended {
                break;
            }
        }
    });
}

/// The distribution points of the certificates of `g`'s providers' index
/// (a copy just loaded), learnt by the CRL cache when `[reception]
/// fetch_crls`: their CRLs are fetched before the providers' first
/// messages. Their issuers are looked for among the reception point's
/// trust anchors and the issuers the cache knows.
pub fn learn_crls(g: &Generation) {
    if !g.cfg.reception.fetch_crls {
        return;
    }
    let (Some(index), Some(reception)) = (&g.index, &g.roles.reception) else {
        return;
    };
    let Some(snapshot) = index.snapshot() else {
        return;
    };
    let certs: Vec<_> = snapshot
        .providers()
        .iter()
        .flat_map(|p| p.certificates.iter())
        .filter_map(|der| x509_of(der))
        .collect();
    let learnt = g.deps.crls.learn(&certs, reception.trust.certificates());
    tracing::debug!(
        certificates = certs.len(),
        distribution_points = learnt,
        "CRL: the index's certificates' distribution points learnt"
    );
}

/// Run `job` every `period` (first after one period) until `stop` changes.
fn spawn_every<F, Fut>(period: Duration, mut stop: tokio::sync::watch::Receiver<bool>, job: F)
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = stop.changed() => break,
            }
            job().await;
        }
    });
}

/// Run `job` on the current generation every `period` of the current
/// generation (first after one period; a new period applies from the next
/// wait) until `stop` changes.
fn spawn_every_generation<P, F, Fut>(
    current: &Current,
    mut stop: tokio::sync::watch::Receiver<bool>,
    period: P,
    job: F,
) where
    P: Fn(&Generation) -> Duration + Send + 'static,
    F: Fn(Arc<Generation>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let current = current.clone();
    tokio::spawn(async move {
        loop {
            let wait = period(&current.get());
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => break,
            }
            job(current.get()).await;
        }
    });
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut t), Ok(mut i)) => {
            tokio::select! {
                _ = t.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = i.recv() => tracing::info!("SIGINT: shutting down"),
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_seal_retry_doubles_up_to_an_hour() {
        let (s, first) = (Duration::from_secs, Duration::from_secs(60));
        assert_eq!(next_seal_wait(Duration::ZERO, first), s(60));
        assert_eq!(next_seal_wait(s(60), first), s(120));
        assert_eq!(next_seal_wait(s(2400), first), s(3600));
        assert_eq!(next_seal_wait(s(3600), first), s(3600));
    }

    #[test]
    fn a_seal_retry_over_an_hour_is_kept_instead_of_a_panic() {
        let first = Duration::from_secs(2 * 3600);
        assert_eq!(next_seal_wait(Duration::ZERO, first), first);
        assert_eq!(next_seal_wait(first, first), first);
        let most = crate::config::MAX_DURATION;
        assert_eq!(next_seal_wait(most, most), most);
        assert_eq!(next_seal_wait(Duration::MAX, Duration::MAX), Duration::MAX);
    }
}
