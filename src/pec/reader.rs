//! Read any message: classify it (PEC-RULES §2.12), find the signed part
//! and the signature of a `multipart/signed`, and extract `daticert.xml`
//! and `postacert.eml`. Never panics; what cannot be read is reported.
//!
//! [`read`] and [`read_parts`] read PEC as the rules define it: signed as
//! `multipart/signed` (PEC-RULES §1.2); the roles use them. [`read_any`]
//! and [`read_parts_any`] (`inspect`, `verify`) also open an opaque
//! `application/pkcs7-mime` signed-data and read what it carries.

use std::borrow::Cow;

use crate::pec::daticert::DatiCert;
use crate::pec::kind::{MessageKind, TipoRicevuta};
use crate::pec::mime::{
    self, ContentType, HeaderField, base64_decode, canonicalize_crlf, header_fields, header_value,
    split_header_body, split_multipart,
};

/// Nesting deeper than this is not searched (hostile input).
const MAX_DEPTH: usize = 16;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReadError {
    #[error("empty input")]
    Empty,
    #[error("not a mail message: no header fields")]
    NoHeaders,
}

/// The detached signature of a `multipart/signed` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedParts<'a> {
    /// The first part, canonical CRLF: exactly the bytes that were signed
    /// (borrowed from the message read when it had CRLF line ends).
    pub content: Cow<'a, [u8]>,
    /// The DER of the signature part, when there is one and it decodes.
    pub p7s: Option<Vec<u8>>,
    /// The `protocol` parameter (`application/pkcs7-signature` or
    /// `application/x-pkcs7-signature`).
    pub protocol: String,
    pub micalg: Option<String>,
    /// Why the signature is missing or unreadable.
    pub problem: Option<String>,
    /// An opaque `application/pkcs7-mime` signed-data ([`read_any`]):
    /// `p7s` holds the whole structure and `content` the entity inside it
    /// (a copy: it was encoded in the structure).
    pub opaque: bool,
}

/// What a message is and what it carries. The large parts (the signed
/// content, `postacert.eml` when it has no transfer encoding) borrow from
/// the bytes read: reading a 100 MB envelope copies none of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PecMessage<'a> {
    pub kind: MessageKind,
    /// Decoded `Subject:`.
    pub subject: Option<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub message_id: Option<String>,
    pub riferimento_message_id: Option<String>,
    /// `X-TipoRicevuta` (any case), when present and known.
    pub tipo_ricevuta: Option<TipoRicevuta>,
    pub verifica_sicurezza: Option<String>,
    pub mittente: Option<String>,
    /// Present when the top-level type is `multipart/signed`.
    pub signed: Option<SignedParts<'a>>,
    /// The certification data, or why it could not be read.
    pub daticert: Option<Result<DatiCert, String>>,
    /// The raw `postacert.eml` (decoded from its transfer encoding).
    pub postacert: Option<Cow<'a, [u8]>>,
}

impl SignedParts<'_> {
    fn into_owned(self) -> SignedParts<'static> {
        SignedParts {
            content: Cow::Owned(self.content.into_owned()),
            p7s: self.p7s,
            protocol: self.protocol,
            micalg: self.micalg,
            problem: self.problem,
            opaque: self.opaque,
        }
    }
}

impl PecMessage<'_> {
    /// The same, owning every part.
    pub fn into_owned(self) -> PecMessage<'static> {
        PecMessage {
            kind: self.kind,
            subject: self.subject,
            from: self.from,
            to: self.to,
            message_id: self.message_id,
            riferimento_message_id: self.riferimento_message_id,
            tipo_ricevuta: self.tipo_ricevuta,
            verifica_sicurezza: self.verifica_sicurezza,
            mittente: self.mittente,
            signed: self.signed.map(SignedParts::into_owned),
            daticert: self.daticert,
            postacert: self.postacert.map(|p| Cow::Owned(p.into_owned())),
        }
    }
}

/// Read a message (CRLF or LF line ends).
pub fn read(raw: &[u8]) -> Result<PecMessage<'_>, ReadError> {
    read_with(raw, false)
}

/// [`read`], and an opaque `application/pkcs7-mime` signed-data message
/// is opened: its signature in `signed` (`opaque`), daticert.xml and
/// postacert.eml from the entity inside it.
pub fn read_any(raw: &[u8]) -> Result<PecMessage<'_>, ReadError> {
    read_with(raw, true)
}

fn read_with(raw: &[u8], opaque: bool) -> Result<PecMessage<'_>, ReadError> {
    if raw.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(ReadError::Empty);
    }
    match canonicalize_crlf(raw) {
        Cow::Borrowed(canon) => {
            let (head, body) = split_header_body(canon);
            read_split(head, body, opaque)
        }
        Cow::Owned(canon) => {
            let (head, body) = split_header_body(&canon);
            read_split(head, body, opaque).map(PecMessage::into_owned)
        }
    }
}

/// [`read`] of a message held as its header block (the fields, without
/// the empty line) and its body apart, as the milter has it: the body
/// (a spool file mapped, say) is borrowed, not copied, when its line ends
/// are CRLF.
pub fn read_parts<'a>(header: &[u8], body: &'a [u8]) -> Result<PecMessage<'a>, ReadError> {
    read_parts_with(header, body, false)
}

/// [`read_parts`] that opens an opaque signed-data as [`read_any`] does.
pub fn read_parts_any<'a>(header: &[u8], body: &'a [u8]) -> Result<PecMessage<'a>, ReadError> {
    read_parts_with(header, body, true)
}

fn read_parts_with<'a>(
    header: &[u8],
    body: &'a [u8],
    opaque: bool,
) -> Result<PecMessage<'a>, ReadError> {
    if header.iter().all(|b| b.is_ascii_whitespace())
        && body.iter().all(|b| b.is_ascii_whitespace())
    {
        return Err(ReadError::Empty);
    }
    let head = canonicalize_crlf(header);
    match canonicalize_crlf(body) {
        Cow::Borrowed(b) => read_split(&head, b, opaque),
        Cow::Owned(b) => read_split(&head, &b, opaque).map(PecMessage::into_owned),
    }
}

fn read_split<'a>(head: &[u8], body: &'a [u8], opaque: bool) -> Result<PecMessage<'a>, ReadError> {
    let fields = header_fields(head);
    if fields.is_empty() {
        return Err(ReadError::NoHeaders);
    }
    let get = |n: &str| header_value(&fields, n);
    let kind = MessageKind::classify(get("X-Trasporto").as_deref(), get("X-Ricevuta").as_deref());
    let subject = get("Subject").map(|s| mime::decode_words(&s));
    let ct = ContentType::parse(&get("Content-Type").unwrap_or_default());

    let signed = if ct.mime == "multipart/signed" {
        Some(signed_parts(&ct, body))
    } else if opaque && is_opaque_signed(&ct) {
        Some(opaque_parts(&ct, &fields, body))
    } else {
        None
    };
    let mut found = Found::default();
    match &signed {
        // signed_parts borrows the content from `body`
        Some(SignedParts {
            content: Cow::Borrowed(c),
            ..
        }) => walk_entity(c, 0, &mut found),
        // the entity inside an opaque signature: what is found in it is
        // copied out, since `signed` owns it
        Some(SignedParts {
            content: Cow::Owned(c),
            ..
        }) => {
            let mut inner = Found::default();
            walk_entity(c, 0, &mut inner);
            found.daticert = inner.daticert;
            found.postacert = inner.postacert.map(|p| Cow::Owned(p.into_owned()));
        }
        None => walk_body(&fields, body, 0, &mut found),
    }
    let daticert = found
        .daticert
        .map(|x| DatiCert::from_xml(&x).map_err(|e| e.to_string()));
    Ok(PecMessage {
        kind,
        subject,
        from: get("From"),
        to: get("To"),
        message_id: get("Message-ID"),
        riferimento_message_id: get("X-Riferimento-Message-ID"),
        tipo_ricevuta: get("X-TipoRicevuta").and_then(|v| v.parse().ok()),
        verifica_sicurezza: get("X-VerificaSicurezza"),
        mittente: get("X-Mittente"),
        signed,
        daticert,
        postacert: found.postacert,
    })
}

fn signed_parts<'a>(ct: &ContentType, body: &'a [u8]) -> SignedParts<'a> {
    let protocol = ct
        .param("protocol")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let micalg = ct.param("micalg").map(str::to_ascii_lowercase);
    let mut out = SignedParts {
        content: Cow::Borrowed(&[]),
        p7s: None,
        protocol,
        micalg,
        problem: None,
        opaque: false,
    };
    let Some(boundary) = ct.param("boundary") else {
        out.problem = Some("multipart/signed without a boundary".into());
        return out;
    };
    let Some(mp) = split_multipart(body, boundary) else {
        out.problem = Some("multipart/signed: boundary not found".into());
        return out;
    };
    let Some(first) = mp.parts.first() else {
        out.problem = Some("multipart/signed without parts".into());
        return out;
    };
    out.content = Cow::Borrowed(first);
    let Some(sig) = mp.parts.get(1) else {
        out.problem = Some("multipart/signed without a signature part".into());
        return out;
    };
    let (shead, sbody) = split_header_body(sig);
    let sfields = header_fields(shead);
    let sct = ContentType::parse(&header_value(&sfields, "Content-Type").unwrap_or_default());
    if !matches!(
        sct.mime.as_str(),
        "application/pkcs7-signature" | "application/x-pkcs7-signature"
    ) {
        out.problem = Some(format!("unexpected signature part type {:?}", sct.mime));
        return out;
    }
    let cte = header_value(&sfields, "Content-Transfer-Encoding")
        .unwrap_or_default()
        .to_ascii_lowercase();
    let der = if cte == "base64" {
        base64_decode(sbody)
    } else {
        Some(sbody.to_vec())
    };
    match der {
        Some(d) if !d.is_empty() => out.p7s = Some(d),
        Some(_) => out.problem = Some("the signature part is empty".into()),
        None => {
            // present but undecodable: a broken signature, not a missing one
            out.problem = Some("the signature part is not valid base64".into());
            out.p7s = Some(sbody.to_vec());
        }
    }
    out
}

/// Whether a content type is an opaque S/MIME signature:
/// `application/pkcs7-mime` (or `x-pkcs7-mime`) whose `smime-type` is
/// `signed-data` or absent.
pub fn is_opaque_signed(ct: &ContentType) -> bool {
    matches!(
        ct.mime.as_str(),
        "application/pkcs7-mime" | "application/x-pkcs7-mime"
    ) && ct
        .param("smime-type")
        .is_none_or(|t| t.eq_ignore_ascii_case("signed-data"))
}

fn opaque_parts<'a>(ct: &ContentType, fields: &[HeaderField<'_>], body: &[u8]) -> SignedParts<'a> {
    let mut out = SignedParts {
        content: Cow::Owned(Vec::new()),
        p7s: None,
        protocol: ct.mime.clone(),
        micalg: ct.param("micalg").map(str::to_ascii_lowercase),
        problem: None,
        opaque: true,
    };
    let der = decode(fields, body).into_owned();
    if der.is_empty() {
        out.problem = Some("the application/pkcs7-mime body is empty".into());
        return out;
    }
    match crate::crypto::verify::signed_content(&der) {
        Some(c) => out.content = Cow::Owned(canonicalize_crlf(&c).into_owned()),
        None => out.problem = Some("no content inside the application/pkcs7-mime signature".into()),
    }
    out.p7s = Some(der);
    out
}

#[derive(Default)]
struct Found<'a> {
    daticert: Option<Vec<u8>>,
    postacert: Option<Cow<'a, [u8]>>,
}

fn walk_entity<'a>(entity: &'a [u8], depth: usize, found: &mut Found<'a>) {
    let (head, body) = split_header_body(entity);
    let fields = header_fields(head);
    walk_body(&fields, body, depth, found);
}

fn walk_body<'a>(fields: &[HeaderField<'_>], body: &'a [u8], depth: usize, found: &mut Found<'a>) {
    if depth > MAX_DEPTH || (found.daticert.is_some() && found.postacert.is_some()) {
        return;
    }
    let ct = ContentType::parse(&header_value(fields, "Content-Type").unwrap_or_default());
    let cd = ContentType::parse(&header_value(fields, "Content-Disposition").unwrap_or_default());
    let name = cd
        .param("filename")
        .or(ct.param("name"))
        .map(str::to_ascii_lowercase);
    if ct.is_multipart() {
        if let Some(mp) = ct.param("boundary").and_then(|b| split_multipart(body, b)) {
            for p in mp.parts {
                walk_entity(p, depth + 1, found);
            }
        }
        return;
    }
    // Only the top-level structure counts: daticert.xml inside the
    // attached original is the original's business.
    if ct.mime == "message/rfc822" {
        if found.postacert.is_none() && (name.as_deref() == Some("postacert.eml") || name.is_none())
        {
            found.postacert = Some(decode(fields, body));
        }
        return;
    }
    if found.daticert.is_none()
        && (name.as_deref() == Some("daticert.xml")
            || (name.is_none() && (ct.mime == "application/xml" || ct.mime == "text/xml")))
    {
        found.daticert = Some(decode(fields, body).into_owned());
    }
}

/// Undo the Content-Transfer-Encoding of a leaf body (borrowed when it
/// has none).
pub(crate) fn decode<'a>(fields: &[HeaderField<'_>], body: &'a [u8]) -> Cow<'a, [u8]> {
    let cte = header_value(fields, "Content-Transfer-Encoding")
        .unwrap_or_default()
        .to_ascii_lowercase();
    match cte.as_str() {
        "base64" => base64_decode(body).map_or(Cow::Borrowed(body), Cow::Owned),
        "quoted-printable" => Cow::Owned(qp_decode(body)),
        _ => Cow::Borrowed(body),
    }
}

/// Quoted-printable decoding (lenient: bad escapes are kept literally).
pub fn qp_decode(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len());
    let mut i = 0;
    while i < data.len() {
        let b = data[i];
        if b == b'=' {
            if data[i + 1..].starts_with(b"\r\n") {
                i += 3;
                continue;
            }
            if data[i + 1..].starts_with(b"\n") {
                i += 2;
                continue;
            }
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (
                data.get(i + 1).and_then(|&c| hex(c)),
                data.get(i + 2).and_then(|&c| hex(c)),
            ) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_an_error_or_a_plain_message() {
        assert_eq!(read(b""), Err(ReadError::Empty));
        assert_eq!(read(b"\x00\x01\x02 no colon"), Err(ReadError::NoHeaders));
        let m = read(b"Subject: hi\r\n\r\nbody").expect("plain");
        assert_eq!(m.kind, MessageKind::None);
        assert_eq!(m.subject.as_deref(), Some("hi"));
        assert!(m.signed.is_none() && m.daticert.is_none());
    }

    #[test]
    fn signed_without_signature_is_reported() {
        let m = read(b"X-Ricevuta: accettazione\r\nContent-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nx\r\n--b--\r\n").expect("msg");
        let s = m.signed.expect("signed");
        assert_eq!(&s.content[..], b"Content-Type: text/plain\r\n\r\nx");
        assert!(s.p7s.is_none());
        assert!(s.problem.is_some());
    }

    /// Where `part` lies inside `whole`: it was borrowed, not copied.
    fn inside(part: &[u8], whole: &[u8]) -> bool {
        let (p, w) = (part.as_ptr() as usize, whole.as_ptr() as usize);
        p >= w && p + part.len() <= w + whole.len()
    }

    #[test]
    fn parts_read_apart_borrow_the_body() {
        let header = b"X-Trasporto: posta-certificata\r\nContent-Type: multipart/signed; protocol=\"application/pkcs7-signature\"; boundary=b\r\n";
        let body = b"--b\r\nContent-Type: multipart/mixed; boundary=m\r\n\r\n--m\r\nContent-Type: message/rfc822; name=\"postacert.eml\"\r\n\r\nSubject: x\r\n\r\nbig\r\n--m--\r\n--b\r\nContent-Type: application/pkcs7-signature\r\nContent-Transfer-Encoding: base64\r\n\r\nAAEC\r\n--b--\r\n";
        let m = read_parts(header, body).expect("msg");
        assert_eq!(m.kind, MessageKind::BustaTrasporto);
        let s = m.signed.as_ref().expect("signed");
        assert!(matches!(s.content, Cow::Borrowed(_)) && inside(&s.content, body));
        let post = m.postacert.as_ref().expect("postacert");
        assert!(matches!(post, Cow::Borrowed(_)) && inside(post, body));
        assert_eq!(&post[..], b"Subject: x\r\n\r\nbig");
        // the same as reading the whole message
        let mut whole = header.to_vec();
        whole.extend_from_slice(b"\r\n");
        whole.extend_from_slice(body);
        assert_eq!(read(&whole).expect("whole"), m);
        // LF line ends: read, owned
        let lf: Vec<u8> = body.iter().copied().filter(|&c| c != b'\r').collect();
        let o = read_parts(header, &lf).expect("lf");
        assert!(matches!(
            o.signed.as_ref().expect("s").content,
            Cow::Owned(_)
        ));
        assert_eq!(o, m);
    }

    #[test]
    fn qp() {
        assert_eq!(qp_decode(b"a=3Db=\r\nc=E8=zz"), b"a=bc\xe8=zz");
    }
}
