//! The sender side's record of what happened to each of our envelopes,
//! per recipient, as receipts arrive (reception point) or are issued
//! (delivery point of the same provider).
//!
//! A receipt speaks for the recipients of the provider that signed it: a
//! verified receipt from provider B changes the status of a recipient only
//! when B manages that recipient's domain (its `managedDomains` in the
//! providers' index). A provider cannot close, with its own signature, the
//! 12 h / 24 h tracking of a recipient another provider serves.

use std::sync::Mutex;

use chrono::{DateTime, Utc};

use crate::index::ProviderEntry;
use crate::pec::{DatiCert, Tipo};
use crate::state::{EnvelopeRecord, RecipientStatus, StateError, StateStore};

/// Whether `signer` serves `address` (its domain is one of the signer's
/// `managedDomains`).
fn serves(signer: &ProviderEntry, address: &str) -> bool {
    let address = address.trim().trim_start_matches('<').trim_end_matches('>');
    address
        .rsplit_once('@')
        .is_some_and(|(_, domain)| signer.manages(domain))
}

/// What a receipt of kind `tipo` says: the status it gives and the
/// recipients it speaks of; `None` for a kind that changes no record.
fn says(d: &DatiCert, tipo: Tipo) -> Option<(RecipientStatus, Vec<String>)> {
    Some(match tipo {
        Tipo::PresaInCarico => (RecipientStatus::PresaInCarico, d.ricezione.clone()),
        Tipo::AvvenutaConsegna => (
            RecipientStatus::Consegnato,
            d.consegna.iter().cloned().collect(),
        ),
        Tipo::ErroreConsegna | Tipo::RilevazioneVirus => (
            RecipientStatus::Errore,
            d.consegna.iter().cloned().collect(),
        ),
        _ => return None,
    })
}

/// Apply `status` for the recipients `who` to `rec` as `signer` may (final
/// states stay, presa in carico does not repeat, only recipients `signer`
/// serves). Returns whether anything changed, and the recipients it would
/// have changed that `signer` does not serve.
fn apply(
    rec: &mut EnvelopeRecord,
    status: RecipientStatus,
    who: &[String],
    signer: &ProviderEntry,
    at: i64,
) -> (bool, Vec<String>) {
    let mut changed = false;
    let mut not_served = Vec::new();
    for r in rec.recipients.iter_mut() {
        if !who.iter().any(|w| w.eq_ignore_ascii_case(&r.address)) {
            continue;
        }
        let upgrade = !matches!(
            (r.status, status),
            (RecipientStatus::Consegnato | RecipientStatus::Errore, _)
                | (
                    RecipientStatus::PresaInCarico,
                    RecipientStatus::PresaInCarico
                )
        );
        if upgrade && !serves(signer, &r.address) {
            not_served.push(r.address.clone());
        } else if upgrade {
            r.status = status;
            r.updated_at = at;
            changed = true;
        }
    }
    (changed, not_served)
}

/// Would the receipt change `rec` ([`record_receipt`]'s rules, nothing
/// written)? A sender-side notice due because of a receipt is sent before
/// the record changes, so that it is never lost to a failure in between.
pub fn would_change(
    rec: &EnvelopeRecord,
    d: &DatiCert,
    tipo: Tipo,
    signer: &ProviderEntry,
) -> bool {
    says(d, tipo).is_some_and(|(status, who)| apply(&mut rec.clone(), status, &who, signer, 0).0)
}

/// Apply a verified receipt about one of our envelopes, signed by the
/// provider `signer` (its entry in the providers' index), to its record
/// (per recipient: presa in carico, consegna, errore; final states stay).
/// Only the recipients `signer` serves change; one it does not serve that
/// the receipt would have changed is left as it is and a warning logged.
/// Returns the updated record when something changed.
pub async fn record_receipt(
    state: &dyn StateStore,
    d: &DatiCert,
    tipo: Tipo,
    signer: &ProviderEntry,
    now: DateTime<Utc>,
    retention_secs: u64,
) -> Result<Option<EnvelopeRecord>, StateError> {
    let Some((status, who)) = says(d, tipo) else {
        return Ok(None);
    };
    let at = now.timestamp();
    // Recipients the receipt names but its signer does not serve, that it
    // would have changed (filled by the last run of `update`).
    let refused: Mutex<Vec<String>> = Mutex::new(Vec::new());
    // Compare-and-set: a 24 h notice finishing the same envelope at the
    // same instant (crate::roles::tracking) cannot overwrite this update, nor this
    // one a status that notice set.
    let update = |rec: &mut EnvelopeRecord| {
        let (changed, not_served) = apply(rec, status, &who, signer, at);
        *refused.lock().unwrap_or_else(|e| e.into_inner()) = not_served;
        changed
    };
    let updated = state
        .update_envelope(&d.identificativo, retention_secs, &update)
        .await?;
    let refused = refused.into_inner().unwrap_or_else(|e| e.into_inner());
    if !refused.is_empty() {
        tracing::warn!(pec_id = %d.identificativo, kind = %tipo, signer = %signer.name,
            recipients = ?refused, managed = ?signer.managed_domains,
            "receipt about recipients its signer does not serve: their record is left unchanged");
    }
    let Some(rec) = updated else {
        tracing::debug!(pec_id = %d.identificativo, kind = %tipo,
            "receipt changes nothing we track (unknown envelope, or outcome already recorded)");
        return Ok(None);
    };
    tracing::info!(pec_id = %rec.pec_id, kind = %tipo, recipients = ?who, "envelope state updated");
    Ok(Some(rec))
}
