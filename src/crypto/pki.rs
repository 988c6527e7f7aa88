//! A demo/test PKI: a self-signed CA and RSA provider certificates shaped
//! like real PEC provider certificates. Used by the tests and by
//! `pec-milter init-demo`.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use der::asn1::{BitString, Ia5String, ObjectIdentifier, UtcTime};
use der::{Decode, Encode};
use openssl::asn1::{Asn1Object, Asn1OctetString};
use openssl::sign::Signer;
use openssl::x509::X509Extension;
use x509_cert::Version;
use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};
use x509_cert::ext::pkix::CrlDistributionPoints;
use x509_cert::ext::pkix::crl::dp::DistributionPoint;
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_cert::time::Time;

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
    crl_url: Option<&str>,
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
    if let Some(url) = crl_url {
        b.append_extension(crl_distribution_point(url)?)?;
    }
    b.sign(ca_key, MessageDigest::sha256())?;
    Ok((b.build(), key))
}

/// The crlDistributionPoints extension naming one URL (fullName URI).
fn crl_distribution_point(url: &str) -> Result<X509Extension, CryptoError> {
    let uri = Ia5String::new(url).map_err(CryptoError::Der)?;
    let dps = CrlDistributionPoints(vec![DistributionPoint {
        distribution_point: Some(DistributionPointName::FullName(vec![
            GeneralName::UniformResourceIdentifier(uri),
        ])),
        reasons: None,
        crl_issuer: None,
    }]);
    let der = dps.to_der()?;
    let oid = Asn1Object::from_str("2.5.29.31")?;
    let value = Asn1OctetString::new_from_bytes(&der)?;
    Ok(X509Extension::new_from_der(&oid, false, &value)?)
}

fn x509_time(t: SystemTime) -> Result<Time, CryptoError> {
    let d = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| CryptoError::InvalidInput("time before 1970".into()))?;
    Ok(Time::UtcTime(UtcTime::from_unix_duration(d)?))
}

/// A CRL of `ca_cert` listing `revoked` (PEM certificates), signed by `ca_key`.
fn make_crl(
    ca_cert: &X509,
    ca_key: &PKey<Private>,
    revoked: &[&[u8]],
    this_update: SystemTime,
    next_update: SystemTime,
) -> Result<Vec<u8>, CryptoError> {
    let sha256_rsa = AlgorithmIdentifierOwned {
        oid: ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.11"),
        parameters: Some(der::asn1::Any::null()),
    };
    let mut entries = Vec::new();
    for pem in revoked {
        let cert = X509::from_pem(pem)?;
        let serial = cert.serial_number().to_bn()?.to_vec();
        entries.push(RevokedCert {
            serial_number: SerialNumber::new(&serial).map_err(CryptoError::Der)?,
            revocation_date: x509_time(this_update)?,
            crl_entry_extensions: None,
        });
    }
    let tbs = TbsCertList {
        version: Version::V2,
        signature: sha256_rsa.clone(),
        issuer: Name::from_der(&ca_cert.subject_name().to_der()?)?,
        this_update: x509_time(this_update)?,
        next_update: Some(x509_time(next_update)?),
        revoked_certificates: (!entries.is_empty()).then_some(entries),
        crl_extensions: None,
    };
    let tbs_der = tbs.to_der()?;
    let mut signer = Signer::new(MessageDigest::sha256(), ca_key)?;
    signer.update(&tbs_der)?;
    let signature = signer.sign_to_vec()?;
    let list = CertificateList {
        tbs_cert_list: tbs,
        signature_algorithm: sha256_rsa,
        signature: BitString::from_bytes(&signature)?,
    };
    Ok(list.to_der()?)
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
        Pki::generate_with_crl(org, domain, days, None)
    }

    /// [`generate`](Self::generate), the provider certificate naming
    /// `crl_url` as its CRL distribution point when given.
    pub fn generate_with_crl(
        org: &str,
        domain: &str,
        days: u32,
        crl_url: Option<&str>,
    ) -> Result<Pki, CryptoError> {
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

        let (cert, key) = issue(&ca_cert, &ca_key, org, domain, days, crl_url)?;
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
        self.issue_leaf_with_crl(org, domain, days, None)
    }

    /// [`issue_leaf`](Self::issue_leaf), the certificate naming `crl_url`
    /// as its CRL distribution point when given.
    pub fn issue_leaf_with_crl(
        &self,
        org: &str,
        domain: &str,
        days: u32,
        crl_url: Option<&str>,
    ) -> Result<(Vec<u8>, Vec<u8>), CryptoError> {
        let ca_cert = X509::from_pem(&self.ca_cert_pem)?;
        let ca_key = PKey::private_key_from_pem(&self.ca_key_pem)?;
        let (cert, key) = issue(&ca_cert, &ca_key, org, domain, days, crl_url)?;
        Ok((cert.to_pem()?, key.private_key_to_pem_pkcs8()?))
    }

    /// A CRL (DER) of the CA listing the certificates `revoked` (PEM),
    /// thisUpdate `this_update`, nextUpdate `next_update`, signed
    /// sha256WithRSAEncryption by the CA's key.
    pub fn crl(
        &self,
        revoked: &[&[u8]],
        this_update: SystemTime,
        next_update: SystemTime,
    ) -> Result<Vec<u8>, CryptoError> {
        let ca_cert = X509::from_pem(&self.ca_cert_pem)?;
        let ca_key = PKey::private_key_from_pem(&self.ca_key_pem)?;
        make_crl(&ca_cert, &ca_key, revoked, this_update, next_update)
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
