//! LDIF (RFC 2849) content records → provider entries, and back.
//!
//! Only what a copy of the providers' index needs: entries separated by
//! blank lines, `#` comments, line folding (a line starting with one space
//! continues the previous one), `attr: value`, `attr:: base64` (also with
//! options such as `;binary`), attribute names in any case. Refused with a
//! clear error: `attr:< URL` values and change records (`changetype:`).
//! Entries whose `objectClass` is not `provider` (the `o=postacert` root,
//! anything else) are skipped.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::{IndexError, ProviderEntry, entry_from_attrs};
use crate::crypto::CryptoError;
use crate::crypto::verify::{TrustStore, verify_enveloped};

/// Folded lines are at most this many columns (RFC 2849 recommends 76).
const FOLD: usize = 76;

/// The root entry of the directory (PEC-RULES §5.3), without `LDIFLocationURL`.
const ROOT_ENTRY: &str = "dn: o=postacert\n\
objectClass: top\n\
objectClass: organization\n\
o: postacert\n\
description: Base root for the PEC providers directory\n";

/// One logical (unfolded) line and the number of its first physical line.
struct Logical {
    line: usize,
    text: String,
}

fn err(line: usize, reason: impl Into<String>) -> IndexError {
    IndexError::Ldif {
        line,
        reason: reason.into(),
    }
}

/// Splits the document into records of unfolded lines, without comments.
fn records(text: &str) -> Result<Vec<Vec<Logical>>, IndexError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    let mut record: Vec<Logical> = Vec::new();
    let mut current: Option<Logical> = None;
    let mut in_comment = false;
    for (i, raw) in text.split('\n').enumerate() {
        let n = i + 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if let Some(cont) = raw.strip_prefix(' ') {
            if in_comment {
                continue;
            }
            if let Some(cur) = current.as_mut() {
                cur.text.push_str(cont);
                continue;
            }
            if raw.trim().is_empty() {
                // whitespace-only line between records: a separator
            } else {
                return Err(err(
                    n,
                    "continuation line (leading space) with no line to continue",
                ));
            }
        }
        // not a continuation: the previous logical line is complete
        in_comment = false;
        if let Some(cur) = current.take() {
            record.push(cur);
        }
        if raw.trim().is_empty() {
            if !record.is_empty() {
                out.push(std::mem::take(&mut record));
            }
        } else if raw.starts_with('#') {
            in_comment = true;
        } else {
            current = Some(Logical {
                line: n,
                text: raw.to_string(),
            });
        }
    }
    if let Some(cur) = current.take() {
        record.push(cur);
    }
    if !record.is_empty() {
        out.push(record);
    }
    Ok(out)
}

/// `name: value` / `name:: base64` / `name:< url` → (name, value bytes).
fn attr_line(l: &Logical) -> Result<(String, Vec<u8>), IndexError> {
    let Some((name, rest)) = l.text.split_once(':') else {
        return Err(err(
            l.line,
            format!("expected `attribute: value`, found {:?}", clip(&l.text)),
        ));
    };
    let valid_name = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ';' || c == '.');
    if !valid_name {
        return Err(err(
            l.line,
            format!("invalid attribute name {:?}", clip(name)),
        ));
    }
    if let Some(b64) = rest.strip_prefix(':') {
        let b64 = b64.trim_matches(' ');
        let value = B64
            .decode(b64)
            .map_err(|e| err(l.line, format!("{name}: invalid base64 value: {e}")))?;
        Ok((name.to_string(), value))
    } else if rest.starts_with('<') {
        Err(err(
            l.line,
            format!(
                "{name}: URL values (`{name}:< ...`) are not supported; inline the value as base64"
            ),
        ))
    } else {
        Ok((
            name.to_string(),
            rest.trim_start_matches(' ').as_bytes().to_vec(),
        ))
    }
}

/// At most 60 characters of `s`, for error messages.
fn clip(s: &str) -> String {
    s.chars().take(60).collect()
}

/// Parses an LDIF document into provider entries (see the module
/// documentation). An entry with `objectClass: provider` that lacks a
/// mandatory attribute is an error naming the entry's `dn:` line and the
/// attribute. Never panics.
pub fn parse(text: &str) -> Result<Vec<ProviderEntry>, IndexError> {
    let mut entries = Vec::new();
    for (k, record) in records(text)?.into_iter().enumerate() {
        let mut lines = record.iter().peekable();
        if k == 0
            && let Some(first) = lines.peek()
            && first.text.to_ascii_lowercase().starts_with("version:")
        {
            lines.next();
        }
        let Some(first) = lines.next() else {
            continue;
        };
        let (dn_attr, dn_value) = attr_line(first)?;
        if !dn_attr.eq_ignore_ascii_case("dn") {
            return Err(err(
                first.line,
                format!("a record must begin with `dn:`, found `{dn_attr}:`"),
            ));
        }
        let dn = String::from_utf8(dn_value).map_err(|_| err(first.line, "dn is not UTF-8"))?;
        let mut attrs = Vec::new();
        let mut is_provider = false;
        for l in lines {
            let (name, value) = attr_line(l)?;
            let lower = name.to_ascii_lowercase();
            if lower == "changetype" || lower == "control" {
                return Err(err(
                    l.line,
                    format!(
                        "`{name}:` in entry {dn:?}: LDIF change records are not supported; \
                         give a content LDIF (entries only)"
                    ),
                ));
            }
            if lower == "objectclass"
                && std::str::from_utf8(&value)
                    .is_ok_and(|v| v.trim().eq_ignore_ascii_case("provider"))
            {
                is_provider = true;
            }
            attrs.push((name, value));
        }
        if !is_provider {
            continue;
        }
        let entry = entry_from_attrs(&dn, &attrs)
            .map_err(|reason| err(first.line, format!("entry {dn:?}: {reason}")))?;
        entries.push(entry);
    }
    Ok(entries)
}

/// Reads and parses an LDIF file.
pub fn load(path: &Path) -> Result<Vec<ProviderEntry>, IndexError> {
    let bytes = std::fs::read(path).map_err(|source| IndexError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8(bytes).map_err(|e| IndexError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not UTF-8: {e}")),
    })?;
    parse(&text)
}

/// Reads a signed LDIF file (`.p7m`: CMS SignedData enveloping the LDIF,
/// DER, PEM or base64), checks its signature and its signer's chain to
/// `signed_by` at the current time, and parses the LDIF it carries. A file
/// that is a plain LDIF is [`IndexError::NotSigned`], one whose signer does
/// not chain to `signed_by` [`IndexError::UntrustedSigner`], any other
/// that does not verify [`IndexError::Signature`]: its content is not read.
pub fn load_signed(path: &Path, signed_by: &TrustStore) -> Result<Vec<ProviderEntry>, IndexError> {
    let bytes = std::fs::read(path).map_err(|source| IndexError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let not_signed = || IndexError::NotSigned {
        path: path.to_path_buf(),
    };
    if starts_as_ldif(&bytes) {
        return Err(not_signed());
    }
    let content = verify_enveloped(&bytes, signed_by).map_err(|e| match e {
        CryptoError::InvalidInput(_) if has_dn_lines(&bytes) => not_signed(),
        CryptoError::Untrusted(detail) => IndexError::UntrustedSigner {
            path: path.to_path_buf(),
            detail,
        },
        e => IndexError::Signature {
            path: path.to_path_buf(),
            reason: e.to_string(),
        },
    })?;
    let text = String::from_utf8(content).map_err(|e| IndexError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("the signed LDIF is not UTF-8: {e}"),
        ),
    })?;
    parse(&text)
}

/// Whether `bytes` start (after a BOM and whitespace) as an LDIF document
/// does: a `dn:` or `version:` line. Neither is possible in DER (which
/// starts with 0x30), PEM or base64 (no `:`).
fn starts_as_ldif(bytes: &[u8]) -> bool {
    let b = bytes.strip_prefix(b"\xef\xbb\xbf").unwrap_or(bytes);
    let b = b.trim_ascii_start();
    [&b"dn:"[..], b"version:"].iter().any(|prefix| {
        b.get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
    })
}

/// Whether `bytes` are text with at least one `dn:` line (an LDIF that
/// starts with comments): asked only of bytes that decoded as neither DER
/// nor base64.
fn has_dn_lines(bytes: &[u8]) -> bool {
    std::str::from_utf8(bytes).is_ok_and(|text| {
        text.lines().any(|l| {
            l.get(..3)
                .is_some_and(|head| head.eq_ignore_ascii_case("dn:"))
        })
    })
}

/// RFC 2849 SAFE-STRING: written as is; anything else is base64.
fn is_safe(value: &[u8]) -> bool {
    let ok_char = |b: &u8| (0x01..=0x7f).contains(b) && *b != b'\n' && *b != b'\r';
    match (value.first(), value.last()) {
        (None, _) => true,
        (Some(first), Some(last)) => {
            value.iter().all(ok_char) && !matches!(first, b' ' | b':' | b'<') && *last != b' '
        }
        (Some(_), None) => false,
    }
}

/// Appends `line`, folded at [`FOLD`] columns.
fn push_folded(out: &mut String, line: &str) {
    let mut col = 0;
    for c in line.chars() {
        if col == FOLD {
            out.push_str("\n ");
            col = 1;
        }
        out.push(c);
        col += 1;
    }
    out.push('\n');
}

fn push_attr(out: &mut String, name: &str, value: &[u8]) {
    let line = match std::str::from_utf8(value) {
        Ok(v) if is_safe(value) => format!("{name}: {v}"),
        _ => format!("{name}:: {}", B64.encode(value)),
    };
    push_folded(out, &line);
}

/// RFC 4514 escaping of an RDN value.
fn escape_rdn_value(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    let last = v.chars().count().saturating_sub(1);
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && (c == ' ' || c == '#'))
            || (i == last && c == ' ');
        if special {
            s.push('\\');
        }
        s.push(c);
    }
    s
}

/// The DN an entry would have in the directory when it carries none.
fn default_dn(e: &ProviderEntry) -> String {
    let provider = format!("providerName={},o=postacert", escape_rdn_value(&e.name));
    match &e.unit {
        Some(u) => format!("providerUnit={},{provider}", escape_rdn_value(u)),
        None => provider,
    }
}

/// Writes entries as LDIF content records: `dn`, `objectClass: top` and
/// `provider`, the attributes, certificates as `providerCertificate;binary::
/// <base64>`, lines folded at 76 columns, a blank line after each entry.
/// An entry with an empty `dn` gets `providerName=<name>,o=postacert`
/// (under its `providerUnit=` when it has one).
pub fn write(entries: &[ProviderEntry]) -> String {
    let mut out = String::new();
    for e in entries {
        let dn = if e.dn.trim().is_empty() {
            default_dn(e)
        } else {
            e.dn.clone()
        };
        push_attr(&mut out, "dn", dn.as_bytes());
        push_attr(&mut out, "objectClass", b"top");
        push_attr(&mut out, "objectClass", b"provider");
        push_attr(&mut out, "providerName", e.name.as_bytes());
        if let Some(u) = &e.unit {
            push_attr(&mut out, "providerUnit", u.as_bytes());
        }
        for h in &e.cert_hashes {
            push_attr(&mut out, "providerCertificateHash", h.as_bytes());
        }
        for c in &e.certificates {
            push_folded(
                &mut out,
                &format!("providerCertificate;binary:: {}", B64.encode(c)),
            );
        }
        push_attr(&mut out, "mailReceipt", e.mail_receipt.as_bytes());
        for d in &e.managed_domains {
            push_attr(&mut out, "managedDomains", d.as_bytes());
        }
        out.push('\n');
    }
    out
}

/// [`write`] preceded by the `o=postacert` root entry: a whole directory,
/// loadable with `slapadd` / `ldapadd` (parents must precede children, so
/// list each main entry before its `providerUnit` entries).
pub fn write_directory(entries: &[ProviderEntry]) -> String {
    let mut out = String::from(ROOT_ENTRY);
    out.push('\n');
    out.push_str(&write(entries));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_keeps_lines_short_and_round_trips() {
        let mut out = String::new();
        let long = "x".repeat(200);
        push_folded(&mut out, &format!("description: {long}"));
        assert!(out.lines().all(|l| l.len() <= FOLD));
        let recs = records(&out).expect("records");
        assert_eq!(recs[0][0].text, format!("description: {long}"));
    }

    #[test]
    fn unsafe_values_are_base64() {
        assert!(is_safe(b"pec.a.test"));
        assert!(!is_safe(b" leading"));
        assert!(!is_safe(b"trailing "));
        assert!(!is_safe(b":colon"));
        assert!(!is_safe("Società".as_bytes()));
    }

    #[test]
    fn a_plain_ldif_is_told_from_a_signed_file() {
        for plain in [
            &b"dn: o=postacert\nobjectClass: top\n"[..],
            b"\xef\xbb\xbf\r\n  DN: o=postacert\n",
            b"version: 1\ndn: o=postacert\n",
        ] {
            assert!(starts_as_ldif(plain), "{}", String::from_utf8_lossy(plain));
        }
        for other in [
            &b"\x30\x82\x01\x00"[..],
            b"-----BEGIN PKCS7-----\nMIIB\n-----END PKCS7-----\n",
            b"MIIBxzCCAW2gAwIBAgIU",
            b"# the index\ndn: o=postacert\n",
            b"",
        ] {
            assert!(!starts_as_ldif(other), "{}", String::from_utf8_lossy(other));
        }
        assert!(has_dn_lines(b"# the index\n\ndn: o=postacert\n"));
        assert!(!has_dn_lines(b"# nothing but comments\n"));
        assert!(!has_dn_lines(b"\xff\xfe dn: x"));
    }

    #[test]
    fn rdn_escaping() {
        assert_eq!(escape_rdn_value("A, B+C"), "A\\, B\\+C");
        assert_eq!(escape_rdn_value(" x "), "\\ x\\ ");
    }
}
