//! `pec-milter inspect` (what a message is, and every PEC message found
//! inside it) and `pec-milter verify` (exit 0 only when the PEC message
//! found, or with `--all` every one, has a signature and chain that hold).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use pec_milter::crypto::verify::{SignatureStatus, TrustStore, VerifyAt};
use pec_milter::pec::inspect::{self as report, Inspection, SignatureView, quoted};
use pec_milter::pec::mime::canonicalize_crlf;
use pec_milter::pec::nested::{self, Found};
use pec_milter::pec::reader;

use super::{read_input, trust_store};

pub fn inspect(json: bool, trust: &[PathBuf], at: VerifyAt, files: &[String]) -> Result<ExitCode> {
    let store = trust_store(trust)?;
    let mut code = ExitCode::SUCCESS;
    for f in files {
        let raw = read_input(f)?;
        match report::inspect(&raw, &store, at) {
            Ok(mut i) => {
                i.file = Some(f.clone());
                print_inspection(&i, json)?;
            }
            Err(e) => {
                eprintln!("pec-milter: {f}: {e}");
                code = ExitCode::from(1);
            }
        }
    }
    Ok(code)
}

/// One PEC message found by `verify`: where, what, and its check (only
/// the chosen one's without `--all`).
struct Candidate {
    /// `FILE`, or `FILE part 2/1 (accettazione, message/rfc822 in "Fwd: x")`.
    label: String,
    /// `the message itself` or `part 2/1`.
    place: String,
    sig: Option<SignatureView>,
}

impl Candidate {
    fn of(file: &str, f: &Found<'_>) -> Candidate {
        if f.path.is_empty() {
            return Candidate {
                label: file.to_string(),
                place: "the message itself".into(),
                sig: None,
            };
        }
        let place = format!("part {}", f.path_string());
        Candidate {
            label: format!(
                "{file} {place} ({}, {} in {})",
                f.message.kind.wire(),
                f.found_as.wire(),
                quoted(f.outer_subject.as_deref())
            ),
            place,
            sig: None,
        }
    }

    fn valid(&self) -> bool {
        self.sig
            .as_ref()
            .is_some_and(|s| s.status == SignatureStatus::Valid)
    }

    /// The verdict line: stdout when valid, stderr otherwise.
    fn print(&self) {
        let Some(sig) = &self.sig else { return };
        if sig.status == SignatureStatus::Valid {
            println!(
                "{}: signature valid; signer {} (SHA-1 {})",
                self.label,
                sig.signer_subject.as_deref().unwrap_or("?"),
                sig.signer_sha1.as_deref().unwrap_or("?")
            );
        } else {
            eprintln!(
                "{}: not verified: {}",
                self.label,
                sig.reason.as_deref().unwrap_or("signature invalid")
            );
        }
    }
}

/// `verify`: the PEC messages in the input ([`nested::walk`]: the input
/// itself when its header carries X-Trasporto / X-Ricevuta, then those
/// forwarded, attached as .eml or re-wrapped inside it, in document
/// order). Without `all` the first is checked (the input itself when it is
/// PEC) and the others named; with `all` every one, and a search stopped
/// at a limit fails. With none found, the input's own S/MIME signature is
/// checked, as for any signed mail.
pub fn verify(trust: &[PathBuf], at: VerifyAt, all: bool, file: &str) -> Result<ExitCode> {
    let store = trust_store(trust)?;
    let raw = read_input(file)?;
    let canon = canonicalize_crlf(&raw);
    let mut found: Vec<Candidate> = Vec::new();
    let walked = nested::walk(&canon, |f| {
        let mut c = Candidate::of(file, f);
        if all || found.is_empty() {
            c.sig = Some(report::check_signature(&f.message, &store, at));
        }
        found.push(c);
    });
    let walked = match walked {
        Ok(w) => w,
        Err(e) => {
            eprintln!("{file}: not verified: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    if let Some(why) = &walked.stopped {
        eprintln!("{file}: the search for PEC messages stopped: {why}");
    }
    if found.is_empty() {
        return Ok(verify_itself(&canon, &store, at, file));
    }
    for c in &found {
        c.print();
    }
    if !all {
        if found.len() > 1 {
            let places: Vec<&str> = found.iter().map(|c| c.place.as_str()).collect();
            eprintln!(
                "{file}: {} PEC messages found ({}); verified the first in document order ({}); \
                 --all verifies every one",
                found.len(),
                places.join(", "),
                found[0].place
            );
        }
        return Ok(exit(found[0].valid()));
    }
    let failed: Vec<&str> = found
        .iter()
        .filter(|c| !c.valid())
        .map(|c| c.place.as_str())
        .collect();
    if !failed.is_empty() {
        eprintln!(
            "{file}: {} of {} PEC messages not verified: {}",
            failed.len(),
            found.len(),
            failed.join(", ")
        );
    } else if walked.stopped.is_some() {
        eprintln!("{file}: not verified: --all, and not every part was searched");
    } else if found.len() > 1 {
        println!("{file}: all {} PEC messages verified", found.len());
    }
    Ok(exit(failed.is_empty() && walked.stopped.is_none()))
}

/// No PEC message in the input: its own signature, whatever it signs.
fn verify_itself(canon: &[u8], store: &TrustStore, at: VerifyAt, file: &str) -> ExitCode {
    let msg = match reader::read_any(canon) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{file}: not verified: {e}");
            return exit(false);
        }
    };
    let sig = report::check_signature(&msg, store, at);
    let c = Candidate {
        label: file.to_string(),
        place: String::new(),
        sig: Some(sig),
    };
    c.print();
    if !c.valid() {
        eprintln!(
            "{file}: no PEC message found in it (X-Trasporto / X-Ricevuta on a signed message)"
        );
    }
    exit(c.valid())
}

fn exit(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

fn print_inspection(i: &Inspection, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(i)?);
    } else {
        print!("{}", i.to_text());
    }
    Ok(())
}
