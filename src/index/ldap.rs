//! Loading the providers' index from an LDAP server (`ldap://`, or
//! `ldaps://` over the OpenSSL the crate already links).
//!
//! One subtree search `(objectClass=provider)` under the base, asking for
//! the attributes the milter uses, certificates as
//! `providerCertificate;binary` (RFC 4522), through [`crate::ldap`]: every
//! step (connect, bind, search, unbind) is bounded by one overall timeout.

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

/// An LDAP server holding the index, and where in it.
#[derive(Clone, Debug)]
pub struct LdapSource {
    /// The server, how to log in, and the bound on the whole load
    /// (connect, bind, search, unbind); its Debug hides the password.
    pub server: LdapServer,
    /// Search base, normally `o=postacert`.
    pub base: String,
}

impl LdapSource {
    /// Anonymous access to `url`, base `o=postacert`, 10 s timeout.
    pub fn new(url: impl Into<String>) -> Self {
        LdapSource {
            server: LdapServer {
                url: url.into(),
                bind_dn: None,
                password: None,
                timeout: Duration::from_secs(10),
            },
            base: DEFAULT_BASE.to_string(),
        }
    }

    /// A description for logs (no password).
    pub fn describe(&self) -> String {
        format!("LDAP {} base {:?}", self.server.url, self.base)
    }

    /// Loads every `provider` entry under the base, within `timeout`
    /// ([`IndexError::Timeout`] otherwise).
    pub async fn load(&self) -> Result<Vec<ProviderEntry>, IndexError> {
        let results = self
            .server
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
