//! The milter edge: indymilter callbacks, thin over the access point.
//!
//! Per message: MAIL decides whether the access point applies (an
//! authenticated holder of one of our PEC domains; anything else is
//! accepted untouched at MAIL), RCPT collects the forward paths, header and
//! body rebuild the message as submitted, and end-of-message hands it to
//! [`AccessPoint::process`] and turns the [`Outcome`] into milter actions.
//!
//! Sockets: TCP with `TCP_NODELAY`, or UNIX; replies are coalesced so that
//! a batch of actions leaves in one write (see [`listener::Batched`]).
//!
//! Each message a role decides is counted here ([`Metrics`]): its role, what
//! the MTA was told, and (at end of message) how long the answer took.

use std::ffi::CString;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::Utc;
use indymilter::{
    Actions, Callbacks, Context, ContextActions, EomContext, MacroStage, NegotiateContext,
    ProtoOpts, SetErrorReply, Status,
};

use crate::metrics::{self, Metrics, Role};
use crate::pec::facts::{Facts, PROVIDER_ONLY_HEADERS, is_inherited};
use crate::pec::mime::header_fields;
use crate::roles::access::{AccessPoint, Admission, not_owner_text};
use crate::roles::reception::ReceptionPoint;
use crate::roles::{Inbound, Original, Outcome, SpooledMessage, Submission};
use crate::spool::{SpoolOptions, SpoolWriter, Spooled};

pub mod listener;

pub use listener::{Batched, MilterListener, serve};

/// The roles the milter plays, chosen per message by how it arrived.
pub struct Roles {
    pub access: AccessPoint,
    /// `None`: inbound mail passes untouched (no providers' index).
    pub reception: Option<ReceptionPoint>,
    /// Where their decisions are counted.
    pub metrics: Arc<Metrics>,
}

/// Where each milter connection takes its roles when it opens: fixed
/// roles, or the daemon's current ones (swapped whole when the
/// configuration is reloaded). A connection keeps the roles it took for
/// its whole life, every message of it included: a reload never changes
/// the configuration under a message in progress.
#[derive(Clone)]
pub struct RolesSource(Arc<dyn Fn() -> Arc<Roles> + Send + Sync>);

impl RolesSource {
    /// The roles `current` gives at each new connection.
    pub fn new(current: impl Fn() -> Arc<Roles> + Send + Sync + 'static) -> Self {
        RolesSource(Arc::new(current))
    }

    /// The roles a connection opening now takes.
    pub fn current(&self) -> Arc<Roles> {
        (self.0)()
    }
}

impl From<Arc<Roles>> for RolesSource {
    /// The same roles for every connection.
    fn from(roles: Arc<Roles>) -> Self {
        RolesSource::new(move || roles.clone())
    }
}

/// The roles one connection took when it opened.
#[derive(Clone)]
struct Snapshot(Arc<Roles>);

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Roles")
    }
}

/// Which role handles the current message.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum Mode {
    #[default]
    Pass,
    Access,
    Reception,
    /// An authenticated sender outside our PEC domains: delivered as it
    /// is, less the fields only a provider writes.
    Strip,
}

/// The state of one SMTP session as the milter sees it.
#[derive(Debug, Default)]
pub struct Session {
    mode: Mode,
    auth_user: String,
    mail_from: String,
    rcpts: Vec<String>,
    /// The header block as submitted, CRLF.
    header: Vec<u8>,
    /// The body, in memory up to `[spool] memory_limit`, then on disk.
    body: Option<SpoolWriter>,
    /// Spooling the body failed (disk full, ...): temporary failure at EOM.
    spool_error: Option<String>,
    /// The stages the MTA agreed not to wait for a reply to (kept for the
    /// whole connection).
    noreply: ProtoOpts,
    /// The roles this connection took when it opened (kept for the whole
    /// connection).
    roles: Option<Snapshot>,
}

impl Session {
    fn reset(&mut self) {
        let noreply = self.noreply;
        let roles = self.roles.take();
        *self = Session {
            noreply,
            roles,
            ..Session::default()
        };
    }

    /// The roles of this connection: those it took when it opened (at
    /// negotiation), or those of `source` now, kept from here on.
    fn roles(&mut self, source: &RolesSource) -> Arc<Roles> {
        self.roles
            .get_or_insert_with(|| Snapshot(source.current()))
            .0
            .clone()
    }

    /// One header callback: the field appended to the header block.
    /// Folded values arrive with bare LF; the field is rebuilt with CRLF.
    fn add_header(&mut self, name: &[u8], value: &[u8]) {
        self.header.extend_from_slice(name);
        self.header.push(b':');
        let mut prev = 0u8;
        for &b in value {
            if b == b'\n' && prev != b'\r' {
                self.header.push(b'\r');
            }
            self.header.push(b);
            prev = b;
        }
        self.header.extend_from_slice(b"\r\n");
    }

    /// One body callback: the chunk appended to the spooled body (line
    /// ends made CRLF). Past the memory limit this writes to the spool
    /// file: small blocking writes into the page cache, as the MTA streams
    /// the body in. A failure is kept for end of message.
    fn add_body(&mut self, chunk: &[u8], spool: SpoolOptions) {
        let w = self.body.get_or_insert_with(|| SpoolWriter::new(spool));
        if let Err(e) = w.write(chunk) {
            tracing::error!(error = %e, "cannot spool the message body");
            self.spool_error = Some(e.to_string());
            self.body = None;
        }
    }

    /// At end of message: the header block and the finished body, or the
    /// text of the temporary failure when the body could not be spooled.
    fn take_message(&mut self) -> Result<(Vec<u8>, Spooled), String> {
        if let Some(e) = self.spool_error.take() {
            self.body = None;
            return Err(format!("cannot spool the message: {}", one_line(&e)));
        }
        let body = match self.body.take().map(SpoolWriter::finish).transpose() {
            Ok(b) => b.unwrap_or_default(),
            Err(e) => {
                tracing::error!(error = %e, "cannot spool the message body");
                return Err("cannot spool the message, try again later".to_owned());
            }
        };
        Ok((std::mem::take(&mut self.header), body))
    }

    /// `Continue`, or `Noreply` where the MTA does not wait for an answer.
    fn go_on(&self, stage: ProtoOpts) -> Status {
        if self.noreply.contains(stage) {
            Status::Noreply
        } else {
            Status::Continue
        }
    }
}

fn cstr(c: &CString) -> String {
    String::from_utf8_lossy(c.as_bytes()).into_owned()
}

/// `<a@b>` → `a@b`.
fn bare_path(arg: &str) -> String {
    let t = arg.trim();
    let t = t.strip_prefix('<').unwrap_or(t);
    let t = t.strip_suffix('>').unwrap_or(t);
    t.to_string()
}

/// What [`read_callbacks`] gives.
#[doc(hidden)]
#[derive(Debug)]
pub struct ReadMessage {
    /// What end of message hands to the roles.
    pub message: Original,
    /// The facts of its header.
    pub facts: Facts,
    /// Its header without the PEC marker fields (what an envelope carries).
    pub clean: Vec<u8>,
    /// The deletions the envelope rewrite, then the provider-only strip,
    /// would ask of the MTA.
    pub deletions: Vec<(String, i32)>,
}

/// What the milter reads from the MTA's header and body callbacks, with
/// no MTA: each `(name, value)` through the header callback's code, each
/// chunk through the body callback's, the message end of message hands to
/// the roles, the facts they read from its header (with the header block
/// an envelope carries) and the deletions both rewrites would ask of the
/// MTA. For the fuzz target (`fuzz/`) and its regression test.
#[doc(hidden)]
pub fn read_callbacks(
    fields: &[(&[u8], &[u8])],
    chunks: &[&[u8]],
    spool: SpoolOptions,
) -> Result<ReadMessage, String> {
    let mut s = Session {
        mode: Mode::Access,
        ..Session::default()
    };
    for (name, value) in fields {
        s.add_header(name, value);
    }
    for chunk in chunks {
        s.add_body(chunk, spool.clone());
    }
    let (header, body) = s.take_message()?;
    let (facts, clean) = Facts::read_clean(&header);
    let mut dels = deletions(&header, |name| !is_inherited(name, false));
    dels.extend(deletions(&header, |name| {
        PROVIDER_ONLY_HEADERS
            .iter()
            .any(|p| p.eq_ignore_ascii_case(name))
    }));
    Ok(ReadMessage {
        message: Original { header, body },
        facts,
        clean,
        deletions: dels,
    })
}

/// The callbacks, each a thin wrapper over a plain function. Each
/// connection takes its roles from `source` when it opens (see
/// [`RolesSource`]).
pub fn callbacks(source: impl Into<RolesSource>) -> Callbacks<Session> {
    let source: RolesSource = source.into();
    let (on_negotiate, on_mail, on_body, on_eom) =
        (source.clone(), source.clone(), source.clone(), source);
    Callbacks::new()
        .on_negotiate(move |cx, _, mta_opts| {
            let source = on_negotiate.clone();
            Box::pin(async move { negotiate(cx, mta_opts, &source).await })
        })
        .on_mail(move |cx, args| {
            let roles = cx.data.get_or_insert_with(Session::default).roles(&on_mail);
            Box::pin(async move { mail(cx, &args, &roles).await })
        })
        .on_rcpt(|cx, args| Box::pin(async move { rcpt(cx, &args) }))
        .on_header(|cx, name, value| Box::pin(async move { header(cx, &name, &value) }))
        .on_body(move |cx, chunk| {
            let spool = cx
                .data
                .get_or_insert_with(Session::default)
                .roles(&on_body)
                .access
                .spool
                .clone();
            Box::pin(async move { body(cx, chunk, spool) })
        })
        .on_eom(move |cx| {
            let roles = cx.data.as_mut().map(|s| s.roles(&on_eom));
            Box::pin(async move {
                match roles {
                    Some(roles) => eom(cx, &roles).await,
                    None => Status::Accept,
                }
            })
        })
        .on_abort(|cx| Box::pin(async move { abort(cx) }))
}

/// The stages whose answer is always "continue": no reply is sent when the
/// MTA supports that (fewer round trips per message: one per header field
/// and body chunk otherwise).
const NOREPLY_STAGES: ProtoOpts = ProtoOpts::NOREPLY_RCPT
    .union(ProtoOpts::NOREPLY_HEADER)
    .union(ProtoOpts::NOREPLY_BODY);

async fn negotiate(
    cx: &mut NegotiateContext<Session>,
    mta_opts: ProtoOpts,
    source: &RolesSource,
) -> Status {
    cx.requested_actions |= Actions::ADD_HEADER | Actions::CHANGE_HEADER | Actions::REPLACE_BODY;
    let noreply = mta_opts & NOREPLY_STAGES;
    cx.requested_opts |= ProtoOpts::LEADING_SPACE | noreply;
    let session = cx.data.get_or_insert_with(Session::default);
    session.noreply = noreply;
    // The connection's roles: taken now, kept to its end.
    session.roles = Some(Snapshot(source.current()));
    if let Ok(m) = CString::new("{auth_authen}") {
        cx.requested_macros.insert(MacroStage::Mail, m);
    }
    if let Ok(m) = CString::new("i") {
        cx.requested_macros.insert(MacroStage::Eom, m);
    }
    Status::Continue
}

async fn mail(cx: &mut Context<Session>, args: &[CString], roles: &Roles) -> Status {
    let ap = &roles.access;
    cx.data.get_or_insert_with(Session::default).reset();
    let auth = cx
        .macros
        .get(c"{auth_authen}")
        .map(|v| String::from_utf8_lossy(v.to_bytes()).into_owned())
        .filter(|v| !v.is_empty());
    let from = args
        .first()
        .map(|a| bare_path(&cstr(a)))
        .unwrap_or_default();
    let admission = match &auth {
        Some(user) => match ap.admit(user, &from).await {
            Ok(a) => Some(a),
            Err(e) => {
                roles
                    .metrics
                    .message(Role::Access, metrics::Outcome::Tempfail);
                tracing::warn!(login = %user, sender = %from, reason = %e,
                    "access point: cannot tell whether the login owns the sender: 451, nothing signed");
                let _ = cx.reply.set_error_reply(
                    "451",
                    Some("4.3.0"),
                    ["PEC: cannot check the sender's owner now, try again later"],
                );
                return Status::Tempfail;
            }
        },
        None => None,
    };
    let session = cx.data.get_or_insert_with(Session::default);
    match admission.zip(auth) {
        Some((Admission::Holder, user)) => {
            session.mode = Mode::Access;
            session.auth_user = user;
            session.mail_from = from;
            Status::Continue
        }
        Some((Admission::NotOwner, user)) => {
            roles
                .metrics
                .message(Role::Access, metrics::Outcome::Reject);
            tracing::warn!(login = %user, sender = %from,
                "access point: the login does not own the sender address: 553, nothing signed");
            let text = not_owner_text(&user, &from);
            let _ = cx
                .reply
                .set_error_reply("553", Some("5.7.1"), [text.as_str()]);
            Status::Reject
        }
        Some((Admission::Outsider, _)) => {
            // Authenticated, not PEC: passes, less the provider's fields.
            tracing::debug!(sender = %from, "authenticated non-holder: provider-only fields removed");
            session.mode = Mode::Strip;
            session.mail_from = from;
            Status::Continue
        }
        None if roles.reception.is_some() => {
            // Inbound: the reception point decides once the recipients are known.
            session.mode = Mode::Reception;
            session.mail_from = from;
            Status::Continue
        }
        None => {
            tracing::debug!(sender = %from, "inbound mail, no reception point: accepted unchanged");
            Status::Accept
        }
    }
}

fn rcpt(cx: &mut Context<Session>, args: &[CString]) -> Status {
    let Some(s) = cx.data.as_mut() else {
        return Status::Continue;
    };
    if let Some(r) = args.first() {
        s.rcpts.push(bare_path(&cstr(r)));
    }
    s.go_on(ProtoOpts::NOREPLY_RCPT)
}

fn header(cx: &mut Context<Session>, name: &CString, value: &CString) -> Status {
    let Some(s) = cx.data.as_mut() else {
        return Status::Continue;
    };
    s.add_header(name.as_bytes(), value.as_bytes());
    s.go_on(ProtoOpts::NOREPLY_HEADER)
}

fn body(cx: &mut Context<Session>, chunk: Bytes, spool: SpoolOptions) -> Status {
    let Some(s) = cx.data.as_mut() else {
        return Status::Continue;
    };
    if matches!(s.mode, Mode::Pass | Mode::Strip) || s.spool_error.is_some() {
        return s.go_on(ProtoOpts::NOREPLY_BODY);
    }
    s.add_body(&chunk, spool);
    s.go_on(ProtoOpts::NOREPLY_BODY)
}

fn abort(cx: &mut Context<Session>) -> Status {
    if let Some(s) = cx.data.as_mut() {
        s.reset();
    }
    Status::Continue
}

/// What an access-point decision tells the MTA.
fn access_outcome(o: &Outcome) -> metrics::Outcome {
    match o {
        Outcome::Rewrite { .. } | Outcome::Deliver { .. } => metrics::Outcome::Accept,
        Outcome::Discard { .. } => metrics::Outcome::Discard,
        Outcome::Reject { .. } => metrics::Outcome::Reject,
        Outcome::Tempfail { .. } => metrics::Outcome::Tempfail,
    }
}

/// What a reception-point decision tells the MTA: its rewrite is always
/// a busta di anomalia.
fn reception_outcome(o: &Outcome) -> metrics::Outcome {
    match o {
        Outcome::Rewrite { .. } => metrics::Outcome::Anomaly,
        Outcome::Deliver { .. } => metrics::Outcome::Accept,
        Outcome::Discard { .. } => metrics::Outcome::Discard,
        Outcome::Reject { .. } => metrics::Outcome::Reject,
        Outcome::Tempfail { .. } => metrics::Outcome::Tempfail,
    }
}

/// End of message: the role decides ([`decide`]), then its decision is
/// counted with the time the answer took. A decision the MTA could not be
/// given (the rewrite refused, say) counts as what it became: a 4xx.
async fn eom(cx: &mut EomContext<Session>, roles: &Roles) -> Status {
    let started = Instant::now();
    let (status, decided) = decide(cx, roles).await;
    if let Some((role, outcome)) = decided {
        let outcome = if status == Status::Tempfail {
            metrics::Outcome::Tempfail
        } else {
            outcome
        };
        roles.metrics.message(role, outcome);
        roles.metrics.eom_latency(role, started.elapsed());
    }
    status
}

/// The status to answer at end of message, and the role that decided it
/// with its outcome (`None`: mail that is not PEC, passed untouched).
async fn decide(
    cx: &mut EomContext<Session>,
    roles: &Roles,
) -> (Status, Option<(Role, metrics::Outcome)>) {
    let queue_id = cx
        .macros
        .get(c"i")
        .map(|v| String::from_utf8_lossy(v.to_bytes()).into_owned());
    let Some(s) = cx.data.as_mut() else {
        return (Status::Accept, None);
    };
    let mode = s.mode;
    s.mode = Mode::Pass;
    let role = match mode {
        Mode::Pass => return (Status::Accept, None),
        Mode::Strip => {
            let header = std::mem::take(&mut s.header);
            return (strip_provider_fields(cx, &header).await, None);
        }
        Mode::Access => Role::Access,
        Mode::Reception => Role::Reception,
    };
    let (header, body) = match s.take_message() {
        Ok(m) => m,
        Err(text) => {
            return (
                tempfail(cx, &text),
                Some((role, metrics::Outcome::Tempfail)),
            );
        }
    };
    let rcpts = std::mem::take(&mut s.rcpts);
    let mail_from = std::mem::take(&mut s.mail_from);
    let auth_user = std::mem::take(&mut s.auth_user);
    match (mode, &roles.reception) {
        (Mode::Access, _) => {
            let sub = Submission {
                queue_id,
                auth_user,
                mail_from,
                rcpts,
                message: Original { header, body },
            };
            let outcome = roles.access.process(&sub, Utc::now()).await;
            let decided = Some((Role::Access, access_outcome(&outcome)));
            if let (Outcome::Rewrite { message, .. }, Some(rp)) = (&outcome, &roles.reception)
                && let Err(status) = take_in_charge_here(cx, roles, rp, &sub, message).await
            {
                return (status, decided);
            }
            (apply(cx, &sub.message.header, outcome).await, decided)
        }
        (Mode::Reception, Some(rp)) => {
            let ours: Vec<String> = rcpts
                .into_iter()
                .filter(|r| roles.access.serves(r))
                .collect();
            if ours.is_empty() {
                // Not for us (local sendmail(1) mail to others): not PEC,
                // and never with the fields only a provider writes.
                return (strip_provider_fields(cx, &header).await, None);
            }
            let inbound = Inbound {
                queue_id,
                mail_from,
                rcpts: ours,
                message: Original { header, body },
            };
            let outcome = rp.process(&inbound, Utc::now()).await;
            let decided = Some((Role::Reception, reception_outcome(&outcome)));
            (apply(cx, &inbound.message.header, outcome).await, decided)
        }
        _ => (Status::Accept, None),
    }
}

/// Mail between holders of our own domains goes through full processing
/// (PEC-RULES §1.1): the envelope the access point just built never passes
/// our port 25, so the reception point takes it in charge here, for the
/// recipients in our domains (its checks, then the presa in carico to our
/// own service mailbox, once per envelope). `Err` is the status to answer
/// when that cannot be done now (4xx; the MTA's retry rebuilds the same
/// envelope and sends no second accettazione).
async fn take_in_charge_here(
    cx: &mut EomContext<Session>,
    roles: &Roles,
    rp: &ReceptionPoint,
    sub: &Submission,
    envelope: &SpooledMessage,
) -> Result<(), Status> {
    let ours: Vec<String> = sub
        .rcpts
        .iter()
        .filter(|r| roles.access.serves(r))
        .cloned()
        .collect();
    if ours.is_empty() {
        return Ok(());
    }
    let inbound = Inbound {
        queue_id: sub.queue_id.clone(),
        mail_from: sub.mail_from.clone(),
        rcpts: ours,
        message: Original {
            header: envelope.headers.concat().into_bytes(),
            body: envelope.body.clone(),
        },
    };
    match rp.process(&inbound, Utc::now()).await {
        Outcome::Deliver { .. } => Ok(()),
        Outcome::Tempfail { reason } => Err(tempfail(
            cx,
            &format!("PEC service temporarily unavailable: {}", one_line(&reason)),
        )),
        other => {
            // Our own envelope fails our own checks: a configuration
            // error (our certificate not in the index, or not trusted).
            // The delivery point will not certify it either.
            tracing::error!(outcome = ?other, recipients = ?inbound.rcpts,
                "our own envelope does not pass our reception checks: is our certificate in the providers' index and under [reception] trust?");
            Ok(())
        }
    }
}

/// Turn an outcome into milter actions and the final status. `original`
/// is the header block of the message as received.
async fn apply(cx: &mut EomContext<Session>, original: &[u8], outcome: Outcome) -> Status {
    match outcome {
        Outcome::Deliver { .. } => Status::Accept,
        Outcome::Rewrite {
            message,
            inherited,
            keep_message_id,
            ..
        } => match rewrite(
            cx,
            original,
            message.headers.get(inherited..).unwrap_or_default(),
            &message.body,
            keep_message_id,
        )
        .await
        {
            Ok(()) => Status::Accept,
            Err(e) => {
                tracing::error!(error = %e, "rewriting into the envelope failed");
                tempfail(cx, "PEC envelope could not be written, try again later")
            }
        },
        Outcome::Discard { .. } => Status::Discard,
        Outcome::Reject { code, xcode, text } => {
            let _ = cx
                .reply
                .set_error_reply(&code.to_string(), Some(&xcode), [text.as_str()]);
            Status::Reject
        }
        Outcome::Tempfail { reason } => tempfail(
            cx,
            &format!("PEC service temporarily unavailable: {}", one_line(&reason)),
        ),
    }
}

fn one_line(s: &str) -> String {
    let t: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(400)
        .collect();
    t
}

fn tempfail(cx: &mut EomContext<Session>, text: &str) -> Status {
    let _ = cx.reply.set_error_reply("451", Some("4.3.0"), [text]);
    Status::Tempfail
}

#[derive(Debug, thiserror::Error)]
enum RewriteError {
    #[error("milter action: {0}")]
    Action(#[from] indymilter::ActionError),
    #[error("reading the spooled envelope: {0}")]
    Spool(#[from] std::io::Error),
}

/// The fields of the header block `head` that `delete` names, as milter
/// deletions: (name, occurrence index of that name, from 1), the highest
/// index of a name first so that each deletion leaves the others' indices.
fn deletions(head: &[u8], delete: impl Fn(&str) -> bool) -> Vec<(String, i32)> {
    let mut seen: Vec<(String, i32)> = Vec::new();
    let mut out: Vec<(String, i32)> = Vec::new();
    for f in header_fields(head) {
        let lname = f.name.to_ascii_lowercase();
        let idx = match seen.iter_mut().find(|(n, _)| *n == lname) {
            Some((_, i)) => {
                *i += 1;
                *i
            }
            None => {
                seen.push((lname, 1));
                1
            }
        };
        if delete(f.name) {
            out.push((f.name.to_string(), idx));
        }
    }
    out.sort_by_key(|d| std::cmp::Reverse(d.1));
    out
}

/// Mail that is not PEC (an authenticated sender outside our PEC domains,
/// unauthenticated mail none of whose recipients is ours): the fields only
/// a provider writes are deleted (nobody else may emit them), the rest is
/// accepted; 4xx when the MTA refuses the deletions.
async fn strip_provider_fields(cx: &mut EomContext<Session>, head: &[u8]) -> Status {
    let removed = deletions(head, |name| {
        PROVIDER_ONLY_HEADERS
            .iter()
            .any(|p| p.eq_ignore_ascii_case(name))
    });
    if !removed.is_empty() {
        tracing::warn!(fields = ?removed, "provider-only header fields in mail that is not PEC: removed");
    }
    for (name, idx) in removed {
        if let Err(e) = cx.actions.change_header(name, idx, None::<CString>).await {
            tracing::error!(error = %e, "removing provider-only header fields failed");
            return tempfail(cx, "message could not be checked, try again later");
        }
    }
    Status::Accept
}

/// Delete the original's header fields (`head`: its header block) the
/// envelope does not inherit, add the envelope's own, replace the body
/// (streamed from the spool in pieces of at most 64 KiB).
async fn rewrite(
    cx: &EomContext<Session>,
    head: &[u8],
    new_headers: &[String],
    body: &Spooled,
    keep_message_id: bool,
) -> Result<(), RewriteError> {
    for (name, idx) in deletions(head, |name| !is_inherited(name, keep_message_id)) {
        cx.actions.change_header(name, idx, None::<CString>).await?;
    }
    for h in new_headers {
        let Some((name, value)) = h.split_once(':') else {
            continue;
        };
        // LEADING_SPACE is negotiated: the value carries its own space.
        let value = value.trim_end_matches("\r\n").replace("\r\n", "\n");
        cx.actions.add_header(name.to_string(), value).await?;
    }
    match body.as_slice() {
        Some(b) => cx.actions.replace_body(b).await?,
        None => {
            use tokio::io::AsyncReadExt;
            let mut r = body.async_reader();
            let mut buf = vec![0u8; crate::spool::CHUNK];
            loop {
                let n = r.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                cx.actions.replace_body(&buf[..n]).await?;
            }
        }
    }
    Ok(())
}
