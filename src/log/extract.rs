//! The holder's extract (PEC-RULES §11): given sender, recipient and day
//! (optionally subject or Message-ID), every event of the matching
//! messages across the nodes' logs, in time order.

use std::collections::HashSet;
use std::path::Path;

use chrono::NaiveDate;
use serde::Serialize;

use super::Evento;
use super::chain::Record;
use super::verify::{Broken, node_dirs, verify_node_with};
use super::writer::local_date;

/// What the holder asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub sender: String,
    pub recipient: String,
    /// The local day (Europe/Rome) the message was sent.
    pub date: NaiveDate,
    /// The subject, exactly.
    pub subject: Option<String>,
    /// The original's Message-ID or the PEC id (with or without `<>`).
    pub message_id: Option<String>,
}

fn bare(id: &str) -> &str {
    id.trim().trim_start_matches('<').trim_end_matches('>')
}

impl Query {
    /// Does this record describe a message the holder asks about?
    fn matches(&self, r: &Record) -> bool {
        let e = &r.event;
        if matches!(e.event, Evento::Apertura | Evento::Chiusura) {
            return false;
        }
        e.sender.eq_ignore_ascii_case(self.sender.trim())
            && e.recipients
                .iter()
                .any(|d| d.address.eq_ignore_ascii_case(self.recipient.trim()))
            && local_date(e.time) == self.date
            && self.subject.as_ref().is_none_or(|s| e.subject == *s)
            && self
                .message_id
                .as_deref()
                .map(bare)
                .is_none_or(|m| bare(&e.pec_id) == m || e.msgid.as_deref().map(bare) == Some(m))
    }
}

/// A record of the extract, with its hash in the log (so that the holder
/// can have it checked against the provider's sealed files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Extracted {
    #[serde(flatten)]
    pub record: Record,
    pub hash: String,
}

/// Every record of the node directories under `dirs`, read as each chain
/// is verified: an extract is never made from a broken log.
fn all_records(dirs: &[&Path]) -> Result<Vec<Extracted>, Broken> {
    let mut out = Vec::new();
    for dir in dirs {
        let nodes = node_dirs(dir).map_err(|e| Broken {
            path: dir.display().to_string(),
            line: None,
            reason: e.to_string(),
        })?;
        for node in nodes {
            verify_node_with(&node, |record, hash| out.push(Extracted { record, hash }))?;
        }
    }
    Ok(out)
}

/// The events of the messages `q` describes, in time order (the event's
/// time, then when it was written).
pub fn extract(dirs: &[&Path], q: &Query) -> Result<Vec<Extracted>, Broken> {
    let records = all_records(dirs)?;
    let ids: HashSet<String> = records
        .iter()
        .filter(|x| q.matches(&x.record))
        .map(|x| x.record.event.pec_id.clone())
        .collect();
    let mut out: Vec<Extracted> = records
        .into_iter()
        .filter(|x| !x.record.event.pec_id.is_empty() && ids.contains(&x.record.event.pec_id))
        .collect();
    out.sort_by(|a, b| {
        let (a, b) = (&a.record, &b.record);
        (a.event.time, a.logged, &a.node, a.seq).cmp(&(b.event.time, b.logged, &b.node, b.seq))
    });
    Ok(out)
}

/// The extract as text, one block per event.
pub fn to_text(records: &[Extracted]) -> String {
    let mut s = String::new();
    for x in records {
        let r = &x.record;
        let e = &r.event;
        let rcpts: Vec<String> = e
            .recipients
            .iter()
            .map(|d| format!("{} ({})", d.address, d.tipo))
            .collect();
        s.push_str(&format!(
            "{}  {}\n  pec id:      {}\n  message-id:  {}\n  sender:      {}\n  recipients:  {}\n  subject:     {}\n  provider:    {}\n  outcome:     {}\n",
            r.local,
            e.event.wire(),
            e.pec_id,
            e.msgid.as_deref().unwrap_or("-"),
            e.sender,
            rcpts.join(", "),
            e.subject,
            e.provider,
            e.outcome,
        ));
        if let Some(a) = &e.about {
            s.push_str(&format!("  about:       {a}\n"));
        }
        if !e.related.is_empty() {
            s.push_str(&format!("  related:     {}\n", e.related.join(", ")));
        }
        s.push_str(&format!(
            "  recorded:    {} by {} (seq {}, hash {})\n\n",
            r.logged.to_rfc3339(),
            r.node,
            r.seq,
            x.hash
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::writer::{FileLog, LogOptions};
    use crate::log::{Destinatario, Event, EventLog};
    use chrono::{TimeZone, Utc};

    fn ev(event: Evento, pec_id: &str, sender: &str, rcpt: &str, hour: i64) -> Event {
        Event {
            event,
            time: Utc
                .with_ymd_and_hms(2026, 12, 7, 0, 0, 0)
                .single()
                .expect("t")
                + chrono::Duration::hours(hour),
            pec_id: pec_id.into(),
            msgid: Some(format!("<{pec_id}.client>")),
            related: vec![],
            sender: sender.into(),
            recipients: vec![Destinatario {
                address: rcpt.into(),
                tipo: "certificato".into(),
            }],
            subject: format!("about {pec_id}"),
            provider: "Demo PEC S.p.A.".into(),
            outcome: "ok".into(),
            about: None,
        }
    }

    #[tokio::test]
    async fn one_message_across_two_nodes_in_time_order() {
        let dir = tempfile::tempdir().expect("tmp");
        let open = |node: &str| {
            FileLog::open(&LogOptions {
                dir: dir.path().to_path_buf(),
                node: node.into(),
            })
            .expect("open")
        };
        let (a, b) = (open("a"), open("b"));
        let m = "mario@pec.demo.test";
        let anna = "anna@pec.other.test";
        // b records its part first, with a later time
        b.record(vec![
            ev(Evento::PresaInCarico, "x1", m, anna, 10),
            ev(Evento::AvvenutaConsegna, "x1", m, anna, 11),
        ])
        .await
        .expect("b");
        a.record(vec![
            ev(Evento::Accettazione, "x1", m, anna, 9),
            ev(Evento::Accettazione, "x2", m, "carlo@pec.other.test", 9),
            ev(Evento::Accettazione, "x3", m, anna, 9 + 24),
        ])
        .await
        .expect("a");
        let q = Query {
            sender: "MARIO@pec.demo.test".into(),
            recipient: anna.into(),
            date: NaiveDate::from_ymd_opt(2026, 12, 7).expect("d"),
            subject: None,
            message_id: None,
        };
        let got = extract(&[dir.path()], &q).expect("extract");
        let kinds: Vec<_> = got
            .iter()
            .map(|x| (x.record.event.event, x.record.event.pec_id.as_str()))
            .collect();
        assert_eq!(
            kinds,
            [
                (Evento::Accettazione, "x1"),
                (Evento::PresaInCarico, "x1"),
                (Evento::AvvenutaConsegna, "x1")
            ]
        );
        let text = to_text(&got);
        assert!(
            text.contains("accettazione") && text.contains("anna@pec.other.test (certificato)")
        );
        // narrowed by Message-ID: the same; by another one: nothing
        let by_id = Query {
            message_id: Some("<x1.client>".into()),
            ..q.clone()
        };
        assert_eq!(extract(&[dir.path()], &by_id).expect("e").len(), 3);
        let other = Query {
            message_id: Some("x2".into()),
            ..q
        };
        assert!(extract(&[dir.path()], &other).expect("e").is_empty());
    }
}
