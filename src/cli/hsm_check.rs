//! `pec-milter hsm-check`: the PKCS#11 token as the daemon would open it.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use pec_milter::config::Config;
use pec_milter::daemon;

pub fn hsm_check(config: &Path) -> Result<ExitCode> {
    super::init_logging_to("warn");
    let cfg = Config::load(config)?;
    Ok(check(&cfg))
}

/// `pec-milter hsm-check`: open the token as the daemon would (pool of
/// one), report what was found, sign and verify. The cause of a failure is
/// printed in plain words; the exit status is 1.
fn check(cfg: &Config) -> ExitCode {
    use pec_milter::config::SigningBackend;
    use pec_milter::crypto::{DigestAlg, Pkcs11Key};
    if cfg.signing.backend != SigningBackend::Pkcs11 {
        eprintln!(
            "hsm-check: [signing] backend is \"pem\": nothing to check (set backend = \"pkcs11\" and a [signing.pkcs11] table)"
        );
        return ExitCode::from(1);
    }
    let mut opts = match daemon::pkcs11_options(cfg) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("hsm-check: FAILED: {e}");
            return ExitCode::from(1);
        }
    };
    let pool = opts.pool_size;
    opts.pool_size = 1;
    println!("module     {}", opts.module.display());
    println!("token      label {:?}", opts.token_label);
    println!("key        {}", opts.key_description());
    println!("PIN        from {}", opts.pin.describe());
    let key = match Pkcs11Key::open(opts) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("hsm-check: FAILED: {e}");
            return ExitCode::from(1);
        }
    };
    let i = key.info();
    println!("library    {}", i.library);
    println!("slot       {} ({})", i.slot_id, i.token);
    println!("login      ok");
    println!(
        "key found  RSA-{} label {:?} id {}",
        i.key_bits, i.key_label, i.key_id
    );
    println!("cert       {} (from {})", i.cert_subject, i.cert_origin);
    println!(
        "issuer     {}; valid until {}",
        i.cert_issuer, i.cert_not_after
    );
    println!("match      the key on the token is the certificate's key");
    println!("mechanism  {}", i.mechanism);
    for alg in [DigestAlg::Sha256, DigestAlg::Sha1] {
        match key.self_test(alg) {
            Ok(took) => println!(
                "signature  {alg}: made by the token, verified with the certificate's public key ({:.1} ms)",
                took.as_secs_f64() * 1000.0
            ),
            Err(e) => {
                eprintln!("hsm-check: FAILED: test signature ({alg}): {e}");
                return ExitCode::from(1);
            }
        }
    }
    let now = std::time::SystemTime::now();
    match pec_milter::crypto::sign_content(&key, DigestAlg::Sha256, b"hsm-check\r\n", now) {
        Ok(cms) => println!("cms        detached SignedData of {} bytes", cms.len()),
        Err(e) => {
            eprintln!("hsm-check: FAILED: CMS signature: {e}");
            return ExitCode::from(1);
        }
    }
    println!("OK: the daemon can sign with this token (pool_size {pool} in `run`)");
    ExitCode::SUCCESS
}
