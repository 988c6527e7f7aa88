//! What `pec-milter inspect` and `pec-milter verify` report about a message,
//! and about every PEC message found inside it ([`crate::pec::nested`]).

use serde::Serialize;

use crate::crypto::verify::{
    SignatureReport, SignatureStatus, TrustStore, VerifyAt, verify_attached, verify_detached,
};
use crate::pec::daticert::{DatiCert, Destinatario};
use crate::pec::mime::canonicalize_crlf;
use crate::pec::nested::{self, FoundAs};
use crate::pec::reader::{self, PecMessage, ReadError};

/// The signature facts of a message.
#[derive(Debug, Clone, Serialize)]
pub struct SignatureView {
    pub status: SignatureStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub signer_sha1: Option<String>,
    pub signer_subject: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signer_email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_time: Option<String>,
    pub integrity_ok: bool,
    pub chain_ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub micalg: Option<String>,
    /// The signer certificate's DER, as found in the signature (the key
    /// into the providers' index, with `signer_sha1`).
    #[serde(skip)]
    pub signer_der: Option<Vec<u8>>,
}

/// daticert.xml as `inspect --json` prints it.
#[derive(Debug, Clone, Serialize)]
pub struct DatiCertView {
    pub tipo: String,
    pub errore: String,
    pub mittente: String,
    pub destinatari: Vec<Destinatario>,
    pub risposte: String,
    pub oggetto: Option<String>,
    pub gestore_emittente: String,
    pub data: DataView,
    pub identificativo: String,
    pub msgid: Option<String>,
    pub ricevuta: Option<String>,
    pub consegna: Option<String>,
    pub ricezione: Vec<String>,
    pub errore_esteso: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DataView {
    pub giorno: String,
    pub ora: String,
    pub zona: String,
}

impl From<&DatiCert> for DatiCertView {
    fn from(d: &DatiCert) -> Self {
        DatiCertView {
            tipo: d.tipo.to_string(),
            errore: d.errore.to_string(),
            mittente: d.mittente.clone(),
            destinatari: d.destinatari.clone(),
            risposte: d.risposte.clone(),
            oggetto: d.oggetto.clone(),
            gestore_emittente: d.gestore_emittente.clone(),
            data: DataView {
                giorno: d.data.format("%d/%m/%Y").to_string(),
                ora: d.data.format("%H:%M:%S").to_string(),
                zona: d.data.format("%z").to_string(),
            },
            identificativo: d.identificativo.clone(),
            msgid: d.msgid.clone(),
            ricevuta: d.ricevuta.map(|r| r.to_string()),
            consegna: d.consegna.clone(),
            ricezione: d.ricezione.clone(),
            errore_esteso: d.errore_esteso.clone(),
        }
    }
}

/// Everything `inspect` says about one message.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    pub kind: String,
    pub subject: Option<String>,
    pub from: Option<String>,
    pub message_id: Option<String>,
    pub riferimento_message_id: Option<String>,
    pub tipo_ricevuta: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verifica_sicurezza: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mittente: Option<String>,
    pub signature: SignatureView,
    pub daticert: Option<DatiCertView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daticert_error: Option<String>,
    pub postacert: Option<PostacertView>,
    /// The PEC messages found inside this one (forwarded, attached as
    /// `.eml`, re-wrapped), in document order; `None` for a nested one
    /// (the list is flat: each has its path).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nested: Option<Vec<NestedInspection>>,
    /// Why the search for nested PEC messages stopped short, when a limit
    /// was reached.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nested_truncated: Option<String>,
}

/// A PEC message found inside the input: where, and the same view as the
/// input's.
#[derive(Debug, Clone, Serialize)]
pub struct NestedInspection {
    /// MIME path (`2/1`); see [`crate::pec::nested`].
    pub path: String,
    /// Messages around it (1: attached to the input).
    pub depth: usize,
    pub found_as: FoundAs,
    /// The subject of the message it was found in.
    pub outer_subject: Option<String>,
    #[serde(flatten)]
    pub inspection: Inspection,
}

#[derive(Debug, Clone, Serialize)]
pub struct PostacertView {
    pub bytes: usize,
    pub subject: Option<String>,
    pub message_id: Option<String>,
}

/// Verify the signature of a read message.
pub fn check_signature(msg: &PecMessage, trust: &TrustStore, at: VerifyAt) -> SignatureView {
    let Some(signed) = &msg.signed else {
        return missing("not an S/MIME signed message (no multipart/signed)", None);
    };
    let Some(p7s) = &signed.p7s else {
        let why = signed
            .problem
            .clone()
            .unwrap_or_else(|| "no signature part".into());
        return missing(&why, Some(signed));
    };
    let r: SignatureReport = if signed.opaque {
        verify_attached(p7s, trust, at)
    } else {
        verify_detached(p7s, &signed.content, trust, at)
    };
    SignatureView {
        status: r.status,
        reason: r.reason,
        signer_sha1: r.signer_sha1,
        signer_subject: r.signer_subject,
        signer_email: r.signer_email,
        digest: r.digest,
        signing_time: r.signing_time.map(|t| t.to_rfc3339()),
        integrity_ok: r.integrity_ok,
        chain_ok: r.chain_ok,
        protocol: Some(signed.protocol.clone()),
        micalg: signed.micalg.clone(),
        signer_der: r.signer_der,
    }
}

fn missing(why: &str, signed: Option<&reader::SignedParts>) -> SignatureView {
    SignatureView {
        status: SignatureStatus::Missing,
        reason: Some(why.to_string()),
        signer_sha1: None,
        signer_subject: None,
        signer_email: None,
        digest: None,
        signing_time: None,
        integrity_ok: false,
        chain_ok: false,
        protocol: signed.map(|s| s.protocol.clone()),
        micalg: signed.and_then(|s| s.micalg.clone()),
        signer_der: None,
    }
}

/// Read, classify and verify one message, and every PEC message found
/// inside it.
pub fn inspect(raw: &[u8], trust: &TrustStore, at: VerifyAt) -> Result<Inspection, ReadError> {
    // once: the walk and the reading of the input borrow it as it is then
    let canon = canonicalize_crlf(raw);
    let mut top = None;
    let mut inner = Vec::new();
    let walked = nested::walk(&canon, |f| {
        let view = inspect_message(&f.message, trust, at);
        if f.path.is_empty() {
            top = Some(view);
        } else {
            inner.push(NestedInspection {
                path: f.path_string(),
                depth: f.depth,
                found_as: f.found_as,
                outer_subject: f.outer_subject.clone(),
                inspection: view,
            });
        }
    })?;
    let mut top = match top {
        Some(t) => t,
        None => inspect_message(&reader::read_any(&canon)?, trust, at),
    };
    top.nested = Some(inner);
    top.nested_truncated = walked.stopped;
    Ok(top)
}

/// The view of one message read, its signature checked.
pub fn inspect_message(msg: &PecMessage<'_>, trust: &TrustStore, at: VerifyAt) -> Inspection {
    let signature = check_signature(msg, trust, at);
    let (daticert, daticert_error) = match &msg.daticert {
        Some(Ok(d)) => (Some(DatiCertView::from(d)), None),
        Some(Err(e)) => (None, Some(e.clone())),
        None => (None, None),
    };
    let postacert = msg.postacert.as_ref().map(|p| {
        let inner = reader::read(p).ok();
        PostacertView {
            bytes: p.len(),
            subject: inner.as_ref().and_then(|m| m.subject.clone()),
            message_id: inner.and_then(|m| m.message_id),
        }
    });
    Inspection {
        file: None,
        kind: msg.kind.wire().to_string(),
        subject: msg.subject.clone(),
        from: msg.from.clone(),
        message_id: msg.message_id.clone(),
        riferimento_message_id: msg.riferimento_message_id.clone(),
        tipo_ricevuta: msg.tipo_ricevuta.map(|t| t.to_string()),
        verifica_sicurezza: msg.verifica_sicurezza.clone(),
        mittente: msg.mittente.clone(),
        signature,
        daticert,
        daticert_error,
        postacert,
        nested: None,
        nested_truncated: None,
    }
}

impl Inspection {
    /// A human-readable summary.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        if let Some(f) = &self.file {
            s.push_str(&format!("file:        {f}\n"));
        }
        s.push_str(&format!("kind:        {}\n", self.kind));
        s.push_str(&format!(
            "subject:     {}\n",
            self.subject.as_deref().unwrap_or("-")
        ));
        let sig = &self.signature;
        s.push_str(&format!("signature:   {}", status_word(sig.status)));
        if let Some(r) = &sig.reason {
            s.push_str(&format!(" ({r})"));
        }
        s.push('\n');
        if let Some(x) = &sig.signer_subject {
            s.push_str(&format!("  signer:    {x}\n"));
        }
        if let Some(x) = &sig.signer_sha1 {
            s.push_str(&format!("  sha1:      {x}\n"));
        }
        if let Some(x) = &sig.digest {
            s.push_str(&format!("  digest:    {x}\n"));
        }
        if let Some(x) = &sig.signing_time {
            s.push_str(&format!("  signed at: {x}\n"));
        }
        if let Some(d) = &self.daticert {
            s.push_str(&format!(
                "daticert:    tipo={} errore={}\n",
                d.tipo, d.errore
            ));
            s.push_str(&format!("  mittente:  {}\n", d.mittente));
            for x in &d.destinatari {
                s.push_str(&format!("  destinatario: {} ({})\n", x.address, x.tipo));
            }
            s.push_str(&format!("  gestore:   {}\n", d.gestore_emittente));
            s.push_str(&format!(
                "  data:      {} {} {}\n",
                d.data.giorno, d.data.ora, d.data.zona
            ));
            s.push_str(&format!("  identificativo: {}\n", d.identificativo));
            if let Some(m) = &d.msgid {
                s.push_str(&format!("  msgid:     {m}\n"));
            }
            if let Some(r) = &d.ricevuta {
                s.push_str(&format!("  ricevuta:  {r}\n"));
            }
            if let Some(c) = &d.consegna {
                s.push_str(&format!("  consegna:  {c}\n"));
            }
            for r in &d.ricezione {
                s.push_str(&format!("  ricezione: {r}\n"));
            }
            if let Some(e) = &d.errore_esteso {
                s.push_str(&format!("  errore-esteso: {e}\n"));
            }
        } else if let Some(e) = &self.daticert_error {
            s.push_str(&format!("daticert:    unreadable ({e})\n"));
        }
        if let Some(p) = &self.postacert {
            s.push_str(&format!(
                "postacert:   {} bytes, subject {}\n",
                p.bytes,
                p.subject.as_deref().unwrap_or("-")
            ));
        }
        for n in self.nested.iter().flatten() {
            s.push_str(&format!(
                "nested:      part {} ({}, in {})\n",
                n.path,
                n.found_as.wire(),
                quoted(n.outer_subject.as_deref())
            ));
            for line in n.inspection.to_text().lines() {
                s.push_str(&format!("  {line}\n"));
            }
        }
        if let Some(t) = &self.nested_truncated {
            s.push_str(&format!("nested:      search stopped: {t}\n"));
        }
        s
    }
}

/// A subject as the text output quotes it: `"..."`, or `-`.
pub fn quoted(subject: Option<&str>) -> String {
    subject.map_or_else(|| "-".to_string(), |s| format!("{s:?}"))
}

fn status_word(s: SignatureStatus) -> &'static str {
    match s {
        SignatureStatus::Valid => "valid",
        SignatureStatus::Invalid => "invalid",
        SignatureStatus::Missing => "missing",
        SignatureStatus::Indeterminate => "indeterminate (revocation status unknown)",
    }
}
