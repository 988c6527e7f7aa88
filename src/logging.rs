//! The daemon's own diagnostics (`tracing`): what `[logging]` says, set up
//! once at start. Not the legal message log (`[log]`, [`crate::log`]).
//!
//! - `format`: `text` (one human line per event) or `json` (one JSON object
//!   per line, the event's fields at the top level next to `timestamp`,
//!   `level` and `message`);
//! - `level`: a level (`info`) or a filter (`info,pec_milter::smtp=debug`);
//!   `PEC_MILTER_LOG` in the environment, when set, wins;
//! - `output`: `stderr`, or `syslog`: each event one RFC 3164 datagram
//!   (`<PRI>TIMESTAMP IDENT[PID]: LINE`) on the local syslog socket, its
//!   priority the facility (default `mail`, as OpenDKIM and Postfix) and
//!   the event's level (ERROR err, WARN warning, INFO info, DEBUG and TRACE
//!   debug: `mail.info` is `<22>`). The line has no timestamp of its own
//!   (syslog adds one) in `text`.
//!
//! The syslog framing is the `syslog` crate's (`Formatter3164`, its
//! datagram connection to a socket path); around it we keep what it does
//! not do: a send that fails (syslogd restarted and its socket made anew)
//! connects once more and sends again, and a line syslog cannot take is
//! written to stderr rather than lost.

use std::io::{self, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use serde::Deserialize;
use syslog::{Formatter3164, Logger, LoggerBackend, Severity};
use tracing::{Level, Metadata, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::{Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

/// The environment variable whose filter wins over `[logging] level`.
pub const ENV_FILTER: &str = "PEC_MILTER_LOG";

/// How an event is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One human line per event (the default).
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Where events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogOutput {
    #[default]
    Stderr,
    /// The local syslog socket (`syslog_socket`), one datagram per event.
    Syslog,
}

/// A syslog facility (RFC 5424 §6.2.1), by its usual name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyslogFacility {
    Kern,
    User,
    #[default]
    Mail,
    Daemon,
    Auth,
    Syslog,
    Lpr,
    News,
    Uucp,
    Cron,
    Authpriv,
    Ftp,
    Local0,
    Local1,
    Local2,
    Local3,
    Local4,
    Local5,
    Local6,
    Local7,
}

impl SyslogFacility {
    fn facility(self) -> syslog::Facility {
        use syslog::Facility as F;
        match self {
            Self::Kern => F::LOG_KERN,
            Self::User => F::LOG_USER,
            Self::Mail => F::LOG_MAIL,
            Self::Daemon => F::LOG_DAEMON,
            Self::Auth => F::LOG_AUTH,
            Self::Syslog => F::LOG_SYSLOG,
            Self::Lpr => F::LOG_LPR,
            Self::News => F::LOG_NEWS,
            Self::Uucp => F::LOG_UUCP,
            Self::Cron => F::LOG_CRON,
            Self::Authpriv => F::LOG_AUTHPRIV,
            Self::Ftp => F::LOG_FTP,
            Self::Local0 => F::LOG_LOCAL0,
            Self::Local1 => F::LOG_LOCAL1,
            Self::Local2 => F::LOG_LOCAL2,
            Self::Local3 => F::LOG_LOCAL3,
            Self::Local4 => F::LOG_LOCAL4,
            Self::Local5 => F::LOG_LOCAL5,
            Self::Local6 => F::LOG_LOCAL6,
            Self::Local7 => F::LOG_LOCAL7,
        }
    }

    /// The facility's code times 8, as it goes into `<PRI>`.
    pub fn code(self) -> u8 {
        self.facility() as u8
    }
}

/// Everything the set-up needs (from `[logging]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingOptions {
    pub format: LogFormat,
    /// A level or an `EnvFilter` directive list.
    pub level: String,
    pub output: Output,
}

/// Where events go, with what syslog needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Stderr,
    Syslog {
        socket: PathBuf,
        facility: SyslogFacility,
        ident: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("[logging] level {level:?}: {reason}")]
    Level { level: String, reason: String },
    #[error("[logging] syslog_socket {}: cannot connect: {error}", socket.display())]
    Syslog { socket: PathBuf, error: io::Error },
    #[error("the diagnostics are set up already: {0}")]
    Init(String),
}

const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

/// `level` as a filter: a level name, or a directive list (it has `=` or
/// `,`). A lone word that is not a level is an error, not a target filter
/// that would silence everything else.
pub fn parse_level(level: &str) -> Result<EnvFilter, LoggingError> {
    let bad = |reason: String| LoggingError::Level {
        level: level.to_owned(),
        reason,
    };
    let t = level.trim();
    if !t.contains(['=', ',']) && !LEVELS.contains(&t.to_ascii_lowercase().as_str()) {
        return Err(bad(format!(
            "use one of {} or a filter like \"info,pec_milter::smtp=debug\"",
            LEVELS.join(", ")
        )));
    }
    EnvFilter::builder()
        .parse(t)
        .map_err(|e| bad(e.to_string()))
}

/// The filter in force: `PEC_MILTER_LOG` when it is set and parses, else
/// `level`. The second value: the variable's text when it was set but did
/// not parse (to be reported once the set-up is done).
fn filter(level: &str) -> Result<(EnvFilter, Option<String>), LoggingError> {
    match std::env::var(ENV_FILTER) {
        Ok(v) if !v.trim().is_empty() => match EnvFilter::builder().parse(v.trim()) {
            Ok(f) => Ok((f, None)),
            Err(_) => Ok((parse_level(level)?, Some(v))),
        },
        _ => Ok((parse_level(level)?, None)),
    }
}

/// Set up the diagnostics of this process as `opts` says (once; a second
/// call is an error). With `output = "syslog"` the socket must take a
/// connection now: a wrong path is an error at start, not silence.
pub fn init(opts: &LoggingOptions) -> Result<(), LoggingError> {
    let (filter, bad_env) = filter(&opts.level)?;
    let layer = match &opts.output {
        Output::Stderr => {
            let ansi = io::stderr().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            fmt_layer(opts.format, io::stderr, ansi, true)
        }
        Output::Syslog {
            socket,
            facility,
            ident,
        } => fmt_layer(
            opts.format,
            Syslog::connect(socket, *facility, ident)?,
            false,
            false,
        ),
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(filter))
        .try_init()
        .map_err(|e| LoggingError::Init(e.to_string()))?;
    if let Some(v) = bad_env {
        tracing::warn!(
            value = %v,
            level = %opts.level,
            "{ENV_FILTER} is not a filter: [logging] level is used"
        );
    }
    Ok(())
}

/// The formatting layer of `format` writing to `writer`. `time`: a
/// timestamp in text lines (syslog adds its own); JSON always has one.
pub fn fmt_layer<S, W>(
    format: LogFormat,
    writer: W,
    ansi: bool,
    time: bool,
) -> Box<dyn Layer<S> + Send + Sync + 'static>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let base = tracing_subscriber::fmt::layer()
        .with_target(false)
        .with_writer(writer);
    match (format, time) {
        (LogFormat::Text, true) => base.with_ansi(ansi).boxed(),
        (LogFormat::Text, false) => base.with_ansi(false).without_time().boxed(),
        (LogFormat::Json, _) => base
            .with_ansi(false)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .boxed(),
    }
}

/// The local syslog socket as a `MakeWriter`: each event one datagram.
#[derive(Clone)]
pub struct Syslog {
    inner: Arc<Mutex<SyslogInner>>,
}

struct SyslogInner {
    socket: PathBuf,
    formatter: Formatter3164,
    logger: Option<Logger<LoggerBackend, Formatter3164>>,
}

impl Syslog {
    /// Connect to `socket` (a datagram socket, or a stream one as some
    /// syslogds have) as `ident[PID]` on `facility`.
    pub fn connect(
        socket: &Path,
        facility: SyslogFacility,
        ident: &str,
    ) -> Result<Syslog, LoggingError> {
        let formatter = Formatter3164 {
            facility: facility.facility(),
            hostname: None,
            process: ident.to_owned(),
            pid: std::process::id(),
        };
        let logger =
            syslog::unix_custom(formatter.clone(), socket).map_err(|e| LoggingError::Syslog {
                socket: socket.to_path_buf(),
                error: io_error(e),
            })?;
        Ok(Syslog {
            inner: Arc::new(Mutex::new(SyslogInner {
                socket: socket.to_path_buf(),
                formatter,
                logger: Some(logger),
            })),
        })
    }

    /// Send one line; on failure connect again and send once more; if
    /// syslog still cannot take it, write it to stderr.
    fn send(&self, severity: Severity, line: &str) {
        use syslog::LogFormat as _;
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        for _ in 0..2 {
            if inner.logger.is_none() {
                inner.logger = syslog::unix_custom(inner.formatter.clone(), &inner.socket).ok();
            }
            let Some(logger) = inner.logger.as_mut() else {
                break;
            };
            match logger.formatter.format(&mut logger.backend, severity, line) {
                Ok(()) => return,
                Err(_) => inner.logger = None,
            }
        }
        let _ = writeln!(
            io::stderr(),
            "{}[{}]: (syslog {} unreachable) {line}",
            inner.formatter.process,
            inner.formatter.pid,
            inner.socket.display()
        );
    }
}

/// The I/O error inside the syslog crate's error (it wraps the connect
/// error in an initialization error), for a message without its layers.
fn io_error(e: syslog::Error) -> io::Error {
    match e {
        syslog::Error::Io(e) | syslog::Error::Write(e) => e,
        syslog::Error::Initialization(inner) => match inner.downcast::<syslog::Error>() {
            Ok(e) => io_error(*e),
            Err(other) => io::Error::other(other.to_string()),
        },
    }
}

/// The syslog severity of a tracing level.
fn severity(level: &Level) -> Severity {
    match *level {
        Level::ERROR => Severity::LOG_ERR,
        Level::WARN => Severity::LOG_WARNING,
        Level::INFO => Severity::LOG_INFO,
        _ => Severity::LOG_DEBUG,
    }
}

/// One event's line, sent when the formatter is done with it (dropped).
pub struct SyslogLine<'a> {
    syslog: &'a Syslog,
    severity: Severity,
    buf: Vec<u8>,
}

impl Write for SyslogLine<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for SyslogLine<'_> {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        // the text format pads the level (" INFO"): no blank after "IDENT[PID]: "
        let line = text.trim_start_matches(' ').trim_end_matches(['\n', '\r']);
        if !line.is_empty() {
            self.syslog.send(self.severity, line);
        }
    }
}

impl<'a> MakeWriter<'a> for Syslog {
    type Writer = SyslogLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        SyslogLine {
            syslog: self,
            severity: Severity::LOG_INFO,
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        SyslogLine {
            syslog: self,
            severity: severity(meta.level()),
            buf: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;
    use std::time::Duration;

    /// What a layer wrote, line by line.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("buf").extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buf {
        type Writer = Buf;
        fn make_writer(&'a self) -> Buf {
            self.clone()
        }
    }

    impl Buf {
        fn lines(&self) -> Vec<String> {
            let bytes = self.0.lock().expect("buf").clone();
            String::from_utf8(bytes)
                .expect("utf-8")
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    /// The decision event of the access point, as it is logged.
    fn decision() {
        tracing::info!(
            queue_id = "4ABC123",
            pec_id = %"opec21.20260101.abcd@pec.demo.test",
            sender = %"mario.rossi@pec.demo.test",
            recipients = 2usize,
            "accettazione: envelope signed, receipt sent"
        );
        tracing::warn!(queue_id = "4ABC124", reason = %"clamd down", "temporary failure");
        tracing::debug!("not shown at info");
    }

    fn with_layer(
        layer: Box<dyn Layer<tracing_subscriber::Registry> + Send + Sync>,
        f: impl FnOnce(),
    ) {
        let sub = tracing_subscriber::registry()
            .with(layer.with_filter(parse_level("info").expect("info")));
        tracing::subscriber::with_default(sub, f);
    }

    #[test]
    fn json_lines_carry_the_fields_at_the_top() {
        let buf = Buf::default();
        with_layer(
            fmt_layer(LogFormat::Json, buf.clone(), false, true),
            decision,
        );
        let lines = buf.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        let v: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| serde_json::from_str(l).expect("every line is JSON"))
            .collect();
        assert_eq!(v[0]["level"], "INFO");
        assert_eq!(
            v[0]["message"],
            "accettazione: envelope signed, receipt sent"
        );
        assert_eq!(v[0]["queue_id"], "4ABC123");
        assert_eq!(v[0]["pec_id"], "opec21.20260101.abcd@pec.demo.test");
        assert_eq!(v[0]["recipients"], 2);
        assert!(v[0]["timestamp"].is_string());
        assert_eq!(v[1]["level"], "WARN");
        assert_eq!(v[1]["reason"], "clamd down");
    }

    #[test]
    fn text_lines_are_as_before() {
        let buf = Buf::default();
        with_layer(
            fmt_layer(LogFormat::Text, buf.clone(), false, false),
            decision,
        );
        let lines = buf.lines();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with(" INFO accettazione: envelope signed, receipt sent queue_id=\"4ABC123\" pec_id=opec21.20260101.abcd@pec.demo.test"),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with(" WARN temporary failure"),
            "{}",
            lines[1]
        );
    }

    /// The refusal of a signed index as the README quotes it: `error` a
    /// Display field (`%e`), written unquoted in `text` (only `&str`
    /// values, as `queue_id` above, are quoted).
    #[test]
    fn a_refused_signed_index_is_logged_as_the_readme_quotes_it() {
        use crate::crypto::Pki;
        use crate::crypto::verify::TrustStore;
        use crate::index::{IndexSource, ProviderEntry, ProviderIndex, ldif};
        use openssl::cms::{CMSOptions, CmsContentInfo};
        use openssl::pkey::PKey;

        let pki = Pki::generate("Publisher", "pec.a.test", 30).expect("pki");
        let cert = pki.cert().expect("cert");
        let key = PKey::private_key_from_pem(&pki.key_pem).expect("key");
        let entry = ProviderEntry::for_certificate(
            "A",
            cert.to_der().expect("der"),
            "ricevute@pec.a.test".into(),
            &["pec.a.test".to_string()],
        );
        let text = ldif::write_directory(&[entry]);
        let signed = CmsContentInfo::sign(
            Some(&cert),
            Some(&key),
            None,
            Some(text.as_bytes()),
            CMSOptions::BINARY,
        )
        .and_then(|cms| cms.to_der())
        .expect("sign");
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("igpec.ldif.p7m");
        std::fs::write(&path, signed).expect("write");
        let index = ProviderIndex::new(IndexSource::SignedLdif {
            path: path.clone(),
            signed_by: TrustStore::from_pem_bytes(&[&pki.ca_cert_pem]).expect("anchor"),
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(index.refresh()).expect("the signed copy loads");
        // a plain LDIF in its place
        std::fs::write(&path, &text).expect("write");
        let buf = Buf::default();
        with_layer(
            fmt_layer(LogFormat::Text, buf.clone(), false, false),
            || {
                let _ = rt.block_on(index.refresh_logged());
            },
        );
        let lines = buf.lines();
        let file = path.display();
        assert_eq!(lines.len(), 1, "{lines:?}");
        let expected = format!(
            " WARN providers' index refresh failed; keeping the previous copy \
             source=signed LDIF file {file} error={file}: a plain LDIF, not signed \
             ([index] signed_by expects the signed .p7m as published) age_secs="
        );
        assert!(lines[0].starts_with(&expected), "{}", lines[0]);
    }

    #[test]
    fn levels_and_filters() {
        for ok in [
            "info",
            "WARN",
            "off",
            "info,pec_milter::smtp=debug",
            "pec_milter=trace",
        ] {
            assert!(parse_level(ok).is_ok(), "{ok}");
        }
        for bad in ["infoo", "verbose", "", "info,pec_milter=loud"] {
            let e = parse_level(bad).expect_err(bad).to_string();
            assert!(e.contains("[logging] level"), "{e}");
        }
    }

    #[test]
    fn facilities() {
        assert_eq!(SyslogFacility::Mail.code(), 16);
        assert_eq!(SyslogFacility::Daemon.code(), 24);
        assert_eq!(SyslogFacility::Local7.code(), 184);
        assert_eq!(SyslogFacility::default(), SyslogFacility::Mail);
    }

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = vec![0u8; 65536];
        let n = sock.recv(&mut buf).expect("a datagram");
        String::from_utf8(buf[..n].to_vec()).expect("utf-8")
    }

    /// Each event one RFC 3164 datagram: `<PRI>` of the facility and the
    /// level, `IDENT[PID]: `, the text line without a timestamp of its own.
    #[test]
    fn syslog_datagrams_have_the_priority_of_facility_and_level() {
        let d = tempfile::tempdir().expect("tmp");
        let path = d.path().join("log.sock");
        let server = UnixDatagram::bind(&path).expect("bind");
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let syslog = Syslog::connect(&path, SyslogFacility::Mail, "pec-milter").expect("connect");
        with_layer(
            fmt_layer(LogFormat::Text, syslog.clone(), false, false),
            || {
                decision();
                tracing::error!(error = %"boom", "state store: write failed");
            },
        );
        let pid = std::process::id();
        let info = recv(&server);
        assert!(info.starts_with("<22>"), "mail.info is 22: {info}");
        assert!(info.contains(&format!(" pec-milter[{pid}]: ")), "{info}");
        assert!(
            info.ends_with(" INFO accettazione: envelope signed, receipt sent queue_id=\"4ABC123\" pec_id=opec21.20260101.abcd@pec.demo.test sender=mario.rossi@pec.demo.test recipients=2"),
            "{info}"
        );
        let warn = recv(&server);
        assert!(warn.starts_with("<20>"), "mail.warning is 20: {warn}");
        let err = recv(&server);
        assert!(err.starts_with("<19>"), "mail.err is 19: {err}");

        // JSON over syslog, another facility
        let syslog = Syslog::connect(&path, SyslogFacility::Local3, "pec-b").expect("connect");
        with_layer(fmt_layer(LogFormat::Json, syslog, false, false), decision);
        let line = recv(&server);
        assert!(line.starts_with("<158>"), "local3.info = 19*8+6: {line}");
        let json = line
            .split_once(&format!("pec-b[{pid}]: "))
            .map(|(_, j)| j)
            .expect("ident");
        let v: serde_json::Value = serde_json::from_str(json).expect("JSON");
        assert_eq!(v["queue_id"], "4ABC123");
    }

    #[test]
    fn a_syslog_that_went_away_is_connected_again() {
        let d = tempfile::tempdir().expect("tmp");
        let path = d.path().join("log.sock");
        let server = UnixDatagram::bind(&path).expect("bind");
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let syslog = Syslog::connect(&path, SyslogFacility::Mail, "pec-milter").expect("connect");
        syslog.send(Severity::LOG_INFO, "one");
        assert!(recv(&server).ends_with(": one"));
        // syslogd restarted: its socket made anew; the next line reaches it
        drop(server);
        std::fs::remove_file(&path).expect("rm");
        let server = UnixDatagram::bind(&path).expect("bind again");
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        syslog.send(Severity::LOG_WARNING, "two");
        let line = recv(&server);
        assert!(
            line.starts_with("<20>") && line.ends_with(": two"),
            "{line}"
        );
    }

    #[test]
    fn no_syslog_socket_is_an_error_naming_it() {
        let e = match Syslog::connect(
            Path::new("/nonexistent/pec-milter/log.sock"),
            SyslogFacility::Mail,
            "pec-milter",
        ) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("connected to nothing"),
        };
        assert_eq!(
            e,
            "[logging] syslog_socket /nonexistent/pec-milter/log.sock: cannot connect: \
             No such file or directory (os error 2)"
        );
    }
}
