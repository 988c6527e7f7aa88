//! End to end on loopback (issue 18): the daemon binary itself, its
//! providers' index the signed `.p7m` (`[index] signed_by`), its reception
//! point checking the CRL of the providers' distribution point, served by
//! a loopback HTTP server; envelopes arrive through the milter protocol.
//!
//! - at start the index's certificates' distribution point is learnt and
//!   its CRL fetched (before any message) and kept in `crl_cache`;
//! - the envelope of the revoked provider becomes a busta di anomalia, the
//!   other provider's is delivered with its presa in carico queued;
//! - `/metrics` and `/health` show the CRL held;
//! - restarted with the CRL server stopped, the copy on disk serves: the
//!   same two verdicts.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use common::crl_server::CrlServer;
use common::*;
use indymilter_test::{EomAction, Status, TestConnection};
use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::pkey::PKey;
use openssl::x509::X509;
use pec_milter::crypto::Pki;
use pec_milter::crypto::pem::PemKey;
use pec_milter::index::ldif;
use pec_milter::pec::build::Provider;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const DAY: Duration = Duration::from_secs(86_400);

/// An envelope from `from` (its domain managed by the signer), signed by `key`.
fn envelope(from: &str, key: &PemKey) -> Vec<u8> {
    let domain = from.rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
    let provider = Provider {
        name: "Gestore".into(),
        domain: domain.into(),
    };
    busta_to_mario(
        from,
        &format!("<o.1@{domain}>"),
        &format!("opec.1@{domain}"),
        &provider,
        "ciao",
        key,
    )
}

/// Header fields (name, value as a milter gets it: folded lines joined by
/// LF) and body of a CRLF message.
fn split(message: &[u8]) -> (Vec<(String, String)>, Vec<u8>) {
    let at = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = String::from_utf8_lossy(&message[..at]).into_owned();
    let mut fields: Vec<(String, String)> = Vec::new();
    for line in head.split("\r\n") {
        if line.starts_with([' ', '\t']) {
            if let Some(last) = fields.last_mut() {
                last.1.push('\n');
                last.1.push_str(line);
            }
            continue;
        }
        let (n, v) = line.split_once(':').expect("a field");
        fields.push((n.to_string(), v.strip_prefix(' ').unwrap_or(v).to_string()));
    }
    (fields, message[at + 4..].to_vec())
}

/// One message through the milter as Postfix sends it unauthenticated:
/// the status at its end and whether the body was replaced (an anomaly).
async fn receive(addr: &str, from: &str, message: &[u8]) -> (Status, bool) {
    let mut conn = TestConnection::configure()
        .open_tcp(addr)
        .await
        .expect("connect to the milter");
    let st = conn.mail([format!("<{from}>")]).await.expect("mail");
    assert_eq!(st, Status::Continue, "MAIL of {from}");
    conn.rcpt(["<mario@pec.acme.test>"]).await.expect("rcpt");
    let (fields, body) = split(message);
    for (n, v) in &fields {
        conn.header(n.as_str(), v.as_str()).await.expect("header");
    }
    for piece in body.chunks(60_000) {
        conn.body(piece.to_vec()).await.expect("body");
    }
    conn.macros(indymilter::MacroStage::Eom, [("i", "4QUEUEID")])
        .await
        .expect("macros");
    let (actions, status) = conn.eom().await.expect("eom");
    let _ = conn.close().await;
    let replaced = actions
        .actions
        .iter()
        .any(|a| matches!(a, EomAction::ReplaceBody { .. }));
    (status, replaced)
}

/// GET `path` of the operations endpoint: the body.
async fn get(port: u16, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("ops endpoint");
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("answer");
    out
}

/// Up to 40 s: the daemon is a debug build and CI's two cores are shared
/// with other test binaries. One run of ten here failed once (its output
/// was not kept); a wait too short for a loaded machine is the likeliest
/// cause.
const LOG_WAIT: Duration = Duration::from_secs(40);

fn wait_log(log: &Path, what: &str) {
    common::wait_log(log, what, 1, LOG_WAIT);
}

fn start(config: &Path, log: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_pec-milter"))
        .args(["run", "--config"])
        .arg(config)
        .env("PEC_MILTER_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("pec-milter run")
}

fn stop(mut child: Child) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).expect("pid");
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    for _ in 0..400 {
        if child.try_wait().expect("wait").is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    let _ = child.kill();
    panic!("the daemon did not stop on SIGTERM");
}

fn write(dir: &Path, name: &str, data: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, data).expect("write");
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_checks_the_distribution_points_crl_and_keeps_it_across_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path();
    let mut server = CrlServer::start();
    let ca = Pki::generate_with_crl("Gamma PEC S.p.A.", "pec.g.test", 365, Some(&server.url()))
        .expect("pki");
    let gamma = ca.signing_key().expect("gamma key");
    let (delta_pem, delta_key) = ca
        .issue_leaf_with_crl("Delta PEC S.p.A.", "pec.d.test", 365, Some(&server.url()))
        .expect("delta");
    let delta = PemKey::from_pem(&delta_key, &delta_pem).expect("delta key");
    let now = std::time::SystemTime::now();
    server.serve(ca.crl(&[&ca.cert_pem], now, now + 7 * DAY).expect("crl"));

    // the index as published: signed by the ACME test provider
    let directory = ldif::write_directory(&[
        entry(
            "Gamma PEC S.p.A.",
            &ca.cert_pem,
            &["pec.g.test"],
            "ricevute@pec.g.test",
        ),
        entry(
            "Delta PEC S.p.A.",
            &delta_pem,
            &["pec.d.test"],
            "ricevute@pec.d.test",
        ),
    ]);
    let signer = X509::from_pem(&pki().pki.cert_pem).expect("cert");
    let signer_key = PKey::private_key_from_pem(&pki().pki.key_pem).expect("key");
    let p7m = CmsContentInfo::sign(
        Some(&signer),
        Some(&signer_key),
        None,
        Some(directory.as_bytes()),
        CMSOptions::BINARY,
    )
    .expect("sign")
    .to_der()
    .expect("der");
    let p7m = write(d, "igpec.ldif.p7m", &p7m);
    let index_ca = write(d, "index-ca.pem", &pki().pki.ca_cert_pem);
    let trust = write(d, "gamma-ca.pem", &ca.ca_cert_pem);

    let milter_port = free_port();
    let ops_port = free_port();
    let config = write(
        d,
        "pec-milter.toml",
        format!(
            r#"[milter]
listen = "inet:127.0.0.1:{milter_port}"
workers = 2

[provider]
name = "ACME PEC S.p.A."
domain = "pec.acme.test"
domains = ["pec.acme.test"]

[signing]
key = "{d}/demo/provider.key"
cert = "{d}/demo/provider.crt"
init_demo = true

[reinjection]
address = "127.0.0.1:{sink}"
timeout = "2s"

[state]
path = "{d}/state"

[clamd]
enabled = false

[quarantine]
dir = "{d}/quarantine"

[spool]
dir = "{d}/spool"

[index]
source = "ldif"
ldif = "{p7m}"
signed_by = ["{index_ca}"]

[reception]
trust = ["{trust}"]
fetch_crls = true
crl_cache = "{d}/crl"

[delivery]
listen = ""
outbox = "{d}/outbox"

[timers]
enabled = false

[log]
dir = "{d}/log"
node = "mx"

[metrics]
listen = "127.0.0.1:{ops_port}"
"#,
            d = d.display(),
            sink = free_port(),
            p7m = p7m.display(),
            index_ca = index_ca.display(),
            trust = trust.display(),
        )
        .as_bytes(),
    );
    let addr = format!("127.0.0.1:{milter_port}");

    let log = d.join("first.log");
    let child = start(&config, &log);
    wait_log(&log, "pec-milter ready");
    wait_log(&log, "providers' index loaded");
    // learnt from the index, fetched before any message
    wait_log(&log, "CRL fetched");
    assert_eq!(server.hits(), 1);

    let (status, anomaly) = receive(
        &addr,
        "luigi@pec.g.test",
        &envelope("luigi@pec.g.test", &gamma),
    )
    .await;
    assert!(
        anomaly,
        "the revoked provider's envelope: an anomaly ({status:?})"
    );
    let (status, anomaly) = receive(
        &addr,
        "anna@pec.d.test",
        &envelope("anna@pec.d.test", &delta),
    )
    .await;
    assert!(
        !anomaly && matches!(status, Status::Accept | Status::Continue),
        "{status:?}"
    );

    let metrics = get(ops_port, "/metrics").await;
    for line in [
        "pec_milter_messages_total{role=\"reception\",outcome=\"anomaly\"} 1",
        "pec_milter_messages_total{role=\"reception\",outcome=\"accept\"} 1",
        "pec_milter_receipts_total{kind=\"presa-in-carico\",stage=\"queued\"} 1",
        "pec_milter_crl_unavailable 0",
        "pec_milter_crl_fetch_failures_total 0",
        "pec_milter_index_signature_failures_total 0",
    ] {
        assert!(metrics.contains(line), "{line} in:\n{metrics}");
    }
    assert!(
        !metrics.contains("pec_milter_crl_oldest_age_seconds -1"),
        "{metrics}"
    );
    let health = get(ops_port, "/health").await;
    assert!(health.contains("\"crl\":{\"state\":\"up\"}"), "{health}");
    stop(child);

    // restarted with the distribution point down: the copy on disk serves
    server.stop();
    let log = d.join("second.log");
    let child = start(&config, &log);
    wait_log(&log, "pec-milter ready");
    wait_log(&log, "CRL cache: copy read from disk");
    wait_log(&log, "providers' index loaded");
    let (status, anomaly) = receive(
        &addr,
        "luigi@pec.g.test",
        &envelope("luigi@pec.g.test", &gamma),
    )
    .await;
    assert!(anomaly, "still revoked ({status:?})");
    let (status, anomaly) = receive(
        &addr,
        "anna@pec.d.test",
        &envelope("anna@pec.d.test", &delta),
    )
    .await;
    assert!(
        !anomaly && matches!(status, Status::Accept | Status::Continue),
        "{status:?}"
    );
    assert_eq!(
        log_has(&log, "CRL download failed"),
        0,
        "not due: no download tried"
    );
    stop(child);
}
