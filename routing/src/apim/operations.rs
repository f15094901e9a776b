//! OpenAPI operations at the gateway, pure: which operation of an API's spec a request is
//! (a method and a path template such as `/users/{id}`), and whether an operation filter
//! (named operation sets of the API) lets it through.

use atrium_proto::v1 as pb;

/// One segment of a path template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    /// Literal text.
    Lit(String),
    /// `{name}`: any one non-empty segment.
    Param,
}

/// An API's operations, as its spec defines them.
#[derive(Debug, Default, Clone)]
pub struct Operations {
    ops: Vec<(String, String, Vec<Segment>)>,
    base_paths: Vec<String>,
}

/// Which operation a request is.
#[derive(Debug, PartialEq, Eq)]
pub enum Found<'a> {
    /// This operation's path template.
    Operation(&'a str),
    /// The path is an operation's, not with this method (405): the methods it has.
    WrongMethod(Vec<&'a str>),
    /// No operation has this path (404).
    NoPath,
}

fn segments(template: &str) -> Vec<Segment> {
    template
        .trim_start_matches('/')
        .split('/')
        .map(|s| {
            if s.starts_with('{') && s.ends_with('}') && s.len() > 2 {
                Segment::Param
            } else {
                Segment::Lit(s.to_string())
            }
        })
        .collect()
}

fn template_matches(t: &[Segment], path: &str) -> bool {
    let mut parts = path.trim_start_matches('/').split('/');
    for seg in t {
        match (seg, parts.next()) {
            (Segment::Lit(l), Some(p)) if l == p => {}
            (Segment::Param, Some(p)) if !p.is_empty() => {}
            _ => return false,
        }
    }
    parts.next().is_none()
}

impl Operations {
    /// The operations a snapshot's API carries, with its servers' base paths.
    pub fn from_snapshot(ops: &[pb::Operation], base_paths: &[String]) -> Operations {
        Operations {
            ops: ops.iter().map(|o| (o.method.to_ascii_uppercase(), o.path.clone(), segments(&o.path))).collect(),
            base_paths: base_paths
                .iter()
                .map(|b| b.trim_end_matches('/').to_string())
                .filter(|b| !b.is_empty())
                .collect(),
        }
    }

    /// Whether the spec defined any operation (none: nothing to validate against).
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The operation `method path` is: `path` as it is, or without one of the servers' base
    /// paths. A literal template wins over one with parameters (`/users/me` over
    /// `/users/{id}`).
    pub fn find(&self, method: &str, path: &str) -> Found<'_> {
        let mut candidates = vec![path];
        for b in &self.base_paths {
            if let Some(rest) = path.strip_prefix(b.as_str()) {
                if rest.is_empty() || rest.starts_with('/') {
                    candidates.push(if rest.is_empty() { "/" } else { rest });
                }
            }
        }
        let mut methods: Vec<&str> = Vec::new();
        for p in candidates {
            let mut best: Option<(usize, &str)> = None;
            for (m, template, segs) in &self.ops {
                if !template_matches(segs, p) {
                    continue;
                }
                if m.eq_ignore_ascii_case(method) || (method.eq_ignore_ascii_case("HEAD") && m == "GET") {
                    let params = segs.iter().filter(|s| **s == Segment::Param).count();
                    if best.is_none_or(|(n, _)| params < n) {
                        best = Some((params, template));
                    }
                } else if !methods.contains(&m.as_str()) {
                    methods.push(m);
                }
            }
            if let Some((_, t)) = best {
                return Found::Operation(t);
            }
        }
        if methods.is_empty() { Found::NoPath } else { Found::WrongMethod(methods) }
    }
}

/// A matcher of an operation set.
#[derive(Debug, Clone)]
struct Matcher {
    methods: Vec<String>,
    path: Option<String>,
    prefix: Option<String>,
    regex: Option<regex::Regex>,
}

/// An API's operation sets, by name.
#[derive(Debug, Default, Clone)]
pub struct OperationSets {
    sets: Vec<(String, Vec<Matcher>)>,
}

impl OperationSets {
    /// The sets a snapshot's API carries; a regex that does not compile matches nothing
    /// (the compiler refused it already).
    pub fn from_snapshot(sets: &[pb::OperationSet]) -> OperationSets {
        OperationSets {
            sets: sets
                .iter()
                .map(|s| {
                    let matchers = s
                        .matchers
                        .iter()
                        .map(|m| Matcher {
                            methods: m.methods.iter().map(|x| x.to_ascii_uppercase()).collect(),
                            path: (!m.path.is_empty()).then(|| m.path.clone()),
                            prefix: (!m.path_prefix.is_empty()).then(|| m.path_prefix.clone()),
                            regex: (!m.path_regex.is_empty())
                                .then(|| regex::Regex::new(&m.path_regex).unwrap_or_else(|_| never())),
                        })
                        .collect();
                    (s.name.clone(), matchers)
                })
                .collect(),
        }
    }

    /// Whether a filter that includes the sets `include` allows operation `method path`
    /// (`path`: the operation's template when the spec knows it, else the request's path).
    /// An empty `include` allows nothing.
    pub fn allows(&self, include: &[String], method: &str, path: &str) -> bool {
        self.sets.iter().filter(|(name, _)| include.contains(name)).flat_map(|(_, m)| m).any(|m| {
            let method_ok = m.methods.is_empty() || m.methods.iter().any(|x| x.eq_ignore_ascii_case(method));
            let path_ok = match (&m.path, &m.prefix, &m.regex) {
                (Some(p), _, _) => p == path,
                (_, Some(p), _) => path.starts_with(p.as_str()),
                (_, _, Some(r)) => r.is_match(path),
                _ => true,
            };
            method_ok && path_ok
        })
    }
}

/// A regex that matches nothing.
fn never() -> regex::Regex {
    regex::Regex::new("[^\\s\\S]").expect("a valid regex")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ops(list: &[(&str, &str)], bases: &[&str]) -> Operations {
        let ops: Vec<pb::Operation> =
            list.iter().map(|(m, p)| pb::Operation { method: m.to_string(), path: p.to_string() }).collect();
        Operations::from_snapshot(&ops, &bases.iter().map(|b| b.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn requests_find_their_operation_or_a_404_or_405() {
        let o = ops(
            &[("get", "/employees"), ("get", "/employees/{id}"), ("get", "/employees/me"), ("post", "/employees")],
            &["/crm"],
        );
        assert_eq!(o.find("GET", "/employees/42"), Found::Operation("/employees/{id}"));
        assert_eq!(o.find("GET", "/employees/me"), Found::Operation("/employees/me"), "a literal path wins");
        assert_eq!(o.find("GET", "/crm/employees"), Found::Operation("/employees"), "a server base path is optional");
        assert_eq!(o.find("HEAD", "/employees"), Found::Operation("/employees"));
        assert_eq!(o.find("DELETE", "/employees"), Found::WrongMethod(vec!["GET", "POST"]));
        assert_eq!(o.find("GET", "/employees/"), Found::NoPath, "an empty parameter is no parameter");
        assert_eq!(o.find("GET", "/employees/1/2"), Found::NoPath);
        assert_eq!(o.find("GET", "/crmx/employees"), Found::NoPath);
        assert_eq!(o.find("GET", "/invoices"), Found::NoPath);
    }

    #[test]
    fn filters_allow_only_the_included_sets() {
        let set = |name: &str, m: pb::OperationMatcher| pb::OperationSet { name: name.into(), matchers: vec![m] };
        let sets = OperationSets::from_snapshot(&[
            set(
                "read",
                pb::OperationMatcher {
                    methods: vec!["GET".into()],
                    path_prefix: "/employees".into(),
                    ..Default::default()
                },
            ),
            set("one", pb::OperationMatcher { path: "/employees/{id}".into(), ..Default::default() }),
            set("rx", pb::OperationMatcher { path_regex: "^/inv.*s$".into(), ..Default::default() }),
        ]);
        let inc = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(sets.allows(&inc(&["read"]), "GET", "/employees/{id}"));
        assert!(!sets.allows(&inc(&["read"]), "POST", "/employees"));
        assert!(sets.allows(&inc(&["one"]), "DELETE", "/employees/{id}"));
        assert!(!sets.allows(&inc(&["one"]), "GET", "/employees"));
        assert!(sets.allows(&inc(&["rx"]), "GET", "/invoices"));
        assert!(!sets.allows(&inc(&[]), "GET", "/employees"), "an empty filter allows nothing");
        assert!(!sets.allows(&inc(&["unknown"]), "GET", "/employees"));
    }
}
