//! The milter's listener: accepted connections with `TCP_NODELAY` and
//! `TCP_QUICKACK`, replies coalesced into one write per exchange.

use std::io;
use std::pin::Pin;
use std::task::{Context as TaskContext, Poll};

use indymilter::Listener as MilterAccept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, UnixListener};

use super::{RolesSource, callbacks};
use crate::config::MilterConfig;
use crate::listen::{ListenSpec, ListenSpecError, Listener, UnixPermissions, remove_socket};

/// Where the milter listens ([`crate::listen`]: `inet:HOST:PORT`,
/// OpenDKIM's `inet:PORT@HOST`, `unix:/PATH` / `local:/PATH`, ...; only a
/// stale socket at PATH is ever replaced).
pub struct MilterListener(Listener);

impl MilterListener {
    /// Bind `spec`; a unix socket keeps the umask's mode and the process's
    /// group.
    pub async fn bind(spec: &str) -> io::Result<MilterListener> {
        Listener::bind(spec, None).await.map(MilterListener)
    }

    /// Bind `[milter] listen`; a unix socket gets `socket_mode` and
    /// `socket_group` (ignored, with a warning, for a TCP listener).
    pub async fn bind_config(cfg: &MilterConfig) -> io::Result<MilterListener> {
        let spec: ListenSpec = cfg
            .listen
            .parse()
            .map_err(|e: ListenSpecError| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let perms = UnixPermissions {
            mode: cfg.socket_mode,
            group: cfg.socket_group.clone(),
        };
        if matches!(spec, ListenSpec::Tcp { .. }) && perms != UnixPermissions::default() {
            tracing::warn!(listen = %spec, "[milter] socket_mode / socket_group apply to a unix socket only: ignored");
        }
        Listener::bind_spec(&spec, &perms).await.map(MilterListener)
    }

    pub fn local_description(&self) -> String {
        self.0.description()
    }
}

/// A TCP listener whose connections have `TCP_NODELAY` set: libmilter's
/// write-write-read pattern under Nagle costs ~40 ms a message.
pub struct NoDelayListener(pub TcpListener);

impl MilterAccept for NoDelayListener {
    type Io = Batched<tokio::net::TcpStream>;

    fn poll_accept(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<Self::Io>> {
        self.0.poll_accept(cx).map_ok(|(s, _)| {
            if let Err(e) = s.set_nodelay(true) {
                tracing::warn!(error = %e, "cannot set TCP_NODELAY");
            }
            Batched::new(s)
        })
    }
}

/// What a milter stream does after each read.
pub trait AfterRead {
    fn after_read(&self) {}
}

impl AfterRead for tokio::net::UnixStream {}

impl AfterRead for tokio::net::TcpStream {
    /// Re-arm `TCP_QUICKACK` (Linux clears it on its own): the MTA often
    /// writes two small packets in a row without waiting for an answer
    /// (the macros of a stage we skip, then the next command; header
    /// fields and body chunks we do not answer), and with a delayed ACK
    /// from us its second write would wait ~40 ms for it (Nagle).
    fn after_read(&self) {
        #[cfg(target_os = "linux")]
        let _ = self.set_quickack(true);
    }
}

/// Serve until `shutdown` completes; each connection takes its roles from
/// `roles` when it opens (fixed `Arc<Roles>`, or a [`RolesSource`]).
pub async fn serve(
    listener: MilterListener,
    roles: impl Into<RolesSource>,
    config: indymilter::Config,
    shutdown: impl std::future::Future,
) -> io::Result<()> {
    let cbs = callbacks(roles);
    match listener.0 {
        Listener::Tcp(l) => indymilter::run(NoDelayListener(l), cbs, config, shutdown).await,
        Listener::Unix { listener, path } => {
            let r = indymilter::run(UnixBatched(listener), cbs, config, shutdown).await;
            let _ = remove_socket(&path);
            r
        }
    }
}

struct UnixBatched(UnixListener);

impl MilterAccept for UnixBatched {
    type Io = Batched<tokio::net::UnixStream>;

    fn poll_accept(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<Self::Io>> {
        self.0.poll_accept(cx).map_ok(|(s, _)| Batched::new(s))
    }
}

/// A stream that coalesces writes: what the milter writes is buffered and
/// sent when it next reads (the MTA's next command), on shutdown, or when
/// the buffer passes 256 KiB. So the actions and the final reply of an
/// end-of-message leave in one write instead of one packet each.
pub struct Batched<S> {
    inner: S,
    buf: Vec<u8>,
    pos: usize,
}

const BATCH_LIMIT: usize = 256 * 1024;

impl<S> Batched<S> {
    pub fn new(inner: S) -> Self {
        Batched {
            inner,
            buf: Vec::new(),
            pos: 0,
        }
    }
}

impl<S: AsyncWrite + Unpin> Batched<S> {
    fn poll_drain(&mut self, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        while self.pos < self.buf.len() {
            let n = match Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.pos..]) {
                Poll::Ready(Ok(n)) => n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            };
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pos += n;
        }
        self.buf.clear();
        self.pos = 0;
        Pin::new(&mut self.inner).poll_flush(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + AfterRead + Unpin> AsyncRead for Batched<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        }
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) {
            this.inner.after_read();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Batched<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.buf.len() >= BATCH_LIMIT {
            match this.poll_drain(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        this.buf.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    /// Deferred: the batch leaves on the next read (see the type's doc).
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match this.poll_drain(cx) {
            Poll::Ready(Ok(())) => Pin::new(&mut this.inner).poll_shutdown(cx),
            other => other,
        }
    }
}

impl<S> Drop for Batched<S> {
    fn drop(&mut self) {
        if self.pos < self.buf.len() {
            tracing::debug!(
                bytes = self.buf.len() - self.pos,
                "milter connection closed with unsent replies"
            );
        }
    }
}
