//! `pec-milter run`: the daemon on a multi-thread runtime of `[milter]
//! workers` threads.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use pec_milter::config::Config;
use pec_milter::daemon;

pub fn run(config: &Path) -> Result<ExitCode> {
    let cfg = Config::load(config)?;
    pec_milter::logging::init(&cfg.logging.options())?;
    let workers = daemon::worker_threads(&cfg);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(daemon::run(config, cfg))?;
    Ok(ExitCode::SUCCESS)
}
