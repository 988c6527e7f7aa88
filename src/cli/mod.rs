//! The `pec-milter` commands: one module per command, each a plain
//! function over the library; this module holds the command line's
//! grammar (clap) and what several commands share.

pub mod bench_sign;
pub mod check_config;
pub mod envelope;
pub mod hsm_check;
pub mod index_entry;
pub mod init_demo;
pub mod inspect;
pub mod log;
pub mod man;
pub mod receipt;
pub mod reload;
pub mod run;

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use pec_milter::crypto::DigestAlg;
use pec_milter::crypto::pem::PemKey;
use pec_milter::crypto::verify::{TrustStore, VerifyAt};
use pec_milter::pec::build::Provider;

#[derive(Parser)]
#[command(
    name = "pec-milter",
    version,
    about = "PEC (Posta Elettronica Certificata) milter and tools"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

pub const DEFAULT_CONFIG: &str = "/etc/pec-milter/pec-milter.toml";

#[derive(Subcommand)]
pub enum Command {
    /// Run the milter daemon (diagnostics to stderr or syslog, [logging];
    /// stops on SIGTERM / SIGINT; SIGHUP reloads the configuration).
    Run {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Create the demo provider identity (test CA + certificate) named by
    /// the configuration's [signing] key and cert, if missing.
    InitDemo {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Check a configuration file and print it as understood.
    CheckConfig {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Check a configuration file, then ask the running daemon to reload
    /// it (SIGHUP; the daemon's log tells whether it took it).
    Reload {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Open the PKCS#11 token of [signing.pkcs11], find key and certificate,
    /// make a test signature and verify it with the certificate's public
    /// key. Exit 0 when all holds; 1 with the cause otherwise.
    HsmCheck {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
    },
    /// Benchmark: COUNT CMS signatures with the configured key (PEM or
    /// PKCS#11), from THREADS threads; prints signatures per second.
    BenchSign {
        #[arg(long, default_value = DEFAULT_CONFIG)]
        config: PathBuf,
        #[arg(long, default_value_t = 1)]
        threads: usize,
        #[arg(long, default_value_t = 500)]
        count: usize,
    },
    /// QA tool: wrap a message in a signed busta di trasporto as the given
    /// provider would (facts from its header fields), print it to stdout.
    Envelope(envelope::Args),
    /// QA tool: sign a receipt (presa-in-carico, avvenuta-consegna,
    /// errore-consegna) about an envelope as the given provider would,
    /// print it to stdout. It signs whatever it is told: tests only.
    Receipt(receipt::Args),
    /// Print an LDIF provider entry of the providers' index for a certificate.
    IndexEntry {
        /// The provider certificate (PEM or DER).
        #[arg(long)]
        cert: PathBuf,
        /// providerName.
        #[arg(long)]
        name: String,
        /// managedDomains, comma separated.
        #[arg(long, value_delimiter = ',', required = true)]
        domains: Vec<String>,
        /// mailReceipt.
        #[arg(long)]
        receipt: String,
    },
    /// Print what a message is: kind, subject, signature, daticert.xml,
    /// and every PEC message found inside it.
    ///
    /// A PEC message is found at the top, in a message/rfc822 part (a
    /// forward), in a text/plain or application/octet-stream attachment
    /// named *.eml, or re-wrapped by a mailing list (the header fields
    /// X-Trasporto / X-Ricevuta outside, the multipart/signed a part of an
    /// outer multipart/mixed); it carries X-Trasporto or X-Ricevuta and is
    /// signed (multipart/signed, or an opaque application/pkcs7-mime, which
    /// only inspect and verify open). Each is shown with its MIME path
    /// (2/1: part 1 of the message attached as part 2) and the subject of
    /// the message it was found in. The search goes 8 messages deep, 32
    /// MIME levels, 10000 parts, and reports at most 64; a limit reached is
    /// said (nested_truncated).
    Inspect {
        /// Print one JSON object per file; the PEC messages found inside
        /// are its list "nested", each with path, depth, found_as,
        /// outer_subject and the same fields as the file's.
        #[arg(long)]
        json: bool,
        /// Trust anchors (PEM); default: the system store /etc/ssl/certs.
        #[arg(long, value_name = "PEM")]
        trust: Vec<PathBuf>,
        /// When the certificate chain is checked: now, or signing-time (a
        /// receipt stays valid after its certificate expires).
        #[arg(long, default_value = "signing-time")]
        at: VerifyAt,
        /// Message files, or - for standard input.
        #[arg(required = true)]
        files: Vec<String>,
    },
    /// The legal message log: verify its chains, extract a message's events.
    #[command(subcommand)]
    Log(log::LogCommand),
    /// Exit 0 only when the S/MIME signature and its chain hold: of the PEC
    /// message found in the file, or with --all of every one.
    ///
    /// The PEC messages are found as inspect finds them: the file itself
    /// when it carries X-Trasporto or X-Ricevuta, then those forwarded,
    /// attached as .eml or re-wrapped inside it, in document order. Without
    /// --all the first is verified (the file itself when it is one) and, if
    /// there are more, their paths are listed on stderr. With --all each
    /// one is verified and printed with its path, and a search stopped at a
    /// limit fails too. A file with no PEC message in it is verified as
    /// any S/MIME signed mail.
    Verify {
        /// Verify every PEC message found, not only the first.
        #[arg(long)]
        all: bool,
        /// Trust anchors (PEM); default: the system store /etc/ssl/certs.
        #[arg(long, value_name = "PEM")]
        trust: Vec<PathBuf>,
        /// When the certificate chain is checked: now, or signing-time (a
        /// receipt stays valid after its certificate expires).
        #[arg(long, default_value = "signing-time")]
        at: VerifyAt,
        /// A message file, or - for standard input.
        file: String,
    },
    /// Write the manual pages pec-milter.8 and pec-milter.toml.5 into DIR
    /// (the package build runs it).
    #[command(hide = true)]
    Man {
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
}

/// Run one parsed command line; the exit status.
pub fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run { config } => run::run(&config),
        Command::InitDemo { config } => init_demo::init_demo(&config),
        Command::CheckConfig { config } => check_config::check_config(&config),
        Command::Reload { config } => reload::reload(&config),
        Command::HsmCheck { config } => hsm_check::hsm_check(&config),
        Command::BenchSign {
            config,
            threads,
            count,
        } => bench_sign::bench_sign(&config, threads, count),
        Command::Envelope(args) => envelope::envelope(&args),
        Command::Receipt(args) => receipt::receipt(&args),
        Command::Log(cmd) => log::log(&cmd),
        Command::IndexEntry {
            cert,
            name,
            domains,
            receipt,
        } => index_entry::index_entry(&cert, &name, &domains, receipt),
        Command::Inspect {
            json,
            trust,
            at,
            files,
        } => inspect::inspect(json, &trust, at, &files),
        Command::Verify {
            all,
            trust,
            at,
            file,
        } => inspect::verify(&trust, at, all, &file),
        Command::Man { out } => man::man(&out),
    }
}

pub fn read_input(file: &str) -> Result<Vec<u8>> {
    if file == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("reading standard input")?;
        Ok(buf)
    } else {
        std::fs::read(file).with_context(|| format!("reading {file}"))
    }
}

pub fn trust_store(trust: &[PathBuf]) -> Result<TrustStore> {
    if trust.is_empty() {
        TrustStore::system().context("loading the system trust store")
    } else {
        TrustStore::from_pem_files(trust).context("loading --trust certificates")
    }
}

pub fn init_logging() {
    init_logging_to("info");
}

pub fn init_logging_to(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PEC_MILTER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

/// Who a QA tool (`envelope`, `receipt`) signs as: a provider's PEM key and
/// certificate, its name and domain, the digest.
#[derive(clap::Args)]
pub struct SignAs {
    /// Provider key and certificate (PEM).
    #[arg(long)]
    pub key: PathBuf,
    #[arg(long)]
    pub cert: PathBuf,
    /// gestore-emittente.
    #[arg(long)]
    pub gestore: String,
    /// The provider's domain (From: posta-certificata@DOMAIN).
    #[arg(long)]
    pub domain: String,
    #[arg(long, default_value = "sha256")]
    pub digest: String,
}

impl SignAs {
    /// The provider, its key and the digest.
    pub fn open(&self) -> Result<(Provider, PemKey, DigestAlg)> {
        let key = PemKey::from_files(&self.key, &self.cert, None)?;
        let digest: DigestAlg = self
            .digest
            .parse()
            .map_err(|_| anyhow::anyhow!("--digest: use sha256 or sha1"))?;
        let provider = Provider {
            name: self.gestore.clone(),
            domain: self.domain.clone(),
        };
        Ok((provider, key, digest))
    }
}
