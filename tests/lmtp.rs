//! The LMTP edge (`pec_milter::lmtp`) against real components:
//!
//! - our LMTP server driven by a raw TCP client (pipelined commands, errors,
//!   sizes, shutdown) and by a REAL Postfix (`virtual_transport =
//!   lmtp:inet:127.0.0.1:<port>`) whose maillog must show `status=sent`,
//!   `status=deferred` and `status=bounced` for the replies we chose;
//! - the embedded Maildir writer on a temp dir;
//! - the LMTP client against a REAL Dovecot LMTP (passwd-file userdb for
//!   "unknown user", the quota plugin for "over quota"), and against small
//!   fake servers for timeouts and lost connections.
//!
//! Needs Postfix, swaks and Dovecot's LMTP server (Debian packages postfix,
//! swaks, dovecot-lmtpd) and root (Postfix and Dovecot are started as root
//! in temp dirs): run `integration/deps.sh` as root. Everything talks to
//! 127.0.0.1 only; the Postfix instance never does DNS (`default_transport
//! = error:`, no relayhost, literal next hop).

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, installed, is_root, require_root};
use pec_milter::lmtp::client::LmtpClient;
use pec_milter::lmtp::maildir::Maildir;
use pec_milter::lmtp::server::{self, LmtpHandler, ServerConfig, serve, serve_with};
use pec_milter::lmtp::{MailboxStore, RcptOutcome};
use pec_milter::spool::{SpoolOptions, Spooled};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const T: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------ helpers

fn tempdir_755() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_port(port: u16, what: &str, log: impl Fn() -> String) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{what} not listening on 127.0.0.1:{port}:\n{}",
            log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn maildir_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

fn message(subject: &str) -> Vec<u8> {
    format!(
        "From: mario.rossi@pec.a.test\r\n\
         To: anna.bianchi@pec.b.test\r\n\
         Subject: {subject}\r\n\
         Message-ID: <{subject}@pec.a.test>\r\n\
         \r\n\
         First line.\r\n\
         .a line that starts with a dot\r\n\
         ..two dots\r\n\
         Accented: caff\u{e8}\r\n"
    )
    .into_bytes()
}

fn big_message(subject: &str, size: usize) -> Vec<u8> {
    let mut m = message(subject);
    let line = "0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n";
    while m.len() < size {
        m.extend_from_slice(line.as_bytes());
    }
    m
}

fn rcpts(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

// ------------------------------------------------------------------ test LMTP handler and server

/// One transaction as the handler saw it.
#[derive(Debug, Clone)]
struct Call {
    from: String,
    rcpts: Vec<String>,
    message: Vec<u8>,
}

/// Replies by the recipient's local part: `temp*` → 452 4.2.2, `perm*` →
/// 550 5.1.1, `panic*` → the handler panics, anything else → delivered.
#[derive(Default)]
struct TestHandler {
    calls: Mutex<Vec<Call>>,
    delay: Duration,
}

impl TestHandler {
    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl LmtpHandler for TestHandler {
    async fn deliver(&self, mail_from: &str, rcpts: &[String], message: Spooled) -> Vec<String> {
        let message = message.to_vec().expect("spooled message");
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        let replies = rcpts
            .iter()
            .map(|r| {
                let local = r.split('@').next().unwrap_or("").to_ascii_lowercase();
                if local.starts_with("temp") {
                    RcptOutcome::temporary(452, "4.2.2", "mailbox temporarily full").reply_line()
                } else if local.starts_with("perm") {
                    RcptOutcome::permanent(550, "5.1.1", "user unknown").reply_line()
                } else if local.starts_with("panic") {
                    panic!("test handler panics on purpose");
                } else {
                    RcptOutcome::Delivered.reply_line()
                }
            })
            .collect();
        self.calls.lock().unwrap().push(Call {
            from: mail_from.to_owned(),
            rcpts: rcpts.to_vec(),
            message,
        });
        replies
    }
}

struct TestServer {
    port: u16,
    handler: Arc<TestHandler>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    async fn start(handler: TestHandler, config: ServerConfig) -> Self {
        let listener = server::bind("inet:127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let handler = Arc::new(handler);
        let (tx, rx) = oneshot::channel::<()>();
        let h: Arc<dyn LmtpHandler> = handler.clone();
        let task = tokio::spawn(serve_with(listener, h, config, async {
            let _ = rx.await;
        }));
        Self {
            port,
            handler,
            stop: Some(tx),
            task,
        }
    }

    async fn default() -> Self {
        Self::start(TestHandler::default(), config(10_000_000)).await
    }

    /// Trigger the shutdown and wait for `serve` to return.
    async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(T, &mut self.task)
            .await
            .expect("serve did not return after shutdown")
            .unwrap()
            .unwrap();
    }
}

fn config(max: u64) -> ServerConfig {
    let mut c = ServerConfig::new(max);
    c.hostname = "lmtp.pec.b.test".into();
    c
}

/// A raw LMTP client for driving the server byte by byte.
struct Raw<S> {
    r: BufReader<tokio::io::ReadHalf<S>>,
    w: tokio::io::WriteHalf<S>,
}

impl Raw<TcpStream> {
    async fn connect(port: u16) -> Self {
        Raw::new(TcpStream::connect(("127.0.0.1", port)).await.unwrap())
    }

    /// Connected, and the 220 greeting read.
    async fn greeted(port: u16) -> Self {
        let mut c = Self::connect(port).await;
        c.expect(220).await;
        c
    }
}

impl<S: AsyncRead + AsyncWrite> Raw<S> {
    fn new(s: S) -> Self {
        let (r, w) = tokio::io::split(s);
        Self {
            r: BufReader::new(r),
            w,
        }
    }

    async fn send(&mut self, data: &str) {
        self.send_bytes(data.as_bytes()).await;
    }

    async fn send_bytes(&mut self, data: &[u8]) {
        self.w.write_all(data).await.unwrap();
        self.w.flush().await.unwrap();
    }

    /// One reply: (code, lines with their codes). Panics on EOF.
    async fn reply(&mut self) -> (u16, Vec<String>) {
        self.try_reply().await.expect("connection closed")
    }

    async fn try_reply(&mut self) -> Option<(u16, Vec<String>)> {
        let mut lines = Vec::new();
        loop {
            let mut l = String::new();
            let n = tokio::time::timeout(T, self.r.read_line(&mut l))
                .await
                .expect("reply timeout")
                .unwrap();
            if n == 0 {
                return None;
            }
            assert!(l.ends_with("\r\n"), "reply line without CRLF: {l:?}");
            let l = l.trim_end().to_owned();
            let more = l.as_bytes().get(3) == Some(&b'-');
            let code: u16 = l[..3].parse().unwrap();
            lines.push(l);
            if !more {
                return Some((code, lines));
            }
        }
    }

    /// In one write (pipelined): LHLO x (with `lhlo`), MAIL FROM:<a@b.test>,
    /// RCPT TO for each of `rcpts`, DATA; then 250 for each command and 354.
    /// Returns the LHLO reply (empty without `lhlo`).
    async fn open_data(&mut self, lhlo: bool, rcpts: &[&str]) -> Vec<String> {
        let mut cmds = String::new();
        if lhlo {
            cmds.push_str("LHLO x\r\n");
        }
        cmds.push_str("MAIL FROM:<a@b.test>\r\n");
        for r in rcpts {
            cmds.push_str(&format!("RCPT TO:<{r}>\r\n"));
        }
        cmds.push_str("DATA\r\n");
        self.send(&cmds).await;
        let lhlo = if lhlo {
            self.expect(250).await
        } else {
            Vec::new()
        };
        for _ in 0..=rcpts.len() {
            self.expect(250).await;
        }
        self.expect(354).await;
        lhlo
    }

    async fn expect(&mut self, code: u16) -> Vec<String> {
        let (c, lines) = self.reply().await;
        assert_eq!(c, code, "expected {code}, got {lines:?}");
        lines
    }

    /// Only EOF is left.
    async fn expect_closed(&mut self) {
        let mut rest = String::new();
        let n = tokio::time::timeout(T, self.r.read_line(&mut rest))
            .await
            .expect("connection not closed")
            .unwrap_or(0);
        assert_eq!(n, 0, "expected EOF, got {rest:?}");
    }
}

// ------------------------------------------------------------------ server: raw client

#[tokio::test]
async fn server_pipelined_transactions() {
    let srv = TestServer::default().await;
    let mut c = Raw::connect(srv.port).await;
    let greeting = c.expect(220).await;
    assert!(greeting[0].contains("lmtp.pec.b.test"), "{greeting:?}");

    // The whole envelope in one write, as Postfix does with PIPELINING.
    c.send(
        "LHLO mx.pec.b.test\r\n\
         MAIL FROM:<mario.rossi@pec.a.test> SIZE=300 BODY=8BITMIME\r\n\
         RCPT TO:<ok@pec.b.test>\r\n\
         RCPT TO:<temp@pec.b.test>\r\n\
         RCPT TO:<perm@pec.b.test>\r\n\
         DATA\r\n",
    )
    .await;
    let lhlo = c.expect(250).await;
    let caps: Vec<&str> = lhlo.iter().map(|l| &l[4..]).collect();
    assert_eq!(
        caps,
        [
            "lmtp.pec.b.test",
            "PIPELINING",
            "ENHANCEDSTATUSCODES",
            "8BITMIME",
            "SIZE 10000000"
        ]
    );
    assert_eq!(c.expect(250).await, ["250 2.1.0 Ok"]);
    for _ in 0..3 {
        assert_eq!(c.expect(250).await, ["250 2.1.5 Ok"]);
    }
    c.expect(354).await;
    // Dot-stuffed on the wire; a bare-LF line too.
    c.send_bytes(
        b"Subject: one\r\n\r\n..leading dot\r\nbare lf\nlast\r\n.\r\nMAIL FROM:<>\r\nRCPT TO:<Ok2@Pec.B.Test>\r\nDATA\r\n",
    )
    .await;
    assert_eq!(c.expect(250).await, ["250 2.0.0 Ok"]);
    assert_eq!(c.expect(452).await, ["452 4.2.2 mailbox temporarily full"]);
    assert_eq!(c.expect(550).await, ["550 5.1.1 user unknown"]);

    // Second transaction on the same connection, null sender, pipelined
    // right after the first message.
    c.expect(250).await;
    c.expect(250).await;
    c.expect(354).await;
    c.send("second\r\n.\r\nNOOP\r\nRSET\r\nQUIT\r\n").await;
    assert_eq!(c.expect(250).await, ["250 2.0.0 Ok"]);
    c.expect(250).await;
    c.expect(250).await;
    assert_eq!(c.expect(221).await, ["221 2.0.0 Bye"]);
    c.expect_closed().await;

    let calls = srv.handler.calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0].from, "mario.rossi@pec.a.test");
    assert_eq!(
        calls[0].rcpts,
        ["ok@pec.b.test", "temp@pec.b.test", "perm@pec.b.test"]
    );
    assert_eq!(
        calls[0].message,
        b"Subject: one\r\n\r\n.leading dot\r\nbare lf\r\nlast\r\n"
    );
    assert_eq!(calls[1].from, "");
    assert_eq!(calls[1].rcpts, ["Ok2@Pec.B.Test"]);
    assert_eq!(calls[1].message, b"second\r\n");
    srv.shutdown().await;
}

#[tokio::test]
async fn server_refuses_bad_input_without_dying() {
    let srv = TestServer::default().await;
    // (command, expected code); each group on a fresh connection, as a
    // connection is closed after 20 errors.
    let groups: &[&[(&str, u16)]] = &[
        &[
            ("MAIL FROM:<a@b.test>", 503), // before LHLO
            ("HELO x", 500),
            ("EHLO x", 500),
            ("LHLO", 501),
            ("LHLO client.test", 250),
            ("RCPT TO:<a@b.test>", 503), // before MAIL
            ("DATA", 503),
            ("hello there", 500),
            ("", 500),
            ("VRFY a", 502),
            ("BDAT 10 LAST", 502),
            ("STARTTLS", 502),
            ("RSET", 250),
            ("noop", 250),
        ],
        &[
            ("LHLO client.test", 250),
            ("MAIL a@b.test", 501),
            ("MAIL FROM:a@b.test", 501),
            ("MAIL FROM:<a@b.test> SIZE=99999999999", 552),
            ("MAIL FROM:<a@b.test> SIZE=abc", 501),
            ("MAIL FROM:<a@b.test> BODY=BINARYMIME", 501),
            ("MAIL FROM:<a@b.test> SMTPUTF8", 555),
            ("MAIL FROM:<a@b.test>", 250),
            ("MAIL FROM:<c@b.test>", 503), // nested
            ("RCPT TO:<>", 501),
            ("RCPT TO:<no-domain>", 501),
            ("RCPT TO:<a b@c.test>", 501),
            ("RCPT TO:<x@y.test> NOTIFY=NEVER", 555),
            ("DATA", 503), // no recipient yet
            ("DATA now", 501),
            ("RCPT TO:<Postmaster>", 250),
            ("RSET", 250),
            ("DATA", 503), // RSET ended the transaction
        ],
    ];
    for cases in groups {
        let mut c = Raw::greeted(srv.port).await;
        for (cmd, code) in cases.iter() {
            c.send(&format!("{cmd}\r\n")).await;
            let (got, lines) = c.reply().await;
            assert_eq!(got, *code, "{cmd:?} -> {lines:?}");
            if *code >= 500 {
                assert!(
                    lines[0].as_bytes()[4] == b'5',
                    "enhanced code for {cmd:?}: {lines:?}"
                );
            }
        }
    }
    // Binary garbage and an endless line.
    let mut c = Raw::greeted(srv.port).await;
    c.send_bytes(b"\xff\xfe\x00\x01garbage\r\n").await;
    c.expect(500).await;
    c.send_bytes(&vec![b'A'; 100_000]).await;
    c.send("\r\n").await;
    assert_eq!(c.expect(500).await, ["500 5.5.2 Line too long"]);
    // Still serving.
    c.send("NOOP\r\nQUIT\r\n").await;
    c.expect(250).await;
    c.expect(221).await;
    assert!(srv.handler.calls().is_empty());
    srv.shutdown().await;
}

#[tokio::test]
async fn server_closes_after_too_many_errors() {
    let srv = TestServer::default().await;
    let mut c = Raw::greeted(srv.port).await;
    for _ in 0..19 {
        c.send("BOGUS\r\n").await;
        c.expect(500).await;
    }
    c.send("BOGUS\r\n").await;
    c.expect(500).await;
    c.expect(421).await;
    c.expect_closed().await;
    srv.shutdown().await;
}

#[tokio::test]
async fn server_spools_large_messages_and_answers_4xx_when_the_spool_fails() {
    // a spool on disk from the first byte: the handler gets the same bytes
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cfg = config(1_000_000);
    cfg.spool = SpoolOptions {
        dir: dir.path().join("spool"),
        memory_limit: 0,
    };
    let srv = TestServer::start(TestHandler::default(), cfg).await;
    let mut c = Raw::greeted(srv.port).await;
    c.open_data(true, &["one@pec.b.test"]).await;
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    while big.len() < 300_000 {
        big.extend_from_slice(b"0123456789abcdefghijklmnopqrstuvwxyz\r\n");
    }
    c.send_bytes(&big).await;
    c.send(".\r\n").await;
    c.expect(250).await;
    let calls = srv.handler.calls();
    assert_eq!(calls.len(), 1);
    assert!(calls[0].message == big, "the handler got other bytes");

    // the spool directory cannot be made (a file stands there): 451 for
    // every recipient, nothing handed on
    let blocked = dir.path().join("not-a-dir");
    std::fs::write(&blocked, b"x").expect("file");
    let mut cfg = config(1_000_000);
    cfg.spool = SpoolOptions {
        dir: blocked.join("spool"),
        memory_limit: 0,
    };
    let srv = TestServer::start(TestHandler::default(), cfg).await;
    let mut c = Raw::greeted(srv.port).await;
    c.open_data(true, &["one@pec.b.test", "two@pec.b.test"])
        .await;
    c.send("Subject: x\r\n\r\nbody\r\n.\r\n").await;
    for _ in 0..2 {
        assert_eq!(
            c.expect(451).await,
            ["451 4.3.0 Cannot spool the message, try again later"]
        );
    }
    assert!(srv.handler.calls().is_empty());
}

#[tokio::test]
async fn server_refuses_oversize_messages_per_recipient() {
    let srv = TestServer::start(TestHandler::default(), config(1000)).await;
    let mut c = Raw::greeted(srv.port).await;
    let lhlo = c
        .open_data(true, &["one@pec.b.test", "two@pec.b.test"])
        .await;
    assert_eq!(lhlo.last().unwrap(), "250 SIZE 1000");
    let big = big_message("big", 5000);
    c.send_bytes(&big).await;
    c.send(".\r\n").await;
    for _ in 0..2 {
        assert_eq!(
            c.expect(552).await,
            ["552 5.3.4 Message size exceeds fixed maximum message size"]
        );
    }
    // Exactly at the limit is accepted.
    c.open_data(false, &["one@pec.b.test"]).await;
    let line = format!("{}\r\n", "x".repeat(98));
    c.send(&line.repeat(10)).await; // 10 * 100 = 1000 octets
    c.send(".\r\n").await;
    c.expect(250).await;
    let calls = srv.handler.calls();
    assert_eq!(
        calls.len(),
        1,
        "the oversize message never reached the handler"
    );
    assert_eq!(calls[0].message.len(), 1000);
    srv.shutdown().await;
}

#[tokio::test]
async fn server_shutdown_finishes_the_transaction_in_progress() {
    let handler = TestHandler {
        delay: Duration::from_millis(300),
        ..Default::default()
    };
    let srv = TestServer::start(handler, config(1_000_000)).await;
    let port = srv.port;
    let mut busy = Raw::greeted(port).await;
    let mut idle = Raw::greeted(port).await;
    busy.send("LHLO x\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<ok@pec.b.test>\r\n")
        .await;
    busy.expect(250).await;
    busy.expect(250).await;
    busy.expect(250).await;

    let handler = srv.handler.clone();
    let stopping = tokio::spawn(srv.shutdown());
    // The idle connection is told at once; no new connection is accepted.
    idle.expect(421).await;
    idle.expect_closed().await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "still accepting after shutdown"
    );
    assert!(
        !stopping.is_finished(),
        "serve returned with a transaction open"
    );

    // The busy one finishes its transaction, then is closed.
    busy.send("DATA\r\n").await;
    busy.expect(354).await;
    busy.send("hello\r\n.\r\n").await;
    busy.expect(250).await;
    busy.expect(421).await;
    busy.expect_closed().await;
    tokio::time::timeout(T, stopping).await.unwrap().unwrap();
    assert_eq!(handler.calls().len(), 1);
}

#[tokio::test]
async fn server_times_out_idle_clients() {
    let mut cfg = config(1000);
    cfg.command_timeout = Duration::from_millis(300);
    cfg.data_timeout = Duration::from_millis(300);
    let srv = TestServer::start(TestHandler::default(), cfg).await;
    let mut c = Raw::greeted(srv.port).await;
    let lines = c.expect(421).await;
    assert!(lines[0].starts_with("421 4.4.2"), "{lines:?}");
    c.expect_closed().await;

    // Stalled in the middle of DATA.
    let mut c = Raw::greeted(srv.port).await;
    c.open_data(true, &["ok@pec.b.test"]).await;
    c.send("half a mess").await;
    c.expect(421).await;
    c.expect_closed().await;
    assert!(srv.handler.calls().is_empty());
    srv.shutdown().await;
}

#[tokio::test]
async fn server_survives_a_panicking_handler() {
    let srv = TestServer::default().await;
    let mut c = Raw::greeted(srv.port).await;
    c.open_data(true, &["ok@pec.b.test", "panic@pec.b.test"])
        .await;
    c.send("x\r\n.\r\n").await;
    for _ in 0..2 {
        let l = c.expect(451).await;
        assert!(l[0].starts_with("451 4.3.0"), "{l:?}");
    }
    c.send("NOOP\r\n").await;
    c.expect(250).await;
    srv.shutdown().await;
}

#[tokio::test]
async fn server_on_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lmtp.sock");
    // A stale socket file is replaced.
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
    let spec = format!("unix:{}", path.display());
    let listener = server::bind(&spec).await.unwrap();
    assert!(listener.local_addr().is_none());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666);
    let handler = Arc::new(TestHandler::default());
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(listener, handler.clone(), 1_000_000, async {
        let _ = rx.await;
    }));
    let mut c = Raw::new(tokio::net::UnixStream::connect(&path).await.unwrap());
    c.expect(220).await;
    c.open_data(true, &["ok@pec.b.test"]).await;
    c.send("over unix\r\n.\r\nQUIT\r\n").await;
    c.expect(250).await;
    c.expect(221).await;
    tx.send(()).unwrap();
    tokio::time::timeout(T, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(!path.exists(), "socket file removed at shutdown");
    assert_eq!(handler.calls()[0].message, b"over unix\r\n");

    // Bad specs and a regular file in the way.
    for bad in [
        "127.0.0.1:25",
        "inet:127.0.0.1",
        "inet::25",
        "unix:",
        "tcp:x:1",
    ] {
        assert!(server::bind(bad).await.is_err(), "{bad}");
    }
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    assert!(
        server::bind(&format!("unix:{}", file.display()))
            .await
            .is_err()
    );
}

// ------------------------------------------------------------------ LmtpClient against our server

#[tokio::test]
async fn client_to_our_server_round_trip_is_byte_exact() {
    let srv = TestServer::default().await;
    let client = LmtpClient::new(format!("127.0.0.1:{}", srv.port), "client.test".into(), T);
    let mut msg = message("roundtrip");
    msg.extend_from_slice(b".\r\n..\r\n.x\r\nno final line end");
    let out = client
        .deliver(
            "mario.rossi@pec.a.test",
            &rcpts(&["ok@pec.b.test", "temp@pec.b.test", "perm@pec.b.test"]),
            &msg,
        )
        .await;
    assert_eq!(
        out,
        [
            RcptOutcome::Delivered,
            RcptOutcome::temporary(452, "4.2.2", "mailbox temporarily full"),
            RcptOutcome::permanent(550, "5.1.1", "user unknown"),
        ]
    );
    let calls = srv.handler.calls();
    let mut want = msg.clone();
    want.extend_from_slice(b"\r\n");
    assert_eq!(calls[0].message, want);
    srv.shutdown().await;
}

// ------------------------------------------------------------------ LmtpClient against fake servers

#[derive(Clone, Copy)]
enum AfterData {
    /// Reply 250 for each recipient.
    Ok,
    /// Reply once, then close the connection.
    DropAfterOne,
    /// Never reply.
    Hang,
}

/// A scripted LMTP server without PIPELINING: multi-line replies, RCPT
/// refusals for `nobody*`, then the given behaviour after the data. Returns
/// the port and the lines it read.
async fn fake_server(after: AfterData) -> (u16, Arc<Mutex<Vec<String>>>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let (r, mut w) = s.into_split();
        let mut r = BufReader::new(r);
        w.write_all(b"220-fake.test first line\r\n220 fake.test LMTP\r\n")
            .await
            .unwrap();
        let mut accepted = 0;
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            seen2.lock().unwrap().push(line.clone());
            let up = line.to_ascii_uppercase();
            let reply: &[u8] = if up.starts_with("LHLO") {
                b"250-fake.test\r\n250-ENHANCEDSTATUSCODES\r\n250 8BITMIME\r\n"
            } else if up.starts_with("MAIL") {
                b"250 2.1.0 Ok\r\n"
            } else if up.starts_with("RCPT TO:<NOBODY") {
                b"550-5.1.1 <nobody@pec.b.test> User\r\n550 5.1.1 doesn't exist\r\n"
            } else if up.starts_with("RCPT") {
                accepted += 1;
                b"250 2.1.5 Ok\r\n"
            } else if up.starts_with("DATA") {
                w.write_all(b"354 go ahead\r\n").await.unwrap();
                loop {
                    let mut l = String::new();
                    if r.read_line(&mut l).await.unwrap_or(0) == 0 {
                        return;
                    }
                    seen2.lock().unwrap().push(l.clone());
                    if l == ".\r\n" {
                        break;
                    }
                }
                match after {
                    AfterData::Ok => {
                        for _ in 0..accepted {
                            w.write_all(b"250 2.0.0 Saved\r\n").await.unwrap();
                        }
                        continue;
                    }
                    AfterData::DropAfterOne => {
                        w.write_all(b"250 2.0.0 Saved\r\n").await.unwrap();
                        return;
                    }
                    AfterData::Hang => {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        return;
                    }
                }
            } else if up.starts_with("QUIT") {
                let _ = w.write_all(b"221 2.0.0 Bye\r\n").await;
                return;
            } else {
                b"500 5.5.2 what?\r\n"
            };
            w.write_all(reply).await.unwrap();
        }
    });
    (port, seen)
}

#[tokio::test]
async fn client_lock_step_and_multi_line_replies() {
    let (port, seen) = fake_server(AfterData::Ok).await;
    let client = LmtpClient::new(format!("127.0.0.1:{port}"), "client.test".into(), T);
    let out = client
        .deliver(
            "",
            &rcpts(&[
                "anna@pec.b.test",
                "nobody@pec.b.test",
                "bad>addr@x",
                "mario@pec.b.test",
            ]),
            b"Subject: x\n\n.dot\ncaff\xc3\xa8\n",
        )
        .await;
    assert_eq!(out[0], RcptOutcome::Delivered);
    assert_eq!(
        out[1],
        RcptOutcome::permanent(550, "5.1.1", "<nobody@pec.b.test> User doesn't exist")
    );
    assert!(
        matches!(&out[2], RcptOutcome::Permanent { code: 501, enhanced, .. } if enhanced == "5.1.3"),
        "{:?}",
        out[2]
    );
    assert_eq!(out[3], RcptOutcome::Delivered);
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0], "LHLO client.test\r\n");
    // No SIZE advertised: none sent; 8-bit body and 8BITMIME: BODY= sent.
    assert_eq!(seen[1], "MAIL FROM:<> BODY=8BITMIME\r\n");
    assert!(!seen.iter().any(|l| l.contains("bad>addr")), "{seen:?}");
    let data: String = seen
        .iter()
        .skip_while(|l| !l.starts_with("DATA"))
        .skip(1)
        .take_while(|l| l.as_str() != "QUIT\r\n")
        .cloned()
        .collect();
    assert_eq!(data, "Subject: x\r\n\r\n..dot\r\ncaff\u{e8}\r\n.\r\n");
}

#[tokio::test]
async fn client_refuses_to_send_a_bad_lhlo_name() {
    let srv = TestServer::default().await;
    let client = LmtpClient::new(format!("127.0.0.1:{}", srv.port), "bad\r\nRSET".into(), T);
    let out = client
        .deliver("a@b.test", &rcpts(&["ok@pec.b.test"]), b"x\r\n")
        .await;
    assert!(
        matches!(out[0], RcptOutcome::Temporary { code: 451, .. }),
        "{out:?}"
    );
    assert!(srv.handler.calls().is_empty());
    srv.shutdown().await;
}

#[tokio::test]
async fn client_connection_lost_after_one_final_reply() {
    let (port, _) = fake_server(AfterData::DropAfterOne).await;
    let client = LmtpClient::new(format!("127.0.0.1:{port}"), "client.test".into(), T);
    let out = client
        .deliver(
            "a@b.test",
            &rcpts(&["anna@pec.b.test", "mario@pec.b.test"]),
            b"x\r\n",
        )
        .await;
    assert_eq!(out[0], RcptOutcome::Delivered);
    assert!(
        matches!(&out[1], RcptOutcome::Temporary { code: 451, enhanced, .. } if enhanced == "4.4.2"),
        "{:?}",
        out[1]
    );
}

#[tokio::test]
async fn client_timeout_is_temporary_for_everyone_unanswered() {
    let (port, _) = fake_server(AfterData::Hang).await;
    let client = LmtpClient::new(
        format!("127.0.0.1:{port}"),
        "client.test".into(),
        Duration::from_millis(500),
    );
    let started = Instant::now();
    let out = client
        .deliver(
            "a@b.test",
            &rcpts(&["anna@pec.b.test", "nobody@pec.b.test", "mario@pec.b.test"]),
            b"x\r\n",
        )
        .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(&out[0], RcptOutcome::Temporary { text, .. } if text.contains("timed out")));
    assert!(matches!(&out[1], RcptOutcome::Permanent { code: 550, .. }));
    assert!(matches!(&out[2], RcptOutcome::Temporary { enhanced, .. } if enhanced == "4.4.2"));
}

// ------------------------------------------------------------------ Maildir

#[tokio::test]
async fn maildir_delivers_the_exact_bytes() {
    let base = tempfile::tempdir().unwrap();
    let mbox = base.path().join("pec.b.test/anna.bianchi");
    std::fs::create_dir_all(&mbox).unwrap(); // the admin creates the mailbox only
    let store = Maildir::new(base.path().to_owned(), None);
    let msg = message("maildir");
    let out = store
        .deliver(
            "mario.rossi@pec.a.test",
            &rcpts(&["anna.bianchi@pec.b.test"]),
            &msg,
        )
        .await;
    assert_eq!(out, [RcptOutcome::Delivered]);
    let files = maildir_files(&mbox.join("new"));
    assert_eq!(files.len(), 1);
    assert_eq!(
        std::fs::read(&files[0]).unwrap(),
        msg,
        "stored as received (CRLF)"
    );
    let name = files[0].file_name().unwrap().to_str().unwrap();
    assert!(name.ends_with(&format!(",S={}", msg.len())), "{name}");
    assert!(
        maildir_files(&mbox.join("tmp")).is_empty(),
        "tmp/ left clean"
    );
    assert!(mbox.join("cur").is_dir());
}

#[tokio::test]
async fn maildir_unknown_user_quota_and_extensions() {
    let base = tempfile::tempdir().unwrap();
    for m in ["anna.bianchi", "small"] {
        std::fs::create_dir_all(base.path().join("pec.b.test").join(m)).unwrap();
    }
    let store = Maildir::new(base.path().to_owned(), Some(4000));
    let msg = big_message("quota", 3000);
    let out = store
        .deliver(
            "a@pec.a.test",
            &rcpts(&[
                "nobody@pec.b.test",
                "Anna.Bianchi+pec@PEC.B.test",
                "small@pec.b.test",
                "x@unknown-domain.test",
                "../../etc@pec.b.test",
            ]),
            &msg,
        )
        .await;
    assert_eq!(out[0], RcptOutcome::permanent(550, "5.1.1", "user unknown"));
    assert_eq!(out[1], RcptOutcome::Delivered, "+ext stripped, lowercased");
    assert_eq!(out[2], RcptOutcome::Delivered);
    assert_eq!(out[3], RcptOutcome::permanent(550, "5.1.1", "user unknown"));
    assert!(matches!(out[4], RcptOutcome::Permanent { code: 553, .. }));
    assert_eq!(out[0].reply_line(), "550 5.1.1 user unknown");
    let anna = base.path().join("pec.b.test/anna.bianchi/new");
    assert_eq!(maildir_files(&anna).len(), 1);

    // The second message would take small@ over its 4000 octets.
    let out = store
        .deliver("a@pec.a.test", &rcpts(&["small@pec.b.test"]), &msg)
        .await;
    assert_eq!(out, [RcptOutcome::permanent(552, "5.2.2", "mailbox full")]);
    assert_eq!(out[0].reply_line(), "552 5.2.2 mailbox full");
    // Messages already read (cur/) count too; a small one still fits.
    let small = base.path().join("pec.b.test/small");
    let f = maildir_files(&small.join("new")).remove(0);
    std::fs::rename(
        &f,
        small
            .join("cur")
            .join(format!("{}:2,S", f.file_name().unwrap().to_str().unwrap())),
    )
    .unwrap();
    let out = store
        .deliver("a@pec.a.test", &rcpts(&["small@pec.b.test"]), &msg)
        .await;
    assert_eq!(out, [RcptOutcome::permanent(552, "5.2.2", "mailbox full")]);
    let out = store
        .deliver("a@pec.a.test", &rcpts(&["small@pec.b.test"]), b"tiny\r\n")
        .await;
    assert_eq!(out, [RcptOutcome::Delivered]);
}

#[tokio::test]
async fn maildir_concurrent_deliveries_get_distinct_files() {
    let base = tempfile::tempdir().unwrap();
    let mbox = base.path().join("pec.b.test/anna");
    std::fs::create_dir_all(&mbox).unwrap();
    let store = Arc::new(Maildir::new(base.path().to_owned(), None));
    let mut tasks = Vec::new();
    for i in 0..2 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store
                .deliver(
                    "a@pec.a.test",
                    &rcpts(&["anna@pec.b.test"]),
                    format!("message {i}\r\n").as_bytes(),
                )
                .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), [RcptOutcome::Delivered]);
    }
    let files = maildir_files(&mbox.join("new"));
    assert_eq!(files.len(), 2, "{files:?}");
    let mut bodies: Vec<String> = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    bodies.sort();
    assert_eq!(bodies, ["message 0\r\n", "message 1\r\n"]);
}

#[tokio::test]
async fn maildir_disk_errors_are_temporary() {
    let base = tempfile::tempdir().unwrap();
    // A mailbox whose tmp/ cannot be written (a file where the directory
    // should be: fails for root too).
    let broken = base.path().join("pec.b.test/broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(broken.join("tmp"), "not a directory").unwrap();
    let store = Maildir::new(base.path().to_owned(), None);
    let out = store
        .deliver("a@pec.a.test", &rcpts(&["broken@pec.b.test"]), b"x\r\n")
        .await;
    assert!(
        matches!(&out[0], RcptOutcome::Temporary { code: 451, enhanced, .. } if enhanced == "4.3.0"),
        "{out:?}"
    );
    assert!(out[0].reply_line().starts_with("451 4.3.0 "));

    // A base that is not there (unmounted store): temporary, never 5.1.1.
    let missing = Maildir::new(base.path().join("not-mounted"), None);
    let out = missing
        .deliver(
            "a@pec.a.test",
            &rcpts(&["anna@pec.b.test", "b@pec.b.test"]),
            b"x\r\n",
        )
        .await;
    assert_eq!(out.len(), 2);
    for o in &out {
        assert!(
            matches!(o, RcptOutcome::Temporary { code: 451, .. }),
            "{o:?}"
        );
    }

    // A read-only base (only meaningful when not root: root writes anyway).
    let ro = base.path().join("ro");
    std::fs::create_dir_all(ro.join("pec.b.test/anna")).unwrap();
    std::fs::set_permissions(
        ro.join("pec.b.test/anna"),
        std::fs::Permissions::from_mode(0o555),
    )
    .unwrap();
    if !is_root() {
        let out = Maildir::new(ro.clone(), None)
            .deliver("a@pec.a.test", &rcpts(&["anna@pec.b.test"]), b"x\r\n")
            .await;
        assert!(
            matches!(out[0], RcptOutcome::Temporary { code: 451, .. }),
            "{out:?}"
        );
    }
    std::fs::set_permissions(
        ro.join("pec.b.test/anna"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
}

// ------------------------------------------------------------------ Dovecot

/// A Dovecot LMTP server (dovecot -F) in a temp dir on a free loopback port
/// and on the unix socket `run/lmtp`. Users (passwd-file userdb):
/// anna.bianchi@pec.b.test, mario.rossi@pec.b.test, and full@pec.b.test
/// with a 2 KB quota (quota plugin, Maildir++ backend). Mail in
/// `mail/<domain>/<user>/Maildir`.
struct Dovecot {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

impl Dovecot {
    fn start() -> Self {
        require_root("the Dovecot test");
        let bin = installed("dovecot", "dovecot-lmtpd");
        // The lmtp service itself is a separate package.
        assert!(
            Path::new("/usr/lib/dovecot/lmtp").is_file(),
            "Dovecot's lmtp service not found (Debian package dovecot-lmtpd): \
             run integration/deps.sh as root to install it"
        );
        let dir = tempdir_755();
        let d = dir.path().display().to_string();
        let mail = dir.path().join("mail");
        std::fs::create_dir_all(&mail).unwrap();
        run(Command::new("chown").args(["-R", "65534:65534"]).arg(&mail));
        let users = format!(
            "anna.bianchi@pec.b.test::65534:65534::{d}/mail/pec.b.test/anna.bianchi::\n\
             mario.rossi@pec.b.test::65534:65534::{d}/mail/pec.b.test/mario.rossi::\n\
             full@pec.b.test::65534:65534::{d}/mail/pec.b.test/full::userdb_quota_rule=*:storage=2K\n"
        );
        std::fs::write(dir.path().join("users"), users).unwrap();
        let port = free_port();
        let conf = format!(
            "base_dir = {d}/run\n\
             state_dir = {d}/state\n\
             log_path = {d}/dovecot.log\n\
             protocols = lmtp\n\
             listen = 127.0.0.1\n\
             ssl = no\n\
             mail_location = maildir:~/Maildir\n\
             first_valid_uid = 100\n\
             mail_plugins = quota\n\
             passdb {{\n  driver = static\n  args = nopassword=y\n}}\n\
             userdb {{\n  driver = passwd-file\n  args = {d}/users\n}}\n\
             plugin {{\n  quota = maildir:User quota\n}}\n\
             service lmtp {{\n\
             \x20 inet_listener lmtp {{\n    address = 127.0.0.1\n    port = {port}\n  }}\n\
             \x20 unix_listener lmtp {{\n    mode = 0666\n  }}\n\
             }}\n"
        );
        let conf_path = dir.path().join("dovecot.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let out = std::fs::File::create(dir.path().join("dovecot.out")).unwrap();
        let child = Command::new(bin)
            .arg("-F")
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut s = Dovecot {
            child: Some(child),
            dir,
            port,
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(st) = s.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("dovecot exited ({st}):\n{}", s.log());
            }
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "dovecot not listening:\n{}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    fn log(&self) -> String {
        let p = self.dir.path();
        format!(
            "--- dovecot.out ---\n{}\n--- dovecot.log ---\n{}",
            std::fs::read_to_string(p.join("dovecot.out")).unwrap_or_default(),
            std::fs::read_to_string(p.join("dovecot.log")).unwrap_or_default()
        )
    }

    fn client(&self) -> LmtpClient {
        LmtpClient::new(
            format!("127.0.0.1:{}", self.port),
            "pec-milter.test".into(),
            T,
        )
    }

    fn unix_client(&self) -> LmtpClient {
        let sock = self.dir.path().join("run/lmtp");
        LmtpClient::new(
            format!("unix:{}", sock.display()),
            "pec-milter.test".into(),
            T,
        )
    }

    fn inbox(&self, user: &str) -> Vec<PathBuf> {
        maildir_files(
            &self
                .dir
                .path()
                .join("mail/pec.b.test")
                .join(user)
                .join("Maildir/new"),
        )
    }

    /// SIGTERM and wait for the master to exit.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status();
            let started = Instant::now();
            while child.try_wait().ok().flatten().is_none() {
                if started.elapsed() > Duration::from_secs(10) {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Dovecot stores LF line ends and adds Return-Path / Delivered-To /
/// Received: the original must be there as the tail of the file.
fn assert_stored(file: &Path, msg: &[u8], sender: &str) {
    let stored = String::from_utf8(std::fs::read(file).unwrap()).unwrap();
    let original = String::from_utf8(msg.to_vec())
        .unwrap()
        .replace("\r\n", "\n");
    assert!(
        stored.starts_with(&format!("Return-Path: <{sender}>\n")),
        "{stored}"
    );
    assert!(
        stored.ends_with(&original),
        "stored:\n{stored}\nexpected tail:\n{original}"
    );
}

#[tokio::test]
async fn dovecot_known_user_is_delivered() {
    let dc = Dovecot::start();
    let msg = message("dovecot-known");
    let out = dc
        .client()
        .deliver(
            "mario.rossi@pec.a.test",
            &rcpts(&["anna.bianchi@pec.b.test"]),
            &msg,
        )
        .await;
    assert_eq!(out, [RcptOutcome::Delivered], "{}", dc.log());
    let inbox = dc.inbox("anna.bianchi");
    assert_eq!(inbox.len(), 1, "{}", dc.log());
    assert_stored(&inbox[0], &msg, "mario.rossi@pec.a.test");

    // Also over Dovecot's unix socket, with a +extension and upper case.
    let msg2 = message("dovecot-unix");
    let out = dc
        .unix_client()
        .deliver("", &rcpts(&["Anna.Bianchi+pec@pec.b.test"]), &msg2)
        .await;
    assert_eq!(out, [RcptOutcome::Delivered], "{}", dc.log());
    assert_eq!(dc.inbox("anna.bianchi").len(), 2);
}

#[tokio::test]
async fn dovecot_unknown_user_is_permanent_5_1_1() {
    let dc = Dovecot::start();
    let out = dc
        .client()
        .deliver(
            "a@pec.a.test",
            &rcpts(&["nobody@pec.b.test"]),
            &message("unknown"),
        )
        .await;
    match &out[0] {
        RcptOutcome::Permanent {
            code,
            enhanced,
            text,
        } => {
            assert_eq!((*code, enhanced.as_str()), (550, "5.1.1"), "{text}");
            assert!(text.contains("nobody@pec.b.test"), "{text}");
        }
        o => panic!("expected 550 5.1.1, got {o:?}\n{}", dc.log()),
    }
}

#[tokio::test]
async fn dovecot_mixed_recipients_get_their_own_outcomes() {
    let dc = Dovecot::start();
    let msg = big_message("mixed", 4000); // over full@'s 2 KB quota
    let out = dc
        .client()
        .deliver(
            "mario.rossi@pec.a.test",
            &rcpts(&[
                "anna.bianchi@pec.b.test",
                "nobody@pec.b.test",
                "full@pec.b.test",
                "mario.rossi@pec.b.test",
            ]),
            &msg,
        )
        .await;
    assert_eq!(out[0], RcptOutcome::Delivered, "{}", dc.log());
    assert!(
        matches!(&out[1], RcptOutcome::Permanent { code: 550, enhanced, .. } if enhanced == "5.1.1"),
        "{:?}",
        out[1]
    );
    // The quota is checked while saving: a per-recipient reply after DATA.
    match &out[2] {
        RcptOutcome::Permanent {
            code,
            enhanced,
            text,
        } => {
            assert_eq!((*code, enhanced.as_str()), (552, "5.2.2"), "{text}");
            assert!(text.contains("Quota exceeded"), "{text}");
        }
        o => panic!("expected 552 5.2.2, got {o:?}\n{}", dc.log()),
    }
    assert_eq!(out[3], RcptOutcome::Delivered);
    assert_eq!(dc.inbox("anna.bianchi").len(), 1);
    assert_eq!(dc.inbox("mario.rossi").len(), 1);
    assert!(dc.inbox("full").is_empty());
    assert_stored(&dc.inbox("mario.rossi")[0], &msg, "mario.rossi@pec.a.test");
}

#[tokio::test]
async fn dovecot_stopped_is_temporary_for_all() {
    let mut dc = Dovecot::start();
    let client = dc.client();
    let out = client
        .deliver(
            "a@pec.a.test",
            &rcpts(&["anna.bianchi@pec.b.test"]),
            &message("up"),
        )
        .await;
    assert_eq!(out, [RcptOutcome::Delivered], "{}", dc.log());
    dc.stop();
    let out = client
        .deliver(
            "a@pec.a.test",
            &rcpts(&["anna.bianchi@pec.b.test", "nobody@pec.b.test"]),
            &message("stopped"),
        )
        .await;
    assert_eq!(out.len(), 2);
    for o in &out {
        assert!(
            matches!(o, RcptOutcome::Temporary { code: 451, enhanced, .. } if enhanced == "4.4.1"),
            "{o:?}"
        );
    }
    assert!(out[0].reply_line().starts_with("451 4.4.1 "));
}

// ------------------------------------------------------------------ Postfix → our LMTP server

/// A throwaway Postfix instance in a temp dir: smtpd on 127.0.0.1:<smtp>,
/// the virtual domain pec.b.test delivered over LMTP to 127.0.0.1:<lmtp>,
/// everything else to `error:`; no DNS, maillog in the dir.
struct Postfix {
    dir: tempfile::TempDir,
    smtp: u16,
}

impl Postfix {
    fn start(lmtp_port: u16) -> Self {
        require_root("the Postfix test");
        let postfix = installed("postfix", "postfix");
        let dir = tempdir_755();
        let d = dir.path().display().to_string();
        let smtp = free_port();
        for sub in ["etc", "spool", "data"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        let main_cf = format!(
            "compatibility_level = 3.6\n\
             queue_directory = {d}/spool\n\
             data_directory = {d}/data\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             maillog_file = {d}/maillog\n\
             maillog_file_prefixes = {d}\n\
             myhostname = mx.pec.b.test\n\
             mydomain = pec.b.test\n\
             myorigin = $mydomain\n\
             mydestination =\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             mynetworks = 127.0.0.0/8\n\
             smtpd_banner = $myhostname ESMTP\n\
             smtpd_error_sleep_time = 0s\n\
             smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n\
             smtp_dns_support_level = disabled\n\
             smtp_host_lookup = native\n\
             lmtp_host_lookup = native\n\
             smtpd_peername_lookup = no\n\
             default_transport = error:5.7.1 outbound mail disabled in test instance\n\
             relay_transport = error:5.7.1 outbound mail disabled in test instance\n\
             biff = no\n\
             alias_maps =\n\
             alias_database =\n\
             virtual_mailbox_domains = pec.b.test\n\
             virtual_mailbox_maps =\n\
             virtual_transport = lmtp:inet:127.0.0.1:{lmtp_port}\n\
             smtpd_milters =\n\
             non_smtpd_milters =\n"
        );
        std::fs::write(dir.path().join("etc/main.cf"), main_cf).unwrap();
        let master_cf = format!(
            "127.0.0.1:{smtp} inet n - n - - smtpd\n\
             pickup    unix  n - n 60 1 pickup\n\
             cleanup   unix  n - n - 0 cleanup\n\
             qmgr      unix  n - n 300 1 qmgr\n\
             rewrite   unix  - - n - - trivial-rewrite\n\
             bounce    unix  - - n - 0 bounce\n\
             defer     unix  - - n - 0 bounce\n\
             trace     unix  - - n - 0 bounce\n\
             verify    unix  - - n - 1 verify\n\
             flush     unix  n - n 1000? 0 flush\n\
             proxymap  unix  - - n - - proxymap\n\
             proxywrite unix - - n - 1 proxymap\n\
             smtp      unix  - - n - - smtp\n\
             relay     unix  - - n - - smtp\n\
             showq     unix  n - n - - showq\n\
             error     unix  - - n - - error\n\
             retry     unix  - - n - - error\n\
             discard   unix  - - n - - discard\n\
             lmtp      unix  - - n - - lmtp\n\
             anvil     unix  - - n - 1 anvil\n\
             scache    unix  - - n - 1 scache\n\
             postlog   unix-dgram n - n - 1 postlogd\n"
        );
        std::fs::write(dir.path().join("etc/master.cf"), master_cf).unwrap();
        // Queue directories as postfix-files wants them (what `postfix
        // check` would create, without its ~2 s).
        let spool = dir.path().join("spool");
        for q in [
            "active", "bounce", "corrupt", "defer", "deferred", "flush", "hold", "incoming",
            "private", "saved", "trace",
        ] {
            run(Command::new("install")
                .args(["-d", "-o", "postfix", "-g", "root", "-m", "700"])
                .arg(spool.join(q)));
        }
        run(Command::new("install")
            .args(["-d", "-o", "postfix", "-g", "postdrop", "-m", "730"])
            .arg(spool.join("maildrop")));
        run(Command::new("install")
            .args(["-d", "-o", "postfix", "-g", "postdrop", "-m", "710"])
            .arg(spool.join("public")));
        run(Command::new("install")
            .args(["-d", "-o", "root", "-g", "root", "-m", "755"])
            .arg(spool.join("pid")));
        run(Command::new("chown")
            .arg("postfix:postfix")
            .arg(dir.path().join("data")));
        std::fs::set_permissions(
            dir.path().join("data"),
            std::fs::Permissions::from_mode(0o700),
        )
        .unwrap();
        // Postfix waits while main.cf is younger than ~2 s: backdate it.
        let old = std::time::SystemTime::now() - Duration::from_secs(10);
        for f in ["etc/main.cf", "etc/master.cf"] {
            std::fs::File::options()
                .write(true)
                .open(dir.path().join(f))
                .unwrap()
                .set_modified(old)
                .unwrap();
        }
        let etc = dir.path().join("etc");
        let out = Command::new(&postfix)
            .arg("-c")
            .arg(&etc)
            .arg("start")
            .output()
            .unwrap();
        let pf = Postfix { dir, smtp };
        assert!(
            out.status.success(),
            "postfix start failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            pf.maillog()
        );
        wait_port(smtp, "postfix smtpd", || pf.maillog());
        pf
    }

    fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("maillog")).unwrap_or_default()
    }

    fn stop(&self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(self.dir.path().join("etc"))
            .arg("stop")
            .output();
        let pidf = self.dir.path().join("spool/pid/master.pid");
        let started = Instant::now();
        while let Ok(pid) = std::fs::read_to_string(&pidf) {
            let pid = pid.trim();
            if !Path::new(&format!("/proc/{pid}")).exists()
                || started.elapsed() > Duration::from_secs(10)
            {
                if started.elapsed() > Duration::from_secs(10) {
                    let _ = Command::new("postfix")
                        .arg("-c")
                        .arg(self.dir.path().join("etc"))
                        .arg("abort")
                        .output();
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postfix_delivers_over_lmtp_and_obeys_our_replies() {
    let swaks = installed("swaks", "swaks");
    let srv = TestServer::default().await;
    let pf = tokio::task::spawn_blocking({
        let port = srv.port;
        move || Postfix::start(port)
    })
    .await
    .unwrap();

    let smtp = pf.smtp;
    let out = tokio::task::spawn_blocking(move || {
        Command::new(swaks)
            .args(["--server", &format!("127.0.0.1:{smtp}")])
            .args(["--helo", "client.pec.a.test"])
            .args(["--from", "sender@pec.b.test"])
            .args(["--to", "ok@pec.b.test,temp@pec.b.test,perm@pec.b.test"])
            .args(["--header", "Subject: lmtp-postfix-test"])
            .args(["--body", "Hello over LMTP.\n.leading dot\n"])
            .args(["--timeout", "30"])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "swaks failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        pf.maillog()
    );

    let (sent, deferred, bounced) = tokio::task::spawn_blocking({
        let log = pf.dir.path().join("maillog");
        move || {
            (
                wait_status(&log, "ok@pec.b.test"),
                wait_status(&log, "temp@pec.b.test"),
                wait_status(&log, "perm@pec.b.test"),
            )
        }
    })
    .await
    .unwrap();
    assert!(sent.contains("status=sent (250 2.0.0 Ok)"), "{sent}");
    assert!(sent.contains("relay=127.0.0.1[127.0.0.1]"), "{sent}");
    assert!(
        deferred.contains("status=deferred")
            && deferred.contains("452 4.2.2 mailbox temporarily full"),
        "{deferred}"
    );
    assert!(
        bounced.contains("status=bounced") && bounced.contains("550 5.1.1 user unknown"),
        "{bounced}"
    );

    // The bounce for perm@ comes back to the sender, a pec.b.test mailbox:
    // over LMTP again, with the null reverse path.
    let started = Instant::now();
    let bounce = loop {
        if let Some(c) = srv.handler.calls().into_iter().find(|c| c.from.is_empty()) {
            break c;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no bounce delivered; maillog:\n{}",
            pf.maillog()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(bounce.rcpts, ["sender@pec.b.test"]);

    let calls = srv.handler.calls();
    let first = calls
        .iter()
        .find(|c| c.from == "sender@pec.b.test")
        .expect("the message reached our handler");
    // Postfix sorts the recipients of a delivery request.
    let mut got = first.rcpts.clone();
    got.sort();
    assert_eq!(
        got,
        ["ok@pec.b.test", "perm@pec.b.test", "temp@pec.b.test"],
        "one LMTP transaction for the three recipients"
    );
    let text = String::from_utf8(first.message.clone()).unwrap();
    assert!(text.contains("Subject: lmtp-postfix-test\r\n"), "{text}");
    assert!(
        text.contains("\r\n.leading dot\r\n"),
        "dot-unstuffed: {text}"
    );
    assert!(
        !text.replace("\r\n", "").contains('\n'),
        "only CRLF line ends: {text:?}"
    );

    tokio::task::spawn_blocking(move || drop(pf)).await.unwrap();
    srv.shutdown().await;
}

/// The maillog line with `to=<rcpt>` and `status=`, once it appears.
fn wait_status(maillog: &Path, rcpt: &str) -> String {
    let started = Instant::now();
    loop {
        let log = std::fs::read_to_string(maillog).unwrap_or_default();
        if let Some(l) = log
            .lines()
            .find(|l| l.contains(&format!("to=<{rcpt}>")) && l.contains(" status="))
        {
            return l.to_owned();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no delivery status for {rcpt} after 30 s; maillog:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
