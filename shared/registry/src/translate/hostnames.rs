//! Hostnames: parsing, wildcard coverage and the Gateway API intersection of
//! a listener hostname with a route's hostnames.

use crate::snapshot::wildcard_matches;

/// A hostname pattern, lower-cased. `*.example.com` is `Wildcard(".example.com")`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostKey {
    Exact(String),
    Wildcard(String),
    /// No hostname: every host.
    Any,
}

impl HostKey {
    pub fn parse(hostname: &str) -> HostKey {
        let h = hostname.trim().to_ascii_lowercase();
        if h.is_empty() || h == "*" {
            HostKey::Any
        } else if let Some(rest) = h.strip_prefix('*') {
            HostKey::Wildcard(rest.to_string())
        } else {
            HostKey::Exact(h)
        }
    }

    /// True when every host `other` matches is also matched by `self`.
    pub fn covers(&self, other: &HostKey) -> bool {
        match (self, other) {
            (HostKey::Any, _) => true,
            (_, HostKey::Any) => false,
            (HostKey::Exact(a), HostKey::Exact(b)) => a == b,
            (HostKey::Exact(_), HostKey::Wildcard(_)) => false,
            (HostKey::Wildcard(s), HostKey::Exact(h)) => wildcard_matches(s, h),
            // `*.example.com` covers `*.foo.example.com` (and itself).
            (HostKey::Wildcard(s), HostKey::Wildcard(t)) => t == s || wildcard_matches(s, t),
        }
    }

    /// Precedence between host groups (Gateway API: most characters in a
    /// matching non-wildcard hostname, then most characters in a matching
    /// hostname): smaller is more specific.
    pub fn specificity_rank(&self) -> (u8, std::cmp::Reverse<usize>) {
        match self {
            HostKey::Exact(h) => (0, std::cmp::Reverse(h.len())),
            HostKey::Wildcard(s) => (1, std::cmp::Reverse(s.len())),
            HostKey::Any => (2, std::cmp::Reverse(0)),
        }
    }

    /// As written in config (`*.example.com`), None for Any.
    pub fn display(&self) -> Option<String> {
        match self {
            HostKey::Exact(h) => Some(h.clone()),
            HostKey::Wildcard(s) => Some(format!("*{s}")),
            HostKey::Any => None,
        }
    }
}

/// The hostnames a route serves on a listener: the intersection of the
/// listener's hostname (None = any) with the route's hostnames (empty = any).
/// Empty result: the route does not attach to that listener.
pub fn intersect(listener: &HostKey, route: &[HostKey]) -> Vec<HostKey> {
    if route.is_empty() {
        return vec![listener.clone()];
    }
    let mut out: Vec<HostKey> = Vec::new();
    for r in route {
        let hit = if listener.covers(r) {
            Some(r.clone())
        } else if r.covers(listener) {
            Some(listener.clone())
        } else {
            None
        };
        if let Some(h) = hit {
            if !out.contains(&h) {
                out.push(h);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(v: &[&str]) -> Vec<HostKey> {
        v.iter().map(|h| HostKey::parse(h)).collect()
    }

    #[test]
    fn parse_forms() {
        assert_eq!(HostKey::parse("Foo.COM"), HostKey::Exact("foo.com".into()));
        assert_eq!(HostKey::parse("*.a.io"), HostKey::Wildcard(".a.io".into()));
        assert_eq!(HostKey::parse(""), HostKey::Any);
    }

    #[test]
    fn intersection_follows_the_spec_examples() {
        // Listener exact: route exact equal, route wildcard covering it.
        let l = HostKey::parse("very.specific.com");
        assert_eq!(
            intersect(
                &l,
                &keys(&[
                    "non.matching.com",
                    "*.nonmatchingwildcard.io",
                    "very.specific.com"
                ])
            ),
            keys(&["very.specific.com"])
        );
        assert_eq!(
            intersect(&l, &keys(&["*.specific.com"])),
            keys(&["very.specific.com"])
        );
        // Listener wildcard: exact hosts under it, not the bare parent.
        let l = HostKey::parse("*.wildcard.io");
        assert_eq!(
            intersect(
                &l,
                &keys(&[
                    "non.matching.com",
                    "wildcard.io",
                    "foo.wildcard.io",
                    "foo.bar.wildcard.io"
                ])
            ),
            keys(&["foo.wildcard.io", "foo.bar.wildcard.io"])
        );
        // Wildcard vs wildcard: the more specific one.
        assert_eq!(
            intersect(
                &HostKey::parse("*.example.com"),
                &keys(&["*.foo.example.com", "bar.com"])
            ),
            keys(&["*.foo.example.com"])
        );
        assert_eq!(
            intersect(
                &HostKey::parse("*.foo.example.com"),
                &keys(&["*.example.com"])
            ),
            keys(&["*.foo.example.com"])
        );
        // No hostnames on either side.
        assert_eq!(intersect(&HostKey::Any, &[]), vec![HostKey::Any]);
        assert_eq!(
            intersect(&HostKey::Any, &keys(&["a.com"])),
            keys(&["a.com"])
        );
        assert_eq!(intersect(&HostKey::parse("*.x.io"), &[]), keys(&["*.x.io"]));
        // Disjoint.
        assert!(intersect(&HostKey::parse("*.x.io"), &keys(&["x.io", "a.y.io"])).is_empty());
    }

    #[test]
    fn coverage() {
        let w = HostKey::parse("*.example.com");
        assert!(w.covers(&HostKey::parse("a.b.example.com")));
        assert!(!w.covers(&HostKey::parse("example.com")));
        assert!(w.covers(&HostKey::parse("*.foo.example.com")));
        assert!(!HostKey::parse("*.foo.example.com").covers(&w));
        assert!(HostKey::Any.covers(&w));
        assert!(!w.covers(&HostKey::Any));
    }
}
