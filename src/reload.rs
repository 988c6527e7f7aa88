//! The configuration in force and its reload (SIGHUP: `systemctl reload`,
//! `pec-milter reload`).
//!
//! The configuration file is parsed once into typed structs ([`Config`]);
//! everything built from it — the signing key (PEM files, or a new pool of
//! sessions on the PKCS#11 token), the trust anchors and CRLs, the holders
//! (classes, `logins` map, LDAP directory), the clamd and reinjection
//! clients, the providers' index, the roles, the TSA — is one
//! [`Generation`], swapped whole ([`Current`]). Each milter connection takes
//! the generation in force when it opens and keeps it to its end; the LMTP
//! server takes it per transaction; the background tasks at each pass. The
//! old generation goes when the last of them lets it go: nothing in
//! progress is dropped. The providers' index is data rather than
//! configuration: from the same place it is the same index, refreshed in
//! place at the reload (as on its schedule), for every connection.
//!
//! A reload builds the new generation beside the running one. When any
//! step fails — the checks of `check-config`, a key or certificate that
//! does not load or match, trust anchors, CRLs, the TSA's anchors, the
//! clamd address, a password file, an index source that changed and cannot
//! be loaded — the reload is refused with one error line and the running
//! generation keeps serving. Settings bound to what lives as long as the
//! process (the listeners and the milter socket's mode and group, the
//! worker threads, the state store, the log's place, the `/metrics`
//! endpoint, the daemon's own diagnostics of `[logging]`) keep their
//! running values, with one warning for each that changed: it needs a
//! restart. The dependency health and its metrics live as long as the
//! process too: every generation counts into the same ones.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::sync::watch;

use crate::config::{Config, ConfigError};
use crate::daemon::{self, DaemonError, Deps, Shared};
use crate::health::Dependency;
use crate::index::{IndexError, IndexSource, ProviderIndex};
use crate::log::seal::Tsa;
use crate::milter::{Roles, RolesSource};
use crate::roles::delivery::DeliveryPoint;

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Build(#[from] DaemonError),
    #[error("providers' index {source_name}: {error}")]
    Index {
        source_name: String,
        #[source]
        error: IndexError,
    },
    #[error("the reload task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// One configuration and everything built from it.
pub struct Generation {
    /// 1 at start, one more at each reload taken.
    pub number: u64,
    /// The configuration in force (the settings that need a restart at
    /// their running values).
    pub cfg: Config,
    pub deps: Deps,
    /// The providers' index (`[index]`), loaded.
    pub index: Option<Arc<ProviderIndex>>,
    /// What each milter connection serves with.
    pub roles: Arc<Roles>,
    /// The delivery point, when the LMTP listener runs.
    pub delivery: Option<Arc<DeliveryPoint>>,
    /// The TSA that seals the closed log files (`[log] tsa_url`).
    pub tsa: Option<Arc<Tsa>>,
}

/// The generation in force; cloning shares it.
#[derive(Clone)]
pub struct Current(Arc<watch::Sender<Arc<Generation>>>);

impl Current {
    pub fn new(first: Generation) -> Self {
        Current(Arc::new(watch::Sender::new(Arc::new(first))))
    }

    /// The generation in force now.
    pub fn get(&self) -> Arc<Generation> {
        self.0.borrow().clone()
    }

    /// Told of every generation that comes into force.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Generation>> {
        self.0.subscribe()
    }

    /// What the milter connections take their roles from.
    pub fn roles_source(&self) -> RolesSource {
        let current = self.clone();
        RolesSource::new(move || current.get().roles.clone())
    }

    /// `next` comes into force; the one it replaces is returned.
    fn replace(&self, next: Generation) -> Arc<Generation> {
        self.0.send_replace(Arc::new(next))
    }
}

/// The first generation, at start: `cfg` as it is (the caller loads the
/// index once the listeners are bound).
pub fn first(cfg: Config, shared: &Shared) -> Result<Generation, DaemonError> {
    let deps = daemon::deps(&cfg, shared)?;
    let index = daemon::provider_index(&cfg)?;
    assemble(cfg, deps, index, 1)
}

/// The roles, delivery point and TSA of `cfg` over `deps` and `index`.
fn assemble(
    cfg: Config,
    deps: Deps,
    index: Option<Arc<ProviderIndex>>,
    number: u64,
) -> Result<Generation, DaemonError> {
    let roles = Arc::new(daemon::roles(&cfg, index.clone(), &deps)?);
    let delivery = daemon::delivery_point(&cfg, &deps, index.clone())?.map(Arc::new);
    let tsa = daemon::tsa(&cfg)?;
    Ok(Generation {
        number,
        cfg,
        deps,
        index,
        roles,
        delivery,
        tsa,
    })
}

/// A setting that changed but needs a restart (its running value kept).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NeedsRestart {
    /// The key, e.g. `milter.listen`.
    pub key: &'static str,
    /// What stays in force and what the file says, where it helps
    /// (listeners); empty otherwise.
    pub detail: String,
}

/// What a reload did.
#[derive(Debug, Clone)]
pub struct Reloaded {
    /// The number of the generation now in force.
    pub generation: u64,
    /// The sections of the configuration that changed (and took effect).
    pub changed: Vec<&'static str>,
    /// The settings that changed but need a restart.
    pub restart: Vec<NeedsRestart>,
}

/// Give `new` the running value of every setting that needs a restart,
/// and say which changed. `delivery_running`: the LMTP listener runs (its
/// spool of DATA then keeps the running `[spool]`).
pub fn keep_running(
    running: &Config,
    new: &mut Config,
    delivery_running: bool,
) -> Vec<NeedsRestart> {
    let mut out = Vec::new();
    // `keep!(key, field, shown)`: with `shown`, the values are in the detail.
    macro_rules! keep {
        ($key:literal, $($field:ident).+) => {
            keep!(@ $key, false, $($field).+)
        };
        ($key:literal, $($field:ident).+, shown) => {
            keep!(@ $key, true, $($field).+)
        };
        (@ $key:literal, $shown:expr, $($field:ident).+) => {
            if new.$($field).+ != running.$($field).+ {
                let detail = if $shown {
                    format!(
                        "{:?} kept, {:?} configured",
                        running.$($field).+,
                        new.$($field).+
                    )
                } else {
                    String::new()
                };
                out.push(NeedsRestart { key: $key, detail });
                new.$($field).+ = running.$($field).+.clone();
            }
        };
    }
    keep!("milter.listen", milter.listen, shown);
    keep!("milter.workers", milter.workers);
    keep!("milter.connection_timeout", milter.connection_timeout);
    // the socket is bound once
    keep!("milter.socket_mode", milter.socket_mode, shown);
    keep!("milter.socket_group", milter.socket_group, shown);
    keep!("delivery.listen", delivery.listen, shown);
    keep!("delivery.max_size", delivery.max_size);
    keep!("state.backend", state.backend);
    keep!("state.path", state.path);
    keep!("state.url", state.url);
    keep!("state.prefix", state.prefix);
    keep!("state.timeout", state.timeout);
    keep!("state.sentinels", state.sentinels);
    keep!("state.master_name", state.master_name);
    keep!("state.sentinel_password_file", state.sentinel_password_file);
    keep!("state.password_file", state.password_file);
    keep!("state.wait_replicas", state.wait_replicas);
    keep!("state.wait_timeout", state.wait_timeout);
    keep!("log.enabled", log.enabled);
    keep!("log.dir", log.dir);
    keep!("log.node", log.node);
    // the endpoint is bound once; the diagnostics are set up before the
    // runtime starts
    keep!("metrics.listen", metrics.listen, shown);
    keep!("logging", logging);
    if delivery_running && new.spool != running.spool {
        // not kept: the roles take the new spool at once
        out.push(NeedsRestart {
            key: "spool",
            detail: "the LMTP server spools DATA as before until a restart; the roles use the new values".into(),
        });
    }
    out
}

/// The sections of the configuration that differ.
pub fn changed_sections(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    macro_rules! section {
        ($($name:ident),+) => {
            $(
                if old.$name != new.$name {
                    out.push(stringify!($name));
                }
            )+
        };
    }
    section!(
        milter,
        provider,
        signing,
        reinjection,
        state,
        clamd,
        quarantine,
        spool,
        limits,
        recipients,
        holders,
        index,
        reception,
        delivery,
        timers,
        log,
        metrics,
        logging
    );
    out
}

/// Reloads the configuration file into a new generation, one reload at a
/// time.
pub struct Reloader {
    path: PathBuf,
    shared: Shared,
    current: Current,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Reloader {
    pub fn new(path: PathBuf, shared: Shared, current: Current) -> Self {
        Reloader {
            path,
            shared,
            current,
            one_at_a_time: tokio::sync::Mutex::new(()),
        }
    }

    /// The configuration file a reload reads.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The generation in force.
    pub fn current(&self) -> &Current {
        &self.current
    }

    /// Read the configuration file again and build its generation; when
    /// every step succeeds, it comes into force (the connections in
    /// progress finish on the one they started with). On error nothing
    /// changes.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let _one = self.one_at_a_time.lock().await;
        let running = self.current.get();
        let path = self.path.clone();
        let mut cfg = tokio::task::spawn_blocking(move || Config::load(&path)).await??;
        let restart = keep_running(&running.cfg, &mut cfg, running.delivery.is_some());
        // the key (files, token), clamd, reinjection, the holders' directory
        let (cfg, deps) = {
            let shared = self.shared.clone();
            tokio::task::spawn_blocking(move || daemon::deps(&cfg, &shared).map(|d| (cfg, d)))
                .await??
        };
        let (index, kept) = self.index(&cfg, &running).await?;
        let number = running.number + 1;
        let changed = changed_sections(&running.cfg, &cfg);
        // the trust anchors and CRLs, the roles, the TSA
        let next =
            tokio::task::spawn_blocking(move || assemble(cfg, deps, index, number)).await??;
        drop(running);
        let index = next.index.clone();
        let old = self.current.replace(next);
        drop(old);
        match (index, kept) {
            // the same index, read again in place (a failure keeps the
            // last good copy, as a scheduled refresh does)
            (Some(index), Some(source)) => {
                index.set_source(source);
                let r = index.refresh_logged().await;
                self.shared.health.observe_index(&r.as_ref().map(|_| ()));
            }
            (Some(_), None) => self.shared.health.up(Dependency::Index),
            (None, _) => {}
        }
        // the CRL cache's options (its directory read when it changed),
        // and the distribution points of the index in force
        let g = self.current.get();
        self.shared.crls.configure(g.cfg.reception.crl_options());
        daemon::learn_crls(&g);
        Ok(Reloaded {
            generation: number,
            changed,
            restart,
        })
    }

    /// [`reload`](Self::reload), its outcome logged: one line when it is
    /// refused (error), else one for the reload and one warning for each
    /// setting that needs a restart.
    pub async fn reload_logged(&self) -> Result<Reloaded, ReloadError> {
        let result = self.reload().await;
        match &result {
            Ok(r) => {
                for n in &r.restart {
                    if n.detail.is_empty() {
                        tracing::warn!(
                            key = n.key,
                            "reload: this setting changed but needs a restart; its running value is kept"
                        );
                    } else {
                        tracing::warn!(key = n.key, detail = %n.detail,
                            "reload: this setting changed but needs a restart; its running value is kept");
                    }
                }
                let g = self.current.get();
                daemon::announce(&g.cfg);
                tracing::info!(generation = r.generation, changed = ?r.changed,
                    provider = %g.cfg.provider.name,
                    "configuration reloaded: new connections use it, those in progress finish on the one they started with");
            }
            Err(e) => {
                tracing::error!(error = %e, generation = self.current.get().number,
                    "reload refused: the running configuration keeps serving");
            }
        }
        result
    }

    /// The new generation's providers' index. From the same place as the
    /// running one (the same [`IndexSource::describe`]): the running index
    /// itself, with the source to load from once the new generation is in
    /// force (its bind password read again). The index is data refreshed in
    /// place, for the connections in progress too, as a scheduled refresh
    /// does. From another place: a new index, which must load now or the
    /// reload is refused.
    async fn index(
        &self,
        cfg: &Config,
        running: &Generation,
    ) -> Result<(Option<Arc<ProviderIndex>>, Option<IndexSource>), ReloadError> {
        let Some(source) = daemon::index_source(cfg)? else {
            return Ok((None, None));
        };
        let name = source.describe();
        if let Some(same) = running
            .index
            .as_ref()
            .filter(|i| i.index_source().describe() == name)
        {
            return Ok((Some(same.clone()), Some(source)));
        }
        let index = Arc::new(ProviderIndex::new(source));
        index.refresh().await.map_err(|error| ReloadError::Index {
            source_name: name.clone(),
            error,
        })?;
        let providers = index.snapshot().map(|s| s.providers().len()).unwrap_or(0);
        tracing::info!(source = %name, providers, "providers' index loaded");
        Ok((Some(index), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restart_only_settings_keep_their_running_values_and_are_named() {
        let running = Config::default();
        let mut new = Config::default();
        new.milter.listen = "unix:/run/pec/milter.sock".into();
        new.milter.workers = 7;
        new.state.url = "redis://other:6379/0".into();
        new.state.retention = std::time::Duration::from_secs(86400);
        new.log.dir = "/elsewhere".into();
        new.provider.name = "Nuovo Gestore S.p.A.".into();
        new.spool.memory_limit = 4096;
        let restart = keep_running(&running, &mut new, true);
        let keys: Vec<&str> = restart.iter().map(|n| n.key).collect();
        assert_eq!(
            keys,
            [
                "milter.listen",
                "milter.workers",
                "state.url",
                "log.dir",
                "spool"
            ]
        );
        assert!(restart[0].detail.contains("unix:/run/pec/milter.sock"));
        assert!(
            restart[2].detail.is_empty(),
            "no URL (it may hold a password) in the log"
        );
        // kept: the running values; taken: the rest
        assert_eq!(new.milter, running.milter);
        assert_eq!(new.state.url, running.state.url);
        assert_eq!(new.log.dir, running.log.dir);
        assert_eq!(new.state.retention, std::time::Duration::from_secs(86400));
        assert_eq!(new.provider.name, "Nuovo Gestore S.p.A.");
        assert_eq!(new.spool.memory_limit, 4096, "the roles take the new spool");
        assert_eq!(
            changed_sections(&running, &new),
            ["provider", "state", "spool"]
        );
        // without the LMTP listener the spool needs no restart
        let mut again = Config::default();
        again.spool.memory_limit = 4096;
        assert!(keep_running(&running, &mut again, false).is_empty());
    }

    #[test]
    fn the_socket_mode_metrics_endpoint_and_logging_need_a_restart() {
        let running = Config::default();
        let mut new = Config::default();
        new.milter.socket_mode = Some(0o660);
        new.milter.socket_group = Some("postfix".into());
        new.metrics.listen = "127.0.0.1:9187".into();
        new.logging.format = crate::logging::LogFormat::Json;
        new.logging.level = "debug".into();
        let restart = keep_running(&running, &mut new, false);
        let keys: Vec<&str> = restart.iter().map(|n| n.key).collect();
        assert_eq!(
            keys,
            [
                "milter.socket_mode",
                "milter.socket_group",
                "metrics.listen",
                "logging"
            ]
        );
        assert!(restart[2].detail.contains("127.0.0.1:9187"));
        assert_eq!(new, running, "every one kept at its running value");
        assert!(changed_sections(&running, &new).is_empty());
    }
}
