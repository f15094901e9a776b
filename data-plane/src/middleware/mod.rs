//! Middlewares: their configuration ([`config`]) and the pure request transformations the
//! data plane and `route-check` share ([`path`]).

pub mod config;
pub mod path;

use regex::Regex;

pub use config::MiddlewareSpec;
use path::{RewriteError, UrlPath};

/// A middleware from a snapshot, with its regexps compiled once.
#[derive(Debug, Clone)]
pub struct CompiledMiddleware {
    /// `namespace/name`.
    pub id: String,
    /// The configuration.
    pub spec: MiddlewareSpec,
    /// Compiled regexps of stripPrefixRegex / replacePathRegex.
    regexes: Vec<Regex>,
}

impl CompiledMiddleware {
    /// Compiles a snapshot middleware.
    pub fn new(id: &str, kind: &str, config_json: &str) -> Result<Self, String> {
        let spec = MiddlewareSpec::from_kind_json(kind, config_json)?;
        Self::from_spec(id, spec)
    }

    /// Compiles a spec, validating what Traefik validates when it builds the middleware.
    pub fn from_spec(id: &str, spec: MiddlewareSpec) -> Result<Self, String> {
        let mut regexes = Vec::new();
        if let Some(s) = &spec.strip_prefix_regex {
            regexes = path::compile_regexes(&s.regex)?;
        }
        if let Some(r) = &spec.replace_path_regex {
            regexes = path::compile_regexes(std::slice::from_ref(&r.regex))?;
        }
        if let Some(r) = &spec.redirect_regex {
            regexes = path::compile_regexes(std::slice::from_ref(&r.regex))?;
        }
        if let Some(h) = &spec.headers {
            if h == &config::Headers::default() {
                return Err("headers middleware has no option set".into());
            }
            path::compile_regexes(&h.access_control_allow_origin_list_regex)?;
        }
        if spec.strip_prefix.as_ref().is_some_and(|s| s.prefixes.is_empty()) {
            return Err("stripPrefix needs at least one prefix".into());
        }
        if let Some(a) = &spec.ip_allow_list {
            for r in &a.source_range {
                if r.parse::<ipnet::IpNet>().is_err() && r.parse::<std::net::IpAddr>().is_err() {
                    return Err(format!("ipAllowList: invalid sourceRange {r:?}"));
                }
            }
        }
        Ok(CompiledMiddleware { id: id.to_string(), spec, regexes })
    }

    /// Applies this middleware's path rewrite, if it has one.
    pub fn rewrite_path(&self, p: &mut UrlPath) -> Result<(), RewriteError> {
        let s = &self.spec;
        if let Some(sp) = &s.strip_prefix {
            path::strip_prefix(p, &sp.prefixes)?;
        } else if s.strip_prefix_regex.is_some() {
            path::strip_prefix_regex(p, &self.regexes)?;
        } else if let Some(a) = &s.add_prefix {
            path::add_prefix(p, &a.prefix);
        } else if let Some(r) = &s.replace_path {
            path::replace_path(p, &r.path)?;
        } else if let Some(r) = &s.replace_path_regex
            && let Some(re) = self.regexes.first()
        {
            path::replace_path_regex(p, re, &r.replacement)?;
        }
        Ok(())
    }
}
