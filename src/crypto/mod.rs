//! The provider's signing key and S/MIME (CMS) signing and verification.
//!
//! - [`SigningKey`]: the only thing signing code relies on: a PEM backend
//!   in [`pem`], a PKCS#11 (HSM) backend in [`pkcs11`].
//! - [`cms_sign`]: assembles a detached CMS `SignedData` from DER types, so
//!   that the private key is only ever asked to sign the signed attributes.
//! - [`verify`]: verification of detached CMS/PKCS#7 signatures with OpenSSL
//!   (and of opaque ones, for `inspect` / `verify` only).
//! - [`crl`]: CRLs, certificates' distribution points, the revocation
//!   check of a verified chain.
//! - [`pki`]: a demo/test CA and provider certificate (and its CRLs).

use std::fmt;
use std::io::{self, Write};
use std::path::PathBuf;
use std::str::FromStr;

use openssl::hash::{Hasher, MessageDigest};

pub mod cms_sign;
pub mod crl;
pub mod pem;
pub mod pkcs11;
pub mod pki;
pub mod verify;

pub use cms_sign::{sign_content, sign_detached};
pub use pem::PemKey;
pub use pkcs11::{Pkcs11Error, Pkcs11Key, Pkcs11Options};
pub use pki::Pki;
pub use verify::{SignatureReport, SignatureStatus, TrustStore, VerifyAt, verify_detached};

/// Errors of the crypto layer.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// An error reported by OpenSSL.
    #[error("openssl: {0}")]
    Openssl(#[from] openssl::error::ErrorStack),
    /// A DER encoding or decoding error.
    #[error("DER: {0}")]
    Der(#[from] der::Error),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// A key or certificate file could not be loaded.
    #[error("cannot load {path}: {reason}")]
    Load {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A key or certificate given in memory is unusable.
    #[error("invalid key or certificate: {0}")]
    InvalidKey(String),
    /// The private key does not belong to the certificate.
    #[error("the private key does not match the certificate's public key")]
    KeyMismatch,
    /// A signing operation failed (any backend: PEM, PKCS#11, ...).
    #[error("signing failed: {0}")]
    Sign(String),
    /// A caller handed in something unusable (wrong digest length, time out of range, ...).
    #[error("invalid input: {0}")]
    InvalidInput(String),
    /// A signature did not verify (see [`verify::require_valid`]).
    #[error("invalid signature: {0}")]
    Verify(String),
    /// The signer's certificate does not chain to the trust anchors given
    /// (OpenSSL's detail: [`verify::verify_enveloped`]).
    #[error("the signer does not chain to the trust anchors ({0})")]
    Untrusted(String),
    /// An unknown digest algorithm name.
    #[error("unknown digest algorithm {0:?} (expected sha1 or sha256)")]
    UnknownDigest(String),
    /// The PKCS#11 backend (module, token, PIN, key, certificate, signature).
    #[error("PKCS#11: {0}")]
    Pkcs11(#[from] pkcs11::Pkcs11Error),
}

/// A digest algorithm usable for PEC signatures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DigestAlg {
    /// SHA-1: what most PEC providers still use (2014–2024 messages).
    Sha1,
    /// SHA-256.
    Sha256,
}

impl DigestAlg {
    /// The `micalg` parameter of `multipart/signed` (RFC 5751): `sha-1` / `sha-256`.
    pub fn micalg(self) -> &'static str {
        match self {
            DigestAlg::Sha1 => "sha-1",
            DigestAlg::Sha256 => "sha-256",
        }
    }

    /// The short name, as OpenSSL writes it: `sha1` / `sha256`.
    pub fn name(self) -> &'static str {
        match self {
            DigestAlg::Sha1 => "sha1",
            DigestAlg::Sha256 => "sha256",
        }
    }

    /// Length of the digest in bytes.
    pub fn output_len(self) -> usize {
        match self {
            DigestAlg::Sha1 => 20,
            DigestAlg::Sha256 => 32,
        }
    }

    /// The OpenSSL message digest.
    pub fn message_digest(self) -> MessageDigest {
        match self {
            DigestAlg::Sha1 => MessageDigest::sha1(),
            DigestAlg::Sha256 => MessageDigest::sha256(),
        }
    }

    /// The algorithm's object identifier.
    pub fn oid(self) -> der::oid::ObjectIdentifier {
        match self {
            DigestAlg::Sha1 => cms_sign::OID_SHA1,
            DigestAlg::Sha256 => cms_sign::OID_SHA256,
        }
    }

    /// The algorithm for an object identifier, if it is one of ours.
    pub fn from_oid(oid: &der::oid::ObjectIdentifier) -> Option<Self> {
        if *oid == cms_sign::OID_SHA1 {
            Some(DigestAlg::Sha1)
        } else if *oid == cms_sign::OID_SHA256 {
            Some(DigestAlg::Sha256)
        } else {
            None
        }
    }
}

impl fmt::Display for DigestAlg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for DigestAlg {
    type Err = CryptoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "sha1" | "sha-1" => Ok(DigestAlg::Sha1),
            "sha256" | "sha-256" => Ok(DigestAlg::Sha256),
            _ => Err(CryptoError::UnknownDigest(s.to_string())),
        }
    }
}

/// A certificate from its DER (`None`: not one).
pub fn x509_of(der: &[u8]) -> Option<openssl::x509::X509> {
    openssl::x509::X509::from_der(der).ok()
}

/// Digest of `data`, or the OpenSSL error.
pub fn try_digest(alg: DigestAlg, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
    Ok(openssl::hash::hash(alg.message_digest(), data)?.to_vec())
}

/// Digest of `data`.
///
/// OpenSSL cannot fail to compute SHA-1/SHA-256 short of memory exhaustion;
/// should it fail anyway, this logs the error and returns an empty vector,
/// which no signer or verifier accepts as a digest. Use [`try_digest`] to see
/// the error.
pub fn digest(alg: DigestAlg, data: &[u8]) -> Vec<u8> {
    match try_digest(alg, data) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, alg = alg.name(), "digest computation failed");
            Vec::new()
        }
    }
}

/// Streaming hasher: write the content in pieces, then [`ContentHasher::finish`].
pub struct ContentHasher {
    alg: DigestAlg,
    hasher: Hasher,
}

impl fmt::Debug for ContentHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContentHasher")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl ContentHasher {
    /// A new hasher for `alg`.
    pub fn new(alg: DigestAlg) -> Result<Self, CryptoError> {
        Ok(ContentHasher {
            alg,
            hasher: Hasher::new(alg.message_digest())?,
        })
    }

    /// The algorithm.
    pub fn alg(&self) -> DigestAlg {
        self.alg
    }

    /// Feed bytes (same as `Write::write_all`, with the crate's error type).
    pub fn update(&mut self, data: &[u8]) -> Result<(), CryptoError> {
        Ok(self.hasher.update(data)?)
    }

    /// The digest of everything written.
    pub fn finish(mut self) -> Result<Vec<u8>, CryptoError> {
        Ok(self.hasher.finish()?.to_vec())
    }
}

impl Write for ContentHasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.hasher.update(buf).map_err(io::Error::other)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The kind of a signing key, which decides the CMS `signatureAlgorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA, PKCS#1 v1.5 signatures (`rsaEncryption`). What PEC uses.
    Rsa,
    /// Elliptic curve, ECDSA signatures (`ecdsa-with-SHA1` / `ecdsa-with-SHA256`).
    Ec,
}

/// The provider's signing key (PEM file or PKCS#11 token): the only thing
/// signing code may rely on. `sign` may block (an HSM round trip).
pub trait SigningKey: Send + Sync {
    /// DER of the signer certificate.
    fn certificate_der(&self) -> &[u8];
    /// DER of intermediate CA certificates to include in the CMS (may be empty).
    fn chain_der(&self) -> &[Vec<u8>];
    /// RSA PKCS#1 v1.5 signature over `digest(data)` (the key does the
    /// hashing, as `CKM_SHA256_RSA_PKCS` does).
    fn sign(&self, digest: DigestAlg, data: &[u8]) -> Result<Vec<u8>, CryptoError>;
    /// The kind of key; RSA unless the backend says otherwise.
    fn key_kind(&self) -> KeyKind {
        KeyKind::Rsa
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_alg_names() {
        for (s, a) in [
            ("sha1", DigestAlg::Sha1),
            ("SHA-1", DigestAlg::Sha1),
            ("Sha256", DigestAlg::Sha256),
            ("sha-256", DigestAlg::Sha256),
        ] {
            assert_eq!(s.parse::<DigestAlg>().unwrap(), a);
        }
        assert!("md5".parse::<DigestAlg>().is_err());
        assert_eq!(DigestAlg::Sha1.micalg(), "sha-1");
        assert_eq!(DigestAlg::Sha256.micalg(), "sha-256");
        assert_eq!(DigestAlg::Sha1.name(), "sha1");
        assert_eq!(DigestAlg::Sha256.to_string(), "sha256");
    }

    #[test]
    fn digests_match_streaming() {
        let data = b"The quick brown fox jumps over the lazy dog";
        for alg in [DigestAlg::Sha1, DigestAlg::Sha256] {
            let mut h = ContentHasher::new(alg).unwrap();
            h.write_all(&data[..10]).unwrap();
            h.write_all(&data[10..]).unwrap();
            let d = h.finish().unwrap();
            assert_eq!(d, digest(alg, data));
            assert_eq!(d.len(), alg.output_len());
        }
        assert_eq!(
            digest(DigestAlg::Sha1, data),
            [
                0x2f, 0xd4, 0xe1, 0xc6, 0x7a, 0x2d, 0x28, 0xfc, 0xed, 0x84, 0x9e, 0xe1, 0xbb, 0x76,
                0xe7, 0x39, 0x1b, 0x93, 0xeb, 0x12
            ]
        );
    }
}
