//! The operations endpoint (`[metrics] listen`, off unless set): plain
//! HTTP/1.1 on one `IP:PORT`, two resources.
//!
//! - `GET /metrics`: [`Metrics`] in the Prometheus text format (0.0.4).
//!   The gauges are read at each scrape: the state store's outbox depth
//!   and tracked envelopes (two counts, bounded by [`SCRAPE_TIMEOUT`]),
//!   the providers' index age, each dependency up or down.
//! - `GET /health`: 200 when no dependency this configuration uses is down,
//!   503 otherwise; a JSON body names each one and its state (`up`,
//!   `down` with since when and why, or `unknown`: not called yet). The
//!   states are those of [`Health`]: what the daemon's own calls found,
//!   nothing is probed here, so a dependency that fails shows as down at
//!   its next use and as up again at the next use that succeeds.
//!
//! No authentication: the address is meant to be loopback (a warning says
//! so when it is not). At most [`MAX_CONNECTIONS`] connections are served at
//! once; a request's header must arrive within [`HEADER_TIMEOUT`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::config::{Config, IndexSourceKind};
use crate::crls::CrlCache;
use crate::health::{Dependency, Health, Status};
use crate::index::ProviderIndex;
use crate::metrics::{self, Metrics};
use crate::state::StateStore;

/// Connections served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 16;
/// How long a client has to send a request's header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on the state store's counts at a scrape: past it the gauges keep
/// their last values (and the store shows down in `/health`).
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error("metrics.listen {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// What the endpoint reads of the configuration in force, asked at each
/// request: after a reload, the new generation's providers' index and the
/// dependencies its configuration uses.
#[derive(Clone, Default)]
pub struct View {
    /// The providers' index in use (its copy's age is a gauge).
    pub index: Option<Arc<ProviderIndex>>,
    /// The dependencies the configuration uses (the ones `/health`
    /// answers for).
    pub configured: Vec<Dependency>,
    /// The CRL cache when `[reception] fetch_crls` (the age of its oldest
    /// CRL and its distribution points without one are gauges).
    pub crls: Option<Arc<CrlCache>>,
}

/// Where the endpoint takes its [`View`] from at each request.
pub type ViewSource = Box<dyn Fn() -> View + Send + Sync>;

/// What the endpoint reads: the health and metrics and the state store
/// live as long as the process; the [`View`] is the configuration's in
/// force.
pub struct Endpoint {
    health: Health,
    state: Arc<dyn StateStore>,
    view: ViewSource,
    /// The dependencies whose series exist already.
    known: std::sync::Mutex<Vec<Dependency>>,
}

/// The dependencies `cfg` uses: the state store, the signing key and the
/// reinjection listener always; clamd, the providers' index, the message
/// log and its TSA when configured.
pub fn configured_dependencies(cfg: &Config) -> Vec<Dependency> {
    Dependency::ALL
        .into_iter()
        .filter(|d| match d {
            Dependency::StateStore | Dependency::SigningKey | Dependency::Reinjection => true,
            Dependency::Clamd => cfg.clamd.enabled,
            Dependency::Index => cfg.index.source != IndexSourceKind::None,
            Dependency::Log => cfg.log.enabled,
            Dependency::Tsa => cfg.log.enabled && !cfg.log.tsa_url.trim().is_empty(),
            Dependency::Crl => {
                cfg.reception.fetch_crls && cfg.index.source != IndexSourceKind::None
            }
        })
        .collect()
}

impl Endpoint {
    /// The endpoint over `health` (and its metrics), the state store and
    /// the index, answering for the dependencies `configured`.
    pub fn new(
        health: Health,
        state: Arc<dyn StateStore>,
        index: Option<Arc<ProviderIndex>>,
        configured: Vec<Dependency>,
    ) -> Endpoint {
        let view = View {
            index,
            configured,
            crls: None,
        };
        Endpoint::following(health, state, Box::new(move || view.clone()))
    }

    /// The endpoint over `health` (and its metrics) and the state store,
    /// taking the index and the configured dependencies from `view` at
    /// each request (the generation in force, across reloads).
    pub fn following(health: Health, state: Arc<dyn StateStore>, view: ViewSource) -> Endpoint {
        let endpoint = Endpoint {
            health,
            state,
            view,
            known: std::sync::Mutex::new(Vec::new()),
        };
        endpoint.view();
        endpoint
    }

    fn metrics(&self) -> &Metrics {
        self.health.metrics()
    }

    /// The view in force; the series of a dependency it configures for
    /// the first time are made to exist (0 errors, up).
    fn view(&self) -> View {
        let view = (self.view)();
        let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        for d in &view.configured {
            if !known.contains(d) {
                self.metrics().dependency_known(d.name());
                known.push(*d);
            }
        }
        view
    }

    /// Every dependency to report: the configured ones, and any other one
    /// a call was seen to (in the order of [`Dependency::ALL`]).
    fn states(&self, configured: &[Dependency]) -> Vec<(Dependency, Option<Status>)> {
        let seen = self.health.snapshot();
        Dependency::ALL
            .into_iter()
            .filter_map(|d| {
                let state = seen.iter().find(|(s, _)| *s == d).map(|(_, st)| st.clone());
                (configured.contains(&d) || state.is_some()).then_some((d, state))
            })
            .collect()
    }

    /// The text of `/metrics`, its gauges read now.
    pub async fn metrics_text(&self) -> String {
        let view = self.view();
        let m = self.metrics();
        for (d, state) in self.states(&view.configured) {
            m.set_dependency_up(d.name(), !matches!(state, Some(Status::Down { .. })));
        }
        match tokio::time::timeout(SCRAPE_TIMEOUT, self.state.depth()).await {
            Ok(Ok(depth)) => m.set_state_depth(depth.outbox, depth.tracked),
            Ok(Err(e)) => tracing::debug!(error = %e, "metrics: the state store cannot count now"),
            Err(_) => {
                tracing::debug!("metrics: the state store did not count within the scrape's bound")
            }
        }
        m.set_index_age(view.index.as_ref().and_then(|i| i.age()));
        match &view.crls {
            Some(c) => m.set_crls(c.oldest_age(), c.unavailable().len()),
            None => m.set_crls(None, 0),
        }
        m.encode()
    }

    /// `/health`: whether every configured dependency is up (or not called
    /// yet), and the JSON body naming each one.
    pub fn health_report(&self) -> (bool, String) {
        let view = self.view();
        let mut healthy = true;
        let mut deps = serde_json::Map::new();
        for (d, state) in self.states(&view.configured) {
            let v = match state {
                None => serde_json::json!({ "state": "unknown" }),
                Some(Status::Up) => serde_json::json!({ "state": "up" }),
                Some(Status::Down { since, reason }) => {
                    if view.configured.contains(&d) {
                        healthy = false;
                    }
                    serde_json::json!({
                        "state": "down",
                        "since": since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        "reason": reason,
                    })
                }
            };
            deps.insert(d.name().to_string(), v);
        }
        let body = serde_json::json!({
            "status": if healthy { "up" } else { "down" },
            "dependencies": deps,
        });
        (healthy, format!("{body}\n"))
    }

    /// The answer to one request.
    pub async fn respond(&self, method: &Method, path: &str) -> Response<Full<Bytes>> {
        if method != Method::GET && method != Method::HEAD {
            return plain(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain; charset=utf-8",
                "GET or HEAD only\n".into(),
            );
        }
        match path {
            "/metrics" => plain(
                StatusCode::OK,
                metrics::CONTENT_TYPE,
                self.metrics_text().await,
            ),
            "/health" => {
                let (healthy, body) = self.health_report();
                let status = if healthy {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                plain(status, "application/json", body)
            }
            _ => plain(
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "not found: /metrics or /health\n".into(),
            ),
        }
    }
}

fn plain(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Bind `addr` (a warning when it is not loopback: nothing authenticates).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, OpsError> {
    if !addr.ip().is_loopback() {
        tracing::warn!(listen = %addr,
            "[metrics] listen is not a loopback address: /metrics and /health have no authentication");
    }
    TcpListener::bind(addr)
        .await
        .map_err(|source| OpsError::Bind { addr, source })
}

/// Serve `listener` until `stop` changes.
pub async fn serve(
    listener: TcpListener,
    endpoint: Arc<Endpoint>,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            _ = stop.changed() => break,
        };
        let (stream, peer) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "operations endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let endpoint = endpoint.clone();
                async move {
                    Ok::<_, Infallible>(endpoint.respond(req.method(), req.uri().path()).await)
                }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(peer = %peer, error = %e, "operations endpoint: connection ended with an error");
            }
            drop(permit);
        });
    }
}

/// When `[metrics] listen` is set: bind it and serve `/metrics` and
/// `/health` over `health` and `state` (which live as long as the process)
/// and the [`View`] that `view` gives at each request, until `stop`
/// changes. A bind failure is the caller's error (the daemon does not
/// start). Bound once: a change of `listen` needs a restart.
pub async fn spawn(
    cfg: &Config,
    health: Health,
    state: Arc<dyn StateStore>,
    view: ViewSource,
    stop: watch::Receiver<bool>,
) -> Result<(), OpsError> {
    // `Config::load` checked the address
    let Ok(Some(addr)) = cfg.metrics.address() else {
        return Ok(());
    };
    let listener = bind(addr).await?;
    let endpoint = Arc::new(Endpoint::following(health, state, view));
    tracing::info!(listen = %addr, "operations endpoint ready: /metrics, /health");
    tokio::spawn(serve(listener, endpoint, stop));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::embedded::EmbeddedStore;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// One request over a fresh connection: (status code, header block, body).
    async fn get(addr: SocketAddr, method: &str, path: &str) -> (u16, String, String) {
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        s.write_all(
            format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .expect("write");
        let mut raw = String::new();
        s.read_to_string(&mut raw).await.expect("read");
        let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
        let code = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status line");
        (code, head.to_ascii_lowercase(), body.to_string())
    }

    #[tokio::test]
    async fn metrics_and_health_over_http() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state: Arc<dyn StateStore> = Arc::new(EmbeddedStore::open(dir.path()).expect("store"));
        let health = Health::default();
        let state = crate::health::Observed::new(state, &health, Dependency::StateStore);
        let endpoint = Arc::new(Endpoint::new(
            health.clone(),
            state,
            None,
            vec![
                Dependency::StateStore,
                Dependency::Clamd,
                Dependency::SigningKey,
            ],
        ));
        let listener = bind("127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop_tx, stop_rx) = watch::channel(false);
        let server = tokio::spawn(serve(listener, endpoint, stop_rx));

        health
            .metrics()
            .message(metrics::Role::Access, metrics::Outcome::Accept);
        let (code, head, body) = get(addr, "GET", "/metrics").await;
        assert_eq!(code, 200, "{head}");
        assert!(
            head.contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(
            body.contains("pec_milter_messages_total{role=\"access\",outcome=\"accept\"} 1\n"),
            "{body}"
        );
        assert!(body.contains("pec_milter_outbox_messages 0\n"), "{body}");
        assert!(
            body.contains("pec_milter_dependency_up{dependency=\"clamd\"} 1\n"),
            "{body}"
        );
        assert!(body.contains("pec_milter_index_age_seconds -1"), "{body}");

        // nothing called yet but the store (by the scrape): healthy
        let (code, head, body) = get(addr, "GET", "/health").await;
        assert_eq!(code, 200, "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["status"], "up");
        assert_eq!(v["dependencies"]["state-store"]["state"], "up");
        assert_eq!(v["dependencies"]["clamd"]["state"], "unknown");
        assert_eq!(v["dependencies"]["signing-key"]["state"], "unknown");
        assert!(
            v["dependencies"].get("tsa").is_none(),
            "not configured: {v}"
        );

        health.down(Dependency::Clamd, "connection refused");
        let (code, _, body) = get(addr, "GET", "/health").await;
        assert_eq!(code, 503);
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["status"], "down");
        assert_eq!(v["dependencies"]["clamd"]["state"], "down");
        assert_eq!(v["dependencies"]["clamd"]["reason"], "connection refused");
        assert!(
            v["dependencies"]["clamd"]["since"]
                .as_str()
                .is_some_and(|s| s.ends_with('Z'))
        );
        let (_, _, body) = get(addr, "GET", "/metrics").await;
        assert!(
            body.contains("pec_milter_dependency_up{dependency=\"clamd\"} 0\n"),
            "{body}"
        );
        assert!(
            body.contains("pec_milter_dependency_errors_total{dependency=\"clamd\"} 1\n"),
            "{body}"
        );

        // a dependency the configuration does not use: shown, never a 503
        health.down(Dependency::Tsa, "no answer");
        health.up(Dependency::Clamd);
        let (code, _, body) = get(addr, "GET", "/health").await;
        assert_eq!(code, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["dependencies"]["clamd"]["state"], "up");
        assert_eq!(v["dependencies"]["tsa"]["state"], "down");

        assert_eq!(get(addr, "GET", "/nothing").await.0, 404);
        assert_eq!(get(addr, "POST", "/metrics").await.0, 405);
        let (code, _, body) = get(addr, "HEAD", "/metrics").await;
        assert_eq!((code, body.as_str()), (200, ""));

        stop_tx.send(true).expect("stop");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("the server stops")
            .expect("joined");
    }

    #[test]
    fn the_configuration_names_its_dependencies() {
        let mut cfg = Config::default();
        let names = |cfg: &Config| -> Vec<&str> {
            configured_dependencies(cfg)
                .into_iter()
                .map(Dependency::name)
                .collect()
        };
        assert_eq!(
            names(&cfg),
            [
                "state-store",
                "clamd",
                "signing-key",
                "reinjection",
                "message-log"
            ]
        );
        cfg.index.source = IndexSourceKind::Ldif;
        cfg.log.tsa_url = "http://tsa.test/".into();
        cfg.clamd.enabled = false;
        assert_eq!(
            names(&cfg),
            [
                "state-store",
                "index",
                "signing-key",
                "reinjection",
                "message-log",
                "tsa",
                "crl"
            ]
        );
        cfg.log.enabled = false;
        cfg.reception.fetch_crls = false;
        assert_eq!(
            names(&cfg),
            ["state-store", "index", "signing-key", "reinjection"]
        );
    }
}
