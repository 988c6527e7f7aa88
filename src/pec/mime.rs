//! Byte-level MIME helpers: CRLF canonicalisation, header fields, multipart
//! splitting (RFC 2046 semantics), and the encoders the builders need
//! (quoted-printable, base64 lines, RFC 2047 encoded words, folding).
//!
//! Everything here works on borrowed bytes and never panics on bad input.

use std::borrow::Cow;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

/// Bare LF (and bare CR) become CRLF. Returns the input unchanged (borrowed)
/// when it is already canonical.
pub fn canonicalize_crlf(data: &[u8]) -> Cow<'_, [u8]> {
    let mut needs = false;
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'\r' if data.get(i + 1) == Some(&b'\n') => i += 2,
            b'\r' | b'\n' => {
                needs = true;
                break;
            }
            _ => i += 1,
        }
    }
    if !needs {
        return Cow::Borrowed(data);
    }
    let mut out = Vec::with_capacity(data.len() + data.len() / 40 + 2);
    let mut i = 0;
    while i < data.len() {
        match data[i] {
            b'\r' if data.get(i + 1) == Some(&b'\n') => {
                out.extend_from_slice(b"\r\n");
                i += 2;
            }
            b'\r' | b'\n' => {
                out.extend_from_slice(b"\r\n");
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    Cow::Owned(out)
}

/// Split an entity into its header block (including the final line end of
/// the last header, excluding the empty line) and its body. With no empty
/// line, all of it is header.
pub fn split_header_body(data: &[u8]) -> (&[u8], &[u8]) {
    if data.starts_with(b"\r\n") {
        return (&data[..0], &data[2..]);
    }
    if data.starts_with(b"\n") {
        return (&data[..0], &data[1..]);
    }
    let mut i = 0;
    while let Some(p) = memchr(b'\n', &data[i..]) {
        let nl = i + p;
        let next = nl + 1;
        if data[next..].starts_with(b"\r\n") {
            return (&data[..next], &data[next + 2..]);
        }
        if data[next..].starts_with(b"\n") {
            return (&data[..next], &data[next + 1..]);
        }
        i = next;
    }
    (data, &data[data.len()..])
}

fn memchr(needle: u8, hay: &[u8]) -> Option<usize> {
    hay.iter().position(|&b| b == needle)
}

/// One header field as it stands in the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderField<'a> {
    /// The field name, as written (no colon).
    pub name: &'a str,
    /// The whole field: name, colon, value, folded lines and final line end.
    pub raw: &'a [u8],
    /// The raw value after the colon, folded lines included, without the
    /// final line end.
    pub value: &'a [u8],
}

impl HeaderField<'_> {
    /// The value unfolded (line ends removed) and trimmed, lossily UTF-8.
    pub fn unfolded(&self) -> String {
        unfold(self.value)
    }

    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// Unfold a raw header value: drop CR/LF, trim the ends.
pub fn unfold(value: &[u8]) -> String {
    let v: Vec<u8> = value
        .iter()
        .copied()
        .filter(|&b| b != b'\r' && b != b'\n')
        .collect();
    String::from_utf8_lossy(&v).trim().to_string()
}

/// The header fields of a header block. Lines that are not fields (no
/// colon, junk) are skipped; a continuation line at the very start is
/// skipped too.
pub fn header_fields(block: &[u8]) -> Vec<HeaderField<'_>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < block.len() {
        let start = i;
        // end of this logical field: a line end not followed by WSP
        let mut end = block.len();
        let mut j = i;
        while let Some(p) = memchr(b'\n', &block[j..]) {
            let next = j + p + 1;
            match block.get(next) {
                Some(b' ') | Some(b'\t') => j = next,
                _ => {
                    end = next;
                    break;
                }
            }
        }
        i = end;
        let raw = &block[start..end];
        if matches!(raw.first(), Some(b' ') | Some(b'\t')) {
            continue;
        }
        let Some(colon) = memchr(b':', raw) else {
            continue;
        };
        let Ok(name) = std::str::from_utf8(&raw[..colon]) else {
            continue;
        };
        let name_t = name.trim_end();
        if name_t.is_empty() || name_t.bytes().any(|b| !(33..=126).contains(&b)) {
            continue;
        }
        let mut value = &raw[colon + 1..];
        while let Some((&last, rest)) = value.split_last() {
            if last == b'\n' || last == b'\r' {
                value = rest;
            } else {
                break;
            }
        }
        out.push(HeaderField {
            name: name_t,
            raw,
            value,
        });
    }
    out
}

/// The first field with this name (case-insensitive), unfolded.
pub fn header_value(fields: &[HeaderField<'_>], name: &str) -> Option<String> {
    fields.iter().find(|f| f.is(name)).map(|f| f.unfolded())
}

/// A parsed `Content-Type`-like value: `type/subtype; a=b; c="d"`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContentType {
    /// Lowercase `type/subtype`.
    pub mime: String,
    /// Parameters, names lowercase, values unquoted.
    pub params: Vec<(String, String)>,
}

impl ContentType {
    pub fn parse(value: &str) -> ContentType {
        let mut parts = split_params(value);
        let mime = if parts.is_empty() {
            String::new()
        } else {
            parts.remove(0).trim().to_ascii_lowercase()
        };
        let params = parts
            .into_iter()
            .filter_map(|p| {
                let (k, v) = p.split_once('=')?;
                let v = v.trim();
                let v = if v.len() >= 2 && v.starts_with('"') && v.ends_with('"') {
                    unquote(&v[1..v.len() - 1])
                } else {
                    v.to_string()
                };
                Some((k.trim().to_ascii_lowercase(), v))
            })
            .collect();
        ContentType { mime, params }
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn is_multipart(&self) -> bool {
        self.mime.starts_with("multipart/")
    }
}

fn unquote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut esc = false;
    for c in s.chars() {
        if esc {
            out.push(c);
            esc = false;
        } else if c == '\\' {
            esc = true;
        } else {
            out.push(c);
        }
    }
    out
}

/// Split on `;` outside double quotes.
fn split_params(value: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut esc = false;
    for c in value.chars() {
        if esc {
            cur.push(c);
            esc = false;
            continue;
        }
        match c {
            '\\' if quoted => {
                cur.push(c);
                esc = true;
            }
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            ';' if !quoted => out.push(std::mem::take(&mut cur)),
            _ => cur.push(c),
        }
    }
    out.push(cur);
    out.into_iter().filter(|s| !s.trim().is_empty()).collect()
}

/// The parts of a multipart body, as RFC 2046 delimits them: each part runs
/// from after the line end of its delimiter line up to, not including, the
/// line end that precedes the next delimiter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Multipart<'a> {
    pub preamble: &'a [u8],
    pub parts: Vec<&'a [u8]>,
    /// Whether the close delimiter (`--boundary--`) was found.
    pub closed: bool,
    pub epilogue: &'a [u8],
}

/// Split `body` on `boundary`. `None` when no delimiter line is found.
pub fn split_multipart<'a>(body: &'a [u8], boundary: &str) -> Option<Multipart<'a>> {
    if boundary.is_empty() || boundary.len() > 200 {
        return None;
    }
    let delim = format!("--{boundary}");
    let delim = delim.as_bytes();
    // Positions of delimiter lines: (start of the line end before it or 0,
    // start of the delimiter, end of the delimiter line incl. line end, is_close)
    let mut lines: Vec<(usize, usize, usize, bool)> = Vec::new();
    let mut line_start = 0usize;
    loop {
        if body[line_start..].starts_with(delim) {
            let after = line_start + delim.len();
            let is_close = body[after..].starts_with(b"--");
            // the rest of the line must be white space (transport padding)
            let eol = memchr(b'\n', &body[after..]).map(|p| after + p + 1);
            let rest_end = eol.unwrap_or(body.len());
            let rest = &body[after + if is_close { 2 } else { 0 }..rest_end];
            if rest
                .iter()
                .all(|b| matches!(b, b' ' | b'\t' | b'\r' | b'\n'))
            {
                let before = if line_start >= 2 && &body[line_start - 2..line_start] == b"\r\n" {
                    line_start - 2
                } else if line_start >= 1 && body[line_start - 1] == b'\n' {
                    line_start - 1
                } else {
                    line_start
                };
                lines.push((before, line_start, rest_end, is_close));
                if is_close {
                    break;
                }
            }
        }
        match memchr(b'\n', &body[line_start..]) {
            Some(p) => line_start += p + 1,
            None => break,
        }
        if line_start >= body.len() {
            break;
        }
    }
    let first = lines.first()?;
    let preamble = &body[..first.0];
    let mut parts = Vec::new();
    for w in lines.windows(2) {
        if w[0].3 {
            break;
        }
        // Adjacent delimiter lines share one line end: the part between
        // them is empty (found by the fuzzer).
        let end = w[1].0.max(w[0].2);
        parts.push(&body[w[0].2..end]);
    }
    let closed = lines.last().is_some_and(|l| l.3);
    let epilogue = match lines.last() {
        Some(l) if l.3 => &body[l.2..],
        Some(l) => {
            // unterminated: the last part runs to the end
            if !l.3 {
                parts.push(&body[l.2..]);
            }
            &body[body.len()..]
        }
        None => &body[body.len()..],
    };
    Some(Multipart {
        preamble,
        parts,
        closed,
        epilogue,
    })
}

/// Base64 in lines of 76 characters, each ended by CRLF.
pub fn base64_lines(data: &[u8]) -> String {
    let enc = B64.encode(data);
    let mut out = String::with_capacity(enc.len() + enc.len() / 76 * 2 + 2);
    for chunk in enc.as_bytes().chunks(76) {
        // base64 output is ASCII
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push_str("\r\n");
    }
    out
}

/// Decode base64 ignoring white space and line ends. `None` on bad input.
pub fn base64_decode(data: &[u8]) -> Option<Vec<u8>> {
    let clean: Vec<u8> = data
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    B64.decode(&clean).ok().or_else(|| {
        base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(&clean)
            .ok()
    })
}

/// Quoted-printable (RFC 2045 §6.7) of text bytes whose lines end in LF or
/// CRLF; output lines end in CRLF and are at most 76 characters.
pub fn quoted_printable(text: &[u8]) -> String {
    let mut out = String::with_capacity(text.len() + text.len() / 10);
    let canon = canonicalize_crlf(text);
    let lines: Vec<&[u8]> = split_crlf_lines(&canon);
    let n = lines.len();
    for (li, line) in lines.into_iter().enumerate() {
        let mut col = 0usize;
        let len = line.len();
        for (i, &b) in line.iter().enumerate() {
            let last = i + 1 == len;
            let trailing_space = (b == b' ' || b == b'\t') && last;
            let enc: Option<String> =
                if trailing_space || b == b'=' || (!(32..=126).contains(&b) && b != b'\t') {
                    Some(format!("={b:02X}"))
                } else if b == b'.' && i == 0 {
                    // keep a leading dot safe from SMTP dot-stuffing mishaps
                    Some("=2E".to_string())
                } else {
                    None
                };
            let piece_len = enc.as_ref().map_or(1, |e| e.len());
            // room for a soft break "=" unless this is the last piece
            let limit = if last { 76 } else { 75 };
            if col + piece_len > limit {
                out.push_str("=\r\n");
                col = 0;
            }
            match enc {
                Some(e) => out.push_str(&e),
                None => out.push(b as char),
            }
            col += piece_len;
        }
        if li + 1 < n {
            out.push_str("\r\n");
        }
    }
    out
}

fn split_crlf_lines(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < data.len() {
        if data[i] == b'\r' && data[i + 1] == b'\n' {
            out.push(&data[start..i]);
            i += 2;
            start = i;
        } else {
            i += 1;
        }
    }
    out.push(&data[start..]);
    out
}

/// Encode a text as ISO-8859-1 when every character fits, else `None`.
pub fn to_latin1(text: &str) -> Option<Vec<u8>> {
    text.chars()
        .map(|c| u8::try_from(u32::from(c)).ok())
        .collect()
}

/// The longest line a header may have, CRLF excluded (RFC 5322 §2.1.1:
/// "MUST be no more than 998 characters").
pub const MAX_LINE: usize = 998;

/// A header field `Name: value` for unstructured text, RFC 2047 encoded
/// (UTF-8, B encoding) when the text is not plain printable ASCII, folded
/// so no line exceeds 78 characters (plain text: at its spaces, where it
/// has them). Plain text with a word too long for [`MAX_LINE`] is encoded
/// too (encoded words can be split anywhere; folding only at spaces): a
/// holder's 900 KB one-word Subject otherwise made one 60 000-character
/// line in every receipt's and envelope's header. Ends with CRLF.
pub fn unstructured_header(name: &str, text: &str) -> String {
    let clean: String = text
        .chars()
        .map(|c| if c == '\r' || c == '\n' { ' ' } else { c })
        .collect();
    let plain =
        clean.chars().all(|c| (' '..='~').contains(&c) || c == '\t') && !clean.contains("=?");
    if plain {
        let folded = fold_words(name, &clean);
        if folded.split("\r\n").all(|l| l.len() <= MAX_LINE) {
            return folded;
        }
    }
    // encoded words of at most 75 chars: "=?UTF-8?B?" + b64 + "?=" (12 chars overhead)
    let mut words = Vec::new();
    let mut chunk = String::new();
    for c in clean.chars() {
        let mut probe = chunk.clone();
        probe.push(c);
        if probe.len().div_ceil(3) * 4 > 63 - name.len().min(20) && !chunk.is_empty() {
            words.push(format!("=?UTF-8?B?{}?=", B64.encode(chunk.as_bytes())));
            chunk.clear();
        }
        chunk.push(c);
    }
    if !chunk.is_empty() || words.is_empty() {
        words.push(format!("=?UTF-8?B?{}?=", B64.encode(chunk.as_bytes())));
    }
    let mut out = format!("{name}: {}", words[0]);
    for w in &words[1..] {
        out.push_str("\r\n ");
        out.push_str(w);
    }
    out.push_str("\r\n");
    out
}

/// Fold a plain ASCII value at spaces so lines stay within 78 characters
/// where possible. Ends with CRLF.
pub fn fold_words(name: &str, value: &str) -> String {
    let mut out = format!("{name}:");
    let mut col = out.len();
    let mut first = true;
    for word in value.split(' ') {
        if !first && col + 1 + word.len() > 78 && col > name.len() + 2 {
            out.push_str("\r\n");
            col = 0;
        }
        out.push(' ');
        out.push_str(word);
        col += 1 + word.len();
        first = false;
    }
    if value.is_empty() {
        out.push(' ');
    }
    out.push_str("\r\n");
    out
}

/// Decode RFC 2047 encoded words in an unstructured header value (as read,
/// unfolded). Unknown charsets and bad words are left as they are.
pub fn decode_words(value: &str) -> String {
    mail_parser::MessageParser::default()
        .parse(format!("Subject: {value}\r\n\r\n").as_bytes())
        .and_then(|m| m.subject().map(str::to_string))
        .unwrap_or_else(|| value.to_string())
}

/// Quote a display name for `"..."` use in an address header.
pub fn quote_display_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\r' | '\n' => out.push(' '),
            _ => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The bare addr-spec of an address header value: the part in angle
/// brackets, else the value itself; comments and quotes are not parsed
/// further. Lowercases nothing.
pub fn addr_spec(value: &str) -> Option<String> {
    mail_parser::MessageParser::default()
        .parse(format!("From: {value}\r\n\r\n").as_bytes())
        .and_then(|m| {
            m.from()
                .and_then(|a| a.first())
                .and_then(|a| a.address())
                .map(str::to_string)
        })
        .or_else(|| {
            let v = value.trim();
            match (v.rfind('<'), v.rfind('>')) {
                (Some(a), Some(b)) if a < b => Some(v[a + 1..b].trim().to_string()),
                _ if v.contains('@') && !v.contains(' ') => Some(v.to_string()),
                _ => None,
            }
        })
}

/// Every addr-spec in an address-list header value (To, Cc).
pub fn addr_list(value: &str) -> Vec<String> {
    mail_parser::MessageParser::default()
        .parse(format!("To: {value}\r\n\r\n").as_bytes())
        .and_then(|m| {
            m.to().map(|list| {
                list.iter()
                    .filter_map(|a| a.address().map(str::to_string))
                    .collect::<Vec<_>>()
            })
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_canonicalisation() {
        assert_eq!(&*canonicalize_crlf(b"a\nb\r\nc\rd"), b"a\r\nb\r\nc\r\nd");
        assert!(matches!(canonicalize_crlf(b"a\r\nb"), Cow::Borrowed(_)));
    }

    #[test]
    fn header_fields_with_folding() {
        let block = b"Subject: one\r\n two\r\nX-A:b\r\nbad line\r\nTo: x@y\r\n";
        let f = header_fields(block);
        assert_eq!(f.len(), 3);
        assert_eq!(f[0].name, "Subject");
        assert_eq!(f[0].unfolded(), "one two");
        assert_eq!(f[0].raw, b"Subject: one\r\n two\r\n");
        assert_eq!(f[1].unfolded(), "b");
        assert_eq!(header_value(&f, "to").as_deref(), Some("x@y"));
    }

    #[test]
    fn header_body_split() {
        let (h, b) = split_header_body(b"A: b\r\nC: d\r\n\r\nbody\r\n");
        assert_eq!(h, b"A: b\r\nC: d\r\n");
        assert_eq!(b, b"body\r\n");
        let (h, b) = split_header_body(b"A: b\n\nbody");
        assert_eq!((h, b), (&b"A: b\n"[..], &b"body"[..]));
    }

    #[test]
    fn multipart_split_follows_rfc2046() {
        let body = b"pre\r\n--XX\r\nA: 1\r\n\r\none\r\n--XX \r\n\r\ntwo\r\n\r\n--XX--\r\nepi";
        let m = split_multipart(body, "XX").expect("multipart");
        assert_eq!(m.preamble, b"pre");
        assert_eq!(m.parts, vec![&b"A: 1\r\n\r\none"[..], &b"\r\ntwo\r\n"[..]]);
        assert!(m.closed);
        assert_eq!(m.epilogue, b"epi");
        assert!(split_multipart(b"nothing here", "XX").is_none());
        // adjacent delimiters: an empty part, no panic
        let m = split_multipart(b"--XX\r\n--XX\r\nA\r\n--XX--\r\n", "XX").expect("mp");
        assert_eq!(m.parts, vec![&b""[..], &b"A"[..]]);
        // a line that merely starts with the delimiter is not one
        let m = split_multipart(b"--XX\r\na\r\n--XXY\r\n--XX--", "XX").expect("mp");
        assert_eq!(m.parts, vec![&b"a\r\n--XXY"[..]]);
    }

    #[test]
    fn qp_encodes_and_breaks_lines() {
        let s = quoted_printable("è ok = fine \nline2".as_bytes());
        assert_eq!(s, "=C3=A8 ok =3D fine=20\r\nline2");
        let long = "a".repeat(200);
        let q = quoted_printable(long.as_bytes());
        assert!(q.split("\r\n").all(|l| l.len() <= 76));
        assert_eq!(q.replace("=\r\n", ""), long);
    }

    #[test]
    fn encoded_words_round_trip() {
        let h = unstructured_header("Subject", "Perché no? ☃ 𝄞");
        assert!(h.starts_with("Subject: =?UTF-8?B?"));
        let value = h["Subject:".len()..].replace("\r\n", "");
        assert_eq!(decode_words(value.trim()), "Perché no? ☃ 𝄞");
        assert_eq!(
            unstructured_header("Subject", "plain"),
            "Subject: plain\r\n"
        );
    }

    #[test]
    fn no_header_line_over_998_characters() {
        // one word of 60 000 characters (hostile input: a 900 KB Subject
        // line, cut by the MTA): encoded words, each line short, the text
        // read back whole
        let long = format!("scenario Hl {}", "x".repeat(60_000));
        let h = unstructured_header("Subject", &format!("ACCETTAZIONE: {long}"));
        assert!(h.ends_with("\r\n"));
        let lines: Vec<&str> = h.trim_end_matches("\r\n").split("\r\n").collect();
        assert!(lines.len() > 1);
        assert!(
            lines.iter().all(|l| l.len() <= 78),
            "longest line: {}",
            lines.iter().map(|l| l.len()).max().unwrap_or(0)
        );
        let value = h["Subject:".len()..].replace("\r\n", "");
        assert_eq!(decode_words(value.trim()), format!("ACCETTAZIONE: {long}"));
        // a plain subject with a long word that still fits stays plain
        let url = format!("see https://example.test/{}", "a".repeat(200));
        let h = unstructured_header("Subject", &url);
        assert!(!h.contains("=?"));
        assert_eq!(h.replace("\r\n", ""), format!("Subject: {url}"));
    }

    #[test]
    fn addresses() {
        assert_eq!(
            addr_spec("\"Mario\" <mario@pec.test>").as_deref(),
            Some("mario@pec.test")
        );
        assert_eq!(
            addr_list("a@x.test, \"B, b\" <b@y.test>"),
            vec!["a@x.test".to_string(), "b@y.test".to_string()]
        );
    }
}
