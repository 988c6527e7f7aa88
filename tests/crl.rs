//! The CRLs of the providers' certificates' distribution points (issue 18,
//! README "Revocation"): served on loopback by a tiny HTTP server, fetched
//! by the cache (`pec_milter::crls`), checked by the reception point.
//!
//! - a revoked provider certificate: its envelope becomes an anomaly; a
//!   provider of the same CA that is not revoked gets its presa in carico;
//! - a distribution point whose CRL was never obtained: 4xx, then genuine
//!   once the refresher fetched it (learnt from the chain of the message);
//! - the server stopped: the last good copy stays in use, one warning and
//!   a counted failure; past nextUpdate it serves for `crl_grace`, then 4xx;
//! - a copy kept on disk serves after a restart (read and verified again);
//! - a CRL that its issuer did not sign is refused.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use chrono::Utc;
use common::crl_server::CrlServer;
use common::*;
use pec_milter::config::OrdinaryMail;
use pec_milter::crls::{CrlCache, CrlOptions};
use pec_milter::crypto::crl::{CrlLookup, CrlSource};
use pec_milter::crypto::pem::PemKey;
use pec_milter::crypto::verify::{TrustStore, VerifyAt};
use pec_milter::crypto::{DigestAlg, Pki};
use pec_milter::index::{IndexSource, ProviderIndex, ldif};
use pec_milter::log::NoLog;
use pec_milter::metrics::Metrics;
use pec_milter::pec::inspect::inspect;
use pec_milter::roles::reception::ReceptionPoint;
use pec_milter::roles::{Inbound, InjectError, Injector, Outcome};
use pec_milter::spool::SpoolOptions;
use pec_milter::state::embedded::EmbeddedStore;

const DAY: Duration = Duration::from_secs(86_400);

/// A provider CA whose certificates name `url` as their distribution
/// point: "Gamma" (revoked in the CRLs below) and "Delta" (never revoked).
struct Ca {
    pki: Pki,
    gamma: PemKey,
    delta: PemKey,
    delta_pem: Vec<u8>,
}

impl Ca {
    fn new(url: &str) -> Ca {
        let pki =
            Pki::generate_with_crl("Gamma PEC S.p.A.", "pec.b.test", 365, Some(url)).expect("pki");
        let gamma = pki.signing_key().expect("key");
        let (delta_pem, delta_key) = pki
            .issue_leaf_with_crl("Delta PEC S.p.A.", "pec.b.test", 365, Some(url))
            .expect("leaf");
        let delta = PemKey::from_pem(&delta_key, &delta_pem).expect("delta key");
        Ca {
            pki,
            gamma,
            delta,
            delta_pem,
        }
    }

    /// A CRL revoking Gamma, issued `age` ago, valid `valid` from then.
    fn crl(&self, age: Duration, valid: Duration) -> Vec<u8> {
        let this = SystemTime::now() - age;
        self.pki
            .crl(&[&self.pki.cert_pem], this, this + valid)
            .expect("crl")
    }
}

fn options(dir: Option<&std::path::Path>) -> CrlOptions {
    CrlOptions {
        fetch: true,
        dir: dir.map(|d| d.to_path_buf()),
        timeout: Duration::from_secs(5),
        refresh: DAY,
        grace: DAY,
    }
}

#[derive(Default)]
struct Recorder(Mutex<Vec<Vec<String>>>);

#[async_trait::async_trait]
impl Injector for Recorder {
    async fn inject(&self, _from: &str, to: &[String], _message: &[u8]) -> Result<(), InjectError> {
        self.0.lock().map_err(|e| e.to_string())?.push(to.to_vec());
        Ok(())
    }
}

struct Rig {
    rp: ReceptionPoint,
    injected: Arc<Recorder>,
    _dir: tempfile::TempDir,
}

/// A reception point whose index lists `signer_pem` as the provider of
/// pec.b.test, trusting `ca` with the distribution points' CRLs of `cache`.
async fn rig(ca: &Ca, signer_pem: &[u8], cache: &Arc<CrlCache>) -> Rig {
    let dir = tempfile::tempdir().expect("tmp");
    let ldif_path = dir.path().join("igpec.ldif");
    let entries = vec![entry(
        "Beta PEC S.p.A.",
        signer_pem,
        &["pec.b.test"],
        "ricevute@pec.b.test",
    )];
    std::fs::write(&ldif_path, ldif::write(&entries)).expect("write ldif");
    let index = Arc::new(ProviderIndex::new(IndexSource::Ldif(ldif_path)));
    index.refresh().await.expect("index loads");
    let source: Arc<dyn CrlSource> = cache.clone();
    let trust = TrustStore::from_pem_bytes(&[&ca.pki.ca_cert_pem])
        .expect("trust")
        .with_crl_source(source);
    let injected = Arc::new(Recorder::default());
    let rp = ReceptionPoint {
        provider: provider(),
        key: Arc::new(pki().pki.signing_key().expect("key")),
        digest: DigestAlg::Sha256,
        trust,
        verify_at: VerifyAt::Now,
        index,
        state: Arc::new(EmbeddedStore::open(&dir.path().join("state")).expect("state")),
        scanner: None,
        injector: injected.clone(),
        log: Arc::new(NoLog),
        ordinary_mail: OrdinaryMail::Anomaly,
        quarantine_dir: dir.path().join("quarantine"),
        retention_secs: 3600,
        spool: SpoolOptions {
            dir: dir.path().join("spool"),
            memory_limit: 1 << 20,
        },
    };
    Rig {
        rp,
        injected,
        _dir: dir,
    }
}

fn inbound(message: Vec<u8>) -> Inbound {
    Inbound {
        queue_id: Some("Q1".into()),
        mail_from: "posta-certificata@pec.b.test".into(),
        rcpts: vec!["mario@pec.acme.test".into()],
        message: pec_milter::roles::Original::from_bytes(&message),
    }
}

/// The reception point's decision on an envelope signed by `key`.
async fn decide(r: &Rig, key: &PemKey) -> Outcome {
    let env = envelope_from_b("ciao", key, "pec.b.test");
    r.rp.process(&inbound(env), Utc::now()).await
}

fn assert_revoked(o: &Outcome) {
    let Outcome::Rewrite { message, .. } = o else {
        panic!("expected an anomaly envelope, got {o:?}");
    };
    let out = message.to_bytes().expect("envelope bytes");
    let i = inspect(&out, &pki().trust, VerifyAt::Now).expect("inspect");
    assert_eq!(i.verifica_sicurezza.as_deref(), Some("errore"));
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("revoked"), "the reason names the revocation");
}

fn assert_taken_in_charge(r: &Rig, o: &Outcome) {
    assert!(matches!(o, Outcome::Deliver { .. }), "{o:?}");
    let sent = r.injected.0.lock().expect("sent").clone();
    assert_eq!(
        sent.last(),
        Some(&vec!["ricevute@pec.b.test".to_string()]),
        "the presa in carico goes to the sender's provider"
    );
}

fn is_tempfail(o: &Outcome, needle: &str) -> bool {
    matches!(o, Outcome::Tempfail { reason } if reason.contains(needle))
}

/// Log lines at WARN and above, captured for the current thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("log").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("log")).into_owned()
    }
    fn subscriber(&self) -> impl tracing::Subscriber + Send + Sync + use<> {
        let c = self.clone();
        tracing_subscriber::fmt()
            .with_writer(move || c.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish()
    }
}

#[tokio::test]
async fn a_revoked_provider_gets_an_anomaly_the_other_one_a_presa_in_carico() {
    let server = CrlServer::start();
    let ca = Ca::new(&server.url());
    server.serve(ca.crl(Duration::from_secs(60), DAY));
    let cache = Arc::new(CrlCache::new(options(None), Arc::new(Metrics::new())));
    // learnt from the index's certificates before any message
    let certs = [ca.pki.cert().expect("cert")];
    assert_eq!(cache.learn(&certs, &[ca.pki.ca_cert().expect("ca")]), 1);
    assert_eq!(cache.refresh_due().await, 0, "fetched");
    assert_eq!(server.hits(), 1);

    let r = rig(&ca, &ca.pki.cert_pem, &cache).await;
    assert_revoked(&decide(&r, &ca.gamma).await);
    assert!(
        r.injected.0.lock().expect("sent").is_empty(),
        "no presa in carico for a revoked provider"
    );

    let r = rig(&ca, &ca.delta_pem, &cache).await;
    let o = decide(&r, &ca.delta).await;
    assert_taken_in_charge(&r, &o);
    assert_eq!(server.hits(), 1, "the CRL came from the cache");
}

#[tokio::test]
async fn a_crl_never_obtained_is_a_4xx_until_the_refresher_fetches_it() {
    let server = CrlServer::start();
    let ca = Ca::new(&server.url());
    server.serve(ca.crl(Duration::from_secs(60), DAY));
    let metrics = Arc::new(Metrics::new());
    let cache = Arc::new(CrlCache::new(options(None), metrics));
    let r = rig(&ca, &ca.delta_pem, &cache).await;
    // nothing learnt: the chain of the message names the distribution point
    let o = decide(&r, &ca.delta).await;
    assert!(is_tempfail(&o, "revocation status"), "{o:?}");
    assert!(
        is_tempfail(&o, &server.url()),
        "the reason names the URL: {o:?}"
    );
    assert!(r.injected.0.lock().expect("sent").is_empty());
    assert_eq!(cache.urls(), vec![server.url()], "learnt from the chain");
    assert_eq!(cache.unavailable().len(), 1);
    // the refresher's pass
    assert_eq!(cache.refresh_due().await, 0);
    let o = decide(&r, &ca.delta).await;
    assert_taken_in_charge(&r, &o);
    assert!(cache.unavailable().is_empty());
    // a message that fails another check is an anomaly whatever the CRL:
    // not listed in the index (Gamma is not, in this rig)
    let cache2 = Arc::new(CrlCache::new(options(None), Arc::new(Metrics::new())));
    let r2 = rig(&ca, &ca.delta_pem, &cache2).await;
    let o = decide(&r2, &ca.gamma).await;
    assert!(matches!(o, Outcome::Rewrite { .. }), "{o:?}");
}

#[tokio::test]
async fn the_server_stopped_the_last_good_copy_serves_with_one_warning() {
    let log = Captured::default();
    let _guard = tracing::subscriber::set_default(log.subscriber());
    let mut server = CrlServer::start();
    let ca = Ca::new(&server.url());
    server.serve(ca.crl(Duration::from_secs(60), DAY));
    let metrics = Arc::new(Metrics::new());
    let cache = Arc::new(CrlCache::new(options(None), metrics.clone()));
    cache.want(&server.url(), &ca.pki.ca_cert().expect("ca"));
    assert_eq!(cache.refresh_due().await, 0);
    server.stop();

    let issuer = ca.pki.ca_cert().expect("ca");
    for _ in 0..2 {
        assert!(cache.refresh_one(&server.url(), &issuer).await.is_err());
    }
    let text = log.text();
    assert_eq!(
        text.matches("the last good copy stays in use").count(),
        1,
        "one warning, not one per try: {text}"
    );
    assert!(text.contains(&server.url()), "{text}");
    assert!(
        metrics
            .encode()
            .contains("pec_milter_crl_fetch_failures_total 2"),
        "{}",
        metrics.encode()
    );
    // the verdicts stand
    let r = rig(&ca, &ca.pki.cert_pem, &cache).await;
    assert_revoked(&decide(&r, &ca.gamma).await);
    let r = rig(&ca, &ca.delta_pem, &cache).await;
    let o = decide(&r, &ca.delta).await;
    assert_taken_in_charge(&r, &o);
}

#[tokio::test]
async fn past_next_update_the_copy_serves_for_the_grace_then_4xx() {
    let log = Captured::default();
    let _guard = tracing::subscriber::set_default(log.subscriber());
    let server = CrlServer::start();
    let ca = Ca::new(&server.url());
    // issued two days ago, nextUpdate an hour ago: the newest the server has
    server.serve(ca.crl(2 * DAY, DAY + DAY - Duration::from_secs(3600)));
    let cache = Arc::new(CrlCache::new(options(None), Arc::new(Metrics::new())));
    let issuer = ca.pki.ca_cert().expect("ca");
    cache.want(&server.url(), &issuer);
    assert_eq!(cache.refresh_due().await, 0, "taken: newer than none");
    match cache.lookup(&server.url(), &issuer) {
        CrlLookup::Usable { stale, .. } => assert!(stale),
        other => panic!("{other:?}"),
    }
    let r = rig(&ca, &ca.delta_pem, &cache).await;
    let o = decide(&r, &ca.delta).await;
    assert_taken_in_charge(&r, &o);
    // the server now fails: one warning says the copy is past nextUpdate
    server.serve_nothing();
    assert!(cache.refresh_one(&server.url(), &issuer).await.is_err());
    assert!(log.text().contains("usable_until"), "{}", log.text());
    // no grace: the copy is not usable any more
    cache.configure(CrlOptions {
        grace: Duration::ZERO,
        ..options(None)
    });
    let o = decide(&r, &ca.delta).await;
    assert!(is_tempfail(&o, "expired"), "{o:?}");
    assert_eq!(cache.unavailable().len(), 1);
}

#[tokio::test]
async fn a_copy_kept_on_disk_serves_after_a_restart() {
    let dir = tempfile::tempdir().expect("tmp");
    let mut server = CrlServer::start();
    let ca = Ca::new(&server.url());
    server.serve(ca.crl(Duration::from_secs(60), 7 * DAY));
    let issuer = ca.pki.ca_cert().expect("ca");
    {
        let first = CrlCache::new(options(Some(dir.path())), Arc::new(Metrics::new()));
        first.want(&server.url(), &issuer);
        assert_eq!(first.refresh_due().await, 0);
    }
    let kept: Vec<_> = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(kept.len(), 2, "{kept:?}");
    server.stop();

    // the restart: nothing to download (not due), the copy read and verified
    let cache = Arc::new(CrlCache::new(
        options(Some(dir.path())),
        Arc::new(Metrics::new()),
    ));
    assert_eq!(cache.load_dir(), 1);
    assert_eq!(
        cache.refresh_due().await,
        0,
        "not due yet: no download tried"
    );
    let r = rig(&ca, &ca.pki.cert_pem, &cache).await;
    assert_revoked(&decide(&r, &ca.gamma).await);
    let r = rig(&ca, &ca.delta_pem, &cache).await;
    let o = decide(&r, &ca.delta).await;
    assert_taken_in_charge(&r, &o);

    // a copy replaced on disk by another CA's CRL is not read
    let crl_file = std::fs::read_dir(dir.path())
        .expect("dir")
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "crl"))
        .expect("crl file");
    let now = SystemTime::now();
    std::fs::write(
        &crl_file,
        other().pki.crl(&[], now, now + DAY).expect("other crl"),
    )
    .expect("write");
    let cache = CrlCache::new(options(Some(dir.path())), Arc::new(Metrics::new()));
    assert_eq!(cache.load_dir(), 0);
}

#[tokio::test]
async fn a_crl_its_issuer_did_not_sign_is_refused() {
    let server = CrlServer::start();
    let ca = Ca::new(&server.url());
    let now = SystemTime::now();
    let metrics = Arc::new(Metrics::new());
    let cache = Arc::new(CrlCache::new(options(None), metrics.clone()));
    let issuer = ca.pki.ca_cert().expect("ca");
    cache.want(&server.url(), &issuer);
    // another CA's CRL at Gamma's distribution point; then one under the
    // same CA name, signed by another key
    let impostor = Pki::generate("Gamma PEC S.p.A.", "pec.b.test", 30).expect("impostor");
    for (crl, why) in [
        (other().pki.crl(&[], now, now + DAY).expect("crl"), "not by"),
        (
            impostor.crl(&[], now, now + DAY).expect("crl"),
            "does not verify",
        ),
    ] {
        server.serve(crl);
        let r = cache.refresh_one(&server.url(), &issuer).await;
        assert!(matches!(&r, Err(e) if e.to_string().contains(why)), "{r:?}");
    }
    assert!(
        metrics
            .encode()
            .contains("pec_milter_crl_fetch_failures_total 2")
    );
    let r = rig(&ca, &ca.delta_pem, &cache).await;
    let o = decide(&r, &ca.delta).await;
    assert!(is_tempfail(&o, "CRL refused"), "{o:?}");
}

/// A certificate past its notAfter (an old message checked at its signing
/// time) is not looked up: today's CRL need not list it any more.
#[tokio::test]
async fn an_expired_certificate_checked_at_signing_time_is_not_looked_up() {
    let server = CrlServer::start();
    // the provider certificate expires now (0 days), its CA a year later
    let pki = Pki::generate_with_crl("Gamma PEC S.p.A.", "pec.b.test", 0, Some(&server.url()))
        .expect("pki");
    let ca = Ca {
        delta_pem: pki.cert_pem.clone(),
        gamma: pki.signing_key().expect("key"),
        delta: pki.signing_key().expect("key"),
        pki,
    };
    std::thread::sleep(Duration::from_millis(1100));
    let cache = Arc::new(CrlCache::new(options(None), Arc::new(Metrics::new())));
    let mut r = rig(&ca, &ca.pki.cert_pem, &cache).await;
    r.rp.verify_at = VerifyAt::At(SystemTime::now() - Duration::from_secs(3600));
    let o = decide(&r, &ca.gamma).await;
    assert_taken_in_charge(&r, &o);
    assert!(cache.urls().is_empty(), "no distribution point asked");
    assert_eq!(server.hits(), 0);
}
