//! The ports: what the roles need from the world, as traits the edges
//! implement (clamd, SMTP reinjection, the providers' index, the holders'
//! directory, the mailbox store), each with a typed error. An error always means "cannot tell
//! now": the role answers 4xx and the MTA retries; it never guesses.

use std::fmt;

use crate::pec::TipoDestinatario;
use crate::roles::message::Original;
use crate::spool::Spooled;

/// The error of whatever implements a port (clamd's, the SMTP client's,
/// the index's), kept whole for the log.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a scan gave no verdict. Never taken as "clean".
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The message could not be read (a spool file).
    #[error("reading the spooled message: {0}")]
    Read(#[source] std::io::Error),
    /// The scanner could not be reached or gave no verdict.
    #[error("{0}")]
    Scanner(BoxError),
}

/// Why a generated message could not be handed to the MTA.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InjectError(pub BoxError);

impl From<String> for InjectError {
    fn from(s: String) -> Self {
        InjectError(s.into())
    }
}

impl From<&str> for InjectError {
    fn from(s: &str) -> Self {
        InjectError(s.into())
    }
}

/// Why the recipient directory cannot answer now (e.g. no copy of the
/// providers' index loaded yet).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DirectoryError(pub BoxError);

/// Why the holders' directory cannot say now which addresses a login owns
/// (the server is down, slow, or answered with an error).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoginError(pub BoxError);

/// The antivirus verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Clean,
    Infected(String),
}

/// Scans a message. An error means "cannot tell": the MTA retries later.
#[async_trait::async_trait]
pub trait Scanner: Send + Sync {
    async fn scan(&self, message: &[u8]) -> Result<Verdict, ScanError>;

    /// Scan a message whose body may be on disk. The default reads it
    /// into memory and calls [`scan`](Self::scan); a real scanner streams
    /// it (clamd INSTREAM).
    async fn scan_original(&self, message: &Original) -> Result<Verdict, ScanError> {
        let bytes = message.to_vec().map_err(ScanError::Read)?;
        self.scan(&bytes).await
    }
}

/// Injects a generated message back into the MTA (byte-exact).
#[async_trait::async_trait]
pub trait Injector: Send + Sync {
    async fn inject(&self, from: &str, to: &[String], message: &[u8]) -> Result<(), InjectError>;
}

/// Tells `certificato` from `esterno` recipients. An error means the
/// answer is unknown now (never guess "esterno").
pub trait RecipientDirectory: Send + Sync {
    fn tipo(&self, address: &str) -> Result<TipoDestinatario, DirectoryError>;
}

/// Which sender addresses a SASL login owns, where the site keeps its
/// holders in a directory (LDAP). Asked only when neither the login itself
/// nor the `[holders] logins` file gives the address. An error means
/// "cannot tell now": the access point answers 4xx, never "owned".
#[async_trait::async_trait]
pub trait LoginDirectory: Send + Sync {
    /// The addresses `login` may submit as (any case; none when the
    /// directory does not know the login).
    async fn owned_by(&self, login: &str) -> Result<Vec<String>, LoginError>;
}

/// A fixed list of certified domains from the configuration (until the
/// providers' index fills this in).
#[derive(Debug, Clone)]
pub struct StaticDirectory {
    domains: Vec<String>,
}

impl StaticDirectory {
    pub fn new(domains: &[String]) -> Self {
        StaticDirectory {
            domains: domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
        }
    }
}

impl RecipientDirectory for StaticDirectory {
    fn tipo(&self, address: &str) -> Result<TipoDestinatario, DirectoryError> {
        let domain = address
            .rsplit_once('@')
            .map(|(_, d)| d.to_ascii_lowercase())
            .unwrap_or_default();
        Ok(if self.domains.contains(&domain) {
            TipoDestinatario::Certificato
        } else {
            TipoDestinatario::Esterno
        })
    }
}

/// The mailbox store's answer for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptOutcome {
    /// The message is in the recipient's mailbox.
    Delivered,
    /// 4xx: try again later (no receipt yet).
    Temporary {
        code: u16,
        enhanced: String,
        text: String,
    },
    /// 5xx: will never work (unknown user 5.1.1, over quota 5.2.2, ...).
    Permanent {
        code: u16,
        enhanced: String,
        text: String,
    },
}

impl RcptOutcome {
    /// A temporary failure; `enhanced` like `"4.3.0"`.
    pub fn temporary(code: u16, enhanced: &str, text: impl Into<String>) -> Self {
        Self::Temporary {
            code,
            enhanced: enhanced.to_owned(),
            text: text.into(),
        }
    }

    /// A permanent failure; `enhanced` like `"5.1.1"`.
    pub fn permanent(code: u16, enhanced: &str, text: impl Into<String>) -> Self {
        Self::Permanent {
            code,
            enhanced: enhanced.to_owned(),
            text: text.into(),
        }
    }

    /// True for [`RcptOutcome::Delivered`].
    pub fn is_delivered(&self) -> bool {
        matches!(self, Self::Delivered)
    }

    /// The outcome of one LMTP/SMTP reply: 2xx delivered, 4xx temporary,
    /// 5xx permanent. `text` is the reply text after the code; a leading
    /// enhanced status code (`5.1.1`) is split off into `enhanced` (when
    /// absent, `"4.0.0"` / `"5.0.0"`). Any other code (1xx, 3xx, 6xx..) is a
    /// protocol error: temporary `451 4.5.0`.
    pub fn from_reply(code: u16, text: &str) -> Self {
        let (enhanced, rest) = split_enhanced(text);
        match code {
            200..=299 => Self::Delivered,
            400..=499 => Self::Temporary {
                code,
                enhanced: enhanced
                    .filter(|e| e.starts_with('4'))
                    .unwrap_or("4.0.0")
                    .to_owned(),
                text: rest.to_owned(),
            },
            500..=599 => Self::Permanent {
                code,
                enhanced: enhanced
                    .filter(|e| e.starts_with('5'))
                    .unwrap_or("5.0.0")
                    .to_owned(),
                text: rest.to_owned(),
            },
            _ => Self::temporary(
                451,
                "4.5.0",
                format!("unexpected reply from the mailbox store: {code} {text}"),
            ),
        }
    }

    /// The reply line for our LMTP server, without CRLF: `250 2.0.0 Ok`,
    /// `452 4.2.2 mailbox full`, `550 5.1.1 user unknown`, ...
    ///
    /// Always well-formed whatever the fields hold: a code of the wrong
    /// class becomes 451 / 554, an enhanced code that is missing or of the
    /// wrong class becomes `4.0.0` / `5.0.0`, CR, LF and other control
    /// characters in the text become spaces, and the text is cut to keep
    /// the line within 512 octets.
    pub fn reply_line(&self) -> String {
        let (code, enhanced, text, class) = match self {
            Self::Delivered => return "250 2.0.0 Ok".to_owned(),
            Self::Temporary {
                code,
                enhanced,
                text,
            } => {
                let code = if (400..500).contains(code) {
                    *code
                } else {
                    451
                };
                (code, enhanced, text, '4')
            }
            Self::Permanent {
                code,
                enhanced,
                text,
            } => {
                let code = if (500..600).contains(code) {
                    *code
                } else {
                    554
                };
                (code, enhanced, text, '5')
            }
        };
        let enhanced = if is_enhanced(enhanced) && enhanced.starts_with(class) {
            enhanced.clone()
        } else {
            format!("{class}.0.0")
        };
        let clean: String = text
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let mut clean = clean.trim().to_owned();
        if clean.is_empty() {
            clean = if class == '4' {
                "Temporary failure".to_owned()
            } else {
                "Permanent failure".to_owned()
            };
        }
        let mut line = format!("{code} {enhanced} {clean}");
        truncate_utf8(&mut line, MAX_REPLY_LINE);
        line
    }
}

impl fmt::Display for RcptOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reply_line())
    }
}

/// Longest reply line we write (RFC 5321 §4.5.3.1.5: 512 octets with CRLF).
pub(crate) const MAX_REPLY_LINE: usize = 510;

/// Cut `s` to at most `max` bytes on a character boundary.
pub(crate) fn truncate_utf8(s: &mut String, max: usize) {
    if s.len() > max {
        let mut end = max;
        while end > 0 && !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// `d.d.d` with 1–3 digits per part and the class 2, 4 or 5 (RFC 3463).
pub(crate) fn is_enhanced(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
        && matches!(parts[0], "2" | "4" | "5")
}

/// Split a leading enhanced status code off a reply text:
/// `"5.1.1 <a@b> User doesn't exist"` → `(Some("5.1.1"), "<a@b> User doesn't exist")`.
pub(crate) fn split_enhanced(text: &str) -> (Option<&str>, &str) {
    let text = text.trim();
    let (first, rest) = text.split_once(' ').unwrap_or((text, ""));
    if is_enhanced(first) {
        (Some(first), rest.trim_start())
    } else {
        (None, text)
    }
}

/// Where messages finally go: a Dovecot LMTP server or an embedded Maildir
/// writer.
#[async_trait::async_trait]
pub trait MailboxStore: Send + Sync {
    /// Deliver one message to several recipients; one outcome per
    /// recipient, in order. An I/O failure of the store is Temporary for
    /// every recipient.
    async fn deliver(&self, sender: &str, rcpts: &[String], message: &[u8]) -> Vec<RcptOutcome>;

    /// [`deliver`](Self::deliver) of a message the LMTP server spooled;
    /// `bytes` is its [`view`](Spooled::view). A store that
    /// works off the async workers takes the (cheaply cloned) spool along
    /// instead of copying the bytes.
    async fn deliver_spooled(
        &self,
        sender: &str,
        rcpts: &[String],
        _message: &Spooled,
        bytes: &[u8],
    ) -> Vec<RcptOutcome> {
        self.deliver(sender, rcpts, bytes).await
    }
}
