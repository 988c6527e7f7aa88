//! One listen-spec parser and binder for the edges that listen (the
//! milter, the LMTP server). The forms, ours and OpenDKIM's / libmilter's
//! (so that a site can copy the `Socket` line it already has):
//!
//! | spec | listens on |
//! |---|---|
//! | `inet:HOST:PORT`, `inet:[ADDR]:PORT` | HOST (a name: what it resolves to) |
//! | `inet:PORT@HOST`, `inet:PORT@[ADDR]` | the same (OpenDKIM's form) |
//! | `inet:PORT` | every IPv4 address (0.0.0.0) |
//! | `inet6:PORT@HOST`, `inet6:[ADDR]:PORT` | HOST's IPv6 addresses only |
//! | `inet6:PORT` | every IPv6 address (`[::]`) |
//! | `unix:/PATH`, `local:/PATH` | a unix socket at PATH (absolute) |
//!
//! Port 0 picks a free one (tests). A file already at PATH is replaced only
//! when it is a socket (a stale one left by a crash); any other file is an
//! error, never deleted. The socket is removed again when the listener is
//! dropped. A unix socket can be given a mode and a group
//! ([`UnixPermissions`]: `[milter] socket_mode` / `socket_group`, for a
//! chrooted Postfix whose smtpd runs as group postfix).

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use tokio::net::{TcpListener, UnixListener};

/// The forms accepted, for error messages.
pub const FORMS: &str = "inet:HOST:PORT, inet:PORT@HOST, inet:PORT, inet6:PORT@HOST, \
                         inet6:[ADDR]:PORT, inet6:PORT, unix:/PATH or local:/PATH";

/// The address family of an `inet` spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// `inet:`: what HOST resolves to (any family), or 0.0.0.0.
    Inet,
    /// `inet6:`: HOST's IPv6 addresses only, or `[::]`.
    Inet6,
}

/// A parsed listen spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenSpec {
    /// TCP; `host` None: every address of the family.
    Tcp {
        family: Family,
        host: Option<String>,
        port: u16,
    },
    /// A unix socket at an absolute path.
    Unix(PathBuf),
}

/// Why a string is not a listen spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{spec:?}: {reason} (use {FORMS})")]
pub struct ListenSpecError {
    pub spec: String,
    pub reason: String,
}

impl FromStr for ListenSpec {
    type Err = ListenSpecError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| ListenSpecError {
            spec: spec.to_owned(),
            reason: reason.to_owned(),
        };
        let s = spec.trim();
        if let Some(path) = s.strip_prefix("unix:").or_else(|| s.strip_prefix("local:")) {
            if path.is_empty() {
                return Err(bad("no socket path"));
            }
            if !path.starts_with('/') {
                return Err(bad("the socket path must be absolute"));
            }
            if path.contains('\0') {
                return Err(bad("a NUL in the socket path"));
            }
            return Ok(ListenSpec::Unix(PathBuf::from(path)));
        }
        let (family, rest) = if let Some(r) = s.strip_prefix("inet6:") {
            (Family::Inet6, r)
        } else if let Some(r) = s.strip_prefix("inet:") {
            (Family::Inet, r)
        } else {
            return Err(bad("unknown kind of address"));
        };
        let (host, port) = if let Some((port, host)) = rest.split_once('@') {
            // OpenDKIM / libmilter: PORT@HOST, a literal address in brackets or not
            let host = match host.strip_prefix('[') {
                Some(h) => h
                    .strip_suffix(']')
                    .ok_or_else(|| bad("an unclosed [ in the host"))?,
                None => host,
            };
            (Some(host), port)
        } else if let Some(r) = rest.strip_prefix('[') {
            let (h, p) = r.split_once("]:").ok_or_else(|| bad("write [ADDR]:PORT"))?;
            (Some(h), p)
        } else if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit()) {
            (None, rest)
        } else {
            let (h, p) = rest.rsplit_once(':').ok_or_else(|| bad("no port"))?;
            if h.contains(':') {
                return Err(bad(
                    "an IPv6 address goes in brackets ([::1]:PORT) or after the port (PORT@::1)",
                ));
            }
            (Some(h), p)
        };
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("the port must be a number"));
        }
        let port: u16 = port.parse().map_err(|_| bad("the port is over 65535"))?;
        let host = match host {
            None => None,
            Some("") => return Err(bad("an empty host")),
            Some(h) if h.contains(|c: char| c.is_whitespace() || "/@[]".contains(c)) => {
                return Err(bad("the host is not a name or an address"));
            }
            Some(h) => {
                if family == Family::Inet6 && h.parse::<Ipv4Addr>().is_ok() {
                    return Err(bad("inet6 with an IPv4 address (use inet:)"));
                }
                if h.contains(':') && h.parse::<Ipv6Addr>().is_err() {
                    return Err(bad("not an IPv6 address"));
                }
                Some(h.to_owned())
            }
        };
        Ok(ListenSpec::Tcp { family, host, port })
    }
}

impl fmt::Display for ListenSpec {
    /// The spec in our own form (`inet:HOST:PORT`, `inet6:[ADDR]:PORT`,
    /// `unix:/PATH`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenSpec::Unix(p) => write!(f, "unix:{}", p.display()),
            ListenSpec::Tcp { family, host, port } => {
                let kind = match family {
                    Family::Inet => "inet",
                    Family::Inet6 => "inet6",
                };
                match host {
                    None => write!(f, "{kind}:{port}"),
                    Some(h) if h.contains(':') => write!(f, "{kind}:[{h}]:{port}"),
                    Some(h) => write!(f, "{kind}:{h}:{port}"),
                }
            }
        }
    }
}

impl ListenSpec {
    /// The TCP addresses to try, in order (none for a unix socket): HOST
    /// resolved (IPv6 only for `inet6:`), or the family's wildcard.
    pub async fn socket_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        let ListenSpec::Tcp { family, host, port } = self else {
            return Ok(Vec::new());
        };
        let port = *port;
        let addrs: Vec<SocketAddr> = match (host, family) {
            (None, Family::Inet) => vec![SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port)],
            (None, Family::Inet6) => vec![SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port)],
            (Some(h), _) => match h.parse::<IpAddr>() {
                Ok(ip) => vec![SocketAddr::new(ip, port)],
                Err(_) => tokio::net::lookup_host((h.as_str(), port)).await?.collect(),
            },
        };
        let addrs: Vec<SocketAddr> = match family {
            Family::Inet => addrs,
            Family::Inet6 => addrs.into_iter().filter(SocketAddr::is_ipv6).collect(),
        };
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{self}: the host has no address of that family"),
            ));
        }
        Ok(addrs)
    }
}

/// What a unix socket is given after it is bound: its mode (e.g. `0o660`)
/// and its group (a name or a numeric gid). `None`: left as they come (the
/// umask; the process's group).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnixPermissions {
    pub mode: Option<u32>,
    pub group: Option<String>,
}

/// A bound listener.
#[derive(Debug)]
pub enum Listener {
    /// `inet:` / `inet6:`
    Tcp(TcpListener),
    /// `unix:` / `local:`
    Unix {
        listener: UnixListener,
        path: PathBuf,
    },
}

impl Listener {
    /// Bind `spec` (any form of [`ListenSpec`]). `mode`: the unix socket's
    /// permissions (e.g. `0o666` so that Postfix's lmtp client, user
    /// postfix, can connect; restrict access with its directory), `None`
    /// to leave them to the umask.
    pub async fn bind(spec: &str, mode: Option<u32>) -> io::Result<Listener> {
        let spec: ListenSpec = spec
            .parse()
            .map_err(|e: ListenSpecError| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Self::bind_spec(&spec, &UnixPermissions { mode, group: None }).await
    }

    /// Bind a parsed spec; a unix socket gets `perms` (group first, then
    /// mode). A socket whose group or mode cannot be set is removed again
    /// and the error names what failed.
    pub async fn bind_spec(spec: &ListenSpec, perms: &UnixPermissions) -> io::Result<Listener> {
        match spec {
            ListenSpec::Tcp { .. } => {
                let addrs = spec.socket_addrs().await?;
                Ok(Listener::Tcp(TcpListener::bind(&addrs[..]).await?))
            }
            ListenSpec::Unix(path) => {
                remove_socket(path)?;
                let listener = UnixListener::bind(path)?;
                if let Err(e) = apply_permissions(path, perms) {
                    drop(listener);
                    let _ = remove_socket(path);
                    return Err(e);
                }
                Ok(Listener::Unix {
                    listener,
                    path: path.clone(),
                })
            }
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

/// The group of a unix socket: a numeric gid, or a name looked up with
/// getgrnam_r (so NSS groups too).
pub fn resolve_group(group: &str) -> io::Result<u32> {
    if !group.is_empty() && group.bytes().all(|b| b.is_ascii_digit()) {
        return group.parse().map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("gid {group} too large"),
            )
        });
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no group named {group:?}"),
        )),
        Err(e) => Err(io::Error::other(format!("looking up group {group:?}: {e}"))),
    }
}

fn apply_permissions(path: &Path, perms: &UnixPermissions) -> io::Result<()> {
    if let Some(group) = &perms.group {
        let gid = resolve_group(group)?;
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "cannot give {} to group {group} (gid {gid}): {e} (the daemon's user must \
                     be a member of that group, or root)",
                    path.display()
                ),
            )
        })?;
    }
    if let Some(mode) = perms.mode {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot set mode {mode:04o} on {}: {e}", path.display()),
            )
        })?;
    }
    Ok(())
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

/// A unix socket mode written as an octal string (`"0660"`, `"660"`,
/// `"0o660"`): the permission bits only (at most `0777`).
pub fn parse_mode(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let digits = t.strip_prefix("0o").unwrap_or(t);
    if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(format!("{s:?} is not an octal mode like \"0660\""));
    }
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!(
            "{s:?}: only the permission bits (at most \"0777\"), no setuid, setgid or sticky bit"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(family: Family, host: Option<&str>, port: u16) -> ListenSpec {
        ListenSpec::Tcp {
            family,
            host: host.map(str::to_owned),
            port,
        }
    }

    #[test]
    fn every_form_parses() {
        use Family::{Inet, Inet6};
        let cases = [
            ("inet:127.0.0.1:8891", tcp(Inet, Some("127.0.0.1"), 8891)),
            ("inet:localhost:8891", tcp(Inet, Some("localhost"), 8891)),
            ("inet:[::1]:2424", tcp(Inet, Some("::1"), 2424)),
            ("inet:8891@127.0.0.1", tcp(Inet, Some("127.0.0.1"), 8891)),
            ("inet:8891@[127.0.0.1]", tcp(Inet, Some("127.0.0.1"), 8891)),
            ("inet:8891@localhost", tcp(Inet, Some("localhost"), 8891)),
            ("inet:8891", tcp(Inet, None, 8891)),
            ("inet:0", tcp(Inet, None, 0)),
            ("inet6:8891@::1", tcp(Inet6, Some("::1"), 8891)),
            ("inet6:8891@[::1]", tcp(Inet6, Some("::1"), 8891)),
            ("inet6:[::1]:8891", tcp(Inet6, Some("::1"), 8891)),
            ("inet6:8891@localhost", tcp(Inet6, Some("localhost"), 8891)),
            ("inet6:8891", tcp(Inet6, None, 8891)),
            (
                "unix:/run/pec-milter/milter.sock",
                ListenSpec::Unix("/run/pec-milter/milter.sock".into()),
            ),
            (
                "local:/var/spool/postfix/pec/milter.sock",
                ListenSpec::Unix("/var/spool/postfix/pec/milter.sock".into()),
            ),
        ];
        for (s, want) in cases {
            assert_eq!(s.parse::<ListenSpec>(), Ok(want), "{s}");
        }
        // Display writes our own form, which parses to the same spec.
        for s in ["inet:8891@[::1]", "inet6:8891", "local:/x.sock", "inet:h:1"] {
            let spec: ListenSpec = s.parse().expect("parses");
            assert_eq!(spec.to_string().parse::<ListenSpec>(), Ok(spec), "{s}");
        }
        assert_eq!(
            "inet:8891@[::1]"
                .parse::<ListenSpec>()
                .map(|s| s.to_string()),
            Ok("inet:[::1]:8891".to_string())
        );
    }

    #[test]
    fn bad_specs_say_why() {
        for (bad, why) in [
            ("", "unknown kind"),
            ("127.0.0.1:25", "unknown kind"),
            ("tcp:127.0.0.1:25", "unknown kind"),
            ("inet:", "no port"),
            ("inet:127.0.0.1", "no port"),
            ("inet::25", "empty host"),
            ("inet:h:x", "port must be a number"),
            ("inet:h:-1", "port must be a number"),
            ("inet:h:65536", "over 65535"),
            ("inet:99999", "over 65535"),
            ("inet:x@h", "port must be a number"),
            ("inet:@h", "port must be a number"),
            ("inet:25@", "empty host"),
            ("inet:25@[::1", "unclosed ["),
            ("inet:::1:25", "brackets"),
            ("inet6:::1:25", "brackets"),
            ("inet6:[::1]", "[ADDR]:PORT"),
            ("inet6:25@127.0.0.1", "IPv4"),
            ("inet:25@a b", "not a name"),
            ("inet:25@h/x", "not a name"),
            ("inet:25@[1:2:zz::]", "not an IPv6"),
            ("unix:", "no socket path"),
            ("local:", "no socket path"),
            ("unix:relative.sock", "absolute"),
            ("local:run/x.sock", "absolute"),
        ] {
            let e = bad.parse::<ListenSpec>().expect_err(bad);
            let msg = e.to_string();
            assert!(msg.contains(why), "{bad:?}: {msg}");
            assert!(
                msg.contains("inet:PORT@HOST") && msg.contains("local:/PATH"),
                "{msg}"
            );
        }
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("0660"), Ok(0o660));
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert_eq!(parse_mode("0777"), Ok(0o777));
        for bad in ["", "0o", "0680", "rw-rw----", "4755", "01777", "-660"] {
            assert!(parse_mode(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn tcp_forms_bind() {
        for spec in ["inet:0@127.0.0.1", "inet:0@[127.0.0.1]", "inet:127.0.0.1:0"] {
            let l = Listener::bind(spec, None).await.expect(spec);
            let a = l.local_addr().expect("tcp");
            assert_eq!(a.ip(), IpAddr::from(Ipv4Addr::LOCALHOST), "{spec}");
            assert_ne!(a.port(), 0);
        }
        let l = Listener::bind("inet:0", None).await.expect("any");
        assert!(l.local_addr().expect("tcp").ip().is_unspecified());
        // IPv6 only where the host has it (a container may have no ::1)
        if std::net::TcpListener::bind("[::1]:0").is_ok() {
            for spec in ["inet6:0@::1", "inet6:[::1]:0", "inet6:0@[::1]"] {
                let l = Listener::bind(spec, None).await.expect(spec);
                assert_eq!(
                    l.local_addr().expect("tcp").ip(),
                    IpAddr::from(Ipv6Addr::LOCALHOST)
                );
            }
        }
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_any_other_file_kept() {
        let d = tempfile::tempdir().expect("tmp");
        let sock = d.path().join("s.sock");
        let spec = format!("unix:{}", sock.display());
        // a socket left behind (the process died): replaced
        drop(Listener::bind(&spec, None).await.expect("bind"));
        assert!(sock.exists());
        drop(
            Listener::bind(&format!("local:{}", sock.display()), Some(0o660))
                .await
                .expect("rebind"),
        );
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
            let e = Listener::bind(bad, None).await.expect_err(bad);
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad}");
        }
    }

    /// `[milter] socket_mode` / `socket_group`: the socket gets both. The
    /// group is one the test process belongs to (its own primary group, and
    /// any supplementary one), so this runs as root and as a user.
    #[tokio::test]
    async fn the_socket_gets_its_mode_and_group() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let d = tempfile::tempdir().expect("tmp");
        let sock = d.path().join("m.sock");
        let spec = ListenSpec::Unix(sock.clone());
        let mut groups = vec![nix::unistd::getegid().as_raw()];
        groups.extend(
            nix::unistd::getgroups()
                .unwrap_or_default()
                .into_iter()
                .map(|g| g.as_raw()),
        );
        for (i, gid) in groups.iter().take(3).enumerate() {
            // by name where the group has one, else by number
            let group = match nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(*gid)) {
                Ok(Some(g)) if i % 2 == 0 => g.name,
                _ => gid.to_string(),
            };
            let mode = [0o660, 0o600, 0o666][i];
            let perms = UnixPermissions {
                mode: Some(mode),
                group: Some(group.clone()),
            };
            let l = Listener::bind_spec(&spec, &perms).await.expect("bind");
            let m = std::fs::metadata(&sock).expect("socket");
            assert_eq!(m.permissions().mode() & 0o7777, mode, "{group}");
            assert_eq!(m.gid(), *gid, "{group}");
            // and it is a socket one can connect to
            tokio::net::UnixStream::connect(&sock)
                .await
                .expect("connect");
            drop(l);
        }
        // An unknown group: a clear error, and no socket left behind.
        let perms = UnixPermissions {
            mode: Some(0o660),
            group: Some("no-such-group-pec-milter-test".into()),
        };
        let e = Listener::bind_spec(&spec, &perms)
            .await
            .expect_err("unknown group");
        assert!(
            e.to_string()
                .contains("no group named \"no-such-group-pec-milter-test\""),
            "{e}"
        );
        assert!(!sock.exists(), "the socket is removed again");
    }
}
