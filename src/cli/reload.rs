//! `pec-milter reload`: ask the running daemon to read its configuration
//! again (SIGHUP, as `systemctl reload` sends it). The file is checked
//! here first, as `check-config` does: a file that fails is not sent for
//! (the daemon would refuse it too, and keep serving). The daemon is the
//! process that holds this node's message log (its lock file names its
//! pid, as for `log seal`).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use rustix::process::{Pid, Signal, kill_process};

use pec_milter::config::Config;
use pec_milter::log::writer::writer_pid;

pub fn reload(config: &Path) -> Result<ExitCode> {
    let cfg = Config::load(config)?;
    if !cfg.log.enabled {
        eprintln!(
            "pec-milter: [log] enabled = false in {}: the daemon's pid is not known here; send it SIGHUP (systemctl reload pec-milter)",
            config.display()
        );
        return Ok(ExitCode::from(1));
    }
    let node_dir = cfg.log.dir.join(cfg.log.node_name());
    let Some(pid) = writer_pid(&node_dir) else {
        eprintln!(
            "pec-milter: no running pec-milter holds the message log in {} (not running, or started with another [log] dir / node)",
            node_dir.display()
        );
        return Ok(ExitCode::from(1));
    };
    let target = Pid::from_raw(i32::try_from(pid)?)
        .with_context(|| format!("bad pid {pid} in {}", node_dir.display()))?;
    kill_process(target, Signal::HUP)
        .with_context(|| format!("signalling pec-milter (pid {pid})"))?;
    println!(
        "asked pec-milter (pid {pid}) to reload {}: its log says \"configuration reloaded\" or \"reload refused\"",
        config.display()
    );
    Ok(ExitCode::SUCCESS)
}
