//! `daticert.xml`, the certification data every PEC envelope, receipt and
//! notice carries (PEC-RULES §3).
//!
//! [`DatiCert::to_xml`] writes the file exactly as real providers do (the
//! Aruba 2014 avvenuta-consegna of PEC-RULES §3.3 comes out byte for byte);
//! [`DatiCert::from_xml`] reads any real one, tolerating the usual variations
//! (DOCTYPE, CRLF, BOM, attribute order, stray text between elements,
//! ISO-8859-1 / windows-1252 / UTF-16 input).
//!
//! Text is never trimmed on reading, except the date fields (`giorno`, `ora`,
//! `zona`) and the enumerated attributes, so `from_xml(to_xml(x)) == x` for
//! every value whose strings hold only XML 1.0 characters and whose `data`
//! has whole seconds, a whole-minute offset and a year in 0..=9999.

use std::fmt::Write as _;

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveTime, TimeZone, Utc};

use crate::pec::kind::{Errore, Tipo, TipoDestinatario, TipoRicevuta, UnknownValue};

/// One `<destinatari>` element: an original `To:`/`Cc:` recipient.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Destinatario {
    pub address: String,
    pub tipo: TipoDestinatario,
}

/// The facts of a `daticert.xml` (PEC-RULES §3.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatiCert {
    pub tipo: Tipo,
    pub errore: Errore,
    pub mittente: String,
    pub destinatari: Vec<Destinatario>,
    pub risposte: String,
    pub oggetto: Option<String>,
    pub gestore_emittente: String,
    /// Local legal time of Italy with its offset (the `zona` attribute).
    pub data: DateTime<FixedOffset>,
    /// PEC msgid, without angle brackets.
    pub identificativo: String,
    /// The original Message-ID, with its angle brackets as on the wire (`<a@b>`).
    pub msgid: Option<String>,
    pub ricevuta: Option<TipoRicevuta>,
    pub consegna: Option<String>,
    pub ricezione: Vec<String>,
    pub errore_esteso: Option<String>,
}

/// Why a `daticert.xml` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DatiCertError {
    /// Not well-formed XML (or over the parser's node limit).
    #[error("daticert.xml is not well-formed XML: {0}")]
    Xml(String),
    /// The root element is not `<postacert>`.
    #[error("daticert.xml root element is <{0}>, expected <postacert>")]
    WrongRoot(String),
    /// A required element is absent (the name is the element's).
    #[error("daticert.xml lacks the required element <{0}>")]
    MissingElement(&'static str),
    /// A required attribute is absent.
    #[error("daticert.xml lacks the required attribute {attribute} on <{element}>")]
    MissingAttribute {
        element: &'static str,
        attribute: &'static str,
    },
    /// An enumerated attribute (`tipo`, `errore`, `ricevuta@tipo`,
    /// `destinatari@tipo`) has a value the DTD does not list.
    #[error("daticert.xml: {0}")]
    BadValue(#[from] UnknownValue),
    /// `giorno`, `ora` or `zona` is malformed, or they do not make a valid
    /// instant together (`field` is then `data`).
    #[error("daticert.xml has a bad {field} value {value:?}")]
    BadDate { field: &'static str, value: String },
}

/// The parser's node limit: far above any real daticert (a few dozen nodes,
/// two per extra recipient), low enough to bound memory on hostile input.
const NODES_LIMIT: u32 = 1_000_000;

/// Deepest element nesting accepted. A daticert is 4 deep
/// (`postacert/dati/data/giorno`); the parser (roxmltree 0.20) recurses
/// once per level, so hostile nesting must be refused before parsing.
const MAX_DEPTH: usize = 100;

/// Convert an instant to Italy's local legal time (Europe/Rome, chrono-tz):
/// +0100 in winter, +0200 in summer.
pub fn rome_time(t: DateTime<Utc>) -> DateTime<FixedOffset> {
    t.with_timezone(&chrono_tz::Europe::Rome).fixed_offset()
}

impl DatiCert {
    /// The XML exactly as real providers write it: `<?xml version="1.0"
    /// encoding="UTF-8"?>` + LF, no DOCTYPE, 4-space indentation, LF line
    /// ends (a final LF after `</postacert>`), elements in DTD order, `tipo`
    /// and `errore` always written, `<ricevuta tipo="..." />`, `<data
    /// zona="+hhmm">` with `<giorno>dd/mm/yyyy</giorno>` and
    /// `<ora>hh:mm:ss</ora>` (fractions of a second are dropped).
    ///
    /// Text is escaped (`&` `<` `>`, CR as `&#13;` so it survives parsing;
    /// in attributes also `"`, TAB, LF). Characters XML 1.0 forbids (C0
    /// controls other than TAB/LF/CR, U+FFFE, U+FFFF) are replaced by
    /// U+FFFD, so the output is always well-formed.
    ///
    /// `None` optional elements and an empty `ricezione` are omitted;
    /// `Some("")` is written as an empty element (and read back as
    /// `Some("")`). An empty `destinatari` writes no element, which the DTD
    /// rejects (`destinatari+`) and [`DatiCert::from_xml`] refuses.
    pub fn to_xml(&self) -> String {
        let mut out = String::with_capacity(1024 + 64 * self.destinatari.len());
        out.push_str("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        out.push_str("<postacert tipo=\"");
        push_attr(&mut out, self.tipo.wire());
        out.push_str("\" errore=\"");
        push_attr(&mut out, self.errore.wire());
        out.push_str("\">\n");

        out.push_str("    <intestazione>\n");
        push_elem(&mut out, 2, "mittente", &self.mittente);
        for d in &self.destinatari {
            out.push_str("        <destinatari tipo=\"");
            push_attr(&mut out, d.tipo.wire());
            out.push_str("\">");
            push_text(&mut out, &d.address);
            out.push_str("</destinatari>\n");
        }
        push_elem(&mut out, 2, "risposte", &self.risposte);
        if let Some(o) = &self.oggetto {
            push_elem(&mut out, 2, "oggetto", o);
        }
        out.push_str("    </intestazione>\n");

        out.push_str("    <dati>\n");
        push_elem(&mut out, 2, "gestore-emittente", &self.gestore_emittente);
        push_data(&mut out, &self.data);
        push_elem(&mut out, 2, "identificativo", &self.identificativo);
        if let Some(m) = &self.msgid {
            push_elem(&mut out, 2, "msgid", m);
        }
        if let Some(r) = self.ricevuta {
            out.push_str("        <ricevuta tipo=\"");
            push_attr(&mut out, r.wire());
            out.push_str("\" />\n");
        }
        if let Some(c) = &self.consegna {
            push_elem(&mut out, 2, "consegna", c);
        }
        for r in &self.ricezione {
            push_elem(&mut out, 2, "ricezione", r);
        }
        if let Some(e) = &self.errore_esteso {
            push_elem(&mut out, 2, "errore-esteso", e);
        }
        out.push_str("    </dati>\n");
        out.push_str("</postacert>\n");
        out
    }

    /// Parse any real `daticert.xml`.
    ///
    /// Accepts extra whitespace, CRLF, a DOCTYPE (external or internal
    /// subset; entities are expanded with roxmltree's loop limits), any
    /// attribute order, a UTF-8 BOM, a UTF-16 BOM, a declared ISO-8859-1 or
    /// windows-1252 encoding (anything else is read as UTF-8, invalid bytes
    /// becoming U+FFFD), stray text, comments and unknown elements between
    /// the known ones (ignored), and the known ones in any order (the first
    /// of a repeated single element wins).
    ///
    /// Absent `errore` is `nessuno` and absent `destinatari@tipo` is
    /// `certificato` (the DTD defaults); enumerated values are
    /// case-insensitive. Element text is taken as is (never trimmed), except
    /// `giorno`, `ora` and `zona`, which are trimmed and may use 1-digit
    /// day/month/hour/minute/second and a `+hh:mm` offset.
    ///
    /// Never panics; input that is not a daticert is an `Err`.
    pub fn from_xml(xml: &[u8]) -> Result<DatiCert, DatiCertError> {
        let text = decode(xml);
        check_depth(text.as_bytes())?;
        let opt = roxmltree::ParsingOptions {
            allow_dtd: true,
            nodes_limit: NODES_LIMIT,
        };
        let doc = roxmltree::Document::parse_with_options(&text, opt)
            .map_err(|e| DatiCertError::Xml(e.to_string()))?;
        let root = doc.root_element();
        if root.tag_name().name() != "postacert" {
            return Err(DatiCertError::WrongRoot(root.tag_name().name().to_string()));
        }

        let tipo: Tipo = attr(root, "tipo")
            .ok_or(DatiCertError::MissingAttribute {
                element: "postacert",
                attribute: "tipo",
            })?
            .parse()?;
        let errore = match attr(root, "errore") {
            Some(v) => v.parse()?,
            None => Errore::Nessuno,
        };

        let intestazione = required_child(root, "intestazione")?;
        let mittente = text_of(required_child(intestazione, "mittente")?);
        let mut destinatari = Vec::new();
        for d in children(intestazione, "destinatari") {
            let tipo = match attr(d, "tipo") {
                Some(v) => v.parse()?,
                None => TipoDestinatario::Certificato,
            };
            destinatari.push(Destinatario {
                address: text_of(d),
                tipo,
            });
        }
        if destinatari.is_empty() {
            return Err(DatiCertError::MissingElement("destinatari"));
        }
        let risposte = text_of(required_child(intestazione, "risposte")?);
        let oggetto = child(intestazione, "oggetto").map(text_of);

        let dati = required_child(root, "dati")?;
        let gestore_emittente = text_of(required_child(dati, "gestore-emittente")?);
        let data = parse_data(required_child(dati, "data")?)?;
        let identificativo = text_of(required_child(dati, "identificativo")?);
        let msgid = child(dati, "msgid").map(text_of);
        let ricevuta = match child(dati, "ricevuta") {
            Some(r) => Some(
                attr(r, "tipo")
                    .ok_or(DatiCertError::MissingAttribute {
                        element: "ricevuta",
                        attribute: "tipo",
                    })?
                    .parse()?,
            ),
            None => None,
        };
        let consegna = child(dati, "consegna").map(text_of);
        let ricezione = children(dati, "ricezione").map(text_of).collect();
        let errore_esteso = child(dati, "errore-esteso").map(text_of);

        Ok(DatiCert {
            tipo,
            errore,
            mittente,
            destinatari,
            risposte,
            oggetto,
            gestore_emittente,
            data,
            identificativo,
            msgid,
            ricevuta,
            consegna,
            ricezione,
            errore_esteso,
        })
    }
}

// ---------------------------------------------------------------- writing

fn is_xml_char(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// Element text: `&` `<` `>` escaped, CR as a character reference (a parser
/// would turn a literal CR into LF), non-XML characters replaced.
fn push_text(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\r' => out.push_str("&#13;"),
            c if is_xml_char(c) => out.push(c),
            _ => out.push('\u{FFFD}'),
        }
    }
}

/// Attribute value (always written between `"`): as text, plus `"` and the
/// white space a parser would normalise.
fn push_attr(out: &mut String, s: &str) {
    for c in s.chars() {
        match c {
            '"' => out.push_str("&quot;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            _ => push_text(out, c.encode_utf8(&mut [0; 4])),
        }
    }
}

fn push_elem(out: &mut String, depth: usize, name: &str, text: &str) {
    for _ in 0..depth {
        out.push_str("    ");
    }
    out.push('<');
    out.push_str(name);
    out.push('>');
    push_text(out, text);
    out.push_str("</");
    out.push_str(name);
    out.push_str(">\n");
}

fn push_data(out: &mut String, data: &DateTime<FixedOffset>) {
    use chrono::{Datelike, Timelike};
    let secs = data.offset().local_minus_utc();
    let sign = if secs < 0 { '-' } else { '+' };
    let mins = secs.unsigned_abs() / 60;
    // Writing into a String cannot fail.
    let _ = write!(
        out,
        "        <data zona=\"{sign}{:02}{:02}\">\n            <giorno>{:02}/{:02}/{:04}</giorno>\n            <ora>{:02}:{:02}:{:02}</ora>\n        </data>\n",
        mins / 60,
        mins % 60,
        data.day(),
        data.month(),
        data.year(),
        data.hour(),
        data.minute(),
        data.second(),
    );
}

// ---------------------------------------------------------------- reading

/// Bytes to text: BOMs, declared single-byte encodings, else lossy UTF-8.
fn decode(xml: &[u8]) -> String {
    if let Some(rest) = xml.strip_prefix(b"\xEF\xBB\xBF") {
        return String::from_utf8_lossy(rest).into_owned();
    }
    if let Some(rest) = xml.strip_prefix(b"\xFF\xFE") {
        return utf16(rest, u16::from_le_bytes);
    }
    if let Some(rest) = xml.strip_prefix(b"\xFE\xFF") {
        return utf16(rest, u16::from_be_bytes);
    }
    match declared_encoding(xml).as_deref() {
        Some("iso-8859-1" | "iso8859-1" | "iso_8859-1" | "latin1" | "latin-1" | "l1") => {
            xml.iter().map(|&b| char::from(b)).collect()
        }
        Some("windows-1252" | "cp1252") => xml.iter().map(|&b| cp1252(b)).collect(),
        _ => String::from_utf8_lossy(xml).into_owned(),
    }
}

fn utf16(bytes: &[u8], from: fn([u8; 2]) -> u16) -> String {
    let units: Vec<u16> = bytes
        .chunks(2)
        .map(|c| match c {
            [a, b] => from([*a, *b]),
            _ => 0xFFFD,
        })
        .collect();
    String::from_utf16_lossy(&units)
}

/// The `encoding` pseudo-attribute of a leading XML declaration, lowercased.
fn declared_encoding(xml: &[u8]) -> Option<String> {
    let decl = xml.strip_prefix(b"<?xml")?;
    let end = decl.windows(2).position(|w| w == b"?>")?;
    let decl = &decl[..end];
    let at = decl.windows(8).position(|w| w == b"encoding")?;
    let rest = decl[at + 8..]
        .trim_ascii_start()
        .strip_prefix(b"=")?
        .trim_ascii_start();
    let (&quote, rest) = rest.split_first()?;
    if quote != b'"' && quote != b'\'' {
        return None;
    }
    let len = rest.iter().position(|&b| b == quote)?;
    Some(String::from_utf8_lossy(&rest[..len]).to_ascii_lowercase())
}

fn cp1252(b: u8) -> char {
    const HIGH: [char; 32] = [
        '€', '\u{81}', '‚', 'ƒ', '„', '…', '†', '‡', 'ˆ', '‰', 'Š', '‹', 'Œ', '\u{8D}', 'Ž',
        '\u{8F}', '\u{90}', '‘', '’', '“', '”', '•', '–', '—', '˜', '™', 'š', '›', 'œ', '\u{9D}',
        'ž', 'Ÿ',
    ];
    match b {
        0x80..=0x9F => HIGH[usize::from(b - 0x80)],
        _ => char::from(b),
    }
}

fn find(hay: &[u8], from: usize, needle: &[u8]) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Most text the internal entities of a DOCTYPE may expand into, as
/// bounded by [`check_depth`]. A daticert has no use for more than a few
/// hundred bytes of entity text.
const MAX_ENTITY_EXPANSION: usize = 4 << 20;

/// Refuse element nesting deeper than [`MAX_DEPTH`] without recursing,
/// DOCTYPE internal subsets whose quoted values could expand into markup
/// (`<` or a character reference), which would bypass this count, and
/// internal entities referenced so often that their expansion could exceed
/// [`MAX_ENTITY_EXPANSION`].
/// Malformed input is let through: the parser reports it.
fn check_depth(s: &[u8]) -> Result<(), DatiCertError> {
    let too_deep = || DatiCertError::Xml(format!("elements nested deeper than {MAX_DEPTH}"));
    let mut depth = 0usize;
    let mut i = 0;
    // The longest quoted value of an internal subset, and where the DOCTYPE
    // ends (see `check_expansion`).
    let mut longest_value = 0usize;
    let mut doctype_end = None;
    while let Some(lt) = find(s, i, b"<") {
        let rest = &s[lt..];
        let skip_to = |end: &[u8], from: usize| find(s, from, end).map(|p| p + end.len());
        let next = if rest.starts_with(b"<!--") {
            skip_to(b"-->", lt + 4)
        } else if rest.starts_with(b"<![CDATA[") {
            skip_to(b"]]>", lt + 9)
        } else if rest.starts_with(b"<?") {
            skip_to(b"?>", lt + 2)
        } else if rest.starts_with(b"<!") {
            let end = skip_declaration(s, lt + 2, &mut longest_value)?;
            doctype_end = end;
            end
        } else if rest.starts_with(b"</") {
            depth = depth.saturating_sub(1);
            skip_to(b">", lt + 2)
        } else {
            let end = skip_tag(s, lt + 1);
            // `end` is just past `>`; `/>` closes an empty element.
            if let Some(end) = end
                && s.get(end.wrapping_sub(2)) != Some(&b'/')
            {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(too_deep());
                }
            }
            end
        };
        match next {
            Some(n) => i = n,
            None => break,
        }
    }
    match doctype_end {
        Some(end) if longest_value > 0 => check_expansion(&s[end..], longest_value),
        _ => Ok(()),
    }
}

/// Hostile input (tests/hostile.rs, a 64 KB entity referenced 20 000
/// times): roxmltree bounds the references made *inside* entities (255 per
/// reference of the document, 10 deep) but not the references the document
/// itself makes, so one large entity referenced many times expanded into
/// gigabytes of text. Each reference of the document expands to at most
/// 256 entity values of at most `longest_value` bytes: refuse the file when
/// that bound, over all its references to entities other than the
/// predefined ones, exceeds [`MAX_ENTITY_EXPANSION`].
fn check_expansion(document: &[u8], longest_value: usize) -> Result<(), DatiCertError> {
    const PREDEFINED: [&[u8]; 5] = [b"lt;", b"gt;", b"amp;", b"quot;", b"apos;"];
    let references = document
        .iter()
        .enumerate()
        .filter(|&(i, &b)| {
            let rest = document.get(i + 1..).unwrap_or_default();
            b == b'&' && !rest.starts_with(b"#") && !PREDEFINED.iter().any(|p| rest.starts_with(p))
        })
        .count();
    if references.saturating_mul(256).saturating_mul(longest_value) > MAX_ENTITY_EXPANSION {
        return Err(DatiCertError::Xml(format!(
            "{references} references to DOCTYPE entities could expand beyond {MAX_ENTITY_EXPANSION} bytes"
        )));
    }
    Ok(())
}

/// From inside a start tag to just past its `>`, skipping quoted values.
fn skip_tag(s: &[u8], mut i: usize) -> Option<usize> {
    while let Some(&b) = s.get(i) {
        match b {
            b'"' | b'\'' => i = find(s, i + 1, &[b])?,
            b'>' => return Some(i + 1),
            _ => {}
        }
        i += 1;
    }
    None
}

/// From after `<!` (a DOCTYPE) to just past its final `>`, through an
/// internal subset, its comments, PIs and quoted values; `longest_value`
/// grows to the longest quoted value inside the internal subset.
fn skip_declaration(
    s: &[u8],
    mut i: usize,
    longest_value: &mut usize,
) -> Result<Option<usize>, DatiCertError> {
    let mut brackets = 0usize;
    while let Some(&b) = s.get(i) {
        match b {
            b'"' | b'\'' => {
                let Some(end) = find(s, i + 1, &[b]) else {
                    return Ok(None);
                };
                let value = &s[i + 1..end];
                if brackets > 0 {
                    *longest_value = (*longest_value).max(value.len());
                }
                if value.contains(&b'<') || find(value, 0, b"&#").is_some() {
                    return Err(DatiCertError::Xml(
                        "DOCTYPE declares an entity that may expand into markup".to_string(),
                    ));
                }
                i = end;
            }
            b'<' if s[i..].starts_with(b"<!--") => match find(s, i + 4, b"-->") {
                Some(end) => i = end + 2,
                None => return Ok(None),
            },
            b'<' if s[i..].starts_with(b"<?") => match find(s, i + 2, b"?>") {
                Some(end) => i = end + 1,
                None => return Ok(None),
            },
            b'[' => brackets += 1,
            b']' => brackets = brackets.saturating_sub(1),
            b'>' if brackets == 0 => return Ok(Some(i + 1)),
            _ => {}
        }
        i += 1;
    }
    Ok(None)
}

fn attr<'a>(node: roxmltree::Node<'a, '_>, name: &str) -> Option<&'a str> {
    node.attributes()
        .find(|a| a.name() == name)
        .map(|a| a.value())
}

fn children<'a, 'i>(
    node: roxmltree::Node<'a, 'i>,
    name: &'static str,
) -> impl Iterator<Item = roxmltree::Node<'a, 'i>> {
    node.children()
        .filter(move |c| c.is_element() && c.tag_name().name() == name)
}

fn child<'a, 'i>(
    node: roxmltree::Node<'a, 'i>,
    name: &'static str,
) -> Option<roxmltree::Node<'a, 'i>> {
    children(node, name).next()
}

fn required_child<'a, 'i>(
    node: roxmltree::Node<'a, 'i>,
    name: &'static str,
) -> Result<roxmltree::Node<'a, 'i>, DatiCertError> {
    child(node, name).ok_or(DatiCertError::MissingElement(name))
}

/// The element's own text (text and CDATA children, concatenated; nested
/// elements ignored), untrimmed.
fn text_of(node: roxmltree::Node<'_, '_>) -> String {
    node.children()
        .filter(|c| c.is_text())
        .filter_map(|c| c.text())
        .collect()
}

fn bad(field: &'static str, value: &str) -> DatiCertError {
    DatiCertError::BadDate {
        field,
        value: value.to_string(),
    }
}

/// `n` separated numbers of 1 to `max_digits` ASCII digits each.
fn numbers<const N: usize>(s: &str, sep: char, max_digits: [usize; N]) -> Option<[u32; N]> {
    let mut out = [0u32; N];
    let mut parts = s.split(sep);
    for (slot, max) in out.iter_mut().zip(max_digits) {
        let p = parts.next()?;
        if p.is_empty() || p.len() > max || !p.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        *slot = p.parse().ok()?;
    }
    match parts.next() {
        Some(_) => None,
        None => Some(out),
    }
}

/// `[+|-]hhmm` (also `hh:mm`, sign optional meaning `+`) to an offset.
fn parse_zona(z: &str) -> Option<FixedOffset> {
    let (sign, rest) = match z.as_bytes().first()? {
        b'+' => (1, &z[1..]),
        b'-' => (-1, &z[1..]),
        _ => (1, z),
    };
    let [h, m] = match rest.len() {
        4 if rest.bytes().all(|b| b.is_ascii_digit()) => {
            [rest[..2].parse().ok()?, rest[2..].parse().ok()?]
        }
        _ => numbers(rest, ':', [2, 2])?,
    };
    if h > 23 || m > 59 {
        return None;
    }
    let secs = i32::try_from(h * 3600 + m * 60).ok()?;
    FixedOffset::east_opt(sign * secs)
}

fn parse_data(node: roxmltree::Node<'_, '_>) -> Result<DateTime<FixedOffset>, DatiCertError> {
    let zona = attr(node, "zona").ok_or(DatiCertError::MissingAttribute {
        element: "data",
        attribute: "zona",
    })?;
    let giorno = text_of(required_child(node, "giorno")?);
    let ora = text_of(required_child(node, "ora")?);

    let offset = parse_zona(zona.trim()).ok_or_else(|| bad("zona", zona))?;
    let [d, mo, y] =
        numbers(giorno.trim(), '/', [2, 2, 4]).ok_or_else(|| bad("giorno", &giorno))?;
    let date = i32::try_from(y)
        .ok()
        .and_then(|y| NaiveDate::from_ymd_opt(y, mo, d))
        .ok_or_else(|| bad("giorno", &giorno))?;
    let [h, mi, s] = numbers(ora.trim(), ':', [2, 2, 2]).ok_or_else(|| bad("ora", &ora))?;
    let time = NaiveTime::from_hms_opt(h, mi, s).ok_or_else(|| bad("ora", &ora))?;
    offset
        .from_local_datetime(&date.and_time(time))
        .single()
        .ok_or_else(|| bad("data", &format!("{giorno} {ora} {zona}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitises_non_xml_characters() {
        let mut s = String::new();
        push_text(&mut s, "a\u{0}b\u{1F}c\u{FFFE}d\te\nf\rg\u{10FFFF}");
        assert_eq!(s, "a\u{FFFD}b\u{FFFD}c\u{FFFD}d\te\nf&#13;g\u{10FFFF}");
    }

    #[test]
    fn zona_forms() {
        assert_eq!(parse_zona("+0100"), FixedOffset::east_opt(3600));
        assert_eq!(parse_zona("-0230"), FixedOffset::east_opt(-9000));
        assert_eq!(parse_zona("+02:00"), FixedOffset::east_opt(7200));
        assert_eq!(parse_zona("0200"), FixedOffset::east_opt(7200));
        assert_eq!(parse_zona("+2400"), None);
        assert_eq!(parse_zona("+01"), None);
        assert_eq!(parse_zona(""), None);
        assert_eq!(parse_zona("+01é0"), None);
    }

    #[test]
    fn encodings() {
        assert_eq!(
            declared_encoding(b"<?xml version='1.0' encoding = 'ISO-8859-1'?><a/>").as_deref(),
            Some("iso-8859-1")
        );
        assert_eq!(declared_encoding(b"<a/>"), None);
        assert_eq!(
            decode(b"<?xml version=\"1.0\" encoding=\"latin1\"?>\xe8"),
            "<?xml version=\"1.0\" encoding=\"latin1\"?>è"
        );
        assert_eq!(
            decode(b"<?xml version=\"1.0\" encoding=\"windows-1252\"?>\x80"),
            "<?xml version=\"1.0\" encoding=\"windows-1252\"?>€"
        );
        assert_eq!(decode(b"\xEF\xBB\xBF<a/>\xff"), "<a/>\u{FFFD}");
        assert_eq!(decode(b"\xFF\xFE<\0a\0/\0>\0"), "<a/>");
        assert_eq!(decode(b"\xFE\xFF\0<\0a\0/\0>"), "<a/>");
    }
}
