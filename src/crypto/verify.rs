//! Verification of detached CMS/PKCS#7 signatures (S/MIME `multipart/signed`),
//! and of opaque ones (`application/pkcs7-mime`, the content inside; only
//! `inspect` / `verify` read those: PEC is `multipart/signed`, PEC-RULES §1.2).
//!
//! Two independent checks, both with OpenSSL:
//! - integrity: the signature over the signed attributes holds and the
//!   messageDigest matches the content (`CMS_verify` without chain checks);
//! - chain: the signer certificate chains to a [`TrustStore`] anchor at the
//!   requested time, with purpose "any" (as `openssl cms -verify -purpose any`),
//!   then a full `CMS_verify` with the store confirms both.
//!
//! The `cms` crate reads the SignerInfo (digest algorithm, signingTime, signer
//! identifier) and the raw certificates, so the signer certificate's DER is
//! exactly the bytes in the message (what the providers' index hashes).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use cms::content_info::ContentInfo;
use cms::signed_data::{EncapsulatedContentInfo, SignerIdentifier, SignerInfo, SignerInfos};
use der::asn1::{Any, OctetString};
use der::{Decode, Encode, Reader, SliceReader, Tag, TagNumber, Tagged};
use foreign_types::{ForeignType, ForeignTypeRef};
use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::stack::Stack;
use openssl::x509::store::{X509Store, X509StoreBuilder, X509StoreRef};
use openssl::x509::verify::X509VerifyParam;
use openssl::x509::{X509, X509NameRef, X509PurposeId, X509Ref, X509StoreContext};
use serde::Serialize;
use x509_cert::time::Time;

use super::CryptoError;
use super::DigestAlg;
use super::cms_sign::{OID_SIGNED_DATA, OID_SIGNING_TIME};
use super::crl::{CrlSource, Revocation};

/// X509_V_ERR_CERT_NOT_YET_VALID.
const X509_V_ERR_CERT_NOT_YET_VALID: i32 = 9;
/// X509_V_ERR_CERT_HAS_EXPIRED.
const X509_V_ERR_CERT_HAS_EXPIRED: i32 = 10;

/// When the certificate chain is checked: `now` or `signing-time` in the
/// configuration (`[reception] verify_at`) and on the command line
/// (`--at`); a fixed time from code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VerifyAt {
    /// At the current time.
    Now,
    /// At the signingTime signed attribute (the current time when absent).
    SigningTime,
    /// At the given time.
    #[serde(skip)]
    At(SystemTime),
}

impl std::str::FromStr for VerifyAt {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "now" => Ok(VerifyAt::Now),
            "signing-time" => Ok(VerifyAt::SigningTime),
            _ => Err(format!("{s:?}: expected now or signing-time")),
        }
    }
}

/// Trust anchors (root CA certificates) for chain checks.
///
/// The OpenSSL store for checks at the current time is built once and
/// cached (clones share it); a store with a fixed time is built per call.
#[derive(Clone, Default)]
pub struct TrustStore {
    certs: Vec<X509>,
    /// CRL files (PEM); when any is given, every chain is checked for
    /// revocation of its leaf (`X509_V_FLAG_CRL_CHECK`).
    crl_files: Vec<PathBuf>,
    /// The CRLs of the certificates' distribution points (the daemon's
    /// cache, `crate::crls`): when set, every certificate of a verified
    /// chain that names `http(s)` distribution points is checked against
    /// one of their CRLs (see [`super::crl::check_chain`]).
    crl_source: Option<Arc<dyn CrlSource>>,
    now_store: Arc<OnceLock<X509Store>>,
}

impl fmt::Debug for TrustStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustStore")
            .field("certificates", &self.certs.len())
            .field("crl_files", &self.crl_files.len())
            .field("crl_source", &self.crl_source.is_some())
            .finish()
    }
}

/// Parse every certificate in `bytes` (PEM with one or more certificates, or
/// a single DER certificate).
fn parse_cert_bytes(bytes: &[u8]) -> Result<Vec<X509>, CryptoError> {
    let pem = X509::stack_from_pem(bytes);
    match pem {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        _ => match X509::from_der(bytes) {
            Ok(c) => Ok(vec![c]),
            Err(_) => match pem {
                Err(e) => Err(e.into()),
                Ok(_) => Err(CryptoError::InvalidInput(
                    "no certificate found (PEM or DER expected)".into(),
                )),
            },
        },
    }
}

fn read_certs_file(path: &Path) -> Result<Vec<X509>, CryptoError> {
    let bytes = std::fs::read(path).map_err(|source| CryptoError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_cert_bytes(&bytes).map_err(|e| CryptoError::Load {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

impl TrustStore {
    /// An empty store (nothing verifies against it).
    pub fn empty() -> Self {
        TrustStore::default()
    }

    /// The system's trust anchors: `$SSL_CERT_FILE`, or the distribution
    /// bundle (Debian's `/etc/ssl/certs/ca-certificates.crt` and the usual
    /// others), or else every `*.pem`/`*.crt` in `$SSL_CERT_DIR` or
    /// `/etc/ssl/certs`.
    pub fn system() -> Result<Self, CryptoError> {
        let mut files: Vec<PathBuf> = Vec::new();
        if let Some(f) = std::env::var_os("SSL_CERT_FILE") {
            files.push(PathBuf::from(f));
        }
        files.extend(
            [
                "/etc/ssl/certs/ca-certificates.crt",
                "/etc/pki/tls/certs/ca-bundle.crt",
                "/etc/ssl/ca-bundle.pem",
                "/etc/ssl/cert.pem",
            ]
            .iter()
            .map(PathBuf::from),
        );
        for f in &files {
            if f.is_file() {
                let certs = read_certs_file(f)?;
                return Ok(TrustStore::with_certs(certs));
            }
        }
        let dir = std::env::var_os("SSL_CERT_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/etc/ssl/certs"));
        let entries = std::fs::read_dir(&dir).map_err(|source| CryptoError::Io {
            path: dir.clone(),
            source,
        })?;
        let mut certs = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            let wanted = path
                .extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| e.eq_ignore_ascii_case("pem") || e.eq_ignore_ascii_case("crt"));
            if wanted && path.is_file() {
                // Skip unreadable or odd files rather than failing the whole store.
                match read_certs_file(&path) {
                    Ok(mut c) => certs.append(&mut c),
                    Err(e) => tracing::debug!(error = %e, "skipping trust file"),
                }
            }
        }
        if certs.is_empty() {
            return Err(CryptoError::Load {
                path: dir,
                reason: "no trusted certificates found".into(),
            });
        }
        Ok(TrustStore::with_certs(certs))
    }

    /// Trust anchors from PEM (or DER) files; each file may hold several
    /// certificates.
    pub fn from_pem_files(paths: &[PathBuf]) -> Result<Self, CryptoError> {
        let mut certs = Vec::new();
        for p in paths {
            certs.append(&mut read_certs_file(p)?);
        }
        Ok(TrustStore::with_certs(certs))
    }

    /// Trust anchors from PEM (or DER) bytes; each may hold several certificates.
    pub fn from_pem_bytes(pems: &[&[u8]]) -> Result<Self, CryptoError> {
        let mut certs = Vec::new();
        for p in pems {
            certs.append(&mut parse_cert_bytes(p)?);
        }
        Ok(TrustStore::with_certs(certs))
    }

    fn with_certs(certs: Vec<X509>) -> Self {
        TrustStore {
            certs,
            crl_files: Vec::new(),
            crl_source: None,
            now_store: Arc::default(),
        }
    }

    /// Check the chains' revocation also against the CRLs of the
    /// certificates' distribution points, as `source` holds them: a
    /// listed certificate makes the signature invalid; a distribution
    /// point without a usable CRL makes it
    /// [`SignatureStatus::Indeterminate`] (the caller decides later).
    pub fn with_crl_source(mut self, source: Arc<dyn CrlSource>) -> Self {
        self.crl_source = Some(source);
        self
    }

    /// Whether the distribution points' CRLs are checked.
    pub fn checks_distribution_points(&self) -> bool {
        self.crl_source.is_some()
    }

    /// Add one certificate.
    pub fn add(&mut self, cert: X509) {
        self.certs.push(cert);
        self.now_store = Arc::default();
    }

    /// Check revocation against these CRL files (PEM). Each is read now so
    /// that a bad file is an error at start-up, not at the first message.
    pub fn with_crl_files(mut self, paths: &[PathBuf]) -> Result<Self, CryptoError> {
        for p in paths {
            let bytes = std::fs::read(p).map_err(|source| CryptoError::Io {
                path: p.clone(),
                source,
            })?;
            openssl::x509::X509Crl::from_pem(&bytes)
                .or_else(|_| openssl::x509::X509Crl::from_der(&bytes))
                .map_err(|e| CryptoError::Load {
                    path: p.clone(),
                    reason: format!("not a CRL: {e}"),
                })?;
        }
        self.crl_files = paths.to_vec();
        self.now_store = Arc::default();
        Ok(self)
    }

    /// Add every certificate of `other`.
    pub fn extend(&mut self, other: &TrustStore) {
        self.certs.extend(other.certs.iter().cloned());
        self.now_store = Arc::default();
    }

    /// The cached store for checks at the current time.
    fn store_now(&self) -> Result<&X509Store, ErrorStack> {
        if let Some(s) = self.now_store.get() {
            return Ok(s);
        }
        let built = self.x509_store(None)?;
        // A concurrent caller may have won the race: either store will do.
        let _ = self.now_store.set(built);
        match self.now_store.get() {
            Some(s) => Ok(s),
            None => Err(ErrorStack::get()),
        }
    }

    /// The trust anchors.
    pub fn certificates(&self) -> &[X509] {
        &self.certs
    }

    /// Number of trust anchors.
    pub fn len(&self) -> usize {
        self.certs.len()
    }

    /// Whether there are no trust anchors.
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    /// An OpenSSL store with purpose "any" and, if given, a fixed
    /// verification time. No security level is set, so SHA-1 and RSA-1024
    /// certificates of old PEC messages still verify.
    fn x509_store(&self, time: Option<i64>) -> Result<X509Store, ErrorStack> {
        let mut b = X509StoreBuilder::new()?;
        for c in &self.certs {
            b.add_cert(c.clone())?;
        }
        if !self.crl_files.is_empty() {
            let lookup = b.add_lookup(openssl::x509::store::X509Lookup::file())?;
            for p in &self.crl_files {
                // PEM first; a DER CRL fails here and is reported by the
                // chain check as "unable to get certificate CRL".
                let _ = lookup.load_crl_file(p, openssl::ssl::SslFiletype::PEM);
            }
            b.set_flags(openssl::x509::verify::X509VerifyFlags::CRL_CHECK)?;
        }
        let mut param = X509VerifyParam::new()?;
        param.set_purpose(X509PurposeId::ANY)?;
        if let Some(t) = time {
            // time_t is i64 on 64-bit targets (a no-op there) but may be i32
            // on some 32-bit ones.
            #[allow(clippy::useless_conversion)]
            let t = t.try_into().unwrap_or_default();
            param.set_time(t);
        }
        b.set_param(&param)?;
        Ok(b.build())
    }
}

/// Outcome of a signature check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SignatureStatus {
    /// Integrity and chain both hold.
    Valid,
    /// Something failed; see the reason.
    Invalid,
    /// There is no signature at all (set by callers; never by [`verify_detached`]).
    Missing,
    /// Integrity and chain hold, but the revocation status of a
    /// certificate of the chain cannot be told now (no usable CRL for its
    /// distribution points): neither valid nor invalid yet.
    Indeterminate,
}

/// What [`verify_detached`] found.
#[derive(Debug, Clone, Serialize)]
pub struct SignatureReport {
    /// Valid / invalid (missing is the caller's).
    pub status: SignatureStatus,
    /// Plain words when not valid.
    pub reason: Option<String>,
    /// The signature over the content holds (independent of the chain).
    pub integrity_ok: bool,
    /// The signer certificate chains to a trust anchor at the requested time.
    pub chain_ok: bool,
    /// "sha1"/"sha256" (or the OpenSSL short name / OID) from the SignerInfo.
    pub digest: Option<String>,
    /// Uppercase hex SHA-1 of the signer certificate DER.
    pub signer_sha1: Option<String>,
    /// Subject, one line, in certificate order, e.g.
    /// "CN=Posta Certificata ARUBA PEC, O=ARUBA PEC S.p.A., C=IT".
    pub signer_subject: Option<String>,
    /// Issuer, same format.
    pub signer_issuer: Option<String>,
    /// First rfc822Name of the subjectAltName.
    pub signer_email: Option<String>,
    /// The signingTime signed attribute (RFC 3339 in JSON).
    #[serde(serialize_with = "serialize_time")]
    pub signing_time: Option<chrono::DateTime<chrono::Utc>>,
    /// DER of the signer certificate, as found in the signature.
    #[serde(skip)]
    pub signer_der: Option<Vec<u8>>,
}

impl SignatureReport {
    /// A report for a message without a signature.
    pub fn missing() -> Self {
        let mut r = Self::invalid("no S/MIME signature");
        r.status = SignatureStatus::Missing;
        r
    }

    fn invalid(reason: &str) -> Self {
        SignatureReport {
            status: SignatureStatus::Invalid,
            reason: Some(reason.to_string()),
            integrity_ok: false,
            chain_ok: false,
            digest: None,
            signer_sha1: None,
            signer_subject: None,
            signer_issuer: None,
            signer_email: None,
            signing_time: None,
            signer_der: None,
        }
    }

    /// Whether the status is [`SignatureStatus::Valid`].
    pub fn is_valid(&self) -> bool {
        self.status == SignatureStatus::Valid
    }
}

fn serialize_time<S: serde::Serializer>(
    t: &Option<chrono::DateTime<chrono::Utc>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_some(&t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        None => s.serialize_none(),
    }
}

/// Escape an attribute value in the RFC 4514 way.
fn escape_dn_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';')
            || (i == 0 && (c == '#' || c == ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One-line name, attributes in certificate order ("CN=x, O=y, C=IT" for a
/// certificate that lists CN first), as `openssl x509 -subject` shows them.
pub fn name_to_string(name: &X509NameRef) -> String {
    let mut parts = Vec::new();
    for entry in name.entries() {
        let obj = entry.object();
        let key = obj
            .nid()
            .short_name()
            .map(str::to_string)
            .unwrap_or_else(|_| obj.to_string());
        let value = entry
            .data()
            .to_string()
            .unwrap_or_else(|_| format!("#{}", hex::encode_upper(entry.data().as_slice())));
        parts.push(format!("{key}={}", escape_dn_value(&value)));
    }
    parts.join(", ")
}

/// First rfc822Name in the subjectAltName.
fn first_email(cert: &X509Ref) -> Option<String> {
    cert.subject_alt_names()?
        .iter()
        .find_map(|g| g.email().map(str::to_string))
}

/// What the `cms` crate reads from the structure.
struct Parsed {
    signer: SignerInfo,
    /// Raw DER of each certificate in `certificates`, in message order.
    certs: Vec<Vec<u8>>,
}

fn parse_signed_data(p7s: &[u8]) -> der::Result<Parsed> {
    let ci = ContentInfo::from_der(p7s)?;
    if ci.content_type != OID_SIGNED_DATA {
        return Err(Tag::Sequence.value_error());
    }
    if ci.content.tag() != Tag::Sequence {
        return Err(ci.content.tag().value_error());
    }
    let mut r = SliceReader::new(ci.content.value())?;
    let _version = Any::decode(&mut r)?;
    let _digest_algorithms = Any::decode(&mut r)?;
    let _encap_content_info = Any::decode(&mut r)?;
    let mut certs = Vec::new();
    let tag0 = Tag::ContextSpecific {
        constructed: true,
        number: TagNumber::N0,
    };
    let tag1 = Tag::ContextSpecific {
        constructed: true,
        number: TagNumber::N1,
    };
    if r.peek_tag()? == tag0 {
        let set = Any::decode(&mut r)?;
        let mut cr = SliceReader::new(set.value())?;
        while !cr.is_finished() {
            certs.push(Any::decode(&mut cr)?.to_der()?);
        }
    }
    if r.peek_tag()? == tag1 {
        let _crls = Any::decode(&mut r)?;
    }
    let signer_infos = SignerInfos::decode(&mut r)?;
    let signer = signer_infos
        .0
        .iter()
        .next()
        .cloned()
        .ok_or_else(|| Tag::Set.value_error())?;
    Ok(Parsed { signer, certs })
}

/// Strip leading zero bytes of an INTEGER's content.
fn strip_zeros(b: &[u8]) -> &[u8] {
    let n = b.iter().take_while(|&&x| x == 0).count();
    &b[n.min(b.len().saturating_sub(1))..]
}

/// (serial INTEGER content, issuer Name DER) read directly from a certificate.
fn tbs_serial_issuer(cert_der: &[u8]) -> der::Result<(Vec<u8>, Vec<u8>)> {
    let cert = Any::from_der(cert_der)?;
    let mut r = SliceReader::new(cert.value())?;
    let tbs = Any::decode(&mut r)?;
    let mut t = SliceReader::new(tbs.value())?;
    if t.peek_tag()?
        == (Tag::ContextSpecific {
            constructed: true,
            number: TagNumber::N0,
        })
    {
        let _version = Any::decode(&mut t)?;
    }
    let serial = Any::decode(&mut t)?;
    let _sigalg = Any::decode(&mut t)?;
    let issuer = Any::decode(&mut t)?;
    Ok((serial.value().to_vec(), issuer.to_der()?))
}

/// Whether `cert_der`/`cert` is the certificate named by `sid`.
fn matches_sid(sid: &SignerIdentifier, cert_der: &[u8], cert: &X509) -> bool {
    match sid {
        SignerIdentifier::IssuerAndSerialNumber(ias) => {
            let Ok((serial, issuer)) = tbs_serial_issuer(cert_der) else {
                return false;
            };
            if strip_zeros(&serial) != strip_zeros(ias.serial_number.as_bytes()) {
                return false;
            }
            let Ok(sid_issuer) = ias.issuer.to_der() else {
                return false;
            };
            if sid_issuer == issuer {
                return true;
            }
            // Same name in different string types: let OpenSSL compare canonically.
            openssl::x509::X509Name::from_der(&sid_issuer)
                .ok()
                .and_then(|n| cert.issuer_name().try_cmp(&n).ok())
                .is_some_and(|o| o.is_eq())
        }
        SignerIdentifier::SubjectKeyIdentifier(ski) => cert
            .subject_key_id()
            .is_some_and(|k| k.as_slice() == ski.0.as_bytes()),
    }
}

fn digest_name(oid: &der::oid::ObjectIdentifier) -> String {
    if let Some(alg) = DigestAlg::from_oid(oid) {
        return alg.name().to_string();
    }
    match oid.to_string().as_str() {
        "1.2.840.113549.2.5" => "md5".into(),
        "2.16.840.1.101.3.4.2.2" => "sha384".into(),
        "2.16.840.1.101.3.4.2.3" => "sha512".into(),
        "2.16.840.1.101.3.4.2.4" => "sha224".into(),
        other => other.to_string(),
    }
}

fn signing_time_of(si: &SignerInfo) -> Option<chrono::DateTime<chrono::Utc>> {
    let attrs = si.signed_attrs.as_ref()?;
    let attr = attrs.iter().find(|a| a.oid == OID_SIGNING_TIME)?;
    let value = attr.values.iter().next()?;
    let time = Time::from_der(&value.to_der().ok()?).ok()?;
    let secs = i64::try_from(time.to_unix_duration().as_secs()).ok()?;
    chrono::DateTime::from_timestamp(secs, 0)
}

fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

/// Plain words for an OpenSSL integrity failure.
fn integrity_reason(e: &ErrorStack) -> String {
    let errors = e.errors();
    let reason = |needle: &str| {
        errors
            .iter()
            .filter_map(|x| x.reason())
            .any(|r| r.to_ascii_lowercase().contains(needle))
    };
    let function = |name: &str| errors.iter().any(|x| x.function() == Some(name));
    if function("CMS_SignerInfo_verify_content")
        || reason("content verify error")
        || reason("digest failure")
    {
        // The messageDigest attribute does not match the content.
        "content digest mismatch (message altered)".into()
    } else if function("CMS_SignerInfo_verify")
        || reason("signerinfo verify error")
        || reason("bad signature")
        || reason("padding check failed")
    {
        "signature does not verify (signed attributes altered or wrong key)".into()
    } else if reason("signer certificate not found") {
        "signer certificate not found in the signature".into()
    } else if reason("unsupported") || reason("unknown digest") {
        format!("unsupported algorithm in signature: {e}")
    } else {
        format!("signature verification failed: {e}")
    }
}

/// Plain words for a chain failure found by `X509StoreContext`.
fn chain_reason(code: i32, message: &str, depth: u32, at_note: &str) -> String {
    let who = if depth == 0 {
        String::new()
    } else {
        format!(" (CA certificate at depth {depth})")
    };
    let base = match code {
        X509_V_ERR_CERT_HAS_EXPIRED => format!("certificate expired at verification time{who}"),
        X509_V_ERR_CERT_NOT_YET_VALID => {
            format!("certificate not yet valid at verification time{who}")
        }
        _ => format!("certificate chain: {message}{who}"),
    };
    format!("{base}{at_note}")
}

/// Verify a detached CMS/PKCS#7 signature (`p7s_der`, already
/// base64-decoded) over `content` (the canonical CRLF bytes of the signed
/// MIME entity). Never panics; garbage gives [`SignatureStatus::Invalid`]
/// with a reason.
pub fn verify_detached(
    p7s_der: &[u8],
    content: &[u8],
    trust: &TrustStore,
    at: VerifyAt,
) -> SignatureReport {
    verify_cms(p7s_der, Some(content), trust, at)
}

/// Verify an opaque CMS/PKCS#7 signed-data (`application/pkcs7-mime;
/// smime-type=signed-data`, already base64-decoded): the content is the
/// one inside it ([`signed_content`]). The same checks and report as
/// [`verify_detached`].
pub fn verify_attached(p7m_der: &[u8], trust: &TrustStore, at: VerifyAt) -> SignatureReport {
    verify_cms(p7m_der, None, trust, at)
}

/// The content encapsulated in an opaque CMS signed-data (DER, or BER as
/// OpenSSL reads it), not verified; `None` when it is not signed-data or
/// carries no content (a detached signature).
pub fn signed_content(der: &[u8]) -> Option<Vec<u8>> {
    encap_content(der).ok().flatten().or_else(|| {
        // BER (indefinite lengths, constructed OCTET STRINGs): through
        // OpenSSL's DER re-encoding, as for the SignerInfo
        let reencoded = CmsContentInfo::from_der(der).ok()?.to_der().ok()?;
        encap_content(&reencoded).ok().flatten()
    })
}

fn encap_content(der: &[u8]) -> der::Result<Option<Vec<u8>>> {
    let ci = ContentInfo::from_der(der)?;
    if ci.content_type != OID_SIGNED_DATA || ci.content.tag() != Tag::Sequence {
        return Ok(None);
    }
    let mut r = SliceReader::new(ci.content.value())?;
    let _version = Any::decode(&mut r)?;
    let _digest_algorithms = Any::decode(&mut r)?;
    let encap = EncapsulatedContentInfo::decode(&mut r)?;
    match encap.econtent {
        Some(any) => Ok(Some(any.decode_as::<OctetString>()?.into_bytes())),
        None => Ok(None),
    }
}

/// [`verify_detached`] (`content` given) or [`verify_attached`] (`None`:
/// the content inside the structure).
fn verify_cms(
    p7s_der: &[u8],
    content: Option<&[u8]>,
    trust: &TrustStore,
    at: VerifyAt,
) -> SignatureReport {
    const MALFORMED: &str = "malformed PKCS#7/CMS structure";
    let Ok(mut cms) = CmsContentInfo::from_der(p7s_der) else {
        return SignatureReport::invalid(MALFORMED);
    };

    // Read the SignerInfo with the `cms` crate; for BER input, from OpenSSL's
    // DER re-encoding.
    let parsed = match parse_signed_data(p7s_der) {
        Ok(p) => Some(p),
        Err(_) => cms
            .to_der()
            .ok()
            .and_then(|der| parse_signed_data(&der).ok()),
    };

    let mut report = SignatureReport::invalid(MALFORMED);
    let mut signer: Option<X509> = None;
    let mut untrusted: Vec<X509> = Vec::new();
    if let Some(p) = &parsed {
        report.digest = Some(digest_name(&p.signer.digest_alg.oid));
        report.signing_time = signing_time_of(&p.signer);
        for der in &p.certs {
            let Ok(cert) = X509::from_der(der) else {
                continue;
            };
            if signer.is_none() && matches_sid(&p.signer.sid, der, &cert) {
                report.signer_sha1 = openssl::hash::hash(MessageDigest::sha1(), der)
                    .ok()
                    .map(hex::encode_upper);
                report.signer_subject = Some(name_to_string(cert.subject_name()));
                report.signer_issuer = Some(name_to_string(cert.issuer_name()));
                report.signer_email = first_email(&cert);
                report.signer_der = Some(der.clone());
                signer = Some(cert.clone());
            }
            untrusted.push(cert);
        }
    }

    // 1. Integrity, independent of any chain.
    let integrity = cms_verify(
        &mut cms,
        None,
        content,
        CMSOptions::BINARY | CMSOptions::NO_SIGNER_CERT_VERIFY,
    );
    let mut reasons: Vec<String> = Vec::new();
    match integrity {
        Ok(()) => report.integrity_ok = true,
        Err(e) => reasons.push(integrity_reason(&e)),
    }

    // 2. Chain at the requested time.
    let (time, at_note) = match at {
        VerifyAt::Now => (None, ""),
        VerifyAt::At(t) => (Some(unix_secs(t)), ""),
        VerifyAt::SigningTime => match report.signing_time {
            Some(t) => (Some(t.timestamp()), ""),
            None => (
                None,
                " (no signingTime attribute; verified at the current time)",
            ),
        },
    };
    let mut owned_store: Option<X509Store> = None;
    let mut chain: Vec<X509> = Vec::new();
    let store = match time {
        None => trust.store_now(),
        Some(t) => match trust.x509_store(Some(t)) {
            Ok(s) => Ok(&*owned_store.insert(s)),
            Err(e) => Err(e),
        },
    };
    let store = match store {
        Ok(s) => Some(s),
        Err(e) => {
            reasons.push(format!("certificate chain: cannot build trust store: {e}"));
            None
        }
    };
    if let Some(store) = store {
        match &signer {
            None => {
                if parsed.is_some() {
                    reasons.push("signer certificate not found in the signature".into());
                } else if report.integrity_ok {
                    reasons.push("signature structure not readable for chain check".into());
                }
            }
            Some(cert) => match check_chain(store, cert, &untrusted, at_note) {
                Ok(c) => {
                    report.chain_ok = true;
                    chain = c;
                }
                Err(reason) => reasons.push(reason),
            },
        }
        // 3. Both held: confirm with OpenSSL's own full verification.
        if report.integrity_ok
            && report.chain_ok
            && let Err(e) = cms_verify(&mut cms, Some(store), content, CMSOptions::BINARY)
        {
            report.chain_ok = false;
            reasons.push(format!("signature verification with chain failed: {e}"));
        }
    }

    // 4. Revocation by the distribution points' CRLs, of a chain that
    // holds.
    let mut revocation = Revocation::Good;
    if report.integrity_ok
        && report.chain_ok
        && let Some(source) = &trust.crl_source
    {
        revocation = super::crl::check_chain(&chain, source.as_ref());
        if let Revocation::Revoked(why) = &revocation {
            report.chain_ok = false;
            reasons.push(why.clone());
        }
    }

    if report.integrity_ok && report.chain_ok {
        if let Revocation::Unknown(why) = revocation {
            report.status = SignatureStatus::Indeterminate;
            report.reason = Some(why);
        } else {
            report.status = SignatureStatus::Valid;
            report.reason = None;
        }
    } else {
        report.status = SignatureStatus::Invalid;
        reasons.dedup();
        report.reason = Some(if reasons.is_empty() {
            MALFORMED.to_string()
        } else {
            reasons.join("; ")
        });
    }
    report
}

/// `CMS_verify` of a detached signature over `content`, or of an opaque
/// one over the content inside it (`None`), with no output.
/// The openssl crate's [`CmsContentInfo::verify`] always collects the
/// verified content into a memory BIO: a copy of the whole signed part
/// (100 MB for a 100 MB envelope) per call. OpenSSL itself takes a NULL
/// `out` (it writes into a null BIO then), and reads `content` through a
/// read-only memory BIO over the caller's bytes: nothing is copied.
fn cms_verify(
    cms: &mut CmsContentInfo,
    store: Option<&X509StoreRef>,
    content: Option<&[u8]>,
    flags: CMSOptions,
) -> Result<(), ErrorStack> {
    let Some(content) = content else {
        // opaque: CMS_verify reads the content from the structure; NULL
        // out, NULL dcont
        // SAFETY: `cms` and `store` are valid objects borrowed for the
        // call; NULL certs, dcont and out are allowed by CMS_verify; its
        // return value is checked as the crate does.
        let rc = unsafe {
            openssl_sys::CMS_verify(
                cms.as_ptr(),
                std::ptr::null_mut(),
                store.map_or(std::ptr::null_mut(), ForeignTypeRef::as_ptr),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                flags.bits(),
            )
        };
        return if rc <= 0 {
            Err(ErrorStack::get())
        } else {
            Ok(())
        };
    };
    let flags = flags | CMSOptions::DETACHED;
    let Ok(len) = std::ffi::c_int::try_from(content.len()) else {
        // beyond 2 GiB: the crate's call, which copies
        return cms.verify(None, store, Some(content), None, flags);
    };
    // SAFETY: `BIO_new_mem_buf` makes a read-only BIO over `content`, which
    // outlives it (freed below, before returning); `cms` and `store` are
    // valid objects borrowed for the call; a NULL certs stack and a NULL
    // out BIO are allowed by CMS_verify; its return value is checked as the
    // crate does (<= 0: the error is on OpenSSL's error stack).
    unsafe {
        let bio = openssl_sys::BIO_new_mem_buf(content.as_ptr().cast(), len);
        if bio.is_null() {
            return Err(ErrorStack::get());
        }
        let rc = openssl_sys::CMS_verify(
            cms.as_ptr(),
            std::ptr::null_mut(),
            store.map_or(std::ptr::null_mut(), ForeignTypeRef::as_ptr),
            bio,
            std::ptr::null_mut(),
            flags.bits(),
        );
        openssl_sys::BIO_free_all(bio);
        if rc <= 0 {
            Err(ErrorStack::get())
        } else {
            Ok(())
        }
    }
}

/// The chain OpenSSL built (leaf first, anchor last) when `cert` chains
/// to `store`; else why not.
fn check_chain(
    store: &X509Store,
    cert: &X509,
    untrusted: &[X509],
    at_note: &str,
) -> Result<Vec<X509>, String> {
    let run = || -> Result<Result<Vec<X509>, String>, ErrorStack> {
        let mut chain = Stack::new()?;
        for c in untrusted {
            chain.push(c.clone())?;
        }
        let mut ctx = X509StoreContext::new()?;
        ctx.init(store, cert, &chain, |ctx| {
            if ctx.verify_cert()? {
                let built = ctx
                    .chain()
                    .map(|c| c.iter().map(|x| x.to_owned()).collect())
                    .unwrap_or_default();
                Ok(Ok(built))
            } else {
                let err = ctx.error();
                Ok(Err(chain_reason(
                    err.as_raw(),
                    err.error_string(),
                    ctx.error_depth(),
                    at_note,
                )))
            }
        })
    };
    match run() {
        Ok(r) => r,
        Err(e) => Err(format!("certificate chain: {e}")),
    }
}

/// The bytes of a CMS SignedData that envelopes its content (a `.p7m`, as
/// the providers' index is published: PEC-RULES §5.1), in DER, PEM
/// (`-----BEGIN PKCS7-----`, `CMS`, ...) or bare base64.
pub fn signed_data_der(bytes: &[u8]) -> Result<Vec<u8>, CryptoError> {
    use base64::Engine as _;
    let trimmed = bytes.trim_ascii_start();
    if trimmed.first() == Some(&0x30) {
        return Ok(trimmed.to_vec());
    }
    let text = std::str::from_utf8(trimmed).map_err(|_| {
        CryptoError::InvalidInput("neither DER nor base64/PEM text (not UTF-8)".into())
    })?;
    let body: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("-----"))
        .flat_map(|l| l.chars().filter(|c| !c.is_ascii_whitespace()))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .map_err(|e| CryptoError::InvalidInput(format!("neither DER nor base64/PEM: {e}")))?;
    if der.first() != Some(&0x30) {
        return Err(CryptoError::InvalidInput(
            "the decoded base64 is not a DER structure".into(),
        ));
    }
    Ok(der)
}

/// The content of an enveloping CMS SignedData (`.p7m`: DER, PEM or bare
/// base64, see [`signed_data_der`]) once its signature verifies and its
/// signer chains to `trust` at the current time; else why not: bytes that
/// are no SignedData [`CryptoError::InvalidInput`], a signer that does not
/// chain [`CryptoError::Untrusted`], any other failure
/// [`CryptoError::Verify`].
pub fn verify_enveloped(bytes: &[u8], trust: &TrustStore) -> Result<Vec<u8>, CryptoError> {
    let der = signed_data_der(bytes)?;
    let mut cms = CmsContentInfo::from_der(&der)
        .map_err(|e| CryptoError::Verify(format!("not a CMS structure: {e}")))?;
    let store = trust.store_now()?;
    let mut content = Vec::new();
    cms.verify(
        None,
        Some(store),
        None,
        Some(&mut content),
        CMSOptions::BINARY,
    )
    .map_err(|e| match chain_failure(&e) {
        Some(detail) => CryptoError::Untrusted(detail),
        None => CryptoError::Verify(integrity_reason(&e)),
    })?;
    Ok(content)
}

/// OpenSSL's detail when `CMS_verify` failed on the signer's chain (its
/// `certificate verify error`, with the X.509 reason it carries, e.g.
/// `unable to get local issuer certificate`); `None` for any other failure.
fn chain_failure(e: &ErrorStack) -> Option<String> {
    let error = e.errors().iter().find(|x| {
        x.reason()
            .is_some_and(|r| r.eq_ignore_ascii_case("certificate verify error"))
            || x.function()
                .is_some_and(|f| f.eq_ignore_ascii_case("cms_signerinfo_verify_cert"))
    })?;
    let reason = error.reason().unwrap_or("certificate verify error");
    Some(match error.data() {
        Some(data) if !data.is_empty() => {
            let data = data.strip_prefix("Verify error:").unwrap_or(data).trim();
            format!("{reason}: {data}")
        }
        _ => reason.to_string(),
    })
}

/// `Ok` for a valid report, else [`CryptoError::Verify`] with the reason,
/// for callers that want a `Result` rather than a report.
pub fn require_valid(report: &SignatureReport) -> Result<(), CryptoError> {
    if report.is_valid() {
        Ok(())
    } else {
        Err(CryptoError::Verify(
            report
                .reason
                .clone()
                .unwrap_or_else(|| "invalid signature".into()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dn_escaping() {
        assert_eq!(escape_dn_value("ACME, S.p.A."), "ACME\\, S.p.A.");
        assert_eq!(escape_dn_value(" x "), "\\ x\\ ");
        assert_eq!(escape_dn_value("#1"), "\\#1");
        assert_eq!(strip_zeros(&[0, 0, 5]), &[5]);
        assert_eq!(strip_zeros(&[0]), &[0]);
        assert_eq!(strip_zeros(&[]), &[] as &[u8]);
    }

    #[test]
    fn missing_report_serializes() {
        let r = SignatureReport::missing();
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["status"], "missing");
        assert_eq!(json["signing_time"], serde_json::Value::Null);
        assert!(json.get("signer_der").is_none());
    }

    #[test]
    fn garbage_never_panics() {
        let trust = TrustStore::empty();
        for bytes in [
            &b""[..],
            b"\x30",
            b"\x30\x80",
            b"\x30\x03\x06\x01\x00",
            b"\xff\xff\xff",
        ] {
            let r = verify_detached(bytes, b"x", &trust, VerifyAt::SigningTime);
            assert_eq!(r.status, SignatureStatus::Invalid);
            assert!(r.reason.is_some());
        }
    }
}
