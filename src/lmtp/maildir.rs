//! The embedded mailbox store: writes each message into the recipient's
//! Maildir (the format Dovecot, Courier and most IMAP servers read).
//!
//! - Recipient `user@domain` → `base/<domain>/<local>/`, both lowercased,
//!   a `+ext` on the local part stripped (`Anna+x@Pec.Test` →
//!   `base/pec.test/anna/`).
//! - The mailbox exists iff that directory exists: the administrator
//!   creates mailboxes. Otherwise `550 5.1.1 user unknown`. Its `tmp/`,
//!   `new/` and `cur/` are created when missing. An address that cannot
//!   name a directory (`/`, a leading `.`, control characters, no domain)
//!   gets `553 5.1.3`. If `base` itself is missing or unreadable, every
//!   recipient gets `451 4.3.0` (an unmounted store must not bounce mail).
//! - Quota: with `Some(q)`, when the size of the files in `new/` and `cur/`
//!   plus this message exceeds `q`, `552 5.2.2 mailbox full`. Two
//!   deliveries at the same moment may both pass the check (the quota is a
//!   soft limit by at most one message per concurrent delivery).
//! - Delivery: written to `tmp/<unique>`, fsync'd, hard-linked into `new/`
//!   (never overwriting an existing file), the `tmp/` name removed, and the
//!   `new/` directory fsync'd: once [`RcptOutcome::Delivered`] is returned
//!   the message survives a crash. Unique names follow the Maildir
//!   convention `<secs>.M<usec>P<pid>Q<n>.<host>,S=<size>` (`/` and `:` in
//!   the host name escaped as `\057` and `\072`).
//! - The message is stored **as received, with CRLF line ends** (not the
//!   LF of traditional Maildirs): the bytes in the mailbox are exactly the
//!   bytes the PEC signature covers. Nothing is added (no `Return-Path:` /
//!   `Delivered-To:`). Dovecot reads CRLF Maildir files correctly.
//! - Any disk error → `451 4.3.0` for that recipient (Postfix retries).
//!   The blocking file I/O runs in `spawn_blocking`.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::{MailboxStore, RcptOutcome};
use crate::spool::Spooled;

/// Deliveries made by this process (the `Q<n>` of the unique names).
static DELIVERIES: AtomicU64 = AtomicU64::new(0);

/// The embedded Maildir writer.
#[derive(Debug, Clone)]
pub struct Maildir {
    base: PathBuf,
    quota: Option<u64>,
    host: String,
}

impl Maildir {
    /// Mailboxes under `base` (`base/<domain>/<local>/`); `quota` in octets
    /// per mailbox, None for no limit.
    pub fn new(base: PathBuf, quota: Option<u64>) -> Self {
        let host = super::hostname()
            .replace('/', "\\057")
            .replace(':', "\\072");
        Self { base, quota, host }
    }

    /// The directory of `rcpt`'s mailbox (whether it exists or not), or the
    /// outcome when the address cannot name one.
    pub fn mailbox_dir(&self, rcpt: &str) -> Result<PathBuf, RcptOutcome> {
        let bad = || RcptOutcome::permanent(553, "5.1.3", "bad recipient address syntax");
        let (local, domain) = rcpt.rsplit_once('@').ok_or_else(bad)?;
        let local = local.split('+').next().unwrap_or(local).to_lowercase();
        let domain = domain.to_lowercase();
        for part in [&local, &domain] {
            if part.is_empty()
                || part.starts_with('.')
                || part.contains('/')
                || part.chars().any(|c| c.is_control())
            {
                return Err(bad());
            }
        }
        Ok(self.base.join(domain).join(local))
    }

    /// Deliver to every recipient, in order (blocking).
    fn deliver_blocking(&self, rcpts: &[String], message: &[u8]) -> Vec<RcptOutcome> {
        match fs::metadata(&self.base) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                tracing::error!(base = %self.base.display(), "Maildir base is not a directory");
                return vec![store_unavailable(); rcpts.len()];
            }
            Err(e) => {
                tracing::error!(base = %self.base.display(), error = %e, "Maildir base not available");
                return vec![store_unavailable(); rcpts.len()];
            }
        }
        rcpts
            .iter()
            .map(|rcpt| {
                let outcome = self.deliver_one(rcpt, message);
                tracing::debug!(recipient = %rcpt, outcome = %outcome, "Maildir delivery");
                outcome
            })
            .collect()
    }

    fn deliver_one(&self, rcpt: &str, message: &[u8]) -> RcptOutcome {
        let dir = match self.mailbox_dir(rcpt) {
            Ok(d) => d,
            Err(outcome) => return outcome,
        };
        match fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return user_unknown(),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                // ENOTDIR: a file where the domain directory would be
                return user_unknown();
            }
            Err(e) => return disk_error(&dir, "stat", &e),
        }
        for sub in ["tmp", "new", "cur"] {
            let p = dir.join(sub);
            if let Err(e) = fs::create_dir_all(&p) {
                return disk_error(&p, "create", &e);
            }
        }
        if let Some(quota) = self.quota {
            let used = match mailbox_size(&dir) {
                Ok(n) => n,
                Err(e) => return disk_error(&dir, "size", &e),
            };
            if used.saturating_add(message.len() as u64) > quota {
                tracing::info!(recipient = %rcpt, used, size = message.len(), quota, "Maildir over quota");
                return RcptOutcome::permanent(552, "5.2.2", "mailbox full");
            }
        }
        match self.write(&dir, message) {
            Ok(path) => {
                tracing::debug!(recipient = %rcpt, file = %path.display(), "delivered to Maildir");
                RcptOutcome::Delivered
            }
            Err(e) => disk_error(&dir, "write", &e),
        }
    }

    /// tmp/<unique> → fsync → link into new/ → unlink tmp → fsync new/.
    fn write(&self, dir: &Path, message: &[u8]) -> io::Result<PathBuf> {
        let new_dir = dir.join("new");
        for _ in 0..16 {
            let name = self.unique_name(message.len());
            let tmp = dir.join("tmp").join(&name);
            let mut f = match OpenOptions::new().write(true).create_new(true).open(&tmp) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            };
            let written = f.write_all(message).and_then(|()| f.sync_all());
            drop(f);
            if let Err(e) = written {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
            let target = new_dir.join(&name);
            match fs::hard_link(&tmp, &target) {
                Ok(()) => {
                    let _ = fs::remove_file(&tmp);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let _ = fs::remove_file(&tmp);
                    continue;
                }
                Err(_) => {
                    // File systems without hard links: rename (the name is
                    // unique, checked just before).
                    if target.exists() {
                        let _ = fs::remove_file(&tmp);
                        continue;
                    }
                    if let Err(e) = fs::rename(&tmp, &target) {
                        let _ = fs::remove_file(&tmp);
                        return Err(e);
                    }
                }
            }
            File::open(&new_dir)?.sync_all()?;
            return Ok(target);
        }
        Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "no unique Maildir file name after 16 tries",
        ))
    }

    fn unique_name(&self, size: usize) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let q = DELIVERIES.fetch_add(1, Ordering::Relaxed);
        format!(
            "{}.M{}P{}Q{}.{},S={}",
            now.as_secs(),
            now.subsec_micros(),
            std::process::id(),
            q,
            self.host,
            size
        )
    }
}

/// Size of the messages in a Maildir: its `new/` and `cur/` files.
fn mailbox_size(dir: &Path) -> io::Result<u64> {
    Ok(dir_size(&dir.join("new"))?.saturating_add(dir_size(&dir.join("cur"))?))
}

/// Total size of the regular files directly in `dir` (0 when it is gone).
fn dir_size(dir: &Path) -> io::Result<u64> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut total = 0u64;
    for entry in entries {
        let entry = entry?;
        match entry.metadata() {
            Ok(m) if m.is_file() => total = total.saturating_add(m.len()),
            Ok(_) => {}
            // moved to cur/ or deleted meanwhile by the IMAP server
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

fn user_unknown() -> RcptOutcome {
    RcptOutcome::permanent(550, "5.1.1", "user unknown")
}

fn store_unavailable() -> RcptOutcome {
    RcptOutcome::temporary(451, "4.3.0", "mail store not available")
}

fn disk_error(path: &Path, what: &str, e: &io::Error) -> RcptOutcome {
    tracing::warn!(path = %path.display(), step = what, error = %e, "Maildir delivery failed");
    RcptOutcome::temporary(451, "4.3.0", format!("mailbox {what} error"))
}

#[async_trait::async_trait]
impl MailboxStore for Maildir {
    async fn deliver(&self, _sender: &str, rcpts: &[String], message: &[u8]) -> Vec<RcptOutcome> {
        if rcpts.is_empty() {
            return Vec::new();
        }
        let this = self.clone();
        let rcpts_owned = rcpts.to_vec();
        let message: Arc<[u8]> = Arc::from(message);
        match tokio::task::spawn_blocking(move || this.deliver_blocking(&rcpts_owned, &message))
            .await
        {
            Ok(outcomes) => outcomes,
            Err(e) => {
                tracing::error!(error = %e, "Maildir delivery task failed");
                vec![RcptOutcome::temporary(451, "4.3.0", "internal error"); rcpts.len()]
            }
        }
    }

    /// The spool goes to the blocking task (a 100 MB message is not copied
    /// to get there); mapped again there.
    async fn deliver_spooled(
        &self,
        _sender: &str,
        rcpts: &[String],
        message: &Spooled,
        _bytes: &[u8],
    ) -> Vec<RcptOutcome> {
        if rcpts.is_empty() {
            return Vec::new();
        }
        let this = self.clone();
        let rcpts_owned = rcpts.to_vec();
        let message = message.clone();
        match tokio::task::spawn_blocking(move || match message.view() {
            Ok(bytes) => this.deliver_blocking(&rcpts_owned, &bytes),
            Err(e) => {
                tracing::error!(error = %e, "Maildir delivery: cannot read the spooled message");
                vec![store_unavailable(); rcpts_owned.len()]
            }
        })
        .await
        {
            Ok(outcomes) => outcomes,
            Err(e) => {
                tracing::error!(error = %e, "Maildir delivery task failed");
                vec![RcptOutcome::temporary(451, "4.3.0", "internal error"); rcpts.len()]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mailbox_dirs() {
        let m = Maildir::new(PathBuf::from("/srv/mail"), None);
        assert_eq!(
            m.mailbox_dir("Anna.Bianchi+ext@Pec.B.Test").unwrap(),
            PathBuf::from("/srv/mail/pec.b.test/anna.bianchi")
        );
        for bad in [
            "nodomain",
            "../x@pec.test",
            "a/b@pec.test",
            "a@..",
            "a@",
            "+x@pec.test",
            "a@x\0y",
        ] {
            assert!(m.mailbox_dir(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unique_names_differ() {
        let m = Maildir::new(PathBuf::from("/x"), None);
        let a = m.unique_name(10);
        let b = m.unique_name(10);
        assert_ne!(a, b);
        assert!(a.ends_with(",S=10"));
        assert!(!a.contains('/'));
    }
}
