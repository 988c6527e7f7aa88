//! The PEC floor: a benchmark tool, not PEC. A milter that computes nothing
//! and makes the MTA do what pec-milter's access point makes it do, so that
//! `integration/bench/run.sh` can measure, as a row of its own, what
//! Postfix + clamd + the two messages of a submission cost without any
//! milter work (issue 18, performance target 2: pec-milter >= 0.9 x this).
//! Its own CPU is the milter protocol and the clamd and SMTP exchanges
//! (about 0.5 ms a submission on the bench machine, 2026-12-07).
//!
//! With `--sign KEY.pem` it is the *signing floor*: the same, plus the two
//! RSA signatures of a submission (the digests and RSA operations of
//! pec-milter's two CMS signatures, results thrown away; `sign_twice`): the
//! part of pec-milter's cost the rules impose, measured as a row too.
//!
//! It signs nothing, keeps no state, writes no log, checks nothing: every
//! message gets the same precomputed envelope and the same precomputed
//! receipt, both made once by pec-milter itself (`run.sh` captures them
//! from a real submission) and read from files at start.
//!
//! Per SMTP session, as pec-milter's access point:
//!
//! - negotiation: the actions ADD_HEADER, CHANGE_HEADER, REPLACE_BODY; the
//!   option LEADING_SPACE and no replies to RCPT, header and body where the
//!   MTA allows; the macros `{auth_authen}` at MAIL and `i` at end of
//!   message (the same requests as pec-milter, so the MTA sends the same);
//! - MAIL without `{auth_authen}`: accepted untouched (pec-milter's access
//!   point applies to authenticated holders only);
//! - header fields and body: kept in memory (header block and body);
//! - end of message, in pec-milter's order:
//!   1. clamd: the message (header block, empty line, body) sent with
//!      `zINSTREAM` (one new connection a scan, as pec-milter; 64 KiB
//!      chunks, written in one write), the reply read up to its NUL; `OK`
//!      goes on, `FOUND` is a discard, anything else a 4xx;
//!   2. the precomputed accettazione injected over SMTP to the reinjection
//!      listener (`--reinject`): `MAIL FROM:<--receipt-from>`, `RCPT TO:` the
//!      session's MAIL FROM address, `DATA`, the receipt (dot-stuffed once at
//!      start); MAIL, RCPT and DATA in one write (PIPELINING), as pec-milter's injector
//!      (`src/smtp.rs`), on a kept connection: up to 8 connections are kept
//!      for 30 s after their last message (pec-milter's `REINJECTION_KEPT`
//!      and age), a new one (greeting, EHLO) only when none is idle;
//!   3. the milter actions of pec-milter's `apply` for a busta di trasporto
//!      (`src/milter/mod.rs`, `rewrite`): every header field of the
//!      original that an envelope does not inherit (all but Received,
//!      Return-Path, To, Cc, Reply-To) deleted with CHGHEADER (name, index,
//!      no value), the highest index of a name first; the envelope's own
//!      header fields added with ADDHEADER, in order; the body replaced with
//!      REPLBODY, in pieces of at most 64 KiB; then accept.
//!
//! The unix listener coalesces the replies as pec-milter's does
//! (`pec_milter::milter::Batched`: the actions and the final reply of an
//! end of message leave in one write).
//!
//! `--envelope FILE`: a busta di trasporto as a sink kept it (header block,
//! empty line, body; CRLF or LF). Its own header fields are those from the
//! first `X-Trasporto:` to the end of the header block (pec-milter adds them
//! after the fields it keeps: X-Trasporto, Date, Subject, From, Reply-To,
//! Message-ID, X-Riferimento-Message-ID, X-TipoRicevuta, MIME-Version,
//! Content-Type); the fields before it are the original's and are not
//! replayed. `--receipt FILE`: the accettazione as a sink kept it.
//!
//! ```text
//! floor_milter --listen /run/floor.sock --envelope busta.eml --receipt accettazione.eml \
//!     --reinject 127.0.0.1:10025 --clamd 127.0.0.1:3310 \
//!     --receipt-from posta-certificata@pec.demo.test [--workers 2]
//! ```
//!
//! `--clamd` is `HOST:PORT` or an absolute path (unix socket), or `off`
//! (no scan: the protocol-level floor of `profile.sh MILTER=floor`, next to
//! pec-milter's protocol-level runs, which have clamd off too). Stops on
//! SIGTERM or SIGINT and removes its socket.

use std::ffi::CString;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use indymilter::{
    Actions, Callbacks, ContextActions, EomContext, MacroStage, ProtoOpts, SetErrorReply, Status,
};
use pec_milter::milter::Batched;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::time::timeout;

/// Kept reinjection connections and how long one stays trusted (as
/// pec-milter's daemon: `REINJECTION_KEPT`, 30 s).
const KEPT: usize = 8;
const KEPT_AGE: Duration = Duration::from_secs(30);
/// Bound of one clamd scan, one SMTP step.
const IO_TIMEOUT: Duration = Duration::from_secs(60);
/// clamd INSTREAM chunk, REPLBODY piece.
const CHUNK: usize = 64 * 1024;

fn usage() -> ! {
    eprintln!(
        "usage: floor_milter --listen PATH --envelope FILE --receipt FILE --reinject HOST:PORT \
         --clamd HOST:PORT|PATH|off [--receipt-from ADDR] [--helo NAME] [--workers N] [--sign KEY.pem]"
    );
    std::process::exit(2)
}

struct Opts {
    listen: PathBuf,
    envelope: PathBuf,
    receipt: PathBuf,
    reinject: String,
    clamd: String,
    receipt_from: String,
    helo: String,
    workers: usize,
    sign: Option<PathBuf>,
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        listen: PathBuf::new(),
        envelope: PathBuf::new(),
        receipt: PathBuf::new(),
        reinject: "127.0.0.1:10025".into(),
        clamd: String::new(),
        receipt_from: "posta-certificata@pec.demo.test".into(),
        helo: "localhost".into(),
        workers: 2,
        sign: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--listen" => o.listen = val().trim_start_matches("unix:").into(),
            "--envelope" => o.envelope = val().into(),
            "--receipt" => o.receipt = val().into(),
            "--reinject" => o.reinject = val(),
            "--clamd" => o.clamd = val().trim_start_matches("tcp:").to_string(),
            "--receipt-from" => o.receipt_from = val(),
            "--helo" => o.helo = val(),
            "--workers" => o.workers = val().parse().unwrap_or_else(|_| usage()),
            "--sign" => o.sign = Some(val().into()),
            _ => usage(),
        }
    }
    if o.listen.as_os_str().is_empty()
        || o.envelope.as_os_str().is_empty()
        || o.receipt.as_os_str().is_empty()
        || o.clamd.is_empty()
        || o.workers == 0
    {
        usage();
    }
    o
}

/// Header fields to add: name, value as ADDHEADER sends it (leading space
/// kept, folds as bare LF).
type Fields = Vec<(String, String)>;

/// What every message gets, made once at start.
struct Floor {
    /// The envelope's own header fields.
    headers: Fields,
    /// The envelope's body, CRLF.
    body: Vec<u8>,
    /// The receipt as the DATA phase sends it: dot-stuffed, CRLF, with the
    /// final `.` line.
    receipt_data: Vec<u8>,
    receipt_from: String,
    reinject: String,
    helo: String,
    clamd: String,
    idle: Mutex<Vec<Smtp>>,
    /// `--sign`: the key of the two signatures of the signing floor.
    key: Option<openssl::pkey::PKey<openssl::pkey::Private>>,
}

/// The signing floor's work (`--sign`): what the two RSA signatures of a
/// submission cost in pec-milter, without the rest. Each of pec-milter's
/// signatures is a CMS SignedData: a SHA-256 digest of the content (the
/// envelope's: about the original's size; the receipt's: a few KB), then
/// one RSA PKCS#1 v1.5 signature over the signed attributes (about 100
/// bytes of DER holding that digest). Here: the same digests and the same
/// RSA operations, over the original and the precomputed receipt; the
/// results are thrown away.
fn sign_twice(
    key: &openssl::pkey::PKey<openssl::pkey::Private>,
    original: (&[u8], &[u8]),
    receipt: &[u8],
) -> Result<(), openssl::error::ErrorStack> {
    use openssl::hash::{Hasher, MessageDigest};
    use openssl::sign::Signer;
    let mut h = Hasher::new(MessageDigest::sha256())?;
    h.update(original.0)?;
    h.update(original.1)?;
    let envelope_digest = h.finish()?;
    let receipt_digest = openssl::sha::sha256(receipt);
    for digest in [&envelope_digest[..], &receipt_digest[..]] {
        // the signed attributes' size: content type, signing time, digest
        let mut attrs = [0u8; 104];
        attrs[..digest.len()].copy_from_slice(digest);
        let mut signer = Signer::new(MessageDigest::sha256(), key)?;
        signer.update(&attrs)?;
        std::hint::black_box(signer.sign_to_vec()?);
    }
    Ok(())
}

/// Bare LF to CRLF (a file a sink kept may have either).
fn crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 40);
    let mut prev = 0u8;
    for &b in raw {
        if b == b'\n' && prev != b'\r' {
            out.push(b'\r');
        }
        out.push(b);
        prev = b;
    }
    out
}

/// (header block without its final CRLF CRLF, body) of a CRLF message.
fn split_message(m: &[u8]) -> (&[u8], &[u8]) {
    match m.windows(4).position(|w| w == b"\r\n\r\n") {
        Some(i) => (&m[..i + 2], &m[i + 4..]),
        None => (m, &[]),
    }
}

/// The fields of a CRLF header block, each with its CRLF line ends.
fn fields(head: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < head.len() {
        let end = head[i..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map_or(head.len(), |p| i + p + 2);
        let continued = end < head.len() && matches!(head[end], b' ' | b'\t');
        if !continued {
            out.push(&head[start..end]);
            start = end;
        }
        i = end;
    }
    out
}

fn load_envelope(path: &Path) -> io::Result<(Fields, Vec<u8>)> {
    let m = crlf(&std::fs::read(path)?);
    let (head, body) = split_message(&m);
    let mut headers = Vec::new();
    let mut own = false;
    for f in fields(head) {
        let f = String::from_utf8_lossy(f);
        let Some((name, value)) = f.split_once(':') else {
            continue;
        };
        own |= name.eq_ignore_ascii_case("X-Trasporto");
        if own {
            let value = value.trim_end_matches("\r\n").replace("\r\n", "\n");
            headers.push((name.to_string(), value));
        }
    }
    if headers.is_empty() || body.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: not a busta di trasporto (no X-Trasporto field, or no body)",
                path.display()
            ),
        ));
    }
    Ok((headers, body.to_vec()))
}

fn load_receipt(path: &Path) -> io::Result<Vec<u8>> {
    let m = crlf(&std::fs::read(path)?);
    if m.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{}: empty", path.display()),
        ));
    }
    let mut out = Vec::with_capacity(m.len() + 64);
    let mut line_start = true;
    for &b in &m {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    if !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    Ok(out)
}

// ------------------------------------------------------------------ clamd

/// `zINSTREAM` of header block + empty line + body; Ok(None) when clean,
/// Ok(Some(reply)) when clamd found something.
async fn scan(clamd: &str, head: &[u8], body: &[u8]) -> io::Result<Option<String>> {
    let parts: [&[u8]; 3] = [head, b"\r\n", body];
    let mut left: usize = parts.iter().map(|p| p.len()).sum();
    let mut req = Vec::with_capacity(left + 4 * (left / CHUNK + 2) + 10);
    req.extend_from_slice(b"zINSTREAM\0");
    // 64 KiB chunks of the three parts as one stream, as pec-milter sends them
    let mut room = 0;
    for mut p in parts {
        while !p.is_empty() {
            if room == 0 {
                room = left.min(CHUNK);
                req.extend_from_slice(&(room as u32).to_be_bytes());
            }
            let n = room.min(p.len());
            req.extend_from_slice(&p[..n]);
            p = &p[n..];
            room -= n;
            left -= n;
        }
    }
    req.extend_from_slice(&0u32.to_be_bytes());
    let reply = timeout(IO_TIMEOUT, async {
        if clamd.starts_with('/') {
            let mut s = UnixStream::connect(clamd).await?;
            s.write_all(&req).await?;
            read_nul(&mut s).await
        } else {
            let mut s = TcpStream::connect(clamd).await?;
            s.set_nodelay(true)?;
            s.write_all(&req).await?;
            read_nul(&mut s).await
        }
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "clamd timeout"))??;
    let reply = reply.trim_end();
    if reply.ends_with(" OK") && !reply.contains("ERROR") {
        Ok(None)
    } else if reply.ends_with(" FOUND") {
        Ok(Some(reply.to_string()))
    } else {
        Err(io::Error::other(format!("clamd said {reply:?}")))
    }
}

/// clamd's reply, up to its NUL (or EOF; at most 8 KiB).
async fn read_nul<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> io::Result<String> {
    let mut buf = Vec::new();
    let mut piece = [0u8; 512];
    loop {
        let n = s.read(&mut piece).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&piece[..n]);
        if let Some(i) = buf.iter().position(|&b| b == 0) {
            buf.truncate(i);
            break;
        }
        if buf.len() > 8192 {
            return Err(io::Error::other("clamd reply too long"));
        }
    }
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

// ------------------------------------------------------------------ SMTP reinjection

struct Smtp {
    r: BufReader<OwnedReadHalf>,
    w: OwnedWriteHalf,
    since: Instant,
}

/// The code of one reply (its lines read to the last).
async fn reply(r: &mut BufReader<OwnedReadHalf>) -> io::Result<u16> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let code = line
            .get(..3)
            .and_then(|c| c.parse::<u16>().ok())
            .ok_or_else(|| io::Error::other(format!("bad SMTP reply {line:?}")))?;
        if line.as_bytes().get(3) != Some(&b'-') {
            return Ok(code);
        }
    }
}

impl Smtp {
    async fn open(addr: &str, helo: &str) -> io::Result<Smtp> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        let (r, w) = s.into_split();
        let mut c = Smtp {
            r: BufReader::new(r),
            w,
            since: Instant::now(),
        };
        expect(reply(&mut c.r).await?, 220, "greeting")?;
        c.step(format!("EHLO {helo}\r\n").as_bytes(), 250, "EHLO")
            .await?;
        Ok(c)
    }

    async fn step(&mut self, cmd: &[u8], want: u16, what: &str) -> io::Result<()> {
        self.w.write_all(cmd).await?;
        expect(reply(&mut self.r).await?, want, what)
    }

    /// MAIL, RCPT and DATA in one write (PIPELINING, as pec-milter's
    /// injector when the server announces it: every listener here does),
    /// their three replies, then the message.
    async fn send(&mut self, from: &str, to: &str, data: &[u8]) -> io::Result<()> {
        self.w
            .write_all(format!("MAIL FROM:<{from}>\r\nRCPT TO:<{to}>\r\nDATA\r\n").as_bytes())
            .await?;
        expect(reply(&mut self.r).await?, 250, "MAIL")?;
        expect(reply(&mut self.r).await?, 250, "RCPT")?;
        expect(reply(&mut self.r).await?, 354, "DATA")?;
        self.step(data, 250, "end of data").await
    }
}

fn expect(code: u16, want: u16, what: &str) -> io::Result<()> {
    if code == want {
        Ok(())
    } else {
        Err(io::Error::other(format!("SMTP {what}: {code}")))
    }
}

impl Floor {
    /// The receipt to `to`, on a kept connection when one is idle (a kept
    /// one that fails is dropped and the next tried), else a new one.
    async fn inject(&self, to: &str) -> io::Result<()> {
        let (from, data) = (&self.receipt_from, &self.receipt_data);
        loop {
            let kept = self
                .idle
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?
                .pop();
            let Some(mut c) = kept else { break };
            if c.since.elapsed() >= KEPT_AGE {
                continue;
            }
            if let Ok(Ok(())) = timeout(IO_TIMEOUT, c.send(from, to, data)).await {
                self.keep(c);
                return Ok(());
            }
        }
        let mut c = timeout(IO_TIMEOUT, async {
            let mut c = Smtp::open(&self.reinject, &self.helo).await?;
            c.send(from, to, data).await?;
            Ok::<_, io::Error>(c)
        })
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "reinjection timeout"))??;
        c.since = Instant::now();
        self.keep(c);
        Ok(())
    }

    fn keep(&self, mut c: Smtp) {
        c.since = Instant::now();
        if let Ok(mut idle) = self.idle.lock()
            && idle.len() < KEPT
        {
            idle.push(c);
        }
    }
}

// ------------------------------------------------------------------ milter

#[derive(Default)]
struct Session {
    noreply: ProtoOpts,
    active: bool,
    from: String,
    head: Vec<u8>,
    names: Vec<String>,
    body: Vec<u8>,
}

impl Session {
    fn go_on(&self, stage: ProtoOpts) -> Status {
        if self.noreply.contains(stage) {
            Status::Noreply
        } else {
            Status::Continue
        }
    }
}

const NOREPLY_STAGES: ProtoOpts = ProtoOpts::NOREPLY_RCPT
    .union(ProtoOpts::NOREPLY_HEADER)
    .union(ProtoOpts::NOREPLY_BODY);

/// Fields an envelope keeps from the original (pec-milter's `is_inherited`).
fn inherited(name: &str) -> bool {
    ["Received", "Return-Path", "To", "Cc", "Reply-To"]
        .iter()
        .any(|n| n.eq_ignore_ascii_case(name))
}

/// (name, index among the fields of that name, from 1) of every field not
/// inherited, the highest index of a name first (pec-milter's `deletions`).
fn deletions(names: &[String]) -> Vec<(String, i32)> {
    let mut seen: Vec<(String, i32)> = Vec::new();
    let mut out = Vec::new();
    for name in names {
        let lname = name.to_ascii_lowercase();
        let idx = match seen.iter_mut().find(|(n, _)| *n == lname) {
            Some((_, i)) => {
                *i += 1;
                *i
            }
            None => {
                seen.push((lname, 1));
                1
            }
        };
        if !inherited(name) {
            out.push((name.clone(), idx));
        }
    }
    out.sort_by_key(|d| std::cmp::Reverse(d.1));
    out
}

fn tempfail(cx: &mut EomContext<Session>, what: &str, e: &dyn std::fmt::Display) -> Status {
    eprintln!("floor_milter: {what}: {e}");
    let _ = cx
        .reply
        .set_error_reply("451", Some("4.3.0"), [format!("floor: {what}")]);
    Status::Tempfail
}

async fn eom(cx: &mut EomContext<Session>, floor: &Floor) -> Status {
    let Some(s) = cx.data.as_mut() else {
        return Status::Accept;
    };
    if !std::mem::take(&mut s.active) {
        return Status::Accept;
    }
    let (head, body, names, from) = (
        std::mem::take(&mut s.head),
        std::mem::take(&mut s.body),
        std::mem::take(&mut s.names),
        std::mem::take(&mut s.from),
    );
    let scanned = if floor.clamd == "off" {
        Ok(None)
    } else {
        scan(&floor.clamd, &head, &body).await
    };
    match scanned {
        Ok(None) => {}
        Ok(Some(found)) => {
            eprintln!("floor_milter: clamd: {found}: discarded");
            return Status::Discard;
        }
        Err(e) => return tempfail(cx, "clamd", &e),
    }
    if let Some(key) = &floor.key
        && let Err(e) = sign_twice(key, (&head, &body), &floor.receipt_data)
    {
        return tempfail(cx, "signature", &io::Error::other(e.to_string()));
    }
    drop((head, body));
    if let Err(e) = floor.inject(&from).await {
        return tempfail(cx, "reinjection", &e);
    }
    let actions = async {
        for (name, idx) in deletions(&names) {
            cx.actions.change_header(name, idx, None::<CString>).await?;
        }
        for (name, value) in &floor.headers {
            cx.actions.add_header(name.as_str(), value.as_str()).await?;
        }
        for piece in floor.body.chunks(CHUNK) {
            cx.actions.replace_body(piece).await?;
        }
        Ok::<(), indymilter::ActionError>(())
    };
    match actions.await {
        Ok(()) => Status::Accept,
        Err(e) => tempfail(cx, "milter actions", &e),
    }
}

fn callbacks(floor: Arc<Floor>) -> Callbacks<Session> {
    Callbacks::new()
        .on_negotiate(|cx, _, mta_opts| {
            Box::pin(async move {
                cx.requested_actions |=
                    Actions::ADD_HEADER | Actions::CHANGE_HEADER | Actions::REPLACE_BODY;
                let noreply = mta_opts & NOREPLY_STAGES;
                cx.requested_opts |= ProtoOpts::LEADING_SPACE | noreply;
                cx.data.get_or_insert_with(Session::default).noreply = noreply;
                cx.requested_macros
                    .insert(MacroStage::Mail, c"{auth_authen}".to_owned());
                cx.requested_macros.insert(MacroStage::Eom, c"i".to_owned());
                Status::Continue
            })
        })
        .on_mail(|cx, args| {
            Box::pin(async move {
                let auth = cx
                    .macros
                    .get(c"{auth_authen}")
                    .is_some_and(|v| !v.is_empty());
                let s = cx.data.get_or_insert_with(Session::default);
                let noreply = s.noreply;
                *s = Session {
                    noreply,
                    ..Session::default()
                };
                if !auth {
                    return Status::Accept;
                }
                s.active = true;
                let a = args
                    .first()
                    .map(|a| String::from_utf8_lossy(a.as_bytes()).into_owned())
                    .unwrap_or_default();
                let a = a.trim();
                s.from = a
                    .strip_prefix('<')
                    .unwrap_or(a)
                    .strip_suffix('>')
                    .unwrap_or(a)
                    .to_string();
                Status::Continue
            })
        })
        .on_rcpt(|cx, _| {
            Box::pin(async move {
                cx.data
                    .as_ref()
                    .map_or(Status::Continue, |s| s.go_on(ProtoOpts::NOREPLY_RCPT))
            })
        })
        .on_header(|cx, name, value| {
            Box::pin(async move {
                let Some(s) = cx.data.as_mut() else {
                    return Status::Continue;
                };
                s.head.extend_from_slice(name.as_bytes());
                s.head.push(b':');
                let mut prev = 0u8;
                for &b in value.as_bytes() {
                    if b == b'\n' && prev != b'\r' {
                        s.head.push(b'\r');
                    }
                    s.head.push(b);
                    prev = b;
                }
                s.head.extend_from_slice(b"\r\n");
                s.names
                    .push(String::from_utf8_lossy(name.as_bytes()).into_owned());
                s.go_on(ProtoOpts::NOREPLY_HEADER)
            })
        })
        .on_body(|cx, chunk| {
            Box::pin(async move {
                let Some(s) = cx.data.as_mut() else {
                    return Status::Continue;
                };
                if s.active {
                    s.body.extend_from_slice(&chunk);
                }
                s.go_on(ProtoOpts::NOREPLY_BODY)
            })
        })
        .on_eom(move |cx| {
            let floor = floor.clone();
            Box::pin(async move { eom(cx, &floor).await })
        })
        .on_abort(|cx| {
            Box::pin(async move {
                if let Some(s) = cx.data.as_mut() {
                    let noreply = s.noreply;
                    *s = Session {
                        noreply,
                        ..Session::default()
                    };
                }
                Status::Continue
            })
        })
}

/// The unix listener, replies coalesced as pec-milter's.
struct UnixBatched(UnixListener);

impl indymilter::Listener for UnixBatched {
    type Io = Batched<UnixStream>;

    fn poll_accept(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<Self::Io>> {
        Pin::new(&mut self.0)
            .poll_accept(cx)
            .map_ok(|(s, _)| Batched::new(s))
    }
}

fn main() -> std::process::ExitCode {
    let o = parse_opts();
    let loaded =
        load_envelope(&o.envelope).and_then(|(h, b)| Ok((h, b, load_receipt(&o.receipt)?)));
    let (headers, body, receipt_data) = match loaded {
        Ok(x) => x,
        Err(e) => {
            eprintln!("floor_milter: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    eprintln!(
        "floor_milter: envelope: {} own header fields, body {} bytes; receipt {} bytes (dot-stuffed)",
        headers.len(),
        body.len(),
        receipt_data.len()
    );
    let key = match &o.sign {
        None => None,
        Some(path) => {
            let key = std::fs::read(path)
                .map_err(|e| e.to_string())
                .and_then(|pem| {
                    openssl::pkey::PKey::private_key_from_pem(&pem).map_err(|e| e.to_string())
                });
            match key {
                Ok(k) => Some(k),
                Err(e) => {
                    eprintln!("floor_milter: --sign {}: {e}", path.display());
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
    };
    let floor = Arc::new(Floor {
        headers,
        body,
        receipt_data,
        receipt_from: o.receipt_from,
        reinject: o.reinject,
        helo: o.helo,
        clamd: o.clamd,
        idle: Mutex::new(Vec::new()),
        key,
    });
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.workers)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("floor_milter: runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let listen = o.listen;
    let r = rt.block_on(async {
        let _ = std::fs::remove_file(&listen);
        let l = UnixListener::bind(&listen)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&listen, std::fs::Permissions::from_mode(0o666))?;
        }
        let shutdown = async {
            use tokio::signal::unix::{SignalKind, signal};
            match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(mut t), Ok(mut i)) => {
                    tokio::select! { _ = t.recv() => {}, _ = i.recv() => {} }
                }
                _ => std::future::pending::<()>().await,
            }
        };
        let r = indymilter::run(
            UnixBatched(l),
            callbacks(floor),
            indymilter::Config::default(),
            shutdown,
        )
        .await;
        let _ = std::fs::remove_file(&listen);
        r
    });
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("floor_milter: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
