//! The sender side's record of what happened to each of our envelopes,
//! per recipient, as receipts arrive (reception point) or are issued
//! (delivery point of the same provider).

use chrono::{DateTime, Utc};

use crate::pec::{DatiCert, Tipo};
use crate::state::{EnvelopeRecord, RecipientStatus, StateError, StateStore};

/// Apply a receipt about one of our envelopes to its record (per
/// recipient: presa in carico, consegna, errore; final states stay).
/// Returns the updated record when something changed.
pub async fn record_receipt(
    state: &dyn StateStore,
    d: &DatiCert,
    tipo: Tipo,
    now: DateTime<Utc>,
    retention_secs: u64,
) -> Result<Option<EnvelopeRecord>, StateError> {
    let (status, who): (RecipientStatus, Vec<String>) = match tipo {
        Tipo::PresaInCarico => (RecipientStatus::PresaInCarico, d.ricezione.clone()),
        Tipo::AvvenutaConsegna => (
            RecipientStatus::Consegnato,
            d.consegna.iter().cloned().collect(),
        ),
        Tipo::ErroreConsegna | Tipo::RilevazioneVirus => (
            RecipientStatus::Errore,
            d.consegna.iter().cloned().collect(),
        ),
        _ => return Ok(None),
    };
    let at = now.timestamp();
    // Compare-and-set: a 24 h notice finishing the same envelope at the
    // same instant (crate::roles::tracking) cannot overwrite this update, nor this
    // one a status that notice set.
    let update = |rec: &mut EnvelopeRecord| {
        let mut changed = false;
        for r in rec.recipients.iter_mut() {
            if !who.iter().any(|w| w.eq_ignore_ascii_case(&r.address)) {
                continue;
            }
            // final states stay; presa in carico does not repeat
            let upgrade = !matches!(
                (r.status, status),
                (RecipientStatus::Consegnato | RecipientStatus::Errore, _)
                    | (
                        RecipientStatus::PresaInCarico,
                        RecipientStatus::PresaInCarico
                    )
            );
            if upgrade {
                r.status = status;
                r.updated_at = at;
                changed = true;
            }
        }
        changed
    };
    let Some(rec) = state
        .update_envelope(&d.identificativo, retention_secs, &update)
        .await?
    else {
        tracing::debug!(pec_id = %d.identificativo, kind = %tipo,
            "receipt changes nothing we track (unknown envelope, or outcome already recorded)");
        return Ok(None);
    };
    tracing::info!(pec_id = %rec.pec_id, kind = %tipo, recipients = ?who, "envelope state updated");
    Ok(Some(rec))
}
