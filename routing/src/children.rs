//! Child clusters as a parent's configuration names them: the one parser of a child's
//! `address` (values, lint and the data plane's dialler all call it).

/// Why a child's `address` cannot be dialled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Not `https://`: the uplink is QUIC with TLS.
    #[error("child address {0:?} must start with https:// (the uplink is QUIC with TLS)")]
    Scheme(String),
    /// A path, no host, or an unclosed IPv6 bracket.
    #[error("child address {0:?} must be https://host[:port] with no path")]
    Shape(String),
    /// A port that is not 1-65535.
    #[error("child address {address:?}: invalid port {port:?}")]
    Port {
        /// The address.
        address: String,
        /// The port as written.
        port: String,
    },
}

/// A child's `address` (`https://host[:port]`, IPv6 in brackets) → (host, port); the port
/// defaults to 9443. The one parser of child addresses (values, lint and dialling use it).
pub fn parse_address(address: &str) -> Result<(String, u16), AddressError> {
    let rest = address.strip_prefix("https://").ok_or_else(|| AddressError::Scheme(address.to_string()))?;
    let rest = rest.trim_end_matches('/');
    let shape = || AddressError::Shape(address.to_string());
    if rest.is_empty() || rest.contains('/') {
        return Err(shape());
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(shape)?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(shape());
    }
    let port = match port {
        None => 9443,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| AddressError::Port { address: address.to_string(), port: p.to_string() })?,
    };
    Ok((host, port))
}

/// Resolves `name` of `name@multicluster`: the uplink `name` itself when `exposes(None,
/// name)` (some child exposes it); else the longest child name `c` such that `name` is
/// `<uplink>-<c>` and `exposes(Some(c), uplink)` (`crm-cluster-a` → uplink `crm` pinned
/// to `cluster-a`). The one resolution of such names (the compiler's, against what the
/// parent knows of its children, and the data plane's, against its snapshot).
pub fn resolve<'a>(
    name: &'a str,
    children: impl IntoIterator<Item = &'a str>,
    exposes: impl Fn(Option<&str>, &str) -> bool,
) -> Option<(&'a str, Option<&'a str>)> {
    if exposes(None, name) {
        return Some((name, None));
    }
    let mut by_len: Vec<&str> = children.into_iter().collect();
    by_len.sort_by_key(|c| std::cmp::Reverse(c.len()));
    by_len.into_iter().find_map(|c| {
        let uplink = name.strip_suffix(c)?.strip_suffix('-')?;
        exposes(Some(c), uplink).then_some((uplink, Some(c)))
    })
}

/// A child cluster's name is a DNS label.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_to_an_exact_uplink_first_then_the_longest_child_suffix() {
        let exposed = [("a", "crm"), ("cluster-a", "crm"), ("b", "crm-cluster-a-x")];
        let exposes = |child: Option<&str>, uplink: &str| {
            exposed.iter().any(|(c, u)| *u == uplink && child.is_none_or(|want| want == *c))
        };
        let children = || exposed.iter().map(|(c, _)| *c);
        assert_eq!(resolve("crm", children(), exposes), Some(("crm", None)));
        assert_eq!(resolve("crm-cluster-a", children(), exposes), Some(("crm", Some("cluster-a"))));
        assert_eq!(resolve("crm-a", children(), exposes), Some(("crm", Some("a"))));
        assert_eq!(resolve("billing-a", children(), exposes), None, "a child that does not expose it");
        assert_eq!(resolve("crm-b", children(), exposes), None);
    }

    #[test]
    fn addresses() {
        assert_eq!(parse_address("https://127.0.0.2:9443").unwrap(), ("127.0.0.2".into(), 9443));
        assert_eq!(parse_address("https://child-a.example.com").unwrap(), ("child-a.example.com".into(), 9443));
        assert_eq!(parse_address("https://[::1]:9000").unwrap(), ("::1".into(), 9000));
        assert!(matches!(parse_address("http://x:1"), Err(AddressError::Scheme(_))));
        assert!(matches!(parse_address("https://a:0"), Err(AddressError::Port { .. })));
        assert!(matches!(parse_address("https://a:99999"), Err(AddressError::Port { .. })));
        assert!(matches!(parse_address("https://a/path"), Err(AddressError::Shape(_))));
        assert!(matches!(parse_address("https://[::1"), Err(AddressError::Shape(_))));
    }

    #[test]
    fn cluster_names() {
        assert!(is_valid_name("cluster-a"));
        assert!(!is_valid_name("Cluster_A"));
        assert!(!is_valid_name("-a"));
        assert!(!is_valid_name(""));
    }
}
