//! Shared helpers for the integration tests: a test PKI made at test time,
//! facts for a transaction, the independent checkers (openssl, xmllint,
//! Python's email package), and the machine: a free loopback port, the root
//! check, installed programs, the rule for a missing component
//! ([`require`]), races of tasks, the state stores and a throwaway
//! `redis-server` ([`redis`]); the daemon's configuration file
//! ([`DaemonConfig`]) and the daemon run on it ([`DaemonProcess`],
//! [`InProcessDaemon`]).
#![allow(dead_code)]

pub mod crl_server;
pub mod redis;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use chrono::{DateTime, TimeZone, Utc};
use pec_milter::crypto::DigestAlg;
use pec_milter::crypto::pem::PemKey;
use pec_milter::crypto::pki::Pki;
use pec_milter::crypto::verify::TrustStore;
use pec_milter::index::{ProviderEntry, certificate_hash};
use pec_milter::pec::build::{Provider, Signer, Transaction, build_busta_trasporto};
use pec_milter::pec::reader::read;
use pec_milter::pec::{Destinatario, TipoDestinatario, TipoRicevuta};
use pec_milter::roles::Original;
use pec_milter::spool::{SpoolOptions, SpoolWriter};
use pec_milter::state::{StateError, StateStore};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

// ---------------------------------------------------------------------------
// The machine.

/// A loopback port that was free a moment ago (bound to 127.0.0.1:0, then
/// released).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// Whether the tests run with effective uid 0 (from /proc/self/status).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|euid| euid == "0"))
        })
        .unwrap_or(false)
}

/// Fails the test unless it runs as root (`what` starts its own daemon).
pub fn require_root(what: &str) {
    assert!(
        is_root(),
        "{what} must run as root (it starts its own daemon in a temp dir); \
         run the tests as root after integration/deps.sh"
    );
}

/// Whether the tests run under CI: the `CI` environment variable is `true`.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The one rule for a test that needs an optional `component`: true when it
/// is `available`. When it is not, under CI (`CI=true`) the test fails here,
/// naming the component (a skipped test must never pass in CI); elsewhere a
/// note is printed and false is returned, for the test to return early.
pub fn require(component: &str, available: bool) -> bool {
    if available {
        return true;
    }
    assert!(
        !in_ci(),
        "{component} is missing and CI=true: under CI a test may not skip \
         (integration/deps.sh installs it)"
    );
    eprintln!(
        "SKIPPED: {component} is missing (integration/deps.sh installs it; under CI=true this fails)"
    );
    false
}

/// An installed program: in PATH or the usual system directories, or a
/// failure naming its Debian package and integration/deps.sh.
pub fn installed(name: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path).chain(
        [
            "/usr/sbin",
            "/usr/bin",
            "/usr/local/sbin",
            "/usr/local/bin",
            "/sbin",
        ]
        .map(PathBuf::from),
    );
    for dir in dirs {
        let p = dir.join(name);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "{name} not found (Debian package {package}): run integration/deps.sh as root to install it"
    );
}

// ---------------------------------------------------------------------------
// Races and the state stores.

/// Runs `op(0)` .. `op(n - 1)` at once as tokio tasks and counts those
/// that returned true: how many won a race.
pub async fn winners<F, Fut>(n: usize, op: F) -> usize
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = bool> + Send + 'static,
{
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        tasks.spawn(op(i));
    }
    let mut won = 0;
    while let Some(r) = tasks.join_next().await {
        if r.expect("task") {
            won += 1;
        }
    }
    won
}

/// The PEC ids a state store tracks (any send time), sorted.
pub async fn tracked_ids(store: &dyn StateStore) -> Vec<String> {
    let mut ids: Vec<String> = store
        .tracked(i64::MAX)
        .await
        .expect("tracked")
        .into_iter()
        .map(|r| r.pec_id)
        .collect();
    ids.sort();
    ids
}

// ---------------------------------------------------------------------------
// The test PKI and the facts of a transaction.

pub struct TestPki {
    pub pki: Pki,
    pub key: PemKey,
    pub trust: TrustStore,
    pub ca_file: tempfile::NamedTempFile,
}

/// One test CA and provider certificate per test binary (RSA-2048 key
/// generation is slow in debug builds).
pub fn pki() -> &'static TestPki {
    static P: OnceLock<TestPki> = OnceLock::new();
    P.get_or_init(|| {
        let pki = Pki::generate("ACME PEC S.p.A.", "pec.acme.test", 365).expect("pki");
        let key = pki.signing_key().expect("key");
        let trust = TrustStore::from_pem_bytes(&[&pki.ca_cert_pem]).expect("trust");
        let ca_file = tempfile::NamedTempFile::new().expect("tmp");
        std::fs::write(ca_file.path(), &pki.ca_cert_pem).expect("write ca");
        TestPki {
            pki,
            key,
            trust,
            ca_file,
        }
    })
}

pub fn provider() -> Provider {
    Provider {
        name: "ACME PEC S.p.A.".into(),
        domain: "pec.acme.test".into(),
    }
}

pub fn when() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 9, 30, 15)
        .single()
        .expect("time")
}

pub fn transaction(subject: &str, to: &[(&str, TipoDestinatario)]) -> Transaction {
    Transaction {
        identificativo: "opec.20261125093015.1234.1@pec.acme.test".into(),
        mittente: "mario.rossi@pec.acme.test".into(),
        destinatari: to
            .iter()
            .map(|(a, t)| Destinatario {
                address: a.to_string(),
                tipo: *t,
            })
            .collect(),
        risposte: "mario.rossi@pec.acme.test".into(),
        oggetto: subject.into(),
        msgid: Some("<abc.123@client.example>".into()),
        ricevuta: TipoRicevuta::Completa,
    }
}

pub fn original(subject_header: &str, to_header: &str) -> Vec<u8> {
    format!(
        "Received: from client (client [192.0.2.1])\r\n\tby mx.pec.acme.test; Wed, 25 Nov 2026 10:30:14 +0100\r\nFrom: Mario Rossi <mario.rossi@pec.acme.test>\r\nTo: {to_header}\r\nSubject: {subject_header}\r\nMessage-ID: <abc.123@client.example>\r\nDate: Wed, 25 Nov 2026 10:30:00 +0100\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"XYZ\"\r\n\r\n--XYZ\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nBuongiorno, in allegato il documento.\r\n--XYZ\r\nContent-Type: application/pdf; name=\"documento.pdf\"\r\nContent-Disposition: attachment; filename=\"documento.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQKJcOkw7zDtsOfCjIgMCBvYmoKPDwvTGVuZ3RoIDMgMCBSPj4Kc3RyZWFtCg==\r\n--XYZ--\r\n"
    )
    .into_bytes()
}

fn write_tmp(data: &[u8]) -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().expect("tmp");
    std::fs::write(f.path(), data).expect("write");
    f
}

fn tool(name: &str) -> Command {
    let c = Command::new(name);
    if which(name).is_none() {
        panic!("{name} is not installed: run integration/deps.sh (CI installs it)");
    }
    c
}

/// `name` in `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}

/// `openssl cms -verify` on a whole S/MIME message, with our test CA.
pub fn openssl_verify(message: &[u8], ca_pem: &Path) -> Result<(), String> {
    let f = write_tmp(message);
    let out = tool("openssl")
        .args(["cms", "-verify", "-purpose", "any", "-CAfile"])
        .arg(ca_pem)
        .arg("-in")
        .arg(f.path())
        .args(["-out", "/dev/null"])
        .output()
        .expect("run openssl");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// `xmllint --dtdvalid` of a daticert.xml against the DTD of the rules.
pub fn xmllint_valid(xml: &[u8]) -> Result<(), String> {
    let f = write_tmp(xml);
    let out = tool("xmllint")
        .args(["--noout", "--dtdvalid"])
        .arg(fixtures().join("daticert/daticert.dtd"))
        .arg(f.path())
        .output()
        .expect("run xmllint");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The decoded bytes of the one MIME part named `filename` in a message, as
/// Python's standard email package finds and decodes it (Content-Disposition
/// or Content-Type name; base64 / quoted-printable undone). Looks through
/// the multipart tree only, not inside attached messages (message/rfc822),
/// and fails unless exactly one part has that name.
pub fn python_part(message: &[u8], filename: &str) -> Vec<u8> {
    let f = write_tmp(message);
    let script = r#"
import email, email.policy, sys
m = email.message_from_bytes(open(sys.argv[1], 'rb').read(), policy=email.policy.default)
def parts(p):
    yield p
    if p.get_content_maintype() == 'multipart':
        for sub in p.iter_parts():
            yield from parts(sub)
found = [p for p in parts(m) if p.get_filename() == sys.argv[2]]
if len(found) != 1:
    sys.exit('%d parts named %s' % (len(found), sys.argv[2]))
sys.stdout.buffer.write(found[0].get_payload(decode=True))
"#;
    let out = tool("python3")
        .arg("-c")
        .arg(script)
        .arg(f.path())
        .arg(filename)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python email, part {filename}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// What Python's standard email package sees: JSON with the content
/// types of the tree and whether postacert.eml is a message/rfc822 whose
/// payload parses as a message.
pub fn python_email(message: &[u8]) -> serde_json::Value {
    let f = write_tmp(message);
    let script = r#"
import email, email.policy, json, sys
m = email.message_from_bytes(open(sys.argv[1], 'rb').read(), policy=email.policy.default)
types = [p.get_content_type() for p in m.walk()]
post = None
dati = None
for p in m.walk():
    fn = p.get_filename()
    if fn == 'postacert.eml':
        inner = p.get_payload(0) if p.is_multipart() else None
        post = {'type': p.get_content_type(), 'inner_subject': str(inner['Subject']) if inner is not None else None,
                'inner_message_id': str(inner['Message-ID']) if inner is not None else None}
    if fn == 'daticert.xml':
        dati = p.get_content_type()
print(json.dumps({'types': types, 'top': m.get_content_type(), 'subject': str(m['Subject']),
                  'postacert': post, 'daticert': dati, 'defects': len(m.defects)}))
"#;
    let out = tool("python3")
        .arg("-c")
        .arg(script)
        .arg(f.path())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "python email failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json from python")
}

/// The events of a node's message log, in the order written (the files'
/// `apertura` / `chiusura` left out), read through `log verify`'s own
/// check: a chain that does not hold fails the test.
pub fn logged_events(node_dir: &Path) -> Vec<pec_milter::log::Event> {
    use pec_milter::log::Evento;
    let mut out = Vec::new();
    pec_milter::log::verify::verify_node_with(node_dir, |r, _| {
        if !matches!(r.event.event, Evento::Apertura | Evento::Chiusura) {
            out.push(r.event);
        }
    })
    .expect("the node's chain verifies");
    out
}

/// A state store that is down.
pub struct DownStore;

#[async_trait::async_trait]
impl StateStore for DownStore {
    async fn claim(
        &self,
        _: &str,
        _: &str,
        _: i64,
        _: u64,
    ) -> Result<pec_milter::state::Claim, StateError> {
        Err(StateError::Unavailable("connection refused (test)".into()))
    }
    async fn mark_receipt_sent(
        &self,
        _: &str,
        _: &[pec_milter::state::OutboxEntry],
        _: u64,
    ) -> Result<(), StateError> {
        Err(StateError::Unavailable("down".into()))
    }
    async fn put_envelope(
        &self,
        _: &pec_milter::state::EnvelopeRecord,
        _: u64,
    ) -> Result<(), StateError> {
        Err(StateError::Unavailable("down".into()))
    }
    async fn get_envelope(
        &self,
        _: &str,
    ) -> Result<Option<pec_milter::state::EnvelopeRecord>, StateError> {
        Err(StateError::Unavailable("down".into()))
    }
    async fn ping(&self) -> Result<(), StateError> {
        Err(StateError::Unavailable("down".into()))
    }
}

// ---------------------------------------------------------------------------
// Provider B and the inputs the roles' tests share (reception, delivery,
// hostile).

/// Provider B, another PEC provider, with its own CA.
pub struct Other {
    pub pki: Pki,
    pub key: PemKey,
}

pub fn other() -> &'static Other {
    static O: std::sync::OnceLock<Other> = std::sync::OnceLock::new();
    O.get_or_init(|| {
        let pki = Pki::generate("Beta PEC S.p.A.", "pec.b.test", 365).expect("pki B");
        let key = pki.signing_key().expect("key B");
        Other { pki, key }
    })
}

pub fn entry(name: &str, cert_pem: &[u8], domains: &[&str], receipt: &str) -> ProviderEntry {
    let der = openssl::x509::X509::from_pem(cert_pem)
        .expect("cert")
        .to_der()
        .expect("der");
    ProviderEntry {
        dn: format!("providerName={name},o=postacert"),
        name: name.into(),
        unit: None,
        cert_hashes: vec![certificate_hash(&der)],
        certificates: vec![der],
        mail_receipt: receipt.into(),
        managed_domains: domains.iter().map(|d| d.to_string()).collect(),
    }
}

/// The providers' index entries of ACME (us, pec.acme.test) and B (its
/// CA's provider certificate, managing `b_domains`).
pub fn acme_and_b(b_domains: &[&str]) -> Vec<ProviderEntry> {
    vec![
        entry(
            "ACME PEC S.p.A.",
            &pki().pki.cert_pem,
            &["pec.acme.test"],
            "ricevute@pec.acme.test",
        ),
        entry(
            "Beta PEC S.p.A.",
            &other().pki.cert_pem,
            b_domains,
            "ricevute@pec.b.test",
        ),
    ]
}

/// An envelope from provider B's holder to our holder.
pub fn envelope_from_b(body: &str, key: &PemKey, from_domain: &str) -> Vec<u8> {
    let provider = Provider {
        name: "Beta PEC S.p.A.".into(),
        domain: from_domain.into(),
    };
    busta_to_mario(
        "luigi@pec.b.test",
        "<o.1@client.b>",
        "opec.b.1@pec.b.test",
        &provider,
        body,
        key,
    )
}

/// A busta di trasporto by `provider` (signed with `key`) of a message
/// from `from` to our holder mario@pec.acme.test (certified), subject
/// "Offerta", ricevuta completa.
pub fn busta_to_mario(
    from: &str,
    msgid: &str,
    id: &str,
    provider: &Provider,
    body: &str,
    key: &PemKey,
) -> Vec<u8> {
    let original = format!(
        "From: {from}\r\nTo: mario@pec.acme.test\r\nSubject: Offerta\r\nMessage-ID: {msgid}\r\n\r\n{body}\r\n"
    );
    let tx = Transaction {
        identificativo: id.into(),
        mittente: from.into(),
        destinatari: vec![Destinatario {
            address: "mario@pec.acme.test".into(),
            tipo: TipoDestinatario::Certificato,
        }],
        risposte: from.into(),
        oggetto: "Offerta".into(),
        msgid: Some(msgid.into()),
        ricevuta: TipoRicevuta::Completa,
    };
    build_busta_trasporto(
        provider,
        &tx,
        original.as_bytes(),
        Utc::now(),
        Signer {
            key,
            digest: DigestAlg::Sha256,
        },
    )
    .expect("build")
    .to_bytes()
}

/// The message as the milter holds a large one: header in memory, body in
/// a spool file (memory limit 0), which the reception point maps.
pub fn on_disk(message: &[u8]) -> Original {
    let mem = Original::from_bytes(message);
    let mut w = SpoolWriter::new(SpoolOptions {
        dir: std::env::temp_dir(),
        memory_limit: 0,
    });
    mem.body
        .for_each_chunk::<std::io::Error>(|c| w.write(c))
        .expect("spool");
    let body = w.finish().expect("spool");
    assert!(body.is_on_disk() || body.is_empty());
    Original {
        header: mem.header,
        body,
    }
}

/// Make a CRL for B's CA with `openssl ca`, revoking B's provider
/// certificate when `revoke` is true.
pub fn crl_for_b(dir: &std::path::Path, revoke: bool) -> std::path::PathBuf {
    let w = |name: &str, data: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, data).expect("write");
        p
    };
    let ca = w("ca.pem", &other().pki.ca_cert_pem);
    let key = w("ca.key", &other().pki.ca_key_pem);
    let leaf = w("leaf.pem", &other().pki.cert_pem);
    w("index.txt", b"");
    w("crlnumber", b"01\n");
    let cnf = w(
        "ca.cnf",
        format!(
            "[ ca ]\ndefault_ca = d\n[ d ]\ndatabase = {}/index.txt\ncrlnumber = {}/crlnumber\ndefault_md = sha256\ndefault_crl_days = 30\n",
            dir.display(),
            dir.display()
        )
        .as_bytes(),
    );
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (cnf, key, ca, leaf) = (
        cnf.to_string_lossy().into_owned(),
        key.to_string_lossy().into_owned(),
        ca.to_string_lossy().into_owned(),
        leaf.to_string_lossy().into_owned(),
    );
    if revoke {
        run(&[
            "ca", "-config", &cnf, "-keyfile", &key, "-cert", &ca, "-revoke", &leaf,
        ]);
    }
    let crl = dir.join("b.crl.pem").to_string_lossy().into_owned();
    run(&[
        "ca", "-config", &cnf, "-keyfile", &key, "-cert", &ca, "-gencrl", "-out", &crl,
    ]);
    dir.join("b.crl.pem")
}

/// `env` with its signature part removed: the multipart/signed keeps only
/// its signed content.
pub fn without_signature(env: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(env);
    let at = text.find("boundary=\"").expect("boundary") + "boundary=\"".len();
    let boundary = &text[at..at + text[at..].find('"').expect("closing quote")];
    // the delimiter before the last part, the signature
    let delim = format!("\r\n--{boundary}\r\n");
    let last = text.rfind(&delim).expect("the signature part's delimiter");
    let mut out = env[..last].to_vec();
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let msg = read(&out).expect("read");
    let signed = msg.signed.expect("still multipart/signed");
    assert!(
        signed.p7s.is_none(),
        "signature part left: {:?}",
        signed.problem
    );
    assert!(msg.postacert.is_some(), "the signed content is whole");
    out
}

// ---------------------------------------------------------------------------
// A daemon's log file (the tests that run the binary).

/// How many times `what` is in the file `log` (0 when it cannot be read).
pub fn log_has(log: &Path, what: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .matches(what)
        .count()
}

/// Wait until `what` is in `log` at least `n` times, at most `within`
/// (polled every 25 ms); panics with the log otherwise.
pub fn wait_log(log: &Path, what: &str, n: usize, within: std::time::Duration) {
    let started = std::time::Instant::now();
    while log_has(log, what) < n {
        if started.elapsed() >= within {
            panic!(
                "{what:?} not {n} times in the log:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
}

// ---------------------------------------------------------------------------
// The daemon's configuration and the daemon itself (the tests that run it:
// crl_daemon, reload, signed_index).

/// `[holders]` of a [`DaemonConfig`].
#[derive(Clone)]
pub struct Holders {
    pub default_class: String,
    pub upa: Vec<String>,
    pub upr: Vec<String>,
}

/// A configuration file of the daemon, every path of it under `dir`: the
/// demo key and certificate (`init_demo`), state, quarantine, spool,
/// outbox, message log (node `mx`); clamd and the timers off, no delivery
/// listener, 2 milter workers. What the tests vary is a field; a section
/// or key whose field is `None` (or empty) is not written, for the
/// daemon's default.
#[derive(Clone)]
pub struct DaemonConfig {
    pub dir: PathBuf,
    /// `[milter] listen`.
    pub listen: String,
    /// `[provider] name`.
    pub provider: String,
    /// `[provider] domains`.
    pub domains: Option<Vec<String>>,
    /// `[signing] key` and `init_demo` (`cert` is the demo one).
    pub key: PathBuf,
    pub init_demo: bool,
    /// `[reinjection] address` (on 127.0.0.1) and `timeout`.
    pub reinjection_port: u16,
    pub reinjection_timeout: Option<String>,
    /// `[recipients] certified_domains`.
    pub certified_domains: Vec<String>,
    pub holders: Option<Holders>,
    /// `[index] ldif` (source `ldif`), `signed_by` and `refresh`.
    pub index: Option<PathBuf>,
    pub signed_by: Vec<PathBuf>,
    pub index_refresh: Option<String>,
    /// `[reception] trust`; with `crl_cache`, `fetch_crls = true` too.
    pub trust: Vec<PathBuf>,
    pub crl_cache: Option<PathBuf>,
    /// `[metrics] listen`.
    pub metrics: Option<String>,
    /// Appended as is, at the end.
    pub extra: String,
}

/// `["a", "b"]`.
fn toml_list<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let items: Vec<String> = items.into_iter().map(|i| format!("\"{i}\"")).collect();
    format!("[{}]", items.join(", "))
}

impl DaemonConfig {
    /// ACME (`pec.acme.test`), the milter on a port of the system's
    /// choice, reinjection to 127.0.0.1:9 (nothing is sent there).
    pub fn new(dir: &Path) -> DaemonConfig {
        DaemonConfig {
            dir: dir.to_path_buf(),
            listen: "inet:127.0.0.1:0".into(),
            provider: "ACME PEC S.p.A.".into(),
            domains: Some(vec!["pec.acme.test".into()]),
            key: dir.join("demo/provider.key"),
            init_demo: true,
            reinjection_port: 9,
            reinjection_timeout: None,
            certified_domains: Vec::new(),
            holders: None,
            index: None,
            signed_by: Vec::new(),
            index_refresh: None,
            trust: Vec::new(),
            crl_cache: None,
            metrics: None,
            extra: String::new(),
        }
    }

    pub fn to_toml(&self) -> String {
        let d = self.dir.display();
        let (listen, provider, key) = (&self.listen, &self.provider, self.key.display());
        let mut t = format!("[milter]\nlisten = \"{listen}\"\nworkers = 2\n\n");
        t += &format!("[provider]\nname = \"{provider}\"\ndomain = \"pec.acme.test\"\n");
        if let Some(domains) = &self.domains {
            t += &format!("domains = {}\n", toml_list(domains));
        }
        t += &format!("\n[signing]\nkey = \"{key}\"\ncert = \"{d}/demo/provider.crt\"\n");
        t += &format!("init_demo = {}\n\n[reinjection]\n", self.init_demo);
        t += &format!("address = \"127.0.0.1:{}\"\n", self.reinjection_port);
        if let Some(timeout) = &self.reinjection_timeout {
            t += &format!("timeout = \"{timeout}\"\n");
        }
        t += &format!("\n[state]\npath = \"{d}/state\"\n\n[clamd]\nenabled = false\n\n");
        t += &format!("[quarantine]\ndir = \"{d}/quarantine\"\n\n[spool]\ndir = \"{d}/spool\"\n");
        if !self.certified_domains.is_empty() {
            let domains = toml_list(&self.certified_domains);
            t += &format!("\n[recipients]\ncertified_domains = {domains}\n");
        }
        if let Some(h) = &self.holders {
            t += &format!("\n[holders]\ndefault_class = \"{}\"\n", h.default_class);
            t += &format!("upa = {}\nupr = {}\n", toml_list(&h.upa), toml_list(&h.upr));
        }
        if let Some(ldif) = &self.index {
            t += &format!(
                "\n[index]\nsource = \"ldif\"\nldif = \"{}\"\n",
                ldif.display()
            );
            if !self.signed_by.is_empty() {
                let anchors = toml_list(self.signed_by.iter().map(|p| p.display()));
                t += &format!("signed_by = {anchors}\n");
            }
            if let Some(refresh) = &self.index_refresh {
                t += &format!("refresh = \"{refresh}\"\n");
            }
        }
        if !self.trust.is_empty() {
            let trust = toml_list(self.trust.iter().map(|p| p.display()));
            t += &format!("\n[reception]\ntrust = {trust}\n");
            if let Some(cache) = &self.crl_cache {
                t += &format!("fetch_crls = true\ncrl_cache = \"{}\"\n", cache.display());
            }
        }
        t += &format!("\n[delivery]\nlisten = \"\"\noutbox = \"{d}/outbox\"\n\n");
        t += &format!("[timers]\nenabled = false\n\n[log]\ndir = \"{d}/log\"\nnode = \"mx\"\n");
        if let Some(listen) = &self.metrics {
            t += &format!("\n[metrics]\nlisten = \"{listen}\"\n");
        }
        t + &self.extra
    }

    /// Writes `dir/pec-milter.toml`: its path.
    pub fn write(&self) -> PathBuf {
        let path = self.dir.join("pec-milter.toml");
        std::fs::write(&path, self.to_toml()).expect("write config");
        path
    }
}

/// The `pec-milter` binary running a configuration file
/// (`PEC_MILTER_LOG=info`, its log on stderr to a file). Killed if
/// dropped running (a test that failed).
pub struct DaemonProcess {
    child: std::process::Child,
}

impl DaemonProcess {
    /// `pec-milter run --config config`, its stderr to `log`; returns once
    /// "pec-milter ready" is in the log, waiting at most `within`.
    pub fn start(config: &Path, log: &Path, within: std::time::Duration) -> DaemonProcess {
        let child = Command::new(env!("CARGO_BIN_EXE_pec-milter"))
            .args(["run", "--config"])
            .arg(config)
            .env("PEC_MILTER_LOG", "info")
            .env("NO_COLOR", "1")
            .stderr(std::fs::File::create(log).expect("log"))
            .spawn()
            .expect("pec-milter run");
        let daemon = DaemonProcess { child };
        wait_log(log, "pec-milter ready", 1, within);
        daemon
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }

    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("pid");
        rustix::process::kill_process(pid, signal).expect("signal the daemon");
    }

    /// SIGTERM, then its exit status; killed (and the test failed) if it
    /// has not ended within 10 s.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal(rustix::process::Signal::TERM);
        for _ in 0..400 {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("the daemon did not stop on SIGTERM");
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The daemon started in-process from a configuration file
/// (`daemon::Daemon`), serving in a task; the test's log at `info` (or
/// `PEC_MILTER_LOG`).
pub struct InProcessDaemon {
    /// The milter's `host:port`.
    pub addr: String,
    pub reloader: std::sync::Arc<pec_milter::reload::Reloader>,
    stop: tokio::sync::oneshot::Sender<()>,
    served: tokio::task::JoinHandle<()>,
}

impl InProcessDaemon {
    pub async fn start(config: &Path) -> Result<InProcessDaemon, pec_milter::daemon::DaemonError> {
        test_log();
        let cfg = pec_milter::config::Config::load(config).expect("config");
        let daemon = pec_milter::daemon::Daemon::start(config, cfg).await?;
        let addr = daemon
            .milter_address()
            .trim_start_matches("inet:")
            .to_string();
        let reloader = daemon.reloader();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(async move {
            daemon.serve(rx).await.expect("serve");
        });
        Ok(InProcessDaemon {
            addr,
            reloader,
            stop,
            served,
        })
    }

    /// Asks it to stop and waits for it, at most 20 s.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(std::time::Duration::from_secs(20), self.served).await;
    }
}

/// The daemon's log lines, shown with a failing test's output
/// (`PEC_MILTER_LOG` filters them; `info` by default). Once per test
/// binary; later calls do nothing.
pub fn test_log() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PEC_MILTER_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
}
