//! Which child takes a request for `X@multicluster`: the uplink and pinned child its name
//! resolves to, the children that can take it now, and a weighted pick among them.

use std::sync::atomic::{AtomicU64, Ordering};

use atrium_proto::v1 as pb;

/// Resolves `name` of `name@multicluster` against the children: the exact uplink name
/// first, then the longest child name that suffixes it (`crm-cluster-a` → uplink `crm` on
/// child `cluster-a`); see [`atrium_routing::children::resolve`].
pub fn resolve<'a>(children: &'a [pb::Child], name: &'a str) -> (&'a str, Option<&'a str>) {
    // Any child may be pinned here (which ones expose the uplink now is for
    // [`candidates`] to say): a child that is down for the moment stays pinned.
    let exposes = |child: Option<&str>, uplink: &str| {
        child.is_some() || children.iter().any(|c| c.uplinks.iter().any(|u| u.name == uplink))
    };
    atrium_routing::children::resolve(name, children.iter().map(|c| c.name.as_str()), exposes).unwrap_or((name, None))
}

/// Children that can take a request for `uplink` now, with their weights; `down` says
/// which children this data plane itself lost a moment ago.
pub fn candidates<'a>(
    children: &'a [pb::Child],
    uplink: &str,
    pinned: Option<&str>,
    down: impl Fn(&str) -> bool,
) -> Vec<(&'a pb::Child, u32)> {
    children
        .iter()
        .filter(|c| c.reachable && pinned.is_none_or(|p| p == c.name) && !down(&c.name))
        .filter_map(|c| c.uplinks.iter().find(|u| u.name == uplink && u.healthy && u.weight > 0).map(|u| (c, u.weight)))
        .collect()
}

/// Weighted pick by a rotating counter (deterministic, spreads by weight).
pub fn pick<'a>(cands: &[(&'a pb::Child, u32)], counter: &AtomicU64) -> Option<&'a pb::Child> {
    let total: u64 = cands.iter().map(|(_, w)| u64::from(*w)).sum();
    if total == 0 {
        return None;
    }
    let mut n = counter.fetch_add(1, Ordering::Relaxed) % total;
    for (c, w) in cands {
        if n < u64::from(*w) {
            return Some(c);
        }
        n -= u64::from(*w);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn child(name: &str, uplinks: &[(&str, u32, bool)], reachable: bool) -> pb::Child {
        pb::Child {
            name: name.into(),
            address: "https://127.0.0.1:9443".into(),
            transport: None,
            reachable,
            uplinks: uplinks
                .iter()
                .map(|(n, w, h)| pb::UplinkState { name: n.to_string(), weight: *w, healthy: *h, entry_points: vec![] })
                .collect(),
        }
    }

    #[test]
    fn names_resolve_exact_first_then_longest_child_suffix() {
        let cs = vec![child("a", &[("crm", 1, true)], true), child("cluster-a", &[("crm", 1, true)], true)];
        assert_eq!(resolve(&cs, "crm"), ("crm", None));
        assert_eq!(resolve(&cs, "crm-cluster-a"), ("crm", Some("cluster-a")));
        assert_eq!(resolve(&cs, "crm-a"), ("crm", Some("a")));
        assert_eq!(resolve(&cs, "billing"), ("billing", None));
    }

    #[test]
    fn candidates_follow_health_reachability_and_weight() {
        let mut down = std::collections::HashSet::new();
        let cs = vec![
            child("a", &[("crm", 1, true)], true),
            child("b", &[("crm", 3, true)], true),
            child("c", &[("crm", 5, false)], true),
            child("d", &[("crm", 5, true)], false),
            child("e", &[("crm", 0, true)], true),
        ];
        let cands = candidates(&cs, "crm", None, |c| down.contains(c));
        assert_eq!(cands.iter().map(|(c, w)| (c.name.as_str(), *w)).collect::<Vec<_>>(), vec![("a", 1), ("b", 3)]);
        let counter = AtomicU64::new(0);
        let picks: Vec<&str> = (0..400).map(|_| pick(&cands, &counter).unwrap().name.as_str()).collect();
        assert_eq!(picks.iter().filter(|n| **n == "b").count(), 300);
        assert_eq!(candidates(&cs, "crm", Some("a"), |c| down.contains(c)).len(), 1);
        down.insert("a");
        assert_eq!(candidates(&cs, "crm", None, |c| down.contains(c)).len(), 1);
    }
}
