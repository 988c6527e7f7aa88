//! The PKCS#11 backend on a real SoftHSM2 token: signing (alone, from
//! threads, from the async runtime), every failure named in plain words,
//! the token removed and restored under a live key, and the access point
//! answering a temporary failure (and sending nothing) while the token is
//! gone. Each test makes its own token (labels are unique; slot ids are
//! random, so tokens are found by label) in one temporary SoftHSM2 token
//! directory for this test binary (SOFTHSM2_CONF).
//!
//! When /usr/lib/softhsm/libsofthsm2.so is absent, each test fails under CI
//! (`CI=true`) and is skipped with a message elsewhere (`common::require`;
//! integration/deps.sh installs softhsm2 and opensc).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use common::*;
use pec_milter::crypto::pkcs11::{PinSource, Pkcs11Error, Pkcs11Key, Pkcs11Options};
use pec_milter::crypto::{CryptoError, DigestAlg, SigningKey, sign_content};
use pec_milter::pec::TipoDestinatario;
use pec_milter::pec::build::{Signer, build_busta_trasporto};

const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const PIN: &str = "4711-pec";
const SO_PIN: &str = "12345678";

/// The SoftHSM2 environment of this test binary, and the lock that makes
/// the tests take turns: SoftHSM2 is one library instance per process.
struct Hsm {
    dir: tempfile::TempDir,
}

static HSM: OnceLock<Hsm> = OnceLock::new();
static TURN: Mutex<()> = Mutex::new(());

/// The lock and the environment, or None (test skipped) without SoftHSM2
/// outside CI; under CI, no SoftHSM2 fails the test.
fn hsm() -> Option<(MutexGuard<'static, ()>, &'static Hsm)> {
    if !require(
        &format!("SoftHSM2 ({MODULE}; apt-get install softhsm2 opensc)"),
        Path::new(MODULE).exists(),
    ) {
        return None;
    }
    let guard = TURN.lock().unwrap_or_else(|p| p.into_inner());
    // The backend's log lines, shown with a failing test's output.
    common::test_log();
    let hsm = HSM.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::create_dir_all(dir.path().join("tokens")).expect("tokens dir");
        let conf = dir.path().join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n",
                dir.path().join("tokens").display()
            ),
        )
        .expect("conf");
        // SAFETY: set once, while holding TURN; every test of this binary
        // takes TURN before anything reads the environment for SoftHSM2.
        unsafe { std::env::set_var("SOFTHSM2_CONF", &conf) };
        Hsm { dir }
    });
    Some((guard, hsm))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run tool");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A token `label` holding the test PKI's provider key (id 01, label
/// pec-sign) and, with `with_cert`, its certificate object (same id and
/// label). Returns the token directory's entries before and after, so a
/// test can find the files of this token.
struct Token {
    label: String,
    dir: PathBuf,
    files: tempfile::TempDir,
}

impl Token {
    fn new(hsm: &Hsm, label: &str, with_cert: bool) -> Token {
        let tokens = hsm.dir.path().join("tokens");
        let before: Vec<_> = entries(&tokens);
        run(Command::new("softhsm2-util").args([
            "--init-token",
            "--free",
            "--label",
            label,
            "--so-pin",
            SO_PIN,
            "--pin",
            PIN,
        ]));
        let dir = entries(&tokens)
            .into_iter()
            .find(|e| !before.contains(e))
            .expect("the new token's directory");
        let files = tempfile::tempdir().expect("tmp");
        let key = files.path().join("key.pem");
        std::fs::write(&key, &pki().pki.key_pem).expect("key");
        run(Command::new("softhsm2-util")
            .args(["--import"])
            .arg(&key)
            .args([
                "--token", label, "--label", "pec-sign", "--id", "01", "--pin", PIN,
            ]));
        if with_cert {
            let der = pki().pki.cert().expect("cert").to_der().expect("der");
            let cert = files.path().join("cert.der");
            std::fs::write(&cert, der).expect("cert");
            run(Command::new("pkcs11-tool")
                .args([
                    "--module",
                    MODULE,
                    "--token-label",
                    label,
                    "--login",
                    "--pin",
                    PIN,
                ])
                .args(["--write-object"])
                .arg(&cert)
                .args(["--type", "cert", "--id", "01", "--label", "pec-sign"]));
        }
        Token {
            label: label.to_string(),
            dir,
            files,
        }
    }

    fn pin_file(&self, pin: &str) -> PathBuf {
        let p = self.files.path().join(format!("pin-{}", pin.len()));
        std::fs::write(&p, format!("{pin}\n")).expect("pin");
        p
    }

    fn options(&self) -> Pkcs11Options {
        let mut o = Pkcs11Options::new(MODULE, &self.label, PinSource::File(self.pin_file(PIN)));
        o.key_label = Some("pec-sign".into());
        o.key_id = Some(vec![1]);
        o
    }

    fn delete(&self) {
        run(Command::new("softhsm2-util").args(["--delete-token", "--token", &self.label]));
    }
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    v.sort();
    v
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in entries(from) {
        std::fs::copy(&e, to.join(e.file_name().expect("name"))).expect("copy");
    }
}

/// A busta di trasporto signed by `key`, checked with `openssl cms -verify`.
fn signed_envelope_verifies(key: &dyn SigningKey) {
    let tx = transaction(
        "Convocazione",
        &[("anna.bianchi@pec.other.test", TipoDestinatario::Certificato)],
    );
    let orig = original("Convocazione", "anna.bianchi@pec.other.test");
    let m = build_busta_trasporto(
        &provider(),
        &tx,
        &orig,
        when(),
        Signer {
            key,
            digest: DigestAlg::Sha256,
        },
    )
    .expect("envelope");
    openssl_verify(&m.to_bytes(), pki().ca_file.path()).expect("openssl cms -verify");
}

#[test]
fn a_token_key_signs_envelopes_that_openssl_verifies() {
    let Some((_turn, hsm)) = hsm() else { return };
    let t = Token::new(hsm, "pec-sign-basic", true);
    let mut o = t.options();
    o.pool_size = 2;
    let key = Pkcs11Key::open(o).expect("open");
    let info = key.info();
    assert_eq!(info.key_bits, 2048);
    assert_eq!(info.key_id, "01");
    assert_eq!(info.key_label, "pec-sign");
    assert!(info.cert_origin.contains("token"), "{}", info.cert_origin);
    assert_eq!(
        key.certificate_der(),
        pki().pki.cert().expect("cert").to_der().expect("der")
    );
    signed_envelope_verifies(&key);
    // PKCS#1 v1.5 is deterministic: the token's signature is the PEM key's.
    assert_eq!(
        key.sign(DigestAlg::Sha256, b"same input").expect("token"),
        pki()
            .key
            .sign(DigestAlg::Sha256, b"same input")
            .expect("pem")
    );
    // SHA-1 too (old peers), and the self-test of both.
    key.self_test(DigestAlg::Sha1).expect("sha1 self-test");
    let cms = sign_content(&key, DigestAlg::Sha1, b"x", SystemTime::now()).expect("cms");
    assert_eq!(cms[0], 0x30);
    // Nothing about the PIN in the Debug output.
    let dbg = format!("{key:?}");
    assert!(!dbg.contains(PIN), "{dbg}");
    assert!(dbg.contains("pin_file"), "{dbg}");
}

#[test]
fn raw_rsa_pkcs_over_a_digest_info_gives_the_same_signatures() {
    let Some((_turn, hsm)) = hsm() else { return };
    let t = Token::new(hsm, "pec-sign-raw", true);
    let mut o = t.options();
    o.raw_rsa = true;
    let raw = Pkcs11Key::open(o).expect("open");
    assert!(
        raw.info().mechanism.starts_with("CKM_RSA_PKCS"),
        "{}",
        raw.info().mechanism
    );
    signed_envelope_verifies(&raw);
    raw.self_test(DigestAlg::Sha1).expect("sha1");
    // PKCS#1 v1.5 is deterministic: the same bytes as the PEM key's.
    for alg in [DigestAlg::Sha256, DigestAlg::Sha1] {
        assert_eq!(
            raw.sign(alg, b"same input").expect("token"),
            pki().key.sign(alg, b"same input").expect("pem"),
            "{alg}"
        );
    }
}

#[test]
fn the_certificate_can_come_from_a_file_and_the_key_by_id_alone() {
    let Some((_turn, hsm)) = hsm() else { return };
    let t = Token::new(hsm, "pec-sign-file", false);
    let cert = t.files.path().join("cert.pem");
    std::fs::write(&cert, &pki().pki.cert_pem).expect("cert");
    let mut o = t.options();
    o.key_label = None;
    o.cert_file = Some(cert);
    let key = Pkcs11Key::open(o).expect("open");
    assert!(key.info().cert_origin.starts_with("cert_file"));
    signed_envelope_verifies(&key);
}

fn open_err(o: Pkcs11Options) -> Pkcs11Error {
    match Pkcs11Key::open(o) {
        Ok(_) => panic!("opened, but an error was expected"),
        Err(e) => e,
    }
}

#[test]
fn every_failure_names_its_cause() {
    let Some((_turn, hsm)) = hsm() else { return };
    let t = Token::new(hsm, "pec-sign-errors", false);

    let mut o = t.options();
    o.module = "/usr/lib/softhsm/no-such-module.so".into();
    let e = open_err(o);
    assert!(matches!(e, Pkcs11Error::ModuleNotFound(_)), "{e}");
    assert!(e.to_string().contains("not found"), "{e}");

    let mut o = t.options();
    o.module = "/etc/hostname".into();
    let e = open_err(o);
    assert!(matches!(e, Pkcs11Error::ModuleNotLoadable { .. }), "{e}");

    let mut o = t.options();
    o.token_label = "no-such-token".into();
    let e = open_err(o);
    assert!(matches!(e, Pkcs11Error::NoToken { .. }), "{e}");
    assert!(
        e.to_string().contains("pec-sign-errors"),
        "lists present tokens: {e}"
    );

    let mut o = t.options();
    o.pin = PinSource::File(t.pin_file("0000-wrong"));
    let e = open_err(o);
    assert!(matches!(e, Pkcs11Error::PinIncorrect { .. }), "{e}");
    assert!(e.to_string().contains("CKR_PIN_INCORRECT"), "{e}");
    assert!(
        !e.to_string().contains("0000-wrong"),
        "the PIN is shown: {e}"
    );

    let mut o = t.options();
    o.key_label = Some("no-such-key".into());
    let e = open_err(o);
    assert!(matches!(e, Pkcs11Error::NoKey { .. }), "{e}");
    assert!(e.to_string().contains("no-such-key"), "{e}");

    // No certificate object on this token, and no cert_file.
    let e = open_err(t.options());
    assert!(matches!(e, Pkcs11Error::NoCertificate { .. }), "{e}");

    // A certificate of another key.
    let (other, _) = pki()
        .pki
        .issue_leaf("Other PEC", "pec.other.test", 30)
        .expect("leaf");
    let f = t.files.path().join("other.pem");
    std::fs::write(&f, other).expect("write");
    let mut o = t.options();
    o.cert_file = Some(f);
    let e = open_err(o);
    assert!(matches!(e, Pkcs11Error::KeyMismatch { .. }), "{e}");

    // The error reaches callers as a CryptoError naming PKCS#11.
    let c = CryptoError::from(Pkcs11Error::PinLocked { label: "x".into() });
    assert!(c.to_string().starts_with("PKCS#11: "), "{c}");
}

/// A reload opens the new key while the old one still signs for the
/// messages in progress: the library is one per process, so neither the
/// old key going away nor a new one failing to open (a wrong label in the
/// new configuration) may end the sessions of the key that stays.
#[test]
fn a_reload_opens_a_second_key_beside_the_first_and_neither_ends_the_other() {
    let Some((_turn, hsm)) = hsm() else { return };
    let t = Token::new(hsm, "pec-sign-reload", true);
    let old = Pkcs11Key::open(t.options()).expect("the running key");
    old.self_test(DigestAlg::Sha256).expect("old signs");
    // a new configuration naming a key the token does not hold: refused,
    // and the running key keeps signing
    let mut wrong = t.options();
    wrong.key_label = Some("no-such-key".into());
    wrong.key_id = None;
    let e = open_err(wrong);
    assert!(matches!(e, Pkcs11Error::NoKey { .. }), "{e}");
    old.self_test(DigestAlg::Sha256)
        .expect("the running key signs after a refused reload");
    assert_eq!(old.reinitialisations(), 0, "the running key re-initialised");
    // a good one: both sign; the old goes, the new one goes on signing
    let new = Pkcs11Key::open(t.options()).expect("the reloaded key");
    new.self_test(DigestAlg::Sha256).expect("new signs");
    old.self_test(DigestAlg::Sha256).expect("old still signs");
    drop(old);
    for _ in 0..3 {
        new.self_test(DigestAlg::Sha256)
            .expect("the new key signs once the old one is gone");
    }
    signed_envelope_verifies(&new);
    // and it never had to recover: its sessions stayed alive throughout
    // (a C_Finalize by the other key would have forced a re-initialise)
    assert_eq!(new.reinitialisations(), 0, "the new key re-initialised");
}

#[test]
fn threads_share_the_session_pool() {
    let Some((_turn, hsm)) = hsm() else { return };
    let t = Token::new(hsm, "pec-sign-pool", true);
    let mut o = t.options();
    o.pool_size = 2;
    let key = Arc::new(Pkcs11Key::open(o).expect("open"));
    let cert = pki().pki.cert().expect("cert");
    let pubkey = cert.public_key().expect("pubkey");
    let handles: Vec<_> = (0..6)
        .map(|i| {
            let key = key.clone();
            std::thread::spawn(move || {
                (0..5)
                    .map(|j| {
                        let data = format!("thread {i} signature {j}");
                        let sig = key.sign(DigestAlg::Sha256, data.as_bytes()).expect("sign");
                        (data, sig)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut n = 0;
    for h in handles {
        for (data, sig) in h.join().expect("thread") {
            let mut v =
                openssl::sign::Verifier::new(openssl::hash::MessageDigest::sha256(), &pubkey)
                    .expect("verifier");
            v.update(data.as_bytes()).expect("update");
            assert!(v.verify(&sig).expect("verify"), "{data}");
            n += 1;
        }
    }
    assert_eq!(n, 30);
}

#[test]
fn signing_works_on_both_kinds_of_async_runtime() {
    let Some((_turn, hsm)) = hsm() else { return };
    let t = Token::new(hsm, "pec-sign-async", true);
    let key: Arc<dyn SigningKey> = Arc::new(Pkcs11Key::open(t.options()).expect("open"));
    // Multi-thread runtime: the signature runs in block_in_place.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let k = key.clone();
    let sigs = rt.block_on(async move {
        let mut tasks = Vec::new();
        for i in 0..8 {
            let k = k.clone();
            tasks.push(tokio::spawn(async move {
                k.sign(DigestAlg::Sha256, format!("task {i}").as_bytes())
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.expect("join").expect("sign"));
        }
        out
    });
    assert_eq!(sigs.len(), 8);
    assert!(sigs.iter().all(|s| s.len() == 256));
    // A current-thread runtime (no block_in_place there): signs directly.
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let k = key.clone();
    let sig = rt.block_on(async move { k.sign(DigestAlg::Sha256, b"current thread") });
    assert_eq!(sig.expect("sign").len(), 256);
}

#[test]
fn token_removed_then_restored_fails_meanwhile_and_recovers() {
    let Some((_turn, hsm)) = hsm() else { return };
    let t = Token::new(hsm, "pec-sign-removal", true);
    let backup = t.files.path().join("backup");
    copy_dir(&t.dir, &backup);
    let mut o = t.options();
    o.pool_size = 2;
    let key = Pkcs11Key::open(o).expect("open");
    key.sign(DigestAlg::Sha256, b"before").expect("sign before");

    // Removed: the token's files go away (softhsm2-util --delete-token).
    t.delete();
    assert!(!t.dir.exists());
    let started = std::time::Instant::now();
    let e = key
        .sign(DigestAlg::Sha256, b"during")
        .expect_err("no signature without the token");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded retry took {:?}",
        started.elapsed()
    );
    let text = e.to_string();
    assert!(text.starts_with("PKCS#11: "), "{text}");
    // Again, still failing (within the re-initialisation interval or after it).
    std::thread::sleep(Duration::from_millis(600));
    assert!(key.sign(DigestAlg::Sha256, b"during 2").is_err());

    // Restored: the same token files back in place.
    copy_dir(&backup, &t.dir);
    std::thread::sleep(Duration::from_millis(600));
    let sig = key
        .sign(DigestAlg::Sha256, b"after")
        .expect("signs again once the token is back");
    assert_eq!(sig.len(), 256);
    signed_envelope_verifies(&key);
}

#[test]
fn a_pin_the_token_refused_is_not_tried_again_and_a_fixed_one_is_read() {
    let Some((_turn, hsm)) = hsm() else { return };
    let t = Token::new(hsm, "pec-sign-pin", true);
    let backup = t.files.path().join("backup");
    copy_dir(&t.dir, &backup);
    let pin_file = t.files.path().join("live-pin");
    std::fs::write(&pin_file, format!("{PIN}\n")).expect("pin");
    let mut o = t.options();
    o.pin = PinSource::File(pin_file.clone());
    let key = Pkcs11Key::open(o).expect("open");
    // The PIN file goes wrong, then the token goes away and comes back:
    // the new sessions must log in again, with the wrong PIN.
    std::fs::write(&pin_file, "0000\n").expect("pin");
    t.delete();
    assert!(key.sign(DigestAlg::Sha256, b"gone").is_err());
    copy_dir(&backup, &t.dir);
    std::thread::sleep(Duration::from_millis(600));
    let e = key
        .sign(DigestAlg::Sha256, b"wrong pin")
        .expect_err("wrong PIN");
    assert!(e.to_string().contains("CKR_PIN_INCORRECT"), "{e}");
    let e = key
        .sign(DigestAlg::Sha256, b"same wrong pin")
        .expect_err("not retried");
    assert!(e.to_string().contains("not tried again"), "{e}");
    assert!(!e.to_string().contains("0000"), "{e}");
    // Fixed in the file: read at the next login, no restart.
    std::fs::write(&pin_file, format!("{PIN}\n")).expect("pin");
    key.sign(DigestAlg::Sha256, b"fixed")
        .expect("signs with the fixed PIN");
}

#[test]
fn the_access_point_tempfails_and_sends_nothing_while_the_token_is_gone() {
    use pec_milter::config::{HolderClass, HoldersConfig};
    use pec_milter::roles::access::AccessPoint;
    use pec_milter::roles::{InjectError, Injector, Outcome, StaticDirectory, Submission};
    use pec_milter::state::embedded::EmbeddedStore;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<Vec<u8>>>);
    #[async_trait::async_trait]
    impl Injector for Recorder {
        async fn inject(&self, _: &str, _: &[String], m: &[u8]) -> Result<(), InjectError> {
            self.0.lock().map_err(|e| e.to_string())?.push(m.to_vec());
            Ok(())
        }
    }
    impl Recorder {
        fn count(&self) -> usize {
            self.0.lock().map(|v| v.len()).unwrap_or(usize::MAX)
        }
    }

    let Some((_turn, hsm)) = hsm() else { return };
    let t = Token::new(hsm, "pec-sign-access", true);
    let backup = t.files.path().join("backup");
    copy_dir(&t.dir, &backup);
    let key: Arc<dyn SigningKey> = Arc::new(Pkcs11Key::open(t.options()).expect("open"));
    let work = tempfile::tempdir().expect("tmp");
    let injected = Arc::new(Recorder::default());
    let ap = AccessPoint {
        provider: provider(),
        domains: vec!["pec.acme.test".into()],
        key,
        digest: DigestAlg::Sha256,
        state: Arc::new(EmbeddedStore::open(&work.path().join("state")).expect("state")),
        scanner: None,
        injector: injected.clone(),
        directory: Arc::new(StaticDirectory::new(&["pec.other.test".into()])),
        holders: HoldersConfig {
            default_class: HolderClass::Upa,
            ..HoldersConfig::default()
        },
        logins: None,
        log: Arc::new(pec_milter::log::NoLog),
        max_recipients: 50,
        max_product: 100 << 20,
        quarantine_dir: work.path().join("quarantine"),
        retention_secs: 3600,
        spool: pec_milter::spool::SpoolOptions::memory(),
    };
    let sub = |n: u32| Submission {
        queue_id: Some(format!("Q{n}")),
        auth_user: "mario.rossi@pec.acme.test".into(),
        mail_from: "mario.rossi@pec.acme.test".into(),
        rcpts: vec!["anna.bianchi@pec.other.test".into()],
        message: pec_milter::roles::Original::from_bytes(&original(
            &format!("HSM test {n}"),
            "anna.bianchi@pec.other.test",
        )),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let now = chrono::Utc::now();
        match ap.process(&sub(1), now).await {
            Outcome::Rewrite { message, .. } => {
                openssl_verify(&message.to_bytes().expect("bytes"), pki().ca_file.path())
                    .expect("verifies")
            }
            other => panic!("expected the signed envelope, got {other:?}"),
        }
        assert_eq!(injected.count(), 1, "the accettazione");

        t.delete();
        match ap.process(&sub(2), now).await {
            Outcome::Tempfail { reason } => {
                assert!(reason.contains("PKCS#11"), "{reason}")
            }
            other => panic!("expected a temporary failure, got {other:?}"),
        }
        assert_eq!(injected.count(), 1, "nothing sent while the token is gone");

        copy_dir(&backup, &t.dir);
        tokio::time::sleep(Duration::from_millis(600)).await;
        // The MTA retries the same message: now it goes through.
        match ap.process(&sub(2), now).await {
            Outcome::Rewrite { message, .. } => {
                openssl_verify(&message.to_bytes().expect("bytes"), pki().ca_file.path())
                    .expect("verifies")
            }
            other => panic!("expected the signed envelope after the restore, got {other:?}"),
        }
        assert_eq!(injected.count(), 2, "its accettazione, once");
    });
}

/// `pec-milter hsm-check` on a configuration for `t` with `pkcs11` lines
/// in the [signing.pkcs11] table: (exit code, stdout, stderr).
fn hsm_check(t: &Token, pkcs11: &str) -> (i32, String, String) {
    let cfg = t.files.path().join("pec-milter.toml");
    std::fs::write(
        &cfg,
        format!("[signing]\nbackend = \"pkcs11\"\n\n[signing.pkcs11]\n{pkcs11}\n"),
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_pec-milter"))
        .args(["hsm-check", "--config"])
        .arg(&cfg)
        .env("NO_COLOR", "1")
        .output()
        .expect("run pec-milter");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn hsm_check_says_what_is_wrong_and_exits_non_zero() {
    let Some((_turn, hsm)) = hsm() else { return };
    let t = Token::new(hsm, "pec-sign-check", true);
    let good = t.pin_file(PIN);
    let bad = t.pin_file("1111-bad-pin");
    let table = |module: &str, key: &str, pin: &Path| {
        format!(
            "module = \"{module}\"\ntoken_label = \"{}\"\nkey_label = \"{key}\"\nkey_id = \"01\"\npin_file = \"{}\"\n",
            t.label,
            pin.display()
        )
    };

    let (code, out, err) = hsm_check(&t, &table(MODULE, "pec-sign", &good));
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("OK: the daemon can sign"), "{out}");
    assert!(
        out.contains("verified with the certificate's public key"),
        "{out}"
    );
    assert!(
        !out.contains(PIN) && !err.contains(PIN),
        "the PIN is printed"
    );

    let (code, _, err) = hsm_check(&t, &table(MODULE, "pec-sign", &bad));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("wrong PIN") && err.contains("CKR_PIN_INCORRECT"),
        "{err}"
    );
    assert!(!err.contains("1111-bad-pin"), "the PIN is printed: {err}");

    let (code, _, err) = hsm_check(
        &t,
        &table("/usr/lib/softhsm/libnothere.so", "pec-sign", &good),
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("libnothere.so not found"), "{err}");

    let (code, _, err) = hsm_check(&t, &table(MODULE, "no-such-key", &good));
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("no private key with label \"no-such-key\""),
        "{err}"
    );

    // PIN from the environment: an unset variable is named.
    let (code, _, err) = hsm_check(
        &t,
        &format!(
            "module = \"{MODULE}\"\ntoken_label = \"{}\"\nkey_id = \"01\"\npin_env = \"PEC_TEST_UNSET_PIN\"\n",
            t.label
        ),
    );
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("PEC_TEST_UNSET_PIN") && err.contains("not set"),
        "{err}"
    );

    // check-config prints where the PIN is, never the PIN.
    let cfg = t.files.path().join("pec-milter.toml");
    std::fs::write(
        &cfg,
        format!(
            "[signing]\nbackend = \"pkcs11\"\n\n[signing.pkcs11]\n{}",
            table(MODULE, "pec-sign", &good)
        ),
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_pec-milter"))
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("pin_file") && text.contains("Pkcs11"),
        "{text}"
    );
    assert!(!text.contains(PIN), "check-config shows the PIN: {text}");
}
