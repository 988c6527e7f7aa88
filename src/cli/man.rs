//! `pec-milter man --out DIR` (hidden; the package build runs it): the
//! manual pages.
//!
//! - pec-milter(8): the command line's grammar through `clap_mangen` (name,
//!   synopsis, every command with its own synopsis, description and
//!   options), and the sections a grammar does not hold (description,
//!   signals, environment, files, exit status) written here.
//! - pec-milter.toml(5): generated from the annotated configuration
//!   `milter-conf/pec-milter.toml`, built into the binary. Its header
//!   comment is the description; each `[table]` (a commented-out one such
//!   as `# [signing.pkcs11]` too) is a section, introduced by the comment
//!   block just above its header; each key (a commented-out one too) is an
//!   entry under the comment block just above it, with the value the file
//!   gives and the comment after it. Generated rather than written by hand
//!   so that a key added to the shipped file, with the words next to it, is
//!   in the manual at the next package build: one source, nothing to keep
//!   in step.

use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::CommandFactory;
use clap_mangen::Man;
use clap_mangen::roff::{Inline, Roff, bold, italic, roman};

/// The annotated configuration: the defaults and what each key means.
pub const SHIPPED_CONFIG: &str = include_str!("../../milter-conf/pec-milter.toml");

/// The file names `man` writes into its directory.
pub const PAGE_8: &str = "pec-milter.8";
pub const PAGE_5: &str = "pec-milter.toml.5";

#[derive(Debug, thiserror::Error)]
pub enum ManError {
    #[error("creating {}: {source}", path.display())]
    Dir { path: PathBuf, source: io::Error },
    #[error("writing {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
}

/// Write pec-milter.8 and pec-milter.toml.5 into `out` (created if missing).
pub fn man(out: &Path) -> Result<ExitCode> {
    std::fs::create_dir_all(out).map_err(|source| ManError::Dir {
        path: out.to_path_buf(),
        source,
    })?;
    for (name, text) in [(PAGE_8, page_8()), (PAGE_5, page_5(SHIPPED_CONFIG))] {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|source| ManError::Write {
            path: path.clone(),
            source,
        })?;
        println!("{}", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

// ------------------------------------------------------------------ pec-milter(8)

const DESCRIPTION_8: &[&str] = &[
    "PEC (Posta Elettronica Certificata) is Italy's certified e-mail: the provider signs a \
     transport envelope around every message, and signed receipts prove what was sent, when, \
     and that it reached the mailbox. pec-milter makes an existing Postfix or Sendmail a PEC \
     provider: the access point (holders' submissions, through the milter protocol), the \
     reception point (mail from other providers, milter) and the delivery point (LMTP), in one \
     daemon.",
    "pec-milter run is the daemon; the package's systemd unit starts it as the user pec-milter \
     with /etc/pec-milter/pec-milter.toml (see pec-milter.toml(5)). The other commands check a \
     configuration or an HSM token, read and verify PEC messages, and keep the legal message \
     log. The MTA configuration snippets are in /usr/share/doc/pec-milter/milter-conf/.",
];

const SIGNALS_8: &[(&str, &str)] = &[
    (
        "SIGTERM, SIGINT",
        "Stop taking new connections, finish the messages in progress, exit. The unit's \
         KillSignal; it waits up to TimeoutStopSec=300.",
    ),
    (
        "SIGHUP",
        "Reload: the whole configuration file is read again (keys, trust anchors, CRLs, \
         holder classes, login maps, the providers' index) and swapped in for the \
         connections that open after it; one that fails check-config is refused and the \
         running one keeps serving; listeners, [state], [log] dir and [logging] need a \
         restart. The unit's ExecReload (systemctl reload pec-milter); pec-milter reload \
         --config FILE sends it after checking the file.",
    ),
    (
        "SIGUSR1",
        "Close the current message log file now and seal it (what pec-milter log seal asks \
         of a running daemon).",
    ),
];

const ENVIRONMENT_8: &[(&str, &str)] = &[(
    "PEC_MILTER_LOG",
    "Which diagnostics are written (a tracing filter: error, warn, info, debug, or per module \
     as info,pec_milter::roles::tracking=debug); when set it wins over [logging] level \
     (default info). They go where [logging] output says: standard error (the journal under \
     systemd), text or JSON, or syslog. The legal message log is not affected.",
)];

const FILES_8: &[(&str, &str)] = &[
    (
        "/etc/pec-milter/pec-milter.toml",
        "The configuration (pec-milter.toml(5)); the default of every --config.",
    ),
    (
        "/var/lib/pec-milter/",
        "State store, demo identity, quarantine and the embedded delivery point's Maildir, as \
         the package's configuration places them.",
    ),
    (
        "/var/spool/pec-milter/",
        "Message bodies too large for memory (unnamed files) and the receipts that wait in the \
         outbox.",
    ),
    (
        "/var/log/pec-milter/",
        "The legal message log: one hash-chained file per day and node, sealed by a TSA. Kept \
         30 months; pec-milter log verify checks it.",
    ),
    (
        "/usr/lib/systemd/system/pec-milter.service",
        "The hardened unit (user pec-milter, ProtectSystem=strict, the three directories above \
         writable).",
    ),
    (
        "/usr/share/doc/pec-milter/milter-conf/",
        "The annotated configuration and the Postfix, Sendmail and systemd snippets.",
    ),
];

const EXIT_8: &[(&str, &str)] = &[
    (
        "0",
        "Success; for a check (verify, hsm-check, log verify): it holds.",
    ),
    (
        "1",
        "A check does not hold (a bad signature or chain, a broken log chain, a token that \
         cannot sign; for verify: the PEC message found, or with --all any of them, or the \
         search for them stopped at a limit), or inspect was given a file that is not a mail \
         message.",
    ),
    (
        "2",
        "An error: the command line, the configuration, a file that cannot be read.",
    ),
];

/// pec-milter(8), in roff.
pub fn page_8() -> String {
    let mut cmd = super::Cli::command().subcommand_value_name("COMMAND");
    cmd.build();
    let version = cmd.get_version().unwrap_or_default().to_string();
    let man = Man::new(cmd.clone()).section("8");

    let mut out = Roff::new().render();
    out.push_str(&title("PEC-MILTER", "8", &version));
    out.push_str(&without_preamble(&chunk(|w| man.render_name_section(w))));
    out.push_str(&without_preamble(&chunk(|w| {
        man.render_synopsis_section(w)
    })));

    let mut r = Roff::new();
    r.control("SH", ["DESCRIPTION"]);
    paragraphs(&mut r, DESCRIPTION_8);
    out.push_str(&without_preamble(&r.render()));

    out.push_str(&without_preamble(&chunk(|w| man.render_options_section(w))));

    let mut r = Roff::new();
    r.control("SH", ["COMMANDS"]);
    out.push_str(&without_preamble(&r.render()));
    commands(&mut out, &cmd);

    let mut r = Roff::new();
    for (heading, items) in [
        ("SIGNALS", SIGNALS_8),
        ("ENVIRONMENT", ENVIRONMENT_8),
        ("FILES", FILES_8),
        ("EXIT STATUS", EXIT_8),
    ] {
        r.control("SH", [heading]);
        for (tag, text) in items {
            r.control("TP", []);
            r.text([bold(*tag)]);
            r.text([roman(*text)]);
        }
    }
    r.control("SH", ["SEE ALSO"]);
    r.text([
        bold("pec-milter.toml"),
        roman("(5), "),
        bold("postfix"),
        roman("(1), "),
        bold("sendmail"),
        roman("(8), "),
        bold("systemd.exec"),
        roman("(5), /usr/share/doc/pec-milter/README.md"),
    ]);
    out.push_str(&without_preamble(&r.render()));
    out
}

/// The `.TH` line (the date left empty: the same sources give the same
/// page), then no hyphenation and no justification: the pages are full of
/// paths, options and key names, which must read as they are typed.
fn title(name: &str, section: &str, version: &str) -> String {
    format!(".TH {name} {section} \"\" \"pec-milter {version}\"\n.nh\n.ad l\n")
}

/// Every visible command under `cmd`, recursively: its synopsis, what it
/// does, its options.
fn commands(out: &mut String, cmd: &clap::Command) {
    for sub in cmd.get_subcommands() {
        if sub.is_hide_set() || sub.get_name() == "help" {
            continue;
        }
        let mut sub = sub.clone();
        if sub.has_subcommands() {
            sub = sub.subcommand_value_name("COMMAND");
        }
        if sub.get_arguments().any(|a| a.get_id() == "help") {
            sub = sub.mut_arg("help", |a| a.hide(true));
        }
        let name = sub
            .get_bin_name()
            .unwrap_or_else(|| sub.get_name())
            .to_string();
        let man = Man::new(sub.clone());
        let mut r = Roff::new();
        r.control("SS", [name.as_str()]);
        out.push_str(&without_preamble(&r.render()));
        out.push_str(&without_headings(&chunk(|w| {
            man.render_synopsis_section(w)
        })));
        let about = sub.get_long_about().or_else(|| sub.get_about());
        if let Some(about) = about {
            let mut r = Roff::new();
            r.control("PP", []);
            for line in about.to_string().lines() {
                if line.trim().is_empty() {
                    r.control("PP", []);
                } else {
                    r.text([roman(line)]);
                }
            }
            out.push_str(&without_preamble(&r.render()));
        }
        if sub.get_arguments().any(|a| !a.is_hide_set()) {
            out.push_str(&without_headings(&chunk(|w| man.render_options_section(w))));
        }
        if sub.has_subcommands() {
            commands(out, &sub);
        }
    }
}

/// What one of `Man`'s renderers writes.
fn chunk(render: impl FnOnce(&mut dyn io::Write) -> io::Result<()>) -> String {
    let mut buf = Vec::new();
    // Writing into a Vec cannot fail; the roff is UTF-8 (it is made of &str).
    match render(&mut buf) {
        Ok(()) => String::from_utf8_lossy(&buf).into_owned(),
        Err(_) => String::new(),
    }
}

/// A rendered piece without the apostrophe preamble every roff render starts
/// with (the page keeps the one of its first piece).
fn without_preamble(text: &str) -> String {
    let preamble = Roff::new().render();
    text.strip_prefix(preamble.as_str())
        .unwrap_or(text)
        .to_string()
}

/// A rendered section of a command, without its preamble and `.SH` lines:
/// it goes under the command's `.SS`.
fn without_headings(text: &str) -> String {
    let body = without_preamble(text);
    let mut out = String::new();
    for line in body.lines().filter(|l| !l.starts_with(".SH ")) {
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn paragraphs(r: &mut Roff, paras: &[&str]) {
    for (i, p) in paras.iter().enumerate() {
        if i > 0 {
            r.control("PP", []);
        }
        r.text([roman(*p)]);
    }
}

// ------------------------------------------------------------ pec-milter.toml(5)

/// The annotated configuration, as read for the manual.
#[derive(Debug, Default, PartialEq)]
pub struct ConfDoc {
    /// The comment before the first table.
    pub intro: Vec<Para>,
    pub tables: Vec<Table>,
}

/// A paragraph: its lines as written (without `# `).
pub type Para = Vec<String>;

#[derive(Debug, PartialEq)]
pub struct Table {
    pub name: String,
    /// `# [signing.pkcs11]`: commented out in the shipped file.
    pub commented: bool,
    /// The comment block just above the header.
    pub intro: Vec<Para>,
    pub entries: Vec<Entry>,
}

#[derive(Debug, PartialEq)]
pub enum Entry {
    /// A comment block followed by a blank line: about the table.
    Text(Vec<Para>),
    /// Keys and the comment block just above the first of them.
    Keys { keys: Vec<Key>, about: Vec<Para> },
}

#[derive(Debug, PartialEq)]
pub struct Key {
    pub name: String,
    /// The value as written in the file.
    pub value: String,
    /// `# key = value`: commented out in the shipped file.
    pub commented: bool,
    /// The comment after the value (and its `#   # ...` continuation lines).
    pub note: String,
}

/// Read an annotated configuration into tables, keys and their comments.
/// Never fails: a line that is neither a table header nor a key (commented
/// out or not) is text.
pub fn parse_conf(text: &str) -> ConfDoc {
    let mut doc = ConfDoc::default();
    let mut pending: Vec<Para> = Vec::new();
    let mut last_was_key = false;
    for line in text.lines() {
        let line = line.trim_end();
        if line.trim().is_empty() {
            let paras = take_paras(&mut pending);
            if !paras.is_empty() {
                match doc.tables.last_mut() {
                    Some(t) => t.entries.push(Entry::Text(paras)),
                    None => doc.intro.extend(paras),
                }
            }
            last_was_key = false;
            continue;
        }
        let (commented, body) = match line.strip_prefix('#') {
            Some(rest) => (true, rest.strip_prefix(' ').unwrap_or(rest)),
            None => (false, line),
        };
        if let Some(name) = table_header(body.trim()) {
            doc.tables.push(Table {
                name: name.to_string(),
                commented,
                intro: take_paras(&mut pending),
                entries: Vec::new(),
            });
            last_was_key = false;
            continue;
        }
        if let Some((name, value, note)) = key_line(body.trim()) {
            let key = Key {
                name,
                value,
                commented,
                note,
            };
            let about = take_paras(&mut pending);
            let entries = match doc.tables.last_mut() {
                Some(t) => &mut t.entries,
                None => {
                    // A key before any table (TOML's root table): its own section.
                    doc.tables.push(Table {
                        name: String::new(),
                        commented: false,
                        intro: Vec::new(),
                        entries: Vec::new(),
                    });
                    match doc.tables.last_mut() {
                        Some(t) => &mut t.entries,
                        None => continue,
                    }
                }
            };
            // A key joins the entry of the key just above it when no comment
            // stands between them and that entry has words of its own (the
            // words are about both); otherwise it starts an entry.
            match entries.last_mut() {
                Some(Entry::Keys { keys, about: a })
                    if last_was_key && about.is_empty() && !a.is_empty() =>
                {
                    keys.push(key)
                }
                _ => entries.push(Entry::Keys {
                    keys: vec![key],
                    about,
                }),
            }
            last_was_key = true;
            continue;
        }
        if commented && last_was_key && body.trim_start().starts_with('#') {
            // `#      # more of the comment after the key above`
            if let Some(Entry::Keys { keys, .. }) =
                doc.tables.last_mut().and_then(|t| t.entries.last_mut())
                && let Some(k) = keys.last_mut()
            {
                let more = body.trim_start().trim_start_matches('#').trim();
                if !k.note.is_empty() {
                    k.note.push(' ');
                }
                k.note.push_str(more);
                continue;
            }
        }
        last_was_key = false;
        if body.trim().is_empty() {
            // `#` alone: a paragraph break
            if pending.last().is_some_and(|p| !p.is_empty()) {
                pending.push(Vec::new());
            }
            continue;
        }
        match pending.last_mut() {
            Some(p) => p.push(body.to_string()),
            None => pending.push(vec![body.to_string()]),
        }
    }
    let paras = take_paras(&mut pending);
    if !paras.is_empty() {
        match doc.tables.last_mut() {
            Some(t) => t.entries.push(Entry::Text(paras)),
            None => doc.intro.extend(paras),
        }
    }
    doc
}

fn take_paras(pending: &mut Vec<Para>) -> Vec<Para> {
    std::mem::take(pending)
        .into_iter()
        .filter(|p| !p.is_empty())
        .collect()
}

/// `[name]` or `[a.b]`: the table's name.
fn table_header(s: &str) -> Option<&str> {
    let name = s.strip_prefix('[')?.strip_suffix(']')?;
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    ok.then_some(name)
}

/// `key = value  # note`: name, value as written, note. Only when the value
/// is a TOML value (so that prose with an `=` in it stays prose).
fn key_line(s: &str) -> Option<(String, String, String)> {
    let (name, rest) = s.split_once('=')?;
    let name = name.trim();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
    {
        return None;
    }
    let rest = rest.trim();
    let (value, note) = match comment_start(rest) {
        Some(i) => (rest[..i].trim(), rest[i + 1..].trim()),
        None => (rest, ""),
    };
    if value.is_empty() || toml::from_str::<toml::Table>(&format!("k = {value}")).is_err() {
        return None;
    }
    Some((name.to_string(), value.to_string(), note.to_string()))
}

/// Where a `#` outside any string starts a comment in a TOML value.
fn comment_start(s: &str) -> Option<usize> {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match quote {
            Some('"') if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '"' || c == '\'' => quote = Some(c),
            None if c == '#' => return Some(i),
            None => {}
        }
    }
    None
}

const FORMAT_5: &[&str] = &[
    "The file is TOML. Every table and key is optional unless its text says REQUIRED. \
     Durations are a number with a unit: ms, s, m, h or d (\"30s\", \"24h\", \"30d\"; a bare \
     number is seconds). Sizes are a number of bytes or one with KB, MB or GB (binary \
     units: \"1MB\" is 1048576 bytes). An unknown key is an error that names the key and its \
     line: pec-milter check-config shows the file as understood.",
    "The sections below are the tables of the annotated file shipped with pec-milter, in its \
     order, with the values it gives and the comments written next to them. A key shown \
     \"(commented out)\" is not set in that file: the value is an example. This page is \
     generated from that file.",
];

const FILES_5: &[(&str, &str)] = &[
    (
        "/etc/pec-milter/pec-milter.toml",
        "The configuration the package installs (a conffile): the annotated file with [spool] \
         dir and [delivery] outbox under /var/spool/pec-milter and [log] dir under \
         /var/log/pec-milter; every other value as below.",
    ),
    (
        "/usr/share/doc/pec-milter/milter-conf/pec-milter.toml",
        "The annotated file this page is made from.",
    ),
];

/// pec-milter.toml(5), in roff, from the annotated configuration `conf`.
pub fn page_5(conf: &str) -> String {
    let doc = parse_conf(conf);
    let mut r = Roff::new();
    r.control("SH", ["NAME"]);
    r.text([roman(
        "pec-milter.toml - the configuration of pec-milter(8)",
    )]);
    r.control("SH", ["SYNOPSIS"]);
    r.text([bold("/etc/pec-milter/pec-milter.toml")]);
    r.control("SH", ["DESCRIPTION"]);
    for (i, p) in doc.intro.iter().enumerate() {
        if i > 0 {
            r.control("PP", []);
        }
        para(&mut r, p);
    }
    for p in FORMAT_5 {
        r.control("PP", []);
        r.text([roman(*p)]);
    }
    for t in &doc.tables {
        let title = if t.name.is_empty() {
            "KEYS OUTSIDE ANY TABLE".to_string()
        } else {
            format!("[{}]", t.name)
        };
        r.control("SH", [title.as_str()]);
        if t.commented {
            r.text([italic("(commented out in the shipped file)")]);
            r.control("PP", []);
        }
        for (i, p) in t.intro.iter().enumerate() {
            if i > 0 {
                r.control("PP", []);
            }
            para(&mut r, p);
        }
        for e in &t.entries {
            match e {
                Entry::Text(paras) => {
                    for p in paras {
                        r.control("PP", []);
                        para(&mut r, p);
                    }
                }
                Entry::Keys { keys, about } => entry(&mut r, keys, about),
            }
        }
    }
    r.control("SH", ["FILES"]);
    for (tag, text) in FILES_5 {
        r.control("TP", []);
        r.text([bold(*tag)]);
        r.text([roman(*text)]);
    }
    r.control("SH", ["SEE ALSO"]);
    r.text([bold("pec-milter"), roman("(8)")]);
    let body = r.render();
    let preamble = Roff::new().render();
    let title = title("PEC-MILTER.TOML", "5", env!("CARGO_PKG_VERSION"));
    format!("{preamble}{title}{}", without_preamble(&body))
}

/// One entry: the keys as tags (`.TP`, then `.TQ`), the words above them,
/// then the comments written after them.
fn entry(r: &mut Roff, keys: &[Key], about: &[Para]) {
    for (i, k) in keys.iter().enumerate() {
        r.control(if i == 0 { "TP" } else { "TQ" }, []);
        let mut tag: Vec<Inline> = vec![bold(k.name.as_str()), roman(format!(" = {}", k.value))];
        if k.commented {
            tag.push(italic(" (commented out)"));
        }
        r.text(tag);
    }
    let mut first = true;
    for p in about {
        if !first {
            r.control("IP", []);
        }
        first = false;
        para(r, p);
    }
    let notes: Vec<&Key> = keys.iter().filter(|k| !k.note.is_empty()).collect();
    for k in notes {
        if !first {
            r.control("IP", []);
        }
        first = false;
        if keys.len() == 1 {
            r.text([roman(k.note.as_str())]);
        } else {
            r.text([bold(k.name.as_str()), roman(format!(": {}", k.note))]);
        }
    }
}

/// A paragraph of comment lines: filled, but lines that are laid out (they
/// start with blanks, or have a colon followed by two: `Check it:   pec-milter
/// log verify ...`) are kept as written.
fn para(r: &mut Roff, lines: &[String]) {
    let mut unfilled = false;
    for line in lines {
        let laid_out = line.starts_with(char::is_whitespace) || line.contains(":  ");
        if laid_out != unfilled {
            r.control(if laid_out { "nf" } else { "fi" }, []);
            unfilled = laid_out;
        }
        r.text([roman(line.as_str())]);
    }
    if unfilled {
        r.control("fi", []);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The roff of a value as `Roff` escapes it (`-` as `\-`, ...), as it is
    /// within a line (without the `\&` that protects a leading dot).
    fn esc(s: &str) -> String {
        let r = Roff::new().text([roman(s)]).render();
        let r = without_preamble(&r);
        let r = r.trim_end();
        r.strip_prefix("\\&").unwrap_or(r).to_string()
    }

    #[test]
    fn every_table_and_key_of_the_shipped_config_is_in_the_page() {
        let page = page_5(SHIPPED_CONFIG);
        // every table and key TOML sees, in its table's section
        let parsed: toml::Table = toml::from_str(SHIPPED_CONFIG).expect("the shipped file is TOML");
        fn walk(prefix: &str, t: &toml::Table, page: &str) {
            for (k, v) in t {
                match v {
                    toml::Value::Table(sub) => {
                        let name = if prefix.is_empty() {
                            k.clone()
                        } else {
                            format!("{prefix}.{k}")
                        };
                        walk(&name, sub, page);
                    }
                    _ => {
                        let section = section_of(page, prefix);
                        assert!(
                            section.contains(&format!("\\fB{}\\fR", esc(k))),
                            "key {k} of [{prefix}] is not in its section"
                        );
                    }
                }
            }
            if !prefix.is_empty() {
                assert!(!section_of(page, prefix).is_empty(), "[{prefix}]");
            }
        }
        walk("", &parsed, &page);
        // and every commented-out table and key, as a reader of the file sees them
        let mut table = String::new();
        for line in SHIPPED_CONFIG.lines() {
            let body = line.trim_start_matches('#').trim();
            if let Some(t) = table_header(body) {
                table = t.to_string();
                assert!(!section_of(&page, &table).is_empty(), "[{table}]");
            } else if let Some((k, _, _)) = key_line(body) {
                assert!(
                    section_of(&page, &table).contains(&format!("\\fB{}\\fR", esc(&k))),
                    "{line:?} is not in the section of [{table}]"
                );
            }
        }
    }

    /// The text of the `.SH "[name]"` section (empty when there is none).
    fn section_of(page: &str, name: &str) -> String {
        let head = format!(".SH \"[{name}]\"");
        let head2 = format!(".SH [{name}]");
        let mut out = String::new();
        let mut inside = false;
        for line in page.lines() {
            if line.starts_with(".SH ") {
                inside = line == head || line == head2;
                if inside {
                    out.push_str(line);
                    out.push('\n');
                }
                continue;
            }
            if inside {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    #[test]
    fn every_comment_word_of_the_shipped_config_is_in_the_page() {
        // Nothing the file says is lost on the way: every word of every
        // comment line is somewhere in the page.
        let page = page_5(SHIPPED_CONFIG);
        for line in SHIPPED_CONFIG.lines() {
            let Some(c) = line.trim_start().strip_prefix('#') else {
                continue;
            };
            for word in c.split_whitespace().filter(|w| *w != "#") {
                assert!(page.contains(&esc(word)), "{word:?} of {line:?}");
            }
        }
    }

    #[test]
    fn comment_blocks_become_intros_entries_and_notes() {
        let doc = parse_conf(
            "# Header.\n# Second line.\n\n[a]\n# About x.\nx = 1\ny = \"p#q\"   # the y note\n\
             #                # goes on\n# Not a key: with init = true here.\nz = [\"v\"]\n\n\
             # Table text.\n\n# Intro of b.\n# [b.c]\n# k = \"v\"  # example\n# l = 2\n#\n\
             # Two.\n#\n# Three.\nm = false\n",
        );
        assert_eq!(
            doc.intro,
            vec![vec!["Header.".to_string(), "Second line.".into()]]
        );
        assert_eq!(doc.tables.len(), 2);
        let a = &doc.tables[0];
        assert_eq!((a.name.as_str(), a.commented), ("a", false));
        let Entry::Keys { keys, about } = &a.entries[0] else {
            panic!("{:?}", a.entries)
        };
        assert_eq!(about, &vec![vec!["About x.".to_string()]]);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[1].value, "\"p#q\"");
        assert_eq!(keys[1].note, "the y note goes on");
        let Entry::Keys { keys, about } = &a.entries[1] else {
            panic!("{:?}", a.entries)
        };
        assert_eq!(about[0][0], "Not a key: with init = true here.");
        assert_eq!(keys[0].name, "z");
        assert_eq!(a.entries[2], Entry::Text(vec![vec!["Table text.".into()]]));
        let b = &doc.tables[1];
        assert_eq!((b.name.as_str(), b.commented), ("b.c", true));
        assert_eq!(b.intro, vec![vec!["Intro of b.".to_string()]]);
        // k and l have no words above them: one entry each
        assert_eq!(b.entries.len(), 3);
        let Entry::Keys { keys, .. } = &b.entries[0] else {
            panic!()
        };
        assert!(keys[0].commented && keys[0].note == "example");
        let Entry::Keys { keys, about } = &b.entries[2] else {
            panic!("{:?}", b.entries)
        };
        assert_eq!(keys[0].name, "m");
        assert_eq!(about.len(), 2, "{about:?}");
    }

    /// The limits of the search for nested PEC messages, written out in
    /// inspect's text (a doc comment cannot name a constant), are the code's.
    #[test]
    fn inspect_states_the_nested_limits() {
        use pec_milter::pec::nested::{MAX_DEPTH, MAX_ENTITIES, MAX_FOUND, MAX_LEVELS};
        let page = page_8();
        let said = format!(
            "The search goes {MAX_DEPTH} messages deep, {MAX_LEVELS} MIME levels, \
             {MAX_ENTITIES} parts, and reports at most {MAX_FOUND}"
        );
        assert!(page.contains(&said), "{said}");
    }

    #[test]
    fn roff_special_characters_are_escaped() {
        let page = page_5("[t]\n# .starts with a dot\\ and a back-slash\nk = \"a\\\\b\"\n");
        assert!(
            page.contains("\\&.starts with a dot\\\\ and a back\\-slash"),
            "{page}"
        );
        assert!(!page.lines().any(|l| l.starts_with(".starts")));
    }

    #[test]
    fn page_8_has_every_visible_command_with_its_options() {
        let page = page_8();
        assert!(page.contains(".TH PEC-MILTER 8"));
        for name in [
            "run",
            "init-demo",
            "check-config",
            "hsm-check",
            "inspect",
            "verify",
            "log verify",
            "log extract",
        ] {
            let ss = format!(".SS \"pec-milter {name}\"");
            let ss2 = format!(".SS pec-milter {name}");
            assert!(
                page.contains(&ss) || page.contains(&ss2),
                "no section for {name}"
            );
        }
        assert!(page.contains(&esc("--config")));
        assert!(page.contains(&esc("/etc/pec-milter/pec-milter.toml")));
        // the hidden command and the per-command -h are not there
        assert!(!page.contains("pec-milter man"), "hidden command shown");
        assert!(page.contains(".SH SIGNALS") && page.contains("SIGHUP"));
        // one preamble only
        assert_eq!(page.matches(".ie \\n(.g").count(), 1, "{}", &page[..400]);
    }
}
