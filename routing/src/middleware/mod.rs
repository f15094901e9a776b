//! Middlewares: their configuration ([`config`]), and what each does to a request.
//!
//! [`CompiledMiddleware`] is built once per route table from a snapshot entry: regexps are
//! compiled, limiters get their state. The proxy calls it in router order. Path rewrites
//! are pure functions over [`path::UrlPath`], shared with `route-check`.

pub mod basic_auth;
pub mod compress;
pub mod config;
pub mod headers;
pub mod limits;
pub mod path;
pub mod redirect;
pub mod retry;

use regex::Regex;

pub use config::MiddlewareSpec;

/// Why a middleware's configuration cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MiddlewareError {
    /// A duration field.
    #[error(transparent)]
    Duration(#[from] config::DurationError),
    /// Any other invalid value, said in words (the field and the value).
    #[error("{0}")]
    Invalid(String),
}

impl From<String> for MiddlewareError {
    fn from(s: String) -> Self {
        MiddlewareError::Invalid(s)
    }
}

impl From<&str> for MiddlewareError {
    fn from(s: &str) -> Self {
        MiddlewareError::Invalid(s.to_string())
    }
}
use path::{RewriteError, UrlPath};

/// What a middleware does at run time.
#[derive(Debug)]
pub enum Action {
    /// A path rewrite (stripPrefix, stripPrefixRegex, addPrefix, replacePath, replacePathRegex).
    Path,
    /// Request and response headers, CORS, security headers.
    Headers(Box<headers::HeaderRules>),
    /// Redirect to another scheme/port.
    RedirectScheme {
        /// Target scheme.
        scheme: String,
        /// Target port.
        port: Option<String>,
        /// 301/308 instead of 302/307.
        permanent: bool,
    },
    /// Redirect by regexp.
    RedirectRegex {
        /// Pattern over the full URL.
        regex: Regex,
        /// Replacement with `$1`/`${name}`.
        replacement: String,
        /// 301/308 instead of 302/307.
        permanent: bool,
    },
    /// Client IP allow list.
    IpAllow(limits::IpAllow),
    /// Token bucket per source.
    RateLimit(limits::RateLimiter),
    /// Concurrency limit per source.
    InFlight(limits::InFlight),
    /// Whole bodies read before they go on, with size limits (413 / 500 past them).
    Buffering(Buffering),
    /// Users and passwords.
    BasicAuth(basic_auth::BasicAuthCheck),
    /// gzip responses.
    Compress(compress::Compression),
    /// Tries the request again on network errors and chosen statuses.
    Retry(retry::RetryPolicy),
    /// The encoded characters its router's paths may carry. The check runs right after
    /// routing, before any middleware (see [`crate::table::RouteTable::refused_encoding`]),
    /// so the middleware's own place in the chain does nothing.
    EncodedCharacters(crate::path_security::EncodedCharacters),
}

/// The buffering middleware, as Traefik runs it: the whole request is read before it is
/// forwarded and the whole response before it is returned, the first `mem*` bytes in memory
/// and the rest in a temporary file; past `max*` the request gets 413 and the response 500.
#[derive(Debug, Clone, PartialEq)]
pub struct Buffering {
    /// Largest request body, bytes (0: no limit).
    pub max_request: u64,
    /// Request bytes kept in memory before spilling to disk.
    pub mem_request: u64,
    /// Largest response body, bytes (0: no limit).
    pub max_response: u64,
    /// Response bytes kept in memory before spilling to disk.
    pub mem_response: u64,
}

impl Buffering {
    /// Traefik's default for `memRequestBodyBytes` and `memResponseBodyBytes`: 1 MiB.
    pub const DEFAULT_MEM: u64 = 1 << 20;

    fn new(b: &config::Buffering) -> Result<Buffering, MiddlewareError> {
        let bytes = |v: Option<i64>, field: &str, default: u64| match v {
            None => Ok(default),
            Some(n) if n >= 0 => Ok(n as u64),
            Some(n) => Err(MiddlewareError::from(format!("buffering.{field}: {n} is negative"))),
        };
        Ok(Buffering {
            max_request: bytes(b.max_request_body_bytes, "maxRequestBodyBytes", 0)?,
            mem_request: bytes(b.mem_request_body_bytes, "memRequestBodyBytes", Self::DEFAULT_MEM)?,
            max_response: bytes(b.max_response_body_bytes, "maxResponseBodyBytes", 0)?,
            mem_response: bytes(b.mem_response_body_bytes, "memResponseBodyBytes", Self::DEFAULT_MEM)?,
        })
    }
}

/// A middleware from a snapshot, ready to run.
#[derive(Debug)]
pub struct CompiledMiddleware {
    /// `namespace/name`.
    pub id: String,
    /// The configuration.
    pub spec: MiddlewareSpec,
    /// What it does.
    pub action: Action,
    /// Compiled regexps of stripPrefixRegex / replacePathRegex.
    regexes: Vec<Regex>,
}

impl CompiledMiddleware {
    /// Compiles a snapshot middleware.
    pub fn new(id: &str, kind: &str, config_json: &str) -> Result<Self, MiddlewareError> {
        let spec = MiddlewareSpec::from_kind_json(kind, config_json)?;
        Self::from_spec(id, spec)
    }

    /// Compiles a spec, validating what Traefik validates when it builds the middleware.
    pub fn from_spec(id: &str, spec: MiddlewareSpec) -> Result<Self, MiddlewareError> {
        let mut regexes = Vec::new();
        let s = &spec;
        let action = if let Some(sp) = &s.strip_prefix {
            if sp.prefixes.is_empty() {
                return Err("stripPrefix needs at least one prefix".into());
            }
            Action::Path
        } else if let Some(r) = &s.strip_prefix_regex {
            regexes = path::compile_regexes(&r.regex)?;
            Action::Path
        } else if let Some(r) = &s.replace_path_regex {
            regexes = path::compile_regexes(std::slice::from_ref(&r.regex))?;
            Action::Path
        } else if s.add_prefix.is_some() || s.replace_path.is_some() {
            Action::Path
        } else if let Some(h) = &s.headers {
            if h == &config::Headers::default() {
                return Err("headers middleware has no option set".into());
            }
            Action::Headers(Box::new(headers::HeaderRules::new(h.clone())?))
        } else if let Some(r) = &s.redirect_scheme {
            let scheme = r.scheme.clone().filter(|s| !s.is_empty()).ok_or("redirectScheme needs a scheme")?;
            Action::RedirectScheme { scheme, port: r.port.clone(), permanent: r.permanent }
        } else if let Some(r) = &s.redirect_regex {
            let regex = path::compile_regexes(std::slice::from_ref(&r.regex))?.remove(0);
            Action::RedirectRegex { regex, replacement: r.replacement.clone(), permanent: r.permanent }
        } else if let Some(a) = &s.ip_allow_list {
            Action::IpAllow(limits::IpAllow::new(a)?)
        } else if let Some(r) = &s.rate_limit {
            Action::RateLimit(limits::RateLimiter::new(r)?)
        } else if let Some(f) = &s.in_flight_req {
            Action::InFlight(limits::InFlight::new(f)?)
        } else if let Some(b) = &s.buffering {
            Action::Buffering(Buffering::new(b)?)
        } else if let Some(r) = &s.retry {
            Action::Retry(retry::RetryPolicy::new(r)?)
        } else if let Some(c) = &s.compress {
            Action::Compress(compress::Compression::new(c)?)
        } else if let Some(b) = &s.basic_auth {
            Action::BasicAuth(basic_auth::BasicAuthCheck::new(b)?)
        } else if let Some(e) = &s.encoded_characters {
            Action::EncodedCharacters(*e)
        } else if s.chain.is_some() {
            // Chains are flattened by the compiler; a chain never reaches the data plane.
            return Err("a chain must be flattened before it reaches the data plane".into());
        } else {
            return Err("a Middleware needs exactly one kind".into());
        };
        Ok(CompiledMiddleware { id: id.to_string(), spec, action, regexes })
    }

    /// Applies this middleware's path rewrite, if it has one. Returns the header the
    /// rewrite adds (`X-Forwarded-Prefix` or `X-Replaced-Path`) and its value.
    pub fn rewrite_path(&self, p: &mut UrlPath) -> Result<Option<(&'static str, String)>, RewriteError> {
        let s = &self.spec;
        if let Some(sp) = &s.strip_prefix {
            return Ok(path::strip_prefix(p, &sp.prefixes)?.map(|v| ("x-forwarded-prefix", v)));
        }
        if s.strip_prefix_regex.is_some() {
            return Ok(path::strip_prefix_regex(p, &self.regexes)?.map(|v| ("x-forwarded-prefix", v)));
        }
        if let Some(a) = &s.add_prefix {
            path::add_prefix(p, &a.prefix);
        } else if let Some(r) = &s.replace_path {
            return Ok(Some(("x-replaced-path", path::replace_path(p, &r.path)?)));
        } else if let Some(r) = &s.replace_path_regex
            && let Some(re) = self.regexes.first()
        {
            return Ok(path::replace_path_regex(p, re, &r.replacement)?.map(|v| ("x-replaced-path", v)));
        }
        Ok(None)
    }
}
