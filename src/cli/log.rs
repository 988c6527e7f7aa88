//! `pec-milter log verify` (every chain of the given nodes' directories)
//! `pec-milter log extract` (the holder's extract of one message),
//! `log seal` (close and seal the current file now) and `log retain`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::NaiveDate;
use clap::Subcommand;

use pec_milter::log::extract::{Query, extract, to_text};
use pec_milter::log::seal::{
    Tsa, is_closed, read_pems, tsa_store, tsr_path, unsealed, verify_seal,
};
use pec_milter::log::verify::{node_dirs, verify_node};
use pec_milter::log::writer::{FileLog, LogOptions, chain_files, writer_pid};
use rustix::process::{Pid, Signal, kill_process};

#[derive(Subcommand)]
pub enum LogCommand {
    /// Check every record of every file (hash, order, the link between
    /// files) of the node directories under each DIR; exit 1 naming the
    /// first bad record or missing file.
    Verify {
        /// The TSA's trust anchors (PEM): each closed file's seal
        /// (FILE.tsr) is checked against its file and them.
        #[arg(long, value_name = "PEM")]
        tsa_trust: Vec<PathBuf>,
        /// A closed file without its seal is an error (not only a note).
        #[arg(long)]
        require_seals: bool,
        /// Log directories ([log] dir) or node directories in them.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
    /// Close this node's current log file now and seal it (RFC 3161,
    /// through [log] tsa_url): for an operator before a migration, and for
    /// tests. A running daemon is asked (SIGUSR1; it seals and retries as
    /// usual) and this waits for the seal; with no daemon the file is
    /// closed and sealed here.
    Seal {
        #[arg(long, default_value = super::DEFAULT_CONFIG)]
        config: PathBuf,
        /// How long to wait for the daemon's seal, in seconds.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Remove the log files (with their seals) and quarantined messages
    /// older than [log] retention_months, never a node's newest file;
    /// print each path removed. The daemon does the same once a day.
    Retain {
        #[arg(long, default_value = super::DEFAULT_CONFIG)]
        config: PathBuf,
        /// Only print what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// The holder's extract: every event of the messages from SENDER to
    /// RECIPIENT sent on DATE (local time), across the given log
    /// directories (each chain is verified first), in time order.
    Extract {
        #[arg(long)]
        sender: String,
        #[arg(long)]
        recipient: String,
        /// YYYY-MM-DD, the provider's local day.
        #[arg(long)]
        date: NaiveDate,
        /// Only messages with this subject.
        #[arg(long)]
        subject: Option<String>,
        /// Only the message with this Message-ID or PEC id.
        #[arg(long)]
        message_id: Option<String>,
        /// One JSON array of records instead of text.
        #[arg(long)]
        json: bool,
        /// Issue the extract as an S/MIME message to the sender, signed
        /// with the provider key of --config (`pec-milter verify` accepts it).
        #[arg(long)]
        sign: bool,
        #[arg(long, default_value = super::DEFAULT_CONFIG)]
        config: PathBuf,
        /// Log directories ([log] dir) or node directories.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
}

pub fn log(cmd: &LogCommand) -> Result<ExitCode> {
    match cmd {
        LogCommand::Verify {
            tsa_trust,
            require_seals,
            dirs,
        } => verify(dirs, tsa_trust, *require_seals),
        LogCommand::Seal { config, wait } => seal(config, Duration::from_secs(*wait)),
        LogCommand::Retain { config, dry_run } => {
            let cfg = pec_milter::config::Config::load(config)?;
            let today = pec_milter::log::writer::local_date(chrono::Utc::now());
            let cut = pec_milter::log::retain::cutoff(today, cfg.log.retention_months);
            let removed =
                pec_milter::log::retain::retain(&cfg.log.dir, &cfg.quarantine.dir, cut, *dry_run)
                    .with_context(|| format!("retention under {}", cfg.log.dir.display()))?;
            for p in &removed {
                println!(
                    "{} {}",
                    if *dry_run { "would remove" } else { "removed" },
                    p.display()
                );
            }
            eprintln!(
                "retention: {} files older than {cut} ({} months)",
                removed.len(),
                cfg.log.retention_months
            );
            Ok(ExitCode::SUCCESS)
        }
        LogCommand::Extract {
            sender,
            recipient,
            date,
            subject,
            message_id,
            json,
            sign,
            config,
            dirs,
        } => {
            let q = Query {
                sender: sender.clone(),
                recipient: recipient.clone(),
                date: *date,
                subject: subject.clone(),
                message_id: message_id.clone(),
            };
            let paths: Vec<&std::path::Path> = dirs.iter().map(PathBuf::as_path).collect();
            match extract(&paths, &q) {
                Ok(records) => {
                    let body = if *json {
                        format!("{}\n", serde_json::to_string_pretty(&records)?)
                    } else {
                        to_text(&records)
                    };
                    if *sign && !records.is_empty() {
                        let signed = signed_extract(config, &q, &body)?;
                        std::io::Write::write_all(&mut std::io::stdout(), &signed)?;
                    } else {
                        print!("{body}");
                    }
                    if records.is_empty() {
                        eprintln!("pec-milter: no event matches");
                        return Ok(ExitCode::from(3));
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("pec-milter: log not verified, no extract: {e}");
                    Ok(ExitCode::from(1))
                }
            }
        }
    }
}

/// The extract as an S/MIME message from the provider to the holder who
/// asked (the sender), signed with the configured key (PEM or PKCS#11).
fn signed_extract(config: &std::path::Path, q: &Query, body: &str) -> Result<Vec<u8>> {
    let cfg = pec_milter::config::Config::load(config)?;
    let provider = pec_milter::daemon::provider(&cfg);
    let key = pec_milter::daemon::load_key(&cfg)?;
    let now = chrono::Utc::now();
    let id = hex::encode(openssl::sha::sha256(
        format!("{}{}{}{}", q.sender, q.recipient, q.date, now.to_rfc3339()).as_bytes(),
    ));
    let emission = pec_milter::pec::build::Emission {
        time: now,
        message_id: format!("estratto.{}@{}", &id[..24], provider.domain),
    };
    let subject = format!(
        "Estratto del log dei messaggi: {} -> {}, {}",
        q.sender, q.recipient, q.date
    );
    let subject = if subject.is_ascii() {
        subject
    } else {
        format!("Estratto del log dei messaggi, {}", q.date)
    };
    Ok(pec_milter::pec::build::build_signed_text(
        &provider,
        &q.sender,
        &subject,
        body,
        &emission,
        pec_milter::pec::build::Signer {
            key: key.as_ref(),
            digest: cfg.provider.digest,
        },
    )?)
}

fn seal(config: &Path, wait: Duration) -> Result<ExitCode> {
    let cfg = pec_milter::config::Config::load(config)?;
    if !cfg.log.enabled {
        eprintln!("pec-milter: [log] enabled = false in {}", config.display());
        return Ok(ExitCode::from(1));
    }
    let opts = LogOptions {
        dir: cfg.log.dir.clone(),
        node: cfg.log.node_name(),
    };
    let node_dir = opts.dir.join(&opts.node);
    let tsa = if cfg.log.tsa_url.is_empty() {
        None
    } else {
        let trust = read_pems(&cfg.log.tsa_trust)?;
        Some(Tsa::new(
            cfg.log.tsa_url.clone(),
            cfg.log.tsa_timeout,
            &trust,
        )?)
    };
    let current = match chain_files(&node_dir) {
        Ok(mut files) => files.pop(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", node_dir.display())),
    };
    let Some(current) = current else {
        eprintln!("pec-milter: no log file yet in {}", node_dir.display());
        return Ok(ExitCode::SUCCESS);
    };
    let closed = match writer_pid(&node_dir) {
        Some(pid) => {
            // The daemon closes its file and seals it (its sealer, its retries).
            let target = Pid::from_raw(i32::try_from(pid)?)
                .with_context(|| format!("bad pid {pid} in {}", node_dir.display()))?;
            kill_process(target, Signal::USR1)
                .with_context(|| format!("signalling pec-milter (pid {pid})"))?;
            let deadline = deadline_after(wait);
            loop {
                let done = is_closed(&current)? && (tsa.is_none() || tsr_path(&current).exists());
                if done {
                    break;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    eprintln!(
                        "pec-milter: {} not {} after {} s (the daemon retries: see its log)",
                        current.display(),
                        if is_closed(&current)? {
                            "sealed"
                        } else {
                            "closed"
                        },
                        wait.as_secs()
                    );
                    return Ok(ExitCode::from(1));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            println!("closed {} (by pec-milter, pid {pid})", current.display());
            vec![current]
        }
        None => {
            // No daemon: close the current file here, then seal what waits.
            if !is_closed(&current)? {
                let rt = tokio::runtime::Builder::new_current_thread().build()?;
                let log = FileLog::open(&opts)?;
                // A file of an earlier day is closed on opening (the
                // midnight rotation the stopped daemon missed): then the
                // file closed here is the one opened after it.
                if is_closed(&current)? {
                    println!("closed {}", current.display());
                }
                let closed = rt.block_on(log.seal())?;
                println!("closed {}", closed.display());
            }
            match &tsa {
                Some(tsa) => {
                    let waiting = unsealed(&node_dir)?;
                    for f in &waiting {
                        let tsr = tsa.seal(f)?;
                        println!("sealed {} ({})", f.display(), tsr.display());
                    }
                    waiting
                }
                None => Vec::new(),
            }
        }
    };
    if tsa.is_none() {
        eprintln!("pec-milter: [log] tsa_url is empty: the file is closed and chained, not sealed");
    } else {
        for f in &closed {
            if tsr_path(f).exists() {
                println!("sealed {}", tsr_path(f).display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// When a wait of `wait` from now ends; `None` past what an `Instant`
/// holds (`--wait 18446744073709551615` overflowed `Instant + Duration`,
/// a panic): no end.
fn deadline_after(wait: Duration) -> Option<Instant> {
    Instant::now().checked_add(wait)
}

fn verify(dirs: &[PathBuf], tsa_trust: &[PathBuf], require_seals: bool) -> Result<ExitCode> {
    let store = if tsa_trust.is_empty() {
        None
    } else {
        Some(tsa_store(&read_pems(tsa_trust)?)?)
    };
    let mut any = false;
    for dir in dirs {
        let nodes = node_dirs(dir).with_context(|| format!("reading {}", dir.display()))?;
        if nodes.is_empty() {
            eprintln!("{}: no log files", dir.display());
            return Ok(ExitCode::from(1));
        }
        for node in nodes {
            any = true;
            match verify_node(&node) {
                Ok(v) => {
                    println!(
                        "{}: ok, {} files ({} closed), {} records",
                        node.display(),
                        v.files,
                        v.closed.len(),
                        v.records
                    );
                    for f in &v.closed {
                        let has = tsr_path(f).exists();
                        match (&store, has) {
                            (Some(store), true) => match verify_seal(f, store) {
                                Ok(time) => println!("{}: sealed at {time}", f.display()),
                                Err(e) => {
                                    eprintln!("NOT VERIFIED: {}: seal: {e}", f.display());
                                    return Ok(ExitCode::from(1));
                                }
                            },
                            (None, true) => {
                                println!("{}: sealed (not checked: no --tsa-trust)", f.display())
                            }
                            (_, false) if require_seals => {
                                eprintln!("NOT VERIFIED: {}: closed but not sealed", f.display());
                                return Ok(ExitCode::from(1));
                            }
                            (_, false) => println!("{}: not sealed yet", f.display()),
                        }
                    }
                }
                Err(e) => {
                    eprintln!("NOT VERIFIED: {e}");
                    return Ok(ExitCode::from(1));
                }
            }
        }
    }
    Ok(if any {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_too_long_for_an_instant_has_no_end_instead_of_a_panic() {
        assert_eq!(deadline_after(Duration::from_secs(u64::MAX)), None);
        assert_eq!(deadline_after(Duration::MAX), None);
        let d = deadline_after(Duration::from_secs(60)).expect("a minute fits");
        assert!(d > Instant::now());
    }
}
