//! `pec-milter log seal` with no daemon running: the node's current file
//! is closed here (its `chiusura`), the next one opened with the link to
//! it, and `log verify` accepts the chain; with no TSA configured it says
//! that the file is not sealed. (With a daemon: integration/
//! e2e-two-providers.sh (L), where the daemon closes and seals.)

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pec_milter::log::seal::is_closed;
use pec_milter::log::writer::{FileLog, LogOptions, chain_files, writer_pid};
use pec_milter::log::{Destinatario, Event, EventLog, Evento};

fn config(dir: &Path) -> std::path::PathBuf {
    let p = &common::pki().pki;
    let (key, cert) = (dir.join("k.pem"), dir.join("c.pem"));
    std::fs::write(&key, &p.key_pem).expect("key");
    std::fs::write(&cert, &p.cert_pem).expect("cert");
    let cfg = dir.join("pec-milter.toml");
    std::fs::write(
        &cfg,
        format!(
            "[provider]\nname = \"Demo PEC S.p.A.\"\ndomain = \"pec.demo.test\"\n\
             [signing]\nkey = \"{}\"\ncert = \"{}\"\n\
             [log]\ndir = \"{}\"\nnode = \"mx1\"\n",
            key.display(),
            cert.display(),
            dir.join("log").display()
        ),
    )
    .expect("config");
    cfg
}

fn seal(cfg: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pec-milter"))
        .args(["log", "seal", "--config"])
        .arg(cfg)
        .output()
        .expect("run pec-milter log seal")
}

#[test]
fn log_seal_without_a_daemon_closes_the_current_file() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path());
    let node_dir = dir.path().join("log").join("mx1");

    // nothing written yet: nothing to close
    let out = seal(&cfg);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("no log file yet"));

    // one event, as the daemon writes it; then the writer stops
    record_one_event(dir.path(), &node_dir);
    let first = chain_files(&node_dir).expect("files");
    assert_eq!(first.len(), 1);
    assert!(!is_closed(&first[0]).expect("read"));

    let out = seal(&cfg);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(&format!("closed {}", first[0].display())),
        "{stdout}"
    );
    assert!(stderr.contains("not sealed"), "{stderr}");
    assert!(
        is_closed(&first[0]).expect("read"),
        "the file has its chiusura"
    );
    let files = chain_files(&node_dir).expect("files");
    assert_eq!(files.len(), 2, "the next file is opened: {files:?}");
    assert!(!is_closed(&files[1]).expect("read"));

    let verify = Command::new(env!("CARGO_BIN_EXE_pec-milter"))
        .args(["log", "verify"])
        .arg(dir.path().join("log"))
        .output()
        .expect("run log verify");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stderr)
    );
}

/// One event written as the daemon writes it, then the writer stopped
/// (its file left open, without its `chiusura`).
fn record_one_event(dir: &Path, node_dir: &Path) {
    let opts = LogOptions {
        dir: dir.join("log"),
        node: "mx1".into(),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("rt");
    {
        let log = FileLog::open(&opts).expect("open");
        rt.block_on(log.record(vec![Event {
            event: Evento::Accettazione,
            time: chrono::Utc::now(),
            pec_id: "pec.1@pec.demo.test".into(),
            msgid: Some("<m.1@client>".into()),
            related: vec![],
            sender: "mario@pec.demo.test".into(),
            recipients: vec![Destinatario {
                address: "anna@pec.other.test".into(),
                tipo: "certificato".into(),
            }],
            subject: "Prova".into(),
            provider: "Demo PEC S.p.A.".into(),
            outcome: "ok".into(),
            about: None,
        }]))
        .expect("recorded");
    }
    for _ in 0..200 {
        if writer_pid(node_dir).is_none() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The current file is from an earlier day (the daemon stopped before
/// midnight without closing it): opening the log closes it and starts
/// today's, which `log seal` then closes too. Both are reported closed
/// (this was a `debug_assert` that the file closed is the current one,
/// which panicked in a debug build).
#[test]
fn log_seal_without_a_daemon_closes_an_earlier_days_file_too() {
    let dir = tempfile::tempdir().expect("dir");
    let cfg = config(dir.path());
    let node_dir = dir.path().join("log").join("mx1");
    record_one_event(dir.path(), &node_dir);
    let files = chain_files(&node_dir).expect("files");
    assert_eq!(files.len(), 1);
    let old = node_dir.join("000001_2020-01-01.jsonl");
    std::fs::rename(&files[0], &old).expect("rename to an earlier day");
    assert!(!is_closed(&old).expect("read"));

    let out = seal(&cfg);
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let files = chain_files(&node_dir).expect("files");
    assert_eq!(
        files.len(),
        3,
        "earlier day, today's (closed), next: {files:?}"
    );
    assert_eq!(files[0], old);
    for f in &files[..2] {
        assert!(is_closed(f).expect("read"), "{} closed", f.display());
        assert!(
            stdout.contains(&format!("closed {}", f.display())),
            "{stdout}"
        );
    }
    assert!(!is_closed(&files[2]).expect("read"));
}
