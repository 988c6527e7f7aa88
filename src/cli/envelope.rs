//! `pec-milter envelope`: the QA tool that wraps a message in a signed
//! busta di trasporto as a given provider would, the facts read from its
//! header fields as the access point reads them.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};

use pec_milter::crypto::DigestAlg;
use pec_milter::crypto::pem::PemKey;
use pec_milter::pec::build::{Provider, Signer, build_busta_trasporto};
use pec_milter::pec::facts::Facts;
use pec_milter::pec::mime::{canonicalize_crlf, split_header_body};
use pec_milter::roles::access::new_pec_id;
use pec_milter::roles::{RecipientDirectory, StaticDirectory};

use super::{SignAs, read_input};

/// The command's arguments.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub sign_as: SignAs,
    /// Recipient domains to mark "certificato" (others "esterno").
    #[arg(long, value_delimiter = ',')]
    pub certified: Vec<String>,
    /// The PEC msgid (default: a new one).
    #[arg(long)]
    pub id: Option<String>,
    /// The message, or - for standard input.
    pub file: String,
}

pub fn envelope(a: &Args) -> Result<ExitCode> {
    let raw = read_input(&a.file)?;
    let (provider, key, digest) = a.sign_as.open()?;
    let out = build(&raw, &provider, &key, digest, a)?;
    std::io::stdout().write_all(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// Build a busta di trasporto around `raw` as `provider`.
fn build(
    raw: &[u8],
    provider: &Provider,
    key: &PemKey,
    digest: DigestAlg,
    a: &Args,
) -> Result<Vec<u8>> {
    let canon = canonicalize_crlf(raw);
    let (head, _) = split_header_body(&canon);
    let facts = Facts::read(head);
    let from = facts
        .from
        .clone()
        .context("the message has no From: address")?;
    let now = chrono::Utc::now();
    let id =
        a.id.clone()
            .unwrap_or_else(|| new_pec_id(&provider.domain, now));
    let directory = StaticDirectory::new(&a.certified);
    let tx = facts.transaction(id, &from, |r| directory.tipo(r))?;
    let built = build_busta_trasporto(provider, &tx, &canon, now, Signer { key, digest })?;
    Ok(built.to_bytes())
}
