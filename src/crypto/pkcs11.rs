//! PKCS#11 backend of [`SigningKey`]: the provider key stays in a token
//! (an HSM, or SoftHSM2 in the tests); only signatures come out.
//!
//! - The module (shared library) is loaded once; the token is found by its
//!   label (slot ids change), the private key by `CKA_ID` and/or
//!   `CKA_LABEL`, the certificate from a PEM file or from the token's
//!   certificate object with the key's `CKA_ID` (else its label).
//! - A fixed pool of logged-in read-only sessions (`pool_size`, one per
//!   worker thread by default): a signature takes a free session, waits for
//!   one (bounded) when all are busy. Signing blocks; when called on a
//!   worker of the multi-thread tokio runtime it runs in
//!   [`tokio::task::block_in_place`], so other tasks move off that thread.
//! - Recovery, bounded (`attempts`, default 3, with short pauses): an error
//!   that invalidates one session (`CKR_SESSION_HANDLE_INVALID`,
//!   `CKR_SESSION_CLOSED`, `CKR_USER_NOT_LOGGED_IN`, `CKR_KEY_HANDLE_INVALID`,
//!   ...) drops that session and opens a new one; an error of the token or
//!   library (`CKR_TOKEN_NOT_PRESENT`, `CKR_DEVICE_REMOVED`,
//!   `CKR_DEVICE_ERROR`, `CKR_CRYPTOKI_NOT_INITIALIZED`, `CKR_GENERAL_ERROR`,
//!   no token with the label, ...) re-initialises the library
//!   (`C_Finalize` + `C_Initialize`, at most once per `reinit_interval`) and
//!   finds the token again. When that does not help, the signature fails
//!   (the caller answers 4xx: nothing unsigned ever leaves).
//! - The PIN is read from its file or environment variable at every login
//!   (so a corrected `pin_file` is picked up without a restart), never
//!   logged, never kept in the configuration. A PIN the token refused
//!   (`CKR_PIN_INCORRECT`) is not tried again while it stays the configured
//!   one: each wrong try brings the token closer to locking the PIN.
//! - Sessions are opened "no close on drop" and closed explicitly only while
//!   the library instance that opened them is alive: after a re-initialise,
//!   an old handle could name somebody else's new session.
//! - The library is one per process: when the configuration is reloaded
//!   the new key is opened while the old one still signs for the messages
//!   in progress. `C_Finalize` (which ends every session of the process) is
//!   therefore left to the last open key of a module, and a key that fails
//!   to open finalizes only when no other key of that module is open.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use openssl::sign::Verifier;
use openssl::x509::X509;
use secrecy::ExposeSecret;

use super::{CryptoError, DigestAlg, KeyKind, SigningKey};

/// DigestInfo prefix of a SHA-1 digest (RFC 8017, 9.2 note 1).
const DIGEST_INFO_SHA1: &[u8] = &[
    0x30, 0x21, 0x30, 0x09, 0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a, 0x05, 0x00, 0x04, 0x14,
];
/// DigestInfo prefix of a SHA-256 digest.
const DIGEST_INFO_SHA256: &[u8] = &[
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

/// Where the user PIN comes from. Neither variant holds the PIN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinSource {
    /// A file holding the PIN on its first line.
    File(PathBuf),
    /// An environment variable holding the PIN.
    Env(String),
}

impl PinSource {
    /// Read the PIN (trailing CR/LF removed). Errors never contain it.
    pub fn read(&self) -> Result<AuthPin, Pkcs11Error> {
        let pin = match self {
            PinSource::File(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    Pkcs11Error::Pin(format!("cannot read pin_file {}: {e}", p.display()))
                })?;
                let first = text.lines().next().unwrap_or("").to_string();
                if first.is_empty() {
                    return Err(Pkcs11Error::Pin(format!(
                        "pin_file {} is empty",
                        p.display()
                    )));
                }
                first
            }
            PinSource::Env(name) => match std::env::var(name) {
                Ok(v) if !v.is_empty() => v.trim_end_matches(['\r', '\n']).to_string(),
                Ok(_) => {
                    return Err(Pkcs11Error::Pin(format!(
                        "environment variable {name} (pin_env) is empty"
                    )));
                }
                Err(_) => {
                    return Err(Pkcs11Error::Pin(format!(
                        "environment variable {name} (pin_env) is not set"
                    )));
                }
            },
        };
        Ok(AuthPin::from(pin))
    }

    /// Where the PIN is read from, for messages.
    pub fn describe(&self) -> String {
        match self {
            PinSource::File(p) => format!("pin_file {}", p.display()),
            PinSource::Env(n) => format!("pin_env {n}"),
        }
    }
}

/// What to open: module, token, key, PIN source, certificate; pool and retry.
#[derive(Debug, Clone)]
pub struct Pkcs11Options {
    /// The PKCS#11 module (shared library).
    pub module: PathBuf,
    /// The token's label.
    pub token_label: String,
    /// CKA_LABEL of the private key.
    pub key_label: Option<String>,
    /// CKA_ID of the private key.
    pub key_id: Option<Vec<u8>>,
    /// Where the user PIN is read from.
    pub pin: PinSource,
    /// The certificate (PEM, optionally followed by its chain); `None`: from the token.
    pub cert_file: Option<PathBuf>,
    /// Intermediate CA certificates (PEM) to include in signatures.
    pub chain_file: Option<PathBuf>,
    /// Logged-in sessions kept open (at least 1).
    pub pool_size: usize,
    /// How long a signature waits for a free session.
    pub acquire_timeout: Duration,
    /// Tries per signature (at least 1).
    pub attempts: u32,
    /// Pause before the second try; doubles for each further one.
    pub retry_wait: Duration,
    /// At most one library re-initialisation per this interval.
    pub reinit_interval: Duration,
    /// Sign with `CKM_RSA_PKCS` over a DigestInfo hashed here even when the
    /// token offers `CKM_SHA256_RSA_PKCS` (what tokens without the
    /// hash-and-sign mechanisms get anyway).
    pub raw_rsa: bool,
}

impl Pkcs11Options {
    /// Options with the default pool (1 session) and retry policy.
    pub fn new(module: impl Into<PathBuf>, token_label: impl Into<String>, pin: PinSource) -> Self {
        Pkcs11Options {
            module: module.into(),
            token_label: token_label.into(),
            key_label: None,
            key_id: None,
            pin,
            cert_file: None,
            chain_file: None,
            pool_size: 1,
            acquire_timeout: Duration::from_secs(30),
            attempts: 3,
            retry_wait: Duration::from_millis(100),
            reinit_interval: Duration::from_millis(500),
            raw_rsa: false,
        }
    }

    /// How the key is selected, for messages: `label "x" id 01`.
    pub fn key_description(&self) -> String {
        let mut parts = Vec::new();
        if let Some(l) = &self.key_label {
            parts.push(format!("label {l:?}"));
        }
        if let Some(id) = &self.key_id {
            parts.push(format!("id {}", hex::encode(id)));
        }
        if parts.is_empty() {
            "no selector".into()
        } else {
            parts.join(" ")
        }
    }
}

/// Errors of the PKCS#11 backend, in the words an administrator needs.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Pkcs11Error {
    /// The module file does not exist.
    #[error("PKCS#11 module {0} not found (no such file)")]
    ModuleNotFound(PathBuf),
    /// The module exists but is not a loadable PKCS#11 library.
    #[error("PKCS#11 module {path} cannot be loaded: {reason}")]
    ModuleNotLoadable {
        /// The module.
        path: PathBuf,
        /// The loader's or the library's words.
        reason: String,
    },
    /// No slot holds a token with the configured label.
    #[error("no token labelled {label:?} in {module} (tokens present: {present})")]
    NoToken {
        /// The configured label.
        label: String,
        /// The module.
        module: PathBuf,
        /// Labels of the tokens that are there.
        present: String,
    },
    /// The PIN could not be read from its source.
    #[error("PIN: {0}")]
    Pin(String),
    /// `C_Login` answered `CKR_PIN_INCORRECT`.
    #[error("wrong PIN for token {label:?} (CKR_PIN_INCORRECT), PIN from {source_desc}")]
    PinIncorrect {
        /// The token.
        label: String,
        /// Where the PIN was read from.
        source_desc: String,
    },
    /// The configured PIN is the one the token refused last time.
    #[error(
        "the PIN from {source_desc} was refused by token {label:?} (CKR_PIN_INCORRECT) and is not tried again: fix it (every wrong try brings the token closer to locking the PIN)"
    )]
    PinStillWrong {
        /// The token.
        label: String,
        /// Where the PIN was read from.
        source_desc: String,
    },
    /// `C_Login` answered `CKR_PIN_LOCKED`.
    #[error(
        "the user PIN of token {label:?} is locked (CKR_PIN_LOCKED): the security officer must unlock it"
    )]
    PinLocked {
        /// The token.
        label: String,
    },
    /// No private key object matches the selector.
    #[error("no private key with {key} on token {label:?}")]
    NoKey {
        /// The selector.
        key: String,
        /// The token.
        label: String,
    },
    /// More than one private key matches the selector.
    #[error("{count} private keys with {key} on token {label:?}: give key_id to pick one")]
    AmbiguousKey {
        /// The selector.
        key: String,
        /// The token.
        label: String,
        /// How many matched.
        count: usize,
    },
    /// The key is not an RSA key.
    #[error("the private key with {key} is not an RSA key (PEC signatures are RSA)")]
    NotRsa {
        /// The selector.
        key: String,
    },
    /// No certificate file and no certificate object on the token.
    #[error(
        "no certificate for the key with {key} on token {label:?} (no certificate object with its CKA_ID or label) and no cert_file"
    )]
    NoCertificate {
        /// The selector.
        key: String,
        /// The token.
        label: String,
    },
    /// The certificate could not be read or parsed.
    #[error("certificate ({origin}): {reason}")]
    BadCertificate {
        /// Where it came from (a file, or the token).
        origin: String,
        /// What is wrong.
        reason: String,
    },
    /// The key on the token is not the certificate's key.
    #[error("the private key with {key} does not match the certificate ({subject})")]
    KeyMismatch {
        /// The selector.
        key: String,
        /// The certificate's subject.
        subject: String,
    },
    /// The token offers no RSA PKCS#1 v1.5 signing mechanism.
    #[error("token {label:?} signs with neither CKM_SHA256_RSA_PKCS nor CKM_RSA_PKCS")]
    NoMechanism {
        /// The token.
        label: String,
    },
    /// A PKCS#11 call failed.
    #[error("{op} failed: {detail}")]
    Call {
        /// The function, e.g. `C_Sign`.
        op: &'static str,
        /// The return value, when the module answered one.
        code: Option<RvError>,
        /// `CKR_...` name or the wrapper's message.
        detail: String,
    },
    /// Every session stayed busy.
    #[error("all {size} HSM sessions stayed busy for {waited:?}")]
    Busy {
        /// The pool size.
        size: usize,
        /// How long we waited.
        waited: Duration,
    },
    /// The token's signature did not verify with the certificate's key.
    #[error("the test signature does not verify with the certificate's public key")]
    SelfTest,
}

/// What a failure asks for before the next try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recovery {
    /// Nothing helps now (wrong PIN, no key, bad input): fail.
    Fatal,
    /// This session is unusable: open another.
    Session,
    /// The token or the library went away: re-initialise.
    Library,
}

impl Pkcs11Error {
    fn recovery(&self) -> Recovery {
        match self {
            Pkcs11Error::NoToken { .. } => Recovery::Library,
            Pkcs11Error::Call { code: Some(rv), .. } => match rv {
                RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::UserNotLoggedIn
                | RvError::KeyHandleInvalid
                | RvError::ObjectHandleInvalid
                | RvError::OperationActive
                | RvError::OperationNotInitialized => Recovery::Session,
                RvError::TokenNotPresent
                | RvError::TokenNotRecognized
                | RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::DeviceMemory
                | RvError::SlotIdInvalid
                | RvError::CryptokiNotInitialized
                | RvError::GeneralError
                | RvError::FunctionFailed
                | RvError::SessionCount => Recovery::Library,
                _ => Recovery::Fatal,
            },
            Pkcs11Error::Call { code: None, .. } => Recovery::Fatal,
            _ => Recovery::Fatal,
        }
    }

    /// The `CKR_...` return value behind this error, if any.
    pub fn return_value(&self) -> Option<RvError> {
        match self {
            Pkcs11Error::Call { code, .. } => *code,
            _ => None,
        }
    }
}

/// `PinIncorrect` -> `CKR_PIN_INCORRECT`.
pub fn ckr_name(rv: RvError) -> String {
    let debug = format!("{rv:?}");
    let mut out = String::from("CKR");
    for c in debug.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

fn call_err(op: &'static str, e: CkError) -> Pkcs11Error {
    match e {
        CkError::Pkcs11(rv, _) => Pkcs11Error::Call {
            op,
            code: Some(rv),
            detail: ckr_name(rv),
        },
        other => Pkcs11Error::Call {
            op,
            code: None,
            detail: other.to_string(),
        },
    }
}

/// How the token is asked to sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SignMech {
    /// `CKM_SHA1_RSA_PKCS` / `CKM_SHA256_RSA_PKCS`: the token hashes.
    HashAndSign,
    /// `CKM_RSA_PKCS` over a DigestInfo we hash.
    Raw,
}

/// The library instance: loaded once, (re-)initialised on demand.
struct Module {
    ctx: Pkcs11,
    initialized: bool,
    slot: Option<Slot>,
    mech: SignMech,
    /// Bumped at every re-initialisation: sessions of older generations are dead.
    generation: u64,
    last_reinit: Option<Instant>,
    /// Why the token is unusable (after a failed re-initialisation).
    down: Option<Pkcs11Error>,
}

/// A logged-in session with the key's handle in it.
struct Conn {
    session: Session,
    key: ObjectHandle,
    generation: u64,
}

/// Counting semaphore for the pool.
struct Permits {
    free: Mutex<usize>,
    cv: Condvar,
}

struct Permit<'a>(&'a Permits);

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        *lock(&self.0.free) += 1;
        self.0.cv.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The keys open in this process, per module (its canonical path): only
/// the last one finalizes the library (see the module documentation).
static OPEN_KEYS: Mutex<BTreeMap<PathBuf, usize>> = Mutex::new(BTreeMap::new());

/// The name `module` is counted under in [`OPEN_KEYS`].
fn module_id(module: &Path) -> PathBuf {
    std::fs::canonicalize(module).unwrap_or_else(|_| module.to_path_buf())
}

/// How many keys of `module` are open in this process.
fn open_keys(module: &Path) -> usize {
    lock(&OPEN_KEYS)
        .get(&module_id(module))
        .copied()
        .unwrap_or(0)
}

/// Facts about the opened key, for `hsm-check` and the start-up log.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    /// The module file.
    pub module: PathBuf,
    /// Manufacturer, description and version of the library.
    pub library: String,
    /// The token's label.
    pub token_label: String,
    /// Manufacturer, model and serial number of the token.
    pub token: String,
    /// The slot it was found in (changes across restarts with SoftHSM2).
    pub slot_id: u64,
    /// CKA_LABEL of the key.
    pub key_label: String,
    /// CKA_ID of the key, lowercase hex.
    pub key_id: String,
    /// RSA modulus size in bits.
    pub key_bits: usize,
    /// The certificate's subject.
    pub cert_subject: String,
    /// The certificate's issuer.
    pub cert_issuer: String,
    /// The certificate's notAfter.
    pub cert_not_after: String,
    /// `cert_file PATH` or `token (certificate object id ..)`.
    pub cert_origin: String,
    /// The mechanism used to sign.
    pub mechanism: String,
    /// The pool size.
    pub pool_size: usize,
}

/// A private key in a PKCS#11 token, with its certificate and chain.
pub struct Pkcs11Key {
    opts: Pkcs11Options,
    module: RwLock<Module>,
    idle: Mutex<Vec<Conn>>,
    permits: Permits,
    /// SHA-256 of the PIN the token refused (never the PIN).
    rejected_pin: Mutex<Option<Vec<u8>>>,
    cert: X509,
    cert_der: Vec<u8>,
    chain_der: Vec<Vec<u8>>,
    info: KeyInfo,
}

impl fmt::Debug for Pkcs11Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Key")
            .field("module", &self.opts.module)
            .field("token_label", &self.opts.token_label)
            .field("key", &self.opts.key_description())
            .field("pin", &self.opts.pin.describe())
            .field("pool_size", &self.opts.pool_size)
            .field("subject", &self.info.cert_subject)
            .finish_non_exhaustive()
    }
}

fn initialize(ctx: &Pkcs11) -> Result<(), Pkcs11Error> {
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) => Ok(()),
        // Somebody in this process initialised it already: usable as it is.
        Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(call_err("C_Initialize", e)),
    }
}

/// The slot whose token has `label`, and the mechanism to sign with.
fn find_token(ctx: &Pkcs11, opts: &Pkcs11Options) -> Result<(Slot, SignMech), Pkcs11Error> {
    let slots = ctx
        .get_slots_with_token()
        .map_err(|e| call_err("C_GetSlotList", e))?;
    let mut present = Vec::new();
    for slot in slots {
        let Ok(info) = ctx.get_token_info(slot) else {
            continue;
        };
        if !info.token_initialized() {
            continue;
        }
        let label = info.label().trim_end().to_string();
        if label == opts.token_label {
            // C_GetMechanismInfo per mechanism (the wrapper's list call
            // logs every mechanism type it has no name for).
            let has = |m: MechanismType| ctx.get_mechanism_info(slot, m).is_ok();
            let mech = if !opts.raw_rsa
                && has(MechanismType::SHA256_RSA_PKCS)
                && has(MechanismType::SHA1_RSA_PKCS)
            {
                SignMech::HashAndSign
            } else if has(MechanismType::RSA_PKCS) {
                SignMech::Raw
            } else {
                return Err(Pkcs11Error::NoMechanism { label });
            };
            return Ok((slot, mech));
        }
        present.push(format!("{label:?}"));
    }
    Err(Pkcs11Error::NoToken {
        label: opts.token_label.clone(),
        module: opts.module.clone(),
        present: if present.is_empty() {
            "none".into()
        } else {
            present.join(", ")
        },
    })
}

fn attr_bytes(attrs: &[Attribute], want: AttributeType) -> Option<Vec<u8>> {
    attrs.iter().find_map(|a| match (a, want) {
        (Attribute::Id(v), AttributeType::Id)
        | (Attribute::Label(v), AttributeType::Label)
        | (Attribute::Modulus(v), AttributeType::Modulus)
        | (Attribute::PublicExponent(v), AttributeType::PublicExponent)
        | (Attribute::Value(v), AttributeType::Value) => Some(v.clone()),
        _ => None,
    })
}

fn strip_zeros(v: &[u8]) -> &[u8] {
    let n = v.iter().take_while(|b| **b == 0).count();
    &v[n..]
}

fn read_pem_certs(path: &Path) -> Result<Vec<X509>, Pkcs11Error> {
    let origin = format!("cert_file {}", path.display());
    let bytes = std::fs::read(path).map_err(|e| Pkcs11Error::BadCertificate {
        origin: origin.clone(),
        reason: e.to_string(),
    })?;
    let certs = X509::stack_from_pem(&bytes).map_err(|e| Pkcs11Error::BadCertificate {
        origin: origin.clone(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(Pkcs11Error::BadCertificate {
            origin,
            reason: "no PEM certificate in it".into(),
        });
    }
    Ok(certs)
}

/// Blocking PKCS#11 work runs off the async runtime's worker.
use crate::rt::off_runtime;

impl Pkcs11Key {
    /// Load the module, find the token, log in, find key and certificate,
    /// check that they belong together (public key comparison and a test
    /// signature verified with the certificate's key) and open the pool.
    /// Every failure names its cause (see [`Pkcs11Error`]).
    pub fn open(mut opts: Pkcs11Options) -> Result<Pkcs11Key, Pkcs11Error> {
        opts.pool_size = opts.pool_size.max(1);
        opts.attempts = opts.attempts.max(1);
        if let PinSource::File(p) = &opts.pin {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(p)
                && meta.permissions().mode() & 0o077 != 0
            {
                tracing::warn!(pin_file = %p.display(), mode = format!("{:o}", meta.permissions().mode() & 0o777), "the PIN file is readable by group or others: chmod 600 it");
            }
        }
        if !opts.module.exists() {
            return Err(Pkcs11Error::ModuleNotFound(opts.module.clone()));
        }
        let ctx = Pkcs11::new(&opts.module).map_err(|e| Pkcs11Error::ModuleNotLoadable {
            path: opts.module.clone(),
            reason: match e {
                CkError::LibraryLoading(l) => l.to_string(),
                other => other.to_string(),
            },
        })?;
        let id = module_id(&opts.module);
        initialize(&ctx)?;
        // From here on a failure must finalize what was initialised, unless
        // another key of this process uses the library (a reload).
        match Self::open_initialized(ctx.clone(), opts) {
            Ok(k) => {
                *lock(&OPEN_KEYS).entry(id).or_insert(0) += 1;
                Ok(k)
            }
            Err(e) => {
                if open_keys(&id) == 0 {
                    let _ = ctx.finalize();
                }
                Err(e)
            }
        }
    }

    fn open_initialized(ctx: Pkcs11, opts: Pkcs11Options) -> Result<Pkcs11Key, Pkcs11Error> {
        let library = ctx
            .get_library_info()
            .map(|i| {
                format!(
                    "{} {} {} (PKCS#11 {})",
                    i.manufacturer_id().trim_end(),
                    i.library_description().trim_end(),
                    i.library_version(),
                    i.cryptoki_version()
                )
            })
            .map_err(|e| call_err("C_GetInfo", e))?;
        let (slot, mech) = find_token(&ctx, &opts)?;
        let token = ctx
            .get_token_info(slot)
            .map(|t| {
                format!(
                    "{} {} serial {}",
                    t.manufacturer_id().trim_end(),
                    t.model().trim_end(),
                    t.serial_number().trim_end()
                )
            })
            .map_err(|e| call_err("C_GetTokenInfo", e))?;
        let module = Module {
            ctx,
            initialized: true,
            slot: Some(slot),
            mech,
            generation: 0,
            last_reinit: None,
            down: None,
        };
        let rejected_pin = Mutex::new(None);
        let conn = open_conn(&opts, &module, &rejected_pin)?;

        // The key's attributes.
        let attrs = conn
            .session
            .get_attributes(
                conn.key,
                &[
                    AttributeType::KeyType,
                    AttributeType::Id,
                    AttributeType::Label,
                    AttributeType::Modulus,
                    AttributeType::PublicExponent,
                ],
            )
            .map_err(|e| call_err("C_GetAttributeValue", e))?;
        let is_rsa = attrs
            .iter()
            .any(|a| matches!(a, Attribute::KeyType(k) if *k == KeyType::RSA));
        if !is_rsa {
            return Err(Pkcs11Error::NotRsa {
                key: opts.key_description(),
            });
        }
        let key_id = attr_bytes(&attrs, AttributeType::Id).unwrap_or_default();
        let key_label = attr_bytes(&attrs, AttributeType::Label)
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .unwrap_or_default();
        let modulus = attr_bytes(&attrs, AttributeType::Modulus);
        let exponent = attr_bytes(&attrs, AttributeType::PublicExponent);

        // The certificate: a file, or the token's object with the key's id / label.
        let (mut certs, cert_origin) = match &opts.cert_file {
            Some(p) => (read_pem_certs(p)?, format!("cert_file {}", p.display())),
            None => {
                let der =
                    token_certificate(&conn.session, &key_id, &key_label).map_err(|e| match e {
                        Pkcs11Error::NoCertificate { .. } => Pkcs11Error::NoCertificate {
                            key: opts.key_description(),
                            label: opts.token_label.clone(),
                        },
                        other => other,
                    })?;
                let origin = if key_id.is_empty() {
                    format!("token (certificate object labelled {key_label:?})")
                } else {
                    format!("token (certificate object id {})", hex::encode(&key_id))
                };
                let cert = X509::from_der(&der).map_err(|e| Pkcs11Error::BadCertificate {
                    origin: origin.clone(),
                    reason: e.to_string(),
                })?;
                (vec![cert], origin)
            }
        };
        if let Some(chain) = &opts.chain_file {
            certs.extend(read_pem_certs(chain)?);
        }
        let cert = certs.remove(0);
        let subject = super::verify::name_to_string(cert.subject_name());
        let bad_cert = |reason: String| Pkcs11Error::BadCertificate {
            origin: cert_origin.clone(),
            reason,
        };
        let cert_key = cert.public_key().map_err(|e| bad_cert(e.to_string()))?;
        let cert_rsa = cert_key
            .rsa()
            .map_err(|_| bad_cert("the certificate's key is not RSA".into()))?;
        if let (Some(n), Some(e)) = (&modulus, &exponent)
            && (strip_zeros(n) != cert_rsa.n().to_vec().as_slice()
                || strip_zeros(e) != cert_rsa.e().to_vec().as_slice())
        {
            return Err(Pkcs11Error::KeyMismatch {
                key: opts.key_description(),
                subject,
            });
        }
        let key_bits = modulus
            .as_deref()
            .map(|n| strip_zeros(n).len() * 8)
            .unwrap_or_else(|| cert_rsa.size() as usize * 8);
        let cert_der = cert.to_der().map_err(|e| bad_cert(e.to_string()))?;
        let mut chain_der: Vec<Vec<u8>> = Vec::new();
        for c in certs {
            let der = c.to_der().map_err(|e| bad_cert(e.to_string()))?;
            if der != cert_der && !chain_der.contains(&der) {
                chain_der.push(der);
            }
        }
        let info = KeyInfo {
            module: opts.module.clone(),
            library,
            token_label: opts.token_label.clone(),
            token,
            slot_id: slot.id(),
            key_label,
            key_id: hex::encode(&key_id),
            key_bits,
            cert_subject: subject,
            cert_issuer: super::verify::name_to_string(cert.issuer_name()),
            cert_not_after: cert.not_after().to_string(),
            cert_origin,
            mechanism: match mech {
                SignMech::HashAndSign => "CKM_SHA256_RSA_PKCS / CKM_SHA1_RSA_PKCS".into(),
                SignMech::Raw => "CKM_RSA_PKCS (DigestInfo hashed here)".into(),
            },
            pool_size: opts.pool_size,
        };
        let pool_size = opts.pool_size;
        let key = Pkcs11Key {
            permits: Permits {
                free: Mutex::new(pool_size),
                cv: Condvar::new(),
            },
            idle: Mutex::new(vec![conn]),
            module: RwLock::new(module),
            rejected_pin,
            cert,
            cert_der,
            chain_der,
            info,
            opts,
        };
        // The rest of the pool, logged in now: a problem shows at start.
        {
            let m = key.read_module();
            for _ in 1..pool_size {
                let c = open_conn(&key.opts, &m, &key.rejected_pin)?;
                lock(&key.idle).push(c);
            }
        }
        key.self_test(DigestAlg::Sha256)?;
        tracing::info!(
            module = %key.info.module.display(),
            token = %key.info.token_label,
            slot = key.info.slot_id,
            key_label = %key.info.key_label,
            key_id = %key.info.key_id,
            cert = %key.info.cert_subject,
            cert_origin = %key.info.cert_origin,
            pool_size,
            "PKCS#11 key ready: sessions logged in, test signature verified"
        );
        Ok(key)
    }

    fn read_module(&self) -> RwLockReadGuard<'_, Module> {
        self.module.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Facts about the key, token and certificate.
    pub fn info(&self) -> &KeyInfo {
        &self.info
    }

    /// How many times this key re-initialised the library (a token or
    /// library error; see the module documentation).
    pub fn reinitialisations(&self) -> u64 {
        self.module
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .generation
    }

    /// The signer certificate.
    pub fn certificate(&self) -> &X509 {
        &self.cert
    }

    /// Sign a fixed text with the token and verify the signature with the
    /// certificate's public key (OpenSSL). Returns how long the signature took.
    pub fn self_test(&self, alg: DigestAlg) -> Result<Duration, Pkcs11Error> {
        let data = b"pec-milter PKCS#11 self-test";
        let t = Instant::now();
        let sig = self.sign_blocking(alg, data)?;
        let took = t.elapsed();
        let pkey = self
            .cert
            .public_key()
            .map_err(|e| Pkcs11Error::BadCertificate {
                origin: self.info.cert_origin.clone(),
                reason: e.to_string(),
            })?;
        let ok = Verifier::new(alg.message_digest(), &pkey)
            .and_then(|mut v| {
                v.update(data)?;
                v.verify(&sig)
            })
            .unwrap_or(false);
        if !ok {
            return Err(Pkcs11Error::SelfTest);
        }
        Ok(took)
    }

    /// One signature with retries (see the module documentation).
    pub fn sign_blocking(&self, alg: DigestAlg, data: &[u8]) -> Result<Vec<u8>, Pkcs11Error> {
        let _permit = self.acquire()?;
        let mut last = None;
        for attempt in 0..self.opts.attempts {
            if attempt > 0 {
                std::thread::sleep(
                    self.opts
                        .retry_wait
                        .saturating_mul(2u32.saturating_pow(attempt - 1)),
                );
            }
            let (generation, result) = self.try_sign(alg, data);
            match result {
                Ok(sig) => {
                    if attempt > 0 {
                        tracing::info!(attempt = attempt + 1, "HSM signature made after recovery");
                    }
                    return Ok(sig);
                }
                Err(e) => {
                    match e.recovery() {
                        Recovery::Fatal => {
                            tracing::error!(error = %e, "HSM signature failed");
                            return Err(e);
                        }
                        Recovery::Session => {
                            tracing::warn!(error = %e, attempt = attempt + 1, "HSM session unusable: opening another")
                        }
                        Recovery::Library => {
                            tracing::debug!(error = %e, attempt = attempt + 1, "HSM token or library unavailable");
                            self.reinit(generation, &e);
                        }
                    }
                    last = Some(e);
                }
            }
        }
        // After a failed re-initialisation its cause (e.g. "no token
        // labelled ...") says more than the call that failed before it.
        let down = self.read_module().down.clone();
        let e = down.or(last).unwrap_or(Pkcs11Error::Busy {
            size: self.opts.pool_size,
            waited: Duration::ZERO,
        });
        tracing::error!(error = %e, attempts = self.opts.attempts, "HSM signature failed after retries");
        Err(e)
    }

    fn acquire(&self) -> Result<Permit<'_>, Pkcs11Error> {
        let start = Instant::now();
        let free = lock(&self.permits.free);
        let (mut free, timeout) = self
            .permits
            .cv
            .wait_timeout_while(free, self.opts.acquire_timeout, |n| *n == 0)
            .unwrap_or_else(|p| p.into_inner());
        if timeout.timed_out() && *free == 0 {
            return Err(Pkcs11Error::Busy {
                size: self.opts.pool_size,
                waited: start.elapsed(),
            });
        }
        *free -= 1;
        Ok(Permit(&self.permits))
    }

    /// One try; returns the generation it ran under (for `reinit`).
    fn try_sign(&self, alg: DigestAlg, data: &[u8]) -> (u64, Result<Vec<u8>, Pkcs11Error>) {
        let m = self.read_module();
        let generation = m.generation;
        if let Some(down) = &m.down {
            return (generation, Err(down.clone()));
        }
        let conn = loop {
            match lock(&self.idle).pop() {
                Some(c) if c.generation == generation => break c,
                // From a finalized library instance: forget it (no close).
                Some(_) => continue,
                None => match open_conn(&self.opts, &m, &self.rejected_pin) {
                    Ok(c) => break c,
                    Err(e) => return (generation, Err(e)),
                },
            }
        };
        let (mechanism, payload) = match m.mech {
            SignMech::HashAndSign => (
                match alg {
                    DigestAlg::Sha1 => Mechanism::Sha1RsaPkcs,
                    DigestAlg::Sha256 => Mechanism::Sha256RsaPkcs,
                },
                data.to_vec(),
            ),
            SignMech::Raw => {
                let prefix = match alg {
                    DigestAlg::Sha1 => DIGEST_INFO_SHA1,
                    DigestAlg::Sha256 => DIGEST_INFO_SHA256,
                };
                let digest = match super::try_digest(alg, data) {
                    Ok(d) => d,
                    Err(e) => {
                        lock(&self.idle).push(conn);
                        return (
                            generation,
                            Err(Pkcs11Error::Call {
                                op: "digest",
                                code: None,
                                detail: e.to_string(),
                            }),
                        );
                    }
                };
                (Mechanism::RsaPkcs, [prefix, &digest].concat())
            }
        };
        match conn.session.sign(&mechanism, conn.key, &payload) {
            Ok(sig) => {
                lock(&self.idle).push(conn);
                (generation, Ok(sig))
            }
            Err(e) => {
                let err = call_err("C_Sign", e);
                match err.recovery() {
                    // The session is fine: keep it.
                    Recovery::Fatal => lock(&self.idle).push(conn),
                    // Closed while its library instance is alive (we hold the read lock).
                    Recovery::Session => {
                        let _ = conn.session.close();
                    }
                    // The re-initialisation closes everything.
                    Recovery::Library => drop(conn),
                }
                (generation, Err(err))
            }
        }
    }

    /// `C_Finalize` + `C_Initialize` and find the token again, unless another
    /// thread did it since `seen` or the last try is too recent.
    fn reinit(&self, seen: u64, cause: &Pkcs11Error) {
        let mut m = self.module.write().unwrap_or_else(|p| p.into_inner());
        if m.generation != seen {
            return;
        }
        if let Some(t) = m.last_reinit
            && t.elapsed() < self.opts.reinit_interval
        {
            tracing::debug!("HSM re-initialised moments ago: not again yet");
            return;
        }
        m.last_reinit = Some(Instant::now());
        tracing::warn!(cause = %cause, "HSM token or library unavailable: re-initialising the library (C_Finalize, C_Initialize)");
        // Sessions of this instance die with it; never close them afterwards.
        lock(&self.idle).clear();
        if m.initialized {
            if let Err(e) = m.ctx.clone().finalize() {
                tracing::debug!(error = %e, "C_Finalize failed (ignored)");
            }
            m.initialized = false;
        }
        m.generation += 1;
        m.slot = None;
        let result = initialize(&m.ctx).and_then(|()| {
            m.initialized = true;
            find_token(&m.ctx, &self.opts)
        });
        match result {
            Ok((slot, mech)) => {
                m.slot = Some(slot);
                m.mech = mech;
                m.down = None;
                tracing::info!(token = %self.opts.token_label, slot = slot.id(), "HSM library re-initialised: token found");
            }
            Err(e) => {
                tracing::warn!(error = %e, "HSM library re-initialised: token still unavailable");
                m.down = Some(e);
            }
        }
    }
}

/// The DER of the certificate object with CKA_ID `id` (or, with no id,
/// CKA_LABEL `label`).
fn token_certificate(session: &Session, id: &[u8], label: &str) -> Result<Vec<u8>, Pkcs11Error> {
    let mut template = vec![Attribute::Class(ObjectClass::CERTIFICATE)];
    if id.is_empty() {
        template.push(Attribute::Label(label.as_bytes().to_vec()));
    } else {
        template.push(Attribute::Id(id.to_vec()));
    }
    let found = session
        .find_objects(&template)
        .map_err(|e| call_err("C_FindObjects", e))?;
    let Some(obj) = found.first() else {
        return Err(Pkcs11Error::NoCertificate {
            key: String::new(),
            label: String::new(),
        });
    };
    let attrs = session
        .get_attributes(*obj, &[AttributeType::Value])
        .map_err(|e| call_err("C_GetAttributeValue", e))?;
    attr_bytes(&attrs, AttributeType::Value).ok_or(Pkcs11Error::NoCertificate {
        key: String::new(),
        label: String::new(),
    })
}

/// Open a read-only session, log the user in (unless the token already is,
/// for this application), find the private key.
fn open_conn(
    opts: &Pkcs11Options,
    m: &Module,
    rejected_pin: &Mutex<Option<Vec<u8>>>,
) -> Result<Conn, Pkcs11Error> {
    let Some(slot) = m.slot else {
        return Err(m.down.clone().unwrap_or(Pkcs11Error::NoToken {
            label: opts.token_label.clone(),
            module: opts.module.clone(),
            present: "unknown".into(),
        }));
    };
    let session = m
        .ctx
        .open_ro_session_no_drop(slot)
        .map_err(|e| call_err("C_OpenSession", e))?;
    let found = login(opts, &session, rejected_pin).and_then(|()| find_key(opts, &session));
    match found {
        Ok(key) => Ok(Conn {
            session,
            key,
            generation: m.generation,
        }),
        Err(e) => {
            let _ = session.close();
            Err(e)
        }
    }
}

fn login(
    opts: &Pkcs11Options,
    session: &Session,
    rejected_pin: &Mutex<Option<Vec<u8>>>,
) -> Result<(), Pkcs11Error> {
    let state = session
        .get_session_info()
        .map_err(|e| call_err("C_GetSessionInfo", e))?
        .session_state();
    if matches!(state, SessionState::RoUser | SessionState::RwUser) {
        return Ok(());
    }
    let pin = opts.pin.read()?;
    let pin_hash = super::try_digest(DigestAlg::Sha256, pin.expose_secret().as_bytes())
        .map_err(|e| Pkcs11Error::Pin(e.to_string()))?;
    if lock(rejected_pin).as_deref() == Some(pin_hash.as_slice()) {
        return Err(Pkcs11Error::PinStillWrong {
            label: opts.token_label.clone(),
            source_desc: opts.pin.describe(),
        });
    }
    match session.login(UserType::User, Some(&pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {
            *lock(rejected_pin) = None;
            Ok(())
        }
        Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
            *lock(rejected_pin) = Some(pin_hash);
            tracing::error!(token = %opts.token_label, pin_source = %opts.pin.describe(), "HSM login refused: wrong PIN (CKR_PIN_INCORRECT)");
            Err(Pkcs11Error::PinIncorrect {
                label: opts.token_label.clone(),
                source_desc: opts.pin.describe(),
            })
        }
        Err(CkError::Pkcs11(RvError::PinLocked, _)) => Err(Pkcs11Error::PinLocked {
            label: opts.token_label.clone(),
        }),
        Err(e) => Err(call_err("C_Login", e)),
    }
}

fn find_key(opts: &Pkcs11Options, session: &Session) -> Result<ObjectHandle, Pkcs11Error> {
    let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
    if let Some(id) = &opts.key_id {
        template.push(Attribute::Id(id.clone()));
    }
    if let Some(l) = &opts.key_label {
        template.push(Attribute::Label(l.as_bytes().to_vec()));
    }
    let found = session
        .find_objects(&template)
        .map_err(|e| call_err("C_FindObjects", e))?;
    match found.as_slice() {
        [one] => Ok(*one),
        [] => Err(Pkcs11Error::NoKey {
            key: opts.key_description(),
            label: opts.token_label.clone(),
        }),
        many => Err(Pkcs11Error::AmbiguousKey {
            key: opts.key_description(),
            label: opts.token_label.clone(),
            count: many.len(),
        }),
    }
}

impl Drop for Pkcs11Key {
    fn drop(&mut self) {
        let mut m = self.module.write().unwrap_or_else(|p| p.into_inner());
        let idle = std::mem::take(&mut *lock(&self.idle));
        let last = {
            let mut open = lock(&OPEN_KEYS);
            let id = module_id(&self.opts.module);
            match open.get_mut(&id) {
                Some(n) if *n > 1 => {
                    *n -= 1;
                    false
                }
                _ => {
                    open.remove(&id);
                    true
                }
            }
        };
        if m.initialized {
            for c in idle {
                let _ = c.session.close();
            }
            if last {
                let _ = m.ctx.clone().finalize();
            }
            m.initialized = false;
        }
    }
}

impl SigningKey for Pkcs11Key {
    fn certificate_der(&self) -> &[u8] {
        &self.cert_der
    }

    fn chain_der(&self) -> &[Vec<u8>] {
        &self.chain_der
    }

    fn sign(&self, digest: DigestAlg, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        off_runtime(|| self.sign_blocking(digest, data)).map_err(CryptoError::from)
    }

    fn key_kind(&self) -> KeyKind {
        KeyKind::Rsa
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_value_names() {
        assert_eq!(ckr_name(RvError::PinIncorrect), "CKR_PIN_INCORRECT");
        assert_eq!(
            ckr_name(RvError::SessionHandleInvalid),
            "CKR_SESSION_HANDLE_INVALID"
        );
        assert_eq!(ckr_name(RvError::UserNotLoggedIn), "CKR_USER_NOT_LOGGED_IN");
    }

    #[test]
    fn recovery_classes() {
        let call = |rv| Pkcs11Error::Call {
            op: "C_Sign",
            code: Some(rv),
            detail: ckr_name(rv),
        };
        assert_eq!(
            call(RvError::SessionHandleInvalid).recovery(),
            Recovery::Session
        );
        assert_eq!(call(RvError::UserNotLoggedIn).recovery(), Recovery::Session);
        assert_eq!(call(RvError::TokenNotPresent).recovery(), Recovery::Library);
        assert_eq!(call(RvError::DeviceRemoved).recovery(), Recovery::Library);
        assert_eq!(
            call(RvError::CryptokiNotInitialized).recovery(),
            Recovery::Library
        );
        assert_eq!(call(RvError::DataLenRange).recovery(), Recovery::Fatal);
        let wrong_pin = Pkcs11Error::PinIncorrect {
            label: "t".into(),
            source_desc: "pin_file /x".into(),
        };
        assert_eq!(wrong_pin.recovery(), Recovery::Fatal);
        let no_token = Pkcs11Error::NoToken {
            label: "t".into(),
            module: "/m.so".into(),
            present: "none".into(),
        };
        assert_eq!(no_token.recovery(), Recovery::Library);
    }

    #[test]
    fn pin_sources_never_show_the_pin() {
        let dir = std::env::temp_dir().join(format!("pec-pin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let f = dir.join("pin");
        std::fs::write(&f, "s3cr3t-PIN\n").expect("write");
        let src = PinSource::File(f.clone());
        let pin = src.read().expect("pin");
        assert_eq!(pin.expose_secret(), "s3cr3t-PIN");
        assert!(!format!("{pin:?}").contains("s3cr3t"));
        assert!(!format!("{src:?}").contains("s3cr3t"));
        std::fs::write(&f, "\n").expect("write");
        let e = src.read().expect_err("empty");
        assert!(e.to_string().contains("empty"), "{e}");
        let e = PinSource::Env("PEC_MILTER_TEST_NO_SUCH_VARIABLE".into())
            .read()
            .expect_err("unset");
        assert!(e.to_string().contains("not set"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn digest_info_prefixes_have_the_right_lengths() {
        // The DER length byte covers the rest: prefix + digest.
        assert_eq!(
            DIGEST_INFO_SHA1[1] as usize,
            DIGEST_INFO_SHA1.len() - 2 + 20
        );
        assert_eq!(
            DIGEST_INFO_SHA256[1] as usize,
            DIGEST_INFO_SHA256.len() - 2 + 32
        );
    }
}
