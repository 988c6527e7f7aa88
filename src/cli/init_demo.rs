//! `pec-milter init-demo`: a demo provider identity (a test CA and a
//! provider certificate for the configured domain) and a providers' index
//! listing it, so that the embedded defaults run end to end. Never for
//! real PEC traffic.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use pec_milter::config::Config;
use pec_milter::daemon;

pub fn init_demo(config: &Path) -> Result<ExitCode> {
    super::init_logging();
    let cfg = Config::load(config)?;
    if daemon::init_demo(&cfg)? {
        println!(
            "demo identity created: {} {}",
            cfg.signing.key.display(),
            cfg.signing.cert.display()
        );
    } else {
        println!("{} exists: nothing to do", cfg.signing.key.display());
    }
    Ok(ExitCode::SUCCESS)
}
