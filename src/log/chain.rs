//! The line format of the message log and its hash chain. Pure.
//!
//! One JSON object per line (JSON Lines). A record's `prev` is the `hash`
//! of the record before it (for a file's first record, an `apertura`, the
//! last hash of the node's previous file, named in `prev_file`; empty for
//! a node's very first file); its `hash` is the SHA-256 (lowercase hex) of
//! the line as it would read without the hash: the JSON object up to and
//! excluding `,"hash":"..."`, closed by `}`. So the line is checked byte
//! for byte as written; a changed byte, a deleted, inserted or moved line
//! breaks the chain at that line.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::Event;

/// What each line holds: the event and where it sits in the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// 1 for a file's `apertura`, then +1 per line.
    pub seq: u64,
    /// The node that wrote it (its directory's name).
    pub node: String,
    /// When it was written (UTC).
    pub logged: DateTime<Utc>,
    /// The event's time in the provider's local time (Europe/Rome), as
    /// the holder's extract shows it.
    pub local: String,
    #[serde(flatten)]
    pub event: Event,
    /// The node's previous file (an `apertura` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_file: Option<String>,
    /// The hash of the record before this one ("" for a node's first).
    pub prev: String,
}

/// `,"hash":"` + 64 hex digits + `"}`.
const HASH_SUFFIX_LEN: usize = 9 + 64 + 2;

/// SHA-256 of `bytes`, lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(openssl::sha::sha256(bytes))
}

/// The line of `record` (without the newline) and its hash.
pub fn seal_line(record: &Record) -> Result<(String, String), serde_json::Error> {
    let body = serde_json::to_string(record)?;
    let hash = sha256_hex(body.as_bytes());
    // body ends with '}' (an object)
    let mut line = String::with_capacity(body.len() + HASH_SUFFIX_LEN);
    line.push_str(&body[..body.len() - 1]);
    line.push_str(",\"hash\":\"");
    line.push_str(&hash);
    line.push_str("\"}");
    Ok((line, hash))
}

/// Why one line does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("not a log record (no hash at the end of the line)")]
    NoHash,
    #[error("its hash does not match its content (the line was changed)")]
    HashMismatch,
    #[error("unreadable record: {0}")]
    Json(String),
}

/// Read one line: its record and its hash, checked against the content.
pub fn open_line(line: &str) -> Result<(Record, String), LineError> {
    let n = line.len();
    if n < HASH_SUFFIX_LEN + 2 || !line.is_char_boundary(n - HASH_SUFFIX_LEN) {
        return Err(LineError::NoHash);
    }
    let (head, tail) = line.split_at(n - HASH_SUFFIX_LEN);
    let hash = tail
        .strip_prefix(",\"hash\":\"")
        .and_then(|t| t.strip_suffix("\"}"))
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .ok_or(LineError::NoHash)?;
    let body = format!("{head}}}");
    if sha256_hex(body.as_bytes()) != hash {
        return Err(LineError::HashMismatch);
    }
    let record: Record = serde_json::from_str(&body).map_err(|e| LineError::Json(e.to_string()))?;
    Ok((record, hash.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::{Destinatario, Evento};

    fn record(seq: u64, prev: &str) -> Record {
        Record {
            seq,
            node: "mx1".into(),
            logged: DateTime::from_timestamp(1_765_000_000, 0).expect("t"),
            local: "2025-12-06T06:46:40+01:00".into(),
            event: Event {
                event: Evento::Accettazione,
                time: DateTime::from_timestamp(1_765_000_000, 0).expect("t"),
                pec_id: "opec.1@pec.demo.test".into(),
                msgid: Some("<m.1@client>".into()),
                related: vec![],
                sender: "mario@pec.demo.test".into(),
                recipients: vec![Destinatario {
                    address: "anna@pec.other.test".into(),
                    tipo: "certificato".into(),
                }],
                subject: "Città \"più\" bella".into(),
                provider: "Demo PEC S.p.A.".into(),
                outcome: "ok".into(),
                about: None,
            },
            prev_file: None,
            prev: prev.into(),
        }
    }

    #[test]
    fn a_line_reads_back_as_written() {
        let r = record(2, &"a".repeat(64));
        let (line, hash) = seal_line(&r).expect("line");
        assert!(!line.contains('\n'));
        assert!(line.ends_with(&format!(",\"hash\":\"{hash}\"}}")));
        let (back, h) = open_line(&line).expect("opens");
        assert_eq!((back, h), (r, hash));
    }

    #[test]
    fn any_changed_byte_is_seen() {
        let (line, _) = seal_line(&record(2, "")).expect("line");
        for i in 0..line.len() {
            let mut b = line.clone().into_bytes();
            b[i] ^= 0x01;
            let Ok(changed) = String::from_utf8(b) else {
                continue;
            };
            assert!(open_line(&changed).is_err(), "byte {i} changed unseen");
        }
        assert_eq!(open_line("{}"), Err(LineError::NoHash));
        assert_eq!(open_line(""), Err(LineError::NoHash));
    }
}
