//! SPIFFE workload identities: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//!
//! This is the only identity shape Istio issues and checks, so it is the only one we accept;
//! anything else (other path layouts, query strings, empty segments) is a clear error.

use std::fmt;
use std::str::FromStr;

const SCHEME: &str = "spiffe://";

/// A workload identity as carried in a certificate's URI SAN.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a string is not a SPIFFE workload identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("identity {0:?} does not start with \"spiffe://\"")]
    MissingScheme(String),
    #[error("identity {0:?} has an empty trust domain")]
    EmptyTrustDomain(String),
    #[error("identity {value:?}: {what} contains an invalid character {ch:?}")]
    InvalidCharacter {
        value: String,
        what: &'static str,
        ch: char,
    },
    #[error("identity {0:?} is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")]
    BadPath(String),
    #[error("certificate has no SPIFFE URI SAN")]
    NoSpiffeSan,
    #[error("certificate has {0} SPIFFE URI SANs, expected exactly one")]
    MultipleSpiffeSans(usize),
    #[error("cannot parse certificate: {0}")]
    BadCertificate(String),
}

impl Identity {
    /// Builds an identity from its parts, validating each.
    pub fn new(
        trust_domain: impl Into<String>,
        namespace: impl Into<String>,
        service_account: impl Into<String>,
    ) -> Result<Self, IdentityError> {
        let id = Identity {
            trust_domain: trust_domain.into(),
            namespace: namespace.into(),
            service_account: service_account.into(),
        };
        // Validate through the one parser so both paths accept exactly the same set.
        let text = id.to_string();
        let parsed: Identity = text.parse()?;
        if parsed != id {
            return Err(IdentityError::BadPath(text));
        }
        Ok(id)
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }

    /// The identity in the end-entity certificate `der`: its single `spiffe://` URI SAN.
    pub fn from_certificate(der: &[u8]) -> Result<Self, IdentityError> {
        let uris = crate::certs::uri_sans(der).map_err(IdentityError::BadCertificate)?;
        let spiffe: Vec<&String> = uris.iter().filter(|u| u.starts_with(SCHEME)).collect();
        match spiffe.as_slice() {
            [] => Err(IdentityError::NoSpiffeSan),
            [one] => one.parse(),
            many => Err(IdentityError::MultipleSpiffeSans(many.len())),
        }
    }
}

fn check_segment(value: &str, what: &'static str, segment: &str) -> Result<(), IdentityError> {
    // SPIFFE path segments and Kubernetes names: letters, digits, '-', '.', '_'.
    if let Some(ch) = segment
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')))
    {
        return Err(IdentityError::InvalidCharacter {
            value: value.to_string(),
            what,
            ch,
        });
    }
    Ok(())
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let rest = value
            .strip_prefix(SCHEME)
            .ok_or_else(|| IdentityError::MissingScheme(value.to_string()))?;
        let (trust_domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        if trust_domain.is_empty() {
            return Err(IdentityError::EmptyTrustDomain(value.to_string()));
        }
        check_segment(value, "trust domain", trust_domain)?;
        let parts: Vec<&str> = path.split('/').collect();
        let [ns_kw, namespace, sa_kw, service_account] = parts.as_slice() else {
            return Err(IdentityError::BadPath(value.to_string()));
        };
        if *ns_kw != "ns" || *sa_kw != "sa" || namespace.is_empty() || service_account.is_empty() {
            return Err(IdentityError::BadPath(value.to_string()));
        }
        check_segment(value, "namespace", namespace)?;
        check_segment(value, "service account", service_account)?;
        Ok(Identity {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats_round_trip() {
        let id: Identity = "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
            .parse()
            .unwrap();
        assert_eq!(id.trust_domain(), "cluster.local");
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "bookinfo-productpage");
        assert_eq!(
            id.to_string(),
            "spiffe://cluster.local/ns/default/sa/bookinfo-productpage"
        );
        assert_eq!(
            Identity::new("cluster.local", "default", "bookinfo-productpage").unwrap(),
            id
        );
    }

    #[test]
    fn rejects_malformed_identities_with_clear_errors() {
        let cases = [
            ("http://cluster.local/ns/a/sa/b", "does not start with"),
            ("spiffe:///ns/a/sa/b", "empty trust domain"),
            ("spiffe://cluster.local", "is not of the form"),
            ("spiffe://cluster.local/ns/a", "is not of the form"),
            ("spiffe://cluster.local/ns/a/sa/", "is not of the form"),
            ("spiffe://cluster.local/ns//sa/b", "is not of the form"),
            ("spiffe://cluster.local/sa/b/ns/a", "is not of the form"),
            (
                "spiffe://cluster.local/ns/a/sa/b/extra",
                "is not of the form",
            ),
            (
                "spiffe://cluster.local/ns/a b/sa/b",
                "namespace contains an invalid character ' '",
            ),
            (
                "spiffe://clu?ster/ns/a/sa/b",
                "trust domain contains an invalid character '?'",
            ),
            (
                "spiffe://td/ns/a/sa/b?x=1",
                "service account contains an invalid character '?'",
            ),
        ];
        for (input, expected) in cases {
            let err = input.parse::<Identity>().unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{input}: got {err:?}, want {expected:?}"
            );
        }
        assert!(Identity::new("td", "a/b", "c").is_err());
    }
}
