//! Certificate revocation lists (RFC 5280 §5) for the reception point's
//! revocation check (PEC-RULES §4.3 step 3: "check the whole certification
//! path, CRL and validity period").
//!
//! - [`Crl`]: one parsed CRL (DER or PEM), its validity (thisUpdate,
//!   nextUpdate), whether it was issued by a given certificate (name and
//!   signature), whether it lists a certificate.
//! - [`distribution_points`]: the `http://` / `https://` URLs of a
//!   certificate's CRL distribution points extension.
//! - [`CrlSource`]: where [`crate::crypto::verify`] asks for the CRL of a
//!   distribution point; the daemon's cache (`crate::crls`) implements it
//!   (fetched over HTTP, kept on disk, refreshed before nextUpdate). This
//!   layer never does I/O: a lookup answers from memory.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openssl::asn1::{Asn1Time, Asn1TimeRef};
use openssl::x509::{CrlStatus, X509, X509Crl, X509Ref};

use super::CryptoError;

/// One CRL, parsed, with its DER as received.
pub struct Crl {
    der: Vec<u8>,
    crl: X509Crl,
    this_update: SystemTime,
    next_update: Option<SystemTime>,
}

impl fmt::Debug for Crl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Crl")
            .field(
                "issuer",
                &super::verify::name_to_string(self.crl.issuer_name()),
            )
            .field("this_update", &self.this_update)
            .field("next_update", &self.next_update)
            .finish_non_exhaustive()
    }
}

/// Seconds from the epoch to `t` as a [`SystemTime`].
fn asn1_to_system(t: &Asn1TimeRef) -> Result<SystemTime, CryptoError> {
    let epoch = Asn1Time::from_unix(0)?;
    let d = epoch.diff(t)?;
    let secs = i64::from(d.days) * 86_400 + i64::from(d.secs);
    let secs = u64::try_from(secs)
        .map_err(|_| CryptoError::InvalidInput("CRL time before 1970".into()))?;
    Ok(UNIX_EPOCH + Duration::from_secs(secs))
}

impl Crl {
    /// A CRL from DER or PEM bytes (`-----BEGIN X509 CRL-----`).
    pub fn parse(bytes: &[u8]) -> Result<Crl, CryptoError> {
        let crl = X509Crl::from_der(bytes)
            .or_else(|_| X509Crl::from_pem(bytes))
            .map_err(|e| CryptoError::InvalidInput(format!("not a CRL (DER or PEM): {e}")))?;
        let der = crl.to_der()?;
        let this_update = asn1_to_system(crl.last_update())?;
        let next_update = match crl.next_update() {
            Some(t) => Some(asn1_to_system(t)?),
            None => None,
        };
        Ok(Crl {
            der,
            crl,
            this_update,
            next_update,
        })
    }

    /// The CRL's DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// thisUpdate: when it was issued.
    pub fn this_update(&self) -> SystemTime {
        self.this_update
    }

    /// nextUpdate: when the next one will be issued at the latest (none:
    /// the issuer did not say).
    pub fn next_update(&self) -> Option<SystemTime> {
        self.next_update
    }

    /// The issuer's name, one line.
    pub fn issuer(&self) -> String {
        super::verify::name_to_string(self.crl.issuer_name())
    }

    /// `Ok` when `issuer` issued this CRL: the CRL's issuer name is the
    /// certificate's subject and the signature verifies with its public
    /// key.
    pub fn verify_issuer(&self, issuer: &X509Ref) -> Result<(), CryptoError> {
        let same_name = self
            .crl
            .issuer_name()
            .try_cmp(issuer.subject_name())
            .map(|o| o.is_eq())
            .unwrap_or(false);
        if !same_name {
            return Err(CryptoError::Verify(format!(
                "the CRL is issued by {}, not by {}",
                self.issuer(),
                super::verify::name_to_string(issuer.subject_name())
            )));
        }
        let key = issuer.public_key()?;
        if self.crl.verify(&key)? {
            Ok(())
        } else {
            Err(CryptoError::Verify(format!(
                "the CRL's signature does not verify with the key of {}",
                self.issuer()
            )))
        }
    }

    /// Whether `cert` is listed (revoked; an entry "removeFromCRL" is not).
    /// The revocation date is not compared with any signing time: a listed
    /// certificate is revoked (a signingTime is the signer's own claim).
    pub fn lists(&self, cert: &X509) -> bool {
        matches!(self.crl.get_by_cert(cert), CrlStatus::Revoked(_))
    }

    /// Whether nextUpdate is past at `now`.
    pub fn expired_at(&self, now: SystemTime) -> bool {
        self.next_update.is_some_and(|n| n < now)
    }
}

/// The `http://` and `https://` URLs of `cert`'s CRL distribution points
/// (fullName URIs), in the certificate's order. Other forms (`ldap://`
/// URLs, relative names, a cRLIssuer) are not fetched.
pub fn distribution_points(cert: &X509Ref) -> Vec<String> {
    let mut out = Vec::new();
    let Some(points) = cert.crl_distribution_points() else {
        return out;
    };
    for dp in &points {
        let Some(names) = dp.distpoint().and_then(|n| n.fullname()) else {
            continue;
        };
        for name in names {
            if let Some(uri) = name.uri() {
                let lower = uri.to_ascii_lowercase();
                if (lower.starts_with("http://") || lower.starts_with("https://"))
                    && !out.iter().any(|u| u == uri)
                {
                    out.push(uri.to_string());
                }
            }
        }
    }
    out
}

/// What a [`CrlSource`] holds for one distribution point.
#[derive(Debug, Clone)]
pub enum CrlLookup {
    /// A CRL verified against the issuer asked about; `stale` when its
    /// nextUpdate is past (the last good copy, the download failing).
    Usable { crl: Arc<Crl>, stale: bool },
    /// None that can be used: never obtained, or past nextUpdate longer
    /// than the source allows. The words say which.
    Unavailable(String),
}

/// Where the revocation check finds the CRL of a distribution point.
///
/// A lookup answers from memory at once (it is made for every message);
/// a source that does not hold the CRL of `url` yet may take note of it
/// (and of `issuer`, to verify what it fetches) and fetch it in the
/// background.
pub trait CrlSource: Send + Sync {
    /// The CRL of `url`, verified as issued by `issuer`.
    fn lookup(&self, url: &str, issuer: &X509) -> CrlLookup;
}

/// The revocation status of a verified chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// No certificate of the chain is listed by the CRL of its
    /// distribution points (or none has a distribution point to ask).
    Good,
    /// A certificate is listed: the words name it.
    Revoked(String),
    /// A certificate's distribution points gave no usable CRL.
    Unknown(String),
}

/// Whether `cert`'s notAfter is past now.
fn expired_now(cert: &X509Ref) -> bool {
    Asn1Time::days_from_now(0)
        .ok()
        .and_then(|now| cert.not_after().compare(&now).ok())
        .is_some_and(|o| o.is_lt())
}

/// Check each certificate of `chain` (leaf first, as OpenSSL builds it;
/// the self-signed anchor at the end is not checked) that has `http(s)`
/// distribution points against the CRL `source` holds for one of them,
/// verified as issued by the next certificate of the chain.
///
/// A certificate already past its notAfter (a chain checked at the
/// signingTime of an old message, `verify_at = "signing-time"`) is not
/// looked up: a CRL need not list an expired certificate any more (RFC
/// 5280 §3.3), so its CRL of today can tell nothing about it.
pub fn check_chain(chain: &[X509], source: &dyn CrlSource) -> Revocation {
    for (i, cert) in chain.iter().enumerate() {
        let Some(issuer) = chain.get(i + 1) else {
            break;
        };
        let urls = distribution_points(cert);
        if urls.is_empty() || expired_now(cert) {
            continue;
        }
        let mut why = Vec::new();
        let mut checked = false;
        for url in &urls {
            match source.lookup(url, issuer) {
                CrlLookup::Usable { crl, .. } => {
                    if crl.lists(cert) {
                        return Revocation::Revoked(format!(
                            "certificate revoked: {} (serial {}) is listed in the CRL of {url}",
                            super::verify::name_to_string(cert.subject_name()),
                            serial_hex(cert)
                        ));
                    }
                    checked = true;
                    break;
                }
                CrlLookup::Unavailable(reason) => why.push(reason),
            }
        }
        if !checked {
            return Revocation::Unknown(format!(
                "revocation status of {} unknown: {}",
                super::verify::name_to_string(cert.subject_name()),
                why.join("; ")
            ));
        }
    }
    Revocation::Good
}

fn serial_hex(cert: &X509Ref) -> String {
    cert.serial_number()
        .to_bn()
        .ok()
        .and_then(|b| b.to_hex_str().ok().map(|s| s.to_string()))
        .unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_not_a_crl() {
        for bytes in [&b""[..], b"\x30", b"-----BEGIN X509 CRL-----\nxx\n"] {
            assert!(Crl::parse(bytes).is_err());
        }
    }
}
