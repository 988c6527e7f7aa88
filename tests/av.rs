//! `pec_milter::clamd` against a real clamd (started per test, tiny local
//! signature DB, no freshclam) and against fake servers for the failures.
//!
//! Needs the `clamd` binary (Debian package clamav-daemon): run
//! `integration/deps.sh` as root.

mod common;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{free_port, installed};
use pec_milter::clamd::{Clamd, ClamdAddress, ClamdError};
use pec_milter::roles::Verdict;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// The EICAR test string, assembled so that this source file is not itself
/// a test "virus".
const EICAR: &str = concat!(
    "X5O!P%@AP[4\\PZX54(P^)7CC)7}$",
    "EICAR-STANDARD-",
    "ANTIVIRUS-TEST-FILE!$H+H*"
);
const EICAR_BODY: &str = concat!("EICAR-STANDARD-", "ANTIVIRUS-TEST-FILE");

const TIMEOUT: Duration = Duration::from_secs(30);

fn clamd_binary() -> PathBuf {
    installed("clamd", "clamav-daemon")
}

/// A clamd child process in a temp dir; killed on drop.
struct ClamdServer {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl ClamdServer {
    async fn start() -> Self {
        Self::start_with("StreamMaxLength 200M\n").await
    }

    /// `extra` is appended to clamd.conf.
    async fn start_with(extra: &str) -> Self {
        let bin = clamd_binary();
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        std::fs::create_dir(&db).unwrap();
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        // md5 signature of the exact EICAR file, and a body signature that
        // matches the EICAR string anywhere (also in decoded attachments).
        let md5 =
            openssl::hash::hash(openssl::hash::MessageDigest::md5(), EICAR.as_bytes()).unwrap();
        std::fs::write(
            db.join("pectest.hdb"),
            format!("{}:{}:PEC.Test.EICAR.HDB\n", hex::encode(md5), EICAR.len()),
        )
        .unwrap();
        std::fs::write(
            db.join("pectest.ndb"),
            format!(
                "PEC.Test.EICAR.NDB:0:*:{}\n",
                hex::encode(EICAR_BODY.as_bytes())
            ),
        )
        .unwrap();
        let port = free_port();
        let d = dir.path().display();
        // Runs as root without `User` (no privilege drop); Foreground so the
        // child is clamd itself and dies with kill().
        let conf = format!(
            "Foreground yes\n\
             LogFile {d}/clamd.log\n\
             DatabaseDirectory {d}/db\n\
             TemporaryDirectory {d}/tmp\n\
             LocalSocket {d}/clamd.sock\n\
             TCPSocket {port}\n\
             TCPAddr 127.0.0.1\n\
             {extra}"
        );
        let conf_path = dir.path().join("clamd.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let out = std::fs::File::create(dir.path().join("clamd.out")).unwrap();
        let child = Command::new(bin)
            .arg(format!("--config-file={}", conf_path.display()))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let mut server = ClamdServer { child, dir, port };
        server.wait_ready().await;
        server
    }

    fn tcp(&self) -> ClamdAddress {
        ClamdAddress::Tcp(format!("127.0.0.1:{}", self.port))
    }

    fn unix(&self) -> ClamdAddress {
        ClamdAddress::Unix(self.dir.path().join("clamd.sock"))
    }

    fn log(&self) -> String {
        let out = std::fs::read_to_string(self.dir.path().join("clamd.out")).unwrap_or_default();
        let log = std::fs::read_to_string(self.dir.path().join("clamd.log")).unwrap_or_default();
        format!("--- stdout/stderr ---\n{out}\n--- clamd.log ---\n{log}")
    }

    /// Poll PING over both sockets (a tiny DB loads in a fraction of a second).
    async fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("clamd exited early ({status}):\n{}", self.log());
            }
            let tcp = Clamd::new(self.tcp(), Duration::from_secs(2));
            let unix = Clamd::new(self.unix(), Duration::from_secs(2));
            if tcp.ping().await.is_ok() && unix.ping().await.is_ok() {
                return;
            }
            if started.elapsed() > Duration::from_secs(60) {
                panic!("clamd not ready after 60 s:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ClamdServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn assert_eicar(v: &Verdict) {
    match v {
        Verdict::Infected(name) => assert!(
            name.starts_with("PEC.Test.EICAR.") && name.ends_with(".UNOFFICIAL"),
            "unexpected signature name {name:?}"
        ),
        Verdict::Clean => panic!("EICAR reported clean"),
    }
}

const CLEAN_TEXT: &[u8] =
    b"From: a@pec.test\r\nTo: b@pec.test\r\nSubject: hello\r\n\r\nJust a harmless line.\r\n";

#[tokio::test(flavor = "multi_thread")]
async fn clean_and_eicar_over_tcp_and_unix() {
    let server = ClamdServer::start().await;
    for addr in [server.tcp(), server.unix()] {
        let clamd = Clamd::new(addr.clone(), TIMEOUT);
        clamd.ping().await.unwrap();
        assert_eq!(
            clamd.scan_bytes(CLEAN_TEXT).await.unwrap(),
            Verdict::Clean,
            "{addr}"
        );
        assert_eq!(
            clamd.scan_bytes(b"").await.unwrap(),
            Verdict::Clean,
            "{addr}"
        );
        let v = clamd.scan_bytes(EICAR.as_bytes()).await.unwrap();
        assert_eicar(&v);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn eicar_in_base64_mime_attachment() {
    let server = ClamdServer::start().await;
    let b64 = base64::engine::general_purpose::STANDARD.encode(EICAR);
    // The encoded form does not contain the signature bytes: only a MIME
    // decoder finds it.
    assert!(!b64.contains(EICAR_BODY));
    let mail = format!(
        "From: mario.rossi@pec.test\r\n\
         To: anna.bianchi@pec.test\r\n\
         Subject: invoice\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b1\"\r\n\
         \r\n\
         --b1\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         See attachment.\r\n\
         --b1\r\n\
         Content-Type: application/octet-stream; name=\"invoice.com\"\r\n\
         Content-Disposition: attachment; filename=\"invoice.com\"\r\n\
         Content-Transfer-Encoding: base64\r\n\
         \r\n\
         {b64}\r\n\
         --b1--\r\n"
    );
    for addr in [server.tcp(), server.unix()] {
        let clamd = Clamd::new(addr, TIMEOUT);
        let v = clamd.scan_bytes(mail.as_bytes()).await.unwrap();
        assert_eicar(&v);
    }
}

/// 30 MB of text lines (no signature), written to a file.
fn big_clean_file(dir: &Path) -> PathBuf {
    let path = dir.join("big.txt");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    let mut written = 0usize;
    let mut i = 0u64;
    while written < 30 * 1024 * 1024 {
        let line =
            format!("line {i:010} lorem ipsum dolor sit amet, consectetur adipiscing elit\r\n");
        f.write_all(line.as_bytes()).unwrap();
        written += line.len();
        i += 1;
    }
    f.flush().unwrap();
    path
}

#[tokio::test(flavor = "multi_thread")]
async fn thirty_megabytes_from_a_file() {
    let server = ClamdServer::start().await;
    let path = big_clean_file(server.dir.path());
    for addr in [server.tcp(), server.unix()] {
        let clamd = Clamd::new(addr.clone(), Duration::from_secs(120));
        let file = tokio::fs::File::open(&path).await.unwrap();
        let started = Instant::now();
        assert_eq!(
            clamd.scan_reader(file).await.unwrap(),
            Verdict::Clean,
            "{addr}"
        );
        eprintln!("30 MB over {addr}: {:?}", started.elapsed());
    }
    // The same file with EICAR appended at the end is found.
    let mut data = std::fs::read(&path).unwrap();
    data.extend_from_slice(b"\r\n");
    data.extend_from_slice(EICAR.as_bytes());
    let clamd = Clamd::new(server.tcp(), Duration::from_secs(120));
    assert_eicar(&clamd.scan_reader(&data[..]).await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn stream_over_the_size_limit_is_an_error() {
    let server = ClamdServer::start_with("StreamMaxLength 1M\n").await;
    let data = vec![b'a'; 3 * 1024 * 1024];
    for addr in [server.tcp(), server.unix()] {
        let clamd = Clamd::new(addr.clone(), TIMEOUT);
        let r = clamd.scan_bytes(&data).await;
        eprintln!("{addr}: 3 MB past StreamMaxLength 1M: {r:?}");
        match r {
            Err(ClamdError::Protocol(reply)) => assert!(reply.contains("size limit"), "{reply}"),
            Err(ClamdError::Io(_)) => {} // closed before we could read its reply
            other => panic!("{addr}: expected an error past StreamMaxLength, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn killed_clamd_is_an_error_not_clean() {
    let timeout = Duration::from_secs(3);

    // Killed before the scan: nothing listens any more.
    let mut server = ClamdServer::start().await;
    let (tcp, unix) = (server.tcp(), server.unix());
    server.kill();
    for addr in [tcp, unix] {
        let clamd = Clamd::new(addr.clone(), timeout);
        let started = Instant::now();
        let r = clamd.scan_bytes(CLEAN_TEXT).await;
        assert!(
            matches!(r, Err(ClamdError::Connect { .. })),
            "{addr}: {r:?}"
        );
        assert!(started.elapsed() < timeout);
    }

    // Killed in the middle of a stream.
    let mut server = ClamdServer::start().await;
    let clamd = Clamd::new(server.tcp(), timeout);
    let (mut tx, rx) = tokio::io::duplex(64 * 1024);
    let started = Instant::now();
    let scan = tokio::spawn(async move { clamd.scan_reader(rx).await });
    tx.write_all(&vec![b'x'; 200 * 1024]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    server.kill();
    // Keep feeding data (writes to the dead socket fail), then end it.
    let _ = tx.write_all(&vec![b'y'; 1024 * 1024]).await;
    drop(tx);
    let r = scan.await.unwrap();
    eprintln!(
        "clamd killed mid-stream: {r:?} after {:?}",
        started.elapsed()
    );
    assert!(r.is_err(), "scan with clamd killed gave {r:?}");
    assert!(!matches!(r, Err(ClamdError::Timeout)), "{r:?}");
    assert!(started.elapsed() < timeout + Duration::from_secs(1));
}

#[tokio::test]
async fn nothing_listening_is_connect_error() {
    let port = free_port();
    let clamd = Clamd::new(ClamdAddress::Tcp(format!("127.0.0.1:{port}")), TIMEOUT);
    let r = clamd.scan_bytes(CLEAN_TEXT).await;
    assert!(matches!(r, Err(ClamdError::Connect { .. })), "{r:?}");
    assert!(matches!(
        clamd.ping().await,
        Err(ClamdError::Connect { .. })
    ));

    let dir = tempfile::tempdir().unwrap();
    let clamd = Clamd::new(ClamdAddress::Unix(dir.path().join("none.sock")), TIMEOUT);
    let r = clamd.scan_bytes(CLEAN_TEXT).await;
    assert!(matches!(r, Err(ClamdError::Connect { .. })), "{r:?}");
}

#[tokio::test]
async fn silent_server_times_out() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            // Read everything, never answer.
            held.push(tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }));
        }
    });
    let timeout = Duration::from_secs(1);
    let clamd = Clamd::new(ClamdAddress::Tcp(addr.to_string()), timeout);
    let started = Instant::now();
    let r = clamd.scan_bytes(CLEAN_TEXT).await;
    let took = started.elapsed();
    assert!(matches!(r, Err(ClamdError::Timeout)), "{r:?}");
    assert!(
        took >= timeout && took < timeout + Duration::from_millis(500),
        "{took:?}"
    );
    assert!(matches!(clamd.ping().await, Err(ClamdError::Timeout)));
    server.abort();
}

/// A fake clamd that reads the request (PING, or INSTREAM up to the
/// zero-length chunk) and answers `reply`; then it closes its side and
/// drains, or with `linger` keeps the connection open without a word more
/// (clamd closes it; we must not need that to read the verdict).
async fn fake_clamd(reply: &'static [u8], linger: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 65536];
                while !(got.ends_with(b"zPING\0")
                    || (got.starts_with(b"zINSTREAM\0") && got.ends_with(&[0, 0, 0, 0])))
                {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = sock.write_all(reply).await;
                if linger {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    return;
                }
                let _ = sock.shutdown().await;
                while let Ok(n) = sock.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                }
            });
        }
    });
    addr.to_string()
}

#[tokio::test]
async fn garbage_replies_are_protocol_errors() {
    for reply in [
        &b"HELLO THERE\0"[..],
        b"stream: something odd\0",
        b"INSTREAM size limit exceeded. ERROR\0",
        b"stream: OK ERROR\0",
        b"stream: FOUND\0",
        b"",
    ] {
        let addr = fake_clamd(reply, false).await;
        let clamd = Clamd::new(ClamdAddress::Tcp(addr), Duration::from_secs(5));
        let r = clamd.scan_bytes(CLEAN_TEXT).await;
        assert!(
            matches!(r, Err(ClamdError::Protocol(_))),
            "{:?} -> {r:?}",
            String::from_utf8_lossy(reply)
        );
        assert!(matches!(clamd.ping().await, Err(ClamdError::Protocol(_))));
    }
    // And the well-formed answers of a fake server are understood.
    well_formed_answers_are_understood(false, TIMEOUT).await;
}

/// `stream: OK`, `stream: NAME FOUND` and `PONG` from a [`fake_clamd`]
/// that closes (or, with `linger`, keeps open) after its answer.
async fn well_formed_answers_are_understood(linger: bool, timeout: Duration) {
    let clamd = Clamd::new(
        ClamdAddress::Tcp(fake_clamd(b"stream: OK\0", linger).await),
        timeout,
    );
    assert_eq!(clamd.scan_bytes(CLEAN_TEXT).await.unwrap(), Verdict::Clean);
    let clamd = Clamd::new(
        ClamdAddress::Tcp(fake_clamd(b"stream: Eicar-Test-Signature FOUND\0", linger).await),
        timeout,
    );
    assert_eq!(
        clamd.scan_bytes(CLEAN_TEXT).await.unwrap(),
        Verdict::Infected("Eicar-Test-Signature".into())
    );
    let clamd = Clamd::new(
        ClamdAddress::Tcp(fake_clamd(b"PONG\0", linger).await),
        timeout,
    );
    clamd.ping().await.unwrap();
}

#[tokio::test]
async fn verdict_is_read_at_the_nul_without_waiting_for_close() {
    let timeout = Duration::from_secs(5);
    let started = Instant::now();
    well_formed_answers_are_understood(true, timeout).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn endless_reply_is_a_protocol_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            // Talks without end and never sends a NUL.
            tokio::spawn(async move {
                let line = vec![b'z'; 4096];
                while sock.write_all(&line).await.is_ok() {}
            });
        }
    });
    let clamd = Clamd::new(ClamdAddress::Tcp(addr.to_string()), Duration::from_secs(5));
    for r in [
        clamd.scan_bytes(CLEAN_TEXT).await,
        clamd.ping().await.map(|()| Verdict::Clean),
    ] {
        match r {
            Err(ClamdError::Protocol(reply)) => {
                assert!(reply.starts_with("reply too long"), "{reply:.40}");
                assert!(reply.len() < 9 * 1024, "{}", reply.len());
            }
            other => panic!("expected a protocol error, got {other:?}"),
        }
    }
}

/// A fake clamd that decodes the INSTREAM chunks, publishes how many payload
/// bytes it has received so far and the largest chunk, and answers OK.
async fn counting_server() -> (String, tokio::sync::watch::Receiver<(usize, usize)>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::watch::channel((0usize, 0usize));
    tokio::spawn(async move {
        let (sock, _) = listener.accept().await.unwrap();
        let mut sock = tokio::io::BufReader::new(sock);
        let mut cmd = [0u8; 10];
        sock.read_exact(&mut cmd).await.unwrap();
        assert_eq!(&cmd, b"zINSTREAM\0");
        let (mut total, mut largest) = (0usize, 0usize);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let len = sock.read_u32().await.unwrap() as usize;
            if len == 0 {
                break;
            }
            sock.read_exact(&mut buf[..len]).await.unwrap();
            total += len;
            largest = largest.max(len);
            tx.send_replace((total, largest));
        }
        sock.get_mut().write_all(b"stream: OK\0").await.unwrap();
        let _ = sock.get_mut().shutdown().await;
    });
    (addr.to_string(), rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn message_is_streamed_while_it_is_read() {
    let (addr, mut progress) = counting_server().await;
    let clamd = Clamd::new(ClamdAddress::Tcp(addr), TIMEOUT);
    let (mut tx, rx) = tokio::io::duplex(64 * 1024);
    let scan = tokio::spawn(async move { clamd.scan_reader(rx).await });
    // 8 MB go out and (but for the last chunk or so still in flight) reach
    // clamd while the message has not ended yet: the client forwards chunks
    // as it reads them, it does not gather the whole message.
    let sent = 8 * 1024 * 1024;
    tx.write_all(&vec![b'm'; sent]).await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        progress.wait_for(|&(total, _)| total >= sent - 256 * 1024),
    )
    .await
    .expect("data not forwarded before the end of the message")
    .unwrap();
    assert!(!scan.is_finished());
    tx.write_all(b"tail").await.unwrap();
    drop(tx);
    assert_eq!(scan.await.unwrap().unwrap(), Verdict::Clean);
    let (total, largest) = *progress.borrow();
    assert_eq!(total, sent + 4);
    assert!(largest <= 64 * 1024, "chunk of {largest} bytes");
}

#[test]
fn address_syntax() {
    assert_eq!(
        "tcp:127.0.0.1:3310".parse::<ClamdAddress>().unwrap(),
        ClamdAddress::Tcp("127.0.0.1:3310".into())
    );
    assert_eq!(
        "127.0.0.1:3310".parse::<ClamdAddress>().unwrap(),
        ClamdAddress::Tcp("127.0.0.1:3310".into())
    );
    assert_eq!(
        "unix:/run/clamav/clamd.ctl"
            .parse::<ClamdAddress>()
            .unwrap(),
        ClamdAddress::Unix("/run/clamav/clamd.ctl".into())
    );
    assert_eq!(
        "/run/clamav/clamd.ctl".parse::<ClamdAddress>().unwrap(),
        ClamdAddress::Unix("/run/clamav/clamd.ctl".into())
    );
    assert!("clamd".parse::<ClamdAddress>().is_err());
    assert!("tcp:host".parse::<ClamdAddress>().is_err());
    assert_eq!(
        ClamdAddress::Tcp("127.0.0.1:3310".into()).to_string(),
        "tcp:127.0.0.1:3310"
    );
}
