//! The messages the roles take and the decisions they return: what an
//! edge hands over at end of message and what it must do with it.

use crate::pec::mime::{canonicalize_crlf, split_header_body};
use crate::spool::{SpoolOptions, SpoolWriter, Spooled};

/// One submission as the MTA hands it over at end of message.
#[derive(Debug, Clone)]
pub struct Submission {
    /// MTA queue id, for logs.
    pub queue_id: Option<String>,
    /// `{auth_authen}`: the authenticated holder.
    pub auth_user: String,
    /// SMTP reverse path, without angle brackets.
    pub mail_from: String,
    /// SMTP forward paths, without angle brackets.
    pub rcpts: Vec<String>,
    /// The message as submitted: header fields and body (CRLF), the body
    /// in memory or spooled to disk.
    pub message: Original,
}

/// What the MTA must do with the submission.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Replace the message by a built one (busta di trasporto or busta
    /// di anomalia): delete the header fields of the original that it does
    /// not inherit (see [`crate::pec::facts::is_inherited`]; `keep_message_id` for the
    /// anomaly envelope), add its own ones (`message.headers[inherited..]`),
    /// replace the body. Recipients unchanged.
    Rewrite {
        pec_id: String,
        /// The envelope; its body may be a spool file (a large original).
        message: SpooledMessage,
        /// How many of `message.headers` were copied from the original.
        inherited: usize,
        keep_message_id: bool,
    },
    /// Deliver the message as it is.
    Deliver { note: String },
    /// Not sent: a non-acceptance notice went to the holder.
    Discard { pec_id: String, reason: String },
    /// Refuse at SMTP level (5xx).
    Reject {
        code: u16,
        xcode: String,
        text: String,
    },
    /// Cannot decide now (a dependency failed): 4xx, the client retries.
    Tempfail { reason: String },
}

/// One inbound message at end of message.
#[derive(Debug, Clone)]
pub struct Inbound {
    pub queue_id: Option<String>,
    pub mail_from: String,
    /// Forward paths in our PEC domains.
    pub rcpts: Vec<String>,
    /// The message as received: its header block and its body, in memory
    /// or spooled to disk (a 100 MB envelope is read from the spool file
    /// mapped, never copied whole into memory).
    pub message: Original,
}

/// The original message as the access point holds it: its header block
/// (every field with its CRLF, without the empty line) and its body (CRLF
/// line ends), in memory or spooled to disk.
#[derive(Debug, Clone, Default)]
pub struct Original {
    pub header: Vec<u8>,
    pub body: Spooled,
}

impl Original {
    /// Split a whole message (line ends made CRLF) into header and body, in
    /// memory.
    pub fn from_bytes(message: &[u8]) -> Original {
        let canon = canonicalize_crlf(message);
        let (head, body) = split_header_body(&canon);
        Original {
            header: head.to_vec(),
            body: Spooled::from(body.to_vec()),
        }
    }

    /// Size of the whole message (header, empty line, body).
    pub fn len(&self) -> u64 {
        self.header.len() as u64 + 2 + self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Header, empty line and body in order, in pieces (see
    /// [`Spooled::for_each_chunk`]; blocking I/O for a body on disk).
    pub fn for_each_chunk<E: From<std::io::Error>>(
        &self,
        mut f: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        f(&self.header)?;
        f(b"\r\n")?;
        self.body.for_each_chunk(f)
    }

    /// The whole message in memory.
    pub fn to_vec(&self) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(usize::try_from(self.len()).unwrap_or(0));
        self.for_each_chunk::<std::io::Error>(|c| {
            out.extend_from_slice(c);
            Ok(())
        })?;
        Ok(out)
    }
}

/// A built message whose body may be on disk (the busta di trasporto of a
/// large original): header fields, each with its CRLF, and the body.
#[derive(Debug, Clone)]
pub struct SpooledMessage {
    pub headers: Vec<String>,
    pub body: Spooled,
}

impl SpooledMessage {
    /// The whole message (header fields, empty line, body) as one spooled
    /// body: in memory while small, else a spool file of `opts` (the body
    /// is copied there in pieces).
    pub fn into_spooled(self, opts: SpoolOptions) -> std::io::Result<Spooled> {
        let mut w = SpoolWriter::raw(opts);
        for h in &self.headers {
            w.write(h.as_bytes())?;
        }
        w.write(b"\r\n")?;
        self.body.for_each_chunk::<std::io::Error>(|c| w.write(c))?;
        w.finish()
    }

    /// The whole message in memory.
    pub fn to_bytes(&self) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        for h in &self.headers {
            out.extend_from_slice(h.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body.to_vec()?);
        Ok(out)
    }
}

impl From<crate::pec::build::BuiltMessage> for SpooledMessage {
    fn from(m: crate::pec::build::BuiltMessage) -> Self {
        SpooledMessage {
            headers: m.headers,
            body: Spooled::from(m.body),
        }
    }
}
