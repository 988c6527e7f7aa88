//! One listen-spec binder for the edges that listen (the milter, the LMTP
//! server): `inet:HOST:PORT` (`inet:127.0.0.1:8891`, `inet:[::1]:2424`;
//! port 0 picks a free one) or `unix:/PATH`.
//!
//! A file already at PATH is replaced only when it is a socket (a stale one
//! left by a crash); any other file is an error, never deleted. The socket
//! is removed again when the listener is dropped.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

use tokio::net::{TcpListener, UnixListener};

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    /// `inet:HOST:PORT`
    Tcp(TcpListener),
    /// `unix:/PATH`
    Unix {
        listener: UnixListener,
        path: PathBuf,
    },
}

impl Listener {
    /// Bind `spec`. `mode`: the unix socket's permissions (e.g. `0o666` so
    /// that Postfix's lmtp client, user postfix, can connect; restrict
    /// access with its directory), `None` to leave them to the umask.
    pub async fn bind(spec: &str, mode: Option<u32>) -> io::Result<Listener> {
        if let Some(hp) = spec.strip_prefix("inet:") {
            let (host, port) = hp.rsplit_once(':').ok_or_else(|| bad_spec(spec))?;
            let port: u16 = port.parse().map_err(|_| bad_spec(spec))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            if host.is_empty() {
                return Err(bad_spec(spec));
            }
            Ok(Listener::Tcp(TcpListener::bind((host, port)).await?))
        } else if let Some(path) = spec.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(bad_spec(spec));
            }
            let path = PathBuf::from(path);
            remove_socket(&path)?;
            let listener = UnixListener::bind(&path)?;
            if let Some(mode) = mode {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
            }
            Ok(Listener::Unix { listener, path })
        } else {
            Err(bad_spec(spec))
        }
    }

    /// The bound TCP address (None for a unix socket).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix { .. } => None,
        }
    }

    /// `inet:ADDR` or `unix:PATH`, for logs.
    pub fn description(&self) -> String {
        match self {
            Listener::Tcp(l) => l
                .local_addr()
                .map(|a| format!("inet:{a}"))
                .unwrap_or_else(|_| "inet:?".into()),
            Listener::Unix { path, .. } => format!("unix:{}", path.display()),
        }
    }
}

/// Remove the socket at `path`, if there is one; a file of any other kind
/// is an error and stays.
pub fn remove_socket(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn bad_spec(spec: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("listen address must be inet:HOST:PORT or unix:/PATH, not {spec:?}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stale_socket_is_replaced_any_other_file_kept() {
        let d = tempfile::tempdir().expect("tmp");
        let sock = d.path().join("s.sock");
        let spec = format!("unix:{}", sock.display());
        // a socket left behind (the process died): replaced
        drop(Listener::bind(&spec, None).await.expect("bind"));
        assert!(sock.exists());
        drop(Listener::bind(&spec, Some(0o660)).await.expect("rebind"));
        remove_socket(&sock).expect("remove");
        assert!(!sock.exists(), "socket removed");
        let file = d.path().join("data");
        std::fs::write(&file, b"keep me").expect("write");
        let err = Listener::bind(&format!("unix:{}", file.display()), None)
            .await
            .expect_err("not a socket");
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(&file).expect("read"), b"keep me");
        for bad in [
            "",
            "inet:",
            "inet:127.0.0.1",
            "inet::25",
            "inet:h:x",
            "unix:",
            "tcp:1",
        ] {
            assert!(Listener::bind(bad, None).await.is_err(), "{bad}");
        }
    }
}
