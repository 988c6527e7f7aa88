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

pub(crate) use crate::roles::ports::{MAX_REPLY_LINE, split_enhanced, truncate_utf8};
pub use crate::roles::{MailboxStore, RcptOutcome};

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
