//! Loading the providers' index from an LDAP server (`ldap://`, or
//! `ldaps://` over the OpenSSL the crate already links).
//!
//! One subtree search `(objectClass=provider)` under the base, asking for
//! the attributes the milter uses, certificates as
//! `providerCertificate;binary` (RFC 4522), through [`crate::ldap`]: every
//! step (connect, bind, search, unbind) is bounded by one overall timeout.

use std::fmt;
use std::time::Duration;

use super::{IndexError, ProviderEntry, entry_from_attrs};
use crate::ldap::{LdapError, LdapServer};

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
        let server = LdapServer {
            url: self.url.clone(),
            bind_dn: self.bind_dn.clone(),
            password: self.password.clone(),
            timeout: self.timeout,
        };
        let results = server
            .search(&self.base, FILTER, &ATTRIBUTES)
            .await
            .map_err(|e| match e {
                LdapError::Timeout { .. } => IndexError::Timeout,
                e => IndexError::Ldap(e.to_string()),
            })?;
        let mut entries = Vec::with_capacity(results.len());
        for (dn, attrs) in results {
            let entry = entry_from_attrs(&dn, &attrs)
                .map_err(|reason| IndexError::Ldap(format!("entry {dn:?}: {reason}")))?;
            entries.push(entry);
        }
        Ok(entries)
    }
}
