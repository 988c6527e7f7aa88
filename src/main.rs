//! The `pec-milter` command line.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use pec_milter::config::Config;
use pec_milter::crypto::verify::{SignatureStatus, TrustStore, VerifyAt};
use pec_milter::daemon;
use pec_milter::inspect::{self, Inspection};

#[derive(Parser)]
#[command(
    name = "pec-milter",
    version,
    about = "PEC (Posta Elettronica Certificata) milter and tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum At {
    /// Check the certificate chain as of now.
    Now,
    /// Check it as of the signing time in the signature (default: a
    /// receipt stays valid after its certificate expires).
    SigningTime,
}

const DEFAULT_CONFIG: &str = "/etc/pec-milter/pec-milter.toml";

#[derive(Subcommand)]
enum Command {
    /// Run the milter daemon (logs to stderr; stops on SIGTERM / SIGINT).
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
    /// Print what a message is: kind, subject, signature, daticert.xml.
    Inspect {
        /// Print one JSON object per file.
        #[arg(long)]
        json: bool,
        /// Trust anchors (PEM); default: the system store /etc/ssl/certs.
        #[arg(long, value_name = "PEM")]
        trust: Vec<PathBuf>,
        #[arg(long, value_enum, default_value = "signing-time")]
        at: At,
        /// Message files, or - for standard input.
        #[arg(required = true)]
        files: Vec<String>,
    },
    /// Exit 0 only when the S/MIME signature and its chain hold.
    Verify {
        /// Trust anchors (PEM); default: the system store /etc/ssl/certs.
        #[arg(long, value_name = "PEM")]
        trust: Vec<PathBuf>,
        #[arg(long, value_enum, default_value = "signing-time")]
        at: At,
        /// A message file, or - for standard input.
        file: String,
    },
}

fn read_input(file: &str) -> Result<Vec<u8>> {
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

fn trust_store(trust: &[PathBuf]) -> Result<TrustStore> {
    if trust.is_empty() {
        TrustStore::system().context("loading the system trust store")
    } else {
        TrustStore::from_pem_files(trust).context("loading --trust certificates")
    }
}

fn verify_at(at: At) -> VerifyAt {
    match at {
        At::Now => VerifyAt::Now,
        At::SigningTime => VerifyAt::SigningTime,
    }
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pec-milter: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config } => {
            init_logging();
            let cfg = Config::load(&config)?;
            let workers = if cfg.milter.workers == 0 {
                std::thread::available_parallelism().map_or(2, |n| n.get())
            } else {
                cfg.milter.workers
            };
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .enable_all()
                .build()
                .context("starting the runtime")?;
            rt.block_on(daemon::run(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::InitDemo { config } => {
            init_logging();
            let cfg = Config::load(&config)?;
            if daemon::init_demo(&cfg)? {
                println!(
                    "demo identity created: {} {}",
                    cfg.signing.key.display(),
                    cfg.signing.cert.display()
                );
            } else {
                println!("{} exists: nothing to do", cfg.signing.key.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { config } => {
            let cfg = Config::load(&config)?;
            println!("{cfg:#?}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Inspect {
            json,
            trust,
            at,
            files,
        } => {
            let store = trust_store(&trust)?;
            let mut code = ExitCode::SUCCESS;
            for f in files {
                let raw = read_input(&f)?;
                match inspect::inspect(&raw, &store, verify_at(at)) {
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
        Command::Verify { trust, at, file } => {
            let store = trust_store(&trust)?;
            let raw = read_input(&file)?;
            let msg = match pec_milter::pec::reader::read(&raw) {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("{file}: not verified: {e}");
                    return Ok(ExitCode::from(1));
                }
            };
            let sig = inspect::check_signature(&msg, &store, verify_at(at));
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
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PEC_MILTER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}

fn print_inspection(i: &Inspection, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string(i)?);
    } else {
        print!("{}", i.to_text());
    }
    Ok(())
}
