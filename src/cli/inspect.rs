//! `pec-milter inspect` (what a message is) and `pec-milter verify` (exit 0
//! only when its signature and chain hold).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

use pec_milter::crypto::verify::{SignatureStatus, VerifyAt};
use pec_milter::pec::inspect::{self as report, Inspection};

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

pub fn verify(trust: &[PathBuf], at: VerifyAt, file: &str) -> Result<ExitCode> {
    let store = trust_store(trust)?;
    let raw = read_input(file)?;
    let msg = match pec_milter::pec::reader::read(&raw) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{file}: not verified: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    let sig = report::check_signature(&msg, &store, at);
    if sig.status == SignatureStatus::Valid {
        println!(
            "{file}: signature valid; signer {} (SHA-1 {})",
            sig.signer_subject.as_deref().unwrap_or("?"),
            sig.signer_sha1.as_deref().unwrap_or("?")
        );
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "{file}: not verified: {}",
            sig.reason.as_deref().unwrap_or("signature invalid")
        );
        Ok(ExitCode::from(1))
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
