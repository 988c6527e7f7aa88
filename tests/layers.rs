//! The layers of `src/` (README, "Architecture"): reads every `crate::` and
//! `super::` path in the code of `src/` and fails on an arrow the
//! architecture forbids, naming the file, the line and the rule.
//!
//! - `pec` (the wire format) imports only `pec` and `crypto`; `crypto`
//!   imports only `crypto` and `rt`.
//! - support (`spool`, `keep`, `rt`, `listen`, `ldap`, `metrics`,
//!   `logging`, `crls`) imports only the wire format, `crypto` and other support
//!   modules.
//! - `state`, `index` and `log` import no role, edge, config or daemon.
//! - `config` imports no role, edge or daemon.
//! - A role (`roles/access`, `reception`, `delivery`, `tracking`) imports
//!   `pec`, `crypto`, support but `listen`, `state`, `index`, `config` and
//!   the roles' shared modules (ports, message types, receipts); never
//!   another role, never an edge. The shared modules import no role.
//! - An edge (`milter`, `lmtp`, `smtp`, `clamd`, `clamd_limits`, `logins`) imports the roles it
//!   serves, the ports it implements, the wire format, support; never
//!   another edge, never the daemon.
//! - `daemon`, `reload` (the generation in force, swapped on reload),
//!   `health` (the ports wrapped to watch them), `ops` (the `/metrics` and
//!   `/health` endpoint over them), `lib`, `main`, `cli` and `fuzz_api`
//!   (what the fuzz targets call) compose everything.

use std::path::{Path, PathBuf};

/// Where a module sits.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Layer {
    Pec,
    Crypto,
    /// spool, keep, rt, listen, ldap, metrics, logging, crls (the name)
    Support(String),
    State,
    Index,
    Config,
    /// roles/mod.rs, ports, message, receipts
    RolesShared,
    /// access, reception, delivery, tracking
    Role(String),
    /// milter, lmtp, smtp, clamd, clamd_limits, logins
    Edge(String),
    /// daemon, reload, lib, main, cli, health, ops, fuzz_api
    Root,
    Unknown(String),
}

const ROLES: &[&str] = &["access", "reception", "delivery", "tracking"];
const EDGES: &[&str] = &["milter", "lmtp", "smtp", "clamd", "clamd_limits", "logins"];
const SUPPORT: &[&str] = &[
    "spool", "keep", "rt", "listen", "ldap", "metrics", "logging", "crls",
];

/// The layer of a module path (`["roles", "access", ...]`).
fn layer_of(path: &[String]) -> Layer {
    let first = path.first().map(String::as_str).unwrap_or("");
    let second = path.get(1).map(String::as_str).unwrap_or("");
    match first {
        "pec" => Layer::Pec,
        "crypto" => Layer::Crypto,
        "state" | "log" => Layer::State,
        "index" => Layer::Index,
        "config" => Layer::Config,
        "daemon" | "reload" | "cli" | "health" | "ops" | "fuzz_api" | "" => Layer::Root,
        "roles" if ROLES.contains(&second) => Layer::Role(second.to_string()),
        "roles" => Layer::RolesShared,
        s if SUPPORT.contains(&s) => Layer::Support(s.to_string()),
        s if EDGES.contains(&s) => Layer::Edge(s.to_string()),
        s => Layer::Unknown(s.to_string()),
    }
}

/// The module path of a file below `src/`: `roles/access.rs` is
/// `["roles", "access"]`, `pec/mod.rs` is `["pec"]`, `lib.rs` is `[]`.
fn module_of(rel: &Path) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if let Some(last) = parts.pop() {
        let stem = last.trim_end_matches(".rs");
        if !matches!(stem, "mod" | "lib" | "main") {
            parts.push(stem.to_string());
        }
    }
    parts
}

/// Why the arrow `from -> to` is forbidden, if it is.
fn forbidden(from: &Layer, to: &Layer) -> Option<&'static str> {
    use Layer::*;
    if from == to {
        return None;
    }
    match (from, to) {
        (Root, _) => None,
        (_, Unknown(_)) | (Unknown(_), _) => {
            Some("a module outside the map: add it to the README's Architecture and to this test")
        }
        (_, Root) => Some("only the composition root (daemon, cli) may use the daemon"),
        (Pec, Crypto) => None,
        (Pec, _) => Some("the wire format (pec/) imports only pec and crypto"),
        (Crypto, Support(s)) if s == "rt" => None,
        (Crypto, _) => Some("crypto/ imports only crypto and rt"),
        (Support(_), Pec | Crypto | Support(_)) => None,
        (Support(_), _) => Some("support modules import only pec, crypto and support"),
        (State | Index, Pec | Crypto | Support(_)) => None,
        (State | Index, _) => Some("state/ and index/ import only pec, crypto and support"),
        (Config, Pec | Crypto | Support(_)) => None,
        (Config, _) => Some("config imports no role, edge, store or daemon"),
        (Role(_) | RolesShared, Support(s)) if s == "listen" => {
            Some("a role never binds a listener (an edge's job)")
        }
        (RolesShared, Role(_)) => Some("the roles' shared modules import no role"),
        (Role(_), Role(_)) => Some("a role never imports another role"),
        (Role(_) | RolesShared, Edge(_)) => Some("a role never imports an edge: use a port"),
        (Role(_) | RolesShared, _) => None,
        (Edge(_), Edge(_)) => Some("an edge never imports another edge"),
        (Edge(_), _) => None,
    }
}

/// One arrow found in the code: the line (1-based) and the module path it
/// names (absolute, from the crate root).
fn arrows(text: &str, module: &[String]) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    for prefix in ["crate::", "super::"] {
        let mut from = 0;
        while let Some(pos) = text[from..].find(prefix) {
            let at = from + pos;
            from = at + prefix.len();
            // a path, not the tail of an identifier (`my_crate::`)
            if at > 0 && (bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                continue;
            }
            let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
            let line_no = text[..at].matches('\n').count() + 1;
            let line = &text[line_start..];
            let line = line.split('\n').next().unwrap_or("");
            let before = &text[line_start..at];
            // comments (and doc comments) name paths without importing them
            if line.trim_start().starts_with("//") || before.contains("//") {
                continue;
            }
            let base: Vec<String> = if prefix == "super::" {
                let mut m = module.to_vec();
                m.pop();
                m
            } else {
                Vec::new()
            };
            let rest = &text[from..];
            if let Some(group) = rest.strip_prefix('{') {
                // `crate::{a::b, c}`: every item of the group
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let segs = segments(item.trim());
                    if !segs.is_empty() {
                        let mut p = base.clone();
                        p.extend(segs);
                        out.push((line_no, p));
                    }
                }
            } else {
                let mut p = base;
                p.extend(segments(rest));
                out.push((line_no, p));
            }
        }
    }
    out
}

/// The leading `a::b` of a path (at most two segments matter).
fn segments(s: &str) -> Vec<String> {
    s.split("::")
        .take(2)
        .map(|seg| {
            seg.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .take_while(|seg| !seg.is_empty() && seg.chars().all(|c| !c.is_ascii_uppercase()))
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// Every forbidden arrow of the files `(path below src/, text)`.
fn violations(files: &[(PathBuf, String)]) -> Vec<String> {
    let mut bad = Vec::new();
    for (rel, text) in files {
        let module = module_of(rel);
        let from = layer_of(&module);
        // a `#[cfg(test)]` module at the end of a file may use anything
        let code = text.split("#[cfg(test)]").next().unwrap_or(text);
        for (line, target) in arrows(code, &module) {
            let to = layer_of(&target);
            if let Some(why) = forbidden(&from, &to) {
                bad.push(format!(
                    "src/{}:{line}: {:?} -> {} ({:?}): {why}",
                    rel.display(),
                    from,
                    target.join("::"),
                    to
                ));
            }
        }
    }
    bad
}

#[test]
fn src_keeps_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    assert!(paths.len() > 30, "src/ not found or nearly empty");
    let files: Vec<(PathBuf, String)> = paths
        .iter()
        .map(|p| {
            let rel = p.strip_prefix(&src).expect("below src").to_path_buf();
            let text = std::fs::read_to_string(p).expect("read");
            (rel, text)
        })
        .collect();
    // the map covers every module
    for (rel, _) in &files {
        let l = layer_of(&module_of(rel));
        assert!(
            !matches!(l, Layer::Unknown(_)),
            "src/{} is in no layer of the map",
            rel.display()
        );
    }
    let bad = violations(&files);
    assert!(bad.is_empty(), "forbidden arrows:\n{}", bad.join("\n"));
}

/// The checker finds what it must: each of these files breaks one rule.
#[test]
fn forbidden_arrows_are_named() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "roles/reception.rs",
            "use std::sync::Arc;\nuse crate::roles::access::AccessPoint;\n",
            "src/roles/reception.rs:2",
        ),
        (
            "roles/delivery.rs",
            "use super::tracking::Tracker;\n",
            "src/roles/delivery.rs:1",
        ),
        (
            "roles/access.rs",
            "fn f() {\n    let _ = crate::smtp::Submitter::new;\n}\n",
            "src/roles/access.rs:2",
        ),
        (
            "pec/build.rs",
            "use crate::{pec::mime, spool::SpoolWriter};\n",
            "src/pec/build.rs:1",
        ),
        (
            "crypto/pkcs11.rs",
            "use crate::spool::CHUNK;\n",
            "src/crypto/pkcs11.rs:1",
        ),
        (
            "config.rs",
            "pub x: crate::roles::reception::ReceptionPoint,\n",
            "src/config.rs:1",
        ),
        (
            "milter/mod.rs",
            "use crate::lmtp::server::serve;\n",
            "src/milter/mod.rs:1",
        ),
        (
            "lmtp/server.rs",
            "use crate::daemon::run;\n",
            "src/lmtp/server.rs:1",
        ),
        (
            "roles/ports.rs",
            "use crate::roles::access::X;\n",
            "src/roles/ports.rs:1",
        ),
        (
            "metrics.rs",
            "use crate::health::Dependency;\n",
            "src/metrics.rs:1",
        ),
        (
            "milter/mod.rs",
            "use crate::ops::Endpoint;\n",
            "src/milter/mod.rs:1",
        ),
    ];
    for (file, text, want) in cases {
        let bad = violations(&[(PathBuf::from(file), text.to_string())]);
        assert_eq!(bad.len(), 1, "{file}: {bad:?}");
        assert!(bad[0].starts_with(want), "{file}: {bad:?}");
    }
    // and lets through what is allowed: comments, a role's ports, an edge
    // serving its role, a test module
    let fine: &[(&str, &str)] = &[
        (
            "roles/access.rs",
            "/// see [`crate::roles::reception`]\nuse crate::roles::ports::Scanner;\nuse crate::state::StateStore;\n",
        ),
        (
            "lmtp/server.rs",
            "impl LmtpHandler for crate::roles::delivery::DeliveryPoint {}\nuse super::client;\n",
        ),
        (
            "daemon.rs",
            "use crate::milter::serve;\nuse crate::roles::access::AccessPoint;\n",
        ),
        (
            "roles/delivery.rs",
            "use crate::metrics::{self, Metrics, Role};\n",
        ),
        (
            "ops.rs",
            "use crate::health::Health;\nuse crate::state::StateStore;\nuse crate::metrics::Metrics;\n",
        ),
        (
            "pec/build.rs",
            "use crate::crypto::SigningKey;\n#[cfg(test)]\nmod tests { use crate::spool::X; }\n",
        ),
    ];
    for (file, text) in fine {
        let bad = violations(&[(PathBuf::from(file), text.to_string())]);
        assert!(bad.is_empty(), "{file}: {bad:?}");
    }
}
