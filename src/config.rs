//! The daemon's configuration: parsed once from TOML into typed structs.
//! Unknown keys are errors; every error names the key and the line.
//! See `milter-conf/pec-milter.toml` for the annotated defaults.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::crypto::DigestAlg;
use crate::crypto::verify::VerifyAt;
use crate::listen::{ListenSpec, parse_mode};
use crate::logging::{LogFormat, LogOutput, LoggingOptions, Output, SyslogFacility};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// TOML syntax or type error; the message names the key and the line.
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: invalid value for `{key}`: {reason}")]
    Invalid {
        path: PathBuf,
        key: &'static str,
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub milter: MilterConfig,
    pub provider: ProviderConfig,
    pub signing: SigningConfig,
    pub reinjection: ReinjectionConfig,
    pub state: StateConfig,
    pub clamd: ClamdConfig,
    pub quarantine: QuarantineConfig,
    pub spool: SpoolConfig,
    pub limits: LimitsConfig,
    pub recipients: RecipientsConfig,
    pub holders: HoldersConfig,
    pub index: IndexConfig,
    pub reception: ReceptionConfig,
    pub delivery: DeliveryConfig,
    pub timers: TimersConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub logging: LoggingConfig,
}

/// `[metrics]`: the operations endpoint (`/metrics`, `/health`) over HTTP.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `IP:PORT` to serve it on (e.g. `127.0.0.1:9187`, `[::1]:9187`);
    /// empty (the default): off. No authentication: keep it on loopback
    /// or behind a firewall.
    pub listen: String,
}

impl MetricsConfig {
    /// The address to listen on, `None` when off; `Err` names why `listen`
    /// is not an `IP:PORT`.
    pub fn address(&self) -> Result<Option<std::net::SocketAddr>, String> {
        let l = self.listen.trim();
        if l.is_empty() {
            return Ok(None);
        }
        match l.parse::<std::net::SocketAddr>() {
            Ok(a) if a.port() != 0 => Ok(Some(a)),
            Ok(_) => Err("the port must not be 0".into()),
            Err(_) => Err(format!(
                "{l:?} is not IP:PORT (e.g. 127.0.0.1:9187 or [::1]:9187), or \"\" for off"
            )),
        }
    }
}

/// `[logging]`: the daemon's own diagnostics (tracing). Not the legal
/// message log, which is `[log]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// "text" (one human line per event) or "json" (one JSON object per line).
    pub format: LogFormat,
    /// A level ("info") or a filter ("info,pec_milter::smtp=debug");
    /// `PEC_MILTER_LOG`, when set, wins.
    pub level: String,
    /// "stderr" or "syslog".
    pub output: LogOutput,
    /// With `output = "syslog"`: the facility ("mail", as OpenDKIM).
    pub syslog_facility: SyslogFacility,
    /// With `output = "syslog"`: the local syslog socket.
    pub syslog_socket: PathBuf,
    /// With `output = "syslog"`: the name before `[PID]:` in each line.
    pub syslog_ident: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            format: LogFormat::Text,
            level: "info".into(),
            output: LogOutput::Stderr,
            syslog_facility: SyslogFacility::Mail,
            syslog_socket: "/dev/log".into(),
            syslog_ident: "pec-milter".into(),
        }
    }
}

impl LoggingConfig {
    /// What [`crate::logging::init`] needs.
    pub fn options(&self) -> LoggingOptions {
        LoggingOptions {
            format: self.format,
            level: self.level.clone(),
            output: match self.output {
                LogOutput::Stderr => Output::Stderr,
                LogOutput::Syslog => Output::Syslog {
                    socket: self.syslog_socket.clone(),
                    facility: self.syslog_facility,
                    ident: self.syslog_ident.clone(),
                },
            },
        }
    }
}

/// `[log]`: the legal message log (PEC-RULES §7.1).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Record every event (`false` only for tools and tests: a provider
    /// must keep the log).
    pub enabled: bool,
    /// The log directory; this node writes in `dir/NODE/`.
    pub dir: PathBuf,
    /// This node's name (its directory); empty: the host name.
    pub node: String,
    /// The Time Stamping Authority (RFC 3161 over HTTP) that seals each
    /// closed file; empty: files are chained but wait for their seal.
    pub tsa_url: String,
    /// The TSA's trust anchors (PEM): a seal is kept only when its
    /// signature chains to one of them.
    pub tsa_trust: Vec<PathBuf>,
    /// Bound on one request to the TSA.
    #[serde(deserialize_with = "duration")]
    pub tsa_timeout: Duration,
    /// How often files waiting for their seal are tried again (the first
    /// retry; doubled after each failure, up to an hour or itself if
    /// longer).
    #[serde(deserialize_with = "duration")]
    pub seal_retry: Duration,
    /// How long the log files, their seals and the quarantined messages
    /// are kept (PEC-RULES §7.1: 30 months); removed once a day after.
    pub retention_months: u32,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            enabled: true,
            dir: "/var/lib/pec-milter/log".into(),
            node: String::new(),
            tsa_url: String::new(),
            tsa_trust: Vec::new(),
            tsa_timeout: Duration::from_secs(30),
            seal_retry: Duration::from_secs(60),
            retention_months: 30,
        }
    }
}

impl LogConfig {
    /// The node name: `node`, or the host name, or "node".
    pub fn node_name(&self) -> String {
        let n = if self.node.trim().is_empty() {
            std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default()
        } else {
            self.node.clone()
        };
        let n = n.trim();
        if n.is_empty() {
            "node".into()
        } else {
            n.to_string()
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MilterConfig {
    /// `inet:HOST:PORT`, `inet:PORT@HOST`, `inet:PORT`, `inet6:PORT@HOST`,
    /// `inet6:[ADDR]:PORT`, `unix:/PATH` or `local:/PATH`
    /// ([`crate::listen`]); checked at load.
    pub listen: String,
    /// Worker threads (0 = number of CPUs).
    pub workers: usize,
    /// Idle timeout of an MTA connection.
    #[serde(deserialize_with = "duration")]
    pub connection_timeout: Duration,
    /// A unix socket's mode, an octal string ("0660"); absent: the umask's.
    #[serde(deserialize_with = "opt_mode")]
    pub socket_mode: Option<u32>,
    /// A unix socket's group (a name or a gid); absent: the daemon's.
    pub socket_group: Option<String>,
}

impl Default for MilterConfig {
    fn default() -> Self {
        MilterConfig {
            listen: "inet:127.0.0.1:8891".into(),
            workers: 0,
            connection_timeout: Duration::from_secs(7210),
            socket_mode: None,
            socket_group: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProviderConfig {
    pub name: String,
    pub domain: String,
    pub domains: Vec<String>,
    #[serde(deserialize_with = "digest")]
    pub digest: DigestAlg,
}

impl Default for ProviderConfig {
    fn default() -> Self {
        ProviderConfig {
            name: "Demo PEC S.p.A.".into(),
            domain: "pec.demo.test".into(),
            domains: vec!["pec.demo.test".into()],
            digest: DigestAlg::Sha256,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SigningBackend {
    /// Key and certificate in PEM files (`key`, `cert`).
    Pem,
    /// Key in a PKCS#11 token (HSM), see `[signing.pkcs11]`.
    Pkcs11,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SigningConfig {
    pub backend: SigningBackend,
    /// PEM backend: the private key file.
    pub key: PathBuf,
    /// PEM backend: the certificate file (optionally followed by its chain).
    pub cert: PathBuf,
    /// Intermediate CA certificates to include in signatures (both backends).
    pub chain: Option<PathBuf>,
    /// PEM backend: create a demo CA and provider certificate when the files are missing.
    pub init_demo: bool,
    /// `backend = "pkcs11"`: the token holding the key.
    pub pkcs11: Option<Pkcs11Config>,
}

impl Default for SigningConfig {
    fn default() -> Self {
        SigningConfig {
            backend: SigningBackend::Pem,
            key: "/var/lib/pec-milter/demo/provider.key".into(),
            cert: "/var/lib/pec-milter/demo/provider.crt".into(),
            chain: None,
            init_demo: true,
            pkcs11: None,
        }
    }
}

/// `[signing.pkcs11]`: the provider key in an HSM. The PIN itself is never
/// here: only where to read it (`pin_file` or `pin_env`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Pkcs11Config {
    /// The PKCS#11 module (shared library), e.g. `/usr/lib/softhsm/libsofthsm2.so`.
    pub module: PathBuf,
    /// The token's label (slot ids may change; labels do not).
    pub token_label: String,
    /// CKA_LABEL of the private key.
    pub key_label: Option<String>,
    /// CKA_ID of the private key, hex (e.g. "01").
    pub key_id: Option<String>,
    /// A file holding the user PIN (one line; mode 0600).
    pub pin_file: Option<PathBuf>,
    /// The name of an environment variable holding the user PIN.
    pub pin_env: Option<String>,
    /// The certificate (PEM); absent: the certificate object on the token
    /// with the key's CKA_ID (or its label).
    pub cert_file: Option<PathBuf>,
    /// Logged-in sessions kept open; 0 = one per worker thread.
    pub pool_size: usize,
}

impl Pkcs11Config {
    /// `key_id` decoded from hex (`None` when absent or not hex).
    pub fn key_id_bytes(&self) -> Option<Vec<u8>> {
        self.key_id.as_deref().and_then(decode_hex)
    }
}

/// Hex (upper or lower case, optional `:` separators, optional `0x`) to bytes.
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    let t = s.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    let digits: Vec<u8> = t.bytes().filter(|b| *b != b':').collect();
    if digits.is_empty() || !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|p| {
            let hi = (p[0] as char).to_digit(16)?;
            let lo = (p[1] as char).to_digit(16)?;
            u8::try_from(hi * 16 + lo).ok()
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReinjectionConfig {
    pub address: String,
    pub helo: String,
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// How often the outbox pass looks for receipts left unsent.
    #[serde(deserialize_with = "duration")]
    pub outbox_interval: Duration,
    /// The pass sends only receipts queued longer ago than this (the role
    /// that queued one is still sending it before): more than `timeout`.
    #[serde(deserialize_with = "duration")]
    pub outbox_grace: Duration,
}

impl Default for ReinjectionConfig {
    fn default() -> Self {
        ReinjectionConfig {
            address: "127.0.0.1:10025".into(),
            helo: "localhost".into(),
            timeout: Duration::from_secs(30),
            outbox_interval: Duration::from_secs(10),
            outbox_grace: Duration::from_secs(60),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StateBackend {
    Embedded,
    Redis,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    pub backend: StateBackend,
    /// Directory of the embedded store (its database is `state.sqlite`).
    pub path: PathBuf,
    pub url: String,
    /// Key prefix in Redis.
    pub prefix: String,
    #[serde(deserialize_with = "duration")]
    pub retention: Duration,
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Redis Sentinel addresses (`HOST:PORT`, IPv6 as `[ADDR]:PORT`).
    /// Non-empty: the primary of `master_name` is found through them and
    /// followed across failovers; `url` then gives only the database
    /// number and the credentials (its host and port are not used).
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor the primary under.
    pub master_name: String,
    /// File holding the sentinels' password (`requirepass` of the
    /// sentinels), if they ask for one.
    pub sentinel_password_file: Option<PathBuf>,
    /// File holding the data nodes' password (instead of one in `url`).
    pub password_file: Option<PathBuf>,
    /// How many replicas must acknowledge (Redis `WAIT`) every write
    /// before it counts as done; unset: 1 with `sentinels`, else 0.
    pub wait_replicas: Option<u32>,
    /// How long one write waits for those acknowledgements (shorter than
    /// `timeout`, which bounds the whole operation and its retries).
    #[serde(deserialize_with = "duration")]
    pub wait_timeout: Duration,
}

impl StateConfig {
    /// The replicas a write waits for: `wait_replicas`, or 1 with
    /// Sentinel and 0 without.
    pub fn replicas_to_wait(&self) -> u32 {
        self.wait_replicas
            .unwrap_or(if self.sentinels.is_empty() { 0 } else { 1 })
    }
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig {
            backend: StateBackend::Embedded,
            path: "/var/lib/pec-milter/state".into(),
            url: "redis://127.0.0.1:6379/0".into(),
            prefix: "pec:".into(),
            retention: Duration::from_secs(30 * 86400),
            timeout: Duration::from_secs(2),
            sentinels: Vec::new(),
            master_name: String::new(),
            sentinel_password_file: None,
            password_file: None,
            wait_replicas: None,
            wait_timeout: Duration::from_millis(500),
        }
    }
}

/// A `HOST:PORT` or `[IPV6]:PORT` address (no scheme, no path); the host
/// and the port.
pub fn parse_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:")?;
        (h, p)
    } else {
        let (h, p) = s.rsplit_once(':')?;
        if h.contains(':') {
            return None;
        }
        (h, p)
    };
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    if host.is_empty() || host.contains(['/', '@', ' ', '[', ']']) {
        return None;
    }
    Some((host.to_owned(), port))
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClamdConfig {
    pub address: String,
    pub enabled: bool,
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// clamd's own configuration, read at start for its StreamMaxLength
    /// (clamd has no command that tells it): absent, `DEFAULT_CLAMD_CONF`
    /// when it exists; `""`: not read.
    pub config: Option<PathBuf>,
}

/// Where Debian's clamav-daemon keeps clamd's configuration.
pub const DEFAULT_CLAMD_CONF: &str = "/etc/clamav/clamd.conf";

impl ClamdConfig {
    /// The clamd.conf to read: `config`, else [`DEFAULT_CLAMD_CONF`] if it
    /// exists; None for `config = ""` or no file at the default place.
    pub fn config_file(&self) -> Option<PathBuf> {
        match &self.config {
            Some(p) if p.as_os_str().is_empty() => None,
            Some(p) => Some(p.clone()),
            None => Some(PathBuf::from(DEFAULT_CLAMD_CONF)).filter(|p| p.exists()),
        }
    }
}

impl Default for ClamdConfig {
    fn default() -> Self {
        ClamdConfig {
            address: "tcp:127.0.0.1:3310".into(),
            enabled: true,
            timeout: Duration::from_secs(60),
            config: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuarantineConfig {
    pub dir: PathBuf,
}

impl Default for QuarantineConfig {
    fn default() -> Self {
        QuarantineConfig {
            dir: "/var/lib/pec-milter/quarantine".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpoolConfig {
    pub dir: PathBuf,
    #[serde(deserialize_with = "size")]
    pub memory_limit: u64,
}

impl SpoolConfig {
    /// The spool of every role (milter bodies, LMTP DATA, what is built
    /// around them).
    pub fn options(&self) -> crate::spool::SpoolOptions {
        crate::spool::SpoolOptions {
            dir: self.dir.clone(),
            memory_limit: self.memory_limit,
        }
    }
}

impl Default for SpoolConfig {
    fn default() -> Self {
        SpoolConfig {
            dir: "/var/lib/pec-milter/spool".into(),
            memory_limit: 1 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_recipients: usize,
    /// Recipients x message size, bytes.
    #[serde(deserialize_with = "size")]
    pub max_product: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_recipients: 500,
            max_product: 100 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecipientsConfig {
    pub certified_domains: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexSourceKind {
    /// No providers' index: recipients are typed from
    /// `recipients.certified_domains`, inbound mail passes untouched.
    None,
    Ldif,
    Ldap,
}

/// The providers' index (IGPEC).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IndexConfig {
    pub source: IndexSourceKind,
    /// The LDIF file (`source = "ldif"`).
    pub ldif: PathBuf,
    /// `source = "ldap"`.
    pub url: String,
    pub base: String,
    pub bind_dn: Option<String>,
    /// File holding the bind password (never the password itself here).
    pub password_file: Option<PathBuf>,
    #[serde(deserialize_with = "duration")]
    pub refresh: Duration,
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
    /// Trust anchors (PEM) of the signer of the published index: when set,
    /// the LDIF file must be the signed `.p7m` (CMS SignedData enveloping
    /// the LDIF; DER, PEM or base64) and a copy whose signature does not
    /// verify never replaces the one in use. Empty: a plain LDIF file.
    pub signed_by: Vec<PathBuf>,
}

impl Default for IndexConfig {
    fn default() -> Self {
        IndexConfig {
            source: IndexSourceKind::None,
            ldif: "/var/lib/pec-milter/demo/igpec.ldif".into(),
            url: "ldap://127.0.0.1:389".into(),
            base: "o=postacert".into(),
            bind_dn: None,
            password_file: None,
            refresh: Duration::from_secs(86400),
            timeout: Duration::from_secs(10),
            signed_by: Vec::new(),
        }
    }
}

/// The reception point.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReceptionConfig {
    /// Trust anchors for provider signatures (PEM files); empty: the system store.
    pub trust: Vec<PathBuf>,
    /// CRLs (PEM) checked for every provider certificate; empty: no CRL check.
    pub crls: Vec<PathBuf>,
    /// Ordinary mail for a PEC mailbox: wrap it in a busta di anomalia, or reject it.
    pub ordinary_mail: OrdinaryMail,
    /// When the provider's certificate chain is checked: "now" or "signing-time".
    pub verify_at: VerifyAt,
    /// Fetch the CRLs of the `http(s)` distribution points of the providers'
    /// certificates and check every chain against them (`crate::crls`).
    pub fetch_crls: bool,
    /// Where fetched CRLs are kept across restarts; "": in memory only.
    pub crl_cache: PathBuf,
    /// The timeout of one CRL download.
    #[serde(deserialize_with = "duration")]
    pub crl_timeout: Duration,
    /// The longest time between two downloads of one CRL (it is fetched
    /// again before its nextUpdate anyway).
    #[serde(deserialize_with = "duration")]
    pub crl_refresh: Duration,
    /// How long past its nextUpdate the last good copy of a CRL is still
    /// used when no newer one can be fetched; past that the distribution
    /// point has no usable CRL and its providers' messages are answered 4xx.
    #[serde(deserialize_with = "duration")]
    pub crl_grace: Duration,
}

impl ReceptionConfig {
    /// The options of the CRL cache (`crate::crls`).
    pub fn crl_options(&self) -> crate::crls::CrlOptions {
        crate::crls::CrlOptions {
            fetch: self.fetch_crls,
            dir: (!self.crl_cache.as_os_str().is_empty()).then(|| self.crl_cache.clone()),
            timeout: self.crl_timeout,
            refresh: self.crl_refresh,
            grace: self.crl_grace,
        }
    }
}

/// What to do with ordinary (non-PEC) mail for a PEC mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrdinaryMail {
    /// Wrap it in a busta di anomalia (the default).
    Anomaly,
    /// Refuse it at SMTP level.
    Reject,
}

impl Default for ReceptionConfig {
    fn default() -> Self {
        ReceptionConfig {
            trust: Vec::new(),
            crls: Vec::new(),
            ordinary_mail: OrdinaryMail::Anomaly,
            verify_at: VerifyAt::Now,
            fetch_crls: true,
            crl_cache: "/var/lib/pec-milter/crl".into(),
            crl_timeout: Duration::from_secs(10),
            crl_refresh: Duration::from_secs(86400),
            crl_grace: Duration::from_secs(86400),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MailboxStoreKind {
    /// The embedded Maildir writer (one node).
    Maildir,
    /// A downstream LMTP server (Dovecot).
    Lmtp,
}

/// The delivery point: the LMTP listener Postfix delivers the PEC
/// mailboxes to, and the mailbox store behind it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Any form of `[milter] listen` ([`crate::listen`]); empty: no
    /// delivery point.
    pub listen: String,
    pub store: MailboxStoreKind,
    /// Maildir base: mailboxes are `<maildir>/<domain>/<user>/` (they must exist).
    pub maildir: PathBuf,
    /// Per-mailbox quota of the Maildir writer (e.g. "1GB"); none when absent.
    #[serde(default, deserialize_with = "opt_size")]
    pub quota: Option<u64>,
    /// Downstream LMTP server (`store = "lmtp"`): `host:port` or `unix:/path`.
    pub lmtp: String,
    #[serde(deserialize_with = "size")]
    pub max_size: u64,
    /// Receipts that could not be injected wait here and are retried.
    pub outbox: PathBuf,
    #[serde(deserialize_with = "duration")]
    pub timeout: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            listen: "inet:127.0.0.1:2424".into(),
            store: MailboxStoreKind::Maildir,
            maildir: "/var/lib/pec-milter/mail".into(),
            quota: None,
            lmtp: "127.0.0.1:24".into(),
            max_size: 100 * 1024 * 1024,
            outbox: "/var/lib/pec-milter/outbox".into(),
            timeout: Duration::from_secs(300),
        }
    }
}

/// Sender-side tracking: the 12 h / 24 h notices (PEC-RULES §2.9).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimersConfig {
    pub enabled: bool,
    #[serde(deserialize_with = "duration")]
    pub first: Duration,
    #[serde(deserialize_with = "duration")]
    pub last: Duration,
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
}

impl Default for TimersConfig {
    fn default() -> Self {
        TimersConfig {
            enabled: true,
            first: Duration::from_secs(12 * 3600),
            last: Duration::from_secs(24 * 3600),
            interval: Duration::from_secs(60),
        }
    }
}

/// Holder classes of a public-administration provider (DPR 68/2005 art. 16).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HolderClass {
    Upa,
    Upa1,
    Upr,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HoldersConfig {
    pub default_class: HolderClass,
    pub upa: Vec<String>,
    pub upa1: Vec<String>,
    pub upr: Vec<String>,
    /// A file of lines `login address...`: SASL logins that are not the
    /// address they send as (a login is always allowed its own address).
    /// Read by [`Config::load`].
    pub logins: Option<PathBuf>,
    /// What `logins` says, lowercased: login -> the addresses it owns.
    #[serde(skip)]
    pub login_map: BTreeMap<String, Vec<String>>,
    /// Where the site keeps its holders in LDAP: asked for a login's
    /// addresses when neither the login itself nor `logins` gives them.
    pub ldap: Option<HoldersLdapConfig>,
}

/// `[holders.ldap]`: one search per login (cached), `filter` with `%s`
/// standing for the login, the addresses in `attribute`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HoldersLdapConfig {
    /// `ldap://host:port` or `ldaps://host:port`.
    pub url: String,
    /// Search base (subtree), e.g. `ou=holders,dc=pec,dc=example,dc=it`.
    pub base: String,
    /// The search filter; `%s` is the login (escaped, RFC 4515).
    #[serde(default = "default_login_filter")]
    pub filter: String,
    /// The attribute listing the addresses a login owns.
    #[serde(default = "default_login_attribute")]
    pub attribute: String,
    /// Simple bind DN; anonymous when absent.
    pub bind_dn: Option<String>,
    /// File holding the bind password (never the password itself here).
    pub password_file: Option<PathBuf>,
    /// Bound on one search; past it the MAIL gets 451.
    #[serde(default = "default_login_timeout", deserialize_with = "duration")]
    pub timeout: Duration,
    /// How long an answer is kept (`0`: ask at every MAIL).
    #[serde(default = "default_login_cache", deserialize_with = "duration")]
    pub cache: Duration,
}

fn default_login_filter() -> String {
    "(uid=%s)".into()
}

fn default_login_attribute() -> String {
    "mail".into()
}

fn default_login_timeout() -> Duration {
    Duration::from_secs(5)
}

fn default_login_cache() -> Duration {
    Duration::from_secs(300)
}

impl Default for HoldersConfig {
    fn default() -> Self {
        HoldersConfig {
            default_class: HolderClass::Upa,
            upa: Vec::new(),
            upa1: Vec::new(),
            upr: Vec::new(),
            logins: None,
            login_map: BTreeMap::new(),
            ldap: None,
        }
    }
}

/// Read a login map: one line per login, `login address [address...]`,
/// separated by blanks; `#` starts a comment. Every address must look like
/// one (`local@domain`).
pub fn parse_login_map(text: &str) -> Result<BTreeMap<String, Vec<String>>, String> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut words = line.split_whitespace();
        let login = words.next().unwrap_or_default().to_ascii_lowercase();
        let addresses: Vec<String> = words.map(str::to_ascii_lowercase).collect();
        if addresses.is_empty() {
            return Err(format!("line {}: {login:?} owns no address", n + 1));
        }
        if let Some(bad) = addresses.iter().find(|a| {
            a.split_once('@')
                .is_none_or(|(l, d)| l.is_empty() || d.is_empty() || d.contains('@'))
        }) {
            return Err(format!("line {}: {bad:?} is not an address", n + 1));
        }
        map.entry(login).or_default().extend(addresses);
    }
    Ok(map)
}

impl HoldersConfig {
    /// Does the SASL `login` own `address`, i.e. may it submit with that
    /// `MAIL FROM`? The login itself (PEC logins are addresses), or an
    /// address the login map gives it. Case-insensitive.
    pub fn owns(&self, login: &str, address: &str) -> bool {
        let (login, address) = (login.trim(), address.trim());
        if address.is_empty() {
            return false;
        }
        login.eq_ignore_ascii_case(address)
            || self
                .login_map
                .get(&login.to_ascii_lowercase())
                .is_some_and(|owned| owned.iter().any(|a| a.eq_ignore_ascii_case(address)))
    }

    /// The class of an address: a whole-address entry wins over an
    /// `@domain` entry; otherwise the default class. Case-insensitive.
    pub fn class_of(&self, address: &str) -> HolderClass {
        let a = address.trim().to_ascii_lowercase();
        let domain = a.rsplit_once('@').map(|(_, d)| format!("@{d}"));
        let lists = [
            (HolderClass::Upr, &self.upr),
            (HolderClass::Upa1, &self.upa1),
            (HolderClass::Upa, &self.upa),
        ];
        for (class, list) in lists {
            if list.iter().any(|e| e.eq_ignore_ascii_case(&a)) {
                return class;
            }
        }
        if let Some(d) = domain {
            for (class, list) in lists {
                if list.iter().any(|e| e.eq_ignore_ascii_case(&d)) {
                    return class;
                }
            }
        }
        self.default_class
    }
}

impl Config {
    /// Read and check a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parse and check configuration text; `path` is used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: describe_toml_error(text, &e),
        })?;
        cfg.check(path)?;
        if let Some(file) = &cfg.holders.logins {
            let invalid = |reason: String| ConfigError::Invalid {
                path: path.to_path_buf(),
                key: "holders.logins",
                reason,
            };
            let text = std::fs::read_to_string(file)
                .map_err(|e| invalid(format!("{}: {e}", file.display())))?;
            cfg.holders.login_map =
                parse_login_map(&text).map_err(|e| invalid(format!("{}: {e}", file.display())))?;
        }
        Ok(cfg)
    }

    fn check(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            reason: reason.to_string(),
        };
        if self.provider.domain.is_empty() || self.provider.domain.contains(['@', ' ']) {
            return Err(invalid("provider.domain", "must be a mail domain"));
        }
        if self.provider.name.trim().is_empty() {
            return Err(invalid("provider.name", "must not be empty"));
        }
        if self.provider.domains.is_empty() {
            return Err(invalid("provider.domains", "list at least one PEC domain"));
        }
        let invalid_owned = |key: &'static str, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            reason,
        };
        self.milter
            .listen
            .parse::<ListenSpec>()
            .map_err(|e| invalid_owned("milter.listen", e.to_string()))?;
        if let Some(g) = &self.milter.socket_group
            && (g.trim().is_empty() || g.contains(|c: char| c.is_whitespace() || c == ':'))
        {
            return Err(invalid(
                "milter.socket_group",
                "a group name or a numeric gid, e.g. \"postfix\"",
            ));
        }
        crate::logging::parse_level(&self.logging.level)
            .map_err(|e| invalid_owned("logging.level", e.to_string()))?;
        let ident = &self.logging.syslog_ident;
        if ident.is_empty()
            || ident.len() > 48
            || ident.contains(|c: char| c.is_whitespace() || c.is_control() || "[]:".contains(c))
        {
            return Err(invalid(
                "logging.syslog_ident",
                "a short name with no blanks, [ ] or : (e.g. \"pec-milter\")",
            ));
        }
        if self.logging.syslog_socket.as_os_str().is_empty() {
            return Err(invalid(
                "logging.syslog_socket",
                "the local syslog socket, e.g. \"/dev/log\"",
            ));
        }
        if self.timers.last < self.timers.first {
            return Err(invalid(
                "timers.last",
                "must not be shorter than timers.first",
            ));
        }
        let l = &self.delivery.listen;
        if !l.is_empty()
            && let Err(e) = l.parse::<ListenSpec>()
        {
            return Err(invalid_owned(
                "delivery.listen",
                format!("{e}; or \"\" for no delivery point"),
            ));
        }
        if self.reinjection.outbox_grace <= self.reinjection.timeout {
            return Err(invalid(
                "reinjection.outbox_grace",
                "must be longer than reinjection.timeout (the outbox pass would race the injection in progress)",
            ));
        }
        if self.reinjection.outbox_interval.is_zero() {
            return Err(invalid("reinjection.outbox_interval", "must not be 0"));
        }
        if self.limits.max_recipients == 0 {
            return Err(invalid("limits.max_recipients", "must be at least 1"));
        }
        if self.state.backend == StateBackend::Redis && !self.state.url.starts_with("redis") {
            return Err(invalid("state.url", "must be a redis:// or rediss:// URL"));
        }
        self.check_state(path)?;
        if self.log.node.contains(['/', '\\']) || self.log.node.trim() == ".." {
            return Err(invalid("log.node", "a directory name: no / or \\"));
        }
        let tsa = &self.log.tsa_url;
        if !(tsa.is_empty() || tsa.starts_with("http://") || tsa.starts_with("https://")) {
            return Err(invalid(
                "log.tsa_url",
                "an http:// or https:// URL, or \"\"",
            ));
        }
        if !tsa.is_empty() && self.log.tsa_trust.is_empty() {
            return Err(invalid(
                "log.tsa_trust",
                "the TSA's trust anchors (PEM files): a seal is kept only when it is checked",
            ));
        }
        if self.log.retention_months < 30 {
            return Err(invalid(
                "log.retention_months",
                "at least 30 (the rules keep the log 30 months)",
            ));
        }
        if self.reception.fetch_crls {
            if self.reception.crl_timeout.is_zero() {
                return Err(invalid("reception.crl_timeout", "must be more than 0"));
            }
            if self.reception.crl_refresh < Duration::from_secs(60) {
                return Err(invalid("reception.crl_refresh", "at least 1m"));
            }
        }
        if !self.index.signed_by.is_empty() && self.index.source != IndexSourceKind::Ldif {
            return Err(invalid(
                "index.signed_by",
                "only for source = \"ldif\" (the published, signed file)",
            ));
        }
        if self.log.seal_retry.is_zero() {
            return Err(invalid("log.seal_retry", "must be more than 0"));
        }
        if let Err(why) = self.metrics.address() {
            return Err(invalid("metrics.listen", &why));
        }
        if let Some(l) = &self.holders.ldap {
            if !(l.url.starts_with("ldap://") || l.url.starts_with("ldaps://")) {
                return Err(invalid(
                    "holders.ldap.url",
                    "use ldap://HOST:PORT or ldaps://HOST:PORT",
                ));
            }
            if !(l.filter.contains("%s") && l.filter.starts_with('(') && l.filter.ends_with(')')) {
                return Err(invalid(
                    "holders.ldap.filter",
                    "a parenthesised LDAP filter with %s for the login, e.g. (uid=%s)",
                ));
            }
            if l.attribute.trim().is_empty() || l.attribute.contains([' ', '(', ')', ',']) {
                return Err(invalid(
                    "holders.ldap.attribute",
                    "one attribute name, e.g. mail",
                ));
            }
            if l.timeout.is_zero() {
                return Err(invalid("holders.ldap.timeout", "must be more than 0"));
            }
        }
        self.check_pkcs11(path)
    }

    /// The Sentinel and replication keys of `[state]` (checked whatever
    /// the backend, so that a switch to Redis is one line).
    fn check_state(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            reason,
        };
        let st = &self.state;
        if let Some(bad) = st.sentinels.iter().find(|s| parse_host_port(s).is_none()) {
            return Err(invalid(
                "state.sentinels",
                format!("{bad:?}: use \"HOST:PORT\" (IPv6 \"[ADDR]:PORT\"), no redis:// URL"),
            ));
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(dup) = st.sentinels.iter().find(|s| !seen.insert(s.as_str())) {
            return Err(invalid("state.sentinels", format!("{dup:?} listed twice")));
        }
        if !st.sentinels.is_empty() && st.master_name.trim().is_empty() {
            return Err(invalid(
                "state.master_name",
                "the name the sentinels monitor the primary under (SENTINEL MONITOR <name> ...)"
                    .into(),
            ));
        }
        if st.master_name.contains(char::is_whitespace) {
            return Err(invalid("state.master_name", "no blanks".into()));
        }
        if st.sentinels.is_empty() && st.sentinel_password_file.is_some() {
            return Err(invalid(
                "state.sentinel_password_file",
                "only with state.sentinels".into(),
            ));
        }
        if st.timeout.is_zero() {
            return Err(invalid("state.timeout", "must be more than 0".into()));
        }
        if st.replicas_to_wait() > 0 && (st.wait_timeout.is_zero() || st.wait_timeout >= st.timeout)
        {
            return Err(invalid(
                "state.wait_timeout",
                format!(
                    "more than 0 and shorter than state.timeout ({:?}), so that a write whose \
                     replicas did not answer can be tried again on the new primary",
                    st.timeout
                ),
            ));
        }
        Ok(())
    }

    /// `[signing.pkcs11]` when `backend = "pkcs11"` (ignored otherwise, so
    /// that switching back to PEM is one line).
    fn check_pkcs11(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key: &'static str, reason: &str| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            reason: reason.to_string(),
        };
        if self.signing.backend != SigningBackend::Pkcs11 {
            return Ok(());
        }
        let Some(p) = &self.signing.pkcs11 else {
            return Err(invalid(
                "signing.pkcs11",
                "backend = \"pkcs11\" needs a [signing.pkcs11] table (module, token_label, key_label or key_id, pin_file or pin_env)",
            ));
        };
        if p.module.as_os_str().is_empty() {
            return Err(invalid(
                "signing.pkcs11.module",
                "name the PKCS#11 module, e.g. \"/usr/lib/softhsm/libsofthsm2.so\"",
            ));
        }
        if p.token_label.trim().is_empty() {
            return Err(invalid("signing.pkcs11.token_label", "must not be empty"));
        }
        if p.token_label.len() > 32 {
            return Err(invalid(
                "signing.pkcs11.token_label",
                "a PKCS#11 token label has at most 32 bytes",
            ));
        }
        match (&p.key_label, &p.key_id) {
            (None, None) => {
                return Err(invalid(
                    "signing.pkcs11.key_label",
                    "give key_label or key_id (or both) to find the private key",
                ));
            }
            (Some(l), _) if l.is_empty() => {
                return Err(invalid("signing.pkcs11.key_label", "must not be empty"));
            }
            (_, Some(id)) if decode_hex(id).is_none() => {
                return Err(invalid(
                    "signing.pkcs11.key_id",
                    &format!("{id:?} is not hex bytes (e.g. \"01\" or \"a1b2\")"),
                ));
            }
            _ => {}
        }
        match (&p.pin_file, &p.pin_env) {
            (None, None) => {
                return Err(invalid(
                    "signing.pkcs11.pin_file",
                    "give pin_file or pin_env (the PIN itself never goes in the configuration)",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "signing.pkcs11.pin_env",
                    "give pin_file or pin_env, not both",
                ));
            }
            (None, Some(v)) if v.is_empty() || v.contains('=') || v.contains('\0') => {
                return Err(invalid(
                    "signing.pkcs11.pin_env",
                    "must be the name of an environment variable",
                ));
            }
            _ => {}
        }
        Ok(())
    }

    /// Is `domain` one of our PEC domains (case-insensitive)?
    pub fn is_our_domain(&self, domain: &str) -> bool {
        self.provider
            .domains
            .iter()
            .any(|d| d.eq_ignore_ascii_case(domain))
    }
}

/// toml's message already names the key; make sure the line is there too.
fn describe_toml_error(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => {
            // Bytes: no slice of `text` that a span off a character
            // boundary would make panic.
            let line = text
                .bytes()
                .take(span.start)
                .filter(|&b| b == b'\n')
                .count()
                + 1;
            format!("line {line}: {msg}")
        }
        None => msg,
    }
}

/// The longest duration the configuration takes: 100 years (36500d).
/// Longer ones could overflow the clock (`Instant + Duration` panics):
/// `[log] tsa_timeout = 9223372036854775807` did in the TSA client
/// (ureq), `[reinjection] timeout` and `[index] refresh` in ours.
pub const MAX_DURATION: Duration = Duration::from_secs(36500 * 86400);

fn at_most_max(d: Duration, s: &dyn std::fmt::Debug) -> Result<Duration, String> {
    if d > MAX_DURATION {
        return Err(format!("{s:?} is too long (at most 36500d)"));
    }
    Ok(d)
}

/// `30s`, `5m`, `12h`, `30d`, `250ms`, or a bare number of seconds; at
/// most [`MAX_DURATION`].
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30s, 5m, 12h, 30d"))?;
    let mult: u64 = match unit.trim() {
        "" | "s" => 1,
        "ms" => return at_most_max(Duration::from_millis(n), &s),
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(format!("{s:?}: unknown unit (use ms, s, m, h, d)")),
    };
    // Checked: `9999999999999999h` panicked (debug) or wrapped to a wrong
    // duration (release); found reviewing the fuzz target `config`.
    let d = n
        .checked_mul(mult)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))?;
    at_most_max(d, &s)
}

/// `100MB`, `1MiB`, `512KB`, `2GB`, or a bare number of bytes (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 100MB"))?;
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => 1 << 10,
        "M" | "MB" | "MIB" => 1 << 20,
        "G" | "GB" | "GIB" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown unit (use KB, MB, GB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrStr {
    Num(u64),
    Str(String),
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match NumOrStr::deserialize(d)? {
        NumOrStr::Num(n) => {
            at_most_max(Duration::from_secs(n), &n).map_err(serde::de::Error::custom)
        }
        NumOrStr::Str(s) => parse_duration(&s).map_err(serde::de::Error::custom),
    }
}

fn size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match NumOrStr::deserialize(d)? {
        NumOrStr::Num(n) => Ok(n),
        NumOrStr::Str(s) => parse_size(&s).map_err(serde::de::Error::custom),
    }
}

fn opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    size(d).map(Some)
}

/// A unix socket mode: an octal string only ("0660"); a TOML number would
/// be read in decimal (660 is not 0660), so it is refused with a hint.
fn opt_mode<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    match NumOrStr::deserialize(d)? {
        NumOrStr::Num(n) => Err(serde::de::Error::custom(format!(
            "{n}: write the mode as an octal string, e.g. socket_mode = \"0660\""
        ))),
        NumOrStr::Str(s) => parse_mode(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

fn digest<'de, D: Deserializer<'de>>(d: D) -> Result<DigestAlg, D::Error> {
    let s = String::deserialize(d)?;
    s.parse()
        .map_err(|_| serde::de::Error::custom(format!("{s:?}: use \"sha256\" or \"sha1\"")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_parses_to_the_defaults() {
        let text = include_str!("../milter-conf/pec-milter.toml");
        let cfg = Config::parse(text, Path::new("pec-milter.toml")).expect("parses");
        let mut want = Config::default();
        want.recipients.certified_domains = vec!["pec.demo.test".into()];
        want.index.source = IndexSourceKind::Ldif;
        want.reception.trust = vec!["/var/lib/pec-milter/demo/ca.pem".into()];
        assert_eq!(cfg, want);
    }

    #[test]
    fn crl_and_signed_index_settings_are_checked() {
        let path = Path::new("t.toml");
        let mut cfg = Config::default();
        cfg.provider.domains = vec!["pec.demo.test".into()];
        assert!(cfg.check(path).is_ok());
        let o = cfg.reception.crl_options();
        assert_eq!(o.dir, Some(PathBuf::from("/var/lib/pec-milter/crl")));
        assert_eq!(o.grace, Duration::from_secs(86400));
        cfg.reception.crl_cache = PathBuf::new();
        assert_eq!(cfg.reception.crl_options().dir, None, "memory only");
        cfg.reception.crl_refresh = Duration::from_secs(5);
        let e = cfg.check(path).expect_err("too short");
        assert!(e.to_string().contains("reception.crl_refresh"), "{e}");
        cfg.reception.fetch_crls = false;
        assert!(cfg.check(path).is_ok(), "not fetching: not checked");
        cfg.index.signed_by = vec!["/etc/ca.pem".into()];
        cfg.index.source = IndexSourceKind::Ldap;
        let e = cfg.check(path).expect_err("signed_by is for the LDIF file");
        assert!(e.to_string().contains("index.signed_by"), "{e}");
        cfg.index.source = IndexSourceKind::Ldif;
        assert!(cfg.check(path).is_ok());
    }

    #[test]
    fn metrics_are_off_unless_an_address_is_given() {
        let off = Config::parse("", Path::new("x.toml")).expect("parses");
        assert_eq!(off.metrics.address(), Ok(None));
        for (text, want) in [
            ("127.0.0.1:9187", "127.0.0.1:9187"),
            ("[::1]:9187", "[::1]:9187"),
        ] {
            let cfg = Config::parse(
                &format!("[metrics]\nlisten = \"{text}\"\n"),
                Path::new("x.toml"),
            )
            .expect("parses");
            let addr = cfg.metrics.address().ok().flatten().map(|a| a.to_string());
            assert_eq!(addr.as_deref(), Some(want));
        }
        for bad in [
            "localhost:9187",
            "127.0.0.1",
            "127.0.0.1:0",
            "inet:127.0.0.1:9187",
        ] {
            let e = Config::parse(
                &format!("[metrics]\nlisten = \"{bad}\"\n"),
                Path::new("x.toml"),
            )
            .expect_err(bad)
            .to_string();
            assert!(e.contains("metrics.listen"), "{bad}: {e}");
        }
    }

    #[test]
    fn errors_name_the_key_and_the_line() {
        let e = Config::parse(
            "[milter]\nlisten = \"inet:1:2\"\n\n[limits]\nmax_recipient = 5\n",
            Path::new("x.toml"),
        )
        .expect_err("unknown key");
        let s = e.to_string();
        assert!(s.contains("line 5") && s.contains("max_recipient"), "{s}");
        let e = Config::parse("[clamd]\ntimeout = \"5 parsecs\"\n", Path::new("x.toml"))
            .expect_err("bad duration");
        let s = e.to_string();
        assert!(s.contains("line 2") && s.contains("parsecs"), "{s}");
        let e = Config::parse("[provider]\ndomain = \"a@b\"\n", Path::new("x.toml"))
            .expect_err("invalid");
        assert!(e.to_string().contains("provider.domain"));
    }

    #[test]
    fn a_duration_past_the_clock_is_an_error_naming_its_line() {
        // `Instant::now() + 9223372036854775807 s` overflows (a panic).
        for (text, line) in [
            ("[log]\ntsa_timeout = 9223372036854775807\n", 2),
            ("[timers]\ninterval = 9223372036854775807\n", 2),
            ("[log]\ntsa_timeout = \"106751991167300d\"\n", 2),
            ("[reinjection]\n\ntimeout = \"18446744073709551615ms\"\n", 3),
        ] {
            let e = Config::parse(text, Path::new("x.toml")).expect_err(text);
            let s = e.to_string();
            assert!(
                s.contains(&format!("line {line}")) && s.contains("too long"),
                "{s}"
            );
        }
        let cfg = Config::parse("[timers]\nlast = \"36500d\"\n", Path::new("x.toml"))
            .expect("100 years is taken");
        assert_eq!(cfg.timers.last, MAX_DURATION);
    }

    #[test]
    fn a_toml_error_after_multibyte_text_names_its_line() {
        let e = Config::parse(
            "[provider]\nname = \"Città più bella\"\nè = 1\n",
            Path::new("x.toml"),
        )
        .expect_err("bad key");
        assert!(e.to_string().contains("line 3"), "{e}");
    }

    #[test]
    fn pkcs11_signing_is_config_only_and_errors_name_the_key() {
        let base = "[signing]\nbackend = \"pkcs11\"\n\n[signing.pkcs11]\nmodule = \"/usr/lib/softhsm/libsofthsm2.so\"\ntoken_label = \"pec\"\n";
        let ok = format!(
            "{base}key_label = \"pec-sign\"\nkey_id = \"0A:1b\"\npin_file = \"/etc/pec-milter/pin\"\n"
        );
        let cfg = Config::parse(&ok, Path::new("x.toml")).expect("parses");
        assert_eq!(cfg.signing.backend, SigningBackend::Pkcs11);
        let p = cfg.signing.pkcs11.as_ref().expect("table");
        assert_eq!(p.key_id_bytes(), Some(vec![0x0a, 0x1b]));
        assert_eq!(p.pool_size, 0);
        assert_eq!(p.cert_file, None);
        // The same table with backend = "pem" is accepted and ignored.
        let pem = ok.replace("backend = \"pkcs11\"", "backend = \"pem\"");
        assert!(Config::parse(&pem, Path::new("x.toml")).is_ok());

        let err = |text: &str| {
            Config::parse(text, Path::new("x.toml"))
                .expect_err("invalid")
                .to_string()
        };
        let e = err("[signing]\nbackend = \"pkcs11\"\n");
        assert!(e.contains("`signing.pkcs11`"), "{e}");
        let e = err(&format!("{base}pin_file = \"/p\"\n"));
        assert!(e.contains("signing.pkcs11.key_label"), "{e}");
        let e = err(&format!("{base}key_id = \"xyz\"\npin_file = \"/p\"\n"));
        assert!(
            e.contains("signing.pkcs11.key_id") && e.contains("xyz"),
            "{e}"
        );
        let e = err(&format!("{base}key_id = \"01\"\n"));
        assert!(e.contains("signing.pkcs11.pin_file"), "{e}");
        let e = err(&format!(
            "{base}key_id = \"01\"\npin_file = \"/p\"\npin_env = \"PIN\"\n"
        ));
        assert!(e.contains("signing.pkcs11.pin_env"), "{e}");
        let e = err(&format!("{base}key_id = \"01\"\npin = \"1234\"\n"));
        assert!(e.contains("pin") && e.contains("line"), "{e}");
        let e = err(&ok.replace("token_label = \"pec\"", "token_label = \"\""));
        assert!(e.contains("signing.pkcs11.token_label"), "{e}");
        let e = err(&ok.replace("module = \"/usr/lib/softhsm/libsofthsm2.so\"\n", ""));
        assert!(e.contains("signing.pkcs11.module"), "{e}");
    }

    #[test]
    fn logging_section() {
        let cfg = Config::parse(
            "[logging]\nformat = \"json\"\nlevel = \"info,pec_milter::smtp=debug\"\noutput = \"syslog\"\n\
             syslog_facility = \"local3\"\nsyslog_socket = \"/run/test/log.sock\"\nsyslog_ident = \"pec-b\"\n",
            Path::new("x.toml"),
        )
        .expect("parses");
        let l = &cfg.logging;
        assert_eq!((l.format, l.output), (LogFormat::Json, LogOutput::Syslog));
        assert_eq!(
            l.options().output,
            Output::Syslog {
                socket: "/run/test/log.sock".into(),
                facility: SyslogFacility::Local3,
                ident: "pec-b".into(),
            }
        );
        // the defaults: text on stderr at info; syslog would be mail on /dev/log
        let d = LoggingConfig::default();
        assert_eq!(d.options().output, Output::Stderr);
        assert_eq!(
            (
                d.syslog_facility,
                d.syslog_socket.as_path(),
                d.level.as_str()
            ),
            (SyslogFacility::Mail, Path::new("/dev/log"), "info")
        );
        // [log] stays the message log: a logging key there is an error
        let err = |text: &str| {
            Config::parse(text, Path::new("x.toml"))
                .expect_err(text)
                .to_string()
        };
        let e = err("[log]\nformat = \"json\"\n");
        assert!(e.contains("format") && e.contains("line 2"), "{e}");
        let e = err("[logging]\n\nformat = \"xml\"\n");
        assert!(
            e.contains("xml") && e.contains("line 3") && e.contains("json"),
            "{e}"
        );
        let e = err("[logging]\noutput = \"journald\"\n");
        assert!(e.contains("journald") && e.contains("syslog"), "{e}");
        let e = err("[logging]\nsyslog_facility = \"mial\"\n");
        assert!(e.contains("mial") && e.contains("line 2"), "{e}");
        let e = err("[logging]\nlevel = \"infoo\"\n");
        assert!(e.contains("logging.level") && e.contains("infoo"), "{e}");
        let e = err("[logging]\nsyslog_ident = \"pec milter\"\n");
        assert!(e.contains("logging.syslog_ident"), "{e}");
    }

    #[test]
    fn milter_socket_forms_mode_and_group() {
        for listen in [
            "inet:127.0.0.1:8891",
            "inet:8891@127.0.0.1",
            "inet:8891@[127.0.0.1]",
            "inet:8891",
            "inet6:8891@[::1]",
            "inet6:[::1]:8891",
            "unix:/run/pec-milter/milter.sock",
            "local:/var/spool/postfix/pec-milter/milter.sock",
        ] {
            let cfg = Config::parse(
                &format!("[milter]\nlisten = \"{listen}\"\n[delivery]\nlisten = \"{listen}\"\n"),
                Path::new("x.toml"),
            );
            assert!(cfg.is_ok(), "{listen}: {cfg:?}");
        }
        let cfg = Config::parse(
            "[milter]\nlisten = \"local:/var/spool/postfix/pec/m.sock\"\nsocket_mode = \"0660\"\nsocket_group = \"postfix\"\n",
            Path::new("x.toml"),
        )
        .expect("parses");
        assert_eq!(cfg.milter.socket_mode, Some(0o660));
        assert_eq!(cfg.milter.socket_group.as_deref(), Some("postfix"));

        let err = |text: &str| {
            Config::parse(text, Path::new("x.toml"))
                .expect_err(text)
                .to_string()
        };
        let e = err("[milter]\nlisten = \"inet:localhost\"\n");
        assert!(
            e.contains("milter.listen") && e.contains("no port") && e.contains("inet:PORT@HOST"),
            "{e}"
        );
        let e = err("[milter]\nlisten = \"local:milter.sock\"\n");
        assert!(e.contains("milter.listen") && e.contains("absolute"), "{e}");
        let e = err("[delivery]\nlisten = \"tcp:1\"\n");
        assert!(e.contains("delivery.listen"), "{e}");
        let e = err("[milter]\nsocket_mode = 660\n");
        assert!(e.contains("octal string") && e.contains("line 2"), "{e}");
        let e = err("[milter]\nsocket_mode = \"0778\"\n");
        assert!(e.contains("0778") && e.contains("line 2"), "{e}");
        let e = err("[milter]\nsocket_mode = \"4770\"\n");
        assert!(e.contains("setuid"), "{e}");
        let e = err("[milter]\nsocket_group = \"\"\n");
        assert!(e.contains("milter.socket_group"), "{e}");
    }

    #[test]
    fn the_clamd_conf_to_read() {
        let mut c = ClamdConfig {
            config: Some("/etc/x/clamd.conf".into()),
            ..ClamdConfig::default()
        };
        assert_eq!(c.config_file(), Some(PathBuf::from("/etc/x/clamd.conf")));
        c.config = Some(PathBuf::new());
        assert_eq!(c.config_file(), None);
        c.config = None;
        assert_eq!(
            c.config_file().is_some(),
            Path::new(DEFAULT_CLAMD_CONF).exists()
        );
        let cfg = Config::parse("[clamd]\nconfig = \"\"\n", Path::new("x.toml")).expect("parses");
        assert_eq!(cfg.clamd.config_file(), None);
    }

    #[test]
    fn hex_key_ids() {
        assert_eq!(decode_hex("01"), Some(vec![1]));
        assert_eq!(decode_hex("0xA1b2"), Some(vec![0xa1, 0xb2]));
        assert_eq!(decode_hex("a1:b2"), Some(vec![0xa1, 0xb2]));
        assert_eq!(decode_hex("1"), None);
        assert_eq!(decode_hex(""), None);
        assert_eq!(decode_hex("zz"), None);
    }

    #[test]
    fn units() {
        assert!(parse_duration("9999999999999999h").is_err());
        assert!(parse_duration("213503982334602d").is_err());
        assert_eq!(parse_duration("36500d"), Ok(MAX_DURATION));
        assert!(parse_duration("36501d").is_err());
        assert!(parse_duration("18446744073709551615ms").is_err());
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43200)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("x").is_err());
        assert_eq!(parse_size("100MB"), Ok(104857600));
        assert_eq!(parse_size("7"), Ok(7));
        assert!(parse_size("99999999999999GB").is_err());
    }

    #[test]
    fn holder_classes() {
        let h = HoldersConfig {
            default_class: HolderClass::Upa1,
            upa: vec!["@comune.test".into()],
            upa1: vec![],
            upr: vec!["Cittadino@comune.test".into()],
            ..HoldersConfig::default()
        };
        assert_eq!(h.class_of("cittadino@COMUNE.test"), HolderClass::Upr);
        assert_eq!(h.class_of("sindaco@comune.test"), HolderClass::Upa);
        assert_eq!(h.class_of("x@altro.test"), HolderClass::Upa1);
    }

    #[test]
    fn redis_sentinel_settings() {
        let cfg = Config::parse(
            "[state]\nbackend = \"redis\"\nurl = \"redis://:pw@ignored:1/3\"\n\
             sentinels = [\"127.0.0.1:26379\", \"[::1]:26380\", \"s3.example:26381\"]\n\
             master_name = \"pec\"\nsentinel_password_file = \"/etc/pec/sentinel.pw\"\n\
             wait_timeout = \"300ms\"\n",
            Path::new("x.toml"),
        )
        .expect("parses");
        let st = &cfg.state;
        assert_eq!(st.sentinels.len(), 3);
        assert_eq!(st.master_name, "pec");
        assert_eq!(
            st.sentinel_password_file.as_deref(),
            Some(Path::new("/etc/pec/sentinel.pw"))
        );
        assert_eq!(st.wait_timeout, Duration::from_millis(300));
        // WAIT for one replica by default with Sentinel, none without.
        assert_eq!(st.replicas_to_wait(), 1);
        assert_eq!(StateConfig::default().replicas_to_wait(), 0);
        let cfg = Config::parse(
            "[state]\nsentinels = [\"127.0.0.1:26379\"]\nmaster_name = \"pec\"\nwait_replicas = 0\n",
            Path::new("x.toml"),
        )
        .expect("parses");
        assert_eq!(cfg.state.replicas_to_wait(), 0);

        assert_eq!(
            parse_host_port("[::1]:26379"),
            Some(("::1".to_string(), 26379))
        );
        assert_eq!(parse_host_port("h:1"), Some(("h".to_string(), 1)));
        for bad in [
            "127.0.0.1",
            "::1:26379",
            "redis://h:1",
            "h:0",
            "h:x",
            ":1",
            "[::1]",
        ] {
            assert_eq!(parse_host_port(bad), None, "{bad}");
        }

        let err = |text: &str| {
            Config::parse(text, Path::new("x.toml"))
                .expect_err(text)
                .to_string()
        };
        let e = err("[state]\nsentinels = [\"redis://127.0.0.1:26379\"]\nmaster_name = \"pec\"\n");
        assert!(
            e.contains("state.sentinels") && e.contains("HOST:PORT"),
            "{e}"
        );
        let e =
            err("[state]\nsentinels = [\"127.0.0.1:1\", \"127.0.0.1:1\"]\nmaster_name = \"pec\"\n");
        assert!(e.contains("state.sentinels") && e.contains("twice"), "{e}");
        let e = err("[state]\nsentinels = [\"127.0.0.1:26379\"]\n");
        assert!(e.contains("state.master_name"), "{e}");
        let e = err("[state]\nsentinels = [\"127.0.0.1:26379\"]\nmaster_name = \"a b\"\n");
        assert!(e.contains("state.master_name"), "{e}");
        let e = err("[state]\nsentinel_password_file = \"/x\"\n");
        assert!(e.contains("state.sentinel_password_file"), "{e}");
        let e = err(
            "[state]\nsentinels = [\"127.0.0.1:26379\"]\nmaster_name = \"pec\"\ntimeout = \"1s\"\nwait_timeout = \"1s\"\n",
        );
        assert!(e.contains("state.wait_timeout"), "{e}");
        let e = err("[state]\nwait_replicas = 1\nwait_timeout = \"0s\"\n");
        assert!(e.contains("state.wait_timeout"), "{e}");
        let e = err("[state]\nsentinel = [\"127.0.0.1:26379\"]\n");
        assert!(e.contains("sentinel") && e.contains("line 2"), "{e}");
    }

    #[test]
    fn holders_in_ldap() {
        let base = "[provider]\ndomain = \"pec.demo.test\"\nname = \"Demo\"\ndomains = [\"pec.demo.test\"]\n";
        let cfg = Config::parse(
            &format!("{base}[holders.ldap]\nurl = \"ldap://127.0.0.1:389\"\nbase = \"ou=holders,dc=pec\"\n"),
            Path::new("t.toml"),
        )
        .expect("defaults");
        let l = cfg.holders.ldap.expect("ldap");
        assert_eq!(
            (l.filter.as_str(), l.attribute.as_str()),
            ("(uid=%s)", "mail")
        );
        assert_eq!(
            (l.timeout, l.cache),
            (Duration::from_secs(5), Duration::from_secs(300))
        );
        for (bad, key) in [
            ("url = \"http://x\"\nbase = \"o=x\"", "holders.ldap.url"),
            (
                "url = \"ldap://x\"\nbase = \"o=x\"\nfilter = \"(uid=mrossi)\"",
                "holders.ldap.filter",
            ),
            (
                "url = \"ldap://x\"\nbase = \"o=x\"\nfilter = \"uid=%s\"",
                "holders.ldap.filter",
            ),
            (
                "url = \"ldap://x\"\nbase = \"o=x\"\nattribute = \"mail uid\"",
                "holders.ldap.attribute",
            ),
            (
                "url = \"ldap://x\"\nbase = \"o=x\"\ntimeout = 0",
                "holders.ldap.timeout",
            ),
        ] {
            match Config::parse(
                &format!("{base}[holders.ldap]\n{bad}\n"),
                Path::new("t.toml"),
            ) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        // base is required
        assert!(
            Config::parse(
                &format!("{base}[holders.ldap]\nurl = \"ldap://x\"\n"),
                Path::new("t.toml")
            )
            .is_err()
        );
    }

    #[test]
    fn a_login_owns_its_address_and_what_the_map_gives_it() {
        let mut h = HoldersConfig::default();
        assert!(h.owns("Alice@pec.demo.test", "alice@PEC.demo.test"));
        assert!(!h.owns("alice@pec.demo.test", "bob@pec.demo.test"));
        assert!(!h.owns("alice", "alice@pec.demo.test"));
        assert!(!h.owns("alice@pec.demo.test", ""));
        h.login_map = parse_login_map(
            "# login address...\nALICE  alice@pec.demo.test  segreteria@pec.demo.test\n\nufficio ufficio@pec.demo.test # shared\n",
        )
        .expect("map");
        assert!(h.owns("alice", "Segreteria@pec.demo.test"));
        assert!(h.owns("alice", "alice@pec.demo.test"));
        assert!(!h.owns("alice", "bob@pec.demo.test"));
        assert!(!h.owns("ufficio", "alice@pec.demo.test"));
        assert!(!h.owns("bob", "segreteria@pec.demo.test"));
        assert!(parse_login_map("alice\n").unwrap_err().contains("line 1"));
        assert!(
            parse_login_map("\nalice bob\n")
                .unwrap_err()
                .contains("line 2")
        );
        assert!(parse_login_map("alice a@b@c\n").is_err());
    }
}
