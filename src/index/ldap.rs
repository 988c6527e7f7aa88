//! Loading the providers' index from an LDAP server (`ldap://`, or
//! `ldaps://` over the OpenSSL the crate already links).
//!
//! One subtree search `(objectClass=provider)` under the base, asking for
//! the attributes the milter uses, certificates as
//! `providerCertificate;binary` (RFC 4522). Every step (connect, bind,
//! search, unbind) is bounded by one overall timeout.

use std::fmt;
use std::time::Duration;

use ldap3::asn1::StructureTag;
use ldap3::{LdapConnAsync, LdapConnSettings, ResultEntry, Scope};

use super::{IndexError, ProviderEntry, RawAttrs, entry_from_attrs};

/// The attributes requested from the server.
pub const ATTRIBUTES: [&str; 6] = [
    "providerName",
    "providerUnit",
    "providerCertificateHash",
    "providerCertificate;binary",
    "mailReceipt",
    "managedDomains",
];

/// The search filter.
pub const FILTER: &str = "(objectClass=provider)";

/// The directory's base DN.
pub const DEFAULT_BASE: &str = "o=postacert";

/// An LDAP server holding the index.
#[derive(Clone)]
pub struct LdapSource {
    /// `ldap://host:port` or `ldaps://host:port`.
    pub url: String,
    /// Search base, normally `o=postacert`.
    pub base: String,
    /// Simple bind DN; anonymous when `None`.
    pub bind_dn: Option<String>,
    /// Simple bind password.
    pub password: Option<String>,
    /// Bound on the whole load (connect, bind, search, unbind).
    pub timeout: Duration,
}

impl fmt::Debug for LdapSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LdapSource")
            .field("url", &self.url)
            .field("base", &self.base)
            .field("bind_dn", &self.bind_dn)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Aborts the connection driver task when the load ends, however it ends
/// (including cancellation by the timeout).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl LdapSource {
    /// Anonymous access to `url`, base `o=postacert`, 10 s timeout.
    pub fn new(url: impl Into<String>) -> Self {
        LdapSource {
            url: url.into(),
            base: DEFAULT_BASE.to_string(),
            bind_dn: None,
            password: None,
            timeout: Duration::from_secs(10),
        }
    }

    /// A description for logs (no password).
    pub fn describe(&self) -> String {
        format!("LDAP {} base {:?}", self.url, self.base)
    }

    /// Loads every `provider` entry under the base, within `timeout`
    /// ([`IndexError::Timeout`] otherwise).
    pub async fn load(&self) -> Result<Vec<ProviderEntry>, IndexError> {
        match tokio::time::timeout(self.timeout, self.load_unbounded()).await {
            Ok(result) => result,
            Err(_) => Err(IndexError::Timeout),
        }
    }

    async fn load_unbounded(&self) -> Result<Vec<ProviderEntry>, IndexError> {
        let ldap_err = |what: &str, e: ldap3::LdapError| match e {
            ldap3::LdapError::Timeout { .. } => IndexError::Timeout,
            e => IndexError::Ldap(format!("{what} ({}): {e}", self.url)),
        };
        let settings = LdapConnSettings::new().set_conn_timeout(self.timeout);
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.url)
            .await
            .map_err(|e| ldap_err("connect", e))?;
        let _driver = AbortOnDrop(tokio::spawn(async move {
            if let Err(e) = conn.drive().await {
                tracing::debug!(error = %e, "LDAP connection ended with an error");
            }
        }));
        if let Some(dn) = &self.bind_dn {
            ldap.with_timeout(self.timeout)
                .simple_bind(dn, self.password.as_deref().unwrap_or(""))
                .await
                .and_then(|r| r.success())
                .map_err(|e| ldap_err("bind", e))?;
        }
        let (results, _) = ldap
            .with_timeout(self.timeout)
            .search(&self.base, Scope::Subtree, FILTER, ATTRIBUTES.to_vec())
            .await
            .and_then(|r| r.success())
            .map_err(|e| ldap_err("search", e))?;
        if let Err(e) = ldap.unbind().await {
            tracing::debug!(error = %e, "LDAP unbind failed");
        }
        let mut entries = Vec::with_capacity(results.len());
        for result in results {
            let (dn, attrs) = decode_entry(result).ok_or_else(|| {
                IndexError::Ldap(format!(
                    "search ({}): malformed SearchResultEntry",
                    self.url
                ))
            })?;
            let entry = entry_from_attrs(&dn, &attrs)
                .map_err(|reason| IndexError::Ldap(format!("entry {dn:?}: {reason}")))?;
            entries.push(entry);
        }
        Ok(entries)
    }
}

/// A SearchResultEntry → (DN, [(attribute description, raw value)]).
/// Unlike `ldap3::SearchEntry::construct`, never panics on malformed input
/// and keeps every value as bytes (certificates stay byte-exact).
fn decode_entry(result: ResultEntry) -> Option<(String, RawAttrs)> {
    let tag: StructureTag = result.0;
    let mut parts = tag.match_id(4)?.expect_constructed()?.into_iter();
    let dn = String::from_utf8(parts.next()?.expect_primitive()?).ok()?;
    let mut attrs = Vec::new();
    for partial in parts.next()?.expect_constructed()? {
        let mut partial = partial.expect_constructed()?.into_iter();
        let name = String::from_utf8(partial.next()?.expect_primitive()?).ok()?;
        for value in partial.next()?.expect_constructed()? {
            attrs.push((name.clone(), value.expect_primitive()?));
        }
    }
    Some((dn, attrs))
}
