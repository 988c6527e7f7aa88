//! The milter stages driven through indymilter-test (an in-process MTA):
//! each test asserts the actions sent back to the MTA and what was
//! injected. The dependencies are fakes here (scanner, injector) or the
//! embedded state store; the real services run in integration/.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use indymilter::MacroStage;
use indymilter_test::{EomAction, EomActions, Status, TestConnection};
use pec_milter::config::{HolderClass, HoldersConfig, OrdinaryMail};
use pec_milter::crypto::DigestAlg;
use pec_milter::crypto::verify::{SignatureStatus, TrustStore, VerifyAt};
use pec_milter::index::{IndexSource, ProviderIndex};
use pec_milter::log::writer::{FileLog, LogOptions};
use pec_milter::log::{Event, EventLog, LogError};
use pec_milter::milter::{self, MilterListener};
use pec_milter::pec::build::Provider;
use pec_milter::pec::inspect::inspect;
use pec_milter::pec::reader::read;
use pec_milter::roles::access::AccessPoint;
use pec_milter::roles::reception::ReceptionPoint;
use pec_milter::roles::{
    InjectError, Injector, LoginDirectory, LoginError, ScanError, Scanner, StaticDirectory, Verdict,
};
use pec_milter::spool::SpoolOptions;
use pec_milter::state::StateStore;
use pec_milter::state::embedded::EmbeddedStore;

struct FakeScanner;

#[async_trait::async_trait]
impl Scanner for FakeScanner {
    async fn scan(&self, message: &[u8]) -> Result<Verdict, ScanError> {
        let needle = b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE";
        if message.windows(needle.len()).any(|w| w == needle) {
            Ok(Verdict::Infected("Eicar-Test-Signature".into()))
        } else {
            Ok(Verdict::Clean)
        }
    }
}

/// (reverse path, forward paths, message) of one injection.
type Injected = (String, Vec<String>, Vec<u8>);

#[derive(Default)]
struct Recorder {
    sent: Mutex<Vec<Injected>>,
    fail: Mutex<bool>,
}

#[async_trait::async_trait]
impl Injector for Recorder {
    async fn inject(&self, from: &str, to: &[String], message: &[u8]) -> Result<(), InjectError> {
        if *self.fail.lock().map_err(|e| e.to_string())? {
            return Err("connection refused (test)".into());
        }
        self.sent.lock().map_err(|e| e.to_string())?.push((
            from.to_string(),
            to.to_vec(),
            message.to_vec(),
        ));
        Ok(())
    }
}

impl Recorder {
    fn messages(&self) -> Vec<Injected> {
        self.sent.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

struct Rig {
    addr: String,
    injected: Arc<Recorder>,
    state: Arc<dyn StateStore>,
    log: Arc<TestLog>,
    dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    /// What the milter counted.
    metrics: Arc<pec_milter::metrics::Metrics>,
}

impl Rig {
    /// `pec_milter_messages_total{role,outcome}` as the milter counted it.
    fn counted(&self, role: &str, outcome: &str) -> u64 {
        let series = format!("pec_milter_messages_total{{role=\"{role}\",outcome=\"{outcome}\"}} ");
        self.metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(&series)?.parse().ok())
            .unwrap_or_else(|| panic!("no {series}"))
    }

    /// How many end-of-message answers of `role` were timed.
    fn timed(&self, role: &str) -> u64 {
        let series = format!("pec_milter_eom_duration_seconds_count{{role=\"{role}\"}} ");
        self.metrics
            .encode()
            .lines()
            .find_map(|l| l.strip_prefix(&series)?.parse().ok())
            .unwrap_or_else(|| panic!("no {series}"))
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
    }
}

/// The message log of the rig: a real one in its directory, that can be
/// made to fail (a full disk).
struct TestLog {
    fail: AtomicBool,
    inner: FileLog,
}

#[async_trait::async_trait]
impl EventLog for TestLog {
    async fn record(&self, events: Vec<Event>) -> Result<(), LogError> {
        if self.fail.load(Ordering::SeqCst) {
            return Err(LogError::Io {
                path: "log".into(),
                source: std::io::Error::other("No space left on device"),
            });
        }
        self.inner.record(events).await
    }
}

impl TestLog {
    /// The events recorded so far (wire names), in order.
    fn events(&self) -> Vec<String> {
        logged_events(self.inner.node_dir())
            .into_iter()
            .map(|e| e.event.wire().to_string())
            .collect()
    }
}

/// A holders' directory: `mrossi` owns mario's address and the office's;
/// `directory-down` cannot be answered for.
struct FakeLogins;

#[async_trait::async_trait]
impl LoginDirectory for FakeLogins {
    async fn owned_by(&self, login: &str) -> Result<Vec<String>, LoginError> {
        match login {
            "mrossi" => Ok(vec![
                "Mario@pec.acme.test".into(),
                "ufficio@pec.acme.test".into(),
            ]),
            "directory-down" => Err(LoginError("LDAP: connect refused".into())),
            _ => Ok(vec![]),
        }
    }
}

async fn rig_with(state: Option<Arc<dyn StateStore>>) -> Rig {
    rig_roles(state, false).await
}

/// The rig, with a reception point for unauthenticated mail when
/// `reception` (its providers' index never loaded: nothing in these tests
/// reaches its checks).
async fn rig_roles(state: Option<Arc<dyn StateStore>>, reception: bool) -> Rig {
    let dir = tempfile::tempdir().expect("tmp");
    let state: Arc<dyn StateStore> = match state {
        Some(s) => s,
        None => Arc::new(EmbeddedStore::open(&dir.path().join("state")).expect("state")),
    };
    let rig_state = state.clone();
    let injected = Arc::new(Recorder::default());
    let log = Arc::new(TestLog {
        fail: AtomicBool::new(false),
        inner: FileLog::open(&LogOptions {
            dir: dir.path().join("log"),
            node: "mx".into(),
        })
        .expect("message log"),
    });
    let ap = AccessPoint {
        provider: Provider {
            name: "ACME PEC S.p.A.".into(),
            domain: "pec.acme.test".into(),
        },
        domains: vec!["pec.acme.test".into()],
        key: Arc::new(pki().pki.signing_key().expect("key")),
        digest: DigestAlg::Sha256,
        state: state.clone(),
        scanner: Some(Arc::new(FakeScanner)),
        injector: injected.clone(),
        directory: Arc::new(StaticDirectory::new(&[
            "pec.other.test".into(),
            "pec.acme.test".into(),
        ])),
        holders: HoldersConfig {
            default_class: HolderClass::Upa1,
            upa: vec!["@pec.other.test".into()],
            upa1: vec![],
            upr: vec!["cittadino@pec.acme.test".into()],
            ..HoldersConfig::default()
        },
        logins: Some(Arc::new(FakeLogins)),
        log: log.clone(),
        max_recipients: 50,
        max_product: 100 << 20,
        quarantine_dir: dir.path().join("quarantine"),
        retention_secs: 3600,
        // Small, so that the larger test messages go through the disk path.
        spool: SpoolOptions {
            dir: dir.path().join("spool"),
            memory_limit: 64 * 1024,
        },
    };
    let listener = MilterListener::bind("inet:127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener
        .local_description()
        .trim_start_matches("inet:")
        .to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let reception = reception.then(|| ReceptionPoint {
        provider: ap.provider.clone(),
        key: ap.key.clone(),
        digest: DigestAlg::Sha256,
        trust: TrustStore::default(),
        verify_at: VerifyAt::Now,
        index: Arc::new(ProviderIndex::new(IndexSource::Ldif(
            dir.path().join("no-index.ldif"),
        ))),
        state: ap.state.clone(),
        scanner: None,
        injector: injected.clone(),
        log: Arc::new(pec_milter::log::NoLog),
        ordinary_mail: OrdinaryMail::Anomaly,
        quarantine_dir: dir.path().join("quarantine"),
        retention_secs: 3600,
        spool: ap.spool.clone(),
    });
    let metrics = Arc::new(pec_milter::metrics::Metrics::new());
    let roles = milter::Roles {
        access: ap,
        reception,
        metrics: metrics.clone(),
    };
    tokio::spawn(milter::serve(
        listener,
        Arc::new(roles),
        Default::default(),
        rx,
    ));
    Rig {
        addr,
        injected,
        state: rig_state,
        log,
        dir,
        shutdown: Some(tx),
        metrics,
    }
}

async fn rig() -> Rig {
    rig_with(None).await
}

struct Msg<'a> {
    auth: Option<&'a str>,
    from: &'a str,
    rcpts: &'a [&'a str],
    headers: Vec<(&'a str, String)>,
    body: String,
}

fn msg<'a>(from: &'a str, rcpts: &'a [&'a str]) -> Msg<'a> {
    Msg {
        // PEC logins are addresses: the holder logs in as itself
        auth: Some(from),
        from,
        rcpts,
        headers: vec![
            ("From", format!("Mario Rossi <{from}>")),
            ("To", rcpts.join(", ")),
            ("Subject", "Convocazione".into()),
            ("Message-ID", "<m.1@client.example>".into()),
            ("Date", "Wed, 25 Nov 2026 10:00:00 +0100".into()),
            ("MIME-Version", "1.0".into()),
            ("Content-Type", "text/plain; charset=utf-8".into()),
        ],
        body: "Buongiorno,\r\nla riunione è confermata.\r\n".into(),
    }
}

/// Drive one message through the milter as Postfix would.
async fn submit(rig: &Rig, m: &Msg<'_>) -> (Status, Option<EomActions>) {
    let mut conn = TestConnection::configure()
        .open_tcp(rig.addr.as_str())
        .await
        .expect("connect to milter");
    if let Some(user) = m.auth {
        conn.macros(MacroStage::Mail, [("{auth_authen}", user)])
            .await
            .expect("macros");
    }
    let st = conn.mail([format!("<{}>", m.from)]).await.expect("mail");
    if st != Status::Continue {
        let _ = conn.close().await;
        return (st, None);
    }
    for r in m.rcpts {
        // indymilter-test offers every no-reply option; the milter takes
        // those of RCPT, header fields and body (no round trip each).
        assert_eq!(
            conn.rcpt([format!("<{r}>")]).await.expect("rcpt"),
            Status::Noreply
        );
    }
    // no data / eoh callbacks: negotiated away, so the MTA skips them
    for (n, v) in &m.headers {
        assert_eq!(
            conn.header(*n, v.as_str()).await.expect("header"),
            Status::Noreply
        );
    }
    // In pieces, as Postfix sends a body (at most 64 KiB each).
    for piece in m.body.as_bytes().chunks(60_000) {
        assert_eq!(
            conn.body(piece.to_vec()).await.expect("body"),
            Status::Noreply
        );
    }
    conn.macros(MacroStage::Eom, [("i", "4QUEUEID")])
        .await
        .expect("macros");
    let (actions, status) = conn.eom().await.expect("eom");
    let _ = conn.close().await;
    (status, Some(actions))
}

/// Apply the milter's actions to the original as an MTA would, giving the
/// message that leaves.
fn apply(m: &Msg<'_>, actions: &EomActions) -> Vec<u8> {
    let mut headers: Vec<(String, String)> = m
        .headers
        .iter()
        .map(|(n, v)| (n.to_string(), format!(" {v}")))
        .collect();
    let mut body: Option<Vec<u8>> = None;
    for a in &actions.actions {
        match a {
            EomAction::DeleteHeader { name, index } => {
                let name = name.to_string_lossy();
                let pos = headers
                    .iter()
                    .enumerate()
                    .filter(|(_, (n, _))| n.eq_ignore_ascii_case(&name))
                    .nth((*index as usize).saturating_sub(1))
                    .map(|(i, _)| i);
                if let Some(i) = pos {
                    headers.remove(i);
                }
            }
            EomAction::AddHeader { name, value } => headers.push((
                name.to_string_lossy().into_owned(),
                value.to_string_lossy().into_owned(),
            )),
            EomAction::ReplaceBody { chunk } => {
                body.get_or_insert_with(Vec::new).extend_from_slice(chunk)
            }
            other => panic!("unexpected action {other:?}"),
        }
    }
    let mut out = Vec::new();
    for (n, v) in headers {
        out.extend_from_slice(format!("{n}:{}\r\n", v.replace('\n', "\r\n")).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body.unwrap_or_else(|| m.body.clone().into_bytes()));
    out
}

fn kind_of(bytes: &[u8]) -> String {
    read(bytes).expect("read").kind.wire().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holder_submission_becomes_a_signed_envelope_and_an_acceptance_receipt() {
    let rig = rig().await;
    let rcpts = ["anna@pec.other.test", "luca@example.org"];
    let m = msg("mario@pec.acme.test", &rcpts);
    let (status, actions) = submit(&rig, &m).await;
    assert_eq!(status, Status::Accept);
    let actions = actions.expect("actions");
    // header fields the envelope does not inherit are deleted...
    for h in [
        "From",
        "Subject",
        "Message-ID",
        "Date",
        "MIME-Version",
        "Content-Type",
    ] {
        assert!(
            actions.actions.iter().any(|a| matches!(a, EomAction::DeleteHeader { name, index: 1 } if name.to_str() == Ok(h))),
            "{h} not deleted: {actions:?}"
        );
    }
    // ...To is kept, the PEC ones are added, and the body is replaced
    assert!(
        !actions.actions.iter().any(
            |a| matches!(a, EomAction::DeleteHeader { name, .. } if name.to_str() == Ok("To"))
        )
    );
    assert!(actions.has_add_header("X-Trasporto", " posta-certificata"));
    assert!(actions.has_add_header("Subject", " POSTA CERTIFICATA: Convocazione"));
    assert!(actions.has_add_header("X-Riferimento-Message-ID", " <m.1@client.example>"));
    assert!(
        actions
            .actions
            .iter()
            .any(|a| matches!(a, EomAction::ReplaceBody { .. }))
    );

    let out = apply(&m, &actions);
    let i = inspect(&out, &pki().trust, VerifyAt::SigningTime).expect("inspect");
    assert_eq!(i.kind, "posta-certificata");
    assert_eq!(
        i.signature.status,
        SignatureStatus::Valid,
        "{:?}",
        i.signature
    );
    openssl_verify(&out, pki().ca_file.path()).expect("openssl verifies the envelope");
    let r = read(&out).expect("read");
    let post = String::from_utf8_lossy(r.postacert.as_deref().expect("postacert")).into_owned();
    assert!(post.contains("la riunione è confermata."));
    assert!(post.contains("X-Riferimento-Message-ID: <m.1@client.example>"));
    let pec_id = r.daticert.expect("d").expect("d").identificativo;
    assert!(post.contains(&format!("Message-ID: <{pec_id}>")));

    // exactly one acceptance receipt, to the holder, listing both recipients
    let sent = rig.injected.messages();
    assert_eq!(sent.len(), 1);
    let (from, to, receipt) = &sent[0];
    assert_eq!(from, "posta-certificata@pec.acme.test");
    assert_eq!(to, &vec!["mario@pec.acme.test".to_string()]);
    let ri = inspect(receipt, &pki().trust, VerifyAt::SigningTime).expect("inspect");
    assert_eq!(ri.kind, "accettazione");
    assert_eq!(ri.signature.status, SignatureStatus::Valid);
    let d = ri.daticert.expect("daticert");
    assert_eq!(d.identificativo, pec_id);
    let dest: Vec<(String, String)> = d
        .destinatari
        .iter()
        .map(|x| (x.address.clone(), x.tipo.to_string()))
        .collect();
    assert_eq!(
        dest,
        vec![
            ("anna@pec.other.test".to_string(), "certificato".to_string()),
            ("luca@example.org".to_string(), "esterno".to_string())
        ]
    );
}

/// The accettazione certifies the sender: a login may send only as an
/// address it owns. Refused at MAIL with 553 5.7.1; nothing signed, nothing
/// injected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_sends_only_as_itself() {
    let rig = rig().await;
    let rcpts = ["anna@pec.other.test"];
    for login in [
        "alice@pec.acme.test",   // another holder of the same domain
        "someone@example.org",   // a login of another domain
        "mario",                 // a bare login no map gives the address
        "MARIO@pec.acme.test.x", // close, but not the address
    ] {
        let mut m = msg("mario@pec.acme.test", &rcpts);
        m.auth = Some(login);
        let mut conn = TestConnection::configure()
            .open_tcp(rig.addr.as_str())
            .await
            .expect("connect to milter");
        conn.macros(MacroStage::Mail, [("{auth_authen}", login)])
            .await
            .expect("macros");
        let st = conn.mail(["<mario@pec.acme.test>"]).await.expect("mail");
        match &st {
            Status::Reject {
                message: Some(text),
            } => {
                let text = text.to_string_lossy();
                assert!(
                    text.starts_with("553 5.7.1 ") && text.contains(login),
                    "{login}: {text}"
                );
            }
            other => panic!("{login}: {other:?}"),
        }
        let _ = conn.close().await;
        assert!(
            matches!(submit(&rig, &m).await.0, Status::Reject { .. }),
            "{login}"
        );
    }
    assert!(rig.injected.messages().is_empty(), "nothing injected");
    // the address itself, in any case, is its own login
    let mut m = msg("mario@pec.acme.test", &rcpts);
    m.auth = Some("Mario@PEC.acme.test");
    let (st, actions) = submit(&rig, &m).await;
    assert_eq!(st, Status::Accept);
    let out = apply(&m, &actions.expect("actions"));
    assert!(String::from_utf8_lossy(&out).contains("X-Trasporto: posta-certificata"));
    assert_eq!(rig.injected.messages().len(), 1, "the accettazione");
    // each refusal at MAIL (two per login) and the one acceptance, counted;
    // only the end of message is timed
    assert_eq!(rig.counted("access", "reject"), 8);
    assert_eq!(rig.counted("access", "accept"), 1);
    assert_eq!(rig.timed("access"), 1);
}

/// Holders kept in a directory: a login that is not an address sends as
/// the addresses the directory lists for it, and only those; when the
/// directory cannot answer, MAIL gets 451 4.3.0 (never a guess).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_login_sends_as_what_the_directory_lists() {
    let rig = rig().await;
    let rcpts = ["anna@pec.other.test"];
    let mail_status = |login: &'static str, from: &'static str| {
        let addr = rig.addr.clone();
        async move {
            let mut conn = TestConnection::configure()
                .open_tcp(addr.as_str())
                .await
                .expect("connect to milter");
            conn.macros(MacroStage::Mail, [("{auth_authen}", login)])
                .await
                .expect("macros");
            let st = conn.mail([format!("<{from}>")]).await.expect("mail");
            let _ = conn.close().await;
            st
        }
    };
    let text = |st: &Status| match st {
        Status::Reject { message: Some(t) } | Status::Tempfail { message: Some(t) } => {
            t.to_string_lossy().into_owned()
        }
        other => format!("{other:?}"),
    };
    // not listed for mrossi: 553, like any login that does not own it
    let st = mail_status("mrossi", "alice@pec.acme.test").await;
    assert!(text(&st).starts_with("553 5.7.1 "), "{}", text(&st));
    // the directory cannot tell: 451, nothing decided
    let st = mail_status("directory-down", "mario@pec.acme.test").await;
    assert!(
        matches!(st, Status::Tempfail { .. }) && text(&st).starts_with("451 4.3.0 "),
        "{}",
        text(&st)
    );
    // the login of the address itself never needs the directory
    let st = mail_status("alice@pec.acme.test", "alice@pec.acme.test").await;
    assert_eq!(st, Status::Continue);
    assert!(rig.injected.messages().is_empty(), "nothing injected");
    // listed (any case): the whole submission is enveloped and receipted
    for from in ["mario@pec.acme.test", "ufficio@pec.acme.test"] {
        let mut m = msg(from, &rcpts);
        m.auth = Some("mrossi");
        let (st, actions) = submit(&rig, &m).await;
        assert_eq!(st, Status::Accept, "{from}");
        let out = apply(&m, &actions.expect("actions"));
        assert!(String::from_utf8_lossy(&out).contains("X-Trasporto: posta-certificata"));
    }
    assert_eq!(rig.injected.messages().len(), 2, "two accettazioni");
}

/// An authenticated sender outside our PEC domains: its mail passes, less
/// the fields only a provider writes (X-TipoRicevuta included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_only_fields_of_a_non_holder_are_removed() {
    let rig = rig().await;
    let rcpts = ["anna@pec.acme.test"];
    let mut m = msg("someone@example.org", &rcpts);
    m.auth = Some("someone@example.org");
    m.headers.push(("X-Ricevuta", "accettazione".into()));
    m.headers.push(("X-Trasporto", "posta-certificata".into()));
    m.headers.push(("x-tiporicevuta", "breve".into()));
    m.headers.push(("X-Ricevuta", "avvenuta-consegna".into()));
    m.headers.push(("X-Mailer", "kept".into()));
    let (st, actions) = submit(&rig, &m).await;
    assert_eq!(st, Status::Accept);
    let out = String::from_utf8_lossy(&apply(&m, &actions.expect("actions"))).into_owned();
    for gone in ["X-Ricevuta", "X-Trasporto", "x-tiporicevuta"] {
        assert!(!out.contains(gone), "{gone} left in:\n{out}");
    }
    assert!(out.contains("X-Mailer: kept"));
    assert!(out.contains("Subject: Convocazione"));
    assert!(out.contains("la riunione"), "body unchanged");
    assert!(rig.injected.messages().is_empty(), "nothing signed");
}

/// Unauthenticated mail (port 25, or local sendmail(1) through
/// non_smtpd_milters) for recipients none of which is ours: not for the
/// reception point, and nobody but a provider writes the provider-only
/// fields: they are removed, the rest passes unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_mail_for_others_loses_the_provider_only_fields() {
    let rig = rig_roles(None, true).await;
    let rcpts = ["someone@example.org"];
    let mut m = msg("cron@localhost.test", &rcpts);
    m.auth = None;
    m.headers.push(("X-Ricevuta", "avvenuta-consegna".into()));
    m.headers.push(("X-VerificaSicurezza", "errore".into()));
    m.headers.push(("X-Mailer", "kept".into()));
    let (st, actions) = submit(&rig, &m).await;
    assert_eq!(st, Status::Accept);
    let out = String::from_utf8_lossy(&apply(&m, &actions.expect("actions"))).into_owned();
    for gone in ["X-Ricevuta", "X-VerificaSicurezza"] {
        assert!(!out.contains(gone), "{gone} left in:\n{out}");
    }
    assert!(out.contains("X-Mailer: kept") && out.contains("la riunione"));
    assert!(rig.injected.messages().is_empty(), "nothing signed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_from_outside_the_access_point_is_accepted_untouched() {
    let rig = rig().await;
    let rcpts = ["anna@pec.acme.test"];
    let mut m = msg("someone@example.org", &rcpts);
    m.auth = None;
    assert_eq!(submit(&rig, &m).await.0, Status::Accept);
    // authenticated but not one of our PEC domains
    let mut m = msg("someone@example.org", &rcpts);
    m.auth = Some("relay-user");
    assert_eq!(submit(&rig, &m).await.0, Status::Accept);
    // one of our domains but not authenticated (inbound): not the access point
    let mut m = msg("mario@pec.acme.test", &rcpts);
    m.auth = None;
    assert_eq!(submit(&rig, &m).await.0, Status::Accept);
    assert!(rig.injected.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_pec_headers_from_a_holder_never_leave() {
    let rig = rig().await;
    let rcpts = ["anna@pec.other.test"];
    let mut m = msg("mario@pec.acme.test", &rcpts);
    m.headers.push(("X-Ricevuta", "accettazione".into()));
    m.headers.push(("X-Trasporto", "errore".into()));
    m.headers.push(("X-VerificaSicurezza", "errore".into()));
    let (status, actions) = submit(&rig, &m).await;
    assert_eq!(status, Status::Accept);
    let actions = actions.expect("actions");
    for h in ["X-Ricevuta", "X-Trasporto", "X-VerificaSicurezza"] {
        assert!(
            actions.actions.iter().any(
                |a| matches!(a, EomAction::DeleteHeader { name, .. } if name.to_str() == Ok(h))
            ),
            "{h}"
        );
    }
    assert!(!actions.has_add_header("X-Ricevuta", indymilter_test::any()));
    let out = apply(&m, &actions);
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, _) = text.split_once("\r\n\r\n").expect("header block");
    assert!(!head.contains("X-Ricevuta"));
    assert!(head.contains("X-Trasporto: posta-certificata"));
    assert_eq!(kind_of(&out), "posta-certificata");
    let post = read(&out).expect("r").postacert.expect("post");
    assert!(!String::from_utf8_lossy(&post).contains("X-Ricevuta"));
    assert_eq!(rig.injected.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_virus_gives_a_non_acceptance_notice_and_quarantine() {
    let rig = rig().await;
    let rcpts = ["anna@pec.other.test"];
    let mut m = msg("mario@pec.acme.test", &rcpts);
    m.body = "X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*\r\n".into();
    let (status, actions) = submit(&rig, &m).await;
    assert_eq!(status, Status::Discard);
    assert!(actions.expect("actions").actions.is_empty());
    let sent = rig.injected.messages();
    assert_eq!(sent.len(), 1);
    let i = inspect(&sent[0].2, &pki().trust, VerifyAt::SigningTime).expect("i");
    assert_eq!(i.kind, "non-accettazione");
    assert_eq!(i.verifica_sicurezza.as_deref(), Some("errore"));
    assert_eq!(i.daticert.expect("d").errore, "virus");
    let q: Vec<_> = std::fs::read_dir(rig.dir.path().join("quarantine"))
        .expect("quarantine dir")
        .collect();
    assert_eq!(q.len(), 1);
    assert_eq!(rig.counted("access", "discard"), 1);
    assert_eq!(rig.counted("access", "accept"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upr_holder_may_write_only_to_upa() {
    let rig = rig().await;
    let to_upa1 = ["mario@pec.acme.test"];
    let m = msg("cittadino@pec.acme.test", &to_upa1);
    assert_eq!(submit(&rig, &m).await.0, Status::Discard);
    let sent = rig.injected.messages();
    assert_eq!(sent.len(), 1);
    let i = inspect(&sent[0].2, &pki().trust, VerifyAt::SigningTime).expect("i");
    assert_eq!(i.kind, "non-accettazione");
    assert!(
        i.daticert
            .expect("d")
            .errore_esteso
            .unwrap_or_default()
            .contains("Upr")
    );
    // to an Upa holder it is accepted
    let to_upa = ["anna@pec.other.test"];
    let m = msg("cittadino@pec.acme.test", &to_upa);
    assert_eq!(submit(&rig, &m).await.0, Status::Accept);
    assert_eq!(rig.injected.messages().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formal_checks_refuse_bcc_and_recipients_outside_to_cc() {
    let rig = rig().await;
    let rcpts = ["anna@pec.other.test", "hidden@pec.other.test"];
    let mut m = msg("mario@pec.acme.test", &rcpts);
    m.headers[1].1 = "anna@pec.other.test".into(); // To without the second rcpt
    assert_eq!(submit(&rig, &m).await.0, Status::Discard);
    let rcpts1 = ["anna@pec.other.test"];
    let mut m = msg("mario@pec.acme.test", &rcpts1);
    m.headers.push(("Bcc", "spy@pec.other.test".into()));
    assert_eq!(submit(&rig, &m).await.0, Status::Discard);
    let mut m = msg("mario@pec.acme.test", &rcpts1);
    m.headers[0].1 = "Other <other@pec.acme.test>".into(); // From differs from MAIL FROM
    assert_eq!(submit(&rig, &m).await.0, Status::Discard);
    let sent = rig.injected.messages();
    assert_eq!(sent.len(), 3);
    for (_, _, n) in sent {
        assert_eq!(kind_of(&n), "non-accettazione");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mta_retry_never_yields_a_second_receipt() {
    let rig = rig().await;
    let rcpts = ["anna@pec.other.test"];
    let m = msg("mario@pec.acme.test", &rcpts);
    let (s1, a1) = submit(&rig, &m).await;
    let (s2, a2) = submit(&rig, &m).await;
    assert_eq!((s1, s2), (Status::Accept, Status::Accept));
    // same envelope identity both times, one receipt
    let id = |a: &EomActions| {
        read(&apply(&m, a))
            .expect("r")
            .daticert
            .expect("d")
            .expect("d")
            .identificativo
    };
    assert_eq!(id(&a1.expect("a1")), id(&a2.expect("a2")));
    assert_eq!(rig.injected.messages().len(), 1);
}

/// No accettazione without its record: when the message log cannot be
/// written the submission gets 4xx and nothing is signed or sent; the
/// MTA's retry, once the log is back, records the accettazione and the
/// busta di trasporto once, and another retry records nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_accettazione_without_its_record_and_one_record_per_event() {
    let rig = rig().await;
    let rcpts = ["anna@pec.other.test"];
    let m = msg("mario@pec.acme.test", &rcpts);
    rig.log.fail.store(true, Ordering::SeqCst);
    let (st, _) = submit(&rig, &m).await;
    assert!(matches!(st, Status::Tempfail { .. }), "{st:?}");
    assert!(
        rig.injected.messages().is_empty(),
        "nothing sent unrecorded"
    );
    assert!(rig.log.events().is_empty());
    rig.log.fail.store(false, Ordering::SeqCst);
    for _ in 0..2 {
        let (st, _) = submit(&rig, &m).await;
        assert_eq!(st, Status::Accept);
    }
    assert_eq!(rig.injected.messages().len(), 1, "one accettazione");
    assert_eq!(rig.log.events(), ["accettazione", "busta-trasporto"]);
    // a refused one is recorded with its cause
    let mut bad = msg("mario@pec.acme.test", &rcpts);
    bad.headers.push(("Bcc", "x@pec.other.test".into()));
    let (st, _) = submit(&rig, &bad).await;
    assert_eq!(st, Status::Discard);
    assert_eq!(
        rig.log.events(),
        ["accettazione", "busta-trasporto", "non-accettazione"]
    );
}

/// The reinjection listener down: the accettazione is safe in the outbox
/// (written with the record, before the answer), so the submission is
/// accepted; an MTA retry does not issue it again; the outbox pass sends
/// it once the listener is back, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinjection_down_keeps_the_receipt_in_the_outbox_then_sends_it_once() {
    use pec_milter::roles::outbox::OutboxSender;
    let rig = rig().await;
    let rcpts = ["anna@pec.other.test"];
    let m = msg("mario@pec.acme.test", &rcpts);
    if let Ok(mut f) = rig.injected.fail.lock() {
        *f = true;
    }
    let (status, _) = submit(&rig, &m).await;
    assert_eq!(status, Status::Accept);
    assert!(rig.injected.messages().is_empty());
    let pass = || async {
        OutboxSender {
            state: rig.state.as_ref(),
            injector: rig.injected.as_ref(),
            grace: std::time::Duration::ZERO,
            lease: std::time::Duration::from_secs(60),
        }
        .pass(chrono::Utc::now())
        .await
        .expect("pass")
    };
    // still down: the pass keeps it (and leases it for a minute)
    assert_eq!(pass().await, 0);
    if let Ok(mut f) = rig.injected.fail.lock() {
        *f = false;
    }
    // the MTA's retry: accepted, the receipt not built again
    assert_eq!(submit(&rig, &m).await.0, Status::Accept);
    assert!(rig.injected.messages().is_empty());
    // the lease of the failed try holds it back: nothing yet
    assert_eq!(pass().await, 0);
    rig.state
        .release(&format!("outbox:{}", accettazione_id(&rig).await))
        .await
        .expect("release");
    assert_eq!(pass().await, 1);
    assert_eq!(pass().await, 0);
    assert_eq!(submit(&rig, &m).await.0, Status::Accept);
    let sent = rig.injected.messages();
    assert_eq!(sent.len(), 1);
    assert!(
        String::from_utf8_lossy(&sent[0].2).contains("X-Ricevuta: accettazione"),
        "the accettazione is what was kept"
    );
}

/// The one entry waiting in the rig's outbox: its Message-ID.
async fn accettazione_id(rig: &Rig) -> String {
    let due = rig.state.outbox_due(i64::MAX, 10).await.expect("due");
    assert_eq!(due.len(), 1, "one receipt waits");
    due[0].id.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_store_down_is_a_temporary_failure_and_nothing_is_sent() {
    let rig = rig_with(Some(Arc::new(DownStore))).await;
    let rcpts = ["anna@pec.other.test"];
    let m = msg("mario@pec.acme.test", &rcpts);
    let (status, actions) = submit(&rig, &m).await;
    match status {
        Status::Tempfail { message } => {
            let text = message
                .map(|m| m.to_string_lossy().into_owned())
                .unwrap_or_default();
            assert!(text.starts_with("451 4.3.0"), "{text}");
        }
        other => panic!("expected tempfail, got {other:?}"),
    }
    assert!(actions.expect("actions").actions.is_empty());
    assert!(rig.injected.messages().is_empty());
    assert_eq!(rig.counted("access", "tempfail"), 1);
    assert_eq!(rig.timed("access"), 1);
}

/// A 6 MB message (over the 64 KiB memory limit of the rig): the body is
/// spooled to disk as it arrives, the envelope is built from the spool into
/// a spool file and sent back in pieces of at most 64 KiB; it verifies,
/// carries the original byte for byte, and no spool file is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_message_is_spooled_enveloped_and_streamed_back() {
    let rig = rig().await;
    let rcpts = ["anna@pec.other.test"];
    let mut m = msg("mario@pec.acme.test", &rcpts);
    let mut body = String::new();
    let mut i = 0;
    while body.len() < 6 << 20 {
        body.push_str(&format!(
            "riga {i}: è un messaggio grande, spedito a pezzi\r\n"
        ));
        i += 1;
    }
    m.body = body;
    let (status, actions) = submit(&rig, &m).await;
    assert_eq!(status, Status::Accept);
    let actions = actions.expect("actions");
    let pieces: Vec<usize> = actions
        .actions
        .iter()
        .filter_map(|a| match a {
            EomAction::ReplaceBody { chunk } => Some(chunk.len()),
            _ => None,
        })
        .collect();
    assert!(pieces.len() > 90, "{} pieces", pieces.len());
    assert!(pieces.iter().all(|&n| n > 0 && n <= 65_535));
    let out = apply(&m, &actions);
    openssl_verify(&out, pki().ca_file.path()).expect("openssl verifies the envelope");
    let r = read(&out).expect("read");
    let post = r.postacert.as_deref().expect("postacert");
    let (_, carried) = pec_milter::pec::mime::split_header_body(post);
    // the final CRLF of the original is the one before the next boundary
    assert_eq!(
        carried,
        m.body.as_bytes().strip_suffix(b"\r\n").expect("crlf")
    );
    assert_eq!(rig.injected.messages().len(), 1, "one accettazione");
    let left: Vec<_> = std::fs::read_dir(rig.dir.path().join("spool"))
        .expect("spool dir")
        .collect();
    assert!(left.is_empty(), "spool files left: {left:?}");
}
