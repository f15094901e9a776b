//! Who sees what, from the snapshot alone (pure): an APICatalogItem in the portal's
//! namespace shows its APIs, with its plan, to its groups (or to everyone); an API no item
//! shows to a user does not exist for that user (404, never 403). The clusters that serve an
//! API now come from the same snapshot.

use atrium_proto::v1 as pb;
use atrium_routing::apim::operations::OperationSets;

/// The namespace of portal `id` (`namespace/name`).
pub fn namespace(portal: &str) -> &str {
    portal.split_once('/').map_or(portal, |(ns, _)| ns)
}

/// Whether `item` shows its APIs to a member of `groups`.
pub fn shows_to(item: &pb::CatalogItem, groups: &[String]) -> bool {
    item.everyone || item.groups.iter().any(|g| groups.contains(g))
}

/// The catalog items of `portal` that a member of `groups` sees, by id.
pub fn items<'a>(body: &'a pb::SnapshotBody, portal: &str, groups: &[String]) -> Vec<&'a pb::CatalogItem> {
    let ns = namespace(portal);
    body.catalog_items.iter().filter(|i| namespace(&i.id) == ns && shows_to(i, groups)).collect()
}

/// An API a user sees, with the items that show it to them.
#[derive(Debug)]
pub struct Visible<'a> {
    /// The API.
    pub api: &'a pb::Api,
    /// The items showing it (each with its plan).
    pub items: Vec<&'a pb::CatalogItem>,
}

impl Visible<'_> {
    /// Which of the API's operations the items show (owned, to be used off this thread).
    pub fn operations(&self) -> OperationView {
        let filters = if self.items.iter().any(|i| i.operation_filter.is_none()) {
            None
        } else {
            Some(self.items.iter().filter_map(|i| i.operation_filter.as_ref().map(|f| f.include.clone())).collect())
        };
        OperationView { sets: OperationSets::from_snapshot(&self.api.operation_sets), filters }
    }
}

/// Which operations of an API a user sees.
#[derive(Debug, Clone)]
pub struct OperationView {
    sets: OperationSets,
    /// The items' filters; none: an item shows every operation.
    filters: Option<Vec<Vec<String>>>,
}

impl OperationView {
    /// Whether operation `method` `path` (a path template of the spec) is shown: by an item
    /// without an operation filter, or by one whose filter allows it.
    pub fn shows(&self, method: &str, path: &str) -> bool {
        match &self.filters {
            None => true,
            Some(fs) => fs.iter().any(|include| self.sets.allows(include, method, path)),
        }
    }
}

/// The APIs of `portal` a member of `groups` sees, by title.
pub fn apis<'a>(body: &'a pb::SnapshotBody, portal: &str, groups: &[String]) -> Vec<Visible<'a>> {
    let items = items(body, portal, groups);
    let mut out: Vec<Visible<'a>> = body
        .apis
        .iter()
        .filter_map(|api| {
            let showing: Vec<_> = items.iter().copied().filter(|i| i.apis.contains(&api.id)).collect();
            (!showing.is_empty()).then_some(Visible { api, items: showing })
        })
        .collect();
    out.sort_by(|a, b| a.api.title.to_lowercase().cmp(&b.api.title.to_lowercase()).then(a.api.id.cmp(&b.api.id)));
    out
}

/// API `id` when a member of `groups` sees it in `portal`.
pub fn api<'a>(body: &'a pb::SnapshotBody, portal: &str, groups: &[String], id: &str) -> Option<Visible<'a>> {
    apis(body, portal, groups).into_iter().find(|v| v.api.id == id)
}

/// A child cluster serving an API now, as the parent sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Serving {
    /// The child.
    pub child: String,
    /// Whether the parent reaches it.
    pub reachable: bool,
    /// The uplink.
    pub uplink: String,
    /// Its weight.
    pub weight: u32,
    /// Whether its health check passes.
    pub healthy: bool,
}

/// The children that serve API `id` now: for each router of the API that sends to
/// `X@multicluster`, each child exposing uplink `X` (or the one pinned).
pub fn serving(body: &pb::SnapshotBody, id: &str) -> Vec<Serving> {
    let mut out = Vec::new();
    for r in body.routers.iter().filter(|r| r.api == id) {
        let Some(svc) = body.services.iter().find(|s| s.id == r.service) else { continue };
        let Some(pb::service::Kind::Multicluster(m)) = &svc.kind else { continue };
        for c in body.children.iter().filter(|c| m.child.is_empty() || m.child == c.name) {
            for u in c.uplinks.iter().filter(|u| u.name == m.uplink) {
                let s = Serving {
                    child: c.name.clone(),
                    reachable: c.reachable,
                    uplink: u.name.clone(),
                    weight: u.weight,
                    healthy: u.healthy,
                };
                if !out.contains(&s) {
                    out.push(s);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(id: &str, apis: &[&str], groups: &[&str], everyone: bool) -> pb::CatalogItem {
        pb::CatalogItem {
            id: id.into(),
            apis: apis.iter().map(|s| s.to_string()).collect(),
            groups: groups.iter().map(|s| s.to_string()).collect(),
            everyone,
            plan: Some(pb::Plan { id: format!("{id}-plan"), ..Default::default() }),
            operation_filter: None,
        }
    }

    fn body() -> pb::SnapshotBody {
        pb::SnapshotBody {
            apis: ["apps/crm", "apps/billing", "apps/internal", "other/crm"]
                .iter()
                .map(|id| pb::Api { id: id.to_string(), title: id.to_string(), ..Default::default() })
                .collect(),
            catalog_items: vec![
                item("apps/standard", &["apps/crm", "apps/billing"], &["developers", "external"], false),
                item("apps/premium", &["apps/crm", "apps/billing"], &["premium-customers"], false),
                item("apps/internal", &["apps/internal"], &["staff"], false),
                item("other/all", &["other/crm"], &[], true),
            ],
            ..Default::default()
        }
    }

    fn seen(groups: &[&str]) -> Vec<String> {
        let g: Vec<String> = groups.iter().map(|s| s.to_string()).collect();
        let b = body();
        apis(&b, "apps/portal", &g)
            .iter()
            .map(|v| format!("{}:{}", v.api.id, v.items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>().join("+")))
            .collect()
    }

    #[test]
    fn each_group_sees_exactly_its_items() {
        assert_eq!(seen(&["developers"]), ["apps/billing:apps/standard", "apps/crm:apps/standard"]);
        assert_eq!(seen(&["external"]), ["apps/billing:apps/standard", "apps/crm:apps/standard"]);
        assert_eq!(seen(&["premium-customers"]), ["apps/billing:apps/premium", "apps/crm:apps/premium"]);
        assert_eq!(
            seen(&["developers", "premium-customers"]),
            ["apps/billing:apps/standard+apps/premium", "apps/crm:apps/standard+apps/premium"]
        );
        assert!(seen(&[]).is_empty(), "no group: nothing (the everyone item is in another namespace)");
        let b = body();
        assert!(api(&b, "apps/portal", &["developers".into()], "apps/internal").is_none());
        assert_eq!(apis(&b, "other/portal", &[]).len(), 1, "everyone");
    }

    #[test]
    fn serving_lists_the_children_of_the_api_uplink() {
        let mut b = body();
        b.routers.push(pb::Router {
            id: "r".into(),
            api: "apps/crm".into(),
            service: "crm@multicluster".into(),
            ..Default::default()
        });
        b.services.push(pb::Service {
            id: "crm@multicluster".into(),
            kind: Some(pb::service::Kind::Multicluster(pb::Multicluster {
                uplink: "crm".into(),
                child: String::new(),
            })),
        });
        let up = |name: &str, healthy| pb::UplinkState { name: name.into(), weight: 1, healthy, entry_points: vec![] };
        b.children = vec![
            pb::Child {
                name: "cluster-a".into(),
                reachable: true,
                uplinks: vec![up("crm", true)],
                ..Default::default()
            },
            pb::Child {
                name: "cluster-b".into(),
                reachable: false,
                uplinks: vec![up("billing", true)],
                ..Default::default()
            },
            pb::Child {
                name: "cluster-c".into(),
                reachable: true,
                uplinks: vec![up("crm", false)],
                ..Default::default()
            },
        ];
        let s = serving(&b, "apps/crm");
        assert_eq!(
            s.iter().map(|s| (s.child.as_str(), s.healthy)).collect::<Vec<_>>(),
            [("cluster-a", true), ("cluster-c", false)]
        );
        assert!(serving(&b, "apps/billing").is_empty());
    }
}
