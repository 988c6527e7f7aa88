//! Virus scanning through a running `clamd`, with the `INSTREAM` protocol.
//!
//! The protocol is spoken by the `clamav-client` crate (2.3.0, feature
//! `tokio-stream`): [`clamav_client::tokio::scan_stream`] sends `zINSTREAM\0`,
//! the chunks `<u32 big-endian length><bytes>` and the zero-length end chunk,
//! and [`clamav_client::tokio::ping`] sends `zPING\0`. The message is fed to it
//! as a stream of 64 KiB chunks read from the spool
//! ([`tokio_util::io::ReaderStream`]), so it is never held whole in memory,
//! and clamd never needs access to our files. Around the crate we keep:
//!
//! - our own connection (TCP with `TCP_NODELAY`, or a unix socket), opened
//!   before the crate is called and lent to it through its
//!   `TransportProtocol` trait, so a failed connect stays a distinct
//!   [`ClamdError::Connect`] (the crate reports every failure as one
//!   `io::Error`);
//! - the reply framing: the crate reads the reply to EOF with no size limit;
//!   our connection ends it at clamd's NUL terminator and after 8 KiB, so a
//!   server that keeps talking is a protocol error, not unbounded memory;
//! - clamd's last word: when clamd closes early (past `StreamMaxLength`) the
//!   crate returns the write error and drops what clamd said; we still own
//!   the connection and read `INSTREAM size limit exceeded. ERROR` from it;
//! - strict parsing of the raw reply bytes the crate returns: only
//!   `stream: OK` is clean; anything clamd says that is neither `OK` nor
//!   `<name> FOUND` is an error, never a clean verdict. The crate's `clean()`
//!   helper is not used: it calls any reply that contains `OK` and not
//!   `FOUND` clean, `stream: OK ERROR` included.
//!
//! Every operation is bounded by the timeout given to [`Clamd::new`]: connect,
//! streaming and waiting for the verdict together.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Mutex;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use clamav_client::tokio::TransportProtocol;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, BufWriter, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::io::ReaderStream;

use crate::roles::{Original, ScanError as PortScanError, Scanner, Verdict};

/// Size of one `INSTREAM` chunk (payload bytes, without the 4-byte length).
const CHUNK_SIZE: usize = 64 * 1024;

/// Longest reply accepted from clamd; a longer one is a protocol error.
const MAX_REPLY: usize = 8 * 1024;

/// Where clamd listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClamdAddress {
    /// `host:port` (an IPv6 literal in brackets: `[::1]:3310`).
    Tcp(String),
    /// Path of clamd's `LocalSocket`.
    Unix(PathBuf),
}

/// A string that is not a clamd address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid clamd address {0:?}: expected tcp:HOST:PORT, unix:/PATH, HOST:PORT or /PATH")]
pub struct ParseClamdAddressError(pub String);

impl FromStr for ClamdAddress {
    type Err = ParseClamdAddressError;

    /// Accepts `tcp:127.0.0.1:3310`, `unix:/run/clamav/clamd.ctl`, a bare
    /// `host:port`, or a bare absolute path.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ParseClamdAddressError(s.to_owned());
        let s_trim = s.trim();
        if let Some(path) = s_trim.strip_prefix("unix:") {
            return if path.starts_with('/') {
                Ok(Self::Unix(PathBuf::from(path)))
            } else {
                Err(bad())
            };
        }
        if s_trim.starts_with('/') {
            return Ok(Self::Unix(PathBuf::from(s_trim)));
        }
        let hostport = s_trim.strip_prefix("tcp:").unwrap_or(s_trim);
        if valid_host_port(hostport) {
            Ok(Self::Tcp(hostport.to_owned()))
        } else {
            Err(bad())
        }
    }
}

/// `host:port` with a non-empty host and a numeric port in 1..=65535.
fn valid_host_port(s: &str) -> bool {
    let Some((host, port)) = s.rsplit_once(':') else {
        return false;
    };
    let host_ok = if let Some(inner) = host.strip_prefix('[') {
        inner.strip_suffix(']').is_some_and(|h| !h.is_empty())
    } else {
        !host.is_empty() && !host.contains(':') && !host.contains(char::is_whitespace)
    };
    host_ok && port.parse::<u16>().is_ok_and(|p| p != 0)
}

impl fmt::Display for ClamdAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp(hp) => write!(f, "tcp:{hp}"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Why a scan gave no verdict. None of these may be taken as "clean".
#[derive(Debug, thiserror::Error)]
pub enum ClamdError {
    /// Could not connect to clamd (refused, no such socket, ...).
    #[error("cannot connect to clamd at {addr}: {source}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    /// The operation did not finish within the timeout.
    #[error("clamd did not answer within the timeout")]
    Timeout,
    /// clamd (or whatever listens there) answered something other than a
    /// verdict, e.g. `INSTREAM size limit exceeded. ERROR`.
    #[error("unexpected reply from clamd: {0:?}")]
    Protocol(String),
    /// I/O error on the connection or while reading the data to scan.
    #[error("I/O error talking to clamd: {0}")]
    Io(#[from] io::Error),
}

/// A clamd client. Cheap to clone; every call opens its own connection.
#[derive(Debug, Clone)]
pub struct Clamd {
    addr: ClamdAddress,
    timeout: Duration,
}

impl Clamd {
    /// `timeout` bounds each whole operation (connect, send, verdict).
    pub fn new(addr: ClamdAddress, timeout: Duration) -> Self {
        Self { addr, timeout }
    }

    /// The address this client talks to.
    pub fn address(&self) -> &ClamdAddress {
        &self.addr
    }

    /// Scan everything `data` yields, streamed to clamd in 64 KiB chunks with
    /// `INSTREAM`, so a large message can be scanned straight from a file.
    pub async fn scan_reader<R>(&self, data: R) -> Result<Verdict, ClamdError>
    where
        R: AsyncRead + Unpin + Send,
    {
        let reply = self
            .bounded(async {
                match &self.addr {
                    ClamdAddress::Tcp(hp) => {
                        let stream = self.connect_tcp(hp).await?;
                        instream(stream, data).await
                    }
                    ClamdAddress::Unix(path) => {
                        let stream = self.connect_unix(path).await?;
                        instream(stream, data).await
                    }
                }
            })
            .await?;
        let verdict = parse_scan_reply(&reply);
        match &verdict {
            Ok(Verdict::Infected(name)) => {
                tracing::info!(clamd = %self.addr, signature = %name, "clamd: infected");
            }
            Ok(Verdict::Clean) => tracing::debug!(clamd = %self.addr, "clamd: clean"),
            Err(e) => tracing::warn!(clamd = %self.addr, error = %e, "clamd: no verdict"),
        }
        verdict
    }

    /// Scan an in-memory buffer.
    pub async fn scan_bytes(&self, data: &[u8]) -> Result<Verdict, ClamdError> {
        self.scan_reader(data).await
    }

    /// `zPING\0`; Ok when clamd answers `PONG`.
    pub async fn ping(&self) -> Result<(), ClamdError> {
        let reply = self
            .bounded(async {
                match &self.addr {
                    ClamdAddress::Tcp(hp) => {
                        let stream = self.connect_tcp(hp).await?;
                        ping(Conn::new(stream)).await
                    }
                    ClamdAddress::Unix(path) => {
                        let stream = self.connect_unix(path).await?;
                        ping(Conn::new(stream)).await
                    }
                }
            })
            .await?;
        if reply == "PONG" {
            Ok(())
        } else {
            Err(ClamdError::Protocol(reply))
        }
    }

    async fn bounded<T>(
        &self,
        fut: impl Future<Output = Result<T, ClamdError>>,
    ) -> Result<T, ClamdError> {
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| ClamdError::Timeout)?
    }

    async fn connect_tcp(&self, hostport: &str) -> Result<TcpStream, ClamdError> {
        let stream = TcpStream::connect(hostport)
            .await
            .map_err(|source| ClamdError::Connect {
                addr: self.addr.to_string(),
                source,
            })?;
        // Many small writes (command, chunk headers); don't let Nagle delay them.
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    #[cfg(unix)]
    async fn connect_unix(
        &self,
        path: &std::path::Path,
    ) -> Result<tokio::net::UnixStream, ClamdError> {
        tokio::net::UnixStream::connect(path)
            .await
            .map_err(|source| ClamdError::Connect {
                addr: self.addr.to_string(),
                source,
            })
    }

    #[cfg(not(unix))]
    async fn connect_unix(&self, _path: &std::path::Path) -> Result<TcpStream, ClamdError> {
        Err(ClamdError::Connect {
            addr: self.addr.to_string(),
            source: io::Error::new(io::ErrorKind::Unsupported, "unix sockets not supported"),
        })
    }
}

/// `zPING\0` through clamav-client; returns the reply text.
async fn ping<S>(mut conn: Conn<S>) -> Result<String, ClamdError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let raw = clamav_client::tokio::ping(Lent::new(&mut conn)).await?;
    reply_text(&raw)
}

/// `zINSTREAM` with the bytes of `data`, through clamav-client; returns the
/// reply text.
async fn instream<S, R>(conn: S, data: R) -> Result<String, ClamdError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
    R: AsyncRead + Unpin + Send,
{
    let chunks = ReaderStream::with_capacity(data, CHUNK_SIZE);
    // clamav-client writes each chunk's 4-byte length and its bytes apart;
    // buffered, they leave as one write (one TCP segment run, not a tiny
    // packet per chunk).
    let mut conn = Conn::new(BufWriter::with_capacity(4 + CHUNK_SIZE, conn));
    let sent =
        clamav_client::tokio::scan_stream(chunks, Lent::new(&mut conn), Some(CHUNK_SIZE)).await;
    match sent {
        Ok(raw) => reply_text(&raw),
        // clamd closes the connection early when it gives up, e.g. past
        // StreamMaxLength ("INSTREAM size limit exceeded. ERROR"): report
        // what it said if it said anything, else the write error.
        Err(e) if conn.write_failed => {
            let mut raw = Vec::new();
            match conn.read_to_end(&mut raw).await {
                Ok(_) if !raw.is_empty() => reply_text(&raw),
                _ => Err(ClamdError::Io(e)),
            }
        }
        // Reading the data to scan failed, or reading the reply did.
        Err(e) => Err(ClamdError::Io(e)),
    }
}

/// The raw reply (clamav-client returns clamd's bytes as they came) as text,
/// without the NUL terminator and trailing whitespace.
fn reply_text(raw: &[u8]) -> Result<String, ClamdError> {
    let reply = raw.split(|&b| b == 0).next().unwrap_or_default();
    if reply.len() > MAX_REPLY {
        let text = String::from_utf8_lossy(&reply[..MAX_REPLY]);
        return Err(ClamdError::Protocol(format!("reply too long: {text}...")));
    }
    Ok(String::from_utf8_lossy(reply).trim_end().to_owned())
}

/// Our connection to clamd, as clamav-client sees it. Writes pass through
/// (a failure is remembered, to look for clamd's last word afterwards);
/// reads end at the reply's NUL terminator or past [`MAX_REPLY`] bytes,
/// since clamav-client reads the reply to EOF, unbounded.
struct Conn<S> {
    stream: S,
    write_failed: bool,
    reply_len: usize,
    reply_done: bool,
}

impl<S> Conn<S> {
    fn new(stream: S) -> Self {
        Self {
            stream,
            write_failed: false,
            reply_len: 0,
            reply_done: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Conn<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        // One byte past the limit tells "too long" from "exactly the limit".
        let room = (MAX_REPLY + 1)
            .saturating_sub(this.reply_len)
            .min(buf.remaining());
        if this.reply_done || room == 0 {
            return Poll::Ready(Ok(()));
        }
        let mut tmp = [0u8; 1024];
        let mut rb = ReadBuf::new(&mut tmp[..room.min(1024)]);
        ready!(Pin::new(&mut this.stream).poll_read(cx, &mut rb))?;
        let got = rb.filled();
        let n = match got.iter().position(|&b| b == 0) {
            Some(nul) => {
                this.reply_done = true;
                nul + 1
            }
            None => got.len(),
        };
        buf.put_slice(&got[..n]);
        this.reply_len += n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Conn<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = ready!(Pin::new(&mut this.stream).poll_write(cx, buf));
        this.write_failed |= r.is_err();
        Poll::Ready(r)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = ready!(Pin::new(&mut this.stream).poll_flush(cx));
        this.write_failed |= r.is_err();
        Poll::Ready(r)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// Lends our already open connection to clamav-client as its transport: its
/// `connect` hands over `&mut Conn` (once; the mutex only lets `&self` take
/// it), so connect errors are ours to report and the connection is still
/// ours when the crate returns.
struct Lent<'a, S>(Mutex<Option<&'a mut Conn<S>>>);

impl<'a, S> Lent<'a, S> {
    fn new(conn: &'a mut Conn<S>) -> Self {
        Self(Mutex::new(Some(conn)))
    }
}

impl<'a, S> TransportProtocol for Lent<'a, S>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    type Stream = &'a mut Conn<S>;

    fn connect(&self) -> impl Future<Output = io::Result<Self::Stream>> {
        let conn = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        std::future::ready(
            conn.ok_or_else(|| io::Error::other("clamd connection already handed over")),
        )
    }
}

/// What the client makes of the bytes clamd sends back over `conn`: the
/// reply to an `INSTREAM` scan of a few bytes (read through [`Conn`]'s
/// bound, then [`parse_scan_reply`]). No network, no timeout: for the fuzz
/// target (`fuzz/`) and its regression test.
#[doc(hidden)]
pub async fn scan_reply_over<S>(conn: S) -> Result<Verdict, ClamdError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let reply = instream(conn, &b"fuzz"[..]).await?;
    parse_scan_reply(&reply)
}

/// The same for the reply to `zPING` (the text the client compares with
/// `PONG`).
#[doc(hidden)]
pub async fn ping_reply_over<S>(conn: S) -> Result<String, ClamdError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    ping(Conn::new(conn)).await
}

/// `stream: OK` → Clean, `stream: NAME FOUND` → Infected(NAME), else error.
fn parse_scan_reply(reply: &str) -> Result<Verdict, ClamdError> {
    if reply.is_empty() {
        return Err(ClamdError::Protocol(
            "connection closed without a reply".to_owned(),
        ));
    }
    let protocol = || ClamdError::Protocol(reply.to_owned());
    let rest = reply.strip_prefix("stream: ").ok_or_else(protocol)?;
    if rest == "OK" {
        return Ok(Verdict::Clean);
    }
    let name = rest.strip_suffix(" FOUND").ok_or_else(protocol)?.trim();
    if name.is_empty() || name.contains(['\n', '\r', '\0']) {
        return Err(protocol());
    }
    Ok(Verdict::Infected(name.to_owned()))
}

/// clamd is the roles' [`Scanner`]: a message on disk is streamed from the
/// spool (header, empty line, body), never read whole into memory.
#[async_trait::async_trait]
impl Scanner for Clamd {
    async fn scan(&self, message: &[u8]) -> Result<Verdict, PortScanError> {
        self.scan_bytes(message)
            .await
            .map_err(|e| PortScanError::Scanner(Box::new(e)))
    }

    async fn scan_original(&self, message: &Original) -> Result<Verdict, PortScanError> {
        let reader = (&message.header[..])
            .chain(&b"\r\n"[..])
            .chain(message.body.async_reader());
        self.scan_reader(reader)
            .await
            .map_err(|e| PortScanError::Scanner(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn parses_replies() {
        assert_eq!(parse_scan_reply("stream: OK").ok(), Some(Verdict::Clean));
        assert_eq!(
            parse_scan_reply("stream: Eicar-Test-Signature FOUND").ok(),
            Some(Verdict::Infected("Eicar-Test-Signature".into()))
        );
        for bad in [
            "",
            "stream: OK ERROR",
            "INSTREAM size limit exceeded. ERROR",
            "stream: FOUND",
            "stream:  FOUND",
            "stream: lstat() failed ERROR",
            "OK",
            "stream: ok",
        ] {
            assert!(
                matches!(parse_scan_reply(bad), Err(ClamdError::Protocol(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn reply_text_drops_the_terminator() {
        assert_eq!(reply_text(b"stream: OK\0").unwrap(), "stream: OK");
        assert_eq!(reply_text(b"PONG\n\0").unwrap(), "PONG");
        assert_eq!(reply_text(b"PONG").unwrap(), "PONG");
        assert_eq!(reply_text(b"").unwrap(), "");
        assert!(reply_text(&[b'x'; MAX_REPLY]).is_ok());
        let mut longest = vec![b'x'; MAX_REPLY];
        longest.push(0);
        assert!(reply_text(&longest).is_ok());
        assert!(matches!(
            reply_text(&[b'x'; MAX_REPLY + 1]),
            Err(ClamdError::Protocol(_))
        ));
    }

    /// What clamav-client reads to EOF ends at clamd's NUL, or one byte past
    /// the limit, even if the peer keeps the connection open.
    #[tokio::test]
    async fn conn_ends_the_reply() {
        let (ours, mut theirs) = tokio::io::duplex(4 * MAX_REPLY);
        let mut conn = Conn::new(ours);
        theirs.write_all(b"stream: OK\0more").await.unwrap();
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw).await.unwrap();
        assert_eq!(raw, b"stream: OK\0");

        let (ours, mut theirs) = tokio::io::duplex(4 * MAX_REPLY);
        let mut conn = Conn::new(ours);
        theirs.write_all(&[b'x'; 2 * MAX_REPLY]).await.unwrap();
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw).await.unwrap();
        assert_eq!(raw.len(), MAX_REPLY + 1);
    }

    #[test]
    fn parses_addresses() {
        let ok = [
            (
                "tcp:127.0.0.1:3310",
                ClamdAddress::Tcp("127.0.0.1:3310".into()),
            ),
            ("localhost:3310", ClamdAddress::Tcp("localhost:3310".into())),
            ("tcp:[::1]:3310", ClamdAddress::Tcp("[::1]:3310".into())),
            (
                "unix:/run/clamd.ctl",
                ClamdAddress::Unix("/run/clamd.ctl".into()),
            ),
            (
                "/run/clamd.ctl",
                ClamdAddress::Unix("/run/clamd.ctl".into()),
            ),
        ];
        for (s, want) in ok {
            assert_eq!(s.parse::<ClamdAddress>().ok(), Some(want), "{s}");
        }
        for s in [
            "",
            "tcp:",
            "127.0.0.1",
            ":3310",
            "h:0",
            "h:99999",
            "unix:rel",
            "::1:3310",
        ] {
            assert!(s.parse::<ClamdAddress>().is_err(), "{s}");
        }
    }
}
