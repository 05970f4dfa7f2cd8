//! RequestHeaderModifier / ResponseHeaderModifier.

use bytes::Bytes;
use mesh_registry::HeaderModifier;

use crate::codec::headers::{is_valid_name, is_valid_value};
use crate::codec::Headers;

/// set replaces every value, add appends one more line, remove deletes.
/// Entries that would produce an invalid header are skipped (translation
/// should have rejected them already).
pub fn apply(headers: &mut Headers, m: &HeaderModifier) {
    for (name, value) in &m.set {
        if valid(name, value) {
            headers.set(
                Bytes::copy_from_slice(name.as_bytes()),
                Bytes::copy_from_slice(value.as_bytes()),
            );
        }
    }
    for (name, value) in &m.add {
        if valid(name, value) {
            headers.add(
                Bytes::copy_from_slice(name.as_bytes()),
                Bytes::copy_from_slice(value.as_bytes()),
            );
        }
    }
    for name in &m.remove {
        headers.remove(name);
    }
}

fn valid(name: &str, value: &str) -> bool {
    is_valid_name(name.as_bytes()) && is_valid_value(value.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_add_remove() {
        let mut h = Headers::default();
        h.add("X-Header-Set", "old");
        h.add("x-header-add", "a1");
        h.add("X-Header-Remove", "r");
        let m = HeaderModifier {
            set: vec![("x-header-set".into(), "new".into())],
            add: vec![
                ("X-Header-Add".into(), "a2".into()),
                ("Bad\r\n".into(), "x".into()),
            ],
            remove: vec!["x-header-remove".into()],
        };
        apply(&mut h, &m);
        assert_eq!(
            h.joined("x-header-set").unwrap(),
            Bytes::from_static(b"new")
        );
        assert_eq!(
            h.joined("x-header-add").unwrap(),
            Bytes::from_static(b"a1,a2")
        );
        assert!(!h.contains("x-header-remove"));
        assert_eq!(h.len(), 3);
    }
}
