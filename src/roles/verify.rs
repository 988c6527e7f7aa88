//! Is this PEC? The checks the reception point and the delivery point both
//! make before they certify anything about a message that carries PEC
//! marker fields (PEC-RULES §4.3): one function, so that the two roles
//! cannot drift. And what both do with a message that fails them: the
//! signed busta di anomalia (PEC-RULES §2.3), built the same way by both.

use chrono::{DateTime, Utc};
use hex::encode as hex;

use crate::crypto::verify::{SignatureStatus, TrustStore, VerifyAt};
use crate::crypto::{self, DigestAlg};
use crate::index::{IndexSnapshot, ProviderEntry};
use crate::pec::body::Body;
use crate::pec::build::{Anomalia, BuildError, Emission, Provider, Signer, write_busta_anomalia};
use crate::pec::inspect::check_signature;
use crate::pec::reader::PecMessage;
use crate::pec::{MessageKind, Tipo, mime};
use crate::roles::message::SpooledMessage;
use crate::spool::{SpoolOptions, SpoolWriter};

/// Why a message that claims to be PEC is not a correct one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// What failed, in the words the busta di anomalia carries.
    pub reason: String,
    /// The signature is valid and its signer is a provider listed in the
    /// index (whatever else is wrong): a provider's non-conformant message
    /// rather than ordinary mail (PEC-RULES §4.3, outcome).
    pub signer_listed: bool,
}

/// Why [`verify_pec`] certifies nothing about a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unverified {
    /// It is not a correct PEC message: a busta di anomalia (or a
    /// refusal of ordinary mail).
    Problem(Problem),
    /// Every other check holds, but the revocation status of a
    /// certificate of the signer's chain cannot be told now (no usable CRL
    /// for its distribution points): neither genuine nor forged yet. The
    /// caller answers 4xx; the MTA retries once the CRL is fetched. A
    /// revoked provider must never get a presa in carico, and a provider
    /// that is not revoked must not get an anomaly.
    Undecided(String),
}

impl From<Problem> for Unverified {
    fn from(p: Problem) -> Self {
        Unverified::Problem(p)
    }
}

impl std::fmt::Display for Unverified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unverified::Problem(p) => p.fmt(f),
            Unverified::Undecided(why) => f.write_str(why),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// The checks of PEC-RULES §4.3 on a message that carries PEC marker
/// fields: the S/MIME signature valid with its chain to `trust` (at
/// `verify_at`), the signer's certificate listed in the providers' index
/// (SHA-1, then the DER byte-compared), the `From:` domain managed by that
/// provider, the structure (daticert.xml present and of the kind the
/// marker fields say; postacert.eml in a busta di trasporto), and for a
/// busta di trasporto the daticert mittente's domain managed by the signer
/// too. The index
/// entry of the signer when every check holds.
///
/// Pure but for the signature check's CPU work: a caller holding a large
/// message runs it off the async workers.
pub fn verify_pec(
    msg: &PecMessage<'_>,
    trust: &TrustStore,
    verify_at: VerifyAt,
    snapshot: &IndexSnapshot,
) -> Result<ProviderEntry, Unverified> {
    let sig = check_signature(msg, trust, verify_at);
    let undecided = match sig.status {
        SignatureStatus::Valid => None,
        SignatureStatus::Indeterminate => Some(
            sig.reason
                .clone()
                .unwrap_or_else(|| "revocation status unknown".into()),
        ),
        SignatureStatus::Invalid | SignatureStatus::Missing => {
            return Err(Problem {
                reason: format!(
                    "firma non valida ({})",
                    sig.reason.as_deref().unwrap_or("verifica fallita")
                ),
                signer_listed: false,
            }
            .into());
        }
    };
    let Some(entry) = sig
        .signer_der
        .as_deref()
        .and_then(|d| snapshot.provider_for_certificate(d))
    else {
        return Err(Problem {
            reason: "il certificato del firmatario non è nell'indice dei gestori".into(),
            signer_listed: false,
        }
        .into());
    };
    let from_domain = msg
        .from
        .as_deref()
        .and_then(mime::addr_spec)
        .and_then(|a| domain_of(&a));
    require_managed(entry, from_domain, "")?;
    if let Some(reason) = structure_problem(msg) {
        return Err(Problem {
            reason,
            signer_listed: true,
        }
        .into());
    }
    // A busta di trasporto speaks for its mittente: only the provider of
    // the mittente's domain may sign one (a listed provider cannot send on
    // behalf of another provider's holders). The `From:` check above is
    // the rules' (RFC 6109 §7); this one is ours (PEC-RULES §4.3 [INF]).
    if msg.kind == MessageKind::BustaTrasporto
        && let Some(Ok(d)) = &msg.daticert
    {
        require_managed(entry, domain_of(&d.mittente), " (daticert)")?;
    }
    if let Some(why) = undecided {
        return Err(Unverified::Undecided(why));
    }
    Ok(entry.clone())
}

/// `Ok` when `entry` manages `domain`; otherwise the problem, naming the
/// domain (`where_` says which field it came from).
fn require_managed(
    entry: &ProviderEntry,
    domain: Option<String>,
    where_: &str,
) -> Result<(), Problem> {
    match domain {
        Some(d) if entry.manages(&d) => Ok(()),
        other => Err(Problem {
            reason: format!(
                "il dominio del mittente {}{where_} non è gestito da {}",
                other.unwrap_or_else(|| "?".into()),
                entry.name
            ),
            signer_listed: true,
        }),
    }
}

/// Why a message that claims to be PEC is not formally correct.
fn structure_problem(msg: &PecMessage<'_>) -> Option<String> {
    let d = match &msg.daticert {
        Some(Ok(d)) => d,
        Some(Err(e)) => return Some(format!("daticert.xml non valido: {e}")),
        None => {
            if msg.kind == MessageKind::BustaAnomalia {
                return None;
            }
            return Some("daticert.xml assente".into());
        }
    };
    match msg.kind {
        MessageKind::BustaTrasporto => {
            if d.tipo != Tipo::PostaCertificata {
                return Some(format!("tipo {} in una busta di trasporto", d.tipo));
            }
            if msg.postacert.is_none() {
                return Some("postacert.eml assente".into());
            }
            None
        }
        MessageKind::Ricevuta(t) if d.tipo != t => {
            Some(format!("X-Ricevuta {t} ma daticert tipo {}", d.tipo))
        }
        _ => None,
    }
}

/// The domain of an address, lowercase.
fn domain_of(address: &str) -> Option<String> {
    address
        .rsplit_once('@')
        .map(|(_, d)| d.trim_end_matches('>').to_ascii_lowercase())
}

/// SHA-256 of `prefix` and then the message (`header`, the empty line,
/// `body`), read in pieces (blocking reads for a body on disk).
pub fn digest_message<B: Body + ?Sized>(
    prefix: &[u8],
    header: &[u8],
    body: &B,
) -> Result<Vec<u8>, BuildError> {
    let mut h = crypto::ContentHasher::new(DigestAlg::Sha256)?;
    h.update(prefix)?;
    h.update(header)?;
    h.update(b"\r\n")?;
    body.for_range::<BuildError>(0, body.len(), |c| Ok(h.update(c)?))?;
    Ok(h.finish()?)
}

/// The signed busta di anomalia around a received message (`header`, its
/// header block; `body`), written into a spool file of `spool` when large,
/// and its id: `anomalia.<digest of the received bytes>@<our domain>`, so
/// that a retry of the same message makes the same envelope, at the
/// reception point or the delivery point alike. Blocking I/O for a body on
/// disk: a caller holding one runs it off the async workers.
pub fn anomaly_envelope<B: Body + ?Sized>(
    provider: &Provider,
    signer: Signer<'_>,
    spool: SpoolOptions,
    header: &[u8],
    body: &B,
    anomalia: &Anomalia,
    now: DateTime<Utc>,
) -> Result<(String, SpooledMessage), BuildError> {
    let id = format!(
        "anomalia.{}@{}",
        &hex(digest_message(b"", header, body)?)[..24],
        provider.domain
    );
    let emission = Emission {
        time: now,
        message_id: id.clone(),
    };
    let mut out = SpoolWriter::raw(spool);
    let headers = write_busta_anomalia(
        provider, anomalia, header, body, &emission, signer, &mut out,
    )?;
    let body = out.finish()?;
    Ok((id, SpooledMessage { headers, body }))
}

/// The facts of the busta di anomalia for a message: who sent it (its
/// `From:`, else the SMTP reverse path) and its subject.
pub fn anomalia_of(
    msg: Option<&PecMessage<'_>>,
    mail_from: &str,
    why: &str,
    sicurezza: bool,
) -> Anomalia {
    Anomalia {
        // Hostile input (tests/hostile.rs, a NUL inside the From: address):
        // an address that cannot stand in a header field made the anomaly
        // envelope fail to build, a 4xx for ever instead of the anomaly the
        // rules ask for; such a From: is not used, the reverse path is.
        mittente: msg
            .and_then(|m| m.from.as_deref())
            .and_then(mime::addr_spec)
            .filter(|a| !a.contains(['\r', '\n', '\0']))
            .unwrap_or_else(|| mail_from.to_string()),
        oggetto: msg.and_then(|m| m.subject.clone()).unwrap_or_default(),
        errore: why.to_string(),
        sicurezza,
    }
}
