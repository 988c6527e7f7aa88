//! `pec-milter receipt`: the QA tool that signs a receipt about an envelope
//! as a given provider would, from facts given on the command line. It
//! signs whatever it is told: for tests only, never for real traffic.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Result, bail};

use pec_milter::crypto::DigestAlg;
use pec_milter::crypto::pem::PemKey;
use pec_milter::pec::build::{Emission, Provider, Ricevuta, Signer, Transaction, build_ricevuta};
use pec_milter::pec::{Destinatario, Errore, TipoDestinatario, TipoRicevuta};
use pec_milter::roles::access::new_pec_id;

use super::SignAs;

/// The receipt kinds the tool builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    /// To `--mail-receipt`; `ricezione` = every `--recipient`.
    PresaInCarico,
    /// Sintetica, to the original sender; `consegna` = the one `--recipient`.
    AvvenutaConsegna,
    /// `no-dest`, to the original sender; `consegna` = the one `--recipient`.
    ErroreConsegna,
}

/// The command's arguments.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub sign_as: SignAs,
    #[arg(long, value_enum)]
    pub kind: Kind,
    /// The envelope's PEC msgid (identificativo), without angle brackets.
    #[arg(long)]
    pub id: String,
    /// The envelope's original sender (mittente).
    #[arg(long)]
    pub sender: String,
    /// The recipients the receipt speaks of (listed as certificato).
    #[arg(long, value_delimiter = ',', required = true)]
    pub recipient: Vec<String>,
    /// The sending provider's mailReceipt (presa-in-carico only).
    #[arg(long)]
    pub mail_receipt: Option<String>,
    /// The original subject.
    #[arg(long, default_value = "")]
    pub subject: String,
    /// The original client Message-ID, with angle brackets.
    #[arg(long)]
    pub msgid: Option<String>,
}

pub fn receipt(a: &Args) -> Result<ExitCode> {
    let (provider, key, digest) = a.sign_as.open()?;
    let out = build(&provider, &key, digest, a)?;
    std::io::stdout().write_all(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// The one recipient an avvenuta / errore consegna is about.
fn consegna(a: &Args) -> Result<String> {
    match a.recipient.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("--kind avvenuta-consegna / errore-consegna: give exactly one --recipient"),
    }
}

fn build(provider: &Provider, key: &PemKey, digest: DigestAlg, a: &Args) -> Result<Vec<u8>> {
    let ricevuta = match a.kind {
        Kind::PresaInCarico => Ricevuta::PresaInCarico {
            mail_receipt: match &a.mail_receipt {
                Some(m) => m.clone(),
                None => bail!("--kind presa-in-carico needs --mail-receipt"),
            },
            ricezione: a.recipient.clone(),
        },
        Kind::AvvenutaConsegna => Ricevuta::AvvenutaConsegna {
            consegna: consegna(a)?,
            tipo: TipoRicevuta::Sintetica,
            original: b"",
        },
        Kind::ErroreConsegna => Ricevuta::ErroreConsegna {
            consegna: consegna(a)?,
            errore: Errore::NoDest,
            errore_esteso: "550 5.1.1 user unknown".into(),
        },
    };
    let tx = Transaction {
        identificativo: a.id.clone(),
        mittente: a.sender.clone(),
        destinatari: a
            .recipient
            .iter()
            .map(|r| Destinatario {
                address: r.clone(),
                tipo: TipoDestinatario::Certificato,
            })
            .collect(),
        risposte: a.sender.clone(),
        oggetto: a.subject.clone(),
        msgid: a.msgid.clone(),
        ricevuta: TipoRicevuta::Sintetica,
    };
    let now = chrono::Utc::now();
    let emission = Emission {
        time: now,
        message_id: new_pec_id(&provider.domain, now),
    };
    let built = build_ricevuta(provider, &tx, &ricevuta, &emission, Signer { key, digest })?;
    Ok(built.to_bytes())
}
