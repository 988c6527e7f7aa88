//! The functions the fuzz targets call (`fuzz/fuzz_targets/`, one per
//! target, same name), and `tests/fuzz_regressions.rs` replays the inputs
//! kept under `tests/fixtures/fuzz/<target>/` through: any bytes in, never
//! a panic (nor a failed round trip where one is asserted). Not an API:
//! hidden from the documentation, free to change.
//!
//! Each reads outside input the way the daemon does, with no network:
//! the async ones run on a current-thread runtime over in-memory streams.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use crate::crypto::verify::{TrustStore, VerifyAt};
use crate::lmtp::server::{LmtpHandler, ServerConfig};
use crate::pec::{DatiCert, breve, mime, nested, reader as pec_reader};
use crate::spool::{SpoolOptions, Spooled};

/// What a fuzz target calls: any bytes, never a panic.
pub type Target = fn(&[u8]);

/// Every target: its name (the fuzz target's, and the directory of its
/// regression inputs) and the function it calls.
pub const TARGETS: &[(&str, Target)] = &[
    ("reader", reader),
    ("daticert", daticert),
    ("ldif", ldif),
    ("lmtp", lmtp),
    ("smtp_reply", smtp_reply),
    ("clamd_reply", clamd_reply),
    ("milter", milter),
    ("config", config),
];

thread_local! {
    static RT: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime");
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    RT.with(|rt| rt.block_on(f))
}

/// Any message: classification, multipart/signed splitting, daticert.xml,
/// postacert.eml, the signature of whatever p7s is found, the ricevuta
/// breve rewriting; the walk for PEC messages inside it (forwarded,
/// `.eml`, re-wrapped, opaque: `pec::nested`) and the signature of each
/// found, as `inspect` / `verify` do.
pub fn reader(data: &[u8]) {
    static TRUST: OnceLock<TrustStore> = OnceLock::new();
    let trust = TRUST.get_or_init(|| TrustStore::from_pem_bytes(&[]).expect("empty store"));
    if let Ok(msg) = pec_reader::read(data) {
        let _ = crate::pec::inspect::check_signature(&msg, trust, VerifyAt::SigningTime);
        if let Some(p) = &msg.postacert {
            let _ = pec_reader::read(p);
        }
    }
    let _ = nested::walk(data, |f| {
        let _ = crate::pec::inspect::check_signature(&f.message, trust, VerifyAt::SigningTime);
    });
    let canon = mime::canonicalize_crlf(data);
    let _ = breve::hash_attachments(&canon);
    let _ = DatiCert::from_xml(data);
}

/// daticert.xml (`DatiCert::from_xml`); what parses is written again
/// (`to_xml`), and what we write must parse.
pub fn daticert(data: &[u8]) {
    if let Ok(d) = DatiCert::from_xml(data) {
        let xml = d.to_xml();
        if let Err(e) = DatiCert::from_xml(xml.as_bytes()) {
            panic!("to_xml wrote a daticert from_xml refuses: {e}\n{xml}");
        }
    }
}

/// The providers' index as LDIF (`index::ldif::parse`, of UTF-8 text as
/// `ldif::load` reads it), the snapshot built from it, and what we write
/// of its entries must parse.
pub fn ldif(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(entries) = crate::index::ldif::parse(text) else {
        return;
    };
    let written = crate::index::ldif::write(&entries);
    if let Err(e) = crate::index::ldif::parse(&written) {
        panic!("ldif::write wrote what ldif::parse refuses: {e}\n{written}");
    }
    if let Ok(snap) = crate::index::IndexSnapshot::new(entries, "fuzz".to_owned()) {
        let _ = snap.provider_for_domain("example.test");
        let _ = snap.provider_for_certificate(data);
    }
}

/// The LMTP handler of the fuzz target: one reply per recipient (none at
/// all when the sender is empty, fewer with more than three recipients),
/// made of what the client sent, so the server's reply sanitising sees it.
struct Answer;

#[async_trait::async_trait]
impl LmtpHandler for Answer {
    async fn deliver(&self, mail_from: &str, rcpts: &[String], message: Spooled) -> Vec<String> {
        if mail_from.is_empty() {
            return Vec::new();
        }
        let _ = message.to_vec();
        rcpts
            .iter()
            .take(3)
            .map(|r| format!("250 2.0.0 <{r}> {mail_from} {}", message.len()))
            .collect()
    }
}

/// An LMTP client's bytes, served by our LMTP server
/// (`lmtp::server::serve_stream`: commands, parameters, paths, DATA) over
/// an in-memory stream; 64 KiB maximum size, at most 5 recipients.
pub fn lmtp(data: &[u8]) {
    static CONFIG: OnceLock<Arc<ServerConfig>> = OnceLock::new();
    let config = CONFIG
        .get_or_init(|| {
            let mut c = ServerConfig::new(64 * 1024);
            c.hostname = "fuzz.test".to_owned();
            c.max_recipients = 5;
            Arc::new(c)
        })
        .clone();
    let mut out: Vec<u8> = Vec::new();
    block_on(crate::lmtp::server::serve_stream(
        data,
        &mut out,
        "fuzz".to_owned(),
        Arc::new(Answer),
        config,
    ));
}

/// An SMTP server's replies as the reinjection client reads them
/// (`smtp::read_replies`).
pub fn smtp_reply(data: &[u8]) {
    let mut r = data;
    let _ = block_on(crate::smtp::read_replies(&mut r));
}

/// clamd's bytes as the scan client reads them, through clamav-client
/// (`clamd::scan_reply_over`, `clamd::ping_reply_over`).
pub fn clamd_reply(data: &[u8]) {
    block_on(async {
        let conn = tokio::io::join(data, tokio::io::sink());
        let _ = crate::clamd::scan_reply_over(conn).await;
        let conn = tokio::io::join(data, tokio::io::sink());
        let _ = crate::clamd::ping_reply_over(conn).await;
    });
}

/// What the milter reads from the MTA's callbacks
/// (`milter::read_callbacks`). The input is split at NUL bytes (an MTA's
/// milter strings carry none): the pieces before the first empty one are
/// header names and values in turn, the pieces after it body chunks.
pub fn milter(data: &[u8]) {
    let mut pieces = data.split(|&b| b == 0);
    let mut head: Vec<&[u8]> = Vec::new();
    for p in pieces.by_ref() {
        if p.is_empty() {
            break;
        }
        head.push(p);
    }
    let fields: Vec<(&[u8], &[u8])> = head
        .chunks(2)
        .map(|c| (c[0], c.get(1).copied().unwrap_or_default()))
        .collect();
    let chunks: Vec<&[u8]> = pieces.collect();
    let _ = crate::milter::read_callbacks(&fields, &chunks, SpoolOptions::memory());
}

/// The configuration file (`Config::parse`, of UTF-8 text as
/// `Config::load` reads it), and the other texts of the configuration: the
/// `[holders] logins` file, a clamd address, durations, sizes, a key id.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = crate::config::Config::parse(text, Path::new("fuzz.toml")) {
        let _ = cfg.is_our_domain("example.test");
        let _ = cfg.holders.owns("a@example.test", "a@example.test");
        let _ = cfg.log.node_name();
    }
    let _ = crate::config::parse_login_map(text);
    let _ = text.parse::<crate::clamd::ClamdAddress>();
    let _ = crate::config::parse_duration(text);
    let _ = crate::config::parse_size(text);
    let _ = crate::config::decode_hex(text);
}
