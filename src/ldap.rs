//! One bounded LDAP search, for whatever the site keeps in its directory:
//! the providers' index (`index/ldap.rs`) and the holders' logins
//! (`logins.rs`). Connect (`ldap://`, or `ldaps://` over the OpenSSL the
//! crate already links), optional simple bind, search, unbind: every step
//! within one overall timeout. Entries come back as raw bytes (certificates
//! stay byte-exact) and a malformed entry is an error, never a panic.

use std::fmt;
use std::time::Duration;

use ldap3::asn1::StructureTag;
use ldap3::{LdapConnAsync, LdapConnSettings, ResultEntry, Scope};

/// An entry's attributes as the server gives them: (description, raw value),
/// one pair per value.
pub type RawAttrs = Vec<(String, Vec<u8>)>;

/// Why a search gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum LdapError {
    /// The server did not answer within the timeout.
    #[error("{url}: no answer within {timeout:?}")]
    Timeout { url: String, timeout: Duration },
    /// Connect, bind or search failed (the server's answer or the network's).
    #[error("{step} ({url}): {message}")]
    Failed {
        step: &'static str,
        url: String,
        message: String,
    },
    /// The server sent an entry that does not decode.
    #[error("search ({url}): malformed SearchResultEntry")]
    Malformed { url: String },
}

/// A directory server and how to log in to it.
#[derive(Clone)]
pub struct LdapServer {
    /// `ldap://host:port` or `ldaps://host:port`.
    pub url: String,
    /// Simple bind DN; anonymous when `None`.
    pub bind_dn: Option<String>,
    /// Simple bind password.
    pub password: Option<String>,
    /// Bound on one whole search (connect, bind, search, unbind).
    pub timeout: Duration,
}

impl fmt::Debug for LdapServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LdapServer")
            .field("url", &self.url)
            .field("bind_dn", &self.bind_dn)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Aborts the connection driver task when the search ends, however it ends
/// (including cancellation by the timeout).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl LdapServer {
    /// Every entry under `base` (subtree) matching `filter`, with the
    /// attributes asked for, within `timeout`.
    pub async fn search(
        &self,
        base: &str,
        filter: &str,
        attributes: &[&str],
    ) -> Result<Vec<(String, RawAttrs)>, LdapError> {
        match tokio::time::timeout(
            self.timeout,
            self.search_unbounded(base, filter, attributes),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => Err(self.timed_out()),
        }
    }

    fn timed_out(&self) -> LdapError {
        LdapError::Timeout {
            url: self.url.clone(),
            timeout: self.timeout,
        }
    }

    async fn search_unbounded(
        &self,
        base: &str,
        filter: &str,
        attributes: &[&str],
    ) -> Result<Vec<(String, RawAttrs)>, LdapError> {
        let failed = |step: &'static str, e: ldap3::LdapError| match e {
            ldap3::LdapError::Timeout { .. } => self.timed_out(),
            e => LdapError::Failed {
                step,
                url: self.url.clone(),
                message: e.to_string(),
            },
        };
        let settings = LdapConnSettings::new().set_conn_timeout(self.timeout);
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.url)
            .await
            .map_err(|e| failed("connect", e))?;
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
                .map_err(|e| failed("bind", e))?;
        }
        let (results, _) = ldap
            .with_timeout(self.timeout)
            .search(base, Scope::Subtree, filter, attributes.to_vec())
            .await
            .and_then(|r| r.success())
            .map_err(|e| failed("search", e))?;
        if let Err(e) = ldap.unbind().await {
            tracing::debug!(error = %e, "LDAP unbind failed");
        }
        results
            .into_iter()
            .map(|r| {
                decode_entry(r).ok_or_else(|| LdapError::Malformed {
                    url: self.url.clone(),
                })
            })
            .collect()
    }
}

/// A filter with every `%s` replaced by `value`, escaped as RFC 4515 asks
/// (`*`, `(`, `)`, `\` and NUL cannot change the filter's meaning).
pub fn filter_with(template: &str, value: &str) -> String {
    template.replace("%s", &ldap3::ldap_escape(value))
}

/// A SearchResultEntry → (DN, [(attribute description, raw value)]).
/// Unlike `ldap3::SearchEntry::construct`, never panics on malformed input
/// and keeps every value as bytes.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_value_cannot_change_the_filter() {
        assert_eq!(filter_with("(uid=%s)", "mrossi"), "(uid=mrossi)");
        assert_eq!(
            filter_with("(uid=%s)", "*)(uid=*"),
            "(uid=\\2a\\29\\28uid=\\2a)"
        );
        assert_eq!(
            filter_with("(|(uid=%s)(mail=%s))", "a\\b"),
            "(|(uid=a\\5cb)(mail=a\\5cb))"
        );
    }

    #[tokio::test]
    async fn an_unreachable_server_is_an_error_not_a_hang() {
        // A port nothing listens on (bound, then closed).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let server = LdapServer {
            url: format!("ldap://127.0.0.1:{port}"),
            bind_dn: None,
            password: None,
            timeout: Duration::from_secs(2),
        };
        let err = server
            .search("o=x", "(objectClass=*)", &["cn"])
            .await
            .expect_err("nothing listens there");
        assert!(
            matches!(
                err,
                LdapError::Failed {
                    step: "connect",
                    ..
                }
            ),
            "{err}"
        );
    }
}
