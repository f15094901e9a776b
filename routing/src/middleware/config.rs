//! Middleware configuration in Traefik's vocabulary.
//!
//! The data plane executes middlewares, so it owns their configuration types. The model
//! crate uses [`MiddlewareSpec`] as the `spec` of the `Middleware` resource, and the
//! snapshot carries each middleware as the canonical JSON of its kind's struct. Every
//! field of the upstream CRD is listed: the ones atrium does not support yet are typed
//! [`NotSupported`], so a manifest that sets them is rejected by name instead of being
//! ignored silently.

use crate::middleware::MiddlewareError;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};

/// A field or kind atrium recognises but does not implement yet. Deserialising one is an
/// error that names it, so nothing is silently ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum NotSupported {}

impl<'de> Deserialize<'de> for NotSupported {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        Err(de::Error::custom("not supported yet by atrium"))
    }
}

/// Kubernetes `int-or-string`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum IntOrString {
    /// A number.
    Int(i64),
    /// A string.
    Str(String),
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = IntOrString;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer or a string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrString, E> {
                Ok(IntOrString::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrString, E> {
                i64::try_from(v).map(IntOrString::Int).map_err(|_| E::custom("integer out of range"))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrString, E> {
                Ok(IntOrString::Str(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl fmt::Display for IntOrString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IntOrString::Int(i) => write!(f, "{i}"),
            IntOrString::Str(s) => f.write_str(s),
        }
    }
}

impl IntOrString {
    /// A duration as Traefik reads it: a bare number is seconds, a string is a Go duration
    /// (`1m30s`, `250ms`).
    pub fn as_duration(&self) -> Result<std::time::Duration, DurationError> {
        match self {
            IntOrString::Int(i) if *i < 0 => Err(DurationError::Negative(i.to_string())),
            IntOrString::Int(i) => seconds(*i as f64, &i.to_string()),
            IntOrString::Str(s) => parse_go_duration(s),
        }
    }
}

/// Why a duration cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Nothing at all.
    #[error("empty duration")]
    Empty,
    /// Not a number with units.
    #[error("invalid duration {0:?}")]
    Invalid(String),
    /// A number without its unit (`1m30`).
    #[error("missing unit in duration {0:?}")]
    MissingUnit(String),
    /// A unit Go does not know.
    #[error("unknown unit {unit:?} in duration {text:?}")]
    UnknownUnit {
        /// The unit.
        unit: String,
        /// The whole text.
        text: String,
    },
    /// Below zero.
    #[error("negative duration {0:?}")]
    Negative(String),
    /// Longer than Go's longest duration.
    #[error("duration {0:?} is out of range (at most about 292 years)")]
    OutOfRange(String),
}

/// Go's longest duration (`math.MaxInt64` nanoseconds, about 292 years), in seconds.
const MAX_DURATION_SECS: f64 = 9_223_372_036.854_775;

/// `secs` seconds as a duration: Go's bounds (a longer one is an error, as in Go), never
/// a panic.
fn seconds(secs: f64, text: &str) -> Result<std::time::Duration, DurationError> {
    if !(0.0..=MAX_DURATION_SECS).contains(&secs) {
        return Err(DurationError::OutOfRange(text.to_string()));
    }
    std::time::Duration::try_from_secs_f64(secs).map_err(|_| DurationError::OutOfRange(text.to_string()))
}

/// Parses a Go duration string (`300ms`, `1.5h`, `2h45m`). A bare number is seconds, as
/// Traefik's own duration type reads it.
pub fn parse_go_duration(s: &str) -> Result<std::time::Duration, DurationError> {
    let t = s.trim();
    if t.is_empty() {
        return Err(DurationError::Empty);
    }
    if let Ok(secs) = t.parse::<f64>()
        && secs.is_finite()
    {
        if secs < 0.0 {
            return Err(DurationError::Negative(s.to_string()));
        }
        return seconds(secs, s);
    }
    let mut total = 0f64;
    let mut rest = t;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        if num_end == 0 {
            return Err(DurationError::Invalid(s.to_string()));
        }
        let n: f64 = rest[..num_end].parse().map_err(|_| DurationError::Invalid(s.to_string()))?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(DurationError::MissingUnit(s.to_string())),
            u => return Err(DurationError::UnknownUnit { unit: u.to_string(), text: s.to_string() }),
        };
        total += n * scale;
        if !total.is_finite() || total > MAX_DURATION_SECS {
            return Err(DurationError::OutOfRange(s.to_string()));
        }
        rest = &rest[unit_end..];
    }
    seconds(total, s)
}

/// A reference to another middleware.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MiddlewareRef {
    /// Name, optionally `name@provider`.
    pub name: String,
    /// Namespace; defaults to the referencing resource's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The `spec` of a Traefik `Middleware`: exactly one kind is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct MiddlewareSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_prefix: Option<AddPrefix>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basic_auth: Option<BasicAuth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffering: Option<Buffering>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<Chain>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compress: Option<Compress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest_auth: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encoded_characters: Option<crate::path_security::EncodedCharacters>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_auth: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_web: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_flight_req: Option<InFlightReq>,
    #[serde(default, rename = "ipAllowList", skip_serializing_if = "Option::is_none")]
    pub ip_allow_list: Option<IpAllowList>,
    #[serde(default, rename = "ipWhiteList", skip_serializing_if = "Option::is_none")]
    pub ip_white_list: Option<NotSupported>,
    #[serde(default, rename = "passTLSClientCert", skip_serializing_if = "Option::is_none")]
    pub pass_tls_client_cert: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_regex: Option<RedirectRegex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_scheme: Option<RedirectScheme>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_path: Option<ReplacePath>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_path_regex: Option<ReplacePathRegex>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_prefix: Option<StripPrefix>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strip_prefix_regex: Option<StripPrefixRegex>,
}

impl MiddlewareSpec {
    /// The names of the kinds that are set, in Traefik's spelling.
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut k = Vec::new();
        macro_rules! check {
            ($($f:ident => $n:literal),* $(,)?) => { $( if self.$f.is_some() { k.push($n); } )* };
        }
        check!(
            add_prefix => "addPrefix", basic_auth => "basicAuth", buffering => "buffering",
            chain => "chain", compress => "compress", encoded_characters => "encodedCharacters", headers => "headers",
            in_flight_req => "inFlightReq", ip_allow_list => "ipAllowList",
            rate_limit => "rateLimit", redirect_regex => "redirectRegex",
            redirect_scheme => "redirectScheme", replace_path => "replacePath",
            replace_path_regex => "replacePathRegex", retry => "retry",
            strip_prefix => "stripPrefix", strip_prefix_regex => "stripPrefixRegex",
        );
        k
    }

    /// The configuration of the one kind that is set, as canonical JSON.
    pub fn kind_json(&self) -> Option<(&'static str, String)> {
        let v = serde_json::to_value(self).ok()?;
        let obj = v.as_object()?;
        let (name, cfg) = obj.iter().next()?;
        let kind = self.kinds().into_iter().find(|k| k == name)?;
        Some((kind, cfg.to_string()))
    }

    /// Rebuilds a spec from a snapshot's `(kind, config_json)`.
    pub fn from_kind_json(kind: &str, json: &str) -> Result<MiddlewareSpec, MiddlewareError> {
        let cfg: serde_json::Value =
            serde_json::from_str(json).map_err(|e| MiddlewareError::from(format!("middleware config: {e}")))?;
        let mut obj = serde_json::Map::new();
        obj.insert(kind.to_string(), cfg);
        serde_json::from_value(serde_json::Value::Object(obj))
            .map_err(|e| MiddlewareError::from(format!("middleware {kind}: {e}")))
    }
}

#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AddPrefix {
    #[serde(default)]
    pub prefix: String,
}

#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StripPrefix {
    #[serde(default)]
    pub prefixes: Vec<String>,
    /// Deprecated in Traefik v3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_slash: Option<NotSupported>,
}

#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StripPrefixRegex {
    #[serde(default)]
    pub regex: Vec<String>,
}

#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReplacePath {
    #[serde(default)]
    pub path: String,
}

#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ReplacePathRegex {
    #[serde(default)]
    pub regex: String,
    #[serde(default)]
    pub replacement: String,
}

#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Chain {
    #[serde(default)]
    pub middlewares: Vec<MiddlewareRef>,
}

#[allow(missing_docs)]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Headers {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_control_allow_credentials: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_control_allow_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_control_allow_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_control_allow_origin_list: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_control_allow_origin_list_regex: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_control_expose_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_control_max_age: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub add_vary_header: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub browser_xss_filter: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_security_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_security_policy_report_only: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type_nosniff: Option<bool>,
    #[serde(default, rename = "customBrowserXSSValue", skip_serializing_if = "Option::is_none")]
    pub custom_browser_xss_value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom_frame_options_value: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_request_headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub custom_response_headers: BTreeMap<String, String>,
    /// Deprecated in favour of `permissionsPolicy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_policy: Option<NotSupported>,
    #[serde(default, rename = "forceSTSHeader", skip_serializing_if = "Option::is_none")]
    pub force_sts_header: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_deny: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts_proxy_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub is_development: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions_policy: Option<String>,
    /// HTTP Public Key Pinning (`Public-Key-Pins`), sent on HTTPS only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referrer_policy: Option<String>,
    /// The `ssl*` redirect options are deprecated in Traefik v3 (use redirectScheme).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_force_host: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_host: Option<NotSupported>,
    /// Request headers (and the exact values) that mean the client came over HTTPS to a
    /// proxy in front, for `Strict-Transport-Security` and `Public-Key-Pins`.
    #[serde(default, rename = "sslProxyHeaders", skip_serializing_if = "BTreeMap::is_empty")]
    pub ssl_proxy_headers: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_redirect: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_temporary_redirect: Option<NotSupported>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sts_include_subdomains: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sts_preload: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sts_seconds: Option<i64>,
}

#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RedirectScheme {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    #[serde(default)]
    pub permanent: bool,
}

#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RedirectRegex {
    #[serde(default)]
    pub regex: String,
    #[serde(default)]
    pub replacement: String,
    #[serde(default)]
    pub permanent: bool,
}

#[allow(missing_docs)]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IpStrategy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub depth: Option<i64>,
    #[serde(default, rename = "excludedIPs", skip_serializing_if = "Vec::is_empty")]
    pub excluded_ips: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6_subnet: Option<i64>,
}

#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IpAllowList {
    #[serde(default)]
    pub source_range: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_strategy: Option<IpStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reject_status_code: Option<u16>,
}

#[allow(missing_docs)]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SourceCriterion {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_strategy: Option<IpStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_host: Option<bool>,
}

#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RateLimit {
    #[serde(default)]
    pub average: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_criterion: Option<SourceCriterion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<NotSupported>,
}

#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct InFlightReq {
    #[serde(default)]
    pub amount: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_criterion: Option<SourceCriterion>,
}

#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Retry {
    #[serde(default)]
    pub attempts: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_interval: Option<IntOrString>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_retry_on_network_error: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_non_idempotent_method: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub status: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<IntOrString>,
}

#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Buffering {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_body_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_request_body_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_response_body_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_response_body_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_expression: Option<NotSupported>,
}

#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Compress {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_encoding: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub encodings: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub excluded_content_types: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub included_content_types: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_response_body_bytes: Option<i64>,
}

#[allow(missing_docs)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BasicAuth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remove_header: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_field: Option<String>,
    /// Filled in by the compiler from the Secret (`user:hash` lines); never written by
    /// users (the upstream CRD has no such field, and the compiler refuses it).
    #[serde(default, rename = "resolvedUsers", skip_serializing_if = "Vec::is_empty")]
    pub resolved_users: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_go_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_go_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_go_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_go_duration("10").unwrap(), Duration::from_secs(10));
        // Past Go's bound (about 292 years) is an error, never a panic.
        for huge in ["1e30s", "1e30", "99999999999h", "1e400s", "300000000000s", "18446744073709551616ms"] {
            let e = parse_go_duration(huge).unwrap_err();
            assert!(
                matches!(
                    e,
                    DurationError::OutOfRange(_) | DurationError::Invalid(_) | DurationError::UnknownUnit { .. }
                ),
                "{huge}: {e}"
            );
        }
        assert!(parse_go_duration("-1s").is_err() && parse_go_duration("-5").is_err());
        assert!(parse_go_duration("2562047h").is_ok(), "just under Go's bound");
        assert!(IntOrString::Int(i64::MAX).as_duration().is_err());
        assert_eq!(IntOrString::Int(90).as_duration().unwrap(), Duration::from_secs(90));
        assert!(parse_go_duration("5 parsecs").is_err());
        assert!(parse_go_duration("").is_err());
        assert!(parse_go_duration("ms").is_err());
    }

    #[test]
    fn kind_json_roundtrips() {
        let spec = MiddlewareSpec {
            strip_prefix: Some(StripPrefix { prefixes: vec!["/crm".into()], force_slash: None }),
            ..Default::default()
        };
        let (kind, json) = spec.kind_json().unwrap();
        assert_eq!(kind, "stripPrefix");
        assert_eq!(json, r#"{"prefixes":["/crm"]}"#);
        assert_eq!(MiddlewareSpec::from_kind_json(kind, &json).unwrap(), spec);
    }

    #[test]
    fn unsupported_kinds_are_refused_by_name() {
        let err = serde_json::from_str::<MiddlewareSpec>(r#"{"forwardAuth":{"address":"x"}}"#).unwrap_err();
        assert!(err.to_string().contains("not supported yet"), "{err}");
        let err = serde_json::from_str::<MiddlewareSpec>(r#"{"nope":{}}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `nope`"), "{err}");
    }
}
