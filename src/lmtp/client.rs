//! The downstream LMTP client (RFC 2033): hands messages to the real
//! mailbox store, typically Dovecot's LMTP service, and returns its answer
//! for each recipient.
//!
//! One connection per call of [`MailboxStore::deliver`]:
//!
//! 1. greeting (220), `LHLO` (250; the PIPELINING, 8BITMIME and SIZE
//!    capabilities are noted);
//! 2. `MAIL FROM:<sender>` (with ` BODY=8BITMIME` when the message has
//!    8-bit bytes and the server advertises 8BITMIME, with ` SIZE=n` when it
//!    advertises SIZE), then one `RCPT TO` per recipient. With PIPELINING,
//!    MAIL and every RCPT go out in one write and their replies are read in
//!    order; otherwise lock-step. A refused RCPT is that recipient's outcome
//!    (4xx temporary, 5xx permanent) and it gets no data;
//! 3. `DATA`, the message dot-stuffed with CRLF line ends (a bare LF is
//!    sent as CRLF; a missing final line end is added), `.`;
//! 4. one reply per accepted recipient, in order (LMTP), then `QUIT`.
//!
//! Replies may be multi-line. Every step (connect, each write, each reply)
//! is bounded by the timeout; a timeout, a connection failure or an I/O
//! error makes every recipient not yet answered `Temporary` (`451 4.4.1`
//! cannot connect, `451 4.4.2` connection lost or timed out). A refusal of
//! MAIL or DATA applies to every recipient concerned; a refusal of the
//! greeting or LHLO is treated as a configuration problem: `451 4.3.5`
//! (never a permanent failure, which would bounce the message).
//!
//! Note that a timeout after the final `.` may hide a delivery that did
//! happen: the message is then delivered again on retry (inherent to
//! LMTP).

use std::io;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixStream};

use super::{MailboxStore, RcptOutcome, split_enhanced};

/// Longest reply line accepted.
const MAX_REPLY_LINE: usize = 8 * 1024;
/// Most lines accepted in one multi-line reply.
const MAX_REPLY_LINES: usize = 256;
/// The message goes out in writes about this big.
const CHUNK: usize = 64 * 1024;
/// How long to wait for the reply to QUIT.
const QUIT_WAIT: Duration = Duration::from_secs(2);

/// LMTP client for the mailbox store. Cheap to clone; every delivery opens
/// its own connection.
#[derive(Debug, Clone)]
pub struct LmtpClient {
    addr: String,
    lhlo: String,
    timeout: Duration,
}

impl LmtpClient {
    /// `addr`: `host:port` (also `inet:host:port`) or `unix:/path`; `lhlo`:
    /// the name sent with LHLO; `timeout`: the bound of each step (connect,
    /// each write, each reply).
    pub fn new(addr: String, lhlo: String, timeout: Duration) -> Self {
        Self {
            addr,
            lhlo,
            timeout,
        }
    }

    async fn connect(&self) -> Result<Conn, Failure> {
        let connected = if let Some(path) = self.addr.strip_prefix("unix:") {
            tokio::time::timeout(self.timeout, UnixStream::connect(path))
                .await
                .map(|r| {
                    r.map(|s| {
                        let (r, w) = s.into_split();
                        Conn::new(Box::new(r), Box::new(w))
                    })
                })
        } else {
            let addr = self.addr.strip_prefix("inet:").unwrap_or(&self.addr);
            tokio::time::timeout(self.timeout, TcpStream::connect(addr))
                .await
                .map(|r| {
                    r.map(|s| {
                        let _ = s.set_nodelay(true);
                        let (r, w) = s.into_split();
                        Conn::new(Box::new(r), Box::new(w))
                    })
                })
        };
        match connected {
            Err(_) => Err(Failure::Connect(format!(
                "timeout connecting to {}",
                self.addr
            ))),
            Ok(Err(e)) => Err(Failure::Connect(format!(
                "cannot connect to {}: {e}",
                self.addr
            ))),
            Ok(Ok(c)) => Ok(c),
        }
    }

    /// The whole exchange; fills `outcomes` as answers come. Err: what
    /// happened to the recipients still unanswered.
    async fn transaction(
        &self,
        sender: &str,
        rcpts: &[String],
        message: &[u8],
        outcomes: &mut [Option<RcptOutcome>],
    ) -> Result<(), Failure> {
        if self.lhlo.is_empty()
            || self
                .lhlo
                .chars()
                .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(Failure::Protocol(format!(
                "invalid LHLO name {:?}",
                self.lhlo
            )));
        }
        let mut c = self.connect().await?;
        let t = self.timeout;

        let greeting = c.reply(t, "greeting").await?;
        if greeting.code != 220 {
            return Err(Failure::Refused("greeting", greeting));
        }
        c.send(t, format!("LHLO {}\r\n", self.lhlo).as_bytes(), "LHLO")
            .await?;
        let lhlo = c.reply(t, "LHLO").await?;
        if !(200..300).contains(&lhlo.code) {
            return Err(Failure::Refused("LHLO", lhlo));
        }
        let caps = Capabilities::from(&lhlo);

        let mut mail = format!("MAIL FROM:<{sender}>");
        if caps.eight_bit && message.iter().any(|&b| b >= 0x80) {
            mail.push_str(" BODY=8BITMIME");
        }
        if caps.size {
            mail.push_str(&format!(" SIZE={}", message.len()));
        }
        mail.push_str("\r\n");

        // Recipients we send (invalid ones already have their outcome).
        let to_send: Vec<usize> = (0..rcpts.len())
            .filter(|&i| outcomes[i].is_none())
            .collect();
        if caps.pipelining {
            let mut batch = mail.into_bytes();
            for &i in &to_send {
                batch.extend_from_slice(format!("RCPT TO:<{}>\r\n", rcpts[i]).as_bytes());
            }
            c.send(t, &batch, "MAIL").await?;
        } else {
            c.send(t, mail.as_bytes(), "MAIL").await?;
        }
        let mail_reply = c.reply(t, "MAIL").await?;
        let mail_ok = (200..300).contains(&mail_reply.code);
        if !mail_ok && !caps.pipelining {
            fill(outcomes, &to_send, &mail_reply.outcome());
            c.quit().await;
            return Ok(());
        }

        let mut accepted = Vec::new();
        for &i in &to_send {
            if !caps.pipelining {
                c.send(t, format!("RCPT TO:<{}>\r\n", rcpts[i]).as_bytes(), "RCPT")
                    .await?;
            }
            let r = c.reply(t, "RCPT").await?;
            if !mail_ok {
                continue; // pipelined after a refused MAIL: read and ignore
            }
            if (200..300).contains(&r.code) {
                accepted.push(i);
            } else {
                outcomes[i] = Some(r.outcome());
            }
        }
        if !mail_ok {
            fill(outcomes, &to_send, &mail_reply.outcome());
            c.quit().await;
            return Ok(());
        }
        if accepted.is_empty() {
            c.quit().await;
            return Ok(());
        }

        c.send(t, b"DATA\r\n", "DATA").await?;
        let data = c.reply(t, "DATA").await?;
        if data.code != 354 {
            let outcome = if (200..300).contains(&data.code) {
                RcptOutcome::temporary(
                    451,
                    "4.5.0",
                    format!("unexpected reply to DATA: {} {}", data.code, data.text),
                )
            } else {
                data.outcome()
            };
            fill(outcomes, &accepted, &outcome);
            c.quit().await;
            return Ok(());
        }
        c.send_message(t, message).await?;
        for &i in &accepted {
            let r = c.reply(t, "end of data").await?;
            outcomes[i] = Some(r.outcome());
        }
        c.quit().await;
        Ok(())
    }
}

#[async_trait::async_trait]
impl MailboxStore for LmtpClient {
    async fn deliver(&self, sender: &str, rcpts: &[String], message: &[u8]) -> Vec<RcptOutcome> {
        let mut outcomes: Vec<Option<RcptOutcome>> = vec![None; rcpts.len()];
        if rcpts.is_empty() {
            return Vec::new();
        }
        if !address_ok(sender) {
            let o = RcptOutcome::permanent(501, "5.1.7", "bad sender address syntax");
            return vec![o; rcpts.len()];
        }
        for (i, r) in rcpts.iter().enumerate() {
            if r.is_empty() || !address_ok(r) {
                outcomes[i] = Some(RcptOutcome::permanent(
                    501,
                    "5.1.3",
                    "bad recipient address syntax",
                ));
            }
        }
        if outcomes.iter().any(Option::is_none)
            && let Err(failure) = self
                .transaction(sender, rcpts, message, &mut outcomes)
                .await
        {
            tracing::warn!(store = %self.addr, error = %failure, "LMTP delivery to the mailbox store failed");
            let outcome = failure.outcome();
            for o in outcomes.iter_mut().filter(|o| o.is_none()) {
                *o = Some(outcome.clone());
            }
        }
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    RcptOutcome::temporary(451, "4.3.0", "no answer from the mailbox store")
                })
            })
            .collect()
    }
}

/// Sets the outcome of the recipients at `idx`.
fn fill(outcomes: &mut [Option<RcptOutcome>], idx: &[usize], outcome: &RcptOutcome) {
    for &i in idx {
        outcomes[i] = Some(outcome.clone());
    }
}

/// An address we can put between `<` and `>`.
fn address_ok(a: &str) -> bool {
    !a.chars()
        .any(|c| c.is_control() || c == '<' || c == '>' || c == ' ')
}

/// Why the exchange stopped.
#[derive(Debug)]
enum Failure {
    Connect(String),
    Timeout(&'static str),
    Io(&'static str, io::Error),
    Protocol(String),
    Refused(&'static str, Reply),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Connect(s) => f.write_str(s),
            Self::Timeout(step) => write!(f, "timeout at {step}"),
            Self::Io(step, e) => write!(f, "I/O error at {step}: {e}"),
            Self::Protocol(s) => write!(f, "protocol error: {s}"),
            Self::Refused(step, r) => write!(f, "{step} refused: {} {}", r.code, r.text),
        }
    }
}

impl Failure {
    /// The outcome of the recipients not answered yet: always temporary.
    fn outcome(&self) -> RcptOutcome {
        match self {
            Self::Connect(s) => {
                RcptOutcome::temporary(451, "4.4.1", format!("mailbox store unreachable: {s}"))
            }
            Self::Timeout(step) => {
                RcptOutcome::temporary(451, "4.4.2", format!("mailbox store timed out at {step}"))
            }
            Self::Io(step, e) => RcptOutcome::temporary(
                451,
                "4.4.2",
                format!("mailbox store connection lost at {step}: {e}"),
            ),
            Self::Protocol(s) => {
                RcptOutcome::temporary(451, "4.5.0", format!("mailbox store protocol error: {s}"))
            }
            Self::Refused(step, r) => RcptOutcome::temporary(
                451,
                "4.3.5",
                format!("mailbox store refused {step}: {} {}", r.code, r.text),
            ),
        }
    }
}

/// One (possibly multi-line) reply.
#[derive(Debug)]
struct Reply {
    code: u16,
    /// The text of every line (after the code), in order.
    lines: Vec<String>,
    /// The lines joined by a space; the enhanced code of continuation lines
    /// dropped when equal to the first's.
    text: String,
}

impl Reply {
    fn outcome(&self) -> RcptOutcome {
        RcptOutcome::from_reply(self.code, &self.text)
    }
}

struct Capabilities {
    pipelining: bool,
    eight_bit: bool,
    size: bool,
}

impl From<&Reply> for Capabilities {
    fn from(r: &Reply) -> Self {
        let has = |kw: &str| {
            r.lines.iter().skip(1).any(|l| {
                l.split_whitespace()
                    .next()
                    .is_some_and(|w| w.eq_ignore_ascii_case(kw))
            })
        };
        Self {
            pipelining: has("PIPELINING"),
            eight_bit: has("8BITMIME"),
            size: has("SIZE"),
        }
    }
}

struct Conn {
    reader: BufReader<Box<dyn AsyncRead + Unpin + Send>>,
    writer: Box<dyn AsyncWrite + Unpin + Send>,
}

impl Conn {
    fn new(r: Box<dyn AsyncRead + Unpin + Send>, w: Box<dyn AsyncWrite + Unpin + Send>) -> Self {
        Self {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    async fn send(&mut self, t: Duration, data: &[u8], step: &'static str) -> Result<(), Failure> {
        match tokio::time::timeout(t, async {
            self.writer.write_all(data).await?;
            self.writer.flush().await
        })
        .await
        {
            Err(_) => Err(Failure::Timeout(step)),
            Ok(Err(e)) => Err(Failure::Io(step, e)),
            Ok(Ok(())) => Ok(()),
        }
    }

    /// The message, dot-stuffed, CRLF line ends, then `.`.
    async fn send_message(&mut self, t: Duration, message: &[u8]) -> Result<(), Failure> {
        let mut chunk = Vec::with_capacity(CHUNK + 64);
        let mut at_line_start = true;
        let mut prev_cr = false;
        for &b in message {
            if at_line_start && b == b'.' {
                chunk.push(b'.');
            }
            if b == b'\n' && !prev_cr {
                chunk.push(b'\r');
            }
            chunk.push(b);
            prev_cr = b == b'\r';
            at_line_start = b == b'\n';
            if chunk.len() >= CHUNK {
                self.send(t, &chunk, "message data").await?;
                chunk.clear();
            }
        }
        if !at_line_start {
            if prev_cr {
                chunk.push(b'\n');
            } else {
                chunk.extend_from_slice(b"\r\n");
            }
        }
        chunk.extend_from_slice(b".\r\n");
        self.send(t, &chunk, "message data").await
    }

    async fn reply(&mut self, t: Duration, step: &'static str) -> Result<Reply, Failure> {
        match tokio::time::timeout(t, self.read_reply(step)).await {
            Err(_) => Err(Failure::Timeout(step)),
            Ok(r) => r,
        }
    }

    async fn read_reply(&mut self, step: &'static str) -> Result<Reply, Failure> {
        let mut lines = Vec::new();
        let code = loop {
            let mut raw = Vec::new();
            let n = (&mut self.reader)
                .take(MAX_REPLY_LINE as u64)
                .read_until(b'\n', &mut raw)
                .await
                .map_err(|e| Failure::Io(step, e))?;
            if n == 0 {
                return Err(Failure::Io(
                    step,
                    io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed"),
                ));
            }
            if raw.last() != Some(&b'\n') {
                return Err(Failure::Protocol(format!("reply line too long at {step}")));
            }
            let line = String::from_utf8_lossy(&raw);
            let line = line.trim_end_matches(['\r', '\n']);
            let b = line.as_bytes();
            if b.len() < 3 || !b[..3].iter().all(u8::is_ascii_digit) {
                return Err(Failure::Protocol(format!("bad reply at {step}: {line:?}")));
            }
            let this_code: u16 = line[..3].parse().unwrap_or(0);
            let (more, text) = match b.get(3) {
                None => (false, ""),
                Some(b' ') => (false, &line[4..]),
                Some(b'-') => (true, &line[4..]),
                Some(_) => return Err(Failure::Protocol(format!("bad reply at {step}: {line:?}"))),
            };
            lines.push(text.to_owned());
            if !more {
                break this_code;
            }
            if lines.len() >= MAX_REPLY_LINES {
                return Err(Failure::Protocol(format!("reply too long at {step}")));
            }
        };
        let text = join_lines(&lines);
        Ok(Reply { code, lines, text })
    }

    /// QUIT and wait briefly for its reply; errors do not matter any more.
    async fn quit(&mut self) {
        let _ = tokio::time::timeout(QUIT_WAIT, async {
            self.writer.write_all(b"QUIT\r\n").await?;
            self.writer.flush().await?;
            let mut l = Vec::new();
            (&mut self.reader)
                .take(MAX_REPLY_LINE as u64)
                .read_until(b'\n', &mut l)
                .await?;
            self.writer.shutdown().await
        })
        .await;
    }
}

/// Lines of a multi-line reply as one text.
fn join_lines(lines: &[String]) -> String {
    let mut out = String::new();
    let first_enhanced = lines.first().and_then(|l| split_enhanced(l).0);
    for (i, l) in lines.iter().enumerate() {
        let piece = if i > 0 {
            match split_enhanced(l) {
                (Some(e), rest) if Some(e) == first_enhanced => rest,
                _ => l.trim(),
            }
        } else {
            l.trim()
        };
        if piece.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(piece);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_texts() {
        let lines = vec![
            "4.2.2 <a@b.test> Mailbox".to_owned(),
            "4.2.2 is full".to_owned(),
        ];
        assert_eq!(join_lines(&lines), "4.2.2 <a@b.test> Mailbox is full");
        assert_eq!(
            RcptOutcome::from_reply(452, &join_lines(&lines)),
            RcptOutcome::temporary(452, "4.2.2", "<a@b.test> Mailbox is full")
        );
    }

    #[test]
    fn addresses() {
        assert!(address_ok("a@b.test"));
        assert!(address_ok(""));
        assert!(!address_ok("a@b.test>\r\nRSET"));
        assert!(!address_ok("a b@c"));
    }
}
