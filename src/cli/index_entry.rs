//! `pec-milter index-entry`: the LDIF entry of the providers' index for a
//! provider certificate.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use pec_milter::index::{ProviderEntry, ldif};

pub fn index_entry(
    cert: &Path,
    name: &str,
    domains: &[String],
    receipt: String,
) -> Result<ExitCode> {
    let bytes = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
    let x = openssl::x509::X509::from_pem(&bytes)
        .or_else(|_| openssl::x509::X509::from_der(&bytes))
        .with_context(|| format!("{}: not a certificate", cert.display()))?;
    let entry = ProviderEntry::for_certificate(name, x.to_der()?, receipt, domains);
    print!("{}", ldif::write(&[entry]));
    Ok(ExitCode::SUCCESS)
}
