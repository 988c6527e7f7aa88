//! PEC messages inside other messages (issue 18): receipts and envelopes
//! forwarded as `message/rfc822` attachments, saved as `.eml` files and
//! attached to other mail, or re-wrapped by a mailing-list manager (an
//! outer `multipart/mixed` with a footer part, a subject prefix, the inner
//! `multipart/signed` intact). [`walk`] finds each, with where it was
//! found; `inspect` and `verify` report and check them. The roles do not
//! use it: a re-wrapped envelope is not an envelope on the wire.
//!
//! A PEC message here is
//! - an entity whose header carries `X-Trasporto` or `X-Ricevuta` and
//!   whose type is `multipart/signed` or an opaque `application/pkcs7-mime`
//!   signed-data: the input itself, a `message/rfc822` part, or a
//!   `text/plain` / `application/octet-stream` attachment named `*.eml`
//!   whose content (its transfer encoding undone) parses as a message;
//! - a message whose header carries the marker fields but whose body is
//!   another multipart (a list's re-wrap): the first signed entity in that
//!   body (not inside a message attached to it), read with the message's
//!   header fields ([`FoundAs::Rewrapped`]); a body part carrying the
//!   marker fields itself counts the same way;
//! - the input itself whenever its header carries the marker fields, even
//!   unsigned (it claims to be PEC; its check then fails), unless its body
//!   holds a re-wrapped signed entity.
//!
//! Where: a MIME path as IMAP numbers parts, `/` between the numbers: the
//! parts of a multipart are 1, 2, ...; a `message/rfc822` part (or `.eml`
//! file) at `2` is the message `2`, whose parts are `2/1`, `2/2`; the body
//! of a message that is not multipart is its part `1` (as is the entity
//! inside an opaque signature). The input itself has the empty path.
//!
//! Bounded: messages inside messages [`MAX_DEPTH`] deep, [`MAX_LEVELS`]
//! MIME levels in all, [`MAX_ENTITIES`] entities visited, [`MAX_FOUND`] PEC
//! messages reported; where the search stopped is reported
//! ([`Walked::stopped`]). Zero-copy where the reader is: a part in 7bit,
//! 8bit or binary with CRLF line ends is read where it lies; a base64 or
//! quoted-printable `.eml` (or `message/rfc822`, which should not be) is
//! decoded once, and lives while what was found in it is looked at.

use serde::Serialize;

use crate::pec::mime::{
    self, ContentType, HeaderField, canonicalize_crlf, header_fields, header_value,
    split_header_body, split_multipart,
};
use crate::pec::reader::{self, PecMessage, ReadError, is_opaque_signed};

/// Messages inside messages: the input is depth 0; an attached message at
/// depth 8 is read, one inside it is not.
pub const MAX_DEPTH: usize = 8;
/// MIME levels (the length of a path), multiparts and messages together.
pub const MAX_LEVELS: usize = 32;
/// MIME entities visited in all.
pub const MAX_ENTITIES: usize = 10_000;
/// PEC messages reported.
pub const MAX_FOUND: usize = 64;

/// How a PEC message was carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum FoundAs {
    /// The input itself.
    #[serde(rename = "message")]
    Message,
    /// A `message/rfc822` part.
    #[serde(rename = "message/rfc822")]
    Attached,
    /// An attachment named `*.eml` (`text/plain` or
    /// `application/octet-stream`).
    #[serde(rename = "eml-attachment")]
    EmlFile,
    /// A signed body part of the message that carried it, read with that
    /// message's header (a mailing list's re-wrap) or its own.
    #[serde(rename = "rewrapped")]
    Rewrapped,
}

impl FoundAs {
    pub fn wire(self) -> &'static str {
        match self {
            FoundAs::Message => "message",
            FoundAs::Attached => "message/rfc822",
            FoundAs::EmlFile => "eml-attachment",
            FoundAs::Rewrapped => "rewrapped",
        }
    }
}

/// One PEC message found.
#[derive(Debug, Clone)]
pub struct Found<'a> {
    /// MIME path of the PEC message (of its signed entity when re-wrapped);
    /// empty for the input itself.
    pub path: Vec<usize>,
    /// Messages around it: 0 for the input itself and what is re-wrapped
    /// in it, 1 for a message attached to it, ...
    pub depth: usize,
    pub found_as: FoundAs,
    /// The decoded `Subject:` of the message it was found in (for a
    /// re-wrapped one, the message whose header it carries); `None` for
    /// the input itself.
    pub outer_subject: Option<String>,
    /// As [`reader::read_any`] reads it.
    pub message: PecMessage<'a>,
}

impl Found<'_> {
    /// The path as printed: `2/1`; empty for the input itself.
    pub fn path_string(&self) -> String {
        path_string(&self.path)
    }
}

/// `2/1`.
pub fn path_string(path: &[usize]) -> String {
    path.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join("/")
}

/// What a walk did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Walked {
    /// PEC messages reported.
    pub found: usize,
    /// Why (and where) the search stopped short of the whole input, when
    /// a limit was reached: not every PEC message may have been found.
    pub stopped: Option<String>,
}

/// Find every PEC message in `raw` (the input itself included), in
/// document order: a message before what it carries. `f` is called on
/// each as it is found; what it is given borrows from `raw` (or from a
/// decoded attachment) for the call. An error when `raw` is not a mail
/// message at all, as [`reader::read`].
pub fn walk<F>(raw: &[u8], mut f: F) -> Result<Walked, ReadError>
where
    F: FnMut(&Found<'_>),
{
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(ReadError::Empty);
    }
    let canon = canonicalize_crlf(raw);
    if header_fields(split_header_body(&canon).0).is_empty() {
        return Err(ReadError::NoHeaders);
    }
    let mut w = Walker {
        f: &mut f,
        found: 0,
        entities: 0,
        stopped: None,
        halted: false,
        claimed: Vec::new(),
    };
    w.message(&canon, &mut Vec::new(), 0, FoundAs::Message, None);
    Ok(Walked {
        found: w.found,
        stopped: w.stopped,
    })
}

/// [`walk`], each found message owned: for tests and small inputs.
pub fn find_all(raw: &[u8]) -> Result<(Vec<Found<'static>>, Walked), ReadError> {
    let mut out = Vec::new();
    let walked = walk(raw, |f| {
        out.push(Found {
            path: f.path.clone(),
            depth: f.depth,
            found_as: f.found_as,
            outer_subject: f.outer_subject.clone(),
            message: f.message.clone().into_owned(),
        })
    })?;
    Ok((out, walked))
}

struct Walker<'f> {
    f: &'f mut dyn FnMut(&Found<'_>),
    found: usize,
    entities: usize,
    stopped: Option<String>,
    /// A limit that ends the whole walk was reached.
    halted: bool,
    /// The paths of the signed entities already reported as re-wrapped.
    claimed: Vec<Vec<usize>>,
}

impl Walker<'_> {
    fn stop(&mut self, why: String) {
        if self.stopped.is_none() {
            self.stopped = Some(why);
        }
    }

    fn emit(
        &mut self,
        path: &[usize],
        depth: usize,
        found_as: FoundAs,
        outer_subject: Option<&str>,
        message: PecMessage<'_>,
    ) {
        if self.found >= MAX_FOUND {
            self.stop(format!(
                "more than {MAX_FOUND} PEC messages: the first {MAX_FOUND} reported"
            ));
            self.halted = true;
            return;
        }
        self.found += 1;
        (self.f)(&Found {
            path: path.to_vec(),
            depth,
            found_as,
            outer_subject: outer_subject.map(str::to_owned),
            message,
        });
    }

    /// One more entity at `path`: false when a limit says not to look.
    fn enter(&mut self, path: &[usize]) -> bool {
        if self.halted {
            return false;
        }
        self.entities += 1;
        if self.entities > MAX_ENTITIES {
            self.stop(format!(
                "more than {MAX_ENTITIES} MIME parts: the rest not searched"
            ));
            self.halted = true;
            return false;
        }
        if path.len() > MAX_LEVELS {
            self.stop(format!(
                "MIME parts nested deeper than {MAX_LEVELS} levels at {}: not searched",
                path_string(path)
            ));
            return false;
        }
        true
    }

    /// A message (the input, or one carried in it) at `path`.
    fn message(
        &mut self,
        entity: &[u8],
        path: &mut Vec<usize>,
        depth: usize,
        found_as: FoundAs,
        outer_subject: Option<&str>,
    ) {
        let (head, body) = split_header_body(entity);
        let fields = header_fields(head);
        let ct = content_type(&fields);
        let subject = header_value(&fields, "Subject").map(|s| mime::decode_words(&s));
        if has_markers(&fields) {
            if is_signed(&ct) {
                if let Ok(m) = reader::read_parts_any(head, body) {
                    self.emit(path, depth, found_as, outer_subject, m);
                }
            } else if let Some((sub, part)) = rewrapped(&ct, body, path) {
                let (part_head, part_body) = split_header_body(part);
                let head = rewrapped_head(&fields, part_head);
                if let Ok(m) = reader::read_parts_any(&head, part_body) {
                    self.emit(&sub, depth, FoundAs::Rewrapped, subject.as_deref(), m);
                }
                self.claimed.push(sub);
            } else if depth == 0
                && let Ok(m) = reader::read_parts_any(head, body)
            {
                // the input claims to be PEC, unsigned: reported, to fail
                self.emit(path, depth, found_as, outer_subject, m);
            }
        }
        self.body(&ct, &fields, body, path, depth, subject.as_deref());
    }

    /// What a body holds: the parts of a multipart, the message of a
    /// `message/rfc822` body, the entity inside an opaque signature.
    fn body(
        &mut self,
        ct: &ContentType,
        fields: &[HeaderField<'_>],
        body: &[u8],
        path: &mut Vec<usize>,
        depth: usize,
        subject: Option<&str>,
    ) {
        if ct.is_multipart() {
            let Some(mp) = ct.param("boundary").and_then(|b| split_multipart(body, b)) else {
                return;
            };
            for (i, part) in mp.parts.iter().enumerate() {
                if self.halted {
                    return;
                }
                path.push(i + 1);
                self.part(part, path, depth, subject);
                path.pop();
            }
        } else if ct.mime == "message/rfc822" {
            path.push(1);
            if self.enter(path) {
                self.attached(fields, body, path, depth, subject, FoundAs::Attached);
            }
            path.pop();
        } else if is_opaque_signed(ct) {
            let der = reader::decode(fields, body);
            if let Some(inner) = crate::crypto::verify::signed_content(&der) {
                let canon = canonicalize_crlf(&inner);
                path.push(1);
                self.part(&canon, path, depth, subject);
                path.pop();
            }
        }
    }

    /// A body part at `path` of a message whose subject is `subject`.
    fn part(&mut self, part: &[u8], path: &mut Vec<usize>, depth: usize, subject: Option<&str>) {
        if !self.enter(path) {
            return;
        }
        let (head, body) = split_header_body(part);
        let fields = header_fields(head);
        let ct = content_type(&fields);
        if has_markers(&fields)
            && is_signed(&ct)
            && !self.claimed.iter().any(|c| c == path)
            && let Ok(m) = reader::read_parts_any(head, body)
        {
            self.emit(path, depth, FoundAs::Rewrapped, subject, m);
        }
        if ct.mime == "message/rfc822" {
            self.attached(&fields, body, path, depth, subject, FoundAs::Attached);
        } else if is_eml_file(&ct, &fields) {
            self.attached(&fields, body, path, depth, subject, FoundAs::EmlFile);
        } else {
            self.body(&ct, &fields, body, path, depth, subject);
        }
    }

    /// The message a `message/rfc822` part or an `.eml` file holds.
    fn attached(
        &mut self,
        fields: &[HeaderField<'_>],
        body: &[u8],
        path: &mut Vec<usize>,
        depth: usize,
        outer_subject: Option<&str>,
        found_as: FoundAs,
    ) {
        if self.halted {
            return;
        }
        if depth >= MAX_DEPTH {
            self.stop(format!(
                "messages nested deeper than {MAX_DEPTH}: the one at {} not searched",
                path_string(path)
            ));
            return;
        }
        let decoded = reader::decode(fields, body);
        let canon = canonicalize_crlf(&decoded);
        if canon.iter().all(u8::is_ascii_whitespace) || !is_message(&canon) {
            return;
        }
        self.message(&canon, path, depth + 1, found_as, outer_subject);
    }
}

fn content_type(fields: &[HeaderField<'_>]) -> ContentType {
    ContentType::parse(&header_value(fields, "Content-Type").unwrap_or_default())
}

/// `X-Trasporto` or `X-Ricevuta`, whatever its value.
fn has_markers(fields: &[HeaderField<'_>]) -> bool {
    fields
        .iter()
        .any(|f| f.is("X-Trasporto") || f.is("X-Ricevuta"))
}

fn is_signed(ct: &ContentType) -> bool {
    ct.mime == "multipart/signed" || is_opaque_signed(ct)
}

/// A `text/plain` or `application/octet-stream` part named `*.eml`.
fn is_eml_file(ct: &ContentType, fields: &[HeaderField<'_>]) -> bool {
    if !matches!(ct.mime.as_str(), "text/plain" | "application/octet-stream") {
        return false;
    }
    let cd = ContentType::parse(&header_value(fields, "Content-Disposition").unwrap_or_default());
    [
        cd.param("filename"),
        cd.param("filename*"),
        ct.param("name"),
        ct.param("name*"),
    ]
    .into_iter()
    .flatten()
    .any(|n| {
        n.trim_end_matches(['"', '\'', ' '])
            .to_ascii_lowercase()
            .ends_with(".eml")
    })
}

/// Whether decoded bytes parse as a message: they open with a header
/// field.
fn is_message(data: &[u8]) -> bool {
    let (head, _) = split_header_body(data);
    header_fields(head)
        .first()
        .is_some_and(|f| f.raw.as_ptr() == data.as_ptr())
}

/// The first signed entity in a multipart body, not inside a message
/// attached to it: its path and bytes.
fn rewrapped<'b>(
    ct: &ContentType,
    body: &'b [u8],
    path: &[usize],
) -> Option<(Vec<usize>, &'b [u8])> {
    if !ct.is_multipart() {
        return None;
    }
    let mut p = path.to_vec();
    let mut budget = MAX_ENTITIES;
    first_signed(ct, body, &mut p, &mut budget)
}

fn first_signed<'b>(
    ct: &ContentType,
    body: &'b [u8],
    path: &mut Vec<usize>,
    budget: &mut usize,
) -> Option<(Vec<usize>, &'b [u8])> {
    if path.len() >= MAX_LEVELS {
        return None;
    }
    let mp = split_multipart(body, ct.param("boundary")?)?;
    for (i, part) in mp.parts.into_iter().enumerate() {
        *budget = budget.checked_sub(1)?;
        path.push(i + 1);
        let (head, inner) = split_header_body(part);
        let pct = content_type(&header_fields(head));
        if is_signed(&pct) {
            return Some((path.clone(), part));
        }
        if pct.is_multipart()
            && let Some(found) = first_signed(&pct, inner, path, budget)
        {
            return Some(found);
        }
        path.pop();
    }
    None
}

/// The header a re-wrapped signed entity is read with: the message's
/// fields but its `Content-*` ones, then the entity's own.
fn rewrapped_head(fields: &[HeaderField<'_>], part_head: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(part_head.len() + 1024);
    let mut push = |raw: &[u8]| {
        out.extend_from_slice(raw);
        if !raw.ends_with(b"\n") {
            out.extend_from_slice(b"\r\n");
        }
    };
    for f in fields {
        if !f.name.to_ascii_lowercase().starts_with("content-") {
            push(f.raw);
        }
    }
    for f in header_fields(part_head) {
        push(f.raw);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed(markers: &str, subject: &str) -> String {
        format!(
            "{markers}Subject: {subject}\r\nContent-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=s\r\n\r\n--s\r\nContent-Type: text/plain\r\n\r\nx\r\n--s\r\nContent-Type: application/pkcs7-signature\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--s--\r\n"
        )
    }

    fn paths(raw: &[u8]) -> Vec<(String, FoundAs, Option<String>)> {
        let (found, walked) = find_all(raw).expect("walk");
        assert_eq!(walked.stopped, None);
        found
            .into_iter()
            .map(|f| (f.path_string(), f.found_as, f.outer_subject))
            .collect()
    }

    #[test]
    fn forwarded_rewrapped_and_eml() {
        let inner = signed("X-Ricevuta: accettazione\r\n", "ACCETTAZIONE: x");
        // forwarded as message/rfc822, part 2
        let fwd = format!(
            "Subject: Fwd: x\r\nContent-Type: multipart/mixed; boundary=m\r\n\r\n--m\r\nContent-Type: text/plain\r\n\r\nsee\r\n--m\r\nContent-Type: message/rfc822\r\n\r\n{inner}\r\n--m--\r\n"
        );
        assert_eq!(
            paths(fwd.as_bytes()),
            vec![(
                "2".to_string(),
                FoundAs::Attached,
                Some("Fwd: x".to_string())
            )]
        );
        // re-wrapped by a list: headers outside, signed part 1, footer 2
        let (head, body) = inner.split_once("\r\n\r\n").expect("split");
        let ct_line = head
            .lines()
            .find(|l| l.starts_with("Content-Type"))
            .expect("ct");
        let list = format!(
            "X-Ricevuta: accettazione\r\nSubject: [lista] ACCETTAZIONE: x\r\nContent-Type: multipart/mixed; boundary=L\r\n\r\n--L\r\n{ct_line}\r\n\r\n{body}\r\n--L\r\nContent-Type: text/plain\r\n\r\nfooter\r\n--L--\r\n"
        );
        let (found, _) = find_all(list.as_bytes()).expect("walk");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path_string(), "1");
        assert_eq!(found[0].found_as, FoundAs::Rewrapped);
        assert_eq!(
            found[0].message.subject.as_deref(),
            Some("[lista] ACCETTAZIONE: x")
        );
        let s = found[0].message.signed.as_ref().expect("signed");
        assert_eq!(&s.content[..], b"Content-Type: text/plain\r\n\r\nx");
        // an .eml file, base64, inside a forward inside a message: 2/2
        let eml = mime::base64_lines(fwd.as_bytes());
        let outer = format!(
            "Subject: outer\r\nContent-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\nContent-Type: text/plain\r\n\r\nhi\r\n--o\r\nContent-Type: application/octet-stream; name=\"saved.EML\"\r\nContent-Transfer-Encoding: base64\r\n\r\n{eml}--o--\r\n"
        );
        let (found, _) = find_all(outer.as_bytes()).expect("walk");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path_string(), "2/2");
        assert_eq!(found[0].depth, 2);
        assert_eq!(found[0].outer_subject.as_deref(), Some("Fwd: x"));
        // the input itself first, then what it carries
        let top = signed("X-Trasporto: posta-certificata\r\n", "POSTA CERTIFICATA: y");
        let (found, _) = find_all(top.as_bytes()).expect("walk");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path_string(), "");
        assert_eq!(found[0].found_as, FoundAs::Message);
    }

    #[test]
    fn unsigned_or_unmarked_are_not_pec() {
        // an unsigned message with marker fields, attached: not PEC
        let fwd = "Subject: f\r\nContent-Type: message/rfc822\r\n\r\nX-Ricevuta: accettazione\r\nSubject: fake\r\n\r\ntext\r\n";
        assert!(paths(fwd.as_bytes()).is_empty());
        // but the input itself claiming PEC is reported, to fail
        let (found, _) =
            find_all(b"X-Ricevuta: accettazione\r\nSubject: fake\r\n\r\ntext\r\n").expect("walk");
        assert_eq!(found.len(), 1);
        assert!(found[0].message.signed.is_none());
        // a signed message without marker fields: not PEC
        assert!(paths(signed("", "s").as_bytes()).is_empty());
        // a text file named .eml that is not a message
        let t = "Subject: t\r\nContent-Type: multipart/mixed; boundary=m\r\n\r\n--m\r\nContent-Type: text/plain; name=a.eml\r\n\r\n\r\nno header\r\n--m--\r\n";
        assert!(paths(t.as_bytes()).is_empty());
        assert_eq!(walk(b"", |_| {}), Err(ReadError::Empty));
        assert_eq!(walk(b"no header here", |_| {}), Err(ReadError::NoHeaders));
    }

    #[test]
    fn limits_stop_the_search_and_say_so() {
        // 12 messages inside each other, a PEC message innermost
        let mut m = signed("X-Ricevuta: accettazione\r\n", "deep");
        for i in 0..12 {
            m = format!("Subject: level {i}\r\nContent-Type: message/rfc822\r\n\r\n{m}");
        }
        let (found, walked) = find_all(m.as_bytes()).expect("walk");
        assert!(found.is_empty());
        assert!(
            walked
                .stopped
                .as_deref()
                .is_some_and(|s| s.contains("deeper than 8")),
            "{walked:?}"
        );
        // 8 deep is still found
        let mut m = signed("X-Ricevuta: accettazione\r\n", "deep");
        for i in 0..MAX_DEPTH {
            m = format!("Subject: level {i}\r\nContent-Type: message/rfc822\r\n\r\n{m}");
        }
        let (found, walked) = find_all(m.as_bytes()).expect("walk");
        assert_eq!(walked.stopped, None);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path_string(), ["1"; MAX_DEPTH].join("/"));
        // more PEC messages than reported
        let one = signed("X-Ricevuta: accettazione\r\n", "n");
        let mut many =
            "Subject: many\r\nContent-Type: multipart/mixed; boundary=m\r\n\r\n".to_string();
        for _ in 0..MAX_FOUND + 5 {
            many.push_str(&format!(
                "--m\r\nContent-Type: message/rfc822\r\n\r\n{one}\r\n"
            ));
        }
        many.push_str("--m--\r\n");
        let (found, walked) = find_all(many.as_bytes()).expect("walk");
        assert_eq!(found.len(), MAX_FOUND);
        assert!(walked.stopped.is_some());
        // multiparts nested 10 000 deep: no stack overflow
        let mut deep = String::new();
        for i in 0..10_000 {
            deep.push_str(&format!(
                "--b{i}\r\nContent-Type: multipart/mixed; boundary=b{}\r\n\r\n",
                i + 1
            ));
        }
        let deep =
            format!("Subject: d\r\nContent-Type: multipart/mixed; boundary=b0\r\n\r\n{deep}");
        let (_, walked) = find_all(deep.as_bytes()).expect("walk");
        assert!(walked.stopped.is_some());
    }
}
