//! Tests of the crypto module: CMS signing round trips, tampering, trust,
//! garbage input, an independent verifier (the openssl CLI) and a real 2014
//! Aruba PEC receipt.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::require;
use openssl::hash::MessageDigest;
use openssl::x509::X509;
use pec_milter::crypto::cms_sign::{sign_content, sign_detached};
use pec_milter::crypto::pem::PemKey;
use pec_milter::crypto::pki::Pki;
use pec_milter::crypto::verify::{
    SignatureReport, SignatureStatus, TrustStore, VerifyAt, verify_detached,
};
use pec_milter::crypto::{ContentHasher, CryptoError, DigestAlg, SigningKey, digest};

const CONTENT: &[u8] = b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\
Content-Transfer-Encoding: 7bit\r\n\r\nMessaggio di posta certificata.\r\n";

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| Pki::generate("Example PEC S.p.A.", "pec.example.it", 365).unwrap())
}

fn other_pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| Pki::generate("Rogue S.r.l.", "pec.rogue.example", 365).unwrap())
}

fn ca_trust(p: &Pki) -> TrustStore {
    TrustStore::from_pem_bytes(&[&p.ca_cert_pem]).unwrap()
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/crypto")
        .join(name)
}

fn upper_hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

fn now_secs() -> SystemTime {
    let s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    UNIX_EPOCH + Duration::from_secs(s)
}

#[test]
fn round_trip_sha1_and_sha256_is_valid() {
    let p = pki();
    let key = p.signing_key().unwrap();
    let trust = ca_trust(p);
    let cert = X509::from_pem(&p.cert_pem).unwrap();
    let expected_sha1 = upper_hex(&cert.digest(MessageDigest::sha1()).unwrap());
    assert_eq!(expected_sha1.len(), 40);
    assert_eq!(p.cert_sha1_hex().unwrap(), expected_sha1);

    for alg in [DigestAlg::Sha1, DigestAlg::Sha256] {
        let t = now_secs();
        let sig = sign_content(&key, alg, CONTENT, t).unwrap();
        for at in [VerifyAt::Now, VerifyAt::SigningTime, VerifyAt::At(t)] {
            let r = verify_detached(&sig, CONTENT, &trust, at);
            assert_eq!(r.status, SignatureStatus::Valid, "{alg:?} {at:?}: {r:?}");
            assert!(r.integrity_ok && r.chain_ok);
            assert_eq!(r.reason, None);
            assert_eq!(r.digest.as_deref(), Some(alg.name()));
            assert_eq!(r.signer_sha1.as_deref(), Some(expected_sha1.as_str()));
            assert_eq!(
                r.signer_email.as_deref(),
                Some("posta-certificata@pec.example.it")
            );
            let subject = r.signer_subject.as_deref().unwrap();
            assert!(
                subject.contains("CN=Posta Certificata Example PEC S.p.A.")
                    && subject.contains("O=Example PEC S.p.A.")
                    && subject.contains("C=IT"),
                "{subject}"
            );
            assert!(
                r.signer_issuer
                    .as_deref()
                    .unwrap()
                    .contains("CN=Example PEC S.p.A. Test CA")
            );
            assert_eq!(r.signer_der.as_deref(), Some(key.certificate_der()));
            let st = r.signing_time.unwrap();
            assert_eq!(
                st.timestamp(),
                t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64
            );
        }
    }
}

#[test]
fn sign_detached_equals_streamed_digest() {
    let p = pki();
    let key = p.signing_key().unwrap();
    let mut h = ContentHasher::new(DigestAlg::Sha256).unwrap();
    std::io::Write::write_all(&mut h, &CONTENT[..7]).unwrap();
    std::io::Write::write_all(&mut h, &CONTENT[7..]).unwrap();
    let d = h.finish().unwrap();
    assert_eq!(d, digest(DigestAlg::Sha256, CONTENT));
    let sig = sign_detached(&key, DigestAlg::Sha256, &d, SystemTime::now()).unwrap();
    let r = verify_detached(&sig, CONTENT, &ca_trust(p), VerifyAt::Now);
    assert!(r.is_valid(), "{r:?}");
    // A digest of the wrong length is refused, not signed.
    assert!(matches!(
        sign_detached(&key, DigestAlg::Sha1, &d, SystemTime::now()),
        Err(CryptoError::InvalidInput(_))
    ));
}

#[test]
fn flipped_content_byte_is_invalid() {
    let p = pki();
    let key = p.signing_key().unwrap();
    let trust = ca_trust(p);
    for alg in [DigestAlg::Sha1, DigestAlg::Sha256] {
        let sig = sign_content(&key, alg, CONTENT, SystemTime::now()).unwrap();
        for i in [0, CONTENT.len() / 2, CONTENT.len() - 1] {
            let mut altered = CONTENT.to_vec();
            altered[i] ^= 0x01;
            let r = verify_detached(&sig, &altered, &trust, VerifyAt::Now);
            assert_eq!(r.status, SignatureStatus::Invalid);
            assert!(!r.integrity_ok, "{r:?}");
            assert!(r.chain_ok, "chain is independent of content: {r:?}");
            assert_eq!(
                r.reason.as_deref(),
                Some("content digest mismatch (message altered)")
            );
            // The signer is still reported.
            assert!(r.signer_sha1.is_some());
        }
        // LF instead of CRLF is a different content too.
        let lf = String::from_utf8(CONTENT.to_vec())
            .unwrap()
            .replace("\r\n", "\n");
        let r = verify_detached(&sig, lf.as_bytes(), &trust, VerifyAt::Now);
        assert!(!r.integrity_ok);
    }
}

#[test]
fn wrong_trust_anchor_breaks_only_the_chain() {
    let p = pki();
    let key = p.signing_key().unwrap();
    let sig = sign_content(&key, DigestAlg::Sha256, CONTENT, SystemTime::now()).unwrap();
    for trust in [ca_trust(other_pki()), TrustStore::empty()] {
        let r = verify_detached(&sig, CONTENT, &trust, VerifyAt::Now);
        assert_eq!(r.status, SignatureStatus::Invalid);
        assert!(r.integrity_ok, "{r:?}");
        assert!(!r.chain_ok);
        assert_eq!(
            r.reason.as_deref(),
            Some("certificate chain: unable to get local issuer certificate")
        );
    }
}

#[test]
fn rogue_leaf_of_same_ca_chains_but_is_another_signer() {
    let p = pki();
    let (cert, key) = p.issue_leaf("Altro PEC", "pec.altro.it", 30).unwrap();
    let k = PemKey::from_pem(&key, &cert).unwrap();
    let sig = sign_content(&k, DigestAlg::Sha1, CONTENT, SystemTime::now()).unwrap();
    let r = verify_detached(&sig, CONTENT, &ca_trust(p), VerifyAt::Now);
    assert!(r.is_valid(), "{r:?}");
    assert_eq!(
        r.signer_email.as_deref(),
        Some("posta-certificata@pec.altro.it")
    );
    assert_ne!(r.signer_sha1, Some(p.cert_sha1_hex().unwrap()));
}

#[test]
fn garbage_signatures_are_invalid_without_panic() {
    let p = pki();
    let trust = ca_trust(p);
    let key = p.signing_key().unwrap();
    let sig = sign_content(&key, DigestAlg::Sha256, CONTENT, SystemTime::now()).unwrap();

    let check = |bytes: &[u8]| -> SignatureReport {
        let r = verify_detached(bytes, CONTENT, &trust, VerifyAt::SigningTime);
        assert_ne!(r.status, SignatureStatus::Missing);
        r
    };

    let r = check(&[]);
    assert_eq!(r.status, SignatureStatus::Invalid);
    assert_eq!(r.reason.as_deref(), Some("malformed PKCS#7/CMS structure"));
    assert!(!r.integrity_ok && !r.chain_ok);

    // Pseudo-random bytes (xorshift, fixed seed).
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for len in [1usize, 2, 16, 100, 1000, 5000] {
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect();
        let r = check(&bytes);
        assert_eq!(r.status, SignatureStatus::Invalid);
        // Random bytes behind a plausible SEQUENCE header.
        let mut framed = vec![0x30, 0x82, (len >> 8) as u8, len as u8];
        framed.extend_from_slice(&bytes);
        assert_eq!(check(&framed).status, SignatureStatus::Invalid);
    }

    // Every truncation.
    for n in 0..sig.len() {
        let r = check(&sig[..n]);
        assert_eq!(r.status, SignatureStatus::Invalid, "truncated at {n}");
    }
    // Trailing garbage.
    let mut long = sig.clone();
    long.extend_from_slice(b"\0\0garbage");
    let _ = check(&long);

    // Every byte flipped, one at a time: never a panic. Most flips must
    // break it; flips in unsigned fields (e.g. the outer digestAlgorithms)
    // may legitimately still verify.
    let mut invalid = 0;
    for i in 0..sig.len() {
        let mut s = sig.clone();
        s[i] ^= 0x5A;
        if check(&s).status == SignatureStatus::Invalid {
            invalid += 1;
        }
    }
    assert!(invalid > sig.len() * 9 / 10, "{invalid} of {}", sig.len());

    // Valid CMS, but not a signature over this (a PEM, not DER).
    let r = check(b"-----BEGIN PKCS7-----\nMIIB\n-----END PKCS7-----\n");
    assert_eq!(r.status, SignatureStatus::Invalid);
}

#[test]
fn expired_at_verification_time() {
    let p = pki();
    let key = p.signing_key().unwrap();
    let sig = sign_content(&key, DigestAlg::Sha256, CONTENT, SystemTime::now()).unwrap();
    let future = SystemTime::now() + Duration::from_secs(20 * 365 * 86_400);
    let r = verify_detached(&sig, CONTENT, &ca_trust(p), VerifyAt::At(future));
    assert_eq!(r.status, SignatureStatus::Invalid);
    assert!(r.integrity_ok);
    assert!(!r.chain_ok);
    // OpenSSL reports the first expired certificate from the root down:
    // here the CA, valid a year longer than the leaf, has expired too.
    assert!(
        r.reason
            .as_deref()
            .unwrap()
            .starts_with("certificate expired at verification time"),
        "{r:?}"
    );
    // Before the certificate existed.
    // (demo and test certificates are valid from 2020-01-01 on)
    let past = SystemTime::UNIX_EPOCH + Duration::from_secs(1_560_000_000);
    let r = verify_detached(&sig, CONTENT, &ca_trust(p), VerifyAt::At(past));
    assert!(!r.chain_ok);
    assert!(r.reason.unwrap().contains("not yet valid"));
    // A signingTime after the certificate's end is judged at that time.
    let late = SystemTime::now() + Duration::from_secs(2 * 365 * 86_400);
    let sig = sign_content(&key, DigestAlg::Sha256, CONTENT, late).unwrap();
    let r = verify_detached(&sig, CONTENT, &ca_trust(p), VerifyAt::SigningTime);
    assert!(r.integrity_ok && !r.chain_ok, "{r:?}");
    assert!(verify_detached(&sig, CONTENT, &ca_trust(p), VerifyAt::Now).is_valid());
}

#[test]
fn signing_time_after_2049_is_generalized_time() {
    let p = pki();
    let key = p.signing_key().unwrap();
    // 2051-06-01T00:00:00Z
    let t = UNIX_EPOCH + Duration::from_secs(2_569_190_400);
    let sig = sign_content(&key, DigestAlg::Sha256, CONTENT, t).unwrap();
    // GeneralizedTime: tag 0x18 followed by "20510601000000Z".
    assert!(sig.windows(17).any(|w| w == b"\x18\x0f20510601000000Z"));
    let r = verify_detached(&sig, CONTENT, &ca_trust(p), VerifyAt::Now);
    assert!(r.is_valid(), "{r:?}");
    assert_eq!(r.signing_time.unwrap().timestamp(), 2_569_190_400);
    // UTCTime for 2049.
    let t = UNIX_EPOCH + Duration::from_secs(2_524_607_999); // 2049-12-31T23:59:59Z
    let sig = sign_content(&key, DigestAlg::Sha256, CONTENT, t).unwrap();
    assert!(sig.windows(15).any(|w| w == b"\x17\x0d491231235959Z"));
}

#[test]
fn chain_certificates_are_included() {
    let p = pki();
    // Leaf followed by the CA in one PEM: the CA becomes the chain.
    let mut cert_pem = p.cert_pem.clone();
    cert_pem.extend_from_slice(&p.ca_cert_pem);
    let key = PemKey::from_pem(&p.key_pem, &cert_pem).unwrap();
    assert_eq!(key.chain_der().len(), 1);
    let sig = sign_content(&key, DigestAlg::Sha1, CONTENT, SystemTime::now()).unwrap();
    let ca_der = X509::from_pem(&p.ca_cert_pem).unwrap().to_der().unwrap();
    assert!(sig.windows(ca_der.len()).any(|w| w == ca_der.as_slice()));
    let r = verify_detached(&sig, CONTENT, &ca_trust(p), VerifyAt::Now);
    assert!(r.is_valid(), "{r:?}");
}

#[test]
fn pem_key_loading_errors() {
    let p = pki();
    let o = other_pki();
    assert!(matches!(
        PemKey::from_pem(&o.key_pem, &p.cert_pem),
        Err(CryptoError::KeyMismatch)
    ));
    assert!(PemKey::from_pem(b"junk", &p.cert_pem).is_err());
    assert!(PemKey::from_pem(&p.key_pem, b"junk").is_err());

    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pem");
    let cert = dir.path().join("cert.pem");
    let chain = dir.path().join("chain.pem");
    std::fs::write(&key, &p.key_pem).unwrap();
    std::fs::write(&cert, &p.cert_pem).unwrap();
    std::fs::write(&chain, &p.ca_cert_pem).unwrap();
    let k = PemKey::from_files(&key, &cert, Some(&chain)).unwrap();
    assert_eq!(k.chain_der().len(), 1);
    let k = PemKey::from_files(&key, &cert, None).unwrap();
    assert!(k.chain_der().is_empty());

    let missing = dir.path().join("missing.pem");
    let e = PemKey::from_files(&missing, &cert, None).unwrap_err();
    assert!(e.to_string().contains("missing.pem"), "{e}");
    let e = PemKey::from_files(&key, &chain, None).unwrap_err();
    assert!(e.to_string().contains("key.pem"), "{e}");
    let junk = dir.path().join("junk.pem");
    std::fs::write(&junk, b"not a pem").unwrap();
    let e = PemKey::from_files(&key, &junk, None).unwrap_err();
    assert!(e.to_string().contains("junk.pem"), "{e}");
}

#[test]
fn generated_certificates_have_the_pec_profile() {
    let p = pki();
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-text"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&p.cert_pem)?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "Signature Algorithm: sha256WithRSAEncryption",
        "Public-Key: (2048 bit)",
        "X509v3 Key Usage: critical",
        "Digital Signature, Non Repudiation",
        "E-mail Protection",
        "email:posta-certificata@pec.example.it",
        "X509v3 Subject Key Identifier",
        "X509v3 Authority Key Identifier",
        "CN = Posta Certificata Example PEC S.p.A.",
        "Issuer: C = IT, O = Example PEC S.p.A., CN = Example PEC S.p.A. Test CA",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    assert!(!text.contains("Basic Constraints"), "{text}");
    let cert = X509::from_pem(&p.cert_pem).unwrap();
    let ca = X509::from_pem(&p.ca_cert_pem).unwrap();
    assert!(cert.verify(&ca.public_key().unwrap()).unwrap());
    let day = 86_400;
    let now = openssl::asn1::Asn1Time::days_from_now(0).unwrap();
    let d = now.diff(cert.not_after()).unwrap();
    assert!(
        d.days == 365 || (d.days == 364 && d.secs > day - 10),
        "{d:?}"
    );
    // Valid from 2020-01-01 on, so that fixed signing times in tests and
    // fixtures stay inside the validity.
    let floor = openssl::asn1::Asn1Time::from_unix(1_577_836_800).unwrap();
    let d = cert.not_before().diff(&floor).unwrap();
    assert_eq!((d.days, d.secs), (0, 0), "{d:?}");
}

/// Run `openssl cms -verify` on a signature and content, as an independent
/// verifier.
fn openssl_cli_verify(dir: &Path, sig: &[u8], content: &[u8], ca_pem: &[u8]) -> bool {
    let sig_path = dir.join("sig.der");
    let content_path = dir.join("content.bin");
    let ca_path = dir.join("ca.pem");
    std::fs::write(&sig_path, sig).unwrap();
    std::fs::write(&content_path, content).unwrap();
    std::fs::write(&ca_path, ca_pem).unwrap();
    let out = Command::new("openssl")
        .arg("cms")
        .arg("-verify")
        .arg("-binary")
        .args(["-inform", "DER"])
        .arg("-in")
        .arg(&sig_path)
        .arg("-content")
        .arg(&content_path)
        .arg("-CAfile")
        .arg(&ca_path)
        .args(["-purpose", "any", "-out", "/dev/null"])
        .output()
        .expect("the openssl command line tool is needed for this test");
    out.status.success()
}

#[test]
fn independent_openssl_cli_verifies_our_signatures() {
    let p = pki();
    let key = p.signing_key().unwrap();
    let dir = tempfile::tempdir().unwrap();
    for alg in [DigestAlg::Sha1, DigestAlg::Sha256] {
        let sig = sign_content(&key, alg, CONTENT, SystemTime::now()).unwrap();
        assert!(
            openssl_cli_verify(dir.path(), &sig, CONTENT, &p.ca_cert_pem),
            "openssl cms -verify rejected our {alg:?} signature"
        );
        let mut altered = CONTENT.to_vec();
        altered[10] ^= 0x20;
        assert!(!openssl_cli_verify(
            dir.path(),
            &sig,
            &altered,
            &p.ca_cert_pem
        ));
        assert!(!openssl_cli_verify(
            dir.path(),
            &sig,
            CONTENT,
            &other_pki().ca_cert_pem
        ));
    }
}

#[test]
fn real_aruba_2014_receipt_verifies_at_signing_time() {
    let content = std::fs::read(fixture("aruba_accettazione_content.eml")).unwrap();
    let p7s = std::fs::read(fixture("aruba_accettazione.p7s")).unwrap();
    assert!(content.windows(2).any(|w| w == b"\r\n"), "CRLF lost");
    let trust =
        TrustStore::from_pem_files(&[fixture("../roots/Baltimore_CyberTrust_Root.pem")]).unwrap();

    let r = verify_detached(&p7s, &content, &trust, VerifyAt::SigningTime);
    assert_eq!(r.status, SignatureStatus::Valid, "{r:?}");
    assert!(r.integrity_ok && r.chain_ok);
    assert_eq!(r.digest.as_deref(), Some("sha1"));
    assert_eq!(
        r.signer_sha1.as_deref(),
        Some("AAA71BFD2DBC9FE67AA23C9F33AAF3316DF1AA66")
    );
    let der = r.signer_der.as_deref().unwrap();
    let cert = X509::from_der(der).unwrap();
    assert_eq!(
        upper_hex(&cert.digest(MessageDigest::sha1()).unwrap()),
        "AAA71BFD2DBC9FE67AA23C9F33AAF3316DF1AA66"
    );
    assert_eq!(
        r.signer_subject.as_deref(),
        Some("CN=Posta Certificata ARUBA PEC, O=ARUBA PEC S.p.A., C=IT")
    );
    assert_eq!(
        r.signer_issuer.as_deref(),
        Some("C=IT, O=DigitPA, OU=Ufficio interoperabilita' e cooperazione, CN=DigitPA CA1")
    );
    assert_eq!(
        r.signer_email.as_deref(),
        Some("posta-certificata@pec.aruba.it")
    );
    assert_eq!(
        r.signing_time.unwrap().to_rfc3339(),
        "2014-11-14T17:26:32+00:00"
    );

    // JSON shape.
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["status"], "valid");
    assert_eq!(json["signing_time"], "2014-11-14T17:26:32Z");
    assert!(json.get("signer_der").is_none());

    // Today the leaf (2017), DigitPA CA1 (2018) and Baltimore (2025) have expired.
    let r = verify_detached(&p7s, &content, &trust, VerifyAt::Now);
    assert!(r.integrity_ok && !r.chain_ok);
    assert_eq!(r.status, SignatureStatus::Invalid);
    assert!(r.reason.unwrap().contains("expired"));

    // Altered content.
    let mut altered = content.clone();
    let n = altered.len() - 5;
    altered[n] ^= 1;
    let r = verify_detached(&p7s, &altered, &trust, VerifyAt::SigningTime);
    assert!(!r.integrity_ok && r.chain_ok, "{r:?}");
    assert_eq!(
        r.reason.as_deref(),
        Some("content digest mismatch (message altered)")
    );

    // Without the root.
    let r = verify_detached(&p7s, &content, &TrustStore::empty(), VerifyAt::SigningTime);
    assert!(r.integrity_ok && !r.chain_ok);
}

#[test]
fn system_trust_store_loads() {
    // Needs the machine's CA bundle (Debian: ca-certificates): under CI its
    // absence fails the test, elsewhere the test is skipped.
    if !require(
        "the system CA bundle (/etc/ssl/certs; Debian package ca-certificates)",
        Path::new("/etc/ssl/certs").is_dir(),
    ) {
        return;
    }
    let t = TrustStore::system().unwrap();
    assert!(t.len() > 10, "{t:?}");
}

#[test]
fn ec_keys_sign_too() {
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::x509::{X509Builder, X509NameBuilder};
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let pkey = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "EC test").unwrap();
    let name = name.build();
    let mut b = X509Builder::new().unwrap();
    b.set_version(2).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&pkey).unwrap();
    b.set_not_before(&openssl::asn1::Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&openssl::asn1::Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    b.sign(&pkey, MessageDigest::sha256()).unwrap();
    let cert = b.build();
    let key = PemKey::from_pem(
        &pkey.private_key_to_pem_pkcs8().unwrap(),
        &cert.to_pem().unwrap(),
    )
    .unwrap();
    let trust = TrustStore::from_pem_bytes(&[&cert.to_pem().unwrap()]).unwrap();
    for alg in [DigestAlg::Sha1, DigestAlg::Sha256] {
        let sig = sign_content(&key, alg, CONTENT, SystemTime::now()).unwrap();
        let r = verify_detached(&sig, CONTENT, &trust, VerifyAt::Now);
        assert!(r.is_valid(), "{alg:?}: {r:?}");
    }
}

/// A key that presents the provider's certificate but signs with another
/// key: what an impostor would do.
struct Impostor {
    cert_der: Vec<u8>,
    real: PemKey,
}

impl SigningKey for Impostor {
    fn certificate_der(&self) -> &[u8] {
        &self.cert_der
    }
    fn chain_der(&self) -> &[Vec<u8>] {
        &[]
    }
    fn sign(&self, digest: DigestAlg, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.real.sign(digest, data)
    }
}

#[test]
fn wrong_key_or_altered_signature_breaks_integrity() {
    let p = pki();
    let trust = ca_trust(p);
    let impostor = Impostor {
        cert_der: p.signing_key().unwrap().certificate_der().to_vec(),
        real: other_pki().signing_key().unwrap(),
    };
    let sig = sign_content(&impostor, DigestAlg::Sha256, CONTENT, SystemTime::now()).unwrap();
    let r = verify_detached(&sig, CONTENT, &trust, VerifyAt::Now);
    assert_eq!(r.status, SignatureStatus::Invalid);
    assert!(!r.integrity_ok && r.chain_ok, "{r:?}");
    assert_eq!(
        r.reason.as_deref(),
        Some("signature does not verify (signed attributes altered or wrong key)")
    );

    // The RSA signature value is the last thing in the DER.
    let mut sig = sign_content(
        &p.signing_key().unwrap(),
        DigestAlg::Sha1,
        CONTENT,
        SystemTime::now(),
    )
    .unwrap();
    let n = sig.len() - 1;
    sig[n] ^= 1;
    let r = verify_detached(&sig, CONTENT, &trust, VerifyAt::Now);
    assert!(!r.integrity_ok && r.chain_ok, "{r:?}");
}

#[test]
fn openssl_cli_signatures_verify_including_ber() {
    let p = pki();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("key.pem"), &p.key_pem).unwrap();
    std::fs::write(d.join("cert.pem"), &p.cert_pem).unwrap();
    std::fs::write(d.join("content.bin"), CONTENT).unwrap();
    let trust = ca_trust(p);
    // -stream makes indefinite-length BER; without it OpenSSL writes DER.
    for (md, stream) in [("sha1", false), ("sha256", false), ("sha1", true)] {
        let mut cmd = Command::new("openssl");
        cmd.current_dir(d)
            .args(["cms", "-sign", "-binary", "-md", md])
            .args([
                "-in",
                "content.bin",
                "-signer",
                "cert.pem",
                "-inkey",
                "key.pem",
            ])
            .args(["-outform", "DER", "-out", "sig.der"]);
        if stream {
            cmd.arg("-stream");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let sig = std::fs::read(d.join("sig.der")).unwrap();
        if stream {
            assert_eq!(&sig[..2], &[0x30, 0x80], "expected indefinite-length BER");
        }
        let r = verify_detached(&sig, CONTENT, &trust, VerifyAt::SigningTime);
        assert!(r.is_valid(), "{md} stream={stream}: {r:?}");
        assert_eq!(r.digest.as_deref(), Some(md));
        assert_eq!(r.signer_sha1, Some(p.cert_sha1_hex().unwrap()));
        assert!(r.signing_time.is_some());
        let mut altered = CONTENT.to_vec();
        altered[3] ^= 4;
        assert!(!verify_detached(&sig, &altered, &trust, VerifyAt::Now).integrity_ok);
    }
}

/// The certificates a key signs with are parsed once per key and kept
/// (`cms_sign::parsed_certificates`): signatures alternating between two
/// keys each carry their own signer, never the other key's.
#[test]
fn alternating_keys_each_carry_their_own_certificate() {
    let (a, b) = (pki(), other_pki());
    let (ka, kb) = (a.signing_key().unwrap(), b.signing_key().unwrap());
    let trust_a = TrustStore::from_pem_bytes(&[&a.ca_cert_pem]).unwrap();
    let trust_b = TrustStore::from_pem_bytes(&[&b.ca_cert_pem]).unwrap();
    let sha1 = |p: &Pki| {
        let c = X509::from_pem(&p.cert_pem).unwrap();
        upper_hex(&c.digest(MessageDigest::sha1()).unwrap())
    };
    for round in 0..3 {
        for (key, trust, other_trust, p) in
            [(&ka, &trust_a, &trust_b, a), (&kb, &trust_b, &trust_a, b)]
        {
            let sig = sign_content(key, DigestAlg::Sha256, CONTENT, now_secs()).unwrap();
            let r = verify_detached(&sig, CONTENT, trust, VerifyAt::Now);
            assert_eq!(r.status, SignatureStatus::Valid, "round {round}: {r:?}");
            assert_eq!(
                r.signer_sha1.as_deref(),
                Some(sha1(p).as_str()),
                "round {round}"
            );
            let wrong = verify_detached(&sig, CONTENT, other_trust, VerifyAt::Now);
            assert_ne!(wrong.status, SignatureStatus::Valid, "round {round}");
        }
    }
}
