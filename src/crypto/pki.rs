//! A demo/test PKI: a self-signed CA and RSA provider certificates shaped
//! like real PEC provider certificates. Used by the tests and by
//! `pec-milter init-demo`.

use std::fmt;

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509, X509Builder, X509Name, X509NameBuilder};

use super::CryptoError;
use super::pem::PemKey;

/// RSA modulus size of generated keys.
const RSA_BITS: u32 = 2048;
/// Seconds in a day.
const DAY: u32 = 86_400;

/// A test CA and one provider certificate, all PEM.
#[derive(Clone)]
pub struct Pki {
    /// The self-signed CA certificate.
    pub ca_cert_pem: Vec<u8>,
    /// The CA's private key (PKCS#8).
    pub ca_key_pem: Vec<u8>,
    /// The provider (leaf) certificate.
    pub cert_pem: Vec<u8>,
    /// The provider's private key (PKCS#8).
    pub key_pem: Vec<u8>,
}

impl fmt::Debug for Pki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

fn random_serial() -> Result<Asn1Integer, CryptoError> {
    let mut bn = BigNum::new()?;
    // 127 random bits with the top one set: 16 bytes, always positive.
    bn.rand(127, MsbOption::ONE, false)?;
    Ok(bn.to_asn1_integer()?)
}

fn name(entries: &[(&str, &str)]) -> Result<X509Name, CryptoError> {
    let mut b = X509NameBuilder::new()?;
    for (field, value) in entries {
        b.append_entry_by_text(field, value)?;
    }
    Ok(b.build())
}

fn new_rsa_key() -> Result<PKey<Private>, CryptoError> {
    Ok(PKey::from_rsa(Rsa::generate(RSA_BITS)?)?)
}

/// Demo and test certificates are valid from 2020-01-01 on (or from a day
/// ago, if earlier): the fixed signing times of tests and fixtures stay
/// inside the validity whatever day the tests run.
const NOT_BEFORE_FLOOR: i64 = 1_577_836_800;

/// A builder with version 3, a random serial, the subject, the key and a
/// validity from 2020-01-01 (see [`NOT_BEFORE_FLOOR`]) to `days` from now.
fn base_builder(
    subject: &X509Name,
    key: &PKey<Private>,
    days: u32,
) -> Result<X509Builder, CryptoError> {
    let mut b = X509Builder::new()?;
    b.set_version(2)?;
    let serial = random_serial()?;
    b.set_serial_number(&serial)?;
    b.set_subject_name(subject)?;
    b.set_pubkey(key)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| CryptoError::InvalidInput("system clock before 1970".into()))?
        .as_secs();
    let now = i64::try_from(now)
        .map_err(|_| CryptoError::InvalidInput("system clock out of range".into()))?;
    let not_before = Asn1Time::from_unix((now - i64::from(DAY)).min(NOT_BEFORE_FLOOR))?;
    let not_after = Asn1Time::from_unix(now + i64::from(days) * i64::from(DAY))?;
    b.set_not_before(&not_before)?;
    b.set_not_after(&not_after)?;
    Ok(b)
}

fn ca_subject(org: &str) -> Result<X509Name, CryptoError> {
    name(&[("C", "IT"), ("O", org), ("CN", &format!("{org} Test CA"))])
}

/// Issue a provider certificate for `domain` signed by the CA.
fn issue(
    ca_cert: &X509,
    ca_key: &PKey<Private>,
    org: &str,
    domain: &str,
    days: u32,
) -> Result<(X509, PKey<Private>), CryptoError> {
    if org.is_empty() || domain.is_empty() {
        return Err(CryptoError::InvalidInput(
            "organisation and domain must not be empty".into(),
        ));
    }
    let key = new_rsa_key()?;
    let subject = name(&[
        ("C", "IT"),
        ("O", org),
        ("CN", &format!("Posta Certificata {org}")),
    ])?;
    let mut b = base_builder(&subject, &key, days)?;
    b.set_issuer_name(ca_cert.subject_name())?;
    b.append_extension(
        KeyUsage::new()
            .critical()
            .digital_signature()
            .non_repudiation()
            .build()?,
    )?;
    b.append_extension(ExtendedKeyUsage::new().email_protection().build()?)?;
    let ctx = b.x509v3_context(Some(ca_cert), None);
    let san = SubjectAlternativeName::new()
        .email(&format!("posta-certificata@{domain}"))
        .build(&ctx)?;
    let ski = SubjectKeyIdentifier::new().build(&ctx)?;
    let aki = AuthorityKeyIdentifier::new().keyid(true).build(&ctx)?;
    b.append_extension(san)?;
    b.append_extension(ski)?;
    b.append_extension(aki)?;
    b.sign(ca_key, MessageDigest::sha256())?;
    Ok((b.build(), key))
}

impl Pki {
    /// A self-signed test CA (`C=IT, O=<org>, CN=<org> Test CA`) and an
    /// RSA-2048 provider certificate for `domain`: subject `C=IT, O=<org>,
    /// CN=Posta Certificata <org>`, SAN `posta-certificata@<domain>`,
    /// KeyUsage (critical) digitalSignature + nonRepudiation, EKU
    /// emailProtection, SKI and AKI, no basicConstraints, valid from a day
    /// ago to `days` days from now, sha256WithRSAEncryption. The CA is valid
    /// a year longer than the leaf.
    pub fn generate(org: &str, domain: &str, days: u32) -> Result<Pki, CryptoError> {
        let ca_key = new_rsa_key()?;
        let subject = ca_subject(org)?;
        let mut b = base_builder(&subject, &ca_key, days.saturating_add(365))?;
        b.set_issuer_name(&subject)?;
        b.append_extension(BasicConstraints::new().critical().ca().build()?)?;
        b.append_extension(
            KeyUsage::new()
                .critical()
                .key_cert_sign()
                .crl_sign()
                .build()?,
        )?;
        let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(None, None))?;
        b.append_extension(ski)?;
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&b.x509v3_context(None, None))?;
        b.append_extension(aki)?;
        b.sign(&ca_key, MessageDigest::sha256())?;
        let ca_cert = b.build();

        let (cert, key) = issue(&ca_cert, &ca_key, org, domain, days)?;
        Ok(Pki {
            ca_cert_pem: ca_cert.to_pem()?,
            ca_key_pem: ca_key.private_key_to_pem_pkcs8()?,
            cert_pem: cert.to_pem()?,
            key_pem: key.private_key_to_pem_pkcs8()?,
        })
    }

    /// Another provider certificate signed by the same CA (for a second
    /// provider, or a rogue key). Returns (certificate PEM, key PEM).
    pub fn issue_leaf(
        &self,
        org: &str,
        domain: &str,
        days: u32,
    ) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        let ca_cert = X509::from_pem(&self.ca_cert_pem)?;
        let ca_key = PKey::private_key_from_pem(&self.ca_key_pem)?;
        let (cert, key) = issue(&ca_cert, &ca_key, org, domain, days)?;
        Ok((cert.to_pem()?, key.private_key_to_pem_pkcs8()?))
    }

    /// The provider's signing key.
    pub fn signing_key(&self) -> Result<PemKey, CryptoError> {
        PemKey::from_pem(&self.key_pem, &self.cert_pem)
    }

    /// The CA certificate, parsed.
    pub fn ca_cert(&self) -> Result<X509, CryptoError> {
        Ok(X509::from_pem(&self.ca_cert_pem)?)
    }

    /// The provider certificate, parsed.
    pub fn cert(&self) -> Result<X509, CryptoError> {
        Ok(X509::from_pem(&self.cert_pem)?)
    }

    /// Uppercase hex SHA-1 fingerprint of the provider certificate (no
    /// colons), the key of the providers' index.
    pub fn cert_sha1_hex(&self) -> Result<String, CryptoError> {
        let d = self.cert()?.digest(MessageDigest::sha1())?;
        Ok(hex::encode_upper(d))
    }
}
