//! Virus scanning through a running `clamd`, with the `INSTREAM` protocol.
//!
//! The message is streamed to clamd over TCP or a unix socket (`zINSTREAM\0`,
//! then chunks `<u32 big-endian length><bytes>`, then a zero-length chunk),
//! so clamd never needs access to our files. The reply is parsed strictly:
//! only `stream: OK` is clean; anything clamd says that is neither `OK` nor
//! `<name> FOUND` (for instance `INSTREAM size limit exceeded. ERROR`) is an
//! error, never a clean verdict.
//!
//! Every operation is bounded by the timeout given to [`Clamd::new`]: connect,
//! streaming and waiting for the verdict together.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

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
                        command(stream, b"zPING\0").await
                    }
                    ClamdAddress::Unix(path) => {
                        let stream = self.connect_unix(path).await?;
                        command(stream, b"zPING\0").await
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

/// Send one command and read its reply.
async fn command<S>(mut stream: S, cmd: &[u8]) -> Result<String, ClamdError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    stream.write_all(cmd).await?;
    stream.flush().await?;
    read_reply(&mut stream).await
}

/// Run `zINSTREAM` over `stream` with the bytes of `data`; returns the reply.
async fn instream<S, R>(mut stream: S, data: R) -> Result<String, ClamdError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    match send_instream(&mut stream, data).await {
        Ok(()) => read_reply(&mut stream).await,
        Err(SendError::Source(e)) => Err(ClamdError::Io(e)),
        Err(SendError::Socket(e)) => {
            // clamd closes the connection early when it gives up, e.g. past
            // StreamMaxLength ("INSTREAM size limit exceeded. ERROR"): report
            // what it said if it said anything, else the write error.
            match read_reply(&mut stream).await {
                Ok(reply) if !reply.is_empty() => Ok(reply),
                _ => Err(ClamdError::Io(e)),
            }
        }
    }
}

enum SendError {
    /// Reading the data to scan failed.
    Source(io::Error),
    /// Writing to clamd failed.
    Socket(io::Error),
}

async fn send_instream<S, R>(stream: &mut S, mut data: R) -> Result<(), SendError>
where
    S: AsyncWrite + Unpin,
    R: AsyncRead + Unpin,
{
    stream
        .write_all(b"zINSTREAM\0")
        .await
        .map_err(SendError::Socket)?;
    // One buffer: 4-byte length header followed by the payload, so each chunk
    // goes out in a single write.
    let mut buf = vec![0u8; 4 + CHUNK_SIZE];
    loop {
        let mut filled = 0;
        while filled < CHUNK_SIZE {
            let n = data
                .read(&mut buf[4 + filled..])
                .await
                .map_err(SendError::Source)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        // filled <= CHUNK_SIZE (64 KiB), always fits in u32.
        let len = u32::try_from(filled).unwrap_or(u32::MAX);
        buf[..4].copy_from_slice(&len.to_be_bytes());
        stream
            .write_all(&buf[..4 + filled])
            .await
            .map_err(SendError::Socket)?;
        if filled < CHUNK_SIZE {
            break;
        }
    }
    stream
        .write_all(&0u32.to_be_bytes())
        .await
        .map_err(SendError::Socket)?;
    stream.flush().await.map_err(SendError::Socket)
}

/// Read a NUL-terminated reply (or up to EOF), without the terminator and
/// trailing whitespace.
async fn read_reply<S>(stream: &mut S) -> Result<String, ClamdError>
where
    S: AsyncRead + Unpin,
{
    let mut reply = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        if let Some(pos) = buf[..n].iter().position(|&b| b == 0) {
            reply.extend_from_slice(&buf[..pos]);
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        if reply.len() > MAX_REPLY {
            reply.truncate(MAX_REPLY);
            let text = String::from_utf8_lossy(&reply);
            return Err(ClamdError::Protocol(format!("reply too long: {text}...")));
        }
    }
    let text = String::from_utf8_lossy(&reply);
    Ok(text.trim_end().to_owned())
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
        use tokio::io::AsyncReadExt;
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
