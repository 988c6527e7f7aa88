//! Reinjection of receipts and notices into the MTA over SMTP.
//!
//! The milter hands the messages it generates (acceptance and delivery
//! receipts, non-delivery notices, ...) back to the MTA through a listener
//! that runs no milters (for Postfix a `master.cf` smtpd on 127.0.0.1:10025
//! with `-o smtpd_milters= -o receive_override_options=no_milters`).
//!
//! [`Submitter`] is a minimal SMTP client for exactly that: no TLS and no
//! AUTH (loopback only). When the server announces PIPELINING (RFC 2920;
//! Postfix, Sendmail and smtp-sink do) MAIL, the RCPTs and DATA leave in
//! one write and their replies are read in order: two round trips a
//! message instead of four. A refusal among them leaves the session out of
//! step (or in the DATA phase after a 354): that connection is dropped
//! without sending anything more, so nothing of the message is delivered.
//! Otherwise the commands go in lock-step. By default
//! one connection per message; with [`Submitter::with_reuse`] a connection
//! that has just delivered a message is kept for the next one (a new MAIL
//! FROM on the same session: no connect, greeting and EHLO per receipt).
//! A kept connection the server has closed meanwhile is noticed at its
//! MAIL command, before anything of the message is sent, and the message
//! goes over a new connection. The message bytes are sent unchanged except for what
//! SMTP itself requires:
//!
//! - dot-stuffing: a line starting with `.` is sent with one more `.`;
//! - line ends: the message is expected in canonical CRLF form and CRLF is
//!   sent as is; a bare LF is sent as CRLF (a bare CR that is not the last
//!   byte is left alone);
//! - the end of data is `CRLF . CRLF`; if the message does not end with CRLF,
//!   a CRLF is added first (a trailing lone CR is completed to CRLF).
//!
//! So a server that undoes the dot-stuffing stores exactly the bytes given
//! when they are canonical CRLF text.

use crate::roles::{InjectError, Injector};
use std::fmt;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::{Instant, timeout_at};

/// Longest reply line accepted (RFC 5321 allows 512 octets; be generous).
const MAX_REPLY_LINE: u64 = 8 * 1024;
/// Most lines accepted in one multi-line reply.
const MAX_REPLY_LINES: usize = 256;
/// Size of the write buffer; the message body goes out in writes this big.
const WRITE_BUFFER: usize = 64 * 1024;
/// How long to wait for the reply to QUIT once the message is accepted.
const QUIT_WAIT: Duration = Duration::from_secs(2);

/// The server's final reply to the message data, e.g.
/// `250 2.0.0 Ok: queued as 4XyZ12AbCd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubmitReceipt {
    /// Reply code (2xx).
    pub code: u16,
    /// Reply text without the code; lines of a multi-line reply joined by
    /// `\n`.
    pub text: String,
}

impl SubmitReceipt {
    /// The queue id from a Postfix-style `... queued as ID` reply.
    pub fn queue_id(&self) -> Option<&str> {
        let (_, after) = self.text.split_once("queued as ")?;
        let id = after
            .split(|c: char| c.is_whitespace() || c == ')' || c == ';' || c == ',')
            .next()?
            .trim_end_matches('.');
        (!id.is_empty()).then_some(id)
    }
}

impl fmt::Display for SubmitReceipt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text)
    }
}

/// Why a message was not accepted. When `send` returns an error the server
/// has not accepted the message (a failure after acceptance, e.g. at QUIT, is
/// not an error).
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// Could not connect.
    #[error("cannot connect to SMTP server {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    /// The transaction did not finish within the timeout; names the step
    /// that was in progress.
    #[error("SMTP timeout at {0}")]
    Timeout(&'static str),
    /// The server answered 4xx or 5xx.
    #[error("SMTP {step} rejected: {code} {text}")]
    Rejected {
        step: &'static str,
        code: u16,
        text: String,
    },
    /// I/O error on the connection.
    #[error("SMTP I/O error at {step}: {source}")]
    Io {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    /// The server said something that is not valid SMTP at that point.
    #[error("SMTP protocol error: {0}")]
    Protocol(String),
    /// An address the caller gave cannot be sent (CR, LF, `<`, `>`, ...),
    /// or there is no recipient. Nothing was sent.
    #[error("invalid submission: {0}")]
    InvalidInput(String),
}

impl SubmitError {
    /// True for a permanent (5xx) rejection: retrying the same message will
    /// not help. Everything else may succeed later.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Rejected { code, .. } if (500..600).contains(code))
    }
}

/// SMTP client for reinjection. Cheap to clone (clones share the kept
/// connections).
#[derive(Debug, Clone)]
pub struct Submitter {
    addr: String,
    helo: String,
    timeout: Duration,
    pool: Option<Arc<Pool>>,
}

/// Connections kept for the next message.
struct Pool {
    idle: std::sync::Mutex<Vec<Idle>>,
    max: usize,
    max_age: Duration,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("max", &self.max)
            .field("max_age", &self.max_age)
            .finish_non_exhaustive()
    }
}

struct Idle {
    session: Session,
    keywords: Vec<String>,
    since: std::time::Instant,
}

impl Pool {
    /// The most recently used connection young enough to trust.
    fn take(&self) -> Option<Idle> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(i) = idle.pop() {
            if i.since.elapsed() < self.max_age {
                return Some(i);
            }
        }
        None
    }

    /// Keep a connection; gives it back when the pool is full.
    fn put(&self, i: Idle) -> Option<Idle> {
        match self.idle.lock() {
            Ok(mut idle) if idle.len() < self.max => {
                idle.push(i);
                None
            }
            _ => Some(i),
        }
    }
}

impl Submitter {
    /// `addr` is `host:port` (e.g. `127.0.0.1:10025`), `helo` the name sent
    /// with EHLO/HELO, `timeout` the bound of one whole transaction.
    pub fn new(addr: String, helo: String, timeout: Duration) -> Self {
        Self {
            addr,
            helo,
            timeout,
            pool: None,
        }
    }

    /// Keep up to `max` connections for the next messages, each for at
    /// most `max_age` after its last message (keep it well below the
    /// server's idle timeout: Postfix `smtpd_timeout`, 300 s).
    pub fn with_reuse(mut self, max: usize, max_age: Duration) -> Self {
        self.pool = (max > 0).then(|| {
            Arc::new(Pool {
                idle: std::sync::Mutex::new(Vec::new()),
                max,
                max_age,
            })
        });
        self
    }

    /// Send one message to the given recipients with envelope sender `from`
    /// (`""` is the null reverse path, sent as `MAIL FROM:<>`).
    ///
    /// Steps: EHLO (HELO if EHLO gets a 5xx), `MAIL FROM:<from>` (with
    /// ` BODY=8BITMIME` when the server advertises 8BITMIME and the message
    /// has 8-bit bytes; with ` SMTPUTF8` when an address is not ASCII), one
    /// `RCPT TO` per recipient, DATA, the message (dot-stuffed; bare LF sent as
    /// CRLF, see the module doc), `.`, QUIT. Any 4xx/5xx is
    /// [`SubmitError::Rejected`] with the step; the whole transaction is
    /// bounded by the timeout.
    pub async fn send(
        &self,
        from: &str,
        to: &[String],
        message: &[u8],
    ) -> Result<SubmitReceipt, SubmitError> {
        check_address(from, "sender")?;
        if to.is_empty() {
            return Err(SubmitError::InvalidInput("no recipients".to_owned()));
        }
        for rcpt in to {
            if rcpt.is_empty() {
                return Err(SubmitError::InvalidInput("empty recipient".to_owned()));
            }
            check_address(rcpt, "recipient")?;
        }
        if self.helo.is_empty() || self.helo.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(SubmitError::InvalidInput(format!(
                "invalid HELO name {:?}",
                self.helo
            )));
        }

        let deadline = deadline_after(self.timeout);
        if let Some(pool) = &self.pool {
            while let Some(mut idle) = pool.take() {
                idle.session.deadline = deadline;
                let line = mail_line(&idle.keywords, from, to, message)?;
                let pipelined = pipelining(&idle.keywords);
                match idle.session.start(line, to, pipelined).await {
                    // Closed by the server while idle (or closing now): nothing
                    // of this message was sent; try the next or a new one.
                    Err(SubmitError::Io { .. } | SubmitError::Protocol(_)) => {
                        tracing::debug!(server = %self.addr, "kept reinjection connection gone: reconnecting");
                    }
                    Ok(r) if r.code == 421 => {
                        tracing::debug!(server = %self.addr, "kept reinjection connection closing (421): reconnecting");
                    }
                    Err(e) => return Err(e),
                    Ok(reply) => {
                        let result = idle.session.after_mail(reply, to, message, pipelined).await;
                        return self.done(idle.session, idle.keywords, result, to).await;
                    }
                }
            }
        }
        let stream = match timeout_at(deadline, TcpStream::connect(&self.addr)).await {
            Err(_) => return Err(SubmitError::Timeout("CONNECT")),
            Ok(Err(source)) => {
                return Err(SubmitError::Connect {
                    addr: self.addr.clone(),
                    source,
                });
            }
            Ok(Ok(s)) => s,
        };
        stream.set_nodelay(true).map_err(|source| SubmitError::Io {
            step: "CONNECT",
            source,
        })?;
        let (r, w) = stream.into_split();
        let mut session = Session {
            reader: BufReader::new(r),
            writer: BufWriter::with_capacity(WRITE_BUFFER, w),
            deadline,
            unsynced: false,
        };
        let (keywords, result) = match session.open(&self.helo).await {
            Ok(keywords) => {
                let result = session.mail(&keywords, from, to, message).await;
                (keywords, result)
            }
            Err(e) => (Vec::new(), Err(e)),
        };
        self.done(session, keywords, result, to).await
    }

    /// After a transaction: keep the connection (pool) or QUIT on success;
    /// after a failure say QUIT if the server still listens.
    async fn done(
        &self,
        mut session: Session,
        keywords: Vec<String>,
        result: Result<SubmitReceipt, SubmitError>,
        to: &[String],
    ) -> Result<SubmitReceipt, SubmitError> {
        match &result {
            Ok(receipt) => {
                tracing::debug!(server = %self.addr, %receipt, rcpts = to.len(), "message reinjected");
                let idle = Idle {
                    session,
                    keywords,
                    since: std::time::Instant::now(),
                };
                match &self.pool {
                    Some(pool) => {
                        if let Some(mut idle) = pool.put(idle) {
                            idle.session.quit().await;
                        }
                    }
                    None => {
                        let mut idle = idle;
                        idle.session.quit().await;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(server = %self.addr, error = %e, "reinjection failed");
                // After a rejection the server waits for a command: say QUIT.
                // After a timeout or a broken exchange just drop the
                // connection (the unterminated transaction is discarded).
                if matches!(e, SubmitError::Rejected { .. }) {
                    session.abandon().await;
                }
            }
        }
        result
    }
}

/// The MAIL command for a message (BODY=8BITMIME, SMTPUTF8 as needed and
/// announced in `keywords`, the server's EHLO extensions).
fn mail_line(
    keywords: &[String],
    from: &str,
    to: &[String],
    message: &[u8],
) -> Result<String, SubmitError> {
    let has = |kw: &str| keywords.iter().any(|k| k == kw);
    let mut mail = format!("MAIL FROM:<{from}>");
    if message.iter().any(|&b| b >= 0x80) {
        if has("8BITMIME") {
            mail.push_str(" BODY=8BITMIME");
        } else {
            tracing::debug!("8-bit message, but the server does not announce 8BITMIME");
        }
    }
    if !from.is_ascii() || to.iter().any(|r| !r.is_ascii()) {
        if has("SMTPUTF8") {
            mail.push_str(" SMTPUTF8");
        } else {
            return Err(SubmitError::Protocol(
                "non-ASCII address, but the server does not announce SMTPUTF8".to_owned(),
            ));
        }
    }
    Ok(mail)
}

/// Reject anything that would break the command line or the `<...>` syntax.
fn check_address(addr: &str, what: &str) -> Result<(), SubmitError> {
    if addr
        .chars()
        .any(|c| c.is_control() || c == '<' || c == '>' || c == ' ')
    {
        return Err(SubmitError::InvalidInput(format!(
            "invalid {what} address {addr:?}"
        )));
    }
    Ok(())
}

/// One reply: code and text lines (without code and separator).
struct Reply {
    code: u16,
    lines: Vec<String>,
}

impl Reply {
    fn text(&self) -> String {
        self.lines.join("\n")
    }
}

struct Session {
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
    deadline: Instant,
    /// Pipelined commands whose replies were not all read (a refusal
    /// among them ended the transaction): the server may be in the DATA
    /// phase, so nothing more is said on this connection.
    unsynced: bool,
}

impl Session {
    /// Greeting and EHLO (HELO when EHLO gets a 5xx); the server's EHLO
    /// keywords (none after HELO).
    async fn open(&mut self, helo: &str) -> Result<Vec<String>, SubmitError> {
        let greeting = self.step("GREETING", None).await?;
        expect(&greeting, "GREETING", &[220])?;

        let ehlo = self.step("EHLO", Some(format!("EHLO {helo}"))).await?;
        if ehlo.code == 250 {
            Ok(ehlo_keywords(&ehlo))
        } else if (500..600).contains(&ehlo.code) {
            let helo_reply = self.step("HELO", Some(format!("HELO {helo}"))).await?;
            expect(&helo_reply, "HELO", &[250])?;
            Ok(Vec::new())
        } else {
            Err(unexpected(&ehlo, "EHLO"))
        }
    }

    /// One mail transaction on an open session: MAIL, RCPTs, DATA, message.
    async fn mail(
        &mut self,
        keywords: &[String],
        from: &str,
        to: &[String],
        message: &[u8],
    ) -> Result<SubmitReceipt, SubmitError> {
        let line = mail_line(keywords, from, to, message)?;
        let pipelined = pipelining(keywords);
        let reply = self.start(line, to, pipelined).await?;
        self.after_mail(reply, to, message, pipelined).await
    }

    /// MAIL, and its reply. `pipelined`: the RCPTs and DATA leave in the
    /// same write (their replies are read by [`after_mail`](Self::after_mail)).
    async fn start(
        &mut self,
        mail: String,
        to: &[String],
        pipelined: bool,
    ) -> Result<Reply, SubmitError> {
        if !pipelined {
            return self.step("MAIL", Some(mail)).await;
        }
        let mut group = mail;
        group.push_str("\r\n");
        for rcpt in to {
            group.push_str("RCPT TO:<");
            group.push_str(rcpt);
            group.push_str(">\r\n");
        }
        group.push_str("DATA\r\n");
        tracing::trace!(step = "MAIL", "C: {}", group.trim_end());
        self.unsynced = true;
        let fut = async {
            let io = |source| SubmitError::Io {
                step: "MAIL",
                source,
            };
            self.writer.write_all(group.as_bytes()).await.map_err(io)?;
            self.writer.flush().await.map_err(io)?;
            read_reply(&mut self.reader, "MAIL").await
        };
        timeout_at(self.deadline, fut)
            .await
            .map_err(|_| SubmitError::Timeout("MAIL"))?
    }

    /// The rest of a transaction once MAIL got `reply`: with `pipelined`
    /// the replies to the RCPTs and DATA [`start`](Self::start) sent,
    /// else each command in turn.
    async fn after_mail(
        &mut self,
        reply: Reply,
        to: &[String],
        message: &[u8],
        pipelined: bool,
    ) -> Result<SubmitReceipt, SubmitError> {
        expect(&reply, "MAIL", &[250])?;

        for rcpt in to {
            let command = (!pipelined).then(|| format!("RCPT TO:<{rcpt}>"));
            let reply = self.step("RCPT", command).await?;
            expect(&reply, "RCPT", &[250, 251])?;
        }

        let reply = self
            .step("DATA", (!pipelined).then(|| "DATA".to_owned()))
            .await?;
        // every reply read: in step with the server again
        self.unsynced = false;
        expect(&reply, "DATA", &[354])?;

        let reply = timeout_at(self.deadline, self.send_body(message))
            .await
            .map_err(|_| SubmitError::Timeout("MESSAGE"))??;
        expect(&reply, "MESSAGE", &[250])?;
        Ok(SubmitReceipt {
            code: reply.code,
            text: reply.text(),
        })
    }

    /// Send `line` (if any; none: the reply to a command already sent)
    /// and read the reply, before the deadline.
    async fn step(
        &mut self,
        step: &'static str,
        line: Option<String>,
    ) -> Result<Reply, SubmitError> {
        let fut = async {
            if let Some(line) = &line {
                tracing::trace!(step, "C: {line}");
                let io = |source| SubmitError::Io { step, source };
                self.writer.write_all(line.as_bytes()).await.map_err(io)?;
                self.writer.write_all(b"\r\n").await.map_err(io)?;
                self.writer.flush().await.map_err(io)?;
            }
            read_reply(&mut self.reader, step).await
        };
        timeout_at(self.deadline, fut)
            .await
            .map_err(|_| SubmitError::Timeout(step))?
    }

    async fn send_body(&mut self, message: &[u8]) -> Result<Reply, SubmitError> {
        let io = |source| SubmitError::Io {
            step: "MESSAGE",
            source,
        };
        write_data(&mut self.writer, message).await.map_err(io)?;
        self.writer.flush().await.map_err(io)?;
        read_reply(&mut self.reader, "MESSAGE").await
    }

    /// Polite QUIT after success; failures are only logged (the message is
    /// already accepted).
    async fn quit(&mut self) {
        let until = std::cmp::min(self.deadline, Instant::now() + QUIT_WAIT);
        self.deadline = until;
        match self.step("QUIT", Some("QUIT".to_owned())).await {
            Ok(r) if r.code == 221 => {}
            Ok(r) => tracing::debug!(code = r.code, text = %r.text(), "unexpected reply to QUIT"),
            Err(e) => tracing::debug!(error = %e, "QUIT failed (message already accepted)"),
        }
    }

    /// After a rejection: try to say QUIT without waiting for the answer
    /// (nothing when pipelined replies are still unread: the server may be
    /// reading message data, so the connection is only closed).
    async fn abandon(&mut self) {
        let unsynced = self.unsynced;
        let fut = async {
            if !unsynced {
                self.writer.write_all(b"QUIT\r\n").await?;
            }
            self.writer.flush().await?;
            self.writer.shutdown().await
        };
        let until = Instant::now() + Duration::from_millis(200);
        let _ = timeout_at(until, fut).await;
    }
}

/// `timeout` from now; past what an `Instant` holds (`Instant + Duration`
/// panics), about 30 years from now, as tokio's own timers do.
fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(Duration::from_secs(30 * 365 * 86400)))
        .unwrap_or(now)
}

/// Stream the message: dot-stuffed, bare LF → CRLF, ending in `CRLF.CRLF`.
async fn write_data<W: AsyncWrite + Unpin>(w: &mut W, message: &[u8]) -> io::Result<()> {
    let mut rest = message;
    while !rest.is_empty() {
        // `rest` starts at the beginning of a line.
        if rest[0] == b'.' {
            w.write_all(b".").await?;
        }
        match rest.iter().position(|&b| b == b'\n') {
            Some(nl) => {
                let line = &rest[..nl];
                if line.last() == Some(&b'\r') {
                    w.write_all(&rest[..=nl]).await?;
                } else {
                    w.write_all(line).await?;
                    w.write_all(b"\r\n").await?;
                }
                rest = &rest[nl + 1..];
            }
            None => {
                w.write_all(rest).await?;
                if rest.last() == Some(&b'\r') {
                    w.write_all(b"\n").await?;
                } else {
                    w.write_all(b"\r\n").await?;
                }
                rest = &[];
            }
        }
    }
    w.write_all(b".\r\n").await
}

/// Whether the server announced PIPELINING (RFC 2920).
fn pipelining(keywords: &[String]) -> bool {
    keywords.iter().any(|k| k == "PIPELINING")
}

/// The EHLO keywords of a 250 reply: its first line is the server's name,
/// the rest are extensions.
fn ehlo_keywords(ehlo: &Reply) -> Vec<String> {
    ehlo.lines
        .iter()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_ascii_uppercase)
        .collect()
}

/// Every reply in `reader`, read as the client reads them up to the first
/// error (the last item), each taken through what the client makes of a
/// reply: EHLO keywords, accepted (250) or refused, the queue id of an
/// accepted one. No network, no timeout: for the fuzz target (`fuzz/`) and
/// its regression test.
#[doc(hidden)]
pub async fn read_replies<R: AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Vec<Result<SubmitReceipt, SubmitError>> {
    let mut out = Vec::new();
    loop {
        // Each reply consumes at least one byte, and EOF is an error: ends.
        let reply = match read_reply(reader, "FUZZ").await {
            Ok(r) => r,
            Err(e) => {
                out.push(Err(e));
                return out;
            }
        };
        let _ = ehlo_keywords(&reply);
        let r = expect(&reply, "FUZZ", &[250]).map(|()| SubmitReceipt {
            code: reply.code,
            text: reply.text(),
        });
        if let Ok(receipt) = &r {
            let _ = receipt.queue_id();
        }
        out.push(r);
    }
}

/// Read one (possibly multi-line) reply.
async fn read_reply<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    step: &'static str,
) -> Result<Reply, SubmitError> {
    let mut lines = Vec::new();
    let mut code: Option<u16> = None;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = (&mut *reader)
            .take(MAX_REPLY_LINE)
            .read_until(b'\n', &mut buf)
            .await
            .map_err(|source| SubmitError::Io { step, source })?;
        if n == 0 {
            return Err(SubmitError::Protocol(format!(
                "connection closed by the server at {step}"
            )));
        }
        if buf.last() != Some(&b'\n') {
            return Err(SubmitError::Protocol(format!(
                "reply line too long or unterminated at {step}"
            )));
        }
        let line = String::from_utf8_lossy(&buf);
        let line = line.trim_end_matches(['\r', '\n']);
        let (this_code, more, text) = parse_reply_line(line)
            .ok_or_else(|| SubmitError::Protocol(format!("malformed reply at {step}: {line:?}")))?;
        if code.is_some_and(|c| c != this_code) {
            return Err(SubmitError::Protocol(format!(
                "inconsistent codes in multi-line reply at {step}: {line:?}"
            )));
        }
        code = Some(this_code);
        lines.push(text.to_owned());
        if !more {
            break;
        }
        if lines.len() >= MAX_REPLY_LINES {
            return Err(SubmitError::Protocol(format!(
                "reply with too many lines at {step}"
            )));
        }
    }
    let code = code.ok_or_else(|| SubmitError::Protocol(format!("empty reply at {step}")))?;
    tracing::trace!(step, code, "S: {}", lines.join(" / "));
    Ok(Reply { code, lines })
}

/// `"250-text"` → (250, true, "text"); `"250 text"` / `"250"` → (250, false, ..).
fn parse_reply_line(line: &str) -> Option<(u16, bool, &str)> {
    let bytes = line.as_bytes();
    if bytes.len() < 3
        || !(b'2'..=b'5').contains(&bytes[0])
        || !bytes[1].is_ascii_digit()
        || !bytes[2].is_ascii_digit()
    {
        return None;
    }
    let code: u16 = line.get(..3)?.parse().ok()?;
    match bytes.get(3) {
        None => Some((code, false, "")),
        Some(b' ') => Some((code, false, line.get(4..)?)),
        Some(b'-') => Some((code, true, line.get(4..)?)),
        Some(_) => None,
    }
}

/// Accept one of `ok`; 4xx/5xx → Rejected; anything else → Protocol.
fn expect(reply: &Reply, step: &'static str, ok: &[u16]) -> Result<(), SubmitError> {
    if ok.contains(&reply.code) {
        Ok(())
    } else {
        Err(unexpected(reply, step))
    }
}

fn unexpected(reply: &Reply, step: &'static str) -> SubmitError {
    if (400..600).contains(&reply.code) {
        SubmitError::Rejected {
            step,
            code: reply.code,
            text: reply.text(),
        }
    } else {
        SubmitError::Protocol(format!(
            "unexpected reply at {step}: {} {}",
            reply.code,
            reply.text()
        ))
    }
}

/// The SMTP reinjection client is the roles' [`Injector`].
#[async_trait::async_trait]
impl Injector for Submitter {
    async fn inject(&self, from: &str, to: &[String], message: &[u8]) -> Result<(), InjectError> {
        let r = self
            .send(from, to, message)
            .await
            .map_err(|e| InjectError(Box::new(e)))?;
        tracing::debug!(queue_id = r.queue_id().unwrap_or("-"), "injected");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn data(msg: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        write_data(&mut out, msg).await.unwrap();
        out
    }

    #[tokio::test]
    async fn stuffing_and_line_ends() {
        assert_eq!(data(b"").await, b".\r\n");
        assert_eq!(data(b"a\r\n").await, b"a\r\n.\r\n");
        assert_eq!(data(b"a").await, b"a\r\n.\r\n");
        assert_eq!(data(b"a\r").await, b"a\r\n.\r\n");
        assert_eq!(data(b".\r\n..x\r\n").await, b"..\r\n...x\r\n.\r\n");
        assert_eq!(data(b"a\nb\r\n.c").await, b"a\r\nb\r\n..c\r\n.\r\n");
        assert_eq!(data(b"a\rb\r\n").await, b"a\rb\r\n.\r\n");
        assert_eq!(data(b"\n.\n").await, b"\r\n..\r\n.\r\n");
    }

    #[tokio::test]
    async fn a_timeout_past_the_clock_is_no_panic() {
        assert!(deadline_after(Duration::MAX) > Instant::now());
        // a port nobody listens on: the send fails, it does not panic
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let s = Submitter::new(format!("127.0.0.1:{port}"), "mx.test".into(), Duration::MAX);
        let r = s
            .send("a@pec.test", &["b@pec.test".to_owned()], b"x\r\n")
            .await;
        assert!(matches!(r, Err(SubmitError::Connect { .. })), "{r:?}");
    }

    #[test]
    fn reply_lines() {
        assert_eq!(parse_reply_line("250 ok"), Some((250, false, "ok")));
        assert_eq!(
            parse_reply_line("250-8BITMIME"),
            Some((250, true, "8BITMIME"))
        );
        assert_eq!(parse_reply_line("250"), Some((250, false, "")));
        assert_eq!(parse_reply_line("25"), None);
        assert_eq!(parse_reply_line("hello"), None);
        assert_eq!(parse_reply_line("250x"), None);
        assert_eq!(parse_reply_line("650 x"), None);
    }

    #[test]
    fn queue_id() {
        let r = |t: &str| SubmitReceipt {
            code: 250,
            text: t.to_owned(),
        };
        assert_eq!(
            r("2.0.0 Ok: queued as 4XyZ12AbCd").queue_id(),
            Some("4XyZ12AbCd")
        );
        assert_eq!(r("2.0.0 Ok: queued as ABC.").queue_id(), Some("ABC"));
        assert_eq!(r("2.0.0 Ok").queue_id(), None);
        assert_eq!(r("Ok: queued as ").queue_id(), None);
    }
}
