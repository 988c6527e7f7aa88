//! The daemon's counters and gauges (README, "Metrics and health"): typed
//! families registered once, written in the Prometheus text format
//! (version 0.0.4) by [`Metrics::encode`].
//!
//! Counting is thin and happens at the edges of the roles: the milter
//! counts what the access and reception points decided (and times their
//! end of message), the delivery point its answer per recipient, the
//! watched ports (`crate::health::Observed`) every receipt queued in the
//! outbox and every message injected, and each failed call of a
//! dependency. The gauges (outbox depth, tracked envelopes, index age,
//! dependencies up) are set when the endpoint is scraped (`crate::ops`);
//! the log sealer reports each of its passes.
//!
//! Every series a family can have is created at start with 0, so that a
//! scrape shows each one (and a rate over it starts at the first scrape).

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::pec::Tipo;
use crate::pec::mime::{header_fields, split_header_body};

/// The `Content-Type` of what [`Metrics::encode`] writes.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The upper bounds (seconds) of the end-of-message latency buckets: a
/// small submission takes milliseconds, a 100 MB one seconds.
const EOM_BUCKETS: [f64; 14] = [
    0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Which role handled a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Access,
    Reception,
    Delivery,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Access, Role::Reception, Role::Delivery];

    pub fn name(self) -> &'static str {
        match self {
            Role::Access => "access",
            Role::Reception => "reception",
            Role::Delivery => "delivery",
        }
    }
}

/// What the MTA was told about a message (the delivery point: about one
/// recipient).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Access: accepted, the busta di trasporto goes out (its accettazione
    /// queued). Reception: a genuine PEC message delivered as it is.
    /// Delivery: stored in the mailbox (ordinary mail included).
    Accept,
    /// Refused with a 5xx (access: at MAIL, a login that does not own the
    /// sender, or a formal refusal at SMTP level; reception: ordinary mail
    /// under `ordinary_mail = "reject"`, a virus in ordinary mail;
    /// delivery: the mailbox store refused it for good, with the
    /// errore-consegna issued when it was a busta di trasporto).
    Reject,
    /// A 4xx: a dependency failed, the MTA retries.
    Tempfail,
    /// Taken and dropped (access: a non-accettazione went to the holder;
    /// reception: a virus in a busta di trasporto, its presa in carico and
    /// rilevazione-virus sent).
    Discard,
    /// Wrapped in a busta di anomalia (reception; delivery: a forged PEC
    /// message stored wrapped).
    Anomaly,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Accept,
        Outcome::Reject,
        Outcome::Tempfail,
        Outcome::Discard,
        Outcome::Anomaly,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Accept => "accept",
            Outcome::Reject => "reject",
            Outcome::Tempfail => "tempfail",
            Outcome::Discard => "discard",
            Outcome::Anomaly => "anomaly",
        }
    }
}

/// Where a receipt or notice was counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Signed and written into the state store's outbox (with the record
    /// that says it exists).
    Queued,
    /// Handed to the MTA's reinjection listener (at once, or by the
    /// outbox pass).
    Injected,
}

impl Stage {
    pub const ALL: [Stage; 2] = [Stage::Queued, Stage::Injected];

    pub fn name(self) -> &'static str {
        match self {
            Stage::Queued => "queued",
            Stage::Injected => "injected",
        }
    }
}

/// The kind of a receipt or notice: its `X-Ricevuta` value (`other`:
/// none, or one PEC does not define).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Kind(pub Option<Tipo>);

impl Kind {
    /// Every kind a receipt can have (all `Tipo` values but
    /// `posta-certificata`, which is an envelope), and `other`.
    pub fn all() -> impl Iterator<Item = Kind> {
        Tipo::ALL
            .iter()
            .filter(|t| **t != Tipo::PostaCertificata)
            .map(|t| Kind(Some(*t)))
            .chain(std::iter::once(Kind(None)))
    }

    /// The kind named by an `X-Ricevuta` value.
    pub fn from_wire(value: &str) -> Kind {
        Kind(
            value
                .parse::<Tipo>()
                .ok()
                .filter(|t| *t != Tipo::PostaCertificata),
        )
    }

    /// The kind of a whole message: its `X-Ricevuta` header field (only
    /// the header block is read).
    pub fn of_message(message: &[u8]) -> Kind {
        let (head, _) = split_header_body(message);
        header_fields(head)
            .iter()
            .find(|f| f.is("X-Ricevuta"))
            .map_or(Kind(None), |f| Kind::from_wire(&f.unfolded()))
    }

    pub fn name(self) -> &'static str {
        self.0.map_or("other", Tipo::wire)
    }
}

macro_rules! label_value {
    ($($t:ty),+) => {$(
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
                fmt::Write::write_str(encoder, self.name())
            }
        }
    )+};
}
label_value!(Role, Outcome, Stage, Kind);

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct MessageLabels {
    role: Role,
    outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RoleLabels {
    role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReceiptLabels {
    kind: Kind,
    stage: Stage,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DependencyLabels {
    dependency: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VersionLabels {
    version: &'static str,
}

type GaugeF64 = Gauge<f64, AtomicU64>;

/// When the log sealer last succeeded, and first tried.
#[derive(Debug, Default)]
struct SealTimes {
    first_pass: Option<Instant>,
    last_ok: Option<Instant>,
}

/// The registry and its families; share it as an `Arc`.
pub struct Metrics {
    registry: Registry,
    messages: Family<MessageLabels, Counter>,
    eom_seconds: Family<RoleLabels, Histogram, fn() -> Histogram>,
    receipts: Family<ReceiptLabels, Counter>,
    dependency_errors: Family<DependencyLabels, Counter>,
    dependency_up: Family<DependencyLabels, Gauge>,
    outbox: Gauge,
    tracked: Gauge,
    index_age: GaugeF64,
    seal_age: GaugeF64,
    unsealed: Gauge,
    tsa_failures: Counter,
    seal: Mutex<SealTimes>,
    crl_fetch_failures: Counter,
    crl_oldest_age: GaugeF64,
    crl_unavailable: Gauge,
    index_signature_failures: Counter,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn eom_histogram() -> Histogram {
    Histogram::new(EOM_BUCKETS)
}

impl Metrics {
    /// Every family registered, every series of the fixed labels at 0.
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("pec_milter");
        let m = Metrics {
            messages: Family::default(),
            eom_seconds: Family::new_with_constructor(eom_histogram),
            receipts: Family::default(),
            dependency_errors: Family::default(),
            dependency_up: Family::default(),
            outbox: Gauge::default(),
            tracked: Gauge::default(),
            index_age: GaugeF64::default(),
            seal_age: GaugeF64::default(),
            unsealed: Gauge::default(),
            tsa_failures: Counter::default(),
            seal: Mutex::new(SealTimes::default()),
            crl_fetch_failures: Counter::default(),
            crl_oldest_age: GaugeF64::default(),
            crl_unavailable: Gauge::default(),
            index_signature_failures: Counter::default(),
            registry: Registry::default(),
        };
        let info: Family<VersionLabels, Gauge> = Family::default();
        info.get_or_create(&VersionLabels {
            version: env!("CARGO_PKG_VERSION"),
        })
        .set(1);
        registry.register("build_info", "The running version (always 1)", info);
        registry.register(
            "messages",
            "Messages by role and by what the MTA was told (the delivery point: one per recipient)",
            m.messages.clone(),
        );
        registry.register(
            "eom_duration_seconds",
            "Time from the end of the message to the answer, by role (the milter's end of message; the delivery point's whole LMTP transaction)",
            m.eom_seconds.clone(),
        );
        registry.register(
            "receipts",
            "Receipts and notices by kind (X-Ricevuta) and stage: queued = signed and written into the outbox, injected = handed to the MTA",
            m.receipts.clone(),
        );
        registry.register(
            "dependency_errors",
            "Failed calls to a dependency",
            m.dependency_errors.clone(),
        );
        registry.register(
            "dependency_up",
            "1 when the last call to the dependency succeeded (or none was made yet), 0 when it failed",
            m.dependency_up.clone(),
        );
        registry.register(
            "outbox_messages",
            "Receipts and notices waiting in the state store's outbox (every node's, on a shared store)",
            m.outbox.clone(),
        );
        registry.register(
            "tracked_envelopes",
            "Envelopes still waiting for a recipient's outcome: the 12 h / 24 h notices pending",
            m.tracked.clone(),
        );
        registry.register(
            "index_age_seconds",
            "Seconds since the providers' index copy in use was loaded (-1: none loaded)",
            m.index_age.clone(),
        );
        registry.register(
            "log_seal_age_seconds",
            "Seconds since the log sealer last left no closed file unsealed (since its first pass when none did; -1: no TSA configured)",
            m.seal_age.clone(),
        );
        registry.register(
            "log_unsealed_files",
            "Closed message log files waiting for their RFC 3161 seal after the sealer's last pass",
            m.unsealed.clone(),
        );
        registry.register(
            "tsa_failures",
            "Seal passes that failed (TSA unreachable or its reply refused)",
            m.tsa_failures.clone(),
        );
        registry.register(
            "crl_fetch_failures",
            "CRL downloads of the providers' certificates' distribution points that failed or were refused (the last good copy stays in use)",
            m.crl_fetch_failures.clone(),
        );
        registry.register(
            "crl_oldest_age_seconds",
            "Seconds since the thisUpdate of the oldest CRL in use (-1: none held)",
            m.crl_oldest_age.clone(),
        );
        registry.register(
            "crl_unavailable",
            "CRL distribution points with no usable CRL (never fetched, or past nextUpdate + crl_grace): their providers' messages are answered 4xx",
            m.crl_unavailable.clone(),
        );
        registry.register(
            "index_signature_failures",
            "Loads of the signed providers' index whose signature did not verify (the copy in use was kept)",
            m.index_signature_failures.clone(),
        );
        for role in Role::ALL {
            for outcome in Outcome::ALL {
                drop(m.messages.get_or_create(&MessageLabels { role, outcome }));
            }
            drop(m.eom_seconds.get_or_create(&RoleLabels { role }));
        }
        for kind in Kind::all() {
            for stage in Stage::ALL {
                drop(m.receipts.get_or_create(&ReceiptLabels { kind, stage }));
            }
        }
        m.index_age.set(-1.0);
        m.seal_age.set(-1.0);
        m.crl_oldest_age.set(-1.0);
        Metrics { registry, ..m }
    }

    /// A message `role` decided, with what the MTA was told.
    pub fn message(&self, role: Role, outcome: Outcome) {
        self.messages
            .get_or_create(&MessageLabels { role, outcome })
            .inc();
    }

    /// How long `role` took from the end of a message to its answer.
    pub fn eom_latency(&self, role: Role, took: Duration) {
        self.eom_seconds
            .get_or_create(&RoleLabels { role })
            .observe(took.as_secs_f64());
    }

    /// A receipt or notice of `kind` reached `stage`.
    pub fn receipt(&self, kind: Kind, stage: Stage) {
        self.receipts
            .get_or_create(&ReceiptLabels { kind, stage })
            .inc();
    }

    /// Make the series of `dependency` exist (0 errors, up).
    pub fn dependency_known(&self, dependency: &'static str) {
        drop(
            self.dependency_errors
                .get_or_create(&DependencyLabels { dependency }),
        );
        self.dependency_up
            .get_or_create(&DependencyLabels { dependency })
            .set(1);
    }

    /// A call to `dependency` failed.
    pub fn dependency_error(&self, dependency: &'static str) {
        self.dependency_errors
            .get_or_create(&DependencyLabels { dependency })
            .inc();
    }

    /// Whether `dependency` is up now (set when scraped).
    pub fn set_dependency_up(&self, dependency: &'static str, up: bool) {
        self.dependency_up
            .get_or_create(&DependencyLabels { dependency })
            .set(i64::from(up));
    }

    /// The outbox depth and the tracked envelopes, as the state store
    /// counts them now.
    pub fn set_state_depth(&self, outbox: u64, tracked: u64) {
        self.outbox.set(i64::try_from(outbox).unwrap_or(i64::MAX));
        self.tracked.set(i64::try_from(tracked).unwrap_or(i64::MAX));
    }

    /// The age of the providers' index copy in use (`None`: none loaded).
    pub fn set_index_age(&self, age: Option<Duration>) {
        self.index_age
            .set(age.map_or(-1.0, |a| a.as_secs_f64().floor()));
    }

    /// A CRL download failed or was refused.
    pub fn crl_fetch_failure(&self) {
        self.crl_fetch_failures.inc();
    }

    /// The age of the oldest CRL in use (`None`: none held) and the
    /// distribution points without a usable one.
    pub fn set_crls(&self, oldest: Option<Duration>, unavailable: usize) {
        self.crl_oldest_age
            .set(oldest.map_or(-1.0, |a| a.as_secs_f64().floor()));
        self.crl_unavailable
            .set(i64::try_from(unavailable).unwrap_or(i64::MAX));
    }

    /// A load of the signed providers' index whose signature did not verify.
    pub fn index_signature_failure(&self) {
        self.index_signature_failures.inc();
    }

    /// One pass of the log sealer: `Ok` when no closed file is left
    /// unsealed, `Err(waiting)` when the TSA failed with `waiting` files
    /// still unsealed.
    pub fn seal_pass(&self, result: Result<(), usize>) {
        let now = Instant::now();
        let mut t = self.seal.lock().unwrap_or_else(|e| e.into_inner());
        t.first_pass.get_or_insert(now);
        match result {
            Ok(()) => {
                t.last_ok = Some(now);
                self.unsealed.set(0);
            }
            Err(waiting) => {
                self.tsa_failures.inc();
                self.unsealed
                    .set(i64::try_from(waiting).unwrap_or(i64::MAX));
            }
        }
    }

    /// Every family in the Prometheus text format (0.0.4).
    pub fn encode(&self) -> String {
        {
            let t = self.seal.lock().unwrap_or_else(|e| e.into_inner());
            let age = t
                .last_ok
                .or(t.first_pass)
                .map_or(-1.0, |since| since.elapsed().as_secs_f64().floor());
            self.seal_age.set(age);
        }
        let mut out = String::new();
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            // writing into a String does not fail; say so if it ever does
            tracing::error!(error = %e, "metrics: encoding failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// One sample line: name, labels, value.
    type Sample = (String, BTreeMap<String, String>, f64);

    /// A reader of the text format, strict enough to catch a malformed
    /// line: `# HELP` / `# TYPE` lines, then `name{l="v",...} value`.
    fn parse(text: &str) -> (Vec<Sample>, BTreeMap<String, String>) {
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, ty) = rest.split_once(' ').expect("TYPE name type");
                types.insert(name.to_string(), ty.to_string());
                continue;
            }
            if line.starts_with("# HELP ") || line.is_empty() {
                continue;
            }
            assert!(!line.starts_with('#'), "unexpected comment: {line}");
            let (series, value) = line.rsplit_once(' ').expect("series value");
            let value: f64 = value.parse().expect("a number");
            let (name, labels) = match series.split_once('{') {
                Some((n, l)) => {
                    let l = l.strip_suffix('}').expect("closing brace");
                    let mut map = BTreeMap::new();
                    for pair in l.split(',').filter(|p| !p.is_empty()) {
                        let (k, v) = pair.split_once('=').expect("label=value");
                        let v = v
                            .strip_prefix('"')
                            .and_then(|v| v.strip_suffix('"'))
                            .expect("quoted value");
                        map.insert(k.to_string(), v.to_string());
                    }
                    (n.to_string(), map)
                }
                None => (series.to_string(), BTreeMap::new()),
            };
            assert!(
                name.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
                "{name}"
            );
            samples.push((name, labels, value));
        }
        (samples, types)
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && l.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.2)
    }

    #[test]
    fn every_family_is_exposed_with_its_labels_at_zero() {
        let m = Metrics::new();
        m.dependency_known("clamd");
        let (samples, types) = parse(&m.encode());
        for (name, ty) in [
            ("pec_milter_messages_total", "counter"),
            ("pec_milter_receipts_total", "counter"),
            ("pec_milter_dependency_errors_total", "counter"),
            ("pec_milter_tsa_failures_total", "counter"),
            ("pec_milter_crl_fetch_failures_total", "counter"),
            ("pec_milter_index_signature_failures_total", "counter"),
            ("pec_milter_crl_oldest_age_seconds", "gauge"),
            ("pec_milter_crl_unavailable", "gauge"),
            ("pec_milter_eom_duration_seconds", "histogram"),
            ("pec_milter_dependency_up", "gauge"),
            ("pec_milter_outbox_messages", "gauge"),
            ("pec_milter_tracked_envelopes", "gauge"),
            ("pec_milter_index_age_seconds", "gauge"),
            ("pec_milter_log_seal_age_seconds", "gauge"),
            ("pec_milter_log_unsealed_files", "gauge"),
            ("pec_milter_build_info", "gauge"),
        ] {
            assert_eq!(
                types.get(name).map(String::as_str),
                Some(ty),
                "{name}: {types:?}"
            );
        }
        for role in ["access", "reception", "delivery"] {
            for outcome in ["accept", "reject", "tempfail", "discard", "anomaly"] {
                assert_eq!(
                    value(
                        &samples,
                        "pec_milter_messages_total",
                        &[("role", role), ("outcome", outcome)]
                    ),
                    Some(0.0),
                    "{role} {outcome}"
                );
            }
            assert_eq!(
                value(
                    &samples,
                    "pec_milter_eom_duration_seconds_count",
                    &[("role", role)]
                ),
                Some(0.0)
            );
        }
        for kind in [
            "accettazione",
            "non-accettazione",
            "presa-in-carico",
            "avvenuta-consegna",
            "errore-consegna",
            "preavviso-errore-consegna",
            "rilevazione-virus",
            "other",
        ] {
            for stage in ["queued", "injected"] {
                assert_eq!(
                    value(
                        &samples,
                        "pec_milter_receipts_total",
                        &[("kind", kind), ("stage", stage)]
                    ),
                    Some(0.0),
                    "{kind} {stage}"
                );
            }
        }
        assert!(
            !samples
                .iter()
                .any(|(_, l, _)| l.get("kind").map(String::as_str) == Some("posta-certificata")),
            "an envelope is no receipt"
        );
        assert_eq!(
            value(
                &samples,
                "pec_milter_dependency_errors_total",
                &[("dependency", "clamd")]
            ),
            Some(0.0)
        );
        assert_eq!(
            value(
                &samples,
                "pec_milter_dependency_up",
                &[("dependency", "clamd")]
            ),
            Some(1.0)
        );
        assert_eq!(
            value(&samples, "pec_milter_index_age_seconds", &[]),
            Some(-1.0)
        );
        assert_eq!(
            value(&samples, "pec_milter_log_seal_age_seconds", &[]),
            Some(-1.0)
        );
        assert_eq!(
            value(
                &samples,
                "pec_milter_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))]
            ),
            Some(1.0)
        );
    }

    #[test]
    fn counts_show_where_they_were_made() {
        let m = Metrics::new();
        m.message(Role::Access, Outcome::Accept);
        m.message(Role::Access, Outcome::Accept);
        m.message(Role::Delivery, Outcome::Anomaly);
        m.eom_latency(Role::Access, Duration::from_millis(3));
        m.eom_latency(Role::Access, Duration::from_secs(2));
        m.receipt(Kind::from_wire("accettazione"), Stage::Queued);
        m.receipt(Kind::from_wire(" Presa-In-Carico "), Stage::Injected);
        m.receipt(Kind::from_wire("posta-certificata"), Stage::Injected);
        m.dependency_error("state-store");
        m.set_dependency_up("state-store", false);
        m.set_state_depth(3, 7);
        m.set_index_age(Some(Duration::from_millis(61_500)));
        m.seal_pass(Err(2));
        let (s, _) = parse(&m.encode());
        let v = |name: &str, labels: &[(&str, &str)]| value(&s, name, labels);
        assert_eq!(
            v(
                "pec_milter_messages_total",
                &[("role", "access"), ("outcome", "accept")]
            ),
            Some(2.0)
        );
        assert_eq!(
            v(
                "pec_milter_messages_total",
                &[("role", "delivery"), ("outcome", "anomaly")]
            ),
            Some(1.0)
        );
        let eom = |suffix: &str, extra: &[(&str, &str)]| {
            let mut l = vec![("role", "access")];
            l.extend_from_slice(extra);
            v(&format!("pec_milter_eom_duration_seconds{suffix}"), &l)
        };
        assert_eq!(eom("_count", &[]), Some(2.0));
        assert_eq!(eom("_bucket", &[("le", "0.005")]), Some(1.0));
        assert_eq!(eom("_bucket", &[("le", "1")]), Some(1.0));
        assert_eq!(eom("_bucket", &[("le", "2.5")]), Some(2.0));
        assert_eq!(eom("_bucket", &[("le", "+Inf")]), Some(2.0));
        assert!((eom("_sum", &[]).unwrap_or(0.0) - 2.003).abs() < 1e-9);
        assert_eq!(
            v(
                "pec_milter_receipts_total",
                &[("kind", "accettazione"), ("stage", "queued")]
            ),
            Some(1.0)
        );
        assert_eq!(
            v(
                "pec_milter_receipts_total",
                &[("kind", "presa-in-carico"), ("stage", "injected")]
            ),
            Some(1.0)
        );
        assert_eq!(
            v(
                "pec_milter_receipts_total",
                &[("kind", "other"), ("stage", "injected")]
            ),
            Some(1.0),
            "an X-Ricevuta PEC does not define is `other`"
        );
        assert_eq!(
            v(
                "pec_milter_dependency_errors_total",
                &[("dependency", "state-store")]
            ),
            Some(1.0)
        );
        assert_eq!(
            v("pec_milter_dependency_up", &[("dependency", "state-store")]),
            Some(0.0)
        );
        assert_eq!(v("pec_milter_outbox_messages", &[]), Some(3.0));
        assert_eq!(v("pec_milter_tracked_envelopes", &[]), Some(7.0));
        assert_eq!(v("pec_milter_index_age_seconds", &[]), Some(61.0));
        assert_eq!(v("pec_milter_tsa_failures_total", &[]), Some(1.0));
        assert_eq!(v("pec_milter_log_unsealed_files", &[]), Some(2.0));
        assert_eq!(
            v("pec_milter_log_seal_age_seconds", &[]),
            Some(0.0),
            "failed at its first pass: counted from then"
        );
        m.seal_pass(Ok(()));
        let (s, _) = parse(&m.encode());
        assert_eq!(value(&s, "pec_milter_log_unsealed_files", &[]), Some(0.0));
        assert_eq!(value(&s, "pec_milter_tsa_failures_total", &[]), Some(1.0));
    }

    #[test]
    fn the_kind_of_a_message_is_its_x_ricevuta() {
        let k = |m: &[u8]| Kind::of_message(m).name();
        assert_eq!(
            k(b"From: a\r\nX-Ricevuta: avvenuta-consegna\r\n\r\nX-Ricevuta: accettazione\r\n"),
            "avvenuta-consegna"
        );
        assert_eq!(
            k(b"x-ricevuta:\r\n errore-consegna\r\nSubject: s\r\n\r\nbody"),
            "errore-consegna"
        );
        assert_eq!(
            k(b"Subject: s\r\n\r\nX-Ricevuta: accettazione\r\n"),
            "other"
        );
        assert_eq!(k(b"X-Trasporto: posta-certificata\r\n\r\n"), "other");
        assert_eq!(k(b""), "other");
    }
}
