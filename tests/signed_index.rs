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
    ldif::write_directory(&[
        entry(
            "ACME PEC S.p.A.",
            &pki().pki.cert_pem,
            &["pec.acme.test"],
            "ricevute@pec.acme.test",
        ),
        entry(
            "Beta PEC S.p.A.",
            &other().pki.cert_pem,
            &["pec.b.test"],
            "ricevute@pec.b.test",
        ),
    ])
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
    // not signed at all
    let plain = directory().into_bytes();
    for (what, bytes, why) in [
        ("tampered", tampered, "digest"),
        ("untrusted signer", untrusted, "certificate"),
        ("plain LDIF", plain, "DER"),
    ] {
        std::fs::write(&path, &bytes).expect("write");
        let r = index.refresh_logged().await;
        match &r {
            Err(IndexError::Signature { reason, .. }) => assert!(
                reason.to_lowercase().contains(&why.to_lowercase()),
                "{what}: {reason}"
            ),
            other => panic!("{what}: {other:?}"),
        }
        health.observe_index(&r.as_ref().map(|_| ()));
        let snap = index.snapshot().expect("the old copy stays");
        assert_eq!(snap.loaded_at(), loaded_at, "{what}");
        assert_eq!(providers(&index), ["ACME PEC S.p.A.", "Beta PEC S.p.A."]);
    }
    let text = health.metrics().encode();
    assert!(
        text.contains("pec_milter_index_signature_failures_total 3"),
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
    if !require("openssl", which("openssl")) {
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

fn which(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(name).is_file()))
}
