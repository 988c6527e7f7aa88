//! PEM backend of [`SigningKey`]: a private key and certificate(s) in PEM
//! files, parsed once and kept in memory.

use std::fmt;
use std::path::Path;

use openssl::pkey::{Id, PKey, Private};
use openssl::sign::Signer;
use openssl::x509::X509;

use super::{CryptoError, DigestAlg, KeyKind, SigningKey};

/// A private key (RSA, or EC) with its certificate and chain.
pub struct PemKey {
    pkey: PKey<Private>,
    kind: KeyKind,
    cert: X509,
    cert_der: Vec<u8>,
    chain_der: Vec<Vec<u8>>,
}

impl fmt::Debug for PemKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PemKey")
            .field("kind", &self.kind)
            .field("subject", &self.cert.subject_name())
            .field("chain_len", &self.chain_der.len())
            .finish_non_exhaustive()
    }
}

fn parse_key(key_pem: &[u8]) -> Result<(PKey<Private>, KeyKind), CryptoError> {
    let pkey = PKey::private_key_from_pem(key_pem)
        .map_err(|e| CryptoError::InvalidKey(format!("private key: {e}")))?;
    let kind = match pkey.id() {
        Id::RSA => KeyKind::Rsa,
        Id::EC => KeyKind::Ec,
        other => {
            return Err(CryptoError::InvalidKey(format!(
                "unsupported private key type {other:?} (RSA or EC expected)"
            )));
        }
    };
    Ok((pkey, kind))
}

fn parse_certs(pem: &[u8]) -> Result<Vec<X509>, CryptoError> {
    let certs = X509::stack_from_pem(pem)
        .map_err(|e| CryptoError::InvalidKey(format!("certificate: {e}")))?;
    if certs.is_empty() {
        return Err(CryptoError::InvalidKey("no certificate in PEM".into()));
    }
    Ok(certs)
}

fn read(path: &Path) -> Result<Vec<u8>, CryptoError> {
    std::fs::read(path).map_err(|source| CryptoError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn load_err(path: &Path, e: CryptoError) -> CryptoError {
    CryptoError::Load {
        path: path.to_path_buf(),
        reason: match e {
            CryptoError::InvalidKey(s) => s,
            other => other.to_string(),
        },
    }
}

impl PemKey {
    fn assemble(
        pkey: PKey<Private>,
        kind: KeyKind,
        mut certs: Vec<X509>,
    ) -> Result<Self, CryptoError> {
        if certs.is_empty() {
            return Err(CryptoError::InvalidKey("no certificate".into()));
        }
        let cert = certs.remove(0);
        if !cert.public_key()?.public_eq(&pkey) {
            return Err(CryptoError::KeyMismatch);
        }
        let cert_der = cert.to_der()?;
        let mut chain_der = Vec::with_capacity(certs.len());
        for c in certs {
            let der = c.to_der()?;
            if der != cert_der && !chain_der.contains(&der) {
                chain_der.push(der);
            }
        }
        Ok(PemKey {
            pkey,
            kind,
            cert,
            cert_der,
            chain_der,
        })
    }

    /// A key from PEM bytes. `cert_pem` holds the signer certificate,
    /// optionally followed by intermediate CA certificates. The key must match
    /// the first certificate.
    pub fn from_pem(key_pem: &[u8], cert_pem: &[u8]) -> Result<Self, CryptoError> {
        let (pkey, kind) = parse_key(key_pem)?;
        let certs = parse_certs(cert_pem)?;
        Self::assemble(pkey, kind, certs)
    }

    /// A key from PEM files: the private key (unencrypted, PKCS#8 or
    /// traditional), the signer certificate (possibly followed by its chain)
    /// and optionally a separate chain file. Errors name the file.
    pub fn from_files(key: &Path, cert: &Path, chain: Option<&Path>) -> Result<Self, CryptoError> {
        let (pkey, kind) = parse_key(&read(key)?).map_err(|e| load_err(key, e))?;
        let mut certs = parse_certs(&read(cert)?).map_err(|e| load_err(cert, e))?;
        if let Some(chain) = chain {
            certs.extend(parse_certs(&read(chain)?).map_err(|e| load_err(chain, e))?);
        }
        Self::assemble(pkey, kind, certs).map_err(|e| match e {
            CryptoError::KeyMismatch => CryptoError::Load {
                path: key.to_path_buf(),
                reason: format!(
                    "the private key does not match the certificate in {}",
                    cert.display()
                ),
            },
            other => load_err(cert, other),
        })
    }

    /// The signer certificate.
    pub fn certificate(&self) -> &X509 {
        &self.cert
    }

    /// The private key.
    pub fn private_key(&self) -> &PKey<Private> {
        &self.pkey
    }
}

impl SigningKey for PemKey {
    fn certificate_der(&self) -> &[u8] {
        &self.cert_der
    }

    fn chain_der(&self) -> &[Vec<u8>] {
        &self.chain_der
    }

    fn sign(&self, digest: DigestAlg, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let run = || -> Result<Vec<u8>, openssl::error::ErrorStack> {
            let mut signer = Signer::new(digest.message_digest(), &self.pkey)?;
            signer.update(data)?;
            signer.sign_to_vec()
        };
        run().map_err(|e| CryptoError::Sign(e.to_string()))
    }

    fn key_kind(&self) -> KeyKind {
        self.kind
    }
}
