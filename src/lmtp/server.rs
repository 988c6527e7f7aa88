//! Our LMTP server (RFC 2033), which Postfix delivers the PEC domains'
//! mailboxes to (`virtual_transport = lmtp:inet:127.0.0.1:2424`).
//!
//! What it speaks:
//!
//! - greeting `220`, then `LHLO` (advertises PIPELINING,
//!   ENHANCEDSTATUSCODES, 8BITMIME and `SIZE <max>`), `MAIL FROM` (the
//!   `SIZE=` and `BODY=7BIT|8BITMIME` parameters; a declared size over the
//!   maximum is refused with 552 at once), `RCPT TO` (syntax check only:
//!   every well-formed address is accepted, the mailbox store decides after
//!   DATA), `DATA`, `RSET`, `NOOP`, `QUIT`; `HELO`/`EHLO` are refused (LMTP
//!   knows only LHLO), other SMTP commands get 502, garbage 500/501;
//! - several transactions per connection; pipelined commands are read from
//!   one buffer and the replies to a pipelined group go out in one write
//!   (the write buffer is flushed whenever no command is waiting);
//! - at the end of DATA one reply per accepted recipient, in order, from
//!   the [`LmtpHandler`]. A message over the maximum size is read to its end
//!   and discarded, and every recipient gets `552 5.3.4`;
//! - the message is spooled in memory, up to the maximum size (plus the
//!   CRLF line ends restored for bare-LF lines); it reaches the handler with
//!   CRLF line ends and dot-unstuffed;
//! - read timeouts (`421 4.4.2` and close), at most [`MAX_ERRORS`] errors
//!   per connection (`421 4.7.0`), command lines up to [`MAX_COMMAND_LINE`]
//!   octets;
//! - TCP_NODELAY on every accepted TCP socket; one task per connection;
//! - graceful shutdown: when the `shutdown` future completes no new
//!   connection is accepted, each connection finishes the transaction in
//!   progress (through the replies after DATA, or RSET), then gets
//!   `421 4.3.2` and is closed; [`serve`] returns when every connection is
//!   done.
//!
//! The handler runs in its own task: if it panics, every recipient gets
//! `451 4.3.0` and the server goes on.

use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::{MAX_REPLY_LINE, truncate_utf8};
use crate::listen::Listener;
use crate::spool::{SpoolOptions, SpoolWriter, Spooled};

/// Longest command line accepted (RFC 5321 allows 512 octets; with
/// parameters and long addresses, be generous).
pub const MAX_COMMAND_LINE: usize = 4096;
/// Errors (5xx replies to commands) after which a connection is closed.
pub const MAX_ERRORS: u32 = 20;
/// Longest address accepted in MAIL FROM / RCPT TO (RFC 5321: 256 octets
/// for a path).
const MAX_ADDRESS: usize = 512;
/// While reading DATA, a line longer than this is passed on in pieces (so
/// no line is ever buffered beyond it, besides the message itself).
const DATA_PIECE: usize = 64 * 1024;
/// Size of the write buffer.
const WRITE_BUFFER: usize = 16 * 1024;

/// The application behind the LMTP server.
#[async_trait::async_trait]
pub trait LmtpHandler: Send + Sync {
    /// The whole transaction at end of DATA: reverse path, accepted forward
    /// paths, the message (CRLF, dot-unstuffed; in memory, or in a spool
    /// file once over [`ServerConfig::spool`]'s memory limit). One reply
    /// line per recipient, in order (e.g. from `RcptOutcome::reply_line()`).
    async fn deliver(&self, mail_from: &str, rcpts: &[String], message: Spooled) -> Vec<String>;
}

/// The delivery point is what Postfix delivers to.
#[async_trait::async_trait]
impl LmtpHandler for crate::roles::delivery::DeliveryPoint {
    async fn deliver(&self, mail_from: &str, rcpts: &[String], message: Spooled) -> Vec<String> {
        self.handle_spooled(mail_from, rcpts, message).await
    }
}

/// Bind the LMTP listener of `spec` (`inet:HOST:PORT`, `unix:/PATH`, or
/// any other form of [`crate::listen`]). A unix socket is made mode 0666, so that
/// Postfix's lmtp client (user postfix) can connect: restrict access with
/// the permissions of its directory. The socket is removed when [`serve`]
/// returns.
pub async fn bind(spec: &str) -> io::Result<Listener> {
    Listener::bind(spec, Some(0o666)).await
}

/// Settings of the LMTP server; [`ServerConfig::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest message accepted, in octets (as received, CRLF line ends).
    pub max_size: u64,
    /// Name in the greeting and the LHLO reply.
    pub hostname: String,
    /// How long to wait for a command line (RFC 5321 §4.5.3.2.7: 5 min).
    pub command_timeout: Duration,
    /// How long to wait for each read of the message data (RFC 5321: 3 min).
    pub data_timeout: Duration,
    /// Most recipients per transaction (more get `452 4.5.3`).
    pub max_recipients: usize,
    /// Where a message being received goes once over the memory limit
    /// (`[spool]`): a 100 MB message is not held in memory.
    pub spool: SpoolOptions,
}

impl ServerConfig {
    /// Defaults: this host's name, 300 s command timeout, 180 s data
    /// timeout, 1000 recipients, messages in memory.
    pub fn new(max_size: u64) -> Self {
        Self {
            max_size,
            hostname: super::hostname(),
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
            max_recipients: 1000,
            spool: SpoolOptions::memory(),
        }
    }
}

/// Serve LMTP (RFC 2033) with the defaults of [`ServerConfig::new`]; see
/// the module documentation. Returns when `shutdown` has completed and every
/// connection has finished its transaction in progress.
pub async fn serve(
    listener: Listener,
    handler: Arc<dyn LmtpHandler>,
    max_size: u64,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    serve_with(listener, handler, ServerConfig::new(max_size), shutdown).await
}

/// [`serve`] with explicit settings.
pub async fn serve_with(
    listener: Listener,
    handler: Arc<dyn LmtpHandler>,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    let config = Arc::new(config);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(res) = tasks.join_next(), if !tasks.is_empty() => {
                if let Err(e) = res {
                    tracing::error!(error = %e, "LMTP connection task failed");
                }
            }
            accepted = accept(&listener) => match accepted {
                Ok(conn) => {
                    let session = Session::new(conn.peer, handler.clone(), config.clone(), stop_rx.clone());
                    match conn.io {
                        Io::Tcp(s) => {
                            let (r, w) = s.into_split();
                            tasks.spawn(session.run(r, w));
                        }
                        Io::Unix(s) => {
                            let (r, w) = s.into_split();
                            tasks.spawn(session.run(r, w));
                        }
                    }
                }
                Err(e) => {
                    // EMFILE and friends: do not spin, do not give up.
                    tracing::warn!(error = %e, "LMTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    // Stop listening first, then let the connections finish.
    if let Listener::Unix { path, .. } = &listener {
        let _ = crate::listen::remove_socket(path);
    }
    drop(listener);
    let _ = stop_tx.send(true);
    tracing::info!(connections = tasks.len(), "LMTP server stopping");
    while let Some(res) = tasks.join_next().await {
        if let Err(e) = res {
            tracing::error!(error = %e, "LMTP connection task failed");
        }
    }
    Ok(())
}

/// Serve one connection over any byte stream to its end, as each accepted
/// connection is served (with no shutdown): the command parser, DATA and
/// the replies with no socket (the fuzz target in `fuzz/` and its
/// regression test).
pub async fn serve_stream<R, W>(
    r: R,
    w: W,
    peer: String,
    handler: Arc<dyn LmtpHandler>,
    config: Arc<ServerConfig>,
) where
    R: AsyncRead + Unpin + Send,
    W: AsyncWrite + Unpin + Send,
{
    // Never set: the receiver sees "not stopping" as long as it lives.
    let (_stop_tx, stop_rx) = watch::channel(false);
    Session::new(peer, handler, config, stop_rx).run(r, w).await;
}

enum Io {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

struct Accepted {
    io: Io,
    peer: String,
}

async fn accept(listener: &Listener) -> io::Result<Accepted> {
    match listener {
        Listener::Tcp(l) => {
            let (s, peer) = l.accept().await?;
            if let Err(e) = s.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY not set");
            }
            Ok(Accepted {
                io: Io::Tcp(s),
                peer: peer.to_string(),
            })
        }
        Listener::Unix { listener, path } => {
            let (s, _) = listener.accept().await?;
            Ok(Accepted {
                io: Io::Unix(s),
                peer: format!("unix:{}", path.display()),
            })
        }
    }
}

/// One transaction being built.
struct Transaction {
    from: String,
    rcpts: Vec<String>,
}

/// A command line as read.
enum Line {
    Text(Vec<u8>),
    TooLong,
    Eof,
}

/// What to do after a command.
enum Next {
    Continue,
    Close,
}

struct Session {
    peer: String,
    handler: Arc<dyn LmtpHandler>,
    config: Arc<ServerConfig>,
    stop: watch::Receiver<bool>,
    lhlo: bool,
    txn: Option<Transaction>,
    errors: u32,
}

impl Session {
    fn new(
        peer: String,
        handler: Arc<dyn LmtpHandler>,
        config: Arc<ServerConfig>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            peer,
            handler,
            config,
            stop,
            lhlo: false,
            txn: None,
            errors: 0,
        }
    }

    async fn run<R, W>(mut self, r: R, w: W)
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        let mut reader = BufReader::new(r);
        let mut writer = BufWriter::with_capacity(WRITE_BUFFER, w);
        tracing::debug!(peer = %self.peer, "LMTP connection");
        if let Err(e) = self.converse(&mut reader, &mut writer).await {
            tracing::debug!(peer = %self.peer, error = %e, "LMTP connection ended with an error");
        }
        let _ = writer.shutdown().await;
    }

    async fn converse<R, W>(
        &mut self,
        reader: &mut BufReader<R>,
        writer: &mut BufWriter<W>,
    ) -> io::Result<()>
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        let greeting = format!("220 {} LMTP pec-milter ready", self.config.hostname);
        reply(writer, &greeting).await?;
        writer.flush().await?;
        loop {
            if self.txn.is_none() && *self.stop.borrow() {
                reply(
                    writer,
                    "421 4.3.2 Service shutting down, closing connection",
                )
                .await?;
                return writer.flush().await;
            }
            if reader.buffer().is_empty() {
                // No pipelined command waiting: the client waits for us.
                writer.flush().await?;
            }
            let line = {
                let mut stop = self.stop.clone();
                let idle = self.txn.is_none();
                tokio::select! {
                    biased;
                    line = tokio::time::timeout(
                        self.config.command_timeout,
                        read_line(reader, MAX_COMMAND_LINE),
                    ) => line,
                    _ = wait_stop(&mut stop), if idle => continue,
                }
            };
            let line = match line {
                Err(_) => {
                    tracing::debug!(peer = %self.peer, "LMTP command timeout");
                    reply(writer, "421 4.4.2 Timeout waiting for a command, closing").await?;
                    return writer.flush().await;
                }
                Ok(r) => r?,
            };
            let next = match line {
                Line::Eof => return Ok(()),
                Line::TooLong => self.error(writer, "500 5.5.2 Line too long").await?,
                Line::Text(bytes) => self.command(reader, writer, &bytes).await?,
            };
            if let Next::Close = next {
                return writer.flush().await;
            }
        }
    }

    /// A 5xx reply to a command; closes after too many.
    async fn error<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut BufWriter<W>,
        line: &str,
    ) -> io::Result<Next> {
        reply(writer, line).await?;
        self.errors += 1;
        if self.errors >= MAX_ERRORS {
            reply(writer, "421 4.7.0 Too many errors, closing connection").await?;
            return Ok(Next::Close);
        }
        Ok(Next::Continue)
    }

    async fn command<R, W>(
        &mut self,
        reader: &mut BufReader<R>,
        writer: &mut BufWriter<W>,
        line: &[u8],
    ) -> io::Result<Next>
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        let Ok(line) = std::str::from_utf8(line) else {
            return self
                .error(writer, "500 5.5.2 Syntax error, command unrecognized")
                .await;
        };
        let (verb, arg) = match line.split_once(' ') {
            Some((v, a)) => (v, a.trim()),
            None => (line.trim_end(), ""),
        };
        let verb = verb.to_ascii_uppercase();
        match verb.as_str() {
            "LHLO" => {
                if arg.is_empty() || arg.contains(char::is_whitespace) {
                    return self.error(writer, "501 5.5.4 Syntax: LHLO hostname").await;
                }
                self.lhlo = true;
                self.txn = None;
                let h = &self.config.hostname;
                let size = self.config.max_size;
                let text = format!(
                    "250-{h}\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 SIZE {size}"
                );
                reply(writer, &text).await?;
            }
            "HELO" | "EHLO" => {
                return self.error(writer, "500 5.5.1 This is LMTP: use LHLO").await;
            }
            "MAIL" => return self.mail(writer, arg).await,
            "RCPT" => return self.rcpt(writer, arg).await,
            "DATA" => {
                if !arg.is_empty() {
                    return self.error(writer, "501 5.5.4 Syntax: DATA").await;
                }
                return self.data(reader, writer).await;
            }
            "RSET" => {
                if !arg.is_empty() {
                    return self.error(writer, "501 5.5.4 Syntax: RSET").await;
                }
                self.txn = None;
                reply(writer, "250 2.0.0 Ok").await?;
            }
            "NOOP" => reply(writer, "250 2.0.0 Ok").await?,
            "QUIT" => {
                reply(writer, "221 2.0.0 Bye").await?;
                return Ok(Next::Close);
            }
            "VRFY" | "EXPN" | "HELP" | "BDAT" | "STARTTLS" | "AUTH" | "ETRN" | "TURN" => {
                return self
                    .error(writer, "502 5.5.1 Command not implemented")
                    .await;
            }
            _ => {
                return self
                    .error(writer, "500 5.5.2 Syntax error, command unrecognized")
                    .await;
            }
        }
        Ok(Next::Continue)
    }

    async fn mail<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut BufWriter<W>,
        arg: &str,
    ) -> io::Result<Next> {
        if !self.lhlo {
            return self.error(writer, "503 5.5.1 Send LHLO first").await;
        }
        if self.txn.is_some() {
            return self.error(writer, "503 5.5.1 Nested MAIL command").await;
        }
        let Some(rest) = strip_prefix_ci(arg, "FROM:") else {
            return self
                .error(writer, "501 5.5.4 Syntax: MAIL FROM:<address>")
                .await;
        };
        let (from, params) = match parse_path(rest, true) {
            Ok(p) => p,
            Err(why) => {
                let line = format!("501 5.1.7 Bad sender address syntax: {why}");
                return self.error(writer, &line).await;
            }
        };
        for param in params.split_whitespace() {
            let (key, value) = param.split_once('=').unwrap_or((param, ""));
            match key.to_ascii_uppercase().as_str() {
                "SIZE" => match value.parse::<u64>() {
                    Ok(n) if n > self.config.max_size => {
                        return self
                            .error(
                                writer,
                                "552 5.3.4 Message size exceeds fixed maximum message size",
                            )
                            .await;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        return self.error(writer, "501 5.5.4 Bad SIZE parameter").await;
                    }
                },
                "BODY" => {
                    let v = value.to_ascii_uppercase();
                    if v != "7BIT" && v != "8BITMIME" {
                        return self.error(writer, "501 5.5.4 Bad BODY parameter").await;
                    }
                }
                _ => {
                    return self
                        .error(writer, "555 5.5.4 Unsupported MAIL parameter")
                        .await;
                }
            }
        }
        self.txn = Some(Transaction {
            from,
            rcpts: Vec::new(),
        });
        reply(writer, "250 2.1.0 Ok").await?;
        Ok(Next::Continue)
    }

    async fn rcpt<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut BufWriter<W>,
        arg: &str,
    ) -> io::Result<Next> {
        let max_rcpts = self.config.max_recipients;
        let Some(txn) = self.txn.as_mut() else {
            return self.error(writer, "503 5.5.1 Send MAIL first").await;
        };
        let Some(rest) = strip_prefix_ci(arg, "TO:") else {
            return self
                .error(writer, "501 5.5.4 Syntax: RCPT TO:<address>")
                .await;
        };
        let (to, params) = match parse_path(rest, false) {
            Ok(p) => p,
            Err(why) => {
                let line = format!("501 5.1.3 Bad recipient address syntax: {why}");
                return self.error(writer, &line).await;
            }
        };
        if !params.trim().is_empty() {
            return self
                .error(writer, "555 5.5.4 Unsupported RCPT parameter")
                .await;
        }
        if txn.rcpts.len() >= max_rcpts {
            reply(writer, "452 4.5.3 Too many recipients").await?;
            return Ok(Next::Continue);
        }
        txn.rcpts.push(to);
        reply(writer, "250 2.1.5 Ok").await?;
        Ok(Next::Continue)
    }

    async fn data<R, W>(
        &mut self,
        reader: &mut BufReader<R>,
        writer: &mut BufWriter<W>,
    ) -> io::Result<Next>
    where
        R: AsyncRead + Unpin + Send,
        W: AsyncWrite + Unpin + Send,
    {
        match &self.txn {
            None => return self.error(writer, "503 5.5.1 Send MAIL first").await,
            Some(t) if t.rcpts.is_empty() => {
                return self.error(writer, "503 5.5.1 No valid recipients").await;
            }
            Some(_) => {}
        }
        reply(writer, "354 Start mail input; end with <CRLF>.<CRLF>").await?;
        writer.flush().await?;
        let data = match read_data(
            reader,
            self.config.max_size,
            self.config.data_timeout,
            &self.config.spool,
        )
        .await
        {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                tracing::debug!(peer = %self.peer, "LMTP data timeout");
                reply(writer, "421 4.4.2 Timeout reading the message, closing").await?;
                return Ok(Next::Close);
            }
            Err(e) => return Err(e),
        };
        let Some(txn) = self.txn.take() else {
            return Ok(Next::Continue);
        };
        let n = txn.rcpts.len();
        let refused = match data {
            Data::Message(m) => Ok(m),
            Data::TooBig => {
                tracing::info!(peer = %self.peer, from = %txn.from, rcpts = n, max = self.config.max_size, "LMTP message over the maximum size refused");
                Err("552 5.3.4 Message size exceeds fixed maximum message size")
            }
            Data::SpoolFailed(e) => {
                tracing::error!(peer = %self.peer, from = %txn.from, rcpts = n, error = %e, "LMTP message could not be spooled: 451");
                Err("451 4.3.0 Cannot spool the message, try again later")
            }
        };
        let message = match refused {
            Ok(m) => m,
            Err(line) => {
                for _ in 0..n {
                    reply(writer, line).await?;
                }
                return Ok(Next::Continue);
            }
        };
        tracing::debug!(peer = %self.peer, from = %txn.from, rcpts = n, size = message.len(), "LMTP message received");
        let handler = self.handler.clone();
        let Transaction { from, rcpts } = txn;
        let task = tokio::spawn(async move { handler.deliver(&from, &rcpts, message).await });
        let replies = match task.await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(peer = %self.peer, error = %e, "LMTP handler failed");
                Vec::new()
            }
        };
        if replies.len() != n && !replies.is_empty() {
            tracing::error!(
                peer = %self.peer,
                rcpts = n,
                replies = replies.len(),
                "LMTP handler gave a wrong number of replies"
            );
        }
        for i in 0..n {
            let line = replies
                .get(i)
                .map(|r| sanitize_reply(r))
                .unwrap_or_else(|| "451 4.3.0 Internal error: no answer for this recipient".into());
            reply(writer, &line).await?;
        }
        Ok(Next::Continue)
    }
}

/// Resolves when the server is stopping (never if the sender is gone
/// without saying so).
async fn wait_stop(stop: &mut watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Write one reply (possibly several lines joined by CRLF) and its CRLF.
async fn reply<W: AsyncWrite + Unpin>(writer: &mut BufWriter<W>, line: &str) -> io::Result<()> {
    writer.write_all(line.as_bytes()).await?;
    writer.write_all(b"\r\n").await
}

/// A handler's reply line made safe: one line, a 2xx/4xx/5xx code, at most
/// 510 octets; anything else becomes `451 4.3.0`.
fn sanitize_reply(r: &str) -> String {
    let clean: String = r
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let clean = clean.trim();
    let b = clean.as_bytes();
    let well_formed = b.len() >= 3
        && matches!(b[0], b'2' | b'4' | b'5')
        && b[1].is_ascii_digit()
        && b[2].is_ascii_digit()
        && (b.len() == 3 || b[3] == b' ');
    if !well_formed {
        tracing::error!(reply = %clean, "LMTP handler gave an invalid reply");
        return "451 4.3.0 Internal error: invalid reply".to_owned();
    }
    let mut s = clean.to_owned();
    truncate_utf8(&mut s, MAX_REPLY_LINE);
    s
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Parse `<path> params` (spaces after the colon tolerated). Returns the
/// address without brackets and source route (`""` for the null path when
/// `allow_null`), and the rest of the line (the parameters).
fn parse_path(s: &str, allow_null: bool) -> Result<(String, &str), &'static str> {
    let s = s.trim_start();
    let inner_start = s.strip_prefix('<').ok_or("missing '<'")?;
    let mut in_quotes = false;
    let mut escaped = false;
    let mut end = None;
    for (i, c) in inner_start.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '>' if !in_quotes => {
                end = Some(i);
                break;
            }
            _ => {}
        }
    }
    let end = end.ok_or("missing '>'")?;
    let inner = &inner_start[..end];
    let rest = &inner_start[end + 1..];
    if !rest.is_empty() && !rest.starts_with(' ') {
        return Err("garbage after '>'");
    }
    if inner.len() > MAX_ADDRESS {
        return Err("address too long");
    }
    // RFC 5321 §4.1.2: a source route (`@a,@b:user@d`) is accepted and ignored.
    let addr = if inner.starts_with('@') {
        inner.split_once(':').ok_or("bad source route")?.1
    } else {
        inner
    };
    if addr.is_empty() {
        return if allow_null {
            Ok((String::new(), rest))
        } else {
            Err("empty address")
        };
    }
    if addr.chars().any(|c| c.is_control()) {
        return Err("control character");
    }
    let (local, domain) = match addr.rsplit_once('@') {
        Some(p) => p,
        None if !allow_null && addr.eq_ignore_ascii_case("postmaster") => {
            return Ok((addr.to_owned(), rest));
        }
        None => return Err("no domain"),
    };
    if local.is_empty() {
        return Err("empty local part");
    }
    if !(local.starts_with('"') && local.ends_with('"') && local.len() >= 2)
        && local.contains(|c: char| c.is_whitespace() || "<>()[],;:\\\"".contains(c))
    {
        return Err("bad local part");
    }
    let domain_ok = if let Some(lit) = domain.strip_prefix('[') {
        lit.ends_with(']') && lit.len() > 1
    } else {
        !domain.is_empty()
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..")
            && domain
                .chars()
                .all(|c| c.is_alphanumeric() || c == '-' || c == '.' || c == '_')
    };
    if !domain_ok {
        return Err("bad domain");
    }
    Ok((addr.to_owned(), rest))
}

/// Read one line (up to LF), without its line end (CRLF or LF). A line
/// over `max` octets is consumed to its end and reported as
/// [`Line::TooLong`]. EOF in the middle of a line is [`Line::Eof`].
async fn read_line<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    max: usize,
) -> io::Result<Line> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(Line::Eof);
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if !too_long {
            line.extend_from_slice(&buf[..take]);
            if line.len() > max + 2 {
                too_long = true;
                line = Vec::new();
            }
        }
        reader.consume(take);
        if done {
            break;
        }
    }
    if too_long {
        return Ok(Line::TooLong);
    }
    strip_eol(&mut line);
    if line.len() > max {
        return Ok(Line::TooLong);
    }
    Ok(Line::Text(line))
}

fn strip_eol(line: &mut Vec<u8>) {
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    }
}

/// What DATA gave.
#[derive(Debug)]
enum Data {
    Message(Spooled),
    /// Over the maximum size (read to its end all the same).
    TooBig,
    /// The spool file could not be written (disk full, ...).
    SpoolFailed(io::Error),
}

/// The message being received: a spool writer (memory, then a file), until
/// it is over the maximum or the spool fails.
enum Spool {
    Writing(SpoolWriter),
    TooBig,
    Failed(io::Error),
}

impl Spool {
    fn push(&mut self, data: &[u8], max: u64) {
        let Spool::Writing(w) = self else {
            return;
        };
        if w.len().saturating_add(data.len() as u64) > max {
            *self = Spool::TooBig;
        } else if let Err(e) = w.write(data) {
            *self = Spool::Failed(e);
        }
    }

    fn finish(self) -> Data {
        match self {
            Spool::Writing(w) => match w.finish() {
                Ok(m) => Data::Message(m),
                Err(e) => Data::SpoolFailed(e),
            },
            Spool::TooBig => Data::TooBig,
            Spool::Failed(e) => Data::SpoolFailed(e),
        }
    }
}

/// Read the message up to the line `.`: dot-unstuffed, every line ending in
/// CRLF (a bare LF line end becomes CRLF; a bare CR inside a line stays).
/// Into the spool of `opts` (memory, then a file; bytes kept as they are).
/// [`Data::TooBig`] when the message is over `max` octets (it is read to its
/// end all the same). A read that waits longer than `timeout` is an error of
/// kind TimedOut; EOF before the end is UnexpectedEof.
async fn read_data<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    max: u64,
    timeout: Duration,
    opts: &SpoolOptions,
) -> io::Result<Data> {
    let mut spool = Spool::Writing(SpoolWriter::raw(opts.clone()));
    // The current line (or its not yet passed-on part).
    let mut line: Vec<u8> = Vec::new();
    // Does `line` start at the beginning of a line (dot rules apply)?
    let mut line_start = true;
    loop {
        let buf = match tokio::time::timeout(timeout, reader.fill_buf()).await {
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "DATA timeout")),
            Ok(r) => r?,
        };
        if buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed during DATA",
            ));
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        line.extend_from_slice(&buf[..take]);
        reader.consume(take);
        if done {
            strip_eol(&mut line);
            if line_start && line == b"." {
                return Ok(spool.finish());
            }
            let content = match (line_start, line.first()) {
                (true, Some(b'.')) => &line[1..],
                _ => &line[..],
            };
            spool.push(content, max);
            spool.push(b"\r\n", max);
            line.clear();
            line_start = true;
        } else if line.len() >= DATA_PIECE {
            // A long line: pass on what we have, but keep a trailing CR (it
            // may be the first half of the CRLF).
            let keep_cr = line.last() == Some(&b'\r');
            let upto = line.len() - usize::from(keep_cr);
            let content = match (line_start, line.first()) {
                (true, Some(b'.')) => &line[1..upto],
                _ => &line[..upto],
            };
            spool.push(content, max);
            line.clear();
            if keep_cr {
                line.push(b'\r');
            }
            line_start = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(parse_path("<a@b.test>", false), Ok(("a@b.test".into(), "")));
        assert_eq!(
            parse_path(" <a@b.test> SIZE=10", true),
            Ok(("a@b.test".into(), " SIZE=10"))
        );
        assert_eq!(parse_path("<>", true), Ok((String::new(), "")));
        assert!(parse_path("<>", false).is_err());
        assert_eq!(
            parse_path("<@relay.test,@r2.test:a@b.test>", false),
            Ok(("a@b.test".into(), ""))
        );
        assert_eq!(
            parse_path("<\"a b>\"@b.test>", false),
            Ok(("\"a b>\"@b.test".into(), ""))
        );
        assert_eq!(
            parse_path("<Postmaster>", false),
            Ok(("Postmaster".into(), ""))
        );
        for bad in [
            "a@b.test",
            "<a@b.test",
            "<a@b.test>x",
            "<a b@c.test>",
            "<a@>",
            "<@b.test>",
            "<a@b..test>",
            "<a\u{1}@b.test>",
            "<nodomain>",
        ] {
            assert!(parse_path(bad, false).is_err(), "{bad}");
        }
    }

    #[test]
    fn handler_replies_are_sanitized() {
        assert_eq!(sanitize_reply("250 2.0.0 Ok"), "250 2.0.0 Ok");
        assert_eq!(sanitize_reply("550 5.1.1 a\r\nb"), "550 5.1.1 a  b");
        assert_eq!(
            sanitize_reply("hello"),
            "451 4.3.0 Internal error: invalid reply"
        );
        assert_eq!(
            sanitize_reply("354 go"),
            "451 4.3.0 Internal error: invalid reply"
        );
        assert!(sanitize_reply(&format!("250 {}", "x".repeat(2000))).len() <= MAX_REPLY_LINE);
    }

    fn message(d: io::Result<Data>) -> Vec<u8> {
        match d {
            Ok(Data::Message(m)) => m.to_vec().unwrap(),
            other => panic!("expected a message, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn data_unstuffing_and_line_ends() {
        let input: &[u8] = b"a\r\n..b\nc\r\n.\r\nNEXT";
        let mut r = BufReader::new(input);
        let m = message(
            read_data(
                &mut r,
                1000,
                Duration::from_secs(5),
                &SpoolOptions::memory(),
            )
            .await,
        );
        assert_eq!(m, b"a\r\n.b\r\nc\r\n");
        let mut rest = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut r, &mut rest)
            .await
            .unwrap();
        assert_eq!(rest, b"NEXT");
    }

    #[tokio::test]
    async fn data_long_lines_in_pieces() {
        let mut input = b".".to_vec();
        input.extend(std::iter::repeat_n(b'x', DATA_PIECE * 3 + 7));
        input.extend_from_slice(b"\r\n.x\r\n.\r\n");
        let mut r = BufReader::with_capacity(1000, &input[..]);
        // a spool file from the first byte on
        let opts = SpoolOptions {
            dir: std::env::temp_dir(),
            memory_limit: 0,
        };
        let m = message(read_data(&mut r, 10_000_000, Duration::from_secs(5), &opts).await);
        let mut want: Vec<u8> = std::iter::repeat_n(b'x', DATA_PIECE * 3 + 7).collect();
        want.extend_from_slice(b"\r\nx\r\n");
        assert_eq!(m, want);
    }

    #[tokio::test]
    async fn data_over_max_is_read_to_the_end() {
        let input: &[u8] = b"0123456789\r\n0123456789\r\n.\r\nQUIT\r\n";
        let mut r = BufReader::new(input);
        assert!(matches!(
            read_data(&mut r, 15, Duration::from_secs(5), &SpoolOptions::memory()).await,
            Ok(Data::TooBig)
        ));
        match read_line(&mut r, 100).await.unwrap() {
            Line::Text(l) => assert_eq!(l, b"QUIT"),
            _ => panic!("expected QUIT"),
        }
    }

    #[tokio::test]
    async fn long_command_lines() {
        let mut input = vec![b'A'; MAX_COMMAND_LINE + 10];
        input.extend_from_slice(b"\r\nNOOP\r\n");
        let mut r = BufReader::with_capacity(100, &input[..]);
        assert!(matches!(
            read_line(&mut r, MAX_COMMAND_LINE).await.unwrap(),
            Line::TooLong
        ));
        match read_line(&mut r, MAX_COMMAND_LINE).await.unwrap() {
            Line::Text(l) => assert_eq!(l, b"NOOP"),
            _ => panic!("expected NOOP"),
        }
        let mut r = BufReader::new(&b"NO"[..]);
        assert!(matches!(read_line(&mut r, 10).await.unwrap(), Line::Eof));
    }
}
