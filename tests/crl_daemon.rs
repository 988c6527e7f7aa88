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

/// The two verdicts: the envelope of Gamma (luigi@pec.g.test, `gamma`,
/// its certificate revoked) an anomaly (else fails with `revoked`), the one
/// of Delta (anna@pec.d.test, `delta`) delivered.
async fn verdicts(addr: &str, gamma: &PemKey, delta: &PemKey, revoked: &str) {
    let from = "luigi@pec.g.test";
    let (status, anomaly) = receive(addr, from, &envelope(from, gamma)).await;
    assert!(anomaly, "{revoked} ({status:?})");
    let from = "anna@pec.d.test";
    let (status, anomaly) = receive(addr, from, &envelope(from, delta)).await;
    assert!(
        !anomaly && matches!(status, Status::Accept | Status::Continue),
        "{status:?}"
    );
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
    let config = DaemonConfig {
        listen: format!("inet:127.0.0.1:{milter_port}"),
        reinjection_port: free_port(),
        reinjection_timeout: Some("2s".into()),
        index: Some(p7m),
        signed_by: vec![index_ca],
        trust: vec![trust],
        crl_cache: Some(d.join("crl")),
        metrics: Some(format!("127.0.0.1:{ops_port}")),
        ..DaemonConfig::new(d)
    }
    .write();
    let addr = format!("127.0.0.1:{milter_port}");

    let log = d.join("first.log");
    let daemon = DaemonProcess::start(&config, &log, LOG_WAIT);
    wait_log(&log, "providers' index loaded");
    // learnt from the index, fetched before any message
    wait_log(&log, "CRL fetched");
    assert_eq!(server.hits(), 1);

    verdicts(
        &addr,
        &gamma,
        &delta,
        "the revoked provider's envelope: an anomaly",
    )
    .await;

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
    daemon.stop();

    // restarted with the distribution point down: the copy on disk serves
    server.stop();
    let log = d.join("second.log");
    let daemon = DaemonProcess::start(&config, &log, LOG_WAIT);
    wait_log(&log, "CRL cache: copy read from disk");
    wait_log(&log, "providers' index loaded");
    verdicts(&addr, &gamma, &delta, "still revoked").await;
    assert_eq!(
        log_has(&log, "CRL download failed"),
        0,
        "not due: no download tried"
    );
    daemon.stop();
}
