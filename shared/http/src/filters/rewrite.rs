//! Path modification shared by URLRewrite and RequestRedirect.

use mesh_registry::{PathMatch, PathModifier};

/// New path (query kept) for `target` = `path[?query]`.
/// `matched` is the rule's path match (ReplacePrefixMatch replaces its prefix).
pub fn rewrite_path(target: &[u8], modifier: &PathModifier, matched: &PathMatch) -> Vec<u8> {
    let (path, query) = match target.iter().position(|b| *b == b'?') {
        Some(i) => (&target[..i], &target[i..]),
        None => (target, &b""[..]),
    };
    let mut out = match modifier {
        PathModifier::ReplaceFullPath(full) => {
            let mut v = full.as_bytes().to_vec();
            if v.is_empty() {
                v.push(b'/');
            }
            v
        }
        PathModifier::ReplacePrefixMatch(replacement) => {
            let prefix: &[u8] = match matched {
                PathMatch::Prefix(p) | PathMatch::Exact(p) => p.as_bytes(),
                PathMatch::Regex(_) => b"",
                // Istio/Envoy prefix_rewrite: exactly the matched characters are replaced.
                PathMatch::StringPrefix(p) => {
                    let rest = path.strip_prefix(p.as_bytes()).unwrap_or(path);
                    let mut v = replacement.as_bytes().to_vec();
                    v.extend_from_slice(rest);
                    if v.is_empty() {
                        v.push(b'/');
                    }
                    v.extend_from_slice(query);
                    return v;
                }
            };
            replace_prefix(path, prefix, replacement.as_bytes())
        }
    };
    out.extend_from_slice(query);
    out
}

/// The Gateway API table: trailing slashes of the prefix and of the
/// replacement do not double up, and the result is never empty.
pub fn replace_prefix(path: &[u8], prefix: &[u8], replacement: &[u8]) -> Vec<u8> {
    let prefix = prefix.strip_suffix(b"/").unwrap_or(prefix);
    let rest = if path.len() >= prefix.len() && path[..prefix.len()] == *prefix {
        &path[prefix.len()..]
    } else {
        path
    };
    let replacement = replacement.strip_suffix(b"/").unwrap_or(replacement);
    let mut out = Vec::with_capacity(replacement.len() + rest.len() + 1);
    out.extend_from_slice(replacement);
    if !rest.is_empty() && rest[0] != b'/' {
        out.push(b'/');
    }
    out.extend_from_slice(rest);
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_table_for_replace_prefix_match() {
        let table = [
            ("/foo/bar", "/foo", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo", "/xyz/", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz", "/xyz/bar"),
            ("/foo/bar", "/foo/", "/xyz/", "/xyz/bar"),
            ("/foo", "/foo", "/xyz", "/xyz"),
            ("/foo/", "/foo", "/xyz", "/xyz/"),
            ("/foo/bar", "/foo", "", "/bar"),
            ("/foo/", "/foo", "", "/"),
            ("/foo", "/foo", "", "/"),
            ("/foo/", "/foo", "/", "/"),
            ("/foo", "/foo", "/", "/"),
            ("/strip-prefix/three", "/strip-prefix", "/", "/three"),
            ("/strip-prefix", "/strip-prefix", "/", "/"),
            ("/prefix/one/two", "/prefix/one", "/one", "/one/two"),
            ("/anything", "/", "/xyz", "/xyz/anything"),
        ];
        for (path, prefix, repl, want) in table {
            let got = replace_prefix(path.as_bytes(), prefix.as_bytes(), repl.as_bytes());
            assert_eq!(
                String::from_utf8(got).unwrap(),
                want,
                "{path} {prefix} {repl}"
            );
        }
    }

    #[test]
    fn a_string_prefix_is_replaced_character_for_character() {
        let m = PathMatch::StringPrefix("/v1/".into());
        let modifier = PathModifier::ReplacePrefixMatch("/".into());
        assert_eq!(rewrite_path(b"/v1/a?q=1", &modifier, &m), b"/a?q=1");
        let m = PathMatch::StringPrefix("/v1".into());
        let modifier = PathModifier::ReplacePrefixMatch("/v2".into());
        assert_eq!(rewrite_path(b"/v1x/a", &modifier, &m), b"/v2x/a");
    }

    #[test]
    fn query_is_kept() {
        let m = PathMatch::Prefix("/a".into());
        let got = rewrite_path(
            b"/a/b?x=1",
            &PathModifier::ReplacePrefixMatch("/c".into()),
            &m,
        );
        assert_eq!(got, b"/c/b?x=1");
        let got = rewrite_path(
            b"/a/b?x=1",
            &PathModifier::ReplaceFullPath("/full".into()),
            &m,
        );
        assert_eq!(got, b"/full?x=1");
    }
}
