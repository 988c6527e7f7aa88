//! `pec_milter::smtp` against Postfix's `smtp-sink` (a real SMTP server
//! that dumps each message to a file) and against small fake servers for the
//! exact wire bytes and the failure cases.
//!
//! Needs `smtp-sink` (Debian package postfix): run `integration/deps.sh` as
//! root.

mod common;

use std::ops::RangeInclusive;
use std::os::unix::fs::PermissionsExt as _;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, installed, is_root};
use pec_milter::smtp::{SubmitError, SubmitReceipt, Submitter};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const HELO: &str = "submit.pec.test";
const TIMEOUT: Duration = Duration::from_secs(20);

/// `smtp-sink` on a free loopback port, dumping every message into a file
/// in a temp dir; killed on drop.
struct Sink {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Sink {
    fn start(extra: &[&str]) -> Self {
        let bin = installed("smtp-sink", "postfix");
        let dir = tempfile::tempdir().unwrap();
        // As root smtp-sink must drop to another user (-u), which then has
        // to reach and write the dump dir.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let dump = dir.path().join("dump");
        std::fs::create_dir(&dump).unwrap();
        std::fs::set_permissions(&dump, std::fs::Permissions::from_mode(0o777)).unwrap();
        let port = free_port();
        let mut cmd = Command::new(bin);
        if is_root() {
            cmd.args(["-u", "nobody"]);
        }
        cmd.arg("-d")
            .arg(format!("{}/%M.", dump.display()))
            .args(extra)
            .arg(format!("127.0.0.1:{port}"))
            .arg("100")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                panic!("smtp-sink exited ({status}): {err}");
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "smtp-sink not listening"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Sink { child, dir, port }
    }

    fn submitter(&self, timeout: Duration) -> Submitter {
        Submitter::new(format!("127.0.0.1:{}", self.port), HELO.to_owned(), timeout)
    }

    /// Wait for `n` dump files and parse them (oldest first).
    fn dumps(&self, n: usize) -> Vec<Dump> {
        let dump = self.dir.path().join("dump");
        let started = Instant::now();
        loop {
            let mut files: Vec<_> = std::fs::read_dir(&dump)
                .unwrap()
                .map(|e| e.unwrap())
                .filter(|e| e.file_type().unwrap().is_file())
                .map(|e| (e.metadata().unwrap().modified().unwrap(), e.path()))
                .collect();
            if files.len() >= n {
                assert_eq!(files.len(), n, "more dump files than messages");
                files.sort();
                return files
                    .into_iter()
                    .map(|(_, p)| Dump::parse(&std::fs::read(p).unwrap()))
                    .collect();
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "only {} of {n} dump files",
                files.len()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One smtp-sink dump file: its generated records, then the message as
/// received (dot-stuffing undone, lines ending in LF), then an empty line.
#[derive(Debug)]
struct Dump {
    proto: String,
    helo_args: Option<String>,
    mail_args: String,
    rcpt_args: Vec<String>,
    message: Vec<u8>,
}

impl Dump {
    fn parse(raw: &[u8]) -> Dump {
        let mut proto = None;
        let mut helo_args = None;
        let mut mail_args = None;
        let mut rcpt_args = Vec::new();
        let mut pos = 0;
        let mut in_received = false;
        loop {
            let nl = raw[pos..].iter().position(|&b| b == b'\n').unwrap() + pos;
            let line = std::str::from_utf8(&raw[pos..nl]).unwrap();
            if in_received && !line.starts_with('\t') {
                break; // first line of the message itself
            }
            if let Some(v) = line.strip_prefix("X-Client-Proto: ") {
                proto = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("X-Helo-Args: ") {
                helo_args = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("X-Mail-Args: ") {
                mail_args = Some(v.to_owned());
            } else if let Some(v) = line.strip_prefix("X-Rcpt-Args: ") {
                rcpt_args.push(v.to_owned());
            } else if line.starts_with("Received: ") {
                in_received = true;
            }
            pos = nl + 1;
        }
        let body = &raw[pos..];
        let message = body
            .strip_suffix(b"\n")
            .expect("dump ends with an empty line");
        Dump {
            proto: proto.unwrap(),
            helo_args,
            mail_args: mail_args.unwrap(),
            rcpt_args,
            message: message.to_vec(),
        }
    }
}

/// What smtp-sink writes for a message: its lines with LF ends (it stores
/// records, not CRLF), the last line terminated too.
fn as_dumped(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = message;
    while !rest.is_empty() {
        match rest.iter().position(|&b| b == b'\n') {
            Some(nl) => {
                let line = rest[..nl].strip_suffix(b"\r").unwrap_or(&rest[..nl]);
                out.extend_from_slice(line);
                rest = &rest[nl + 1..];
            }
            None => {
                out.extend_from_slice(rest.strip_suffix(b"\r").unwrap_or(rest));
                rest = &[];
            }
        }
        out.push(b'\n');
    }
    out
}

/// A message with every tricky line: leading dots, a lone dot, a line that
/// looks like the terminator, 8-bit text, and no final CRLF.
fn tricky_message() -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(b"From: posta-certificata@pec.test\r\n");
    m.extend_from_slice(b"To: mario.rossi@pec.test\r\n");
    m.extend_from_slice(b"Subject: ACCETTAZIONE: prova\r\n");
    m.extend_from_slice(b"MIME-Version: 1.0\r\n");
    m.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\n");
    m.extend_from_slice(b"Content-Transfer-Encoding: 8bit\r\n");
    m.extend_from_slice(b"\r\n");
    m.extend_from_slice(b".\r\n");
    m.extend_from_slice(b"..\r\n");
    m.extend_from_slice(b".leading dot\r\n");
    m.extend_from_slice(b"...three\r\n");
    m.extend_from_slice(b"\r\n");
    m.extend_from_slice(b"Il messaggio \xc3\xa8 stato accettato.\r\n");
    m.extend_from_slice(b" .not at start\r\n");
    m.extend_from_slice(b"\r\n.\r\n");
    m.extend_from_slice(b"last line without CRLF");
    m
}

/// Sends the tricky message from the service address to one recipient;
/// returns it and the server's reply to it.
async fn send_tricky(s: &Submitter) -> (Vec<u8>, SubmitReceipt) {
    let msg = tricky_message();
    let receipt = s
        .send(
            "posta-certificata@pec.test",
            &["mario.rossi@pec.test".to_owned()],
            &msg,
        )
        .await
        .unwrap();
    (msg, receipt)
}

#[tokio::test]
async fn smtp_sink_receives_exact_bytes() {
    let sink = Sink::start(&[]);
    let (msg, receipt) = send_tricky(&sink.submitter(TIMEOUT)).await;
    assert_eq!(receipt.code, 250);
    assert_eq!(receipt.queue_id(), None); // smtp-sink says just "2.0.0 Ok"
    let dumps = sink.dumps(1);
    let d = &dumps[0];
    assert_eq!(d.proto, "ESMTP");
    assert_eq!(d.helo_args.as_deref(), Some(HELO));
    assert_eq!(d.mail_args, "<posta-certificata@pec.test> BODY=8BITMIME");
    assert_eq!(d.rcpt_args, ["<mario.rossi@pec.test>"]);
    assert_eq!(
        String::from_utf8_lossy(&d.message),
        String::from_utf8_lossy(&as_dumped(&msg))
    );
    assert_eq!(d.message, as_dumped(&msg));
}

#[tokio::test]
async fn smtp_sink_null_sender_and_several_recipients() {
    let sink = Sink::start(&[]);
    let to: Vec<String> = [
        "anna.bianchi@pec.test",
        "mario.rossi@pec.test",
        "x+tag@other.test",
    ]
    .map(String::from)
    .to_vec();
    let msg = b"Subject: notice\r\n\r\nplain ASCII body\r\n.\r\n".to_vec();
    sink.submitter(TIMEOUT).send("", &to, &msg).await.unwrap();
    let d = &sink.dumps(1)[0];
    assert_eq!(d.mail_args, "<>"); // ASCII: no BODY= parameter
    assert_eq!(
        d.rcpt_args,
        [
            "<anna.bianchi@pec.test>",
            "<mario.rossi@pec.test>",
            "<x+tag@other.test>"
        ]
    );
    assert_eq!(d.message, as_dumped(&msg));
}

#[tokio::test]
async fn smtp_sink_many_messages_and_a_large_one() {
    let sink = Sink::start(&[]);
    let submitter = sink.submitter(TIMEOUT);
    let mut sent = Vec::new();
    for i in 0..10 {
        let msg = format!("Subject: n{i}\r\n\r\n.{i}\r\nbody {i}\r\n").into_bytes();
        submitter
            .send("a@pec.test", &[format!("r{i}@pec.test")], &msg)
            .await
            .unwrap();
        sent.push(msg);
    }
    // 8 MB, dot lines every so often.
    let mut big = b"Subject: big\r\n\r\n".to_vec();
    let mut i = 0u64;
    while big.len() < 8 * 1024 * 1024 {
        if i.is_multiple_of(100) {
            big.extend_from_slice(b".");
        }
        big.extend_from_slice(
            format!("line {i:08} of a large message, 7-bit text only\r\n").as_bytes(),
        );
        i += 1;
    }
    submitter
        .send("a@pec.test", &["big@pec.test".to_owned()], &big)
        .await
        .unwrap();
    sent.push(big);
    let dumps = sink.dumps(sent.len());
    let mut got: Vec<Vec<u8>> = dumps.into_iter().map(|d| d.message).collect();
    let mut want: Vec<Vec<u8>> = sent.iter().map(|m| as_dumped(m)).collect();
    got.sort();
    want.sort();
    assert!(got == want, "dumped messages differ from the sent ones");
}

/// The tricky message from a@ to b@ through an smtp-sink started with
/// `args`: it arrives whole; returns its dump.
async fn through_sink(args: &[&str]) -> Dump {
    let sink = Sink::start(args);
    let msg = tricky_message();
    sink.submitter(TIMEOUT)
        .send("a@pec.test", &["b@pec.test".to_owned()], &msg)
        .await
        .unwrap();
    let d = sink.dumps(1).remove(0);
    assert_eq!(d.message, as_dumped(&msg), "smtp-sink {args:?}");
    d
}

#[tokio::test]
async fn smtp_sink_without_8bitmime_gets_no_body_parameter() {
    let d = through_sink(&["-8"]).await;
    assert_eq!(d.mail_args, "<a@pec.test>");
}

#[tokio::test]
async fn smtp_sink_without_esmtp_falls_back_to_helo() {
    let d = through_sink(&["-e"]).await; // EHLO -> 500
    assert_eq!(d.proto, "SMTP");
    assert_eq!(d.helo_args.as_deref(), Some(HELO));
    assert_eq!(d.mail_args, "<a@pec.test>");
}

/// What the client must make of a refusal: a `Rejected` error at `step`
/// with a code in `codes`, the reply `text`, permanent or not; its message
/// names the step.
struct Refused {
    step: &'static str,
    codes: RangeInclusive<u16>,
    text: Text,
    permanent: bool,
}

enum Text {
    Any,
    Is(&'static str),
    Contains(&'static str),
}

fn check_refused(err: &SubmitError, want: &Refused, case: &str) {
    match err {
        SubmitError::Rejected { step, code, text } => {
            assert_eq!(*step, want.step, "{case}: {err:?}");
            assert!(want.codes.contains(code), "{case}: {err:?}");
            match want.text {
                Text::Any => {}
                Text::Is(t) => assert_eq!(text, t, "{case}"),
                Text::Contains(t) => assert!(text.contains(t), "{case}: {text}"),
            }
        }
        other => panic!(
            "{case}: expected a rejection at {}, got {other:?}",
            want.step
        ),
    }
    assert_eq!(err.is_permanent(), want.permanent, "{case}: {err:?}");
    assert!(err.to_string().contains(want.step), "{case}: {err}");
}

#[tokio::test]
async fn smtp_sink_rejections() {
    let cases: [(&[&str], Refused); 3] = [
        // -r: a soft (4xx) reject of RCPT
        (
            &["-r", "RCPT"],
            Refused {
                step: "RCPT",
                codes: 450..=450,
                text: Text::Contains("4.3.0"),
                permanent: false,
            },
        ),
        // -f with -B: a hard reject with our own text
        (
            &["-f", "RCPT", "-B", "550 5.1.1 no such user"],
            Refused {
                step: "RCPT",
                codes: 550..=550,
                text: Text::Is("5.1.1 no such user"),
                permanent: true,
            },
        ),
        // -f .: the message itself refused after its final dot
        (
            &["-f", "."],
            Refused {
                step: "MESSAGE",
                codes: 500..=599,
                text: Text::Any,
                permanent: true,
            },
        ),
    ];
    for (args, want) in cases {
        let sink = Sink::start(args);
        let err = sink
            .submitter(TIMEOUT)
            .send("a@pec.test", &["b@pec.test".to_owned()], b"x\r\n")
            .await
            .unwrap_err();
        check_refused(&err, &want, &format!("smtp-sink {args:?}"));
    }
}

#[tokio::test]
async fn smtp_sink_slow_data_times_out() {
    let sink = Sink::start(&["-W", "DATA:5"]);
    let timeout = Duration::from_secs(1);
    let started = Instant::now();
    let err = sink
        .submitter(timeout)
        .send("a@pec.test", &["b@pec.test".to_owned()], b"x\r\n")
        .await
        .unwrap_err();
    // smtp-sink announces PIPELINING: MAIL, RCPT and DATA leave together
    // and it flushes its replies together, after the slow one, so the
    // client is still waiting for the first (MAIL) when time runs out.
    assert!(
        matches!(err, SubmitError::Timeout("MAIL" | "DATA")),
        "{err:?}"
    );
    let took = started.elapsed();
    assert!(
        took >= timeout && took < timeout + Duration::from_millis(500),
        "{took:?}"
    );
    assert!(!err.is_permanent());
}

// ---------------------------------------------------------------------------
// Fake server: scripted replies, records every byte the client sends.

/// Replies of the fake server; `None` means: stop answering (hang).
#[derive(Clone)]
struct Script {
    greeting: Option<&'static str>,
    ehlo: Option<&'static str>,
    helo: Option<&'static str>,
    mail: Option<&'static str>,
    /// One per RCPT; the last one repeats.
    rcpt: Vec<Option<&'static str>>,
    data: Option<&'static str>,
    end: Option<&'static str>,
    /// Hold the replies to MAIL and RCPT until DATA is read (only a client
    /// that pipelines gets through).
    hold_until_data: bool,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            greeting: Some("220 fake.pec.test ESMTP\r\n"),
            // no PIPELINING: these scripts test the lock-step client
            // (`Script::pipelining` announces it)
            ehlo: Some(
                "250-fake.pec.test\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n",
            ),
            helo: Some("250 fake.pec.test\r\n"),
            mail: Some("250 2.1.0 Ok\r\n"),
            rcpt: vec![Some("250 2.1.5 Ok\r\n")],
            data: Some("354 End data with <CR><LF>.<CR><LF>\r\n"),
            end: Some("250 2.0.0 Ok: queued as 4ZxQ9k1AbCz\r\n"),
            hold_until_data: false,
        }
    }
}

impl Script {
    /// The default script announcing PIPELINING, with one change.
    fn pipelining(change: impl FnOnce(&mut Script)) -> Script {
        Script::with(|s| {
            s.ehlo = Some(
                "250-fake.pec.test\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n",
            );
            change(s);
        })
    }

    /// The default script with one change.
    fn with(change: impl FnOnce(&mut Script)) -> Script {
        let mut s = Script::default();
        change(&mut s);
        s
    }
}

struct Fake {
    addr: String,
    log: Arc<Mutex<Vec<u8>>>,
}

impl Fake {
    async fn start(script: Script) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        tokio::spawn(async move {
            loop {
                let (sock, _) = listener.accept().await.unwrap();
                tokio::spawn(serve(sock, script.clone(), log2.clone()));
            }
        });
        Fake { addr, log }
    }

    fn submitter(&self, timeout: Duration) -> Submitter {
        Submitter::new(self.addr.clone(), HELO.to_owned(), timeout)
    }

    fn log(&self) -> Vec<u8> {
        self.log.lock().unwrap().clone()
    }
}

async fn hang<S: AsyncReadExt + Unpin>(mut r: S) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

async fn serve(sock: tokio::net::TcpStream, script: Script, log: Arc<Mutex<Vec<u8>>>) {
    let (r, mut w) = sock.into_split();
    let mut r = BufReader::new(r);
    let Some(g) = script.greeting else {
        return hang(r).await;
    };
    w.write_all(g.as_bytes()).await.unwrap();
    let mut rcpts = 0;
    let mut line = Vec::new();
    let mut held = String::new();
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
            return;
        }
        log.lock().unwrap().extend_from_slice(&line);
        let cmd = String::from_utf8_lossy(&line).to_ascii_uppercase();
        let reply = if cmd.starts_with("EHLO ") {
            script.ehlo
        } else if cmd.starts_with("HELO ") {
            script.helo
        } else if cmd.starts_with("MAIL FROM:") {
            script.mail
        } else if cmd.starts_with("RCPT TO:") {
            let r = script.rcpt[rcpts.min(script.rcpt.len() - 1)];
            rcpts += 1;
            r
        } else if cmd == "DATA\r\n" {
            script.data
        } else if cmd == "QUIT\r\n" {
            let _ = w.write_all(b"221 2.0.0 Bye\r\n").await;
            return;
        } else {
            Some("502 5.5.2 Error: command not recognized\r\n")
        };
        let Some(reply) = reply else {
            return hang(r).await;
        };
        if script.hold_until_data && (cmd.starts_with("MAIL FROM:") || cmd.starts_with("RCPT TO:"))
        {
            held.push_str(reply);
            continue;
        }
        if !held.is_empty() {
            w.write_all(std::mem::take(&mut held).as_bytes())
                .await
                .unwrap();
        }
        w.write_all(reply.as_bytes()).await.unwrap();
        if cmd == "DATA\r\n" && reply.starts_with("354") {
            loop {
                line.clear();
                if r.read_until(b'\n', &mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                log.lock().unwrap().extend_from_slice(&line);
                if line == b".\r\n" {
                    break;
                }
            }
            let Some(end) = script.end else {
                return hang(r).await;
            };
            w.write_all(end.as_bytes()).await.unwrap();
        }
    }
}

#[tokio::test]
async fn fake_server_sees_exact_wire_bytes() {
    let fake = Fake::start(Script::default()).await;
    let (_, receipt) = send_tricky(&fake.submitter(TIMEOUT)).await;
    assert_eq!(receipt.code, 250);
    assert_eq!(receipt.text, "2.0.0 Ok: queued as 4ZxQ9k1AbCz");
    assert_eq!(receipt.queue_id(), Some("4ZxQ9k1AbCz"));
    assert_eq!(receipt.to_string(), "250 2.0.0 Ok: queued as 4ZxQ9k1AbCz");

    let mut want = Vec::new();
    want.extend_from_slice(b"EHLO submit.pec.test\r\n");
    want.extend_from_slice(b"MAIL FROM:<posta-certificata@pec.test> BODY=8BITMIME\r\n");
    want.extend_from_slice(b"RCPT TO:<mario.rossi@pec.test>\r\n");
    want.extend_from_slice(b"DATA\r\n");
    want.extend_from_slice(b"From: posta-certificata@pec.test\r\n");
    want.extend_from_slice(b"To: mario.rossi@pec.test\r\n");
    want.extend_from_slice(b"Subject: ACCETTAZIONE: prova\r\n");
    want.extend_from_slice(b"MIME-Version: 1.0\r\n");
    want.extend_from_slice(b"Content-Type: text/plain; charset=utf-8\r\n");
    want.extend_from_slice(b"Content-Transfer-Encoding: 8bit\r\n");
    want.extend_from_slice(b"\r\n");
    want.extend_from_slice(b"..\r\n");
    want.extend_from_slice(b"...\r\n");
    want.extend_from_slice(b"..leading dot\r\n");
    want.extend_from_slice(b"....three\r\n");
    want.extend_from_slice(b"\r\n");
    want.extend_from_slice(b"Il messaggio \xc3\xa8 stato accettato.\r\n");
    want.extend_from_slice(b" .not at start\r\n");
    want.extend_from_slice(b"\r\n..\r\n");
    want.extend_from_slice(b"last line without CRLF\r\n");
    want.extend_from_slice(b".\r\n");
    want.extend_from_slice(b"QUIT\r\n");
    assert_eq!(
        String::from_utf8_lossy(&fake.log()),
        String::from_utf8_lossy(&want)
    );
    assert_eq!(fake.log(), want);
}

#[tokio::test]
async fn fake_server_bare_lf_becomes_crlf_and_null_sender() {
    let fake = Fake::start(Script::default()).await;
    let msg = b"Subject: lf\n\n.dot\nline\r\nend\r\n";
    fake.submitter(TIMEOUT)
        .send("", &["a@pec.test".to_owned(), "b@pec.test".to_owned()], msg)
        .await
        .unwrap();
    let want: &[u8] = b"EHLO submit.pec.test\r\nMAIL FROM:<>\r\nRCPT TO:<a@pec.test>\r\nRCPT TO:<b@pec.test>\r\nDATA\r\n\
        Subject: lf\r\n\r\n..dot\r\nline\r\nend\r\n.\r\nQUIT\r\n";
    assert_eq!(
        String::from_utf8_lossy(&fake.log()),
        String::from_utf8_lossy(want)
    );
}

#[tokio::test]
async fn fake_server_ehlo_refused_uses_helo() {
    let fake = Fake::start(Script::with(|s| {
        s.ehlo = Some("502 5.5.1 EHLO not implemented\r\n")
    }))
    .await;
    fake.submitter(TIMEOUT)
        .send(
            "a@pec.test",
            &["b@pec.test".to_owned()],
            "8-bit \u{e8}\r\n".as_bytes(),
        )
        .await
        .unwrap();
    let log = String::from_utf8_lossy(&fake.log()).into_owned();
    assert!(
        log.starts_with(
            "EHLO submit.pec.test\r\nHELO submit.pec.test\r\nMAIL FROM:<a@pec.test>\r\n"
        ),
        "{log}"
    );
}

async fn rejected(script: Script, to: &[&str]) -> (SubmitError, Vec<u8>) {
    let fake = Fake::start(script).await;
    let to: Vec<String> = to.iter().map(|s| s.to_string()).collect();
    let err = fake
        .submitter(TIMEOUT)
        .send("a@pec.test", &to, b"hello\r\n")
        .await
        .unwrap_err();
    if matches!(err, SubmitError::Rejected { .. }) {
        // After a rejection the client still says QUIT.
        let started = Instant::now();
        while !fake.log().ends_with(b"QUIT\r\n") {
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "no QUIT after {err:?}: {}",
                String::from_utf8_lossy(&fake.log())
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    (err, fake.log())
}

#[tokio::test]
async fn fake_server_rcpt_452_is_temporary() {
    let (err, log) = rejected(
        Script::with(|s| {
            s.rcpt = vec![
                Some("250 2.1.5 Ok\r\n"),
                Some("452 4.5.3 Error: too many recipients\r\n"),
            ]
        }),
        &["a@pec.test", "b@pec.test", "c@pec.test"],
    )
    .await;
    check_refused(
        &err,
        &Refused {
            step: "RCPT",
            codes: 452..=452,
            text: Text::Is("4.5.3 Error: too many recipients"),
            permanent: false,
        },
        "RCPT 452",
    );
    let log = String::from_utf8_lossy(&log).into_owned();
    assert!(
        !log.contains("c@pec.test"),
        "went on after a rejection: {log}"
    );
    assert!(!log.contains("DATA"), "{log}");
}

#[tokio::test]
async fn fake_server_permanent_rejections() {
    let refused = |step, code, text, permanent| Refused {
        step,
        codes: code..=code,
        text,
        permanent,
    };
    let cases = [
        (
            Script::with(|s| {
                s.rcpt = vec![Some(
                    "550 5.1.1 <a@pec.test>: Recipient address rejected\r\n",
                )]
            }),
            refused("RCPT", 550, Text::Any, true),
        ),
        (
            Script::with(|s| {
                s.mail =
                    Some("553-5.7.1 sender refused\r\n553-second line\r\n553 5.7.1 last line\r\n")
            }),
            refused(
                "MAIL",
                553,
                Text::Is("5.7.1 sender refused\nsecond line\n5.7.1 last line"),
                true,
            ),
        ),
        (
            Script::with(|s| s.end = Some("554 5.7.1 message content rejected\r\n")),
            refused("MESSAGE", 554, Text::Any, true),
        ),
        (
            Script::with(|s| s.data = Some("451 4.3.0 try later\r\n")),
            refused("DATA", 451, Text::Any, false),
        ),
        (
            Script::with(|s| s.greeting = Some("554 5.3.2 go away\r\n")),
            refused("GREETING", 554, Text::Any, true),
        ),
        (
            Script::with(|s| s.ehlo = Some("421 4.3.2 shutting down\r\n")),
            refused("EHLO", 421, Text::Any, false),
        ),
    ];
    for (script, want) in cases {
        let (err, _) = rejected(script, &["a@pec.test"]).await;
        check_refused(&err, &want, want.step);
    }
}

#[tokio::test]
async fn fake_server_garbage_is_protocol_error() {
    for (what, script) in [
        (
            "no code",
            Script::with(|s| s.greeting = Some("hello there\r\n")),
        ),
        (
            "mixed codes",
            Script::with(|s| s.greeting = Some("220-incomplete\r\n230 mixed codes\r\n")),
        ),
        (
            "354 to MAIL",
            Script::with(|s| s.mail = Some("354 what\r\n")),
        ),
    ] {
        let (err, _) = rejected(script, &["a@pec.test"]).await;
        assert!(matches!(err, SubmitError::Protocol(_)), "{what}: {err:?}");
    }
}

async fn times_out(script: Script) -> SubmitError {
    let fake = Fake::start(script).await;
    let timeout = Duration::from_secs(1);
    let started = Instant::now();
    let err = fake
        .submitter(timeout)
        .send("a@pec.test", &["b@pec.test".to_owned()], b"x\r\n")
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        took >= timeout && took < timeout + Duration::from_millis(500),
        "{took:?}"
    );
    assert!(!err.is_permanent());
    err
}

#[tokio::test]
async fn fake_server_hanging_times_out() {
    // The server stops answering at one step; the timeout names it.
    for (script, step) in [
        (Script::with(|s| s.ehlo = None), "EHLO"),
        (Script::with(|s| s.greeting = None), "GREETING"),
        (Script::with(|s| s.end = None), "MESSAGE"),
    ] {
        let err = times_out(script).await;
        assert!(
            matches!(err, SubmitError::Timeout(at) if at == step),
            "{step}: {err:?}"
        );
    }
}

#[tokio::test]
async fn nothing_listening_is_connect_error() {
    let port = free_port();
    let s = Submitter::new(format!("127.0.0.1:{port}"), HELO.to_owned(), TIMEOUT);
    let err = s
        .send("a@pec.test", &["b@pec.test".to_owned()], b"x\r\n")
        .await
        .unwrap_err();
    assert!(matches!(err, SubmitError::Connect { .. }), "{err:?}");
    assert!(!err.is_permanent());
}

#[tokio::test]
async fn invalid_input_sends_nothing() {
    let fake = Fake::start(Script::default()).await;
    let s = fake.submitter(TIMEOUT);
    let rcpt = ["b@pec.test".to_owned()];
    for (from, to) in [
        ("a@pec.test>\r\nRCPT TO:<evil@x.test", &rcpt[..]),
        ("a@pec.test", &[][..]),
        ("a@pec.test", &["b@pec.test\r\nDATA".to_owned()][..]),
        ("a@pec.test", &["".to_owned()][..]),
    ] {
        let err = s.send(from, to, b"x\r\n").await.unwrap_err();
        assert!(matches!(err, SubmitError::InvalidInput(_)), "{err:?}");
    }
    assert!(fake.log().is_empty());
}

/// A loose SMTP server counting connections and messages; with
/// `close_after_message` it drops each connection after the message's 250
/// (a server closing idle connections).
async fn counting_server(
    close_after_message: bool,
) -> (
    String,
    Arc<std::sync::atomic::AtomicUsize>,
    Arc<std::sync::atomic::AtomicUsize>,
) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let conns = Arc::new(AtomicUsize::new(0));
    let msgs = Arc::new(AtomicUsize::new(0));
    let (c, m) = (conns.clone(), msgs.clone());
    tokio::spawn(async move {
        while let Ok((sock, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let m = m.clone();
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut r = BufReader::new(r);
                let _ = w.write_all(b"220 counting ESMTP\r\n").await;
                let mut line = String::new();
                let mut in_data = false;
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if in_data {
                        if line == ".\r\n" {
                            in_data = false;
                            m.fetch_add(1, Ordering::SeqCst);
                            let _ = w.write_all(b"250 2.0.0 Ok: queued as X\r\n").await;
                            if close_after_message {
                                return;
                            }
                        }
                        continue;
                    }
                    let reply: &[u8] =
                        match line.get(..4).unwrap_or("").to_ascii_uppercase().as_str() {
                            "EHLO" => b"250-counting\r\n250 8BITMIME\r\n",
                            "DATA" => {
                                in_data = true;
                                b"354 go ahead\r\n"
                            }
                            "QUIT" => {
                                let _ = w.write_all(b"221 bye\r\n").await;
                                return;
                            }
                            _ => b"250 ok\r\n",
                        };
                    let _ = w.write_all(reply).await;
                }
            });
        }
    });
    (addr, conns, msgs)
}

/// With reuse, consecutive messages share one connection; without it each
/// opens its own; a kept connection the server closed is replaced without
/// failing the message.
#[tokio::test]
async fn kept_connections_carry_several_messages_and_recover_from_a_close() {
    use std::sync::atomic::Ordering;
    let to = vec!["mario@pec.demo.test".to_string()];
    let msg = b"Subject: x\r\n\r\nbody\r\n";

    let (addr, conns, msgs) = counting_server(false).await;
    let s = Submitter::new(addr, HELO.to_owned(), TIMEOUT).with_reuse(4, Duration::from_secs(20));
    for _ in 0..5 {
        s.send("a@pec.demo.test", &to, msg).await.expect("send");
    }
    assert_eq!(msgs.load(Ordering::SeqCst), 5);
    assert_eq!(conns.load(Ordering::SeqCst), 1, "one connection for all");

    let (addr, conns, msgs) = counting_server(false).await;
    let s = Submitter::new(addr, HELO.to_owned(), TIMEOUT);
    for _ in 0..3 {
        s.send("a@pec.demo.test", &to, msg).await.expect("send");
    }
    assert_eq!(msgs.load(Ordering::SeqCst), 3);
    assert_eq!(conns.load(Ordering::SeqCst), 3, "no reuse unless asked");

    // The server drops every connection after its message: each kept one
    // is found dead at MAIL and the message goes over a new one.
    let (addr, conns, msgs) = counting_server(true).await;
    let s = Submitter::new(addr, HELO.to_owned(), TIMEOUT).with_reuse(4, Duration::from_secs(20));
    for _ in 0..3 {
        s.send("a@pec.demo.test", &to, msg).await.expect("send");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(msgs.load(Ordering::SeqCst), 3);
    assert_eq!(conns.load(Ordering::SeqCst), 3);

    // A kept connection older than max_age is not used.
    let (addr, conns, _) = counting_server(false).await;
    let s = Submitter::new(addr, HELO.to_owned(), TIMEOUT).with_reuse(4, Duration::from_millis(50));
    s.send("a@pec.demo.test", &to, msg).await.expect("send");
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.send("a@pec.demo.test", &to, msg).await.expect("send");
    assert_eq!(conns.load(Ordering::SeqCst), 2);
}

/// Postfix's own smtp-sink takes several messages on one kept connection,
/// byte for byte.
#[tokio::test]
async fn smtp_sink_kept_connection_exact_bytes() {
    let sink = Sink::start(&[]);
    let s = sink
        .submitter(TIMEOUT)
        .with_reuse(2, Duration::from_secs(20));
    let m = tricky_message();
    for _ in 0..3 {
        s.send("a@pec.demo.test", &["b@pec.demo.test".to_string()], &m)
            .await
            .expect("send");
    }
    let dumps = sink.dumps(3);
    for d in dumps {
        assert_eq!(d.message, as_dumped(&m));
    }
}

// ---------------------------------------------------------------------------
// PIPELINING (RFC 2920): MAIL, RCPTs and DATA in one write.

#[tokio::test]
async fn pipelining_sends_mail_rcpt_data_together() {
    // The server answers MAIL and the RCPTs only once it has read DATA: a
    // client waiting for each reply would time out.
    let fake = Fake::start(Script::pipelining(|s| s.hold_until_data = true)).await;
    let receipt = fake
        .submitter(TIMEOUT)
        .send(
            "a@pec.test",
            &["b@pec.test".to_owned(), "c@pec.test".to_owned()],
            b"Subject: p\r\n\r\n.dot\r\n",
        )
        .await
        .expect("pipelined transaction");
    assert_eq!(receipt.code, 250);
    let want: &[u8] = b"EHLO submit.pec.test\r\nMAIL FROM:<a@pec.test>\r\nRCPT TO:<b@pec.test>\r\n\
        RCPT TO:<c@pec.test>\r\nDATA\r\nSubject: p\r\n\r\n..dot\r\n.\r\nQUIT\r\n";
    assert_eq!(
        String::from_utf8_lossy(&fake.log()),
        String::from_utf8_lossy(want)
    );
}

/// A refusal among pipelined replies: the error names the first refused
/// step, nothing of the message is sent (the server may have answered DATA
/// with 354: the connection is closed, not fed), and no QUIT follows.
async fn pipelined_refusal(script: Script, to: &[&str], want: Refused) {
    let fake = Fake::start(script).await;
    let to: Vec<String> = to.iter().map(|s| s.to_string()).collect();
    let err = fake
        .submitter(TIMEOUT)
        .send("a@pec.test", &to, b"hello\r\n")
        .await
        .unwrap_err();
    check_refused(&err, &want, want.step);
    // the server sees the connection closed (its reads end)
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = String::from_utf8_lossy(&fake.log()).into_owned();
    assert!(log.ends_with("DATA\r\n"), "{}: {log}", want.step);
    assert!(!log.contains("hello"), "{}: message sent: {log}", want.step);
    assert!(!log.contains("QUIT"), "{}: {log}", want.step);
}

#[tokio::test]
async fn pipelining_refused_rcpt_with_data_accepted_sends_nothing() {
    pipelined_refusal(
        Script::pipelining(|s| {
            s.rcpt = vec![
                Some("250 2.1.5 Ok\r\n"),
                Some("550 5.1.1 <c@pec.test>: Recipient address rejected\r\n"),
            ]
        }),
        &["b@pec.test", "c@pec.test"],
        Refused {
            step: "RCPT",
            codes: 550..=550,
            text: Text::Any,
            permanent: true,
        },
    )
    .await;
}

#[tokio::test]
async fn pipelining_refused_mail_and_data() {
    pipelined_refusal(
        Script::pipelining(|s| {
            s.mail = Some("451 4.3.0 try later\r\n");
            s.rcpt = vec![Some("503 5.5.1 need MAIL\r\n")];
            s.data = Some("503 5.5.1 need RCPT\r\n");
        }),
        &["b@pec.test"],
        Refused {
            step: "MAIL",
            codes: 451..=451,
            text: Text::Any,
            permanent: false,
        },
    )
    .await;
    // DATA refused after every RCPT was taken: all replies read, in step
    let fake = Fake::start(Script::pipelining(|s| {
        s.data = Some("554 5.5.1 no valid recipients\r\n")
    }))
    .await;
    let err = fake
        .submitter(TIMEOUT)
        .send("a@pec.test", &["b@pec.test".to_owned()], b"hello\r\n")
        .await
        .unwrap_err();
    check_refused(
        &err,
        &Refused {
            step: "DATA",
            codes: 554..=554,
            text: Text::Any,
            permanent: true,
        },
        "DATA 554",
    );
    let started = Instant::now();
    while !fake.log().ends_with(b"QUIT\r\n") {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no QUIT after DATA 554"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!String::from_utf8_lossy(&fake.log()).contains("hello"));
}
