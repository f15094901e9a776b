//! Traefik v3 rules: parse once, match many times.
//!
//! A rule such as ``Host(`api.example.com`) && PathPrefix(`/crm`)`` is parsed into a tree
//! ([`parser`]), each matcher is compiled (regexps through [`re2`], CIDRs, canonical host
//! patterns) and the result is a [`Rule`] that answers [`Rule::matches`] for a
//! [`RequestView`] with no allocation on the common paths. The fine points follow Traefik's
//! own matchers; `shared/reference/traefik-semantics.md` lists them and the tests below
//! cover each one.

mod parser;
pub mod re2;

use std::fmt;
use std::net::IpAddr;

use http::HeaderName;
use ipnet::IpNet;
use regex::Regex;

pub use parser::Expr;

use crate::request::RequestView;

/// A rule that failed to parse or compile, with the byte offset of the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at position {position})")]
pub struct RuleError {
    /// Byte offset in the rule text (0-based).
    pub position: usize,
    /// What is wrong.
    pub message: String,
}

impl RuleError {
    pub(crate) fn at(position: usize, message: impl Into<String>) -> Self {
        RuleError { position, message: message.into() }
    }
}

/// The matchers of Traefik v3, by their declared names.
const MATCHERS: &[&str] = &[
    "Host",
    "HostRegexp",
    "Path",
    "PathPrefix",
    "PathRegexp",
    "Method",
    "Header",
    "HeaderRegexp",
    "Query",
    "QueryRegexp",
    "ClientIP",
];

/// Resolves a matcher name the way Traefik does: exactly as declared, all lower case, all
/// upper case, or capitalised (`Pathprefix`). `pathPrefix` is unknown.
fn resolve_matcher(name: &str) -> Option<&'static str> {
    MATCHERS.iter().copied().find(|m| {
        let lower = m.to_ascii_lowercase();
        let mut cap = lower.clone();
        cap[..1].make_ascii_uppercase();
        name == *m || name == lower || name == m.to_ascii_uppercase() || name == cap
    })
}

/// A compiled matcher.
#[derive(Debug, Clone)]
enum Matcher {
    Host(String),
    HostRegexp(Regex),
    Path(String),
    PathPrefix(String),
    PathRegexp(Regex),
    Method(String),
    Header(Option<HeaderName>, String),
    HeaderRegexp(Option<HeaderName>, Regex),
    Query(String, String),
    QueryRegexp(String, Regex),
    ClientIp(IpNet),
}

#[derive(Debug, Clone)]
enum Node {
    M(Matcher),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    Not(Box<Node>),
}

/// A parsed and compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    text: String,
    tree: Node,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

fn compile_call(name: &str, args: Vec<String>, pos: usize) -> Result<Matcher, RuleError> {
    let Some(m) = resolve_matcher(name) else {
        return Err(RuleError::at(pos, format!("unknown matcher `{name}`")));
    };
    let (min, max) = match m {
        "Header" | "HeaderRegexp" => (2, 2),
        "Query" | "QueryRegexp" => (1, 2),
        _ => (1, 1),
    };
    if args.len() < min || args.len() > max {
        let want = if min == max { format!("{min}") } else { format!("{min} or {max}") };
        return Err(RuleError::at(pos, format!("{m} takes {want} argument(s), got {}", args.len())));
    }
    if args.iter().any(|a| a.is_empty()) {
        return Err(RuleError::at(pos, format!("empty argument for matcher {m}")));
    }
    let regex = |p: &str| re2::compile(p).map_err(|e| RuleError::at(pos, format!("invalid regexp {p:?} in {m}: {e}")));
    // Go moves `Host` out of the header map, so Traefik's header matchers never see it.
    let header_name = |n: &str| HeaderName::from_bytes(n.as_bytes()).ok().filter(|h| h != http::header::HOST);
    let mut args = args.into_iter();
    let a0 = args.next().unwrap_or_default();
    let a1 = args.next();
    Ok(match m {
        "Host" => {
            if !a0.is_ascii() {
                return Err(RuleError::at(
                    pos,
                    format!("invalid value {a0:?} for Host: non-ASCII characters are not allowed (use punycode)"),
                ));
            }
            let h = a0.to_ascii_lowercase();
            let h = h.strip_prefix('[').and_then(|x| x.strip_suffix(']')).map(str::to_string).unwrap_or(h);
            Matcher::Host(h)
        }
        "HostRegexp" => {
            if !a0.is_ascii() {
                return Err(RuleError::at(
                    pos,
                    format!("invalid value {a0:?} for HostRegexp: non-ASCII characters are not allowed"),
                ));
            }
            Matcher::HostRegexp(regex(&a0)?)
        }
        "Path" | "PathPrefix" => {
            if !a0.starts_with('/') {
                return Err(RuleError::at(pos, format!("path {a0:?} in {m} does not start with a '/'")));
            }
            if m == "Path" { Matcher::Path(a0) } else { Matcher::PathPrefix(a0) }
        }
        "PathRegexp" => Matcher::PathRegexp(regex(&a0)?),
        "Method" => Matcher::Method(a0.to_uppercase()),
        "Header" => Matcher::Header(header_name(&a0), a1.unwrap_or_default()),
        "HeaderRegexp" => Matcher::HeaderRegexp(header_name(&a0), regex(&a1.unwrap_or_default())?),
        "Query" => Matcher::Query(a0, a1.unwrap_or_default()),
        "QueryRegexp" => match a1 {
            // With one argument QueryRegexp behaves as Query: the key with an empty value.
            None => Matcher::Query(a0, String::new()),
            Some(p) => Matcher::QueryRegexp(a0, regex(&p)?),
        },
        "ClientIP" => {
            let net = a0.parse::<IpNet>().or_else(|_| a0.parse::<IpAddr>().map(IpNet::from)).map_err(|_| {
                RuleError::at(pos, format!("invalid ClientIP {a0:?}: expected an IP address or a CIDR"))
            })?;
            Matcher::ClientIp(net)
        }
        _ => unreachable!("every name in MATCHERS is handled"),
    })
}

fn compile(e: Expr) -> Result<Node, RuleError> {
    Ok(match e {
        Expr::Call { name, args, pos } => Node::M(compile_call(&name, args, pos)?),
        Expr::And(a, b) => Node::And(Box::new(compile(*a)?), Box::new(compile(*b)?)),
        Expr::Or(a, b) => Node::Or(Box::new(compile(*a)?), Box::new(compile(*b)?)),
        Expr::Not(a) => Node::Not(Box::new(compile(*a)?)),
    })
}

/// Host comparison: `*` matches any host, `*.example.com` replaces exactly the first label,
/// and one trailing dot is ignored on either side. Both sides are lower case already.
pub(crate) fn host_matches(pattern: &str, host: &str) -> bool {
    if host.is_empty() {
        return false;
    }
    if pattern == "*" {
        return true;
    }
    let p = pattern.strip_suffix('.').unwrap_or(pattern);
    let h = host.strip_suffix('.').unwrap_or(host);
    match p.strip_prefix("*.") {
        Some(suffix) => match h.split_once('.') {
            Some((label, rest)) => !label.is_empty() && rest == suffix,
            None => false,
        },
        None => p == h,
    }
}

impl Matcher {
    fn matches(&self, r: &RequestView<'_>) -> bool {
        match self {
            Matcher::Host(p) => host_matches(p, &r.host),
            Matcher::HostRegexp(re) => !r.host.is_empty() && re.is_match(&r.host),
            Matcher::Path(p) => r.routing_path.as_deref() == Some(p.as_str()),
            Matcher::PathPrefix(p) => r.routing_path.as_deref().is_some_and(|rp| rp.starts_with(p.as_str())),
            Matcher::PathRegexp(re) => r.routing_path.as_deref().is_some_and(|rp| re.is_match(rp)),
            Matcher::Method(m) => r.method == m,
            Matcher::Header(name, value) => {
                name.as_ref().is_some_and(|n| r.headers.get_all(n).iter().any(|v| v.as_bytes() == value.as_bytes()))
            }
            Matcher::HeaderRegexp(name, re) => name.as_ref().is_some_and(|n| {
                r.headers.get_all(n).iter().any(|v| re.is_match(&String::from_utf8_lossy(v.as_bytes())))
            }),
            Matcher::Query(k, v) => r.query_values(k).any(|x| x == *v),
            Matcher::QueryRegexp(k, re) => r.query_values(k).any(|x| re.is_match(&x)),
            Matcher::ClientIp(net) => r.client_ip.is_some_and(|ip| net.contains(&ip)),
        }
    }
}

impl Node {
    fn matches(&self, r: &RequestView<'_>) -> bool {
        match self {
            Node::M(m) => m.matches(r),
            Node::And(a, b) => a.matches(r) && b.matches(r),
            Node::Or(a, b) => a.matches(r) || b.matches(r),
            Node::Not(a) => !a.matches(r),
        }
    }

    /// Hosts one of which a matching request must carry, or `None` when any host may match.
    fn required_hosts(&self) -> Option<Vec<String>> {
        match self {
            Node::M(Matcher::Host(h)) if h != "*" && !h.starts_with("*.") => {
                Some(vec![h.strip_suffix('.').unwrap_or(h).to_string()])
            }
            Node::M(_) | Node::Not(_) => None,
            Node::And(a, b) => a.required_hosts().or_else(|| b.required_hosts()),
            Node::Or(a, b) => {
                let mut x = a.required_hosts()?;
                x.extend(b.required_hosts()?);
                Some(x)
            }
        }
    }

    /// Path prefixes one of which a matching request's routing path must start with.
    fn required_prefixes(&self) -> Option<Vec<String>> {
        match self {
            Node::M(Matcher::Path(p) | Matcher::PathPrefix(p)) => Some(vec![p.clone()]),
            Node::M(_) | Node::Not(_) => None,
            Node::And(a, b) => match (a.required_prefixes(), b.required_prefixes()) {
                // Both must hold: keep the side that narrows more.
                (Some(x), Some(y)) => {
                    Some(if x.iter().map(String::len).min() >= y.iter().map(String::len).min() { x } else { y })
                }
                (x, y) => x.or(y),
            },
            Node::Or(a, b) => {
                let mut x = a.required_prefixes()?;
                x.extend(b.required_prefixes()?);
                Some(x)
            }
        }
    }

    /// Whether any matcher of the tree passes `f`.
    fn any_matcher(&self, f: &dyn Fn(&Matcher) -> bool) -> bool {
        match self {
            Node::M(m) => f(m),
            Node::And(a, b) | Node::Or(a, b) => a.any_matcher(f) || b.any_matcher(f),
            Node::Not(a) => a.any_matcher(f),
        }
    }
}

impl Rule {
    /// Parses and compiles a rule.
    pub fn parse(text: &str) -> Result<Rule, RuleError> {
        let tree = compile(parser::parse(text)?)?;
        Ok(Rule { text: text.to_string(), tree })
    }

    /// The rule as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Traefik's default priority: the rule's length in bytes.
    pub fn default_priority(&self) -> i64 {
        self.text.len() as i64
    }

    /// Whether a request matches.
    pub fn matches(&self, r: &RequestView<'_>) -> bool {
        self.tree.matches(r)
    }

    /// For the route index: the hosts (lower case, no trailing dot) of which a matching
    /// request must carry one; `None` when the rule does not pin the host.
    pub fn required_hosts(&self) -> Option<Vec<String>> {
        self.tree.required_hosts()
    }

    /// For the route index: prefixes of which a matching request's routing path must
    /// start with one; `None` when the rule does not pin the path.
    pub fn required_prefixes(&self) -> Option<Vec<String>> {
        self.tree.required_prefixes()
    }

    /// Whether a `Host` or `HostRegexp` matcher appears anywhere in the rule.
    pub fn mentions_host(&self) -> bool {
        self.tree.any_matcher(&|m| matches!(m, Matcher::Host(_) | Matcher::HostRegexp(_)))
    }

    /// Whether a `Header` or `HeaderRegexp` matcher appears anywhere in the rule.
    pub fn reads_headers(&self) -> bool {
        self.tree.any_matcher(&|m| matches!(m, Matcher::Header(..) | Matcher::HeaderRegexp(..)))
    }
}

#[cfg(test)]
mod tests;
