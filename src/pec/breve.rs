//! Ricevuta breve (PEC-RULES §6): the original message with every
//! attachment replaced by a text part holding the SHA-1 of the part's body
//! as transmitted (the base64 text, not the decoded bytes), 40 lowercase
//! hex characters, named `<file name>.hash`.
//!
//! Choices where the rules are open (written in the README too): the hash
//! covers the part body only (not its headers), without the line end that
//! belongs to the next boundary delimiter; hex is lowercase; when both
//! `name` and `filename` exist, `filename` wins and both are set.

use crate::crypto::{DigestAlg, digest};
use crate::pec::mime::{
    ContentType, header_fields, header_value, split_header_body, split_multipart,
};

/// Nesting beyond this is left unchanged (hostile input).
const MAX_DEPTH: usize = 32;

/// The SHA-1 of a part body as lowercase hex.
pub fn part_hash(body: &[u8]) -> String {
    hex::encode(digest(DigestAlg::Sha1, body))
}

/// Replace attachments by their hashes. `message` is canonical CRLF.
/// Malformed structure is kept as it is: the output is always a message.
pub fn hash_attachments(message: &[u8]) -> Vec<u8> {
    let (head, body) = split_header_body(message);
    let mut out = Vec::with_capacity(message.len().min(1 << 20));
    out.extend_from_slice(head);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&rewrite_body(head, body, 0));
    out
}

/// Rewrite an entity's body according to its headers.
fn rewrite_body(head: &[u8], body: &[u8], depth: usize) -> Vec<u8> {
    let fields = header_fields(head);
    let ct = ContentType::parse(&header_value(&fields, "Content-Type").unwrap_or_default());
    if depth >= MAX_DEPTH || !ct.is_multipart() {
        return body.to_vec();
    }
    let Some(boundary) = ct.param("boundary") else {
        return body.to_vec();
    };
    let Some(mp) = split_multipart(body, boundary) else {
        return body.to_vec();
    };
    let signed = ct.mime == "multipart/signed";
    let mut out = Vec::with_capacity(body.len().min(1 << 20));
    out.extend_from_slice(mp.preamble);
    for (i, part) in mp.parts.iter().enumerate() {
        if i > 0 || !mp.preamble.is_empty() {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        if signed && i > 0 {
            // the user's own signature stays as it is (it will no longer verify)
            out.extend_from_slice(part);
        } else {
            out.extend_from_slice(&rewrite_part(part, depth + 1));
        }
    }
    if mp.closed {
        out.extend_from_slice(format!("\r\n--{boundary}--").as_bytes());
        out.extend_from_slice(if mp.epilogue.is_empty() { b"" } else { b"\r\n" });
        out.extend_from_slice(mp.epilogue);
        if mp.epilogue.is_empty() && body.ends_with(b"\r\n") {
            out.extend_from_slice(b"\r\n");
        }
    }
    out
}

/// One MIME part (headers + body): hashed when it is an attachment,
/// recursed into when it is a multipart, kept otherwise.
fn rewrite_part(part: &[u8], depth: usize) -> Vec<u8> {
    let (head, body) = split_header_body(part);
    let fields = header_fields(head);
    let ct = ContentType::parse(&header_value(&fields, "Content-Type").unwrap_or_default());
    let cd = ContentType::parse(&header_value(&fields, "Content-Disposition").unwrap_or_default());
    if ct.mime == "application/pkcs7-mime" || ct.mime == "application/x-pkcs7-mime" {
        return part.to_vec();
    }
    let file = cd.param("filename").or(ct.param("name"));
    let is_message = ct.mime == "message/rfc822";
    if file.is_some() || is_message {
        let name = format!("{}.hash", file.unwrap_or("postacert.eml"));
        let name = name.replace(['"', '\\', '\r', '\n'], "_");
        return format!(
            "Content-Type: text/plain; charset=\"us-ascii\"; name=\"{name}\"\r\nContent-Disposition: attachment; filename=\"{name}\"\r\nContent-Transfer-Encoding: 7bit\r\n\r\n{}",
            part_hash(body)
        )
        .into_bytes();
    }
    if ct.is_multipart() {
        let mut out = Vec::with_capacity(part.len());
        out.extend_from_slice(head);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&rewrite_body(head, body, depth));
        return out;
    }
    part.to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MSG: &[u8] = b"From: a@x.test\r\nTo: b@y.test\r\nSubject: s\r\nContent-Type: multipart/mixed; boundary=\"B\"\r\n\r\npre\r\n--B\r\nContent-Type: text/plain\r\n\r\nhello\r\n--B\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nQUJD\r\nREVG\r\n--B--\r\n";

    #[test]
    fn attachments_become_hashes_of_their_transmitted_body() {
        let out = hash_attachments(MSG);
        let s = String::from_utf8_lossy(&out);
        assert!(s.contains("text/plain; charset=\"us-ascii\"; name=\"a.pdf.hash\""));
        assert!(s.contains(&part_hash(b"QUJD\r\nREVG")));
        assert!(s.contains("\r\nhello\r\n"));
        assert!(!s.contains("QUJD"));
        assert!(s.ends_with("\r\n--B--\r\n"));
        assert_eq!(
            part_hash(b"abc"),
            "a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }

    #[test]
    fn nothing_to_hash_keeps_the_message() {
        let plain = b"From: a@x\r\nSubject: s\r\n\r\nbody\r\n";
        assert_eq!(hash_attachments(plain), plain.to_vec());
    }

    #[test]
    fn hostile_nesting_does_not_overflow() {
        let mut m = b"Content-Type: multipart/mixed; boundary=\"B\"\r\n\r\n".to_vec();
        for _ in 0..500 {
            m.extend_from_slice(b"--B\r\nContent-Type: multipart/mixed; boundary=\"B\"\r\n\r\n");
        }
        let _ = hash_attachments(&m);
    }
}
