//! Hostile input (issue 16): every input of tests/fixtures/hostile/ (and
//! the ones generated here: huge lines, multipart bombs, deep nesting,
//! signed envelopes made with the test PKIs) goes through the role that
//! meets it, and the outcome the rules define is asserted there:
//!
//! - reception point: ordinary or broken mail becomes a signed busta di
//!   anomalia; anything that claims to be PEC and fails a check becomes one
//!   with `X-VerificaSicurezza: errore`; never a presa in carico;
//! - delivery point: the same messages are stored as they are (ordinary)
//!   or as a signed anomaly (claims PEC), never receipted;
//! - access point: a holder's submission with a formal problem gets the
//!   signed non-accettazione (the original not sent, not carried); a
//!   correct one is enveloped and signed, and PEC marker fields the holder
//!   wrote never leave.
//!
//! Every case names its input on failure. The list, with the outcome of
//! each, is tests/fixtures/hostile/README.md.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use chrono::Utc;
use common::*;
use pec_milter::config::{HolderClass, HoldersConfig, OrdinaryMail};
use pec_milter::crypto::DigestAlg;
use pec_milter::crypto::pem::PemKey;
use pec_milter::crypto::verify::{SignatureStatus, TrustStore, VerifyAt};
use pec_milter::index::{IndexSource, ProviderIndex, ldif};
use pec_milter::lmtp::maildir::Maildir;
use pec_milter::log::writer::{FileLog, LogOptions};
use pec_milter::pec::build::{Emission, Provider, Ricevuta, Signer, build_ricevuta};
use pec_milter::pec::facts::Facts;
use pec_milter::pec::inspect::{Inspection, inspect};
use pec_milter::pec::mime::{base64_lines, canonicalize_crlf, split_header_body};
use pec_milter::pec::reader::read;
use pec_milter::pec::{TipoDestinatario, TipoRicevuta};
use pec_milter::roles::access::AccessPoint;
use pec_milter::roles::delivery::DeliveryPoint;
use pec_milter::roles::reception::ReceptionPoint;
use pec_milter::roles::{
    Inbound, InjectError, Injector, Original, Outcome, ScanError, Scanner, StaticDirectory,
    Submission, Verdict,
};
use pec_milter::spool::{SpoolOptions, SpoolWriter};
use pec_milter::state::embedded::EmbeddedStore;
use pec_milter::state::{EnvelopeRecord, RecipientState, RecipientStatus, StateStore};

// ---------------------------------------------------------------- fakes

struct FakeScanner;

#[async_trait::async_trait]
impl Scanner for FakeScanner {
    async fn scan(&self, message: &[u8]) -> Result<Verdict, ScanError> {
        let needle = b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE";
        Ok(if message.windows(needle.len()).any(|w| w == needle) {
            Verdict::Infected("Eicar-Test-Signature".into())
        } else {
            Verdict::Clean
        })
    }
}

type Injected = (String, Vec<String>, Vec<u8>);

/// Records every injection (receipts and notices that leave).
#[derive(Default)]
struct Recorder(Mutex<Vec<Injected>>);

#[async_trait::async_trait]
impl Injector for Recorder {
    async fn inject(&self, from: &str, to: &[String], message: &[u8]) -> Result<(), InjectError> {
        self.0.lock().map_err(|e| e.to_string())?.push((
            from.into(),
            to.to_vec(),
            message.to_vec(),
        ));
        Ok(())
    }
}

impl Recorder {
    fn all(&self) -> Vec<Injected> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("hostile").join(name))
        .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn log_at(dir: &std::path::Path, node: &str) -> Arc<FileLog> {
    Arc::new(
        FileLog::open(&LogOptions {
            dir: dir.join("log"),
            node: node.into(),
        })
        .expect("message log"),
    )
}

/// The providers' index of these tests (an LDIF file in `dir`, loaded):
/// ACME (us, pec.acme.test) and B (pec.b.test).
async fn index(dir: &std::path::Path) -> Arc<ProviderIndex> {
    let entries = acme_and_b(&["pec.b.test"]);
    let path = dir.join("igpec.ldif");
    std::fs::write(&path, ldif::write(&entries)).expect("write ldif");
    let index = Arc::new(ProviderIndex::new(IndexSource::Ldif(path)));
    index.refresh().await.expect("index loads");
    index
}

/// Our CA and B's.
fn trust() -> TrustStore {
    let mut t = pki().trust.clone();
    t.extend(&TrustStore::from_pem_bytes(&[&other().pki.ca_cert_pem]).expect("B's CA"));
    t
}

// ---------------------------------------------------------------- reception point

struct Rx {
    rp: ReceptionPoint,
    injected: Arc<Recorder>,
    state: Arc<dyn StateStore>,
    _dir: tempfile::TempDir,
}

async fn rx() -> Rx {
    let dir = tempfile::tempdir().expect("tmp");
    let state: Arc<dyn StateStore> =
        Arc::new(EmbeddedStore::open(&dir.path().join("state")).expect("state"));
    let injected = Arc::new(Recorder::default());
    let rp = ReceptionPoint {
        provider: provider(),
        key: Arc::new(pki().pki.signing_key().expect("key")),
        digest: DigestAlg::Sha256,
        trust: trust(),
        verify_at: VerifyAt::Now,
        index: index(dir.path()).await,
        state: state.clone(),
        scanner: Some(Arc::new(FakeScanner)),
        injector: injected.clone(),
        log: log_at(dir.path(), "rx"),
        ordinary_mail: OrdinaryMail::Anomaly,
        quarantine_dir: dir.path().join("quarantine"),
        retention_secs: 3600,
        spool: SpoolOptions {
            dir: dir.path().join("spool"),
            memory_limit: 4096,
        },
    };
    Rx {
        rp,
        injected,
        state,
        _dir: dir,
    }
}

fn inbound(message: &[u8]) -> Inbound {
    Inbound {
        queue_id: Some("HOSTILE".into()),
        mail_from: "posta-certificata@pec.b.test".into(),
        rcpts: vec!["mario@pec.acme.test".into()],
        message: on_disk(message),
    }
}

/// What the rules make of an inbound message.
#[derive(Debug, Clone, Copy)]
enum RxWant {
    /// Ordinary (or unreadable) mail: a busta di anomalia without
    /// `X-VerificaSicurezza`, its text naming `why`.
    Anomaly(&'static str),
    /// Claims to be PEC and fails a check: a busta di anomalia with
    /// `X-VerificaSicurezza: errore`, its text naming `why`.
    Security(&'static str),
}

/// The readable text of a busta di anomalia (its first text part).
fn anomaly_text(msg: &[u8]) -> String {
    let parsed = mail_parser::MessageParser::default()
        .parse(msg)
        .expect("parses");
    parsed
        .body_text(0)
        .map(|t| t.into_owned())
        .unwrap_or_default()
}

/// An anomaly envelope of ours: signed by us and valid, kind errore,
/// `ANOMALIA MESSAGGIO:` subject, `X-VerificaSicurezza` as `security`,
/// the reason in its text; carrying what arrived.
fn assert_our_anomaly(name: &str, out: &[u8], security: bool, why: &str) -> Inspection {
    let i = inspect(out, &pki().trust, VerifyAt::Now)
        .unwrap_or_else(|e| panic!("{name}: the anomaly envelope does not read: {e}"));
    assert_eq!(i.kind, "errore", "{name}: a busta di anomalia");
    assert_eq!(
        i.signature.status,
        SignatureStatus::Valid,
        "{name}: signed by us: {:?}",
        i.signature.reason
    );
    assert_eq!(
        i.verifica_sicurezza.as_deref(),
        security.then_some("errore"),
        "{name}: X-VerificaSicurezza"
    );
    assert!(
        i.subject
            .as_deref()
            .unwrap_or_default()
            .starts_with("ANOMALIA MESSAGGIO:"),
        "{name}: subject {:?}",
        i.subject
    );
    assert!(
        i.daticert.is_none(),
        "{name}: an anomaly envelope carries no daticert"
    );
    let text = anomaly_text(out);
    assert!(text.contains(why), "{name}: {why:?} not in {text:?}");
    i
}

/// Runs `msg` through a fresh reception point and asserts `want`: never a
/// presa in carico (nothing injected), nothing recorded as an envelope of
/// ours.
async fn rx_expect(name: &str, msg: &[u8], want: RxWant) {
    let r = rx().await;
    rx_expect_on(&r, name, &inbound(msg), msg, want).await;
}

async fn rx_expect_on(r: &Rx, name: &str, ib: &Inbound, msg: &[u8], want: RxWant) {
    let o = r.rp.process(ib, Utc::now()).await;
    let Outcome::Rewrite {
        message,
        keep_message_id,
        ..
    } = &o
    else {
        panic!("{name}: expected a busta di anomalia, got {o:?}");
    };
    assert!(keep_message_id, "{name}: the anomaly keeps the Message-ID");
    let out = message.to_bytes().expect("envelope bytes");
    let (security, why) = match want {
        RxWant::Anomaly(w) => (false, w),
        RxWant::Security(w) => (true, w),
    };
    assert_our_anomaly(name, &out, security, why);
    // the message that arrived is carried whole
    let carried = read(&out)
        .expect("read")
        .postacert
        .unwrap_or_else(|| panic!("{name}: the received message is not carried"))
        .into_owned();
    let whole = ib.message.to_vec().expect("original");
    let want_carried = canonicalize_crlf(&whole);
    assert!(
        carried.trim_ascii_end() == want_carried.trim_ascii_end()
            || carried.trim_ascii_end() == msg.trim_ascii_end(),
        "{name}: the carried message differs from what arrived ({} bytes vs {})",
        carried.len(),
        want_carried.len()
    );
    assert!(
        r.injected.all().is_empty(),
        "{name}: no presa in carico, no notice: {:?}",
        r.injected.all().iter().map(|m| &m.1).collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------- delivery point

struct Dx {
    dp: DeliveryPoint,
    injected: Arc<Recorder>,
    dir: tempfile::TempDir,
}

/// Our delivery point (pec.acme.test) over a Maildir with mario's box.
async fn dx() -> Dx {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::create_dir_all(dir.path().join("mail/pec.acme.test/mario")).expect("mailbox");
    let injected = Arc::new(Recorder::default());
    let dp = DeliveryPoint {
        provider: provider(),
        key: Arc::new(pki().pki.signing_key().expect("key")),
        digest: DigestAlg::Sha256,
        store: Arc::new(Maildir::new(dir.path().join("mail"), None)),
        state: Arc::new(EmbeddedStore::open(&dir.path().join("state")).expect("state")),
        injector: injected.clone(),
        log: log_at(dir.path(), "dp"),
        outbox: dir.path().join("outbox"),
        retention_secs: 3600,
        spool: SpoolOptions {
            dir: dir.path().join("spool"),
            memory_limit: 4096,
        },
        trust: trust(),
        verify_at: VerifyAt::Now,
        index: Some(index(dir.path()).await),
        metrics: Default::default(),
    };
    Dx { dp, injected, dir }
}

fn stored(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let Ok(rd) = std::fs::read_dir(dir.join("mail/pec.acme.test/mario/new")) else {
        return Vec::new();
    };
    rd.flatten()
        .map(|e| std::fs::read(e.path()).expect("read"))
        .collect()
}

#[derive(Debug, Clone, Copy)]
enum DxWant {
    /// No PEC marker fields: stored byte for byte, no receipt.
    AsIs,
    /// Claims PEC, fails a check: stored as a signed busta di anomalia
    /// with `X-VerificaSicurezza: errore` naming `why`, no receipt.
    Security(&'static str),
}

async fn dx_expect(name: &str, msg: &[u8], want: DxWant) {
    let d = dx().await;
    let replies =
        d.dp.handle(
            "posta-certificata@pec.b.test",
            &["mario@pec.acme.test".to_string()],
            msg,
        )
        .await;
    assert_eq!(replies.len(), 1, "{name}");
    assert!(replies[0].starts_with("250"), "{name}: {replies:?}");
    let got = stored(d.dir.path());
    assert_eq!(got.len(), 1, "{name}: one message stored");
    match want {
        DxWant::AsIs => assert!(got[0] == msg, "{name}: stored as it arrived"),
        DxWant::Security(why) => {
            assert_our_anomaly(name, &got[0], true, why);
        }
    }
    assert!(
        d.injected.all().is_empty(),
        "{name}: no receipt for what was not verified"
    );
    assert!(
        std::fs::read_dir(d.dir.path().join("outbox"))
            .map(|e| e.count() == 0)
            .unwrap_or(true),
        "{name}: nothing waits in the outbox"
    );
}

// ---------------------------------------------------------------- access point

struct Ax {
    ap: AccessPoint,
    injected: Arc<Recorder>,
    _dir: tempfile::TempDir,
}

async fn ax() -> Ax {
    let dir = tempfile::tempdir().expect("tmp");
    let injected = Arc::new(Recorder::default());
    let ap = AccessPoint {
        provider: provider(),
        domains: vec!["pec.acme.test".into()],
        key: Arc::new(pki().pki.signing_key().expect("key")),
        digest: DigestAlg::Sha256,
        state: Arc::new(EmbeddedStore::open(&dir.path().join("state")).expect("state")),
        scanner: Some(Arc::new(FakeScanner)),
        injector: injected.clone(),
        directory: Arc::new(StaticDirectory::new(&[
            "pec.other.test".into(),
            "pec.acme.test".into(),
        ])),
        holders: HoldersConfig {
            default_class: HolderClass::Upa1,
            ..HoldersConfig::default()
        },
        logins: None,
        log: log_at(dir.path(), "ap"),
        max_recipients: 50,
        max_product: 100 << 20,
        quarantine_dir: dir.path().join("quarantine"),
        retention_secs: 3600,
        spool: SpoolOptions {
            dir: dir.path().join("spool"),
            memory_limit: 64 * 1024,
        },
    };
    Ax {
        ap,
        injected,
        _dir: dir,
    }
}

#[derive(Debug, Clone, Copy)]
enum AxWant {
    /// Formally correct: the signed busta di trasporto, the accettazione
    /// to the holder, no PEC marker field of the holder's in what leaves.
    Accepted,
    /// A formal problem: the signed non-accettazione naming `why`, without
    /// the original; the original is not sent.
    NotAccepted(&'static str),
}

/// The marker fields (and `X-Mittente`) in a header block.
fn markers(header: &[u8]) -> Vec<String> {
    Facts::read(header).markers
}

async fn ax_expect(name: &str, msg: &[u8], rcpts: &[&str], want: AxWant) {
    let a = ax().await;
    let sub = Submission {
        queue_id: Some("HOSTILE".into()),
        auth_user: "mario@pec.acme.test".into(),
        mail_from: "mario@pec.acme.test".into(),
        rcpts: rcpts.iter().map(|r| r.to_string()).collect(),
        message: Original::from_bytes(msg),
    };
    let o = a.ap.process(&sub, Utc::now()).await;
    let sent = a.injected.all();
    assert_eq!(sent.len(), 1, "{name}: one receipt to the holder ({o:?})");
    assert_eq!(sent[0].1, vec!["mario@pec.acme.test".to_string()], "{name}");
    let receipt = inspect(&sent[0].2, &pki().trust, VerifyAt::Now).expect("receipt reads");
    assert_eq!(
        receipt.signature.status,
        SignatureStatus::Valid,
        "{name}: receipt signed"
    );
    // the receipt's header is ours alone: no line over 998 characters
    // (RFC 5322 2.1.1), whatever the holder's Subject was
    let (receipt_head, _) = split_header_body(&sent[0].2);
    let longest = receipt_head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l).len())
        .max()
        .unwrap_or(0);
    assert!(
        longest <= 998,
        "{name}: a receipt header line of {longest} characters"
    );
    match want {
        AxWant::Accepted => {
            let Outcome::Rewrite { message, .. } = &o else {
                panic!("{name}: expected the busta di trasporto, got {o:?}");
            };
            assert_eq!(receipt.kind, "accettazione", "{name}");
            let env = message.to_bytes().expect("envelope");
            let i = inspect(&env, &pki().trust, VerifyAt::Now).expect("envelope reads");
            assert_eq!(i.kind, "posta-certificata", "{name}");
            assert_eq!(i.signature.status, SignatureStatus::Valid, "{name}");
            // the provider's marker fields, once each; none of the holder's
            let (head, _) = split_header_body(&env);
            let mut got = markers(head);
            got.sort();
            let mut want = vec!["X-Trasporto".to_string()];
            if i.riferimento_message_id.is_some() {
                want.insert(0, "X-Riferimento-Message-ID".into());
            }
            assert_eq!(got, want, "{name}: the envelope's marker fields");
            let head_text = String::from_utf8_lossy(head);
            for forged in [
                "X-Trasporto: errore",
                "X-Ricevuta",
                "X-VerificaSicurezza",
                "X-Mittente",
                "forged@",
            ] {
                assert!(
                    !head_text.contains(forged),
                    "{name}: {forged} from the holder in the envelope header"
                );
            }
            let post = read(&env)
                .expect("read")
                .postacert
                .expect("postacert")
                .into_owned();
            let (post_head, _) = split_header_body(&post);
            assert!(
                markers(post_head)
                    .iter()
                    .all(|m| m.eq_ignore_ascii_case("X-Riferimento-Message-ID")),
                "{name}: the carried original keeps a marker field: {:?}",
                markers(post_head)
            );
            let post_text = String::from_utf8_lossy(post_head);
            for forged in [
                "X-Trasporto",
                "X-Ricevuta",
                "X-VerificaSicurezza",
                "X-Mittente",
                "forged@",
            ] {
                assert!(
                    !post_text.contains(forged),
                    "{name}: {forged} from the holder in the carried original"
                );
            }
        }
        AxWant::NotAccepted(why) => {
            let Outcome::Discard { reason, .. } = &o else {
                panic!("{name}: expected a non-accettazione, got {o:?}");
            };
            assert!(reason.contains(why), "{name}: {why:?} not in {reason:?}");
            assert_eq!(receipt.kind, "non-accettazione", "{name}");
            assert!(
                receipt.postacert.is_none(),
                "{name}: a non-accettazione never carries the original"
            );
        }
    }
}

// ---------------------------------------------------------------- signed inputs

/// The B envelope every signed input starts from.
fn b_envelope() -> Vec<u8> {
    envelope_from_b("ciao", &other().key, "pec.b.test")
}

/// `env` (a multipart/signed by anyone) with its signed content changed by
/// `edit` and signed again with `key`: a valid signature over new content.
fn resign(env: &[u8], key: &PemKey, edit: impl Fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
    let text = String::from_utf8_lossy(env).into_owned();
    let at = text.find("boundary=\"").expect("boundary") + "boundary=\"".len();
    let boundary = &text[at..at + text[at..].find('"').expect("quote")];
    let open = format!("--{boundary}\r\n");
    let start = text.find(&open).expect("first delimiter") + open.len();
    let end = text
        .rfind(&format!("\r\n--{boundary}\r\n"))
        .expect("signature delimiter");
    let content = edit(&env[start..end]);
    let p7s = pec_milter::crypto::cms_sign::sign_content(
        key,
        DigestAlg::Sha256,
        &content,
        SystemTime::now(),
    )
    .expect("sign");
    let mut out = env[..start].to_vec();
    out.extend_from_slice(&content);
    out.extend_from_slice(
        format!(
            "\r\n--{boundary}\r\nContent-Type: application/x-pkcs7-signature; name=\"smime.p7s\"\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"smime.p7s\"\r\n\r\n{}--{boundary}--\r\n",
            base64_lines(&p7s)
        )
        .as_bytes(),
    );
    out
}

/// The signed content with its daticert.xml replaced by `xml`.
fn with_daticert(content: &[u8], xml: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(content).into_owned();
    let part = text
        .find("filename=\"daticert.xml\"")
        .expect("daticert part");
    let body = part + text[part..].find("\r\n\r\n").expect("part body") + 4;
    let end = body + text[body..].find("\r\n--").expect("next delimiter");
    let mut out = content[..body].to_vec();
    out.extend_from_slice(base64_lines(xml).trim_end().as_bytes());
    out.extend_from_slice(&content[end..]);
    out
}

/// B's envelope with `xml` as its daticert.xml, validly signed by B.
fn b_envelope_with_daticert(xml: &[u8]) -> Vec<u8> {
    resign(&b_envelope(), &other().key, |c| with_daticert(c, xml))
}

/// A receipt B signs about `pec_id` (ours or not).
fn b_receipt(pec_id: &str, ric: Ricevuta<'_>, message_id: &str) -> Vec<u8> {
    let tx = pec_milter::pec::build::Transaction {
        identificativo: pec_id.into(),
        ..transaction(
            "Fattura",
            &[("anna@pec.b.test", TipoDestinatario::Certificato)],
        )
    };
    build_ricevuta(
        &Provider {
            name: "Beta PEC S.p.A.".into(),
            domain: "pec.b.test".into(),
        },
        &tx,
        &ric,
        &Emission {
            time: Utc::now(),
            message_id: message_id.into(),
        },
        Signer {
            key: &other().key,
            digest: DigestAlg::Sha256,
        },
    )
    .expect("build")
    .to_bytes()
}

// ---------------------------------------------------------------- generated inputs

/// A plain message from outside with `header` extra fields and `body`.
fn plain_with(header: &str, body: &[u8]) -> Vec<u8> {
    let mut m = format!(
        "From: stranger@example.org\r\nTo: mario@pec.acme.test\r\nMessage-ID: <gen@example.org>\r\n{header}"
    )
    .into_bytes();
    m.extend_from_slice(b"\r\n");
    m.extend_from_slice(body);
    m
}

/// A holder's message (From mario, To anna) with `header` extra fields.
fn holder_with(header: &str, body: &[u8]) -> Vec<u8> {
    let mut m = format!(
        "From: Mario Rossi <mario@pec.acme.test>\r\nTo: anna@pec.other.test\r\nMessage-ID: <gen@client.example>\r\n{header}"
    )
    .into_bytes();
    m.extend_from_slice(b"\r\n");
    m.extend_from_slice(body);
    m
}

/// `levels` multiparts each inside the previous one, each with its own
/// boundary (or all with the same one when `same`).
fn deep_multipart(levels: usize, same: bool) -> (String, Vec<u8>) {
    let b = |i: usize| {
        if same {
            "B".to_string()
        } else {
            format!("b{i}")
        }
    };
    let header = format!(
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"{}\"\r\n",
        b(0)
    );
    let mut body = Vec::new();
    for i in 1..levels {
        body.extend_from_slice(
            format!(
                "--{}\r\nContent-Type: multipart/mixed; boundary=\"{}\"\r\n\r\n",
                b(i - 1),
                b(i)
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{}\r\nContent-Type: text/plain\r\n\r\nbottom\r\n",
            b(levels - 1)
        )
        .as_bytes(),
    );
    for i in (0..levels).rev() {
        body.extend_from_slice(format!("--{}--\r\n", b(i)).as_bytes());
    }
    (header, body)
}

/// One multipart with `n` parts.
fn wide_multipart(n: usize) -> (String, Vec<u8>) {
    let header =
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"W\"\r\n".to_string();
    let mut body = Vec::with_capacity(n * 48);
    for i in 0..n {
        body.extend_from_slice(
            format!("--W\r\nContent-Type: text/plain; name=\"p{i}.txt\"\r\n\r\nx\r\n").as_bytes(),
        );
    }
    body.extend_from_slice(b"--W--\r\n");
    (header, body)
}

const ONE_MB: usize = 1 << 20;

// ================================================================ the corpus

/// Ordinary and broken mail from outside (fixtures): reception wraps it
/// in a busta di anomalia (no X-VerificaSicurezza), delivery stores it as
/// it is; neither receipts it.
#[tokio::test]
async fn ordinary_and_broken_inbound_mail() {
    let cases: &[(&str, &str)] = &[
        ("in-mime-unclosed-boundary.eml", "posta ordinaria"),
        ("in-mime-multipart-without-boundary.eml", "posta ordinaria"),
        ("in-mime-bad-base64.eml", "posta ordinaria"),
        ("in-mime-boundary-200-chars.eml", "posta ordinaria"),
        ("in-mime-header-folded-forever.eml", "posta ordinaria"),
        ("in-nul-bytes.eml", "posta ordinaria"),
        ("in-8bit-junk-headers.eml", "posta ordinaria"),
        ("in-non-utf8-subject-latin1.eml", "posta ordinaria"),
        ("in-non-utf8-from-address.eml", "posta ordinaria"),
        ("in-bad-encoded-words.eml", "posta ordinaria"),
        ("in-empty-header-values.eml", "posta ordinaria"),
        ("in-forged-x-ricevuta-unknown-value.eml", "posta ordinaria"),
        ("in-no-header-fields.eml", "non leggibile"),
        ("in-nul-in-from-address.eml", "posta ordinaria"),
    ];
    for (name, why) in cases {
        let msg = fixture(name);
        rx_expect(name, &msg, RxWant::Anomaly(why)).await;
        dx_expect(name, &msg, DxWant::AsIs).await;
    }
}

/// Marker fields forged from outside, unsigned or with a broken signature:
/// claims PEC, fails the signature check: anomaly with
/// X-VerificaSicurezza: errore at both points, no receipt, no record.
#[tokio::test]
async fn forged_marker_fields_from_outside() {
    let cases = [
        "in-forged-x-trasporto-unsigned.eml",
        "in-forged-x-ricevuta-unsigned.eml",
        "in-forged-x-trasporto-errore.eml",
        "in-forged-signed-garbage-p7s.eml",
        "in-forged-signed-without-boundary.eml",
        "in-forged-x-trasporto-nul-from.eml",
    ];
    for name in cases {
        let msg = fixture(name);
        rx_expect(name, &msg, RxWant::Security("firma non valida")).await;
        dx_expect(name, &msg, DxWant::Security("firma non valida")).await;
    }
    // the forged avvenuta-consegna about a real envelope of ours changes
    // nothing in its record
    let r = rx().await;
    let rec = our_record();
    r.state.put_envelope(&rec, 3600).await.expect("put");
    let name = "in-forged-x-ricevuta-unsigned.eml";
    let msg = fixture(name);
    rx_expect_on(
        &r,
        name,
        &inbound(&msg),
        &msg,
        RxWant::Security("firma non valida"),
    )
    .await;
    assert_eq!(
        record(&r, &rec.pec_id).await,
        rec,
        "{name}: record unchanged"
    );
}

/// Holders' submissions (fixtures): formal problems give the
/// non-accettazione; forged marker fields are removed and the message is
/// enveloped; junk that breaks no formal rule is enveloped and signed.
#[tokio::test]
async fn holder_submissions() {
    let to = &["anna@pec.other.test"][..];
    let cases: &[(&str, &[&str], AxWant)] = &[
        ("holder-forged-x-trasporto.eml", to, AxWant::Accepted),
        ("holder-forged-x-ricevuta.eml", to, AxWant::Accepted),
        (
            "holder-no-from.eml",
            to,
            AxWant::NotAccepted("manca il campo From:"),
        ),
        (
            "holder-two-from.eml",
            to,
            AxWant::NotAccepted("manca il campo From:"),
        ),
        (
            "holder-no-to.eml",
            to,
            AxWant::NotAccepted("manca il campo To:"),
        ),
        ("holder-bcc.eml", to, AxWant::NotAccepted("Bcc:")),
        (
            "holder-from-not-smtp-sender.eml",
            to,
            AxWant::NotAccepted("non corrisponde al mittente SMTP"),
        ),
        (
            "holder-rcpt-not-in-to-cc.eml",
            &["anna@pec.other.test", "hidden@pec.other.test"],
            AxWant::NotAccepted("non è presente nei campi To: o Cc:"),
        ),
        ("holder-non-utf8-subject.eml", to, AxWant::Accepted),
        (
            "holder-non-utf8-from-address.eml",
            to,
            AxWant::NotAccepted("non corrisponde al mittente SMTP"),
        ),
        ("holder-non-utf8-to-address.eml", to, AxWant::Accepted),
        ("holder-nul-in-message-id.eml", to, AxWant::Accepted),
        ("holder-nul-and-8bit-body.eml", to, AxWant::Accepted),
        ("holder-mime-unclosed-boundary.eml", to, AxWant::Accepted),
    ];
    for (name, rcpts, want) in cases {
        ax_expect(name, &fixture(name), rcpts, *want).await;
    }
}

/// Envelopes signed with the test PKIs that fail one check each: anomaly
/// with X-VerificaSicurezza: errore naming the check, never a presa in
/// carico; and the control (the same path, nothing wrong) is taken in
/// charge, so these assertions can fail.
#[tokio::test]
async fn signed_envelopes_that_fail_a_check() {
    // control: re-signed by B with its own daticert unchanged
    let r = rx().await;
    let control = resign(&b_envelope(), &other().key, |c| c.to_vec());
    let o = r.rp.process(&inbound(&control), Utc::now()).await;
    assert!(matches!(o, Outcome::Deliver { .. }), "control: {o:?}");
    assert_eq!(r.injected.all().len(), 1, "control: the presa in carico");

    let (rogue_cert, rogue_key) = other()
        .pki
        .issue_leaf("Beta PEC S.p.A.", "pec.b.test", 30)
        .expect("rogue");
    let rogue = PemKey::from_pem(&rogue_key, &rogue_cert).expect("rogue key");
    let header_says_ricevuta = String::from_utf8(b_envelope())
        .expect("ascii")
        .replacen(
            "X-Trasporto: posta-certificata",
            "X-Ricevuta: accettazione",
            1,
        )
        .into_bytes();
    let cases: Vec<(&str, Vec<u8>, &str, bool)> = vec![
        (
            "envelope-signature-stripped",
            without_signature(&b_envelope()),
            "firma non valida",
            true,
        ),
        (
            "envelope-unlisted-signer",
            envelope_from_b("ciao", &rogue, "pec.b.test"),
            "non è nell'indice dei gestori",
            true,
        ),
        (
            "envelope-from-domain-not-managed",
            envelope_from_b("ciao", &other().key, "pec.c.test"),
            "il dominio del mittente pec.c.test non è gestito da Beta PEC S.p.A.",
            true,
        ),
        (
            "envelope-header-contradicts-daticert",
            header_says_ricevuta,
            "X-Ricevuta accettazione ma daticert tipo posta-certificata",
            true,
        ),
        (
            "daticert-tipo-accettazione.xml",
            b_envelope_with_daticert(&fixture("daticert-tipo-accettazione.xml")),
            "tipo accettazione in una busta di trasporto",
            true,
        ),
        (
            "daticert-billion-laughs.xml",
            b_envelope_with_daticert(&fixture("daticert-billion-laughs.xml")),
            "daticert.xml non valido",
            true,
        ),
        (
            "daticert-external-entity.xml",
            b_envelope_with_daticert(&fixture("daticert-external-entity.xml")),
            "daticert.xml non valido",
            true,
        ),
        (
            "generated: daticert with one 64 KB entity referenced 20000 times",
            b_envelope_with_daticert(&quadratic_daticert()),
            "daticert.xml non valido",
            false,
        ),
        (
            "generated: daticert nested 5000 elements deep",
            b_envelope_with_daticert(&deep_daticert()),
            "daticert.xml non valido",
            true,
        ),
    ];
    for (name, msg, why, at_delivery) in cases {
        rx_expect(name, &msg, RxWant::Security(why)).await;
        if at_delivery {
            dx_expect(name, &msg, DxWant::Security(why)).await;
        }
    }
}

/// A daticert.xml whose one internal entity of 64 KB is referenced 20 000
/// times: 1.3 GB of text once expanded (quadratic blow-up; each reference
/// is at depth 0, which roxmltree does not count).
fn quadratic_daticert() -> Vec<u8> {
    let real = fixture("daticert-tipo-accettazione.xml");
    let text = String::from_utf8(real).expect("utf8");
    let text = text
        .replacen(
            "?>\n",
            &format!(
                "?>\n<!DOCTYPE postacert [\n<!ENTITY big \"{}\">\n]>\n",
                "A".repeat(64 * 1024)
            ),
            1,
        )
        .replace("tipo=\"accettazione\"", "tipo=\"posta-certificata\"")
        .replace(
            "<oggetto>Offerta</oggetto>",
            &format!("<oggetto>{}</oggetto>", "&big;".repeat(20_000)),
        );
    text.into_bytes()
}

/// A daticert.xml with 5000 nested elements inside `<oggetto>`.
fn deep_daticert() -> Vec<u8> {
    let text = String::from_utf8(fixture("daticert-tipo-accettazione.xml")).expect("utf8");
    text.replace("tipo=\"accettazione\"", "tipo=\"posta-certificata\"")
        .replace(
            "<oggetto>Offerta</oggetto>",
            &format!(
                "<oggetto>{}x{}</oggetto>",
                "<a>".repeat(5000),
                "</a>".repeat(5000)
            ),
        )
        .into_bytes()
}

/// The B envelope whose provider certificate has expired by the time it is
/// checked (the reception point's clock 400 days on: the certificate is
/// valid 365 days, its CA 730): anomaly with X-VerificaSicurezza: errore.
#[tokio::test]
async fn an_expired_certificate() {
    let name = "envelope-expired-certificate";
    let msg = b_envelope();
    // control: today it is taken in charge
    let r = rx().await;
    let o = r.rp.process(&inbound(&msg), Utc::now()).await;
    assert!(
        matches!(o, Outcome::Deliver { .. }),
        "{name}: control {o:?}"
    );
    let mut r = rx().await;
    r.rp.verify_at = VerifyAt::At(SystemTime::now() + Duration::from_secs(400 * 86_400));
    rx_expect_on(&r, name, &inbound(&msg), &msg, RxWant::Security("expired")).await;
}

/// B's provider certificate revoked in the CRL configured for B's CA:
/// anomaly with X-VerificaSicurezza: errore naming the revocation.
#[tokio::test]
async fn a_revoked_certificate() {
    let name = "envelope-revoked-certificate";
    let dir = tempfile::tempdir().expect("tmp");
    let crl = crl_for_b(dir.path(), true);
    let mut r = rx().await;
    r.rp.trust = TrustStore::from_pem_bytes(&[&other().pki.ca_cert_pem])
        .expect("trust")
        .with_crl_files(&[crl])
        .expect("crl loads");
    let msg = b_envelope();
    rx_expect_on(&r, name, &inbound(&msg), &msg, RxWant::Security("revoked")).await;
}

/// Our envelope to anna at B, as the access point recorded it.
fn our_record() -> EnvelopeRecord {
    EnvelopeRecord {
        pec_id: "opec.hostile.1@pec.acme.test".into(),
        original_msgid: Some("<abc.123@client.example>".into()),
        sender: "mario.rossi@pec.acme.test".into(),
        subject: "Fattura".into(),
        recipients: vec![RecipientState {
            address: "anna@pec.b.test".into(),
            tipo: TipoDestinatario::Certificato,
            status: RecipientStatus::Sent,
            updated_at: 0,
        }],
        ricevuta: TipoRicevuta::Completa,
        submitted_at: 0,
    }
}

async fn record(r: &Rx, pec_id: &str) -> EnvelopeRecord {
    r.state
        .get_envelope(pec_id)
        .await
        .expect("get")
        .expect("record")
}

/// A genuine receipt replayed: delivered as it is each time (it is a
/// valid receipt of B's), the record changes once, nothing is sent; a
/// genuine receipt about an envelope we never sent: delivered, no record
/// made, nothing sent.
#[tokio::test]
async fn replayed_and_unknown_receipts() {
    let r = rx().await;
    let rec = our_record();
    r.state.put_envelope(&rec, 3600).await.expect("put");
    let consegna = b_receipt(
        &rec.pec_id,
        Ricevuta::AvvenutaConsegna {
            consegna: "anna@pec.b.test".into(),
            tipo: TipoRicevuta::Sintetica,
            original: b"",
        },
        "consegna.replay@pec.b.test",
    );
    let mut ib = inbound(&consegna);
    ib.rcpts = vec!["mario.rossi@pec.acme.test".into()];
    let o = r.rp.process(&ib, Utc::now()).await;
    assert!(
        matches!(o, Outcome::Deliver { .. }),
        "receipt-replayed: first {o:?}"
    );
    let after_first = record(&r, &rec.pec_id).await;
    assert_eq!(
        after_first.recipients[0].status,
        RecipientStatus::Consegnato,
        "receipt-replayed: the first one counts"
    );
    // an older presa in carico replayed after it: no regression
    let pic = b_receipt(
        &rec.pec_id,
        Ricevuta::PresaInCarico {
            mail_receipt: "ricevute@pec.acme.test".into(),
            ricezione: vec!["anna@pec.b.test".into()],
        },
        "pic.replay@pec.b.test",
    );
    for (what, msg) in [("avvenuta-consegna", &consegna), ("presa-in-carico", &pic)] {
        let mut ib = inbound(msg);
        ib.rcpts = vec!["mario.rossi@pec.acme.test".into()];
        let o = r.rp.process(&ib, Utc::now()).await;
        assert!(
            matches!(o, Outcome::Deliver { .. }),
            "receipt-replayed ({what}): {o:?}"
        );
        assert_eq!(
            record(&r, &rec.pec_id).await,
            after_first,
            "receipt-replayed ({what}): the record does not change again"
        );
    }
    assert!(
        r.injected.all().is_empty(),
        "receipt-replayed: nothing sent"
    );

    let unknown = "opec.never-sent@pec.acme.test";
    let msg = b_receipt(
        unknown,
        Ricevuta::AvvenutaConsegna {
            consegna: "anna@pec.b.test".into(),
            tipo: TipoRicevuta::Sintetica,
            original: b"",
        },
        "consegna.unknown@pec.b.test",
    );
    let mut ib = inbound(&msg);
    ib.rcpts = vec!["mario.rossi@pec.acme.test".into()];
    let o = r.rp.process(&ib, Utc::now()).await;
    assert!(
        matches!(o, Outcome::Deliver { .. }),
        "receipt-unknown-envelope: {o:?}"
    );
    assert_eq!(
        r.state.get_envelope(unknown).await.expect("get"),
        None,
        "receipt-unknown-envelope: no record made up"
    );
    assert!(
        r.injected.all().is_empty(),
        "receipt-unknown-envelope: nothing sent"
    );
}

/// Generated ordinary mail that is large or deep: a 1 MB header line, a
/// wide multipart bomb (100 000 parts), deep nesting (10 000 levels, and
/// 5 000 levels with one boundary), 100 000 header fields. Reception:
/// anomaly; delivery: stored as is; the access point (a holder's message
/// with the same structure) envelopes it, except the 1 MB line: a line
/// over 998 characters cannot cross an MTA intact (RFC 5322 §2.1.1), so a
/// non-accettazione naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_large_and_deep_mail() {
    let long_line = format!("Subject: {}\r\n", "x".repeat(ONE_MB));
    let (deep_h, deep_b) = deep_multipart(10_000, false);
    let (same_h, same_b) = deep_multipart(5_000, true);
    let (wide_h, wide_b) = wide_multipart(100_000);
    let many_fields =
        "Received: from relay by relay; Wed, 25 Nov 2026 10:00:00 +0100\r\n".repeat(100_000);
    let too_long = AxWant::NotAccepted("caratteri supera il limite di 998");
    let cases: Vec<(&str, String, Vec<u8>, AxWant)> = vec![
        (
            "generated: 1 MB header line",
            long_line.clone(),
            b"body\r\n".to_vec(),
            too_long,
        ),
        (
            "generated: 10 000 nested multiparts",
            deep_h,
            deep_b,
            AxWant::Accepted,
        ),
        (
            "generated: 5 000 nested multiparts, one boundary",
            same_h,
            same_b,
            AxWant::Accepted,
        ),
        (
            "generated: multipart bomb, 100 000 parts",
            wide_h,
            wide_b,
            AxWant::Accepted,
        ),
        (
            "generated: 100 000 header fields",
            many_fields,
            b"body\r\n".to_vec(),
            AxWant::Accepted,
        ),
    ];
    for (name, header, body, want) in cases {
        let msg = plain_with(&header, &body);
        rx_expect(name, &msg, RxWant::Anomaly("posta ordinaria")).await;
        dx_expect(name, &msg, DxWant::AsIs).await;
        let h = holder_with(&format!("Subject: {name}\r\n{header}"), &body);
        ax_expect(name, &h, &["anna@pec.other.test"], want).await;
    }
    // the limit itself: a body line of 998 characters is accepted, one of
    // 999 is not
    for (n, want) in [
        (998usize, AxWant::Accepted),
        (
            999,
            AxWant::NotAccepted("una riga del messaggio di 999 caratteri"),
        ),
    ] {
        let name = format!("generated: a {n}-character body line");
        let body = format!("short\r\n{}\r\nend\r\n", "y".repeat(n)).into_bytes();
        let h = holder_with(&format!("Subject: {name}\r\n"), &body);
        ax_expect(&name, &h, &["anna@pec.other.test"], want).await;
    }
    // the same deep structure inside a forged (unsigned) envelope
    let (h, b) = deep_multipart(10_000, false);
    let msg = plain_with(&format!("X-Trasporto: posta-certificata\r\n{h}"), &b);
    let name = "generated: forged envelope nested 10 000 deep";
    rx_expect(name, &msg, RxWant::Security("firma non valida")).await;
    dx_expect(name, &msg, DxWant::Security("firma non valida")).await;
}

/// A 100 MB base64 line (one attachment, no line breaks), streamed into
/// the spool in pieces, never held whole by the test: the reception point
/// wraps it in a busta di anomalia written to a spool file, without panic
/// and without a presa in carico.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_base64_line_goes_through_the_spool() {
    let name = "generated: 100 MB base64 line";
    let size: usize = 100 * ONE_MB;
    let r = rx().await;
    let header = b"From: stranger@example.org\r\nTo: mario@pec.acme.test\r\nSubject: big\r\nMessage-ID: <big@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"B\"\r\n".to_vec();
    let spool = tempfile::tempdir().expect("tmp");
    let mut w = SpoolWriter::new(SpoolOptions {
        dir: spool.path().to_path_buf(),
        memory_limit: 0,
    });
    w.write(b"--B\r\nContent-Type: application/octet-stream; name=\"big.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n")
        .expect("spool");
    let chunk = vec![b'Q'; ONE_MB];
    for _ in 0..size / ONE_MB {
        w.write(&chunk).expect("spool");
    }
    w.write(b"\r\n--B--\r\n").expect("spool");
    let body = w.finish().expect("spool");
    assert!(body.is_on_disk());
    let ib = Inbound {
        queue_id: Some("BIG".into()),
        mail_from: "stranger@example.org".into(),
        rcpts: vec!["mario@pec.acme.test".into()],
        message: Original { header, body },
    };
    let started = std::time::Instant::now();
    let o = r.rp.process(&ib, Utc::now()).await;
    eprintln!("{name}: {:?}", started.elapsed());
    let Outcome::Rewrite { message, .. } = &o else {
        panic!("{name}: expected a busta di anomalia, got {o:?}");
    };
    assert!(
        message.body.is_on_disk(),
        "{name}: the anomaly envelope is written to the spool, not memory"
    );
    assert!(
        message.body.len() > size as u64,
        "{name}: it carries the message"
    );
    let head: String = message.headers.concat();
    assert!(head.contains("X-Trasporto: errore"), "{name}: {head}");
    assert!(!head.contains("X-VerificaSicurezza"), "{name}: {head}");
    assert!(r.injected.all().is_empty(), "{name}: no presa in carico");
}
