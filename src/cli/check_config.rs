//! `pec-milter check-config`: load a configuration as the daemon would and
//! print it as understood.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use pec_milter::config::Config;

pub fn check_config(config: &Path) -> Result<ExitCode> {
    let cfg = Config::load(config)?;
    println!("{cfg:#?}");
    Ok(ExitCode::SUCCESS)
}
