//! The `pec-milter` command line.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand, ValueEnum};

use pec_milter::config::Config;
use pec_milter::crypto::verify::{SignatureStatus, TrustStore, VerifyAt};
use pec_milter::daemon;
use pec_milter::pec::inspect::{self, Inspection};

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
    Envelope {
        /// Provider key and certificate (PEM).
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        cert: PathBuf,
        /// gestore-emittente.
        #[arg(long)]
        gestore: String,
        /// The provider's domain (posta-certificata@DOMAIN).
        #[arg(long)]
        domain: String,
        /// Recipient domains to mark "certificato" (others "esterno").
        #[arg(long, value_delimiter = ',')]
        certified: Vec<String>,
        #[arg(long, default_value = "sha256")]
        digest: String,
        /// The PEC msgid (default: a new one).
        #[arg(long)]
        id: Option<String>,
        /// The message, or - for standard input.
        file: String,
    },
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
            let workers = daemon::worker_threads(&cfg);
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
        Command::Envelope {
            key,
            cert,
            gestore,
            domain,
            certified,
            digest,
            id,
            file,
        } => {
            let raw = read_input(&file)?;
            let key = pec_milter::crypto::pem::PemKey::from_files(&key, &cert, None)?;
            let digest: pec_milter::crypto::DigestAlg = digest
                .parse()
                .map_err(|_| anyhow::anyhow!("--digest: use sha256 or sha1"))?;
            let out = qa_envelope(&raw, &key, digest, &gestore, &domain, &certified, id)?;
            use std::io::Write;
            std::io::stdout().write_all(&out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::IndexEntry {
            cert,
            name,
            domains,
            receipt,
        } => {
            let bytes =
                std::fs::read(&cert).with_context(|| format!("reading {}", cert.display()))?;
            let x = openssl::x509::X509::from_pem(&bytes)
                .or_else(|_| openssl::x509::X509::from_der(&bytes))
                .with_context(|| format!("{}: not a certificate", cert.display()))?;
            let der = x.to_der()?;
            let entry = pec_milter::index::ProviderEntry {
                dn: format!("providerName={name},o=postacert"),
                name,
                unit: None,
                cert_hashes: vec![pec_milter::index::certificate_hash(&der)],
                certificates: vec![der],
                mail_receipt: receipt,
                managed_domains: domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            };
            print!("{}", pec_milter::index::ldif::write(&[entry]));
            Ok(ExitCode::SUCCESS)
        }
        Command::HsmCheck { config } => {
            init_logging_to("warn");
            let cfg = Config::load(&config)?;
            Ok(hsm_check(&cfg))
        }
        Command::BenchSign {
            config,
            threads,
            count,
        } => {
            init_logging_to("warn");
            let cfg = Config::load(&config)?;
            bench_sign(&cfg, threads, count)
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

/// Build a busta di trasporto around `raw` as provider `domain`.
fn qa_envelope(
    raw: &[u8],
    key: &pec_milter::crypto::pem::PemKey,
    digest: pec_milter::crypto::DigestAlg,
    gestore: &str,
    domain: &str,
    certified: &[String],
    id: Option<String>,
) -> Result<Vec<u8>> {
    use pec_milter::pec::build::{
        Provider, Signer, Transaction, build_busta_trasporto, original_msgid,
    };
    use pec_milter::pec::mime::{self, header_fields, header_value, split_header_body};
    use pec_milter::pec::{Destinatario, TipoDestinatario};
    let canon = mime::canonicalize_crlf(raw);
    let (head, _) = split_header_body(&canon);
    let fields = header_fields(head);
    let from = header_value(&fields, "From")
        .and_then(|v| mime::addr_spec(&v))
        .context("the message has no From: address")?;
    let mut dest = Vec::new();
    for f in fields.iter().filter(|f| f.is("To") || f.is("Cc")) {
        for a in mime::addr_list(&f.unfolded()) {
            let d = a
                .rsplit_once('@')
                .map(|(_, d)| d.to_ascii_lowercase())
                .unwrap_or_default();
            let tipo = if certified.iter().any(|c| c.eq_ignore_ascii_case(&d)) {
                TipoDestinatario::Certificato
            } else {
                TipoDestinatario::Esterno
            };
            dest.push(Destinatario { address: a, tipo });
        }
    }
    let now = chrono::Utc::now();
    let tx = Transaction {
        identificativo: id.unwrap_or_else(|| pec_milter::roles::access::new_pec_id(domain, now)),
        mittente: from.clone(),
        destinatari: dest,
        risposte: header_value(&fields, "Reply-To")
            .and_then(|v| mime::addr_spec(&v))
            .unwrap_or(from),
        oggetto: header_value(&fields, "Subject")
            .map(|s| mime::decode_words(&s))
            .unwrap_or_default(),
        msgid: original_msgid(&canon),
        ricevuta: header_value(&fields, "X-TipoRicevuta")
            .and_then(|v| v.parse().ok())
            .unwrap_or_default(),
    };
    let provider = Provider {
        name: gestore.to_string(),
        domain: domain.to_string(),
    };
    let built = build_busta_trasporto(&provider, &tx, &canon, now, Signer { key, digest })?;
    Ok(built.to_bytes())
}

/// `pec-milter hsm-check`: open the token as the daemon would (pool of
/// one), report what was found, sign and verify. The cause of a failure is
/// printed in plain words; the exit status is 1.
fn hsm_check(cfg: &Config) -> ExitCode {
    use pec_milter::config::SigningBackend;
    use pec_milter::crypto::{DigestAlg, Pkcs11Key};
    if cfg.signing.backend != SigningBackend::Pkcs11 {
        eprintln!(
            "hsm-check: [signing] backend is \"pem\": nothing to check (set backend = \"pkcs11\" and a [signing.pkcs11] table)"
        );
        return ExitCode::from(1);
    }
    let mut opts = match daemon::pkcs11_options(cfg) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("hsm-check: FAILED: {e}");
            return ExitCode::from(1);
        }
    };
    let pool = opts.pool_size;
    opts.pool_size = 1;
    println!("module     {}", opts.module.display());
    println!("token      label {:?}", opts.token_label);
    println!("key        {}", opts.key_description());
    println!("PIN        from {}", opts.pin.describe());
    let key = match Pkcs11Key::open(opts) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("hsm-check: FAILED: {e}");
            return ExitCode::from(1);
        }
    };
    let i = key.info();
    println!("library    {}", i.library);
    println!("slot       {} ({})", i.slot_id, i.token);
    println!("login      ok");
    println!(
        "key found  RSA-{} label {:?} id {}",
        i.key_bits, i.key_label, i.key_id
    );
    println!("cert       {} (from {})", i.cert_subject, i.cert_origin);
    println!(
        "issuer     {}; valid until {}",
        i.cert_issuer, i.cert_not_after
    );
    println!("match      the key on the token is the certificate's key");
    println!("mechanism  {}", i.mechanism);
    for alg in [DigestAlg::Sha256, DigestAlg::Sha1] {
        match key.self_test(alg) {
            Ok(took) => println!(
                "signature  {alg}: made by the token, verified with the certificate's public key ({:.1} ms)",
                took.as_secs_f64() * 1000.0
            ),
            Err(e) => {
                eprintln!("hsm-check: FAILED: test signature ({alg}): {e}");
                return ExitCode::from(1);
            }
        }
    }
    let now = std::time::SystemTime::now();
    match pec_milter::crypto::sign_content(&key, DigestAlg::Sha256, b"hsm-check\r\n", now) {
        Ok(cms) => println!("cms        detached SignedData of {} bytes", cms.len()),
        Err(e) => {
            eprintln!("hsm-check: FAILED: CMS signature: {e}");
            return ExitCode::from(1);
        }
    }
    println!("OK: the daemon can sign with this token (pool_size {pool} in `run`)");
    ExitCode::SUCCESS
}

/// `pec-milter bench-sign`: `count` CMS signatures of a 1 KiB content from
/// `threads` threads with the configured key; one line of results.
fn bench_sign(cfg: &Config, threads: usize, count: usize) -> Result<ExitCode> {
    use pec_milter::crypto::DigestAlg;
    let threads = threads.max(1);
    let key = daemon::load_key(cfg)?;
    let content = vec![b'x'; 1024];
    let now = std::time::SystemTime::now();
    // warm-up: one signature per thread
    pec_milter::crypto::sign_content(key.as_ref(), DigestAlg::Sha256, &content, now)?;
    let per = count.div_ceil(threads);
    let t = std::time::Instant::now();
    let done: Result<usize> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                let key = key.clone();
                let content = &content;
                s.spawn(move || -> Result<usize> {
                    for _ in 0..per {
                        pec_milter::crypto::sign_content(
                            key.as_ref(),
                            DigestAlg::Sha256,
                            content,
                            now,
                        )?;
                    }
                    Ok(per)
                })
            })
            .collect();
        let mut n = 0;
        for h in handles {
            n += h
                .join()
                .map_err(|_| anyhow::anyhow!("a benchmark thread panicked"))??;
        }
        Ok(n)
    });
    let n = done?;
    let secs = t.elapsed().as_secs_f64();
    let backend = match cfg.signing.backend {
        pec_milter::config::SigningBackend::Pem => "pem",
        pec_milter::config::SigningBackend::Pkcs11 => "pkcs11",
    };
    let pool = match cfg.signing.backend {
        pec_milter::config::SigningBackend::Pkcs11 => daemon::pkcs11_options(cfg)?.pool_size,
        pec_milter::config::SigningBackend::Pem => 0,
    };
    println!(
        "backend={backend} pool={pool} threads={threads} signatures={n} seconds={secs:.3} per_second={:.1}",
        n as f64 / secs
    );
    Ok(ExitCode::SUCCESS)
}

fn init_logging() {
    init_logging_to("info");
}

fn init_logging_to(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PEC_MILTER_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
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
