//! The LMTP edge: the last hop into the mailbox.
//!
//! PEC's legal value is the delivery receipt, issued only when the message
//! is really in the recipient's mailbox. Postfix ignores DSN requests on
//! recipients a milter adds, so pec-milter owns the last hop: Postfix
//! delivers the PEC domains' mailboxes to pec-milter over LMTP
//! (`virtual_transport = lmtp:inet:127.0.0.1:2424`, [`server`]), pec-milter
//! hands each message to the real mailbox store ([`MailboxStore`]: a Dovecot
//! LMTP server through [`client::LmtpClient`], or the embedded
//! [`maildir::Maildir`] writer) and reads its answer per recipient
//! ([`RcptOutcome`]), which it passes back to Postfix.
//!
//! - [`server`]: our LMTP server (RFC 2033), which Postfix delivers to;
//! - [`client`]: the downstream LMTP client (Dovecot);
//! - [`maildir`]: the embedded Maildir writer.

pub mod client;
pub mod maildir;
pub mod server;

use std::fmt;

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

/// This host's name, for greetings and Maildir file names (`localhost`
/// when it cannot be read).
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "localhost".to_owned())
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
    /// `bytes` is its [`view`](crate::spool::Spooled::view). A store that
    /// works off the async workers takes the (cheaply cloned) spool along
    /// instead of copying the bytes.
    async fn deliver_spooled(
        &self,
        sender: &str,
        rcpts: &[String],
        _message: &crate::spool::Spooled,
        bytes: &[u8],
    ) -> Vec<RcptOutcome> {
        self.deliver(sender, rcpts, bytes).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_lines() {
        assert_eq!(RcptOutcome::Delivered.reply_line(), "250 2.0.0 Ok");
        assert_eq!(
            RcptOutcome::temporary(452, "4.2.2", "mailbox full").reply_line(),
            "452 4.2.2 mailbox full"
        );
        assert_eq!(
            RcptOutcome::permanent(550, "5.1.1", "user unknown").reply_line(),
            "550 5.1.1 user unknown"
        );
        // Wrong classes and junk are repaired.
        assert_eq!(
            RcptOutcome::temporary(550, "5.1.1", "a\r\nb").reply_line(),
            "451 4.0.0 a  b"
        );
        assert_eq!(
            RcptOutcome::permanent(250, "", "").reply_line(),
            "554 5.0.0 Permanent failure"
        );
        let long = RcptOutcome::permanent(552, "5.2.2", "é".repeat(600)).reply_line();
        assert!(long.len() <= MAX_REPLY_LINE);
    }

    #[test]
    fn outcomes_from_replies() {
        assert_eq!(
            RcptOutcome::from_reply(250, "2.0.0 <a@b> x Saved"),
            RcptOutcome::Delivered
        );
        assert_eq!(
            RcptOutcome::from_reply(550, "5.1.1 <a@b> User doesn't exist: a@b"),
            RcptOutcome::permanent(550, "5.1.1", "<a@b> User doesn't exist: a@b")
        );
        assert_eq!(
            RcptOutcome::from_reply(451, "try later"),
            RcptOutcome::temporary(451, "4.0.0", "try later")
        );
        assert!(matches!(
            RcptOutcome::from_reply(354, "go on"),
            RcptOutcome::Temporary { code: 451, .. }
        ));
    }
}
