//! The daily seal: each closed log file timestamped by a Time Stamping
//! Authority (RFC 3161 over HTTP, `application/timestamp-query`), the
//! reply kept beside it as `FILE.tsr` once it is checked: granted, signed
//! by a certificate that chains to `[log] tsa_trust` for time stamping,
//! over this file's SHA-256, with our nonce. `openssl ts -verify -in
//! FILE.tsr -data FILE -CAfile TSA-CA.pem` accepts the same reply.
//!
//! The ASN.1 is the `x509-tsp` crate's (RustCrypto formats, the `der` and
//! `cms` types we use already); HTTP is `ureq` (blocking: a seal runs on a
//! blocking thread, off the mail path); the signature and chain are
//! OpenSSL's `CMS_verify`, like every other signature we check.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use der::asn1::{Int, OctetString};
use der::oid::db::rfc5912::ID_SHA_256;
use der::{Decode, Encode};
use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::x509::store::{X509Store, X509StoreBuilder};
use openssl::x509::{X509, X509PurposeId};
use x509_tsp::{MessageImprint, TimeStampReq, TimeStampResp, TspVersion, TstInfo};

use super::Evento;
use super::chain::open_line;
use super::writer::chain_files;

/// Replies larger than this are refused (a token is a few KiB).
const MAX_REPLY: u64 = 1 << 20;

/// Why a file has no seal (yet), or a seal does not hold.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("TSA {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("TSA reply: {0}")]
    BadReply(String),
    #[error("TSA trust anchors: {0}")]
    Trust(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SealError + '_ {
    move |source| SealError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Where the seals come from and what they are checked against.
pub struct Tsa {
    pub url: String,
    pub timeout: Duration,
    trust: X509Store,
}

/// A store of `certs` for time-stamping signatures.
pub fn tsa_store(certs: &[X509]) -> Result<X509Store, SealError> {
    let bad = |e: openssl::error::ErrorStack| SealError::Trust(e.to_string());
    let mut b = X509StoreBuilder::new().map_err(bad)?;
    for c in certs {
        b.add_cert(c.clone()).map_err(bad)?;
    }
    b.set_purpose(X509PurposeId::TIMESTAMP_SIGN).map_err(bad)?;
    Ok(b.build())
}

/// The certificates of PEM files.
pub fn read_pems(paths: &[PathBuf]) -> Result<Vec<X509>, SealError> {
    let mut out = Vec::new();
    for p in paths {
        let pem = std::fs::read(p).map_err(io(p))?;
        out.extend(
            X509::stack_from_pem(&pem)
                .map_err(|e| SealError::Trust(format!("{}: {e}", p.display())))?,
        );
    }
    if out.is_empty() {
        return Err(SealError::Trust("no certificate given".into()));
    }
    Ok(out)
}

impl Tsa {
    pub fn new(url: String, timeout: Duration, trust: &[X509]) -> Result<Tsa, SealError> {
        Ok(Tsa {
            url,
            timeout,
            trust: tsa_store(trust)?,
        })
    }

    /// Timestamp `file` and keep the checked reply as `file.tsr`.
    pub fn seal(&self, file: &Path) -> Result<PathBuf, SealError> {
        let digest = file_sha256(file)?;
        let mut nonce = [0u8; 8];
        openssl::rand::rand_bytes(&mut nonce).map_err(|e| SealError::BadReply(e.to_string()))?;
        nonce[0] &= 0x7f; // a positive INTEGER
        nonce[0] |= 0x01; // without a leading zero octet
        let query = query(&digest, &nonce)?;
        let reply = self.post(&query)?;
        let stamp = check_reply(&reply, &digest, Some(&nonce), &self.trust)?;
        let out = tsr_path(file);
        let (dir, name) = (
            file.parent().unwrap_or(Path::new(".")),
            file.file_name().and_then(|n| n.to_str()).unwrap_or("log"),
        );
        let kept =
            crate::keep::keep_with(dir, name, "tsr", |f| std::io::Write::write_all(f, &reply))
                .map_err(io(&out))?;
        if kept != out {
            return Err(SealError::Io {
                path: kept.display().to_string(),
                source: std::io::Error::other("the seal was kept under another name"),
            });
        }
        tracing::info!(file = %file.display(), seal = %out.display(), time = %stamp, tsa = %self.url,
            "message log: file sealed (RFC 3161)");
        Ok(out)
    }

    fn post(&self, query: &[u8]) -> Result<Vec<u8>, SealError> {
        let unreachable = |reason: String| SealError::Unreachable {
            url: self.url.clone(),
            reason,
        };
        // https through the system's OpenSSL and its CA store, like every
        // other TLS path of pec-milter
        let tls = ureq::tls::TlsConfig::builder()
            .provider(ureq::tls::TlsProvider::NativeTls)
            .root_certs(ureq::tls::RootCerts::PlatformVerifier)
            .build();
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .tls_config(tls)
            .timeout_global(Some(self.timeout))
            .http_status_as_error(false)
            .build()
            .into();
        let mut resp = agent
            .post(&self.url)
            .header("Content-Type", "application/timestamp-query")
            .send(query)
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status();
        if status != 200 {
            return Err(unreachable(format!("HTTP {status}")));
        }
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_ascii_lowercase();
        if !ct.starts_with("application/timestamp-reply") {
            return Err(SealError::BadReply(format!("content type {ct:?}")));
        }
        let mut body = Vec::new();
        resp.body_mut()
            .as_reader()
            .take(MAX_REPLY)
            .read_to_end(&mut body)
            .map_err(|e| unreachable(e.to_string()))?;
        Ok(body)
    }
}

/// `FILE.tsr`.
pub fn tsr_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".tsr");
    PathBuf::from(s)
}

/// SHA-256 of a file, read in pieces.
pub fn file_sha256(path: &Path) -> Result<[u8; 32], SealError> {
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let mut h = openssl::sha::Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish())
}

/// A TimeStampReq (DER) for a SHA-256 digest, asking for the TSA's
/// certificate in the reply.
pub fn query(digest: &[u8; 32], nonce: &[u8]) -> Result<Vec<u8>, SealError> {
    let bad = |e: der::Error| SealError::BadReply(format!("building the query: {e}"));
    let req = TimeStampReq {
        version: TspVersion::V1,
        message_imprint: MessageImprint {
            hash_algorithm: spki_sha256(),
            hashed_message: OctetString::new(digest.to_vec()).map_err(bad)?,
        },
        req_policy: None,
        nonce: Some(Int::new(nonce).map_err(bad)?),
        cert_req: true,
        extensions: None,
    };
    req.to_der().map_err(bad)
}

fn spki_sha256() -> cms::cert::x509::spki::AlgorithmIdentifier<der::Any> {
    cms::cert::x509::spki::AlgorithmIdentifier {
        oid: ID_SHA_256,
        parameters: Some(der::Any::from(der::asn1::AnyRef::NULL)),
    }
}

/// Check a TimeStampResp: granted; its token a signature valid for time
/// stamping under `trust`; over `digest` (SHA-256); with `nonce` when
/// given. The time it states (GeneralizedTime, as text).
pub fn check_reply(
    reply: &[u8],
    digest: &[u8; 32],
    nonce: Option<&[u8]>,
    trust: &X509Store,
) -> Result<String, SealError> {
    let bad = |s: String| SealError::BadReply(s);
    let resp =
        TimeStampResp::from_der(reply).map_err(|e| bad(format!("not a TimeStampResp: {e}")))?;
    // granted (0) or grantedWithMods (1)
    let status = resp.status.status as u8;
    if status > 1 {
        return Err(bad(format!(
            "not granted (status {status}{})",
            resp.status
                .fail_info
                .map(|f| format!(", failure {f:?}"))
                .unwrap_or_default()
        )));
    }
    let token = resp
        .time_stamp_token
        .ok_or_else(|| bad("granted but no token".into()))?
        .to_der()
        .map_err(|e| bad(e.to_string()))?;
    let tst = verified_tst_info(&token, trust)?;
    if tst.message_imprint.hash_algorithm.oid != ID_SHA_256 {
        return Err(bad("the token's imprint is not SHA-256".into()));
    }
    if tst.message_imprint.hashed_message.as_bytes() != digest {
        return Err(bad("the token is over other data than this file".into()));
    }
    if let Some(n) = nonce
        && tst.nonce.as_ref().map(|x| x.as_bytes()) != Some(n)
    {
        return Err(bad("the token's nonce is not ours".into()));
    }
    Ok(tst.gen_time.to_date_time().to_string())
}

/// The TSTInfo of a token whose signature and chain hold (for time
/// stamping) under `trust`.
fn verified_tst_info(token: &[u8], trust: &X509Store) -> Result<TstInfo, SealError> {
    let bad = |s: String| SealError::BadReply(s);
    let mut cms = CmsContentInfo::from_der(token).map_err(|e| bad(format!("token: {e}")))?;
    let mut content = Vec::new();
    cms.verify(
        None,
        Some(trust),
        None,
        Some(&mut content),
        CMSOptions::BINARY,
    )
    .map_err(|e| {
        bad(format!(
            "the token's signature or its chain does not hold: {e}"
        ))
    })?;
    TstInfo::from_der(&content).map_err(|e| bad(format!("TSTInfo: {e}")))
}

/// Check `file.tsr` against `file` (any nonce).
pub fn verify_seal(file: &Path, trust: &X509Store) -> Result<String, SealError> {
    let tsr = tsr_path(file);
    let reply = std::fs::read(&tsr).map_err(io(&tsr))?;
    check_reply(&reply, &file_sha256(file)?, None, trust)
}

/// The closed files of a node directory with no seal yet.
pub fn unsealed(node_dir: &Path) -> Result<Vec<PathBuf>, SealError> {
    let mut out = Vec::new();
    for f in chain_files(node_dir).map_err(io(node_dir))? {
        if !tsr_path(&f).exists() && is_closed(&f)? {
            out.push(f);
        }
    }
    Ok(out)
}

/// Does the file end with its `chiusura`? Only the last line is read
/// (from the end, in growing pieces): the sealer asks this of the day's
/// open file at every pass, and that file may be large.
pub fn is_closed(file: &Path) -> Result<bool, SealError> {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::File::open(file).map_err(io(file))?;
    let len = f.metadata().map_err(io(file))?.len();
    let mut want = 64 * 1024u64;
    loop {
        let start = len.saturating_sub(want);
        f.seek(SeekFrom::Start(start)).map_err(io(file))?;
        let mut tail = Vec::new();
        (&mut f)
            .take(len - start)
            .read_to_end(&mut tail)
            .map_err(io(file))?;
        let body = tail.strip_suffix(b"\n").unwrap_or(&tail);
        let last = match body.iter().rposition(|&b| b == b'\n') {
            Some(i) => &body[i + 1..],
            None if start == 0 => body,
            None => {
                want = want.saturating_mul(2);
                continue;
            }
        };
        let last = std::str::from_utf8(last)
            .map_err(|e| io(file)(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        return Ok(open_line(last).is_ok_and(|(r, _)| r.event.event == Evento::Chiusura));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_is_what_openssl_would_send() {
        let digest = [0xab; 32];
        let q = query(&digest, &[0x31, 0x4c]).expect("query");
        let back = TimeStampReq::from_der(&q).expect("decodes");
        assert_eq!(back.message_imprint.hash_algorithm.oid, ID_SHA_256);
        assert_eq!(back.message_imprint.hashed_message.as_bytes(), &digest);
        assert_eq!(back.nonce.expect("nonce").as_bytes(), &[0x31, 0x4c]);
        assert!(back.cert_req);
    }

    #[tokio::test]
    async fn closed_is_read_from_the_last_line_however_long() {
        use crate::log::writer::{FileLog, LogOptions};
        use crate::log::{Destinatario, Event, EventLog};
        let dir = tempfile::tempdir().expect("tmp");
        let log = FileLog::open(&LogOptions {
            dir: dir.path().to_path_buf(),
            node: "mx1".into(),
        })
        .expect("open");
        // records longer than the first piece read (a 150 KB subject)
        for i in 0..3 {
            log.record(vec![Event {
                event: Evento::Accettazione,
                time: chrono::Utc::now(),
                pec_id: format!("opec.{i}@x"),
                msgid: None,
                related: vec![],
                sender: "a@x".into(),
                recipients: vec![Destinatario {
                    address: "b@y".into(),
                    tipo: "certificato".into(),
                }],
                subject: "s".repeat(150_000),
                provider: "X".into(),
                outcome: "ok".into(),
                about: None,
            }])
            .await
            .expect("record");
        }
        let open = chain_files(log.node_dir()).expect("files").remove(0);
        assert!(
            !is_closed(&open).expect("open file"),
            "its last line is a record"
        );
        let closed = log.seal().await.expect("seal");
        assert_eq!(closed, open);
        assert!(is_closed(&closed).expect("closed file"));
        let next = chain_files(log.node_dir()).expect("files").remove(1);
        assert!(
            !is_closed(&next).expect("new file"),
            "one apertura line, no newline before it"
        );
        assert_eq!(unsealed(log.node_dir()).expect("unsealed"), vec![closed]);
    }

    #[test]
    fn garbage_is_a_bad_reply_not_a_panic() {
        let store = tsa_store(&[]).expect("store");
        for reply in [&b""[..], b"\x30\x03\x02\x01\x00", b"HTTP/1.1 200 OK"] {
            assert!(matches!(
                check_reply(reply, &[0; 32], None, &store),
                Err(SealError::BadReply(_))
            ));
        }
    }
}
