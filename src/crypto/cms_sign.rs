//! Detached CMS `SignedData` assembly from DER types.
//!
//! The structure is built with the `cms`/`x509-cert` types; the key (see
//! [`SigningKey`]) is only asked to sign the DER of the signed attributes,
//! which is what a PKCS#11 token does with `CKM_SHA256_RSA_PKCS`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use der::asn1::{Any, OctetString, SetOfVec, UtcTime};
use der::oid::ObjectIdentifier;
use der::{DateTime, Decode, Encode};
use x509_cert::Certificate;
use x509_cert::attr::Attribute;
use x509_cert::spki::AlgorithmIdentifierOwned;
use x509_cert::time::Time;

use super::{CryptoError, DigestAlg, KeyKind, SigningKey, try_digest};

/// id-data (RFC 5652).
pub const OID_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.1");
/// id-signedData (RFC 5652).
pub const OID_SIGNED_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.7.2");
/// id-contentType signed attribute.
pub const OID_CONTENT_TYPE: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.3");
/// id-messageDigest signed attribute.
pub const OID_MESSAGE_DIGEST: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.4");
/// id-signingTime signed attribute.
pub const OID_SIGNING_TIME: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.5");
/// smimeCapabilities signed attribute (RFC 8551).
pub const OID_SMIME_CAPABILITIES: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.9.15");
/// SHA-1.
pub const OID_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.14.3.2.26");
/// SHA-256.
pub const OID_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.2.1");
/// rsaEncryption (the CMS signatureAlgorithm for PKCS#1 v1.5 signatures).
pub const OID_RSA_ENCRYPTION: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
/// ecdsa-with-SHA1.
pub const OID_ECDSA_SHA1: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.1");
/// ecdsa-with-SHA256.
pub const OID_ECDSA_SHA256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2");
/// aes256-CBC.
pub const OID_AES256_CBC: ObjectIdentifier =
    ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.42");
/// aes128-CBC.
pub const OID_AES128_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.1.2");
/// des-ede3-cbc.
pub const OID_DES_EDE3_CBC: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.3.7");

/// Seconds since the epoch of 2050-01-01T00:00:00Z: from there on a CMS
/// signingTime is a GeneralizedTime (RFC 5652, 11.3).
const UTC_TIME_END: u64 = 2_524_608_000;

fn attribute(oid: ObjectIdentifier, value: Any) -> Result<Attribute, CryptoError> {
    Ok(Attribute {
        oid,
        values: SetOfVec::try_from(vec![value])?,
    })
}

/// The signingTime value: UTCTime for 1950..2049, GeneralizedTime after.
fn signing_time_value(t: SystemTime) -> Result<Time, CryptoError> {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_err(|_| CryptoError::InvalidInput("signing time before 1970".into()))?
        .as_secs();
    let dt = DateTime::from_unix_duration(Duration::from_secs(secs))?;
    if secs < UTC_TIME_END {
        Ok(Time::UtcTime(UtcTime::from_date_time(dt)?))
    } else {
        Ok(Time::GeneralTime(
            der::asn1::GeneralizedTime::from_date_time(dt),
        ))
    }
}

/// The smimeCapabilities value: a short SEQUENCE OF SMIMECapability.
fn smime_capabilities() -> Result<Any, CryptoError> {
    let caps: Vec<AlgorithmIdentifierOwned> = [OID_AES256_CBC, OID_AES128_CBC, OID_DES_EDE3_CBC]
        .into_iter()
        .map(|oid| AlgorithmIdentifierOwned {
            oid,
            parameters: None,
        })
        .collect();
    Ok(Any::encode_from(&caps)?)
}

/// Parse a certificate, refusing one that would not re-encode byte for byte
/// (its signature would break inside the CMS).
fn parse_cert(der_bytes: &[u8]) -> Result<Certificate, CryptoError> {
    let cert = Certificate::from_der(der_bytes)?;
    if cert.to_der()? != der_bytes {
        return Err(CryptoError::InvalidKey(
            "certificate is not in canonical DER and cannot be embedded unchanged".into(),
        ));
    }
    Ok(cert)
}

/// A key's certificates as the CMS carries them: parsed (and checked to
/// re-encode byte for byte) once per key, not at every signature.
struct ParsedCerts {
    /// The DER they were parsed from: the signer's, then the chain's.
    der: Vec<Vec<u8>>,
    /// The signer's certificate, then the chain without repeats.
    certs: Vec<CertificateChoices>,
    /// The signer's issuer and serial number.
    sid: IssuerAndSerialNumber,
}

/// Keys whose certificates were parsed lately (a reload brings a new key;
/// a handful at most are in use at once).
static PARSED: Mutex<Vec<Arc<ParsedCerts>>> = Mutex::new(Vec::new());
const PARSED_KEEP: usize = 8;

/// `key`'s certificates, parsed: from [`PARSED`] when the same DER was
/// parsed before (compared byte for byte), else parsed now and kept.
/// Parsing and checking the certificates took about a fifteenth of a
/// submission's CMS work besides the RSA operation (issue 18's profile).
fn parsed_certificates(key: &dyn SigningKey) -> Result<Arc<ParsedCerts>, CryptoError> {
    let (cert, chain) = (key.certificate_der(), key.chain_der());
    let same = |p: &ParsedCerts| {
        p.der.len() == chain.len() + 1
            && p.der[0] == cert
            && p.der[1..].iter().zip(chain).all(|(a, b)| a == b)
    };
    // A poisoned lock only means another thread panicked while holding
    // it: the list itself is always whole.
    let cache = || PARSED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = cache().iter().find(|p| same(p)).cloned() {
        return Ok(p);
    }
    let signer_cert = parse_cert(cert)?;
    let sid = IssuerAndSerialNumber {
        issuer: signer_cert.tbs_certificate.issuer.clone(),
        serial_number: signer_cert.tbs_certificate.serial_number.clone(),
    };
    let mut certs = vec![CertificateChoices::Certificate(signer_cert)];
    let mut seen: Vec<&[u8]> = vec![cert];
    for c in chain {
        // A chain repeating the signer (or itself) would make the SET invalid.
        if seen.contains(&c.as_slice()) {
            continue;
        }
        seen.push(c);
        certs.push(CertificateChoices::Certificate(parse_cert(c)?));
    }
    let mut der = Vec::with_capacity(chain.len() + 1);
    der.push(cert.to_vec());
    der.extend(chain.iter().cloned());
    let parsed = Arc::new(ParsedCerts { der, certs, sid });
    let mut list = cache();
    if list.len() >= PARSED_KEEP {
        list.remove(0);
    }
    list.push(Arc::clone(&parsed));
    Ok(parsed)
}

/// The DER of the signed attributes (a `SET OF Attribute`, tag 0x31), as
/// signed by the key. Exposed for tests and for other signers.
pub fn signed_attributes(
    alg: DigestAlg,
    content_digest: &[u8],
    signing_time: SystemTime,
) -> Result<SetOfVec<Attribute>, CryptoError> {
    if content_digest.len() != alg.output_len() {
        return Err(CryptoError::InvalidInput(format!(
            "content digest is {} bytes, {} needs {}",
            content_digest.len(),
            alg.name(),
            alg.output_len()
        )));
    }
    let attrs = vec![
        attribute(OID_CONTENT_TYPE, Any::encode_from(&OID_DATA)?)?,
        attribute(
            OID_SIGNING_TIME,
            Any::encode_from(&signing_time_value(signing_time)?)?,
        )?,
        attribute(
            OID_MESSAGE_DIGEST,
            Any::encode_from(&OctetString::new(content_digest)?)?,
        )?,
        attribute(OID_SMIME_CAPABILITIES, smime_capabilities()?)?,
    ];
    // SetOfVec::try_from sorts the elements into DER order.
    Ok(SetOfVec::try_from(attrs)?)
}

/// Build a DER-encoded CMS `ContentInfo(SignedData)`, detached (no
/// eContent), over content whose digest is `content_digest` (computed by the
/// caller with [`super::digest`]/[`super::ContentHasher`] over the canonical
/// CRLF MIME bytes).
///
/// Signed attributes: contentType (id-data), signingTime, messageDigest,
/// smimeCapabilities. The signer is identified by issuer and serial number;
/// the certificates are the signer certificate and the key's chain.
pub fn sign_detached(
    key: &dyn SigningKey,
    alg: DigestAlg,
    content_digest: &[u8],
    signing_time: SystemTime,
) -> Result<Vec<u8>, CryptoError> {
    let signed_attrs = signed_attributes(alg, content_digest, signing_time)?;
    let to_sign = signed_attrs.to_der()?;

    let parsed = parsed_certificates(key)?;

    let signature = key.sign(alg, &to_sign)?;
    if signature.is_empty() {
        return Err(CryptoError::Sign(
            "the key returned an empty signature".into(),
        ));
    }

    let digest_algorithm = AlgorithmIdentifierOwned {
        oid: alg.oid(),
        parameters: None,
    };
    let signature_algorithm = match key.key_kind() {
        KeyKind::Rsa => AlgorithmIdentifierOwned {
            oid: OID_RSA_ENCRYPTION,
            parameters: Some(Any::null()),
        },
        KeyKind::Ec => AlgorithmIdentifierOwned {
            oid: match alg {
                DigestAlg::Sha1 => OID_ECDSA_SHA1,
                DigestAlg::Sha256 => OID_ECDSA_SHA256,
            },
            parameters: None,
        },
    };

    let signer_info = SignerInfo {
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(parsed.sid.clone()),
        digest_alg: digest_algorithm.clone(),
        signed_attrs: Some(signed_attrs),
        signature_algorithm,
        signature: OctetString::new(signature)?,
        unsigned_attrs: None,
    };

    let signed_data = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::try_from(vec![digest_algorithm])?,
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: OID_DATA,
            econtent: None,
        },
        certificates: Some(CertificateSet(SetOfVec::try_from(parsed.certs.clone())?)),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::try_from(vec![signer_info])?),
    };

    let content_info = ContentInfo {
        content_type: OID_SIGNED_DATA,
        content: Any::encode_from(&signed_data)?,
    };
    Ok(content_info.to_der()?)
}

/// Convenience: digest `content` with `alg`, then [`sign_detached`].
pub fn sign_content(
    key: &dyn SigningKey,
    alg: DigestAlg,
    content: &[u8],
    signing_time: SystemTime,
) -> Result<Vec<u8>, CryptoError> {
    let d = try_digest(alg, content)?;
    sign_detached(key, alg, &d, signing_time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_attributes_are_der_sorted_set() {
        let d = [7u8; 32];
        let t = UNIX_EPOCH + Duration::from_secs(1_415_985_992);
        let attrs = signed_attributes(DigestAlg::Sha256, &d, t).unwrap();
        let der = attrs.to_der().unwrap();
        assert_eq!(der[0], 0x31);
        // Each element's encoding is <= the next one (DER SET OF order).
        let encs: Vec<Vec<u8>> = attrs.iter().map(|a| a.to_der().unwrap()).collect();
        assert_eq!(encs.len(), 4);
        assert!(encs.windows(2).all(|w| w[0] < w[1]));
        // Round trip through a strict decoder gives the same bytes.
        let again = SetOfVec::<Attribute>::from_der(&der).unwrap();
        assert_eq!(again.to_der().unwrap(), der);
        // 2014-11-14T17:26:32Z as UTCTime.
        assert!(der.windows(15).any(|w| w == b"\x17\x0d141114172632Z"));
        assert!(signed_attributes(DigestAlg::Sha1, &d, t).is_err());
    }

    #[test]
    fn times_before_1970_are_refused() {
        let t = UNIX_EPOCH - Duration::from_secs(10);
        assert!(signed_attributes(DigestAlg::Sha1, &[0; 20], t).is_err());
    }
}
