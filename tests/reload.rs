//! Reloading the configuration (issue 17): the daemon started in-process
//! from a file (`daemon::Daemon`), a milter client (indymilter-test) and a
//! receipts' sink that takes every message; the file rewritten and
//! reloaded as SIGHUP does (`Reloader::reload_logged`). Then the binary
//! itself: SIGHUP never ends it, whatever the file says, and `pec-milter
//! reload` asks it.
//!
//! - a reload changing the provider name and the holder classes takes
//!   effect for new connections; a connection opened before finishes on
//!   the configuration it started with;
//! - a broken file (syntax, a check of `check-config`, a missing key, a
//!   key that does not match its certificate, missing trust anchors, an
//!   index source that cannot be loaded) is refused and the running
//!   configuration keeps serving;
//! - settings that need a restart (the listener) keep their running value;
//! - a reload adding a providers' index brings the reception point;
//! - the operations endpoint (`[metrics]`) stays bound across a reload
//!   (its `listen` needs a restart), its counters keep counting what the
//!   new generation does, and it answers for the new generation's index.

mod common;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{DaemonConfig, DaemonProcess, Holders, InProcessDaemon, free_port, log_has};
use indymilter::MacroStage;
use indymilter_test::{Status, TestConnection};
use pec_milter::index::ProviderEntry;
use pec_milter::pec::reader::read;
use rustix::process::Signal;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const MARIO: &str = "mario.rossi@pec.acme.test";
/// In our domain, of the default class (upa1).
const LUIGI: &str = "luigi.verdi@pec.acme.test";
/// Of another provider, class upa (`@pec.other.test`).
const ANNA: &str = "anna.bianchi@pec.other.test";

/// An SMTP server that takes every message (the reinjection listener).
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<Vec<u8>>>>);

impl Sink {
    async fn start() -> (Sink, u16) {
        let sink = Sink::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind sink");
        let port = listener.local_addr().expect("addr").port();
        let s = sink.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(s.clone().session(conn));
            }
        });
        (sink, port)
    }

    async fn session(self, conn: tokio::net::TcpStream) {
        let (r, mut w) = conn.into_split();
        let mut r = BufReader::new(r);
        if w.write_all(b"220 sink ESMTP\r\n").await.is_err() {
            return;
        }
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            let cmd = line.trim_end().to_ascii_uppercase();
            let reply: &[u8] = if cmd.starts_with("EHLO") || cmd.starts_with("HELO") {
                b"250-sink\r\n250 8BITMIME\r\n"
            } else if cmd.starts_with("DATA") {
                if w.write_all(b"354 go on\r\n").await.is_err() {
                    return;
                }
                let mut message = Vec::new();
                let mut l = Vec::new();
                loop {
                    l.clear();
                    if r.read_until(b'\n', &mut l).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if l == b".\r\n" {
                        break;
                    }
                    let unstuffed = l.strip_prefix(b".").unwrap_or(&l);
                    message.extend_from_slice(unstuffed);
                }
                self.0.lock().expect("sink").push(message);
                b"250 2.0.0 kept\r\n"
            } else if cmd.starts_with("QUIT") {
                let _ = w.write_all(b"221 bye\r\n").await;
                return;
            } else {
                b"250 ok\r\n"
            };
            if w.write_all(reply).await.is_err() {
                return;
            }
        }
    }

    /// The gestore-emittente of every accettazione taken so far.
    fn accettazioni(&self) -> Vec<String> {
        self.0
            .lock()
            .expect("sink")
            .iter()
            .filter(|m| {
                let text = String::from_utf8_lossy(m);
                text.contains("X-Ricevuta: accettazione")
            })
            .map(|m| {
                let r = read(m).expect("a receipt");
                match r.daticert {
                    Some(Ok(d)) => d.gestore_emittente,
                    other => panic!("no daticert: {other:?}"),
                }
            })
            .collect()
    }

    fn count(&self) -> usize {
        self.0.lock().expect("sink").len()
    }
}

/// The rig's configuration: the classes of the holders (upa1 by default,
/// upa `@pec.other.test`; `upr`), our domain and pec.other.test certified,
/// receipts to the sink at `sink_port`.
fn config(dir: &Path, sink_port: u16, upr: &[&str]) -> DaemonConfig {
    DaemonConfig {
        reinjection_port: sink_port,
        reinjection_timeout: Some("10s".into()),
        certified_domains: vec!["pec.acme.test".into(), "pec.other.test".into()],
        holders: Some(Holders {
            default_class: "upa1".into(),
            upa: vec!["@pec.other.test".into()],
            upr: upr.iter().map(|a| a.to_string()).collect(),
        }),
        ..DaemonConfig::new(dir)
    }
}

struct Rig {
    dir: tempfile::TempDir,
    sink: Sink,
    sink_port: u16,
    daemon: InProcessDaemon,
}

impl Rig {
    fn path(&self) -> PathBuf {
        self.dir.path().join("pec-milter.toml")
    }

    /// The configuration it started with (no upr).
    fn config(&self) -> DaemonConfig {
        config(self.dir.path(), self.sink_port, &[])
    }

    /// With the providers' index `igpec.ldif` in its directory, the demo
    /// CA the trust anchor.
    fn with_own_index(&self) -> DaemonConfig {
        let d = self.dir.path();
        DaemonConfig {
            index: Some(d.join("igpec.ldif")),
            trust: vec![d.join("demo/ca.pem")],
            ..self.config()
        }
    }

    fn generation(&self) -> u64 {
        self.reloader.current().get().number
    }

    async fn stop(self) {
        self.daemon.stop().await;
    }
}

/// Its daemon's `addr` and `reloader`.
impl std::ops::Deref for Rig {
    type Target = InProcessDaemon;
    fn deref(&self) -> &InProcessDaemon {
        &self.daemon
    }
}

async fn rig() -> Rig {
    rig_with(|_| ()).await
}

async fn rig_with(edit: impl FnOnce(&mut DaemonConfig)) -> Rig {
    let dir = tempfile::tempdir().expect("tmp");
    let (sink, sink_port) = Sink::start().await;
    let mut cfg = config(dir.path(), sink_port, &[]);
    edit(&mut cfg);
    let daemon = InProcessDaemon::start(&cfg.write())
        .await
        .expect("daemon starts");
    Rig {
        dir,
        sink,
        sink_port,
        daemon,
    }
}

/// A milter connection with a holder's message up to its end of header:
/// authenticated as `from`, to `to`.
async fn begin(addr: &str, from: &str, to: &str, subject: &str) -> TestConnection {
    let mut conn = TestConnection::configure()
        .open_tcp(addr)
        .await
        .expect("connect to the milter");
    conn.macros(MacroStage::Mail, [("{auth_authen}", from)])
        .await
        .expect("macros");
    let st = conn.mail([format!("<{from}>")]).await.expect("mail");
    assert_eq!(st, Status::Continue, "MAIL of {from}");
    conn.rcpt([format!("<{to}>")]).await.expect("rcpt");
    for (n, v) in [
        ("From", format!("<{from}>")),
        ("To", format!("<{to}>")),
        ("Subject", subject.to_string()),
        (
            "Message-ID",
            format!("<{}@client.example>", subject.replace(' ', ".")),
        ),
        ("Date", "Wed, 25 Nov 2026 10:00:00 +0100".to_string()),
    ] {
        conn.header(n, v.as_str()).await.expect("header");
    }
    conn
}

/// The rest of the message and the milter's answer at its end.
async fn finish(mut conn: TestConnection) -> Status {
    conn.body(b"Buongiorno.\r\n".to_vec()).await.expect("body");
    conn.macros(MacroStage::Eom, [("i", "4QUEUEID")])
        .await
        .expect("macros");
    let (_actions, status) = conn.eom().await.expect("eom");
    let _ = conn.close().await;
    status
}

async fn submit(addr: &str, from: &str, to: &str, subject: &str) -> Status {
    finish(begin(addr, from, to, subject).await).await
}

/// Wait until the sink holds `n` messages (receipts leave after the answer).
async fn sink_holds(sink: &Sink, n: usize) {
    for _ in 0..200 {
        if sink.count() >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the sink holds {} messages, not {n}", sink.count());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_changes_provider_name_and_holder_classes_for_new_connections() {
    let rig = rig().await;
    assert_eq!(rig.generation(), 1);
    // mario (upa1) may write to luigi (upa1)
    assert_eq!(
        submit(&rig.addr, MARIO, LUIGI, "before").await,
        Status::Accept
    );
    sink_holds(&rig.sink, 1).await;
    // a connection opened now, finished after the reload
    let open = begin(&rig.addr, MARIO, LUIGI, "across the reload").await;

    DaemonConfig {
        provider: "ACME PEC Ricaricata S.p.A.".into(),
        ..config(rig.dir.path(), rig.sink_port, &[MARIO])
    }
    .write();
    let r = rig.reloader.reload_logged().await.expect("reload taken");
    assert_eq!(r.generation, 2);
    assert_eq!(rig.generation(), 2);
    assert!(r.changed.contains(&"provider"), "{:?}", r.changed);
    assert!(r.changed.contains(&"holders"), "{:?}", r.changed);
    assert!(r.restart.is_empty(), "{:?}", r.restart);

    // the connection in progress: the class and name it started with
    assert_eq!(finish(open).await, Status::Accept);
    sink_holds(&rig.sink, 2).await;
    // new connections: mario is upr now, and may write only to upa
    assert_eq!(
        submit(&rig.addr, MARIO, LUIGI, "after upr").await,
        Status::Discard,
        "upr -> upa1: non-accettazione"
    );
    assert_eq!(
        submit(&rig.addr, MARIO, ANNA, "after upa").await,
        Status::Accept,
        "upr -> upa: accepted"
    );
    sink_holds(&rig.sink, 4).await;
    let names = rig.sink.accettazioni();
    assert_eq!(
        names,
        [
            "ACME PEC S.p.A.",
            "ACME PEC S.p.A.",
            "ACME PEC Ricaricata S.p.A."
        ],
        "the accettazioni before, across and after the reload"
    );
    rig.stop().await;
}

/// What makes the rig's configuration file bad.
type Breaker = Box<dyn Fn(&Rig)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_configuration_is_refused_and_the_running_one_keeps_serving() {
    let rig = rig().await;
    let d = rig.dir.path();
    let other_key = d.join("other.key");
    std::fs::write(
        &other_key,
        &pec_milter::crypto::pki::Pki::generate("Other", "pec.other.test", 30)
            .expect("pki")
            .key_pem,
    )
    .expect("key");
    // an index that loads, for the trust anchors to be the only fault
    std::fs::write(d.join("igpec.ldif"), own_index(d)).expect("ldif");
    let write = |cfg: DaemonConfig| -> Breaker {
        Box::new(move |_: &Rig| {
            cfg.write();
        })
    };
    let with_index = |ldif: &str, trust: &str| DaemonConfig {
        index: Some(d.join(ldif)),
        trust: vec![d.join(trust)],
        ..rig.config()
    };
    let cases: Vec<(&str, Breaker)> = vec![
        (
            "TOML syntax",
            Box::new(|rig: &Rig| {
                std::fs::write(rig.path(), "[provider\nname = ").expect("write");
            }),
        ),
        (
            "a check of check-config (unknown key)",
            write(DaemonConfig {
                extra: "no_such_key = 1\n".into(),
                ..rig.config()
            }),
        ),
        (
            "a check of check-config (no PEC domain)",
            write(DaemonConfig {
                domains: Some(vec![]),
                ..rig.config()
            }),
        ),
        (
            "the file itself gone",
            Box::new(|rig: &Rig| std::fs::remove_file(rig.path()).expect("rm")),
        ),
        (
            "a key that does not match its certificate",
            write(DaemonConfig {
                key: other_key,
                init_demo: false,
                ..rig.config()
            }),
        ),
        (
            "a key file that is not there",
            write(DaemonConfig {
                key: d.join("demo/missing.key"),
                init_demo: false,
                ..rig.config()
            }),
        ),
        (
            "trust anchors that are not there",
            write(with_index("igpec.ldif", "no-such-ca.pem")),
        ),
        (
            "an index source that cannot be loaded",
            write(with_index("no-such-index.ldif", "demo/ca.pem")),
        ),
    ];
    let mut accepted = 0;
    for (i, (name, make)) in cases.iter().enumerate() {
        make(&rig);
        let e = match rig.reloader.reload_logged().await {
            Ok(r) => panic!("{name}: reload taken (generation {})", r.generation),
            Err(e) => e,
        };
        eprintln!("{name}: refused: {e}");
        assert_eq!(rig.generation(), 1, "{name}");
        assert_eq!(
            submit(&rig.addr, MARIO, LUIGI, &format!("still serving {i}")).await,
            Status::Accept,
            "{name}: the running configuration serves"
        );
        accepted += 1;
    }
    sink_holds(&rig.sink, accepted).await;
    assert!(
        rig.sink
            .accettazioni()
            .iter()
            .all(|n| n == "ACME PEC S.p.A."),
        "every accettazione from the running configuration"
    );
    // and a good file again is taken
    rig.config().write();
    assert_eq!(rig.reloader.reload().await.expect("taken").generation, 2);
    rig.stop().await;
}

/// An LDIF index listing the rig's own demo certificate for its domain.
fn own_index(dir: &Path) -> String {
    let pem = std::fs::read(dir.join("demo/provider.crt")).expect("cert");
    let der = openssl::x509::X509::from_pem(&pem)
        .expect("pem")
        .to_der()
        .expect("der");
    let entry = ProviderEntry::for_certificate(
        "ACME PEC S.p.A.",
        der,
        "posta-certificata@pec.acme.test".into(),
        &["pec.acme.test".to_string()],
    );
    pec_milter::index::ldif::write(&[entry])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_that_need_a_restart_keep_their_running_values() {
    let rig = rig().await;
    let running = rig.reloader.current().get().cfg.milter.listen.clone();
    let elsewhere = format!("inet:127.0.0.1:{}", free_port());
    DaemonConfig {
        listen: elsewhere.clone(),
        provider: "ACME PEC Due S.p.A.".into(),
        ..rig.config()
    }
    .write();
    let r = rig.reloader.reload_logged().await.expect("reload taken");
    let keys: Vec<&str> = r.restart.iter().map(|n| n.key).collect();
    assert_eq!(keys, ["milter.listen"], "{:?}", r.restart);
    assert!(r.restart[0].detail.contains(&elsewhere), "{:?}", r.restart);
    let g = rig.reloader.current().get();
    assert_eq!(g.cfg.milter.listen, running, "the listener stays");
    assert_eq!(
        g.cfg.provider.name, "ACME PEC Due S.p.A.",
        "the rest is taken"
    );
    drop(g);
    // still on the old address, with the new name
    assert_eq!(
        submit(&rig.addr, MARIO, LUIGI, "old address").await,
        Status::Accept
    );
    sink_holds(&rig.sink, 1).await;
    assert_eq!(rig.sink.accettazioni(), ["ACME PEC Due S.p.A."]);
    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adding_the_providers_index_brings_the_reception_point() {
    let rig = rig().await;
    let unauthenticated = |addr: String| async move {
        let mut conn = TestConnection::configure()
            .open_tcp(addr.as_str())
            .await
            .expect("connect");
        let st = conn.mail(["<gianni@pec.other.test>"]).await.expect("mail");
        let _ = conn.close().await;
        st
    };
    // no index: inbound mail passes untouched at MAIL
    assert_eq!(unauthenticated(rig.addr.clone()).await, Status::Accept);
    std::fs::write(rig.dir.path().join("igpec.ldif"), own_index(rig.dir.path())).expect("ldif");
    rig.with_own_index().write();
    let r = rig.reloader.reload_logged().await.expect("reload taken");
    assert!(r.changed.contains(&"index"), "{:?}", r.changed);
    let g = rig.reloader.current().get();
    let index = g.index.as_ref().expect("an index");
    assert_eq!(index.snapshot().expect("loaded").providers().len(), 1);
    assert!(g.roles.reception.is_some());
    drop(g);
    // the reception point decides once the recipients are known
    assert_eq!(unauthenticated(rig.addr.clone()).await, Status::Continue);
    // the same source again: the same index, read again in place (data
    // refreshed for the connections in progress too, as a scheduled
    // refresh does)
    let before = rig.reloader.current().get().index.clone().expect("index");
    let mut two = own_index(rig.dir.path());
    two.push('\n');
    two.push_str(&pec_milter::index::ldif::write(&[
        ProviderEntry::for_certificate(
            "Other PEC S.p.A.",
            common::other()
                .pki
                .cert()
                .expect("cert")
                .to_der()
                .expect("der"),
            "posta-certificata@pec.other.test".into(),
            &["pec.other.test".to_string()],
        ),
    ]));
    std::fs::write(rig.dir.path().join("igpec.ldif"), two).expect("ldif");
    let r = rig.reloader.reload_logged().await.expect("reload taken");
    assert_eq!(r.generation, 3);
    assert!(r.changed.is_empty(), "{:?}", r.changed);
    let g = rig.reloader.current().get();
    let index = g.index.clone().expect("index");
    assert!(Arc::ptr_eq(&index, &before), "the same index object");
    assert_eq!(index.snapshot().expect("loaded").providers().len(), 2);
    drop(g);
    // its file now unreadable: the last good copy is kept (as a failed
    // scheduled refresh keeps it) and the reload taken
    std::fs::write(rig.dir.path().join("igpec.ldif"), "garbage: [").expect("ldif");
    let r = rig.reloader.reload_logged().await.expect("reload taken");
    assert_eq!(r.generation, 4);
    assert_eq!(
        before.snapshot().map(|s| s.providers().len()),
        Some(2),
        "the last good copy"
    );
    rig.stop().await;
}

/// `GET path` on the operations endpoint: (status code, body).
async fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the operations endpoint");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut raw = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut s, &mut raw)
        .await
        .expect("read");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, body.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_keeps_counting_across_reloads() {
    let port = free_port();
    let rig = rig_with(|cfg| cfg.metrics = Some(format!("127.0.0.1:{port}"))).await;
    const ACCEPTED: &str = "pec_milter_messages_total{role=\"access\",outcome=\"accept\"}";
    assert_eq!(
        submit(&rig.addr, MARIO, LUIGI, "before").await,
        Status::Accept
    );
    let (code, body) = http_get(port, "/metrics").await;
    assert_eq!(code, 200);
    assert!(body.contains(&format!("{ACCEPTED} 1\n")), "{body}");
    assert!(body.contains("pec_milter_index_age_seconds -1"), "{body}");
    let (code, body) = http_get(port, "/health").await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(v["dependencies"].get("index").is_none(), "no [index]: {v}");

    // a reload adding the providers' index and moving the endpoint: the
    // endpoint stays where it is (a restart), with the same counters, and
    // answers for the new generation's index
    std::fs::write(rig.dir.path().join("igpec.ldif"), own_index(rig.dir.path())).expect("ldif");
    let moved = free_port();
    DaemonConfig {
        metrics: Some(format!("127.0.0.1:{moved}")),
        ..rig.with_own_index()
    }
    .write();
    let r = rig.reloader.reload_logged().await.expect("reload taken");
    let keys: Vec<&str> = r.restart.iter().map(|n| n.key).collect();
    assert_eq!(keys, ["metrics.listen"], "{:?}", r.restart);
    assert!(
        tokio::net::TcpStream::connect(("127.0.0.1", moved))
            .await
            .is_err(),
        "nothing bound at the new address"
    );
    assert_eq!(
        submit(&rig.addr, MARIO, LUIGI, "after").await,
        Status::Accept
    );
    let (code, body) = http_get(port, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        body.contains(&format!("{ACCEPTED} 2\n")),
        "the new generation counts into the same metrics: {body}"
    );
    assert!(
        !body.contains("pec_milter_index_age_seconds -1"),
        "the new generation's index, loaded: {body}"
    );
    let (code, body) = http_get(port, "/health").await;
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["dependencies"]["index"]["state"], "up", "{v}");
    rig.stop().await;
}

// ---------------------------------------------------------------------------
// The binary: SIGHUP, whatever the file says, and `pec-milter reload`.

/// How long a log line may take to appear.
const LOG_WAIT: Duration = Duration::from_secs(10);

fn wait_log(log: &Path, what: &str, n: usize) {
    common::wait_log(log, what, n, LOG_WAIT);
}

#[test]
fn sighup_never_stops_the_daemon_and_pec_milter_reload_asks_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_port();
    // the reinjection listener is never reached here: nothing is submitted
    let listening = |cfg: DaemonConfig| DaemonConfig {
        listen: format!("inet:127.0.0.1:{port}"),
        ..cfg
    };
    let path = listening(config(dir.path(), free_port(), &[])).write();
    let log = dir.path().join("pec-milter.log");
    let bin = env!("CARGO_BIN_EXE_pec-milter");
    let mut daemon = DaemonProcess::start(&path, &log, LOG_WAIT);
    let pid = daemon.pid();

    // no [index] (SIGHUP used to end such a daemon): the same file again
    daemon.signal(Signal::HUP);
    wait_log(&log, "configuration reloaded", 1);
    assert!(daemon.is_running(), "alive after SIGHUP");

    // a broken file: refused, still serving
    std::fs::write(&path, "[provider\n").expect("write");
    daemon.signal(Signal::HUP);
    wait_log(&log, "reload refused", 1);
    assert!(daemon.is_running(), "alive after a refused reload");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    // `pec-milter reload` checks the file first: it does not ask
    let out = std::process::Command::new(bin)
        .args(["reload", "--config"])
        .arg(&path)
        .output()
        .expect("pec-milter reload");
    assert!(!out.status.success(), "a broken file is not sent for");

    // SIGHUPs in a burst: each taken or folded into the next, never fatal
    listening(DaemonConfig {
        provider: "ACME PEC Ricaricata S.p.A.".into(),
        ..config(dir.path(), free_port(), &[])
    })
    .write();
    for _ in 0..5 {
        daemon.signal(Signal::HUP);
    }
    wait_log(&log, "configuration reloaded", 2);
    assert!(daemon.is_running(), "alive after a burst of SIGHUP");

    // `pec-milter reload`: the daemon's pid from the message log's lock
    let before = log_has(&log, "configuration reloaded");
    let out = std::process::Command::new(bin)
        .args(["reload", "--config"])
        .arg(&path)
        .output()
        .expect("pec-milter reload");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("pid {pid}")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_log(&log, "configuration reloaded", before + 1);
    assert!(log_has(&log, "ACME PEC Ricaricata S.p.A.") >= 1);

    // and SIGTERM still stops it, cleanly
    let status = daemon.stop();
    assert!(status.success(), "{status:?}");
    assert!(log_has(&log, "panicked") == 0);
}
