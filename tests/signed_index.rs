//! The providers' index as published (issue 18, PEC-RULES §5.1): the LDIF
//! enveloped in a CMS SignedData (`.p7m`; DER, PEM or base64), loaded only
//! when its signature verifies against `[index] signed_by`. A tampered
//! copy, one signed by a signer that does not chain to the anchors, or a
//! plain LDIF where a signed one is expected never replaces the copy in
//! use: the refresh fails, says why, and is counted.

mod common;

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use common::*;
use openssl::cms::{CMSOptions, CmsContentInfo};
use openssl::pkey::PKey;
use openssl::x509::X509;
use pec_milter::crypto::Pki;
use pec_milter::crypto::verify::TrustStore;
use pec_milter::health::Health;
use pec_milter::index::{IndexError, IndexSource, ProviderIndex, ldif};

fn directory() -> String {
    ldif::write_directory(&acme_and_b(&["pec.b.test"]))
}

/// `content` enveloped in a CMS SignedData signed by `pki`'s provider
/// key, its certificate included (DER).
fn sign(content: &[u8], pki: &Pki) -> Vec<u8> {
    let cert = X509::from_pem(&pki.cert_pem).expect("cert");
    let key = PKey::private_key_from_pem(&pki.key_pem).expect("key");
    CmsContentInfo::sign(
        Some(&cert),
        Some(&key),
        None,
        Some(content),
        CMSOptions::BINARY,
    )
    .expect("sign")
    .to_der()
    .expect("der")
}

/// The index of the signed file `path`, its signer's anchor ACME's CA.
fn signed_index(path: &Path) -> ProviderIndex {
    ProviderIndex::new(IndexSource::SignedLdif {
        path: path.to_path_buf(),
        signed_by: TrustStore::from_pem_bytes(&[&pki().pki.ca_cert_pem]).expect("anchor"),
    })
}

fn providers(index: &ProviderIndex) -> Vec<String> {
    index
        .snapshot()
        .map(|s| s.providers().iter().map(|p| p.name.clone()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn the_signed_index_loads_in_der_pem_and_base64() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("igpec.ldif.p7m");
    let der = sign(directory().as_bytes(), &pki().pki);
    let pem = CmsContentInfo::from_der(&der)
        .expect("cms")
        .to_pem()
        .expect("pem");
    let b64 = base64::engine::general_purpose::STANDARD
        .encode(&der)
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join("\r\n");
    for (form, bytes) in [
        ("DER", der.clone()),
        ("PEM", pem),
        ("base64", b64.into_bytes()),
    ] {
        std::fs::write(&path, &bytes).expect("write");
        let index = signed_index(&path);
        index
            .refresh()
            .await
            .unwrap_or_else(|e| panic!("{form}: {e}"));
        assert_eq!(
            providers(&index),
            ["ACME PEC S.p.A.", "Beta PEC S.p.A."],
            "{form}"
        );
        assert!(
            index
                .snapshot()
                .is_some_and(|s| s.source().starts_with("signed LDIF file")),
            "{form}"
        );
    }
}

#[tokio::test]
async fn a_bad_signature_keeps_the_copy_in_use_and_is_counted() {
    let dir = tempfile::tempdir().expect("tmp");
    let path = dir.path().join("igpec.ldif.p7m");
    let good = sign(directory().as_bytes(), &pki().pki);
    std::fs::write(&path, &good).expect("write");
    let index = signed_index(&path);
    index.refresh().await.expect("the signed copy loads");
    let loaded_at = index.snapshot().expect("copy").loaded_at();
    let health = Health::default();

    // a domain changed inside the signed content
    let mut tampered = good.clone();
    let at = tampered
        .windows(b"pec.b.test".len())
        .position(|w| w == b"pec.b.test")
        .expect("the content is in the SignedData");
    tampered[at + 4] = b'x';
    // signed by B, whose CA is not an anchor of the index's signer
    let untrusted = sign(directory().as_bytes(), &other().pki);
    // not signed at all; and with a comment before its first entry (not
    // told by its first line: neither DER nor base64, text with `dn:` lines)
    let plain = directory().into_bytes();
    let commented = format!("# IGPEC export\n\n{}", directory()).into_bytes();
    let file = path.display().to_string();
    for (what, bytes) in [
        ("tampered", tampered),
        ("untrusted signer", untrusted),
        ("plain LDIF", plain),
        ("plain LDIF", commented),
    ] {
        std::fs::write(&path, &bytes).expect("write");
        let r = index.refresh_logged().await;
        let text = r.as_ref().err().map(|e| e.to_string()).unwrap_or_default();
        match (what, &r) {
            ("tampered", Err(IndexError::Signature { reason, .. })) => {
                assert!(reason.contains("digest"), "{what}: {reason}");
                assert!(
                    text.starts_with(&format!("signature of {file}: ")),
                    "{text}"
                );
            }
            // in plain words first, OpenSSL's detail after
            ("untrusted signer", Err(IndexError::UntrustedSigner { detail, .. })) => {
                assert!(
                    text.starts_with(&format!(
                        "{file}: the signer does not chain to [index] signed_by ("
                    )),
                    "{text}"
                );
                assert!(detail.contains("certificate verify error"), "{detail}");
                assert!(text.ends_with(&format!("({detail})")), "{text}");
            }
            ("plain LDIF", Err(IndexError::NotSigned { .. })) => assert_eq!(
                text,
                format!(
                    "{file}: a plain LDIF, not signed ([index] signed_by expects the signed .p7m as published)"
                )
            ),
            (_, other) => panic!("{what}: {other:?}"),
        }
        health.observe_index(&r.as_ref().map(|_| ()));
        let snap = index.snapshot().expect("the old copy stays");
        assert_eq!(snap.loaded_at(), loaded_at, "{what}");
        assert_eq!(providers(&index), ["ACME PEC S.p.A.", "Beta PEC S.p.A."]);
    }
    let text = health.metrics().encode();
    assert!(
        text.contains("pec_milter_index_signature_failures_total 4"),
        "{text}"
    );
    assert!(health.is_down(pec_milter::health::Dependency::Index));
    // the good copy again
    std::fs::write(&path, &good).expect("write");
    index.refresh().await.expect("loads again");
    assert!(index.snapshot().expect("copy").loaded_at() > loaded_at);
}

/// The file as `openssl cms -sign -nodetach` makes it (the tool a
/// publisher would use), DER and PEM.
#[tokio::test]
async fn what_openssl_cms_sign_nodetach_makes_loads() {
    if !require("openssl", which("openssl").is_some()) {
        return;
    }
    let dir = tempfile::tempdir().expect("tmp");
    let write = |name: &str, data: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, data).expect("write");
        p
    };
    let content = write("igpec.ldif", directory().as_bytes());
    let cert = write("signer.pem", &pki().pki.cert_pem);
    let key = write("signer.key", &pki().pki.key_pem);
    for form in ["DER", "PEM"] {
        let out = dir.path().join(format!("igpec.ldif.{form}.p7m"));
        let status = Command::new("openssl")
            .args(["cms", "-sign", "-nodetach", "-binary", "-outform", form])
            .arg("-in")
            .arg(&content)
            .arg("-signer")
            .arg(&cert)
            .arg("-inkey")
            .arg(&key)
            .arg("-out")
            .arg(&out)
            .status()
            .expect("openssl");
        assert!(status.success(), "{form}");
        let index = signed_index(&out);
        index
            .refresh()
            .await
            .unwrap_or_else(|e| panic!("{form}: {e}"));
        assert_eq!(providers(&index).len(), 2, "{form}");
    }
}

/// The daemon started (in-process) with no usable copy: `[index] ldif`
/// is the plain demo LDIF that `init_demo` writes where the signed one is
/// expected. The first load is refused; while no copy is loaded the
/// refresher retries after `min(refresh, 1 min)` (here the refresh, 1 s)
/// and takes the signed file as soon as it is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_without_a_copy_at_start_loads_the_signed_index_once_written() {
    let dir = tempfile::tempdir().expect("tmp");
    let anchor = dir.path().join("igpec-signer-ca.pem");
    std::fs::write(&anchor, &pki().pki.ca_cert_pem).expect("anchor");
    let index_path = dir.path().join("index/igpec.ldif.p7m");
    let config = DaemonConfig {
        domains: None,
        index: Some(index_path.clone()),
        signed_by: vec![anchor.clone()],
        index_refresh: Some("1s".into()),
        trust: vec![anchor],
        ..DaemonConfig::new(dir.path())
    }
    .write();
    let daemon = InProcessDaemon::start(&config)
        .await
        .expect("the daemon starts without an index copy");
    let index = daemon
        .reloader
        .current()
        .get()
        .index
        .clone()
        .expect("an index");
    // the demo LDIF, plain: refused
    assert!(
        std::fs::read_to_string(&index_path)
            .expect("init_demo's LDIF")
            .starts_with("dn:")
    );
    assert!(matches!(
        index.refresh().await,
        Err(IndexError::NotSigned { .. })
    ));
    assert!(index.snapshot().is_none());

    std::fs::write(&index_path, sign(directory().as_bytes(), &pki().pki)).expect("write");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while index.snapshot().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the signed index was not loaded by the refresher"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(providers(&index), ["ACME PEC S.p.A.", "Beta PEC S.p.A."]);
    daemon.stop().await;
}
